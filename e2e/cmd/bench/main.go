// Command bench compares plain kernel forwarding with netward on the same
// lab in the same run: iperf3 throughput (1 and 4 streams, both
// directions, IPv4 and IPv6), new TCP connections per second, request/
// response latency over an open connection, and netward's memory per idle
// connection. It checks from the TUN's counters that every netward run
// really crossed netward, and prints a table with absolute numbers and the
// netward/kernel ratios. Run it as root: `make bench`. CI does not run it.
//
// Each -variant adds a netward column with its own flags, e.g.
//
//	bench -variant netward= -variant 'no-offload=--offload=false'
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
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
}

type variants []variant

func (v *variants) String() string { return fmt.Sprint(*v) }
func (v *variants) Set(s string) error {
	name, args, ok := strings.Cut(s, "=")
	if !ok || name == "" || name == kernelColumn {
		return fmt.Errorf("want NAME=FLAGS (NAME not %q), got %q", kernelColumn, s)
	}
	*v = append(*v, variant{name: name, args: strings.Fields(args)})
	return nil
}

const kernelColumn = "kernel"

type bench struct {
	ctx      context.Context
	netward  string
	peer     string
	secs     int
	variants variants
	rows     []*row
	load     []byte // /proc/loadavg at the start: other load skews every number
}

// row is one line of the result table: a value per column.
type row struct {
	name, unit string
	values     map[string]float64
	note       string
}

func main() {
	b := &bench{secs: 10}
	flag.StringVar(&b.netward, "netward", "", "netward `binary` (default: build ./cmd/netward)")
	short := flag.Bool("short", false, "3 s per measurement instead of 10 s")
	idle := flag.Int("idle-conns", 5000, "idle `connections` for the memory measurement")
	flag.Var(&b.variants, "variant", "netward column `NAME=FLAGS` (repeatable; default netward= with no extra flags)")
	flag.Parse()
	if *short {
		b.secs = 3
	}
	if len(b.variants) == 0 {
		b.variants = variants{{name: "netward"}}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b.ctx = ctx
	if err := b.main(*idle); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
		} else {
			fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		}
		os.Exit(1)
	}
}

