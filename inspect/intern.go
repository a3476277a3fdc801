package inspect

// internTable turns byte slices into strings and hands back the same string
// for the same bytes without allocating. Results of this package are real Go
// strings that never alias a buffer (they stay valid and immutable after
// Reset, so the event log may keep them), and the table is what makes that
// cheap: a parser reused across flows (sync.Pool + Reset) allocates only for
// a value it has not seen lately. A keep-alive HTTP connection repeats Host
// and User-Agent on every request; the TLS flows of one client repeat SNI,
// ALPN and JA4.
//
// The table is bounded (entries and bytes) so a parser held by a long-lived
// connection cannot grow without limit; when full it starts over, which is
// cheaper than tracking recency and good enough for repeats.
type internTable struct {
	m     map[string]string
	bytes int
}

const (
	internMaxEntries = 64
	internMaxBytes   = 8 << 10
	internMaxLen     = 1 << 10 // longer values are converted, not kept
)

// str returns string(b), from the package's table of well-known values, from
// the table, or newly allocated (then remembered).
func (t *internTable) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	// The commonest values first, without hashing.
	switch string(b) {
	case "h2":
		return "h2"
	case "http/1.1":
		return "http/1.1"
	case "GET":
		return "GET"
	case "POST":
		return "POST"
	case "/":
		return "/"
	}
	// Map lookups keyed by string(b) do not allocate (the compiler uses b's
	// bytes in place).
	if s, ok := wellKnown[string(b)]; ok {
		return s
	}
	return t.strUnique(b)
}

// strUnique is str for values that are never in the well-known table
// (fingerprints), saving a lookup.
func (t *internTable) strUnique(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := t.m[string(b)]; ok {
		return s
	}
	if len(b) > internMaxLen {
		return string(b)
	}
	if t.m == nil {
		t.m = make(map[string]string, internMaxEntries)
	}
	if len(t.m) >= internMaxEntries || t.bytes+len(b) > internMaxBytes {
		clear(t.m)
		t.bytes = 0
	}
	s := string(b)
	t.m[s] = s
	t.bytes += len(s)
	return s
}

// wellKnown holds values common enough to share across all parsers. It is
// written only at init, so lookups need no lock.
var wellKnown = func() map[string]string {
	m := make(map[string]string)
	for _, s := range []string{
		// ALPN protocol IDs (IANA TLS ALPN registry).
		"h2", "http/1.1", "http/1.0", "h3", "h2c", "spdy/3.1", "acme-tls/1", "dot", "doq",
		"imap", "pop3", "managesieve", "stun.turn", "ftp", "xmpp-client", "xmpp-server", "mqtt",
		"postgresql", "webrtc",
		// HTTP methods and versions.
		"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI",
		"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
		"HTTP/1.1", "HTTP/1.0", "HTTP/2.0",
		// Frequent request targets and Upgrade values.
		"/", "*", "/favicon.ico", "/robots.txt", "websocket", "h2c",
	} {
		m[s] = s
	}
	return m
}()
