package opslab

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ConnRecord is one connection as the application server saw it: the TCP
// payload bytes that crossed its socket each way (for TLS, the raw records,
// handshake included), which is what an EVE flow event's bytes_toserver and
// bytes_toclient must equal for a relayed flow.
type ConnRecord struct {
	Remote, Local netip.AddrPort
	Recv, Sent    int64
	TLS           bool
	SNI           string   // TLS server name the client sent
	Hosts         []string // Host of each request, in order
	Err           string   // what ended the connection abnormally
}

// ServerOptions configure Serve.
type ServerOptions struct {
	// TLS, if set, makes the server speak HTTPS; nil: plain HTTP.
	TLS *tls.Config
	// Record keeps a ConnRecord per connection (tests). Off, only totals
	// are kept (the soak, millions of connections).
	Record bool
	// IdleTimeout closes a connection that sends no request for this
	// long; 0 means 2 minutes.
	IdleTimeout time.Duration
}

// Server is the lab's application server: HTTP/1.1 over plain TCP or TLS.
// GET /bytes?n=N answers N bytes; any other path answers "ok\n". It keeps
// connections alive unless the client asks to close. It never sends a TLS
// close_notify (it closes the TCP connection under the TLS layer), so the
// bytes each side sends are only those the peer reads.
type Server struct {
	ln   net.Listener
	opts ServerOptions

	accepted, active atomic.Int64
	recv, sent       atomic.Int64

	mu      sync.Mutex
	records []ConnRecord
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// Serve starts a server listening on addr (e.g. ":8080", dual-stack) in
// the namespace.
func Serve(ns NS, addr string, opts ServerOptions) (*Server, error) {
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("opslab: listen %s in %s: %w", addr, ns.Name, err)
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 2 * time.Minute
	}
	s := &Server{ln: ln, opts: opts, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Port is the listening port.
func (s *Server) Port() uint16 { return uint16(s.ln.Addr().(*net.TCPAddr).Port) }

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.accepted.Add(1)
		s.active.Add(1)
		go s.serveConn(c)
	}
}

// countingConn counts the payload bytes read and written.
type countingConn struct {
	net.Conn
	recv, sent int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.recv += int64(n)
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent += int64(n)
	return n, err
}

func (s *Server) serveConn(raw net.Conn) {
	defer s.wg.Done()
	cc := &countingConn{Conn: raw}
	rec := ConnRecord{Remote: addrPort(raw.RemoteAddr()), Local: addrPort(raw.LocalAddr())}
	var c net.Conn = cc
	var tc *tls.Conn
	if s.opts.TLS != nil {
		tc = tls.Server(cc, s.opts.TLS)
		c = tc
		rec.TLS = true
	}
	err := s.serveHTTP(c, tc, &rec)
	// Close the TCP connection itself: no close_notify from us.
	raw.Close()
	if err != nil {
		rec.Err = err.Error()
	}
	rec.Recv, rec.Sent = cc.recv, cc.sent
	s.recv.Add(cc.recv)
	s.sent.Add(cc.sent)
	s.active.Add(-1)
	s.mu.Lock()
	delete(s.conns, raw)
	if s.opts.Record {
		s.records = append(s.records, rec)
	}
	s.mu.Unlock()
}

// serveHTTP answers requests until the client closes or asks to close.
// A clean end (EOF between requests) returns nil.
func (s *Server) serveHTTP(c net.Conn, tc *tls.Conn, rec *ConnRecord) error {
	c.SetDeadline(time.Now().Add(s.opts.IdleTimeout))
	if tc != nil {
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("tls handshake: %w", err)
		}
		rec.SNI = tc.ConnectionState().ServerName
	}
	br := bufio.NewReader(c)
	bw := bufio.NewWriterSize(c, 32<<10)
	for {
		c.SetDeadline(time.Now().Add(s.opts.IdleTimeout))
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		rec.Hosts = append(rec.Hosts, req.Host)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		n := int64(3)
		if req.URL.Path == "/bytes" {
			v, err := strconv.ParseInt(req.URL.Query().Get("n"), 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("bad /bytes?n=: %q", req.URL.RawQuery)
			}
			n = v
		}
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n", n)
		if req.Close {
			bw.WriteString("Connection: close\r\n")
		}
		bw.WriteString("\r\n")
		if req.URL.Path == "/bytes" {
			if err := writeBytes(bw, n); err != nil {
				return fmt.Errorf("write body: %w", err)
			}
		} else {
			bw.WriteString("ok\n")
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write response: %w", err)
		}
		if req.Close {
			return nil
		}
	}
}

var filler = []byte(strings.Repeat("netward-opslab\n", 1100)) // ~16 KiB

func writeBytes(w io.Writer, n int64) error {
	for n > 0 {
		k := min(n, int64(len(filler)))
		if _, err := w.Write(filler[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// Records returns the connections that have ended (with Record set).
func (s *Server) Records() []ConnRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ConnRecord(nil), s.records...)
}

// WaitConn waits until the connection from remote has ended and returns
// its record.
func (s *Server) WaitConn(ctx context.Context, remote netip.AddrPort) (ConnRecord, error) {
	for {
		for _, r := range s.Records() {
			if r.Remote == remote {
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return ConnRecord{}, fmt.Errorf("opslab: no ended connection from %s on :%d: %w", remote, s.Port(), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Counts are a server's totals.
type Counts struct {
	Accepted, Active int64
	Recv, Sent       int64
}

// Counts returns the totals so far (bytes of ended connections).
func (s *Server) Counts() Counts {
	return Counts{Accepted: s.accepted.Load(), Active: s.active.Load(), Recv: s.recv.Load(), Sent: s.sent.Load()}
}

// Close stops the server and closes its connections.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
