package peer

// HTTP/3 over QUIC (quic-go) for the lab: a server that logs what it saw of
// each request and counts every UDP datagram it receives per source, and a
// client that chooses the QUIC version and the TLS key share (and with it
// whether the ClientHello fits in one Initial packet).
//
// quic-go's own http3 package needs github.com/quic-go/qpack, which this
// module does not require, so the HTTP/3 layer here is a small one of its
// own on quic-go streams (RFC 9114): control streams with an empty
// SETTINGS, one request per bidirectional stream, HEADERS and DATA frames,
// and QPACK (RFC 9204) without a dynamic table (static table, literals,
// Huffman decoding). It is enough for this package's client, for curl and
// for ngtcp2's example clients (gtlsclient).

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http2/hpack"
)

// H3ALPN is the ALPN protocol of HTTP/3.
const H3ALPN = "h3"

// H3Log is one line of the HTTP/3 server's log. Proto is "h3" for a request
// (Path, Remote, SNI, Version, Sent) and "udp" for the first datagram from a
// new source address (UDPFrom). Both decode as a ServerLog too (Proto,
// Remote, Local, Path, Sent, SentSHA, Err).
type H3Log struct {
	Proto   string `json:"proto"`
	H3      string `json:"h3,omitempty"` // the request's path
	UDPFrom string `json:"udp_from,omitempty"`
	Remote  string `json:"remote"` // as the server sees it: the client's address, if it was kept
	Local   string `json:"local,omitempty"`
	Path    string `json:"path,omitempty"`
	SNI     string `json:"sni,omitempty"`     // TLS ConnectionState.ServerName
	Version string `json:"version,omitempty"` // QUIC version: v1, v2
	ALPN    string `json:"alpn,omitempty"`
	Sent    int64  `json:"sent,omitempty"`
	SentSHA string `json:"sent_sha,omitempty"`
	Err     string `json:"err,omitempty"`
}

// ParseH3Logs returns the H3Log lines in a server's log (other lines are
// skipped).
func ParseH3Logs(log string) []H3Log {
	var out []H3Log
	for _, line := range strings.Split(log, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var e H3Log
		if json.Unmarshal([]byte(line), &e) == nil && (e.Proto == "h3" || e.Proto == "udp") {
			out = append(out, e)
		}
	}
	return out
}

// H3Options configure ListenH3.
type H3Options struct {
	// Addr is the UDP address to listen on, e.g. ":8443" (every address,
	// IPv4 and IPv6) or "127.0.0.1:0".
	Addr string
	// TLS is the server's certificate config (ServerTLS,
	// Cert.ServerConfig); ListenH3 uses a clone with NextProtos h3.
	TLS *tls.Config
	// Log receives one JSON H3Log line per request and per new source
	// address; nil discards them.
	Log io.Writer
	// Quiet leaves requests out of the log (benchmarks); the "udp" lines
	// stay.
	Quiet bool
}

// H3Server is an HTTP/3 server on one UDP socket: GET /bytes?n=N streams N
// bytes (NewStream(N)), any other GET answers "remote=<ip:port>\n". It
// accepts QUIC v1 and v2.
type H3Server struct {
	close sync.Once
	pc    *countingConn
	tr    *quic.Transport
	ln    *quic.Listener
	lg    *logger
	opt   H3Options
}

