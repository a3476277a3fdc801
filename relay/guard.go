package relay

import (
	"context"
	"errors"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netward/netward/event"
	"github.com/netward/netward/geo"
	"github.com/netward/netward/inspect"
	"github.com/netward/netward/metrics"
	"github.com/netward/netward/netstack"
	"github.com/netward/netward/policy"
	"github.com/netward/netward/rules"
)

// Guard is the netstack.Handler that enforces a rule set. At the SYN it
// refuses flows that addresses, ports and geo alone deny. Then it holds the
// client's bytes (nothing reaches the server) until inspect has read the
// ClientHello or the HTTP request head and the rules allow it; every request
// on a keep-alive connection is judged again. The server's bytes flow to the
// client from the start, so server-first protocols (SSH, SMTP) work while
// the client is silent.
type Guard struct {
	// Policy judges flows by the rule set in force at each decision, so a
	// reload applies to new flows and to the next HTTP request of open ones.
	// nil allows everything (flows are still inspected and logged) but
	// input that cannot be judged (on_invalid is deny).
	Policy *policy.Engine
	// Geo gives the peers' country and ASN; nil for none.
	Geo *geo.DB
	// Events receives EVE events; nil for none.
	Events *event.Log
	// Metrics counts flows and verdicts and holds the active-flow table;
	// nil for none.
	Metrics *metrics.Metrics
	// Log receives one line per flow when it ends; nil discards.
	Log *slog.Logger
	// Limits bound what a flow may hold; zero fields take DefaultLimits.
	Limits Limits
	// Handoff, if set, moves the client leg of a flow that needs no more
	// inspection (TLS after its ClientHello, protocols judged by their
	// first bytes) to a kernel socket, and the relay splices the two
	// kernel legs (handoff.go). nil keeps every flow in gVisor.
	Handoff Handoffer
	// HandoffHTTP hands HTTP/1 flows off too, after their first request
	// is allowed; the relay then reads and judges the later requests from
	// the kernel socket.
	HandoffHTTP bool
	// HandoffAfterBytes and HandoffAfterAge defer the handoff of a flow
	// judged at its first bytes (TLS, L4-only) until it has moved that
	// many bytes either way or lived that long, whichever comes first, so
	// only flows that last are switched (on the lab short flows gained
	// nothing by it: README). Zero bytes hands off at the verdict.
	HandoffAfterBytes int64
	HandoffAfterAge   time.Duration
	// SockMap, if set, moves a handed-off flow's bytes between its kernel
	// sockets with eBPF (sockmap.go) instead of splice. HTTP flows handed
	// off after their first request are read by the relay, not moved.
	SockMap *SockMap

	active  atomic.Int64
	dropped recentDrops
}

// Limits bound the resources of the flows a Guard serves.
type Limits struct {
	// MaxFlows is the most flows served at once; more are reset at the SYN.
	MaxFlows int
	// InspectBytes is the most client bytes held while inspecting: a
	// ClientHello or request head that does not fit is invalid.
	InspectBytes int
	// InspectTimeout is how long the client may take to send its first
	// message (ClientHello, request head). A client that sends nothing is
	// judged as app "unknown" then; one that sent part of a message is
	// invalid.
	InspectTimeout time.Duration
	// DrainTimeout is how long a denied keep-alive request waits for the
	// server to finish the responses to earlier requests before the 403 is
	// sent.
	DrainTimeout time.Duration
	// DropHold is how long a dropped flow's client is held without an
	// answer before its leg is cut.
	DropHold time.Duration
	// IdleTimeout cuts (RST both ways) a flow that moved no byte either way
	// for this long.
	IdleTimeout time.Duration
	// HalfClosedTimeout is IdleTimeout once one side has finished sending.
	HalfClosedTimeout time.Duration
}

// DefaultLimits are used for the zero fields of Guard.Limits.
var DefaultLimits = Limits{
	MaxFlows:          200000,
	InspectBytes:      64 << 10,
	InspectTimeout:    3 * time.Second,
	DrainTimeout:      5 * time.Second,
	DropHold:          30 * time.Second,
	IdleTimeout:       15 * time.Minute,
	HalfClosedTimeout: 2 * time.Minute,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxFlows > 0 {
		d.MaxFlows = l.MaxFlows
	}
	if l.InspectBytes > 0 {
		d.InspectBytes = max(l.InspectBytes, 4096)
	}
	if l.InspectTimeout > 0 {
		d.InspectTimeout = l.InspectTimeout
	}
	if l.DrainTimeout > 0 {
		d.DrainTimeout = l.DrainTimeout
	}
	if l.DropHold > 0 {
		d.DropHold = l.DropHold
	}
	if l.IdleTimeout > 0 {
		d.IdleTimeout = l.IdleTimeout
	}
	if l.HalfClosedTimeout > 0 {
		d.HalfClosedTimeout = l.HalfClosedTimeout
	}
	return d
}

var (
	_ netstack.Handler   = (*Guard)(nil)
	_ netstack.Abandoner = (*Guard)(nil)
)

// Active is the number of flows admitted and not yet ended.
func (g *Guard) Active() int64 { return g.active.Load() }

// decide is Policy.Decide, or allow without a policy.
func (g *Guard) decide(f *rules.Facts) rules.Verdict {
	if g.Policy == nil {
		return rules.Verdict{Action: rules.ActionAllow}
	}
	return g.Policy.Decide(f)
}

