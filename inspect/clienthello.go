package inspect

import (
	"bytes"

	"golang.org/x/crypto/cryptobyte"
)

// TLS extension types this package reads (IANA "TLS ExtensionType Values").
const (
	extServerName          uint16 = 0
	extSupportedGroups     uint16 = 10
	extECPointFormats      uint16 = 11
	extSignatureAlgorithms uint16 = 13
	extALPN                uint16 = 16
	extPreSharedKey        uint16 = 41
	extSupportedVersions   uint16 = 43
	extKeyShare            uint16 = 51
	extECH                 uint16 = 0xfe0d
)

// TLS protocol versions.
const (
	VersionSSL30 uint16 = 0x0300
	VersionTLS10 uint16 = 0x0301
	VersionTLS11 uint16 = 0x0302
	VersionTLS12 uint16 = 0x0303
	VersionTLS13 uint16 = 0x0304
)

// ClientHello is what a TLS ClientHello says, as far as policy, the event log
// and fingerprinting need it.
//
// Lifetime: the string fields are ordinary, immutable Go strings and may be
// kept for ever. The slice fields are owned by the TLSParser and reused: they
// are valid until its next Reset; use Clone to keep them longer.
//
// Lists keep the values exactly as sent, in order, GREASE values (RFC 8701)
// included; the fingerprints leave GREASE out, as their specs say.
type ClientHello struct {
	// RecordVersion is the version field of the first handshake record's
	// header (commonly 0x0301).
	RecordVersion uint16
	// LegacyVersion is ClientHello.legacy_version (client_version), 0x0303
	// for TLS 1.2 and 1.3 clients; the first field of JA3.
	LegacyVersion uint16
	// MaxVersion is the highest version offered: the highest non-GREASE
	// value of supported_versions if the extension is present (and has
	// one), else LegacyVersion (the JA4 rule).
	MaxVersion uint16
	// Version names MaxVersion for logs, e.g. "TLS 1.3" (see VersionName).
	Version string

	// ServerNameRaw is the host_name of the server_name extension as sent;
	// "" if there is none. ServerName is the same name lower-cased (ASCII)
	// with one trailing dot removed, for matching. Only printable ASCII is
	// accepted in a host_name (anything else is ErrMalformed). With ECH,
	// this is the outer (public) name.
	ServerNameRaw string
	ServerName    string
	// HasServerName is whether the server_name extension is present (JA4's
	// "d" rather than "i"), even if it carries no host_name.
	HasServerName bool

	// ALPN is the application_layer_protocol_negotiation list, in order.
	ALPN []string
	// Versions is the supported_versions list.
	Versions []uint16
	// CipherSuites is the cipher_suites list.
	CipherSuites []uint16
	// Extensions are the extension types in the order sent.
	Extensions []uint16
	// SupportedGroups is the supported_groups (elliptic_curves) list.
	SupportedGroups []uint16
	// KeyShares are the groups of the key_share entries (e.g. 0x11ec,
	// X25519MLKEM768, for a post-quantum hello).
	KeyShares []uint16
	// SignatureAlgorithms is the signature_algorithms list.
	SignatureAlgorithms []uint16
	// ECPointFormats is the ec_point_formats list.
	ECPointFormats []uint8
	// ECH is whether the encrypted_client_hello extension (0xfe0d) is
	// present (real or GREASE ECH look the same from outside).
	ECH bool

	// JA3 is the JA3 string: SSLVersion,Ciphers,Extensions,EllipticCurves,
	// EllipticCurvePointFormats, decimal, GREASE left out. JA3Hash is its
	// MD5 in lower-case hex.
	JA3     string
	JA3Hash string
	// JA4 is the FoxIO JA4 fingerprint, e.g.
	// "t13d1516h2_8daaf6152771_e5627efa2ab1"; it starts with "q" rather
	// than "t" for a hello that came over QUIC.
	JA4 string

	// QUIC is whether the hello came in QUIC CRYPTO frames
	// (TLSParser.ParseHandshake) rather than TLS records; RecordVersion and
	// Records are then 0.
	QUIC bool

	// Size is the length of the handshake message, its 4-byte header
	// included.
	Size int
	// Records is how many handshake records carried the message (more than
	// one means record-layer fragmentation).
	Records int
}

