package e2e

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
	"github.com/vishvananda/netns"
)

// ruleInNS runs f on an OS thread switched into ns, so the sockets f creates
// belong to ns (a socket keeps its namespace for life; any goroutine may use
// it afterwards). f must not start goroutines that create sockets.
func ruleInNS(ns *lab.NS, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Namespaces are per thread. The thread is unlocked only once it is
		// back in the original namespace; otherwise it dies with this
		// goroutine and never runs other code.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("netns: current: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns.Name)
		if err != nil {
			errc <- fmt.Errorf("netns: open %s: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("netns: enter %s: %w", ns.Name, err)
			return
		}
		err = f()
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// ruleDial opens a TCP connection from ns (source address src, or any if
// invalid) to dst.
func ruleDial(ns *lab.NS, src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	err := ruleInNS(ns, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		if src.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Ports of ruleApp in the application namespace (every address, v4 and v6).
const (
	ruleHTTPPort   = peer.HTTPPort // 8080
	ruleTLSPort    = 8443
	ruleDeniedPort = 8081 // HTTP too; base.yaml denies it at the SYN
)

// ruleTunnelHost is the CONNECT target the application opens a tunnel
// for (an echo); other CONNECTs get 405.
const ruleTunnelHost = "tunnel.example:443"

// ruleApp is the application for the rule tests: an HTTP server and an
// HTTPS server (self-signed certificate) in the application namespace that
// record every accepted connection with the bytes it received, and every
// request. It runs inside the test process, so tests read its records
// directly, and it answers with what it saw:
//
//	app ok proto=https host=good.example method=GET path=/x sni=good.example remote=198.51.100.2:40000
//
// /hold?n=N sends N bytes, waits until release is called, then sends N more
// (a download that stays open as long as a test needs). GET /upgrade with
// an Upgrade header gets 101 and CONNECT tunnel.example:443 gets 200; both
// then echo raw bytes.
type ruleApp struct {
	mu    sync.Mutex
	conns []*ruleAppConn
	reqs  []ruleAppRequest

	holdOnce sync.Once
	hold     chan struct{} // closed by release
}

// ruleAppConn is one connection the application accepted.
type ruleAppConn struct {
	Proto  string // "http" or "https"
	Remote netip.AddrPort
	Local  netip.AddrPort // the server's end: with Remote, the flow's 4-tuple
	recv   atomic.Int64
	closed chan struct{} // closed when the server has closed the connection
	once   sync.Once
}

// Recv is what the server has read from the connection so far (TLS records
// included, for https).
func (c *ruleAppConn) Recv() int64 { return c.recv.Load() }

// ruleAppRequest is one request the application answered.
type ruleAppRequest struct {
	Proto, Host, Method, Path, SNI string
	Remote, Local                  netip.AddrPort
}

// startRuleApp starts the servers in ns; they stop in t.Cleanup.
func startRuleApp(t testing.TB, ns *lab.NS) *ruleApp {
	t.Helper()
	a := &ruleApp{hold: make(chan struct{})}
	cert, err := peer.SelfSigned("good.example", "www.evil.example")
	if err != nil {
		t.Fatal(err)
	}
	var lns []net.Listener // HTTP, HTTPS, HTTP on the denied port
	err = ruleInNS(ns, func() error {
		for _, port := range []int{ruleHTTPPort, ruleTLSPort, ruleDeniedPort} {
			ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		t.Fatalf("app server: %v", err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert.TLS}, NextProtos: []string{"http/1.1"}}
	var servers []*http.Server
	for _, s := range []struct {
		proto string
		ln    net.Listener
	}{{"http", lns[0]}, {"https", lns[1]}, {"http", lns[2]}} {
		srv := &http.Server{Handler: a.handler(s.proto), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: log.New(io.Discard, "", 0), TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
		ln := net.Listener(&ruleCountingListener{Listener: s.ln, proto: s.proto, srv: a})
		if s.proto == "https" {
			ln = tls.NewListener(ln, tlsConf)
		}
		servers = append(servers, srv)
		go srv.Serve(ln)
	}
	t.Cleanup(func() {
		a.release()
		for _, srv := range servers {
			srv.Close()
		}
	})
	return a
}

// release lets every /hold download finish.
func (a *ruleApp) release() { a.holdOnce.Do(func() { close(a.hold) }) }

func (a *ruleApp) handler(proto string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := ruleAppRequest{Proto: proto, Host: r.Host, Method: r.Method, Path: r.URL.Path}
		rec.Remote, _ = netip.ParseAddrPort(r.RemoteAddr)
		rec.Remote = netip.AddrPortFrom(rec.Remote.Addr().Unmap(), rec.Remote.Port())
		if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			rec.Local = unmappedAddrPort(la)
		}
		if r.TLS != nil {
			rec.SNI = r.TLS.ServerName
		}
		a.mu.Lock()
		a.reqs = append(a.reqs, rec)
		a.mu.Unlock()
		if r.URL.Path == "/hold" {
			n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			if err != nil || n <= 0 {
				http.Error(w, "n: want a byte count", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Length", strconv.FormatInt(2*n, 10))
			body := peer.NewStream(uint64(n))
			if _, err := io.CopyN(w, body, n); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-a.hold:
			case <-r.Context().Done():
				return
			}
			io.CopyN(w, body, n)
			return
		}
		switch {
		case r.Method == http.MethodConnect && r.Host == ruleTunnelHost,
			r.URL.Path == "/upgrade" && r.Header.Get("Upgrade") != "":
			// Switch protocols (101) or open a tunnel (200), then echo raw
			// bytes until the client's EOF.
			status := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + r.Header.Get("Upgrade") + "\r\n\r\n"
			if r.Method == http.MethodConnect {
				status = "HTTP/1.1 200 Connection Established\r\n\r\n"
			}
			c, rw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			if _, err := rw.WriteString(status); err != nil || rw.Flush() != nil {
				return
			}
			if _, err := io.Copy(c, rw.Reader); err == nil {
				c.(*ruleCountingConn).CloseWrite()
			}
			return
		case r.Method == http.MethodConnect:
			// An origin server, not a proxy: the client's connection stays
			// HTTP/1.1 (and its next request must be judged).
			http.Error(w, "app: CONNECT not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "app ok proto=%s host=%s method=%s path=%s sni=%s remote=%s\n",
			proto, rec.Host, rec.Method, rec.Path, rec.SNI, rec.Remote)
	})
}

// ruleHoldSHA is the SHA-256 of the whole /hold?n=N body.
func ruleHoldSHA(n int64) string {
	h := sha256.New()
	io.CopyN(h, peer.NewStream(uint64(n)), 2*n)
	return hex.EncodeToString(h.Sum(nil))
}

// mark returns a position in the records; since(mark) returns what came
// after it. Subtests run one at a time, so the records after a mark are
// the subtest's own.
func (a *ruleApp) mark() [2]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return [2]int{len(a.conns), len(a.reqs)}
}

func (a *ruleApp) since(m [2]int) ([]*ruleAppConn, []ruleAppRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*ruleAppConn(nil), a.conns[m[0]:]...), append([]ruleAppRequest(nil), a.reqs[m[1]:]...)
}

// conn returns the record of the (latest) connection from remote, waiting
// up to 5 s for the accept.
func (a *ruleApp) conn(remote netip.AddrPort) *ruleAppConn {
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		for i := len(a.conns) - 1; i >= 0; i-- {
			if c := a.conns[i]; c.Remote == remote {
				a.mu.Unlock()
				return c
			}
		}
		a.mu.Unlock()
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settled waits up to 10 s until the server has closed c, so its byte
// count is final.
func (c *ruleAppConn) settled() bool {
	select {
	case <-c.closed:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// ruleCountingListener records each accepted connection and counts the bytes
// read from it, below TLS.
type ruleCountingListener struct {
	net.Listener
	proto string
	srv   *ruleApp
}

func (l *ruleCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rec := &ruleAppConn{Proto: l.proto, Remote: unmappedAddrPort(c.RemoteAddr()), Local: unmappedAddrPort(c.LocalAddr()), closed: make(chan struct{})}
	l.srv.mu.Lock()
	l.srv.conns = append(l.srv.conns, rec)
	l.srv.mu.Unlock()
	return &ruleCountingConn{Conn: c, rec: rec}, nil
}

// unmappedAddrPort is a as a netip.AddrPort, IPv4-mapped IPv6 unmapped.
func unmappedAddrPort(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

type ruleCountingConn struct {
	net.Conn
	rec *ruleAppConn
}

func (c *ruleCountingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.rec.recv.Add(int64(n))
	return n, err
}

func (c *ruleCountingConn) CloseWrite() error {
	return c.Conn.(*net.TCPConn).CloseWrite()
}

func (c *ruleCountingConn) Close() error {
	err := c.Conn.Close()
	c.rec.once.Do(func() { close(c.rec.closed) })
	return err
}