// invalid is Policy.Invalid, or deny without a policy: bytes that cannot be
// judged are never allowed by accident.
func (g *Guard) invalid() rules.Verdict {
	if g.Policy == nil {
		return rules.Verdict{Action: rules.ActionDeny, Rule: rules.RuleOnInvalid}
	}
	return g.Policy.Invalid()
}

// Admit implements netstack.Handler: the early verdict, from addresses,
// ports and geo alone.
func (g *Guard) Admit(f *netstack.Flow) netstack.Admission {
	if g.Policy == nil {
		return g.reserve()
	}
	facts := rules.Facts{Src: f.Client, Dst: f.Server}
	g.lookupGeo(&facts)
	v, ok := g.Policy.Early(&facts)
	if !ok || v.Action == rules.ActionAllow {
		return g.reserve() // judged (again) in Serve, where it is counted
	}
	if v.Action == rules.ActionDrop && g.dropped.seen(f.Client, f.Server, f.Start) {
		// A retransmission of a SYN already dropped: the same connection
		// attempt, already counted and logged (EVE keys flows by tuple).
		return netstack.AdmitDrop
	}
	// Refused at the SYN: count it, tell the SIEM, log the line.
	gf := g.newFlow(f, nil, nil)
	gf.setFacts(facts)
	gf.record(v)
	gf.refused = true
	gf.end(Result{End: EndClosed})
	if v.Action == rules.ActionDrop {
		return netstack.AdmitDrop
	}
	return netstack.AdmitReset
}

// recentDrops remembers the tuples of recently dropped SYNs, so a client's
// retransmissions of one connection attempt are one flow, not one per
// SYN. It is a fixed-size, lossy table (a slot per tuple hash): bounded
// memory under a SYN flood, at worst a retransmission logged twice.
type recentDrops struct {
	seed  maphash.Seed
	once  sync.Once
	slots [4096]struct{ key, until atomic.Int64 }
}

// dropMemory covers a client's SYN retransmissions (1, 3, 7, 15, 31 s
// after the first on Linux) for a typical connect timeout.
const dropMemory = 75 * time.Second

// seen reports whether the tuple was dropped within dropMemory, and
// records it.
func (r *recentDrops) seen(client, server netip.AddrPort, now time.Time) bool {
	r.once.Do(func() { r.seed = maphash.MakeSeed() })
	h := int64(maphash.Comparable(r.seed, [2]netip.AddrPort{client, server}))
	slot := &r.slots[uint64(h)%uint64(len(r.slots))]
	t := now.UnixNano()
	if slot.key.Load() == h && slot.until.Load() > t {
		return true
	}
	slot.key.Store(h)
	slot.until.Store(t + int64(dropMemory))
	return false
}

// reserve takes one of MaxFlows for an admitted flow; Serve or Abandon
// gives it back. Counting at the SYN, not in Serve, holds the limit
// during a burst of SYNs whose upstream handshakes are still in progress.
func (g *Guard) reserve() netstack.Admission {
	if g.active.Add(1) > int64(g.Limits.withDefaults().MaxFlows) {
		g.active.Add(-1)
		g.Metrics.LimitHit("max_flows")
		return netstack.AdmitReset
	}
	return netstack.AdmitAccept
}

// Abandon implements netstack.Abandoner: an admitted flow that never
// reached Serve gives its reservation back.
func (g *Guard) Abandon(*netstack.Flow) { g.active.Add(-1) }

func (g *Guard) lookupGeo(f *rules.Facts) {
	if g.Geo == nil {
		return
	}
	f.SrcGeo = g.Geo.Lookup(f.Src.Addr())
	f.DstGeo = g.Geo.Lookup(f.Dst.Addr())
}

// Serve implements netstack.Handler.
func (g *Guard) Serve(f *netstack.Flow, client, server netstack.Conn) {
	defer g.active.Add(-1) // reserved by Admit
	gf := g.newFlow(f, client, server)
	facts := gf.facts
	g.lookupGeo(&facts)
	gf.setFacts(facts)
	gf.af = g.Metrics.StartFlow(f.ID, f.Client, f.Server, f.Start)

	gf.idleTimer = time.AfterFunc(gf.lim.IdleTimeout, gf.checkIdle)
	go gf.copyDown()
	if err := gf.serveUp(); err != nil {
		gf.fail(err)
	} else {
		gf.setHalfClosed() // the client has finished sending
	}
	<-gf.downDone
	gf.idleTimer.Stop()
	client.Close()
	server.Close()
	if l := gf.legs.Load(); l != nil {
		if l.pair != nil {
			l.pair.Close()
		}
		g.Handoff.CloseHandoff(f, l.client)
	}

	res := Result{Up: gf.upBytes.Load(), Down: gf.downBytes.Load()}
	res.End, res.Err = endOf(gf.firstErr())
	gf.end(res)
}

