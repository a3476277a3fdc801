package inspect

import (
	"crypto/md5"
	"crypto/sha256"
	"slices"
)

const hexDigits = "0123456789abcdef"

// fingerprint computes JA3, JA3Hash and JA4 for p.hello, using the parser's
// scratch buffers, and interns the results.
func (p *TLSParser) fingerprint() {
	h := &p.hello

	// JA3 (github.com/salesforce/ja3): SSLVersion,Ciphers,Extensions,
	// EllipticCurves,EllipticCurvePointFormats; decimal values joined by
	// "-", GREASE left out of the three lists where it can occur.
	b := p.scratch[:0]
	b = appendUint16(b, h.LegacyVersion)
	b = append(b, ',')
	b = appendDecimalList(b, h.CipherSuites)
	b = append(b, ',')
	b = appendDecimalList(b, h.Extensions)
	b = append(b, ',')
	b = appendDecimalList(b, h.SupportedGroups)
	b = append(b, ',')
	for i, f := range h.ECPointFormats {
		if i > 0 {
			b = append(b, '-')
		}
		b = appendUint16(b, uint16(f))
	}
	h.JA3 = p.intern.strUnique(b)
	sum := md5.Sum(b)
	var hexSum [2 * md5.Size]byte
	for i, c := range sum {
		hexSum[2*i], hexSum[2*i+1] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	h.JA3Hash = p.intern.strUnique(hexSum[:])

	// JA4 (github.com/FoxIO-LLC/ja4, technical_details/JA4.md):
	// JA4_a "t" (or "q") + version + "d"/"i" + #ciphers + #extensions + ALPN chars,
	// JA4_b = sha256(sorted ciphers)[:12],
	// JA4_c = sha256(sorted extensions without SNI and ALPN "_" signature
	// algorithms in order)[:12]; GREASE ignored everywhere.
	var ja4 [36]byte
	a := ja4[:0]
	if p.quic {
		a = append(a, 'q') // JA4: the ClientHello came in QUIC
	} else {
		if h.QUIC {
			a = append(a, 'q') // JA4's protocol: t (TCP), q (QUIC), d (DTLS)
		} else {
			a = append(a, 't')
		}
	}
	a = append(a, ja4Version(h.MaxVersion)...)
	if h.HasServerName {
		a = append(a, 'd')
	} else {
		a = append(a, 'i')
	}
	a = appendCount2(a, countNonGREASE(h.CipherSuites))
	a = appendCount2(a, countNonGREASE(h.Extensions))
	a = appendALPNChars(a, h.ALPN)
	a = append(a, '_')

	sorted := p.sortBuf[:0]
	for _, v := range h.CipherSuites {
		if !IsGREASE(v) {
			sorted = append(sorted, v)
		}
	}
	sortUint16s(sorted)
	b = appendHexList(b[:0], sorted)
	a = appendTruncatedSHA256(a, b, len(sorted) == 0)
	a = append(a, '_')

	sorted = sorted[:0]
	for _, v := range h.Extensions {
		if !IsGREASE(v) && v != extServerName && v != extALPN {
			sorted = append(sorted, v)
		}
	}
	sortUint16s(sorted)
	b = appendHexList(b[:0], sorted)
	if countNonGREASE(h.SignatureAlgorithms) > 0 {
		b = append(b, '_')
		b = appendHexList(b, h.SignatureAlgorithms)
	}
	a = appendTruncatedSHA256(a, b, len(sorted) == 0)
	h.JA4 = p.intern.strUnique(a)

	p.scratch, p.sortBuf = b, sorted
}

// sortUint16s sorts a short list (tens of values) in place; insertion sort
// beats the general sort at this size.
func sortUint16s(s []uint16) {
	for i := 1; i < len(s); i++ {
		v := s[i]
		j := i
		for j > 0 && s[j-1] > v {
			s[j] = s[j-1]
			j--
		}
		s[j] = v
	}
}

func appendDecimalList(b []byte, list []uint16) []byte {
	first := true
	for _, v := range list {
		if IsGREASE(v) {
			continue
		}
		if !first {
			b = append(b, '-')
		}
		first = false
		b = appendUint16(b, v)
	}
	return b
}

// appendUint16 appends v in decimal; JA3 formats dozens of values per hello
// and this is several times faster than strconv.AppendUint.
func appendUint16(b []byte, v uint16) []byte {
	switch {
	case v < 10:
		return append(b, byte('0'+v))
	case v < 100:
		return append(b, byte('0'+v/10), byte('0'+v%10))
	case v < 1000:
		return append(b, byte('0'+v/100), byte('0'+v/10%10), byte('0'+v%10))
	case v < 10000:
		return append(b, byte('0'+v/1000), byte('0'+v/100%10), byte('0'+v/10%10), byte('0'+v%10))
	}
	return append(b, byte('0'+v/10000), byte('0'+v/1000%10), byte('0'+v/100%10), byte('0'+v/10%10), byte('0'+v%10))
}

// appendHexList appends the non-GREASE values as 4-digit lower-case hex,
// comma-separated. It sizes b once and writes by index: this runs for every
// cipher and extension of every hello.
func appendHexList(b []byte, list []uint16) []byte {
	start := len(b)
	b = slices.Grow(b, 5*len(list))[:start+5*len(list)]
	i := start
	for _, v := range list {
		if IsGREASE(v) {
			continue
		}
		w := b[i : i+5 : i+5]
		w[0], w[1], w[2], w[3], w[4] = hexDigits[v>>12], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf], ','
		i += 5
	}
	if i > start {
		i-- // no comma after the last value
	}
	return b[:i]
}

func appendTruncatedSHA256(dst, data []byte, empty bool) []byte {
	if empty {
		return append(dst, "000000000000"...)
	}
	sum := sha256.Sum256(data)
	for _, c := range sum[:6] {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return dst
}

func countNonGREASE(list []uint16) int {
	n := 0
	for _, v := range list {
		if !IsGREASE(v) {
			n++
		}
	}
	return n
}

// appendCount2 appends n as two decimal digits, 99 at most.
func appendCount2(b []byte, n int) []byte {
	n = min(n, 99)
	return append(b, byte('0'+n/10), byte('0'+n%10))
}

func ja4Version(v uint16) string {
	switch v {
	case VersionTLS13:
		return "13"
	case VersionTLS12:
		return "12"
	case VersionTLS11:
		return "11"
	case VersionTLS10:
		return "10"
	case VersionSSL30:
		return "s3"
	case 0x0002:
		return "s2"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

// appendALPNChars appends the first and last characters of the first ALPN
// value, or of its hex form if either is not alphanumeric; "00" without
// ALPN.
func appendALPNChars(b []byte, alpn []string) []byte {
	if len(alpn) == 0 || alpn[0] == "" {
		return append(b, '0', '0')
	}
	v := alpn[0]
	first, last := v[0], v[len(v)-1]
	if isAlnum(first) && isAlnum(last) {
		return append(b, first, last)
	}
	return append(b, hexDigits[first>>4], hexDigits[last&0xf])
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
