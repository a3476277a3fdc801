package main

// relayColumn is the -relay column: lab.Relay (peer.ServeRelay) in the
// appliance, the cheapest transparent relay that terminates flows (the
// kernel's TCP on both legs, TPROXY, splice, no inspection). What netward
// costs above it is the price of its userspace stack and its inspection; a
// target this relay misses is out of reach for any design that terminates
// flows.
const relayColumn = "tproxy-relay"

