package opslab

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/netward/netward/e2e/lab"
)

// SoakRules are the rules the soak runs under: HTTP is denied by Host, TLS
// by SNI; everything else is allowed.
const SoakRules = `default: allow
rules:
  - name: soak-deny-host
    action: deny
    host: [blocked.example]
  - name: soak-deny-sni
    action: deny
    sni: [blocked.example]
`

// Soak ports in the application namespace, and netward's metrics listener
// in the appliance namespace.
const (
	SoakHTTPPort    = 8080
	SoakTLSPort     = 8443
	SoakMetricsAddr = "127.0.0.1:9740"
)

// Tolerances of the soak's leak check: after the traffic stops and the
// settle period passes, netward must be back near its baseline.
const (
	// GoroutineSlack: goroutines may exceed the baseline by this many
	// (timers, the GC's and the HTTP server's own goroutines come and go).
	GoroutineSlack = 10
	// RSS may be RSSFactor × baseline + RSSSlack: Go returns freed heap to
	// the kernel lazily (the scavenger), so RSS never drops to the exact
	// baseline, but a per-flow leak over hundreds of thousands of flows
	// grows far beyond this.
	RSSFactor = 1.5
	RSSSlack  = 32 << 20
	// MaxErrorRate is the share of connections that may fail at the
	// transport level (timeouts, resets) under full churn on a loaded
	// machine. A wrong verdict is never tolerated.
	MaxErrorRate = 0.001
)

// SoakOptions configure Soak.
type SoakOptions struct {
	// Netward is the netward binary. Required.
	Netward string
	// Duration of the traffic. Required.
	Duration time.Duration
	// Workers are the concurrent clients, each making one connection after
	// another; 0 means 32.
	Workers int
	// Settle is how long netward may take, after the traffic stops, to get
	// back to its baseline; 0 means 30 s.
	Settle time.Duration
	// Every is the sampling interval during the traffic; 0 means
	// Duration/12, at least 5 s.
	Every time.Duration
	// Out receives progress lines and the summary tables; nil discards.
	Out io.Writer
	// Args are more `netward run` flags (e.g. --upstream kernel).
	Args []string
}

// OpKind is one kind of request the soak makes.
type OpKind int

const (
	HTTPAllowed OpKind = iota // GET with Host app.example: 200
	HTTPDenied                // GET with Host blocked.example: netward's 403
	TLSAllowed                // TLS with SNI app.example, GET: 200
	TLSDenied                 // TLS with SNI blocked.example: access_denied alert
	numOpKinds
)

func (k OpKind) String() string {
	return [...]string{"http allowed", "http denied (host)", "tls allowed", "tls denied (sni)"}[k]
}

// OpCounts count the outcomes of one kind of request.
type OpCounts struct {
	OK    int64 // the expected answer
	Wrong int64 // a verdict other than the rules say (never tolerated)
	Err   int64 // a transport error (timeout, reset, refused)
}

// Sample is netward's state at one moment of the soak.
type Sample struct {
	At          time.Duration // since the traffic started (negative: baseline)
	Phase       string        // baseline, traffic, settle
	Goroutines  float64       // go_goroutines
	RSS         int64         // process_resident_memory_bytes
	ProcRSS     int64         // VmRSS from /proc
	FlowsActive float64       // netward_flows_active
	FlowsTotal  float64       // netward_flows_total
	Ops         int64         // connections finished by the clients so far
	Errors      int64         // of which transport errors
	Rate        float64       // connections per second since the last sample
}

