package peer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) logs(t *testing.T) []DNSLog {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []DNSLog
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		var e DNSLog
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

func startDNS(t *testing.T) (*DNSServer, *syncBuffer) {
	t.Helper()
	log := &syncBuffer{}
	s, err := ListenDNS("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, log
}

func dnsQuery(t *testing.T, id uint16, name string, typ dnsmessage.Type, edns bool) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if edns {
		b.StartAdditionals()
		var rh dnsmessage.ResourceHeader
		rh.SetEDNS0(1232, dnsmessage.RCodeSuccess, true)
		b.OPTResource(rh, dnsmessage.OPTResource{})
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// checkDNSAnswer checks resp answers the query (id, name, typ).
func checkDNSAnswer(t *testing.T, resp []byte, id uint16, name string, typ dnsmessage.Type, edns bool) {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("answer: %v", err)
	}
	if m.ID != id || !m.Response || !m.Authoritative || !m.RecursionDesired || m.RCode != dnsmessage.RCodeSuccess {
		t.Fatalf("answer header %+v", m.Header)
	}
	if len(m.Questions) != 1 || m.Questions[0].Name.String() != name || m.Questions[0].Type != typ {
		t.Fatalf("answer questions %v, want %s %v", m.Questions, name, typ)
	}
	switch typ {
	case dnsmessage.TypeA:
		if len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != DNSAnswerA.As4() || m.Answers[0].Header.Name.String() != name {
			t.Fatalf("A answers %v", m.Answers)
		}
	case dnsmessage.TypeAAAA:
		if len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AAAAResource).AAAA != DNSAnswerAAAA.As16() {
			t.Fatalf("AAAA answers %v", m.Answers)
		}
	default:
		if len(m.Answers) != 0 {
			t.Fatalf("NODATA wanted, answers %v", m.Answers)
		}
	}
	if edns != (len(m.Additionals) == 1 && m.Additionals[0].Header.Type == dnsmessage.TypeOPT) {
		t.Fatalf("additionals %v, EDNS query %v", m.Additionals, edns)
	}
}

func TestDNSServerUDP(t *testing.T) {
	s, log := startDNS(t)
	c, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(s.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cases := []struct {
		name string
		typ  dnsmessage.Type
		edns bool
	}{
		{"www.example.com.", dnsmessage.TypeA, false},
		{"WwW.ExAmPlE.CoM.", dnsmessage.TypeA, true}, // 0x20 case echoed
		{"v6.example.", dnsmessage.TypeAAAA, true},
		{"svc.example.", dnsmessage.TypeHTTPS, false},
		{"txt.example.", dnsmessage.TypeTXT, true},
	}
	buf := make([]byte, 1500)
	for i, tc := range cases {
		id := uint16(100 + i)
		if _, err := c.Write(dnsQuery(t, id, tc.name, tc.typ, tc.edns)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		checkDNSAnswer(t, buf[:n], id, tc.name, tc.typ, tc.edns)
	}
	// A response is not answered, but logged.
	resp := dnsQuery(t, 1, "x.example.", dnsmessage.TypeA, false)
	resp[2] |= 0x80
	c.Write(resp)

	waitLogs(t, log, len(cases)+1)
	logs := log.logs(t)
	for i, tc := range cases {
		e := logs[i]
		want := DNSLog{DNS: strings.TrimSuffix(tc.name, "."), Type: typeString(tc.typ), Remote: c.LocalAddr().String(),
			Proto: "udp", ID: uint16(100 + i), Rcode: "NOERROR"}
		switch tc.typ {
		case dnsmessage.TypeA:
			want.Answer = "192.0.2.53"
		case dnsmessage.TypeAAAA:
			want.Answer = "2001:db8:2::53"
		}
		if e != want {
			t.Errorf("log %d:\n got %+v\nwant %+v", i, e, want)
		}
	}
	if e := logs[len(cases)]; e.Err == "" || e.Remote != c.LocalAddr().String() {
		t.Errorf("response log %+v", e)
	}
}

func typeString(t dnsmessage.Type) string { return strings.TrimPrefix(t.String(), "Type") }

func waitLogs(t *testing.T, log *syncBuffer, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); len(log.logs(t)) < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d log lines, want %d", len(log.logs(t)), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDNSServerTCP(t *testing.T) {
	s, log := startDNS(t)
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Three pipelined queries in one write; answers come in order.
	var stream []byte
	names := []string{"a.example.", "B.Example.", "c.example."}
	types := []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA, dnsmessage.TypeMX}
	for i, n := range names {
		q := dnsQuery(t, uint16(i+1), n, types[i], i == 1)
		stream = binary.BigEndian.AppendUint16(stream, uint16(len(q)))
		stream = append(stream, q...)
	}
	if _, err := c.Write(stream); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i, n := range names {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatal(err)
		}
		resp := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, resp); err != nil {
			t.Fatal(err)
		}
		checkDNSAnswer(t, resp, uint16(i+1), n, types[i], i == 1)
	}
	c.(*net.TCPConn).CloseWrite()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the client's EOF: %d, %v", n, err)
	}
	logs := log.logs(t)
	if len(logs) != 3 {
		t.Fatalf("%d log lines", len(logs))
	}
	for i, e := range logs {
		if e.DNS != strings.TrimSuffix(names[i], ".") || e.Type != typeString(types[i]) || e.Proto != "tcp" ||
			e.Remote != c.LocalAddr().String() || e.Local != c.RemoteAddr().String() || e.Rcode != "NOERROR" {
			t.Errorf("log %d: %+v", i, e)
		}
	}
}

func TestDNSServerDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("no dig")
	}
	s, log := startDNS(t)
	port := strconv.Itoa(s.Port())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"www.example.com", "A"}, "192.0.2.53"},
		{[]string{"www.example.com", "AAAA"}, "2001:db8:2::53"},
		{[]string{"www.example.com", "HTTPS"}, ""},
		{[]string{"+tcp", "tcp.example.com", "A"}, "192.0.2.53"},
		{[]string{"+tcp", "tcp.example.com", "AAAA"}, "2001:db8:2::53"},
		{[]string{"+noedns", "noedns.example", "A"}, "192.0.2.53"},
	} {
		args := append([]string{"@127.0.0.1", "-p", port, "+short", "+tries=1", "+timeout=3"}, tc.args...)
		out, err := exec.Command(dig, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("dig %v = %q, want %q", args, got, tc.want)
		}
	}
	logs := log.logs(t)
	if len(logs) != 6 || logs[3].Proto != "tcp" || logs[0].Proto != "udp" || logs[0].DNS != "www.example.com" || logs[2].Type != "HTTPS" {
		t.Errorf("logs %+v", logs)
	}
	for _, e := range logs {
		if !strings.HasPrefix(e.Remote, "127.0.0.1:") || e.Err != "" {
			t.Errorf("log %+v", e)
		}
	}
}

// TestServeDNSPort runs the DNS server through Serve, as `nwpeer serve
// -dns-port` does (the other servers need their fixed ports, so it skips
// when they are taken).
func TestServeDNSPort(t *testing.T) {
	probe, err := ListenDNS("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	port := probe.Port()
	probe.Close()
	for _, p := range []int{HTTPPort, XferPort, BannerPort, EchoPort} {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			t.Skipf("port %d taken: %v", p, err)
		}
		ln.Close()
	}
	log := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServerOptions{Log: log, DNSPort: port, Ready: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	c, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(dnsQuery(t, 42, "serve.example.", dnsmessage.TypeA, false))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	checkDNSAnswer(t, buf[:n], 42, "serve.example.", dnsmessage.TypeA, false)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if logs := log.logs(t); len(logs) != 1 || logs[0].DNS != "serve.example" || logs[0].Remote != c.LocalAddr().String() {
		t.Fatalf("logs %+v", logs)
	}
}
