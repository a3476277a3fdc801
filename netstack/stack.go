package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/cpu"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// nicID is the stack's only NIC: the TUN.
const nicID tcpip.NICID = 1

// Defaults for Options fields left zero.
const (
	// DefaultMaxInFlight caps handshakes in progress (SYN seen, upstream
	// not yet answered). Each holds a goroutine and a gVisor endpoint; past
	// the cap new SYNs are dropped and counted, and clients retransmit.
	DefaultMaxInFlight = 2048
	// DefaultDialTimeout bounds the wait for the server's SYN-ACK. The
	// client sees silence meanwhile, as it would toward an unreachable
	// host, and its own connect timeout decides what it reports.
	DefaultDialTimeout = 30 * time.Second
	// DefaultTimeWait is how long gVisor keeps a closed connection's tuple
	// in TIME_WAIT. gVisor's 60 s default stalls clients that reuse a
	// source port (datapath-notes.md: 128 conn/s, stalls after 1.5 s):
	// such a SYN is not a new connection to gVisor. synGate now holds it
	// until TIME_WAIT ends, so this is also how long such a client may
	// wait. The kernels at both ends keep their own TIME_WAIT; the relay's
	// copy only absorbs stray segments right behind the close (a client's
	// retransmitted FIN comes after its minimum RTO of 200 ms, past any
	// value worth keeping here, and then gets a reset, which only ends the
	// client's already closed socket).
	DefaultTimeWait = 10 * time.Millisecond
	// DefaultBufferMax is the largest TCP send and receive buffer per leg
	// that auto-tuning may reach (datapath-notes.md: 4 and 8 MiB equal,
	// 16 MiB worse).
	DefaultBufferMax = 4 << 20
)

// txQueueLen is the length of each FIFO queue in front of the TUN
// (Options.TUNWriters, and the wgEndpoint's): the packets gVisor may have
// waiting to be written (more are dropped, counted by TxQueueDrops, and
// TCP retransmits), as the TUN's txqueuelen is for the other direction.
const txQueueLen = 4096

// Options configures a Stack.
type Options struct {
	// Files are the TUN queues (TUN.Files), or one end of a socketpair in
	// tests. The Stack owns them and closes them in Close. Required.
	Files []*os.File
	// MTU of the device. Required.
	MTU int
	// VnetHdr says that packets carry a virtio_net_hdr (TUN.VnetHdr);
	// enables GSO super-packets in both directions.
	VnetHdr bool
	// Handler admits and serves flows. Required.
	Handler Handler
	// Datagrams takes the UDP packets steering sends to the TUN; nil
	// drops them (counted in Stats.RxUDPDropped).
	Datagrams DatagramHandler
	// FlowIDs, if set, is a flow-ID sequence shared with other stacks
	// (the GENEVE datapath's, one per endpoint), so EVE flow_ids never
	// repeat between them; the caller seeds it (NewFlowIDs). nil: the
	// stack's own.
	FlowIDs *atomic.Uint64
	// Logger for errors outside any flow; nil discards.
	Logger *slog.Logger
	// MaxInFlight: see DefaultMaxInFlight.
	MaxInFlight int
	// DialTimeout: see DefaultDialTimeout.
	DialTimeout time.Duration
	// TimeWait: see DefaultTimeWait.
	TimeWait time.Duration
	// BufferMax: see DefaultBufferMax.
	BufferMax int
	// UpstreamKernel dials the server with a kernel socket bound to the
	// client's address (IP_TRANSPARENT) instead of through gVisor and the
	// TUN. Needs the kernel rules described at dialKernel.
	UpstreamKernel bool
	// UpstreamMark is the SO_MARK of kernel upstream sockets; 0 for none.
	UpstreamMark uint32
	// MaxKernelSockets caps the kernel upstream sockets open at once; a
	// flow beyond it takes the gVisor leg (counted in UpstreamFallbacks).
	// 0 means the process's file limit (RLIMIT_NOFILE) less FileReserve,
	// so the flows never take the last descriptors the metrics listener,
	// the admin socket and rule reloads need.
	MaxKernelSockets int
	// ReplaySYN answers an admitted flow's handshake with the kernel's
	// transparent listener (ServeAccepted), after the server has
	// answered, by writing the client's SYN back into the TUN (replay.go;
	// steer's ReplaySYN rules). Needs UpstreamKernel; a flow that cannot
	// have a kernel server leg is reset.
	ReplaySYN bool
	// wrapKernelDial, if set, wraps dialKernel (tests: create the socket
	// in another network namespace).
	wrapKernelDial func(func(context.Context, *Flow) (Conn, error)) func(context.Context, *Flow) (Conn, error)
	// AckDelay lets a pure ACK gVisor sends wait this long for a later
	// packet of its connection to carry it instead (ackDelayer); 0, the
	// default, writes every ACK at once. Only with VnetHdr. Measured on
	// the lab: request/response p50 −5 %, bulk transfers toward the
	// client up to −40 % (the server's sender gets fewer ACKs), so off.
	AckDelay time.Duration
	// TUNWriters, when positive, puts a FIFO queue (gVisor's fifo qdisc)
	// in front of the TUN with this many goroutines writing it, each
	// taking the packets of its share of connections in order. 0 writes
	// every packet in the goroutine that sent it (the relay's, or gVisor's
	// TCP processor's). A TUN write runs the kernel's forwarding of the
	// packet inline, so writing behind a queue lets the relay read and
	// segment the next chunk on the other core meanwhile: one stream
	// app→client 5.0 → 8.5 Gbit/s on the lab (README). The wireguard
	// endpoint (no offloads) always has one writer.
	TUNWriters int
	// TUNDirectMax is the largest packet (bytes) that skips the queue in
	// front of the TUN when the queue is empty: its sender writes it, with
	// no writer to wake (txQueue). Pure ACKs always queue. 0 queues every
	// packet; netward run uses DefaultTUNDirectMax.
	TUNDirectMax int
	// SACK enables selective acknowledgements in gVisor's TCP. Off by
	// default: with it on, gVisor made thousands of spurious
	// retransmissions per 10 s on the lab and ran slower
	// (datapath-notes.md).
	SACK bool
}