// Clone returns a deep copy that stays valid after the parser's Reset.
func (h *ClientHello) Clone() *ClientHello {
	c := *h
	c.ALPN = cloneSlice(h.ALPN)
	c.Versions = cloneSlice(h.Versions)
	c.CipherSuites = cloneSlice(h.CipherSuites)
	c.Extensions = cloneSlice(h.Extensions)
	c.SupportedGroups = cloneSlice(h.SupportedGroups)
	c.KeyShares = cloneSlice(h.KeyShares)
	c.SignatureAlgorithms = cloneSlice(h.SignatureAlgorithms)
	c.ECPointFormats = cloneSlice(h.ECPointFormats)
	return &c
}

func cloneSlice[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append(make([]T, 0, len(s)), s...)
}

// reset empties h and keeps the slices' storage.
func (h *ClientHello) reset() {
	*h = ClientHello{
		ALPN:                h.ALPN[:0],
		Versions:            h.Versions[:0],
		CipherSuites:        h.CipherSuites[:0],
		Extensions:          h.Extensions[:0],
		SupportedGroups:     h.SupportedGroups[:0],
		KeyShares:           h.KeyShares[:0],
		SignatureAlgorithms: h.SignatureAlgorithms[:0],
		ECPointFormats:      h.ECPointFormats[:0],
	}
}

// IsGREASE reports whether v is a GREASE value (RFC 8701): 0x0a0a, 0x1a1a,
// ..., 0xfafa.
func IsGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// VersionName names a TLS version: "TLS 1.3", "TLS 1.2", "TLS 1.1",
// "TLS 1.0", "SSL 3.0", "SSL 2.0"; "unknown" for anything else.
func VersionName(v uint16) string {
	switch v {
	case VersionTLS13:
		return "TLS 1.3"
	case VersionTLS12:
		return "TLS 1.2"
	case VersionTLS11:
		return "TLS 1.1"
	case VersionTLS10:
		return "TLS 1.0"
	case VersionSSL30:
		return "SSL 3.0"
	case 0x0002:
		return "SSL 2.0"
	}
	return "unknown"
}

// ClientHello parse errors. Each names the rule that was broken.
var (
	errHelloNotTLS          = tlsError(ErrNotTLS, "not a TLS handshake record")
	errHelloSSLv2           = tlsError(ErrMalformed, "SSLv2-compatible ClientHello")
	errHelloRecordVersion   = tlsError(ErrMalformed, "record version")
	errHelloRecordType      = tlsError(ErrMalformed, "non-handshake record before end of ClientHello")
	errHelloEmptyRecord     = tlsError(ErrMalformed, "empty handshake record")
	errHelloRecordOverflow  = tlsError(ErrMalformed, "record longer than 2^14")
	errHelloAlert           = tlsError(ErrMalformed, "alert before end of ClientHello")
	errHelloTooManyAlerts   = tlsError(ErrMalformed, "too many warning alerts")
	errHelloNotClientHello  = tlsError(ErrMalformed, "first handshake message is not a ClientHello")
	errHelloTooLarge        = tlsError(ErrTooLarge, "ClientHello over size limit")
	errHelloShort           = tlsError(ErrMalformed, "truncated ClientHello")
	errHelloSessionID       = tlsError(ErrMalformed, "session_id longer than 32")
	errHelloCipherSuites    = tlsError(ErrMalformed, "bad cipher_suites")
	errHelloCompression     = tlsError(ErrMalformed, "bad compression_methods")
	errHelloTrailing        = tlsError(ErrMalformed, "trailing bytes after extensions")
	errHelloExtension       = tlsError(ErrMalformed, "truncated extension")
	errHelloDupExtension    = tlsError(ErrMalformed, "duplicate extension")
	errHelloExtTrailing     = tlsError(ErrMalformed, "trailing bytes in extension")
	errHelloServerName      = tlsError(ErrMalformed, "bad server_name")
	errHelloDupServerName   = tlsError(ErrMalformed, "duplicate server_name")
	errHelloServerNameBytes = tlsError(ErrMalformed, "server_name with bytes outside printable ASCII")
	errHelloServerNameLabel = tlsError(ErrMalformed, "server_name with an empty label")
	errHelloGroups          = tlsError(ErrMalformed, "bad supported_groups")
	errHelloPointFormats    = tlsError(ErrMalformed, "bad ec_point_formats")
	errHelloSigAlgs         = tlsError(ErrMalformed, "bad signature_algorithms")
	errHelloALPN            = tlsError(ErrMalformed, "bad application_layer_protocol_negotiation")
	errHelloVersions        = tlsError(ErrMalformed, "bad supported_versions")
	errHelloKeyShare        = tlsError(ErrMalformed, "bad key_share")
	errHelloPSKNotLast      = tlsError(ErrMalformed, "pre_shared_key not the last extension")
)

