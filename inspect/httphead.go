package inspect

import (
	"bytes"
	"encoding/binary"
)

// span is a byte range [off, end) inside the current request head.
type span struct{ off, end int }

func (s span) of(b []byte) []byte { return b[s.off:s.end] }

// headState is the scan state of one request head. Offsets are relative to
// the head's first byte, which is b[0] of every Feed call that presents the
// head, so they survive between calls.
type headState struct {
	pos      int // start of the first line not processed yet
	scanned  int // bytes from pos already searched for LF
	reqStart int // start of the request line (after empty lines)
	sawLine  bool
	headers  int

	method, target span
	minor          byte // '0' or '1'
	preface        bool

	host      span
	hostCount int
	userAgent span
	referer   span
	upgrade   span
	h2c       bool

	contentLength int64
	clCount       int
	teCount       int
}

var (
	errHTTPLineTooLong   = httpError(ErrTooLarge, "line over size limit")
	errHTTPHeadTooLarge  = httpError(ErrTooLarge, "request head over size limit")
	errHTTPTooManyFields = httpError(ErrTooLarge, "too many header fields")
	errHTTPBareLF        = httpError(ErrAmbiguous, "bare LF line ending")
	errHTTPBareCR        = httpError(ErrAmbiguous, "bare CR")
	errHTTPObsFold       = httpError(ErrAmbiguous, "obs-fold or whitespace-started line")
	errHTTPSpaceColon    = httpError(ErrAmbiguous, "whitespace between field name and colon")
	errHTTPDupHost       = httpError(ErrAmbiguous, "more than one Host")
	errHTTPHostMismatch  = httpError(ErrAmbiguous, "Host differs from target authority")
	errHTTPHostEncoding  = httpError(ErrAmbiguous, "host with '%', ',' or '@'")
	errHTTPCLTE          = httpError(ErrAmbiguous, "Content-Length with Transfer-Encoding")
	errHTTPBadCL         = httpError(ErrAmbiguous, "invalid Content-Length")
	errHTTPDupCL         = httpError(ErrAmbiguous, "more than one Content-Length")
	errHTTPBadTE         = httpError(ErrAmbiguous, "Transfer-Encoding other than chunked")
	errHTTPDupTE         = httpError(ErrAmbiguous, "more than one Transfer-Encoding")
	errHTTPTE10          = httpError(ErrAmbiguous, "Transfer-Encoding in HTTP/1.0")
	errHTTPRequestLine   = httpError(ErrInvalid, "bad request line")
	errHTTPMethod        = httpError(ErrInvalid, "bad method")
	errHTTPTarget        = httpError(ErrInvalid, "bad request target")
	errHTTPVersion       = httpError(ErrInvalid, "unsupported HTTP version")
	errHTTPFieldName     = httpError(ErrInvalid, "bad field name")
	errHTTPFieldValue    = httpError(ErrInvalid, "control byte in field value")
	errHTTPNoHost        = httpError(ErrInvalid, "HTTP/1.1 request without Host")
	errHTTPHost          = httpError(ErrInvalid, "bad host")
	errHTTPPreface       = httpError(ErrInvalid, "HTTP/2 preface without h2c upgrade")
)

