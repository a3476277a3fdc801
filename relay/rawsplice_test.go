package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// client → (a, spliceHalf, b) → server: 48 MiB arrive intact, the FIN
// passes behind them, and the count is exact.
func TestSpliceHalfRawIntact(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	const n = 48 << 20
	data := make([]byte, n)
	rand.Read(data)
	var counted atomic.Int64
	done := make(chan *halfError, 1)
	go func() { done <- spliceHalf(b, a, true, func(k int) { counted.Add(int64(k)) }) }()
	go func() { client.Write(data); client.CloseWrite() }()
	server.SetReadDeadline(time.Now().Add(30 * time.Second))
	h := sha256.New()
	if _, err := io.Copy(h, server); err != nil {
		t.Fatalf("server read: %v", err)
	}
	sum := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Error("the server got other bytes than the client sent")
	}
	if err := <-done; err != nil {
		t.Fatalf("spliceHalf: %v", err)
	}
	if counted.Load() != n {
		t.Errorf("counted %d bytes, want %d", counted.Load(), n)
	}
}

// A reset destination is a write error; a reset source a read error.
func TestSpliceHalfRawErrorSide(t *testing.T) {
	for _, resetDst := range []bool{true, false} {
		client, a := tcpPair(t)
		b, server := tcpPair(t)
		done := make(chan *halfError, 1)
		go func() { done <- spliceHalf(b, a, true, func(int) {}) }()
		client.Write([]byte("hello"))
		buf := make([]byte, 5)
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatalf("first bytes: %v", err)
		}
		victim := client
		if resetDst {
			victim = server
		}
		victim.SetLinger(0)
		victim.Close()
		if resetDst {
			// The next bytes meet the reset socket.
			for range 50 {
				if _, err := client.Write(make([]byte, 64<<10)); err != nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("reset dst %v: no error", resetDst)
			}
			if err.read == resetDst {
				t.Errorf("reset dst %v: error %v says read=%v", resetDst, err, err.read)
			}
			if !isReset(err.err) {
				t.Errorf("reset dst %v: %v is not a reset", resetDst, err.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("reset dst %v: spliceHalf did not end", resetDst)
		}
	}
}
