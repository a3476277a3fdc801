// Package gwlb is netward's GENEVE datapath behind an AWS Gateway Load
// Balancer (netward run --geneve). It receives GENEVE on UDP (6081),
// decapsulates, and feeds each inner TCP packet to the gVisor stack of the
// packet's (GWLB endpoint ID, attachment ID); everything a stack sends — to
// the client and to the server, which is reached back through GWLB — goes
// out encapsulated with the GENEVE options of its flow, to the GWLB
// address the flow's packets came from.
//
// One stack per (endpoint, attachment) keeps flows apart whose inner
// addresses are the same behind two endpoints (overlapping customer
// ranges): the stacks never share a port or a TIME_WAIT entry. Each stack
// sits on one end of a SOCK_SEQPACKET socketpair (one IP packet per
// message, like a TUN); this package holds the other end.
//
// Inner UDP goes to the endpoint's stack too (Options.UDP), whose
// DatagramHandler judges QUIC, DNS and plain UDP as in TUN mode; what it
// lets through or answers comes back out of the stack like TCP. Other
// inner packets (ICMP echo, other protocols) are not inspected: they go
// back to GWLB at once, unchanged, with their options (counted as
// passthrough).
package gwlb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netward/netward/geneve"
	"github.com/netward/netward/netstack"
	"golang.org/x/sys/unix"
)

// GWLB's frames are up to 8500 bytes (AWS: "Gateway Load Balancer supports
// a maximum transmission unit (MTU) size of 8500 bytes"). The outer
// headers take OuterOverhead of them: IPv4 (20) + UDP (8) + GENEVE (8) +
// GWLB's three options (32).
const (
	FrameMTU      = 8500
	OuterOverhead = 20 + 8 + geneve.HeaderLen + 32
	// InnerMTU is the stacks' MTU: the largest inner packet that fits a
	// GWLB frame. Larger inner packets are dropped (DropOversized).
	InnerMTU = FrameMTU - OuterOverhead
)

// Defaults for Options fields left zero.
const (
	DefaultMaxEndpoints = 64
	// DefaultMaxFlows caps one endpoint's flow table (the options and
	// GWLB address of each inner flow); packets of more flows are dropped.
	DefaultMaxFlows = 1 << 18
	// DefaultFlowIdle forgets a flow's options after this long without a
	// packet: longer than GWLB's own TCP idle timeout (350 s), after
	// which GWLB forgets the flow too.
	DefaultFlowIdle = 6 * time.Minute
)

// rxBufSize holds any UDP datagram: a truncated read would be a corrupt
// inner packet.
const rxBufSize = 1 << 16

// headroom is the room in front of each packet a stack sends, for the
// GENEVE header: fixed part + the most options a header can carry.
const headroom = geneve.HeaderLen + geneve.MaxOptionsLen

// NewStackFunc builds the stack of one (endpoint, attachment) on files
// (one end of a socketpair) with the given MTU.
type NewStackFunc func(files []*os.File, mtu int) (*netstack.Stack, error)

// Options configure a Datapath.
type Options struct {
	// Listen is the UDP address to receive GENEVE on, e.g. ":6081".
	// Required unless Conn is set.
	Listen string
	// Conn is an open UDP socket to use instead of Listen (tests).
	Conn *net.UDPConn
	// NewStack builds each endpoint's stack. Required.
	NewStack NewStackFunc
	// MaxEndpoints: see DefaultMaxEndpoints.
	MaxEndpoints int
	// MaxFlows: see DefaultMaxFlows.
	MaxFlows int
	// FlowIdle: see DefaultFlowIdle.
	FlowIdle time.Duration
	// UDP sends inner UDP to the endpoint's stack, for its
	// DatagramHandler to judge; false sends it straight back.
	UDP bool
	// Metrics counts packets and drops; nil counts nowhere but Stats.
	Metrics *Metrics
	// Logger; nil discards.
	Logger *slog.Logger
}

// key is what a stack serves: one GWLB endpoint's attachment.
type key struct{ endpoint, attachment uint64 }

// Datapath is the running GENEVE datapath.
type Datapath struct {
	conn     *net.UDPConn
	newStack NewStackFunc
	maxEP    int
	maxFlows int
	idle     time.Duration
	udp      bool
	m        *Metrics
	log      *slog.Logger

	mu      sync.Mutex
	links   map[key]*link
	closing bool
	// known is a copy of links, replaced whenever links changes (an
	// endpoint's first packet, Close): every packet looks its endpoint
	// up here, without mu.
	known atomic.Pointer[map[key]*link]

	wg       sync.WaitGroup
	failOnce sync.Once
	failed   chan struct{}
	failErr  error
	done     chan struct{}
	closed   atomic.Bool
}

