package inspect

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// tlsResult is what a TLSParser made of a whole input.
type tlsResult struct {
	st    Status
	err   error
	end   int // absolute offset where the ClientHello ended (Done)
	hello *ClientHello
}

// feedTLS feeds the chunks in order to p, as a relay would, until Done or an
// error.
func feedTLS(p *TLSParser, chunks [][]byte) tlsResult {
	abs := 0
	for _, c := range chunks {
		n, st, err := p.Feed(c)
		if err != nil {
			return tlsResult{st: st, err: err}
		}
		if st == Done {
			return tlsResult{st: Done, end: abs + n, hello: p.Hello().Clone()}
		}
		if n != len(c) {
			panic("TLSParser: NeedMore without consuming all bytes")
		}
		abs += n
	}
	return tlsResult{st: NeedMore}
}

// httpEvent is one Done (or the final state) of an HTTP run.
type httpEvent struct {
	end int // absolute offset where the head ended
	req Request
}

type httpResult struct {
	events   []httpEvent
	err      error
	consumed int // absolute bytes consumed at the end
}

// runHTTP plays the relay: it appends each chunk to the unconsumed bytes
// and calls Feed until it needs more, recording every request head.
func runHTTP(tb testing.TB, p *HTTPParser, chunks [][]byte) httpResult {
	var res httpResult
	var buf []byte
	for _, c := range chunks {
		buf = append(buf, c...)
		for {
			n, st, err := p.Feed(buf)
			if err != nil {
				if n != 0 {
					tb.Fatalf("error %v with n=%d", err, n)
				}
				res.err = err
				return res
			}
			if n < 0 || n > len(buf) {
				tb.Fatalf("n=%d out of range 0..%d", n, len(buf))
			}
			res.consumed += n
			buf = buf[n:]
			if st != Done {
				break
			}
			if n == 0 {
				tb.Fatalf("Done without consuming")
			}
			res.events = append(res.events, httpEvent{end: res.consumed, req: *p.Request()})
		}
	}
	return res
}

func FuzzTLSParser(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzTLSParser (see TestFuzzSeedCorpus).
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		var whole, split TLSParser
		w := feedTLS(&whole, [][]byte{data})
		s := feedTLS(&split, randomSplits(data, seed))
		if w.st != s.st || w.err != s.err || w.end != s.end {
			t.Fatalf("whole: %v %v end=%d; split: %v %v end=%d", w.st, w.err, w.end, s.st, s.err, s.end)
		}
		if !reflect.DeepEqual(w.hello, s.hello) {
			t.Fatalf("hello differs:\nwhole %+v\nsplit %+v", w.hello, s.hello)
		}
		if w.err != nil {
			var pe *ParseError
			if !errors.As(w.err, &pe) || pe.Proto != ProtoTLS {
				t.Fatalf("untyped error %v", w.err)
			}
		}
		if w.st == Done {
			checkHello(t, w.hello, data[:w.end])
		}
		// A reused parser gives the same answer as a fresh one.
		whole.Reset()
		if r := feedTLS(&whole, [][]byte{data}); r.st != w.st || r.err != w.err || !reflect.DeepEqual(r.hello, w.hello) {
			t.Fatalf("after Reset: %v %v, first: %v %v", r.st, r.err, w.st, w.err)
		}
	})
}

// checkHello checks what must hold for any parsed ClientHello.
func checkHello(t *testing.T, h *ClientHello, in []byte) {
	t.Helper()
	if h.Size > len(in) || h.Size > DefaultMaxHelloSize || h.Records < 1 {
		t.Fatalf("size %d records %d for %d input bytes", h.Size, h.Records, len(in))
	}
	want := strings.TrimSuffix(strings.ToLower(h.ServerNameRaw), ".")
	if h.ServerName != want || strings.HasSuffix(want, ".") || strings.HasPrefix(want, ".") || strings.Contains(want, "..") {
		t.Fatalf("ServerName %q from %q", h.ServerName, h.ServerNameRaw)
	}
	if len(h.JA3Hash) != 32 || len(h.JA4) != 36 || h.JA4[0] != 't' || h.JA4[10] != '_' || h.JA4[23] != '_' {
		t.Fatalf("fingerprints %q %q", h.JA3Hash, h.JA4)
	}
	if h.ServerNameRaw != "" && !h.HasServerName {
		t.Fatal("name without extension")
	}
}

