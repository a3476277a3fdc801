package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/netward/netward/e2e/peer"
)

// churnCase is one connection-churn row: HTTP (plain, Connection: close)
// or HTTPS (a full TLS handshake with SNI per connection), IPv4 or IPv6.
type churnCase struct {
	tls bool
	fam string
}

var churnCases = []churnCase{{false, "4"}, {false, "6"}, {true, "4"}, {true, "6"}}

const churnWorkers = 50

// tool names the client: wrk for plain HTTP if it is installed (C, cheap
// per request), else nwpeer churn; HTTPS always nwpeer churn (Go
// crypto/tls, no session cache: every connection a full handshake, with
// the certificate verified against the lab's own root).
func (c churnCase) tool() string {
	if _, err := exec.LookPath("wrk"); err == nil && !c.tls {
		return fmt.Sprintf("wrk -c%d -t2", churnWorkers)
	}
	return fmt.Sprintf("nwpeer churn -c%d", churnWorkers)
}

func (b *bench) churnRow(c churnCase) string {
	if c.tls {
		return fmt.Sprintf("new TLS conn/s IPv%s (%s, full handshake, SNI)", c.fam, c.tool())
	}
	return fmt.Sprintf("new TCP conn/s IPv%s (%s, HTTP Connection: close)", c.fam, c.tool())
}

// Labels of the rate's stability under each churn row. edge is the length
// of the first and last stretch compared: 10 s, or a third of a short run.
func (b *bench) churnEdge() int {
	windows := int(b.churn/time.Second) - 1 // the first window is left out
	return max(1, min(10, windows/3))
}

// churnCPURow labels the column's own CPU time per connection the server
// accepted: netward's, the relay's or the proxy's processes (kernel
// forwarding has none). Steadier than the rate, which the client and the
// server, on the same 2 cores, move as much as the appliance does.
const churnCPURow = "own CPU per connection (netward's, the relay's, the proxy's)"

func (b *bench) churnLabels() (minW, first, last, errs string) {
	e := b.churnEdge()
	return "server accepts/s, min 1-s window",
		fmt.Sprintf("server accepts/s, mean of first %d s", e),
		fmt.Sprintf("server accepts/s, mean of last %d s", e),
		"failed requests (errors, timeouts)"
}

