// Package datagram judges the UDP flows steering sends through netward:
// QUIC by the ClientHello of its Initial packets, DNS query by query, any
// other UDP by addresses, ports and geo. It is netstack's DatagramHandler.
//
// UDP is not terminated: a datagram netward allows is written back into the
// TUN unchanged, so the server gets the client's own packet, addresses and
// all. A flow's client datagrams are held (capped in bytes, packets and
// time) until its verdict; then the held ones go on in order and, for an
// allowed QUIC or plain UDP flow, the kernel takes the flow over: the
// conntrack mark Bypasser sets makes the steering rules skip its later
// datagrams (package steer, "UDP"), so an allowed flow costs netward one
// userspace round trip per datagram only until its verdict. QUIC long
// headers stay steered, so every Initial (a Retry's, a second connection's
// on the same 5-tuple) is judged too. DNS flows are never bypassed: every
// query is judged.
//
// A denied flow's datagrams never reach the server. deny answers a QUIC or
// plain UDP flow with ICMP port unreachable from the server's address (the
// client's socket fails at once, as if nothing listened there) and a DNS
// query with the rule's dns_answer (NXDOMAIN by default) from the server's
// address; drop is silence.
package datagram

import (
	"context"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/netward/netward/event"
	"github.com/netward/netward/geo"
	"github.com/netward/netward/metrics"
	"github.com/netward/netward/policy"
	"github.com/netward/netward/rules"
)

// Writer puts a whole IP packet back on the wire (netstack.Stack's
// WriteDatagram: into the TUN, for the kernel to route).
type Writer interface {
	WriteDatagram(pkt []byte) error
}

// Bypasser hands an allowed UDP flow to kernel forwarding (steer.Conntrack).
type Bypasser interface {
	// Bypass marks the flow client → server; quic says which datagrams
	// the kernel takes (QUIC short headers only, or all but QUIC long
	// headers).
	Bypass(client, server netip.AddrPort, quic bool) error
	// Alive reports whether the kernel still tracks the flow.
	Alive(client, server netip.AddrPort) (bool, error)
}

// Limits bound what a UDP flow may hold and how long it lives.
type Limits struct {
	// IdleTimeout ends a flow that sent nothing either way through netward
	// for this long (a bypassed flow lives on while the kernel still
	// tracks it). QUIC's own idle timeouts are 30 s (quic-go) to 600 s.
	IdleTimeout time.Duration
	// InspectTimeout is how long a QUIC client may take to complete its
	// ClientHello; one still incomplete then is invalid.
	InspectTimeout time.Duration
	// HoldBytes and HoldPackets cap the client datagrams held before the
	// verdict; a hello that needs more is invalid.
	HoldBytes, HoldPackets int
	// MaxFlows is the most UDP flows tracked at once; a new flow beyond it
	// is dropped (counted as limit max_udp_flows).
	MaxFlows int
}

// DefaultLimits are used for the zero fields of Guard.Limits.
var DefaultLimits = Limits{
	IdleTimeout:    60 * time.Second,
	InspectTimeout: 2 * time.Second,
	HoldBytes:      64 << 10,
	HoldPackets:    32,
	MaxFlows:       200000,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.IdleTimeout > 0 {
		d.IdleTimeout = l.IdleTimeout
	}
	if l.InspectTimeout > 0 {
		d.InspectTimeout = l.InspectTimeout
	}
	if l.HoldBytes > 0 {
		d.HoldBytes = max(l.HoldBytes, 4096)
	}
	if l.HoldPackets > 0 {
		d.HoldPackets = max(l.HoldPackets, 2)
	}
	if l.MaxFlows > 0 {
		d.MaxFlows = l.MaxFlows
	}
	return d
}

// Stats are the guard's counters (all atomic).
type Stats struct {
	Datagrams    atomic.Uint64 // read from the TUN
	Forwarded    atomic.Uint64 // written back toward their destination
	Held         atomic.Uint64 // held until a verdict (then forwarded or refused)
	Refused      atomic.Uint64 // dropped by a deny or drop verdict
	Invalid      atomic.Uint64 // did not parse as the flow's protocol (QUIC, DNS)
	Answered     atomic.Uint64 // DNS queries netward answered itself
	Malformed    atomic.Uint64 // not a whole UDP packet
	WriteErrors  atomic.Uint64 // the TUN refused a write
	Bypassed     atomic.Uint64 // flows handed to the kernel
	BypassErrors atomic.Uint64 // flows the kernel would not take (they stay on netward's path)
	FlowsStarted atomic.Uint64
	FlowsActive  atomic.Int64
	FlowLimit    atomic.Uint64 // datagrams of new flows dropped at MaxFlows
}

