package dns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/netward/netward/inspect"
	"golang.org/x/net/dns/dnsmessage"
)

// checkErr fails unless err is one of the package's errors.
func checkErr(t *testing.T, err error) {
	t.Helper()
	var pe *inspect.ParseError
	if !errors.As(err, &pe) || pe.Proto != inspect.ProtoDNS ||
		!(errors.Is(err, inspect.ErrMalformed) || errors.Is(err, ErrNotQuery) || errors.Is(err, inspect.ErrTooLarge)) {
		t.Fatalf("error %v (%T) is not a DNS ParseError of a known class", err, err)
	}
}

// FuzzParse checks that Parse never panics, refuses with the package's
// errors only, agrees with dnsmessage on every query it accepts, and that
// every answer to an accepted query reads back as its response. The seeds in
// testdata/fuzz/FuzzParse are queries real clients sent (see
// testdata/capture/capture.sh); the ones added here are the refusals.
func FuzzParse(f *testing.F) {
	f.Add(build(f, qopt{id: 1, names: []string{"a.example"}, response: true}))
	f.Add(build(f, qopt{id: 2, names: []string{"a.example", "B.example"}}))
	f.Add(build(f, qopt{id: 3, names: []string{"a.example"}, edns: 1232, twoOPT: true}))
	f.Add(build(f, qopt{id: 4, names: []string{"Zone.Example"}, opcode: 4, answerRRs: 2}))
	f.Add(rawQueryNoTail("\xc0\x0c\x00\x01\x00\x01"))
	f.Add(withAdditional(rawQuery("\x01a\x00"), "\xc0\x13\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"))
	f.Add(rawQuery("\x03a.b\x07example\x00"))
	f.Add(rawQuery("\x41a\x00"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var q Query
		err := Parse(msg, &q)
		if err != nil {
			checkErr(t, err)
			if q != (Query{}) {
				t.Fatalf("Query %+v after error", q)
			}
			// AppendResponse reads only the header and question: it
			// may build an answer to a message Parse refused for its
			// other sections, but never panics.
			AppendResponse(nil, msg, &q, AnswerNXDOMAIN)
			return
		}
		// The name is normalised.
		if strings.HasSuffix(q.Name, ".") || strings.ToLower(q.Name) != q.Name || strings.Contains(q.Name, "..") {
			t.Fatalf("name %q not normalised", q.Name)
		}
		for _, c := range []byte(q.Name) {
			if nameByte[c] != 1 && c != '.' {
				t.Fatalf("name %q has byte %#x", q.Name, c)
			}
		}
		// dnsmessage reads the same question.
		var p dnsmessage.Parser
		h, err := p.Start(msg)
		if err != nil {
			t.Fatal(err)
		}
		mq, err := p.Question()
		if err != nil {
			t.Fatalf("Parse accepted, dnsmessage refuses the question: %v", err)
		}
		want := strings.ToLower(strings.TrimSuffix(mq.Name.String(), "."))
		if q.Name != want || q.Type != mq.Type || q.Class != mq.Class || q.ID != h.ID || h.Response {
			t.Fatalf("Parse %+v, dnsmessage %v %+v", q, mq, h)
		}
		// Reusing the Query gives the same answer.
		q2 := q
		if err := Parse(msg, &q2); err != nil || q2 != q {
			t.Fatalf("second Parse: %+v, %v", q2, err)
		}
		for _, a := range []Answer{AnswerNXDOMAIN, AnswerREFUSED, AnswerNODATA, AnswerSERVFAIL} {
			resp, err := AppendResponse(nil, msg, &q, a)
			if err != nil {
				t.Fatalf("AppendResponse: %v", err)
			}
			if len(resp) > len(msg) {
				t.Fatalf("response %d bytes > query %d", len(resp), len(msg))
			}
			checkResponse(t, msg, &q, a, resp)
		}
	})
}

// FuzzStreamReader checks that StreamReader never panics and that any
// split of a stream into arrivals gives the same messages and the same end:
// whole, byte by byte, and in chunks of a size the input chooses. The seeds
// in testdata/fuzz/FuzzStreamReader are framed queries dig sent over TCP.
func FuzzStreamReader(f *testing.F) {
	frame := func(m []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(m))), m...) }
	q1 := build(f, qopt{id: 1, names: []string{"a.example"}, rd: true})
	q2 := build(f, qopt{id: 2, names: []string{"B.Example"}, edns: 1232, typ: dnsmessage.TypeAAAA})
	f.Add(append(frame(q1), frame(q2)...))        // pipelined
	f.Add(append(frame(q1), frame(q2)[:5]...))    // second incomplete
	f.Add(append(frame(q1), 0x10, 0x01))          // second over the cap
	f.Add(append(frame(q1), 0x00, 0x05, 1, 2, 3)) // second shorter than a header
	f.Add(frame(build(f, qopt{names: []string{"a"}, response: true})))
	f.Fuzz(func(t *testing.T, stream []byte) {
		type result struct {
			msgs [][]byte
			left int
			err  error
		}
		run := func(step int) result {
			var r StreamReader
			var res result
			var buf []byte
			for i := 0; i < len(stream) && res.err == nil; i += step {
				buf = append(buf, stream[i:min(i+step, len(stream))]...)
				for {
					msg, n, err := r.Next(buf)
					if err != nil {
						checkErr(t, err)
						if msg != nil || n != 0 {
							t.Fatal("message or n with an error")
						}
						res.err = err
						break
					}
					if msg == nil {
						if n != 0 {
							t.Fatal("n without a message")
						}
						break
					}
					if n != len(msg)+2 || !bytes.Equal(msg, buf[2:n]) || len(msg) < HeaderLen || len(msg) > DefaultMaxQuery {
						t.Fatalf("Next: msg %d bytes, n %d", len(msg), n)
					}
					var q Query
					if err := Parse(msg, &q); err != nil {
						checkErr(t, err)
					}
					res.msgs = append(res.msgs, bytes.Clone(msg))
					buf = buf[n:]
				}
			}
			res.left = len(buf)
			return res
		}
		whole := run(max(len(stream), 1))
		steps := []int{1}
		if len(stream) > 0 {
			steps = append(steps, 1+int(stream[0])%17)
		}
		for _, step := range steps {
			got := run(step)
			if got.err != whole.err || len(got.msgs) != len(whole.msgs) {
				t.Fatalf("step %d: %d messages, %v; whole: %d, %v", step, len(got.msgs), got.err, len(whole.msgs), whole.err)
			}
			for i := range got.msgs {
				if !bytes.Equal(got.msgs[i], whole.msgs[i]) {
					t.Fatalf("step %d: message %d differs", step, i)
				}
			}
			if got.err == nil && got.left != whole.left {
				t.Fatalf("step %d: %d bytes left, whole %d", step, got.left, whole.left)
			}
		}
	})
}
