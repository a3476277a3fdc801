package netstack

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Handoff moves a flow's client leg out of gVisor into a kernel TCP socket
// that continues the connection where gVisor's endpoint stands, so that,
// after the verdict, both legs are kernel sockets and the relay can splice
// them (relay.Guard). The client notices nothing: the socket has the
// server's address (IP_TRANSPARENT), gVisor's sequence numbers, windows,
// window scales, MSS, SACK and timestamp clock (TCP_REPAIR), and the
// kernel upstream leg's socket-match rule (steer: NETWARD_TPROXY) delivers
// the client's packets to it instead of the TUN from the moment it exists.
//
// The caller must have stopped reading and writing c (both directions of
// the relay). Handoff refuses, leaving c as it was, while data gVisor sent
// is unacknowledged (the kernel socket could not retransmit it), or while
// gVisor holds more than maxUnread bytes it received and acknowledged but
// the relay has not read. Up to maxUnread such bytes come back as unread:
// the client will not send them again, so the caller forwards them before
// anything the kernel socket receives.
//
// From the switch on, gVisor's endpoint stays silent: the link drops
// whatever it would still send for the connection (quietSet), and Handoff
// aborts it. Segments the client sent that reached gVisor after the switch
// are not acknowledged by anyone; the client retransmits them to the
// kernel socket.
//
// On success the returned socket is the flow's client leg and c must only
// be closed. Errors are *HandoffError.
func (s *Stack) Handoff(f *Flow, c Conn, maxUnread int) (kc *net.TCPConn, unread []byte, err error) {
	gc, ok := c.(*tcpConn)
	if !ok {
		return nil, nil, &HandoffError{Reason: HandoffUnsupported, Err: errors.New("not a gVisor leg")}
	}
	ep, ok := gc.ep.(*tcp.Endpoint)
	if !ok || !handoffFieldsOK() {
		return nil, nil, &HandoffError{Reason: HandoffUnsupported, Err: errHandoffLayout}
	}
	quiet := s.link.quietConns()
	key := quietKey(f.Client, f.Server)
	// readTCPState silences the connection as it reads the state: no ACK
	// gVisor makes after that may reach the client, or the client would
	// take bytes for delivered that the kernel socket never sees.
	st, err := s.readTCPState(ep, maxUnread, func(rcvNxt uint32) { quiet.add(key, rcvNxt) })
	if err == nil {
		kc, err = repairSocket(&st, f.Server, f.Client, s.upstreamMark)
	}
	if err == nil && st.rcvBufUsed > 0 {
		// Exactly the bytes before rcvNxt: gVisor may have queued more
		// since (never acknowledged: the client sends them again, to
		// the kernel socket).
		if unread, err = readUnread(gc, st.rcvBufUsed); err != nil {
			ep.Abort()
			abort(kc)
			return nil, nil, &HandoffError{Reason: HandoffRepair, Err: err, Lost: true}
		}
	}
	if err == nil {
		ep.Abort() // its RST is dropped at the link
		// Until the flow ends cleanly, a new SYN on the tuple means
		// the client is done with this connection (newSYN).
		s.pendingTW.add(key)
		s.stats.Handoffs.Add(1)
		s.setClient(f, kc) // Shutdown resets the kernel socket now
		return kc, unread, nil
	}
	if st.silenced {
		quiet.remove(key)
	}
	return nil, nil, err
}

// readUnread reads the n bytes gVisor holds for the relay. They are
// queued already, so a short deadline only guards against a gVisor that
// counts differently.
func readUnread(c *tcpConn, n int) ([]byte, error) {
	b := make([]byte, n)
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, fmt.Errorf("reading the %d bytes gVisor held: %w", n, err)
	}
	return b, nil
}

// Handoff failure reasons (HandoffError.Reason, the metric's label).
const (
	HandoffUnsupported = "unsupported" // not a gVisor leg, or gVisor's layout is not the one netward reads
	HandoffUnacked     = "unacked"     // data sent to the client is not acknowledged yet
	HandoffUnread      = "unread"      // gVisor holds more client data than the caller can take
	HandoffState       = "state"       // the connection is not established, or options the kernel cannot take
	HandoffRepair      = "repair"      // the kernel refused the socket (no TCP_REPAIR, no IP_TRANSPARENT, tuple in use)
)

