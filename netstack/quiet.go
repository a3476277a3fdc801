package netstack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// quietSet is the connections whose gVisor endpoint must no longer reach
// the client: their client leg was handed off to a kernel socket
// (Stack.Handoff), which now owns the sequence space. Whatever gVisor
// still sends for them (an ACK for a segment already queued to it, the
// RST of the endpoint's abort, an RST for a late segment after it) is
// dropped at the link. An entry lives for quietFor after the handoff and
// goes earlier when a new SYN for the same tuple arrives (Stack.handleSYN).
//
// The write path pays one atomic load while the set is empty; otherwise a
// lookup in one of quietShards maps, so handoffs on all cores do not queue
// for one lock.
type quietSet struct {
	n      atomic.Int32 // entries in all shards
	shards [quietShards]quietShard
}

const quietShards = 16

// quietFor is how long gVisor's packets of a handed-off connection are
// dropped: longer than a segment takes through the TUN queue and gVisor's
// processing (milliseconds), shorter than a client takes to reuse its port
// (a second or more on the lab).
const quietFor = 500 * time.Millisecond

type quietShard struct {
	mu sync.Mutex
	m  map[ackKey]quietEntry
}

// quietEntry is one silenced connection.
type quietEntry struct {
	until int64 // time.Now().UnixNano()
	// ackLimit is the receive sequence number the kernel socket took
	// over: a pure ACK gVisor made before the switch acknowledges no more
	// than that, and may go (the client would otherwise wait for a
	// retransmission timeout to learn what the kernel socket knows).
	ackLimit uint32
}

// quietKey is the key of the packets gVisor sends on a client leg: from
// the server's address and port to the client's, laid out as connKey lays
// out a packet's headers.
func quietKey(client, server netip.AddrPort) ackKey {
	var k ackKey
	if server.Addr().Is4() {
		s, c := server.Addr().As4(), client.Addr().As4()
		copy(k[0:4], s[:])
		copy(k[4:8], c[:])
	} else {
		s, c := server.Addr().As16(), client.Addr().As16()
		copy(k[0:16], s[:])
		copy(k[16:32], c[:])
	}
	k[32], k[33] = byte(server.Port()>>8), byte(server.Port())
	k[34], k[35] = byte(client.Port()>>8), byte(client.Port())
	return k
}

func (q *quietSet) shard(k ackKey) *quietShard {
	// The client's port varies most between connections.
	return &q.shards[(uint(k[34])<<8|uint(k[35]))%quietShards]
}

// add silences k until quietFor from now, but for pure ACKs up to
// ackLimit.
func (q *quietSet) add(k ackKey, ackLimit uint32) {
	sh := q.shard(k)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[ackKey]quietEntry)
	}
	until := time.Now().Add(quietFor).UnixNano()
	if _, ok := sh.m[k]; !ok {
		q.n.Add(1)
	}
	sh.m[k] = quietEntry{until: until, ackLimit: ackLimit}
	sh.mu.Unlock()
	// The entry goes when its time is up even if no packet meets it, so
	// the set empties and the write path's lookups stop.
	time.AfterFunc(quietFor, func() { q.expire(k, until) })
}

// remove ends k's silence (a new connection on the same tuple, or a
// handoff that did not happen).
func (q *quietSet) remove(k ackKey) {
	if q.n.Load() == 0 {
		return
	}
	sh := q.shard(k)
	sh.mu.Lock()
	if _, ok := sh.m[k]; ok {
		delete(sh.m, k)
		q.n.Add(-1)
	}
	sh.mu.Unlock()
}

// expire removes k if it is still the entry add made until until.
func (q *quietSet) expire(k ackKey, until int64) {
	sh := q.shard(k)
	sh.mu.Lock()
	if e, ok := sh.m[k]; ok && e.until == until {
		delete(sh.m, k)
		q.n.Add(-1)
	}
	sh.mu.Unlock()
}

// drops reports whether pkt, which gVisor is sending, belongs to a
// silenced connection. Expired entries go as they are met.
func (q *quietSet) drops(pkt *stack.PacketBuffer) bool {
	if q.n.Load() == 0 {
		return false
	}
	k, ok := connKey(pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice())
	if !ok {
		return false
	}
	sh := q.shard(k)
	sh.mu.Lock()
	e, found := sh.m[k]
	if found && time.Now().UnixNano() > e.until {
		delete(sh.m, k)
		q.n.Add(-1)
		found = false
	}
	sh.mu.Unlock()
	if !found {
		return false
	}
	if th, ok := isPureAck(pkt); ok && int32(header.TCP(th).AckNumber()-e.ackLimit) <= 0 {
		return false
	}
	return true
}
