package netstack

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gatedLink is a LinkWriter that records the acknowledgement number of
// each packet it writes, in order. While gate is open (not closed) a
// write waits for it, up to 3 s, so the test decides when the queue
// drains; a direct write that should not be one fails the test instead
// of hanging it.
type gatedLink struct {
	mu   sync.Mutex
	acks []uint32
	gate chan struct{}
}

func (l *gatedLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	l.mu.Lock()
	gate := l.gate
	l.mu.Unlock()
	select {
	case <-gate:
	case <-time.After(3 * time.Second):
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, pkt := range pkts.AsSlice() {
		l.acks = append(l.acks, header.TCP(pkt.TransportHeader().Slice()).AckNumber())
	}
	return pkts.Len(), nil
}

func (l *gatedLink) setGate(c chan struct{}) {
	l.mu.Lock()
	l.gate = c
	l.mu.Unlock()
}

func (l *gatedLink) written() []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.acks)
}

func TestTxQueueDirect(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.2:80")
	dst := netip.MustParseAddrPort("198.51.100.7:40000")
	data := func(ack uint32, n int) *stack.PacketBuffer {
		return outPacket(src, dst, header.TCPFlagAck|header.TCPFlagPsh, ack, n)
	}
	open := make(chan struct{})
	close(open)
	link := &gatedLink{gate: open}
	var stats Stats
	q := newTxQueue(link, 1, 16, DefaultTUNDirectMax, &stats)
	defer q.Close()
	// write writes pkt and checks whether its sender wrote it (TxDirect).
	write := func(pkt *stack.PacketBuffer, direct bool) {
		t.Helper()
		ack := header.TCP(pkt.TransportHeader().Slice()).AckNumber()
		before := stats.TxDirect.Load()
		if err := q.WritePacket(pkt); err != nil {
			t.Fatalf("WritePacket: %s", err)
		}
		pkt.DecRef()
		if got := stats.TxDirect.Load() - before; (got == 1) != direct {
			t.Fatalf("packet ack %d: written by its sender %v, want %v", ack, got == 1, direct)
		}
	}

	// Small packets that carry something, on an empty queue: written
	// before WritePacket returns.
	write(data(1, 100), true)
	write(outPacket(src, dst, header.TCPFlagSyn|header.TCPFlagAck, 2, 0), true)
	write(outPacket(src, dst, header.TCPFlagAck|header.TCPFlagFin, 3, 0), true)
	if got := link.written(); !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("written %v, want [1 2 3]", got)
	}

	// A pure ACK queues, and a small data packet behind it queues too
	// rather than pass it.
	gate := make(chan struct{})
	link.setGate(gate)
	write(outPacket(src, dst, header.TCPFlagAck, 10, 0), false)
	write(data(11, DefaultTUNDirectMax-header.IPv4MinimumSize-header.TCPMinimumSize), false)
	close(gate)
	waitFor(t, "the queue to drain", func() bool { return q.pending.Load() == 0 })
	if got := link.written(); !slices.Equal(got, []uint32{1, 2, 3, 10, 11}) {
		t.Fatalf("written %v, want [1 2 3 10 11]", got)
	}

	// Over DefaultTUNDirectMax always queues, and so does everything between
	// beginBatch and endBatch (WriteFinal); after it, direct again.
	write(data(20, DefaultTUNDirectMax), false)
	waitFor(t, "the queue to drain", func() bool { return q.pending.Load() == 0 })
	q.beginBatch()
	write(data(21, 10), false)
	q.endBatch()
	waitFor(t, "the queue to drain", func() bool { return q.pending.Load() == 0 })
	write(data(22, 10), true)
	if got := link.written(); !slices.Equal(got[5:], []uint32{20, 21, 22}) {
		t.Fatalf("written %v, want [... 20 21 22]", got)
	}
}

func TestTxQueueDirectOff(t *testing.T) {
	// TUNDirectMax 0 (--tun-direct-max 0): every packet queues.
	open := make(chan struct{})
	close(open)
	link := &gatedLink{gate: open}
	var stats Stats
	q := newTxQueue(link, 1, 16, 0, &stats)
	defer q.Close()
	pkt := outPacket(netip.MustParseAddrPort("192.0.2.2:80"), netip.MustParseAddrPort("198.51.100.7:40000"), header.TCPFlagAck|header.TCPFlagPsh, 1, 1)
	if err := q.WritePacket(pkt); err != nil {
		t.Fatalf("WritePacket: %s", err)
	}
	pkt.DecRef()
	waitFor(t, "the queue to drain", func() bool { return q.pending.Load() == 0 })
	if got := link.written(); stats.TxDirect.Load() != 0 || !slices.Equal(got, []uint32{1}) {
		t.Fatalf("TxDirect %d, written %v: want the packet written by the queue", stats.TxDirect.Load(), got)
	}
}

type discardLink struct{}

func (discardLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return pkts.Len(), nil
}

// BenchmarkTxQueueDirect is a small packet past the empty queue: no
// allocation.
func BenchmarkTxQueueDirect(b *testing.B) {
	var stats Stats
	q := newTxQueue(discardLink{}, 1, 16, DefaultTUNDirectMax, &stats)
	defer q.Close()
	pkt := outPacket(netip.MustParseAddrPort("192.0.2.2:80"), netip.MustParseAddrPort("198.51.100.7:40000"), header.TCPFlagAck|header.TCPFlagPsh, 1, 64)
	defer pkt.DecRef()
	b.ReportAllocs()
	for b.Loop() {
		if err := q.WritePacket(pkt); err != nil {
			b.Fatal(err)
		}
	}
	if stats.TxDirect.Load() == 0 {
		b.Fatal("no direct writes")
	}
}