// parseHead scans the request head at the start of hs. It returns its size
// and done == true once the head is complete and p.req is filled.
func (p *HTTPParser) parseHead(hs []byte) (size int, done bool, err error) {
	h := &p.head
	if h.pos+h.scanned > len(hs) {
		*h = headState{} // fewer bytes than before: start over
	}
	maxHead, maxLine := p.opts.MaxHeaderBytes, p.opts.MaxLineBytes
	limit := min(len(hs), maxHead)
	for {
		if h.preface {
			return p.finishPreface(hs)
		}
		from := h.pos + h.scanned
		var lf int
		if from < limit {
			lf = bytes.IndexByte(hs[from:limit], '\n')
		} else {
			lf = -1
		}
		if lf < 0 {
			h.scanned = limit - h.pos
			if limit-h.pos >= maxLine {
				return 0, false, errHTTPLineTooLong
			}
			if len(hs) >= maxHead {
				return 0, false, errHTTPHeadTooLarge
			}
			return 0, false, nil
		}
		lf += from
		h.scanned = 0
		if lf+1-h.pos > maxLine {
			return 0, false, errHTTPLineTooLong
		}
		if lf == h.pos || hs[lf-1] != '\r' {
			return 0, false, errHTTPBareLF
		}
		line := hs[h.pos : lf-1]
		if bytes.IndexByte(line, '\r') >= 0 {
			return 0, false, errHTTPBareCR
		}
		start := h.pos
		h.pos = lf + 1

		if !h.sawLine {
			if len(line) == 0 {
				// RFC 9112 §2.2: ignore empty lines before the request line.
				continue
			}
			h.sawLine, h.reqStart = true, start
			if err := p.requestLine(line, start); err != nil {
				return 0, false, err
			}
			continue
		}
		if len(line) == 0 {
			end := h.pos
			if err := p.finishHead(hs, end); err != nil {
				return 0, false, err
			}
			return end, true, nil
		}
		h.headers++
		if h.headers > p.opts.MaxHeaders {
			return 0, false, errHTTPTooManyFields
		}
		if err := p.headerLine(line, start); err != nil {
			return 0, false, err
		}
	}
}

// requestLine parses method SP request-target SP HTTP-version (RFC 9112
// §3), exactly one SP apart.
func (p *HTTPParser) requestLine(line []byte, base int) error {
	h := &p.head
	i := 0
	for i < len(line) && tchar[line[i]] {
		i++
	}
	switch {
	case i == len(line):
		return errHTTPRequestLine
	case i == 0 || line[i] != ' ':
		return errHTTPMethod
	}
	h.method = span{base, base + i}
	i++
	j := i
	for j < len(line) && line[j] > ' ' && line[j] != 0x7f {
		j++
	}
	switch {
	case j == len(line):
		return errHTTPRequestLine
	case j == i || line[j] != ' ':
		return errHTTPTarget
	}
	h.target = span{base + i, base + j}
	switch ver := line[j+1:]; string(ver) {
	case "HTTP/1.1", "HTTP/1.0":
		h.minor = ver[7]
	case "HTTP/2.0":
		if string(line) != "PRI * HTTP/2.0" {
			return errHTTPVersion
		}
		if p.requests > 0 && !p.h2cAsked {
			return errHTTPPreface
		}
		h.preface = true
	default:
		// RFC 9110 §2.5: a higher minor version is processed as the
		// highest one the recipient implements, so servers take
		// HTTP/1.2 as HTTP/1.1; so does the parser.
		if len(ver) != 8 || string(ver[:7]) != "HTTP/1." || ver[7] < '2' || ver[7] > '9' {
			return errHTTPVersion
		}
		h.minor = ver[7]
	}
	return nil
}

// finishPreface completes the HTTP/2 connection preface once all its 24
// bytes are there.
func (p *HTTPParser) finishPreface(hs []byte) (int, bool, error) {
	h := &p.head
	end := h.reqStart + len(h2Preface)
	full, prefix := hasPrefixState(hs[h.reqStart:], h2Preface)
	switch {
	case full:
	case prefix:
		return 0, false, nil
	default:
		return 0, false, errHTTPPreface
	}
	p.req = Request{
		Method:    "PRI",
		Target:    "*",
		Path:      "*",
		Version:   "HTTP/2.0",
		H2Preface: true,
		HeadSize:  end,
	}
	p.requests++
	p.head = headState{}
	p.state = httpUpgraded
	return end, true, nil
}

