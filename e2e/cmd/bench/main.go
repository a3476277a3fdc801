// Command bench compares plain kernel forwarding with netward on the same
// lab in the same run, IPv4 and IPv6: iperf3 throughput (1 and 4 streams,
// both directions) with the CPU it costs, request/response latency over an
// open connection, new connections per second (HTTP with Connection: close,
// and TLS with a full handshake and an SNI) sustained for a minute, netward's
// memory per idle connection, and 100,000 concurrent flows held. Every
// netward column runs with a rule file of realistic size (1,000 rules and a
// list of 10,000 domains, none matching the bench's traffic but the last
// allow rules), so every flow is judged against the whole set. It checks
// from the TUN's counters that every netward run really crossed netward,
// and from netward's metrics that it loaded the rules and that no other
// rule decided a flow; it prints a table with absolute numbers and the
// netward/kernel ratios. Run it as root: `make bench`. CI does not run it.
//
// Each -variant adds a netward column with its own flags, e.g.
//
//	bench -variant netward= -variant 'no-offload=--offload=false'
//
// and a column may run another build: -variant 'before=@/tmp/netward.old'
// puts a change's before and after side by side, taking turns each round.
//
// -relay adds a column for the cheapest relay that terminates flows at all
// (relayColumn): the floor under what netward, which terminates every flow,
// can cost. -proxies adds HAProxy and nginx as transparent SNI-filtering
// proxies (proxyColumns; -proxy haproxy,nginx picks): what a team that
// needs nothing but SNI filtering would run instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
)

// variant is one netward configuration under test (a table column).
type variant struct {
	name string
	args []string // more flags for netward run
	// binary, if set, is this column's netward (-variant NAME=@PATH
	// FLAGS): two builds side by side in one run, taking turns, where
	// runs minutes apart differ more than the change under test.
	binary string
	relay  bool // not netward: the reference relay (relayColumn, sockmapRelayColumn)
	// sockmap: the relay moves bytes with an eBPF sockmap, not splice.
	sockmap bool
	proxy   string // not netward: lab.HAProxy or lab.Nginx (proxyColumns)
}

// external reports whether the column is not netward: the reference relay
// or a proxy (rows about netward's memory, limits and UDP skip it).
func (v *variant) external() bool { return v != nil && (v.relay || v.proxy != "") }

type variants []variant

func (v *variants) String() string { return fmt.Sprint(*v) }
func (v *variants) Set(s string) error {
	name, args, ok := strings.Cut(s, "=")
	if !ok || name == "" || name == kernelColumn || name == relayColumn || name == sockmapRelayColumn || slices.Contains(proxyKinds, name) {
		return fmt.Errorf("want NAME=FLAGS (NAME not %q, %q or a proxy's), got %q", kernelColumn, relayColumn, s)
	}
	nv := variant{name: name, args: strings.Fields(args)}
	if len(nv.args) > 0 && strings.HasPrefix(nv.args[0], "@") {
		nv.binary, nv.args = nv.args[0][1:], nv.args[1:]
		if _, err := os.Stat(nv.binary); err != nil {
			return fmt.Errorf("variant %s: %w", name, err)
		}
	}
	*v = append(*v, nv)
	return nil
}

const kernelColumn = "kernel"

// relayColumn is the -relay column: lab.Relay (peer.ServeRelay) in the
// appliance, the cheapest transparent relay that terminates flows (the
// kernel's TCP on both legs, TPROXY, splice, no inspection). What netward
// costs above it is the price of its userspace stack and its inspection; a
// target this relay misses is out of reach for any design that terminates
// flows.
const relayColumn = "tproxy-relay"

// sockmapRelayColumn is the -relay-sockmap column: the same relay with its
// bytes moved by an eBPF sockmap (sk_skb verdict redirect to the peer's
// egress, peer.SockMap) instead of splice: issue 18 asks which of the two
// kernel-to-kernel paths is faster for handed-off flows.
const sockmapRelayColumn = "sockmap-relay"