// Guard is the netstack.DatagramHandler that enforces a rule set on UDP.
// Set the exported fields, then Start it; it is safe for concurrent use by
// the TUN's reader goroutines.
type Guard struct {
	// Policy judges flows; nil allows everything but what cannot be
	// judged (as relay.Guard).
	Policy *policy.Engine
	// Geo gives the peers' country and ASN; nil for none.
	Geo *geo.DB
	// Events receives EVE events; nil for none.
	Events *event.Log
	// Metrics counts datagrams, flows and verdicts; nil for none.
	Metrics *metrics.Metrics
	// Log receives one line per flow when it ends; nil discards.
	Log *slog.Logger
	// Out writes datagrams back into the TUN. Required.
	Out Writer
	// Bypass hands allowed flows to the kernel; nil keeps every datagram
	// on netward's path.
	Bypass Bypasser
	// NewID gives flow ids (shared with the TCP flows, so EVE flow_ids
	// never collide); nil uses a counter of the guard's own.
	NewID func() uint64
	// Limits: zero fields take DefaultLimits.
	Limits Limits

	lim    Limits
	stats  Stats
	seed   maphash.Seed
	ids    atomic.Uint64
	shards [numShards]shard
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// numShards spreads the flow table over locks: the TUN's queues read on
// all cores.
const numShards = 64

type shard struct {
	mu    sync.Mutex
	flows map[flowKey]*flow
	_     cpu.CacheLinePad
}

// flowKey is a flow's two endpoints in a fixed order (lo < hi), so both
// directions find the same entry.
type flowKey struct{ lo, hi netip.AddrPort }

func keyOf(a, b netip.AddrPort) flowKey {
	if a.Compare(b) > 0 {
		a, b = b, a
	}
	return flowKey{a, b}
}

// Start prepares the guard and starts its sweeper (idle and inspection
// timeouts); Close stops it.
func (g *Guard) Start() {
	g.lim = g.Limits.withDefaults()
	g.seed = maphash.MakeSeed()
	for i := range g.shards {
		g.shards[i].flows = make(map[flowKey]*flow)
	}
	if g.NewID == nil {
		g.ids.Store(uint64(time.Now().UnixMilli())<<10 | 1<<9)
		g.NewID = func() uint64 { return g.ids.Add(1) }
	}
	g.stop, g.done = make(chan struct{}), make(chan struct{})
	go g.sweep()
}

// Close stops the sweeper and ends every flow (flow events with reason
// shutdown).
func (g *Guard) Close() {
	g.once.Do(func() {
		if g.stop == nil {
			return
		}
		close(g.stop)
		<-g.done
		for i := range g.shards {
			s := &g.shards[i]
			s.mu.Lock()
			flows := s.flows
			s.flows = make(map[flowKey]*flow)
			s.mu.Unlock()
			for _, f := range flows {
				f.mu.Lock()
				f.end(event.ReasonShutdown)
				f.mu.Unlock()
			}
		}
	})
}

// Stats returns the live counters.
func (g *Guard) Stats() *Stats { return &g.stats }

// Active is the number of UDP flows tracked now.
func (g *Guard) Active() int64 { return g.stats.FlowsActive.Load() }

func (g *Guard) shardOf(k flowKey) *shard {
	return &g.shards[maphash.Comparable(g.seed, k)%numShards]
}

// HandleDatagram implements netstack.DatagramHandler.
func (g *Guard) HandleDatagram(b []byte) {
	g.stats.Datagrams.Add(1)
	if g.stop == nil {
		g.stats.Malformed.Add(1) // not started: steering is not in place yet either
		return
	}
	var p packet
	if err := parsePacket(b, &p); err != nil {
		g.stats.Malformed.Add(1)
		return
	}
	now := time.Now()
	k := keyOf(p.src, p.dst)
	s := g.shardOf(k)
	s.mu.Lock()
	f := s.flows[k]
	if f == nil {
		if g.stats.FlowsActive.Load() >= int64(g.lim.MaxFlows) {
			s.mu.Unlock()
			g.stats.FlowLimit.Add(1)
			g.Metrics.LimitHit("max_udp_flows")
			return
		}
		f = g.newFlow(k, p.src, p.dst, now)
		s.flows[k] = f
	}
	s.mu.Unlock()

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended {
		return // ended by the sweeper between the two locks: the datagram is lost, as on a busy link
	}
	f.last = now
	if p.src == f.client {
		f.fromClient(&p, now)
	} else {
		f.fromServer(&p)
	}
}

// write sends one packet on; errors are counted (a full TUN queue drops the
// packet, as a congested link would).
func (g *Guard) write(b []byte) bool {
	if err := g.Out.WriteDatagram(b); err != nil {
		g.stats.WriteErrors.Add(1)
		return false
	}
	return true
}

// decide is Policy.Decide, or allow without a policy.
func (g *Guard) decide(f *rules.Facts) rules.Verdict {
	if g.Policy == nil {
		return rules.Verdict{Action: rules.ActionAllow}
	}
	return g.Policy.Decide(f)
}

// early is Policy.Early; without a policy nothing is decided early.
func (g *Guard) early(f *rules.Facts) (rules.Verdict, bool) {
	if g.Policy == nil {
		return rules.Verdict{}, false
	}
	return g.Policy.Early(f)
}

// invalid is Policy.Invalid, or deny without a policy.
func (g *Guard) invalid() rules.Verdict {
	if g.Policy == nil {
		return rules.Verdict{Action: rules.ActionDeny, Rule: rules.RuleOnInvalid}
	}
	return g.Policy.Invalid()
}

// sweepEvery is how often the sweeper looks for timed-out flows.
const sweepEvery = 500 * time.Millisecond

// sweep ends idle flows and judges QUIC flows whose ClientHello did not
// complete within InspectTimeout.
func (g *Guard) sweep() {
	defer close(g.done)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	var expired []*flow
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		for i := range g.shards {
			s := &g.shards[i]
			expired = expired[:0]
			s.mu.Lock()
			for _, f := range s.flows {
				expired = append(expired, f)
			}
			s.mu.Unlock()
			for _, f := range expired {
				f.mu.Lock()
				gone := f.tick(now)
				f.mu.Unlock()
				if gone {
					s.mu.Lock()
					if s.flows[f.key] == f {
						delete(s.flows, f.key)
					}
					s.mu.Unlock()
				}
			}
		}
	}
}

// logFlow writes the flow's log line (info level).
func (g *Guard) logFlow(attrs []slog.Attr) {
	g.Log.LogAttrs(context.Background(), slog.LevelInfo, "flow", attrs...)
}
