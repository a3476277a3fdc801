package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/netward/netward/inspect"
	"github.com/netward/netward/rules"
)

// TestRealisticRules loads the generated rule file as netward would and
// runs its cases: 1,000 rules, 10,000 listed domains, no warnings (no rule
// shadowed, every list used), bench's flows decided only by its allow rules
// or the default, and the refused samples refused.
func TestRealisticRules(t *testing.T) {
	dir := t.TempDir()
	path, files, err := writeRealisticRules(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Errorf("files %v, want the rule file and the domain list", files)
	}
	s, err := rules.Load(path, rules.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != realisticRules {
		t.Errorf("%d rules, want %d", s.Len(), realisticRules)
	}
	if _, entries := s.Lists(); entries < realisticDomains {
		t.Errorf("%d list entries, want at least %d", entries, realisticDomains)
	}
	for _, w := range s.Warnings() {
		t.Errorf("warning: %v", w)
	}
	cpath := filepath.Join(dir, "cases.yaml")
	data, err := os.ReadFile(cpath)
	if err != nil {
		t.Fatal(err)
	}
	cases, err := rules.ParseCases(cpath, data)
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, c := range cases {
		if c.Expect != rules.ActionAllow {
			refused++
		}
		if _, ok, why := c.Check(s, nil); !ok {
			t.Errorf("case %q: %s", c.Name, why)
		}
	}
	if refused < 4 {
		t.Errorf("%d cases of refused flows, want at least 4", refused)
	}

	// The same content every run, so runs compare. (netward's hash also
	// covers the list file's path, which differs.)
	again := t.TempDir()
	if _, _, err := writeRealisticRules(again); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rules.yaml", "blocked-domains.txt", "cases.yaml"} {
		a, err1 := os.ReadFile(filepath.Join(dir, f))
		b, err2 := os.ReadFile(filepath.Join(again, f))
		if err1 != nil || err2 != nil || string(a) != string(b) {
			t.Errorf("%s differs between two generations (%v, %v)", f, err1, err2)
		}
	}
}

// loadRealistic writes and loads the realistic 1,000-rule file.
func loadRealistic(b *testing.B) *rules.Set {
	path, _, err := writeRealisticRules(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s, err := rules.Load(path, rules.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// benchFlowFacts are the addresses of a bench flow (IPv4).
var benchFlowFacts = rules.Facts{
	Src: netip.MustParseAddrPort("198.51.100.2:40000"),
	Dst: netip.MustParseAddrPort("192.0.2.2:8080"),
}

// BenchmarkRealisticDecide is the per-request verdict bench's HTTP churn
// costs netward: one Decide of a GET with bench's Host against the
// realistic 1,000-rule file.
func BenchmarkRealisticDecide(b *testing.B) {
	s := loadRealistic(b)
	f := benchFlowFacts
	f.App, f.Host, f.Method, f.Path = inspect.ProtoHTTP1, benchHost, "GET", "/"
	if v := s.Decide(&f); v.Action != rules.ActionAllow {
		b.Fatalf("verdict %v, want allow", v)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Decide(&f)
	}
}

// BenchmarkRealisticEarly is the verdict at the SYN (addresses and ports
// only) bench's flows cost against the realistic 1,000-rule file.
func BenchmarkRealisticEarly(b *testing.B) {
	s := loadRealistic(b)
	f := benchFlowFacts
	b.ReportAllocs()
	for b.Loop() {
		s.Early(&f)
	}
}