// Stack is the gVisor stack that terminates forwarded TCP flows.
type Stack struct {
	stack  *stack.Stack
	link   tunLink
	tx     *txQueue // in front of link; nil when every sender writes
	gate   *synGate
	replay *synReplay // nil without Options.ReplaySYN
	// maxHalfOpen is Options.MaxInFlight: with SYN replay, it bounds the
	// replayed flows whose handshake is in the kernel's hands too.
	maxHalfOpen int
	handler     Handler
	log         *slog.Logger
	dialTO      time.Duration
	stats       Stats

	upstreamKernel atomic.Bool
	upstreamMark   uint32
	maxKernel      int64
	kernelSockets  atomic.Int64 // kernel upstream sockets of flows in progress
	// kernelDial is dialKernel; tests wrap it to create the socket in
	// another network namespace.
	kernelDial func(context.Context, *Flow) (Conn, error)

	// destroyer and pendingTW end the kernel's TIME_WAIT of handed-off
	// client legs (CloseHandoff).
	destroyer sockDestroyer
	pendingTW pendingTimeWait

	nextID  *atomic.Uint64
	closing atomic.Bool
	done    chan struct{} // closed by Shutdown: aborts dials

	flows [flowShards]flowShard // served flows, by Flow.ID
	// wg counts forwarder requests in progress. A request joins it under
	// enterMu's read lock only while closing is false, and Shutdown sets
	// closing under the write lock before it waits: an Add from zero never
	// races the Wait (sync.WaitGroup's rule; SYNs keep arriving during a
	// shutdown, and the race detector caught one).
	wg      sync.WaitGroup
	enterMu sync.RWMutex
	once    sync.Once
}

// liveFlow is a served flow's legs, so Shutdown can close them.
type liveFlow struct{ client, server Conn }

// flowShards spreads the served flows over locks: every flow takes its
// shard's lock twice (in and out of Serve), and one lock for all would make
// new connections on all cores wait for each other.
const flowShards = 64

// flowShard is one lock's share of the served flows, padded to its own
// cache line.
type flowShard struct {
	mu    sync.Mutex
	flows map[uint64]*liveFlow // by Flow.ID
	// dialCtx ends the shard's kernel dials at Shutdown (cancelDials).
	// Each dial's deadline context registers with its parent under the
	// parent's lock, so the parent is per shard, not one for the stack.
	dialCtx     context.Context
	cancelDials context.CancelFunc
	_           cpu.CacheLinePad
}

