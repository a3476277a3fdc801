package dns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/netward/netward/inspect"
	"golang.org/x/net/dns/dnsmessage"
)

// qopt describes a query for build.
type qopt struct {
	id        uint16
	names     []string // questions, fully qualified ("." added if missing)
	typ       dnsmessage.Type
	response  bool
	rd, cd    bool
	opcode    dnsmessage.OpCode
	edns      int // UDP size of an OPT record; 0: none
	do        bool
	twoOPT    bool
	answerRRs int // A records added to the answer section
}

// build makes the query as a client would, with dnsmessage.Builder (no
// compression, so names keep their case).
func build(t testing.TB, o qopt) []byte {
	t.Helper()
	if o.typ == 0 {
		o.typ = dnsmessage.TypeA
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: o.id, Response: o.response, OpCode: o.opcode,
		RecursionDesired: o.rd, CheckingDisabled: o.cd,
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.StartQuestions())
	for _, n := range o.names {
		if !strings.HasSuffix(n, ".") {
			n += "."
		}
		must(b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(n), Type: o.typ, Class: dnsmessage.ClassINET}))
	}
	if o.answerRRs > 0 {
		must(b.StartAnswers())
		for i := 0; i < o.answerRRs; i++ {
			must(b.AResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("x.example."), Class: dnsmessage.ClassINET}, dnsmessage.AResource{A: [4]byte{192, 0, 2, byte(i)}}))
		}
	}
	if o.edns != 0 {
		must(b.StartAdditionals())
		n := 1
		if o.twoOPT {
			n = 2
		}
		for range n {
			var rh dnsmessage.ResourceHeader
			must(rh.SetEDNS0(o.edns, dnsmessage.RCodeSuccess, o.do))
			must(b.OPTResource(rh, dnsmessage.OPTResource{}))
		}
	}
	msg, err := b.Finish()
	must(err)
	return msg
}

