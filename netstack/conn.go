package netstack

import (
	"net"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// tcpConn is one leg of a flow: a gonet.TCPConn (net.Conn with deadlines and
// half-close) plus what gonet hides: SetLinger, for aborting with an RST as
// *net.TCPConn does, and errors that errors.Is can match against
// syscall.ECONNRESET, so a relay can tell a reset from a failure.
type tcpConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
	tx *txQueue // the NIC's queue, nil without one (WriteFinal)

	// readEntry and readCh are WaitReadable's, made once per conn.
	readEntry waiter.Entry
	readCh    <-chan struct{}
}

var _ Conn = (*tcpConn)(nil)

func newConn(wq *waiter.Queue, ep tcpip.Endpoint, tx *txQueue) *tcpConn {
	return &tcpConn{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep, wq: wq, tx: tx}
}

// WaitReadable blocks until a Read would not block: data, the peer's FIN,
// an error or Close. A relay calls it before it takes a copy buffer, so an
// idle flow holds no buffer (memory per idle flow). It does not honour read
// deadlines; Close wakes it.
func (c *tcpConn) WaitReadable() error {
	c.WaitReadableOr(nil) // a nil stop never closes
	return nil
}

// WaitReadableOr is WaitReadable that also returns, with false, once
// stop is closed (a relay that must stop reading to hand the flow off).
func (c *tcpConn) WaitReadableOr(stop <-chan struct{}) bool {
	if c.ep.Readiness(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr) != 0 {
		return true
	}
	if c.readCh == nil {
		c.readEntry, c.readCh = waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	}
	c.wq.EventRegister(&c.readEntry)
	defer c.wq.EventUnregister(&c.readEntry)
	for c.ep.Readiness(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr) == 0 {
		select {
		case <-c.readCh:
		case <-stop:
			return false
		}
	}
	return true
}

// SetLinger is (*net.TCPConn).SetLinger: with sec == 0, Close sends an RST
// and discards unsent data.
func (c *tcpConn) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: secondsDuration(sec)})
	return nil
}

// PeerFinished reports whether the peer has sent its FIN and every byte
// before it has been read: the next Read would return io.EOF. A relay
// uses it to pass the FIN on right behind the last data.
func (c *tcpConn) PeerFinished() bool {
	switch tcp.EndpointState(c.ep.State()) {
	case tcp.StateCloseWait, tcp.StateLastAck, tcp.StateClosing, tcp.StateTimeWait:
	default:
		return false
	}
	n, err := c.ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption)
	return err == nil && n == 0
}

// WriteFinal writes b and closes the write side, so that the FIN goes out
// in the same segment as b's last bytes, as a kernel sender's FIN rides on
// its last unsent data. gVisor queues a FIN as a segment of its own; corked,
// the last bytes wait for it, and uncorking sends the two back to back,
// where the TUN writer merges them (mergeFIN); no packet skips the TUN
// queue meanwhile (txQueue), so both reach the writer in one batch. A
// client that gets the FIN with the answer closes second, so it does not
// keep TIME_WAIT: through the relay half of the clients of a
// close-delimited HTTP server did, against a fifth through the kernel
// (datapath-notes.md: port exhaustion).
func (c *tcpConn) WriteFinal(b []byte) (int, error) {
	if c.tx != nil {
		c.tx.beginBatch()
		defer c.tx.endBatch()
	}
	opts := c.ep.SocketOptions()
	opts.SetCorkOption(true)
	n, err := c.Write(b)
	if err == nil {
		err = classify(c.CloseWrite())
	}
	opts.SetCorkOption(false) // sends what the cork held, FIN included
	return n, err
}

// Read is gonet's Read with a reset reported as ECONNRESET.
func (c *tcpConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	return n, classify(err)
}

// Write is gonet's Write with a reset reported as ECONNRESET.
func (c *tcpConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	return n, classify(err)
}

// errnoOf maps the gVisor errors that gonet flattens to strings back to
// the errno a *net.TCPConn would report, so errors.Is works the same on
// both kinds of conn.
var errnoOf = map[string]syscall.Errno{
	(&tcpip.ErrConnectionReset{}).String():   syscall.ECONNRESET,
	(&tcpip.ErrConnectionAborted{}).String(): syscall.ECONNABORTED,
	(&tcpip.ErrClosedForSend{}).String():     syscall.EPIPE,
	(&tcpip.ErrNotConnected{}).String():      syscall.ENOTCONN,
	(&tcpip.ErrTimeout{}).String():           syscall.ETIMEDOUT,
}

// classify maps gonet's string-only errors to errnos. Only on the error
// path: no cost per byte.
func classify(err error) error {
	if err == nil {
		return nil
	}
	// gonet returns its *net.OpError unwrapped; errors.As would cost an
	// allocation per call, and every flow ends with an error (io.EOF).
	if op, ok := err.(*net.OpError); ok && op.Err != nil {
		if errno, ok := errnoOf[op.Err.Error()]; ok {
			op.Err = errno
		}
	}
	return err
}
