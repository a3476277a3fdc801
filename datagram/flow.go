package datagram

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/netward/netward/event"
	"github.com/netward/netward/inspect"
	"github.com/netward/netward/inspect/dns"
	"github.com/netward/netward/inspect/quic"
	"github.com/netward/netward/metrics"
	"github.com/netward/netward/policy"
	"github.com/netward/netward/rules"
)

// flowState is where a flow is in its life.
type flowState uint8

const (
	stateNew     flowState = iota // no datagram judged yet
	stateJudging                  // QUIC: client datagrams held until the ClientHello is read
	stateAllowed                  // datagrams go on (and the kernel may carry them)
	stateRefused                  // denied or dropped: nothing goes on
)

// maxReaders bounds the ClientHellos one flow may present (a Retry, new
// connections on the same 5-tuple); a flow with more is invalid.
const maxReaders = 4

// maxVersionProbes is how many long-header datagrams of unknown QUIC
// versions a flow may send before a verdict: they go on so the server can
// answer with Version Negotiation (RFC 9000 §6), but no more, or a custom
// version would carry a whole connection past inspection.
const maxVersionProbes = 3

// flow is one UDP 5-tuple: the client is the side that sent the first
// datagram netward saw. Its fields are guarded by mu.
type flow struct {
	g              *Guard
	mu             sync.Mutex
	key            flowKey
	id             uint64
	client, server netip.AddrPort
	start, last    time.Time

	state    flowState
	app      inspect.Proto
	facts    rules.Facts
	verdict  rules.Verdict
	decided  bool
	alerted  bool
	ended    bool
	bypassed bool

	held      [][]byte // client datagrams (whole IP packets) awaiting the verdict
	heldBytes int
	judgeFrom time.Time // when the current ClientHello began

	readers     []*quic.Reader // one per ClientHello (set of Initial keys) seen
	judging     int            // index in readers of the hello being judged, -1 none
	deniedDCIDs [][]byte       // DCIDs of connections refused on an allowed flow
	probes      int

	pktsUp, pktsDown   uint64
	bytesUp, bytesDown uint64
	hdr                event.Header
	af                 *metrics.ActiveFlow
}

func (g *Guard) newFlow(k flowKey, client, server netip.AddrPort, now time.Time) *flow {
	f := &flow{g: g, key: k, id: g.NewID(), client: client, server: server, start: now, last: now, judging: -1}
	f.facts = rules.Facts{Src: client, Dst: server, Transport: rules.TransportUDP}
	if g.Geo != nil {
		f.facts.SrcGeo = g.Geo.Lookup(client.Addr())
		f.facts.DstGeo = g.Geo.Lookup(server.Addr())
	}
	f.hdr = event.Header{FlowID: f.id, Src: client, Dst: server, UDP: true,
		SrcGeo: event.Geo(f.facts.SrcGeo), DstGeo: event.Geo(f.facts.DstGeo)}
	f.af = g.Metrics.StartFlow(f.id, client, server, now)
	g.stats.FlowsStarted.Add(1)
	g.stats.FlowsActive.Add(1)
	return f
}

// fromServer handles a datagram from the server: it goes on unless the
// flow is refused (the server never got anything of it, so anything it
// sends is not an answer to the client).
func (f *flow) fromServer(p *packet) {
	f.pktsDown++
	f.bytesDown += uint64(len(p.payload))
	f.af.AddToClient(len(p.payload))
	if f.state == stateRefused {
		f.g.stats.Refused.Add(1)
		f.g.Metrics.UDPDatagrams("refused", 1)
		return
	}
	f.forward(p.raw)
}

