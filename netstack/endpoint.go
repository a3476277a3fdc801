package netstack

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// maxIPPacketSize bounds one read from the TUN: an IP packet is at most
// 64 KiB (GSO super-packets included: netward does not enable BIG TCP),
// which is also gVisor's largest pooled chunk (buffer.MaxChunkSize).
const maxIPPacketSize = 1 << 16

// maxGSOSize is the largest packet netward hands to the kernel as one GSO
// super-packet. It leaves room below the 64 KiB IP limit for the IP and TCP
// headers that gVisor adds around a payload of this size.
const maxGSOSize = 1<<16 - 1 - 128

// maxWriteIovecs bounds the iovecs of one writev: the virtio_net_hdr plus the
// views of one gVisor packet (headers share one view; payload views are at
// most a few per GSO packet). Packets with more views are linearised.
const maxWriteIovecs = 16

// endpointOptions configures a linkEndpoint.
type endpointOptions struct {
	// Files are the queues of the device (one per IFF_MULTI_QUEUE queue, or
	// one end of a socketpair in tests). Each must be non-blocking so that
	// reads park in the Go runtime poller and Close unblocks them.
	Files []*os.File
	// MTU is the device MTU: the largest plain packet.
	MTU uint32
	// VnetHdr says that every packet carries a virtio_net_hdr in front
	// (IFF_VNET_HDR). It enables RX checksum offload and, with GSOMaxSize,
	// GSO super-packets in both directions.
	VnetHdr bool
	// GSOMaxSize is the largest GSO packet gVisor may build; 0 disables
	// GSO on output. Only used with VnetHdr.
	GSOMaxSize uint32
	// Stats receives the endpoint's counters; must not be nil.
	Stats *Stats
	// AckDelay is how long pure ACKs may wait (ackDelayer); 0 writes
	// them at once. Only used with VnetHdr.
	AckDelay time.Duration
}

// linkEndpoint is a stack.LinkEndpoint on a TUN device (no link header).
//
// Inbound, one goroutine per queue reads packets into a buffer it owns for
// life and hands each one, GSO super-packets whole, to gVisor; gVisor's TCP
// takes segments larger than the MSS as they are, so a 64 KiB super-packet
// costs one read and one trip through the stack instead of 45.
// Outbound, gVisor's goroutines write directly with writev: the
// virtio_net_hdr goes in front from a pooled scratch, and GSO packets leave
// segmentation (and checksums) to the kernel, which forwards them with the
// output device's own TSO or segments them in software late.
type linkEndpoint struct {
	linkBase // its mu guards the fds against Close while a writev is in progress
	files    []*os.File
	fds      []int
	vnetHdr  bool
	gsoMax   uint32

	scratch sync.Pool // *writeScratch

	acks *ackDelayer // nil: every ACK is written at once
}

// writeScratch is the per-writev state. It is pooled rather than kept per
// goroutine because gVisor writes from many goroutines (TCP processors,
// senders, timers); the pool keeps it off the heap on the steady path.
type writeScratch struct {
	hdr  [virtioNetHdrLen]byte
	iov  [maxWriteIovecs]unix.Iovec
	flat []byte // for packets with more views than iov holds
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
)

func newLinkEndpoint(o endpointOptions) (*linkEndpoint, error) {
	if len(o.Files) == 0 {
		return nil, errors.New("netstack: link endpoint needs at least one file")
	}
	if o.Stats == nil {
		return nil, errors.New("netstack: link endpoint needs Stats")
	}
	e := &linkEndpoint{files: o.Files, vnetHdr: o.VnetHdr}
	e.init(o.MTU, o.Stats)
	if o.VnetHdr {
		e.gsoMax = min(o.GSOMaxSize, maxGSOSize)
	}
	for i, f := range o.Files {
		// SyscallConn rather than f.Fd(): Fd would switch the file to
		// blocking mode and take it out of the runtime poller.
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("netstack: queue %d: %w", i, err)
		}
		fd := -1
		if err := rc.Control(func(v uintptr) { fd = int(v) }); err != nil {
			return nil, fmt.Errorf("netstack: queue %d: %w", i, err)
		}
		e.fds = append(e.fds, fd)
	}
	e.scratch.New = func() any { return new(writeScratch) }
	if o.VnetHdr && o.AckDelay > 0 {
		e.acks = newAckDelayer(o.AckDelay, o.Stats, e.writeHeld)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.acks.run()
		}()
	}
	return e, nil
}