// ListenH3 opens the server's socket and QUIC listener; Serve serves it.
func ListenH3(o H3Options) (*H3Server, error) {
	if o.TLS == nil {
		return nil, errors.New("peer: HTTP/3 server without a TLS config")
	}
	ua, err := net.ResolveUDPAddr("udp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("peer: h3 address %q: %w", o.Addr, err)
	}
	uc, err := net.ListenUDP("udp", ua) // ":port": dual-stack
	if err != nil {
		return nil, fmt.Errorf("peer: listen udp %s: %w", o.Addr, err)
	}
	s := &H3Server{opt: o, lg: &logger{w: o.Log}}
	if s.lg.w == nil {
		s.lg.w = io.Discard
	}
	s.pc = &countingConn{UDPConn: uc, counts: map[netip.Addr]uint64{}, seen: map[netip.AddrPort]bool{}}
	s.pc.onNew = func(from netip.AddrPort) {
		s.lg.logAny(H3Log{Proto: "udp", UDPFrom: from.String(), Remote: from.String()})
	}
	tc := o.TLS.Clone()
	tc.NextProtos = []string{H3ALPN}
	s.tr = &quic.Transport{Conn: &countingPacketConn{c: s.pc}}
	s.ln, err = s.tr.Listen(tc, &quic.Config{
		Versions:        []quic.Version{quic.Version1, quic.Version2},
		MaxIdleTimeout:  30 * time.Second,
		KeepAlivePeriod: 0,
	})
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("peer: quic listen %s: %w", o.Addr, err)
	}
	return s, nil
}

// Addr is the server's UDP address.
func (s *H3Server) Addr() net.Addr { return s.pc.LocalAddr() }

// Datagrams is how many UDP datagrams the server has received from ip
// (every port), whatever they held.
func (s *H3Server) Datagrams(ip netip.Addr) uint64 { return s.pc.count(ip) }

// Sources are the source addresses (ip:port) the server has received
// datagrams from.
func (s *H3Server) Sources() []netip.AddrPort { return s.pc.sources() }

// Serve serves until ctx ends, then closes the socket.
func (s *H3Server) Serve(ctx context.Context) error {
	defer s.Close()
	go func() {
		<-ctx.Done()
		s.ln.Close()
	}()
	for {
		c, err := s.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("peer: h3 accept: %w", err)
		}
		go s.serveConn(c)
	}
}

// Close stops the server at once.
func (s *H3Server) Close() error {
	var err error
	s.close.Do(func() {
		s.ln.Close()
		s.tr.Close()
		err = s.pc.Close()
	})
	return err
}

func (s *H3Server) serveConn(c *quic.Conn) {
	defer c.CloseWithError(h3NoError, "")
	go discardUniStreams(c)
	if err := openControlStream(c); err != nil {
		return
	}
	for {
		str, err := c.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go s.serveRequest(c, str)
	}
}

func (s *H3Server) serveRequest(c *quic.Conn, str *quic.Stream) {
	defer str.Close()
	cs := c.ConnectionState()
	e := H3Log{Proto: "h3", Remote: c.RemoteAddr().String(), Local: c.LocalAddr().String(),
		SNI: cs.TLS.ServerName, Version: VersionName(cs.Version), ALPN: cs.TLS.NegotiatedProtocol}
	str.SetDeadline(time.Now().Add(5 * time.Minute))
	br := bufio.NewReader(str)
	fields, err := readHeaders(br)
	if err != nil {
		str.CancelRead(h3RequestIncomplete)
		str.CancelWrite(h3RequestIncomplete)
		e.Err = "request: " + err.Error()
		s.lg.logAny(e)
		return
	}
	str.CancelRead(quic.StreamErrorCode(h3NoError)) // a GET has no body worth reading
	var method, target string
	for _, f := range fields {
		switch f.name {
		case ":method":
			method = f.value
		case ":path":
			target = f.value
		}
	}
	u, _ := url.ParseRequestURI(target)
	if u == nil {
		u = &url.URL{Path: target}
	}
	e.H3, e.Path = u.Path, u.Path
	status, body, n := 200, "", int64(-1)
	switch {
	case method != "GET" && method != "HEAD":
		status, body = 405, "GET only\n"
	case u.Path == "/bytes":
		v, err := strconv.ParseInt(u.Query().Get("n"), 10, 64)
		if err != nil || v < 0 {
			status, body = 400, "n: want a byte count\n"
		} else {
			n = v
		}
	default:
		body = "remote=" + e.Remote + "\n"
	}
	length := int64(len(body))
	if n >= 0 {
		length = n
	}
	hdr := encodeHeaders([]field{{":status", strconv.Itoa(status)}, {"content-type", "text/plain"},
		{"content-length", strconv.FormatInt(length, 10)}, {"x-remote-addr", e.Remote}})
	if _, err := str.Write(appendFrame(nil, frameHeaders, hdr)); err != nil {
		e.Err = "write headers: " + err.Error()
		s.lg.logAny(e)
		return
	}
	h := sha256.New()
	if method == "HEAD" {
		n, body = -1, ""
	}
	if n >= 0 {
		e.Sent, err = writeData(str, io.TeeReader(io.LimitReader(NewStream(uint64(n)), n), h))
	} else {
		h.Write([]byte(body))
		e.Sent, err = writeData(str, strings.NewReader(body))
	}
	e.SentSHA = hex.EncodeToString(h.Sum(nil))
	if err != nil {
		e.Err = "write: " + err.Error()
	}
	if !s.opt.Quiet || e.Err != "" {
		s.lg.logAny(e)
	}
}

