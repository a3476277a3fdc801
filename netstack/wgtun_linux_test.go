package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// seqpacketDevice is a wgtun.Device on one end of the in-memory lab's
// SOCK_SEQPACKET socketpair: Read returns up to len(bufs) packets (it waits
// for the first, then takes what is queued), Write sends each packet after
// offset. It records what wgEndpoint asks of it.
type seqpacketDevice struct {
	f  *os.File
	rc interface {
		Read(func(uintptr) bool) error
	}
	batch int

	events    chan wgtun.Event
	closeOnce sync.Once

	maxReadBatch  atomic.Int64
	maxWriteBatch atomic.Int64
	badOffsets    atomic.Int64 // Write offsets below wgWriteOffset
}

func newSeqpacketDevice(t testing.TB, f *os.File, batch int) *seqpacketDevice {
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return &seqpacketDevice{f: f, rc: rc, batch: batch, events: make(chan wgtun.Event, 1)}
}

func (d *seqpacketDevice) File() *os.File        { return d.f }
func (d *seqpacketDevice) MTU() (int, error)     { return 1500, nil }
func (d *seqpacketDevice) Name() (string, error) { return "seqpacket", nil }
func (d *seqpacketDevice) Events() <-chan wgtun.Event {
	return d.events
}
func (d *seqpacketDevice) BatchSize() int { return d.batch }

func (d *seqpacketDevice) Close() error {
	var err error
	d.closeOnce.Do(func() {
		close(d.events)
		err = d.f.Close()
	})
	return err
}

func (d *seqpacketDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	var rerr error
	err := d.rc.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, err := unix.Read(int(fd), bufs[n][offset:])
			if err == unix.EAGAIN {
				return n > 0
			}
			if err != nil {
				rerr = err
				return true
			}
			sizes[n] = m
			n++
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return n, rerr
	}
	if int64(n) > d.maxReadBatch.Load() {
		d.maxReadBatch.Store(int64(n))
	}
	return n, nil
}

func (d *seqpacketDevice) Write(bufs [][]byte, offset int) (int, error) {
	if offset < wgWriteOffset {
		d.badOffsets.Add(1)
	}
	if int64(len(bufs)) > d.maxWriteBatch.Load() {
		d.maxWriteBatch.Store(int64(len(bufs)))
	}
	total := 0
	for _, b := range bufs {
		n, err := d.f.Write(b[offset:])
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// newWGLab is the in-memory lab with netward's side served by a
// wgEndpoint on a seqpacketDevice (what New does for a TUN opened without
// offloads).
func newWGLab(t *testing.T, batch int, h Handler) (*lab, *seqpacketDevice) {
	var dev *seqpacketDevice
	l := newLab(t, labOptions{handler: h, opts: func(o *Options) {
		dev = newSeqpacketDevice(t, o.Files[0], batch)
		wgDevices.Store(o.Files[0], wgtun.Device(dev))
	}})
	if _, ok := l.net.link.(*wgEndpoint); !ok {
		t.Fatalf("link is %T, want *wgEndpoint", l.net.link)
	}
	return l, dev
}

func TestWGEndpointRelay(t *testing.T) {
	for _, batch := range []int{1, 16} {
		for _, fam := range families {
			t.Run(fmt.Sprintf("batch=%d/%s", batch, fam.name), func(t *testing.T) {
				l, dev := newWGLab(t, batch, &spliceHandler{})
				ln := l.listen(fam.server, 80)
				payload := make([]byte, 2<<20)
				rand.Read(payload)
				want := sha256.Sum256(payload)
				remote := make(chan netip.AddrPort, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						remote <- netip.AddrPort{}
						return
					}
					defer c.Close()
					remote <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
					io.Copy(c, c) // echo until the client's FIN
				}()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := l.dial(ctx, netip.AddrPortFrom(fam.server, 80))
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				go func() { c.Write(payload); c.CloseWrite() }()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				back := sha256.New()
				n, err := io.Copy(back, c)
				if err != nil || n != int64(len(payload)) || !bytes.Equal(back.Sum(nil), want[:]) {
					t.Errorf("echo: %d of %d bytes, %v", n, len(payload), err)
				}
				if got, local := <-remote, c.LocalAddr().(*net.TCPAddr).AddrPort(); got != local {
					t.Errorf("server saw %v, want the client's %v", got, local)
				}

				// Closed port: the client gets an RST.
				if _, err := l.dial(ctx, netip.AddrPortFrom(fam.server, 81)); err == nil || ctx.Err() != nil {
					t.Errorf("closed port: err = %v, want connection refused", err)
				}

				s := l.net.Stats()
				if s.RxPackets.Load() == 0 || s.TxPackets.Load() == 0 || s.RxBytes.Load() == 0 || s.TxBytes.Load() == 0 {
					t.Errorf("counters: rx %d/%d B tx %d/%d B", s.RxPackets.Load(), s.RxBytes.Load(), s.TxPackets.Load(), s.TxBytes.Load())
				}
				if s.FlowsRefused.Load() != 1 {
					t.Errorf("FlowsRefused = %d, want 1", s.FlowsRefused.Load())
				}
				if got := dev.maxWriteBatch.Load(); got > int64(batch) || got < 1 {
					t.Errorf("largest write batch %d, want 1..%d", got, batch)
				}
				if got := dev.maxReadBatch.Load(); got > int64(batch) || got < 1 {
					t.Errorf("largest read batch %d, want 1..%d", got, batch)
				}
				if batch > 1 && dev.maxWriteBatch.Load() < 2 {
					t.Errorf("never wrote more than one packet per Write")
				}
				if dev.badOffsets.Load() != 0 {
					t.Errorf("%d writes with offset below %d", dev.badOffsets.Load(), wgWriteOffset)
				}
			})
		}
	}
}

func TestWGEndpointDeliverFilters(t *testing.T) {
	good := tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("hello"))
	icmp := bytes.Clone(good)
	icmp[9] = uint8(header.ICMPv4ProtocolNumber)
	tests := []struct {
		name      string
		in        []byte
		delivered bool
		counter   func(*Stats) uint64
	}{
		{"ipv4", good, true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"ipv6", tcpPacket(cli6, srv6, header.TCPFlagSyn, nil), true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"not IP", []byte{0x50, 1, 2, 3}, false, func(s *Stats) uint64 { return s.RxMalformed.Load() }},
		{"truncated", good[:10], false, func(s *Stats) uint64 { return s.RxMalformed.Load() }},
		{"empty", nil, false, func(s *Stats) uint64 { return s.RxMalformed.Load() }},
		{"not TCP", icmp, false, func(s *Stats) uint64 { return s.RxNotTCP.Load() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stats := &Stats{}
			e, err := newWGEndpoint(newScriptDevice(1), 1500, stats)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(e.Close)
			d := &countingDispatcher{}
			e.deliver(d, tt.in)
			if got := d.n.Load() == 1; got != tt.delivered {
				t.Errorf("delivered = %v, want %v", got, tt.delivered)
			}
			if tt.counter(stats) != 1 {
				t.Errorf("counter not incremented: %+v", stats)
			}
		})
	}
}

