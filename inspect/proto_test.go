package inspect

import (
	"bytes"
	"strings"
	"testing"
)

var detectCases = []struct {
	in   string
	p    Proto
	sure bool
}{
	{"", ProtoUnknown, false},
	{"G", ProtoUnknown, false},
	{"GE", ProtoUnknown, false},
	{"GET", ProtoUnknown, false},
	{"GET ", ProtoHTTP1, true},
	{"POST /x", ProtoHTTP1, true},
	{"PATCH", ProtoUnknown, false},
	{"\r\n\r\nGET / HTTP/1.1\r\n", ProtoHTTP1, true},
	{"\r\n", ProtoUnknown, false},
	{"get / HTTP/1.1", ProtoUnknown, false},
	{"get / HTTP/1.1\r\n", ProtoHTTP1, true},
	{"FOO /x HTTP/1.0\n", ProtoHTTP1, true},
	{"FOO /x HTTP/2.0\r\n", ProtoUnknown, true},
	{"XGET /admin HTTP/1.2\r\n", ProtoHTTP1, true}, // servers read any 1.x as 1.1
	{"XGET /admin HTTP/1.9\n", ProtoHTTP1, true},
	{"XGET /admin HTTP/1.", ProtoUnknown, false},
	{"XGET /admin HTTP/1.x\r\n", ProtoUnknown, true},
	{"FOO /x\r\n", ProtoUnknown, true},
	{"FOO  /x HTTP/1.1\r\n", ProtoUnknown, true},
	{"\x16", ProtoUnknown, false},
	{"\x16\x03", ProtoUnknown, false},
	{"\x16\x03\x01", ProtoTLS, true},
	{"\x16\x03\xff", ProtoTLS, true},
	{"\x16\x00\x01", ProtoTLS, true},
	{"\x15\x03\x01", ProtoTLS, true},
	{"\x16\x10\x01", ProtoUnknown, true},
	{"\x17\x03\x03", ProtoUnknown, true},
	{"\x80\x2e\x01\x03\x01", ProtoTLS, true},
	{"\x80\x2e\x01", ProtoUnknown, false},
	{"\x80\x2e\x02", ProtoUnknown, true},
	{"SSH-2.0-OpenSSH_9.2\r\n", ProtoSSH, true},
	{"SSH-", ProtoSSH, true},
	{"SS", ProtoUnknown, false},
	{"SSX", ProtoUnknown, false}, // could still be a method
	{"SS\x00", ProtoUnknown, true},
	{h2Preface, ProtoHTTP2, true},
	{h2Preface[:16], ProtoUnknown, false},
	{"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", ProtoUnknown, true},
	{"PUT ", ProtoHTTP1, true},
	{"*1\r\n$4\r\nPING\r\n", ProtoUnknown, true},
	{"\x00\x01\x02", ProtoUnknown, true},
	{"EHLO x\r\n", ProtoUnknown, true},
}

func TestDetect(t *testing.T) {
	for _, tt := range detectCases {
		p, sure := Detect([]byte(tt.in))
		if p != tt.p || sure != tt.sure {
			t.Errorf("Detect(%q) = %v %v, want %v %v", tt.in, p, sure, tt.p, tt.sure)
		}
		want := tt.p
		if !tt.sure {
			want = ProtoUnknown
		}
		if got := DetectFinal([]byte(tt.in)); got != want {
			t.Errorf("DetectFinal(%q) = %v, want %v", tt.in, got, want)
		}
	}
}

// TestDetectBounded: at DetectMaxBytes Detect is always sure.
func TestDetectBounded(t *testing.T) {
	for _, in := range [][]byte{
		bytes.Repeat([]byte("a"), DetectMaxBytes),
		bytes.Repeat([]byte("\r\n"), DetectMaxBytes/2),
		append([]byte("FOO /"), bytes.Repeat([]byte("a"), DetectMaxBytes)...),
	} {
		if p, sure := Detect(in); !sure || p != ProtoUnknown {
			t.Errorf("Detect(%q...) = %v %v", in[:8], p, sure)
		}
	}
}

// TestDetectCaptures: real clients are recognised, and no prefix of their
// bytes gets a wrong sure answer.
func TestDetectCaptures(t *testing.T) {
	for dir, want := range map[string]Proto{"tls": ProtoTLS, "http": ProtoHTTP1} {
		for name, in := range captures(t, dir) {
			checkDetectPrefixes(t, name, in, want)
		}
	}
	checkDetectPrefixes(t, "ssh", mustRead(t, "testdata/other/ssh.bin"), ProtoSSH)
	checkDetectPrefixes(t, "h2", mustRead(t, "testdata/other/curl-h2-prior-knowledge.bin"), ProtoHTTP2)
}

func checkDetectPrefixes(t *testing.T, name string, in []byte, want Proto) {
	t.Helper()
	if p, sure := Detect(in); p != want || !sure {
		t.Errorf("%s: Detect = %v %v, want %v", name, p, sure, want)
	}
	for i := range in {
		if p, sure := Detect(in[:i]); sure && p != want || !sure && p != ProtoUnknown {
			t.Errorf("%s: Detect(first %d bytes) = %v %v", name, i, p, sure)
		}
	}
}

func TestEnumStrings(t *testing.T) {
	names := map[Proto]string{ProtoUnknown: "unknown", ProtoTLS: "tls", ProtoHTTP1: "http", ProtoHTTP2: "h2", ProtoSSH: "ssh", 99: "unknown"}
	for p, s := range names {
		if p.String() != s {
			t.Errorf("%d: %q", p, p.String())
		}
	}
	if NeedMore.String() != "need-more" || Done.String() != "done" {
		t.Error("Status strings")
	}
	for _, e := range []error{errHelloDupServerName, errHTTPDupHost, errHTTPLineTooLong, errHTTPUpgraded, errHelloNotTLS, errHTTPNoHost} {
		if !strings.HasPrefix(e.Error(), "inspect/") {
			t.Errorf("%q", e)
		}
	}
	if errHTTPCLTE.Error() != "inspect/http: ambiguous: Content-Length with Transfer-Encoding" {
		t.Errorf("%q", errHTTPCLTE)
	}
}