func (b *bench) main(idle int) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: run `sudo make bench`")
	}
	for _, tool := range []string{"ip", "iptables", "iperf3", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed", tool)
		}
	}
	dir, err := os.MkdirTemp("", "netward-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if b.peer, err = lab.Build(b.ctx, lab.Module+"/e2e/cmd/nwpeer", dir); err != nil {
		return err
	}
	if b.netward == "" {
		if b.netward, err = lab.Build(b.ctx, lab.Module+"/cmd/netward", dir); err != nil {
			return err
		}
	}
	start := time.Now()
	b.load, _ = os.ReadFile("/proc/loadavg")
	if err := b.throughputAndLatency(); err != nil {
		return err
	}
	if err := b.churn(); err != nil {
		return err
	}
	for _, v := range b.variants {
		if err := b.memory(v, idle); err != nil {
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

func (b *bench) set(name, unit string, col string, v float64) *row {
	for _, r := range b.rows {
		if r.name == name {
			r.values[col] = v
			return r
		}
	}
	r := &row{name: name, unit: unit, values: map[string]float64{col: v}}
	b.rows = append(b.rows, r)
	return r
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// newLab builds a lab with the application's servers (quiet HTTP log,
// iperf3 server).
func (b *bench) newLab() (*lab.Lab, error) {
	l, err := lab.New(lab.Options{})
	if err != nil {
		return nil, err
	}
	p, err := l.App.Start("nwpeer-app", b.peer, "serve", "-quiet-http")
	if err == nil {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		_, err = p.WaitLog(ctx, regexp.MustCompile(`nwpeer: serving`))
		cancel()
	}
	if err == nil {
		_, err = l.App.Start("iperf3-server", "iperf3", "-s", "-p", "5201")
	}
	if err == nil {
		// Clients open many connections quickly; reuse TIME_WAIT ports as
		// busy real clients are tuned to (datapath notes).
		_, err = l.Client.Run(b.ctx, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
	}
	if err == nil {
		err = waitPort(b.ctx, l.App, 5201)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
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

// path is one column's datapath on a lab: kernel forwarding (nw nil) or a
// running netward variant.
type path struct {
	b  *bench
	l  *lab.Lab
	v  *variant
	nw *lab.Netward
}

// start starts the variant's netward (nothing for kernel forwarding).
func (b *bench) start(l *lab.Lab, v *variant) (*path, error) {
	p := &path{b: b, l: l, v: v}
	if v == nil {
		return p, nil
	}
	var err error
	p.nw, err = l.StartNetward(b.ctx, lab.NetwardOptions{Binary: b.netward, Args: append([]string{"--log-level", "warn"}, v.args...)})
	return p, err
}

func (p *path) stop() error {
	if p.nw == nil {
		return nil
	}
	if err := p.nw.Terminate(10 * time.Second); err != nil {
		return fmt.Errorf("%s: netward exit: %w", p.col(), err)
	}
	return nil
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
	if p.nw != nil {
		if before, err = p.nw.TUNStats(p.b.ctx); err != nil {
			return err
		}
	} else if ok, _ := p.l.Appliance.HasLink(p.b.ctx, lab.DefaultTUN); ok {
		return errors.New("kernel run, but a TUN exists in the appliance")
	}
	progress("%-10s %s", p.col(), what)
	moved, err := f()
	if err != nil {
		return fmt.Errorf("%s %s: %w", p.col(), what, err)
	}
	if p.nw == nil {
		return nil
	}
	after, err := p.nw.TUNStats(p.b.ctx)
	if err != nil {
		return err
	}
	d := after.Sub(before)
	want := minBytes
	if moved > 0 {
		want = moved * 9 / 10
	}
	if p.v.kernelUpstream() {
		// Only the client leg crosses the TUN; the server leg is a kernel
		// socket. The payload crosses it once, in the direction it flows.
		if max(int64(d.RxBytes), int64(d.TxBytes)) < want {
			return fmt.Errorf("%s %s: only %v crossed the TUN, want ≥ %d bytes one way: the kernel forwarded it", p.col(), what, d, want)
		}
		return nil
	}
	if int64(d.RxBytes) < want || int64(d.TxBytes) < want {
		return fmt.Errorf("%s %s: only %v crossed the TUN, want ≥ %d bytes each way: the kernel forwarded it", p.col(), what, d, want)
	}
	return nil
}

// kernelUpstream reports whether the variant runs `--upstream kernel`.
func (v *variant) kernelUpstream() bool {
	for i, a := range v.args {
		if a == "--upstream=kernel" || a == "--upstream" && i+1 < len(v.args) && v.args[i+1] == "kernel" {
			return true
		}
	}
	return false
}

type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes int64   `json:"bytes"`
			BPS   float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

func (p *path) iperf(fam string, streams int, reverse bool) error {
	dst := p.l.Topo.AppV4.Addr().String()
	if fam == "6" {
		dst = p.l.Topo.AppV6.Addr().String()
	}
	args := []string{"iperf3", "-c", dst, "-p", "5201", "-t", strconv.Itoa(p.b.secs), "-P", strconv.Itoa(streams), "-J"}
	dir := "client→app"
	if reverse {
		args = append(args, "-R")
		dir = "app→client"
	}
	plural := "s"
	if streams == 1 {
		plural = ""
	}
	name := fmt.Sprintf("iperf3 IPv%s, %d stream%s, %s", fam, streams, plural, dir)
	return p.measure(name, 0, func() (int64, error) {
		ctx, cancel := context.WithTimeout(p.b.ctx, time.Duration(p.b.secs+30)*time.Second)
		defer cancel()
		out, err := p.l.Client.Run(ctx, args...)
		var r iperfResult
		if jerr := json.Unmarshal([]byte(out), &r); jerr != nil {
			return 0, errors.Join(err, jerr)
		}
		if r.Error != "" {
			return 0, errors.New(r.Error)
		}
		if err != nil {
			return 0, err
		}
		p.b.set(name, "Gbit/s", p.col(), r.End.SumReceived.BPS/1e9)
		return r.End.SumReceived.Bytes, nil
	})
}

func (p *path) latency() error {
	return p.measure("latency", 1000, func() (int64, error) {
		out, err := p.l.Client.Run(p.b.ctx, p.b.peer, "pingpong", "-size", "64",
			"-d", strconv.Itoa(min(p.b.secs, 5))+"s", "-addr", hostPort(p.l.Topo.AppV4, peer.EchoPort))
		if err != nil {
			return 0, err
		}
		var r peer.LatencyResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return 0, err
		}
		p.b.set("latency p50 (64 B request/response, open conn)", "µs", p.col(), r.P50)
		p.b.set("latency p99 (64 B request/response, open conn)", "µs", p.col(), r.P99)
		return int64(r.N) * 64, nil
	})
}

// hostPort is "addr:port" for a lab prefix such as Topology.AppV4.
func hostPort(p interface{ String() string }, port int) string {
	a, _, _ := strings.Cut(p.String(), "/")
	if strings.Contains(a, ":") {
		a = "[" + a + "]"
	}
	return a + ":" + strconv.Itoa(port)
}

func (b *bench) throughputAndLatency() error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	for _, v := range b.columns() {
		p, err := b.start(l, v)
		if err != nil {
			return err
		}
		for _, c := range []struct {
			fam     string
			streams int
			rev     bool
		}{{"4", 1, false}, {"4", 1, true}, {"4", 4, false}, {"4", 4, true}, {"6", 1, false}, {"6", 1, true}} {
			if err := p.iperf(c.fam, c.streams, c.rev); err != nil {
				return err
			}
		}
		if err := p.latency(); err != nil {
			return err
		}
		if err := p.stop(); err != nil {
			return err
		}
	}
	return nil
}

var (
	wrkRate   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// churn measures new connections per second, each column on a fresh lab:
// TIME_WAIT sockets left by a previous run distort the next (datapath
// notes).
func (b *bench) churn() error {
	_, noWrk := exec.LookPath("wrk")
	tool := "wrk -c50 -t2"
	if noWrk != nil {
		tool = "nwpeer churn -c50"
	}
	name := fmt.Sprintf("new TCP connections/s (%s, Connection: close)", tool)
	for _, v := range b.columns() {
		l, err := b.newLab()
		if err != nil {
			return err
		}
		p, err := b.start(l, v)
		if err == nil {
			url := "http://" + hostPort(l.Topo.AppV4, peer.HTTPPort) + "/"
			err = p.measure("connection churn", 100_000, func() (int64, error) {
				rate, note, err := b.churnOnce(l, tool, url)
				if err == nil {
					r := b.set(name, "conn/s", p.col(), rate)
					if note != "" {
						r.note += p.col() + ": " + note + "; "
					}
				}
				return 0, err
			})
			err = errors.Join(err, p.stop())
		}
		l.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) churnOnce(l *lab.Lab, tool, url string) (rate float64, note string, err error) {
	dur := strconv.Itoa(b.secs) + "s"
	if strings.HasPrefix(tool, "wrk") {
		out, err := l.Client.Run(b.ctx, "wrk", "-c50", "-t2", "-d", dur, "-H", "Connection: close", url)
		if err != nil {
			return 0, "", err
		}
		m := wrkRate.FindStringSubmatch(out)
		if m == nil {
			return 0, "", fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
		}
		rate, _ = strconv.ParseFloat(m[1], 64)
		return rate, wrkErrors.FindString(out), nil
	}
	out, err := l.Client.Run(b.ctx, b.peer, "churn", "-c", "50", "-d", dur, "-url", url)
	if err != nil {
		return 0, "", err
	}
	var r peer.ChurnResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, "", err
	}
	if r.Errors > 0 {
		note = fmt.Sprintf("%d errors %v", r.Errors, r.Kinds)
	}
	return r.PerSec, note, nil
}

// memory measures netward's RSS growth with n idle connections open.
func (b *bench) memory(v variant, n int) error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	p, err := b.start(l, &v)
	if err != nil {
		return err
	}
	var before, after int64
	err = p.measure(fmt.Sprintf("memory with %d idle connections", n), int64(n)*40, func() (int64, error) {
		// One connection first, so pools and stack state that exist once
		// are not charged to the idle connections.
		if _, err := l.Client.Run(b.ctx, "curl", "-s", "-o", "/dev/null", "http://"+hostPort(l.Topo.AppV4, peer.HTTPPort)+"/"); err != nil {
			return 0, err
		}
		time.Sleep(500 * time.Millisecond)
		var err error
		if before, err = p.nw.RSS(); err != nil {
			return 0, err
		}
		h, err := l.Client.Start("hold", b.peer, "hold", "-n", strconv.Itoa(n), "-addr", hostPort(l.Topo.AppV4, peer.EchoPort))
		if err != nil {
			return 0, err
		}
		ctx, cancel := context.WithTimeout(b.ctx, 2*time.Minute)
		defer cancel()
		if _, err := h.WaitLog(ctx, regexp.MustCompile(`"ready":`)); err != nil {
			return 0, err
		}
		time.Sleep(time.Second)
		if after, err = p.nw.RSS(); err != nil {
			return 0, err
		}
		return 0, h.Stop(5 * time.Second)
	})
	if err != nil {
		return err
	}
	r := b.set(fmt.Sprintf("netward RSS growth per idle connection (%d open)", n), "KiB", v.name, float64(after-before)/float64(n)/1024)
	r.note += fmt.Sprintf("%s: RSS %.1f → %.1f MiB; ", v.name, float64(before)/(1<<20), float64(after)/(1<<20))
	return p.stop()
}

func (b *bench) print(took time.Duration) {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("\nnetward bench — %s, %d cores, %s, kernel %s, host %s, %d s per measurement, took %v\n",
		time.Now().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.Version(), strings.TrimSpace(string(kernel)), host, b.secs, took.Round(time.Second))
	if f := strings.Fields(string(b.load)); len(f) >= 3 {
		fmt.Printf("load average at the start: %s %s %s (other work on the machine lowers every number)\n", f[0], f[1], f[2])
	}
	for _, v := range b.variants {
		args := strings.Join(v.args, " ")
		if args == "" {
			args = "(default flags)"
		}
		fmt.Printf("column %s: netward run %s\n", v.name, args)
	}
	cols := b.columns()
	fmt.Printf("\n%-56s", "measurement")
	for _, c := range cols {
		name := kernelColumn
		if c != nil {
			name = c.name
		}
		fmt.Printf(" %15s", name)
		if c != nil {
			fmt.Printf(" %6s", "ratio")
		}
	}
	fmt.Println()
	for _, r := range b.rows {
		fmt.Printf("%-56s", r.name)
		k, hasK := r.values[kernelColumn]
		for _, c := range cols {
			name := kernelColumn
			if c != nil {
				name = c.name
			}
			v, ok := r.values[name]
			cell := "-"
			if ok {
				cell = fmt.Sprintf("%.2f %s", v, r.unit)
			}
			fmt.Printf(" %15s", cell)
			if c != nil {
				ratio := "-"
				if ok && hasK && k > 0 {
					ratio = fmt.Sprintf("%.2f", v/k)
				}
				fmt.Printf(" %6s", ratio)
			}
		}
		if r.note != "" {
			fmt.Printf("  %s", strings.TrimSuffix(r.note, "; "))
		}
		fmt.Println()
	}
	fmt.Println("\nratio = column/kernel; every netward measurement was checked to have crossed netward's TUN.")
}