func FuzzHTTPParser(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzHTTPParser (see TestFuzzSeedCorpus).
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		var whole, split HTTPParser
		opts := HTTPOptions{MaxHeaderBytes: 2048, MaxLineBytes: 512, MaxHeaders: 16}
		whole.opts, split.opts = opts.withDefaults(), opts.withDefaults()
		w := runHTTP(t, &whole, [][]byte{data})
		s := runHTTP(t, &split, randomSplits(data, seed))
		// After an error, how much was consumed depends on the split; the
		// bytes are never forwarded then.
		if w.err != s.err || (w.err == nil && w.consumed != s.consumed) || !reflect.DeepEqual(w.events, s.events) {
			t.Fatalf("whole: %v consumed=%d %+v\nsplit: %v consumed=%d %+v", w.err, w.consumed, w.events, s.err, s.consumed, s.events)
		}
		if w.err != nil {
			var pe *ParseError
			if !errors.As(w.err, &pe) || pe.Proto != ProtoHTTP1 {
				t.Fatalf("untyped error %v", w.err)
			}
		}
		start := 0
		for _, e := range w.events {
			checkRequest(t, &e.req, data[start:e.end])
			start = e.end
		}
	})
}

// checkRequest checks what must hold for any parsed request; in holds the
// bytes from the end of the previous head to the end of this one.
func checkRequest(t *testing.T, r *Request, in []byte) {
	t.Helper()
	if r.HeadSize > len(in) || !bytes.HasSuffix(in, []byte("\r\n")) {
		t.Fatalf("head size %d, input %q", r.HeadSize, in)
	}
	if r.H2Preface {
		return
	}
	if r.Host != strings.ToLower(r.Host) || strings.HasSuffix(r.Host, ".") || strings.ContainsAny(r.Host, "[]%,@/ ") {
		t.Fatalf("Host %q not normalised", r.Host)
	}
	if len(r.Version) != 8 || !strings.HasPrefix(r.Version, "HTTP/1.") || r.Version[7] < '0' || r.Version[7] > '9' {
		t.Fatalf("version %q", r.Version)
	}
	if r.Method == "" || r.Target == "" || !bytes.Contains(in, []byte(r.Method+" "+r.Target+" "+r.Version+"\r\n")) {
		t.Fatalf("request line %q %q %q not in %q", r.Method, r.Target, r.Version, in)
	}
	if r.Path != "" && r.Path != "/" && r.Path != "*" && !strings.Contains(r.Target, r.Path) {
		t.Fatalf("path %q not in target %q", r.Path, r.Target)
	}
}

// FuzzDetect: Detect never changes its mind. Once a prefix gives a sure
// answer, every longer input starting with it gives the same answer, and a
// not-sure answer is always ProtoUnknown.
func FuzzDetect(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzDetect (see TestFuzzSeedCorpus).
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		full, fullSure := Detect(data)
		if !fullSure && full != ProtoUnknown {
			t.Fatalf("not sure but %v", full)
		}
		if len(data) >= DetectMaxBytes && !fullSure {
			t.Fatalf("not sure after %d bytes", len(data))
		}
		end := 0
		for _, c := range randomSplits(data, seed) {
			end += len(c)
			p, sure := Detect(data[:end])
			if !sure && p != ProtoUnknown {
				t.Fatalf("prefix %d: not sure but %v", end, p)
			}
			if sure && (p != full || !fullSure) {
				t.Fatalf("prefix %d says %v, whole input %v %v", end, p, full, fullSure)
			}
		}
		if DetectFinal(data) != full && fullSure {
			t.Fatal("DetectFinal disagrees")
		}
	})
}