type bench struct {
	ctx     context.Context
	netward string
	peer    string
	dir     string // temporary: binaries, rules, certificate
	secs    int    // per throughput and latency measurement
	// rounds repeat the throughput, latency and churn measurements,
	// alternating the columns each round; a cell is the median.
	rounds   int
	churn    time.Duration
	variants variants
	rules    *ruleFile
	cert     string // the HTTPS server's certificate (and the clients' only root)
	key      string
	rows     []*row
	load     []byte // /proc/loadavg at the start: other load skews every number
	// health are notes on netward's behaviour per run: verdicts, inspect
	// errors, limit hits, TUN drops, warnings it logged.
	health []string
	loaded map[string]string // column → what netward's metrics said it loaded
	legs   map[string]string // column → netward_upstream_info{leg}
	// proxyChecks are what a proxy column's SNI filter check found.
	proxyChecks map[string]string
}

// row is one line of the result table: a value per column.
type row struct {
	name, unit string // name is the row's key, and its label unless label is set
	label      string
	values     map[string]float64   // the median of samples
	samples    map[string][]float64 // per column, one per round, in order
	note       string
	noRatio    bool // the ratio to kernel means nothing (counts, netward-only)
	prec       int  // decimals
}

func main() {
	b := &bench{secs: 10, rounds: 1, loaded: map[string]string{}, legs: map[string]string{}, proxyChecks: map[string]string{}}
	flag.StringVar(&b.netward, "netward", "", "netward `binary` (default: build ./cmd/netward)")
	short := flag.Bool("short", false, "3 s per measurement instead of 10 s, churn for 3 s instead of 60 s, no 100,000-flow run unless -flows")
	churn := flag.Duration("churn", 60*time.Second, "how long each connection-churn measurement runs (-short: 3s)")
	idle := flag.Int("idle-conns", 10000, "idle `connections` for the memory measurement")
	flows := flag.Int("flows", 100000, "concurrent `flows` to hold (IPv4 and IPv6 half each); 0 skips it (-short: 0)")
	only := flag.String("only", "", "run only these `parts`, comma-separated: throughput (and latency), udp, churn, memory, flows, geneve")
	rulesMode := flag.String("rules", "realistic", "rule file for every netward column: none, realistic (generated: 1,000 rules + 10,000 domains) or a `FILE`")
	flag.IntVar(&b.rounds, "rounds", 1, "repeat the throughput, latency and churn measurements this many `times`, the columns taking turns each round, and report medians: kernel forwarding's own rate drifts between runs")
	flag.Var(&b.variants, "variant", "netward column `NAME=FLAGS` (repeatable; default netward= with no extra flags); FLAGS starting with @PATH run that netward binary instead of -netward's, to compare two builds in one run")
	proxies := flag.Bool("proxies", false, "add columns for HAProxy and nginx as transparent SNI-filtering proxies in the appliance (the bench's SNI allowed, others refused, other ports passed through in TCP mode) to throughput, latency and churn; installs the Debian packages if missing")
	proxyList := flag.String("proxy", "", "add proxy columns, comma-separated: haproxy, nginx (-proxies: both)")
	relaySockmap := flag.Bool("relay-sockmap", false, "add a column for the same relay moving bytes with an eBPF sockmap (sk_skb verdict redirect) instead of splice")
	relay := flag.Bool("relay", false, "add a column for the cheapest relay that terminates flows (kernel sockets on both legs, TPROXY, splice, no inspection) to throughput, latency and churn: what terminating a flow costs before netward's stack and inspection")
	flag.Parse()
	if b.rounds < 1 {
		fmt.Fprintln(os.Stderr, "bench: -rounds must be at least 1")
		os.Exit(2)
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	b.churn = *churn
	if *short {
		b.secs = 3
		if !set["churn"] {
			b.churn = 3 * time.Second
		}
		if !set["flows"] {
			*flows = 0
		}
	}
	if len(b.variants) == 0 {
		b.variants = variants{{name: "netward"}}
	}
	if *relay {
		b.variants = append(b.variants, variant{name: relayColumn, relay: true})
	}
	if *relaySockmap {
		b.variants = append(b.variants, variant{name: sockmapRelayColumn, relay: true, sockmap: true})
	}
	kinds, err := parseProxies(*proxies, *proxyList)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	for _, k := range kinds {
		b.variants = append(b.variants, variant{name: k, proxy: k})
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b.ctx = ctx
	parts := map[string]bool{"throughput": true, "udp": true, "churn": true, "memory": true, "flows": true, "geneve": true}
	if *only != "" {
		want := map[string]bool{}
		for _, p := range strings.Split(*only, ",") {
			if !parts[p] {
				fmt.Fprintf(os.Stderr, "bench: -only: unknown part %q\n", p)
				os.Exit(2)
			}
			want[p] = true
		}
		parts = want
		if parts["flows"] && !set["flows"] {
			*flows = 100000
		}
	}
	if err := b.main(*rulesMode, parts, *idle, *flows); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
		} else {
			fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		}
		for _, h := range b.health {
			fmt.Fprintln(os.Stderr, "  "+h) // netward's own view of the runs so far
		}
		os.Exit(1)
	}
}

