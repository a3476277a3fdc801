package main

// The demo's third part (issue 17): UDP. HTTP/3 (QUIC, quic-go's client
// and server) allowed and refused by the same SNI rule that judges HTTPS,
// and DNS queries (dig) allowed and refused by name, with what the
// application's servers saw (the client's own address) and the EVE quic
// and dns events. It runs on the rules part's netward, before it stops.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/netward/netward/e2e/peer"
)

// udpH3Port is the application's HTTP/3 port (UDP; openssl's HTTPS has
// the TCP port of the same number).
const udpH3Port = 8443

func (r *ruleDemo) quicClients(d *demo) error {
	for _, c := range []struct {
		sni, curve string
		allow      bool
	}{
		{"www.example", "x25519", true},
		{"www.example", "mlkem", true}, // a post-quantum ClientHello: two Initial packets
		{"www.blocked.example", "x25519", false},
	} {
		url := "https://" + d.appAddr("4", udpH3Port) + "/"
		args := []string{d.peer, "h3get", "-url", url, "-sni", c.sni, "-version", "v1", "-curve", c.curve, "-timeout", "3s"}
		res, err := r.runCmd(d, d.lab.Client, strings.Join(append([]string{"nwpeer"}, args[1:]...), " "), args...)
		if err != nil {
			return err
		}
		var h peer.H3Result
		json.Unmarshal([]byte(lastLine(res.stdout)), &h)
		switch {
		case c.allow && (res.exit != 0 || h.Status != 200):
			return fmt.Errorf("HTTP/3 to %s: want 200, got exit %d %+v %s", c.sni, res.exit, h, res.stderr)
		case c.allow:
			fmt.Fprintf(d.out, "      HTTP/3 %d in %d ms, ClientHello in %d Initial packet(s); the server saw %s", h.Status, h.Millis, h.HelloPackets, h.Body)
			if !strings.HasSuffix(h.Body, "\n") {
				fmt.Fprintln(d.out)
			}
		case res.exit == 0:
			return fmt.Errorf("HTTP/3 to %s: want a refusal, got %+v", c.sni, h)
		default:
			// h3get's socket is bound to the unspecified address: the
			// source the server would see is the client's address.
			local, err := netip.ParseAddrPort(h.Local)
			if err != nil {
				return fmt.Errorf("HTTP/3 to %s: no local address in %+v", c.sni, h)
			}
			from := netip.AddrPortFrom(d.lab.Topo.ClientV4.Addr(), local.Port()).String()
			for _, l := range peer.ParseH3Logs(d.app.Log()) {
				if l.UDPFrom == from {
					return fmt.Errorf("HTTP/3 to %s was refused, but the server got a datagram from %s", c.sni, from)
				}
			}
			fmt.Fprintf(d.out, "      refused (%s): netward denied the ClientHello by rule blocked-sites; the server got no datagram from %s\n", clip(h.Err), from)
		}
	}
	return r.showEvents(d, "quic")
}

func (r *ruleDemo) dnsClients(d *demo) error {
	server := d.lab.Topo.AppV4.Addr().String()
	for _, c := range []struct{ name, want string }{
		{"www.example", "192.0.2.53"},
		{"tracker.ads.example", "status: REFUSED"},
	} {
		args := []string{"dig", "@" + server, "+time=2", "+tries=1", c.name, "A"}
		res, err := r.runCmd(d, d.lab.Client, strings.Join(args, " "), args...)
		if err != nil {
			return err
		}
		if !strings.Contains(res.stdout, c.want) {
			return fmt.Errorf("dig %s: want %q in:\n%s", c.name, c.want, res.stdout)
		}
		status := firstLine(res.stdout, "status:")
		fmt.Fprintf(d.out, "      %s\n", strings.TrimSpace(status))
	}
	for _, line := range strings.Split(d.app.Log(), "\n") {
		if strings.Contains(line, `"dns":`) {
			fmt.Fprintf(d.out, "  [app] DNS server log: %s\n", line)
			if strings.Contains(strings.ToLower(line), "ads.example") {
				return fmt.Errorf("the refused query reached the DNS server: %s", line)
			}
		}
	}
	return r.showEvents(d, "dns")
}

// showEvents prints the EVE events of a type.
func (r *ruleDemo) showEvents(d *demo, typ string) error {
	data, err := os.ReadFile(r.eve)
	if err != nil {
		return err
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"event_type":"`+typ+`"`) {
			fmt.Fprintf(d.out, "  EVE: %s\n", clip(line))
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("no EVE %s event", typ)
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
