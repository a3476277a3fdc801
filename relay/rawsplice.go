package relay

import (
	"fmt"
	"net"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Handed-off flows move their bytes with splice(2) through a pipe, as
// net.TCPConn.ReadFrom does, but with raw syscalls: splice on nonblocking
// sockets and pipes never blocks, so telling the scheduler (entersyscall)
// only makes its monitor hand the P to another thread when one takes a
// few tens of µs of TCP transmit, a futex wake-up and a thread switch per
// chunk (measured: most of netward's CPU on a TLS download). Waiting is
// the netpoller's, through RawConn, so deadlines and Close work as ever.

// pipeSize is each pipe's buffer, as Go's own (fs.pipe-max-size default).
const pipeSize = 1 << 20

// splicePipe is a pipe and the bytes it holds.
type splicePipe struct {
	r, w int
	data int
}

var pipePool = sync.Pool{New: func() any {
	p, err := newSplicePipe()
	if err != nil {
		return nil
	}
	return p
}}

func newSplicePipe() (*splicePipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize) // best effort: a smaller pipe moves less per call
	p := &splicePipe{r: fds[0], w: fds[1]}
	// A pipe the pool drops is closed by the GC.
	runtime.AddCleanup(p, func(fds [2]int) { unix.Close(fds[0]); unix.Close(fds[1]) }, fds)
	return p, nil
}

func getPipe() (*splicePipe, error) {
	if p, ok := pipePool.Get().(*splicePipe); ok && p != nil {
		return p, nil
	}
	return newSplicePipe()
}

// putPipe gives p back, unless bytes are stuck in it (a half that failed
// midway): then the cleanup closes it once it is unreachable.
func putPipe(p *splicePipe) {
	if p.data == 0 {
		pipePool.Put(p)
	}
}

// spliceRaw is splice(2) from in to out, nonblocking, without telling the
// scheduler.
func spliceRaw(in, out, n int) (int, unix.Errno) {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if e != unix.EINTR {
			return int(r), e
		}
	}
}

// rawSpliceHalf moves src's bytes to dst until src's FIN (nil) or an
// error, which says the side that failed. count gets the bytes moved every
// spliceChunk and at the end.
func rawSpliceHalf(dst, src *net.TCPConn, up bool, count func(int)) *halfError {
	rs, err := src.SyscallConn()
	if err != nil {
		return &halfError{up: up, read: true, err: err}
	}
	rd, err := dst.SyscallConn()
	if err != nil {
		return &halfError{up: up, read: false, err: err}
	}
	p, err := getPipe()
	if err != nil {
		return &halfError{up: up, read: true, err: err}
	}
	defer putPipe(p)
	pending := 0
	defer func() {
		if pending > 0 {
			count(pending)
		}
	}()
	for {
		var n int
		var errno unix.Errno
		if err := rs.Read(func(fd uintptr) bool {
			n, errno = spliceRaw(int(fd), p.w, pipeSize)
			return errno != unix.EAGAIN
		}); err != nil {
			return &halfError{up: up, read: true, err: err}
		}
		if errno != 0 {
			return &halfError{up: up, read: true, err: fmt.Errorf("splice: %w", errno)}
		}
		if n == 0 {
			return nil // src's FIN
		}
		p.data += n
		for p.data > 0 {
			var m int
			if err := rd.Write(func(fd uintptr) bool {
				m, errno = spliceRaw(p.r, int(fd), p.data)
				return errno != unix.EAGAIN
			}); err != nil {
				return &halfError{up: up, read: false, err: err}
			}
			if errno != 0 {
				return &halfError{up: up, read: false, err: fmt.Errorf("splice: %w", errno)}
			}
			if m <= 0 {
				return &halfError{up: up, read: false, err: fmt.Errorf("splice moved nothing of %d bytes", p.data)}
			}
			p.data -= m
			pending += m
		}
		if pending >= spliceChunk {
			count(pending)
			pending = 0
		}
	}
}
