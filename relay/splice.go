// Package relay serves netward's flows: Guard (guard.go) holds, inspects,
// judges and enforces; this file has the copy loop, half-close and reset
// handling it splices the client's and the server's legs with.
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/netward/netward/netstack"
)

// BufferSize is the size of one pooled copy buffer. One read from a gVisor
// leg returns at most what its receive queue holds; 32 KiB is two GSO
// segments' worth at 1500 MTU rounding and keeps a busy flow at one buffer
// per direction.
const BufferSize = 32 << 10

// bufPool holds copy buffers. A flow takes one per direction only while it
// copies, and returns it at the end; pointers avoid the allocation that
// putting a slice header into a sync.Pool would cost.
var bufPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// spliceBufferSize is copyHalf's buffer: large enough that one read takes
// a whole 64 KiB GSO super-packet (or two) from a gVisor leg and one write
// lets gVisor send it on as one 64 KiB GSO packet, instead of two or three
// smaller ones (TUN writes per GiB: see README). copyHalf holds it only
// while data flows (WaitReadable), so idle flows do not pay for the size.
const spliceBufferSize = 128 << 10

var spliceBufPool = sync.Pool{New: func() any { b := make([]byte, spliceBufferSize); return &b }}

// copyBufs lends spliceBufPool's buffers to a kernel leg's ReadPooled.
var copyBufs netstack.BufferPool = copyBufPool{}

type copyBufPool struct{}

func (copyBufPool) Get() *[]byte  { return spliceBufPool.Get().(*[]byte) }
func (copyBufPool) Put(b *[]byte) { spliceBufPool.Put(b) }

// pooledReader is implemented by netstack's kernel legs: a read that takes
// a buffer only once there is something to read, in one syscall.
type pooledReader interface {
	ReadPooled(pool netstack.BufferPool) (*[]byte, int, error)
}

// readHeld reads from src into *bp, or, when the relay holds no buffer
// (bp nil: src was drained), into one from pool taken only once src is
// readable, so an idle flow holds none. It returns the buffer held now:
// nil after a kernel leg's error or EOF.
func readHeld(src netstack.Conn, bp *[]byte, pool netstack.BufferPool) (*[]byte, int, error) {
	if bp == nil {
		if pr, ok := src.(pooledReader); ok {
			return pr.ReadPooled(pool)
		}
		if w, ok := src.(readWaiter); ok {
			w.WaitReadable() // errors surface from Read below
		}
		bp = pool.Get()
	}
	n, err := src.Read(*bp)
	return bp, n, err
}

// End is how a flow ended.
type End uint8

const (
	// EndClosed: both directions ended with a FIN.
	EndClosed End = iota
	// EndClientReset: the client reset its leg; the server got an RST.
	EndClientReset
	// EndServerReset: the server reset its leg; the client got an RST.
	EndServerReset
	// EndError: a leg failed otherwise (timeout, local close); both were
	// aborted with an RST.
	EndError
)

func (e End) String() string {
	switch e {
	case EndClosed:
		return "closed"
	case EndClientReset:
		return "client-reset"
	case EndServerReset:
		return "server-reset"
	case EndError:
		return "error"
	}
	return "end(" + strconv.Itoa(int(e)) + ")"
}

// Result is what a flow moved and how it ended.
type Result struct {
	Up   int64 // bytes client → server, held bytes included
	Down int64 // bytes server → client
	End  End
	Err  error // the first error that ended the flow; nil for EndClosed
}

// endOf is how a flow ended, given the error that ended it (nil: both
// directions finished with a FIN).
func endOf(first *halfError) (End, error) {
	if first == nil {
		return EndClosed, nil
	}
	// Which leg failed: the read side of a copy is its source, the write
	// side its destination.
	clientSide := first.read == first.up
	switch {
	case !isReset(first.err):
		return EndError, first
	case clientSide:
		return EndClientReset, first
	default:
		return EndServerReset, first
	}
}

// halfError is the error that ended one direction of a flow.
type halfError struct {
	up   bool // direction client → server
	read bool // reading the source failed (else writing the destination)
	err  error
}

func (e *halfError) Error() string {
	leg := "server"
	if e.read == e.up {
		leg = "client"
	}
	op := "write"
	if e.read {
		op = "read"
	}
	return op + " " + leg + ": " + e.err.Error()
}

func (e *halfError) Unwrap() error { return e.err }

// isReset reports whether err means the peer reset or abandoned the
// connection, as opposed to a local failure or timeout.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// copyHalf copies src to dst until EOF, then half-closes: CloseWrite on dst
// (FIN) and CloseRead on src. It returns the bytes written to dst. count,
// if not nil, is told of every write as it happens (live byte counters).
func copyHalf(dst, src netstack.Conn, held []byte, up bool, count func(int)) (int64, *halfError) {
	n, _, err := copyHalfUntil(dst, src, held, up, count, nil)
	return n, err
}

// stopWaiter is implemented by netstack's gVisor conns (tcpConn).
type stopWaiter interface {
	WaitReadableOr(stop <-chan struct{}) bool
}

