package netstack

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// SYN replay (netward run --tcp-accept replay): the client's SYN is
// steered into the TUN as for gVisor's handshake, so netward admits the
// flow and dials its server before the client hears anything (a closed
// port answers RST, an early verdict refuses before any answer, a crash
// leaves the fail mode in charge). Instead of a gVisor endpoint, netward
// then writes the client's own SYN back into the TUN, where steer's TPROXY
// rule for SYNs out of the TUN hands it to the transparent listener: the
// kernel answers the handshake, and the client leg is a kernel socket from
// its SYN-ACK on, as with --tcp-accept kernel. ServeAccepted pairs the
// accepted socket with the dialed server by the 4-tuple.
//
// The link keeps a copy of each SYN it reads (capture) for handleSYN,
// which only sees gVisor's parsed request. A flow whose SYN was not kept
// (the table was full, or the SYN too long) takes gVisor's handshake.

// replayKey is a flow's 4-tuple.
type replayKey struct{ client, server netip.AddrPort }

const (
	replayShards = 64
	// maxCapturedPerShard bounds the SYN copies that wait for handleSYN
	// in each shard (a SYN gVisor dropped, max_half_open, leaves one).
	maxCapturedPerShard = 1024
	// capturedTTL: older copies are swept when a shard is full.
	capturedTTL = 5 * time.Second
	// maxSYNLen holds an IPv4 SYN with full IP and TCP options, or an
	// IPv6 one without extension headers.
	maxSYNLen = 120
)

// capturedSYN is a copy of a SYN as read from the TUN, its TCP checksum
// completed (a packet the kernel left to offload has a partial one).
type capturedSYN struct {
	n  uint8
	b  [maxSYNLen]byte
	at time.Time
}

func (c *capturedSYN) bytes() []byte { return c.b[:c.n] }

// replayedFlow is an admitted flow whose SYN netward replayed, with its
// server leg, until the listener accepts its client leg (or expiry): a
// SYN the client sends again meanwhile is replayed, not dialed a second
// time. It stays in the table while it is served, until a new connection
// on its tuple takes its place.
type replayedFlow struct {
	flow     *Flow
	server   Conn
	syn      capturedSYN
	expiry   *time.Timer
	accepted bool
}

type replayShard struct {
	mu    sync.Mutex
	syns  map[replayKey]capturedSYN
	flows map[replayKey]*replayedFlow
}

// synReplay is the SYN copies and the replayed flows, sharded by tuple.
type synReplay struct {
	shards [replayShards]replayShard
	// waitingN is the replayed flows the listener has not accepted yet:
	// handshakes in progress, bounded like gVisor's (MaxInFlight).
	waitingN atomic.Int64
}

func newSYNReplay() *synReplay {
	r := &synReplay{}
	for i := range r.shards {
		r.shards[i].syns = make(map[replayKey]capturedSYN)
		r.shards[i].flows = make(map[replayKey]*replayedFlow)
	}
	return r
}

func (r *synReplay) shard(k replayKey) *replayShard {
	h := uint(k.client.Port())*31 + uint(k.server.Port())
	if k.client.Addr().Is4() {
		a := k.client.Addr().As4()
		h += uint(a[3])
	} else {
		a := k.client.Addr().As16()
		h += uint(a[15])
	}
	return &r.shards[h%replayShards]
}