// New builds the stack on the given TUN queues and starts reading them.
func New(o Options) (*Stack, error) {
	if o.Handler == nil {
		return nil, errors.New("netstack: Options.Handler is nil")
	}
	if o.MTU <= 0 {
		return nil, errors.New("netstack: Options.MTU must be positive")
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.TimeWait <= 0 {
		o.TimeWait = DefaultTimeWait
	}
	if o.BufferMax <= 0 {
		o.BufferMax = DefaultBufferMax
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Stack{
		handler: o.Handler,
		log:     o.Logger,
		dialTO:  o.DialTimeout,
		done:    make(chan struct{}),

		upstreamMark: o.UpstreamMark,
		maxHalfOpen:  o.MaxInFlight,
	}
	s.destroyer.fd = -1
	for i := range s.flows {
		shard := &s.flows[i]
		shard.flows = make(map[uint64]*liveFlow)
		shard.dialCtx, shard.cancelDials = context.WithCancel(context.Background())
	}
	s.upstreamKernel.Store(o.UpstreamKernel)
	s.maxKernel = int64(o.MaxKernelSockets)
	if o.UpstreamKernel && s.maxKernel <= 0 {
		s.maxKernel = fileLimit() - FileReserve
		if o.ReplaySYN {
			s.maxKernel /= 2 // each flow's client leg is a kernel socket too
		}
	}
	// Flow IDs are EVE flow_ids: start from the clock (milliseconds << 10)
	// so they do not repeat across restarts in a SIEM — a later run starts
	// above an earlier one's IDs unless that one averaged over a million
	// flows a second — and stay below 2^53, so JSON consumers that read
	// numbers as doubles keep them exact.
	s.nextID = o.FlowIDs
	if s.nextID == nil {
		s.nextID = NewFlowIDs()
	}
	var link tunLink
	if dev := takeWGDevice(o.Files); dev != nil {
		// A TUN opened without offloads: wireguard's device, in batches.
		wl, err := newWGEndpoint(dev, uint32(o.MTU), &s.stats)
		if err != nil {
			dev.Close()
			return nil, err
		}
		link = wl
	} else {
		var gso uint32
		if o.VnetHdr {
			gso = maxGSOSize
		}
		fl, err := newLinkEndpoint(endpointOptions{
			Files:      o.Files,
			MTU:        uint32(o.MTU),
			VnetHdr:    o.VnetHdr,
			GSOMaxSize: gso,
			Stats:      &s.stats,
			AckDelay:   o.AckDelay,
		})
		if err != nil {
			return nil, err
		}
		link = fl
	}
	s.link = link
	s.kernelDial = s.dialKernel
	if o.wrapKernelDial != nil {
		s.kernelDial = o.wrapKernelDial(s.dialKernel)
	}

	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	s.stack = st
	fail := func(err error) (*Stack, error) {
		st.Close()
		link.Close()
		st.Wait()
		return nil, err
	}
	tcpOpts := []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPSACKEnabled(o.SACK)),
		ptr(tcpip.TCPTimeWaitTimeoutOption(o.TimeWait)),
		// Reno: faster than cubic on the lab (datapath-notes.md); the
		// client's and server's kernels run their own congestion control
		// end to end anyway, each leg here spans one hop.
		ptr(tcpip.CongestionControlOption("reno")),
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 128 << 10, Max: o.BufferMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 128 << 10, Max: o.BufferMax},
	}
	for _, opt := range tcpOpts {
		if terr := st.SetTransportProtocolOption(tcp.ProtocolNumber, opt); terr != nil {
			return fail(fmt.Errorf("netstack: set TCP option %T: %s", opt, terr))
		}
	}
	// The gate too: it must see the first SYN the readers deliver.
	s.gate = newSYNGate(st, o.TimeWait, &s.stats, link.deliverHeld)
	link.setGate(s.gate)
	if o.ReplaySYN {
		if !o.UpstreamKernel {
			return fail(errors.New("netstack: SYN replay needs the kernel upstream leg"))
		}
		s.replay = newSYNReplay()
		link.setReplay(s.replay)
	}
	link.setDatagrams(o.Datagrams)
	// The forwarder is in place before the NIC exists: the NIC's readers
	// start delivering packets as soon as it is created.
	fwd := tcp.NewForwarder(st, 0, o.MaxInFlight, s.handleSYN)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	nicOpts := stack.NICOptions{Name: "tun"}
	if wl, ok := link.(*wgEndpoint); ok {
		// gVisor writes one packet per call; a FIFO queue with one
		// dispatcher hands them to the wireguard endpoint in batches.
		// The NIC closes it.
		s.tx = newTxQueue(wl, 1, txQueueLen, o.TUNDirectMax, &s.stats)
	} else if o.TUNWriters > 0 {
		s.tx = newTxQueue(link, o.TUNWriters, txQueueLen, o.TUNDirectMax, &s.stats)
	}
	if s.tx != nil {
		nicOpts.QDisc = s.tx
	}
	if terr := st.CreateNICWithOptions(nicID, link, nicOpts); terr != nil {
		if nicOpts.QDisc != nil {
			nicOpts.QDisc.Close()
		}
		return fail(fmt.Errorf("netstack: create NIC: %s", terr))
	}
	// Promiscuous: accept packets for any destination (every server).
	// Spoofing: send from any source (the client's address upstream, the
	// server's toward the client).
	if terr := st.SetPromiscuousMode(nicID, true); terr != nil {
		return fail(fmt.Errorf("netstack: promiscuous mode: %s", terr))
	}
	if terr := st.SetSpoofing(nicID, true); terr != nil {
		return fail(fmt.Errorf("netstack: spoofing: %s", terr))
	}
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return s, nil
}

