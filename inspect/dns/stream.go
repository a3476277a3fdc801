package dns

import "encoding/binary"

// DefaultMaxQuery is StreamReader's default cap on one message. A query is
// a header, one question (at most 259 bytes) and an OPT record with a few
// options (cookies, padding to 468 bytes, RFC 8467); 4096 leaves room for
// TSIG and UPDATE messages while keeping what one flow may make netward
// buffer small.
const DefaultMaxQuery = 4096

// StreamReader splits the client bytes of a DNS-over-TCP connection into
// messages: each is a 2-byte big-endian length, then that many bytes
// (RFC 1035 §4.2.2, RFC 7766 §8). Clients may send several queries without
// waiting (pipelining, RFC 7766 §6.2.1.1), so Next is called until it says
// it needs more.
//
// The zero value is ready, with the DefaultMaxQuery cap. A StreamReader
// holds no buffer: the caller keeps the bytes and Next returns a sub-slice of
// them. An error is sticky until Reset: the stream has lost its framing.
type StreamReader struct {
	// Max caps one message's length (without its 2-byte prefix); 0 means
	// DefaultMaxQuery, and anything over MaxMessage is MaxMessage. A
	// message over Max is refused as soon as its length prefix arrives,
	// before any of it need be buffered.
	Max int
	err error
}

// Next looks for one complete message at the start of b, the client bytes
// not consumed yet. The contract follows inspect.Parser's Feed:
//
//   - (msg, n, nil) with msg != nil: b[:n] is a complete framed message, and
//     msg = b[2:n] is its body (aliasing b); present b[n:] next.
//   - (nil, 0, nil): the message at the start of b is not complete yet;
//     present b again with more bytes appended.
//   - (nil, 0, err): the stream is refused for good (a length below the
//     12-byte header is inspect.ErrMalformed, over Max inspect.ErrTooLarge).
//
// Next does not look inside the message: Parse does.
func (r *StreamReader) Next(b []byte) (msg []byte, n int, err error) {
	if r.err != nil {
		return nil, 0, r.err
	}
	if len(b) < 2 {
		return nil, 0, nil
	}
	l := int(binary.BigEndian.Uint16(b))
	if l < HeaderLen {
		r.err = errFrameShort
		return nil, 0, r.err
	}
	if l > r.max() {
		r.err = errFrameTooLong
		return nil, 0, r.err
	}
	if len(b) < 2+l {
		return nil, 0, nil
	}
	return b[2 : 2+l : 2+l], 2 + l, nil
}

// Reset prepares r for a new connection (it keeps Max).
func (r *StreamReader) Reset() { r.err = nil }

func (r *StreamReader) max() int {
	switch {
	case r.Max <= 0:
		return DefaultMaxQuery
	case r.Max > MaxMessage:
		return MaxMessage
	}
	return r.Max
}