// HandoffError is why Handoff left a flow in gVisor.
type HandoffError struct {
	Reason string
	Err    error
	// Lost is set when c can no longer carry the flow either (bytes it
	// held were taken): the caller must end the flow.
	Lost bool
}

func (e *HandoffError) Error() string { return "netstack: handoff: " + e.Reason + ": " + e.Err.Error() }
func (e *HandoffError) Unwrap() error { return e.Err }

// tcpState is what a kernel socket needs to continue a gVisor connection.
type tcpState struct {
	rcvNxt, rcvAcc uint32 // next byte expected; right edge of the window advertised
	rcvWndScale    uint8
	sndUna, sndNxt uint32
	sndWnd         uint32 // the client's window, scaled
	sndWndScale    uint8
	maxPayload     int // bytes per segment, options excluded
	sack, ts       bool
	tsVal          uint32 // gVisor's timestamp clock now
	rcvBufUsed     int
	silenced       bool // readTCPState called silence
}

// gVisor keeps sequence numbers and windows in unexported fields
// (Endpoint.rcv, Endpoint.snd) and has no API to export a connection's
// state short of a stack-wide probe that copies it on every segment of
// every flow. netward reads the few fields it needs by name, with the
// endpoint locked (LockUser, which also queues arriving segments). The
// field paths are resolved and their kinds checked once; if a gVisor
// upgrade changes them, handoffFieldsOK is false and every flow stays on
// the gVisor path (reason "unsupported"), tested by TestHandoffLayout.
var (
	handoffOnce   sync.Once
	handoffFields struct {
		ok                                       bool
		rcvNxt, rcvAcc, rcvWndScale              []int
		sndUna, sndNxt, sndWnd, sndWndScale, mps []int
		rcv, snd                                 []int
		sndBufUsed                               []int
	}
	errHandoffLayout = errors.New("gVisor's tcp.Endpoint does not have the fields netward reads")
)

func handoffFieldsOK() bool {
	handoffOnce.Do(resolveHandoffFields)
	return handoffFields.ok
}

func resolveHandoffFields() {
	f := &handoffFields
	et := reflect.TypeOf(tcp.Endpoint{})
	path := func(t reflect.Type, kind reflect.Kind, names ...string) []int {
		var idx []int
		for i, name := range names {
			sf, ok := t.FieldByName(name)
			if !ok {
				return nil
			}
			idx = append(idx, sf.Index...)
			t = sf.Type
			if i < len(names)-1 && t.Kind() == reflect.Pointer {
				return nil // pointers are followed by the caller
			}
		}
		if t.Kind() != kind {
			return nil
		}
		return idx
	}
	rcvF, ok1 := et.FieldByName("rcv")
	sndF, ok2 := et.FieldByName("snd")
	if !ok1 || !ok2 || rcvF.Type.Kind() != reflect.Pointer || sndF.Type.Kind() != reflect.Pointer {
		return
	}
	f.rcv, f.snd = rcvF.Index, sndF.Index
	f.sndBufUsed = path(et, reflect.Int, "sndQueueInfo", "SndBufUsed")
	rt, stt := rcvF.Type.Elem(), sndF.Type.Elem()
	f.rcvNxt = path(rt, reflect.Uint32, "RcvNxt")
	f.rcvAcc = path(rt, reflect.Uint32, "RcvAcc")
	f.rcvWndScale = path(rt, reflect.Uint8, "RcvWndScale")
	f.sndUna = path(stt, reflect.Uint32, "SndUna")
	f.sndNxt = path(stt, reflect.Uint32, "SndNxt")
	f.sndWnd = path(stt, reflect.Uint32, "SndWnd")
	f.sndWndScale = path(stt, reflect.Uint8, "SndWndScale")
	f.mps = path(stt, reflect.Int, "MaxPayloadSize")
	f.ok = f.rcvNxt != nil && f.rcvAcc != nil && f.rcvWndScale != nil && f.sndUna != nil &&
		f.sndNxt != nil && f.sndWnd != nil && f.sndWndScale != nil && f.mps != nil && f.sndBufUsed != nil
}

