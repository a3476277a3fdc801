package netstack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// spliceHandler relays with io.Copy and half-close, and records flows.
type spliceHandler struct {
	admit Admission
	mu    sync.Mutex
	flows []Flow
}

func (h *spliceHandler) Admit(f *Flow) Admission {
	h.mu.Lock()
	h.flows = append(h.flows, *f)
	h.mu.Unlock()
	return h.admit
}

func (h *spliceHandler) Serve(f *Flow, c, s Conn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(c, s)
		c.CloseWrite()
	}()
	io.Copy(s, c)
	s.CloseWrite()
	wg.Wait()
	c.Close()
	s.Close()
}

type family struct {
	name           string
	client, server netip.Addr
}

var families = []family{
	{"ipv4", clientV4, serverV4},
	{"ipv6", clientV6, serverV6},
}

var modes = []struct {
	name string
	vnet bool
}{
	{"plain", false},
	{"vnethdr", true},
}

// forEach runs fn for IPv4 and IPv6, each with and without virtio_net_hdr.
func forEach(t *testing.T, fn func(t *testing.T, fam family, vnet bool)) {
	for _, m := range modes {
		for _, fam := range families {
			t.Run(m.name+"/"+fam.name, func(t *testing.T) { fn(t, fam, m.vnet) })
		}
	}
}

func TestRelayPreservesClientAddressAndBytes(t *testing.T) {
	// writers 0: each packet written by its sender; 2: behind the FIFO
	// queue (Options.TUNWriters), as netward run does by default.
	for _, writers := range []int{0, 2} {
		t.Run("writers"+strconv.Itoa(writers), func(t *testing.T) { testRelayPreservesClientAddressAndBytes(t, writers) })
	}
}

func testRelayPreservesClientAddressAndBytes(t *testing.T, writers int) {
	forEach(t, func(t *testing.T, fam family, vnet bool) {
		h := &spliceHandler{}
		l := newLab(t, labOptions{vnet: vnet, handler: h, opts: func(o *Options) { o.TUNWriters, o.TUNDirectMax = writers, DefaultTUNDirectMax }})
		ln := l.listen(fam.server, 80)
		const size = 4 << 20
		payload := make([]byte, size)
		rand.Read(payload)
		want := sha256.Sum256(payload)

		type result struct {
			remote netip.AddrPort
			sum    [32]byte
			err    error
		}
		got := make(chan result, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- result{err: err}
				return
			}
			defer c.Close()
			hash := sha256.New()
			_, err = io.Copy(hash, c) // until the client's FIN (half-close)
			var r result
			r.remote = c.RemoteAddr().(*net.TCPAddr).AddrPort()
			copy(r.sum[:], hash.Sum(nil))
			if err == nil {
				_, err = c.Write(payload) // answer after the client's FIN
			}
			r.err = err
			got <- r
		}()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := l.dial(ctx, netip.AddrPortFrom(fam.server, 80))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
		back := sha256.New()
		n, err := io.Copy(back, c)
		if err != nil {
			t.Fatalf("read back: %v", err)
		}
		r := <-got
		if r.err != nil {
			t.Fatalf("server: %v", r.err)
		}
		if r.remote != local {
			t.Errorf("server saw client %v, want %v (the client's own address)", r.remote, local)
		}
		if r.sum != want {
			t.Errorf("server got different bytes than the client sent")
		}
		if n != size || !bytes.Equal(back.Sum(nil), want[:]) {
			t.Errorf("client got %d bytes back, different from the %d sent", n, size)
		}
		h.mu.Lock()
		flows := h.flows
		h.mu.Unlock()
		if len(flows) != 1 || flows[0].Client != local || flows[0].Server != netip.AddrPortFrom(fam.server, 80) || flows[0].ID == 0 {
			t.Errorf("flows = %+v, want one %v -> %v:80", flows, local, fam.server)
		}
		if vnet && l.net.Stats().TxGSOPackets.Load() == 0 {
			t.Errorf("no GSO packet written with vnet_hdr on")
		}
		if l.net.Stats().RxBadChecksum.Load() != 0 {
			t.Errorf("RxBadChecksum = %d, want 0", l.net.Stats().RxBadChecksum.Load())
		}
	})
}

func TestClosedPortResets(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, vnet bool) {
		l := newLab(t, labOptions{vnet: vnet, handler: &spliceHandler{}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := l.dial(ctx, netip.AddrPortFrom(fam.server, 81))
		if err == nil || ctx.Err() != nil {
			t.Fatalf("dial to a closed port: err = %v after %v, want connection refused", err, time.Since(start))
		}
		if got := l.net.Stats().FlowsRefused.Load(); got != 1 {
			t.Errorf("FlowsRefused = %d, want 1", got)
		}
	})
}