// parseHello parses one complete handshake message (4-byte header included)
// into p.hello, the way crypto/tls's clientHelloMsg.unmarshal does: every
// read goes through cryptobyte, so a length that runs past its container is
// a failed read, never an out-of-range index. msg is not retained.
func (p *TLSParser) parseHello(msg []byte) error {
	h := &p.hello
	// Clear exactly the bits the previous hello set (its Extensions list
	// holds every type seen, also if its parse failed half-way): O(number of
	// extensions) rather than clearing 8 KiB.
	for _, e := range h.Extensions {
		p.seen[e/64] &^= 1 << (e % 64)
	}
	h.reset()
	h.RecordVersion, h.Records, h.Size = p.recordVersion, p.hsRecords, len(msg)

	s := cryptobyte.String(msg)
	var typ uint8
	var body cryptobyte.String
	if !s.ReadUint8(&typ) || !s.ReadUint24LengthPrefixed(&body) || !s.Empty() {
		return errHelloShort
	}
	if typ != 1 {
		return errHelloNotClientHello
	}

	// RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2).
	var sessionID, suites, compression cryptobyte.String
	if !body.ReadUint16(&h.LegacyVersion) || !body.Skip(32) || // random
		!body.ReadUint8LengthPrefixed(&sessionID) {
		return errHelloShort
	}
	if len(sessionID) > 32 {
		return errHelloSessionID
	}
	if !body.ReadUint16LengthPrefixed(&suites) || len(suites) == 0 || len(suites)%2 != 0 {
		return errHelloCipherSuites
	}
	h.CipherSuites = appendUint16s(h.CipherSuites, suites)
	if !body.ReadUint8LengthPrefixed(&compression) || compression.Empty() {
		return errHelloCompression
	}

	var sniRaw []byte
	if !body.Empty() { // extensions are optional before TLS 1.3
		var exts cryptobyte.String
		if !body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
			return errHelloTrailing
		}
		for !exts.Empty() {
			var ext uint16
			var data cryptobyte.String
			if !exts.ReadUint16(&ext) || !exts.ReadUint16LengthPrefixed(&data) {
				return errHelloExtension
			}
			if p.seenExtension(ext) {
				// RFC 8446 §4.2: at most one extension of each type.
				return errHelloDupExtension
			}
			h.Extensions = append(h.Extensions, ext)
			var err error
			switch ext {
			case extServerName:
				h.HasServerName = true
				sniRaw, err = readServerName(&data)
			case extSupportedGroups: // RFC 8446 §4.2.7
				h.SupportedGroups, err = readUint16List(&data, h.SupportedGroups, errHelloGroups)
			case extECPointFormats: // RFC 8422 §5.1.2
				var formats cryptobyte.String
				if !data.ReadUint8LengthPrefixed(&formats) || formats.Empty() {
					return errHelloPointFormats
				}
				h.ECPointFormats = append(h.ECPointFormats, formats...)
			case extSignatureAlgorithms: // RFC 8446 §4.2.3
				h.SignatureAlgorithms, err = readUint16List(&data, h.SignatureAlgorithms, errHelloSigAlgs)
			case extALPN: // RFC 7301 §3.1
				err = p.readALPN(&data)
			case extSupportedVersions: // RFC 8446 §4.2.1
				var list cryptobyte.String
				if !data.ReadUint8LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 {
					return errHelloVersions
				}
				h.Versions = appendUint16s(h.Versions, list)
			case extKeyShare: // RFC 8446 §4.2.8
				var shares cryptobyte.String
				if !data.ReadUint16LengthPrefixed(&shares) {
					return errHelloKeyShare
				}
				for !shares.Empty() {
					var group uint16
					var key cryptobyte.String
					if !shares.ReadUint16(&group) || !shares.ReadUint16LengthPrefixed(&key) || key.Empty() {
						return errHelloKeyShare
					}
					h.KeyShares = append(h.KeyShares, group)
				}
			case extPreSharedKey: // RFC 8446 §4.2.11
				if !exts.Empty() {
					return errHelloPSKNotLast
				}
				data = nil // identities and binders are not needed
			case extECH: // draft-ietf-tls-esni
				h.ECH = true
				data = nil
			default:
				data = nil // unknown or unneeded extensions are skipped
			}
			if err != nil {
				return err
			}
			if !data.Empty() {
				return errHelloExtTrailing
			}
		}
	}

	p.finishHello(sniRaw)
	return nil
}

