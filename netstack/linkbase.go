package netstack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkBase is what both TUN link endpoints (linkEndpoint on the TUN's own
// file descriptors, wgEndpoint on a wireguard device) share: the
// stack.LinkEndpoint methods a TUN answers the same way, the dispatcher
// and lifecycle under one lock, and the failure signal the Stack exposes.
type linkBase struct {
	mtu   atomic.Uint32
	stats *Stats

	// mu guards the lifecycle; writers hold it shared so that Close waits
	// for writes in progress (a closed fd number may be reused).
	mu         sync.RWMutex
	closed     bool
	dispatcher stack.NetworkDispatcher
	started    bool
	onClose    func()
	wg         sync.WaitGroup // the endpoint's goroutines

	// gate holds SYNs whose tuple gVisor keeps in TIME_WAIT; nil for
	// none. Set (setGate) before the readers start.
	gate *synGate
	// datagrams takes the UDP packets; nil drops them. Set before the
	// readers start.
	datagrams DatagramHandler
	// replay keeps a copy of each SYN (SYN replay); nil for none. Atomic:
	// the fallback to the gVisor leg (Stack.UseGVisorUpstream) clears it
	// while the readers run (the kernel sends a new TUN its own IPv6
	// packets before any flow is steered).
	replay atomic.Pointer[synReplay]
	// quiet is the connections handed off to the kernel whose gVisor
	// packets are dropped on the way out (Stack.Handoff).
	quiet quietSet

	failOnce sync.Once
	failed   chan struct{} // closed when the datapath stops on its own
	failErr  error
}

// init prepares a zero linkBase; the endpoint embedding it calls it once
// before use.
func (b *linkBase) init(mtu uint32, stats *Stats) {
	b.stats = stats
	b.failed = make(chan struct{})
	b.mtu.Store(mtu)
}

// A TUN carries bare IP packets: no link header, no link address.
func (b *linkBase) MTU() uint32                             { return b.mtu.Load() }
func (b *linkBase) SetMTU(mtu uint32)                       { b.mtu.Store(mtu) }
func (b *linkBase) MaxHeaderLength() uint16                 { return 0 }
func (b *linkBase) LinkAddress() tcpip.LinkAddress          { return "" }
func (b *linkBase) SetLinkAddress(tcpip.LinkAddress)        {}
func (b *linkBase) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (b *linkBase) AddHeader(*stack.PacketBuffer)           {}
func (b *linkBase) ParseHeader(*stack.PacketBuffer) bool    { return true }

// attach sets the dispatcher and reports whether the readers must start:
// on the first attach of an open endpoint. The caller starts them (with
// wg.Add) before it unlocks: attach returns with mu held when start is
// true.
func (b *linkBase) attach(d stack.NetworkDispatcher) (start bool) {
	b.mu.Lock()
	b.dispatcher = d
	if d == nil || b.started || b.closed {
		b.mu.Unlock()
		return false
	}
	b.started = true
	return true
}

// IsAttached implements stack.LinkEndpoint.
func (b *linkBase) IsAttached() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.dispatcher != nil
}

// Wait implements stack.LinkEndpoint: it waits for the endpoint's
// goroutines, which stop when it is closed.
func (b *linkBase) Wait() { b.wg.Wait() }

// SetOnCloseAction implements stack.LinkEndpoint.
func (b *linkBase) SetOnCloseAction(f func()) {
	b.mu.Lock()
	b.onClose = f
	b.mu.Unlock()
}

// markClosed marks the endpoint closed and runs the on-close action; false
// if it was closed already.
func (b *linkBase) markClosed() bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	b.closed = true
	onClose := b.onClose
	b.mu.Unlock()
	if onClose != nil {
		onClose()
	}
	return true
}

func (b *linkBase) isClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

func (b *linkBase) getDispatcher() stack.NetworkDispatcher {
	b.mu.RLock()
	d := b.dispatcher
	b.mu.RUnlock()
	return d
}

// setGate installs the SYN gate; before the first Attach.
func (b *linkBase) setGate(g *synGate) { b.gate = g }

func (b *linkBase) setDatagrams(h DatagramHandler) { b.datagrams = h }

// gateHeld reports whether the SYN gate took pkt, a received TCP packet,
// to deliver later (deliverHeld).
func (b *linkBase) gateHeld(proto tcpip.NetworkProtocolNumber, pkt []byte) bool {
	if !isPureSYN(pkt, proto) {
		return false
	}
	if r := b.replay.Load(); r != nil && !r.capture(proto, pkt) {
		b.stats.SYNsNotCaptured.Add(1)
	}
	return b.gate != nil && b.gate.hold(proto, pkt)
}

// setReplay makes the readers keep each SYN for r (nil: none).
func (b *linkBase) setReplay(r *synReplay) { b.replay.Store(r) }

// deliverHeld hands gVisor a packet the SYN gate held.
func (b *linkBase) deliverHeld(proto tcpip.NetworkProtocolNumber, pkt []byte) {
	d := b.getDispatcher()
	if d == nil || b.isClosed() {
		return
	}
	b.stats.RxPackets.Add(1)
	b.stats.RxBytes.Add(uint64(len(pkt)))
	p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	d.DeliverNetworkPacket(proto, p)
	p.DecRef()
}

// fail records the first reader failure and closes failed: the datapath
// is gone (the TUN was deleted, for example) and the process should stop.
func (b *linkBase) fail(err error) {
	b.failOnce.Do(func() {
		b.failErr = err
		close(b.failed)
	})
}

func (b *linkBase) failure() <-chan struct{} { return b.failed }
func (b *linkBase) quietConns() *quietSet    { return &b.quiet }
func (b *linkBase) failureReason() error     { return b.failErr }
