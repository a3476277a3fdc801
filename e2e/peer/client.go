package peer

import (
	"bufio"
	"context"
	"crypto/sha256"
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
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var ok, bad atomic.Int64
	var mu sync.Mutex
	kinds := map[string]int64{}
	end := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				resp, err := cl.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
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

// Hold opens n idle connections to the echo server and keeps them open
// until ctx ends; ready is called once all are up.
func Hold(ctx context.Context, d *net.Dialer, addr string, n int, ready func(open int)) error {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("after %d connections: %w", len(conns), err)
		}
		conns = append(conns, c)
	}
	ready(len(conns))
	<-ctx.Done()
	return nil
}
