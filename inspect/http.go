package inspect

import "bytes"

// HTTP/1.x limits. They are per request head; a body is skipped, not
// buffered, whatever its size.
const (
	// DefaultMaxHeaderBytes caps a request head: request line, header
	// lines, final empty line and any empty lines before the request line.
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxLineBytes caps one line (request line, header line, chunk
	// size line, trailer line), CRLF included. Common servers refuse lines
	// over 8 KiB (nginx large_client_header_buffers, Apache
	// LimitRequestLine); 16 KiB leaves room and still bounds the work.
	DefaultMaxLineBytes = 16 << 10
	// DefaultMaxHeaders caps the header lines of one request (and the
	// trailer lines of one chunked body). Apache refuses more than 100.
	DefaultMaxHeaders = 256
)

// HTTPOptions configures an HTTPParser. Zero fields take the defaults.
type HTTPOptions struct {
	MaxHeaderBytes int // default DefaultMaxHeaderBytes
	MaxLineBytes   int // default DefaultMaxLineBytes; never more than MaxHeaderBytes
	MaxHeaders     int // default DefaultMaxHeaders
}

func (o HTTPOptions) withDefaults() HTTPOptions {
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = DefaultMaxLineBytes
	}
	o.MaxLineBytes = min(o.MaxLineBytes, o.MaxHeaderBytes)
	if o.MaxHeaders <= 0 {
		o.MaxHeaders = DefaultMaxHeaders
	}
	return o
}

// Request is the head of one HTTP/1.x request.
//
// All strings are ordinary, immutable Go strings (interned, see
// HTTPParser) and may be kept for ever. The Request itself is overwritten by
// the next Done.
type Request struct {
	// Method is the request method as sent (case-sensitive, RFC 9110 §9.1).
	Method string
	// Target is the request-target as sent: origin-form "/a?b",
	// absolute-form "http://host/a", authority-form "host:443" (CONNECT)
	// or "*" (OPTIONS).
	Target string
	// Path is the path of the target without the query, as sent (not
	// percent-decoded, dot segments not removed): "/a" for "/a?b" and for
	// "http://host/a?b", "/" for "http://host", "*" for "*", "" for
	// CONNECT.
	Path string
	// Version is the version as sent: "HTTP/1.1", "HTTP/1.0", a higher
	// HTTP/1 minor version (read as 1.1, RFC 9110 §2.5), or "HTTP/2.0" for
	// the preface.
	Version string
	// Host is the authority's host, normalised: ASCII lower case, port
	// removed, one trailing dot removed, IPv6 brackets removed. It comes
	// from the target when the target has an authority (absolute-form,
	// RFC 9112 §3.2.2, and CONNECT's authority-form), else from the Host
	// header. "" for an HTTP/1.0 request without Host, or an empty Host.
	Host string
	// HostRaw is where Host came from, as sent (the authority or the Host
	// header value).
	HostRaw string
	// UserAgent and Referer are the header values, OWS trimmed; "" if
	// absent (the first is taken if repeated).
	UserAgent string
	Referer   string
	// Upgrade is the Upgrade header value ("websocket", "h2c", ...).
	// H2CUpgrade is whether it offers "h2c" (RFC 7540 §3.2).
	//
	// After a request with Upgrade, or a CONNECT, the server may switch the
	// connection away from HTTP/1.x (101 or a 2xx answer). The parser
	// cannot see the answer and keeps reading HTTP/1.x; the relay must stop
	// feeding it once the server has switched. (If the server refuses, the
	// client goes on with HTTP/1.x and those requests must still be
	// inspected.)
	Upgrade    string
	H2CUpgrade bool
	// H2Preface is set for the HTTP/2 connection preface (RFC 9113 §3.4),
	// accepted as the first bytes or after an h2c upgrade request. The
	// connection carries HTTP/2 from there on: Feed returns ErrUpgraded.
	H2Preface bool
	// ContentLength is the body length: the Content-Length value, 0 without
	// body, -1 for a chunked body.
	ContentLength int64
	// HeadSize is the size of the request head in bytes, from the request
	// line to the final CRLF (empty lines before the request line included).
	HeadSize int
}

type httpState uint8

const (
	httpHead      httpState = iota // reading a request head
	httpBody                       // skipping Content-Length body bytes
	httpChunkSize                  // reading a chunk-size line
	httpChunkData                  // skipping chunk data
	httpChunkEnd                   // expecting the CRLF after chunk data
	httpTrailer                    // reading trailer lines
	httpUpgraded                   // after the HTTP/2 preface
)

