package peer

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestRelayHalfClose: the relay passes bytes both ways and each side's FIN
// as a half-close, so a server that answers after the client's EOF still
// gets its answer through, and the client then sees EOF.
func TestRelayHalfClose(t *testing.T) {
	server := listen(t)
	go func() {
		c, err := server.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c) // until the client's FIN
		fmt.Fprintf(c, "got %d", n)
	}()
	front := listen(t)
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", server.Addr().String())
		if err != nil {
			c.Close()
			return
		}
		Relay(c.(*net.TCPConn), u.(*net.TCPConn))
	}()
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	payload := bytes.Repeat([]byte("x"), 300_000)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the answer: %v (got %q)", err, got)
	}
	if want := fmt.Sprintf("got %d", len(payload)); string(got) != want {
		t.Fatalf("answer %q, want %q", got, want)
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestRelayCloseEndsBoth: closing one side ends the relay even while the
// other side is idle (how ServeRelay cuts the flows still open at its end).
func TestRelayCloseEndsBoth(t *testing.T) {
	server := listen(t)
	idle := make(chan net.Conn, 1)
	go func() {
		c, err := server.Accept()
		if err == nil {
			idle <- c // never writes
		}
	}()
	front := listen(t)
	ended := make(chan struct{})
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		accepted <- c
		u, err := net.Dial("tcp", server.Addr().String())
		if err != nil {
			c.Close()
			return
		}
		Relay(c.(*net.TCPConn), u.(*net.TCPConn))
		close(ended)
	}()
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-idle
	defer s.Close()
	(<-accepted).Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("Relay still running 5 s after one of its conns was closed")
	}
}