// seenExtension records ext and reports whether it was seen before in this
// hello, in constant time: a 16 KiB hello can carry 4,000 extensions, and a
// scan per extension would make it cost milliseconds.
func (p *TLSParser) seenExtension(ext uint16) bool {
	w, bit := ext/64, uint64(1)<<(ext%64)
	if p.seen[w]&bit != 0 {
		return true
	}
	p.seen[w] |= bit
	return false
}

// readServerName reads a ServerNameList (RFC 6066 §3) and returns the
// host_name, nil if the list has none. Like crypto/tls it rejects an empty
// list, an empty name and a second host_name.
func readServerName(data *cryptobyte.String) ([]byte, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() {
		return nil, errHelloServerName
	}
	var host []byte
	for !list.Empty() {
		var nameType uint8
		var name cryptobyte.String
		if !list.ReadUint8(&nameType) || !list.ReadUint16LengthPrefixed(&name) || name.Empty() {
			return nil, errHelloServerName
		}
		if nameType != 0 { // only host_name (0) is defined
			continue
		}
		if host != nil {
			return nil, errHelloDupServerName
		}
		for _, c := range name {
			if c < 0x21 || c > 0x7e {
				return nil, errHelloServerNameBytes
			}
		}
		// Empty labels (".a", "a..b", "a..") are no host name; servers
		// that accept them read them differently (nginx refuses them,
		// crypto/tls refuses even one trailing dot, which is allowed here
		// and normalised away).
		if name[0] == '.' || bytes.Contains(name, []byte("..")) {
			return nil, errHelloServerNameLabel
		}
		host = name
	}
	return host, nil
}

// readUint16List reads a non-empty uint16-length-prefixed list of uint16
// values and appends them to dst.
func readUint16List(data *cryptobyte.String, dst []uint16, bad error) ([]uint16, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || len(list)%2 != 0 {
		return dst, bad
	}
	return appendUint16s(dst, list), nil
}

// appendUint16s appends the big-endian uint16 values of b, whose length
// the caller checked to be even.
func appendUint16s(dst []uint16, b []byte) []uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		dst = append(dst, uint16(b[i])<<8|uint16(b[i+1]))
	}
	return dst
}

// readALPN reads a ProtocolNameList; names are interned.
func (p *TLSParser) readALPN(data *cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || list.Empty() {
		return errHelloALPN
	}
	for !list.Empty() {
		var proto cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&proto) || proto.Empty() {
			return errHelloALPN
		}
		p.hello.ALPN = append(p.hello.ALPN, p.intern.str(proto))
	}
	return nil
}

// finishHello fills the derived fields: names, versions and fingerprints.
func (p *TLSParser) finishHello(sniRaw []byte) {
	h := &p.hello
	if sniRaw != nil {
		h.ServerNameRaw = p.intern.str(sniRaw)
		h.ServerName = h.ServerNameRaw
		if norm, changed := normalizeName(p.scratch[:0], sniRaw); changed {
			p.scratch = norm
			h.ServerName = p.intern.str(norm)
		}
	}
	h.MaxVersion = 0
	for _, v := range h.Versions {
		if !IsGREASE(v) && v > h.MaxVersion {
			h.MaxVersion = v
		}
	}
	if h.MaxVersion == 0 { // no supported_versions, or only GREASE in it
		h.MaxVersion = h.LegacyVersion
	}
	h.Version = VersionName(h.MaxVersion)
	if !p.opts.NoFingerprints {
		p.fingerprint()
	}
}

// normalizeName lower-cases ASCII letters and removes one trailing dot,
// appending to dst only if that changes anything.
func normalizeName(dst, name []byte) (out []byte, changed bool) {
	n := len(name)
	if name[n-1] == '.' {
		n--
		changed = true
	}
	for _, c := range name[:n] {
		if 'A' <= c && c <= 'Z' {
			changed = true
			break
		}
	}
	if !changed {
		return dst, false
	}
	for _, c := range name[:n] {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst, true
}