// fromClient handles a datagram from the client.
func (f *flow) fromClient(p *packet, now time.Time) {
	f.pktsUp++
	f.bytesUp += uint64(len(p.payload))
	f.af.AddToServer(len(p.payload))
	switch f.state {
	case stateNew:
		f.first(p, now)
	case stateJudging:
		f.hold(p)
		f.feedQUIC(p, now)
	case stateAllowed:
		f.allowedClient(p, now)
	case stateRefused:
		f.g.stats.Refused.Add(1)
		f.g.Metrics.UDPDatagrams("refused", 1)
	}
}

// first judges a flow's first datagram: an early refusal by addresses,
// ports and geo, then by what the datagram is.
func (f *flow) first(p *packet, now time.Time) {
	g := f.g
	if v, ok := g.early(&f.facts); ok && v.Action != rules.ActionAllow && v.Action != rules.ActionAlert {
		f.setApp(f.classify(p))
		f.record(v)
		f.refuse(v, p)
		return
	}
	switch app := f.classify(p); app {
	case inspect.ProtoDNS:
		f.setApp(app)
		f.state = stateAllowed // judged query by query
		f.dnsQuery(p)
	case inspect.ProtoQUIC:
		f.setApp(app)
		f.state = stateJudging
		f.judgeFrom = now
		f.hold(p)
		f.feedQUIC(p, now)
	default:
		if k, _ := quic.Classify(p.payload); isLongHeader(k) {
			// A long header of a version netward cannot read: let a few
			// through for Version Negotiation, judge nothing yet.
			f.setApp(inspect.ProtoQUIC)
			f.versionProbe(p)
			return
		}
		f.setApp(inspect.ProtoUDP)
		v := f.decide()
		if f.permits(v) {
			f.state = stateAllowed
			f.forward(p.raw)
			f.bypass(false)
			return
		}
		f.refuse(v, p)
	}
}

func isLongHeader(k quic.Kind) bool {
	switch k {
	case quic.KindInitial, quic.KindZeroRTT, quic.KindHandshake, quic.KindRetry, quic.KindVersionNegotiation:
		return true
	}
	return false
}

// classify tells a flow's protocol from its first datagram: DNS to port
// 53 that parses as a query, a QUIC v1/v2 Initial, else plain UDP.
func (f *flow) classify(p *packet) inspect.Proto {
	if f.server.Port() == 53 {
		var q dns.Query
		if dns.Parse(p.payload, &q) == nil {
			return inspect.ProtoDNS
		}
	}
	if k, v := quic.Classify(p.payload); k == quic.KindInitial && (v == quic.Version1 || v == quic.Version2) {
		return inspect.ProtoQUIC
	}
	return inspect.ProtoUDP
}

// versionProbe forwards a long header of an unknown version, up to
// maxVersionProbes, then treats the flow as invalid.
func (f *flow) versionProbe(p *packet) {
	f.probes++
	if f.probes <= maxVersionProbes {
		f.forward(p.raw)
		return
	}
	f.invalidate(p, "quic_version", "too many datagrams of unknown QUIC versions")
}

func (f *flow) setApp(app inspect.Proto) {
	f.app = app
	f.facts.App = app
	f.hdr.AppProto = app.String()
	f.af.SetApp(app.String())
}

// hold keeps a copy of a client datagram until the verdict; past the caps
// the flow is invalid.
func (f *flow) hold(p *packet) {
	lim := f.g.lim
	if len(f.held) >= lim.HoldPackets || f.heldBytes+len(p.raw) > lim.HoldBytes {
		f.invalidate(p, "quic_hold", "ClientHello larger than limits.udp_hold_bytes/packets")
		return
	}
	f.held = append(f.held, bytes.Clone(p.raw))
	f.heldBytes += len(p.raw)
	f.g.stats.Held.Add(1)
	f.g.Metrics.UDPDatagrams("held", 1)
}

