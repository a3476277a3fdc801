package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
	"github.com/netward/netward/metrics"
)

// holdDials is how many connections each holder process opens (and
// closes) at once.
const holdDials = 16

// Labels of the flows' rows about their end.
const (
	closedRow    = "closed gracefully (FIN each way, EOF seen)"
	closeTimeRow = "time to close them"
	drainRow     = "netward flows_active under 10, after the close"
)

// held is a set of connections held open from the client to echo servers
// in the application: one nwpeer echo server per port and one nwpeer hold
// per server, each well under the open-file limit (a process may hold
// RLIMIT_NOFILE sockets; netward's kernel upstream leg holds one per flow
// up to its own file limit, the rest take the gVisor leg, which holds none).
type held struct {
	servers, holders []*lab.Proc
	n                int
	open             time.Duration // until every holder had all its connections up and echoed
	redialed         int           // connections the holders opened again after a local ETIMEDOUT
}

// perProcess is how many connections one process may hold: the hard
// open-file limit (Go raises the soft one to it) with room for the
// runtime's own descriptors, at most 12,500.
func perProcess() (int, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	n := int(min(lim.Max, 1<<30)) - 2000
	if n < 1000 {
		return 0, fmt.Errorf("open-file limit %d is too low to hold connections", lim.Max)
	}
	return min(n, 12500), nil
}

// openHeld opens n connections, each echoing one byte end to end before it
// counts. With both families, every other holder uses IPv6.
func (b *bench) openHeld(l *benchLab, n int, bothFamilies bool) (*held, error) {
	per, err := perProcess()
	if err != nil {
		return nil, err
	}
	k := (n + per - 1) / per
	h := &held{n: n}
	ready := regexp.MustCompile(`nwpeer: serving`)
	for i := range k {
		port := strconv.Itoa(flowPortBase + i)
		s, err := l.App.Start("echo-"+port, b.peer, "echo", "-listen", ":"+port)
		if err != nil {
			return h, err
		}
		h.servers = append(h.servers, s)
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		_, err = s.WaitLog(ctx, ready)
		cancel()
		if err != nil {
			return h, err
		}
	}
	start := time.Now()
	for i := range k {
		count := n / k
		if i < n%k {
			count++
		}
		fam := "4"
		if bothFamilies && i%2 == 1 {
			fam = "6"
		}
		hp, err := l.Client.Start(fmt.Sprintf("hold-%d", i), b.peer, "hold", "-n", strconv.Itoa(count),
			"-parallel", strconv.Itoa(holdDials), "-echo", "-addr", l.appAddr(fam, flowPortBase+i))
		if err != nil {
			return h, err
		}
		h.holders = append(h.holders, hp)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Minute)
	defer cancel()
	readyLine := regexp.MustCompile(`\{[^\n]*"ready":\d+[^\n]*`)
	for _, hp := range h.holders {
		line, err := hp.WaitLog(ctx, readyLine)
		if err != nil {
			return h, err
		}
		var r peer.HoldReport
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return h, fmt.Errorf("%s: %q: %w", hp.Name, line, err)
		}
		h.redialed += r.Redialed
	}
	h.open = time.Since(start)
	return h, nil
}

// check has every held connection echo one byte again and returns how
// many did.
func (h *held) check(ctx context.Context) (alive, failed int, errs map[string]int64, err error) {
	for _, hp := range h.holders {
		if err := hp.Signal(syscall.SIGUSR1); err != nil {
			return 0, 0, nil, err
		}
	}
	errs = map[string]int64{}
	re := regexp.MustCompile(`\{[^\n]*"check":1[,}][^\n]*`)
	for _, hp := range h.holders {
		line, err := hp.WaitLog(ctx, re)
		if err != nil {
			return 0, 0, nil, err
		}
		var r peer.HoldReport
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return 0, 0, nil, fmt.Errorf("%s: %q: %w", hp.Name, line, err)
		}
		alive += r.Alive
		failed += r.Failed
		for k, v := range r.Errors {
			errs[k] += v
		}
	}
	return alive, failed, errs, nil
}

// closeReport is how the holders' graceful close went.
type closeReport struct {
	closed, failed int
	errs           map[string]int64
	took           time.Duration // until every holder had closed all
}

var closeLine = regexp.MustCompile(`\{[^\n]*"close_ms":[^\n]*\}`)

