package peer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Dialer returns a dialer bound to src (an IP, "" for any).
func Dialer(src string, timeout time.Duration) (*net.Dialer, error) {
	d := &net.Dialer{Timeout: timeout}
	if src != "" {
		ip := net.ParseIP(src)
		if ip == nil {
			return nil, fmt.Errorf("peer: bad source address %q", src)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return d, nil
}

// XferResult is what Xfer did, as seen by the client and as the server
// said in its answer header.
type XferResult struct {
	Local         string `json:"local"`
	Sent          int64  `json:"sent"`
	SentSHA       string `json:"sent_sha"`
	ServerRecv    int64  `json:"server_recv"`
	ServerRecvSHA string `json:"server_recv_sha"`
	Recv          int64  `json:"recv"`
	RecvSHA       string `json:"recv_sha"`
	Millis        int64  `json:"ms"`
}

// Xfer sends send bytes to the xfer server at addr, shuts its write side,
// and reads the server's header and a reply of recv bytes until EOF.
func Xfer(ctx context.Context, d *net.Dialer, addr string, send, recv int64) (XferResult, error) {
	var r XferResult
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return r, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r.Local = c.LocalAddr().String()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(recv))
	if _, err := c.Write(hdr[:]); err != nil {
		return r, fmt.Errorf("write size: %w", err)
	}
	// Read concurrently with writing: a server that answers early must not
	// deadlock a large upload.
	type readResult struct {
		n      int64
		sha    string
		srvN   int64
		srvSHA string
		err    error
	}
	done := make(chan readResult, 1)
	go func() {
		var rr readResult
		br := bufio.NewReaderSize(c, 64<<10)
		line := make([]byte, XferHeaderLen)
		if _, err := io.ReadFull(br, line); err != nil {
			rr.err = fmt.Errorf("read header: %w", err)
			done <- rr
			return
		}
		f := strings.Fields(string(line))
		if len(f) != 2 {
			rr.err = fmt.Errorf("bad header %q", line)
			done <- rr
			return
		}
		rr.srvN, _ = strconv.ParseInt(f[0], 10, 64)
		rr.srvSHA = f[1]
		h := sha256.New()
		rr.n, rr.err = io.Copy(h, br)
		rr.sha = sumOf(h)
		done <- rr
	}()
	sh := sha256.New()
	r.Sent, err = io.Copy(io.MultiWriter(c, sh), io.LimitReader(NewStream(uint64(send)+1), send))
	r.SentSHA = sumOf(sh)
	if err != nil {
		return r, fmt.Errorf("write: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return r, fmt.Errorf("close write: %w", err)
	}
	rr := <-done
	r.Recv, r.RecvSHA, r.ServerRecv, r.ServerRecvSHA = rr.n, rr.sha, rr.srvN, rr.srvSHA
	r.Millis = time.Since(start).Milliseconds()
	if rr.err != nil {
		return r, rr.err
	}
	return r, nil
}

// DialResult classifies one connection attempt.
type DialResult struct {
	Err    string `json:"err"` // "" (connected), "refused", "timeout", "unreachable", or the error text
	Millis int64  `json:"ms"`
}

// Dial connects to addr once and says how it went and how long it took.
func Dial(ctx context.Context, d *net.Dialer, addr string) DialResult {
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp", addr)
	r := DialResult{Millis: time.Since(start).Milliseconds()}
	if err == nil {
		c.Close()
		return r
	}
	r.Err = classify(err)
	return r
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// BannerResult is what ReadBanner saw.
type BannerResult struct {
	Banner string `json:"banner"`
	Millis int64  `json:"ms"`
}

// ReadBanner connects and reads one line without sending anything first.
func ReadBanner(ctx context.Context, d *net.Dialer, addr string, wait time.Duration) (BannerResult, error) {
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return BannerResult{}, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	r := BannerResult{Banner: line, Millis: time.Since(start).Milliseconds()}
	if err != nil {
		return r, fmt.Errorf("read banner (sent nothing, waited %v): %w", wait, err)
	}
	io.WriteString(c, "QUIT\r\n")
	return r, nil
}

// ConnsResult counts what Conns did.
type ConnsResult struct {
	OK     int            `json:"ok"`
	Failed int            `json:"failed"`
	Errors map[string]int `json:"errors,omitempty"`
	Millis int64          `json:"ms"`
}

// Conns opens n connections to the echo server at addr, all at once; once
// every one is up, each sends size unique bytes, shuts its write side and
// checks that it reads the same bytes back before EOF.
func Conns(ctx context.Context, d *net.Dialer, addr string, n, size int) ConnsResult {
	start := time.Now()
	var mu sync.Mutex
	res := ConnsResult{Errors: map[string]int{}}
	fail := func(stage string, err error) {
		mu.Lock()
		res.Failed++
		res.Errors[stage+": "+classify(err)]++
		mu.Unlock()
	}
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				fail("dial", err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait() // all n are open at the same time from here on
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if dl, ok := ctx.Deadline(); ok {
				c.SetDeadline(dl)
			}
			msg := make([]byte, size)
			io.ReadFull(NewStream(uint64(i)+1<<32), msg)
			copy(msg, fmt.Sprintf("conn %d ", i))
			if _, err := c.Write(msg); err != nil {
				fail("write", err)
				return
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				fail("close write", err)
				return
			}
			got, err := io.ReadAll(c)
			if err != nil {
				fail("read", err)
				return
			}
			if !slices.Equal(got, msg) {
				fail("echo", fmt.Errorf("got %d bytes back, want the %d sent", len(got), len(msg)))
				return
			}
			mu.Lock()
			res.OK++
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Millis = time.Since(start).Milliseconds()
	return res
}

// LatencyResult summarizes PingPong round trips in microseconds.
type LatencyResult struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_us"`
	P90 float64 `json:"p90_us"`
	P99 float64 `json:"p99_us"`
	Max float64 `json:"max_us"`
}

// PingPong sends size bytes to the echo server and waits for them back, over
// one open connection, for dur (after warmup round trips).
func PingPong(ctx context.Context, d *net.Dialer, addr string, size int, dur time.Duration) (LatencyResult, error) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return LatencyResult{}, err
	}
	defer c.Close()
	buf := make([]byte, size)
	got := make([]byte, size)
	round := func() error {
		if _, err := c.Write(buf); err != nil {
			return err
		}
		_, err := io.ReadFull(c, got)
		return err
	}
	for range 200 {
		if err := round(); err != nil {
			return LatencyResult{}, err
		}
	}
	var samples []time.Duration
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		t0 := time.Now()
		if err := round(); err != nil {
			return LatencyResult{}, err
		}
		samples = append(samples, time.Since(t0))
	}
	slices.Sort(samples)
	pct := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))].Nanoseconds()) / 1e3
	}
	return LatencyResult{N: len(samples), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Max: pct(1)}, nil
}

