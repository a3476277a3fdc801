package inspect

import "errors"

// Error classes. Every error a parser in this package returns matches exactly
// one of them with errors.Is; the concrete value is a *ParseError that also
// names the reason. None of them means "try again with more bytes": that is
// Status NeedMore. The relay must never forward the bytes of a flow whose
// parser returned an error.
var (
	// ErrNotTLS: the first bytes are not a TLS handshake record.
	ErrNotTLS = errors.New("inspect: not TLS")
	// ErrMalformed: a TLS record or ClientHello that breaks its grammar
	// (RFC 8446 §5.1, §4.1.2, §4.2; RFC 6066 §3; RFC 7301 §3.1).
	ErrMalformed = errors.New("inspect: malformed")
	// ErrTooLarge: the input is over a configured size limit (ClientHello
	// size, HTTP head size, line length, header count).
	ErrTooLarge = errors.New("inspect: too large")
	// ErrAmbiguous: an HTTP/1.x request that a server and an intermediary
	// may read differently (duplicate Host, Content-Length with
	// Transfer-Encoding, obs-fold, bare CR or LF, ...). An appliance must not
	// guess which reading the server behind it makes.
	ErrAmbiguous = errors.New("inspect: ambiguous")
	// ErrInvalid: bytes that are not an HTTP/1.x request (bad request line,
	// bad header name, missing Host in HTTP/1.1, ...).
	ErrInvalid = errors.New("inspect: invalid")
	// ErrUpgraded: Feed was called after the HTTP/2 connection preface; the
	// connection no longer carries HTTP/1.x.
	ErrUpgraded = errors.New("inspect: upgraded")
)

// ParseError is the error every parser returns. Its values are created once,
// at package init, so returning one does not allocate, and Reason is a short
// stable text fit for a log field or a metric label.
type ParseError struct {
	Proto  Proto  // protocol of the parser that refused the input
	Class  error  // ErrNotTLS, ErrMalformed, ErrTooLarge, ErrAmbiguous, ErrInvalid or ErrUpgraded
	Reason string // e.g. "duplicate server_name", "Content-Length with Transfer-Encoding"
}

func (e *ParseError) Error() string {
	return "inspect/" + e.Proto.String() + ": " + className(e.Class) + ": " + e.Reason
}

// Unwrap returns the class, so errors.Is(err, ErrAmbiguous) works.
func (e *ParseError) Unwrap() error { return e.Class }

func className(c error) string {
	switch c {
	case ErrNotTLS:
		return "not TLS"
	case ErrMalformed:
		return "malformed"
	case ErrTooLarge:
		return "too large"
	case ErrAmbiguous:
		return "ambiguous"
	case ErrInvalid:
		return "invalid"
	case ErrUpgraded:
		return "upgraded"
	}
	return "error"
}

func tlsError(class error, reason string) *ParseError {
	return &ParseError{Proto: ProtoTLS, Class: class, Reason: reason}
}

func httpError(class error, reason string) *ParseError {
	return &ParseError{Proto: ProtoHTTP1, Class: class, Reason: reason}
}