func TestAdmission(t *testing.T) {
	tests := []struct {
		name    string
		admit   Admission
		refused bool // client sees RST (else silence)
		stat    func(*Stats) uint64
	}{
		{"reset", AdmitReset, true, func(s *Stats) uint64 { return s.FlowsReset.Load() }},
		{"drop", AdmitDrop, false, func(s *Stats) uint64 { return s.FlowsDropped.Load() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLab(t, labOptions{handler: &spliceHandler{admit: tt.admit}})
			ln := l.listen(serverV4, 80)
			var accepted atomic.Bool
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted.Store(true)
					c.Close()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			_, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 80))
			if err == nil {
				t.Fatalf("dial succeeded; want it refused by Admit")
			}
			if timedOut := ctx.Err() != nil; timedOut == tt.refused {
				t.Errorf("dial error %v (timed out %v), want refused=%v", err, timedOut, tt.refused)
			}
			if accepted.Load() {
				t.Errorf("server accepted a connection; nothing should go upstream")
			}
			if got := tt.stat(l.net.Stats()); got == 0 {
				t.Errorf("counter for %s not incremented", tt.name)
			}
			if got := l.net.Stats().FlowsAdmitted.Load(); got != 0 {
				t.Errorf("FlowsAdmitted = %d, want 0", got)
			}
		})
	}
}

func TestServerFirstBanner(t *testing.T) {
	forEach(t, func(t *testing.T, fam family, vnet bool) {
		l := newLab(t, labOptions{vnet: vnet, handler: &spliceHandler{}})
		ln := l.listen(fam.server, 22)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-test\r\n"))
			io.Copy(io.Discard, c)
			c.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := l.dial(ctx, netip.AddrPortFrom(fam.server, 22))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, err := c.Read(buf) // the client sends nothing first
		if err != nil || string(buf[:n]) != "SSH-2.0-test\r\n" {
			t.Fatalf("banner = %q, %v", buf[:n], err)
		}
	})
}

func TestUnreachableStaysSilent(t *testing.T) {
	// 192.0.2.99 has no stack behind it: the wire drops the SYN, so the
	// dial times out and the client must see silence, not an RST.
	l := newLab(t, labOptions{handler: &spliceHandler{}, opts: func(o *Options) { o.DialTimeout = 200 * time.Millisecond }})
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, err := l.dial(ctx, netip.MustParseAddrPort("192.0.2.99:80"))
	if err == nil || ctx.Err() == nil {
		t.Fatalf("dial: %v before the deadline; want a timeout (no RST)", err)
	}
	waitFor(t, "FlowsUnreachable", func() bool { return l.net.Stats().FlowsUnreachable.Load() >= 1 })
}

func TestShutdownClosesFlows(t *testing.T) {
	h := &spliceHandler{}
	l := newLab(t, labOptions{handler: h})
	ln := l.listen(serverV4, 80)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var conns []net.Conn
	for range 5 {
		c, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 80))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, c)
	}
	waitFor(t, "5 active flows", func() bool { return l.net.Stats().FlowsActive.Load() == 5 })
	if err := l.net.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := l.net.Stats().FlowsActive.Load(); got != 0 {
		t.Errorf("FlowsActive after Shutdown = %d", got)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) {
			t.Errorf("client conn after Shutdown: read %v, want a reset", err)
		}
		c.Close()
	}
	// New SYNs get no answer after Shutdown.
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer dcancel()
	if _, err := l.dial(dctx, netip.AddrPortFrom(serverV4, 80)); err == nil {
		t.Errorf("dial after Shutdown succeeded")
	}
}

func TestClientPortReuseAfterClose(t *testing.T) {
	// The same client port again right after a flow closed: gVisor's
	// TIME_WAIT must not swallow the new SYN (datapath-notes.md).
	l := newLab(t, labOptions{handler: &spliceHandler{}})
	l.serveAndClose(serverV4, 80, "hi")
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := dialFrom(ctx, l, netip.AddrPortFrom(clientV4, 40000), netip.AddrPortFrom(serverV4, 80))
		if err != nil {
			cancel()
			t.Fatalf("round %d: dial from the same port: %v", i, err)
		}
		b, err := io.ReadAll(c)
		c.Close()
		cancel()
		if string(b) != "hi" {
			t.Fatalf("round %d: read %q, %v", i, b, err)
		}
		time.Sleep(3 * DefaultTimeWait)
	}
}