// close has every holder close its connections gracefully (write side
// shut, the server's EOF read; see peer.HoldOptions), all holders at once,
// then stops the servers. Killed holders and servers would reset theirs.
func (h *held) close(ctx context.Context) (closeReport, error) {
	r := closeReport{errs: map[string]int64{}}
	start := time.Now()
	var errs []error
	for _, hp := range h.holders {
		if err := hp.Signal(syscall.SIGTERM); err != nil {
			errs = append(errs, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for _, hp := range h.holders {
		if err := hp.Wait(wctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", hp.Name, err))
			continue
		}
		line := closeLine.FindString(hp.Log())
		var hr peer.HoldReport
		if err := json.Unmarshal([]byte(line), &hr); err != nil {
			errs = append(errs, fmt.Errorf("%s: no close report (%q): %w", hp.Name, line, err))
			continue
		}
		r.closed += hr.Closed
		r.failed += hr.CloseFailed
		for k, v := range hr.Errors {
			r.errs[k] += v
		}
	}
	r.took = time.Since(start)
	for _, s := range h.servers {
		if err := s.Stop(10 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.Name, err))
		}
	}
	return r, errors.Join(errs...)
}

// warmUp makes one connection and waits, so pools and stack state that
// exist once are not charged to the connections measured next.
func (b *bench) warmUp(l *benchLab) error {
	_, err := l.Client.Run(b.ctx, "curl", "-s", "-o", "/dev/null", "http://"+l.appAddr("4", peer.HTTPPort)+"/")
	time.Sleep(500 * time.Millisecond)
	return err
}

// memory measures netward's RSS growth with n idle connections open.
func (b *bench) memory(v variant, n int) error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	p, err := b.start(l, &v, fmt.Sprintf("memory, %d idle connections", n))
	if err != nil {
		return err
	}
	var before, after int64
	var h *held
	err = p.measure(fmt.Sprintf("memory with %d idle connections", n), int64(n)*40, func() (int64, error) {
		if err := b.warmUp(l); err != nil {
			return 0, err
		}
		var err error
		if before, err = p.nw.RSS(); err != nil {
			return 0, err
		}
		if h, err = b.openHeld(l, n, false); err != nil {
			return 0, err
		}
		time.Sleep(time.Second)
		after, err = p.nw.RSS()
		return 0, err
	})
	if h != nil {
		cr, cerr := h.close(b.ctx)
		if err == nil && cr.failed > 0 {
			cerr = errors.Join(cerr, fmt.Errorf("%d of %d idle connections did not close cleanly: %v", cr.failed, n, cr.errs))
		}
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return errors.Join(err, p.stop())
	}
	r := b.set(fmt.Sprintf("netward RSS growth per idle connection (%d open, each echoed)", n), "KiB", v.name, float64(after-before)/float64(n)/1024)
	r.noRatio = true
	r.note += fmt.Sprintf("%s: RSS %.1f → %.1f MiB; ", v.name, float64(before)/(1<<20), float64(after)/(1<<20))
	return p.stop()
}

