package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestRoundsMedianAndRatios(t *testing.T) {
	b := &bench{}
	for i, v := range []float64{10, 30, 20} {
		b.set("tp", "Gbit/s", kernelColumn, v)
		b.set("tp", "Gbit/s", "netward", []float64{5, 9, 12}[i])
		b.add("tp / failed", "", "netward", []float64{0, 2, 1}[i])
	}
	r := b.declare("tp", "Gbit/s")
	if got := r.values[kernelColumn]; got != 20 {
		t.Errorf("kernel median = %v, want 20", got)
	}
	if got := r.values["netward"]; got != 9 {
		t.Errorf("netward median = %v, want 9", got)
	}
	if got, want := r.roundRatios("netward"), "0.50 0.30 0.60"; got != want {
		t.Errorf("roundRatios = %q, want %q", got, want)
	}
	if got := b.declare("tp / failed", "").values["netward"]; got != 3 {
		t.Errorf("failures summed = %v, want 3", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of even count = %v, want 2.5", got)
	}
	one := &bench{}
	one.set("x", "µs", kernelColumn, 1)
	one.set("x", "µs", "netward", 2)
	if rr := one.declare("x", "µs").roundRatios("netward"); rr != "" {
		t.Errorf("one round: roundRatios = %q, want none", rr)
	}
}

// TestVariantSet: -variant's NAME=FLAGS, with an optional @PATH binary
// first, and the names it refuses.
func TestVariantSet(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "netward.old")
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	var v variants
	for _, s := range []string{"netward=", "k=--tcp-accept=kernel --queues 2", "old=@" + bin + " --tcp-accept=kernel"} {
		if err := v.Set(s); err != nil {
			t.Fatalf("Set(%q): %v", s, err)
		}
	}
	want := variants{
		{name: "netward", args: []string{}},
		{name: "k", args: []string{"--tcp-accept=kernel", "--queues", "2"}},
		{name: "old", binary: bin, args: []string{"--tcp-accept=kernel"}},
	}
	for i := range want {
		if v[i].name != want[i].name || v[i].binary != want[i].binary || !slices.Equal(v[i].args, want[i].args) {
			t.Errorf("variant %d = %+v, want %+v", i, v[i], want[i])
		}
	}
	for _, s := range []string{"noequals", "=x", "kernel=", "haproxy=", "old=@/nonexistent/netward"} {
		if err := v.Set(s); err == nil {
			t.Errorf("Set(%q) accepted", s)
		}
	}
}