// SoakResult is what a soak measured.
type SoakResult struct {
	Duration time.Duration
	Workers  int
	Samples  []Sample
	Baseline Sample
	Final    Sample
	Peak     Sample // highest goroutines and RSS seen (fields maxed separately)
	Ops      [numOpKinds]OpCounts
	ErrKinds map[string]int64
	Verdicts map[string]float64 // netward_verdicts_total delta by series
	TUN      lab.LinkStats      // TUN counters moved during the soak
	// SYNsReplayed is netward_syn_replayed_total's delta: with SYN replay
	// (the default) a connection's only packets through the TUN are its
	// SYN, in and back out.
	SYNsReplayed float64
	// Failures are the checks that failed; empty means the soak passed.
	Failures []string
	// Goroutines is netward's goroutine dump (debug=1) when goroutines did
	// not come back, for the report.
	Goroutines string
}

// Passed reports whether every check held.
func (r *SoakResult) Passed() bool { return len(r.Failures) == 0 }

func (r *SoakResult) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// TotalOps sums the outcomes of every kind.
func (r *SoakResult) TotalOps() (ok, wrong, errs int64) {
	for _, c := range r.Ops {
		ok, wrong, errs = ok+c.OK, wrong+c.Wrong, errs+c.Err
	}
	return
}

// Soak runs netward in l's appliance under mixed allowed and denied HTTP
// and TLS traffic at full connection churn for opts.Duration, samples its
// goroutines and memory before, during and after, and checks that they
// return near the baseline once the traffic stops. netward runs until Soak
// returns. The error is for a soak that could not run; a soak that ran
// and found a problem returns a result with Failures.
func Soak(ctx context.Context, l *lab.Lab, opts SoakOptions) (*SoakResult, error) {
	if opts.Netward == "" || opts.Duration <= 0 {
		return nil, errors.New("opslab: Soak needs Netward and Duration")
	}
	if opts.Workers <= 0 {
		opts.Workers = 32
	}
	if opts.Settle <= 0 {
		opts.Settle = 30 * time.Second
	}
	if opts.Every <= 0 {
		opts.Every = max(opts.Duration/12, 5*time.Second)
	}
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	s := &soak{l: l, opts: opts, out: out, res: &SoakResult{Duration: opts.Duration, Workers: opts.Workers, ErrKinds: map[string]int64{}}}
	defer s.close()
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	return s.run(ctx)
}

type soak struct {
	l    *lab.Lab
	opts SoakOptions
	out  io.Writer
	res  *SoakResult

	nw      *lab.Netward
	servers []*Server
	cert    *Cert
	metrics *MetricsClient
	dialer  Dialer
	srcs    []netip.Addr

	counts [numOpKinds]struct{ ok, wrong, err atomic.Int64 }
	errMu  sync.Mutex
}

func (s *soak) close() {
	if s.nw != nil {
		s.nw.Terminate(15 * time.Second)
	}
	for _, srv := range s.servers {
		srv.Close()
	}
}

func (s *soak) setup(ctx context.Context) error {
	var err error
	if s.cert, err = SelfSigned("app.example", "blocked.example"); err != nil {
		return err
	}
	app := NS{Name: s.l.App.Name}
	for _, p := range []struct {
		port int
		tls  *tls.Config
	}{{SoakHTTPPort, nil}, {SoakTLSPort, s.cert.ServerConfig()}} {
		srv, err := Serve(app, fmt.Sprintf(":%d", p.port), ServerOptions{TLS: p.tls, IdleTimeout: 30 * time.Second})
		if err != nil {
			return err
		}
		s.servers = append(s.servers, srv)
	}
	// The clients make tens of thousands of connections a minute from nine
	// addresses: give them every port.
	for _, kv := range []string{"net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"} {
		if _, err := s.l.Client.Run(ctx, "sysctl", "-q", "-w", kv); err != nil {
			return err
		}
	}
	rules := filepath.Join(s.l.Dir, "soak-rules.yaml")
	if err := os.WriteFile(rules, []byte(SoakRules), 0o644); err != nil {
		return fmt.Errorf("opslab: %w", err)
	}
	// Events go to /dev/null: the whole event path runs (encode, queue,
	// write) without filling the disk with millions of lines; the process
	// log is at warn, so there is no line per flow either.
	s.nw, err = s.l.StartNetward(ctx, lab.NetwardOptions{Binary: s.opts.Netward, Args: append([]string{
		"--rules", rules, "--metrics", SoakMetricsAddr, "--pprof", "true",
		"--log", os.DevNull, "--log-level", "warn",
	}, s.opts.Args...)})
	if err != nil {
		return err
	}
	s.metrics = NewMetricsClient(NS{Name: s.l.Appliance.Name}, SoakMetricsAddr)
	s.dialer = Dialer{NS: NS{Name: s.l.Client.Name}}
	s.dialer.Timeout = 10 * time.Second
	s.srcs = append([]netip.Addr{s.l.Topo.ClientV4.Addr()}, s.l.Topo.ClientExtraV4...)
	return nil
}