// readTCPState reads ep's connection state with ep locked and, if the
// state can be handed off, calls silence with the receive sequence number
// before it unlocks, so that no segment gVisor processes after the read
// is acknowledged to the client.
func (s *Stack) readTCPState(ep *tcp.Endpoint, maxUnread int, silence func(rcvNxt uint32)) (tcpState, error) {
	var st tcpState
	ep.LockUser()
	defer ep.UnlockUser()
	if tcp.EndpointState(ep.State()) != tcp.StateEstablished {
		return st, &HandoffError{Reason: HandoffState, Err: fmt.Errorf("endpoint %s", tcp.EndpointState(ep.State()))}
	}
	v := reflect.ValueOf(ep).Elem()
	rcv, snd := v.FieldByIndex(handoffFields.rcv), v.FieldByIndex(handoffFields.snd)
	if rcv.IsNil() || snd.IsNil() {
		return st, &HandoffError{Reason: HandoffState, Err: errors.New("endpoint not connected")}
	}
	rcv, snd = rcv.Elem(), snd.Elem()
	f := &handoffFields
	st.rcvNxt = uint32(rcv.FieldByIndex(f.rcvNxt).Uint())
	st.rcvAcc = uint32(rcv.FieldByIndex(f.rcvAcc).Uint())
	st.rcvWndScale = uint8(rcv.FieldByIndex(f.rcvWndScale).Uint())
	st.sndUna = uint32(snd.FieldByIndex(f.sndUna).Uint())
	st.sndNxt = uint32(snd.FieldByIndex(f.sndNxt).Uint())
	st.sndWnd = uint32(snd.FieldByIndex(f.sndWnd).Uint())
	st.sndWndScale = uint8(snd.FieldByIndex(f.sndWndScale).Uint())
	st.maxPayload = int(snd.FieldByIndex(f.mps).Int())
	st.sack = ep.SACKPermitted
	st.ts = ep.SendTSOk
	st.tsVal = ep.TSOffset.TSVal(s.stack.Clock().NowMonotonic())
	st.rcvBufUsed = ep.RcvBufUsed
	// Written under the send queue's lock, by the relay (paused) and by
	// ACK processing (held off by LockUser): nothing changes it now.
	sndBufUsed := v.FieldByIndex(f.sndBufUsed).Int()
	switch {
	case sndBufUsed != 0:
		return st, &HandoffError{Reason: HandoffUnacked, Err: fmt.Errorf("%d bytes queued or not acknowledged", sndBufUsed)}
	case st.sndUna != st.sndNxt:
		return st, &HandoffError{Reason: HandoffUnacked, Err: fmt.Errorf("%d bytes in flight", st.sndNxt-st.sndUna)}
	case st.rcvBufUsed > maxUnread:
		return st, &HandoffError{Reason: HandoffUnread, Err: fmt.Errorf("%d bytes not read (at most %d taken)", st.rcvBufUsed, maxUnread)}
	case st.maxPayload <= 0 || st.rcvWndScale > 14 || st.sndWndScale > 14:
		return st, &HandoffError{Reason: HandoffState, Err: fmt.Errorf("mss %d, window scales %d/%d", st.maxPayload, st.sndWndScale, st.rcvWndScale)}
	}
	silence(st.rcvNxt)
	st.silenced = true
	return st, nil
}

// Linux TCP options for TCP_REPAIR_OPTIONS (include/net/tcp.h).
const (
	tcpoptMSS       = 2
	tcpoptWindow    = 3
	tcpoptSACKPerm  = 4
	tcpoptTimestamp = 8
	tcpRepairOff    = 0 // TCP_REPAIR_OFF: leave repair mode, send a window probe
	tcpRecvQueue    = 1 // TCP_RECV_QUEUE
	tcpSendQueue    = 2 // TCP_SEND_QUEUE
)

// tcpRepairWindow is struct tcp_repair_window.
type tcpRepairWindow struct {
	sndWl1, sndWnd, maxWindow, rcvWnd, rcvWup uint32
}

