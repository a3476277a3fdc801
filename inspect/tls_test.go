package inspect

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"reflect"
	"slices"
	"testing"
	"time"
)

// The JA3 hashes below agree with tshark 4.0 (tls.handshake.ja3) on the
// same bytes; the JA4 values with an independent computation from tshark's
// field dump (see testdata/README.md).
var tlsCaptureTests = []struct {
	file     string
	sni      string
	alpn     []string
	version  string
	ech, pq  bool
	ja3Hash  string
	ja4      string
	extCount int
}{
	{"chromium.bin", "x.example", []string{"h2", "http/1.1"}, "TLS 1.3", true, true,
		"4b01079f415abb6d0223d06524b0aac8", "t13d1517h2_8daaf6152771_cb7bf5808d99", 19},
	{"curl.bin", "x.example", []string{"h2", "http/1.1"}, "TLS 1.3", false, false,
		"0149f47eabf9a20d0893e2a44e5a6323", "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", 12},
	{"go-pq.bin", "x.example", []string{"h2", "http/1.1"}, "TLS 1.3", false, true,
		"03117a8ed39ef02427ebbc39f121275c", "t13d1312h2_f57a46bbacb6_ab7e3b40a677", 12},
	{"node.bin", "x.example", []string{"h2", "http/1.1"}, "TLS 1.3", false, false,
		"1a28e69016765d92e3b381168d68922c", "t13d5911h2_a33745022dd6_1f22a2ca17c4", 11},
	{"openssl-s_client.bin", "x.example", nil, "TLS 1.3", false, false,
		"a3afc2c46ba4a7d7fbe1cfb7a3031c2f", "t13d311000_e8f1e7e78f70_1f22a2ca17c4", 10},
	{"openssl-s_client-nosni.bin", "", nil, "TLS 1.3", false, false,
		"c216e752cae6f8755fd27f561d031636", "t13i310900_e8f1e7e78f70_1f22a2ca17c4", 9},
	{"openssl-s_client-tls12.bin", "x.example", nil, "TLS 1.2", false, false,
		"871a754af286dfb70c1b53c6887c62e0", "t12d280700_d943125447b4_e7e480e5a997", 7},
	{"python.bin", "x.example", []string{"h2", "http/1.1"}, "TLS 1.3", false, false,
		"304734bb1c086c3453b387400cf83f11", "t13d1812h2_85036bcba153_d41ae481755e", 12},
	{"wget-gnutls-nosni.bin", "", nil, "TLS 1.3", false, false,
		"b1eb3ca3daaf03d365753f0a321e1601", "t13i291200_723694b0fccc_899037bd0b8c", 12},
}

func TestTLSCaptures(t *testing.T) {
	for _, tt := range tlsCaptureTests {
		t.Run(tt.file, func(t *testing.T) {
			in := mustRead(t, "testdata/tls/"+tt.file)
			for _, feed := range []struct {
				name   string
				chunks [][]byte
			}{
				{"whole", [][]byte{in}},
				{"1-byte", randomSplitsOf(in, 1)},
				{"random", randomSplits(in, 42)},
			} {
				var p TLSParser
				r := feedTLS(&p, feed.chunks)
				if r.st != Done || r.err != nil || r.end != len(in) {
					t.Fatalf("%s: %v %v end=%d, want done at %d", feed.name, r.st, r.err, r.end, len(in))
				}
				h := r.hello
				if h.ServerName != tt.sni || h.ServerNameRaw != tt.sni || h.HasServerName != (tt.sni != "") {
					t.Errorf("%s: SNI %q raw %q has %v, want %q", feed.name, h.ServerName, h.ServerNameRaw, h.HasServerName, tt.sni)
				}
				if !slices.Equal(h.ALPN, tt.alpn) || h.Version != tt.version || h.ECH != tt.ech {
					t.Errorf("%s: ALPN %q version %q ECH %v", feed.name, h.ALPN, h.Version, h.ECH)
				}
				if pq := slices.Contains(h.KeyShares, 0x11ec); pq != tt.pq {
					t.Errorf("%s: X25519MLKEM768 key share %v, want %v (%x)", feed.name, pq, tt.pq, h.KeyShares)
				}
				if h.JA3Hash != tt.ja3Hash || h.JA4 != tt.ja4 {
					t.Errorf("%s: JA3 %s JA4 %s, want %s %s", feed.name, h.JA3Hash, h.JA4, tt.ja3Hash, tt.ja4)
				}
				if sum := md5.Sum([]byte(h.JA3)); hex.EncodeToString(sum[:]) != h.JA3Hash {
					t.Errorf("JA3Hash is not the MD5 of JA3 %q", h.JA3)
				}
				if len(h.Extensions) != tt.extCount || h.Size != len(in)-5 || h.Records != 1 {
					t.Errorf("%s: %d extensions, size %d, %d records", feed.name, len(h.Extensions), h.Size, h.Records)
				}
			}
		})
	}
}

