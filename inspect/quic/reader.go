package quic

import (
	"bytes"
	"encoding/binary"
	"slices"

	"golang.org/x/crypto/cryptobyte"

	"github.com/netward/netward/inspect"
)

// Options configure a Reader.
type Options struct {
	// MaxHelloSize caps the CRYPTO stream kept (and the ClientHello);
	// 0 means inspect.DefaultMaxHelloSize. A post-quantum hello
	// (X25519MLKEM768) is about 1.8 KiB.
	MaxHelloSize int
}

// Reader reassembles the ClientHello protected by one set of Initial keys
// (one connection: the keys come from the client's first Destination
// Connection ID). Feed it the client's datagrams in the order they come;
// the zero value is not ready, use NewReader.
type Reader struct {
	max     int
	version uint32
	dcid    []byte
	k       *keys
	largest int64 // largest packet number opened, -1 before any

	crypto []byte // the CRYPTO stream; bytes outside ranges are unset
	ranges []span // received stretches of crypto, sorted and disjoint
	done   bool
	err    error
	tls    inspect.TLSParser

	scratch []byte // a packet's copy, decrypted in place

	// Packets counts the Initial packets opened, Skipped the 0-RTT and
	// Handshake packets coalesced with them (not read).
	Packets, Skipped int
}

type span struct{ lo, hi int }

// NewReader returns a Reader for one connection.
func NewReader() *Reader { return NewReaderOptions(Options{}) }

// NewReaderOptions returns a Reader with o.
func NewReaderOptions(o Options) *Reader {
	r := &Reader{max: o.MaxHelloSize}
	if r.max <= 0 {
		r.max = inspect.DefaultMaxHelloSize
	}
	r.tls = *inspect.NewTLSParser(inspect.TLSOptions{MaxHelloSize: r.max})
	r.Reset()
	return r
}

// Reset prepares r for another connection, keeping its buffers.
func (r *Reader) Reset() {
	r.version, r.dcid, r.k, r.largest = 0, r.dcid[:0], nil, -1
	r.crypto, r.ranges = r.crypto[:0], r.ranges[:0]
	r.done, r.err = false, nil
	r.Packets, r.Skipped = 0, 0
	r.tls.Reset()
}

// Version is the QUIC version of the connection (0 before the first
// Initial).
func (r *Reader) Version() uint32 { return r.version }

// DCID is the client's first Destination Connection ID, which the keys
// come from.
func (r *Reader) DCID() []byte { return r.dcid }

// Hello returns the ClientHello once Feed has returned Done, else nil.
func (r *Reader) Hello() *inspect.ClientHello {
	if !r.done {
		return nil
	}
	return r.tls.Hello()
}

// Feed reads one UDP payload the client sent: every Initial packet in it
// (coalesced packets are walked by their Length; 0-RTT and Handshake ones
// are skipped, a short header ends the datagram) is opened and its CRYPTO
// frames are added to the stream. It returns Done once the stream holds a
// whole ClientHello, and goes on checking later Initials (retransmissions:
// the same data again is fine, different data is an error).
//
// Errors: ErrNoInitial (no client Initial in the datagram), ErrOtherKeys
// (an Initial of another connection: r is unchanged), or a sticky
// *inspect.ParseError: ErrMalformed (broken header, packet that does not
// decrypt, bad frame), ErrAmbiguous (CRYPTO data that contradicts earlier
// data), ErrTooLarge, ErrInvalid (a version this package does not read).
func (r *Reader) Feed(d []byte) (inspect.Status, error) {
	if r.err != nil {
		return inspect.NeedMore, r.err
	}
	st, err := r.feed(d)
	if err != nil && err != ErrNoInitial && err != ErrOtherKeys {
		r.err = err
	}
	return st, err
}

func (r *Reader) status() inspect.Status {
	if r.done {
		return inspect.Done
	}
	return inspect.NeedMore
}

