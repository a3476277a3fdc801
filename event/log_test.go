package event

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// blockingWriter blocks every Write until release is closed, like a disk
// that stopped answering.
type blockingWriter struct {
	release chan struct{}
	entered chan struct{}
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func newBlockingWriter() *blockingWriter {
	return &blockingWriter{release: make(chan struct{}), entered: make(chan struct{})}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func flowEvent(id uint64) *Flow {
	return &Flow{Header: Header{FlowID: id, Src: netip.MustParseAddrPort("192.0.2.1:40000"),
		Dst: netip.MustParseAddrPort("198.51.100.7:443"), AppProto: "tls", Verdict: "allow", Rule: "web"},
		Start: testStart, End: testEnd, BytesToServer: 1000, BytesToClient: 20000, State: StateClosed, Reason: ReasonTimeout}
}

// waitFor polls cond; it fails the test only if the condition never comes
// (a hang), never on how fast it came.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBlockedWriterNeverBlocksEmitter(t *testing.T) {
	w := newBlockingWriter()
	const queue, total = 16, 5000
	l, err := New(Options{Writer: w, QueueLen: queue, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	l.Flow(flowEvent(0))
	<-w.entered // the writer is now stuck in Write with event 0

	// Emit from several goroutines while the writer is stuck: every call
	// must return. If enqueue blocked, this test would hang here.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range (total - 1) / 4 {
				l.Flow(flowEvent(uint64(g*total + i + 1)))
			}
		}()
	}
	wg.Wait()
	emitted := uint64(1 + 4*((total-1)/4))
	s := l.Stats()
	if s.Emitted != emitted {
		t.Fatalf("Emitted = %d, want %d", s.Emitted, emitted)
	}
	// The writer holds event 0; at most `queue` more can wait.
	if s.Written != 0 || s.Dropped != emitted-1-queue {
		t.Fatalf("while blocked: %+v, want Written 0, Dropped %d", s, emitted-1-queue)
	}

	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s = l.Stats()
	if s.Written != 1+queue || s.Written+s.Dropped != s.Emitted || s.Failed != 0 {
		t.Fatalf("after release: %+v, want Written %d and no loss unaccounted", s, 1+queue)
	}
	if lines := bytes.Count(w.buf.Bytes(), []byte{'\n'}); uint64(lines) != s.Written {
		t.Fatalf("%d lines written, Stats.Written %d", lines, s.Written)
	}
	// Logging after Close is a counted drop, not a panic.
	l.Flow(flowEvent(1))
	if got := l.Stats().Dropped; got != s.Dropped+1 {
		t.Fatalf("Dropped after Close = %d, want %d", got, s.Dropped+1)
	}
}

func TestQueueBytesBound(t *testing.T) {
	w := newBlockingWriter()
	one := len(encodeOne(t, nil, func(l *Log) { l.Flow(flowEvent(1)) }))
	l, err := New(Options{Writer: w, QueueLen: 1000, QueueBytes: 3 * one, Logger: quietLogger(), InIface: "eth1",
		Now: func() time.Time { return testEnd }})
	if err != nil {
		t.Fatal(err)
	}
	l.Flow(flowEvent(1))
	<-w.entered
	for range 10 {
		l.Flow(flowEvent(1))
	}
	s := l.Stats()
	// Event 1 was taken by the writer (its bytes released), 3 fit the budget.
	if s.Dropped != 7 {
		t.Fatalf("Dropped = %d, want 7 (byte budget of 3 events)", s.Dropped)
	}
	close(w.release)
	l.Close()
	if s := l.Stats(); s.Written != 4 {
		t.Fatalf("Written = %d, want 4", s.Written)
	}
}

type failingWriter struct{}

func (failingWriter) Write(p []byte) (int, error) { return 0, errors.New("no space left on device") }

func TestWriteErrorsCounted(t *testing.T) {
	l, err := New(Options{Writer: failingWriter{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		l.Flow(flowEvent(uint64(i)))
	}
	l.Close()
	if s := l.Stats(); s.Failed != 10 || s.Written != 0 || s.Dropped != 0 {
		t.Fatalf("Stats = %+v, want Failed 10", s)
	}
}

func TestNilLog(t *testing.T) {
	var l *Log
	l.Flow(&Flow{})
	l.Alert(&Alert{})
	l.TLS(&TLS{})
	l.HTTP(&HTTP{})
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l.ReopenOnSignal()()
	if s := l.Stats(); s != (Stats{}) {
		t.Fatal(s)
	}
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := append(append([]byte(nil), sc.Bytes()...), '\n')
		decodeStrict(t, line)
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// rotate does what logrotate does (without copytruncate): rename the file,
// then tell netward, via reopen.
func testRotate(t *testing.T, reopen func(l *Log, path string)) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	l, err := New(Options{Path: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 3 {
		l.Flow(flowEvent(uint64(i)))
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	reopen(l, path)
	for i := range 2 {
		l.Flow(flowEvent(uint64(100 + i)))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(readLines(t, path+".1")); got != 3 {
		t.Errorf("rotated file has %d events, want the 3 logged before the reopen", got)
	}
	if got := len(readLines(t, path)); got != 2 {
		t.Errorf("new file has %d events, want 2", got)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o640 != 0 {
		t.Errorf("log file mode %v is wider than 0640", perm)
	}
}

func TestReopenAfterRename(t *testing.T) {
	testRotate(t, func(l *Log, path string) {
		if err := l.Reopen(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestReopenOnSIGUSR1(t *testing.T) {
	testRotate(t, func(l *Log, path string) {
		stop := l.ReopenOnSignal()
		defer stop()
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the log to be reopened at "+path, func() bool {
			_, err := os.Stat(path)
			return err == nil
		})
	})
}

func TestReopenFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "logs")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sub, "eve.json")
	l, err := New(Options{Path: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	// Replace the directory so that the path cannot be created again.
	if err := os.Rename(sub, sub+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sub, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Fatal("Reopen succeeded though the path cannot be created")
	}
	l.Flow(flowEvent(1))
	l.Close()
	if got := len(readLines(t, filepath.Join(sub+".old", "eve.json"))); got != 1 {
		t.Fatalf("old file has %d events, want 1", got)
	}
	if err := l.Reopen(); err == nil {
		t.Fatal("Reopen after Close succeeded")
	}
}

func TestNewBadPath(t *testing.T) {
	if _, err := New(Options{Path: filepath.Join(t.TempDir(), "missing", "eve.json")}); err == nil {
		t.Fatal("New with a path in a missing directory succeeded")
	}
}

func TestConcurrentEmitAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eve.json")
	l, err := New(Options{Path: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				switch i % 4 {
				case 0:
					l.Flow(flowEvent(uint64(g)))
				case 1:
					l.TLS(&TLS{Header: testHeader(), SNI: "a.example"})
				case 2:
					l.HTTP(&HTTP{Header: testHeader(), URL: "/"})
				case 3:
					l.Alert(&Alert{Header: testHeader()})
				}
			}
		}()
	}
	for range 5 {
		if err := l.Reopen(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	l.Close()
	s := l.Stats()
	if got := uint64(len(readLines(t, path))); got != s.Written || s.Written+s.Dropped != 2000 {
		t.Fatalf("file has %d events, Stats %+v", got, s)
	}
}
