package netstack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gVisor has no delayed ACK: its TCP processor writes a pure ACK for every
// batch of segments it takes in, synchronously, before the goroutine it
// has just woken (the relay, reading what arrived) gets its turn on the
// same P. On a request/response that puts a TUN write (13 µs with the
// kernel's forwarding of it) in front of every relay step, and on short
// connections the ACK is mostly redundant: the answer follows at once and
// carries the same acknowledgement. The ackDelayer holds pure ACKs for up
// to ackDelay; a later packet of the same connection supersedes them, a
// newer ACK replaces them, and a timer writes the rest.
//
// What is never held or merged: segments with data, SYN, FIN or RST;
// an ACK whose acknowledgement number equals the one already
// held for its connection (a duplicate ACK, which the peer counts for fast
// retransmit, or a window update): both go out, in order.
const (
	maxPendingAcks = 64
	// A held ACK keeps its IP and TCP headers (options included), with
	// the virtio_net_hdr in front.
	maxAckPacket = virtioNetHdrLen + 60 + 60
	// ackKeyLen is the connection key: source and destination address
	// (IPv6 size) and ports.
	ackKeyLen = 16 + 16 + 4
	// maxAckedWhileHeld bounds how much newly acknowledged data one held
	// ACK may stand for before it goes out.
	maxAckedWhileHeld = 64 << 10
)

type ackKey [ackKeyLen]byte

// heldAck is one pure ACK waiting in the ackDelayer.
type heldAck struct {
	fd    int
	key   ackKey
	ack   uint32
	first uint32 // the acknowledgement of the first ACK this one replaced
	n     int
	b     [maxAckPacket]byte
}

// ackDelayer is per link endpoint; its lock is held for a few compares and
// a copy, never across a write.
type ackDelayer struct {
	// write sends one held packet (virtio_net_hdr included) on fd.
	write func(fd int, b []byte)
	stats *Stats
	delay time.Duration

	held  atomic.Int32 // len(pending), read without the lock on the write path
	mu    sync.Mutex
	n     int
	armed bool
	// pending and flushing swap on every timer flush so that the writes
	// happen outside the lock.
	pending  *[maxPendingAcks]heldAck
	flushing *[maxPendingAcks]heldAck

	timer    *time.Timer
	done     chan struct{}
	stopOnce sync.Once
}

func newAckDelayer(delay time.Duration, stats *Stats, write func(fd int, b []byte)) *ackDelayer {
	d := &ackDelayer{
		delay:    delay,
		write:    write,
		stats:    stats,
		pending:  new([maxPendingAcks]heldAck),
		flushing: new([maxPendingAcks]heldAck),
		timer:    time.NewTimer(time.Hour),
		done:     make(chan struct{}),
	}
	d.timer.Stop()
	return d
}

// run writes held ACKs when their time is up, until stop.
func (d *ackDelayer) run() {
	for {
		select {
		case <-d.timer.C:
			d.flush()
		case <-d.done:
			d.timer.Stop()
			d.flush()
			return
		}
	}
}

// stop ends run, which writes what is held first.
func (d *ackDelayer) stop() { d.stopOnce.Do(func() { close(d.done) }) }

// flush writes every held ACK.
func (d *ackDelayer) flush() {
	d.mu.Lock()
	n := d.n
	d.pending, d.flushing = d.flushing, d.pending
	d.n = 0
	d.held.Store(0)
	d.armed = false
	d.mu.Unlock()
	for i := range n {
		a := &d.flushing[i]
		d.write(a.fd, a.b[:a.n])
	}
}

// isPureAck reports whether pkt is an ACK with nothing else (no data, no
// SYN/FIN/RST) and returns its TCP header.
func isPureAck(pkt *stack.PacketBuffer) (th []byte, ok bool) {
	if pkt.Data().Size() != 0 {
		return nil, false
	}
	th = pkt.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize || header.TCPFlags(th[13])&^header.TCPFlagPsh != header.TCPFlagAck {
		return nil, false
	}
	return th, true
}

