package relay

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/netstack"
)

// tcpPair returns two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	type res struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- res{c, err}
	}()
	a, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// splice sets up  clientApp ─ client leg │Guard, no rules│ server leg ─ serverApp
// and returns the apps' ends and the flow's Result, read from the Guard's
// per-flow log line when Serve returns.
func splice(t testing.TB) (clientApp, serverApp *net.TCPConn, done <-chan Result) {
	clientApp, clientLeg := tcpPair(t)
	serverLeg, serverApp := tcpPair(t)
	var logBuf bytes.Buffer
	g := &Guard{Log: slog.New(slog.NewJSONHandler(&logBuf, nil)), Limits: Limits{InspectTimeout: 50 * time.Millisecond}}
	f := &netstack.Flow{ID: 1, Client: netip.MustParseAddrPort("192.0.2.10:40000"),
		Server: netip.MustParseAddrPort("192.0.2.20:7"), Start: time.Now()}
	ch := make(chan Result, 1)
	go func() {
		g.Serve(f, clientLeg, serverLeg)
		var line struct {
			Up   int64  `json:"bytes_up"`
			Down int64  `json:"bytes_down"`
			End  string `json:"end"`
		}
		if err := json.Unmarshal(logBuf.Bytes(), &line); err != nil {
			t.Errorf("flow line %q: %v", logBuf.String(), err)
		}
		r := Result{Up: line.Up, Down: line.Down}
		for e := EndClosed; e <= EndError; e++ {
			if e.String() == line.End {
				r.End = e
			}
		}
		ch <- r
	}()
	return clientApp, serverApp, ch
}

func result(t *testing.T, ch <-chan Result) Result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	return Result{}
}

func TestSpliceHalfClose(t *testing.T) {
	c, s, done := splice(t)
	up := make([]byte, 1<<20)
	rand.Read(up)
	go func() {
		c.Write(up)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(s) // ends at the client's FIN
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	if !bytes.Equal(got, up) {
		t.Fatalf("server got %d bytes, want the %d sent", len(got), len(up))
	}
	// The other direction still works after the client's half-close.
	s.Write([]byte("reply"))
	s.CloseWrite()
	back, err := io.ReadAll(c)
	if err != nil || string(back) != "reply" {
		t.Fatalf("client read %q, %v", back, err)
	}
	r := result(t, done)
	if r.End != EndClosed || r.Up != int64(len(up)) || r.Down != 5 {
		t.Errorf("result = %+v, want closed, up %d, down 5", r, len(up))
	}
}

func TestSpliceReset(t *testing.T) {
	tests := []struct {
		name    string
		resetBy string // "client" or "server"
		want    End
	}{
		{"client resets", "client", EndClientReset},
		{"server resets", "server", EndServerReset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s, done := splice(t)
			resetter, other := c, s
			if tt.resetBy == "server" {
				resetter, other = s, c
			}
			resetter.Write([]byte("x"))
			buf := make([]byte, 1)
			io.ReadFull(other, buf)
			resetter.SetLinger(0)
			resetter.Close()
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := other.Read(buf)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("other side read: %v, want ECONNRESET (reset passed on)", err)
			}
			if r := result(t, done); r.End != tt.want {
				t.Errorf("End = %v, want %v", r.End, tt.want)
			}
		})
	}
}

func TestEndString(t *testing.T) {
	for e, want := range map[End]string{EndClosed: "closed", EndClientReset: "client-reset", EndServerReset: "server-reset", EndError: "error", End(9): "end(9)"} {
		if got := e.String(); got != want {
			t.Errorf("End(%d).String() = %q, want %q", e, got, want)
		}
	}
}

var _ netstack.Conn = (*net.TCPConn)(nil)

// BenchmarkSplice measures relaying one direction through a Guard over
// loopback TCP: the per-byte cost of the copy loop (allocs/op should be 0
// per chunk; the per-flow setup is not in the loop).
func BenchmarkSplice(b *testing.B) {
	c, s, done := splice(b)
	chunk := make([]byte, 64<<10)
	go io.Copy(io.Discard, s)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.CloseWrite()
	s.CloseWrite()
	<-done
}
