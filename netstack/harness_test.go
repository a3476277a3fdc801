package netstack

import (
	"context"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// The in-memory lab: a client stack and a server stack (plain gVisor
// stacks on channel endpoints) and netward's Stack on one end of a
// SOCK_SEQPACKET socketpair (one packet per message, like a TUN). The
// "wire" goroutine reads what netward sends and hands each packet to the
// stack that owns its destination; whatever the client and server send goes
// to netward, as steering would.
//
//	client 198.51.100.2, 2001:db8:1::2 ─┐
//	                                     ├─ wire ── socketpair ── netward Stack
//	server 192.0.2.2,    2001:db8:2::2 ─┘
var (
	clientV4 = netip.MustParseAddr("198.51.100.2")
	clientV6 = netip.MustParseAddr("2001:db8:1::2")
	serverV4 = netip.MustParseAddr("192.0.2.2")
	serverV6 = netip.MustParseAddr("2001:db8:2::2")
)

type lab struct {
	t       testing.TB
	net     *Stack
	client  *stack.Stack
	server  *stack.Stack
	clientE *channel.Endpoint
	serverE *channel.Endpoint
	vnet    bool
	wire    *os.File
	wireFD  int
	cancel  context.CancelFunc
	wg      sync.WaitGroup // fromPeer goroutines
	rwg     sync.WaitGroup // toPeers

	// synRetransmits counts SYNs a peer sent again (same port, same
	// sequence number): what a dropped SYN costs, told without a clock.
	synMu          sync.Mutex
	synSeen        map[synKey]bool
	synRetransmits atomic.Int64
}

// synKey is one SYN: its source port and initial sequence number.
type synKey struct {
	port uint16
	seq  uint32
}

type labOptions struct {
	vnet    bool
	handler Handler
	opts    func(*Options)
}

func newLab(t testing.TB, lo labOptions) *lab {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	for _, fd := range fds {
		// Room for a burst of 64 KiB GSO packets in flight.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	l := &lab{t: t, vnet: lo.vnet}
	l.wire = os.NewFile(uintptr(fds[1]), "wire")
	l.wireFD = fds[1]
	if lo.handler == nil {
		lo.handler = echoHandler{}
	}
	o := Options{
		Files:   []*os.File{os.NewFile(uintptr(fds[0]), "netward")},
		MTU:     1500,
		VnetHdr: lo.vnet,
		Handler: lo.handler,
	}
	if lo.opts != nil {
		lo.opts(&o)
	}
	l.net, err = New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l.client, l.clientE = l.peer(clientV4, clientV6)
	l.server, l.serverE = l.peer(serverV4, serverV6)
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.wg.Add(2)
	l.rwg.Add(1)
	go l.fromPeer(ctx, l.clientE)
	go l.fromPeer(ctx, l.serverE)
	go l.toPeers()
	t.Cleanup(l.close)
	return l
}

func (l *lab) peer(v4, v6 netip.Addr) (*stack.Stack, *channel.Endpoint) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	ep := channel.New(1024, 1500, "")
	if l.vnet {
		// netward's GSO packets carry partial checksums, as the kernel
		// would complete them on a real link.
		ep.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	}
	if err := s.CreateNIC(1, ep); err != nil {
		l.t.Fatalf("CreateNIC: %v", err)
	}
	for _, a := range []netip.Addr{v4, v6} {
		proto := header.IPv4ProtocolNumber
		if a.Is6() {
			proto = header.IPv6ProtocolNumber
		}
		if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{
			Protocol:          proto,
			AddressWithPrefix: fromAddr(a).WithPrefix(),
		}, stack.AddressProperties{}); err != nil {
			l.t.Fatalf("AddProtocolAddress: %v", err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	return s, ep
}

// noteSYN counts pkt, a packet a peer sends, in synRetransmits if it is a
// SYN the peer sent before.
func (l *lab) noteSYN(pkt *stack.PacketBuffer) {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return
	}
	tcp := header.TCP(pkt.TransportHeader().Slice())
	if len(tcp) < header.TCPMinimumSize || tcp.Flags() != header.TCPFlagSyn {
		return
	}
	k := synKey{port: tcp.SourcePort(), seq: tcp.SequenceNumber()}
	l.synMu.Lock()
	if l.synSeen == nil {
		l.synSeen = make(map[synKey]bool)
	}
	if l.synSeen[k] {
		l.synRetransmits.Add(1)
	}
	l.synSeen[k] = true
	l.synMu.Unlock()
}

// fromPeer moves packets a peer sends onto the wire toward netward.
func (l *lab) fromPeer(ctx context.Context, ep *channel.Endpoint) {
	defer l.wg.Done()
	buf := make([]byte, 0, maxPacketSize)
	for {
		pkt := ep.ReadContext(ctx)
		if pkt == nil {
			return
		}
		buf = buf[:0]
		if l.vnet {
			// flags 0: the checksum is complete and unverified, so
			// netward's endpoint checks it itself.
			buf = append(buf, make([]byte, virtioNetHdrLen)...)
		}
		for _, s := range pkt.AsSlices() {
			buf = append(buf, s...)
		}
		l.noteSYN(pkt)
		pkt.DecRef()
		unix.Write(l.wireFD, buf) // a full wire drops, like a link
	}
}

// toPeers delivers what netward sends to the stack owning the destination.
func (l *lab) toPeers() {
	defer l.rwg.Done()
	rc, err := l.wire.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, maxPacketSize)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return rerr != unix.EAGAIN
		})
		if err != nil || rerr != nil {
			return
		}
		if n == 0 {
			return // peer closed
		}
		b := buf[:n]
		if l.vnet {
			b = b[virtioNetHdrLen:]
		}
		proto := packetProto(b)
		var dst netip.Addr
		switch proto {
		case header.IPv4ProtocolNumber:
			dst = toAddr(header.IPv4(b).DestinationAddress())
		case header.IPv6ProtocolNumber:
			dst = toAddr(header.IPv6(b).DestinationAddress())
		default:
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		switch dst {
		case clientV4, clientV6:
			l.clientE.InjectInbound(proto, pkt)
		case serverV4, serverV6:
			l.serverE.InjectInbound(proto, pkt)
		}
		pkt.DecRef()
	}
}

