package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// returnsWithin fails the test if fn does not return within d.
func returnsWithin(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// blocks fails the test if fn returns within d; it returns a channel
// closed when fn eventually returns.
func blocks(t *testing.T, d time.Duration, what string, fn func()) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
		t.Fatalf("%s returned; want it to block", what)
	case <-time.After(d):
	}
	return done
}

func TestTCPConnWaitReadable(t *testing.T) {
	conns := make(chan [2]Conn, 1)
	release := make(chan struct{})
	h := &serveFunc{serve: func(f *Flow, c, s Conn) {
		conns <- [2]Conn{c, s}
		<-release
		c.Close()
		s.Close()
	}}
	l := newLab(t, labOptions{handler: h})
	defer close(release)
	ln := l.listen(serverV4, 80)
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	legs := <-conns
	leg := legs[0].(*tcpConn)

	woke := blocks(t, 100*time.Millisecond, "WaitReadable on an idle leg", func() { leg.WaitReadable() })
	client.Write([]byte("x"))
	returnsWithin(t, 2*time.Second, "WaitReadable after data", func() { <-woke })
	returnsWithin(t, time.Second, "WaitReadable with data pending", func() { leg.WaitReadable() })
	leg.Read(make([]byte, 1))

	woke = blocks(t, 100*time.Millisecond, "WaitReadable on a drained leg", func() { leg.WaitReadable() })
	leg.Close()
	returnsWithin(t, 2*time.Second, "WaitReadable after Close", func() { <-woke })
}

// kernelLoopbackPair is a kernel leg on loopback and its peer, both closed
// when the test ends.
func kernelLoopbackPair(t *testing.T) (*kernelConn, *net.TCPConn) {
	t.Helper()
	raw, peer := loopbackTCPPair(t)
	k, err := newKernelConn(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k, peer
}

// loopbackTCPPair is a TCP connection on 127.0.0.1: its dialled end and
// its accepted end, both closed when the test ends; the listener is gone
// already. Sockets are made in the calling goroutine (a test that locked
// its thread into a namespace gets them there).
func loopbackTCPPair(t *testing.T) (dialled, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String()) // the backlog completes it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestKernelConnPeerFinished(t *testing.T) {
	k, peer := kernelLoopbackPair(t)
	peer.Write([]byte("abc"))
	k.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := k.Read(make([]byte, 1)); err != nil {
		t.Fatalf("read: %v", err)
	}
	if k.PeerFinished() {
		t.Errorf("PeerFinished with 2 bytes unread")
	}
	k.Read(make([]byte, 2))
	if k.PeerFinished() {
		t.Errorf("PeerFinished on a drained socket without FIN")
	}
	peer.Close() // FIN
	deadline := time.Now().Add(2 * time.Second)
	for !k.PeerFinished() {
		if time.Now().After(deadline) {
			t.Fatal("PeerFinished false after the peer's FIN")
		}
		time.Sleep(time.Millisecond)
	}
	k.Close()
	if k.PeerFinished() {
		t.Errorf("PeerFinished true on a closed conn")
	}
}

// countingPool is a BufferPool of 8-byte buffers that counts what is lent.
type countingPool struct{ out atomic.Int64 }

func (p *countingPool) Get() *[]byte {
	p.out.Add(1)
	b := make([]byte, 8)
	return &b
}

func (p *countingPool) Put(*[]byte) { p.out.Add(-1) }

// TestKernelConnReadPooled: a read that waits holds no buffer, returns the
// bytes in one, ends in io.EOF after the peer's FIN, and honours read
// deadlines and resets, every time with the pool's buffers given back.
func TestKernelConnReadPooled(t *testing.T) {
	var pool countingPool
	k, peer := kernelLoopbackPair(t)
	type result struct {
		bp  *[]byte
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		bp, n, err := k.ReadPooled(&pool)
		done <- result{bp, n, err}
	}()
	time.Sleep(50 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("ReadPooled on an idle socket returned %d, %v", r.n, r.err)
	default:
	}
	if n := pool.out.Load(); n != 0 {
		t.Errorf("a waiting ReadPooled holds %d buffers, want 0", n)
	}
	peer.Write([]byte("0123456789"))
	var r result
	returnsWithin(t, 2*time.Second, "ReadPooled after data", func() { r = <-done })
	if r.err != nil || r.bp == nil || string((*r.bp)[:r.n]) != "01234567" {
		t.Fatalf("ReadPooled = %v, %d, %v; want 8 bytes 01234567", r.bp != nil, r.n, r.err)
	}
	pool.Put(r.bp)
	bp, n, err := k.ReadPooled(&pool) // the rest, already there
	if err != nil || string((*bp)[:n]) != "89" {
		t.Fatalf("second ReadPooled = %d, %v; want 89", n, err)
	}
	pool.Put(bp)
	peer.CloseWrite()
	if bp, n, err = k.ReadPooled(&pool); bp != nil || n != 0 || err != io.EOF {
		t.Errorf("ReadPooled after FIN = %v, %d, %v; want nil, 0, io.EOF", bp != nil, n, err)
	}

	k2, peer2 := kernelLoopbackPair(t)
	k2.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if bp, _, err = k2.ReadPooled(&pool); bp != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadPooled past the deadline = %v, %v; want os.ErrDeadlineExceeded", bp != nil, err)
	}
	k2.SetReadDeadline(time.Time{})
	peer2.SetLinger(0)
	peer2.Close() // RST
	if bp, _, err = k2.ReadPooled(&pool); bp != nil || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("ReadPooled after a reset = %v, %v; want ECONNRESET", bp != nil, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) {
		t.Errorf("ReadPooled's error %v is not a net.Error", err)
	}
	k2.Close()
	if bp, _, err = k2.ReadPooled(&pool); bp != nil || !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadPooled on a closed conn = %v, %v; want net.ErrClosed", bp != nil, err)
	}
	if n := pool.out.Load(); n != 0 {
		t.Errorf("%d buffers not given back to the pool", n)
	}
}

// TestDialKernelSocketOptions: the upstream socket is transparent, sends
// without Nagle delays, and has no keep-alive probes (they would cost four
// setsockopt calls per connection; idle flows end by the relay's timeout).
// On loopback; IP_TRANSPARENT needs root (CAP_NET_ADMIN).
func TestDialKernelSocketOptions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("IP_TRANSPARENT needs root")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	s := &Stack{}
	f := &Flow{Client: netip.MustParseAddrPort("127.0.0.1:0"), Server: ln.Addr().(*net.TCPAddr).AddrPort()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.dialKernel(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*kernelConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"IP_TRANSPARENT", unix.SOL_IP, unix.IP_TRANSPARENT, 1},
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0},
	} {
		var got int
		var gerr error
		rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) })
		if gerr != nil || got != o.want {
			t.Errorf("%s = %d (%v), want %d", o.name, got, gerr, o.want)
		}
	}
}

// Every flow's Read ends in an error (io.EOF at least), so classify must
// not allocate; and it must still turn gonet's reset into ECONNRESET.
func TestClassify(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: errors.New((&tcpip.ErrConnectionReset{}).String())}
	if err := classify(reset); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("classify(reset) = %v, want ECONNRESET", err)
	}
	if err := classify(io.EOF); err != io.EOF {
		t.Errorf("classify(io.EOF) = %v", err)
	}
	other := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("something else")}
	if allocs := testing.AllocsPerRun(100, func() {
		_ = classify(io.EOF)
		_ = classify(other)
	}); allocs != 0 {
		t.Errorf("classify allocates %.0f times per call pair, want 0", allocs)
	}
}