// repairSocket makes the kernel socket that continues st as local (the
// server's address, as the client sees it) talking to remote (the
// client), following the order CRIU restores a socket in: repair mode,
// bind, queue sequence numbers, connect (no SYN in repair mode), options,
// timestamp clock, windows, repair off (which sends one window probe; the
// client's answer brings its current window and timestamp).
func repairSocket(st *tcpState, local, remote netip.AddrPort, mark uint32) (*net.TCPConn, error) {
	family, level, transparent := unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT
	if !local.Addr().Is4() {
		family, level, transparent = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	// Blocking until net.FileConn's dup makes it nonblocking and gives
	// that to the netpoller: os.NewFile would register a nonblocking fd
	// too, only for the Close after FileConn to take it out again. Nothing
	// here blocks: a connect in repair mode sends nothing.
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &HandoffError{Reason: HandoffRepair, Err: fmt.Errorf("socket: %w", err)}
	}
	fail := func(op string, err error) (*net.TCPConn, error) {
		unix.Close(fd)
		return nil, &HandoffError{Reason: HandoffRepair, Err: fmt.Errorf("%s: %w", op, err)}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, 1); err != nil {
		return fail("TCP_REPAIR", err)
	}
	if err := unix.SetsockoptInt(fd, level, transparent, 1); err != nil {
		return fail("IP_TRANSPARENT", err)
	}
	if err := unix.Bind(fd, sockaddr(local)); err != nil {
		return fail("bind "+local.String(), err)
	}
	for _, q := range [...]struct {
		queue int
		seq   uint32
	}{{tcpSendQueue, st.sndNxt}, {tcpRecvQueue, st.rcvNxt}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			return fail("TCP_REPAIR_QUEUE", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ, int(int32(q.seq))); err != nil {
			return fail("TCP_QUEUE_SEQ", err)
		}
	}
	// gVisor's MaxPayloadSize leaves room for the timestamp option; the
	// kernel takes the peer's MSS and subtracts options itself.
	mss := st.maxPayload
	if st.ts {
		mss += 12
	}
	// The segment size the socket sends with is fixed at connect, from
	// the MSS it knows then: the 536 default, since TCP_REPAIR_OPTIONS
	// comes after, and nothing recomputes it later. TCP_MAXSEG makes
	// connect take the client's (without it every handed-off flow sent
	// 524-byte segments to the client).
	// (The kernel takes at most 32767 there; only loopback has more.)
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_MAXSEG, min(mss, maxUserMSS)); err != nil {
		return fail("TCP_MAXSEG", err)
	}
	if err := unix.Connect(fd, sockaddr(remote)); err != nil {
		return fail("connect "+remote.String(), err)
	}
	if repairConnected != nil {
		repairConnected()
	}
	opts := make([]unix.TCPRepairOpt, 0, 4)
	opts = append(opts, unix.TCPRepairOpt{Code: tcpoptMSS, Val: uint32(mss)})
	if st.sndWndScale != 0 || st.rcvWndScale != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: tcpoptWindow, Val: uint32(st.sndWndScale) | uint32(st.rcvWndScale)<<16})
	}
	if st.sack {
		opts = append(opts, unix.TCPRepairOpt{Code: tcpoptSACKPerm})
	}
	if st.ts {
		opts = append(opts, unix.TCPRepairOpt{Code: tcpoptTimestamp})
	}
	if err := setsockoptBytes(fd, unix.TCP_REPAIR_OPTIONS, unsafe.Pointer(&opts[0]), len(opts)*unix.SizeofTCPRepairOpt); err != nil {
		return fail("TCP_REPAIR_OPTIONS", err)
	}
	if st.ts {
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_TIMESTAMP, int(int32(st.tsVal))); err != nil {
			return fail("TCP_TIMESTAMP", err)
		}
	}
	rcvWnd := st.rcvAcc - st.rcvNxt
	w := tcpRepairWindow{
		sndWl1: st.rcvNxt, sndWnd: st.sndWnd, maxWindow: st.sndWnd,
		rcvWnd: rcvWnd, rcvWup: st.rcvNxt,
	}
	if err := setsockoptBytes(fd, unix.TCP_REPAIR_WINDOW, unsafe.Pointer(&w), int(unsafe.Sizeof(w))); err != nil {
		return fail("TCP_REPAIR_WINDOW", err)
	}
	// The socket is in the kernel's tables since connect, but the
	// client's packets reach it only once it has the upstream mark (the
	// socket-match rule restores and checks it, steer.upstreamPlan):
	// until then they go to gVisor, silenced, and are never acknowledged,
	// so the client sends them again. A socket that took them half made
	// would have acknowledged bytes (and a FIN: TCP_REPAIR_OPTIONS then
	// fails, EPERM) that nobody delivers if the handoff fails, and the
	// flow would stall with the client waiting for an answer (seen in
	// about one of 400 uploads that half-close at once).
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			return fail("SO_MARK", err)
		}
	}
	// From here on the socket may have taken the client's bytes: a
	// failure loses the flow, and the close resets the client.
	file := os.NewFile(uintptr(fd), "handoff "+remote.String()) // owns fd now
	defer file.Close()
	lost := func(op string, err error) (*net.TCPConn, error) {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}) // best effort: the close ends it anyway
		return nil, &HandoffError{Reason: HandoffRepair, Err: fmt.Errorf("%s: %w", op, err), Lost: true}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, tcpRepairOff); err != nil {
		return lost("TCP_REPAIR off", err)
	}
	nc, err := net.FileConn(file) // dups fd
	if err != nil {
		return lost("FileConn", err)
	}
	return nc.(*net.TCPConn), nil
}

