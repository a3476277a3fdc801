package relay

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/metrics"
	"github.com/netward/netward/netstack"
	"github.com/netward/netward/policy"
	"github.com/netward/netward/rules"
	"golang.org/x/sys/unix"
)

const guardRules = `default: allow
rules:
  - name: blocked-net
    action: deny
    src: [203.0.113.0/24]
  - name: dropped-net
    action: drop
    src: [198.51.100.66]
  - name: no-evil-sni
    action: deny
    sni: [.evil.example]
  - name: no-admin
    action: deny
    path: [/admin]
  - name: no-secret-host
    action: deny
    host: [secret.example]
  - name: quiet-drop
    action: drop
    host: [drop.example]
  - name: no-ssh
    action: deny
    app: [ssh]
`

// guardPair sets up  clientApp ─ client leg │Guard│ server leg ─ serverApp
// and returns the apps' ends; done closes when Serve returns.
func guardPair(t *testing.T, g *Guard) (clientApp, serverApp *net.TCPConn, done <-chan struct{}) {
	t.Helper()
	clientApp, clientLeg := tcpPair(t)
	serverLeg, serverApp := tcpPair(t)
	f := &netstack.Flow{ID: 1, Client: netip.MustParseAddrPort("192.0.2.10:40000"),
		Server: netip.MustParseAddrPort("192.0.2.20:443"), Start: time.Now()}
	ch := make(chan struct{})
	go func() { g.Serve(f, clientLeg, serverLeg); close(ch) }()
	t.Cleanup(func() {
		clientApp.Close()
		serverApp.Close()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return clientApp, serverApp, ch
}

func newGuard(t *testing.T) *Guard {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(guardRules), 0o600); err != nil {
		t.Fatal(err)
	}
	eng, err := policy.New(policy.Options{Path: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &Guard{Policy: eng,
		Limits: Limits{InspectTimeout: 300 * time.Millisecond, DrainTimeout: 2 * time.Second, DropHold: 300 * time.Millisecond}}
}

// readAllTimeout reads c until EOF or error, with a deadline.
func readAllTimeout(c net.Conn, d time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.ReadAll(c)
}

func TestGuardTLSDeniedBySNI(t *testing.T) {
	for _, name := range []string{"www.evil.example", "WWW.EVIL.EXAMPLE.", "evil.example"} {
		t.Run(name, func(t *testing.T) {
			clientApp, serverApp, _ := guardPair(t, newGuard(t))
			errc := make(chan error, 1)
			go func() {
				tc := tls.Client(clientApp, &tls.Config{ServerName: name, InsecureSkipVerify: true})
				errc <- tc.Handshake()
			}()
			err := <-errc
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Fatalf("handshake error = %v, want a TLS access denied alert", err)
			}
			got, _ := readAllTimeout(serverApp, 2*time.Second)
			if len(got) != 0 {
				t.Fatalf("server received %d bytes of a denied flow", len(got))
			}
		})
	}
}

func TestGuardTLSAllowedForwardsHello(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	go func() {
		tc := tls.Client(&byteWriter{Conn: clientApp}, &tls.Config{ServerName: "good.example", InsecureSkipVerify: true})
		tc.Handshake() // fails when the test closes the conn; only the hello matters
	}()
	// The server must receive a whole ClientHello record, byte for byte
	// what the client sent (here in 1-byte segments).
	hdr := make([]byte, 5)
	serverApp.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(serverApp, hdr); err != nil {
		t.Fatalf("server read: %v", err)
	}
	if hdr[0] != 0x16 {
		t.Fatalf("server got %x, want a handshake record", hdr)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(serverApp, body); err != nil {
		t.Fatalf("server read body: %v", err)
	}
	if body[0] != 1 {
		t.Fatalf("handshake type %d, want ClientHello", body[0])
	}
	if !bytes.Contains(body, []byte("good.example")) {
		t.Fatal("forwarded hello lacks the SNI")
	}
	clientApp.Close()
}

// byteWriter writes one byte per TCP segment: the 1-byte evasion.
type byteWriter struct{ net.Conn }

func (w *byteWriter) Write(b []byte) (int, error) {
	for i := range b {
		if _, err := w.Conn.Write(b[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(b), nil
}

// httpServer answers each request on serverApp with 200 and a body naming
// its path, and records the request lines it saw.
func httpServer(serverApp net.Conn) (seen func() []string) {
	var mu sync.Mutex
	var lines []string
	go func() {
		br := bufio.NewReader(serverApp)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				serverApp.Close()
				return
			}
			io.Copy(io.Discard, req.Body)
			mu.Lock()
			lines = append(lines, req.Method+" "+req.Host+req.URL.Path)
			mu.Unlock()
			body := "hello " + req.URL.Path
			io.WriteString(serverApp, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		}
	}()
	return func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), lines...) }
}

func TestGuardHTTPKeepAliveSecondRequestDenied(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	seen := httpServer(serverApp)
	br := bufio.NewReader(clientApp)

	io.WriteString(clientApp, "GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("first response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "hello /ok" {
		t.Fatalf("first response %d %q", resp.StatusCode, body)
	}

	io.WriteString(clientApp, "GET /x HTTP/1.1\r\nHost: Secret.Example.:8080\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("second response: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "no-secret-host") {
		t.Fatalf("second response %d body=%q", resp.StatusCode, body)
	}
	if got := seen(); len(got) != 1 || got[0] != "GET app.example/ok" {
		t.Fatalf("server saw %q, want only the first request", got)
	}
}

func TestGuardHTTPPipelinedDeniedPath(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	seen := httpServer(serverApp)
	// Two requests in one write: the first is allowed and answered, the
	// second never reaches the server.
	io.WriteString(clientApp, "POST /ok HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nhelloGET /admin/x HTTP/1.1\r\nHost: app.example\r\n\r\n")
	got, _ := readAllTimeout(clientApp, 5*time.Second)
	if !bytes.HasPrefix(got, []byte("HTTP/1.1 200 OK")) || !bytes.Contains(got, []byte("HTTP/1.1 403 Forbidden")) {
		t.Fatalf("client got %q", got)
	}
	if s := seen(); len(s) != 1 || s[0] != "POST app.example/ok" {
		t.Fatalf("server saw %q", s)
	}
}

func TestGuardHTTPAmbiguousIsRefused(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	io.WriteString(clientApp, "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	got, _ := readAllTimeout(clientApp, 5*time.Second)
	if !bytes.HasPrefix(got, []byte("HTTP/1.1 403")) || !bytes.Contains(got, []byte(rules.RuleOnInvalid)) {
		t.Fatalf("client got %q", got)
	}
	if b, _ := readAllTimeout(serverApp, time.Second); len(b) != 0 {
		t.Fatalf("server received %q", b)
	}
}

func TestGuardServerFirstBanner(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	io.WriteString(serverApp, "220 smtp.example ESMTP\r\n")
	buf := make([]byte, 64)
	clientApp.SetReadDeadline(time.Now().Add(200 * time.Millisecond)) // before the inspect timeout
	n, err := clientApp.Read(buf)
	if err != nil || string(buf[:n]) != "220 smtp.example ESMTP\r\n" {
		t.Fatalf("banner: %q, %v", buf[:n], err)
	}
	// The silent client is judged "unknown" (allowed); then its bytes flow.
	io.WriteString(clientApp, "EHLO x\r\n")
	serverApp.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err = serverApp.Read(buf)
	if err != nil || string(buf[:n]) != "EHLO x\r\n" {
		t.Fatalf("server got %q, %v", buf[:n], err)
	}
}

func TestGuardSSHDeniedWithReset(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	io.WriteString(clientApp, "SSH-2.0-OpenSSH_9.6\r\n")
	_, err := readAllTimeout(clientApp, 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read error = %v, want a reset", err)
	}
	if b, _ := readAllTimeout(serverApp, time.Second); len(b) != 0 {
		t.Fatalf("server received %q", b)
	}
}

func TestGuardDropSendsNothing(t *testing.T) {
	clientApp, serverApp, _ := guardPair(t, newGuard(t))
	io.WriteString(clientApp, "GET / HTTP/1.1\r\nHost: drop.example\r\n\r\n")
	clientApp.SetReadDeadline(time.Now().Add(200 * time.Millisecond)) // under DropHold
	n, err := clientApp.Read(make([]byte, 10))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("client read %d, %v; want nothing until the hold ends", n, err)
	}
	if b, _ := readAllTimeout(serverApp, time.Second); len(b) != 0 {
		t.Fatalf("server received %q", b)
	}
}

func TestGuardHalfCloseAndBytes(t *testing.T) {
	clientApp, serverApp, done := guardPair(t, newGuard(t))
	go func() {
		b, _ := io.ReadAll(serverApp) // the request, then EOF from the client's half-close
		serverApp.Write(bytes.Repeat([]byte("r"), 100000))
		serverApp.Write(b[:4])
		serverApp.CloseWrite()
	}()
	io.WriteString(clientApp, "GET /ok HTTP/1.0\r\nHost: app.example\r\n\r\n")
	clientApp.CloseWrite()
	got, err := readAllTimeout(clientApp, 5*time.Second)
	if err != nil || len(got) != 100004 || string(got[100000:]) != "GET " {
		t.Fatalf("client got %d bytes, %v", len(got), err)
	}
	<-done
}

func TestGuardAdmit(t *testing.T) {
	g := newGuard(t)
	cases := []struct {
		src  string
		dst  string
		want netstack.Admission
	}{
		{"203.0.113.5:1234", "192.0.2.20:443", netstack.AdmitReset},
		{"198.51.100.66:1234", "192.0.2.20:80", netstack.AdmitDrop},
		{"198.51.100.7:1234", "192.0.2.20:80", netstack.AdmitAccept},
	}
	for _, c := range cases {
		f := &netstack.Flow{ID: 9, Client: netip.MustParseAddrPort(c.src), Server: netip.MustParseAddrPort(c.dst), Start: time.Now()}
		if got := g.Admit(f); got != c.want {
			t.Errorf("Admit(%s → %s) = %v, want %v", c.src, c.dst, got, c.want)
		}
	}
	g.Limits.MaxFlows = 1
	g.active.Store(1)
	f := &netstack.Flow{Client: netip.MustParseAddrPort("198.51.100.7:1"), Server: netip.MustParseAddrPort("192.0.2.20:80")}
	if got := g.Admit(f); got != netstack.AdmitReset {
		t.Errorf("over max_flows: Admit = %v, want reset", got)
	}
}

func TestGuardIdleTimeout(t *testing.T) {
	g := newGuard(t)
	g.Limits.IdleTimeout = 300 * time.Millisecond
	clientApp, serverApp, done := guardPair(t, g)
	go io.Copy(io.Discard, serverApp)
	io.WriteString(clientApp, "GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n")
	start := time.Now()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("idle flow was not cut")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("cut after %v, before the idle timeout", d)
	}
	if _, err := readAllTimeout(clientApp, time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read = %v, want a reset", err)
	}
}

func TestGuardActiveFlowIsNotIdle(t *testing.T) {
	g := newGuard(t)
	g.Limits.IdleTimeout = 300 * time.Millisecond
	clientApp, serverApp, done := guardPair(t, g)
	go io.Copy(io.Discard, serverApp)
	io.WriteString(clientApp, "POST /ok HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n\r\n")
	for i := 0; i < 10; i++ { // 1 s of body, a byte per 100 ms
		time.Sleep(100 * time.Millisecond)
		if _, err := clientApp.Write([]byte("x")); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	select {
	case <-done:
		t.Fatal("an active flow was cut as idle")
	default:
	}
}

func TestGuardHalfClosedTimeout(t *testing.T) {
	g := newGuard(t)
	g.Metrics = metrics.New(metrics.Options{})
	g.Limits.HalfClosedTimeout = 300 * time.Millisecond
	clientApp, serverApp, done := guardPair(t, g)
	go io.Copy(io.Discard, serverApp) // reads the request and EOF, never answers
	io.WriteString(clientApp, "GET /ok HTTP/1.0\r\nHost: app.example\r\n\r\n")
	clientApp.CloseWrite()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("half-closed flow was not cut")
	}
	hits := g.Metrics.Status(metrics.Filter{}).Counters.LimitHits
	if hits["half_closed_timeout"] != 1 || hits["idle_timeout"] != 0 {
		t.Errorf("limit hits %v, want one half_closed_timeout", hits)
	}
}

func TestGuardUpgrade(t *testing.T) {
	const denied = "GET /x HTTP/1.1\r\nHost: secret.example\r\n\r\n"
	cases := []struct {
		name, request, answer string
		after                 string // what the client sends next
		wantServer            bool   // the server receives `after`
	}{
		{"websocket switched", "GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "\x81\x05hello", true},
		{"websocket refused", "GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno", denied, false},
		{"refused upgrade then frames", "GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno", "\x81\x05hello", false},
		{"connect established", "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n",
			"HTTP/1.1 200 Connection established\r\n\r\n", "\x16\x03\x01\x00\x05hello", true},
		{"connect refused", "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n",
			"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n", denied, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newGuard(t)
			g.Limits.DrainTimeout = 500 * time.Millisecond
			clientApp, serverApp, _ := guardPair(t, g)
			io.WriteString(clientApp, c.request)
			head := make([]byte, len(c.request))
			serverApp.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.ReadFull(serverApp, head); err != nil {
				t.Fatalf("server did not get the request: %v", err)
			}
			io.WriteString(serverApp, c.answer)
			answer := make([]byte, len(c.answer))
			clientApp.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.ReadFull(clientApp, answer); err != nil {
				t.Fatalf("client did not get the answer: %v", err)
			}
			io.WriteString(clientApp, c.after)
			got := make([]byte, len(c.after))
			serverApp.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, _ := io.ReadFull(serverApp, got)
			if c.wantServer && string(got[:n]) != c.after {
				t.Fatalf("server got %q, want %q", got[:n], c.after)
			}
			if !c.wantServer && n != 0 {
				t.Fatalf("server got %q, want nothing", got[:n])
			}
		})
	}
}

func TestGuardRetransmittedSYNIsOneDrop(t *testing.T) {
	g := newGuard(t)
	now := time.Now()
	mk := func(port uint16, at time.Time) *netstack.Flow {
		return &netstack.Flow{Client: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.66"), port),
			Server: netip.MustParseAddrPort("192.0.2.20:80"), Start: at}
	}
	for i, at := range []time.Duration{0, time.Second, 3 * time.Second} {
		if got := g.Admit(mk(40000, now.Add(at))); got != netstack.AdmitDrop {
			t.Fatalf("SYN %d: %v, want drop", i, got)
		}
	}
	if !g.dropped.seen(mk(40000, now).Client, mk(40000, now).Server, now.Add(4*time.Second)) {
		t.Error("retransmission within the window not recognised")
	}
	if g.dropped.seen(mk(40001, now).Client, mk(40001, now).Server, now) {
		t.Error("another client port taken for a retransmission")
	}
	if g.dropped.seen(mk(40000, now).Client, mk(40000, now).Server, now.Add(dropMemory+5*time.Second)) {
		t.Error("tuple remembered past dropMemory")
	}
}

func TestGuardOnInvalidAllowForwards(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte("default: allow\non_invalid: allow\nrules: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eng, err := policy.New(policy.Options{Path: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	clientApp, serverApp, _ := guardPair(t, &Guard{Policy: eng})
	const req = "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	io.WriteString(clientApp, req)
	got := make([]byte, len(req))
	serverApp.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(serverApp, got); err != nil || string(got) != req {
		t.Fatalf("server got %q, %v; on_invalid: allow must forward the bytes", got, err)
	}
}

// waitableConn gives a kernel TCP conn netstack's WaitReadable, as the
// gVisor legs have it.
type waitableConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

func (c *waitableConn) WaitReadable() error {
	var b [1]byte
	return c.rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}

// An idle keep-alive connection holds no inspect buffer between requests,
// and the next request is judged and relayed as ever.
func TestGuardKeepAliveIdleHoldsNoBuffer(t *testing.T) {
	g := newGuard(t)
	clientApp, clientLeg := tcpPair(t)
	serverLeg, serverApp := tcpPair(t)
	rc, err := clientLeg.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	f := &netstack.Flow{ID: 1, Client: netip.MustParseAddrPort("192.0.2.10:40000"),
		Server: netip.MustParseAddrPort("192.0.2.20:80"), Start: time.Now()}
	held := inspectBufsHeld.Load()
	done := make(chan struct{})
	go func() { g.Serve(f, &waitableConn{clientLeg, rc}, serverLeg); close(done) }()
	defer func() {
		clientApp.Close()
		serverApp.Close()
		<-done
	}()
	idleRequests(t, clientApp, serverApp, held)
}

// With kernel sockets on both legs (--tcp-accept kernel, a handoff), as
// above: an idle keep-alive connection holds no inspect buffer (ReadPooled
// takes one only once the next request is there) and each request is
// relayed. Then the server answers and
// closes, and each side gets the other's FIN: the client's reaches the
// server with the close of its leg (passClientFIN).
func TestGuardKernelLegs(t *testing.T) {
	g := newGuard(t)
	clientApp, clientRaw := tcpPair(t)
	serverRaw, serverApp := tcpPair(t)
	clientLeg, err := netstack.NewKernelConn(clientRaw)
	if err != nil {
		t.Fatal(err)
	}
	serverLeg, err := netstack.NewKernelConn(serverRaw)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := clientLeg.(pooledReader); !ok {
		t.Fatal("a kernel leg has no ReadPooled")
	}
	f := &netstack.Flow{ID: 3, Client: netip.MustParseAddrPort("192.0.2.10:40002"),
		Server: netip.MustParseAddrPort("192.0.2.20:80"), Start: time.Now()}
	held := inspectBufsHeld.Load()
	done := make(chan struct{})
	go func() { g.Serve(f, clientLeg, serverLeg); close(done) }()
	defer func() {
		clientApp.Close()
		serverApp.Close()
		<-done
	}()
	idleRequests(t, clientApp, serverApp, held)
	const answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
	io.WriteString(serverApp, answer)
	serverApp.CloseWrite()
	b, err := readAllTimeout(clientApp, 5*time.Second)
	if err != nil || string(b) != answer {
		t.Fatalf("client read %q, %v; want the answer, then EOF", b, err)
	}
	clientApp.CloseWrite()
	b, err = readAllTimeout(serverApp, 5*time.Second)
	if err != nil || len(b) != 0 {
		t.Fatalf("server read %q, %v after the client's FIN; want EOF", b, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// idleRequests sends two keep-alive requests the guard allows, checks that
// each reaches the server and that the flow holds no more inspect buffers
// than held while it waits for the next.
func idleRequests(t *testing.T, clientApp, serverApp net.Conn, held int64) {
	t.Helper()
	const req = "GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n"
	for i := range 2 {
		io.WriteString(clientApp, req)
		got := make([]byte, len(req))
		serverApp.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(serverApp, got); err != nil || string(got) != req {
			t.Fatalf("request %d: server read %q, %v", i, got, err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for inspectBufsHeld.Load() != held && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := inspectBufsHeld.Load() - held; n != 0 {
			t.Fatalf("after request %d, idle, the flow holds %d inspect buffers", i, n)
		}
	}
}

// finLeg is a server leg that reports the server's FIN as kernelConn does,
// by a peek.
type finLeg struct{ *net.TCPConn }

func (c finLeg) PeerFinished() bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	fin := false
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		fin = err == nil && n == 0
	})
	return fin
}

// finalLeg is a client leg that records WriteFinal, as netstack's gVisor
// conn would send it (data, then FIN in the same segment).
type finalLeg struct {
	*net.TCPConn
	final chan string
}

func (c finalLeg) WriteFinal(b []byte) (int, error) {
	c.final <- string(b)
	n, err := c.Write(b)
	if err == nil {
		err = c.CloseWrite()
	}
	return n, err
}

func TestGuardLastAnswerGoesWithFIN(t *testing.T) {
	// The server answers and closes before the relay reads: the relay
	// passes the answer and its FIN in one WriteFinal, not a Write and a
	// CloseWrite one read later.
	clientApp, clientLeg := tcpPair(t)
	serverLeg, serverApp := tcpPair(t)
	io.WriteString(serverApp, "220 bye\r\n")
	serverApp.CloseWrite()
	waitFIN := time.Now().Add(5 * time.Second)
	for !finArrived(serverLeg) {
		if time.Now().After(waitFIN) {
			t.Fatal("the server's FIN never reached its leg")
		}
		time.Sleep(time.Millisecond)
	}
	client := finalLeg{TCPConn: clientLeg, final: make(chan string, 1)}
	g := newGuard(t)
	f := &netstack.Flow{ID: 2, Client: netip.MustParseAddrPort("192.0.2.10:40001"),
		Server: netip.MustParseAddrPort("192.0.2.20:25"), Start: time.Now()}
	done := make(chan struct{})
	go func() { g.Serve(f, client, finLeg{serverLeg}); close(done) }()
	select {
	case got := <-client.final:
		if got != "220 bye\r\n" {
			t.Errorf("WriteFinal(%q), want the whole answer", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the answer did not go out with WriteFinal")
	}
	b, err := readAllTimeout(clientApp, 5*time.Second)
	if err != nil || string(b) != "220 bye\r\n" {
		t.Fatalf("client read %q, %v; want the answer, then EOF", b, err)
	}
	clientApp.CloseWrite()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// finArrived reports whether the peer's FIN has reached c (CLOSE_WAIT).
func finArrived(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var info *unix.TCPInfo
	rc.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) })
	return info != nil && info.State == 8 // TCP_CLOSE_WAIT
}
