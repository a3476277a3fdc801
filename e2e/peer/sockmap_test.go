package peer

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// pipePair is client ↔ (a, relay, b) ↔ server over loopback.
func sockMapPair(t *testing.T, sm *SockMap, serve func(net.Conn)) net.Conn {
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
		if err := sm.Relay(a.(*net.TCPConn), b.(*net.TCPConn)); err != nil {
			t.Errorf("sockmap relay: %v", err)
		}
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
	c := sockMapPair(t, sm, func(s net.Conn) {
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
	t.Logf("bytes the relay forwarded itself: %d of %d", sm.Fallback.Load(), 2*n)
}

// A server that speaks first: its banner reaches the client.
func TestSockMapRelayServerFirst(t *testing.T) {
	sm := newTestSockMap(t)
	c := sockMapPair(t, sm, func(s net.Conn) {
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
