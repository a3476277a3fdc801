// Package peer is the traffic the e2e tests, the demo and the benchmark send
// through the lab: small servers run in the application namespace and
// clients run in the client namespace, both by the nwpeer command
// (e2e/cmd/nwpeer) under `ip netns exec`. Every server logs one JSON line
// per connection (what it received, what it sent, whom it saw) so a test can
// check both ends; every client prints one JSON result.
package peer

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The servers' ports (every address, IPv4 and IPv6).
const (
	HTTPPort   = 8080 // GET / answers "remote=<ip:port>"; GET /bytes?n=N sends N bytes
	XferPort   = 9001 // reads an 8-byte reply size and data until EOF, answers XferHeader + reply
	BannerPort = 9002 // writes Banner at once, then reads until EOF (server-first)
	EchoPort   = 9003 // echoes everything, closes its write side after the client's EOF
	// ClosedPort has no listener on any lab host.
	ClosedPort = 9999
)

// Banner is what the banner server sends before reading anything.
const Banner = "220 nwpeer ready\r\n"

// XferHeaderLen is the length of the xfer server's answer header:
// "<20-digit byte count> <64 hex sha256>\n" of what it received.
const XferHeaderLen = 20 + 1 + 64 + 1

// ServerLog is one line of a server's log.
type ServerLog struct {
	Proto   string `json:"proto"` // http, xfer, banner, echo
	Remote  string `json:"remote"`
	Local   string `json:"local"`
	Path    string `json:"path,omitempty"`
	Recv    int64  `json:"recv"`
	RecvSHA string `json:"recv_sha,omitempty"`
	Sent    int64  `json:"sent"`
	SentSHA string `json:"sent_sha,omitempty"`
	Err     string `json:"err,omitempty"`
}

// ServerOptions configure Serve.
type ServerOptions struct {
	// Log receives one JSON ServerLog line per connection or request.
	Log io.Writer
	// QuietHTTP leaves HTTP requests out of the log (benchmarks).
	QuietHTTP bool
	// Ready, if set, is called once every listener is open.
	Ready func()
	// TLSPort, if not 0, also serves the HTTP handler over TLS there, with
	// TLS (see ServerTLS), HTTP/1.1 only.
	TLSPort int
	TLS     *tls.Config
	// DNSPort, if not 0, also runs the DNS server (DNSServer) there, UDP
	// and TCP; it logs DNSLog lines.
	DNSPort int
	// H3Port, if not 0, also serves HTTP/3 (H3Server, QUIC v1 and v2) on
	// that UDP port with TLS; it logs H3Log lines.
	H3Port int
}

// Serve runs every server until ctx ends.
func Serve(ctx context.Context, opts ServerOptions) error {
	lg := &logger{w: opts.Log}
	if lg.w == nil {
		lg.w = io.Discard
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	listen := func(port int) (net.Listener, error) {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port)) // dual-stack
		if err != nil {
			return nil, fmt.Errorf("peer: listen :%d: %w", port, err)
		}
		lns = append(lns, ln)
		return ln, nil
	}
	httpLn, err := listen(HTTPPort)
	if err != nil {
		return err
	}
	conns := map[int]func(net.Conn, *logger){XferPort: serveXfer, BannerPort: serveBanner, EchoPort: serveEcho}
	errc := make(chan error, len(conns)+3)
	for port, handle := range conns {
		ln, err := listen(port)
		if err != nil {
			return err
		}
		go func() { errc <- acceptLoop(ln, handle, lg) }()
	}
	srv := &http.Server{Handler: httpHandler(lg, opts.QuietHTTP), ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- srv.Serve(httpLn) }()
	// The TLS server has its own http.Server: without TLSConfig.NextProtos
	// it speaks HTTP/1.1 only, one request per connection for a client
	// that asks Connection: close.
	tlsSrv := &http.Server{Handler: srv.Handler, ReadHeaderTimeout: 10 * time.Second}
	if opts.TLSPort != 0 {
		if opts.TLS == nil {
			return fmt.Errorf("peer: TLSPort %d without a TLS config", opts.TLSPort)
		}
		ln, err := listen(opts.TLSPort)
		if err != nil {
			return err
		}
		go func() { errc <- tlsSrv.Serve(tls.NewListener(ln, opts.TLS)) }()
	}
	if opts.DNSPort != 0 {
		d, err := listenDNS(":"+strconv.Itoa(opts.DNSPort), lg) // dual-stack
		if err != nil {
			return err
		}
		defer d.Close()
		go func() { errc <- d.Serve(ctx) }()
	}
	if opts.H3Port != 0 {
		h3, err := ListenH3(H3Options{Addr: ":" + strconv.Itoa(opts.H3Port), TLS: opts.TLS, Log: lg.w, Quiet: opts.QuietHTTP})
		if err != nil {
			return err
		}
		defer h3.Close()
		go func() { errc <- h3.Serve(ctx) }()
	}
	if opts.Ready != nil {
		opts.Ready()
	}
	select {
	case <-ctx.Done():
		srv.Close()
		tlsSrv.Close()
		return nil
	case err := <-errc:
		return err
	}
}