// guardFlow is the state of one flow served by a Guard.
type guardFlow struct {
	g              *Guard
	lim            Limits
	f              *netstack.Flow
	client, server netstack.Conn
	facts          rules.Facts
	hdr            event.Header
	af             *metrics.ActiveFlow

	upBytes, downBytes atomic.Int64
	downDone           chan struct{}
	// pauseDown asks copyDown to stop at its next read (pauseCopyDown);
	// it closes downPaused then, instead of downDone.
	pauseDown  atomic.Bool
	downPaused chan struct{}
	// legs are the flow's two kernel sockets once its client leg was
	// handed off (handoff.go); nil before.
	legs atomic.Pointer[kernelLegs]
	// A deferred handoff (Guard.HandoffAfterBytes): handoffTried is the
	// up side's (one attempt per flow); while handoffArmed, the byte
	// counts or the age timer close handoffDue (once: handoffFired),
	// which stops the up copy so it can hand the flow off.
	handoffTried bool
	handoffArmed atomic.Bool
	handoffFired atomic.Bool
	handoffDue   chan struct{}
	// lastActive is when a byte last moved either way, as time since
	// f.Start; idleTimer checks it (one timer per flow, re-armed at most
	// once per timeout, instead of a deadline per read).
	lastActive atomic.Int64
	halfClosed atomic.Bool
	idleTimer  *time.Timer
	// switchWant is set (to switchTo101 or switchTo2xx) once an Upgrade or
	// CONNECT request went upstream; copyDown then records the status code
	// of the next response line in switchStatus (-1: not a status line),
	// so the up side can tell a protocol switch from a refusal.
	switchWant   atomic.Uint32
	switchStatus atomic.Int32
	switchGen    atomic.Uint32 // bumped per Upgrade/CONNECT request
	// Owned by copyDown: the status line being gathered, for switchGen
	// statusGen.
	statusLine [12]byte // "HTTP/1.1 101"
	statusLen  int
	statusGen  uint32
	// refusing is set once the up side has taken over the client's write
	// side to refuse (403 page, TLS alert, reset, drop): from then on the
	// down copy forwards what the server still sends but never closes or
	// aborts the client's leg.
	refusing atomic.Bool

	// in is the client's input while the up side inspects it; heldIn
	// counts client bytes netward took but never forwarded (a refused
	// message), ownOut the bytes netward itself sent the client (403,
	// alert). Both belong to the up side; end reads them after it
	// returned. The flow event counts them as the client's bytes.
	in             *clientInput
	heldIn, ownOut int64

	mu       sync.Mutex
	first    *halfError // the error that ended the flow
	aborted  bool
	decided  bool // a verdict was recorded
	refused  bool // the verdict refused the flow
	verdict  rules.Verdict
	alerted  bool
	requests int
	// dnsRefusal is the framed DNS answer a denied DNS-over-TCP query
	// gets (refuseDNS).
	dnsRefusal []byte
}

func (g *Guard) newFlow(f *netstack.Flow, client, server netstack.Conn) *guardFlow {
	gf := &guardFlow{
		g: g, lim: g.Limits.withDefaults(), f: f, client: client, server: server,
		facts:    rules.Facts{Src: f.Client, Dst: f.Server},
		downDone: make(chan struct{}),
	}
	gf.hdr = event.Header{FlowID: f.ID, Src: f.Client, Dst: f.Server}
	return gf
}

// setFacts sets the flow's facts and the geo fields of its events.
func (gf *guardFlow) setFacts(f rules.Facts) {
	gf.facts = f
	gf.hdr.SrcGeo = event.Geo(f.SrcGeo)
	gf.hdr.DstGeo = event.Geo(f.DstGeo)
}

// fail records the error that ended the flow and aborts both legs (RST),
// as a reset end to end would, so the other direction stops at once.
func (gf *guardFlow) fail(err *halfError) {
	gf.mu.Lock()
	defer gf.mu.Unlock()
	if gf.first == nil {
		gf.first = err
	}
	if gf.aborted || gf.refusing.Load() {
		return
	}
	gf.aborted = true
	abortConn(gf.client)
	abortConn(gf.server)
}

func (gf *guardFlow) firstErr() *halfError {
	gf.mu.Lock()
	defer gf.mu.Unlock()
	return gf.first
}

// errIdle ends a flow that moved nothing for the idle (or half-closed)
// timeout.
var errIdle = errors.New("idle timeout")

func (gf *guardFlow) touch() { gf.lastActive.Store(int64(time.Since(gf.f.Start))) }

// checkIdle runs from idleTimer: it cuts an idle flow or re-arms itself
// for the time left.
func (gf *guardFlow) checkIdle() {
	limit, name := gf.lim.IdleTimeout, "idle_timeout"
	if gf.halfClosed.Load() {
		limit, name = gf.lim.HalfClosedTimeout, "half_closed_timeout"
	}
	idle := time.Since(gf.f.Start) - time.Duration(gf.lastActive.Load())
	if l := gf.legs.Load(); l != nil {
		// Spliced bytes are counted per chunk: the kernel knows better
		// when data last moved.
		idle = min(idle, l.idle())
	}
	if idle >= limit {
		gf.g.Metrics.LimitHit(name)
		gf.fail(&halfError{up: true, read: true, err: errIdle})
		return
	}
	gf.idleTimer.Reset(limit - idle)
}

// setHalfClosed switches the flow to the half-closed timeout.
func (gf *guardFlow) setHalfClosed() {
	if !gf.halfClosed.Swap(true) && gf.idleTimer != nil {
		gf.idleTimer.Reset(gf.lim.HalfClosedTimeout)
	}
}

