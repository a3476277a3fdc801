package inspect

import (
	"fmt"
	"os"
	"testing"
)

func mustRead(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// BenchmarkTLSParser parses real ClientHellos with one parser reused via
// Reset, as the relay does with a pooled parser.
func BenchmarkTLSParser(b *testing.B) {
	for _, name := range []string{"chromium", "go-pq", "curl"} {
		hello := mustRead(b, "testdata/tls/"+name+".bin")
		b.Run(fmt.Sprintf("%s-%dB", name, len(hello)), func(b *testing.B) {
			var p TLSParser
			b.ReportAllocs()
			b.SetBytes(int64(len(hello)))
			for b.Loop() {
				p.Reset()
				if _, st, err := p.Feed(hello); st != Done || err != nil {
					b.Fatal(st, err)
				}
				if p.Hello().ServerName == "" {
					b.Fatal("no SNI")
				}
			}
		})
	}
}

// BenchmarkHTTPParser parses a real browser GET with one parser reused via
// Reset.
func BenchmarkHTTPParser(b *testing.B) {
	for _, name := range []string{"chromium-get", "curl-get"} {
		req := mustRead(b, "testdata/http/"+name+".bin")
		b.Run(fmt.Sprintf("%s-%dB", name, len(req)), func(b *testing.B) {
			var p HTTPParser
			b.ReportAllocs()
			b.SetBytes(int64(len(req)))
			for b.Loop() {
				p.Reset()
				if n, st, err := p.Feed(req); st != Done || err != nil || n != len(req) {
					b.Fatal(n, st, err)
				}
			}
		})
	}
}
