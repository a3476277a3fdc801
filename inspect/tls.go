package inspect

// ClientHello size limits.
const (
	// DefaultMaxHelloSize is the default cap on a ClientHello (handshake
	// header included): a post-quantum hello (X25519MLKEM768 key share) is
	// 1.2–2 KiB, a browser's with many extensions and a PSK stays far below
	// 16 KiB.
	DefaultMaxHelloSize = 16 << 10
	// MaxHelloSizeLimit is the largest cap that can be set: 64 KiB, the
	// largest handshake message crypto/tls accepts (maxHandshake).
	MaxHelloSizeLimit = 64 << 10
	// maxPlaintext is the largest TLS record body (RFC 8446 §5.1).
	maxPlaintext = 1 << 14
	// maxWarningAlerts bounds the warning alerts skipped before the
	// ClientHello, as crypto/tls's maxUselessRecords does.
	maxWarningAlerts = 16
)

// TLS record content types (RFC 8446 §5.1).
const (
	recordTypeAlert     = 21
	recordTypeHandshake = 22
)

// TLSOptions configures a TLSParser.
type TLSOptions struct {
	// MaxHelloSize caps the ClientHello, its 4-byte handshake header
	// included; a larger one fails with ErrTooLarge as soon as its header
	// is read, before anything is buffered. 0 means DefaultMaxHelloSize;
	// values above MaxHelloSizeLimit are lowered to it.
	MaxHelloSize int
	// NoFingerprints leaves JA3, JA3Hash and JA4 empty. Computing them (an
	// MD5 and two SHA-256 over formatted lists) is most of the cost of a
	// parse; a caller whose rules and logs use neither can skip it.
	NoFingerprints bool
}

func (o TLSOptions) maxHelloSize() int {
	switch {
	case o.MaxHelloSize <= 0:
		return DefaultMaxHelloSize
	case o.MaxHelloSize > MaxHelloSizeLimit:
		return MaxHelloSizeLimit
	}
	return o.MaxHelloSize
}

type tlsState uint8

const (
	tlsReading tlsState = iota
	tlsDone
	tlsFailed
)

// TLSParser reads a TLS ClientHello from the first client bytes of a flow,
// incrementally: the bytes may arrive in any split (1-byte segments
// included) and the handshake message may be fragmented over several TLS
// records (RFC 8446 §5.1). The zero value is ready to use with default
// options.
//
// Feed follows the Parser contract. TLS needs no bytes presented twice: Feed
// consumes everything it is given until Done (n == len(b)) and keeps its own
// copy of the handshake bytes only when the ClientHello is not whole inside
// one record of one call. On Done, b[:n] ends exactly at the last byte of the
// ClientHello; bytes after it (a ChangeCipherSpec, early data) are not
// inspected. The relay holds all client bytes until the verdict either way.
// A ClientHello cut short is NeedMore, not an error: only the caller knows
// that no more bytes will come (EOF, timeout, its byte limit), and then it
// refuses the flow as truncated. A length inside the hello that runs past
// the hello's own end is ErrMalformed at once.
//
// Memory: besides its fixed fields the parser owns a reassembly buffer (at
// most the size cap, dropped on Reset if larger than DefaultMaxHelloSize),
// the ClientHello's slices and a small intern table for result strings.
// With record fragmentation the input can be larger than the ClientHello:
// each record carries at least one byte, so the input up to Done is at most
// 6 times MaxHelloSize (plus 16 skipped 7-byte alert records).
//
// Allocation: parsing allocates nothing once the parser's buffers have grown
// to fit; result strings are interned (see Hello), so a reused parser
// allocates only for strings it has not produced lately.
type TLSParser struct {
	opts  TLSOptions
	max   int
	state tlsState
	err   error

	hdr     [5]byte // partial record header
	hdrN    int
	recType uint8
	recLeft int // body bytes left in the current record
	records int // records read, any type
	alert   [2]byte
	alertN  int
	alerts  int // warning alerts skipped

	hsLen         int    // length of the handshake message once its header is known, else 0
	buf           []byte // reassembled handshake message
	hsRecords     int    // handshake records read
	recordVersion uint16 // version of the first handshake record

	quic bool // the hello came from QUIC CRYPTO frames (ParseHandshake): JA4 "q"

	hello   ClientHello
	seen    [1 << 16 / 64]uint64 // extension types seen in this hello (8 KiB)
	scratch []byte
	sortBuf []uint16
	intern  internTable
}