// capture keeps a copy of b, a pure SYN read from the TUN (isPureSYN). It
// reports false when it could not (counted by the caller).
func (r *synReplay) capture(proto tcpip.NetworkProtocolNumber, b []byte) bool {
	if len(b) > maxSYNLen {
		return false
	}
	var c capturedSYN
	c.n = uint8(len(b))
	copy(c.b[:], b)
	p := c.b[:c.n]
	off := header.IPv6MinimumSize
	if proto == header.IPv4ProtocolNumber {
		off = int(header.IPv4(p).HeaderLength())
		if int(header.IPv4(p).TotalLength()) != len(p) {
			return false
		}
	} else if ip := header.IPv6(p); ip.NextHeader() != uint8(header.TCPProtocolNumber) || int(ip.PayloadLength())+header.IPv6MinimumSize != len(p) {
		return false // extension headers, or padding
	}
	t := header.TCP(p[off:])
	if int(t.DataOffset()) > len(t) || int(t.DataOffset()) < header.TCPMinimumSize {
		return false
	}
	id := synEndpointID(proto, p)
	t.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, id.RemoteAddress, id.LocalAddress, uint16(len(t)))
	t.SetChecksum(^checksum.Checksum(t, xsum))
	k := replayKey{
		client: netip.AddrPortFrom(toAddr(id.RemoteAddress), id.RemotePort),
		server: netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort),
	}
	c.at = time.Now()
	sh := r.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.syns[k]; !ok && len(sh.syns) >= maxCapturedPerShard {
		for old, oc := range sh.syns {
			if c.at.Sub(oc.at) > capturedTTL {
				delete(sh.syns, old)
			}
		}
		if len(sh.syns) >= maxCapturedPerShard {
			return false
		}
	}
	sh.syns[k] = c
	return true
}

// replayed reports what the table holds for k, for a new SYN on it:
// waiting, when a flow on k waits for its accept with its SYN replayed,
// with the SYN to write again (the client's newest, else the first); or
// accepted, when the listener accepted a flow on k already: the new SYN
// opens a new connection (the client reused its port), which start enters
// in its place. One lookup, as handleSYN needs both for every SYN.
func (r *synReplay) replayed(k replayKey) (syn capturedSYN, waiting, accepted bool) {
	sh := r.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rf, ok := sh.flows[k]
	switch {
	case !ok:
		return syn, false, false
	case rf.accepted:
		return syn, false, true
	}
	if c, captured := sh.syns[k]; captured {
		delete(sh.syns, k)
		return c, true, false
	}
	return rf.syn, true, false
}

// served reports whether the listener accepted a flow on k that is
// still in the table (being served, or just ended).
func (r *synReplay) served(k replayKey) bool {
	sh := r.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rf, ok := sh.flows[k]
	return ok && rf.accepted
}

// start enters f, dialed to server, as replayed, with the SYN captured
// for it, which it returns for the caller to write. expire runs if no
// accept takes the flow within timeout. It reports false when no SYN of
// f was captured.
func (r *synReplay) start(f *Flow, server Conn, timeout time.Duration, expire func(*replayedFlow)) (*replayedFlow, bool) {
	k := replayKey{f.Client, f.Server}
	sh := r.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c, ok := sh.syns[k]
	if !ok {
		return nil, false
	}
	delete(sh.syns, k)
	rf := &replayedFlow{flow: f, server: server, syn: c}
	rf.expiry = time.AfterFunc(timeout, func() {
		if r.end(k, rf, false) {
			expire(rf)
		}
	})
	sh.flows[k] = rf
	r.waitingN.Add(1)
	return rf, true
}

// accept takes the replayed flow of k for its accepted client leg.
func (r *synReplay) accept(k replayKey) *replayedFlow {
	sh := r.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rf := sh.flows[k]
	if rf == nil || rf.accepted {
		return nil
	}
	rf.accepted = true
	rf.expiry.Stop()
	r.waitingN.Add(-1)
	return rf
}

// end removes rf. With accepted false it reports whether rf was still
// waiting for its accept (the caller then closes its server leg); with
// true, rf's flow has ended.
func (r *synReplay) end(k replayKey, rf *replayedFlow, accepted bool) bool {
	sh := r.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.flows[k] != rf || rf.accepted != accepted {
		return false
	}
	delete(sh.flows, k)
	if !accepted {
		r.waitingN.Add(-1)
	}
	return true
}

