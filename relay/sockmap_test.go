package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// sockMapPair is client ↔ (a, relay, b) ↔ server over loopback, the relay
// counting what each Half reports into up and down. A Half's error fails
// the test.
func sockMapPair(t *testing.T, sm *SockMap, up, down *atomic.Int64, serve func(net.Conn)) net.Conn {
	return sockMapPairEnds(t, sm, up, down, serve, func(dir string, err error) {
		if err != nil {
			t.Errorf("%s: %v", dir, err)
		}
	})
}

// sockMapPairEnds is sockMapPair that gives each Half's end to halfEnd
// ("up" or "down", and its error).
func sockMapPairEnds(t *testing.T, sm *SockMap, up, down *atomic.Int64, serve func(net.Conn), halfEnd func(dir string, err error)) net.Conn {
	t.Helper()
	srvLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srvLn.Close() })
	go func() {
		c, err := srvLn.Accept()
		if err == nil {
			serve(c)
		}
	}()
	relayLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relayLn.Close() })
	go func() {
		a, err := relayLn.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp4", srvLn.Addr().String())
		if err != nil {
			a.Close()
			return
		}
		ac, bc := a.(*net.TCPConn), b.(*net.TCPConn)
		defer ac.Close()
		defer bc.Close()
		p, err := sm.Pair(ac, bc)
		if err != nil {
			t.Errorf("sockmap pair: %v", err)
			return
		}
		defer p.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			halfEnd("down", p.Half(ac, bc, func(n int) { down.Add(int64(n)) }))
		}()
		halfEnd("up", p.Half(bc, ac, func(n int) { up.Add(int64(n)) }))
		<-done
	}()
	c, err := net.Dial("tcp4", relayLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newTestSockMap(t *testing.T) *SockMap {
	if os.Geteuid() != 0 {
		t.Skip("sockmap needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	sm, err := NewSockMap(16)
	if err != nil {
		t.Skipf("no eBPF sockmap here: %v", err)
	}
	t.Cleanup(func() { sm.Close() })
	return sm
}

// 32 MiB each way through the sockmap, sent at once (some of it queued
// before the sockets enter the map), arrive intact and in order; the
// half-close passes after the last byte.
func TestSockMapRelayIntact(t *testing.T) {
	sm := newTestSockMap(t)
	const n = 32 << 20
	up := make([]byte, n)
	down := make([]byte, n)
	rand.Read(up)
	rand.Read(down)
	got := make(chan [32]byte, 1)
	var upN, downN atomic.Int64
	c := sockMapPair(t, sm, &upN, &downN, func(s net.Conn) {
		defer s.Close()
		go func() { s.Write(down); s.(*net.TCPConn).CloseWrite() }()
		h := sha256.New()
		io.Copy(h, s)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	})
	c.SetDeadline(time.Now().Add(60 * time.Second))
	go func() { c.Write(up); c.(*net.TCPConn).CloseWrite() }()
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if !bytes.Equal(h.Sum(nil), sha256Of(down)) {
		t.Errorf("down: the client got other bytes than the server sent")
	}
	select {
	case s := <-got:
		if !bytes.Equal(s[:], sha256Of(up)) {
			t.Errorf("up: the server got other bytes than the client sent")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server never saw the client's FIN")
	}
	if sm.Pairs.Load() != 1 {
		t.Errorf("pairs %d", sm.Pairs.Load())
	}
	time.Sleep(100 * time.Millisecond) // the up Half reports after the server's EOF
	if upN.Load() != n || downN.Load() != n {
		t.Errorf("counted %d up and %d down, want %d each way", upN.Load(), downN.Load(), n)
	}
	t.Logf("bytes the relay forwarded itself: %d of %d", sm.Fallback.Load(), 2*n)
}

// A server that speaks first: its banner reaches the client.
func TestSockMapRelayServerFirst(t *testing.T) {
	sm := newTestSockMap(t)
	var upN, downN atomic.Int64
	c := sockMapPair(t, sm, &upN, &downN, func(s net.Conn) {
		defer s.Close()
		s.Write([]byte("220 hello\r\n"))
		io.Copy(io.Discard, s)
	})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "220 hello\r\n" {
		t.Fatalf("banner: %q %v", buf[:n], err)
	}
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// A client that reads slowly while the server has sent everything and
// closed: the FIN waits for the bytes held in the kernel's psock queue,
// and every byte arrives.
func TestSockMapRelaySlowReader(t *testing.T) {
	sm := newTestSockMap(t)
	const n = 4 << 20
	down := make([]byte, n)
	rand.Read(down)
	var upN, downN atomic.Int64
	c := sockMapPair(t, sm, &upN, &downN, func(s net.Conn) {
		defer s.Close()
		s.Write(down)
	})
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		k, err := c.Read(buf)
		h.Write(buf[:k])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // ~3 MiB/s at most
	}
	if !bytes.Equal(h.Sum(nil), sha256Of(down)) {
		t.Errorf("the slow client got other bytes than the server sent")
	}
}

// A client that half-closes and then resets while the server still
// streams: the down Half reads nothing itself (the kernel redirects, then
// drops), so it must notice the reset client socket and end with a reset
// within a tick or two, not wait for the server or the idle timeout.
func TestSockMapRelayClientResetAfterFIN(t *testing.T) {
	sm := newTestSockMap(t)
	var upN, downN atomic.Int64
	ends := make(chan string, 2)
	downErr := make(chan error, 1)
	chunk := make([]byte, 64<<10)
	c := sockMapPairEnds(t, sm, &upN, &downN, func(s net.Conn) {
		defer s.Close()
		go io.Copy(io.Discard, s)
		for {
			if _, err := s.Write(chunk); err != nil {
				return
			}
		}
	}, func(dir string, err error) {
		ends <- dir
		if dir == "down" {
			downErr <- err
		}
	})
	buf := make([]byte, 64<<10)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case dir := <-ends:
		if dir != "up" {
			t.Fatalf("the %s Half ended first", dir)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the up Half did not end at the client's FIN")
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	start := time.Now()
	select {
	case err := <-downErr:
		if !isReset(err) {
			t.Errorf("down Half ended with %v, want a reset", err)
		}
		t.Logf("down Half ended %v after the client's reset: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("the down Half still runs 5 s after its client socket was reset")
	}
}