// feedQUIC reads a held client datagram for the ClientHello being judged.
func (f *flow) feedQUIC(p *packet, now time.Time) {
	if f.state != stateJudging {
		return // hold refused it
	}
	k, v := quic.Classify(p.payload)
	if k != quic.KindInitial {
		if isLongHeader(k) && v != quic.Version1 && v != quic.Version2 {
			f.probes++
			if f.probes > maxVersionProbes {
				f.invalidate(p, "quic_version", "too many datagrams of unknown QUIC versions")
			}
		}
		return // 0-RTT, or what a Retry's client sends: held with the hello
	}
	r, st, err := f.feed(p.payload)
	switch {
	case err != nil && errors.Is(err, quic.ErrNoInitial):
		return
	case err != nil:
		f.g.Metrics.InspectError("quic")
		f.invalidate(p, "quic", err.Error())
		return
	case f.judging < 0:
		f.judging = f.indexOf(r)
	case r != f.readers[f.judging] && r.Hello() == nil:
		// A second ClientHello begun before the first was whole: the
		// verdict on one would let the other's datagrams through.
		f.invalidate(p, "quic_connections", "two ClientHellos in progress on one flow")
		return
	}
	if r == f.readers[f.judging] && st == inspect.Done {
		f.helloDone(r)
		return
	}
	if now.Sub(f.judgeFrom) > f.g.lim.InspectTimeout {
		f.invalidate(p, "quic_timeout", "ClientHello incomplete after limits.udp_inspect_timeout")
	}
}

// feed gives a client Initial to the reader whose keys open it: one that
// has read a hello of this flow before, or a new one (a new connection on
// this 5-tuple, or the ClientHello sent again after a Retry, under new
// keys). r is nil only with an error.
func (f *flow) feed(b []byte) (r *quic.Reader, st inspect.Status, err error) {
	for _, r := range f.readers {
		st, err := r.Feed(b)
		if errors.Is(err, quic.ErrOtherKeys) {
			continue
		}
		return r, st, err
	}
	if len(f.readers) >= maxReaders {
		return nil, inspect.NeedMore, errTooManyHellos
	}
	r = quic.NewReader()
	f.readers = append(f.readers, r)
	st, err = r.Feed(b)
	return r, st, err
}

var errTooManyHellos = errors.New("more ClientHellos on one flow than netward reads")

func (f *flow) indexOf(r *quic.Reader) int {
	for i, x := range f.readers {
		if x == r {
			return i
		}
	}
	return -1
}

// helloDone judges the flow by the ClientHello r read.
func (f *flow) helloDone(r *quic.Reader) {
	h := r.Hello()
	f.facts.SNI = h.ServerName
	f.facts.ALPN = h.ALPN
	f.af.SetName(h.ServerName)
	f.judging = -1
	v := f.decide()
	if ev := f.g.Events; ev != nil {
		ev.QUIC(&event.QUIC{Header: f.hdr, Version: r.Version(), SNI: h.ServerName, ALPN: h.ALPN, JA4: h.JA4})
	}
	if f.permits(v) {
		f.release()
		f.state = stateAllowed
		f.bypass(true)
		return
	}
	f.deniedDCIDs = append(f.deniedDCIDs, bytes.Clone(r.DCID()))
	f.refuseHeld(v)
}

