package inspect

import (
	"crypto/md5"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
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
		b.Run(fmt.Sprintf("%s-%dB-nofingerprints", name, len(hello)), func(b *testing.B) {
			p := NewTLSParser(TLSOptions{NoFingerprints: true})
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

// BenchmarkTLSParserFragmented: the same hello split the way evasive
// clients split it, through the reassembly path.
func BenchmarkTLSParserFragmented(b *testing.B) {
	hello := mustRead(b, "testdata/tls/chromium.bin")
	for name, chunks := range map[string][][]byte{
		"1-byte-records": {oneByteRecords(hello[5:])},
		"1-byte-feeds":   randomSplitsOf(hello, 1),
		"2-records":      {records(hello[5:], 600)},
	} {
		b.Run(name, func(b *testing.B) {
			var p TLSParser
			b.ReportAllocs()
			for b.Loop() {
				p.Reset()
				for _, c := range chunks {
					if _, st, err := p.Feed(c); err != nil || st == Done {
						break
					}
				}
				if p.Hello() == nil {
					b.Fatal("not done")
				}
			}
		})
	}
}

// BenchmarkTLSParserNewNames: every hello has a server name the parser has
// not seen, so its strings (SNI, JA3, JA3 hash) must be allocated.
func BenchmarkTLSParserNewNames(b *testing.B) {
	var hellos [][]byte
	for i := range 1000 {
		hellos = append(hellos, records(helloSpec{sni: []string{fmt.Sprintf("host-%d.example", i)}, alpn: []string{"h2"},
			versions: []uint16{VersionTLS13}, ciphers: []uint16{0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, uint16(i)}}.msg()))
	}
	var p TLSParser
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Reset()
		if _, st, err := p.Feed(hellos[i%len(hellos)]); st != Done || err != nil {
			b.Fatal(st, err)
		}
		i++
	}
}

// BenchmarkHTTPParser1ByteFeeds: the browser GET arriving one byte per
// call, presented again each time with one byte more (the relay's
// contract); linear thanks to the remembered scan position.
func BenchmarkHTTPParser1ByteFeeds(b *testing.B) {
	req := mustRead(b, "testdata/http/chromium-get.bin")
	var p HTTPParser
	b.ReportAllocs()
	for b.Loop() {
		p.Reset()
		for i := 1; i <= len(req); i++ {
			if _, st, err := p.Feed(req[:i]); err != nil || (st == Done) != (i == len(req)) {
				b.Fatal(i, st, err)
			}
		}
	}
}

// BenchmarkHTTPParserPipelined: 10 keep-alive requests with chunked and
// Content-Length bodies between them.
func BenchmarkHTTPParserPipelined(b *testing.B) {
	one := "POST /upload?id=1 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench/1\r\nContent-Length: 11\r\n\r\nhello world" +
		"PUT /chunk HTTP/1.1\r\nHost: api.example\r\nUser-Agent: bench/1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	in := []byte(strings.Repeat(one, 5))
	var p HTTPParser
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		p.Reset()
		buf, reqs := in, 0
		for len(buf) > 0 {
			n, st, err := p.Feed(buf)
			if err != nil {
				b.Fatal(err)
			}
			if st == Done {
				reqs++
			}
			buf = buf[n:]
		}
		if reqs != 10 {
			b.Fatal(reqs)
		}
	}
}

// BenchmarkFingerprintHashes is the floor under the fingerprints of the
// Chromium hello: only the MD5 (JA3) and the two SHA-256 (JA4) over the
// strings the parser builds, without building them.
func BenchmarkFingerprintHashes(b *testing.B) {
	var p TLSParser
	if _, st, err := p.Feed(mustRead(b, "testdata/tls/chromium.bin")); st != Done || err != nil {
		b.Fatal(st, err)
	}
	h := p.Hello()
	ja3 := []byte(h.JA3)
	ciphers := appendHexList(nil, h.CipherSuites)
	exts := appendHexList(nil, h.Extensions)
	exts = append(append(exts, '_'), appendHexList(nil, h.SignatureAlgorithms)...)
	b.ReportAllocs()
	for b.Loop() {
		md5.Sum(ja3)
		sha256.Sum256(ciphers)
		sha256.Sum256(exts)
	}
}