// NewTLSParser returns a parser with the given options.
func NewTLSParser(o TLSOptions) *TLSParser {
	p := &TLSParser{opts: o}
	p.Reset()
	return p
}

// Proto returns ProtoTLS.
func (p *TLSParser) Proto() Proto { return ProtoTLS }

// Reset prepares the parser for a new flow, keeping its buffers and intern
// table. Slices of the previous Hello are reused from now on.
func (p *TLSParser) Reset() {
	if cap(p.buf) > DefaultMaxHelloSize {
		p.buf = nil // don't pin a large buffer in a pool
	}
	// Field by field: the parser is large and most of it (hello, intern
	// table, scratch) is reused as is; parseHello resets the hello.
	p.max = p.opts.maxHelloSize()
	p.state, p.err = tlsReading, nil
	p.hdrN, p.recType, p.recLeft, p.records = 0, 0, 0, 0
	p.alertN, p.alerts = 0, 0
	p.hsLen, p.buf = 0, p.buf[:0]
	p.hsRecords, p.recordVersion = 0, 0
	p.quic = false
}

// ParseHandshake parses msg, one whole ClientHello handshake message (its
// 4-byte header included) without TLS record framing, as QUIC carries it
// in CRYPTO frames (RFC 9001 §4). quic marks the hello as QUIC's (JA4
// starts with "q"). On success the parser is Done and Hello returns the
// hello; errors are as Feed's. msg is not retained.
func (p *TLSParser) ParseHandshake(msg []byte, quic bool) error {
	if p.max == 0 {
		p.max = p.opts.maxHelloSize()
	}
	if len(msg) > p.max {
		_, _, err := p.fail(errHelloTooLarge)
		return err
	}
	p.quic = quic
	if err := p.parseHello(msg); err != nil {
		p.fail(err)
		return err
	}
	p.state = tlsDone
	return nil
}

// Hello returns the parsed ClientHello after Feed returned Done, else nil.
// It is owned by the parser: see ClientHello for what stays valid after the
// next Reset.
func (p *TLSParser) Hello() *ClientHello {
	if p.state != tlsDone {
		return nil
	}
	return &p.hello
}

func (p *TLSParser) fail(err error) (int, Status, error) {
	p.state, p.err = tlsFailed, err
	return 0, NeedMore, err
}

// Feed takes the next client bytes; see the type's documentation and Parser.
// Errors: ErrNotTLS (not a TLS record at all), ErrMalformed (broken record
// layer or ClientHello, duplicate server_name, ...), ErrTooLarge.
func (p *TLSParser) Feed(b []byte) (n int, st Status, err error) {
	if p.max == 0 {
		p.max = p.opts.maxHelloSize() // zero value
	}
	switch p.state {
	case tlsDone:
		return 0, Done, nil
	case tlsFailed:
		return 0, NeedMore, p.err
	}
	off := 0
	for off < len(b) {
		if p.recLeft == 0 {
			var hdr []byte
			if p.hdrN == 0 && len(b)-off >= len(p.hdr) {
				hdr = b[off : off+len(p.hdr)]
				off += len(p.hdr)
			} else {
				k := copy(p.hdr[p.hdrN:], b[off:])
				p.hdrN += k
				off += k
				if p.hdrN < len(p.hdr) {
					if err := p.checkHeaderStart(); err != nil {
						return p.fail(err)
					}
					return off, NeedMore, nil
				}
				hdr, p.hdrN = p.hdr[:], 0
			}
			if err := p.startRecord(hdr); err != nil {
				return p.fail(err)
			}
			continue
		}

		chunk := b[off : off+min(p.recLeft, len(b)-off)]
		if p.recType == recordTypeAlert {
			k := copy(p.alert[p.alertN:], chunk)
			p.alertN += k
			off += k
			p.recLeft -= k
			if p.alertN == len(p.alert) {
				if err := p.endAlert(); err != nil {
					return p.fail(err)
				}
			}
			continue
		}

		// Fast path: the whole handshake message is inside this record
		// and this call; parse it in place, copying nothing.
		if len(p.buf) == 0 && len(chunk) >= 4 {
			size, err := p.handshakeSize(chunk)
			if err != nil {
				return p.fail(err)
			}
			if len(chunk) >= size {
				if err := p.parseHello(chunk[:size]); err != nil {
					return p.fail(err)
				}
				p.state = tlsDone
				return off + size, Done, nil
			}
		}

		// Reassembly: keep exactly the handshake bytes, header first.
		if len(p.buf) < 4 {
			if cap(p.buf) == 0 {
				p.buf = make([]byte, 0, 2048)
			}
			k := min(4-len(p.buf), len(chunk))
			p.buf = append(p.buf, chunk[:k]...)
			off += k
			p.recLeft -= k
			if len(p.buf) < 4 {
				if p.buf[0] != 1 {
					return p.fail(errHelloNotClientHello)
				}
				continue
			}
			size, err := p.handshakeSize(p.buf)
			if err != nil {
				return p.fail(err)
			}
			p.hsLen = size
			if cap(p.buf) < size {
				p.buf = append(make([]byte, 0, size), p.buf...)
			}
			if size > 4 {
				continue
			}
		} else {
			k := min(p.hsLen-len(p.buf), len(chunk))
			p.buf = append(p.buf, chunk[:k]...)
			off += k
			p.recLeft -= k
		}
		if len(p.buf) == p.hsLen {
			if err := p.parseHello(p.buf); err != nil {
				return p.fail(err)
			}
			p.state = tlsDone
			return off, Done, nil
		}
	}
	return off, NeedMore, nil
}