// copyDown relays server → client for the flow's whole life.
func (gf *guardFlow) copyDown() {
	netstack.GrowStack()
	paused := false
	defer func() {
		if paused {
			close(gf.downPaused) // the up side goes on (handoff)
		} else {
			close(gf.downDone)
		}
	}()
	// As in copyHalf: a buffer only while the server has something to
	// read, so an idle flow holds none.
	var bp *[]byte
	defer func() {
		if bp != nil {
			spliceBufPool.Put(bp)
		}
	}()
	for {
		var r int
		var rerr error
		bp, r, rerr = readHeld(gf.server, bp, copyBufs)
		if r > 0 {
			buf := *bp
			gf.touch()
			if gf.switchWant.Load() != 0 && gf.switchStatus.Load() == 0 {
				if gen := gf.switchGen.Load(); gen != gf.statusGen {
					gf.statusGen, gf.statusLen = gen, 0
				}
				gf.noteStatus(buf[:r])
			}
			// The server's FIN came right behind this data: the client
			// gets its FIN with it (see copyHalf), unless the up side
			// has taken over the client's write side to refuse.
			last := !gf.refusing.Load() && finishedBehind(gf.server, gf.client, r, len(buf), rerr)
			w, werr, cerr := writeChunk(gf.client, buf[:r], last)
			gf.downBytes.Add(int64(w))
			gf.af.AddToClient(w)
			if gf.handoffArmed.Load() {
				gf.checkHandoffBytes()
			}
			if werr != nil {
				if !gf.refusing.Load() {
					gf.fail(&halfError{up: false, read: false, err: werr})
				}
				return
			}
			if last {
				gf.setHalfClosed()
				if cerr != nil && !isClosed(cerr) {
					gf.fail(&halfError{up: false, read: false, err: cerr})
				}
				gf.server.CloseRead()
				return
			}
		}
		if bp != nil && r < len(*bp) {
			spliceBufPool.Put(bp)
			bp = nil
		}
		if rerr == io.EOF {
			gf.setHalfClosed()
			if !gf.refusing.Load() {
				if err := gf.client.CloseWrite(); err != nil && !isClosed(err) {
					gf.fail(&halfError{up: false, read: false, err: err})
				}
				gf.server.CloseRead()
			}
			return
		}
		if rerr != nil {
			if gf.pauseDown.Load() && errors.Is(rerr, os.ErrDeadlineExceeded) {
				paused = true // woken by pauseCopyDown: nothing lost, nothing to close
				return
			}
			if !gf.refusing.Load() {
				gf.fail(&halfError{up: false, read: true, err: rerr})
			}
			return
		}
	}
}

// Protocol switches an Upgrade or CONNECT request may lead to.
const (
	switchTo101 = 1 // Upgrade: 101 Switching Protocols
	switchTo2xx = 2 // CONNECT: any 2xx opens the tunnel
)

// noteStatus gathers the first 12 bytes the server sends after an Upgrade
// or CONNECT request and records their status code. Only copyDown calls it.
func (gf *guardFlow) noteStatus(b []byte) {
	n := copy(gf.statusLine[gf.statusLen:], b)
	gf.statusLen += n
	if gf.statusLen < len(gf.statusLine) {
		return
	}
	line := gf.statusLine[:]
	code := int32(-1)
	if string(line[:7]) == "HTTP/1." && line[8] == ' ' {
		c0, c1, c2 := line[9]-'0', line[10]-'0', line[11]-'0'
		if c0 <= 9 && c1 <= 9 && c2 <= 9 {
			code = int32(c0)*100 + int32(c1)*10 + int32(c2)
		}
	}
	gf.switchStatus.Store(code)
}

// switched waits (up to DrainTimeout) for the status of the response to
// the last Upgrade or CONNECT request and reports whether the server
// switched protocols.
func (gf *guardFlow) switched() bool {
	deadline := time.Now().Add(gf.lim.DrainTimeout)
	for gf.switchStatus.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // only on the rare path of a tunnel's first bytes
	}
	code := gf.switchStatus.Load()
	if gf.switchWant.Load() == switchTo101 {
		return code == 101
	}
	return code >= 200 && code <= 299
}

// inspectBufPool holds the buffers client bytes wait in while they are
// inspected. They are as large as the biggest limit allowed
// (config limits.inspect_bytes is capped by inspect's own maximum).
var inspectBufPool sync.Pool

// inspectBufsHeld counts the inspect buffers flows hold (tests read it).
var inspectBufsHeld atomic.Int64

func getInspectBuf(size int) *[]byte {
	inspectBufsHeld.Add(1)
	if bp, ok := inspectBufPool.Get().(*[]byte); ok && cap(*bp) >= size {
		*bp = (*bp)[:0]
		return bp
	}
	b := make([]byte, 0, size)
	return &b
}

func putInspectBuf(bp *[]byte) {
	inspectBufsHeld.Add(-1)
	inspectBufPool.Put(bp)
}

var (
	tlsParsers  = sync.Pool{New: func() any { return inspect.NewTLSParser(inspect.TLSOptions{}) }}
	httpParsers = sync.Pool{New: func() any { return inspect.NewHTTPParser(inspect.HTTPOptions{}) }}
	// JA3/JA4 hashing is two thirds of a ClientHello's parse time and only
	// the event log reads the fingerprints (no rule matches them).
	tlsParsersNoFP = sync.Pool{New: func() any {
		return inspect.NewTLSParser(inspect.TLSOptions{NoFingerprints: true})
	}}
)

// serveUp relays client → server: first the held bytes of the first
// message, once judged, then the rest. It returns the error that ended the
// up direction, or nil when the client finished (or was refused).
func (gf *guardFlow) serveUp() *halfError {
	in := &clientInput{gf: gf, pool: inspectBufs{size: gf.lim.InspectBytes}}
	in.acquire()
	defer in.release()
	gf.in = in

	gf.client.SetReadDeadline(time.Now().Add(gf.lim.InspectTimeout))
	if gf.f.Server.Port() == dnsPort {
		return gf.serveDNS(in)
	}
	proto, err := in.detect()
	if err != nil {
		return err
	}
	gf.facts.App = proto
	gf.hdr.AppProto = proto.String()
	gf.af.SetApp(gf.hdr.AppProto)

	switch proto {
	case inspect.ProtoTLS:
		err = gf.serveTLS(in)
	case inspect.ProtoHTTP1:
		err = gf.serveHTTP(in)
	default:
		// h2 prior knowledge, SSH, unknown (and a silent client): the
		// protocol and the addresses are all there is to judge.
		gf.client.SetReadDeadline(time.Time{})
		v := gf.decide()
		if v.Action != rules.ActionAllow {
			gf.refuse(v, refuseReset)
			return nil
		}
		err = gf.forwardRest(in)
	}
	return err
}