// allowedClient handles a client datagram on an allowed flow: DNS queries
// are each judged; QUIC long headers (the kernel leaves them to netward)
// are checked for a new ClientHello.
func (f *flow) allowedClient(p *packet, now time.Time) {
	if f.app == inspect.ProtoDNS {
		f.dnsQuery(p)
		return
	}
	k, v := quic.Classify(p.payload)
	switch {
	case k == quic.KindInitial && (v == quic.Version1 || v == quic.Version2):
		known := len(f.readers)
		r, st, err := f.feed(p.payload)
		switch {
		case err != nil && errors.Is(err, quic.ErrNoInitial):
			f.forward(p.raw)
		case err != nil:
			// Not a hello netward can read (or one that contradicts the
			// one judged): on_invalid says whether it goes on.
			f.g.Metrics.InspectError("quic")
			f.g.stats.Invalid.Add(1)
			f.g.Metrics.UDPDatagrams("invalid", 1)
			if vi := f.g.invalid(); f.permits(vi) {
				f.forward(p.raw)
			} else {
				f.record(vi)
				f.dropOne()
			}
		case r.Hello() != nil && f.indexOf(r) < known:
			// A retransmission of a hello judged before.
			if f.isDenied(r.DCID()) {
				f.dropOne()
				return
			}
			f.forward(p.raw)
		default:
			// A new ClientHello: judged as the first was, its datagrams
			// held; the flow's allowed connection goes on meanwhile in
			// the kernel (short headers).
			if f.app == inspect.ProtoUDP {
				f.setApp(inspect.ProtoQUIC)
			}
			f.state = stateJudging
			f.judging = f.indexOf(r)
			f.judgeFrom = now
			f.hold(p)
			if f.state == stateJudging && st == inspect.Done {
				f.helloDone(r)
			}
		}
	case isLongHeader(k) && f.isDenied(dcidOf(p.payload)):
		f.dropOne()
	default:
		f.forward(p.raw)
	}
}

// isDenied reports whether dcid names a connection refused on this flow.
func (f *flow) isDenied(dcid []byte) bool {
	for _, d := range f.deniedDCIDs {
		if bytes.Equal(d, dcid) {
			return true
		}
	}
	return false
}

// dcidOf returns the Destination Connection ID of a long header, nil if
// b is not one (RFC 9000 §17.2).
func dcidOf(b []byte) []byte {
	if len(b) < 6 || b[0]&0x80 == 0 {
		return nil
	}
	n := int(b[5])
	if n > 20 || len(b) < 6+n {
		return nil
	}
	return b[6 : 6+n]
}

// dnsQuery judges one DNS query on the flow.
func (f *flow) dnsQuery(p *packet) {
	var q dns.Query
	if err := dns.Parse(p.payload, &q); err != nil {
		f.g.Metrics.InspectError("dns")
		f.g.stats.Invalid.Add(1)
		f.g.Metrics.UDPDatagrams("invalid", 1)
		v := f.g.invalid()
		f.record(v)
		if f.permits(v) {
			f.forward(p.raw)
		}
		return
	}
	f.facts.DNSName = q.Name
	f.facts.DNSType = dns.TypeName(q.Type)
	f.af.SetName(q.Name)
	v := f.decide()
	e := event.DNS{Header: f.hdr, ID: q.ID, RRName: q.Name, RRType: f.facts.DNSType}
	if f.permits(v) {
		f.events(&e)
		f.forward(p.raw)
		return
	}
	f.g.stats.Refused.Add(1)
	f.g.Metrics.UDPDatagrams("refused", 1)
	if v.Action == rules.ActionDrop {
		f.events(&e)
		return
	}
	ans := policy.DNSAnswer(v)
	e.Answer = ans.RcodeName()
	f.events(&e)
	mp, bp := bufPool.Get().(*[]byte), bufPool.Get().(*[]byte)
	defer bufPool.Put(mp)
	defer bufPool.Put(bp)
	msg, err := dns.AppendResponse((*mp)[:0], p.payload, &q, ans)
	if err != nil {
		return
	}
	*mp = msg[:0]
	// The answer comes from the server's address, as its own would.
	out := appendUDP((*bp)[:0], f.server, f.client, msg)
	*bp = out[:0]
	if f.g.write(out) {
		f.g.stats.Answered.Add(1)
		f.g.Metrics.UDPDatagrams("answered", 1)
		f.bytesDown += uint64(len(msg))
		f.pktsDown++
	}
}

func (f *flow) events(e *event.DNS) {
	if ev := f.g.Events; ev != nil {
		ev.DNS(e)
	}
}

// bufPool holds packet buffers for the answers netward makes.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// decide judges the flow with what is known now and records the verdict.
func (f *flow) decide() rules.Verdict {
	v := f.g.decide(&f.facts)
	f.record(v)
	return v
}