// scriptDevice is a wgtun.Device whose Read returns scripted results and
// whose Write counts; after the script, Read waits for Close.
type scriptDevice struct {
	reads  chan scriptRead
	batch  int
	closed chan struct{}
	events chan wgtun.Event
	once   sync.Once
	writes atomic.Int64
}

type scriptRead struct {
	pkts [][]byte
	err  error
}

func newScriptDevice(batch int) *scriptDevice {
	return &scriptDevice{reads: make(chan scriptRead, 8), batch: batch, closed: make(chan struct{}), events: make(chan wgtun.Event)}
}

func (d *scriptDevice) File() *os.File                   { return nil }
func (d *scriptDevice) MTU() (int, error)                { return 1500, nil }
func (d *scriptDevice) Name() (string, error)            { return "script", nil }
func (d *scriptDevice) Events() <-chan wgtun.Event       { return d.events }
func (d *scriptDevice) BatchSize() int                   { return d.batch }
func (d *scriptDevice) Write([][]byte, int) (int, error) { d.writes.Add(1); return 0, nil }
func (d *scriptDevice) Close() error {
	d.once.Do(func() { close(d.closed); close(d.events) })
	return nil
}

func (d *scriptDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case r := <-d.reads:
		for i, p := range r.pkts {
			sizes[i] = copy(bufs[i][offset:], p)
		}
		return len(r.pkts), r.err
	case <-d.closed:
		return 0, os.ErrClosed
	}
}

// TestWGEndpointReadErrors: wireguard's per-packet errors are counted and
// reading goes on; a closed device that netward did not close fails the
// datapath (the TUN was deleted).
func TestWGEndpointReadErrors(t *testing.T) {
	stats := &Stats{}
	dev := newScriptDevice(4)
	e, err := newWGEndpoint(dev, 1500, stats)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	d := &countingDispatcher{}
	pkt := tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("x"))
	dev.reads <- scriptRead{pkts: [][]byte{pkt, pkt}, err: wgtun.ErrTooManySegments}
	dev.reads <- scriptRead{err: errors.New("unsupported virtio GSO type: 9")}
	dev.reads <- scriptRead{pkts: [][]byte{pkt}}
	dev.reads <- scriptRead{err: os.ErrClosed}
	e.Attach(d)
	select {
	case <-e.failure():
		if e.failureReason() == nil || !errors.Is(e.failureReason(), os.ErrClosed) {
			t.Errorf("failure reason = %v, want os.ErrClosed", e.failureReason())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closed device did not fail the endpoint")
	}
	if d.n.Load() != 3 || stats.RxPackets.Load() != 3 {
		t.Errorf("delivered %d (RxPackets %d), want 3", d.n.Load(), stats.RxPackets.Load())
	}
	if stats.RxMalformed.Load() != 2 || stats.ReadErrors.Load() != 1 {
		t.Errorf("RxMalformed %d ReadErrors %d, want 2 and 1", stats.RxMalformed.Load(), stats.ReadErrors.Load())
	}
}