// Capabilities implements stack.LinkEndpoint. With a virtio_net_hdr the
// kernel passes partial checksums (NEEDS_CSUM), which gVisor would drop as
// bad unless the link claims RX checksum offload; deliver verifies the
// packets the kernel has not vouched for. Without it, gVisor verifies all.
func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	if e.vnetHdr {
		return stack.CapabilityRXChecksumOffload
	}
	return 0
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *linkEndpoint) GSOMaxSize() uint32 { return e.gsoMax }

// SupportedGSO implements stack.GSOEndpoint.
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO {
	if e.gsoMax > 0 {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// Attach implements stack.LinkEndpoint; the readers start on first attach.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	if !e.attach(d) {
		return
	}
	defer e.mu.Unlock()
	for q := range e.files {
		e.wg.Add(1)
		go e.readLoop(q)
	}
}

// Close implements stack.LinkEndpoint: it closes the queues, which wakes
// and ends the readers.
func (e *linkEndpoint) Close() {
	if !e.markClosed() {
		return
	}
	if e.acks != nil {
		e.acks.stop()
	}
	for _, f := range e.files {
		f.Close() // error ignored: nothing to do about it at teardown
	}
	e.wg.Wait()
}

// readLoop reads queue q until the endpoint is closed. buf is allocated once
// and reused for every packet; deliver copies each packet into gVisor's
// pooled chunks, sized to the packet.
func (e *linkEndpoint) readLoop(q int) {
	defer e.wg.Done()
	rc, err := e.files[q].SyscallConn()
	if err != nil {
		e.stats.ReadErrors.Add(1)
		e.fail(fmt.Errorf("netstack: queue %d: %w", q, err))
		return
	}
	// Each packet is read straight into a 64 KiB gVisor view (the largest
	// pooled chunk), the virtio_net_hdr in front of it into hdr. A large
	// payload is then handed to gVisor in that view, without a copy, and
	// a fresh view is taken for the next read; small ones are copied out
	// and the view is read into again (deliverPacket).
	var hdr [virtioNetHdrLen]byte
	pkt := buffer.NewViewSize(maxIPPacketSize)
	defer func() { pkt.Release() }()
	var iov [2]unix.Iovec
	var rerr error
	// read drains the queue until EAGAIN, then lets the poller wait. One
	// closure for the life of the loop: no allocation per wakeup.
	read := func(fd uintptr) bool {
		for {
			b := pkt.AsSlice()
			iovs := iov[:0]
			if e.vnetHdr {
				iovs = append(iovs, iovec(hdr[:]))
			}
			iovs = append(iovs, iovec(b))
			r, _, errno := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
			switch errno {
			case 0:
			case unix.EAGAIN:
				return false
			case unix.EINTR:
				continue
			default:
				rerr = errno
				return true
			}
			n := int(r)
			if n == 0 {
				continue
			}
			var vh []byte
			if e.vnetHdr {
				if n < virtioNetHdrLen {
					e.stats.RxMalformed.Add(1)
					continue
				}
				vh, n = hdr[:], n-virtioNetHdrLen
			}
			if e.deliverPacket(vh, b[:n], pkt) {
				pkt = buffer.NewViewSize(maxIPPacketSize)
			}
		}
	}
	for {
		err := rc.Read(read)
		if err != nil || rerr != nil {
			if errors.Is(err, os.ErrClosed) || e.isClosed() {
				return
			}
			if rerr == nil {
				rerr = err
			}
			// EBADFD: the device went away (deleted under us).
			e.stats.ReadErrors.Add(1)
			e.fail(fmt.Errorf("netstack: read queue %d: %w", q, rerr))
			return
		}
	}
}

