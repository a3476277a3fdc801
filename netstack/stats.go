package netstack

import "sync/atomic"

// Stats are the datapath counters. All fields are updated atomically and may
// be read at any time (metrics export them).
type Stats struct {
	RxPackets     atomic.Uint64 // packets read from the TUN and handed to gVisor
	RxBytes       atomic.Uint64
	RxGSOPackets  atomic.Uint64 // of which GSO super-packets
	RxMalformed   atomic.Uint64 // not IPv4/IPv6, or shorter than a header
	RxNotTCP      atomic.Uint64 // IP but not TCP (kernel's own ND/MLD): dropped
	RxBadChecksum atomic.Uint64 // TCP or UDP checksum wrong (packets the kernel had not verified)
	RxUDPPackets  atomic.Uint64 // UDP packets handed to the DatagramHandler
	RxUDPBytes    atomic.Uint64
	RxUDPDropped  atomic.Uint64 // UDP with no DatagramHandler
	TxUDPPackets  atomic.Uint64 // packets written by WriteDatagram
	TxUDPErrors   atomic.Uint64 // of which the kernel refused
	ReadErrors    atomic.Uint64
	TxPackets     atomic.Uint64 // packets written to the TUN
	TxBytes       atomic.Uint64
	TxGSOPackets  atomic.Uint64 // of which GSO super-packets
	TxErrors      atomic.Uint64 // writes refused by the kernel (packet dropped)
	TxAcksDelayed atomic.Uint64 // pure ACKs held back (ackDelayer)
	TxAcksMerged  atomic.Uint64 // of which never written: a later packet of the connection carried them
	TxFINsMerged  atomic.Uint64 // bare FINs not written: the data segment before them carried them (mergeFIN)
	TxDirect      atomic.Uint64 // packets their sender wrote, past an empty TUN queue (txQueue)

	// FlowsAccepted are connections the kernel accepted for netward
	// (ServeAccepted: --tcp-accept kernel), before Admit; AcceptErrors
	// failed accepts and connections to the listener that no TPROXY rule
	// sent (closed).
	FlowsAccepted atomic.Uint64
	AcceptErrors  atomic.Uint64
	// SYN replay (--tcp-accept replay): SYNsReplayed are SYNs netward
	// wrote back into the TUN for the listener (a client's retransmitted
	// SYN again); SYNsNotCaptured SYNs the link kept no copy of, whose
	// flows took gVisor's handshake; ReplayUnmatched accepted connections
	// with no replayed flow (reset); ReplayExpired replayed flows the
	// listener never accepted (server leg closed); ReplayNoSocket
	// admitted SYNs reset because no kernel socket was left for the
	// server leg; ReplayHalfOpenDrops SYNs dropped while MaxInFlight
	// replayed flows waited for their accept.
	SYNsReplayed        atomic.Uint64
	SYNsNotCaptured     atomic.Uint64
	ReplayUnmatched     atomic.Uint64
	ReplayExpired       atomic.Uint64
	ReplayNoSocket      atomic.Uint64
	ReplayHalfOpenDrops atomic.Uint64
	ReplayPortReuse     atomic.Uint64 // SYNs on the tuple of an accepted replayed flow (reusedTuple)
	FlowsAdmitted       atomic.Uint64 // SYNs the Handler accepted
	FlowsReset          atomic.Uint64 // SYNs the Handler answered with RST
	FlowsDropped        atomic.Uint64 // SYNs the Handler dropped
	FlowsRefused        atomic.Uint64 // upstream answered RST: client got RST
	FlowsUnreachable    atomic.Uint64 // upstream never answered / unreachable: client got nothing
	FlowsServed         atomic.Uint64 // both legs up, handed to Serve
	// ClientHandshakeFailures are flows whose server connected but whose
	// client did not complete the handshake (it reset, or never
	// answered the SYN-ACK): the client got a reset, the server's
	// connection was closed again.
	ClientHandshakeFailures atomic.Uint64
	FlowsActive             atomic.Int64  // currently in Serve
	SynDropsInFlight        atomic.Uint64 // SYNs dropped because MaxInFlight handshakes were pending
	DialErrors              atomic.Uint64 // upstream dial failed locally (bind, endpoint)
	// DialAddrBusy are kernel upstream dials tried again because the
	// flow's previous socket on the same 4-tuple was still closing.
	DialAddrBusy atomic.Uint64
	// UpstreamFallbacks are flows that took the gVisor upstream leg
	// although the kernel leg was on: Options.MaxKernelSockets were open,
	// or the process was out of file descriptors.
	UpstreamFallbacks atomic.Uint64
	// Handoffs are client legs moved from gVisor to a kernel socket
	// (Stack.Handoff).
	Handoffs atomic.Uint64
	// HandoffTimeWaits are TIME_WAIT sockets of handed-off legs netward
	// destroyed; HandoffTimeWaitErrors failed to.
	HandoffTimeWaits      atomic.Uint64
	HandoffTimeWaitErrors atomic.Uint64
	// SynsHeld are client SYNs whose 4-tuple gVisor still held in
	// TIME_WAIT: they waited for it to end (synGate) instead of being
	// dropped. SynGateTimeouts of them were delivered after the gate's
	// longest wait anyway; SynGateOverflows found the gate full and went
	// to gVisor at once.
	SynsHeld         atomic.Uint64
	SynGateTimeouts  atomic.Uint64
	SynGateOverflows atomic.Uint64
}