func TestPeerFinished(t *testing.T) {
	got := make(chan []bool, 1)
	h := &serveFunc{serve: func(f *Flow, c, s Conn) {
		defer c.Close()
		defer s.Close()
		pf := s.(interface{ PeerFinished() bool })
		var seen []bool
		buf := make([]byte, 2)
		s.SetDeadline(time.Now().Add(10 * time.Second)) // never hang the test binary
		io.ReadFull(s, buf)                             // "hi"; the server has not closed yet
		seen = append(seen, pf.PeerFinished())
		s.Write([]byte("go")) // tell the server to close
		deadline := time.Now().Add(5 * time.Second)
		for !pf.PeerFinished() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		seen = append(seen, pf.PeerFinished())
		c.Write([]byte("ok"))
		got <- seen
	}}
	l := newLab(t, labOptions{handler: h})
	ln := l.listen(serverV4, 80)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hi"))
		buf := make([]byte, 2)
		io.ReadFull(c, buf)
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.ReadFull(c, make([]byte, 2))
	select {
	case seen := <-got:
		if seen[0] || !seen[1] {
			t.Errorf("PeerFinished before/after the server's FIN = %v, want [false true]", seen)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not finish")
	}
}

// serveFunc is a Handler that admits all and serves with a function.
type serveFunc struct{ serve func(f *Flow, c, s Conn) }

func (serveFunc) Admit(*Flow) Admission       { return AdmitAccept }
func (h *serveFunc) Serve(f *Flow, c, s Conn) { h.serve(f, c, s) }

// With the kernel upstream leg out of file descriptors, the flow still
// goes through, on the gVisor leg, and is counted.
func TestUpstreamKernelFallsBackWithoutFiles(t *testing.T) {
	var kernelDials atomic.Int64
	l := newLab(t, labOptions{vnet: true, handler: &spliceHandler{}, opts: func(o *Options) {
		o.UpstreamKernel = true
		o.wrapKernelDial = func(func(context.Context, *Flow) (Conn, error)) func(context.Context, *Flow) (Conn, error) {
			return func(context.Context, *Flow) (Conn, error) {
				kernelDials.Add(1)
				return nil, fmt.Errorf("netstack: connect: socket: %w", syscall.EMFILE)
			}
		}
	}})
	ln := l.listen(serverV4, 22)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello\n"))
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 22))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); string(b) != "hello\n" {
		t.Fatalf("read %q, %v", b, err)
	}
	if kernelDials.Load() != 1 || l.net.Stats().UpstreamFallbacks.Load() != 1 {
		t.Errorf("kernel dials %d, fallbacks %d; want 1 and 1", kernelDials.Load(), l.net.Stats().UpstreamFallbacks.Load())
	}
}

// Past MaxKernelSockets open kernel upstream sockets, a new flow takes the
// gVisor leg (counted); once a kernel flow ends its slot is free again.
func TestUpstreamKernelCap(t *testing.T) {
	// The "kernel" server: a loopback listener that says so.
	kln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer kln.Close()
	go func() {
		for {
			c, err := kln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("kernel\n"))
			go func() { io.Copy(io.Discard, c); c.Close() }() // held until the client closes
		}
	}()
	var kernelDials atomic.Int64
	l := newLab(t, labOptions{vnet: true, handler: &spliceHandler{}, opts: func(o *Options) {
		o.UpstreamKernel = true
		o.MaxKernelSockets = 1
		o.wrapKernelDial = func(func(context.Context, *Flow) (Conn, error)) func(context.Context, *Flow) (Conn, error) {
			return func(ctx context.Context, _ *Flow) (Conn, error) {
				kernelDials.Add(1)
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", kln.Addr().String())
				if err != nil {
					return nil, err
				}
				return newKernelConn(c.(*net.TCPConn))
			}
		}
	}})
	ln := l.listen(serverV4, 22)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("gvisor\n"))
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	open := func() (net.Conn, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 22))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return c, line
	}
	first, leg := open()
	if leg != "kernel\n" {
		t.Fatalf("first flow went by %q, want the kernel leg", leg)
	}
	second, leg := open()
	if leg != "gvisor\n" {
		t.Errorf("second flow, with the one kernel socket in use, went by %q, want the gVisor leg", leg)
	}
	second.Close()
	first.Close()
	waitFor(t, "the kernel socket's slot to be released", func() bool { return l.net.kernelSockets.Load() == 0 })
	third, leg := open()
	defer third.Close()
	if leg != "kernel\n" {
		t.Errorf("third flow, after the first closed, went by %q, want the kernel leg", leg)
	}
	if kernelDials.Load() != 2 || l.net.Stats().UpstreamFallbacks.Load() != 1 {
		t.Errorf("kernel dials %d, fallbacks %d; want 2 and 1", kernelDials.Load(), l.net.Stats().UpstreamFallbacks.Load())
	}
}

// Shutdown ends a kernel dial still waiting for the server: its context
// (the flow's shard's dialCtx) is cancelled, and Shutdown does not wait
// for the dial timeout.
func TestShutdownAbortsKernelDial(t *testing.T) {
	dialing := make(chan struct{})
	aborted := make(chan error, 1)
	l := newLab(t, labOptions{vnet: true, handler: &spliceHandler{}, opts: func(o *Options) {
		o.UpstreamKernel = true
		o.DialTimeout = time.Minute
		o.wrapKernelDial = func(func(context.Context, *Flow) (Conn, error)) func(context.Context, *Flow) (Conn, error) {
			return func(ctx context.Context, _ *Flow) (Conn, error) {
				close(dialing)
				<-ctx.Done()
				aborted <- ctx.Err()
				return nil, ctx.Err()
			}
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go l.dial(ctx, netip.AddrPortFrom(serverV4, 22)) // fails once netward stops
	select {
	case <-dialing:
	case <-ctx.Done():
		t.Fatal("no kernel dial started")
	}
	start := time.Now()
	if err := l.net.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-aborted:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("dial context ended with %v, want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown left the kernel dial waiting")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown took %v with a dial pending", d)
	}
}
