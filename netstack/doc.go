// Package netstack terminates forwarded TCP flows in a gVisor stack.
//
// Steering (package steer) routes forwarded TCP into a TUN device. OpenTUN
// creates it with IFF_VNET_HDR and TSO/checksum offloads, so the kernel
// hands over GSO super-packets (up to 64 KiB) with partial checksums.
// linkEndpoint is the gVisor link endpoint on the TUN's file descriptors:
// it injects super-packets whole, verifies the checksums the kernel has not
// vouched for, and writes gVisor's own GSO packets back with a
// virtio_net_hdr so that the kernel segments them (late, or in the output
// device). With offloads asked for but refused by the kernel it moves plain
// packets, one per read or write. With Options.TUNWriters a FIFO qdisc sits
// in front of it (txQueue): the kernel forwards each written packet inside
// the write syscall, and writer goroutines take that off the relay's and
// gVisor's goroutines; a small packet that finds the queue empty is
// written by its sender, which saves a wake-up where there is nothing to
// batch.
//
// Without offloads (TUNOptions.Offload false, `--offload=false`) OpenTUN
// creates the device with golang.zx2c4.com/wireguard/tun instead, and
// wgEndpoint serves it: wireguard enables vnet_hdr itself where it can,
// splits super-packets in Go on Read and GRO-coalesces on Write, so netward
// sees plain packets in batches of Device.BatchSize. One goroutine reads
// batches into buffers allocated once and injects each packet; outbound, a
// FIFO qdisc collects gVisor's packets and WritePackets copies each batch
// into preallocated buffers (with the headroom Write needs for the
// virtio_net_hdr) for one Device.Write. New recognises such a TUN by its
// file (wgDevices) and owns the device; closing it deletes the TUN.
//
// The stack is promiscuous (accepts every destination) and spoofing (sends
// from every source). A tcp.Forwarder hands each SYN to Stack.handleSYN,
// which asks the Handler (Admit), connects to the server with the client's
// own address and port, and only then completes the client's handshake
// (Tailscale's acceptTCP/forwardTCP order): a closed port answers the
// client with an RST, an unreachable one stays silent, and server-first
// protocols work. Both legs are then given to Handler.Serve.
//
// The upstream leg is a gVisor endpoint sent back out through the TUN
// (default), or, with Options.UpstreamKernel, a kernel socket bound to the
// client's address with IP_TRANSPARENT: kernel TCP with its own offloads,
// at the price of extra kernel rules (see dialKernel and README.md).
//
// Every packet crosses the TUN at most once per direction: the client's
// packets come in, the server-bound packets of the upstream leg go out (and
// the server's answers come back in), the client-bound packets go out.
package netstack
