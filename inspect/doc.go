// Package inspect reads the first client bytes of a flow and tells what they
// say: which protocol (Detect), and for TLS the ClientHello (TLSParser), for
// HTTP/1.x every request head on the connection (HTTPParser). It is pure
// parsing: no I/O, no goroutines, no global state besides read-only tables.
//
// Everything here reads untrusted bytes. No input makes it panic or read out
// of bounds (TLS structures are read with golang.org/x/crypto/cryptobyte, as
// crypto/tls reads them); every size is capped before anything is buffered;
// every refusal is a typed error. Each parser is fuzzed, and its fuzz target
// checks that any split of the input into Feed calls gives the same result
// as the whole input.
//
// # Detection
//
// Detect(b) returns the protocol and whether it is sure; sure == false means
// "wait for more bytes" (e.g. "GE", "\x16\x03"). The wait is the relay's: when
// its timer fires (a server-first protocol such as SMTP, where the client
// sends nothing) or DetectMaxBytes have arrived, it uses DetectFinal(b),
// which is ProtoUnknown for no bytes or an undecided prefix. Proto.String()
// gives the names rules use: "tls", "http", "h2", "ssh", "unknown".
//
// Detect leans towards the parsers: bytes that a server would take for a TLS
// handshake or an HTTP request (odd record versions, SSLv2-format hellos,
// empty lines before a request line, lower-case methods) are reported as TLS
// or HTTP, and the parser then refuses what is malformed. An evasive flow is
// therefore denied as malformed rather than let through as "unknown".
//
// # Parsers
//
// *TLSParser and *HTTPParser implement Parser:
//
//	Proto() Proto
//	Feed(b []byte) (n int, st Status, err error)
//	Reset()
//
// Feed is given the client bytes not consumed yet (what the previous call
// left, b[n:], with new bytes appended) and answers Done (a message is
// complete and b[:n] ends exactly at its end), NeedMore, or an error, which
// is final until Reset. The zero value of each parser is ready to use with
// default limits; NewTLSParser and NewHTTPParser take options.
//
// TLS. The relay holds all client bytes until the verdict. Feed consumes
// everything it is given until Done (n == len(b)) and keeps a bounded copy of
// the handshake bytes only when the ClientHello is split over records or
// calls; a hello whole in one record of one call is parsed in place. The
// ClientHello may be split in any way, down to 1-byte TCP segments and
// 1-byte TLS records, and up to TLSOptions.MaxHelloSize (default 16 KiB, at
// most 64 KiB). Hello() then gives SNI (as sent and normalised), ALPN,
// offered versions, cipher suites, extensions, groups, key shares, ECH
// presence and the JA3 and JA4 fingerprints. The fingerprints (an MD5 and two
// SHA-256) are most of a parse's cost; TLSOptions.NoFingerprints skips them
// for callers whose rules and logs use neither.
//
//	p := pool.Get().(*inspect.TLSParser)
//	p.Reset()
//	for {
//		_, st, err := p.Feed(newBytes)  // also held for forwarding
//		if err != nil { /* refuse the flow */ }
//		if st == inspect.Done { h := p.Hello(); /* decide on h.ServerName, h.ALPN, ... */ break }
//		// read more (bounded by time and bytes)
//	}
//
// HTTP/1.x. The relay keeps the client bytes not yet forwarded and calls
// Feed on them; every request on a keep-alive or pipelined connection is
// found, bodies are skipped by Content-Length or chunked coding:
//
//	for {
//		n, st, err := p.Feed(buf)
//		if err != nil { /* ErrAmbiguous, ErrInvalid, ErrTooLarge: refuse, never forward */ }
//		if st == inspect.Done {
//			r := p.Request() // decide on r.Host, r.Method, r.Path; if allowed:
//			forward(buf[:n]); buf = buf[n:]
//			continue
//		}
//		forward(buf[:n]) // body bytes of a request already allowed
//		buf = buf[n:]    // an incomplete head: keep, append what arrives
//		break
//	}
//
// After a request with Upgrade, or a CONNECT, the server may switch the
// connection away from HTTP/1.x; the parser cannot see the response, so the
// relay stops feeding it when the server answers 101 (or 2xx to CONNECT).
// The HTTP/2 preface after an h2c upgrade (or at the start) is recognised
// (Request.H2Preface); Feed then returns ErrUpgraded.
//
// # Errors
//
// Every error is a *ParseError whose Class is one of ErrNotTLS,
// ErrMalformed, ErrTooLarge (TLS); ErrAmbiguous, ErrInvalid, ErrTooLarge,
// ErrUpgraded (HTTP), so errors.Is(err, inspect.ErrAmbiguous) works, and whose
// Reason is a short stable text for logs and metric labels. ErrAmbiguous
// marks requests that servers and intermediaries may read differently
// (request smuggling shapes: two Hosts, Content-Length with
// Transfer-Encoding, obs-fold, bare CR/LF, ...): an appliance must not guess
// which reading the server behind it makes. The error values are created at
// init, so returning one does not allocate.
//
// # Memory and allocation
//
// Result strings (SNI, ALPN, JA3, JA4, method, target, Host, User-Agent, ...)
// are ordinary immutable strings that never alias a buffer and may be kept
// for ever (the event log can hold them). To make that cheap, each parser
// interns them in a small bounded table (64 entries, 8 KiB), backed by a
// shared read-only table of well-known values (ALPN IDs, methods, versions):
// a parser reused with Reset allocates nothing for a value it produced
// lately, and one allocation for a new one. Parsing itself allocates nothing
// once a parser's buffers have grown (TestTLSAllocs, TestHTTPAllocs). The
// slice fields of ClientHello (ALPN, CipherSuites, ...) are owned by the
// parser and reused after Reset; ClientHello.Clone copies them.
package inspect