func (s *soak) printf(format string, args ...any) { fmt.Fprintf(s.out, format, args...) }

// sample reads netward's state now.
func (s *soak) sample(ctx context.Context, at time.Duration, phase string) (Sample, error) {
	smp := Sample{At: at, Phase: phase}
	m, err := s.metrics.Scrape(ctx)
	if err != nil {
		return smp, err
	}
	smp.Goroutines = m.Value("go_goroutines")
	smp.RSS = int64(m.Value("process_resident_memory_bytes"))
	smp.FlowsActive = m.Value("netward_flows_active")
	smp.FlowsTotal = m.Value("netward_flows_total")
	if smp.ProcRSS, err = s.nw.RSS(); err != nil {
		return smp, err
	}
	for i := range s.counts {
		c := &s.counts[i]
		smp.Ops += c.ok.Load() + c.wrong.Load() + c.err.Load()
		smp.Errors += c.err.Load()
	}
	return smp, nil
}

func (s *soak) record(smp Sample) {
	r := s.res
	if n := len(r.Samples); n > 0 {
		prev := r.Samples[n-1]
		if dt := (smp.At - prev.At).Seconds(); dt > 0 {
			smp.Rate = float64(smp.Ops-prev.Ops) / dt
		}
	}
	r.Samples = append(r.Samples, smp)
	r.Peak.Goroutines = max(r.Peak.Goroutines, smp.Goroutines)
	r.Peak.RSS = max(r.Peak.RSS, smp.RSS)
	r.Peak.ProcRSS = max(r.Peak.ProcRSS, smp.ProcRSS)
	r.Peak.FlowsActive = max(r.Peak.FlowsActive, smp.FlowsActive)
	s.printf("  %8s %-8s %8.0f conn/s  goroutines %5.0f  rss %7.1f MiB (proc %7.1f)  active flows %5.0f  flows %9.0f  errors %d\n",
		roundDur(smp.At), smp.Phase, smp.Rate, smp.Goroutines, mibf(smp.RSS), mibf(smp.ProcRSS), smp.FlowsActive, smp.FlowsTotal, smp.Errors)
}