// flows holds n concurrent flows (half IPv4, half IPv6) through each
// column, checks every one echoes end to end when opened and again after
// b.secs, that a new HTTPS connection still gets through while they are
// held, and netward's RSS and how fast it lets go of them.
func (b *bench) flows(n int) error {
	name := fmt.Sprintf("%d concurrent flows (IPv4+IPv6), held and echoing", n)
	r := b.declare(name, "flows")
	r.prec, r.noRatio = 0, true
	openRow := b.declareSub(name, fmt.Sprintf("time to open them (%d dials in flight per process)", holdDials), "s")
	openRow.prec = 1
	b.declareSub(name, "new HTTPS connection while held (curl time_total)", "ms").prec = 1
	rss := b.declareSub(name, "netward RSS with them open", "MiB")
	rss.prec, rss.noRatio = 0, true
	per := b.declareSub(name, "netward RSS growth per flow", "KiB")
	per.prec, per.noRatio = 1, true
	cl := b.declareSub(name, closedRow, "flows")
	cl.prec, cl.noRatio = 0, true
	b.declareSub(name, closeTimeRow, "s").prec = 1
	b.declareSub(name, drainRow, "s").noRatio = true
	for _, v := range b.columns() {
		if v.external() {
			continue // about netward's memory and limits
		}
		if err := b.flowsOne(name, v, n); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) flowsOne(name string, v *variant, n int) error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	// More than the default 28,232 ephemeral ports, for safety: each
	// holder's connections share one destination port.
	if _, err := l.Client.Run(b.ctx, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"); err != nil {
		return err
	}
	p, err := b.start(l, v, fmt.Sprintf("%d flows", n))
	if err != nil {
		return err
	}
	var h *held
	err = p.measure(fmt.Sprintf("%d concurrent flows", n), int64(n)*40, func() (int64, error) {
		if err := b.warmUp(l); err != nil {
			return 0, err
		}
		var before int64
		var err error
		if p.nw != nil {
			if before, err = p.nw.RSS(); err != nil {
				return 0, err
			}
		}
		if h, err = b.openHeld(l, n, true); err != nil {
			return 0, fmt.Errorf("%w\n%s", err, tcpCounters(b.ctx, l, p.nw))
		}
		b.set(subKey(name, fmt.Sprintf("time to open them (%d dials in flight per process)", holdDials)), "s", p.col(), h.open.Seconds())
		if h.redialed > 0 {
			// The client's kernel gave up on its own packets: veth refused
			// them (the appliance CPU's input backlog was full), so they
			// never reached netward or the kernel's forwarding.
			b.declare(name, "flows").note += fmt.Sprintf("%s: %d connections opened again after the client's kernel failed its own packets (ETIMEDOUT); ", p.col(), h.redialed)
		}
		progress("%-10s %d flows open after %v; holding %d s", p.col(), n, h.open.Round(100*time.Millisecond), b.secs)
		if p.nw != nil {
			after, err := p.nw.RSS()
			if err != nil {
				return 0, err
			}
			m, err := fetchMetrics(b.ctx, p.nw.AdminSocket)
			if err != nil {
				return 0, err
			}
			b.set(subKey(name, "netward RSS with them open"), "MiB", p.col(), float64(after)/(1<<20))
			b.set(subKey(name, "netward RSS growth per flow"), "KiB", p.col(), float64(after-before)/float64(n)/1024)
			b.declare(name, "flows").note += fmt.Sprintf("%s: netward_flows_active %.0f with them open; ", p.col(), m.value("netward_flows_active", nil))
		}
		ms, err := b.newHTTPS(l)
		if err != nil {
			return 0, fmt.Errorf("a new HTTPS connection while %d flows are held: %w", n, err)
		}
		b.set(subKey(name, "new HTTPS connection while held (curl time_total)"), "ms", p.col(), ms)
		time.Sleep(time.Duration(b.secs) * time.Second)
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Minute)
		defer cancel()
		alive, failed, errs, err := h.check(ctx)
		if err != nil {
			return 0, err
		}
		b.set(name, "flows", p.col(), float64(alive))
		if failed > 0 {
			b.declare(name, "flows").note += fmt.Sprintf("%s: %d of %d did not echo after %d s: %v; ", p.col(), failed, n, b.secs, errs)
		}
		return 0, nil
	})
	if h != nil {
		cr, cerr := h.close(b.ctx)
		err = errors.Join(err, cerr)
		if cerr == nil {
			b.set(subKey(name, closedRow), "flows", p.col(), float64(cr.closed))
			b.set(subKey(name, closeTimeRow), "s", p.col(), cr.took.Seconds())
			if cr.failed > 0 {
				b.declare(subKey(name, closedRow), "flows").note += fmt.Sprintf("%s: %d did not: %v; ", p.col(), cr.failed, cr.errs)
			}
		}
		if p.nw != nil && err == nil {
			drained, left, derr := drain(b.ctx, l, p.nw, time.Now())
			err = derr
			if left == "" {
				b.set(subKey(name, drainRow), "s", p.col(), drained.Seconds())
			} else {
				b.declare(subKey(name, drainRow), "s").note += p.col() + ": " + left + "; "
				progress("%-10s %s", p.col(), left)
			}
		}
	}
	return errors.Join(err, p.stop())
}

var tcpFailureCounter = regexp.MustCompile(`^(Tcp|TcpExt|Ip6?|IpExt)\S*(Listen|ReqQFull|PAWS|AttemptFails|OutRsts|Timeouts|Syn|Retrans|TW|Backlog|InErrs|Drop|Reset|Abort|Challenge|OutOfWindow|NoRoute|Discard)\S*\s+\d+`)