func (r *Reader) feed(d []byte) (inspect.Status, error) {
	saw := false
	for len(d) > 0 && d[0]&0x80 != 0 {
		s := cryptobyte.String(d)
		var b0 uint8
		var ver uint32
		var dcid, scid cryptobyte.String
		if !s.ReadUint8(&b0) || !s.ReadUint32(&ver) || !s.ReadUint8LengthPrefixed(&dcid) || !s.ReadUint8LengthPrefixed(&scid) {
			return r.status(), errHeader
		}
		if len(dcid) > 20 || len(scid) > 20 {
			return r.status(), errCID
		}
		if ver != Version1 && ver != Version2 {
			if !saw && r.k == nil {
				return r.status(), errVersion
			}
			break // a packet of another version cannot be coalesced: stop
		}
		kind := longType(b0, ver)
		if kind == KindRetry {
			break // no Length: it takes the rest (and is the server's)
		}
		if kind == KindInitial {
			var token []byte
			n, ok := readVarint(&s)
			if !ok || n > uint64(len(s)) || !s.ReadBytes(&token, int(n)) {
				return r.status(), errHeader
			}
		}
		length, ok := readVarint(&s)
		if !ok || length > uint64(len(s)) {
			return r.status(), errHeader
		}
		pnOff := len(d) - len(s)
		pkt := d[:pnOff+int(length)]
		d = d[pnOff+int(length):]
		if kind != KindInitial {
			r.Skipped++
			continue
		}
		if r.k == nil {
			if len(dcid) < 8 {
				return r.status(), errDCIDLength
			}
			k, err := clientKeys(ver, dcid)
			if err != nil {
				return r.status(), errOpen
			}
			r.k, r.version, r.dcid = k, ver, append(r.dcid[:0], dcid...)
		} else if ver != r.version {
			return r.status(), ErrOtherKeys
		}
		payload, ok := r.open(pkt, pnOff)
		if !ok {
			if !bytes.Equal(dcid, r.dcid) {
				// Not the DCID the keys came from, and the keys do not
				// open it: another connection's. (A client that switched
				// to the server's connection ID keeps the keys, and its
				// packets open.)
				return r.status(), ErrOtherKeys
			}
			return r.status(), errOpen
		}
		saw = true
		r.Packets++
		if err := r.frames(payload); err != nil {
			return r.status(), err
		}
	}
	if !saw {
		return r.status(), ErrNoInitial
	}
	if err := r.checkHello(); err != nil {
		return r.status(), err
	}
	return r.status(), nil
}

// open removes header protection from a copy of pkt (its packet number at
// pnOff) and decrypts it (RFC 9001 §5.3, §5.4).
func (r *Reader) open(pkt []byte, pnOff int) ([]byte, bool) {
	const sampleLen = 16
	if len(pkt) < pnOff+4+sampleLen {
		return nil, false
	}
	b := append(r.scratch[:0], pkt...)
	r.scratch = b
	var mask [sampleLen]byte
	r.k.hp.Encrypt(mask[:], b[pnOff+4:pnOff+4+sampleLen])
	b[0] ^= mask[0] & 0x0f // long header: the low 4 bits
	pnLen := int(b[0]&3) + 1
	var trunc uint64
	for i := 0; i < pnLen; i++ {
		b[pnOff+i] ^= mask[1+i]
		trunc = trunc<<8 | uint64(b[pnOff+i])
	}
	pn := decodePacketNumber(r.largest, trunc, pnLen*8)
	nonce := r.k.iv
	for i := 0; i < 8; i++ {
		nonce[4+i] ^= byte(pn >> (56 - 8*i))
	}
	hdr, ct := b[:pnOff+pnLen], b[pnOff+pnLen:]
	if len(ct) < r.k.aead.Overhead() {
		return nil, false
	}
	plain, err := r.k.aead.Open(ct[:0], nonce[:], ct, hdr)
	if err != nil {
		return nil, false
	}
	if pn > r.largest {
		r.largest = pn
	}
	return plain, true
}

// decodePacketNumber expands a truncated packet number (RFC 9000 A.3).
func decodePacketNumber(largest int64, trunc uint64, bits int) int64 {
	expected := largest + 1
	win := int64(1) << bits
	hwin := win / 2
	cand := (expected &^ (win - 1)) | int64(trunc)
	switch {
	case cand <= expected-hwin && cand < (1<<62)-win:
		return cand + win
	case cand > expected+hwin && cand >= win:
		return cand - win
	}
	return cand
}

