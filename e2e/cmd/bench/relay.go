package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// relayColumn is the -relay column: peer.ServeRelay in the appliance, the
// cheapest transparent relay that terminates flows (the kernel's TCP on
// both legs, TPROXY, splice, no inspection). What netward costs above it is
// the price of its userspace stack and its inspection; a target this relay
// misses is out of reach for any design that terminates flows.
const relayColumn = "tproxy-relay"

const (
	relayPort  = 9998
	relayMark  = "0x7e1a"
	relayTable = "7901"
)

// relayRules hand the lab's flows to the relay: TPROXY turns a client's
// flow into a connection to the relay's listener, and the server's answers
// to the client's address, sent to the relay's transparent upstream socket,
// are delivered locally by the mark. Each is an iptables/ip6tables rule
// spec after "-t mangle -A|-D PREROUTING".
func (p *path) relayRules() [][]string {
	return [][]string{
		{"-i", p.l.ApplianceClientIf, "-p", "tcp", "-j", "TPROXY",
			"--on-port", strconv.Itoa(relayPort), "--tproxy-mark", relayMark + "/" + relayMark},
		{"-i", p.l.ApplianceAppIf, "-p", "tcp", "-m", "socket", "--transparent",
			"-j", "MARK", "--set-mark", relayMark + "/" + relayMark},
	}
}

var ipTools = []string{"iptables", "ip6tables"}

// startRelay installs the relay's rules and routes in the appliance and
// starts it; stopRelay undoes both, also after a partial start, so the
// next column (kernel forwarding, netward) runs on a clean appliance.
func (p *path) startRelay() error {
	ctx := p.b.ctx
	a := p.l.Appliance
	for _, tool := range ipTools {
		for _, r := range p.relayRules() {
			if _, err := a.Run(ctx, append([]string{tool, "-w", "-t", "mangle", "-A", "PREROUTING"}, r...)...); err != nil {
				return errors.Join(err, p.stopRelay())
			}
		}
	}
	for _, fam := range []struct{ flag, all string }{{"-4", "0.0.0.0/0"}, {"-6", "::/0"}} {
		if _, err := a.Run(ctx, "ip", fam.flag, "rule", "add", "fwmark", relayMark+"/"+relayMark, "lookup", relayTable); err != nil {
			return errors.Join(err, p.stopRelay())
		}
		if _, err := a.Run(ctx, "ip", fam.flag, "route", "add", "local", fam.all, "dev", "lo", "table", relayTable); err != nil {
			return errors.Join(err, p.stopRelay())
		}
	}
	var err error
	if p.relay, err = a.Start("nwpeer-relay", p.b.peer, "relay", "-port", strconv.Itoa(relayPort)); err != nil {
		return errors.Join(err, p.stopRelay())
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.relay.WaitLog(wctx, regexp.MustCompile(`nwpeer: serving`)); err != nil {
		return errors.Join(fmt.Errorf("%s: %w\n%s", relayColumn, err, p.relay.Log()), p.stopRelay())
	}
	return nil
}

// stopRelay stops the relay and removes every rule and route startRelay
// may have installed; a rule that is not there is not an error.
func (p *path) stopRelay() error {
	var errs []error
	if p.relay != nil {
		if err := p.relay.Stop(10 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w\n%s", relayColumn, err, p.relay.Log()))
		}
		p.relay = nil
	}
	// Cleanup runs even when the bench was interrupted.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.b.ctx), 30*time.Second)
	defer cancel()
	a := p.l.Appliance
	for _, tool := range ipTools {
		for _, r := range p.relayRules() {
			args := append([]string{tool, "-w", "-t", "mangle", "-C", "PREROUTING"}, r...)
			if _, err := a.Run(ctx, args...); err != nil {
				continue // not installed
			}
			args[4] = "-D"
			if _, err := a.Run(ctx, args...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		// Deleting the table's routes and the rule; absent is fine.
		a.Run(ctx, "ip", fam, "route", "flush", "table", relayTable)
		for {
			if _, err := a.Run(ctx, "ip", fam, "rule", "del", "fwmark", relayMark+"/"+relayMark, "lookup", relayTable); err != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// relayBytes are the bytes the relay's rules have handed it so far: from
// the client (TPROXY rules) and from the server (MARK rules), IPv4 and
// IPv6 together. They prove that a measurement crossed the relay.
func (p *path) relayBytes() (fromClient, fromServer int64, err error) {
	for _, tool := range ipTools {
		out, err := p.l.Appliance.Run(p.b.ctx, tool, "-w", "-t", "mangle", "-n", "-v", "-x", "-L", "PREROUTING")
		if err != nil {
			return 0, 0, err
		}
		c, s := relayCounters(out)
		fromClient, fromServer = fromClient+c, fromServer+s
	}
	return fromClient, fromServer, nil
}

// relayCounters sums the byte counters of the TPROXY and MARK rules in
// `iptables -n -v -x -L` output.
func relayCounters(out string) (tproxy, mark int64) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue // a header line
		}
		switch f[2] {
		case "TPROXY":
			tproxy += n
		case "MARK":
			mark += n
		}
	}
	return tproxy, mark
}
