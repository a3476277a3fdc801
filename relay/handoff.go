package relay

import (
	"errors"
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/netward/netward/netstack"
)

// Handoffer moves a flow's client leg from gVisor to a kernel socket
// (netstack.Stack).
type Handoffer interface {
	// Handoff returns the kernel socket that now carries c's connection
	// and the bytes c had received that the relay had not read (at most
	// maxUnread), or an error (*netstack.HandoffError) with c untouched
	// unless the error says it is Lost.
	Handoff(f *netstack.Flow, c netstack.Conn, maxUnread int) (*net.TCPConn, []byte, error)
	// CloseHandoff closes a socket Handoff returned, when the flow ends.
	CloseHandoff(f *netstack.Flow, kc *net.TCPConn)
}

// kernelLeg is implemented by netstack's kernel upstream legs.
type kernelLeg interface{ KernelTCP() *net.TCPConn }

// kernelLegs are a handed-off flow's sockets: both legs in the kernel.
type kernelLegs struct {
	client, server *net.TCPConn
	// pair is set when Guard.SockMap moves the bytes (spliceUp).
	pair *SockPair
}

// Handoff results other than netstack's failure reasons.
const (
	handoffOK         = "ok"
	handoffGVisorLeg  = "upstream-gvisor" // the upstream leg is not a kernel socket
	handoffServerDone = "server-done"     // the server ended its side before the verdict
)

// handoff tries to move the client leg into the kernel, after the
// verdict and before the held bytes go upstream: the server has not been
// sent anything yet, so for TLS it has nothing to answer and gVisor
// nothing unacknowledged. copyDown is paused for the switch and resumed
// if the flow stays in gVisor. On success gf.legs is set, the flow's
// client is the kernel socket, and the down direction is spliced in the
// kernel.
func (gf *guardFlow) handoff(in *clientInput) {
	// With a SockMap both directions start in spliceUp, once the held
	// bytes are upstream: the kernel's redirect must not overtake them.
	if l := gf.moveClientLeg(in, false); l != nil && gf.g.SockMap == nil {
		go gf.spliceDown(l)
	}
}

// handoffHTTP is handoff for an HTTP/1 flow after its first request was
// allowed: later requests are read from the kernel socket and judged as
// before (the relay reads them, as HAProxy does), so the down direction
// stays copyDown's, which watches for protocol switches.
func (gf *guardFlow) handoffHTTP(in *clientInput) {
	if gf.moveClientLeg(in, true) != nil {
		gf.resumeCopyDown()
	}
}