// readVarint reads a QUIC variable-length integer (RFC 9000 §16).
func readVarint(s *cryptobyte.String) (uint64, bool) {
	var b0 uint8
	if !s.ReadUint8(&b0) {
		return 0, false
	}
	n := 1 << (b0 >> 6)
	v := uint64(b0 & 0x3f)
	for i := 1; i < n; i++ {
		var b uint8
		if !s.ReadUint8(&b) {
			return 0, false
		}
		v = v<<8 | uint64(b)
	}
	return v, true
}

// frames reads an Initial's frames: only those RFC 9000 §12.4 allows in
// it. CRYPTO data goes to the stream.
func (r *Reader) frames(p []byte) error {
	s := cryptobyte.String(p)
	for !s.Empty() {
		t, ok := readVarint(&s)
		if !ok {
			return errFrame
		}
		switch t {
		case 0x00: // PADDING: skip the run at once
			i := 0
			for i < len(s) && s[i] == 0 {
				i++
			}
			s = s[i:]
		case 0x01: // PING
		case 0x02, 0x03: // ACK, ACK with ECN counts
			var count uint64
			ok := skipVarints(&s, 2) // largest, delay
			if ok {
				count, ok = readVarint(&s)
			}
			if ok && count > uint64(len(s)) {
				ok = false // each range takes at least 2 bytes
			}
			ok = ok && skipVarints(&s, 1+2*int(count))
			if t == 0x03 {
				ok = ok && skipVarints(&s, 3)
			}
			if !ok {
				return errFrame
			}
		case 0x06: // CRYPTO
			off, ok1 := readVarint(&s)
			n, ok2 := readVarint(&s)
			var data []byte
			if !ok1 || !ok2 || n > uint64(len(s)) || !s.ReadBytes(&data, int(n)) {
				return errFrame
			}
			if off > 1<<62 {
				return errCryptoOff
			}
			if err := r.addCrypto(off, data); err != nil {
				return err
			}
		case 0x1c: // CONNECTION_CLOSE (transport)
			var reason []byte
			ok := skipVarints(&s, 2)
			n, ok2 := readVarint(&s)
			if !ok || !ok2 || n > uint64(len(s)) || !s.ReadBytes(&reason, int(n)) {
				return errFrame
			}
		default:
			return errFrame
		}
	}
	return nil
}

func skipVarints(s *cryptobyte.String, n int) bool {
	for i := 0; i < n; i++ {
		if _, ok := readVarint(s); !ok {
			return false
		}
	}
	return true
}

// addCrypto adds CRYPTO data at off: data that overlaps what was received
// must be the same bytes (a retransmission), or the peers could read two
// different ClientHellos.
func (r *Reader) addCrypto(off uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if off+uint64(len(data)) > uint64(r.max) {
		return errTooLarge
	}
	lo, hi := int(off), int(off)+len(data)
	for _, rg := range r.ranges {
		a, b := max(lo, rg.lo), min(hi, rg.hi)
		if a < b && !bytes.Equal(r.crypto[a:b], data[a-lo:b-lo]) {
			return errConflict
		}
	}
	if hi > len(r.crypto) {
		r.crypto = slices.Grow(r.crypto, hi-len(r.crypto))[:hi]
	}
	copy(r.crypto[lo:hi], data)
	// Insert and merge the stretch.
	i := 0
	for i < len(r.ranges) && r.ranges[i].hi < lo {
		i++
	}
	j := i
	for j < len(r.ranges) && r.ranges[j].lo <= hi {
		lo, hi = min(lo, r.ranges[j].lo), max(hi, r.ranges[j].hi)
		j++
	}
	r.ranges = slices.Replace(r.ranges, i, j, span{lo, hi})
	return nil
}

// checkHello parses the ClientHello once the stream from offset 0 holds
// all of it.
func (r *Reader) checkHello() error {
	if r.done || len(r.ranges) == 0 || r.ranges[0].lo != 0 || r.ranges[0].hi < 4 {
		return nil
	}
	if r.crypto[0] != 1 {
		return errNotHello
	}
	n := 4 + int(binary.BigEndian.Uint32(r.crypto[0:4])&0xffffff)
	if n > r.max {
		return errTooLarge
	}
	if r.ranges[0].hi < n {
		return nil
	}
	if err := r.tls.ParseHandshake(r.crypto[:n], true); err != nil {
		return err
	}
	r.done = true
	return nil
}