// HTTPParser finds and parses every request head on an HTTP/1.x connection
// (keep-alive and pipelining), skipping bodies by Content-Length or chunked
// coding so the next head is found exactly where the server will look for
// it. The zero value is ready to use with default options.
//
// Feed follows the Parser contract, which for HTTP reads:
//
//   - (n, Done, nil): b[:n] ends exactly at the end of a complete request
//     head (any body bytes of the previous request that preceded it are
//     included in n); Request describes it. The relay asks policy and, if
//     allowed, forwards b[:n] and calls Feed again on b[n:].
//   - (n, NeedMore, nil): b[:n] are bytes that may be forwarded now (body
//     bytes of a request already judged); b[n:] is an incomplete request
//     head (or an incomplete chunk-size or trailer line) that the caller
//     keeps and presents again with more bytes appended. The parser
//     remembers how far it scanned, so a head that arrives a byte at a time
//     costs linear, not quadratic, time.
//   - (0, _, err): ambiguous or invalid input (ErrAmbiguous, ErrInvalid,
//     ErrTooLarge) or Feed after the HTTP/2 preface (ErrUpgraded); never
//     forward.
//
// Strictness: the parser accepts what RFC 9112 requires a server to accept
// and reports as ErrAmbiguous whatever servers are known to read in
// different ways: more than one Host; Content-Length with
// Transfer-Encoding; a Content-Length that is not one plain decimal; a
// Transfer-Encoding other than "chunked"; Transfer-Encoding in HTTP/1.0;
// obs-fold (a line starting with SP or HTAB); whitespace between a field
// name and its colon; a bare CR, or a bare LF as line end; '%', ',' or '@'
// in a host; an absolute-form authority that disagrees with Host; a chunk
// size that overflows or is not followed by CRLF. Grammar violations
// (bad method, target or version, a control byte in a field, a missing
// Host in HTTP/1.1) are ErrInvalid; going over a limit is ErrTooLarge.
//
// Allocation: none per request once warm, except for strings: request
// strings are interned in a small per-parser table, so values that repeat
// on a connection (Host, User-Agent, common paths) cost nothing after their
// first occurrence and a new value costs one allocation.
type HTTPParser struct {
	opts      HTTPOptions
	state     httpState
	err       error
	remaining int64 // body or chunk bytes left to skip

	head        headState // scan state of the current head
	lineScanned int       // bytes of the current body line (chunk size, trailer) searched for LF
	trailers    int       // trailer lines so far
	trailerSize int       // trailer bytes so far

	requests int  // request heads completed on this connection
	h2cAsked bool // the last request offered Upgrade: h2c

	req     Request
	scratch []byte
	intern  internTable
}

// NewHTTPParser returns a parser with the given options.
func NewHTTPParser(o HTTPOptions) *HTTPParser {
	p := &HTTPParser{opts: o}
	p.Reset()
	return p
}

// Proto returns ProtoHTTP1.
func (p *HTTPParser) Proto() Proto { return ProtoHTTP1 }

// Reset prepares the parser for a new connection, keeping its buffers and
// intern table.
func (p *HTTPParser) Reset() {
	// Field by field: the request and intern table are reused as they are
	// (finishHead overwrites the request).
	p.opts = p.opts.withDefaults()
	p.state, p.err, p.remaining = httpHead, nil, 0
	p.head = headState{}
	p.lineScanned, p.trailers, p.trailerSize = 0, 0, 0
	p.requests, p.h2cAsked = 0, false
}

// Request returns the request whose head ended at the last Done. It is
// overwritten by the next Done; its strings may be kept. Before the first
// Done after a Reset its content is meaningless.
func (p *HTTPParser) Request() *Request { return &p.req }

func (p *HTTPParser) fail(err error) (int, Status, error) {
	p.err = err
	return 0, NeedMore, err
}

var (
	errHTTPChunkSize     = httpError(ErrAmbiguous, "bad chunk size")
	errHTTPChunkOverflow = httpError(ErrAmbiguous, "chunk size overflow")
	errHTTPChunkEnd      = httpError(ErrAmbiguous, "chunk data not followed by CRLF")
	errHTTPChunkExt      = httpError(ErrInvalid, "bad chunk extension")
	errHTTPTrailerSize   = httpError(ErrTooLarge, "trailer section over size limit")
	errHTTPTrailers      = httpError(ErrTooLarge, "too many trailer fields")
	errHTTPUpgraded      = httpError(ErrUpgraded, "connection switched to HTTP/2")
)