func ptr[T any](v T) *T { return &v }

// tunLink is the link endpoint under the stack: linkEndpoint on the TUN's
// own file descriptors, or wgEndpoint on a wireguard device.
type tunLink interface {
	stack.LinkEndpoint
	// failure is closed when the datapath stops on its own;
	// failureReason says why.
	failure() <-chan struct{}
	failureReason() error
	setGate(*synGate)
	setReplay(*synReplay)
	setDatagrams(DatagramHandler)
	// writeDatagram writes one whole IP packet (checksums complete) to
	// the TUN, for the kernel to route on.
	writeDatagram(pkt []byte) error
	deliverHeld(tcpip.NetworkProtocolNumber, []byte)
	// quietConns is the set of handed-off connections whose gVisor
	// packets the link drops (Stack.Handoff).
	quietConns() *quietSet
}

// Failed is closed when the datapath stops on its own: a TUN queue can no
// longer be read (the device was deleted, for example). Err says why.
func (s *Stack) Failed() <-chan struct{} { return s.link.failure() }

// Err returns why Failed was closed, or nil.
func (s *Stack) Err() error {
	select {
	case <-s.link.failure():
		return s.link.failureReason()
	default:
		return nil
	}
}

// NewFlowIDs is a flow-ID sequence seeded from the clock (see New).
func NewFlowIDs() *atomic.Uint64 {
	ids := new(atomic.Uint64)
	ids.Store(uint64(time.Now().UnixMilli()) << 10)
	return ids
}

// NewFlowID returns a fresh flow id from the sequence TCP flows take
// theirs from, for the UDP flows the DatagramHandler tracks.
func (s *Stack) NewFlowID() uint64 { return s.nextID.Add(1) }

// WriteDatagram writes one whole IP packet, its checksums complete, into
// the TUN: the kernel routes it on as if it had arrived there (a datagram
// the DatagramHandler allows, or an answer netward makes: a DNS refusal,
// an ICMP error). Safe for concurrent use.
func (s *Stack) WriteDatagram(pkt []byte) error {
	err := s.link.writeDatagram(pkt)
	if err != nil {
		s.stats.TxUDPErrors.Add(1)
		return err
	}
	s.stats.TxUDPPackets.Add(1)
	return nil
}

// Stats returns the live counters.
func (s *Stack) Stats() *Stats { return &s.stats }

// TxQueueDrops returns how many packets gVisor could not queue for the
// TUN writers (Options.TUNWriters) because the queue was full; TCP
// retransmits them.
func (s *Stack) TxQueueDrops() uint64 {
	return s.stack.Stats().NICs.TxPacketsDroppedNoBufferSpace.Value()
}

