package lab

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Relay is the reference relay (`nwpeer relay`, peer.ServeRelay: kernel
// sockets on both legs, TPROXY, splice, no inspection) in the appliance,
// with the rules that hand it the lab's TCP flows. The bench measures it
// next to netward: the cheapest relay that terminates flows.
type Relay struct {
	*Proc
	rules tproxyRules
}

// The relay's port, mark and routing table in the appliance namespace (the
// namespace is the lab's own; netward's steering uses other values).
const (
	RelayPort  = 9998
	relayMark  = "0x7e1a/0x7e1a"
	relayTable = "7901"
)

var relayIPTables = []string{"iptables", "ip6tables"}

// relayRules hand flows to the relay: TPROXY turns a client's flow into a
// connection to the relay's listener, and the server's answers to the
// client's address, sent to the relay's transparent upstream socket, are
// delivered locally by the mark. Each is a rule spec after
// "-t mangle -A|-C|-D PREROUTING".
func (l *Lab) relayRules() [][]string {
	return [][]string{
		{"-i", l.ApplianceClientIf, "-p", "tcp", "-j", "TPROXY",
			"--on-port", strconv.Itoa(RelayPort), "--tproxy-mark", relayMark},
		{"-i", l.ApplianceAppIf, "-p", "tcp", "-m", "socket", "--transparent",
			"-j", "MARK", "--set-mark", relayMark},
	}
}

// StartRelay installs the relay's rules and routes in the appliance and
// starts peerBinary's relay there with extra flags (-sockmap); on error it
// leaves nothing behind.
func (l *Lab) StartRelay(ctx context.Context, peerBinary string, extra ...string) (*Relay, error) {
	r := &Relay{rules: tproxyRules{lab: l, specs: l.relayRules(), mark: relayMark, table: relayTable}}
	if err := r.rules.install(ctx); err != nil {
		return nil, err
	}
	p, err := l.Appliance.Start("nwpeer-relay", append([]string{peerBinary, "relay", "-port", strconv.Itoa(RelayPort)}, extra...)...)
	if err != nil {
		return nil, errors.Join(err, r.rules.remove())
	}
	r.Proc = p
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.WaitLog(wctx, regexp.MustCompile(`nwpeer: serving`)); err != nil {
		return nil, errors.Join(fmt.Errorf("lab: relay: %w\n%s", err, p.Log()), r.Stop(5*time.Second))
	}
	return r, nil
}

// Stop stops the relay and removes its rules and routes, so the appliance
// forwards as before.
func (r *Relay) Stop(grace time.Duration) error {
	var err error
	if r.Proc != nil {
		if err = r.Proc.Stop(grace); err != nil {
			err = fmt.Errorf("lab: relay: %w\n%s", err, r.Log())
		}
	}
	return errors.Join(err, r.rules.remove())
}

// Bytes are the bytes the relay's rules have handed it so far, IPv4 and
// IPv6 together: from the client (TPROXY) and from the server (MARK). They
// prove that traffic crossed the relay rather than kernel forwarding.
func (r *Relay) Bytes(ctx context.Context) (fromClient, fromServer int64, err error) {
	return r.rules.bytes(ctx)
}

// RelayCounters sums the byte counters of the TPROXY and MARK rules in
// `iptables -n -v -x -L` output.
func RelayCounters(out string) (tproxy, mark int64) {
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