// Feed presents the connection's unconsumed client bytes; see the type's
// documentation.
func (p *HTTPParser) Feed(b []byte) (n int, st Status, err error) {
	if p.opts.MaxHeaderBytes == 0 {
		p.opts = p.opts.withDefaults() // zero value
	}
	if p.err != nil {
		return 0, NeedMore, p.err
	}
	off := 0
	for {
		switch p.state {
		case httpHead:
			size, done, err := p.parseHead(b[off:])
			if err != nil {
				return p.fail(err)
			}
			if !done {
				return off, NeedMore, nil
			}
			return off + size, Done, nil

		case httpBody, httpChunkData:
			k := int(min(p.remaining, int64(len(b)-off)))
			off += k
			p.remaining -= int64(k)
			if p.remaining > 0 {
				return off, NeedMore, nil
			}
			if p.state == httpBody {
				p.state = httpHead
			} else {
				p.state = httpChunkEnd
			}

		case httpChunkEnd:
			// RFC 9112 §7.1: chunk-data CRLF.
			switch rest := b[off:]; {
			case len(rest) >= 2 && rest[0] == '\r' && rest[1] == '\n':
				off += 2
				p.state = httpChunkSize
			case len(rest) == 0 || len(rest) == 1 && rest[0] == '\r':
				return off, NeedMore, nil
			default:
				return p.fail(errHTTPChunkEnd)
			}

		case httpChunkSize, httpTrailer:
			line, ok, err := p.bodyLine(b[off:])
			if err != nil {
				return p.fail(err)
			}
			if !ok {
				return off, NeedMore, nil
			}
			off += len(line) + 2
			if p.state == httpChunkSize {
				size, err := parseChunkSize(line)
				if err != nil {
					return p.fail(err)
				}
				if size == 0 {
					p.state, p.trailers, p.trailerSize = httpTrailer, 0, 0
				} else {
					p.state, p.remaining = httpChunkData, size
				}
				continue
			}
			// RFC 9112 §7.1.2: trailer-section CRLF.
			if len(line) == 0 {
				p.state = httpHead
				continue
			}
			p.trailers++
			p.trailerSize += len(line) + 2
			switch {
			case p.trailerSize > p.opts.MaxHeaderBytes:
				return p.fail(errHTTPTrailerSize)
			case p.trailers > p.opts.MaxHeaders:
				return p.fail(errHTTPTrailers)
			}
			if err := checkFieldLine(line); err != nil {
				return p.fail(err)
			}

		case httpUpgraded:
			return p.fail(errHTTPUpgraded)
		}
	}
}

// bodyLine returns the next CRLF-terminated line of chunked framing at the
// start of b, without its CRLF; ok is false if it is not complete yet.
func (p *HTTPParser) bodyLine(b []byte) (line []byte, ok bool, err error) {
	if p.lineScanned > len(b) {
		p.lineScanned = 0 // fewer bytes than before: scan again
	}
	limit := min(len(b), p.opts.MaxLineBytes)
	i := bytes.IndexByte(b[p.lineScanned:limit], '\n')
	if i < 0 {
		p.lineScanned = limit
		if len(b) >= p.opts.MaxLineBytes {
			return nil, false, errHTTPLineTooLong
		}
		return nil, false, nil
	}
	lf := p.lineScanned + i
	p.lineScanned = 0
	if lf == 0 || b[lf-1] != '\r' {
		return nil, false, errHTTPBareLF
	}
	line = b[:lf-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, false, errHTTPBareCR
	}
	return line, true, nil
}

// parseChunkSize parses chunk-size [ chunk-ext ] (RFC 9112 §7.1, §7.1.1).
func parseChunkSize(line []byte) (int64, error) {
	var size int64
	i := 0
	for ; i < len(line); i++ {
		d := unhex(line[i])
		if d < 0 {
			break
		}
		if size > (1<<62)>>4 {
			return 0, errHTTPChunkOverflow
		}
		size = size<<4 | int64(d)
	}
	if i == 0 {
		return 0, errHTTPChunkSize
	}
	rest := line[i:]
	if len(rest) == 0 {
		return size, nil
	}
	// chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ):
	// only BWS then ";" may follow the size. The extension's content is
	// checked for bytes no field value may hold, not parsed further; what
	// matters for framing is where the line ends, and that is certain.
	j := 0
	for j < len(rest) && (rest[j] == ' ' || rest[j] == '\t') {
		j++
	}
	if j == len(rest) || rest[j] != ';' {
		return 0, errHTTPChunkSize
	}
	for _, c := range rest[j:] {
		if !fieldValueByte[c] {
			return 0, errHTTPChunkExt
		}
	}
	return size, nil
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}
