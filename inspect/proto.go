package inspect

// Proto is the application protocol a flow's first client bytes show.
type Proto uint8

const (
	ProtoUnknown Proto = iota // nothing recognised, or the client sent nothing in time
	ProtoTLS                  // TLS handshake record (ClientHello)
	ProtoHTTP1                // HTTP/1.0 or HTTP/1.1 request
	ProtoHTTP2                // HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4)
	ProtoSSH                  // SSH identification string (RFC 4253 §4.2)
	ProtoQUIC                 // UDP: a QUIC Initial (RFC 9000 §17.2.2, v1 or v2)
	ProtoDNS                  // a DNS query (UDP or TCP, port 53)
	ProtoUDP                  // UDP that is neither QUIC nor DNS
)

// String returns the name rules use for the protocol (the rule "app:" value).
func (p Proto) String() string {
	switch p {
	case ProtoTLS:
		return "tls"
	case ProtoHTTP1:
		return "http"
	case ProtoHTTP2:
		return "h2"
	case ProtoSSH:
		return "ssh"
	case ProtoQUIC:
		return "quic"
	case ProtoDNS:
		return "dns"
	case ProtoUDP:
		return "udp"
	}
	return "unknown"
}

// Status is the answer of a Feed call that did not fail.
type Status uint8

const (
	// NeedMore: the parser has no result yet; present more bytes.
	NeedMore Status = iota
	// Done: a complete message (ClientHello, request head) was parsed.
	Done
)

func (s Status) String() string {
	if s == Done {
		return "done"
	}
	return "need-more"
}

// Parser is the interface the datapath drives for every protocol parser in
// this package (*TLSParser, *HTTPParser). The contract of Feed is common:
//
//   - b holds client bytes not yet consumed: what the previous call left
//     unconsumed (b[n:] of the previous call), with any new bytes appended.
//   - n is how many leading bytes of b the call consumed; the caller must
//     present b[n:] again, with more bytes appended, on the next call.
//   - (n, Done, nil): b[:n] ends exactly at the end of a complete message,
//     which the parser now describes (Hello, Request).
//   - (n, NeedMore, nil): no complete message yet.
//   - (0, _, err): the input is refused, for good (errors are sticky until
//     Reset). err is a *ParseError; its class says why (ErrNotTLS,
//     ErrMalformed, ErrTooLarge, ErrAmbiguous, ErrInvalid, ErrUpgraded).
//
// Every parser enforces a byte cap before it buffers anything, never panics
// on any input, and copies only the bytes it must keep. Reset prepares the
// parser for a new flow and keeps its buffers, so a parser taken from a
// sync.Pool and Reset parses without allocating.
type Parser interface {
	Proto() Proto
	Feed(b []byte) (n int, st Status, err error)
	Reset()
}

var (
	_ Parser = (*TLSParser)(nil)
	_ Parser = (*HTTPParser)(nil)
)

// DetectMaxBytes is the most bytes Detect needs to be sure: for any b at
// least this long, Detect returns sure == true. It equals
// DefaultMaxHeaderBytes because Detect reads a whole request line of an HTTP
// request with an unusual method, and the HTTP parser would accept a line
// that long.
const DetectMaxBytes = DefaultMaxHeaderBytes

// h2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// knownMethods are the request methods Detect recognises from their first
// bytes; any other token method is recognised once the whole request line
// (ending in HTTP/1.0 or HTTP/1.1) has arrived.
var knownMethods = [...]string{
	"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ", "TRACE ", "PATCH ",
	"PROPFIND ", "PROPPATCH ", "MKCOL ", "COPY ", "MOVE ", "LOCK ", "UNLOCK ", "REPORT ", "SEARCH ",
}