func (s *soak) run(ctx context.Context) (*SoakResult, error) {
	r := s.res
	s.printf("soak: %d workers, %v of traffic, %v to settle; netward pid %d\n", s.opts.Workers, s.opts.Duration, s.opts.Settle, s.nw.PID())
	// Baseline: netward up and idle.
	time.Sleep(2 * time.Second)
	before, err := s.metrics.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	tunBefore, err := s.nw.TUNStats(ctx)
	if err != nil {
		return nil, err
	}
	if r.Baseline, err = s.sample(ctx, 0, "baseline"); err != nil {
		return nil, err
	}
	s.record(r.Baseline)

	tctx, stop := context.WithTimeout(ctx, s.opts.Duration)
	defer stop()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.worker(ctx, tctx, w)
		}()
	}
	tick := time.NewTicker(s.opts.Every)
	for done := false; !done; {
		select {
		case <-tctx.Done():
			done = true
		case <-tick.C:
			smp, err := s.sample(ctx, time.Since(start), "traffic")
			if err != nil {
				s.printf("  sample: %v\n", err)
				continue
			}
			s.record(smp)
			if exited, err := s.nw.Exited(); exited {
				r.fail("netward exited during the traffic: %v", err)
				done = true
			}
		}
	}
	tick.Stop()
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	traffic := time.Since(start)
	if smp, err := s.sample(ctx, traffic, "stop"); err == nil {
		s.record(smp)
	}

	// Settle: sample until netward is back near the baseline (then once
	// more, to see it stays there) or Settle has passed.
	settleEnd := time.Now().Add(s.opts.Settle)
	for {
		time.Sleep(min(5*time.Second, max(time.Until(settleEnd), 0)))
		smp, err := s.sample(ctx, time.Since(start), "settle")
		if err != nil {
			return nil, err
		}
		s.record(smp)
		r.Final = smp
		if time.Now().After(settleEnd) {
			break
		}
	}
	after, err := s.metrics.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	tunAfter, err := s.nw.TUNStats(ctx)
	if err != nil {
		return nil, err
	}
	r.TUN = tunAfter.Sub(tunBefore)
	r.Verdicts = Delta(before, after, "netward_verdicts_total")
	r.SYNsReplayed = after.Value("netward_syn_replayed_total") - before.Value("netward_syn_replayed_total")
	for i := range s.counts {
		c := &s.counts[i]
		r.Ops[i] = OpCounts{OK: c.ok.Load(), Wrong: c.wrong.Load(), Err: c.err.Load()}
	}
	s.check(ctx)
	s.summary(traffic)
	return r, nil
}

// check applies the soak's pass criteria.
func (s *soak) check(ctx context.Context) {
	r := s.res
	if exited, err := s.nw.Exited(); exited {
		r.fail("netward exited: %v", err)
		return
	}
	judge(r, s.opts.Settle)
	if r.Final.Goroutines > r.Baseline.Goroutines+GoroutineSlack {
		if code, dump, err := s.metrics.Get(ctx, "/debug/pprof/goroutine?debug=1"); err == nil && code == 200 {
			r.Goroutines = dump
		}
	}
}

// judge applies the pass criteria to what the soak measured.
func judge(r *SoakResult, settle time.Duration) {
	ok, wrong, errs := r.TotalOps()
	total := ok + wrong + errs
	if total == 0 {
		r.fail("no traffic at all")
		return
	}
	if wrong > 0 {
		r.fail("%d connections got a verdict the rules do not give (denied let through or allowed refused)", wrong)
	}
	if rate := float64(errs) / float64(total); rate > MaxErrorRate {
		r.fail("%d of %d connections failed (%.3f%% > %.3f%%): %v", errs, total, 100*rate, 100*MaxErrorRate, r.ErrKinds)
	}
	perConn := uint64(3)
	if r.SYNsReplayed > 0 {
		perConn = 1
		if r.SYNsReplayed < float64(ok+wrong) {
			r.fail("%.0f SYNs replayed for %d answered connections: some were not judged by netward", r.SYNsReplayed, ok+wrong)
		}
	}
	if r.TUN.TxPackets < uint64(total)*perConn || r.TUN.RxPackets < uint64(total)*perConn {
		r.fail("the traffic did not cross netward's TUN: %v for %d connections (%.0f SYNs replayed)", r.TUN, total, r.SYNsReplayed)
	}
	b, f := r.Baseline, r.Final
	if f.Goroutines > b.Goroutines+GoroutineSlack {
		r.fail("goroutines did not come back: %g after settling, baseline %g (+%d allowed)", f.Goroutines, b.Goroutines, GoroutineSlack)
	}
	if limit := int64(float64(b.RSS)*RSSFactor) + RSSSlack; f.RSS > limit {
		r.fail("RSS did not come back: %.1f MiB after settling, baseline %.1f MiB (limit %.1f MiB)", mibf(f.RSS), mibf(b.RSS), mibf(limit))
	}
	if f.FlowsActive != 0 {
		r.fail("%g flows still active after the traffic stopped and %v passed", f.FlowsActive, settle)
	}
	// netward judged each connection once: its counters moved by exactly
	// what the clients saw; a connection that failed in transport may or
	// may not have reached netward's verdict.
	want := map[string]int64{
		"action=allow,rule=default":       r.Ops[HTTPAllowed].OK + r.Ops[TLSAllowed].OK,
		"action=deny,rule=soak-deny-host": r.Ops[HTTPDenied].OK,
		"action=deny,rule=soak-deny-sni":  r.Ops[TLSDenied].OK,
	}
	for k, w := range want {
		if got := int64(r.Verdicts[k]); got < w || got > w+errs+wrong {
			r.fail("netward_verdicts_total{%s} rose by %d, the clients saw %d such answers (+%d failed)", k, got, w, errs+wrong)
		}
	}
	if flows := int64(f.FlowsTotal - b.FlowsTotal); flows < ok || flows > total {
		r.fail("netward_flows_total rose by %d for %d connections (%d answered)", flows, total, ok)
	}
}