func (b *bench) main(rulesMode string, parts map[string]bool, idle, flows int) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: run `sudo make bench`")
	}
	for _, tool := range []string{"ip", "iptables", "iperf3", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed", tool)
		}
	}
	if err := b.ensureProxies(); err != nil {
		return err
	}
	var err error
	if b.dir, err = os.MkdirTemp("", "netward-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.dir)
	if b.peer, err = lab.Build(b.ctx, lab.Module+"/e2e/cmd/nwpeer", b.dir); err != nil {
		return err
	}
	if b.netward == "" {
		if b.netward, err = lab.Build(b.ctx, lab.Module+"/cmd/netward", b.dir); err != nil {
			return err
		}
	}
	if b.rules, err = b.prepareRules(rulesMode); err != nil {
		return err
	}
	progress("%s", b.rules.describe())
	if b.cert, b.key, err = peer.WriteCert(b.dir, benchSNI); err != nil {
		return err
	}
	start := time.Now()
	b.load, _ = os.ReadFile("/proc/loadavg")
	if parts["throughput"] {
		if err := b.throughputAndLatency(); err != nil {
			return err
		}
	}
	if parts["udp"] {
		if err := b.udpAll(); err != nil {
			return err
		}
	}
	if parts["churn"] {
		if err := b.churnAll(); err != nil {
			return err
		}
	}
	if parts["geneve"] {
		if err := b.geneveAll(); err != nil {
			return err
		}
	}
	for _, v := range b.variants {
		if !parts["memory"] || idle <= 0 {
			break
		}
		if v.external() {
			continue // netward's memory per flow; the relay's and proxies' is the kernel's and their own
		}
		if err := b.memory(v, idle); err != nil {
			return err
		}
	}
	if parts["flows"] && flows > 0 {
		if err := b.flows(flows); err != nil {
			return err
		}
	}
	b.print(time.Since(start))
	return nil
}

// columns are kernel forwarding, then every variant.
func (b *bench) columns() []*variant {
	cols := []*variant{nil}
	for i := range b.variants {
		cols = append(cols, &b.variants[i])
	}
	return cols
}

// declare adds a row (once): rows print in the order they are declared,
// whichever column measures first.
func (b *bench) declare(name, unit string) *row {
	for _, r := range b.rows {
		if r.name == name {
			return r
		}
	}
	r := &row{name: name, unit: unit, values: map[string]float64{}, samples: map[string][]float64{}, prec: 2}
	b.rows = append(b.rows, r)
	return r
}