// writeData copies r to w as DATA frames of up to 64 KiB.
func writeData(w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 16+64<<10)
	var total int64
	for {
		n, err := io.ReadFull(r, buf[16:])
		if n > 0 {
			hdr := quicvarint.Append(quicvarint.Append(nil, frameData), uint64(n))
			start := 16 - len(hdr)
			copy(buf[start:], hdr)
			if _, werr := w.Write(buf[start : 16+n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (l *logger) logAny(v any) {
	b, _ := json.Marshal(v)
	l.mu.Lock()
	l.w.Write(append(b, '\n'))
	l.mu.Unlock()
}

// VersionName names a QUIC version: "v1", "v2", or its hex number.
func VersionName(v quic.Version) string {
	switch v {
	case quic.Version1:
		return "v1"
	case quic.Version2:
		return "v2"
	}
	return fmt.Sprintf("0x%08x", uint32(v))
}

// countingConn is the server's UDP socket as a plain net.PacketConn that
// counts what it reads. It hides ReadMsgUDP on purpose: quic-go would read
// a *net.UDPConn in batches through its file descriptor (recvmmsg),
// around any wrapper. It keeps SyscallConn and SetReadBuffer, for quic-go's
// buffer sizes and DF bit.
type countingConn struct {
	*net.UDPConn
	mu     sync.Mutex
	counts map[netip.Addr]uint64
	seen   map[netip.AddrPort]bool
	onNew  func(netip.AddrPort)
	total  atomic.Uint64
}

// quic-go must see a plain net.PacketConn (see countingConn).
var _ net.PacketConn = (*countingPacketConn)(nil)

// countingPacketConn is what quic-go gets: countingConn without the
// methods of *net.UDPConn that would let quic-go bypass ReadFrom.
type countingPacketConn struct{ c *countingConn }

func (p *countingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) { return p.c.ReadFrom(b) }
func (p *countingPacketConn) WriteTo(b []byte, a net.Addr) (int, error) {
	return p.c.UDPConn.WriteTo(b, a)
}
func (p *countingPacketConn) Close() error                  { return p.c.UDPConn.Close() }
func (p *countingPacketConn) LocalAddr() net.Addr           { return p.c.UDPConn.LocalAddr() }
func (p *countingPacketConn) SetDeadline(t time.Time) error { return p.c.UDPConn.SetDeadline(t) }
func (p *countingPacketConn) SetReadDeadline(t time.Time) error {
	return p.c.UDPConn.SetReadDeadline(t)
}
func (p *countingPacketConn) SetWriteDeadline(t time.Time) error {
	return p.c.UDPConn.SetWriteDeadline(t)
}
func (p *countingPacketConn) SetReadBuffer(n int) error  { return p.c.UDPConn.SetReadBuffer(n) }
func (p *countingPacketConn) SetWriteBuffer(n int) error { return p.c.UDPConn.SetWriteBuffer(n) }
func (p *countingPacketConn) SyscallConn() (syscall.RawConn, error) {
	return p.c.UDPConn.SyscallConn()
}

func (c *countingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, ap, err := c.UDPConn.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	c.total.Add(1)
	c.mu.Lock()
	c.counts[ap.Addr()]++
	isNew := !c.seen[ap]
	if isNew {
		c.seen[ap] = true
	}
	c.mu.Unlock()
	if isNew && c.onNew != nil {
		c.onNew(ap)
	}
	return n, net.UDPAddrFromAddrPort(ap), nil
}

func (c *countingConn) count(ip netip.Addr) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[ip.Unmap()]
}

func (c *countingConn) sources() []netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(c.seen))
	for ap := range c.seen {
		out = append(out, ap)
	}
	return out
}

// H3GetOptions configure H3Get.
type H3GetOptions struct {
	URL string // https://host:port/path
	// SNI is the TLS server name to send ("" for none: an IP literal
	// host sends none either); the certificate is not verified.
	SNI string
	// Version is the only QUIC version offered: "v1" (default) or "v2".
	Version string
	// Curve is the TLS key share: "x25519" (default: the ClientHello fits
	// in one Initial packet) or "mlkem" (X25519MLKEM768, 1,216 bytes more:
	// the ClientHello spans two Initial packets).
	Curve string
	// Src is the source IP to bind ("" for any).
	Src string
	// NoScramble turns off quic-go's ClientHello scrambling (on by
	// default for clients: the SNI extension is cut in the middle, its
	// second half and everything after it go out in CRYPTO frames of
	// their own, the cut part last; and the frames of each packet are
	// shuffled). It sets QUIC_GO_DISABLE_CLIENTHELLO_SCRAMBLING for the
	// whole process.
	NoScramble bool
	// Bytes, if > 0, GETs /bytes?n=Bytes from the URL's server instead of
	// the URL's path, and fails unless all of them arrive.
	Bytes int64
	// InitialPacketSize is quic.Config.InitialPacketSize (0: quic-go's
	// 1,280; at least 1,200).
	InitialPacketSize uint16
}

// H3Result is what H3Get did.
type H3Result struct {
	Status  int    `json:"status"`
	Bytes   int64  `json:"bytes"` // response body bytes
	SHA     string `json:"sha,omitempty"`
	Body    string `json:"body,omitempty"` // the first 200 bytes
	Local   string `json:"local"`
	Remote  string `json:"remote"`
	Version string `json:"version,omitempty"` // negotiated QUIC version
	ALPN    string `json:"alpn,omitempty"`
	// HelloLen is the ClientHello's length (its handshake header too),
	// HelloPackets the Initial packets that carried it (each in a datagram
	// of its own, padded), HelloPacketBytes their sizes, HelloCrypto the
	// CRYPTO frames (offset, length) in the order they were first sent
	// (out of order with scrambling), HelloResent the Initial packets that
	// only sent parts of it again.
	HelloLen         int        `json:"hello_len"`
	HelloPackets     int        `json:"hello_packets"`
	HelloPacketBytes []int      `json:"hello_packet_bytes,omitempty"`
	HelloCrypto      [][2]int64 `json:"hello_crypto,omitempty"`
	HelloResent      int        `json:"hello_resent,omitempty"`
	Millis           int64      `json:"ms"`
	Err              string     `json:"err,omitempty"`
}

// H3Get makes one HTTP/3 GET and reads the whole response. It fails on
// any error, on a status other than 200, or when ctx ends.
func H3Get(ctx context.Context, o H3GetOptions) (res H3Result, err error) {
	start := time.Now()
	defer func() {
		res.Millis = time.Since(start).Milliseconds()
		if err != nil {
			res.Err = classify(err)
		}
	}()
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return res, fmt.Errorf("peer: h3 URL %q: want https://host:port/path", o.URL)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	raddr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return res, err
	}
	res.Remote = raddr.String()
	var ver quic.Version
	switch o.Version {
	case "", "v1":
		ver = quic.Version1
	case "v2":
		ver = quic.Version2
	default:
		return res, fmt.Errorf("peer: QUIC version %q: want v1 or v2", o.Version)
	}
	tc := &tls.Config{ServerName: o.SNI, InsecureSkipVerify: true, NextProtos: []string{H3ALPN}}
	switch o.Curve {
	case "", "x25519":
		tc.CurvePreferences = []tls.CurveID{tls.X25519}
	case "mlkem":
		tc.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768}
	default:
		return res, fmt.Errorf("peer: curve %q: want x25519 or mlkem", o.Curve)
	}
	if o.NoScramble {
		os.Setenv("QUIC_GO_DISABLE_CLIENTHELLO_SCRAMBLING", "true")
	}
	laddr := &net.UDPAddr{}
	if o.Src != "" {
		if laddr.IP = net.ParseIP(o.Src); laddr.IP == nil {
			return res, fmt.Errorf("peer: bad source address %q", o.Src)
		}
	}
	network := "udp4"
	if raddr.IP.To4() == nil {
		network = "udp6"
	}
	uc, err := net.ListenUDP(network, laddr)
	if err != nil {
		return res, err
	}
	tr := &quic.Transport{Conn: uc}
	trace := &helloTrace{}
	defer uc.Close()
	defer tr.Close()
	res.Local = uc.LocalAddr().String()
	c, err := tr.Dial(ctx, raddr, tc, &quic.Config{
		Versions:             []quic.Version{ver},
		InitialPacketSize:    o.InitialPacketSize,
		HandshakeIdleTimeout: handshakeTimeout(ctx),
		Tracer:               func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return trace },
	})
	trace.result(&res)
	if err != nil {
		return res, fmt.Errorf("quic: %w", err)
	}
	defer c.CloseWithError(h3NoError, "")
	cs := c.ConnectionState()
	res.Version, res.ALPN = VersionName(cs.Version), cs.TLS.NegotiatedProtocol
	go discardUniStreams(c)
	if err := openControlStream(c); err != nil {
		return res, fmt.Errorf("h3 control stream: %w", err)
	}
	str, err := c.OpenStreamSync(ctx)
	if err != nil {
		return res, fmt.Errorf("h3 request stream: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		str.SetDeadline(dl)
	}
	path := u.RequestURI()
	if o.Bytes > 0 {
		path = "/bytes?n=" + strconv.FormatInt(o.Bytes, 10)
	}
	authority := u.Host
	if o.SNI != "" {
		authority = net.JoinHostPort(o.SNI, port)
	}
	req := encodeHeaders([]field{{":method", "GET"}, {":scheme", "https"}, {":authority", authority},
		{":path", path}, {"user-agent", "nwpeer"}})
	if _, err := str.Write(appendFrame(nil, frameHeaders, req)); err != nil {
		return res, fmt.Errorf("h3 write request: %w", err)
	}
	str.Close()
	br := bufio.NewReaderSize(str, 64<<10)
	fields, err := readHeaders(br)
	if err != nil {
		return res, fmt.Errorf("h3 response: %w", err)
	}
	for _, f := range fields {
		if f.name == ":status" {
			res.Status, _ = strconv.Atoi(f.value)
		}
	}
	h := sha256.New()
	var head []byte
	for {
		typ, n, err := readFrameHeader(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("h3 response body: %w", err)
		}
		if typ != frameData { // trailers, unknown frames: skip
			if _, err := br.Discard(int(n)); err != nil {
				return res, fmt.Errorf("h3 response body: %w", err)
			}
			continue
		}
		var w io.Writer = h
		if len(head) < 200 {
			w = io.MultiWriter(h, &limitedBuffer{b: &head, max: 200})
		}
		m, err := io.CopyN(w, br, int64(n))
		res.Bytes += m
		if err != nil {
			return res, fmt.Errorf("h3 response body: %w", err)
		}
	}
	res.SHA, res.Body = hex.EncodeToString(h.Sum(nil)), string(head)
	if res.Status != 200 {
		return res, fmt.Errorf("status %d", res.Status)
	}
	if o.Bytes > 0 && res.Bytes != o.Bytes {
		return res, fmt.Errorf("got %d bytes of %d", res.Bytes, o.Bytes)
	}
	return res, nil
}