// readCorpus returns the []byte of a "go test fuzz v1" file.
func readCorpus(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
		t.Fatalf("%s: not a one-[]byte fuzz file", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

func TestParse(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		name  string
		msg   []byte
		class error // nil: parses
		want  Query
	}{
		{name: "A", msg: build(t, qopt{id: 0x1234, names: []string{"www.example.com"}, rd: true}),
			want: Query{ID: 0x1234, Name: "www.example.com", Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, RD: true}},
		{name: "AAAA", msg: build(t, qopt{id: 1, names: []string{"example.org"}, typ: dnsmessage.TypeAAAA}),
			want: Query{ID: 1, Name: "example.org", Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET}},
		{name: "HTTPS", msg: build(t, qopt{id: 2, names: []string{"svc.example"}, typ: dnsmessage.TypeHTTPS, rd: true}),
			want: Query{ID: 2, Name: "svc.example", Type: dnsmessage.TypeHTTPS, Class: dnsmessage.ClassINET, RD: true}},
		{name: "mixed case", msg: build(t, qopt{id: 3, names: []string{"WwW.ExAmPlE.CoM"}}),
			want: Query{ID: 3, Name: "www.example.com", Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
		{name: "root", msg: build(t, qopt{id: 4, names: []string{"."}, typ: dnsmessage.TypeNS}),
			want: Query{ID: 4, Name: "", Type: dnsmessage.TypeNS, Class: dnsmessage.ClassINET}},
		{name: "underscore and digits", msg: build(t, qopt{names: []string{"_sip._tcp.1-2.example"}, typ: dnsmessage.TypeSRV}),
			want: Query{Name: "_sip._tcp.1-2.example", Type: dnsmessage.TypeSRV, Class: dnsmessage.ClassINET}},
		{name: "idna kept", msg: build(t, qopt{names: []string{"XN--bcher-kva.example"}}),
			want: Query{Name: "xn--bcher-kva.example", Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
		{name: "EDNS DO CD", msg: build(t, qopt{id: 5, names: []string{"a.example"}, edns: 1232, do: true, cd: true, rd: true}),
			want: Query{ID: 5, Name: "a.example", Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, RD: true, CD: true, EDNS: true, UDPSize: 1232, DO: true}},
		{name: "EDNS 4096", msg: build(t, qopt{names: []string{"a.example"}, edns: 4096}),
			want: Query{Name: "a.example", Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, EDNS: true, UDPSize: 4096}},
		{name: "NOTIFY with an answer", msg: build(t, qopt{names: []string{"zone.example"}, opcode: 4, typ: dnsmessage.TypeSOA, answerRRs: 1}),
			want: Query{Name: "zone.example", Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, Opcode: 4}},
		{name: "longest name", msg: build(t, qopt{names: []string{long + "." + long + "." + long + "." + strings.Repeat("b", 61)}}),
			want: Query{Name: long + "." + long + "." + long + "." + strings.Repeat("b", 61), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},

		{name: "response", msg: build(t, qopt{names: []string{"a.example"}, response: true}), class: ErrNotQuery},
		{name: "two questions", msg: build(t, qopt{names: []string{"a.example", "b.example"}}), class: ErrNotQuery},
		{name: "no question", msg: build(t, qopt{}), class: ErrNotQuery},
		{name: "space in name", msg: rawQuery("\x03a b\x07example\x00"), class: ErrNotQuery},
		{name: "dot in label", msg: rawQuery("\x03a.b\x07example\x00"), class: ErrNotQuery},
		{name: "NUL in label", msg: rawQuery("\x03a\x00b\x07example\x00"), class: ErrNotQuery},
		{name: "star", msg: rawQuery("\x01*\x07example\x00"), class: ErrNotQuery},
		{name: "high byte", msg: rawQuery("\x03\xc3\xa9a\x07example\x00"), class: ErrNotQuery},
		{name: "empty", msg: nil, class: inspect.ErrMalformed},
		{name: "short header", msg: make([]byte, 11), class: inspect.ErrMalformed},
		{name: "header only", msg: rawQuery(""), class: inspect.ErrMalformed},
		{name: "truncated name", msg: rawQueryNoTail("\x07exam"), class: inspect.ErrMalformed},
		{name: "unterminated name", msg: rawQuery("\x07example"), class: inspect.ErrMalformed},
		{name: "truncated type", msg: rawQueryNoTail("\x07example\x00\x00"), class: inspect.ErrMalformed},
		{name: "truncated class", msg: rawQueryNoTail("\x07example\x00\x00\x01\x00"), class: inspect.ErrMalformed},
		{name: "pointer loop", msg: rawQueryNoTail("\xc0\x0c\x00\x01\x00\x01"), class: inspect.ErrMalformed},
		{name: "pointer to header", msg: rawQueryNoTail("\x01a\xc0\x00\x00\x01\x00\x01"), class: inspect.ErrMalformed},
		{name: "reserved label 0x40", msg: rawQuery("\x41a\x00"), class: inspect.ErrMalformed},
		{name: "reserved label 0x80", msg: rawQuery("\x81a\x00"), class: inspect.ErrMalformed},
		{name: "name over 255", msg: rawQuery(strings.Repeat("\x3f"+long, 4) + "\x00"), class: inspect.ErrMalformed},
		{name: "ANCOUNT lies", msg: withCount(build(t, qopt{names: []string{"a.example"}}), 6, 3), class: inspect.ErrMalformed},
		{name: "NSCOUNT lies", msg: withCount(build(t, qopt{names: []string{"a.example"}}), 8, 1), class: inspect.ErrMalformed},
		{name: "ARCOUNT lies", msg: withCount(build(t, qopt{names: []string{"a.example"}}), 10, 0xffff), class: inspect.ErrMalformed},
		{name: "truncated OPT", msg: func() []byte { m := build(t, qopt{names: []string{"a.example"}, edns: 1232}); return m[:len(m)-3] }(), class: inspect.ErrMalformed},
		{name: "two OPT", msg: build(t, qopt{names: []string{"a.example"}, edns: 1232, twoOPT: true}), class: inspect.ErrMalformed},
		{name: "OPT pointer loop", msg: withAdditional(rawQuery("\x01a\x00"), "\xc0\x13\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"), class: inspect.ErrMalformed},
		{name: "OPT not root", msg: withAdditional(rawQuery("\x01a\x00"), "\x01a\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"), class: inspect.ErrMalformed},
		{name: "oversize", msg: append(build(t, qopt{names: []string{"a.example"}}), make([]byte, 65536)...), class: inspect.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q Query
			err := Parse(tt.msg, &q)
			if tt.class == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if q != tt.want {
					t.Fatalf("Parse:\n got %+v\nwant %+v", q, tt.want)
				}
				return
			}
			var pe *inspect.ParseError
			if !errors.Is(err, tt.class) || !errors.As(err, &pe) || pe.Proto != inspect.ProtoDNS {
				t.Fatalf("Parse = %v (%+v), want class %v", err, q, tt.class)
			}
			if q != (Query{}) {
				t.Errorf("Query not empty after an error: %+v", q)
			}
			t.Log(err)
		})
	}
}

// rawQuery is a query header (ID 0x0101, QDCOUNT 1) followed by name and
// type A class IN ("" leaves the question out).
func rawQuery(name string) []byte {
	m := rawQueryNoTail(name)
	if name != "" {
		m = append(m, 0, 1, 0, 1)
	}
	return m
}

func rawQueryNoTail(name string) []byte {
	return append([]byte{1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, name...)
}

func withCount(msg []byte, off int, n uint16) []byte {
	binary.BigEndian.PutUint16(msg[off:], n)
	return msg
}

func withAdditional(msg []byte, rr string) []byte {
	msg = append(msg, rr...)
	binary.BigEndian.PutUint16(msg[10:], binary.BigEndian.Uint16(msg[10:])+1)
	return msg
}

func TestParseCorpus(t *testing.T) {
	want := map[string]struct {
		name string
		typ  string
		edns bool
	}{
		"dig-a":                       {"www.example.com", "A", true},
		"dig-aaaa":                    {"www.example.com", "AAAA", true},
		"dig-https":                   {"www.example.com", "HTTPS", true},
		"dig-mixed-case-trailing-dot": {"www.example.com", "A", true},
		"dig-noedns":                  {"www.example.com", "A", false},
		"dig-dnssec-cd":               {"example.com", "DNSKEY", true},
		"dig-nsid-cookie":             {"example.com", "TXT", true},
		"dig-root-ns":                 {"", "NS", true},
		"dig-ptr":                     {"1.2.0.192.in-addr.arpa", "PTR", true},
		"dig-srv-underscore":          {"_sip._tcp.example.com", "SRV", true},
		"dig-idna":                    {"xn--bcher-kva.example", "A", true},
		"dig-type65534":               {"example.com", "TYPE65534", true},
		"dig-padding":                 {"example.com", "A", true},
		"host-mx":                     {"example.com", "MX", false},
		"nslookup-a":                  {"example.net", "A", false},
	}
	files, _ := filepath.Glob("testdata/fuzz/FuzzParse/*")
	if len(files) < len(want) {
		t.Fatalf("%d corpus files, want %d", len(files), len(want))
	}
	for _, f := range files {
		w, ok := want[filepath.Base(f)]
		if !ok {
			continue
		}
		var q Query
		if err := Parse(readCorpus(t, f), &q); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if q.Name != w.name || TypeName(q.Type) != w.typ || q.EDNS != w.edns {
			t.Errorf("%s: got %q %s EDNS=%v, want %q %s EDNS=%v", f, q.Name, TypeName(q.Type), q.EDNS, w.name, w.typ, w.edns)
		}
	}
}

// TestAppendResponse is the round trip: every answer to a set of queries,
// read back by dnsmessage.
func TestAppendResponse(t *testing.T) {
	queries := map[string][]byte{
		"0x20":      build(t, qopt{id: 0xbeef, names: []string{"wWw.ExaMple.COM"}, rd: true}),
		"EDNS DO":   build(t, qopt{id: 7, names: []string{"a.example"}, edns: 4096, do: true, cd: true}),
		"EDNS":      build(t, qopt{id: 8, names: []string{"MiXeD.example"}, edns: 512, typ: dnsmessage.TypeHTTPS}),
		"root":      build(t, qopt{id: 9, names: []string{"."}, typ: dnsmessage.TypeNS, edns: 1232}),
		"NOTIFY":    build(t, qopt{id: 10, names: []string{"zone.example"}, opcode: 4, answerRRs: 2}),
		"dig":       readCorpus(t, "testdata/fuzz/FuzzParse/dig-mixed-case-trailing-dot"),
		"dig-noedn": readCorpus(t, "testdata/fuzz/FuzzParse/dig-noedns"),
	}
	for name, msg := range queries {
		for _, a := range []Answer{AnswerNXDOMAIN, AnswerREFUSED, AnswerNODATA, AnswerSERVFAIL} {
			t.Run(name+"/"+a.String(), func(t *testing.T) {
				var q Query
				if err := Parse(msg, &q); err != nil {
					t.Fatal(err)
				}
				resp, err := AppendResponse([]byte("prefix"), msg, &q, a)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.HasPrefix(resp, []byte("prefix")) {
					t.Fatal("dst prefix lost")
				}
				resp = resp[len("prefix"):]
				if len(resp) > len(msg) {
					t.Errorf("response %d bytes > query %d", len(resp), len(msg))
				}
				checkResponse(t, msg, &q, a, resp)
			})
		}
	}
}

// checkResponse reads resp back with dnsmessage and checks it answers msg.
func checkResponse(t testing.TB, msg []byte, q *Query, a Answer, resp []byte) {
	t.Helper()
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		t.Fatalf("response header: %v", err)
	}
	if h.ID != q.ID || !h.Response || h.RCode != a.Rcode() || h.RecursionDesired != q.RD ||
		!h.RecursionAvailable || h.CheckingDisabled != q.CD || int(h.OpCode) != q.Opcode || h.Authoritative || h.Truncated {
		t.Fatalf("response header %+v for query %+v, answer %v", h, q, a)
	}
	rq, err := p.Question()
	if err != nil {
		t.Fatalf("response question: %v", err)
	}
	var mp dnsmessage.Parser
	mp.Start(msg)
	mq, err := mp.Question()
	if err != nil {
		t.Fatalf("query question: %v", err)
	}
	if rq != mq { // byte-exact name: 0x20 case survives
		t.Fatalf("response question %v, query question %v", rq, mq)
	}
	if _, err := p.Question(); err != dnsmessage.ErrSectionDone {
		t.Fatalf("second question: %v", err)
	}
	if ans, err := p.AllAnswers(); err != nil || len(ans) != 0 {
		t.Fatalf("answers %v, %v", ans, err)
	}
	if ns, err := p.AllAuthorities(); err != nil || len(ns) != 0 {
		t.Fatalf("authorities %v, %v", ns, err)
	}
	ar, err := p.AllAdditionals()
	if err != nil {
		t.Fatalf("additionals: %v", err)
	}
	if !q.EDNS {
		if len(ar) != 0 {
			t.Fatalf("additionals %v for a query without EDNS", ar)
		}
		return
	}
	if len(ar) != 1 || ar[0].Header.Type != dnsmessage.TypeOPT || ar[0].Header.Class != ResponseUDPSize ||
		ar[0].Header.DNSSECAllowed() != q.DO || ar[0].Header.ExtendedRCode(0) != 0 || ar[0].Header.Name.String() != "." {
		t.Fatalf("additionals %+v for an EDNS query %+v", ar, q)
	}
	if len(ar[0].Body.(*dnsmessage.OPTResource).Options) != 0 {
		t.Fatal("OPT options in the response")
	}
	// The response is not a query.
	var rq2 Query
	if err := Parse(resp, &rq2); !errors.Is(err, ErrNotQuery) {
		t.Fatalf("Parse(response) = %v", err)
	}
}

func TestAppendResponseErrors(t *testing.T) {
	msg := build(t, qopt{names: []string{"a.example"}})
	var q Query
	if err := Parse(msg, &q); err != nil {
		t.Fatal(err)
	}
	dst := []byte("keep")
	if out, err := AppendResponse(dst, msg, &q, Answer(9)); err == nil || string(out) != "keep" {
		t.Fatalf("unknown answer: %q, %v", out, err)
	}
	for _, bad := range [][]byte{nil, msg[:11], msg[:14], msg[:len(msg)-1], rawQuery("\xc0\x0c")} {
		if out, err := AppendResponse(dst, bad, &q, AnswerNXDOMAIN); err == nil || string(out) != "keep" {
			t.Errorf("AppendResponse(%q) = %q, %v", bad, out, err)
		}
	}
}

func TestNoAllocs(t *testing.T) {
	msg := readCorpus(t, "testdata/fuzz/FuzzParse/dig-mixed-case-trailing-dot")
	var q Query
	if err := Parse(msg, &q); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() {
		if err := Parse(msg, &q); err != nil {
			t.Fatal(err)
		}
		if _, err := AppendResponse(buf, msg, &q, AnswerNXDOMAIN); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Parse (Query reused) + AppendResponse: %v allocs, want 0", n)
	}
	var fresh Query
	if n := testing.AllocsPerRun(100, func() {
		fresh = Query{}
		Parse(msg, &fresh)
	}); n > 1 {
		t.Errorf("Parse (new Query): %v allocs, want at most 1 (the name)", n)
	}
	bad := rawQuery("\x03a b\x00")
	if n := testing.AllocsPerRun(100, func() { Parse(bad, &q) }); n != 0 {
		t.Errorf("Parse refusing: %v allocs, want 0", n)
	}
}

func TestAnswerWords(t *testing.T) {
	for _, w := range []string{"nxdomain", "refused", "nodata", "servfail"} {
		a, err := ParseAnswer(strings.ToUpper(w))
		if err != nil || a.String() != w {
			t.Errorf("ParseAnswer(%q) = %v, %v", w, a, err)
		}
	}
	if _, err := ParseAnswer("drop"); err == nil {
		t.Error("ParseAnswer(drop): no error")
	}
	names := map[Answer]string{AnswerNXDOMAIN: "NXDOMAIN", AnswerREFUSED: "REFUSED", AnswerNODATA: "NOERROR", AnswerSERVFAIL: "SERVFAIL"}
	for a, n := range names {
		if a.RcodeName() != n || a.Rcode().String() == "" {
			t.Errorf("%v: RcodeName %q, want %q", a, a.RcodeName(), n)
		}
	}
}

func TestTypeName(t *testing.T) {
	for typ, want := range map[dnsmessage.Type]string{
		dnsmessage.TypeA: "A", dnsmessage.TypeAAAA: "AAAA", dnsmessage.TypeHTTPS: "HTTPS",
		dnsmessage.TypeSVCB: "SVCB", dnsmessage.TypeMX: "MX", dnsmessage.TypeTXT: "TXT",
		dnsmessage.TypePTR: "PTR", dnsmessage.TypeALL: "ANY", 252: "AXFR", 257: "CAA",
		0: "TYPE0", 54: "TYPE54", 65534: "TYPE65534", 110: "TYPE110",
	} {
		if got := TypeName(typ); got != want {
			t.Errorf("TypeName(%d) = %q, want %q", typ, got, want)
		}
	}
}

func TestStreamReader(t *testing.T) {
	q1 := build(t, qopt{id: 1, names: []string{"a.example"}})
	q2 := build(t, qopt{id: 2, names: []string{"B.example"}, edns: 1232})
	frame := func(m []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(m))), m...) }
	stream := append(frame(q1), frame(q2)...)

	// Whole, and byte by byte: the same two messages.
	for _, step := range []int{len(stream), 1, 3} {
		var r StreamReader
		var buf []byte
		var got [][]byte
		for i := 0; i < len(stream); i += step {
			buf = append(buf, stream[i:min(i+step, len(stream))]...)
			for {
				msg, n, err := r.Next(buf)
				if err != nil {
					t.Fatal(err)
				}
				if msg == nil {
					if n != 0 {
						t.Fatal("n != 0 without a message")
					}
					break
				}
				got = append(got, bytes.Clone(msg))
				buf = buf[n:]
			}
		}
		if len(got) != 2 || !bytes.Equal(got[0], q1) || !bytes.Equal(got[1], q2) || len(buf) != 0 {
			t.Fatalf("step %d: got %d messages, %d bytes left", step, len(got), len(buf))
		}
	}

	var r StreamReader
	if _, _, err := r.Next([]byte{0x10, 0x01}); !errors.Is(err, inspect.ErrTooLarge) {
		t.Fatalf("4097-byte message: %v", err)
	}
	if _, _, err := r.Next(stream); !errors.Is(err, inspect.ErrTooLarge) {
		t.Fatalf("error not sticky: %v", err)
	}
	r.Reset()
	if msg, _, err := r.Next(stream); err != nil || !bytes.Equal(msg, q1) {
		t.Fatalf("after Reset: %v", err)
	}
	r = StreamReader{Max: 100000}
	if msg, n, err := r.Next([]byte{0xff, 0xff}); msg != nil || n != 0 || err != nil {
		t.Fatalf("65535 with Max over MaxMessage: %v", err)
	}
	r = StreamReader{Max: 20}
	if _, _, err := r.Next(frame(q1)); !errors.Is(err, inspect.ErrTooLarge) {
		t.Fatalf("Max 20: %v", err)
	}
	for _, l := range []int{0, 1, 11} {
		r = StreamReader{}
		if _, _, err := r.Next([]byte{0, byte(l)}); !errors.Is(err, inspect.ErrMalformed) {
			t.Fatalf("length %d: %v", l, err)
		}
	}
	r = StreamReader{}
	if msg, n, err := r.Next([]byte{0}); msg != nil || n != 0 || err != nil {
		t.Fatal("one byte")
	}
	// The message's capacity ends with it: appending to it cannot
	// overwrite the next message.
	r = StreamReader{}
	msg, _, _ := r.Next(stream)
	if cap(msg) != len(msg) {
		t.Fatal("message capacity runs into the next message")
	}
}

func TestStreamCorpus(t *testing.T) {
	files, _ := filepath.Glob("testdata/fuzz/FuzzStreamReader/*")
	if len(files) == 0 {
		t.Fatal("no corpus")
	}
	for _, f := range files {
		b := readCorpus(t, f)
		var r StreamReader
		msg, n, err := r.Next(b)
		if err != nil || n != len(b) {
			t.Fatalf("%s: Next = %d, %v", f, n, err)
		}
		var q Query
		if err := Parse(msg, &q); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

// BenchmarkParseAppendResponse is netward's work for a denied UDP query:
// parse it, answer NXDOMAIN into a pooled buffer.
func BenchmarkParseAppendResponse(b *testing.B) {
	for _, name := range []string{"dig-a", "dig-noedns", "dig-padding"} {
		msg := readCorpus(b, "testdata/fuzz/FuzzParse/"+name)
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, 0, 4096)
			var q Query
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if err := Parse(msg, &q); err != nil {
					b.Fatal(err)
				}
				if _, err := AppendResponse(buf, msg, &q, AnswerNXDOMAIN); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	msg := readCorpus(b, "testdata/fuzz/FuzzParse/dig-a")
	b.Run("dig-a-new-query", func(b *testing.B) {
		buf := make([]byte, 0, 4096)
		b.ReportAllocs()
		for b.Loop() {
			var q Query
			if err := Parse(msg, &q); err != nil {
				b.Fatal(err)
			}
			if _, err := AppendResponse(buf, msg, &q, AnswerNXDOMAIN); err != nil {
				b.Fatal(err)
			}
		}
	})
}
