package netstack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// maxIPPacket is the largest IP packet (no BIG TCP): the size of every
// batch buffer, so that a GSO segment or a coalesced write always fits.
const maxIPPacket = 1<<16 - 1

// wgWriteOffset is the headroom in front of each packet handed to
// wgtun.Device.Write: with vnet_hdr on, wireguard writes the
// virtio_net_hdr there (its tun_linux.go requires offset >= 10).
const wgWriteOffset = virtioNetHdrLen

// wgDevices maps the file of a TUN that OpenTUN created with wireguard's
// tun package (TUNOptions.Offload false) to its device, so that New, which
// is given only the TUN's files, serves it with a wgEndpoint. New takes the
// entry (the Stack then owns the device); TUN.Close drops it.
var wgDevices sync.Map // *os.File → wgtun.Device

// createWGDevice creates the TUN with wgtun.CreateTUN and registers it.
// wireguard turns vnet_hdr and TSO on itself when the kernel supports
// them; its Read then splits super-packets into plain packets in Go and
// its Write GRO-coalesces, so netward only ever sees plain IP packets.
func createWGDevice(name string, mtu int) (wgtun.Device, error) {
	if mtu == 0 {
		mtu = 1500 // the kernel's default for a TUN
	}
	dev, err := wgtun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("netstack: create TUN %s: %w", name, err)
	}
	wgDevices.Store(dev.File(), dev)
	return dev, nil
}

// takeWGDevice returns (and unregisters) the wireguard device whose file is
// files' only element, or nil when files are not such a device.
func takeWGDevice(files []*os.File) wgtun.Device {
	if len(files) != 1 {
		return nil
	}
	dev, ok := wgDevices.LoadAndDelete(files[0])
	if !ok {
		return nil
	}
	return dev.(wgtun.Device)
}

// wgEndpoint is a stack.LinkEndpoint on a wireguard TUN device: the
// --offload=false path. It moves plain IP packets in batches of
// Device.BatchSize(): one goroutine reads batches into buffers it owns for
// life and injects each packet into gVisor; WritePackets copies the
// stack's packets into preallocated buffers (with wgWriteOffset headroom)
// and hands them to Device.Write in batches. gVisor does no GSO here and
// computes and verifies every checksum itself.
type wgEndpoint struct {
	linkBase // WritePackets holds its mu shared so Close waits for writes
	dev      wgtun.Device
	batch    int

	// wmu serialises writers over wbufs (wireguard's Write is serial
	// anyway). wbufs are batch buffers of wgWriteOffset+maxIPPacket
	// capacity, capped so that wireguard's coalescing never grows one into
	// the next; wout is the batch passed to Write.
	wmu   sync.Mutex
	wbufs [][]byte
	wout  [][]byte
}

var _ stack.LinkEndpoint = (*wgEndpoint)(nil)

func newWGEndpoint(dev wgtun.Device, mtu uint32, stats *Stats) (*wgEndpoint, error) {
	if stats == nil {
		return nil, errors.New("netstack: link endpoint needs Stats")
	}
	e := &wgEndpoint{dev: dev, batch: max(dev.BatchSize(), 1)}
	e.init(mtu, stats)
	e.wbufs = batchBuffers(e.batch, wgWriteOffset+maxIPPacket)
	e.wout = make([][]byte, 0, e.batch)
	// wireguard's listeners block sending events nobody reads, and then
	// never exit; drain them until Close closes the channel.
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for range dev.Events() {
		}
	}()
	return e, nil
}

// batchBuffers returns n buffers of size bytes from one allocation, each
// capped at its own end.
func batchBuffers(n, size int) [][]byte {
	slab := make([]byte, n*size)
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = slab[i*size : (i+1)*size : (i+1)*size]
	}
	return bufs
}

// Capabilities implements stack.LinkEndpoint: none. wireguard completes
// partial checksums and recomputes them for the segments it splits;
// packets forwarded with full checksums are verified by gVisor.
func (e *wgEndpoint) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// Attach implements stack.LinkEndpoint; the reader starts on first attach.
func (e *wgEndpoint) Attach(d stack.NetworkDispatcher) {
	if !e.attach(d) {
		return
	}
	defer e.mu.Unlock()
	e.wg.Add(1)
	go e.readLoop()
}