func handshakeTimeout(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Second)
	}
	return 10 * time.Second
}

type limitedBuffer struct {
	b   *[]byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(*l.b); room > 0 {
		*l.b = append(*l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// helloTrace is a qlog trace (quic.Config.Tracer) that keeps what the
// client sent of its ClientHello: the Initial packets carrying CRYPTO
// frames, and the frames in the order sent. The client's Initial CRYPTO
// stream carries the ClientHello and nothing else.
type helloTrace struct {
	mu      sync.Mutex
	covered []bool // ClientHello bytes sent at least once
	packets int    // Initial packets with new ClientHello bytes
	resent  int    // Initial packets with CRYPTO frames, none of them new
	sizes   []int
	frames  [][2]int64
}

func (h *helloTrace) AddProducer() qlogwriter.Recorder { return h }
func (h *helloTrace) Close() error                     { return nil }

func (h *helloTrace) RecordEvent(ev qlogwriter.Event) {
	e, ok := ev.(qlog.PacketSent)
	if !ok || e.Header.PacketType != qlog.PacketTypeInitial {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var crypto, fresh bool
	for _, f := range e.Frames {
		cf, ok := f.Frame.(*qlog.CryptoFrame)
		if !ok {
			continue
		}
		crypto = true
		end := cf.Offset + cf.Length
		if end > 1<<20 {
			continue
		}
		for int64(len(h.covered)) < end {
			h.covered = append(h.covered, false)
		}
		for i := cf.Offset; i < end; i++ {
			if !h.covered[i] {
				h.covered[i], fresh = true, true
			}
		}
		if fresh {
			h.frames = append(h.frames, [2]int64{cf.Offset, cf.Length})
		}
	}
	switch {
	case fresh:
		h.packets++
		h.sizes = append(h.sizes, e.Raw.Length)
	case crypto:
		h.resent++
	}
}

func (h *helloTrace) result(r *H3Result) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.HelloPackets, r.HelloPacketBytes, r.HelloCrypto, r.HelloResent = h.packets, h.sizes, h.frames, h.resent
	r.HelloLen = len(h.covered)
}

// HTTP/3 (RFC 9114) frame and stream types, error codes.
const (
	frameData     = 0x00
	frameHeaders  = 0x01
	frameSettings = 0x04

	streamControl = 0x00

	h3NoError           quic.ApplicationErrorCode = 0x100
	h3RequestIncomplete quic.StreamErrorCode      = 0x10d
	maxFieldSection                               = 64 << 10
)

func appendFrame(b []byte, typ uint64, payload []byte) []byte {
	b = quicvarint.Append(b, typ)
	b = quicvarint.Append(b, uint64(len(payload)))
	return append(b, payload...)
}

// openControlStream opens the connection's control stream with an empty
// SETTINGS frame (no QPACK dynamic table). It stays open, as it must.
func openControlStream(c *quic.Conn) error {
	s, err := c.OpenUniStream()
	if err != nil {
		return err
	}
	_, err = s.Write(appendFrame(quicvarint.Append(nil, streamControl), frameSettings, nil))
	return err
}

// discardUniStreams reads the peer's unidirectional streams (control,
// QPACK encoder and decoder, grease) and throws their contents away.
func discardUniStreams(c *quic.Conn) {
	for {
		s, err := c.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		go io.Copy(io.Discard, s)
	}
}

func readFrameHeader(br *bufio.Reader) (typ, length uint64, err error) {
	typ, err = quicvarint.Read(br)
	if err != nil {
		return 0, 0, err
	}
	length, err = quicvarint.Read(br)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return typ, length, err
}

// readHeaders reads frames until a HEADERS frame (skipping unknown ones)
// and decodes it.
func readHeaders(br *bufio.Reader) ([]field, error) {
	for {
		typ, n, err := readFrameHeader(br)
		if err != nil {
			return nil, err
		}
		if n > maxFieldSection {
			return nil, fmt.Errorf("frame 0x%x of %d bytes", typ, n)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		switch typ {
		case frameHeaders:
			return decodeHeaders(buf)
		case frameData:
			return nil, errors.New("DATA before HEADERS")
		}
	}
}

type field struct{ name, value string }

// encodeHeaders is a QPACK field section without the dynamic table: a
// static entry where one matches exactly, else a literal with a static
// name reference or a literal name; no Huffman coding.
func encodeHeaders(fs []field) []byte {
	b := []byte{0, 0} // Required Insert Count 0, Delta Base 0
	for _, f := range fs {
		exact, name := -1, -1
		for i, e := range qpackStatic {
			if e.name == f.name {
				if name < 0 {
					name = i
				}
				if e.value == f.value {
					exact = i
					break
				}
			}
		}
		switch {
		case exact >= 0:
			b = appendPrefixInt(b, 0xc0, 6, uint64(exact)) // 11xxxxxx: indexed, static
		case name >= 0:
			b = appendPrefixInt(b, 0x50, 4, uint64(name)) // 0101xxxx: literal, static name
			b = appendPrefixInt(b, 0x00, 7, uint64(len(f.value)))
			b = append(b, f.value...)
		default:
			b = appendPrefixInt(b, 0x20, 3, uint64(len(f.name))) // 0010xxxx: literal name
			b = append(b, f.name...)
			b = appendPrefixInt(b, 0x00, 7, uint64(len(f.value)))
			b = append(b, f.value...)
		}
	}
	return b
}

// decodeHeaders decodes a QPACK field section that uses no dynamic table
// (as this package's SETTINGS allow).
func decodeHeaders(b []byte) ([]field, error) {
	ric, b, err := readPrefixInt(b, 8)
	if err != nil {
		return nil, err
	}
	if ric != 0 {
		return nil, errors.New("qpack: field section refers to the dynamic table")
	}
	if _, b, err = readPrefixInt(b, 7); err != nil { // Delta Base
		return nil, err
	}
	var out []field
	static := func(i uint64) (field, error) {
		if i >= uint64(len(qpackStatic)) {
			return field{}, fmt.Errorf("qpack: static index %d", i)
		}
		return qpackStatic[i], nil
	}
	for len(b) > 0 {
		c := b[0]
		var f field
		switch {
		case c&0x80 != 0: // indexed field line
			if c&0x40 == 0 {
				return nil, errors.New("qpack: dynamic table reference")
			}
			var i uint64
			if i, b, err = readPrefixInt(b, 6); err != nil {
				return nil, err
			}
			if f, err = static(i); err != nil {
				return nil, err
			}
		case c&0x40 != 0: // literal with name reference
			if c&0x10 == 0 {
				return nil, errors.New("qpack: dynamic table reference")
			}
			var i uint64
			if i, b, err = readPrefixInt(b, 4); err != nil {
				return nil, err
			}
			if f, err = static(i); err != nil {
				return nil, err
			}
			if f.value, b, err = readString(b, 7); err != nil {
				return nil, err
			}
		case c&0x20 != 0: // literal with literal name
			if f.name, b, err = readString(b, 3); err != nil {
				return nil, err
			}
			if f.value, b, err = readString(b, 7); err != nil {
				return nil, err
			}
		default: // post-base forms: the dynamic table
			return nil, errors.New("qpack: dynamic table reference")
		}
		out = append(out, f)
	}
	return out, nil
}

func appendPrefixInt(b []byte, first byte, n uint, v uint64) []byte {
	max := uint64(1)<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	v -= max
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func readPrefixInt(b []byte, n uint) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, nil, io.ErrUnexpectedEOF
	}
	max := uint64(1)<<n - 1
	v := uint64(b[0]) & max
	b = b[1:]
	if v < max {
		return v, b, nil
	}
	for shift := uint(0); shift < 63; shift += 7 {
		if len(b) == 0 {
			return 0, nil, io.ErrUnexpectedEOF
		}
		c := b[0]
		b = b[1:]
		v += uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, b, nil
		}
	}
	return 0, nil, errors.New("qpack: integer overflow")
}

// readString reads a string literal whose length has an n-bit prefix and
// whose Huffman flag is the bit above it.
func readString(b []byte, n uint) (string, []byte, error) {
	if len(b) == 0 {
		return "", nil, io.ErrUnexpectedEOF
	}
	huff := b[0]&(1<<n) != 0
	l, b, err := readPrefixInt(b, n)
	if err != nil {
		return "", nil, err
	}
	if uint64(len(b)) < l {
		return "", nil, io.ErrUnexpectedEOF
	}
	s, rest := b[:l], b[l:]
	if !huff {
		return string(s), rest, nil
	}
	d, err := hpack.HuffmanDecodeToString(s)
	return d, rest, err
}

// qpackStatic is the QPACK static table (RFC 9204, Appendix A).
var qpackStatic = []field{
	{":authority", ""}, {":path", "/"}, {"age", "0"}, {"content-disposition", ""},
	{"content-length", "0"}, {"cookie", ""}, {"date", ""}, {"etag", ""},
	{"if-modified-since", ""}, {"if-none-match", ""}, {"last-modified", ""}, {"link", ""},
	{"location", ""}, {"referer", ""}, {"set-cookie", ""}, {":method", "CONNECT"},
	{":method", "DELETE"}, {":method", "GET"}, {":method", "HEAD"}, {":method", "OPTIONS"},
	{":method", "POST"}, {":method", "PUT"}, {":scheme", "http"}, {":scheme", "https"},
	{":status", "103"}, {":status", "200"}, {":status", "304"}, {":status", "404"},
	{":status", "503"}, {"accept", "*/*"}, {"accept", "application/dns-message"},
	{"accept-encoding", "gzip, deflate, br"}, {"accept-ranges", "bytes"},
	{"access-control-allow-headers", "cache-control"}, {"access-control-allow-headers", "content-type"},
	{"access-control-allow-origin", "*"}, {"cache-control", "max-age=0"},
	{"cache-control", "max-age=2592000"}, {"cache-control", "max-age=604800"},
	{"cache-control", "no-cache"}, {"cache-control", "no-store"},
	{"cache-control", "public, max-age=31536000"}, {"content-encoding", "br"},
	{"content-encoding", "gzip"}, {"content-type", "application/dns-message"},
	{"content-type", "application/javascript"}, {"content-type", "application/json"},
	{"content-type", "application/x-www-form-urlencoded"}, {"content-type", "image/gif"},
	{"content-type", "image/jpeg"}, {"content-type", "image/png"}, {"content-type", "text/css"},
	{"content-type", "text/html; charset=utf-8"}, {"content-type", "text/plain"},
	{"content-type", "text/plain;charset=utf-8"}, {"range", "bytes=0-"},
	{"strict-transport-security", "max-age=31536000"},
	{"strict-transport-security", "max-age=31536000; includesubdomains"},
	{"strict-transport-security", "max-age=31536000; includesubdomains; preload"},
	{"vary", "accept-encoding"}, {"vary", "origin"}, {"x-content-type-options", "nosniff"},
	{"x-xss-protection", "1; mode=block"}, {":status", "100"}, {":status", "204"},
	{":status", "206"}, {":status", "302"}, {":status", "400"}, {":status", "403"},
	{":status", "421"}, {":status", "425"}, {":status", "500"}, {"accept-language", ""},
	{"access-control-allow-credentials", "FALSE"}, {"access-control-allow-credentials", "TRUE"},
	{"access-control-allow-headers", "*"}, {"access-control-allow-methods", "get"},
	{"access-control-allow-methods", "get, post, options"}, {"access-control-allow-methods", "options"},
	{"access-control-expose-headers", "content-length"}, {"access-control-request-headers", "content-type"},
	{"access-control-request-method", "get"}, {"access-control-request-method", "post"},
	{"alt-svc", "clear"}, {"authorization", ""},
	{"content-security-policy", "script-src 'none'; object-src 'none'; base-uri 'none'"},
	{"early-data", "1"}, {"expect-ct", ""}, {"forwarded", ""}, {"if-range", ""}, {"origin", ""},
	{"purpose", "prefetch"}, {"server", ""}, {"timing-allow-origin", "*"},
	{"upgrade-insecure-requests", "1"}, {"user-agent", ""}, {"x-forwarded-for", ""},
	{"x-frame-options", "deny"}, {"x-frame-options", "sameorigin"},
}