// checkHeaderStart fails early on a partial record header that cannot start
// a ClientHello, so a 1-byte feed of non-TLS gets its answer at once.
func (p *TLSParser) checkHeaderStart() error {
	if p.hdrN >= 1 && p.hdr[0] != recordTypeHandshake && p.hdr[0] != recordTypeAlert {
		if p.records == 0 {
			if p.hdr[0]&0x80 != 0 {
				return errHelloSSLv2
			}
			return errHelloNotTLS
		}
		return errHelloRecordType
	}
	if p.hdrN >= 2 && p.hdr[1] != 3 {
		return errHelloRecordVersion
	}
	return nil
}

// startRecord checks a record header (RFC 8446 §5.1) and starts its body.
func (p *TLSParser) startRecord(hdr []byte) error {
	typ, major := hdr[0], hdr[1]
	length := int(hdr[3])<<8 | int(hdr[4])
	switch {
	case typ != recordTypeHandshake && typ != recordTypeAlert:
		if p.records == 0 {
			if typ&0x80 != 0 {
				return errHelloSSLv2
			}
			return errHelloNotTLS
		}
		return errHelloRecordType
	case major != 3:
		return errHelloRecordVersion
	case length > maxPlaintext:
		return errHelloRecordOverflow
	case typ == recordTypeAlert && length != 2:
		return errHelloAlert
	case length == 0:
		// "Implementations MUST NOT send zero-length fragments of
		// Handshake types"; crypto/tls refuses them.
		return errHelloEmptyRecord
	}
	p.records++
	p.recType, p.recLeft = typ, length
	if typ == recordTypeHandshake {
		if p.hsRecords == 0 {
			p.recordVersion = uint16(hdr[1])<<8 | uint16(hdr[2])
		}
		p.hsRecords++
	}
	return nil
}

// endAlert handles a complete alert record before the ClientHello ended:
// warning alerts are skipped, as crypto/tls and OpenSSL skip them, so the
// ClientHello behind them is still inspected; anything else ends the flow.
func (p *TLSParser) endAlert() error {
	level, desc := p.alert[0], p.alert[1]
	p.alertN = 0
	if level != 1 || desc == 0 { // not a warning, or close_notify
		return errHelloAlert
	}
	p.alerts++
	if p.alerts > maxWarningAlerts {
		return errHelloTooManyAlerts
	}
	return nil
}

// handshakeSize reads a handshake header (at least 4 bytes of b) and
// returns the whole message size, enforcing type and cap.
func (p *TLSParser) handshakeSize(b []byte) (int, error) {
	if b[0] != 1 {
		return 0, errHelloNotClientHello
	}
	size := 4 + (int(b[1])<<16 | int(b[2])<<8 | int(b[3]))
	if size > p.max {
		return 0, errHelloTooLarge
	}
	return size, nil
}
