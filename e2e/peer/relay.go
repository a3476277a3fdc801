package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netward/netward/relay"
)

// ServeRelay is the cheapest terminating transparent relay there is, the
// bench's reference for what terminating a flow costs at all: the kernel's
// TCP on both legs, TPROXY in, a socket bound to the client's own address
// (IP_TRANSPARENT) out, and splice(2) between the two (io.Copy of one
// *net.TCPConn into another), with no inspection. netward terminates the
// client's leg in gVisor instead and reads what the flow says; whatever
// netward costs above this relay is the price of that, and a target below
// this relay's cost is out of reach for any design that terminates flows.
//
// It listens on port on every IPv4 and IPv6 address. The caller installs
// the TPROXY rules that hand it the flows (see the bench's relay column).
func ServeRelay(ctx context.Context, port int, ready func()) error {
	return ServeRelayWith(ctx, port, nil, ready)
}

// ServeRelayWith is ServeRelay with the bytes moved by sm (eBPF sockmap,
// netward's --handoff-sockmap mover) instead of splice; nil is splice.
func ServeRelayWith(ctx context.Context, port int, sm *relay.SockMap, ready func()) error {
	lc := net.ListenConfig{Control: transparent}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, a := range []struct{ network, addr string }{{"tcp4", "0.0.0.0"}, {"tcp6", "::"}} {
		ln, err := lc.Listen(ctx, a.network, net.JoinHostPort(a.addr, fmt.Sprint(port)))
		if err != nil {
			return fmt.Errorf("relay: listen: %w", err)
		}
		lns = append(lns, ln)
	}
	if ready != nil {
		ready()
	}
	// Flows still open at the end are cut (closed), so that a SIGTERM
	// ends the relay at once.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		open   = map[net.Conn]bool{}
		closed bool
	)
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				if closed {
					mu.Unlock()
					c.Close()
					continue
				}
				open[c] = true
				wg.Add(1)
				mu.Unlock()
				go func() {
					defer wg.Done()
					relayTransparent(c.(*net.TCPConn), sm)
					mu.Lock()
					delete(open, c)
					mu.Unlock()
				}()
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("relay: accept: %w", err)
	}
	for _, ln := range lns {
		ln.Close()
	}
	mu.Lock()
	closed = true
	for c := range open {
		c.Close() // its relay then ends and closes the upstream leg
	}
	mu.Unlock()
	wg.Wait()
	return err
}

// relayTransparent connects to the address the client dialled (TPROXY
// leaves it as c's local address), from the client's own address and port,
// and relays.
func relayTransparent(c *net.TCPConn, sm *relay.SockMap) {
	d := net.Dialer{LocalAddr: c.RemoteAddr(), Control: transparent, KeepAlive: -1, Timeout: 10 * time.Second}
	u, err := d.Dial("tcp", c.LocalAddr().String())
	if err != nil {
		c.SetLinger(0) // the client sees a reset, as from the server itself
		c.Close()
		return
	}
	if sm != nil {
		if err := sm.Relay(c, u.(*net.TCPConn)); err == nil {
			return
		}
		// Not in the map: splice instead.
	}
	Relay(c, u.(*net.TCPConn))
}

// Relay copies a to b and b to a until both are done, passing each side's
// FIN on as a half-close, then closes both; an error on either side (a
// reset, a Close) ends both at once. Between two *net.TCPConn, Go's io.Copy
// moves the bytes with splice(2): they never enter userspace.
func Relay(a, b *net.TCPConn) {
	done := make(chan struct{})
	go func() {
		copyHalf(a, b)
		close(done)
	}()
	copyHalf(b, a)
	<-done
	a.Close()
	b.Close()
}

// copyHalf is one direction of Relay.
func copyHalf(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close() // the other direction's copy then ends too
		return
	}
	dst.CloseWrite() // errors only on a connection already gone
}

// transparent lets a socket accept TPROXY'd flows (listener) or bind to an
// address not its own (the client's, upstream); SO_REUSEADDR, because the
// client may reuse its port while this side still holds the last
// connection on it in TIME_WAIT.
func transparent(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if network == "tcp6" {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if serr = unix.SetsockoptInt(int(fd), level, opt, 1); serr != nil {
			serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	return errors.Join(err, serr)
}