// permits reports whether v lets the datagrams go on.
func (f *flow) permits(v rules.Verdict) bool {
	return v.Action == rules.ActionAllow || v.Action == rules.ActionAlert
}

// invalidate judges the flow by on_invalid: bytes that should have been
// QUIC did not parse (or would not fit).
func (f *flow) invalidate(p *packet, kind, reason string) {
	g := f.g
	g.stats.Invalid.Add(1)
	g.Metrics.UDPDatagrams("invalid", 1)
	if g.Log != nil {
		g.Log.Debug("invalid UDP datagram", "flow_id", f.id, "kind", kind, "reason", reason)
	}
	v := g.invalid()
	f.record(v)
	f.judging = -1
	if f.permits(v) {
		f.release()
		if f.state != stateAllowed {
			f.forward(p.raw) // not held: it did not fit
		}
		f.state = stateAllowed
		return
	}
	if len(f.held) > 0 {
		f.refuseHeld(v)
		return
	}
	f.refuse(v, p)
}

// release forwards the held datagrams in order.
func (f *flow) release() {
	for _, b := range f.held {
		f.forward(b)
	}
	f.held, f.heldBytes = nil, 0
}

// refuseHeld refuses the held datagrams: the first is answered (deny) as
// refuse does, the rest dropped. A flow that had an allowed connection
// before stays allowed for it.
func (f *flow) refuseHeld(v rules.Verdict) {
	n := len(f.held)
	f.g.stats.Refused.Add(uint64(n))
	f.g.Metrics.UDPDatagrams("refused", n)
	if n > 0 && v.Action == rules.ActionDeny {
		var p packet
		if parsePacket(f.held[0], &p) == nil {
			f.unreachable(&p)
		}
	}
	f.held, f.heldBytes = nil, 0
	if len(f.readers) > 1 && f.state == stateJudging && f.hadAllowed() {
		f.state = stateAllowed
		return
	}
	f.state = stateRefused
}

// hadAllowed reports whether an earlier ClientHello on the flow was
// allowed (its DCID is not among the denied ones).
func (f *flow) hadAllowed() bool {
	for _, r := range f.readers {
		if r.Hello() != nil && !f.isDenied(r.DCID()) {
			return true
		}
	}
	return false
}

// refuse enforces deny or drop on a flow's datagram p.
func (f *flow) refuse(v rules.Verdict, p *packet) {
	f.state = stateRefused
	f.g.stats.Refused.Add(1)
	f.g.Metrics.UDPDatagrams("refused", 1)
	if v.Action == rules.ActionDeny {
		f.unreachable(p)
	}
}

func (f *flow) dropOne() {
	f.g.stats.Refused.Add(1)
	f.g.Metrics.UDPDatagrams("refused", 1)
}

// unreachable answers p with ICMP port unreachable from its destination.
func (f *flow) unreachable(p *packet) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	out := appendPortUnreachable((*bp)[:0], p)
	*bp = out[:0]
	f.g.write(out)
}

// forward sends a datagram on toward its destination.
func (f *flow) forward(b []byte) {
	if f.g.write(b) {
		f.g.stats.Forwarded.Add(1)
		f.g.Metrics.UDPDatagrams("forwarded", 1)
	}
}

// bypass hands the allowed flow to the kernel (see Bypasser).
func (f *flow) bypass(quicFlow bool) {
	if f.g.Bypass == nil || f.bypassed {
		return
	}
	if err := f.g.Bypass.Bypass(f.client, f.server, quicFlow); err != nil {
		f.g.stats.BypassErrors.Add(1)
		f.g.Metrics.UDPBypass(false)
		if f.g.Log != nil {
			f.g.Log.Debug("UDP bypass failed; the flow stays on netward's path", "flow_id", f.id, "error", err)
		}
		return
	}
	f.bypassed = true
	f.g.stats.Bypassed.Add(1)
	f.g.Metrics.UDPBypass(true)
}

