package netstack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkFlow is the per-flow path through netward in the in-memory lab:
// SYN, Admit, upstream dial, both handshakes, 100 bytes each way, close.
// The client and server stacks run in the same process, so ns/op is an
// upper bound; allocs/op shows what one flow costs the garbage collector.
func BenchmarkFlow(b *testing.B) {
	l := newLab(b, labOptions{handler: &spliceHandler{}})
	ln := l.listen(serverV4, 80)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 100)
				io.ReadFull(c, buf)
				c.Write(buf)
				c.Close()
			}()
		}
	}()
	msg := make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := l.dial(ctx, netip.AddrPortFrom(serverV4, 80))
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		c.Write(msg)
		io.ReadFull(c, msg)
		c.Close()
		cancel()
	}
}