// New opens the listener and starts receiving.
func New(o Options) (*Datapath, error) {
	if o.NewStack == nil {
		return nil, errors.New("gwlb: Options.NewStack is nil")
	}
	if o.MaxEndpoints <= 0 {
		o.MaxEndpoints = DefaultMaxEndpoints
	}
	if o.MaxFlows <= 0 {
		o.MaxFlows = DefaultMaxFlows
	}
	if o.FlowIdle <= 0 {
		o.FlowIdle = DefaultFlowIdle
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	conn := o.Conn
	if conn == nil {
		ap, err := net.ResolveUDPAddr("udp", o.Listen)
		if err != nil {
			return nil, fmt.Errorf("gwlb: listen address %q: %w", o.Listen, err)
		}
		if conn, err = net.ListenUDP("udp", ap); err != nil {
			return nil, fmt.Errorf("gwlb: listen: %w", err)
		}
	}
	// Bursts from GWLB arrive faster than one reader hands them to the
	// stacks; the default 208 KiB is a few dozen jumbo frames.
	conn.SetReadBuffer(8 << 20)
	conn.SetWriteBuffer(8 << 20)
	d := &Datapath{
		conn: conn, newStack: o.NewStack, maxEP: o.MaxEndpoints, maxFlows: o.MaxFlows, idle: o.FlowIdle, udp: o.UDP,
		m: o.Metrics, log: o.Logger,
		links:  make(map[key]*link),
		failed: make(chan struct{}),
		done:   make(chan struct{}),
	}
	d.wg.Add(2)
	go d.readLoop()
	go d.sweepLoop()
	return d, nil
}

// LocalAddr is the listener's address.
func (d *Datapath) LocalAddr() netip.AddrPort {
	return d.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Failed is closed when the datapath stops on its own (the listener
// failed); Err says why.
func (d *Datapath) Failed() <-chan struct{} { return d.failed }

// Err is why Failed was closed, or nil.
func (d *Datapath) Err() error {
	select {
	case <-d.failed:
		return d.failErr
	default:
		return nil
	}
}

// Check is /healthz's check: nil while the listener receives and every
// endpoint's stack runs.
func (d *Datapath) Check() error {
	if d.closed.Load() {
		return errors.New("gwlb: datapath closed")
	}
	if err := d.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, l := range d.links {
		if err := l.st.Err(); err != nil {
			return fmt.Errorf("gwlb: stack of endpoint %016x attachment %016x failed: %w", k.endpoint, k.attachment, err)
		}
	}
	return nil
}

func (d *Datapath) fail(err error) {
	d.failOnce.Do(func() {
		d.failErr = err
		close(d.failed)
	})
}

// Stacks returns the endpoints' stacks at this moment.
func (d *Datapath) Stacks() []*netstack.Stack {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*netstack.Stack, 0, len(d.links))
	for _, l := range d.links {
		out = append(out, l.st)
	}
	return out
}

// ActiveFlows is the number of TCP flows being served, over all stacks.
func (d *Datapath) ActiveFlows() int64 {
	var n int64
	for _, st := range d.Stacks() {
		n += st.Stats().FlowsActive.Load()
	}
	return n
}

// Shutdown stops every stack accepting flows and resets the open ones
// (netstack.Stack.Shutdown), waiting for ctx at the longest.
func (d *Datapath) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	var errs []error
	for _, st := range d.Stacks() {
		if err := st.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close stops receiving and closes every stack.
func (d *Datapath) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	close(d.done)
	d.conn.Close()
	d.wg.Wait() // the reader: no new links after this
	var errs []error
	d.mu.Lock()
	links := d.links
	d.links = map[key]*link{}
	d.known.Store(new(map[key]*link)) // a nil map: finds nothing
	d.mu.Unlock()
	for _, l := range links {
		if err := l.close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.m.endpoints.Set(0)
	return errors.Join(errs...)
}

// readLoop receives GENEVE datagrams until the listener closes. Its
// buffer is its own for life: nothing is allocated per packet.
func (d *Datapath) readLoop() {
	defer d.wg.Done()
	buf := make([]byte, rxBufSize)
	var h geneve.Header
	for {
		n, from, err := d.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if d.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			d.fail(fmt.Errorf("gwlb: receive: %w", err))
			return
		}
		d.receive(buf[:n], from.Addr().Unmap(), &h)
	}
}

// receive handles one GENEVE datagram from GWLB.
func (d *Datapath) receive(b []byte, from netip.Addr, h *geneve.Header) {
	m := d.m
	m.rxPackets.Inc()
	m.rxBytes.Add(float64(len(b)))
	inner, err := geneve.Parse(b, h)
	if err != nil {
		m.parseDrop(err)
		return
	}
	switch {
	case h.OAM:
		m.drops[DropOAM].Inc()
		return
	case h.Has&(geneve.FoundEndpointID|geneve.FoundAttachmentID) != geneve.FoundEndpointID|geneve.FoundAttachmentID:
		m.drops[DropMissingOption].Inc()
		return
	case len(inner) > InnerMTU:
		m.drops[DropOversized].Inc()
		return
	}
	var t tuple
	if !t.parse(inner, h.Protocol) {
		m.drops[DropNotIP].Inc()
		return
	}
	l := d.link(key{h.EndpointID, h.AttachmentID})
	if l == nil {
		return // counted by link
	}
	if t.hasPorts {
		if !l.flows.note(t.key(), h, from, d.maxFlows) {
			m.drops[DropFlowTable].Inc()
			return
		}
	}
	if t.proto != protoTCP && (t.proto != protoUDP || !d.udp) {
		// Not inspected: straight back to GWLB.
		m.passthrough.Inc()
		d.sendBack(inner, h, from)
		return
	}
	if _, err := unix.Write(l.fd, inner); err != nil {
		// EAGAIN: the stack's socket buffer is full (TCP retransmits).
		m.drops[DropStackBusy].Inc()
		return
	}
	m.toStack.Inc()
}

// sendBack encapsulates inner with h's options and sends it to GWLB. It
// copies inner behind the header in a pooled buffer.
func (d *Datapath) sendBack(inner []byte, h *geneve.Header, to netip.Addr) {
	bp := txPool.Get().(*[]byte)
	out, err := geneve.Append((*bp)[:0], h)
	if err == nil {
		out = append(out, inner...)
		d.send(out, to)
	}
	txPool.Put(bp)
}

var txPool = sync.Pool{New: func() any { b := make([]byte, 0, headroom+rxBufSize); return &b }}

// send sends one encapsulated packet to GWLB's GENEVE port.
func (d *Datapath) send(pkt []byte, to netip.Addr) {
	if len(pkt)+28 > FrameMTU {
		d.m.drops[DropTxOversized].Inc()
		return
	}
	if _, err := d.conn.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(to, geneve.Port)); err != nil {
		d.m.drops[DropSendError].Inc()
		return
	}
	d.m.txPackets.Inc()
	d.m.txBytes.Add(float64(len(pkt)))
}

// link returns the endpoint's link, creating it (and its stack) on the
// endpoint's first packet; nil when the cap is reached or the stack cannot
// be built (counted).
func (d *Datapath) link(k key) *link {
	if known := d.known.Load(); known != nil {
		if l := (*known)[k]; l != nil {
			return l
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.links[k]; l != nil {
		return l
	}
	if d.closing {
		d.m.drops[DropClosing].Inc()
		return nil
	}
	if len(d.links) >= d.maxEP {
		d.m.drops[DropEndpointLimit].Inc()
		return nil
	}
	l, err := d.newLink(k)
	if err != nil {
		d.m.drops[DropStackError].Inc()
		d.log.Error("cannot build the stack of a GWLB endpoint", "endpoint", fmt.Sprintf("%016x", k.endpoint), "attachment", fmt.Sprintf("%016x", k.attachment), "error", err)
		return nil
	}
	d.links[k] = l
	known := make(map[key]*link, len(d.links))
	for k, l := range d.links {
		known[k] = l
	}
	d.known.Store(&known)
	d.m.endpoints.Set(float64(len(d.links)))
	d.log.Info("GWLB endpoint", "endpoint", fmt.Sprintf("%016x", k.endpoint), "attachment", fmt.Sprintf("%016x", k.attachment), "endpoints", len(d.links))
	return l
}

// sweepLoop forgets idle flows' options.
func (d *Datapath) sweepLoop() {
	defer d.wg.Done()
	t := time.NewTicker(min(d.idle/4, 30*time.Second))
	defer t.Stop()
	for {
		select {
		case <-d.done:
			return
		case now := <-t.C:
			d.mu.Lock()
			links := make([]*link, 0, len(d.links))
			for _, l := range d.links {
				links = append(links, l)
			}
			d.mu.Unlock()
			for _, l := range links {
				l.flows.sweep(now.Add(-d.idle))
			}
		}
	}
}