func (l *lab) close() {
	l.net.Close()
	l.cancel()
	l.wg.Wait()
	l.wire.Close()
	l.rwg.Wait()
	l.client.Close()
	l.server.Close()
	l.clientE.Close()
	l.serverE.Close()
	l.client.Wait()
	l.server.Wait()
}

// listen opens a listener on the server stack.
func (l *lab) listen(addr netip.Addr, port uint16) *gonet.TCPListener {
	l.t.Helper()
	proto := header.IPv4ProtocolNumber
	if addr.Is6() {
		proto = header.IPv6ProtocolNumber
	}
	ln, err := gonet.ListenTCP(l.server, tcpip.FullAddress{NIC: 1, Addr: fromAddr(addr), Port: port}, proto)
	if err != nil {
		l.t.Fatalf("listen %v:%d: %v", addr, port, err)
	}
	l.t.Cleanup(func() { ln.Close() })
	return ln
}

// serveAndClose listens on the server stack and answers every connection
// with msg, then closes it (the server closes first).
func (l *lab) serveAndClose(addr netip.Addr, port uint16, msg string) {
	ln := l.listen(addr, port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(msg))
			c.Close()
		}
	}()
}

// dial connects from the client stack.
func (l *lab) dial(ctx context.Context, to netip.AddrPort) (*gonet.TCPConn, error) {
	proto := header.IPv4ProtocolNumber
	if to.Addr().Is6() {
		proto = header.IPv6ProtocolNumber
	}
	return gonet.DialContextTCP(ctx, l.client, tcpip.FullAddress{NIC: 1, Addr: fromAddr(to.Addr()), Port: to.Port()}, proto)
}

// echoHandler admits everything and echoes nothing: tests that need a
// relay use spliceHandler.
type echoHandler struct{}

func (echoHandler) Admit(*Flow) Admission { return AdmitAccept }
func (echoHandler) Serve(f *Flow, c, s Conn) {
	c.Close()
	s.Close()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialFrom connects from a fixed client address and port.
func dialFrom(ctx context.Context, l *lab, from, to netip.AddrPort) (*gonet.TCPConn, error) {
	proto := header.IPv4ProtocolNumber
	if to.Addr().Is6() {
		proto = header.IPv6ProtocolNumber
	}
	return gonet.DialTCPWithBind(ctx, l.client,
		tcpip.FullAddress{NIC: 1, Addr: fromAddr(from.Addr()), Port: from.Port()},
		tcpip.FullAddress{NIC: 1, Addr: fromAddr(to.Addr()), Port: to.Port()}, proto)
}