// churnAll measures new connections per second, each case and column on a
// fresh lab: TIME_WAIT sockets left by a previous run distort the next
// (datapath notes).
func (b *bench) churnAll() error {
	minW, first, last, errs := b.churnLabels()
	for _, c := range churnCases {
		name := b.churnRow(c)
		b.declare(name, "conn/s").prec = 0
		for _, l := range []string{minW, first, last} {
			b.declareSub(name, l, "conn/s").prec = 0
		}
		r := b.declareSub(name, errs, "")
		r.prec, r.noRatio = 0, true
		r = b.declareSub(name, churnCPURow, "µs")
		r.prec, r.noRatio = 0, true
	}
	for range b.rounds {
		for _, c := range churnCases {
			for _, v := range b.columns() {
				if err := b.churnOne(c, v); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (b *bench) churnOne(c churnCase, v *variant) error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	what := fmt.Sprintf("churn %s IPv%s", map[bool]string{false: "HTTP", true: "TLS"}[c.tls], c.fam)
	p, err := b.start(l, v, what)
	if err != nil {
		return err
	}
	err = p.measure(what, 100_000, func() (int64, error) {
		s, err := startAcceptSampler(l.app.PID())
		if err != nil {
			return 0, err
		}
		pids := p.ownPIDs()
		cpu, err := startCPU(pids)
		if err != nil {
			return 0, err
		}
		rate, failed, note, err := b.runChurn(l, c)
		_, own, cerr := cpu.stop()
		windows, accepted := s.stop()
		if err != nil {
			return 0, err
		}
		if cerr != nil {
			return 0, cerr
		}
		name := b.churnRow(c)
		minW, first, last, errs := b.churnLabels()
		r := b.set(name, "conn/s", p.col(), rate)
		if note != "" {
			r.note += p.col() + ": " + note + "; "
		}
		if len(windows) > 0 {
			e := min(b.churnEdge(), len(windows))
			b.set(subKey(name, minW), "conn/s", p.col(), float64(minOf(windows)))
			b.set(subKey(name, first), "conn/s", p.col(), mean(windows[:e]))
			b.set(subKey(name, last), "conn/s", p.col(), mean(windows[len(windows)-e:]))
		}
		b.add(subKey(name, errs), "", p.col(), float64(failed))
		if len(pids) > 0 && accepted > 0 {
			b.set(subKey(name, churnCPURow), "µs", p.col(), own/float64(accepted)*1e6)
		}
		return 0, nil
	})
	return errors.Join(err, p.stop())
}

var (
	wrkRate   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// runChurn runs the case's client for b.churn and returns its rate, the
// requests that failed, and a note on the failures.
func (b *bench) runChurn(l *benchLab, c churnCase) (rate float64, failed int64, note string, err error) {
	dur := strconv.Itoa(int(b.churn/time.Second)) + "s"
	if strings.HasPrefix(c.tool(), "wrk") {
		url := "http://" + l.appAddr(c.fam, peer.HTTPPort) + "/"
		out, err := l.Client.Run(b.ctx, "wrk", "-c"+strconv.Itoa(churnWorkers), "-t2", "-d", dur,
			"-H", "Connection: close", "-H", "Host: "+benchHost, url)
		if err != nil {
			return 0, 0, "", err
		}
		m := wrkRate.FindStringSubmatch(out)
		if m == nil {
			return 0, 0, "", fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
		}
		rate, _ = strconv.ParseFloat(m[1], 64)
		if e := wrkErrors.FindStringSubmatch(out); e != nil {
			for _, n := range e[1:] {
				v, _ := strconv.ParseInt(n, 10, 64)
				failed += v
			}
			note = e[0]
		}
		if e := wrkNon2xx.FindStringSubmatch(out); e != nil {
			v, _ := strconv.ParseInt(e[1], 10, 64)
			failed += v
			note = strings.TrimPrefix(note+", "+e[0], ", ")
		}
		return rate, failed, note, nil
	}
	args := []string{b.peer, "churn", "-c", strconv.Itoa(churnWorkers), "-d", dur,
		"-timeout", (b.churn + 30*time.Second).String()}
	if c.tls {
		args = append(args, "-url", "https://"+l.appAddr(c.fam, tlsPort)+"/", "-tls-ca", b.cert, "-sni", benchSNI)
	} else {
		args = append(args, "-url", "http://"+l.appAddr(c.fam, peer.HTTPPort)+"/", "-host", benchHost)
	}
	out, err := l.Client.Run(b.ctx, args...)
	if err != nil {
		return 0, 0, "", err
	}
	var r peer.ChurnResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, 0, "", err
	}
	if r.Errors > 0 {
		note = fmt.Sprintf("%d errors %v", r.Errors, r.Kinds)
	}
	return r.PerSec, r.Errors, note, nil
}

// acceptSampler reads the application namespace's Tcp PassiveOpens (every
// handshake a listener completed) once a second: the connection rate the
// server saw, window by window, whichever client made it.
type acceptSampler struct {
	pid   int
	first int64 // PassiveOpens at the start
	stopc chan struct{}
	done  chan []int64
}

func startAcceptSampler(pid int) (*acceptSampler, error) {
	first, err := tcpCounter(pid, "PassiveOpens")
	if err != nil {
		return nil, err
	}
	s := &acceptSampler{pid: pid, first: first, stopc: make(chan struct{}), done: make(chan []int64, 1)}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var windows []int64
		prev := first
		for {
			select {
			case <-s.stopc:
				s.done <- windows
				return
			case <-t.C:
				n, err := tcpCounter(pid, "PassiveOpens")
				if err != nil {
					s.done <- windows
					return
				}
				windows = append(windows, n-prev)
				prev = n
			}
		}
	}()
	return s, nil
}

// stop returns the complete 1-s windows but the first (the client
// starting), and every handshake the server completed since the start (0
// if the counter cannot be read).
func (s *acceptSampler) stop() (windows []int64, total int64) {
	close(s.stopc)
	w := <-s.done
	if len(w) > 0 {
		w = w[1:]
	}
	if n, err := tcpCounter(s.pid, "PassiveOpens"); err == nil {
		total = n - s.first
	}
	return w, total
}

func minOf(w []int64) int64 {
	m := w[0]
	for _, v := range w[1:] {
		m = min(m, v)
	}
	return m
}

func mean(w []int64) float64 {
	var sum int64
	for _, v := range w {
		sum += v
	}
	return float64(sum) / float64(len(w))
}