// moveClientLeg is the switch itself; it returns the flow's kernel legs,
// or nil with the flow as it was (copyDown running). inspectsOn: the
// relay goes on judging what the client sends (HTTP), from in.buf.
func (gf *guardFlow) moveClientLeg(in *clientInput, inspectsOn bool) *kernelLegs {
	g := gf.g
	up, ok := gf.server.(kernelLeg)
	if !ok {
		g.Metrics.Handoff(handoffGVisorLeg)
		return nil
	}
	if !gf.pauseCopyDown() {
		g.Metrics.Handoff(handoffServerDone)
		return nil
	}
	if kl, ok := gf.client.(kernelLeg); ok {
		// The kernel accepted the flow (netstack.ServeAccepted): its
		// client leg is a kernel socket already, nothing to move.
		return gf.setKernelLegs(gf.client, kl.KernelTCP(), up)
	}
	// What gVisor received and the relay did not read comes along: held
	// bytes of an HTTP flow must fit the inspect buffer (the next request
	// is judged from it); other flows forward them as they are.
	maxUnread := handoffMaxUnread
	if inspectsOn {
		maxUnread = cap(in.buf) - len(in.buf)
	}
	kc, unread, err := g.Handoff.Handoff(gf.f, gf.client, maxUnread)
	// An HTTP client that sends at once may have more in gVisor than the
	// buffer takes: read what fits and try again. A flow handed off after
	// a while (HandoffAfterBytes) has sent the client data that its ACKs,
	// delayed or on their way, will clear in a round trip or a
	// delayed-ACK timeout: wait for them, a while.
	ackDeadline, pause := time.Now().Add(handoffAckWait), 500*time.Microsecond
	for try := 0; err != nil && try < handoffTries; try++ {
		switch {
		case isReason(err, netstack.HandoffUnread) && inspectsOn && gf.readMore(in):
			maxUnread = cap(in.buf) - len(in.buf)
		case isReason(err, netstack.HandoffUnacked) && time.Now().Before(ackDeadline):
			time.Sleep(pause)
			pause = min(2*pause, 8*time.Millisecond)
		default:
			try = handoffTries // nothing a retry would change
			continue
		}
		kc, unread, err = g.Handoff.Handoff(gf.f, gf.client, maxUnread)
	}
	in.buf = append(in.buf, unread...) // forwarded (or judged) before the kernel socket's bytes
	var client netstack.Conn
	if err == nil {
		if client, err = netstack.NewKernelConn(kc); err != nil {
			g.Handoff.CloseHandoff(gf.f, kc)
			err = &netstack.HandoffError{Reason: netstack.HandoffRepair, Err: err, Lost: true}
		}
	}
	if err != nil {
		reason := netstack.HandoffRepair
		var he *netstack.HandoffError
		if errors.As(err, &he) {
			reason = he.Reason
		}
		g.Metrics.Handoff(reason)
		if he != nil && he.Lost {
			// Neither gVisor's endpoint nor the kernel socket can carry
			// the flow on. Rare (the kernel refused a socket half way),
			// and it costs a client its connection: worth an operator's
			// eye.
			if g.Log != nil {
				g.Log.Warn("handoff: flow lost", "flow_id", gf.f.ID, "err", err)
			}
			gf.fail(&halfError{up: true, read: true, err: err})
		} else if g.Log != nil {
			g.Log.Debug("handoff: flow stays in gVisor", "flow_id", gf.f.ID, "err", err)
		}
		gf.resumeCopyDown()
		return nil
	}
	g.Metrics.Handoff(handoffOK)
	if g.Log != nil {
		g.Log.Debug("handoff: flow in the kernel", "flow_id", gf.f.ID)
	}
	return gf.setKernelLegs(client, kc, up)
}

// setKernelLegs makes client (on socket kc) the flow's client leg and
// stores the flow's two kernel sockets, for the splice.
func (gf *guardFlow) setKernelLegs(client netstack.Conn, kc *net.TCPConn, up kernelLeg) *kernelLegs {
	l := &kernelLegs{client: kc, server: up.KernelTCP()}
	l.server.SetReadDeadline(time.Time{})
	gf.mu.Lock()
	gf.client = client // fail() aborts the kernel socket from now on
	gf.mu.Unlock()
	gf.legs.Store(l)
	gf.af.SetKernel()
	return l
}

// handoffMaxUnread bounds the bytes a handoff takes from gVisor's receive
// queue (a client uploading through the switch): its receive buffer.
const handoffMaxUnread = 8 << 20

// handoffTries bounds the retries after unread or unacknowledged data;
// handoffAckWait bounds the wait for ACKs (Linux delays one by up to
// 40 ms, more under load).
const (
	handoffTries   = 24
	handoffAckWait = 250 * time.Millisecond
)

func isReason(err error, reason string) bool {
	var he *netstack.HandoffError
	return errors.As(err, &he) && he.Reason == reason
}

// readMore appends what the client's gVisor leg holds to in.buf without
// waiting, and reports whether it read anything.
func (gf *guardFlow) readMore(in *clientInput) bool {
	if len(in.buf) == cap(in.buf) {
		return false
	}
	// gonet refuses to read at all past its deadline: give it a moment.
	gf.client.SetReadDeadline(time.Now().Add(time.Millisecond))
	n, _ := gf.client.Read(in.buf[len(in.buf):cap(in.buf)]) // a deadline, EOF or reset: the next Handoff says
	gf.client.SetReadDeadline(time.Time{})
	in.buf = in.buf[:len(in.buf)+n]
	return n > 0
}

// pauseCopyDown stops copyDown at its next read of the server, and
// reports false if copyDown had ended already (the server closed).
func (gf *guardFlow) pauseCopyDown() bool {
	gf.downPaused = make(chan struct{})
	gf.pauseDown.Store(true)
	gf.server.SetReadDeadline(time.Now()) // wakes a read in progress
	select {
	case <-gf.downPaused:
		return true
	case <-gf.downDone:
		return false
	}
}