// SynDropsInFlight returns how many SYNs were dropped because MaxInFlight
// handshakes were pending (gVisor counts them).
func (s *Stack) SynDropsInFlight() uint64 {
	return s.stack.Stats().TCP.ForwardMaxInFlightDrop.Value()
}

// handleSYN is the tcp.Forwarder callback, on its own goroutine per SYN. It
// follows Tailscale's acceptTCP/forwardTCP: ask the Handler, dial the
// server with the client's address, and only then complete the client's
// handshake, so that a closed port answers RST, an unreachable one stays
// silent, and the client's SYN-ACK means the server is there.
func (s *Stack) handleSYN(r *tcp.ForwarderRequest) {
	GrowStack()
	if !s.enter() {
		r.Complete(false)
		return
	}
	defer s.wg.Done()
	id := r.ID()
	f := &Flow{
		ID:     s.nextID.Add(1),
		Client: netip.AddrPortFrom(toAddr(id.RemoteAddress), id.RemotePort),
		Server: netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort),
		Start:  time.Now(),
	}
	s.newSYN(f)
	// Completing the request without an endpoint only frees the
	// forwarder's slot of the tuple (see replaySYN).
	release := func() { r.Complete(false) }
	if s.replay != nil && s.replayFirst(f, release) {
		return
	}
	if a := s.admit(f); a != AdmitAccept {
		r.Complete(a == AdmitReset)
		return
	}
	served := false
	defer s.abandonUnless(f, &served)

	server, kernel, answer := s.dialAdmitted(f)
	releaseSocket := kernel
	defer func() {
		if releaseSocket {
			s.kernelSockets.Add(-1) // closed by now, by Serve or below
		}
	}()
	if answer != AdmitAccept {
		r.Complete(answer == AdmitReset)
		return
	}
	if s.replay != nil && s.replaySYN(f, server, release) {
		// The listener's accept serves it (or expiry ends it), and
		// releases the kernel socket.
		served, releaseSocket = true, false
		return
	}

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The client went away meanwhile (RST, or a stale SYN).
		s.stats.ClientHandshakeFailures.Add(1)
		r.Complete(true)
		server.Close()
		return
	}
	r.Complete(false)
	served = s.serveFlow(f, newConn(&wq, ep, s.tx), server)
}

// admit asks the Handler about a new flow and counts its answer (anything
// but accept and reset is a drop).
func (s *Stack) admit(f *Flow) Admission {
	switch a := s.handler.Admit(f); a {
	case AdmitAccept:
		s.stats.FlowsAdmitted.Add(1)
		return a
	case AdmitReset:
		s.stats.FlowsReset.Add(1)
		return a
	}
	s.stats.FlowsDropped.Add(1)
	return AdmitDrop
}

// dialAdmitted connects an admitted flow's upstream leg. On failure it
// counts why and says what the client gets instead of Serve: AdmitReset
// when the server refused, AdmitDrop when it never answered. kernel as
// dialUpstream's.
func (s *Stack) dialAdmitted(f *Flow) (server Conn, kernel bool, answer Admission) {
	server, kernel, err := s.dialUpstream(f)
	switch {
	case err == nil:
		return server, kernel, AdmitAccept
	case errors.Is(err, errNoKernelSocket):
		return nil, kernel, AdmitReset // counted as ReplayNoSocket
	case isRefused(err):
		s.stats.FlowsRefused.Add(1)
		answer = AdmitReset
	default:
		s.stats.FlowsUnreachable.Add(1)
		answer = AdmitDrop
	}
	s.log.Debug("upstream connect failed", "flow_id", f.ID, "err", err)
	return nil, kernel, answer
}

// abandonUnless tells an Abandoner about an admitted flow that was not
// served (deferred, with served set once Serve has run).
func (s *Stack) abandonUnless(f *Flow, served *bool) {
	if a, ok := s.handler.(Abandoner); ok && !*served {
		a.Abandon(f)
	}
}