// ChurnResult counts Churn's requests.
type ChurnResult struct {
	Requests int64            `json:"requests"`
	Errors   int64            `json:"errors"`
	PerSec   float64          `json:"per_sec"`
	Kinds    map[string]int64 `json:"error_kinds,omitempty"`
}

// Churn makes HTTP GETs to url from c workers, each on a new connection
// (Connection: close), for dur.
func Churn(ctx context.Context, d *net.Dialer, url string, workers int, dur time.Duration) ChurnResult {
	return ChurnWith(ctx, d, ChurnOptions{URL: url, Workers: workers, Duration: dur})
}

// ChurnOptions configure ChurnWith.
type ChurnOptions struct {
	URL      string        // what to GET (http:// or https://)
	Workers  int           // concurrent clients, each one request at a time
	Duration time.Duration // how long to go on
	// Host, if set, is the request's Host header instead of the URL's.
	Host string
	// TLS is the client's TLS config for https URLs (SNI, roots); nil is
	// Go's default. It should have no session cache, so that every
	// connection is a full handshake.
	TLS *tls.Config
}

// ChurnWith makes GETs as ChurnOptions say, each on a new connection
// (Connection: close; over TLS a full handshake each), and counts the
// requests that got a whole response.
func ChurnWith(ctx context.Context, d *net.Dialer, o ChurnOptions) ChurnResult {
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true, TLSClientConfig: o.TLS}
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var ok, bad atomic.Int64
	var mu sync.Mutex
	kinds := map[string]int64{}
	end := time.Now().Add(o.Duration)
	start := time.Now()
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				err := churnOnce(ctx, cl, o)
				if err != nil {
					bad.Add(1)
					mu.Lock()
					kinds[classify(err)]++
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	return ChurnResult{Requests: ok.Load(), Errors: bad.Load(), PerSec: float64(ok.Load()) / el, Kinds: kinds}
}

