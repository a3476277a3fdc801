// Package event writes netward's event log: one JSON object per line in
// Suricata's EVE format (event types flow, alert, tls, http), so SIEM
// pipelines that ingest Suricata's eve.json take netward's unchanged.
//
// The datapath never waits for the disk. Each event is encoded on the
// caller's goroutine into a pooled buffer and handed to a bounded queue; one
// writer goroutine drains the queue in batches. When the queue is full the
// event is dropped and counted (Stats.Dropped), never blocked on.
//
// Field names follow Suricata's EVE schema. netward's own fields, which EVE
// has no name for, are in one top-level object "netward" (verdict, rule,
// ech), and geo lookups in "src_geo"/"dest_geo" objects (country_iso, asn,
// as_org); see README.md.
package event

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultQueueLen   = 65536
	DefaultQueueBytes = 64 << 20
)

// batchBytes is how much the writer gathers into one write(2). 256 KiB
// amortises the syscall over hundreds of events without holding much.
const batchBytes = 256 << 10

// writeLinger is how long the writer waits after an event for more to
// write with it, unless a batch is already queued: at most 500 writes a
// second under load, and an event on disk 2 ms later than it could be.
const writeLinger = 2 * time.Millisecond

// maxPooledBuf keeps an event buffer that grew for a huge URL from staying
// in the pool forever.
const maxPooledBuf = 64 << 10

// Options configure a Log. The zero Options write to stdout.
type Options struct {
	// Path is the file events are appended to; "" or "-" is stdout. The file
	// is created (0640) if missing and reopened by Reopen.
	Path string
	// Writer, if not nil, receives the events instead of Path (tests, other
	// sinks). Reopen does nothing for it.
	Writer io.Writer
	// QueueLen is how many events may wait for the writer before new ones
	// are dropped (config log.event_buffer). Default DefaultQueueLen.
	QueueLen int
	// QueueBytes bounds the memory the waiting events hold. Default
	// DefaultQueueBytes.
	QueueBytes int
	// InIface is in_iface for events whose Header does not name one.
	InIface string
	// Logger receives write and reopen errors (rate-limited). Default
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock for events with a zero Time. Default time.Now.
	Now func() time.Time
}

// Stats count what happened to the events handed to a Log. Emitted =
// Written + Dropped + Failed + (still queued).
type Stats struct {
	Emitted uint64 // handed to Flow, Alert, TLS or HTTP
	Written uint64 // written to the output
	Dropped uint64 // lost because the queue was full or the Log closed
	Failed  uint64 // lost because the write failed (disk full, EIO)
}

// Log is an EVE event log. Its methods are safe for concurrent use, and all
// of them do nothing on a nil *Log, so a datapath without an event log can
// call them unconditionally.
type Log struct {
	queue      chan *buffer
	queueBytes atomic.Int64
	maxBytes   int64
	closed     atomic.Bool

	emitted, written, dropped, failed atomic.Uint64

	iface  string
	now    func() time.Time
	logger *slog.Logger

	reopen    chan chan error
	done      chan struct{} // closed by Close: drain and stop
	exited    chan struct{} // closed by the writer when it has stopped
	closeOnce sync.Once
	closeErr  error

	// Owned by the writer goroutine.
	path    string
	out     io.Writer
	file    *os.File // nil for stdout and Options.Writer
	scratch []byte
	lastErr time.Time
}

type buffer struct{ b []byte }

var bufPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 1024)} }}

// New opens the log and starts its writer goroutine. Close stops it.
func New(opts Options) (*Log, error) {
	l := &Log{
		maxBytes: int64(opts.QueueBytes),
		iface:    opts.InIface,
		now:      opts.Now,
		logger:   opts.Logger,
		reopen:   make(chan chan error),
		done:     make(chan struct{}),
		exited:   make(chan struct{}),
		scratch:  make([]byte, 0, batchBytes+maxPooledBuf),
	}
	n := opts.QueueLen
	if n <= 0 {
		n = DefaultQueueLen
	}
	l.queue = make(chan *buffer, n)
	if l.maxBytes <= 0 {
		l.maxBytes = DefaultQueueBytes
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.logger == nil {
		l.logger = slog.Default()
	}
	switch {
	case opts.Writer != nil:
		l.out = opts.Writer
	case opts.Path == "" || opts.Path == "-":
		l.out = os.Stdout
	default:
		f, err := openFile(opts.Path)
		if err != nil {
			return nil, err
		}
		l.path, l.out, l.file = opts.Path, f, f
	}
	go l.run()
	return l, nil
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("event: open log: %w", err)
	}
	return f, nil
}

// Flow logs a flow event. e is read before Flow returns and not kept.
func (l *Log) Flow(e *Flow) {
	if l == nil {
		return
	}
	b := bufPool.Get().(*buffer)
	b.b = l.appendFlow(b.b[:0], e)
	l.enqueue(b)
}

// Alert logs an alert event. e is read before Alert returns and not kept.
func (l *Log) Alert(e *Alert) {
	if l == nil {
		return
	}
	b := bufPool.Get().(*buffer)
	b.b = l.appendAlert(b.b[:0], e)
	l.enqueue(b)
}