// clientInput is the client's bytes not yet forwarded.
type clientInput struct {
	gf       *guardFlow
	bp       *[]byte // buf's pooled backing array; nil once released
	buf      []byte
	eof      bool        // the client half-closed
	timedOut bool        // the inspect deadline passed
	pool     inspectBufs // readNext's, in the flow's own memory: no allocation per read
}

// read appends what the client sends next. A timeout sets timedOut, EOF
// sets eof; neither is an error.
func (in *clientInput) read() *halfError {
	if len(in.buf) == cap(in.buf) {
		return nil
	}
	n, err := in.gf.client.Read(in.buf[len(in.buf):cap(in.buf)])
	in.buf = in.buf[:len(in.buf)+n]
	return in.note(err)
}

// note records a read's error: a timeout sets timedOut, EOF sets eof.
func (in *clientInput) note(err error) *halfError {
	switch {
	case err == nil:
	case err == io.EOF:
		in.eof = true
	case errors.Is(err, os.ErrDeadlineExceeded):
		in.timedOut = true
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			in.timedOut = true
			break
		}
		return &halfError{up: true, read: true, err: err}
	}
	return nil
}

func (in *clientInput) stalled() bool { return in.eof || in.timedOut || len(in.buf) == cap(in.buf) }

// detect reads until the first bytes tell the protocol, the client goes
// silent past the inspect deadline, or it half-closes.
func (in *clientInput) detect() (inspect.Proto, *halfError) {
	for {
		if len(in.buf) > 0 {
			if p, sure := inspect.Detect(in.buf); sure {
				return p, nil
			}
		}
		if in.stalled() {
			if len(in.buf) == 0 {
				if in.timedOut {
					in.gf.g.Metrics.InspectTimeout()
				}
				return inspect.ProtoUnknown, nil
			}
			return inspect.DetectFinal(in.buf), nil
		}
		if err := in.read(); err != nil {
			return 0, err
		}
	}
}

// release gives the buffer back to the pool once nothing more will be
// inspected, so a flow spliced after its verdict holds no inspect buffer.
func (in *clientInput) release() {
	if in.bp != nil {
		putInspectBuf(in.bp)
		in.bp, in.buf = nil, nil
	}
}

// readNext is read for the next message of an HTTP or DNS flow. After a
// judged request the client may stay silent for long (keep-alive): then it
// waits holding no buffer if nothing is held (waitEmpty), and reads a
// kernel leg in one syscall per read (ReadPooled), with no peek first.
func (in *clientInput) readNext() *halfError {
	if in.gf.requests == 0 {
		return in.read()
	}
	pr, ok := in.gf.client.(pooledReader)
	if !ok || in.bp == nil || len(in.buf) != 0 {
		in.waitEmpty()
		return in.read()
	}
	in.release()
	bp, n, err := pr.ReadPooled(&in.pool)
	if bp == nil {
		in.acquire() // the caller's checks want a buffer: only EOF or an error came
		return in.note(err)
	}
	in.bp, in.buf = bp, (*bp)[:n]
	return nil
}

// inspectBufs lends inspect buffers of size bytes to ReadPooled.
type inspectBufs struct{ size int }

// Get returns a buffer of length and capacity size: reads and appends
// stop at limits.inspect_bytes even when the pooled array is larger.
func (p *inspectBufs) Get() *[]byte {
	bp := getInspectBuf(p.size)
	*bp = (*bp)[:p.size:p.size]
	return bp
}

func (p *inspectBufs) Put(bp *[]byte) { putInspectBuf(bp) }

// waitEmpty waits, holding no buffer, until the client sends more; only
// when nothing is held and no read deadline runs (after the first
// request), so an idle keep-alive connection costs no inspect buffer.
func (in *clientInput) waitEmpty() {
	w, ok := in.gf.client.(readWaiter)
	if !ok || in.bp == nil || len(in.buf) != 0 {
		return
	}
	in.release()
	w.WaitReadable() // errors surface from the Read that follows
	in.acquire()
}

// acquire gives in an empty pooled buffer of limits.inspect_bytes.
func (in *clientInput) acquire() {
	in.bp = in.pool.Get()
	in.buf = (*in.bp)[:0]
}

// consume drops the first n bytes (forwarded) and keeps the rest at the
// front of the buffer.
func (in *clientInput) consume(n int) {
	in.buf = in.buf[:copy(in.buf, in.buf[n:])]
}

// passClientFIN passes the client's FIN on to the server. If the server
// has finished too (copyDown is done), Serve closes the socket next, and
// the close sends the FIN: a shutdown first would only cost a syscall per
// connection (a Connection: close exchange, where the server closes first).
func (gf *guardFlow) passClientFIN() *halfError {
	select {
	case <-gf.downDone:
		return nil
	default:
	}
	if err := gf.server.CloseWrite(); err != nil && !isClosed(err) {
		return &halfError{up: true, read: false, err: err}
	}
	return nil
}