// copyHalfUntil is copyHalf that also returns, with stopped true and
// nothing half-closed, once stop is closed: between two writes to dst, so
// every byte read from src has been written (a deferred handoff). A nil
// stop, or a src that cannot wait for it, never stops.
func copyHalfUntil(dst, src netstack.Conn, held []byte, up bool, count func(int), stop <-chan struct{}) (n int64, stopped bool, herr *halfError) {
	if len(held) > 0 {
		w, err := dst.Write(held)
		n += int64(w)
		if count != nil {
			count(w)
		}
		if err != nil {
			return n, false, &halfError{up: up, read: false, err: err}
		}
	}
	// A buffer is taken only once src is readable and given back as soon
	// as it is drained, so an idle flow holds none (memory per idle flow).
	// After a read that filled the buffer, more is likely waiting: keep it.
	sw, canStop := src.(stopWaiter)
	if !canStop {
		stop = nil
	}
	var bp *[]byte
	defer func() {
		if bp != nil {
			spliceBufPool.Put(bp)
		}
	}()
	for {
		if stop != nil {
			// Before every read, not only an idle one: a read must
			// never block past stop.
			select {
			case <-stop:
				return n, true, nil
			default:
			}
			if !sw.WaitReadableOr(stop) {
				return n, true, nil
			}
		}
		var r int
		var rerr error
		if stop != nil && bp == nil {
			bp = spliceBufPool.Get().(*[]byte) // WaitReadableOr waited
		}
		bp, r, rerr = readHeld(src, bp, copyBufs)
		if r > 0 {
			buf := *bp
			last := finishedBehind(src, dst, r, len(buf), rerr)
			w, werr, cerr := writeChunk(dst, buf[:r], last)
			n += int64(w)
			if count != nil {
				count(w)
			}
			if werr != nil {
				return n, false, &halfError{up: up, read: false, err: werr}
			}
			if last {
				if cerr != nil && !isClosed(cerr) {
					return n, false, &halfError{up: up, read: false, err: cerr}
				}
				src.CloseRead() // nothing more will come; error irrelevant
				return n, false, nil
			}
		}
		if bp != nil && r < len(*bp) {
			spliceBufPool.Put(bp)
			bp = nil
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, false, &halfError{up: up, read: true, err: rerr}
		}
	}
	if err := dst.CloseWrite(); err != nil && !isClosed(err) {
		return n, false, &halfError{up: up, read: false, err: err}
	}
	src.CloseRead() // nothing more will come; error irrelevant
	return n, false, nil
}

// finishedBehind reports whether src's FIN came right behind the r bytes
// a read into a buffer of size just returned (with rerr): then the relay
// sends its own FIN with them (writeLast), not one more read later. Only
// after a read that drained src, and not from a kernel leg to a kernel
// leg: there the check is a syscall, as is the read that finds the FIN
// instead, and a kernel dst sends the FIN as a segment of its own anyway.
func finishedBehind(src, dst netstack.Conn, r, size int, rerr error) bool {
	if rerr != nil || r >= size {
		return false
	}
	if _, final := dst.(finalWriter); !final {
		if _, kernel := src.(kernelLeg); kernel {
			return false
		}
	}
	return peerFinished(src)
}

// finalWriter is implemented by netstack's gVisor conns (tcpConn).
type finalWriter interface {
	WriteFinal(b []byte) (int, error)
}

// writeChunk writes b to dst, and closes dst's write side with it when
// b is the other side's last (writeLast).
func writeChunk(dst netstack.Conn, b []byte, last bool) (n int, werr, cerr error) {
	if last {
		return writeLast(dst, b)
	}
	n, werr = dst.Write(b)
	return n, werr, nil
}

// writeLast writes b, the last bytes of the other side, to dst and closes
// dst's write side; werr is the write's error, cerr the close's. Where dst
// can, the FIN goes in the same segment as b: a client that gets the FIN
// with the answer closes second and keeps no TIME_WAIT, as behind a kernel
// router (port exhaustion on connection churn, datapath-notes.md).
func writeLast(dst netstack.Conn, b []byte) (n int, werr, cerr error) {
	if fw, ok := dst.(finalWriter); ok {
		n, err := fw.WriteFinal(b)
		if n < len(b) {
			return n, err, nil
		}
		return n, nil, err
	}
	n, werr = dst.Write(b)
	if werr != nil {
		return n, werr, nil
	}
	return n, nil, dst.CloseWrite()
}

// readWaiter is implemented by netstack's conns (both kinds of leg).
type readWaiter interface{ WaitReadable() error }

// finChecker is implemented by netstack's conns.
type finChecker interface{ PeerFinished() bool }

func peerFinished(c netstack.Conn) bool {
	f, ok := c.(finChecker)
	return ok && f.PeerFinished()
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

// lingerer is implemented by *net.TCPConn and netstack's conns.
type lingerer interface{ SetLinger(sec int) error }

// abortConn closes c with an RST where the conn supports it.
func abortConn(c net.Conn) {
	if l, ok := c.(lingerer); ok {
		l.SetLinger(0) // best effort: Close below ends the conn either way
	}
	c.Close()
}