// TestWGEndpointCloseNoFailure: Close ends the reader without failing.
func TestWGEndpointCloseNoFailure(t *testing.T) {
	e, err := newWGEndpoint(newScriptDevice(4), 1500, &Stats{})
	if err != nil {
		t.Fatal(err)
	}
	e.Attach(&countingDispatcher{})
	e.Close()
	select {
	case <-e.failure():
		t.Errorf("Close failed the endpoint: %v", e.failureReason())
	default:
	}
	var list stack.PacketBufferList
	pkt := gsoPacket(100)
	defer pkt.DecRef()
	list.PushBack(pkt)
	if _, err := e.WritePackets(list); err == nil {
		t.Errorf("WritePackets after Close succeeded")
	}
}

// TestWGEndpointWriteBatches: a list longer than the batch is split, and
// writing allocates nothing.
func TestWGEndpointWriteBatches(t *testing.T) {
	stats := &Stats{}
	dev := newScriptDevice(4)
	e, err := newWGEndpoint(dev, 1500, stats)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	var list stack.PacketBufferList
	for range 10 {
		pkt := gsoPacket(1400)
		defer pkt.DecRef()
		list.PushBack(pkt)
	}
	if n, err := e.WritePackets(list); n != 10 || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	if dev.writes.Load() != 3 || stats.TxPackets.Load() != 10 || stats.TxBytes.Load() != 10*1440 {
		t.Errorf("%d writes, TxPackets %d, TxBytes %d; want 3, 10, %d", dev.writes.Load(), stats.TxPackets.Load(), stats.TxBytes.Load(), 10*1440)
	}
	if allocs := testing.AllocsPerRun(100, func() { e.WritePackets(list) }); allocs != 0 {
		t.Errorf("WritePackets allocates %.1f times, want 0", allocs)
	}
}

// TestWGTUNClose (root): OpenTUN without offloads makes a wireguard device
// that New serves with a wgEndpoint; closing the Stack (or the TUN, if no
// Stack took it) deletes the device.
func TestWGTUNClose(t *testing.T) {
	l := newNSLab(t)
	exists := func() bool {
		return exec.Command("ip", "-n", l.a, "link", "show", l.tun).Run() == nil
	}
	var tn *TUN
	var err error
	in(t, l.a, func() { tn, err = OpenTUN(TUNOptions{Name: l.tun, MTU: 1400}) })
	if err != nil {
		t.Fatalf("OpenTUN: %v", err)
	}
	if tn.dev == nil || tn.VnetHdr || len(tn.Files) != 1 || tn.MTU != 1400 {
		t.Fatalf("TUN = %+v, want a wireguard device, MTU 1400", tn)
	}
	if !exists() {
		t.Fatal("TUN not created")
	}
	tn.Close()
	if exists() {
		t.Error("TUN still exists after TUN.Close")
	}
	if _, ok := wgDevices.Load(tn.Files[0]); ok {
		t.Error("device still registered after TUN.Close")
	}

	st, _ := l.startNetward(false, false)
	if _, ok := st.link.(*wgEndpoint); !ok {
		t.Fatalf("link is %T, want *wgEndpoint", st.link)
	}
	if !exists() {
		t.Fatal("TUN not created")
	}
	// Close returns only after wireguard's listener goroutines have ended
	// (they close the Events channel the endpoint drains).
	st.Close()
	if exists() {
		t.Error("TUN still exists after Stack.Close")
	}
}

// TestWGTUNDeletedFailsStack (root): as TestTUNDeletedFailsStack, without
// offloads.
func TestWGTUNDeletedFailsStack(t *testing.T) {
	l := newNSLab(t)
	st, _ := l.startNetward(false, false)
	run(t, "ip", "-n", l.a, "link", "del", l.tun)
	select {
	case <-st.Failed():
		if st.Err() == nil {
			t.Errorf("Failed closed but Err is nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Failed not closed 5 s after the TUN was deleted")
	}
}