// headerLine checks one field line (RFC 9112 §5) and records the fields
// that matter for framing and policy.
func (p *HTTPParser) headerLine(line []byte, base int) error {
	h := &p.head
	colon, err := fieldLine(line)
	if err != nil {
		return err
	}
	name := line[:colon]
	vs, ve := colon+1, len(line)
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	value := line[vs:ve]
	val := span{base + vs, base + ve}

	switch len(name) {
	case 4:
		if asciiEqualFold(name, "host") {
			h.hostCount++
			if h.hostCount > 1 {
				return errHTTPDupHost
			}
			h.host = val
		}
	case 7:
		if asciiEqualFold(name, "referer") {
			if h.referer.end == 0 {
				h.referer = val
			}
		} else if asciiEqualFold(name, "upgrade") {
			if h.upgrade.end == 0 {
				h.upgrade = val
			}
			if hasToken(value, "h2c") {
				h.h2c = true
			}
		}
	case 10:
		if asciiEqualFold(name, "user-agent") && h.userAgent.end == 0 {
			h.userAgent = val
		}
	case 14:
		if asciiEqualFold(name, "content-length") {
			// RFC 9112 §6.3 lets a recipient accept a list of identical
			// values; servers differ on that, so only one plain value
			// passes.
			h.clCount++
			if h.clCount > 1 {
				return errHTTPDupCL
			}
			n, ok := parseContentLength(value)
			if !ok {
				return errHTTPBadCL
			}
			h.contentLength = n
		}
	case 17:
		if asciiEqualFold(name, "transfer-encoding") {
			h.teCount++
			if h.teCount > 1 {
				return errHTTPDupTE
			}
			// RFC 9112 §6.1: chunked must be final and applied once;
			// another coding or parameters are read differently by
			// different servers.
			if !asciiEqualFold(value, "chunked") {
				return errHTTPBadTE
			}
		}
	}
	return nil
}

// fieldLine checks a field line's syntax and returns the colon's index.
func fieldLine(line []byte) (colon int, err error) {
	if line[0] == ' ' || line[0] == '\t' {
		// RFC 9112 §5.2 obs-fold, and §2.2 whitespace after the start
		// line: servers either reject or join; we cannot know which.
		return 0, errHTTPObsFold
	}
	i := 0
	for i < len(line) && tchar[line[i]] {
		i++
	}
	if i == len(line) || i == 0 {
		return 0, errHTTPFieldName
	}
	if line[i] != ':' {
		if line[i] == ' ' || line[i] == '\t' {
			return 0, errHTTPSpaceColon // RFC 9112 §5.1: MUST reject
		}
		return 0, errHTTPFieldName
	}
	if !validFieldValue(line[i+1:]) {
		return 0, errHTTPFieldValue
	}
	return i, nil
}

// validFieldValue reports whether b holds only bytes allowed in a field
// value. Eight bytes at a time: a word with no byte below 0x20 and none equal
// to 0x7f needs no closer look (bytes from 0x80, obs-text, are allowed).
func validFieldValue(b []byte) bool {
	const lo, hi, del = 0x2020202020202020, 0x8080808080808080, 0x7f7f7f7f7f7f7f7f
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		below := (x - lo) &^ x & hi // some byte < 0x20 (or a borrow after one)
		y := x ^ del
		isDel := (y - 0x0101010101010101) &^ y & hi // some byte == 0x7f
		if below|isDel != 0 {
			for _, c := range b[:8] {
				if !fieldValueByte[c] {
					return false
				}
			}
		}
		b = b[8:]
	}
	for _, c := range b {
		if !fieldValueByte[c] {
			return false
		}
	}
	return true
}

// checkFieldLine checks a trailer field line.
func checkFieldLine(line []byte) error {
	_, err := fieldLine(line)
	return err
}