// waiting removes and returns every flow still waiting for its accept
// (Shutdown closes them).
func (r *synReplay) waiting() []*replayedFlow {
	var out []*replayedFlow
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for k, rf := range sh.flows {
			if !rf.accepted {
				rf.expiry.Stop()
				delete(sh.flows, k)
				r.waitingN.Add(-1)
				out = append(out, rf)
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// replaySYN writes the captured SYN of f, admitted and dialed to server,
// back into the TUN for the transparent listener. It reports false, with
// nothing changed, when no copy of the SYN was kept: the caller completes
// the handshake in gVisor instead. Otherwise the flow is the replay's:
// the listener's accept serves it, or expiry or a failed write ends it.
//
// release, which frees gVisor's forwarder slot of the tuple, runs before
// the write: once the SYN is out the whole connection can end within a
// fraction of a millisecond, and the forwarder drops a SYN on a tuple
// whose slot is still held, so a client reconnecting at once from the
// same port would wait for its 1 s retransmission.
func (s *Stack) replaySYN(f *Flow, server Conn, release func()) bool {
	rf, ok := s.replay.start(f, server, s.dialTO, s.expireReplayed)
	if !ok {
		return false
	}
	release()
	if err := s.link.writeDatagram(rf.syn.bytes()); err != nil {
		s.log.Debug("SYN replay: write failed; the client's next SYN tries again", "flow_id", f.ID, "error", err)
		if s.replay.end(replayKey{f.Client, f.Server}, rf, false) {
			rf.expiry.Stop()
			s.endReplayed(rf)
		}
		return true
	}
	s.stats.SYNsReplayed.Add(1)
	return true
}

// replayFirst runs for each SYN with replay on, before Admit, and reports
// whether it dealt with the SYN. A SYN on the tuple of a flow replayed and
// still waiting for its accept is the client's retransmission (the first
// replay was lost, or the SYN-ACK is on its way): it is replayed again,
// the kernel answers it from the connection it has, and the server is
// not dialed twice. Past max_half_open the SYN is dropped, as by gVisor's
// forwarder past MaxInFlight (the client sends it again). release as for
// replaySYN.
func (s *Stack) replayFirst(f *Flow, release func()) bool {
	syn, waiting, accepted := s.replay.replayed(replayKey{f.Client, f.Server})
	switch {
	case waiting:
		release()
		if err := s.link.writeDatagram(syn.bytes()); err != nil {
			s.log.Debug("SYN replay: write failed", "flow_id", f.ID, "error", err)
			return true
		}
		s.stats.SYNsReplayed.Add(1)
		return true
	case accepted:
		s.reusedTuple(f)
	}
	if s.replay.waitingN.Load() >= int64(s.maxHalfOpen) {
		s.stats.ReplayHalfOpenDrops.Add(1)
		release()
		return true
	}
	return false
}

// reusedTuple runs for a SYN on the tuple of a replayed flow the listener
// accepted: the client reused its port, so it is done with that
// connection, but netward's relay may not have closed its client leg yet,
// and a socket left on the tuple that is not in TIME_WAIT (CLOSE_WAIT,
// LAST_ACK, FIN_WAIT: TPROXY resolves only TIME_WAIT) would take the
// replayed SYN, which the client would then send again a second later.
// So it gives the relay a moment, as newSYN does for handoffs, and then
// destroys whatever socket is left on the tuple.
func (s *Stack) reusedTuple(f *Flow) {
	k := replayKey{f.Client, f.Server}
	waitWhile(func() bool { return s.replay.served(k) })
	s.stats.ReplayPortReuse.Add(1)
	if err := s.destroyer.destroy(f.Server, f.Client); err != nil && !errors.Is(err, errNoSocket) {
		s.log.Debug("SYN replay: the old client leg on a reused tuple not destroyed", "flow_id", f.ID, "error", err)
	}
}

// expireReplayed ends a replayed flow whose client leg the listener never
// accepted (the client went away, or its handshake failed).
func (s *Stack) expireReplayed(rf *replayedFlow) {
	s.stats.ReplayExpired.Add(1)
	s.endReplayed(rf)
}

// endReplayed closes an unaccepted replayed flow's server leg and gives
// its kernel socket and its Admit back.
func (s *Stack) endReplayed(rf *replayedFlow) {
	s.stats.ClientHandshakeFailures.Add(1)
	abort(rf.server)
	s.kernelSockets.Add(-1)
	if a, ok := s.handler.(Abandoner); ok {
		a.Abandon(rf.flow)
	}
}
