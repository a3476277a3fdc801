package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel client leg (netward run --tcp-accept kernel): steer's TPROXY
// rule hands each forwarded SYN to a transparent listener, so the kernel
// answers the client's handshake, with the server's address, and the
// flow's client leg is a kernel socket from its first byte. Nothing of the
// flow crosses the TUN or gVisor: what a handoff achieves after the
// verdict (handoff_linux.go), without a handshake in gVisor before it.
// The price: the client's handshake completes before the Handler's Admit
// and before the server has answered, as with any proxy (HAProxy, nginx).
// A server that refuses, or an early reset verdict, is a reset after the
// handshake; an early drop closes the socket without a word (TCP_REPAIR),
// and the client's next segments, which no socket takes, go on to the TUN,
// whose stack resets them.

// ListenTransparent opens the listener steer's TPROXY rule delivers SYNs
// to: on addr (a loopback address, so nothing but TPROXY reaches it),
// IP_TRANSPARENT (TPROXY only hands SYNs to transparent listeners) and
// SO_MARK mark, which the accepted sockets inherit: the socket-match rule
// that delivers the client's later packets to them looks for that mark
// (steer's TransparentChain), and raw OUTPUT leaves their packets
// untracked.
func ListenTransparent(addr netip.AddrPort, mark uint32) (*net.TCPListener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // as the upstream dial: idle flows end by limits.idle_timeout
		Control:   transparentControl(addr.Addr().Is4(), false, mark),
	}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	ln, err := lc.Listen(context.Background(), network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("netstack: transparent listener on %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// ServeAccepted serves the flows ln accepts (a ListenTransparent listener)
// until Shutdown, which closes ln; the caller runs it on its own
// goroutine. Each flow goes through the Handler as a SYN through gVisor
// does: Admit, the upstream dial, Serve with both legs kernel sockets.
func (s *Stack) ServeAccepted(ln *net.TCPListener) error {
	served := make(chan struct{})
	defer close(served)
	go func() {
		select {
		case <-s.done:
			ln.Close()
		case <-served:
		}
	}()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("netstack: accept on %s: %w", ln.Addr(), err)
			}
			// Out of files or memory, or an aborted handshake: the
			// kernel keeps the backlog, try again shortly.
			s.stats.AcceptErrors.Add(1)
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if !s.enter() {
			abort(c)
			continue
		}
		go s.handleAccepted(c)
	}
}

// handleAccepted is handleSYN for a connection the kernel accepted.
func (s *Stack) handleAccepted(c *net.TCPConn) {
	defer s.wg.Done()
	GrowStack() // as handleSYN: the dial and the relay would grow it twice
	client, server := addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr())
	if !client.IsValid() || !server.IsValid() || server.Addr().IsLoopback() {
		// A local connection to the listener itself, not a steered flow.
		s.stats.AcceptErrors.Add(1)
		abort(c)
		return
	}
	s.stats.FlowsAccepted.Add(1)
	if s.replay != nil {
		s.serveReplayed(c, replayKey{client, server})
		return
	}
	f := &Flow{ID: s.nextID.Add(1), Client: client, Server: server, Start: time.Now()}
	if !s.answered(c, s.admit(f)) {
		return
	}
	served := false
	defer s.abandonUnless(f, &served)
	up, kernel, answer := s.dialAdmitted(f)
	if kernel {
		defer s.kernelSockets.Add(-1)
	}
	if !s.answered(c, answer) {
		return
	}
	kc, err := newKernelConn(c)
	if err != nil {
		s.stats.ClientHandshakeFailures.Add(1)
		abort(up)
		return
	}
	served = s.serveFlow(f, kc, up)
}

// serveReplayed serves the replayed flow whose client leg c is (SYN
// replay: admitted and dialed already). A connection no replayed flow
// waits for is reset: only SYNs netward replayed reach the listener.
func (s *Stack) serveReplayed(c *net.TCPConn, k replayKey) {
	rf := s.replay.accept(k)
	if rf == nil {
		s.stats.ReplayUnmatched.Add(1)
		abort(c)
		return
	}
	defer s.kernelSockets.Add(-1)
	defer s.replay.end(k, rf, true)
	served := false
	defer s.abandonUnless(rf.flow, &served)
	kc, err := newKernelConn(c)
	if err != nil {
		s.stats.ClientHandshakeFailures.Add(1)
		abort(c)
		abort(rf.server)
		return
	}
	served = s.serveFlow(rf.flow, kc, rf.server)
}

// answered gives the client of an accepted connection what a refusal
// means after its handshake: a reset for AdmitReset, a silent close for
// AdmitDrop. It reports whether the flow goes on (AdmitAccept).
func (s *Stack) answered(c *net.TCPConn, a Admission) bool {
	switch a {
	case AdmitAccept:
		return true
	case AdmitReset:
		abort(c)
	default:
		closeSilently(c)
	}
	return false
}

// closeSilently closes c without a FIN or RST reaching the client: in
// repair mode the kernel drops the connection as it is. If repair mode is
// refused, a reset (abort) is the next best: nothing is left half-open.
func closeSilently(c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_REPAIR, 1)
		})
		err = errors.Join(err, cerr)
	}
	if err != nil {
		abort(c)
		return
	}
	c.Close()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