// serveFlow enters a flow whose legs are both up into the flow table and
// runs the Handler's Serve; it reports false (both legs closed) when
// Shutdown had begun.
func (s *Stack) serveFlow(f *Flow, client, server Conn) bool {
	lf := &liveFlow{client: client, server: server}
	// Shutdown sets closing before it walks the shards: a flow either is
	// in its shard when Shutdown gets there, or sees closing here.
	shard := &s.flows[f.ID%flowShards]
	shard.mu.Lock()
	if s.closing.Load() {
		shard.mu.Unlock()
		client.Close()
		server.Close()
		return false
	}
	shard.flows[f.ID] = lf
	shard.mu.Unlock()
	s.stats.FlowsServed.Add(1)
	s.stats.FlowsActive.Add(1)
	s.handler.Serve(f, client, server)
	s.stats.FlowsActive.Add(-1)
	shard.mu.Lock()
	delete(shard.flows, f.ID)
	shard.mu.Unlock()
	return true
}

// FileReserve is how many file descriptors the kernel upstream leg leaves
// to the rest of netward (TUN queues, listeners, logs, rule and GeoIP
// files, iptables children) when Options.MaxKernelSockets is 0.
const FileReserve = 256

// fileLimit is the process's soft RLIMIT_NOFILE (the Go runtime raises
// it to the hard limit at start).
func fileLimit() int64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(lim.Cur)
}

// dialUpstream connects the flow's upstream leg: a kernel socket with
// Options.UpstreamKernel, unless the socket cap is reached or the process
// is out of file descriptors, in which case (counted) a gVisor endpoint out
// through the TUN, which needs none. The kernel leg's rules only catch
// packets of transparent sockets, so the two kinds of flow coexist.
func (s *Stack) dialUpstream(f *Flow) (c Conn, kernel bool, err error) {
	if !s.upstreamKernel.Load() {
		c, err = s.dial(f)
		return c, false, err
	}
	if s.kernelSockets.Add(1) > s.maxKernel {
		s.kernelSockets.Add(-1)
		if s.replay != nil {
			// gVisor's SYN to the server would meet the replay rule.
			s.stats.ReplayNoSocket.Add(1)
			return nil, false, errNoKernelSocket
		}
		s.stats.UpstreamFallbacks.Add(1)
		c, err = s.dial(f)
		return c, false, err
	}
	// dialKernel bounds the dial by DialTimeout itself; the shard's
	// dialCtx ends it early when the stack shuts down.
	c, err = s.kernelDial(s.flows[f.ID%flowShards].dialCtx, f)
	if err == nil {
		return c, true, nil // the caller releases the socket's slot
	}
	s.kernelSockets.Add(-1)
	if outOfFiles(err) && s.replay != nil {
		s.stats.ReplayNoSocket.Add(1)
		return nil, false, errNoKernelSocket
	}
	if outOfFiles(err) {
		s.stats.UpstreamFallbacks.Add(1)
		c, err = s.dial(f)
	}
	return c, false, err
}

// KernelSockets is the number of kernel upstream sockets of flows in
// progress.
func (s *Stack) KernelSockets() int64 { return s.kernelSockets.Load() }

// UpstreamKernel reports whether new flows' upstream legs are kernel
// sockets (Options.UpstreamKernel, unless UseGVisorUpstream since).
func (s *Stack) UpstreamKernel() bool { return s.upstreamKernel.Load() }

// UseGVisorUpstream makes new flows take the gVisor upstream leg, for when
// the kernel leg's rules cannot be installed. SYN replay, which needs
// those rules, is off then too: gVisor answers every handshake. Only
// before steering sends the first flow.
func (s *Stack) UseGVisorUpstream() {
	s.upstreamKernel.Store(false)
	s.link.setReplay(nil)
	s.replay = nil
}

// SYNReplay reports whether the kernel answers the handshakes of admitted
// flows (Options.ReplaySYN, unless UseGVisorUpstream since).
func (s *Stack) SYNReplay() bool { return s.replay != nil }

// tcpipError carries a tcpip.Error (which is not an error) across the
// package boundary.
type tcpipError struct{ err tcpip.Error }

func (e *tcpipError) Error() string { return e.err.String() }

// outOfFiles reports whether err is the process or system file limit.
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// isRefused reports whether err is the server refusing the connection (RST).
// errNoKernelSocket: with SYN replay, no kernel socket is left for a
// flow's server leg; the client is reset, as past max_flows.
var errNoKernelSocket = errors.New("netstack: no kernel socket left for the server leg (SYN replay)")

func isRefused(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	var te *tcpipError
	if !errors.As(err, &te) {
		return false
	}
	_, ok := te.err.(*tcpip.ErrConnectionRefused)
	return ok
}

