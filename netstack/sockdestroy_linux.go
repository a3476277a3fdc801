package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A handed-off client leg is a kernel socket with the server's address.
// When the relay closed it after its own FIN (the server ended first), the
// kernel keeps the connection in TIME_WAIT for 60 s, and the socket-match
// rule delivers the client's packets to that TIME_WAIT socket too: the
// client's next connection from the same port (wrk reuses one within a
// second or two) would be answered by it, not by netward. gVisor's own
// TIME_WAIT is 100 ms (Options.TimeWait) for the same reason. So netward
// destroys the TIME_WAIT socket (SOCK_DESTROY, as `ss -K` does) when the
// flow ends, or, when the kernel had not reached TIME_WAIT yet, when the
// next SYN on the tuple arrives (steer lets SYNs past the socket match).

// sockDestroyer sends SOCK_DESTROY requests on one netlink socket.
type sockDestroyer struct {
	mu  sync.Mutex
	fd  int // -1 until first use
	buf [128]byte
}

// inet_diag_req_v2 with its nlmsghdr.
const (
	sockDestroy     = 21 // SOCK_DESTROY
	inetDiagReqLen  = 56
	sockDestroySize = unix.SizeofNlMsghdr + inetDiagReqLen
)

// errNoSocket: nothing had the tuple (already gone).
var errNoSocket = errors.New("no such socket")

// destroy removes the TCP socket (any state, TIME_WAIT included) with
// local address local and peer remote.
func (d *sockDestroyer) destroy(local, remote netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return fmt.Errorf("netlink sock_diag: %w", err)
		}
		tv := unix.NsecToTimeval(int64(time.Second))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return fmt.Errorf("netlink sock_diag: SO_RCVTIMEO: %w", err)
		}
		d.fd = fd
	}
	b := d.buf[:sockDestroySize]
	clear(b)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], sockDestroySize)
	ne.PutUint16(b[4:], sockDestroy)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	r := b[unix.SizeofNlMsghdr:]
	r[0] = unix.AF_INET
	if !local.Addr().Is4() {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	putDiagAddr(id[4:20], local.Addr())
	putDiagAddr(id[20:36], remote.Addr())
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(d.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink sock_diag: send: %w", err)
	}
	n, _, err := unix.Recvfrom(d.fd, d.buf[:], 0)
	if err != nil {
		return fmt.Errorf("netlink sock_diag: receive: %w", err)
	}
	// The answer is an NLMSG_ERROR carrying 0 or -errno.
	if n < unix.SizeofNlMsghdr+4 || ne.Uint16(d.buf[4:]) != unix.NLMSG_ERROR {
		return errors.New("netlink sock_diag: unexpected answer")
	}
	switch errno := -int32(ne.Uint32(d.buf[unix.SizeofNlMsghdr:])); errno {
	case 0:
		return nil
	case int32(unix.ENOENT):
		return errNoSocket
	default:
		return fmt.Errorf("SOCK_DESTROY %s-%s: %w", local, remote, unix.Errno(errno))
	}
}

func (d *sockDestroyer) close() {
	d.mu.Lock()
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
	d.mu.Unlock()
}

func putDiagAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
		return
	}
	v := a.As16()
	copy(b, v[:])
}

// pendingTimeWait is the tuples of handed-off client legs whose kernel
// socket may still exist: open (value 0), or closed before the kernel
// reached TIME_WAIT (value: when). A new SYN on such a tuple destroys
// the socket (Stack.newSYN). Sharded like quietSet.
type pendingTimeWait struct {
	shards [quietShards]struct {
		mu    sync.Mutex
		m     map[ackKey]int64
		swept int64
	}
}

// timeWaitLen is the kernel's TIME_WAIT (TCP_TIMEWAIT_LEN).
const timeWaitLen = 60 * time.Second

func (p *pendingTimeWait) shard(k ackKey) *struct {
	mu    sync.Mutex
	m     map[ackKey]int64
	swept int64
} {
	return &p.shards[(uint(k[34])<<8|uint(k[35]))%quietShards]
}

// add records an open handed-off leg.
func (p *pendingTimeWait) add(k ackKey) { p.set(k, 0) }

// closing records that k's socket was closed on its way to TIME_WAIT.
func (p *pendingTimeWait) closing(k ackKey) { p.set(k, time.Now().UnixNano()) }

func (p *pendingTimeWait) set(k ackKey, v int64) {
	sh := p.shard(k)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[ackKey]int64)
	}
	sh.m[k] = v
	// Closed entries past TIME_WAIT go, in a sweep at most every few
	// seconds per shard: open flows stay in the map, so a sweep per
	// add would cost as many steps as there are flows.
	if now := time.Now().UnixNano(); v != 0 && now-sh.swept > int64(5*time.Second) {
		sh.swept = now
		for key, t := range sh.m {
			if t != 0 && now-t > int64(timeWaitLen) {
				delete(sh.m, key)
			}
		}
	}
	sh.mu.Unlock()
}

// peek reports whether k is present, and whether its socket is still
// open (not closed by the relay yet).
func (p *pendingTimeWait) peek(k ackKey) (present, open bool) {
	sh := p.shard(k)
	sh.mu.Lock()
	t, ok := sh.m[k]
	sh.mu.Unlock()
	return ok && (t == 0 || time.Now().UnixNano()-t <= int64(timeWaitLen)), ok && t == 0
}

// take reports whether k's socket may still exist, and forgets k.
func (p *pendingTimeWait) take(k ackKey) bool {
	sh := p.shard(k)
	sh.mu.Lock()
	t, ok := sh.m[k]
	if ok {
		delete(sh.m, k)
	}
	sh.mu.Unlock()
	return ok && (t == 0 || time.Now().UnixNano()-t <= int64(timeWaitLen))
}

// tcpInfoState is the kernel's TCP state of c's socket (TCP_INFO), or 0.
func tcpInfoState(fd uintptr) uint8 {
	var info unix.TCPInfo
	n := uint32(unsafe.Sizeof(info))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_TCP, unix.TCP_INFO, uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return 0
	}
	return info.State
}
