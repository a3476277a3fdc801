package rules

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/netward/netward/inspect"
)

// FuzzParse feeds arbitrary rule files (and list file contents) to the
// loader, then judges a few flows with whatever compiled: untrusted input
// gives errors, never a panic.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../examples/rules/*.yaml")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, []byte(".ads.example\n192.0.2.0/24\n"))
	}
	f.Add([]byte(orderRules), []byte(""))
	f.Add([]byte("default: allow\nlists: {l: {file: x}}\nrules:\n- {name: a, action: deny, domain: $l, not: {path: '/a/**'}}\n"), []byte("a.example\n*.b.example\n"))
	flows := []*Facts{
		{Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("192.0.2.1:443"), App: inspect.ProtoTLS, SNI: "www.ads.example"},
		{Src: netip.MustParseAddrPort("[2001:db8::1]:1"), Dst: netip.MustParseAddrPort("[2001:db8::2]:80"), App: inspect.ProtoHTTP1, Host: "Bücher.example:80", Method: "GET", Path: "/a/../b/%2e%2e/c?x"},
		{},
	}
	f.Fuzz(func(t *testing.T, data, list []byte) {
		s, err := Parse("rules.yaml", data, Options{
			GeoFromFacts: true,
			ReadFile:     func(string) ([]byte, error) { return list, nil },
		})
		if err != nil {
			if s != nil {
				t.Fatal("set and error")
			}
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("error %T, want ErrorList", err)
			}
			return
		}
		for _, fl := range flows {
			s.Decide(fl)
			s.Early(fl)
			s.Explain(fl)
			s.DenyPage(DenyPageData{})
		}
	})
}

// FuzzParseCases does the same for cases files.
func FuzzParseCases(f *testing.F) {
	for _, p := range []string{"../examples/rules/cases.yaml", "../examples/rules/geo-cases.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	s, err := Load("../examples/rules/rules.yaml", Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, err := ParseCases("cases.yaml", data)
		if err != nil {
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("error %T, want ErrorList", err)
			}
			return
		}
		for i := range cs {
			cs[i].Check(s, nil)
		}
	})
}