// dial connects to f.Server from f.Client through the TUN. The endpoint
// binds the client's exact address and port; SO_REUSEADDR is needed because
// the client-facing endpoint of the same flow (server→client direction)
// holds the same pair of addresses, and because the port may still be in
// this stack's TIME_WAIT from the client's previous connection.
func (s *Stack) dial(f *Flow) (Conn, error) {
	proto := header.IPv4ProtocolNumber
	if f.Server.Addr().Is6() {
		proto = header.IPv6ProtocolNumber
	}
	var wq waiter.Queue
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		s.stats.DialErrors.Add(1)
		return nil, fmt.Errorf("netstack: new upstream endpoint: %w", &tcpipError{terr})
	}
	ep.SocketOptions().SetReuseAddress(true)
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: fromAddr(f.Client.Addr()), Port: f.Client.Port()}); terr != nil {
		ep.Close()
		s.stats.DialErrors.Add(1)
		return nil, fmt.Errorf("netstack: bind upstream to %s: %w", f.Client, &tcpipError{terr})
	}
	entry, ready := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: fromAddr(f.Server.Addr()), Port: f.Server.Port()})
	if _, started := terr.(*tcpip.ErrConnectStarted); started {
		t := time.NewTimer(s.dialTO)
		select {
		case <-ready:
			terr = ep.LastError()
		case <-t.C:
			terr = &tcpip.ErrTimeout{}
		case <-s.done:
			terr = &tcpip.ErrAborted{}
		}
		t.Stop()
	}
	if terr != nil {
		ep.Abort()
		return nil, fmt.Errorf("netstack: connect %s from %s: %w", f.Server, f.Client, &tcpipError{terr})
	}
	return newConn(&wq, ep, s.tx), nil
}

func toAddr(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

func fromAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// Shutdown stops accepting flows (new SYNs get no answer, so clients
// retransmit toward whatever path replaces netward), aborts pending dials,
// resets the legs of all served flows and waits for their Serve calls to
// return, or for ctx.
func (s *Stack) Shutdown(ctx context.Context) error {
	s.once.Do(func() {
		s.enterMu.Lock()
		s.closing.Store(true)
		s.enterMu.Unlock()
		close(s.done)
		for i := range s.flows {
			s.flows[i].cancelDials()
		}
	})
	if s.replay != nil {
		for _, rf := range s.replay.waiting() {
			s.endReplayed(rf)
		}
	}
	for i := range s.flows {
		shard := &s.flows[i]
		shard.mu.Lock()
		for _, lf := range shard.flows {
			abort(lf.client)
			abort(lf.server)
		}
		shard.mu.Unlock()
	}
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("netstack: shutdown: %d flows still open: %w", s.stats.FlowsActive.Load(), ctx.Err())
	}
}

// setClient makes c the client leg Shutdown resets for flow f: the kernel
// socket a handoff moved the connection to. After Shutdown began, c is
// reset here (Shutdown may have passed f's shard already).
func (s *Stack) setClient(f *Flow, c Conn) {
	shard := &s.flows[f.ID%flowShards]
	shard.mu.Lock()
	if lf := shard.flows[f.ID]; lf != nil {
		lf.client = c
	}
	closing := s.closing.Load()
	shard.mu.Unlock()
	if closing {
		abort(c)
	}
}

// enter joins a forwarder request to wg, unless Shutdown has begun.
func (s *Stack) enter() bool {
	s.enterMu.RLock()
	defer s.enterMu.RUnlock()
	if s.closing.Load() {
		return false
	}
	s.wg.Add(1)
	return true
}

// abort closes c with a reset: a flow cut short must not look finished to
// either end (a FIN would end a close-delimited HTTP body as if complete),
// and a reset needs no handshake, so a stop with many flows open is quick.
func abort(c Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0) // error ignored: Close below still ends the leg
	}
	c.Close()
}

// Close shuts down (if not yet), tears the gVisor stack down and closes the
// TUN queues, which deletes the device.
func (s *Stack) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.Shutdown(ctx)
	s.gate.close()
	s.stack.Close()
	s.link.Close()
	s.stack.Wait()
	s.destroyer.close()
	return err
}

func secondsDuration(sec int) time.Duration {
	if sec < 0 {
		return 0
	}
	return time.Duration(sec) * time.Second
}
