package event

import (
	"io"
	"testing"
)

// The emit benchmarks measure what the datapath pays per event: encoding on
// the caller's goroutine plus the hand-off to the writer (io.Discard here,
// so the writer keeps up and nothing is dropped).

func benchLog(b *testing.B) *Log {
	l, err := New(Options{Writer: io.Discard, InIface: "eth1", QueueLen: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

func BenchmarkEmitFlow(b *testing.B) {
	l := benchLog(b)
	e := flowEvent(1)
	e.SrcGeo = Geo{Country: "DE", ASN: 64500, ASOrg: "Example"}
	b.ReportAllocs()
	for b.Loop() {
		l.Flow(e)
	}
	b.ReportMetric(float64(l.Stats().Dropped), "dropped")
}

func BenchmarkEmitTLS(b *testing.B) {
	l := benchLog(b)
	e := &TLS{Header: testHeader(), SNI: "www.example.com", Version: 0x0304, ALPN: []string{"h2", "http/1.1"},
		JA3:     "771,4865-4866-4867-49195-49199,0-23-65281-10-11-35-16-5-13-18-51-45-43-27-21,29-23-24,0",
		JA3Hash: "e7eca2baf4458d095b7f45da28c16c34", JA4: "t13d1516h2_8daaf6152771_b186095e22b6"}
	b.ReportAllocs()
	for b.Loop() {
		l.TLS(e)
	}
}

func BenchmarkEmitHTTP(b *testing.B) {
	l := benchLog(b)
	e := &HTTP{Header: testHeader(), Hostname: "www.example.com", URL: "/search?q=a%20b&lang=en",
		Method: "GET", UserAgent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", Protocol: "HTTP/1.1"}
	b.ReportAllocs()
	for b.Loop() {
		l.HTTP(e)
	}
}

func BenchmarkEmitAlert(b *testing.B) {
	l := benchLog(b)
	e := &Alert{Header: testHeader(), Signature: "no-social"}
	b.ReportAllocs()
	for b.Loop() {
		l.Alert(e)
	}
}

// BenchmarkEncodeFlow is the encoding alone, without the queue.
func BenchmarkEncodeFlow(b *testing.B) {
	l := &Log{now: testNow, iface: "eth1"}
	e := flowEvent(1)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = l.appendFlow(buf[:0], e)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkAppendString(b *testing.B) {
	s := "Mozilla/5.0 (X11; Linux x86_64) \"quoted\" \x01 bücher"
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		buf = appendString(buf[:0], s)
	}
}