// zeroCopyMin is the smallest payload deliverPacket hands to gVisor in the
// read view itself: below it, copying the payload into a chunk its size
// costs less than clearing the fresh 64 KiB view the next read then needs
// (gVisor clears every chunk it takes from its pool).
const zeroCopyMin = 16 << 10

// deliverPacket hands one packet to gVisor: vh is its virtio_net_hdr (nil
// without vnet_hdr), b the IP packet. If own is not nil, b is the start of
// own's bytes and a large payload is handed over in own itself;
// deliverPacket then reports true, and own belongs to gVisor.
func (e *linkEndpoint) deliverPacket(vh, b []byte, own *buffer.View) (took bool) {
	var hdr virtioNetHdr
	if e.vnetHdr {
		if err := hdr.decode(vh); err != nil {
			e.stats.RxMalformed.Add(1)
			return false
		}
	}
	proto := packetProto(b)
	if proto == 0 {
		e.stats.RxMalformed.Add(1)
		return
	}
	if !isTCP(b, proto) {
		var vh *virtioNetHdr
		if e.vnetHdr {
			vh = &hdr
		}
		if e.handleUDP(b, proto, vh) {
			return
		}
		// The kernel's own packets on the TUN (IPv6 MLD/ND, for
		// example): steering only ever routes TCP and UDP here.
		e.stats.RxNotTCP.Add(1)
		return
	}
	if e.vnetHdr && hdr.flags&(vnetFlagNeedsCsum|vnetFlagDataValid) == 0 && !tcpChecksumValid(b, proto) {
		e.stats.RxBadChecksum.Add(1)
		return
	}
	d := e.getDispatcher()
	if d == nil || e.gateHeld(proto, b) {
		return
	}
	e.stats.RxPackets.Add(1)
	e.stats.RxBytes.Add(uint64(len(b)))
	if hdr.gsoType != vnetGSONone {
		e.stats.RxGSOPackets.Add(1)
	}
	// The headers go in a chunk of their own: gVisor's IPv4 input pulls up
	// the network header while it holds a second reference to the first
	// chunk, and PullUp then copies that whole chunk (for a super-packet,
	// 64 KiB cleared and copied per packet; 9% of CPU in a bulk transfer
	// profile). Copying 40-120 bytes of headers instead is cheap.
	split := tcpHeadersLen(b, proto)
	payload := buffer.MakeWithData(b[:split])
	switch {
	case split == len(b):
	case own != nil && len(b)-split >= zeroCopyMin:
		own.CapLength(len(b))
		own.TrimFront(split)
		payload.Append(own)
		took = true
	default:
		payload.Append(buffer.NewViewWithData(b[split:]))
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: payload})
	d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
	return took
}

// tcpHeadersLen returns the length of the IP and TCP headers at the start
// of b (a TCP packet, see isTCP), bounded by len(b).
func tcpHeadersLen(b []byte, proto tcpip.NetworkProtocolNumber) int {
	n := header.IPv6MinimumSize
	if proto == header.IPv4ProtocolNumber {
		n = int(b[0]&0x0f) * 4
	}
	if len(b) >= n+header.TCPMinimumSize {
		n += int(b[n+12]>>4) * 4
	}
	return min(max(n, 1), len(b))
}

// WritePackets implements stack.LinkWriter.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	s := e.scratch.Get().(*writeScratch)
	defer e.scratch.Put(s)
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	n := 0
	list := pkts.AsSlice()
	for i := 0; i < len(list); i++ {
		pkt := list[i]
		if e.quiet.drops(pkt) {
			n++
			continue
		}
		fd := e.fds[0]
		if len(e.fds) > 1 {
			fd = e.fds[pkt.Hash%uint32(len(e.fds))]
		}
		if e.acks != nil {
			if nh, th, ok := pureAck(pkt); ok && e.acks.hold(fd, pkt, nh, th) {
				n++
				continue
			}
		}
		merged := i+1 < len(list) && mergeFIN(pkt, list[i+1])
		if err := e.writePacket(s, fd, pkt); err != nil {
			if n == 0 {
				return 0, err
			}
			break
		}
		if e.acks != nil {
			e.acks.supersede(pkt)
		}
		n++
		if merged {
			e.stats.TxFINsMerged.Add(1)
			i++
			n++
		}
	}
	return n, nil
}

