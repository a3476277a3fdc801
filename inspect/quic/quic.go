// Package quic reads the TLS ClientHello a QUIC client sends in its Initial
// packets (RFC 9000 §17.2.2, RFC 9001 §5; QUIC v1 and v2, RFC 9369), for
// netward to judge a QUIC flow by its SNI and ALPN as it judges TLS over
// TCP. The Initial packets' keys come from the client's first Destination
// Connection ID, so anyone on the path can remove their protection; this
// package does exactly that, reassembles the CRYPTO stream by offset across
// packets and datagrams, and hands the ClientHello to inspect.TLSParser.
//
// Every read of the untrusted bytes goes through cryptobyte; no input
// panics; buffers are capped and reused across Reset.
package quic

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/cryptobyte"

	"github.com/netward/netward/inspect"
)

// QUIC versions whose Initial packets this package reads.
const (
	Version1 = 0x00000001 // RFC 9000
	Version2 = 0x6b3343cf // RFC 9369
)

// Kind is what the first packet of a UDP payload is.
type Kind uint8

const (
	KindNotQUIC            Kind = iota // no QUIC packet (or one too short to tell)
	KindInitial                        // a v1/v2 Initial
	KindZeroRTT                        // a v1/v2 0-RTT packet
	KindHandshake                      // a v1/v2 Handshake packet
	KindRetry                          // a v1/v2 Retry (server → client)
	KindVersionNegotiation             // version 0 (server → client)
	KindLong                           // a long header of another version
	KindShort                          // a short header (1-RTT), fixed bit set
)

var kindNames = [...]string{"not-quic", "initial", "0-rtt", "handshake", "retry", "version-negotiation", "long", "short"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind?"
}

// Long packet types in the first byte's bits 4-5, per version (RFC 9000
// §17.2, RFC 9369 §3.2).
func longType(b0 byte, version uint32) Kind {
	t := (b0 >> 4) & 3
	if version == Version2 {
		return [4]Kind{KindRetry, KindInitial, KindZeroRTT, KindHandshake}[t]
	}
	return [4]Kind{KindInitial, KindZeroRTT, KindHandshake, KindRetry}[t]
}

// Classify tells what the first packet of a UDP payload is, from its first
// five bytes, without decrypting anything.
func Classify(b []byte) (Kind, uint32) {
	if len(b) == 0 {
		return KindNotQUIC, 0
	}
	if b[0]&0x80 == 0 {
		if b[0]&0x40 != 0 {
			return KindShort, 0
		}
		return KindNotQUIC, 0
	}
	if len(b) < 5 {
		return KindNotQUIC, 0
	}
	v := binary.BigEndian.Uint32(b[1:5])
	switch v {
	case 0:
		return KindVersionNegotiation, 0
	case Version1, Version2:
		return longType(b[0], v), v
	}
	return KindLong, v
}

// Errors of Feed besides *inspect.ParseError.
var (
	// ErrNoInitial: the datagram holds no client Initial packet.
	ErrNoInitial = errors.New("quic: no Initial packet in the datagram")
	// ErrOtherKeys: an Initial of another connection (another Destination
	// Connection ID whose packets the Reader's keys do not open): a
	// Retry's second ClientHello, or a new connection on the same 5-tuple.
	ErrOtherKeys = errors.New("quic: Initial under other keys")
)

func quicError(class error, reason string) *inspect.ParseError {
	return &inspect.ParseError{Proto: inspect.ProtoQUIC, Class: class, Reason: reason}
}

var (
	errHeader     = quicError(inspect.ErrMalformed, "truncated long header")
	errCID        = quicError(inspect.ErrMalformed, "connection ID longer than 20 bytes")
	errVersion    = quicError(inspect.ErrInvalid, "Initial of an unsupported QUIC version")
	errOpen       = quicError(inspect.ErrMalformed, "Initial does not decrypt")
	errFrame      = quicError(inspect.ErrMalformed, "truncated or unknown frame in an Initial")
	errCryptoOff  = quicError(inspect.ErrMalformed, "CRYPTO frame beyond 2^62")
	errConflict   = quicError(inspect.ErrAmbiguous, "CRYPTO data that contradicts data sent before")
	errTooLarge   = quicError(inspect.ErrTooLarge, "CRYPTO stream over the ClientHello size limit")
	errNotHello   = quicError(inspect.ErrMalformed, "CRYPTO stream does not start with a ClientHello")
	errDCIDLength = quicError(inspect.ErrMalformed, "client's first Destination Connection ID shorter than 8 bytes")
)

// Salts and HKDF labels of the Initial secrets (RFC 9001 §5.2, RFC 9369 §3.3).
var (
	saltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}
	saltV2 = []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9}
)

// keys are one direction's Initial packet protection.
type keys struct {
	aead cipher.AEAD
	hp   cipher.Block
	iv   [12]byte
}

// hkdfExpandLabel is TLS 1.3's HKDF-Expand-Label with an empty context
// (RFC 8446 §7.1).
func hkdfExpandLabel(secret []byte, label string, n int) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddUint16(uint16(n))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("tls13 " + label)) })
	b.AddUint8(0)
	return hkdf.Expand(sha256.New, secret, string(b.BytesOrPanic()), n)
}

// clientKeys derives the client's Initial keys from its first DCID.
func clientKeys(version uint32, dcid []byte) (*keys, error) {
	salt, prefix := saltV1, "quic "
	if version == Version2 {
		salt, prefix = saltV2, "quicv2 "
	}
	initial, err := hkdf.Extract(sha256.New, dcid, salt)
	if err != nil {
		return nil, err
	}
	secret, err := hkdfExpandLabel(initial, "client in", sha256.Size)
	if err != nil {
		return nil, err
	}
	key, err := hkdfExpandLabel(secret, prefix+"key", 16)
	if err != nil {
		return nil, err
	}
	iv, err := hkdfExpandLabel(secret, prefix+"iv", 12)
	if err != nil {
		return nil, err
	}
	hpKey, err := hkdfExpandLabel(secret, prefix+"hp", 16)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, err
	}
	k := &keys{aead: aead, hp: hp}
	copy(k.iv[:], iv)
	return k, nil
}