// record counts a verdict, remembers it for the flow event and logs the
// alerts it carries (as relay.Guard does for TCP).
func (f *flow) record(v rules.Verdict) {
	f.decided = true
	f.verdict = v
	f.hdr.Verdict = v.Action.String()
	f.hdr.Rule = v.Rule
	f.af.SetVerdict(v.Action.String(), v.Rule)
	ev := f.g.Events
	if ev == nil {
		return
	}
	for _, name := range v.Alerts {
		f.alerted = true
		ev.Alert(&event.Alert{Header: f.hdr, Action: event.ActionAllowed, Signature: name})
	}
	if v.Action == rules.ActionDeny || v.Action == rules.ActionDrop {
		f.alerted = true
		ev.Alert(&event.Alert{Header: f.hdr, Action: event.ActionBlocked, Signature: v.RuleName()})
	}
}

// tick runs from the sweeper: a QUIC hello past its time is invalid; an
// idle flow ends (unless the kernel still carries it). It reports whether
// the flow ended.
func (f *flow) tick(now time.Time) bool {
	if f.ended {
		return true
	}
	if f.state == stateJudging && now.Sub(f.judgeFrom) > f.g.lim.InspectTimeout && len(f.held) > 0 {
		var p packet
		if parsePacket(f.held[0], &p) == nil {
			f.g.Metrics.InspectTimeout()
			f.invalidate(&p, "quic_timeout", "ClientHello incomplete after limits.udp_inspect_timeout")
		}
	}
	if now.Sub(f.last) < f.g.lim.IdleTimeout {
		return false
	}
	if f.bypassed && f.g.Bypass != nil {
		if alive, err := f.g.Bypass.Alive(f.client, f.server); err == nil && alive {
			f.last = now // the kernel still carries it: look again later
			return false
		}
	}
	f.end(event.ReasonTimeout)
	return true
}

// end writes the flow's event and log line.
func (f *flow) end(reason event.FlowReason) {
	if f.ended {
		return
	}
	f.ended = true
	g := f.g
	g.stats.FlowsActive.Add(-1)
	f.af.End()
	if ev := g.Events; ev != nil {
		e := event.Flow{Header: f.hdr, Start: f.start, End: f.last,
			BytesToServer: f.bytesUp, BytesToClient: f.bytesDown,
			PktsToServer: f.pktsUp, PktsToClient: f.pktsDown,
			Alerted: f.alerted, State: event.StateEstablished, Reason: reason}
		if f.state == stateRefused || f.pktsDown == 0 {
			e.State = event.StateNew
		}
		ev.Flow(&e)
	}
	if g.Log == nil {
		return
	}
	attrs := []slog.Attr{
		slog.Uint64("flow_id", f.id),
		slog.String("proto", "udp"),
		slog.String("src", f.client.String()),
		slog.String("dst", f.server.String()),
		slog.String("app", f.app.String()),
	}
	if f.facts.SNI != "" {
		attrs = append(attrs, slog.String("sni", f.facts.SNI))
	}
	if f.facts.DNSName != "" {
		attrs = append(attrs, slog.String("dns", f.facts.DNSName))
	}
	if f.decided {
		attrs = append(attrs, slog.String("verdict", f.verdict.Action.String()), slog.String("rule", f.verdict.RuleName()))
	}
	if c := f.facts.SrcGeo.Country; c != "" {
		attrs = append(attrs, slog.String("src_country", c))
	}
	attrs = append(attrs,
		slog.Uint64("bytes_up", f.bytesUp),
		slog.Uint64("bytes_down", f.bytesDown),
		slog.Bool("bypassed", f.bypassed),
		slog.Duration("duration", f.last.Sub(f.start).Round(time.Microsecond)),
		slog.String("end", string(reason)),
	)
	g.logFlow(attrs)
}