// forward writes b to the server.
func (gf *guardFlow) forward(b []byte) *halfError {
	if len(b) == 0 {
		return nil
	}
	gf.touch()
	w, err := gf.server.Write(b)
	gf.upBytes.Add(int64(w))
	gf.af.AddToServer(w)
	if err != nil {
		return &halfError{up: true, read: false, err: err}
	}
	return nil
}

// forwardRest sends the held bytes and then splices client → server
// without further inspection.
func (gf *guardFlow) forwardRest(in *clientInput) *halfError {
	deferred := false
	if !in.eof && gf.g.Handoff != nil && gf.legs.Load() == nil && !gf.handoffTried {
		gf.handoffTried = true
		if deferred = gf.g.HandoffAfterBytes > 0; !deferred {
			gf.handoff(in) // on success, gf.legs are set: splice below
		}
	}
	if err := gf.forward(in.buf); err != nil {
		return err
	}
	in.release()
	if in.eof {
		return gf.passClientFIN()
	}
	if l := gf.legs.Load(); l != nil {
		return gf.spliceUp(l)
	}
	if deferred {
		stopped, err := gf.copyUpUntilHandoff()
		if !stopped {
			return err
		}
		in.acquire()
		gf.handoff(in)
		return gf.forwardRest(in) // spliced if handed off, copied on if not
	}
	_, err := copyHalf(gf.server, gf.client, nil, true, gf.countUp)
	return err
}

// copyUpUntilHandoff copies client → server in gVisor until the flow is
// due a handoff (stopped, every byte read forwarded) or the up side ended.
func (gf *guardFlow) copyUpUntilHandoff() (stopped bool, err *halfError) {
	gf.handoffDue = make(chan struct{})
	if age := gf.g.HandoffAfterAge; age > 0 {
		timer := time.AfterFunc(age-time.Since(gf.f.Start), gf.fireHandoff)
		defer timer.Stop()
	}
	gf.handoffArmed.Store(true)
	defer gf.handoffArmed.Store(false)
	gf.checkHandoffBytes() // bytes the server sent already count
	_, stopped, err = copyHalfUntil(gf.server, gf.client, nil, true, gf.countUpArmed, gf.handoffDue)
	return stopped, err
}

// countUpArmed is countUp while a deferred handoff waits for its bytes.
func (gf *guardFlow) countUpArmed(n int) {
	gf.countUp(n)
	gf.checkHandoffBytes()
}

// checkHandoffBytes fires the deferred handoff once the flow has moved
// HandoffAfterBytes.
func (gf *guardFlow) checkHandoffBytes() {
	if gf.upBytes.Load()+gf.downBytes.Load() >= gf.g.HandoffAfterBytes {
		gf.fireHandoff()
	}
}

func (gf *guardFlow) fireHandoff() {
	if gf.handoffFired.CompareAndSwap(false, true) {
		close(gf.handoffDue)
	}
}

func (gf *guardFlow) countUp(n int) {
	gf.touch()
	gf.upBytes.Add(int64(n))
	gf.af.AddToServer(n)
}

// serveTLS holds the client's bytes until the ClientHello is complete and
// judged.
func (gf *guardFlow) serveTLS(in *clientInput) *halfError {
	pool := &tlsParsers
	if gf.g.Events == nil {
		pool = &tlsParsersNoFP
	}
	p := pool.Get().(*inspect.TLSParser)
	p.Reset()
	defer pool.Put(p)
	fed := 0
	for {
		n, st, err := p.Feed(in.buf[fed:])
		fed += n
		if err != nil {
			gf.g.Metrics.InspectError("tls")
			return gf.invalid("tls", err.Error(), refuseTLSAlert)
		}
		if st == inspect.Done {
			break
		}
		if in.stalled() {
			reason := "truncated ClientHello"
			if in.timedOut {
				gf.g.Metrics.InspectTimeout()
				reason = "ClientHello not complete within limits.inspect_timeout"
			} else if len(in.buf) == cap(in.buf) {
				reason = "ClientHello larger than limits.inspect_bytes"
			}
			gf.g.Metrics.InspectError("tls")
			return gf.invalid("tls", reason, refuseTLSAlert)
		}
		if err := in.read(); err != nil {
			return err
		}
	}
	gf.client.SetReadDeadline(time.Time{})
	h := p.Hello()
	gf.facts.SNI = h.ServerName
	gf.facts.ALPN = h.ALPN
	gf.af.SetName(h.ServerName)
	if gf.g.Events != nil {
		gf.g.Events.TLS(&event.TLS{Header: gf.hdr, SNI: h.ServerNameRaw, Version: h.MaxVersion,
			ALPN: h.ALPN, JA3: h.JA3, JA3Hash: h.JA3Hash, JA4: h.JA4, ECH: h.ECH})
	}
	v := gf.decide()
	gf.facts.ALPN = nil // owned by the parser, which goes back to its pool
	if v.Action != rules.ActionAllow {
		gf.refuse(v, refuseTLSAlert)
		return nil
	}
	return gf.forwardRest(in)
}