// pureAck is isPureAck for the ackDelayer: it also returns the network
// header, and refuses an ACK whose headers do not fit a held slot.
func pureAck(pkt *stack.PacketBuffer) (nh, th []byte, ok bool) {
	th, ok = isPureAck(pkt)
	if !ok {
		return nil, nil, false
	}
	nh = pkt.NetworkHeader().Slice()
	if len(nh) == 0 || virtioNetHdrLen+len(nh)+len(th) > maxAckPacket {
		return nil, nil, false
	}
	return nh, th, true
}

// connKey is the connection of a packet whose network and TCP headers are
// nh and th.
func connKey(nh, th []byte) (k ackKey, ok bool) {
	switch {
	case len(nh) >= header.IPv4MinimumSize && nh[0]>>4 == 4:
		copy(k[:], nh[12:20])
	case len(nh) >= header.IPv6MinimumSize && nh[0]>>4 == 6:
		copy(k[:], nh[8:40])
	default:
		return k, false
	}
	if len(th) < 4 {
		return k, false
	}
	copy(k[32:], th[:4])
	return k, true
}

// hold takes the pure ACK with headers nh and th, to be written on fd
// later. It returns false when the caller must write pkt itself now; then
// a held ACK of the same connection has been written first.
func (d *ackDelayer) hold(fd int, pkt *stack.PacketBuffer, nh, th []byte) bool {
	key, ok := connKey(nh, th)
	if !ok {
		return false
	}
	ack := binary.BigEndian.Uint32(th[8:12])
	d.mu.Lock()
	for i := range d.n {
		a := &d.pending[i]
		if a.key != key {
			continue
		}
		if ack == a.ack || int32(ack-a.ack) < 0 {
			// A duplicate ACK or window update: the held one goes first,
			// then the caller writes this one.
			var prev heldAck
			prev.fd, prev.n = a.fd, a.n
			copy(prev.b[:], a.b[:a.n])
			d.removeLocked(i)
			d.mu.Unlock()
			d.write(prev.fd, prev.b[:prev.n])
			return false
		}
		if ack-a.first >= maxAckedWhileHeld {
			// A bulk sender: it must get an ACK every so many bytes, as
			// from a receiver with delayed ACK, or its window stalls.
			d.removeLocked(i)
			d.mu.Unlock()
			return false
		}
		// A newer acknowledgement of the same connection: it replaces
		// the held one.
		a.fd, a.ack = fd, ack
		a.n = fill(a.b[:], pkt, nh, th)
		d.mu.Unlock()
		d.stats.TxAcksMerged.Add(1)
		return true
	}
	if d.n == maxPendingAcks {
		d.mu.Unlock()
		return false
	}
	a := &d.pending[d.n]
	a.fd, a.key, a.ack, a.first = fd, key, ack, ack
	a.n = fill(a.b[:], pkt, nh, th)
	d.n++
	d.held.Store(int32(d.n))
	if !d.armed {
		d.armed = true
		d.timer.Reset(d.delay)
	}
	d.mu.Unlock()
	d.stats.TxAcksDelayed.Add(1)
	return true
}

// fill writes pkt's virtio_net_hdr and its headers nh and th into b.
func fill(b []byte, pkt *stack.PacketBuffer, nh, th []byte) int {
	h := outboundVnetHdr(pkt, nh)
	h.encode(b[:virtioNetHdrLen])
	n := virtioNetHdrLen
	n += copy(b[n:], nh)
	n += copy(b[n:], th)
	return n
}

// supersede drops the held ACK of the connection of a packet that has just
// been written: being newer, that packet carries at least the same
// acknowledgement.
func (d *ackDelayer) supersede(pkt *stack.PacketBuffer) {
	if d.held.Load() == 0 {
		return
	}
	key, ok := connKey(pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice())
	if !ok {
		return
	}
	d.mu.Lock()
	for i := range d.n {
		if d.pending[i].key == key {
			d.removeLocked(i)
			d.mu.Unlock()
			d.stats.TxAcksMerged.Add(1)
			return
		}
	}
	d.mu.Unlock()
}

// removeLocked drops pending[i], keeping the order of the others.
func (d *ackDelayer) removeLocked(i int) {
	copy(d.pending[i:d.n], d.pending[i+1:d.n])
	d.n--
	d.held.Store(int32(d.n))
}