func (s *soak) summary(traffic time.Duration) {
	r := s.res
	tw := tabwriter.NewWriter(s.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	ok, wrong, errs := r.TotalOps()
	s.printf("\nsoak summary: %v of traffic, %d workers, %d connections (%.0f/s)\n", traffic.Round(time.Second), r.Workers, ok+wrong+errs, float64(ok+wrong+errs)/traffic.Seconds())
	fmt.Fprintln(tw, "request\tok\twrong verdict\terrors\t")
	for k := range numOpKinds {
		c := r.Ops[k]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", k, c.OK, c.Wrong, c.Err)
	}
	tw.Flush()
	if len(r.ErrKinds) > 0 {
		var kinds []string
		for k, n := range r.ErrKinds {
			kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
		}
		sort.Strings(kinds)
		s.printf("errors: %s\n", strings.Join(kinds, "; "))
	}
	var vs []string
	for k, v := range r.Verdicts {
		vs = append(vs, fmt.Sprintf("{%s} +%.0f", k, v))
	}
	sort.Strings(vs)
	s.printf("netward_verdicts_total: %s\nTUN: %v\n\n", strings.Join(vs, ", "), r.TUN)
	b, p, f := r.Baseline, r.Peak, r.Final
	fmt.Fprintln(tw, "\tbaseline\tpeak\tafter settle\tlimit\t")
	fmt.Fprintf(tw, "goroutines\t%.0f\t%.0f\t%.0f\t≤ %.0f\t\n", b.Goroutines, p.Goroutines, f.Goroutines, b.Goroutines+GoroutineSlack)
	fmt.Fprintf(tw, "RSS MiB (metrics)\t%.1f\t%.1f\t%.1f\t≤ %.1f\t\n", mibf(b.RSS), mibf(p.RSS), mibf(f.RSS), mibf(int64(float64(b.RSS)*RSSFactor)+RSSSlack))
	fmt.Fprintf(tw, "RSS MiB (/proc)\t%.1f\t%.1f\t%.1f\t\t\n", mibf(b.ProcRSS), mibf(p.ProcRSS), mibf(f.ProcRSS))
	fmt.Fprintf(tw, "active flows\t%.0f\t%.0f\t%.0f\t= 0\t\n", b.FlowsActive, p.FlowsActive, f.FlowsActive)
	tw.Flush()
	if r.Passed() {
		s.printf("\nsoak: PASS\n")
		return
	}
	s.printf("\nsoak: FAIL\n")
	for _, f := range r.Failures {
		s.printf("  - %s\n", f)
	}
	if r.Goroutines != "" {
		s.printf("netward goroutines (first 80 lines):\n%s\n", headLines(r.Goroutines, 80))
	}
}

// worker makes one connection after another until traffic ends, cycling
// through the request kinds and the client's source addresses. The last
// request finishes (under ctx), so every connection netward saw is counted.
func (s *soak) worker(ctx, traffic context.Context, w int) {
	d := s.dialer // a copy: LocalAddr differs per worker
	appV4 := s.l.Topo.AppV4.Addr()
	for i := 0; traffic.Err() == nil && ctx.Err() == nil; i++ {
		kind := OpKind((w + i) % int(numOpKinds))
		src := s.srcs[(w+i/int(numOpKinds))%len(s.srcs)]
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		err := s.op(ctx, &d, kind, appV4)
		c := &s.counts[kind]
		switch {
		case err == nil:
			c.ok.Add(1)
		case errors.Is(err, errWrongVerdict):
			c.wrong.Add(1)
			s.noteErr(err.Error())
		case ctx.Err() != nil:
			// Interrupted: the soak is abandoned anyway.
		default:
			c.err.Add(1)
			s.noteErr(errKind(err))
		}
	}
}

func (s *soak) noteErr(kind string) {
	s.errMu.Lock()
	s.res.ErrKinds[kind]++
	s.errMu.Unlock()
}

var errWrongVerdict = errors.New("wrong verdict")

// op makes one request of the kind on a new connection and checks the
// answer netward's rules call for.
func (s *soak) op(ctx context.Context, d *Dialer, kind OpKind, app netip.Addr) error {
	port, host := SoakHTTPPort, "app.example"
	if kind == TLSAllowed || kind == TLSDenied {
		port = SoakTLSPort
	}
	if kind == HTTPDenied || kind == TLSDenied {
		host = "blocked.example"
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := d.DialContext(octx, "tcp", netip.AddrPortFrom(app, uint16(port)).String())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	dl, _ := octx.Deadline()
	c.SetDeadline(dl)
	rw := c
	if port == SoakTLSPort {
		tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: s.cert.ClientPool()})
		err := tc.HandshakeContext(octx)
		if kind == TLSDenied {
			if err != nil && strings.Contains(err.Error(), "access denied") {
				return nil
			}
			if err == nil {
				return fmt.Errorf("%w: TLS to blocked.example completed", errWrongVerdict)
			}
			return fmt.Errorf("tls handshake: %w", err)
		}
		if err != nil {
			if strings.Contains(err.Error(), "access denied") {
				return fmt.Errorf("%w: TLS to app.example refused", errWrongVerdict)
			}
			return fmt.Errorf("tls handshake: %w", err)
		}
		rw = tc
	}
	if _, err := fmt.Fprintf(rw, "GET /bytes?n=2048 HTTP/1.1\r\nHost: %s\r\nUser-Agent: netward-soak\r\nConnection: close\r\n\r\n", host); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	br := bufio.NewReader(rw)
	status, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	n, err := io.Copy(io.Discard, br)
	if err != nil && !(port == SoakTLSPort && isUnexpectedEOF(err)) {
		return fmt.Errorf("read: %w", err)
	}
	switch {
	case kind == HTTPDenied && strings.HasPrefix(status, "HTTP/1.1 403"):
		return nil
	case kind != HTTPDenied && strings.HasPrefix(status, "HTTP/1.1 200"):
		if n < 2048 {
			return fmt.Errorf("short answer: %d bytes", n)
		}
		return nil
	}
	return fmt.Errorf("%w: %s for Host %s: %q", errWrongVerdict, kind, host, strings.TrimSpace(status))
}

// isUnexpectedEOF: the soak's TLS server closes without close_notify.
func isUnexpectedEOF(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }

// errKind shortens an error to its kind for the error table (no ports).
func errKind(err error) string {
	msg := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "i/o timeout", "deadline exceeded", "no route", "EOF", "broken pipe"} {
		if strings.Contains(msg, k) {
			stage, _, _ := strings.Cut(msg, ":")
			return stage + ": " + k
		}
	}
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

func mibf(b int64) float64 { return float64(b) / (1 << 20) }

func roundDur(d time.Duration) string { return d.Round(time.Second).String() }

func headLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