func churnOnce(ctx context.Context, cl *http.Client, o ChurnOptions) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL, nil)
	if err != nil {
		return err
	}
	if o.Host != "" {
		req.Host = o.Host
	}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

// Hold opens n idle connections to the echo server and keeps them open
// until ctx ends; ready is called once all are up.
func Hold(ctx context.Context, d *net.Dialer, addr string, n int, ready func(open int)) error {
	return HoldWith(ctx, d, HoldOptions{Addr: addr, N: n}, func(r HoldReport) { ready(r.Ready) })
}

// HoldOptions configure HoldWith.
type HoldOptions struct {
	Addr string // an echo server
	N    int    // connections to open and hold
	// Parallel is how many dials are in flight at once (0 or 1: one after
	// the other).
	Parallel int
	// Echo: each connection sends one byte and reads it back before it
	// counts as open, which proves it reaches the server end to end. The
	// byte is 0x00, which no protocol starts with, so an inspecting
	// middlebox knows at once it is none it parses.
	Echo bool
	// Check, with Echo: at each receive every held connection echoes one
	// byte again, and report is called with the outcome.
	Check <-chan struct{}
}

// With Echo, HoldWith sets SO_LINGER 0 on every connection: a holder that
// is killed resets its connections instead of leaving the kernel an
// orphaned socket for each (tcp_max_orphans is machine-wide; past it the
// kernel resets every connection that closes, in every namespace). When
// ctx ends it closes them gracefully instead, Parallel at a time: shut the
// write side, wait for the server's EOF, close; report says how that went.

// HoldReport is one of HoldWith's reports: the first once every
// connection is open (Ready, Millis), then one per Check (Alive, Failed).
type HoldReport struct {
	Ready       int              `json:"ready,omitempty"`
	Redialed    int              `json:"redialed,omitempty"`     // connections opened again after a local ETIMEDOUT (HoldWith)
	Closed      int              `json:"closed,omitempty"`       // closed gracefully when ctx ended
	CloseFailed int              `json:"close_failed,omitempty"` // no clean EOF from the server
	CloseMillis int64            `json:"close_ms,omitempty"`
	Millis      int64            `json:"ms,omitempty"`
	Alive       int              `json:"alive,omitempty"`
	Failed      int              `json:"failed,omitempty"`
	Errors      map[string]int64 `json:"errors,omitempty"`
	Check       int              `json:"check,omitempty"` // the Check's number, from 1
}

// HoldWith opens o.N connections to o.Addr and keeps them open until ctx
// ends. A connection that fails to open (or to echo) fails it, after the
// dials in flight have finished.
func HoldWith(ctx context.Context, d *net.Dialer, o HoldOptions, report func(HoldReport)) error {
	start := time.Now()
	conns := make([]net.Conn, o.N)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next, redialed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range max(o.Parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for dctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= o.N {
					return
				}
				c, err := holdOne(dctx, d, o)
				// On a namespace lab under load a packet can fail locally:
				// veth refuses it when the receiving CPU's input backlog is
				// full, and Linux counts each such failed retransmission
				// (every 500 ms) and gives up with ETIMEDOUT within seconds.
				// The packets never left the host, so open the connection
				// again (at most twice), and say so.
				for try := 0; try < 2 && errors.Is(err, syscall.ETIMEDOUT) && dctx.Err() == nil; try++ {
					redialed.Add(1)
					c, err = holdOne(dctx, d, o)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("connection %d: %w", i, err); cancel() })
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		open := 0
		for _, c := range conns {
			if c != nil {
				open++
			}
		}
		return fmt.Errorf("%d of %d open: %w", open, o.N, firstErr)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	report(HoldReport{Ready: o.N, Redialed: int(redialed.Load()), Millis: time.Since(start).Milliseconds()})
	for check := 1; ; check++ {
		select {
		case <-ctx.Done():
			if o.Echo {
				report(closeHeld(conns, max(o.Parallel, 1)))
				clear(conns)
			}
			return nil
		case <-o.Check:
			if o.Echo {
				report(checkHeld(conns, check, max(o.Parallel, 1)))
			}
		}
	}
}