// maxUserMSS is the largest TCP_MAXSEG the kernel takes (MAX_TCP_WINDOW).
const maxUserMSS = 32767

// repairConnected, when set (tests only), runs right after the repair
// socket's connect: the moment it is in the kernel's tables.
var repairConnected func()

func setsockoptBytes(fd, opt int, p unsafe.Pointer, n int) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_TCP, uintptr(opt), uintptr(p), uintptr(n), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// Kernel TCP states (TCP_INFO's tcpi_state).
const (
	tcpFinWait1 = 4
	tcpFinWait2 = 5
	tcpTimeWait = 6
	tcpClose    = 7
	tcpClosing  = 11
)

// CloseHandoff closes kc, the client leg Handoff made for f, so that no
// TIME_WAIT of it outlives the flow (sockdestroy_linux.go): destroyed now
// if the kernel is there, or at the tuple's next SYN if it is on its way.
func (s *Stack) CloseHandoff(f *Flow, kc *net.TCPConn) {
	var state uint8
	if rc, err := kc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { state = tcpInfoState(fd) }) // a closed conn leaves state 0
	}
	kc.Close()
	k := quietKey(f.Client, f.Server)
	switch state {
	case tcpClose, tcpTimeWait:
		// CLOSE is also where a connection the client closed first ends;
		// then there is nothing to destroy.
		s.pendingTW.take(k)
		s.destroyTimeWait(f)
	case tcpFinWait1, tcpFinWait2, tcpClosing:
		s.pendingTW.closing(k) // TIME_WAIT is on its way: newSYN destroys it
	default:
		s.pendingTW.take(k) // reset or closed by the client: no TIME_WAIT
	}
}

func (s *Stack) destroyTimeWait(f *Flow) {
	if err := s.destroyer.destroy(f.Server, f.Client); err == nil {
		s.stats.HandoffTimeWaits.Add(1)
	} else if !errors.Is(err, errNoSocket) {
		s.stats.HandoffTimeWaitErrors.Add(1)
		s.log.Debug("handoff: TIME_WAIT not destroyed", "flow_id", f.ID, "err", err)
	}
}

// newSYN runs for every SYN before it is admitted: a connection on the
// tuple of a handed-off one starts afresh in gVisor.
func (s *Stack) newSYN(f *Flow) {
	k := quietKey(f.Client, f.Server)
	s.link.quietConns().remove(k)
	present, open := s.pendingTW.peek(k)
	// The client reconnects as soon as it has the answer and the FIN;
	// the relay may not have closed the old socket yet. Destroying an
	// open socket would reset the client, so give the relay a moment
	// (this is the SYN's own goroutine).
	if present && open {
		waitWhile(func() bool {
			present, open = s.pendingTW.peek(k)
			return present && open
		})
	}
	if present && s.pendingTW.take(k) {
		// A handed-off socket with this tuple still exists (TIME_WAIT, or
		// open past the wait): it would take the client's packets of the
		// new connection.
		s.destroyTimeWait(f)
	}
}

// waitWhile sleeps while busy reports true, for at most synWait: a SYN
// waiting for the relay to close the old socket of its tuple. The first
// sleeps are short because the relay is usually microseconds from done
// (the client reconnects as soon as it has the FIN).
func waitWhile(busy func() bool) {
	deadline := time.Now().Add(synWait)
	for d := 50 * time.Microsecond; busy() && time.Now().Before(deadline); d = min(2*d, 5*time.Millisecond) {
		time.Sleep(d)
	}
}

// synWait bounds how long a SYN waits for the relay to close the socket
// of the same tuple (waitWhile).
const synWait = 200 * time.Millisecond