// TLS logs a tls event. e is read before TLS returns and not kept.
func (l *Log) TLS(e *TLS) {
	if l == nil {
		return
	}
	b := bufPool.Get().(*buffer)
	b.b = l.appendTLS(b.b[:0], e)
	l.enqueue(b)
}

// HTTP logs an http event. e is read before HTTP returns and not kept.
func (l *Log) HTTP(e *HTTP) {
	if l == nil {
		return
	}
	b := bufPool.Get().(*buffer)
	b.b = l.appendHTTP(b.b[:0], e)
	l.enqueue(b)
}

// QUIC logs a quic event. e is read before QUIC returns and not kept.
func (l *Log) QUIC(e *QUIC) {
	if l == nil {
		return
	}
	b := bufPool.Get().(*buffer)
	b.b = l.appendQUIC(b.b[:0], e)
	l.enqueue(b)
}

// DNS logs a dns event. e is read before DNS returns and not kept.
func (l *Log) DNS(e *DNS) {
	if l == nil {
		return
	}
	b := bufPool.Get().(*buffer)
	b.b = l.appendDNS(b.b[:0], e)
	l.enqueue(b)
}

// enqueue hands b to the writer or, if the queue is full (by count or by
// bytes) or the log is closed, drops it. It never blocks.
func (l *Log) enqueue(b *buffer) {
	l.emitted.Add(1)
	n := int64(len(b.b))
	if l.closed.Load() {
		l.drop(b)
		return
	}
	if l.queueBytes.Add(n) > l.maxBytes {
		l.queueBytes.Add(-n)
		l.drop(b)
		return
	}
	select {
	case l.queue <- b:
	default:
		l.queueBytes.Add(-n)
		l.drop(b)
	}
}

func (l *Log) drop(b *buffer) {
	l.dropped.Add(1)
	putBuf(b)
}

func putBuf(b *buffer) {
	if cap(b.b) > maxPooledBuf {
		return
	}
	bufPool.Put(b)
}

// Stats returns the counters so far.
func (l *Log) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	return Stats{
		Emitted: l.emitted.Load(),
		Written: l.written.Load(),
		Dropped: l.dropped.Load(),
		Failed:  l.failed.Load(),
	}
}

// Reopen closes and reopens the log file, for logrotate: after the file was
// renamed, new events go to a new file at the configured path. Events queued
// before the call go to the old file. It does nothing for stdout or
// Options.Writer. If the new file cannot be opened, the old one stays in use
// and the error is returned.
func (l *Log) Reopen() error {
	if l == nil {
		return nil
	}
	req := make(chan error, 1)
	select {
	case l.reopen <- req:
		return <-req
	case <-l.exited:
		return errors.New("event: reopen: log is closed")
	}
}

// Close writes what is queued, stops the writer and closes the file. Events
// logged after Close are dropped and counted.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.done)
		<-l.exited
		if l.file != nil {
			if err := l.file.Close(); err != nil {
				l.closeErr = fmt.Errorf("event: close log: %w", err)
			}
		}
	})
	return l.closeErr
}

// run is the writer goroutine: it owns the output.
func (l *Log) run() {
	defer close(l.exited)
	for {
		select {
		case b := <-l.queue:
			if l.queueBytes.Load() < batchBytes {
				// Let more events come before the write: at thousands
				// of flows a second one write(2) per event or two costs
				// the appliance more than everything else the log does,
				// and a sleeping writer is not woken by every event.
				time.Sleep(writeLinger)
			}
			l.writeBatch(b)
		case req := <-l.reopen:
			l.drain() // what was logged before Reopen belongs in the old file
			req <- l.doReopen()
		case <-l.done:
			l.drain()
			return
		}
	}
}

// drain writes everything queued now.
func (l *Log) drain() {
	for {
		select {
		case b := <-l.queue:
			l.writeBatch(b)
		default:
			return
		}
	}
}

// writeBatch writes first and whatever else is already queued (up to
// batchBytes) with one write.
func (l *Log) writeBatch(first *buffer) {
	buf := l.scratch[:0]
	count := 0
	take := func(b *buffer) {
		buf = append(buf, b.b...)
		l.queueBytes.Add(-int64(len(b.b)))
		count++
		putBuf(b)
	}
	take(first)
gather:
	for len(buf) < batchBytes {
		select {
		case b := <-l.queue:
			take(b)
		default:
			break gather
		}
	}
	if cap(buf) <= cap(l.scratch)*2 {
		l.scratch = buf[:0] // keep a grown scratch unless one event made it huge
	}
	if _, err := l.out.Write(buf); err != nil {
		l.failed.Add(uint64(count))
		l.logErr("event: write log", err)
		return
	}
	l.written.Add(uint64(count))
}

func (l *Log) doReopen() error {
	if l.file == nil {
		return nil
	}
	f, err := openFile(l.path)
	if err != nil {
		return fmt.Errorf("event: reopen: %w", err)
	}
	old := l.file
	l.file, l.out = f, f
	if err := old.Close(); err != nil {
		return fmt.Errorf("event: reopen: close old log: %w", err)
	}
	return nil
}

// logErr reports write errors at most every 10 s: a full disk must not also
// flood the process log.
func (l *Log) logErr(msg string, err error) {
	now := time.Now()
	if now.Sub(l.lastErr) < 10*time.Second {
		return
	}
	l.lastErr = now
	l.logger.Error(msg, "err", err, "failed_events", l.failed.Load())
}