// finishHead checks the head as a whole, fills p.req and sets up body
// skipping. end is the head's size.
func (p *HTTPParser) finishHead(hs []byte, end int) error {
	h := &p.head
	http11 := h.minor != '0' // 1.1 and higher minor versions
	if http11 && h.hostCount == 0 {
		return errHTTPNoHost // RFC 9112 §3.2
	}
	if h.teCount > 0 {
		if h.clCount > 0 {
			return errHTTPCLTE // RFC 9112 §6.1: smuggling
		}
		if !http11 {
			return errHTTPTE10 // RFC 9112 §6.1: framing faulty
		}
	}

	method := h.method.of(hs)
	target := h.target.of(hs)
	r := &p.req
	*r = Request{HeadSize: end}

	// The target's form decides where Host comes from (RFC 9112 §3.2).
	var authority []byte
	pathStart, pathEnd := -1, -1 // within target; -1: Path is not a slice of it
	switch {
	case string(method) == "CONNECT":
		// authority-form, port required (RFC 9110 §9.3.6).
		if target[0] == '/' || target[0] == '*' {
			return errHTTPTarget
		}
		authority = target
	case target[0] == '/':
		pathStart, pathEnd = 0, len(target)
	case len(target) == 1 && target[0] == '*':
		if string(method) != "OPTIONS" {
			return errHTTPTarget // asterisk-form is for OPTIONS only
		}
		r.Path = "*"
	default:
		var ok bool
		if authority, pathStart, pathEnd, ok = splitAbsoluteForm(target); !ok {
			return errHTTPTarget
		}
	}
	if pathStart >= 0 {
		if q := bytes.IndexByte(target[pathStart:pathEnd], '?'); q >= 0 {
			pathEnd = pathStart + q
		}
	}

	if authority != nil {
		host, err := p.normalizeHost(authority, false, string(method) == "CONNECT")
		if err != nil {
			return err
		}
		r.Host = p.intern.strUnique(host)
		r.HostRaw = p.internRaw(authority, r.Host)
		if h.hostCount > 0 {
			// RFC 9112 §3.2.2 says to ignore Host here; a server or proxy
			// that does not would route elsewhere.
			other, err := p.normalizeHost(h.host.of(hs), true, false)
			if err != nil {
				return err
			}
			if string(other) != r.Host {
				return errHTTPHostMismatch
			}
		}
	} else if h.hostCount > 0 {
		raw := h.host.of(hs)
		host, err := p.normalizeHost(raw, true, false)
		if err != nil {
			return err
		}
		r.Host = p.intern.strUnique(host)
		r.HostRaw = p.internRaw(raw, r.Host)
	}

	r.Method = p.intern.str(method)
	r.Target = p.intern.str(target)
	if pathStart >= 0 {
		if pathStart == pathEnd {
			r.Path = "/" // absolute-form without path (RFC 9112 §3.2.2)
		} else {
			r.Path = r.Target[pathStart:pathEnd] // shares Target's bytes
		}
	}
	switch h.minor {
	case '0':
		r.Version = "HTTP/1.0"
	case '1':
		r.Version = "HTTP/1.1"
	default:
		r.Version = p.intern.str([]byte{'H', 'T', 'T', 'P', '/', '1', '.', h.minor})
	}
	r.UserAgent = p.intern.strUnique(h.userAgent.of(hs))
	r.Referer = p.intern.strUnique(h.referer.of(hs))
	r.Upgrade = p.intern.str(h.upgrade.of(hs))
	r.H2CUpgrade = h.h2c

	switch {
	case h.teCount > 0:
		r.ContentLength = -1
		p.state = httpChunkSize
	case h.contentLength > 0:
		r.ContentLength = h.contentLength
		p.state, p.remaining = httpBody, h.contentLength
	default:
		p.state = httpHead // RFC 9112 §6.3: no framing in a request means no body
	}
	p.requests++
	p.h2cAsked = h.h2c
	p.lineScanned = 0
	p.head = headState{}
	return nil
}

// internRaw interns the host as sent, reusing the normalised string when it
// is the same (the common case: lower case, no port).
func (p *HTTPParser) internRaw(raw []byte, host string) string {
	if string(raw) == host {
		return host
	}
	return p.intern.strUnique(raw)
}

// splitAbsoluteForm splits "http://authority/path?query" (scheme http or
// https, any case) into the authority and the path's range in t (empty if
// the authority is followed by '?', '#' or nothing).
func splitAbsoluteForm(t []byte) (authority []byte, pathStart, pathEnd int, ok bool) {
	var n int
	switch {
	case len(t) > 7 && asciiEqualFold(t[:7], "http://"):
		n = 7
	case len(t) > 8 && asciiEqualFold(t[:8], "https://"):
		n = 8
	default:
		return nil, 0, 0, false
	}
	end := len(t)
	for i := n; i < len(t); i++ {
		if c := t[i]; c == '/' || c == '?' || c == '#' {
			end = i
			break
		}
	}
	if end == n {
		return nil, 0, 0, false
	}
	if end < len(t) && t[end] == '/' {
		return t[n:end], end, len(t), true
	}
	return t[n:end], end, end, true
}