// tcpCounters is what the namespaces' kernels counted (nstat, the lab's
// whole life) that could explain a connection that never came up, and
// the TUN's own counters: for a failure report.
func tcpCounters(ctx context.Context, l *benchLab, nw *lab.Netward) string {
	var b strings.Builder
	for _, ns := range []*lab.NS{l.Client, l.Appliance, l.App} {
		out, err := ns.Run(ctx, "nstat", "-as")
		if err != nil {
			fmt.Fprintf(&b, "%s: nstat: %v\n", ns.Role, err)
			continue
		}
		var kept []string
		for _, line := range strings.Split(out, "\n") {
			if tcpFailureCounter.MatchString(line) {
				kept = append(kept, strings.Join(strings.Fields(line)[:2], " "))
			}
		}
		fmt.Fprintf(&b, "%s kernel: %s\n", ns.Role, strings.Join(kept, ", "))
		if out, err := ns.Run(ctx, "ip", "-s", "neigh", "show"); err == nil {
			fmt.Fprintf(&b, "%s neighbours: %s\n", ns.Role, strings.Join(strings.Fields(out), " "))
		}
	}
	if nw != nil {
		if st, err := nw.TUNStats(ctx); err == nil {
			fmt.Fprintf(&b, "TUN (kernel counters): %s\n", st)
		}
	}
	return b.String()
}

// newHTTPS makes one HTTPS request with curl (SNI benchSNI, judged by the
// rules) and returns its total time in milliseconds.
func (b *bench) newHTTPS(l *benchLab) (float64, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	out, err := l.Client.Run(ctx, "curl", "-sS", "-o", "/dev/null", "-m", "20", "-w", "%{http_code} %{time_total}",
		"--cacert", b.cert, "--resolve", fmt.Sprintf("%s:%d:%s", benchSNI, tlsPort, l.appIP("4")),
		fmt.Sprintf("https://%s:%d/", benchSNI, tlsPort))
	if err != nil {
		return 0, err
	}
	code, secs, _ := strings.Cut(strings.TrimSpace(out), " ")
	if code != "200" {
		return 0, fmt.Errorf("curl: HTTP %s", code)
	}
	t, err := strconv.ParseFloat(secs, 64)
	return t * 1000, err
}

// drainLimit bounds the wait for netward to let go of closed flows: past
// limits.half_closed_timeout (2 min), which ends flows whose other half
// never closes.
const drainLimit = 150 * time.Second

// drain waits until netward counts fewer than 10 active flows and returns
// how long after start that was (0 if at once). If they do not go within
// drainLimit, it returns what is left: netward's remaining flows by verdict and
// bytes, and the sockets left in the client and application namespaces
// by TCP state.
func drain(ctx context.Context, l *benchLab, nw *lab.Netward, start time.Time) (time.Duration, string, error) {
	var active float64
	var series []string // active flows every 10 s
	for time.Since(start) < drainLimit {
		m, err := fetchMetrics(ctx, nw.AdminSocket)
		if err != nil {
			return 0, "", err
		}
		if active = m.value("netward_flows_active", nil); active < 10 {
			return time.Since(start), "", nil
		}
		if len(series) == 0 {
			progress("netward    %.0f flows active after the close; waiting for them to go", active)
		}
		if t := time.Since(start); t >= time.Duration(len(series))*10*time.Second {
			series = append(series, fmt.Sprintf("%.0f at %v", active, t.Round(time.Second)))
		}
		select {
		case <-ctx.Done():
			return 0, "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	left := fmt.Sprintf("%.0f flows still active %v after the clients closed theirs (%s)", active, drainLimit, strings.Join(series, ", "))
	st, err := metrics.FetchStatus(ctx, nw.AdminSocket, metrics.Filter{})
	if err != nil {
		return 0, left, err
	}
	kinds := map[string]float64{}
	for _, f := range st.Flows {
		kinds[fmt.Sprintf("%s/%s up %d down %d", f.Verdict, f.Rule, f.BytesToServer, f.BytesToClient)]++
	}
	left += " (" + counts(kinds) + ")"
	for _, ns := range []*lab.NS{l.Client, l.App} {
		out, err := ns.Run(ctx, "ss", "-Htan")
		if err != nil {
			return 0, left, err
		}
		states := map[string]float64{}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				states[f[0]]++
			}
		}
		left += fmt.Sprintf("; %s sockets: %s", ns.Role, counts(states))
		out, err = ns.Run(ctx, "nstat", "-asz", "TcpOutRsts", "TcpExtTCPAbortOnMemory", "TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnTimeout", "TcpRetransSegs")
		if err != nil {
			return 0, left, err
		}
		left += ", " + strings.Join(strings.Fields(strings.ReplaceAll(out, "#kernel", "")), " ")
	}
	if st, err := nw.TUNStats(ctx); err == nil {
		left += "; TUN (kernel counters, whole run): " + st.String()
	}
	return 0, left, nil
}