// declareSub adds a row shown indented under parent, as label.
func (b *bench) declareSub(parent, label, unit string) *row {
	r := b.declare(subKey(parent, label), unit)
	r.label = "  " + label
	return r
}

func subKey(parent, label string) string { return parent + " / " + label }

// set records one measurement of a cell: a sample of this round.
func (b *bench) set(name, unit string, col string, v float64) *row {
	r := b.declare(name, unit)
	r.samples[col] = append(r.samples[col], v)
	r.values[col] = median(r.samples[col])
	return r
}

// add records a count of a cell (failures): the cell is the sum over the
// rounds, so that one bad round shows.
func (b *bench) add(name, unit string, col string, v float64) *row {
	r := b.declare(name, unit)
	r.samples[col] = append(r.samples[col], v)
	r.values[col] += v
	return r
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// roundRatios are the column's ratios to kernel forwarding round by round,
// when there was more than one round.
func (r *row) roundRatios(col string) string {
	k, v := r.samples[kernelColumn], r.samples[col]
	if len(v) < 2 || len(k) != len(v) || r.noRatio {
		return ""
	}
	parts := make([]string, len(v))
	for i := range v {
		parts[i] = "-"
		if k[i] > 0 {
			parts[i] = fmt.Sprintf("%.2f", v[i]/k[i])
		}
	}
	return strings.Join(parts, " ")
}

// has reports whether any row in unit has a value.
func (b *bench) has(unit string) bool {
	for _, r := range b.rows {
		if r.unit == unit && len(r.values) > 0 {
			return true
		}
	}
	return false
}

// hasRow reports whether the named row has a value.
func (b *bench) hasRow(name string) bool {
	for _, r := range b.rows {
		if r.name == name && len(r.values) > 0 {
			return true
		}
	}
	return false
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// benchLab is a lab with the application's servers running.
type benchLab struct {
	*lab.Lab
	app *lab.Proc // nwpeer serve: its PID tells the application namespace's TCP counters
}

// newLab builds a lab with the application's servers (nwpeer serve with
// HTTPS on tlsPort, quiet HTTP log; iperf3 server).
func (b *bench) newLab() (*benchLab, error) {
	l, err := lab.New(lab.Options{})
	if err != nil {
		return nil, err
	}
	bl := &benchLab{Lab: l}
	bl.app, err = l.App.Start("nwpeer-app", b.peer, "serve", "-quiet-http", "-dns-port", "53", "-h3-port", strconv.Itoa(tlsPort),
		"-tls-port", strconv.Itoa(tlsPort), "-tls-cert", b.cert, "-tls-key", b.key)
	if err == nil {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		_, err = bl.app.WaitLog(ctx, regexp.MustCompile(`nwpeer: serving`))
		cancel()
	}
	if err == nil {
		_, err = l.App.Start("iperf3-server", "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	}
	if err == nil {
		// Clients open many connections quickly; reuse TIME_WAIT ports as
		// busy real clients are tuned to (datapath notes).
		_, err = l.Client.Run(b.ctx, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
	}
	if err == nil {
		err = waitPort(b.ctx, l.App, iperfPort)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return bl, nil
}

func waitPort(ctx context.Context, ns *lab.NS, port int) error {
	for range 500 {
		out, err := ns.Run(ctx, "ss", "-Hltn", "sport = :"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on port %d", port)
}

// path is one column's datapath on a lab: kernel forwarding (nw and relay
// nil), a running netward variant, or the reference relay.
type path struct {
	b     *bench
	l     *benchLab
	v     *variant
	nw    *lab.Netward
	relay *lab.Relay // the -relay column's relay (relayColumn)
	proxy *lab.Proxy // a proxy column's HAProxy or nginx
	what  string     // the run, for health notes
	// kernelLeg: netward's upstream leg is a kernel socket (metric
	// netward_upstream_info), so only the client leg crosses the TUN.
	kernelLeg bool
}

// start starts the variant's netward (nothing for kernel forwarding) with
// the rule file, and checks from its metrics that it loaded that file.
func (b *bench) start(l *benchLab, v *variant, what string) (*path, error) {
	p := &path{b: b, l: l, v: v, what: what}
	if v == nil {
		return p, nil
	}
	if v.relay {
		var err error
		var extra []string
		if v.sockmap {
			extra = []string{"-sockmap"}
		}
		p.relay, err = l.StartRelay(b.ctx, b.peer, extra...)
		return p, err
	}
	if v.proxy != "" {
		return p, p.startProxy()
	}
	args := []string{"--log-level", "warn"}
	if b.rules.path != "" {
		args = append(args, "--rules", b.rules.path)
	}
	var err error
	binary := b.netward
	if v.binary != "" {
		binary = v.binary
	}
	p.nw, err = l.StartNetward(b.ctx, lab.NetwardOptions{Binary: binary, Args: append(args, v.args...)})
	if err != nil {
		return nil, err
	}
	if err := p.checkLoaded(); err != nil {
		return nil, errors.Join(err, p.nw.Terminate(10*time.Second))
	}
	m, err := fetchMetrics(b.ctx, p.nw.AdminSocket)
	if err != nil {
		return nil, errors.Join(err, p.nw.Terminate(10*time.Second))
	}
	switch leg := m.label("netward_upstream_info", "leg"); leg {
	case "kernel", "gvisor":
		p.kernelLeg = leg == "kernel"
		b.legs[p.col()] = leg
	default:
		return nil, errors.Join(fmt.Errorf("%s: netward_upstream_info has leg %q", p.col(), leg), p.nw.Terminate(10*time.Second))
	}
	return p, nil
}

// checkLoaded compares netward_rules and netward_rules_info{hash} with
// what netward check said of the file.
func (p *path) checkLoaded() error {
	if p.b.rules.path == "" {
		return nil
	}
	m, err := fetchMetrics(p.b.ctx, p.nw.AdminSocket)
	if err != nil {
		return err
	}
	n := int(m.value("netward_rules", nil))
	hash := m.label("netward_rules_info", "hash")
	if n != p.b.rules.count || !strings.HasPrefix(hash, p.b.rules.sha) {
		return fmt.Errorf("%s: netward reports %d rules, hash %q; netward check said %d rules, sha256 %s…",
			p.col(), n, hash, p.b.rules.count, p.b.rules.sha)
	}
	p.b.loaded[p.col()] = fmt.Sprintf("netward_rules %d, netward_rules_info hash %s…", n, hash[:min(len(hash), 12)])
	return nil
}

// stop checks netward's counters (see health) and stops it.
func (p *path) stop() error {
	if p.relay != nil {
		return p.relay.Stop(10 * time.Second)
	}
	if p.proxy != nil {
		return p.stopProxy()
	}
	if p.nw == nil {
		return nil
	}
	herr := p.health()
	if err := p.nw.Terminate(10 * time.Second); err != nil {
		return errors.Join(herr, fmt.Errorf("%s: netward exit: %w", p.col(), err))
	}
	return herr
}

// health notes what netward's metrics and log say about the run: the
// verdicts by rule, inspect errors and timeouts, limit hits, TUN drops, and
// warnings or errors it logged. With the realistic rules, a flow decided by
// any rule but the bench's own allow rules (or the default) fails the
// bench: the rule file was meant to match none of its traffic.
func (p *path) health() error {
	m, err := fetchMetrics(p.b.ctx, p.nw.AdminSocket)
	if err != nil {
		return err
	}
	note := fmt.Sprintf("%s, %s: verdicts %s; inspect errors %s, timeouts %.0f; limit hits %s; TUN dropped %s",
		p.col(), p.what, m.verdicts(), counts(m.by("netward_inspect_errors_total", "kind")),
		m.value("netward_inspect_timeouts_total", nil), counts(m.by("netward_limit_hits_total", "limit")),
		counts(m.by("netward_tun_dropped_total", "direction")))
	note += "; upstream failures " + counts(m.by("netward_upstream_failures_total", "reason"))
	if p.kernelLeg {
		note += fmt.Sprintf("; kernel upstream sockets %.0f, fallbacks to the gVisor leg %.0f",
			m.value("netward_upstream_kernel_sockets", nil), m.value("netward_upstream_fallbacks_total", nil))
	}
	if replayed := m.value("netward_syn_replayed_total", nil); replayed > 0 {
		note += fmt.Sprintf("; SYNs replayed %.0f, accepted %.0f, replay failures %s", replayed,
			m.value("netward_tcp_accepted_total", nil), counts(m.by("netward_syn_replay_failures_total", "reason")))
	}
	if logged := loggedProblems(p.nw.Log()); logged != "" {
		note += "; logged " + logged
	}
	p.b.health = append(p.b.health, note)
	if p.b.rules.mode != "realistic" {
		return nil
	}
	for rule := range m.by("netward_verdicts_total", "rule") {
		if rule != "default" && rule != ruleAllowTLS && rule != ruleAllowHTTP {
			return fmt.Errorf("%s %s: rule %s decided bench flows (verdicts %s): the realistic rules must match none",
				p.col(), p.what, rule, m.verdicts())
		}
	}
	return nil
}

var logLevel = regexp.MustCompile(`"level":"(WARN|ERROR)","msg":"([^"]*)"`)

// loggedProblems counts netward's WARN and ERROR log lines by message.
func loggedProblems(log string) string {
	c := map[string]float64{}
	for _, m := range logLevel.FindAllStringSubmatch(log, -1) {
		c[m[1]+" "+strconv.Quote(m[2])]++
	}
	if len(c) == 0 {
		return ""
	}
	return counts(c)
}

func (p *path) col() string {
	if p.v == nil {
		return kernelColumn
	}
	return p.v.name
}

// measure runs f; for netward it checks that at least minBytes (or 90 % of
// what f reports it moved) crossed the TUN each way: a lost steering route
// would let the kernel forward and produce a fake number.
func (p *path) measure(what string, minBytes int64, f func() (moved int64, err error)) error {
	var before lab.LinkStats
	var err error
	var relayFromClient, relayFromServer int64
	var relayedBefore float64
	if p.nw != nil {
		if before, err = p.nw.TUNStats(p.b.ctx); err != nil {
			return err
		}
		if relayedBefore, err = p.relayedBytes(); err != nil {
			return err
		}
	} else if ok, _ := p.l.Appliance.HasLink(p.b.ctx, lab.DefaultTUN); ok {
		return fmt.Errorf("%s run, but a TUN exists in the appliance", p.col())
	}
	ext := p.tproxied()
	if ext != nil {
		if relayFromClient, relayFromServer, err = ext.Bytes(p.b.ctx); err != nil {
			return err
		}
	}
	var haBefore lab.HAProxyFrontend
	if p.proxy != nil && p.proxy.Config.Kind == lab.HAProxy {
		if haBefore, err = p.haproxyTotals(); err != nil {
			return err
		}
	}
	progress("%-10s %s", p.col(), what)
	moved, err := f()
	if err != nil {
		if ext != nil {
			if exited, xerr := ext.Exited(); exited {
				err = fmt.Errorf("%w; the %s exited (%v), its log:\n%s", err, p.col(), xerr, ext.Log())
			}
		}
		return fmt.Errorf("%s %s: %w", p.col(), what, err)
	}
	want := minBytes
	if moved > 0 {
		want = moved * 9 / 10
	}
	if ext != nil {
		c, s, err := ext.Bytes(p.b.ctx)
		if err != nil {
			return err
		}
		// The payload crosses the relay once, in the direction it flows.
		if c, s = c-relayFromClient, s-relayFromServer; max(c, s) < want {
			return fmt.Errorf("%s %s: its TPROXY and MARK rules handed it only %d bytes from the client and %d from the server, want ≥ %d one way: the kernel forwarded it",
				p.col(), what, c, s, want)
		}
		if p.proxy != nil && p.proxy.Config.Kind == lab.HAProxy {
			return p.checkHAProxyBytes(what, haBefore, want)
		}
		return nil
	}
	if p.nw == nil {
		return nil
	}
	after, err := p.nw.TUNStats(p.b.ctx)
	if err != nil {
		return err
	}
	d := after.Sub(before)
	if p.kernelLeg {
		// Only the client leg crosses the TUN; the server leg is a kernel
		// socket. The payload crosses it once, in the direction it flows,
		// unless netward handed the flow off to the kernel after its
		// verdict: then netward's own byte counters (which only flows it
		// relays move) must show it.
		if max(int64(d.RxBytes), int64(d.TxBytes)) >= want {
			return nil
		}
		after, err := p.relayedBytes()
		if err != nil {
			return err
		}
		if int64(after-relayedBefore) < want {
			return fmt.Errorf("%s %s: only %v crossed the TUN and netward relayed %.0f bytes, want ≥ %d bytes one way: the kernel forwarded it", p.col(), what, d, after-relayedBefore, want)
		}
		return nil
	}
	if int64(d.RxBytes) < want || int64(d.TxBytes) < want {
		return fmt.Errorf("%s %s: only %v crossed the TUN, want ≥ %d bytes each way: the kernel forwarded it", p.col(), what, d, want)
	}
	return nil
}

// relayedBytes is netward's netward_bytes_total, both directions: the
// payload of the flows it relayed, handed-off ones included.
func (p *path) relayedBytes() (float64, error) {
	m, err := fetchMetrics(p.b.ctx, p.nw.AdminSocket)
	if err != nil {
		return 0, err
	}
	return m.value("netward_bytes_total", nil), nil
}

// appIP is the application's address in family fam ("4" or "6").
func (l *benchLab) appIP(fam string) string {
	if fam == "6" {
		return l.Topo.AppV6.Addr().String()
	}
	return l.Topo.AppV4.Addr().String()
}

// appAddr is the application's address:port in family fam.
func (l *benchLab) appAddr(fam string, port int) string {
	return net.JoinHostPort(l.appIP(fam), strconv.Itoa(port))
}

func (b *bench) print(took time.Duration) {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("\nnetward bench — %s, %d cores, %s, kernel %s, host %s, %d s per throughput/latency measurement, churn %v, took %v\n",
		time.Now().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.Version(), strings.TrimSpace(string(kernel)), host, b.secs, b.churn, took.Round(time.Second))
	if f := strings.Fields(string(b.load)); len(f) >= 3 {
		fmt.Printf("load average at the start: %s %s %s (other work on the machine lowers every number and raises machine CPU)\n", f[0], f[1], f[2])
	}
	fmt.Println(b.rules.describe())
	for _, v := range b.variants {
		if v.relay && v.sockmap {
			fmt.Printf("column %s: nwpeer relay -sockmap: the same relay, its bytes moved by an eBPF sockmap (sk_skb verdict redirect to the peer's egress) instead of splice\n", v.name)
			continue
		}
		if v.relay {
			fmt.Printf("column %s: nwpeer relay in the appliance: kernel sockets on both legs, TPROXY, splice, no inspection (the cheapest relay that terminates flows)\n", v.name)
			continue
		}
		if v.proxy != "" {
			fmt.Printf("column %s: %s\n", v.name, proxyDescription(v.proxy))
			continue
		}
		args := strings.Join(v.args, " ")
		if args == "" {
			args = "(default flags)"
		}
		loaded := b.loaded[v.name]
		if loaded == "" {
			loaded = "no rules"
		}
		fmt.Printf("column %s: netward run %s; upstream leg: %s; loaded: %s\n", v.name, args, b.legs[v.name], loaded)
	}
	cols := b.columns()
	const nameW, cellW = 62, 17
	fmt.Printf("\n%-*s", nameW, "measurement")
	for _, c := range cols {
		name := kernelColumn
		if c != nil {
			name = c.name
		}
		fmt.Printf(" %*s", cellW, name)
		if c != nil {
			fmt.Printf(" %6s", "ratio")
		}
	}
	fmt.Println()
	for _, r := range b.rows {
		if len(r.values) == 0 {
			continue
		}
		label := r.name
		if r.label != "" {
			label = r.label
		}
		fmt.Printf("%-*s", nameW, label)
		k, hasK := r.values[kernelColumn]
		for _, c := range cols {
			name := kernelColumn
			if c != nil {
				name = c.name
			}
			v, ok := r.values[name]
			cell := "-"
			if ok {
				cell = strconv.FormatFloat(v, 'f', r.prec, 64) + " " + r.unit
			}
			fmt.Printf(" %*s", cellW, cell)
			if c != nil {
				ratio := "-"
				if ok && hasK && k > 0 && !r.noRatio {
					ratio = fmt.Sprintf("%.2f", v/k)
				}
				fmt.Printf(" %6s", ratio)
			}
		}
		note := r.note
		for _, c := range cols[1:] {
			if rr := r.roundRatios(c.name); rr != "" {
				note = fmt.Sprintf("%s: ratio by round %s; ", c.name, rr) + note
			}
		}
		if note != "" {
			fmt.Printf("  %s", strings.TrimSuffix(note, "; "))
		}
		fmt.Println()
	}
	fmt.Println("\nratio = column/kernel; every netward measurement was checked to have crossed netward's TUN (GENEVE rows: its stacks).")
	for _, v := range b.variants {
		if v.relay {
			fmt.Printf("%s: every measurement was checked to have crossed the relay (its TPROXY and MARK rules' byte counters).\n", v.name)
		}
		if v.proxy != "" {
			fmt.Printf("%s: every measurement was checked to have crossed it (its TPROXY and MARK rules' byte counters%s); rows about netward alone\n"+
				"  (memory per idle flow, concurrent flows, UDP) have no %s cell.\n", v.name, map[bool]string{true: ", and HAProxy's frontend byte counters"}[v.proxy == lab.HAProxy], v.name)
			if c := b.proxyChecks[v.name]; c != "" {
				fmt.Println("  " + c)
			}
		}
	}
	if b.rounds > 1 {
		fmt.Printf("%d rounds: the columns took turns in each round; a cell is the median of its rounds, its ratio the ratio of the medians.\n", b.rounds)
	}
	if b.has("CPU-s/GB") {
		fmt.Println("CPU-s/GB = CPU-seconds per 10^9 bytes iperf3 delivered. machine: all CPUs' busy time in /proc/stat (user+nice+system+irq+softirq+steal:\n" +
			"  both iperf3 ends, the kernel's forwarding, netward, and anything else running); own: netward's (or the relay's) utime+stime.")
	}
	if b.hasRow(geneveRowUp) || b.hasRow(geneveRowHTTP) {
		fmt.Println("GENEVE rows: the lab's Gateway Load Balancer (nwpeer gwlb, a Go encapsulator: this kernel has no GENEVE device) in front of one appliance, jumbo\n" +
			"  frames (inner MTU 8432); the kernel column is a GENEVE reflector appliance (nwpeer genevereflect: each datagram straight back), the\n" +
			"  netward column netward run --geneve with the column's flags. The lab GWLB's one packet per syscall caps both columns.")
	}
	if b.has("conn/s") {
		fmt.Println("server accepts/s = the application namespace's Tcp PassiveOpens per 1-s window, read from /proc while the client runs (first window left out).")
	}
	if len(b.health) > 0 {
		fmt.Println("\nnetward's own counters (admin socket /metrics) and log, per run:")
		for _, h := range b.health {
			fmt.Println("  " + h)
		}
	}
}
