package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dialKernel connects to f.Server from f.Client with a kernel TCP socket
// instead of a gVisor endpoint (Options.UpstreamKernel). IP_TRANSPARENT
// lets the socket bind the client's (non-local) address; its packets leave
// by the main routing table like any forwarded packet, with the kernel's
// TCP and the output device's offloads, so gVisor only terminates the
// client's leg. The server's answers must be delivered to the socket, not
// steered into the TUN: that takes, in the kernel, a mangle rule
// `-m socket --transparent -j MARK` ahead of netward's, an ip rule for that
// mark and a `local default dev lo` route (see README). SO_MARK tags the
// socket's own packets so raw OUTPUT can untrack them.
//
// The dial ends at Options.DialTimeout or when ctx is cancelled (netward's
// shutdown). Addresses go in as netip values: no string to format and
// resolve again per connection.
func (s *Stack) dialKernel(ctx context.Context, f *Flow) (Conn, error) {
	d := net.Dialer{
		Timeout: s.dialTO,
		// No keep-alive probes: the relay ends flows that stay idle
		// (limits.idle_timeout), and turning them on costs four
		// setsockopt calls per connection.
		KeepAlive: -1,
		// The client may reuse its port while this appliance still holds
		// the previous upstream connection in TIME_WAIT: SO_REUSEADDR.
		Control: transparentControl(f.Client.Addr().Is4(), true, s.upstreamMark),
	}
	c, err := d.DialTCP(ctx, "tcp", f.Client, f.Server)
	// EADDRNOTAVAIL: the flow's previous upstream socket on this 4-tuple
	// is not gone yet (the relay is closing it, or it waits in LAST_ACK
	// for the server's last ACK, one round trip). A client that connects
	// again at once from the same port gets there first when the kernel
	// answers its handshake (--tcp-accept kernel). Wait for it, briefly.
	for pause := 500 * time.Microsecond; err != nil && errors.Is(err, unix.EADDRNOTAVAIL) && pause <= addrBusyMaxPause; pause *= 2 {
		s.stats.DialAddrBusy.Add(1)
		time.Sleep(pause)
		c, err = d.DialTCP(ctx, "tcp", f.Client, f.Server)
	}
	if err != nil {
		return nil, fmt.Errorf("netstack: connect %s from %s: %w", f.Server, f.Client, err)
	}
	return newKernelConn(c)
}

// transparentControl is a Dialer's or ListenConfig's Control: the socket
// gets IP_TRANSPARENT (IPV6_TRANSPARENT unless v4), so it can bind an
// address that is not the appliance's; SO_REUSEADDR if reuse; SO_MARK
// mark unless 0.
func transparentControl(v4, reuse bool, mark uint32) func(network, address string, rc syscall.RawConn) error {
	return func(network, address string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if v4 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			}
			if serr != nil {
				serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
				return
			}
			if reuse {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
					serr = fmt.Errorf("SO_REUSEADDR: %w", serr)
					return
				}
			}
			if mark != 0 {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); serr != nil {
					serr = fmt.Errorf("SO_MARK: %w", serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// addrBusyMaxPause is the longest pause between dials of a 4-tuple still
// held by its previous socket: 0.5+1+…+64 ms, 127 ms in all.
const addrBusyMaxPause = 64 * time.Millisecond

// kernelConn is a kernel leg (the upstream socket, or a client socket the
// kernel accepted or a handoff made): a *net.TCPConn plus ReadPooled and
// PeerFinished.
type kernelConn struct {
	*net.TCPConn
	rc syscall.RawConn
	// peekCtl (PeerFinished's) runs peekAt, made once: no allocation per
	// call. peekAt leaves its result in peekN and peekErr; only the leg's
	// one reader calls it.
	peekCtl func(fd uintptr)
	peekN   int
	peekErr error
	peek    [1]byte

	// readFn is ReadPooled's, made once; it leaves its result in readBuf,
	// readN and readErr. Each leg has one reader.
	readFn   func(fd uintptr) bool
	readPool BufferPool
	readBuf  *[]byte
	readN    int
	readErr  error
}

func newKernelConn(c *net.TCPConn) (*kernelConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("netstack: upstream socket: %w", err)
	}
	k := &kernelConn{TCPConn: c, rc: rc}
	k.peekCtl = k.peekAt
	k.readFn = k.readPooled
	return k, nil
}

// ReadPooled reads what the socket has into a buffer from pool and returns
// the buffer with the count, or a nil buffer with the error (io.EOF for
// the peer's FIN). The buffer is taken only when a read returns something,
// so a flow waiting for its peer holds none (memory per idle flow), and
// waiting costs no syscall of its own: no peek before the read. Read
// deadlines apply.
func (k *kernelConn) ReadPooled(pool BufferPool) (*[]byte, int, error) {
	k.readPool = pool
	err := k.rc.Read(k.readFn)
	k.readPool = nil
	if err == nil {
		err = k.readErr
	}
	if err == io.EOF {
		return nil, 0, io.EOF
	}
	if err != nil {
		return nil, 0, &net.OpError{Op: "read", Net: "tcp", Source: k.LocalAddr(), Addr: k.RemoteAddr(), Err: err}
	}
	bp := k.readBuf
	k.readBuf = nil
	return bp, k.readN, nil
}

// readPooled is ReadPooled's RawConn.Read callback: false (wait for the
// poller) while the socket has nothing. Only bytes read keep the buffer;
// EAGAIN, EOF and errors give it back.
func (k *kernelConn) readPooled(fd uintptr) bool {
	bp := k.readPool.Get()
	n, err := unix.Read(int(fd), *bp)
	for err == unix.EINTR {
		n, err = unix.Read(int(fd), *bp)
	}
	switch {
	case err == unix.EAGAIN:
		k.readPool.Put(bp)
		return false
	case err != nil:
		k.readErr = os.NewSyscallError("read", err)
	case n == 0:
		k.readErr = io.EOF
	default:
		k.readBuf, k.readN, k.readErr = bp, n, nil
		return true
	}
	k.readPool.Put(bp)
	return true
}

// peekAt peeks at one byte without taking it or blocking: n 0 and no error
// is the server's FIN with nothing before it, EAGAIN nothing yet.
func (k *kernelConn) peekAt(fd uintptr) {
	k.peekN, _, k.peekErr = unix.Recvfrom(int(fd), k.peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
}

// PeerFinished reports whether the server's FIN has arrived and every byte
// before it has been read (see tcpConn.PeerFinished). It costs a syscall
// (a peek): a relay asks only after a read that drained the socket.
func (k *kernelConn) PeerFinished() bool {
	if k.rc.Control(k.peekCtl) != nil {
		return false // closed: no FIN to pass on
	}
	return k.peekErr == nil && k.peekN == 0
}

// CloseRead does nothing: the relay calls it only once the server's FIN
// has been read, when shutdown(SHUT_RD) would change nothing a peer sees
// and only cost a syscall per connection. Close releases the socket.
func (k *kernelConn) CloseRead() error { return nil }

// NewKernelConn makes c (a kernel TCP socket: a client leg Handoff
// returned) a Conn with what relays use of netstack's legs: ReadPooled,
// PeerFinished, KernelTCP.
func NewKernelConn(c *net.TCPConn) (Conn, error) { return newKernelConn(c) }

// KernelTCP is the leg's socket, for a relay that splices it with another
// kernel socket (after Stack.Handoff).
func (k *kernelConn) KernelTCP() *net.TCPConn { return k.TCPConn }
