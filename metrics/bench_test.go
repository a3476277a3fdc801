package metrics

import (
	"testing"
)

// BenchmarkAddBytes is the per-write cost the relay pays: one atomic add on
// the flow and one on the global counter.
func BenchmarkAddBytes(b *testing.B) {
	m := New(Options{})
	f := m.StartFlow(1, ap("192.0.2.1:1"), ap("198.51.100.1:443"), t0)
	b.ReportAllocs()
	for b.Loop() {
		f.AddToServer(1460)
	}
}

// BenchmarkAddBytesParallel has every goroutine on its own flow, as the
// relay does; only the global counter is shared.
func BenchmarkAddBytesParallel(b *testing.B) {
	m := New(Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		f := m.StartFlow(uint64(b.N), ap("192.0.2.1:1"), ap("198.51.100.1:443"), t0)
		for pb.Next() {
			f.AddToClient(1460)
		}
	})
}

// BenchmarkFlowLifecycle is the per-flow cost: start, app, name, verdict,
// end.
func BenchmarkFlowLifecycle(b *testing.B) {
	m := New(Options{})
	client, server := ap("192.0.2.1:1"), ap("198.51.100.1:443")
	b.ReportAllocs()
	var id uint64
	for b.Loop() {
		id++
		f := m.StartFlow(id, client, server, t0)
		f.SetApp("tls")
		f.SetName("www.example.com")
		f.SetVerdict("allow", "web")
		f.End()
	}
}

func BenchmarkSnapshot10k(b *testing.B) {
	m := New(Options{})
	for i := range 10000 {
		m.StartFlow(uint64(i), ap("192.0.2.1:1"), ap("198.51.100.1:443"), t0)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.flows.Snapshot(Filter{}, t0)
	}
}
