package rules

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/netward/netward/inspect"
)

// Scaling benchmarks: evaluation time as the number of domains in a list,
// CIDRs in a list, or rules grows from 10 to 100,000. Run with
//
//	go test ./rules -run '^$' -bench Scale -benchmem

var scaleSizes = []int{10, 100, 1000, 10000, 100000}

func benchSet(b *testing.B, src string, list string) *Set {
	b.Helper()
	s, err := Parse("rules.yaml", []byte(src), Options{
		GeoFromFacts: true,
		ReadFile:     func(string) ([]byte, error) { return []byte(list), nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchDecide(b *testing.B, s *Set, f *Facts, want string) {
	b.Helper()
	if got := s.Decide(f).String(); got != want {
		b.Fatalf("Decide = %q, want %q", got, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.Decide(f)
	}
}

// One rule whose domain condition is a list of n domains (a block list).
func BenchmarkScaleDomainList(b *testing.B) {
	for _, n := range scaleSizes {
		var list strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&list, ".site%d.example\n", i)
		}
		s := benchSet(b, "default: allow\nlists: {blocked: {file: blocked.txt}}\nrules:\n  - {name: blocked, action: deny, domain: $blocked}\n", list.String())
		hit := &Facts{Dst: netip.MustParseAddrPort("192.0.2.1:443"), App: inspect.ProtoTLS, SNI: fmt.Sprintf("www.cdn.site%d.example", n-1)}
		miss := &Facts{Dst: netip.MustParseAddrPort("192.0.2.1:443"), App: inspect.ProtoTLS, SNI: "www.cdn.other.example"}
		b.Run(fmt.Sprintf("domains=%d/hit", n), func(b *testing.B) { benchDecide(b, s, hit, "deny by blocked") })
		b.Run(fmt.Sprintf("domains=%d/miss", n), func(b *testing.B) { benchDecide(b, s, miss, "allow by default") })
	}
}

// One rule whose dst condition is a list of n CIDRs.
func BenchmarkScaleCIDRList(b *testing.B) {
	for _, n := range scaleSizes {
		var list strings.Builder
		for i := 0; i < n; i++ {
			// disjoint /30s under 10.0.0.0/8 and 2001:db8::/32
			if i%2 == 0 {
				fmt.Fprintf(&list, "10.%d.%d.%d/30\n", (i>>14)&255, (i>>6)&255, (i&63)<<2)
			} else {
				fmt.Fprintf(&list, "2001:db8:%x:%x::/64\n", i>>16, i&0xffff)
			}
		}
		s := benchSet(b, "default: allow\nlists: {nets: {file: nets.txt}}\nrules:\n  - {name: nets, action: drop, dst: $nets}\n", list.String())
		hit := &Facts{Dst: netip.MustParseAddrPort("[2001:db8:0:1::9]:443")}
		miss := &Facts{Dst: netip.MustParseAddrPort("192.0.2.1:443")}
		b.Run(fmt.Sprintf("cidrs=%d/hit", n), func(b *testing.B) { benchDecide(b, s, hit, "drop by nets") })
		b.Run(fmt.Sprintf("cidrs=%d/miss", n), func(b *testing.B) { benchDecide(b, s, miss, "allow by default") })
	}
}

// n rules, each with its own SNI (the shape of a per-site rule set); the
// flow matches the last rule or none.
func BenchmarkScaleDomainRules(b *testing.B) {
	for _, n := range scaleSizes {
		var src strings.Builder
		src.WriteString("default: allow\nrules:\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&src, "  - {name: r%d, action: deny, sni: .site%d.example}\n", i, i)
		}
		s := benchSet(b, src.String(), "")
		last := &Facts{Dst: netip.MustParseAddrPort("192.0.2.1:443"), App: inspect.ProtoTLS, SNI: fmt.Sprintf("www.site%d.example", n-1)}
		miss := &Facts{Dst: netip.MustParseAddrPort("192.0.2.1:443"), App: inspect.ProtoTLS, SNI: "www.other.example"}
		b.Run(fmt.Sprintf("rules=%d/last", n), func(b *testing.B) { benchDecide(b, s, last, fmt.Sprintf("deny by r%d", n-1)) })
		b.Run(fmt.Sprintf("rules=%d/miss", n), func(b *testing.B) { benchDecide(b, s, miss, "allow by default") })
	}
}

// n rules, each with its own destination address and port (address-only
// rules, decided by Early).
func BenchmarkScaleAddressRules(b *testing.B) {
	for _, n := range scaleSizes {
		var src strings.Builder
		src.WriteString("default: allow\nrules:\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&src, "  - {name: r%d, action: drop, dst: 10.%d.%d.%d, dst_port: 443}\n", i, (i>>16)&255, (i>>8)&255, i&255)
		}
		s := benchSet(b, src.String(), "")
		i := n - 1
		last := &Facts{Dst: netip.MustParseAddrPort(fmt.Sprintf("10.%d.%d.%d:443", (i>>16)&255, (i>>8)&255, i&255))}
		miss := &Facts{Dst: netip.MustParseAddrPort("192.0.2.1:443")}
		b.Run(fmt.Sprintf("rules=%d/last", n), func(b *testing.B) { benchDecide(b, s, last, fmt.Sprintf("drop by r%d", n-1)) })
		b.Run(fmt.Sprintf("rules=%d/miss", n), func(b *testing.B) { benchDecide(b, s, miss, "allow by default") })
		b.Run(fmt.Sprintf("rules=%d/early", n), func(b *testing.B) {
			if v, ok := s.Early(last); !ok || v.Rule != fmt.Sprintf("r%d", n-1) {
				b.Fatalf("Early = %v, %v", v, ok)
			}
			b.ReportAllocs()
			for b.Loop() {
				s.Early(last)
			}
		})
	}
}

// A realistic small policy: the common per-flow cost.
func BenchmarkDecideTypical(b *testing.B) {
	s := benchSet(b, orderRules, "")
	f := &Facts{Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort("192.0.2.1:443"), App: inspect.ProtoTLS, SNI: "WWW.Example.com"}
	benchDecide(b, s, f, "allow by allow-web")
}

func BenchmarkLoad10kList(b *testing.B) {
	var list strings.Builder
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&list, ".site%d.example\n", i)
	}
	src := []byte("default: allow\nlists: {blocked: {file: blocked.txt}}\nrules:\n  - {name: blocked, action: deny, domain: $blocked}\n")
	data := []byte(list.String())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("rules.yaml", src, Options{ReadFile: func(string) ([]byte, error) { return data, nil }}); err != nil {
			b.Fatal(err)
		}
	}
}

// Load time of big rule files (what a reload costs).
func BenchmarkLoadRules(b *testing.B) {
	for _, n := range []int{1000, 5000, 100000} {
		var src strings.Builder
		src.WriteString("default: allow\nrules:\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&src, "  - {name: r%d, action: deny, sni: .site%d.example, dst_port: 443}\n", i, i)
		}
		data := []byte(src.String())
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse("rules.yaml", data, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