func randomSplitsOf(b []byte, size int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(size, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// TestTLSAgainstCryptoTLS reads each capture with crypto/tls's server and
// compares what it saw with the parser's result.
func TestTLSAgainstCryptoTLS(t *testing.T) {
	for name, in := range captures(t, "tls") {
		t.Run(name, func(t *testing.T) {
			var p TLSParser
			if _, st, err := p.Feed(in); st != Done || err != nil {
				t.Fatal(st, err)
			}
			h := p.Hello()
			info := cryptoTLSHello(t, in)
			if info.ServerName != h.ServerName {
				t.Errorf("SNI %q, crypto/tls %q", h.ServerName, info.ServerName)
			}
			if !slices.Equal(info.SupportedProtos, h.ALPN) && !(len(info.SupportedProtos) == 0 && len(h.ALPN) == 0) {
				t.Errorf("ALPN %q, crypto/tls %q", h.ALPN, info.SupportedProtos)
			}
			if !slices.Equal(info.CipherSuites, h.CipherSuites) {
				t.Errorf("cipher suites %x, crypto/tls %x", h.CipherSuites, info.CipherSuites)
			}
			if !slices.Equal(info.Extensions, h.Extensions) {
				t.Errorf("extensions %x, crypto/tls %x", h.Extensions, info.Extensions)
			}
			var groups []uint16
			for _, g := range info.SupportedCurves {
				groups = append(groups, uint16(g))
			}
			if !slices.Equal(groups, h.SupportedGroups) {
				t.Errorf("groups %x, crypto/tls %x", h.SupportedGroups, groups)
			}
			if len(h.Versions) > 0 && !slices.Equal(info.SupportedVersions, h.Versions) {
				t.Errorf("versions %x, crypto/tls %x", h.Versions, info.SupportedVersions)
			}
		})
	}
}

// cryptoTLSHello hands in to a crypto/tls server over a pipe and returns
// the ClientHelloInfo it reports.
func cryptoTLSHello(t *testing.T, in []byte) *tls.ClientHelloInfo {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	got := make(chan *tls.ClientHelloInfo, 1)
	go func() {
		srv := tls.Server(server, &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			got <- chi
			return nil, errors.New("stop")
		}})
		_ = srv.Handshake()
		server.Close()
	}()
	go func() { _, _ = client.Write(in) }()
	select {
	case chi := <-got:
		return chi
	case <-time.After(5 * time.Second):
		t.Fatal("crypto/tls did not read the ClientHello")
	}
	return nil
}

