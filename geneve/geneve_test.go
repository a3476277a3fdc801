package geneve

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// packet builds a GENEVE header with opts and an inner payload.
func packet(t testing.TB, proto uint16, opts []byte, inner []byte) []byte {
	t.Helper()
	b, err := Append(nil, &Header{Protocol: proto, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	return append(b, inner...)
}

func awsOpts() []byte { return AWSOptions(nil, 0x1122334455667788, 0x99aabbccddeeff00, 0xdeadbeef) }

func TestParseAWS(t *testing.T) {
	inner := []byte{0x45, 0, 0, 20}
	b := packet(t, ProtoIPv4, awsOpts(), inner)
	var h Header
	p, err := Parse(b, &h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, inner) {
		t.Errorf("payload %x, want %x", p, inner)
	}
	if h.EndpointID != 0x1122334455667788 || h.AttachmentID != 0x99aabbccddeeff00 || h.FlowCookie != 0xdeadbeef {
		t.Errorf("options %x %x %x", h.EndpointID, h.AttachmentID, h.FlowCookie)
	}
	if h.Has != FoundEndpointID|FoundAttachmentID|FoundFlowCookie {
		t.Errorf("Has = %b", h.Has)
	}
	if !bytes.Equal(h.Options, awsOpts()) || len(h.Options) != 32 {
		t.Errorf("raw options %x", h.Options)
	}
	// Echo: the header built from the parsed one is the one received.
	out, err := Append(nil, &h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, b[:len(b)-len(inner)]) {
		t.Errorf("echo %x, want %x", out, b[:len(b)-len(inner)])
	}
}

func TestParseErrors(t *testing.T) {
	withOpt := func(class uint16, typ uint8, data []byte) []byte {
		o, err := AppendOption(awsOpts(), class, typ, data)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	good := packet(t, ProtoIPv6, awsOpts(), []byte{0x60})
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short fixed header", good[:7], ErrTruncated},
		{"options cut", good[:20], ErrTruncated},
		{"version 1", append([]byte{0x40 | good[0]}, good[1:]...), ErrVersion},
		{"ethernet inner", packet(t, 0x6558, nil, nil), ErrProtocol},
		{"unknown critical class", packet(t, ProtoIPv4, withOpt(0x0200, 0x81, []byte{1, 2, 3, 4}), nil), ErrCritical},
		{"unknown critical AWS type", packet(t, ProtoIPv4, withOpt(ClassAWS, 0x84, nil), nil), ErrCritical},
		{"endpoint ID 4 bytes", packet(t, ProtoIPv4, mustOpt(t, ClassAWS, TypeGWLBEndpointID, []byte{1, 2, 3, 4}), nil), ErrOptionLength},
		{"cookie 8 bytes", packet(t, ProtoIPv4, mustOpt(t, ClassAWS, TypeGWLBFlowCookie, make([]byte, 8)), nil), ErrOptionLength},
		{"option longer than options", packet(t, ProtoIPv4, []byte{1, 8, 0, 2, 0, 0, 0, 0}, nil), ErrOptionLength},
		{"duplicate endpoint", packet(t, ProtoIPv4, append(awsOpts(), awsOpts()[:12]...), nil), ErrDuplicateOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Header
			_, err := Parse(tt.b, &h)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
			if Reason(err) == "other" {
				t.Errorf("Reason(%v) = other", err)
			}
		})
	}
}

func mustOpt(t *testing.T, class uint16, typ uint8, data []byte) []byte {
	o, err := AppendOption(nil, class, typ, data)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestParseSkipsUnknownNonCritical(t *testing.T) {
	opts := append(mustOpt(t, 0x0200, 0x05, []byte{9, 9, 9, 9}), awsOpts()...)
	var h Header
	p, err := Parse(packet(t, ProtoIPv4, opts, []byte{0x45}), &h)
	if err != nil || len(p) != 1 || h.Has != FoundEndpointID|FoundAttachmentID|FoundFlowCookie || !bytes.Equal(h.Options, opts) {
		t.Fatalf("Parse = %v, %x, %+v", err, p, h)
	}
}

func TestAppendRejects(t *testing.T) {
	if _, err := Append(nil, &Header{Options: make([]byte, 3)}); !errors.Is(err, ErrOptionLength) {
		t.Errorf("3 option bytes: %v", err)
	}
	if _, err := Append(nil, &Header{Options: make([]byte, MaxOptionsLen+4)}); !errors.Is(err, ErrOptionLength) {
		t.Errorf("too many option bytes: %v", err)
	}
	if _, err := AppendOption(nil, 1, 1, make([]byte, 128)); !errors.Is(err, ErrOptionLength) {
		t.Errorf("option of 128 bytes: %v", err)
	}
}

func TestParseAllocs(t *testing.T) {
	b := packet(t, ProtoIPv4, awsOpts(), make([]byte, 1400))
	var h Header
	if n := testing.AllocsPerRun(1000, func() { Parse(b, &h) }); n != 0 {
		t.Errorf("Parse allocates %v times", n)
	}
	bad := packet(t, ProtoIPv4, mustOpt(t, 0x0200, 0x81, nil), nil)
	if n := testing.AllocsPerRun(1000, func() { Parse(bad, &h) }); n != 0 {
		t.Errorf("Parse of a bad packet allocates %v times", n)
	}
	out := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(1000, func() { Append(out[:0], &h) }); n != 0 {
		t.Errorf("Append allocates %v times", n)
	}
}

func FuzzParse(f *testing.F) {
	// The committed corpus (testdata/fuzz/FuzzParse) holds the same kinds
	// of packet; these run even without it.
	f.Add(packet(f, ProtoIPv4, awsOpts(), []byte{0x45, 0, 0, 20}))
	f.Add(packet(f, ProtoIPv6, nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		p, err := Parse(b, &h)
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// A parsed header is rebuilt byte for byte, apart from the
		// reserved bits, which Append writes as zero.
		out, err := Append(nil, &h)
		if err != nil {
			t.Fatalf("Append of a parsed header: %v", err)
		}
		n := len(b) - len(p)
		if len(out) != n || out[0] != b[0] || out[2] != b[2] || out[3] != b[3] || !bytes.Equal(out[4:7], b[4:7]) || !bytes.Equal(out[8:], b[8:n]) {
			t.Fatalf("rebuilt %x from %x", out, b[:n])
		}
		if out[1] != b[1]&0xc0 {
			t.Fatalf("flags %x from %x", out[1], b[1])
		}
	})
}

// TestCorpusPresent keeps the committed seed corpus from going missing.
func TestCorpusPresent(t *testing.T) {
	m, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzParse", "*"))
	if len(m) < 5 {
		t.Fatalf("seed corpus has %d files", len(m))
	}
	for _, f := range m {
		if b, err := os.ReadFile(f); err != nil || !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
			t.Errorf("%s: not a fuzz corpus file (%v)", f, err)
		}
	}
}