// holdOne opens one connection for HoldWith; with o.Echo it sets
// SO_LINGER 0 and echoes a byte end to end first.
func holdOne(ctx context.Context, d *net.Dialer, o HoldOptions) (net.Conn, error) {
	c, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil || !o.Echo {
		return c, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		err = tc.SetLinger(0)
	}
	if err == nil {
		err = echoByte(c, 10*time.Second)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// checkHeld echoes one byte on every connection, par at a time.
func checkHeld(conns []net.Conn, check, par int) HoldReport {
	r := HoldReport{Check: check, Errors: map[string]int64{}}
	eachHeld(conns, par, func(c net.Conn) error { return echoByte(c, 10*time.Second) }, func(err error) {
		if err != nil {
			r.Failed++
			r.Errors[classify(err)]++
		} else {
			r.Alive++
		}
	})
	return r
}

// closeHeld closes every connection gracefully, par at a time: shut the
// write side, read the server's EOF, close.
func closeHeld(conns []net.Conn, par int) HoldReport {
	start := time.Now()
	r := HoldReport{Errors: map[string]int64{}}
	eachHeld(conns, par, func(c net.Conn) error { return closeGracefully(c, 10*time.Second) }, func(err error) {
		if err != nil {
			r.CloseFailed++
			r.Errors["close: "+classify(err)]++
		} else {
			r.Closed++
		}
	})
	r.CloseMillis = time.Since(start).Milliseconds()
	return r
}

// eachHeld runs do on every connection, par goroutines taking the next
// one in turn, and passes each result to tally. tally runs under one
// lock, so it may update a report without its own.
func eachHeld(conns []net.Conn, par int, do func(net.Conn) error, tally func(error)) {
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				err := do(conns[i])
				mu.Lock()
				tally(err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func closeGracefully(c net.Conn, timeout time.Duration) error {
	defer c.Close()
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case err == io.EOF && n == 0:
		return nil
	case err == nil || n > 0:
		return fmt.Errorf("read %d bytes after the echo, want EOF", n)
	}
	return fmt.Errorf("wait for EOF: %w", err)
}

// echoByte sends 0x00 and waits for it to come back.
func echoByte(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	var b [1]byte
	if _, err := c.Write(b[:]); err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if b[0] != 0 {
		return fmt.Errorf("echo: got %#x back, want 0x00", b[0])
	}
	return nil
}

// ReuseResult is what Reuse saw.
type ReuseResult struct {
	Port   int      `json:"port"` // the client port every connection used
	OK     int      `json:"ok"`
	Errors []string `json:"errors"`
	// MaxMillis is the slowest connect, from its first attempt: a SYN an
	// appliance drops costs the client's 1 s retransmission timeout.
	MaxMillis int64 `json:"max_ms"`
}

// Reuse makes n HTTP requests with Connection: close to addr in a row, each
// on a new connection from the same client port, and reads each answer to
// the server's close. The server closes first, so every TCP stack that
// terminates the connection on its side keeps the tuple in TIME_WAIT; the
// next connection reuses the tuple at once, as a client short of ports or
// a NAT may.
func Reuse(ctx context.Context, src string, addr string, n int) ReuseResult {
	var r ReuseResult
	d := &net.Dialer{
		// The previous connection's socket may still wait for the
		// server's ACK of its FIN (LAST_ACK), and holds the port till then.
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
	local := &net.TCPAddr{}
	if src != "" {
		local.IP = net.ParseIP(src)
	}
	for range n {
		if ctx.Err() != nil {
			break
		}
		start := time.Now()
		d.LocalAddr = local
		var c net.Conn
		var err error
		for {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err = d.DialContext(cctx, "tcp", addr)
			cancel()
			// EADDRNOTAVAIL: the old socket of the same tuple is not gone
			// yet; try again in a moment.
			if !errors.Is(err, syscall.EADDRNOTAVAIL) || time.Since(start) > 2*time.Second {
				break
			}
			time.Sleep(time.Millisecond)
		}
		r.MaxMillis = max(r.MaxMillis, time.Since(start).Milliseconds())
		if err != nil {
			r.Errors = append(r.Errors, classify(err))
			continue
		}
		if local.Port == 0 {
			local = c.LocalAddr().(*net.TCPAddr)
			r.Port = local.Port
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: reuse\r\nConnection: close\r\n\r\n")
		var b []byte
		if err == nil {
			b, err = io.ReadAll(c)
		}
		c.Close()
		switch {
		case err != nil:
			r.Errors = append(r.Errors, classify(err))
		case !strings.HasPrefix(string(b), "HTTP/1.1 200 "):
			r.Errors = append(r.Errors, fmt.Sprintf("answer %.40q", b))
		default:
			r.OK++
		}
	}
	return r
}