// resumeCopyDown undoes pauseCopyDown.
func (gf *guardFlow) resumeCopyDown() {
	gf.server.SetReadDeadline(time.Time{})
	gf.pauseDown.Store(false)
	go gf.copyDown()
}

// spliceChunk is how many bytes a spliced half moves between two reports
// to the byte counters (netward status, EVE).
const spliceChunk = 1 << 20

// spliceDown relays server → client between the kernel legs and ends
// the flow's down side (downDone).
func (gf *guardFlow) spliceDown(l *kernelLegs) {
	defer close(gf.downDone)
	if err := spliceHalf(l.client, l.server, false, gf.countDown); err != nil {
		gf.fail(err)
		return
	}
	gf.setHalfClosed()
}

// spliceUp relays client → server between the kernel legs; with a
// SockMap it pairs the legs and starts the down direction too.
func (gf *guardFlow) spliceUp(l *kernelLegs) *halfError {
	if sm := gf.g.SockMap; sm != nil {
		p, err := sm.Pair(l.client, l.server)
		if err != nil {
			if gf.g.Log != nil {
				gf.g.Log.Debug("handoff: sockmap refused the flow: splice", "flow_id", gf.f.ID, "err", err)
			}
			go gf.spliceDown(l)
			return spliceHalf(l.server, l.client, true, gf.countUp)
		}
		l.pair = p
		go gf.sockmapDown(l)
		return halfErrorOf(p.Half(l.server, l.client, gf.countUp), l.server, true)
	}
	return spliceHalf(l.server, l.client, true, gf.countUp)
}

// sockmapDown is spliceDown on the flow's SockPair.
func (gf *guardFlow) sockmapDown(l *kernelLegs) {
	defer close(gf.downDone)
	if err := halfErrorOf(l.pair.Half(l.client, l.server, gf.countDown), l.client, false); err != nil {
		gf.fail(err)
		return
	}
	gf.setHalfClosed()
}

// halfErrorOf is a kernel-to-kernel half's error: the socket the kernel
// has closed is the one that failed (the sockmap Half cannot tell).
func halfErrorOf(err error, dst *net.TCPConn, up bool) *halfError {
	if err == nil {
		return nil
	}
	return &halfError{up: up, read: tcpState(dst) != tcpClosed, err: err}
}

func (gf *guardFlow) countDown(n int) {
	gf.touch()
	gf.downBytes.Add(int64(n))
	gf.af.AddToClient(n)
}

// spliceHalf moves src to dst in the kernel (splice(2) through a pipe,
// rawsplice.go) until src's FIN, which it passes on (CloseWrite).
func spliceHalf(dst, src *net.TCPConn, up bool, count func(int)) *halfError {
	if err := rawSpliceHalf(dst, src, up, count); err != nil {
		return err
	}
	if err := dst.CloseWrite(); err != nil && !isClosed(err) {
		return &halfError{up: up, read: false, err: err}
	}
	return nil
}

// tcpClosed is the kernel's TCP_CLOSE state: a reset connection is in it.
const tcpClosed = 7

// tcpState is c's kernel TCP state (TCP_INFO), 0 if unknown.
func tcpState(c *net.TCPConn) uint8 {
	info, ok := tcpInfo(c)
	if !ok {
		return 0
	}
	return info.State
}

func tcpInfo(c *net.TCPConn) (unix.TCPInfo, bool) {
	var info unix.TCPInfo
	rc, err := c.SyscallConn()
	if err != nil {
		return info, false
	}
	var errno unix.Errno
	cerr := rc.Control(func(fd uintptr) {
		n := uint32(unsafe.Sizeof(info))
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_TCP, unix.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&n)), 0)
	})
	return info, cerr == nil && errno == 0
}

// idle is how long neither socket has received data, from the kernel's
// own clock (TCP_INFO last_data_recv), so a flow that trickles less than
// a splice chunk is not cut as idle.
func (l *kernelLegs) idle() time.Duration {
	ci, ok1 := tcpInfo(l.client)
	si, ok2 := tcpInfo(l.server)
	if !ok1 || !ok2 {
		return 0 // closed meanwhile: the flow is ending anyway
	}
	return time.Duration(min(ci.Last_data_recv, si.Last_data_recv)) * time.Millisecond
}