// serveHTTP judges every request head on the connection before its bytes
// go upstream; bodies pass as they come.
func (gf *guardFlow) serveHTTP(in *clientInput) *halfError {
	p := httpParsers.Get().(*inspect.HTTPParser)
	p.Reset()
	defer httpParsers.Put(p)
	headNext := true // in.buf starts where a request head must start
	for {
		if headNext && gf.switchWant.Load() != 0 && len(in.buf) > 0 {
			// After an Upgrade or CONNECT, bytes that are not HTTP at all
			// (WebSocket frames, TLS in a tunnel) pass once the server has
			// switched; HTTP requests are judged as ever, so a refused
			// upgrade cannot smuggle one past the rules.
			if proto, sure := inspect.Detect(in.buf); sure && proto != inspect.ProtoHTTP1 {
				if gf.switched() {
					return gf.forwardRest(in)
				}
				gf.g.Metrics.InspectError("http")
				return gf.invalid("http", "non-HTTP bytes after a refused Upgrade or CONNECT", refuseHTTP403)
			}
		}
		n, st, err := p.Feed(in.buf)
		if err != nil {
			if errors.Is(err, inspect.ErrUpgraded) {
				// An h2c upgrade was answered with the h2 preface: the
				// connection is HTTP/2 from here on.
				return gf.forwardRest(in)
			}

			gf.g.Metrics.InspectError("http")
			return gf.invalid("http", err.Error(), refuseHTTP403)
		}
		if st == inspect.Done {
			req := p.Request()
			gf.requests++
			gf.facts.Host, gf.facts.Method, gf.facts.Path = req.Host, req.Method, req.Path
			gf.af.SetName(req.Host)
			if req.H2Preface {
				gf.facts.App = inspect.ProtoHTTP2
				gf.hdr.AppProto = "h2"
			}
			v := gf.decide()
			gf.httpEvent(req, v)
			if v.Action != rules.ActionAllow {
				gf.refuse(v, refuseHTTP403)
				return nil
			}
			if gf.requests == 1 {
				gf.client.SetReadDeadline(time.Time{})
				if gf.g.Handoff != nil && !in.eof && gf.g.HandoffHTTP {
					gf.handoffHTTP(in)
				}
			}
			switch {
			case req.Method == "CONNECT":
				gf.expectSwitch(switchTo2xx)
			case req.Upgrade != "" && !req.H2CUpgrade:
				gf.expectSwitch(switchTo101)
			}
			if err := gf.forward(in.buf[:n]); err != nil {
				return err
			}
			in.consume(n)
			if req.H2Preface {
				return gf.forwardRest(in) // HTTP/2 prior knowledge from here on
			}
			headNext = req.ContentLength == 0
			continue // a pipelined request may already be buffered
		}
		if n > 0 { // body bytes of a judged request
			if err := gf.forward(in.buf[:n]); err != nil {
				return err
			}
			in.consume(n)
			headNext = false // the body may not be over: leave it to the parser
		}
		if in.eof {
			// A partial head at EOF is never forwarded: the server would
			// only answer it with an error.
			return gf.passClientFIN()
		}
		if in.timedOut || len(in.buf) == cap(in.buf) {
			reason := "request head larger than limits.inspect_bytes"
			if in.timedOut {
				gf.g.Metrics.InspectTimeout()
				reason = "request head not complete within limits.inspect_timeout"
			}
			gf.g.Metrics.InspectError("http")
			return gf.invalid("http", reason, refuseHTTP403)
		}
		if err := in.readNext(); err != nil {
			return err
		}
	}
}

// expectSwitch arms copyDown to record the status of the next response.
// Set before the request goes upstream, so the response cannot precede it.
func (gf *guardFlow) expectSwitch(want uint32) {
	gf.switchStatus.Store(0)
	gf.switchWant.Store(want)
	gf.switchGen.Add(1)
}

// decide judges the flow with what is known now, under the rules in force
// now, and records the verdict.
func (gf *guardFlow) decide() rules.Verdict {
	v := gf.g.decide(&gf.facts)
	gf.record(v)
	return v
}

// invalid records the on_invalid verdict for bytes that did not parse and
// refuses the flow, or, if on_invalid allows, relays it from here on
// without inspection, as asked.
func (gf *guardFlow) invalid(kind, reason string, how refusal) *halfError {
	v := gf.g.invalid()
	if gf.g.Log != nil {
		gf.g.Log.Debug("invalid client bytes", "flow_id", gf.f.ID, "kind", kind, "reason", reason, "action", v.Action.String())
	}
	gf.record(v)
	if v.Action == rules.ActionAllow || v.Action == rules.ActionAlert {
		gf.client.SetReadDeadline(time.Time{})
		return gf.forwardRest(gf.in)
	}
	gf.refuse(v, how)
	return nil
}

// record counts a verdict, remembers it for the flow event, and logs the
// alerts it carries.
func (gf *guardFlow) record(v rules.Verdict) {
	gf.decided = true
	gf.verdict = v
	gf.hdr.Verdict = v.Action.String()
	gf.hdr.Rule = v.Rule
	if gf.af != nil {
		gf.af.SetVerdict(v.Action.String(), v.Rule)
	} else {
		gf.g.Metrics.Verdict(v.Action.String(), v.Rule) // refused at the SYN: no active flow
	}
	ev := gf.g.Events
	if ev == nil {
		return
	}
	for _, name := range v.Alerts {
		gf.alerted = true
		ev.Alert(&event.Alert{Header: gf.hdr, Action: event.ActionAllowed, Signature: name})
	}
	if v.Action == rules.ActionDeny || v.Action == rules.ActionDrop {
		gf.alerted = true
		ev.Alert(&event.Alert{Header: gf.hdr, Action: event.ActionBlocked, Signature: v.RuleName()})
	}
}