// normalizeHost validates uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986
// §3.2.2) and returns the host lower-cased, without port, trailing dot and
// IPv6 brackets, in p.scratch (valid until the next call). An empty value
// is allowed only for the Host header (allowEmpty); CONNECT's authority
// must have a port (requirePort).
func (p *HTTPParser) normalizeHost(v []byte, allowEmpty, requirePort bool) ([]byte, error) {
	if len(v) == 0 {
		if allowEmpty {
			return nil, nil
		}
		return nil, errHTTPHost
	}
	var host, port []byte
	hasPort := false
	if v[0] == '[' {
		rb := bytes.IndexByte(v, ']')
		if rb < 0 {
			return nil, errHTTPHost
		}
		host = v[1:rb]
		switch rest := v[rb+1:]; {
		case len(rest) == 0:
		case rest[0] == ':':
			port, hasPort = rest[1:], true
		default:
			return nil, errHTTPHost
		}
		if len(host) == 0 {
			return nil, errHTTPHost
		}
		for _, c := range host {
			switch {
			case c == '%':
				return nil, errHTTPHostEncoding // zone ID
			case unhex(c) < 0 && c != ':' && c != '.':
				return nil, errHTTPHost
			}
		}
	} else {
		host = v
		if c := bytes.IndexByte(v, ':'); c >= 0 {
			host, port, hasPort = v[:c], v[c+1:], true
		}
		for _, c := range host {
			switch hostByte[c] {
			case hostBad:
				return nil, errHTTPHost
			case hostAmbiguous:
				return nil, errHTTPHostEncoding
			}
		}
		// Empty labels ("", ".a", "a..b", "a..") are not host names; one
		// trailing dot (the root) is, and goes.
		if len(host) == 0 || host[0] == '.' || bytes.Contains(host, []byte("..")) {
			return nil, errHTTPHost
		}
		if n := len(host); host[n-1] == '.' {
			host = host[:n-1]
		}
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return nil, errHTTPHost
		}
	}
	if requirePort && (!hasPort || len(port) == 0) {
		return nil, errHTTPTarget
	}
	out := p.scratch[:0]
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	p.scratch = out
	return out, nil
}

// parseContentLength parses 1*DIGIT, refusing values that do not fit in
// an int64 with room to spare.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// hasToken reports whether the comma-separated list v contains token t
// (ASCII case-insensitive), ignoring any "/version".
func hasToken(v []byte, t string) bool {
	for len(v) > 0 {
		var item []byte
		if c := bytes.IndexByte(v, ','); c >= 0 {
			item, v = v[:c], v[c+1:]
		} else {
			item, v = v, nil
		}
		item = bytes.Trim(item, " \t")
		if s := bytes.IndexByte(item, '/'); s >= 0 {
			item = item[:s]
		}
		if asciiEqualFold(item, t) {
			return true
		}
	}
	return false
}

// asciiEqualFold compares b with the lower-case ASCII string s, ignoring
// ASCII case in b.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// tchar: token characters (RFC 9110 §5.6.2).
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isTchar(c byte) bool { return tchar[c] }

// fieldValueByte: bytes allowed in a field value (RFC 9110 §5.5): HTAB, SP,
// VCHAR, obs-text. CR is caught before as a bare CR.
var fieldValueByte = func() (t [256]bool) {
	t['\t'] = true
	for c := 0x20; c <= 0xff; c++ {
		t[c] = c != 0x7f
	}
	return t
}()

const (
	hostOK byte = iota
	hostBad
	hostAmbiguous
)

// hostByte classifies bytes of a reg-name (RFC 3986 §3.2.2): unreserved
// and sub-delims are fine, except that '%' (percent-encoding), ',' (a list)
// and '@' (userinfo) are read differently by different servers.
var hostByte = func() (t [256]byte) {
	for i := range t {
		t[i] = hostBad
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = hostOK
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = hostOK, hostOK
	}
	for _, c := range "-._~!$&'()*+;=" {
		t[c] = hostOK
	}
	for _, c := range "%,@" {
		t[c] = hostAmbiguous
	}
	return t
}()
