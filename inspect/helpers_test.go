package inspect

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// ext is a raw TLS extension for helloSpec.
type ext struct {
	typ  uint16
	data []byte
}

// helloSpec describes a hand-made ClientHello.
type helloSpec struct {
	version  uint16   // legacy_version; 0 = 0x0303
	ciphers  []uint16 // nil = a small default list
	sni      []string // host_name entries of server_name (none: no extension)
	alpn     []string
	versions []uint16 // supported_versions
	exts     []ext    // more extensions, after the ones above
	noExts   bool     // no extensions block at all
}

// msg returns the handshake message (4-byte header included).
func (s helloSpec) msg() []byte {
	var b cryptobyte.Builder
	b.AddUint8(1)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		v := s.version
		if v == 0 {
			v = VersionTLS12
		}
		b.AddUint16(v)
		b.AddBytes(make([]byte, 32))                             // random
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {}) // session_id
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			cs := s.ciphers
			if cs == nil {
				cs = []uint16{0x1301, 0x1302, 0xc02b}
			}
			for _, c := range cs {
				b.AddUint16(c)
			}
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) }) // null compression
		if s.noExts {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			if s.sni != nil {
				b.AddUint16(extServerName)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, n := range s.sni {
							b.AddUint8(0)
							b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(n)) })
						}
					})
				})
			}
			if s.alpn != nil {
				b.AddUint16(extALPN)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, p := range s.alpn {
							b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
						}
					})
				})
			}
			if s.versions != nil {
				b.AddUint16(extSupportedVersions)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, v := range s.versions {
							b.AddUint16(v)
						}
					})
				})
			}
			for _, e := range s.exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

// records wraps a handshake message into TLS records whose bodies have the
// given sizes; the last record takes what is left.
func records(msg []byte, sizes ...int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := len(msg)
		if len(sizes) > 0 {
			n, sizes = min(sizes[0], len(msg)), sizes[1:]
		}
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// oneByteRecords wraps msg into 1-byte records.
func oneByteRecords(msg []byte) []byte {
	sizes := make([]int, len(msg))
	for i := range sizes {
		sizes[i] = 1
	}
	return records(msg, sizes...)
}

// randomSplits cuts b into pieces of random length (1 byte pieces are
// frequent), deterministically from seed.
func randomSplits(b []byte, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out [][]byte
	for len(b) > 0 {
		var n int
		switch r.IntN(4) {
		case 0:
			n = 1
		case 1:
			n = 1 + r.IntN(8)
		default:
			n = 1 + r.IntN(len(b))
		}
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func captures(tb testing.TB, dir string) map[string][]byte {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.bin"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no captures in testdata/%s: %v", dir, err)
	}
	m := make(map[string][]byte)
	for _, f := range files {
		m[filepath.Base(f)] = mustRead(tb, f)
	}
	return m
}