// writePacket writes one packet with one writev. Errors other than a closed
// device drop the packet (TCP retransmits), as a full NIC queue would.
func (e *linkEndpoint) writePacket(s *writeScratch, fd int, pkt *stack.PacketBuffer) tcpip.Error {
	iov := s.iov[:0]
	size := pkt.Size()
	if e.vnetHdr {
		iov = append(iov, unix.Iovec{}) // the virtio_net_hdr, filled below
	}
	// The packet's views, without PacketHeader.Slice: that pulls the
	// header up and, for a view whose chunk is shared with the
	// retransmission queue, copies the chunk (10% of netward's CPU in a
	// bulk transfer profile).
	vl, off := pkt.AsViewList()
	fits := true
	var first []byte
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) == 0 {
			continue
		}
		if first == nil {
			first = b
		}
		if len(iov) == cap(iov) {
			fits = false
			break
		}
		iov = append(iov, iovec(b))
	}
	if !fits {
		// Rare: linearise into the scratch's own buffer.
		s.flat = s.flat[:0]
		vl, off = pkt.AsViewList()
		for v := vl.Front(); v != nil; v = v.Next() {
			b := v.AsSlice()
			if off >= len(b) {
				off -= len(b)
				continue
			}
			s.flat = append(s.flat, b[off:]...)
			off = 0
		}
		iov = iov[:0]
		if e.vnetHdr {
			iov = append(iov, unix.Iovec{})
		}
		iov = append(iov, iovec(s.flat))
		first = s.flat
	}
	if first == nil {
		return nil // empty packet: nothing to send
	}
	if e.vnetHdr {
		h := outboundVnetHdr(pkt, first)
		if h.gsoType != vnetGSONone {
			e.stats.TxGSOPackets.Add(1)
		}
		h.encode(s.hdr[:])
		iov[0] = iovec(s.hdr[:])
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		switch errno {
		case 0:
			e.stats.TxPackets.Add(1)
			e.stats.TxBytes.Add(uint64(size))
			return nil
		case unix.EINTR:
			continue
		case unix.EBADF, unix.EBADFD:
			return &tcpip.ErrClosedForSend{}
		default:
			e.stats.TxErrors.Add(1)
			return nil
		}
	}
}

// outboundVnetHdr is the virtio_net_hdr for a packet gVisor wrote, whose
// first bytes are first: with GSO on, gVisor leaves the TCP checksum to
// the "device" (NEEDS_CSUM) and hands segments larger than the MSS whole.
func outboundVnetHdr(pkt *stack.PacketBuffer, first []byte) virtioNetHdr {
	h := virtioNetHdr{}
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		return h
	}
	h.hdrLen = uint16(pkt.HeaderSize())
	if gso.NeedsCsum {
		h.flags = vnetFlagNeedsCsum
		h.csumStart = uint16(ipHeaderLen(first))
		h.csumOffset = gso.CsumOffset
	}
	if pkt.Data().Size() > int(gso.MSS) {
		switch gso.Type {
		case stack.GSOTCPv4:
			h.gsoType = vnetGSOTCPv4
		case stack.GSOTCPv6:
			h.gsoType = vnetGSOTCPv6
		}
		h.gsoSize = gso.MSS
	}
	return h
}

// writeHeld writes one ACK the ackDelayer held (virtio_net_hdr included).
func (e *linkEndpoint) writeHeld(fd int, b []byte) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return
	}
	for {
		_, err := unix.Write(fd, b)
		switch err {
		case nil:
			e.stats.TxPackets.Add(1)
			e.stats.TxBytes.Add(uint64(len(b) - virtioNetHdrLen))
		case unix.EINTR:
			continue
		default:
			e.stats.TxErrors.Add(1)
		}
		return
	}
}

// ipHeaderLen is the length of the IP header at the start of b: the IHL
// for IPv4, the fixed header for IPv6 (gVisor's TCP adds no extension
// headers).
func ipHeaderLen(b []byte) int {
	if b[0]>>4 == 4 {
		return int(b[0]&0x0f) * 4
	}
	return header.IPv6MinimumSize
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}