func (gf *guardFlow) httpEvent(req *inspect.Request, v rules.Verdict) {
	if gf.g.Events == nil {
		return
	}
	e := event.HTTP{Header: gf.hdr, Hostname: req.Host, URL: req.Target, Method: req.Method,
		UserAgent: req.UserAgent, Protocol: req.Version}
	if v.Action == rules.ActionDeny {
		e.Status = 403
	}
	gf.g.Events.HTTP(&e)
}

// refusal is how a deny verdict is shown to the client.
type refusal uint8

const (
	refuseReset    refusal = iota // TCP reset
	refuseTLSAlert                // fatal TLS alert, then close
	refuseHTTP403                 // HTTP 403 page naming the rule, then close
	refuseDNS                     // the DNS answer in gf.dnsRefusal, then close
)

// refuse enforces a deny or drop verdict. The server never gets the held
// bytes; earlier responses on a keep-alive connection reach the client
// intact before the 403.
func (gf *guardFlow) refuse(v rules.Verdict, how refusal) {
	gf.refused = true
	gf.refusing.Store(true)
	if gf.in != nil {
		gf.heldIn += int64(len(gf.in.buf))
		gf.in.buf = gf.in.buf[:0]
	}
	gf.client.SetReadDeadline(time.Time{})
	if (how == refuseHTTP403 || how == refuseDNS) && gf.requests > 1 && v.Action == rules.ActionDeny {
		// Let the server finish what it owes for the requests it got: a
		// FIN upstream, then wait for its side to end.
		gf.server.CloseWrite()
		select {
		case <-gf.downDone:
		case <-time.After(gf.lim.DrainTimeout):
		}
	}
	abortConn(gf.server)
	<-gf.downDone

	if v.Action == rules.ActionDrop {
		// Nothing goes back: hold the client's leg unanswered until it
		// gives up or DropHold passes.
		gf.client.SetReadDeadline(time.Now().Add(gf.lim.DropHold))
		gf.heldIn += discard(gf.client)
		abortConn(gf.client)
		return
	}
	switch how {
	case refuseTLSAlert:
		n, _ := gf.client.Write(policy.TLSAlert(policy.AlertAccessDenied))
		gf.ownOut += int64(n)
	case refuseHTTP403:
		n, _ := gf.client.Write(gf.denyResponse(v))
		gf.ownOut += int64(n)
	case refuseDNS:
		n, _ := gf.client.Write(gf.dnsRefusal)
		gf.ownOut += int64(n)
	default:
		abortConn(gf.client)
		return
	}
	// Close gracefully after the answer: FIN, then read (and drop) what
	// the client still sends, so the close does not turn into an RST that
	// could overtake the answer.
	gf.client.CloseWrite()
	gf.client.SetReadDeadline(time.Now().Add(2 * time.Second))
	gf.heldIn += discard(gf.client)
}

// discard reads from c until EOF, an error or its deadline, and returns
// how many bytes it dropped.
func discard(c net.Conn) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var total int64
	for {
		n, err := c.Read(*bp)
		total += int64(n)
		if err != nil {
			return total
		}
	}
}

// end writes the flow's event and log line and takes it out of the table.
func (gf *guardFlow) end(res Result) {
	toServer, toClient := gf.af.End()
	if gf.af == nil {
		toServer, toClient = uint64(res.Up), uint64(res.Down)
	}
	// The flow's bytes as the client saw them: what it sent, forwarded or
	// not, and what it got, from the server or from netward.
	relayed := toServer+toClient > 0
	toServer += uint64(gf.heldIn)
	toClient += uint64(gf.ownOut)
	if ev := gf.g.Events; ev != nil {
		e := event.Flow{Header: gf.hdr, Start: gf.f.Start, End: time.Now(),
			BytesToServer: toServer, BytesToClient: toClient, Alerted: gf.alerted,
			State: event.StateClosed, Reason: event.ReasonTimeout}
		switch {
		case gf.refused:
			e.State, e.Reason = event.StateNew, event.ReasonForced
			if relayed { // refused after data went both ways (a later request)
				e.State = event.StateEstablished
			}
		case res.End != EndClosed:
			e.State = event.StateEstablished
		}
		ev.Flow(&e)
	}
	// Formatting the line costs more than the rest of end; skip it when
	// the level drops it anyway.
	if gf.g.Log == nil || !gf.g.Log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	attrs := []slog.Attr{
		slog.Uint64("flow_id", gf.f.ID),
		slog.String("src", gf.f.Client.String()),
		slog.String("dst", gf.f.Server.String()),
		slog.String("app", gf.facts.App.String()),
	}
	if gf.facts.SNI != "" {
		attrs = append(attrs, slog.String("sni", gf.facts.SNI))
	}
	if gf.facts.Host != "" {
		attrs = append(attrs, slog.String("host", gf.facts.Host))
	}
	if gf.decided {
		attrs = append(attrs, slog.String("verdict", gf.verdict.Action.String()), slog.String("rule", gf.verdict.RuleName()))
	}
	if c := gf.facts.SrcGeo.Country; c != "" {
		attrs = append(attrs, slog.String("src_country", c))
	}
	attrs = append(attrs,
		slog.Int64("bytes_up", int64(toServer)),
		slog.Int64("bytes_down", int64(toClient)),
		slog.Duration("duration", time.Since(gf.f.Start).Round(time.Microsecond)),
		slog.String("end", res.End.String()),
	)
	if gf.refused {
		attrs[len(attrs)-1] = slog.String("end", "refused")
	}
	if res.Err != nil {
		attrs = append(attrs, slog.String("error", res.Err.Error()))
	}
	gf.g.Log.LogAttrs(context.Background(), slog.LevelInfo, "flow", attrs...)
}