// Close implements stack.LinkEndpoint: it closes the wireguard device
// (its file, so the kernel deletes the TUN, and its listener goroutines)
// and waits for the reader.
func (e *wgEndpoint) Close() {
	if !e.markClosed() {
		return
	}
	e.dev.Close() // error ignored: nothing to do about it at teardown
	e.wg.Wait()
}

// readLoop reads batches until the endpoint is closed or the device fails.
func (e *wgEndpoint) readLoop() {
	defer e.wg.Done()
	bufs := batchBuffers(e.batch, maxIPPacket)
	sizes := make([]int, e.batch)
	for {
		n, err := e.dev.Read(bufs, sizes, 0)
		if n > 0 {
			e.mu.RLock()
			d := e.dispatcher
			e.mu.RUnlock()
			for i := range n {
				e.deliver(d, bufs[i][:sizes[i]])
			}
		}
		if err == nil {
			continue
		}
		if e.isClosed() {
			return
		}
		var pathErr *fs.PathError
		switch {
		case errors.Is(err, os.ErrClosed) || errors.As(err, &pathErr):
			// The read itself failed (EBADFD: the device was deleted
			// under us).
			e.stats.ReadErrors.Add(1)
			e.fail(fmt.Errorf("netstack: read TUN: %w", err))
			return
		case errors.Is(err, wgtun.ErrTooManySegments):
			// A super-packet split into more than batch segments: the
			// rest is lost (TCP retransmits).
			e.stats.RxMalformed.Add(1)
		default:
			// A virtio_net_hdr wireguard could not handle, or its
			// netlink listener's error: not fatal for the data.
			e.stats.RxMalformed.Add(1)
		}
	}
}

// deliver hands one plain IP packet to gVisor.
func (e *wgEndpoint) deliver(d stack.NetworkDispatcher, b []byte) {
	proto := packetProto(b)
	if proto == 0 {
		e.stats.RxMalformed.Add(1)
		return
	}
	if !isTCP(b, proto) {
		// wireguard's device completed every checksum (or the packet
		// had none to complete): verified like a plain packet.
		if e.handleUDP(b, proto, nil) {
			return
		}
		// The kernel's own packets on the TUN (IPv6 MLD/ND).
		e.stats.RxNotTCP.Add(1)
		return
	}
	if d == nil || e.gateHeld(proto, b) {
		return
	}
	e.stats.RxPackets.Add(1)
	e.stats.RxBytes.Add(uint64(len(b)))
	// Headers in their own chunk, as linkEndpoint.deliver does.
	split := tcpHeadersLen(b, proto)
	payload := buffer.MakeWithData(b[:split])
	if split < len(b) {
		payload.Append(buffer.NewViewWithData(b[split:]))
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: payload})
	d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// WritePackets implements stack.LinkWriter: the packets go to the device
// in batches of at most e.batch. Errors other than a closed device drop
// the batch (TCP retransmits), as a full NIC queue would.
func (e *wgEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	all := pkts.AsSlice()
	skip := -1 // a FIN merged into the packet before it (mergeFIN)
	for start := 0; start < len(all); start += e.batch {
		out := e.wout[:0]
		var size uint64
		for i, pkt := range all[start:min(start+e.batch, len(all))] {
			if start+i == skip || pkt.Size() == 0 || pkt.Size() > maxIPPacket || e.quiet.drops(pkt) {
				continue
			}
			if start+i+1 < len(all) && mergeFIN(pkt, all[start+i+1]) {
				skip = start + i + 1
				e.stats.TxFINsMerged.Add(1)
			}
			b := appendPacket(e.wbufs[i][:wgWriteOffset], pkt)
			size += uint64(len(b) - wgWriteOffset)
			out = append(out, b)
		}
		if len(out) == 0 {
			continue
		}
		if _, err := e.dev.Write(out, wgWriteOffset); err != nil {
			if errors.Is(err, os.ErrClosed) {
				if start == 0 {
					return 0, &tcpip.ErrClosedForSend{}
				}
				return start, nil
			}
			e.stats.TxErrors.Add(1)
			continue
		}
		e.stats.TxPackets.Add(uint64(len(out)))
		e.stats.TxBytes.Add(size)
	}
	return len(all), nil
}

// appendPacket appends pkt's bytes to b, view by view (no pull-up, see
// linkEndpoint.writePacket).
func appendPacket(b []byte, pkt *stack.PacketBuffer) []byte {
	vl, off := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		b = append(b, s[off:]...)
		off = 0
	}
	return b
}