// Detect tells the protocol of a flow from the first bytes the client sent.
// sure == false means b is too short to tell (e.g. "GE", "\x16\x03"): wait
// for more bytes. The wait is the caller's: when it gives up (the client is
// silent, as in server-first protocols such as SMTP, or stops mid-way), it
// takes DetectFinal's answer.
//
// Detect errs towards the parsers: bytes a server could take for a TLS
// handshake or an HTTP/1.x request are reported as such, and that parser
// then refuses them if they are malformed, so a malformed or evasive request
// is denied as such rather than let through as "unknown". In particular a
// handshake or alert record with any version below 0x1000 is TLS (crypto/tls
// accepts them as a first record), so is an SSLv2-compatible ClientHello
// (OpenSSL accepts it), and CR/LF bytes before an HTTP request line are
// skipped, as servers skip them (RFC 9112 §2.2).
func Detect(b []byte) (p Proto, sure bool) {
	if len(b) == 0 {
		return ProtoUnknown, false
	}
	maybe := false
	switch {
	case b[0] == recordTypeHandshake || b[0] == recordTypeAlert:
		// A TLS record. crypto/tls accepts any first-record version below
		// 0x1000 and warning alerts before the ClientHello, so all of
		// these are TLS to a server; TLSParser refuses the odd ones.
		if len(b) == 1 || b[1] < 0x10 {
			if len(b) >= 3 {
				return ProtoTLS, true
			}
			maybe = true
		}
	case b[0]&0x80 != 0:
		// SSLv2-compatible ClientHello (RFC 5246 Appendix E.2): 2-byte
		// length with the top bit set, msg_type 1, version 3.x. OpenSSL
		// still accepts it; TLSParser refuses it.
		switch {
		case len(b) >= 5:
			if b[2] == 1 && b[3] == 3 {
				return ProtoTLS, true
			}
		case (len(b) < 3 || b[2] == 1) && (len(b) < 4 || b[3] == 3):
			maybe = true
		}
	case b[0] == 'S':
		switch full, prefix := hasPrefixState(b, "SSH-"); {
		case full:
			return ProtoSSH, true
		case prefix:
			maybe = true
		}
	case b[0] == 'P':
		switch full, prefix := hasPrefixState(b, h2Preface); {
		case full:
			return ProtoHTTP2, true
		case prefix:
			maybe = true
		}
	}
	switch detectHTTP1(b) {
	case detectYes:
		return ProtoHTTP1, true
	case detectMaybe:
		maybe = true
	}
	if maybe {
		return ProtoUnknown, false
	}
	return ProtoUnknown, true
}

// DetectFinal is Detect's answer when no more bytes will be waited for: the
// sure answer if there is one, else ProtoUnknown. A client that sent nothing
// at all (DetectFinal(nil)) is ProtoUnknown.
func DetectFinal(b []byte) Proto {
	if p, sure := Detect(b); sure {
		return p
	}
	return ProtoUnknown
}

// hasPrefixState reports whether b starts with pat (full) or is a proper
// prefix of it (prefix).
func hasPrefixState(b []byte, pat string) (full, prefix bool) {
	if len(b) >= len(pat) {
		return string(b[:len(pat)]) == pat, false
	}
	return false, string(b) == pat[:len(b)]
}

type detectResult uint8

const (
	detectNo detectResult = iota
	detectMaybe
	detectYes
)

// detectHTTP1 recognises an HTTP/1.x request line: a known method followed by
// SP, or any token method whose line ends in " HTTP/1.0" or " HTTP/1.1".
func detectHTTP1(b []byte) detectResult {
	if len(b) > DetectMaxBytes {
		b = b[:DetectMaxBytes]
	}
	i := 0
	for i < len(b) && (b[i] == '\r' || b[i] == '\n') {
		i++
	}
	rest := b[i:]
	if len(rest) == 0 {
		if len(b) == DetectMaxBytes {
			return detectNo
		}
		return detectMaybe
	}
	maybe := false
	for _, m := range knownMethods {
		full, prefix := hasPrefixState(rest, m)
		if full {
			return detectYes
		}
		maybe = maybe || prefix
	}
	if r := detectRequestLine(rest, len(b) == DetectMaxBytes); r != detectNo {
		return r
	}
	if maybe {
		return detectMaybe
	}
	return detectNo
}

// detectRequestLine checks token SP target SP "HTTP/1." DIGIT [CR] LF,
// stopping at the first byte that cannot belong to one. truncated says b was
// cut at DetectMaxBytes, so running out of bytes means "no".
func detectRequestLine(b []byte, truncated bool) detectResult {
	more := detectMaybe
	if truncated {
		more = detectNo
	}
	i := 0
	for i < len(b) && isTchar(b[i]) {
		i++
	}
	if i == len(b) {
		return more
	}
	if i == 0 || b[i] != ' ' {
		return detectNo
	}
	i++
	j := i
	for j < len(b) && b[j] > ' ' && b[j] != 0x7f {
		j++
	}
	if j == len(b) {
		return more
	}
	if j == i || b[j] != ' ' {
		return detectNo
	}
	// "HTTP/1." DIGIT [CR] LF: any minor version, because servers read
	// every HTTP/1.x as 1.1 (RFC 9112 §2.3); a request the server would
	// take must never be detected as "not HTTP" and so escape inspection.
	rest := b[j+1:]
	const prefix = "HTTP/1."
	if full, partial := hasPrefixState(rest, prefix); !full {
		if partial {
			return more
		}
		return detectNo
	}
	rest = rest[len(prefix):]
	switch {
	case len(rest) == 0:
		return more
	case rest[0] < '0' || rest[0] > '9':
		return detectNo
	}
	rest = rest[1:]
	for _, end := range [...]string{"\r\n", "\n"} {
		full, partial := hasPrefixState(rest, end)
		if full {
			return detectYes
		}
		if partial {
			return more
		}
	}
	return detectNo
}
