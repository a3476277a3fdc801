package netstack

import (
	"slices"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// synGate keeps a client's SYN away from a connection of the same 4-tuple
// that gVisor still holds in TIME_WAIT, and delivers it once that is over.
//
// netward preserves client ports, so a client that reuses a port soon after
// its last connection on it ended (one short of free ports, or a NAT or
// load balancer that recycles them) sends its SYN into a tuple gVisor
// keeps for Options.TimeWait. Linux accepts such a SYN as a new connection
// (RFC 6191); gVisor hands it only to a listening endpoint, and the
// forwarder is not one. So the SYN was dropped, and the client waited a
// second to retransmit; or, when it raced the end of TIME_WAIT, gVisor
// answered it with a reset from the closing endpoint, and the client's
// connect failed. Measured on the lab with a client without tcp_tw_reuse:
// 540–4,016 SYN retransmissions and up to 10 refused connects per 20 s of
// wrk.
//
// The gate is asked about every pure SYN before it reaches gVisor (one
// demuxer lookup per new connection, none per data packet). A SYN whose
// tuple is in TIME_WAIT, on the client's leg or on a gVisor upstream leg,
// is copied and held; a timer looks again every synGatePoll and delivers
// it once the tuple is free, or after maxWait regardless (then gVisor
// drops it as before and the client retransmits).
type synGate struct {
	stack   *stack.Stack
	deliver func(proto tcpip.NetworkProtocolNumber, pkt []byte)
	maxWait time.Duration
	stats   *Stats

	mu     sync.Mutex
	held   []heldSYN
	timer  *time.Timer
	closed bool
}

type heldSYN struct {
	proto tcpip.NetworkProtocolNumber
	id    stack.TransportEndpointID // as the client leg's endpoint sees it
	pkt   []byte
	since time.Time
}

const (
	// synGatePoll is how often held SYNs look at their tuple again.
	synGatePoll = time.Millisecond
	// maxHeldSYNs bounds the copies held at once; past it a SYN goes to
	// gVisor at once (and is dropped there, as without the gate).
	maxHeldSYNs = 4096
)

func newSYNGate(st *stack.Stack, timeWait time.Duration, stats *Stats, deliver func(tcpip.NetworkProtocolNumber, []byte)) *synGate {
	g := &synGate{
		stack:   st,
		deliver: deliver,
		// TIME_WAIT restarts when a retransmitted FIN arrives in it;
		// one restart, and then some, is the most worth waiting for.
		maxWait: 2*timeWait + 50*time.Millisecond,
		stats:   stats,
	}
	g.timer = time.AfterFunc(time.Hour, g.poll)
	g.timer.Stop()
	return g
}

// hold takes b, a TCP packet with only SYN set (see isPureSYN), when its
// tuple is in TIME_WAIT; it reports whether it did. b is copied: the
// caller keeps its buffer.
func (g *synGate) hold(proto tcpip.NetworkProtocolNumber, b []byte) bool {
	id := synEndpointID(proto, b)
	if !g.inTimeWait(proto, id) {
		return false
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	if len(g.held) >= maxHeldSYNs {
		g.mu.Unlock()
		g.stats.SynGateOverflows.Add(1)
		return false
	}
	g.held = append(g.held, heldSYN{proto: proto, id: id, pkt: slices.Clone(b), since: time.Now()})
	if len(g.held) == 1 {
		g.timer.Reset(synGatePoll)
	}
	g.mu.Unlock()
	g.stats.SynsHeld.Add(1)
	return true
}

// poll delivers the held SYNs whose tuple is free, or that waited maxWait.
func (g *synGate) poll() {
	now := time.Now()
	var ready []heldSYN
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	keep := g.held[:0]
	for _, h := range g.held {
		if now.Sub(h.since) < g.maxWait && g.inTimeWait(h.proto, h.id) {
			keep = append(keep, h)
			continue
		}
		ready = append(ready, h)
	}
	clear(g.held[len(keep):]) // drop the packets' references
	g.held = keep
	if len(keep) > 0 {
		g.timer.Reset(synGatePoll)
	}
	g.mu.Unlock()
	for _, h := range ready {
		if now.Sub(h.since) >= g.maxWait {
			g.stats.SynGateTimeouts.Add(1)
		}
		g.deliver(h.proto, h.pkt)
	}
}

// close drops the held SYNs and stops the timer (the stack is going away:
// their clients retransmit toward whatever replaces it).
func (g *synGate) close() {
	g.mu.Lock()
	g.closed = true
	g.held = nil
	g.timer.Stop()
	g.mu.Unlock()
}

// inTimeWait reports whether gVisor holds the tuple in TIME_WAIT: the
// client leg's endpoint (local = server), or a gVisor upstream leg's
// (local = client) that a new dial from the same port would collide with.
func (g *synGate) inTimeWait(proto tcpip.NetworkProtocolNumber, id stack.TransportEndpointID) bool {
	up := stack.TransportEndpointID{
		LocalPort: id.RemotePort, LocalAddress: id.RemoteAddress,
		RemotePort: id.LocalPort, RemoteAddress: id.LocalAddress,
	}
	return g.timeWaitEndpoint(proto, id) || g.timeWaitEndpoint(proto, up)
}

func (g *synGate) timeWaitEndpoint(proto tcpip.NetworkProtocolNumber, id stack.TransportEndpointID) bool {
	ep := g.stack.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID)
	if ep == nil {
		return false
	}
	s, ok := ep.(interface{ State() uint32 })
	return ok && tcp.EndpointState(s.State()) == tcp.StateTimeWait
}

// isPureSYN reports whether b, a TCP packet (see isTCP), opens a
// connection: SYN set, ACK, RST and FIN not. IPv4 fragments past the first
// carry no TCP header and are never one.
func isPureSYN(b []byte, proto tcpip.NetworkProtocolNumber) bool {
	off := header.IPv6MinimumSize
	if proto == header.IPv4ProtocolNumber {
		ip := header.IPv4(b)
		if ip.FragmentOffset() != 0 {
			return false
		}
		off = int(ip.HeaderLength())
	}
	if len(b) < off+header.TCPMinimumSize {
		return false
	}
	const mask = header.TCPFlagSyn | header.TCPFlagAck | header.TCPFlagRst | header.TCPFlagFin
	return header.TCPFlags(b[off+header.TCPFlagsOffset])&mask == header.TCPFlagSyn
}

// synEndpointID is the endpoint ID of a SYN's connection as netward's
// client leg sees it: local = the server (destination), remote = the
// client. b is a pure SYN (isPureSYN).
func synEndpointID(proto tcpip.NetworkProtocolNumber, b []byte) stack.TransportEndpointID {
	var src, dst tcpip.Address
	off := header.IPv6MinimumSize
	if proto == header.IPv4ProtocolNumber {
		ip := header.IPv4(b)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
		off = int(ip.HeaderLength())
	} else {
		ip := header.IPv6(b)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	t := header.TCP(b[off:])
	return stack.TransportEndpointID{
		LocalPort: t.DestinationPort(), LocalAddress: dst,
		RemotePort: t.SourcePort(), RemoteAddress: src,
	}
}