// TestJA4SpecExample rebuilds the example of FoxIO's JA4 spec
// (technical_details/JA4.md) and expects its fingerprint.
func TestJA4SpecExample(t *testing.T) {
	sigs := []byte{0, 16, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08, 0x05, 0x05, 0x01, 0x08, 0x06, 0x06, 0x01}
	spec := helloSpec{
		ciphers: []uint16{0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035},
		exts: []ext{
			{0x2a2a, nil}, // GREASE: ignored
			{0x001b, []byte{2, 0, 2}},
			{0x0000, []byte{0, 12, 0, 0, 9, 'x', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e'}},
			{0x0033, []byte{0, 6, 0, 0x1d, 0, 2, 1, 2}},
			{0x0010, []byte{0, 12, 2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'}},
			{0x4469, []byte{0, 3, 2, 'h', '2'}},
			{0x0017, nil},
			{0x002d, []byte{1, 1}},
			{0x000d, sigs},
			{0x0005, []byte{1, 0, 0, 0, 0}},
			{0x0023, nil},
			{0x0012, nil},
			{0x002b, []byte{4, 0x0a, 0x0a, 0x03, 0x04}},
			{0xff01, []byte{0}},
			{0x000b, []byte{1, 0}},
			{0x000a, []byte{0, 4, 0, 0x1d, 0, 0x17}},
			{0x0015, make([]byte, 20)},
		},
	}
	var p TLSParser
	if _, st, err := p.Feed(records(spec.msg())); st != Done || err != nil {
		t.Fatal(st, err)
	}
	h := p.Hello()
	if h.JA4 != "t13d1516h2_8daaf6152771_e5627efa2ab1" {
		t.Errorf("JA4 %s, spec says t13d1516h2_8daaf6152771_e5627efa2ab1", h.JA4)
	}
	// The spec's hashes of the raw lists, and the no-signature case.
	for in, want := range map[string]string{
		"002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9":                                    "8daaf6152771",
		"0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601": "e5627efa2ab1",
		"0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01":                                         "6d807ffa2a79",
	} {
		if got := string(appendTruncatedSHA256(nil, []byte(in), false)); got != want {
			t.Errorf("sha256(%s)[:12] = %s, want %s", in, got, want)
		}
		sum := sha256.Sum256([]byte(in))
		if hex.EncodeToString(sum[:6]) != want {
			t.Errorf("test vector %s", in)
		}
	}
	if h.JA3 != "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,27-0-51-16-17513-23-45-13-5-35-18-43-65281-11-10-21,29-23,0" {
		t.Errorf("JA3 %s", h.JA3)
	}
}

func TestJA4ALPNChars(t *testing.T) {
	for _, tt := range []struct {
		alpn []string
		want string
	}{
		{nil, "00"},
		{[]string{"h2"}, "h2"},
		{[]string{"http/1.1", "h2"}, "h1"},
		{[]string{"h"}, "hh"},
		{[]string{"\xab"}, "ab"},
		{[]string{"\xab\xcd"}, "ad"},
		{[]string{"\x30\xab"}, "3b"},
		{[]string{"\x30\x31\xab\xcd"}, "3d"},
		{[]string{"\x30\xab\xcd\x31"}, "01"},
	} {
		if got := string(appendALPNChars(nil, tt.alpn)); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.alpn, got, tt.want)
		}
	}
}

type tlsCase struct {
	name  string
	in    []byte
	opts  TLSOptions
	st    Status
	err   error  // expected error value (a *ParseError) or nil
	class error  // expected class, when err is nil but a failure is expected
	sni   string // expected ServerName when Done
	check func(t *testing.T, h *ClientHello)
}

// tlsEvasionCases are hand-made inputs: the shapes attackers and odd
// clients use, and malformed hellos.
func tlsEvasionCases() []tlsCase {
	basic := helloSpec{sni: []string{"www.example.com"}, alpn: []string{"h2"}}.msg()
	withTail := func(msg []byte, tail ...byte) []byte { return append(records(msg), tail...) }
	alert := func(level, desc byte) []byte { return []byte{recordTypeAlert, 3, 1, 0, 2, level, desc} }
	many := func(n int, b []byte) []byte { return bytes.Repeat(b, n) }
	return []tlsCase{
		{name: "plain", in: records(basic), st: Done, sni: "www.example.com"},
		{name: "upper-case SNI", in: records(helloSpec{sni: []string{"WWW.Example.COM"}}.msg()), st: Done, sni: "www.example.com",
			check: func(t *testing.T, h *ClientHello) {
				if h.ServerNameRaw != "WWW.Example.COM" {
					t.Errorf("raw %q", h.ServerNameRaw)
				}
			}},
		{name: "trailing-dot SNI", in: records(helloSpec{sni: []string{"www.example.com."}}.msg()), st: Done, sni: "www.example.com"},
		{name: "upper-case trailing-dot SNI", in: records(helloSpec{sni: []string{"WWW.EXAMPLE.COM."}}.msg()), st: Done, sni: "www.example.com"},
		{name: "1-byte records", in: oneByteRecords(basic), st: Done, sni: "www.example.com",
			check: func(t *testing.T, h *ClientHello) {
				if h.Records != len(basic) {
					t.Errorf("records %d, want %d", h.Records, len(basic))
				}
			}},
		{name: "header split over records", in: records(basic, 1, 2, 1, 10), st: Done, sni: "www.example.com"},
		{name: "two records", in: records(basic, 40), st: Done, sni: "www.example.com"},
		{name: "warning alert first", in: append(alert(1, 90), records(basic)...), st: Done, sni: "www.example.com"},
		{name: "warning alert between fragments", in: append(append(records(basic[:20]), alert(1, 90)...), records(basic[20:])...), st: Done, sni: "www.example.com"},
		{name: "16 warning alerts", in: append(many(16, alert(1, 90)), records(basic)...), st: Done, sni: "www.example.com"},
		{name: "17 warning alerts", in: append(many(17, alert(1, 90)), records(basic)...), err: errHelloTooManyAlerts},
		{name: "fatal alert", in: append(alert(2, 40), records(basic)...), err: errHelloAlert},
		{name: "close_notify", in: alert(1, 0), err: errHelloAlert},
		{name: "long alert record", in: []byte{recordTypeAlert, 3, 1, 0, 3, 1, 90, 0}, err: errHelloAlert},
		{name: "CCS between fragments", in: append(append(records(basic[:20]), 20, 3, 3, 0, 1, 1), records(basic[20:])...), err: errHelloRecordType},
		{name: "hello then CCS and early data", in: withTail(basic, 20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xaa, 0xbb), st: Done, sni: "www.example.com"},
		{name: "hello then more bytes in the record", in: records(append(slices.Clone(basic), 1, 2, 3)), st: Done, sni: "www.example.com"},
		{name: "truncated", in: records(basic)[:60], st: NeedMore},
		{name: "header only", in: records(basic)[:5], st: NeedMore},
		{name: "empty", in: nil, st: NeedMore},
		{name: "duplicate server_name", in: records(helloSpec{sni: []string{"a.example", "b.example"}}.msg()), err: errHelloDupServerName},
		{name: "duplicate server_name same value", in: records(helloSpec{sni: []string{"a.example", "a.example"}}.msg()), err: errHelloDupServerName},
		{name: "two server_name extensions", in: records(helloSpec{sni: []string{"a.example"}, exts: []ext{{0, []byte{0, 12, 0, 0, 9, 'b', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e'}}}}.msg()), err: errHelloDupExtension},
		{name: "empty server_name list", in: records(helloSpec{exts: []ext{{0, []byte{0, 0}}}}.msg()), err: errHelloServerName},
		{name: "empty host_name", in: records(helloSpec{sni: []string{""}}.msg()), err: errHelloServerName},
		{name: "server_name overruns", in: records(helloSpec{exts: []ext{{0, []byte{0, 9, 0, 0, 9, 'a'}}}}.msg()), err: errHelloServerName},
		{name: "NUL in server_name", in: records(helloSpec{sni: []string{"good.example\x00.evil.example"}}.msg()), err: errHelloServerNameBytes},
		{name: "space in server_name", in: records(helloSpec{sni: []string{"good.example evil"}}.msg()), err: errHelloServerNameBytes},
		{name: "server_name with two trailing dots", in: records(helloSpec{sni: []string{"a.example.."}}.msg()), err: errHelloServerNameLabel},
		{name: "server_name with empty label", in: records(helloSpec{sni: []string{"a..example"}}.msg()), err: errHelloServerNameLabel},
		{name: "server_name dot", in: records(helloSpec{sni: []string{"."}}.msg()), err: errHelloServerNameLabel},
		{name: "UTF-8 server_name", in: records(helloSpec{sni: []string{"bücher.example"}}.msg()), err: errHelloServerNameBytes},
		{name: "other name_type skipped", in: records(helloSpec{exts: []ext{{0, []byte{0, 14, 0, 0, 4, 'a', '.', 'e', 'x', 1, 0, 4, 'b', '.', 'e', 'x'}}}}.msg()), st: Done, sni: "a.ex"},
		{name: "duplicate ALPN extension", in: records(helloSpec{alpn: []string{"h2"}, exts: []ext{{extALPN, []byte{0, 3, 2, 'h', '2'}}}}.msg()), err: errHelloDupExtension},
		{name: "duplicate ECH extension", in: records(helloSpec{exts: []ext{{extECH, nil}, {extECH, nil}}}.msg()), err: errHelloDupExtension},
		{name: "duplicate GREASE extension", in: records(helloSpec{exts: []ext{{0x1a1a, nil}, {0x1a1a, nil}}}.msg()), err: errHelloDupExtension},
		{name: "empty ALPN name", in: records(helloSpec{alpn: []string{"h2", ""}}.msg()), err: errHelloALPN},
		{name: "empty ALPN list", in: records(helloSpec{exts: []ext{{extALPN, []byte{0, 0}}}}.msg()), err: errHelloALPN},
		{name: "odd supported_versions", in: records(helloSpec{exts: []ext{{extSupportedVersions, []byte{3, 3, 4, 3}}}}.msg()), err: errHelloVersions},
		{name: "pre_shared_key not last", in: records(helloSpec{exts: []ext{{extPreSharedKey, []byte{0}}, {0x0017, nil}}}.msg()), err: errHelloPSKNotLast},
		{name: "bytes after known extension", in: records(helloSpec{exts: []ext{{extECPointFormats, []byte{1, 0, 9}}}}.msg()), err: errHelloExtTrailing},
		{name: "empty key share", in: records(helloSpec{exts: []ext{{extKeyShare, []byte{0, 4, 0, 0x1d, 0, 0}}}}.msg()), err: errHelloKeyShare},
		{name: "ECH", in: records(helloSpec{sni: []string{"public.example"}, exts: []ext{{extECH, []byte{0, 1, 2, 3}}}}.msg()), st: Done, sni: "public.example",
			check: func(t *testing.T, h *ClientHello) {
				if !h.ECH {
					t.Error("ECH not seen")
				}
			}},
		{name: "no extensions", in: records(helloSpec{noExts: true, version: VersionTLS10}.msg()), st: Done,
			check: func(t *testing.T, h *ClientHello) {
				if h.JA4 != "t10i030000_"+string(appendTruncatedSHA256(nil, []byte("1301,1302,c02b"), false))+"_000000000000" || h.JA3 != "769,4865-4866-49195,,," {
					t.Errorf("JA4 %s JA3 %s", h.JA4, h.JA3)
				}
			}},
		{name: "GREASE ignored", in: records(helloSpec{ciphers: []uint16{0xdada, 0x1301}, versions: []uint16{0x7a7a, VersionTLS13, VersionTLS12}, sni: []string{"a.example"},
			exts: []ext{{0x3a3a, nil}, {extSupportedGroups, []byte{0, 4, 0x4a, 0x4a, 0, 0x1d}}}}.msg()), st: Done, sni: "a.example",
			check: func(t *testing.T, h *ClientHello) {
				if h.MaxVersion != VersionTLS13 || h.JA3 != "771,4865,0-43-10,29," || h.JA4[:10] != "t13d010300" {
					t.Errorf("max %x JA3 %s JA4 %s", h.MaxVersion, h.JA3, h.JA4)
				}
			}},
		{name: "not TLS", in: []byte("GET / HTTP/1.1\r\n\r\n"), err: errHelloNotTLS},
		{name: "SSLv2 hello", in: []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}, err: errHelloSSLv2},
		{name: "record version 2", in: []byte{22, 2, 0, 0, 4, 1, 0, 0, 0}, err: errHelloRecordVersion},
		{name: "record minor 0xff", in: append([]byte{22, 3, 0xff}, records(basic)[3:]...), st: Done, sni: "www.example.com"},
		{name: "empty handshake record", in: append([]byte{22, 3, 1, 0, 0}, records(basic)...), err: errHelloEmptyRecord},
		{name: "record overflow", in: []byte{22, 3, 1, 0x40, 0x01}, err: errHelloRecordOverflow},
		{name: "ServerHello", in: []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, err: errHelloNotClientHello},
		{name: "ServerHello type byte alone", in: []byte{22, 3, 3, 0, 1, 2}, err: errHelloNotClientHello},
		{name: "zero-length hello", in: []byte{22, 3, 3, 0, 4, 1, 0, 0, 0}, err: errHelloShort},
		{name: "inner length overruns", in: records([]byte{1, 0, 0, 6, 3, 3, 0, 0, 0, 0}), err: errHelloShort},
		{name: "session_id over 32", in: records(append([]byte{1, 0, 0, 2 + 32 + 1 + 33, 3, 3}, append(make([]byte, 32), append([]byte{33}, make([]byte, 33)...)...)...)), err: errHelloSessionID},
		{name: "odd cipher_suites", in: records([]byte{1, 0, 0, 38, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}), err: errHelloCipherSuites},
		{name: "trailing bytes after extensions", in: records(append(helloWithTrailing(basic), 0)), err: errHelloTrailing},
		{name: "over default cap", in: []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x40, 0x00}, err: errHelloTooLarge},
		{name: "over configured cap", in: records(basic), opts: TLSOptions{MaxHelloSize: 40}, err: errHelloTooLarge},
		{name: "at configured cap", in: records(basic), opts: TLSOptions{MaxHelloSize: len(basic)}, st: Done, sni: "www.example.com"},
		{name: "cap clamped to 64 KiB", in: []byte{22, 3, 1, 0x40, 0x00, 1, 1, 0, 0x00}, opts: TLSOptions{MaxHelloSize: 1 << 20}, err: errHelloTooLarge},
		{name: "large padded hello over records", in: records(helloSpec{sni: []string{"pad.example"}, exts: []ext{{0x0015, make([]byte, 40000)}}}.msg(), 16384, 16384),
			opts: TLSOptions{MaxHelloSize: 64 << 10}, st: Done, sni: "pad.example"},
	}
}

// helloWithTrailing rewrites msg's length so that one more byte after the
// extensions belongs to the hello.
func helloWithTrailing(msg []byte) []byte {
	out := slices.Clone(msg)
	n := int(out[1])<<16 | int(out[2])<<8 | int(out[3]) + 1
	out[1], out[2], out[3] = byte(n>>16), byte(n>>8), byte(n)
	return out
}

func TestTLSEvasion(t *testing.T) {
	for _, tt := range tlsEvasionCases() {
		t.Run(tt.name, func(t *testing.T) {
			for _, feed := range []struct {
				name   string
				chunks [][]byte
			}{
				{"whole", [][]byte{tt.in}},
				{"1-byte", randomSplitsOf(tt.in, 1)},
				{"random", randomSplits(tt.in, 7)},
			} {
				p := NewTLSParser(tt.opts)
				r := feedTLS(p, feed.chunks)
				if tt.err != nil {
					if r.err != tt.err {
						t.Fatalf("%s: got %v %v, want error %v", feed.name, r.st, r.err, tt.err)
					}
					if _, st, err := p.Feed([]byte{22}); err != tt.err || st != NeedMore {
						t.Fatalf("error not sticky: %v %v", st, err)
					}
					continue
				}
				if r.err != nil || r.st != tt.st {
					t.Fatalf("%s: got %v %v, want %v", feed.name, r.st, r.err, tt.st)
				}
				if r.st != Done {
					if p.Hello() != nil {
						t.Fatal("Hello before Done")
					}
					continue
				}
				if r.hello.ServerName != tt.sni {
					t.Errorf("%s: SNI %q, want %q", feed.name, r.hello.ServerName, tt.sni)
				}
				if tt.check != nil {
					tt.check(t, r.hello)
				}
				if n, st, err := p.Feed([]byte{1, 2, 3}); n != 0 || st != Done || err != nil {
					t.Errorf("Feed after Done: %d %v %v", n, st, err)
				}
			}
		})
	}
}

// TestTLSEndOffset: on Done, n points just past the ClientHello, also when
// more bytes follow in the same call.
func TestTLSEndOffset(t *testing.T) {
	msg := helloSpec{sni: []string{"a.example"}}.msg()
	in := append(records(msg, 30), 20, 3, 3, 0, 1, 1)
	var p TLSParser
	n, st, err := p.Feed(in)
	if st != Done || err != nil || n != len(in)-6 {
		t.Fatalf("%d %v %v, want done at %d", n, st, err, len(in)-6)
	}
	// Fed in two parts: the second call reports its own offset.
	p.Reset()
	if n, st, err := p.Feed(in[:20]); n != 20 || st != NeedMore || err != nil {
		t.Fatalf("first part: %d %v %v", n, st, err)
	}
	if n, st, err := p.Feed(in[20:]); n != len(in)-6-20 || st != Done || err != nil {
		t.Fatalf("second part: %d %v %v", n, st, err)
	}
}

func TestTLSResetKeepsNothing(t *testing.T) {
	var p TLSParser
	first := mustRead(t, "testdata/tls/chromium.bin")
	if _, st, _ := p.Feed(first[:100]); st != NeedMore {
		t.Fatal(st)
	}
	p.Reset()
	second := mustRead(t, "testdata/tls/openssl-s_client-nosni.bin")
	r := feedTLS(&p, [][]byte{second})
	if r.st != Done || r.hello.ServerName != "" || r.hello.ECH || len(r.hello.ALPN) != 0 {
		t.Fatalf("state leaked over Reset: %+v", r.hello)
	}
}

func TestClientHelloClone(t *testing.T) {
	var p TLSParser
	feedTLS(&p, [][]byte{mustRead(t, "testdata/tls/chromium.bin")})
	c := p.Hello().Clone()
	if !reflect.DeepEqual(c, p.Hello()) {
		t.Fatal("clone differs")
	}
	p.Reset()
	feedTLS(&p, [][]byte{mustRead(t, "testdata/tls/curl.bin")})
	if c.JA4 != "t13d1517h2_8daaf6152771_cb7bf5808d99" || len(c.CipherSuites) != 16 || !c.ECH {
		t.Fatalf("clone changed by Reset: %+v", c)
	}
}

// TestTLSAllocs: a parser reused with Reset allocates nothing per parse,
// whole or fragmented, once its buffers have grown and its strings are
// interned.
func TestTLSAllocs(t *testing.T) {
	chromium := mustRead(t, "testdata/tls/chromium.bin")
	fragmented := oneByteRecords(chromium[5:])
	for name, chunks := range map[string][][]byte{
		"chromium":            {chromium},
		"go-pq":               {mustRead(t, "testdata/tls/go-pq.bin")},
		"1-byte records":      {fragmented},
		"1-byte feeds":        randomSplitsOf(chromium, 1),
		"random feeds, split": randomSplits(chromium, 3),
	} {
		var p TLSParser
		var allocs float64
		allocs = testing.AllocsPerRun(50, func() {
			p.Reset()
			for _, c := range chunks {
				if _, st, err := p.Feed(c); err != nil || st == Done {
					break
				}
			}
			if p.Hello() == nil {
				t.Fatal("not done")
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per parse, want 0", name, allocs)
		}
	}
}

func TestTLSNoFingerprints(t *testing.T) {
	in := mustRead(t, "testdata/tls/chromium.bin")
	var full TLSParser
	lean := NewTLSParser(TLSOptions{NoFingerprints: true})
	a, b := feedTLS(&full, [][]byte{in}), feedTLS(lean, [][]byte{in})
	if b.hello.JA3 != "" || b.hello.JA3Hash != "" || b.hello.JA4 != "" {
		t.Fatalf("fingerprints computed: %+v", b.hello)
	}
	a.hello.JA3, a.hello.JA3Hash, a.hello.JA4 = "", "", ""
	if !reflect.DeepEqual(a.hello, b.hello) {
		t.Fatalf("results differ:\n%+v\n%+v", a.hello, b.hello)
	}
	lean.Reset() // options survive Reset
	if r := feedTLS(lean, [][]byte{in}); r.hello.JA4 != "" {
		t.Fatal("option lost on Reset")
	}
}

// TestTLSManyExtensions: thousands of distinct extensions (the most a
// 16 KiB hello holds), a duplicate among them, and no stale state between
// hellos.
func TestTLSManyExtensions(t *testing.T) {
	var exts []ext
	for i := range 3000 {
		exts = append(exts, ext{typ: uint16(1024 + i*17)})
	}
	many := records(helloSpec{sni: []string{"a.example"}, exts: exts}.msg(), 16384)
	dup := records(helloSpec{exts: append(slices.Clone(exts), ext{typ: 1024 + 2999*17})}.msg(), 16384)
	var p TLSParser
	for i, tt := range []struct {
		in  []byte
		err error
	}{{many, nil}, {dup, errHelloDupExtension}, {many, nil}, {dup, errHelloDupExtension}} {
		p.Reset()
		r := feedTLS(&p, [][]byte{tt.in})
		if r.err != tt.err || (tt.err == nil && len(r.hello.Extensions) != 3001) {
			t.Fatalf("%d: %v %v", i, r.st, r.err)
		}
	}
}