// ServeEcho runs a quiet echo server on addr (":port", dual-stack) until
// ctx ends. It is made for many idle connections: each holds a small
// buffer (not the 32 KiB of io.Copy, nor a splice pipe's two file
// descriptors), so one process serves as many connections as it may open
// files, and has SO_LINGER 0, so a server that exits or is killed with
// them open resets them rather than leaving an orphaned socket each for
// the kernel (see HoldOptions). ready, if set, is called once it listens.
func ServeEcho(ctx context.Context, addr string, ready func()) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("peer: listen %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	if ready != nil {
		ready()
	}
	return acceptLoop(ln, func(c net.Conn, _ *logger) {
		if tc, ok := c.(*net.TCPConn); ok {
			if err := tc.SetLinger(0); err != nil {
				return
			}
		}
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if err == io.EOF {
					// A graceful end: close the normal way, so the FIN is
					// retransmitted until the peer has it.
					if tc, ok := c.(*net.TCPConn); ok {
						tc.SetLinger(-1)
					}
					closeWrite(c)
				}
				return
			}
		}
	}, &logger{w: io.Discard})
}

type logger struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *logger) log(e ServerLog) {
	b, _ := json.Marshal(e)
	l.mu.Lock()
	l.w.Write(append(b, '\n'))
	l.mu.Unlock()
}

func acceptLoop(ln net.Listener, handle func(net.Conn, *logger), lg *logger) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off instead of spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			handle(c, lg)
		}()
	}
}

func httpHandler(lg *logger, quiet bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body := "remote=" + r.RemoteAddr + "\n"
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Remote-Addr", r.RemoteAddr)
		io.WriteString(w, body)
		if !quiet {
			lg.log(ServerLog{Proto: "http", Remote: r.RemoteAddr, Local: localAddr(r), Path: r.URL.Path, Sent: int64(len(body))})
		}
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n: want a byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		h := sha256.New()
		sent, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(NewStream(uint64(n)), n))
		e := ServerLog{Proto: "http", Remote: r.RemoteAddr, Local: localAddr(r), Path: r.URL.Path, Sent: sent, SentSHA: hex.EncodeToString(h.Sum(nil))}
		if err != nil {
			e.Err = err.Error()
		}
		if !quiet {
			lg.log(e)
		}
	})
	return mux
}

func localAddr(r *http.Request) string {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a.String()
	}
	return ""
}

// serveXfer reads an 8-byte big-endian reply size, then data until the
// client's EOF (half-close), then answers the header and the reply: the
// client learns the server saw every byte, and the reply proves the
// server can still send after the client has shut its write side.
func serveXfer(c net.Conn, lg *logger) {
	e := ServerLog{Proto: "xfer", Remote: c.RemoteAddr().String(), Local: c.LocalAddr().String()}
	defer func() { lg.log(e) }()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		e.Err = "read size: " + err.Error()
		return
	}
	size := binary.BigEndian.Uint64(hdr[:])
	rh := sha256.New()
	n, err := io.Copy(rh, c)
	e.Recv, e.RecvSHA = n, hex.EncodeToString(rh.Sum(nil))
	if err != nil {
		e.Err = "read: " + err.Error()
		return
	}
	header := fmt.Sprintf("%020d %s\n", n, e.RecvSHA)
	if _, err := io.WriteString(c, header); err != nil {
		e.Err = "write header: " + err.Error()
		return
	}
	sh := sha256.New()
	e.Sent, err = io.Copy(io.MultiWriter(c, sh), io.LimitReader(NewStream(size), int64(size)))
	e.SentSHA = hex.EncodeToString(sh.Sum(nil))
	if err != nil {
		e.Err = "write: " + err.Error()
		return
	}
	if err := closeWrite(c); err != nil {
		e.Err = "close write: " + err.Error()
	}
}

func serveBanner(c net.Conn, lg *logger) {
	e := ServerLog{Proto: "banner", Remote: c.RemoteAddr().String(), Local: c.LocalAddr().String()}
	n, err := io.WriteString(c, Banner)
	e.Sent = int64(n)
	if err == nil {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		e.Recv, err = io.Copy(io.Discard, c)
	}
	if err != nil {
		e.Err = err.Error()
	}
	lg.log(e)
}

// serveEcho is quiet: it serves the 1,000-connection and latency tests.
func serveEcho(c net.Conn, _ *logger) {
	if _, err := io.Copy(c, c); err == nil {
		closeWrite(c)
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NewStream returns an endless deterministic pseudo-random byte stream for
// seed: incompressible, and any corruption changes its SHA-256.
func NewStream(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// sumOf returns the hex SHA-256 of h.
func sumOf(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
