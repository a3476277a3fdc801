package rules

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/netward/netward/inspect"
)

// TestIndexMatchesWalk compares indexed decisions with the plain walk over
// random rule sets and flows drawn from small pools (so that rules overlap
// and flows hit them).
func TestIndexMatchesWalk(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	names := []string{"a.example", "b.example", "x.a.example", "y.x.a.example", "c.test"}
	patterns := []string{"a.example", ".a.example", "'*.a.example'", "b.example", ".example", "'*.x.a.example'", "c.test", ".test"}
	prefixes := []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "192.0.2.0/24", "2001:db8::/32", "2001:db8:1::/48", "0.0.0.0/0"}
	addrs := []string{"10.1.2.3", "10.2.0.1", "192.0.2.5", "198.51.100.1", "2001:db8:1::1", "2001:db8:2::1"}
	// Methods in mixed case: rules and requests compare them ASCII
	// case-insensitively.
	methods := []string{"GET", "get", "POST", "Delete", "PATCH"}
	flowMethods := []string{"", "GET", "gEt", "post", "DELETE", "PATCH", "PUT", "ÄGET"}
	apps := []inspect.Proto{inspect.ProtoTLS, inspect.ProtoHTTP1, inspect.ProtoSSH, inspect.ProtoUnknown}
	pick := func(l []string, n int) string {
		var out []string
		for i := 0; i < n; i++ {
			out = append(out, l[rng.Intn(len(l))])
		}
		return "[" + strings.Join(out, ", ") + "]"
	}
	for round := 0; round < 40; round++ {
		var src strings.Builder
		src.WriteString("default: allow\nrules:\n")
		nrules := indexMinRules + rng.Intn(40)
		for i := 0; i < nrules; i++ {
			fmt.Fprintf(&src, "  - name: r%d\n    action: %s\n", i, []string{"allow", "deny", "drop", "alert"}[rng.Intn(4)])
			if rng.Intn(3) == 0 {
				fmt.Fprintf(&src, "    %s: %s\n", []string{"sni", "host", "domain"}[rng.Intn(3)], pick(patterns, 1+rng.Intn(3)))
			}
			if rng.Intn(3) == 0 {
				fmt.Fprintf(&src, "    dst: %s\n", pick(prefixes, 1+rng.Intn(2)))
			}
			if rng.Intn(3) == 0 {
				fmt.Fprintf(&src, "    src: %s\n", pick(prefixes, 1+rng.Intn(2)))
			}
			if rng.Intn(4) == 0 {
				fmt.Fprintf(&src, "    dst_port: %s\n", pick([]string{"80", "443", "1-1000", "5000"}, 1+rng.Intn(2)))
			}
			if rng.Intn(4) == 0 {
				fmt.Fprintf(&src, "    method: %s\n", pick(methods, 1+rng.Intn(2)))
			}
			if rng.Intn(4) == 0 {
				fmt.Fprintf(&src, "    app: %s\n", pick([]string{"http", "tls", "ssh", "unknown"}, 1+rng.Intn(2)))
			}
			if rng.Intn(6) == 0 {
				switch rng.Intn(4) {
				case 0:
					fmt.Fprintf(&src, "    not: {%s: %s}\n", []string{"sni", "domain"}[rng.Intn(2)], pick(patterns, 1))
				case 1:
					fmt.Fprintf(&src, "    not: {dst: %s}\n", pick(prefixes, 1))
				case 2:
					fmt.Fprintf(&src, "    not: {method: %s}\n", pick(methods, 1))
				default:
					fmt.Fprintf(&src, "    not: {app: %s}\n", pick([]string{"http", "tls"}, 1))
				}
			}
		}
		s, err := Parse("rules.yaml", []byte(src.String()), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if s.index == nil {
			t.Fatal("no index built")
		}
		for k := 0; k < 200; k++ {
			f := &Facts{
				Src:    netip.AddrPortFrom(netip.MustParseAddr(addrs[rng.Intn(len(addrs))]), 1000),
				Dst:    netip.AddrPortFrom(netip.MustParseAddr(addrs[rng.Intn(len(addrs))]), []uint16{80, 443, 5000}[rng.Intn(3)]),
				App:    apps[rng.Intn(len(apps))],
				Method: flowMethods[rng.Intn(len(flowMethods))],
			}
			if rng.Intn(2) == 0 {
				f.SNI = names[rng.Intn(len(names))]
			}
			if rng.Intn(2) == 0 {
				f.Host = strings.ToUpper(names[rng.Intn(len(names))])
			}
			var bufs flowBufs
			fl := s.prepare(f, false, &bufs)
			if got, want := s.Decide(f).String(), s.decideWalk(&fl).String(); got != want {
				t.Fatalf("round %d: Decide(%+v) indexed %q, walk %q\n%s", round, f, got, want, src.String())
			}
			ev, eok := s.Early(f)
			efl := s.prepare(f, true, nil)
			wv, wok := s.earlyWalk(&efl)
			if eok != wok || ev.String() != wv.String() {
				t.Fatalf("round %d: Early(%+v) indexed %v %v, walk %v %v\n%s", round, f, ev, eok, wv, wok, src.String())
			}
		}
	}
}
