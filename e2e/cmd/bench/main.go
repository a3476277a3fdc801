// Command bench compares plain kernel forwarding with netward on the same
// lab in the same run: iperf3 throughput (1 and 4 streams, both
// directions, IPv4 and IPv6), new TCP connections per second, request/
// response latency over an open connection, and netward's memory per idle
// connection. It checks from the TUN's counters that every netward run
// really crossed netward, and prints a table with absolute numbers and the
// netward/kernel ratio. Run it as root: `make bench`. CI does not run it.
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

type bench struct {
	ctx     context.Context
	netward string
	peer    string
	secs    int
	nargs   []string
	rows    []*row
	load    []byte // /proc/loadavg at the start: other load skews every number
}

// row is one line of the result table; kernel or netward may be unset.
type row struct {
	name            string
	unit            string
	higherIsBetter  bool
	kernel, netward float64
	hasK, hasN      bool
	note            string
}

func main() {
	netward := flag.String("netward", "", "netward `binary` (default: build ./cmd/netward)")
	short := flag.Bool("short", false, "3 s per measurement instead of 10 s")
	conns := flag.Int("idle-conns", 5000, "idle `connections` for the memory measurement")
	extra := flag.String("netward-args", "", "extra `flags` for netward run, space-separated (e.g. --offload=false)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{ctx: ctx, netward: *netward, secs: 10}
	if *short {
		b.secs = 3
	}
	if *extra != "" {
		b.nargs = strings.Fields(*extra)
	}
	if err := b.main(*conns); err != nil {
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
	for _, tool := range []string{"ip", "iptables", "iperf3"} {
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
	if err := b.memory(idle); err != nil {
		return err
	}
	b.print(time.Since(start))
	return nil
}

func (b *bench) row(name, unit string, higher bool) *row {
	for _, r := range b.rows {
		if r.name == name {
			return r
		}
	}
	r := &row{name: name, unit: unit, higherIsBetter: higher}
	b.rows = append(b.rows, r)
	return r
}

func (r *row) set(netward bool, v float64) {
	if netward {
		r.netward, r.hasN = v, true
	} else {
		r.kernel, r.hasK = v, true
	}
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
	for i := 0; i < 500; i++ {
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

// path runs measurements on one datapath and checks netward's are real.
type path struct {
	b  *bench
	l  *lab.Lab
	nw *lab.Netward
}

func (p *path) name() string {
	if p.nw == nil {
		return "kernel"
	}
	return "netward"
}

// measure runs f; for netward it checks that at least minBytes crossed the
// TUN each way (a lost steering route would let the kernel forward and
// produce a fake number).
func (p *path) measure(what string, minBytes int64, f func() (int64, error)) error {
	var before lab.LinkStats
	var err error
	if p.nw != nil {
		if before, err = p.nw.TUNStats(p.b.ctx); err != nil {
			return err
		}
	} else if ok, _ := p.l.Appliance.HasLink(p.b.ctx, lab.DefaultTUN); ok {
		return errors.New("kernel run, but a TUN exists in the appliance")
	}
	progress("%-8s %s", p.name(), what)
	moved, err := f()
	if err != nil {
		return fmt.Errorf("%s %s: %w", p.name(), what, err)
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
	if int64(d.RxBytes) < want || int64(d.TxBytes) < want {
		return fmt.Errorf("netward %s: only %v crossed the TUN, want ≥ %d bytes each way: the kernel forwarded it", what, d, want)
	}
	return nil
}

type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes int64   `json:"bytes"`
			BPS   float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		SumSent struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
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
		p.b.row(name, "Gbit/s", true).set(p.nw != nil, r.End.SumReceived.BPS/1e9)
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
		p.b.row("latency p50 (64 B request/response, open conn)", "µs", false).set(p.nw != nil, r.P50)
		p.b.row("latency p99 (64 B request/response, open conn)", "µs", false).set(p.nw != nil, r.P99)
		return int64(r.N) * 64, nil
	})
}

// hostPort is "addr:port" for a lab prefix such as Topology.AppV4.
func hostPort(p interface{ String() string }, port int) string {
	a := strings.Split(p.String(), "/")[0]
	if strings.Contains(a, ":") {
		a = "[" + a + "]"
	}
	return a + ":" + strconv.Itoa(port)
}

func (b *bench) startNetward(l *lab.Lab) (*lab.Netward, error) {
	return l.StartNetward(b.ctx, lab.NetwardOptions{Binary: b.netward, Args: append([]string{"--log-level", "warn"}, b.nargs...)})
}

func (b *bench) throughputAndLatency() error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	for _, withNetward := range []bool{false, true} {
		p := &path{b: b, l: l}
		if withNetward {
			if p.nw, err = b.startNetward(l); err != nil {
				return err
			}
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
		if p.nw != nil {
			if err := p.nw.Terminate(10 * time.Second); err != nil {
				return fmt.Errorf("netward exit: %w", err)
			}
		}
	}
	return nil
}

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
var wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)

// churn measures new connections per second, each on a fresh lab: TIME_WAIT
// sockets left by a previous run distort the next (datapath notes).
func (b *bench) churn() error {
	_, haveWrk := exec.LookPath("wrk")
	for _, withNetward := range []bool{false, true} {
		l, err := b.newLab()
		if err != nil {
			return err
		}
		p := &path{b: b, l: l}
		if withNetward {
			if p.nw, err = b.startNetward(l); err != nil {
				l.Close()
				return err
			}
		}
		url := "http://" + hostPort(l.Topo.AppV4, peer.HTTPPort) + "/"
		tool := "wrk -c50 -t2"
		if haveWrk != nil {
			tool = "nwpeer churn -c50"
		}
		name := fmt.Sprintf("new TCP connections/s (%s, Connection: close)", tool)
		err = p.measure("connection churn", 100_000, func() (int64, error) {
			var rate float64
			var note string
			if haveWrk == nil {
				out, err := l.Client.Run(b.ctx, "wrk", "-c50", "-t2", "-d", strconv.Itoa(b.secs)+"s", "-H", "Connection: close", url)
				if err != nil {
					return 0, err
				}
				m := wrkRate.FindStringSubmatch(out)
				if m == nil {
					return 0, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
				}
				rate, _ = strconv.ParseFloat(m[1], 64)
				if e := wrkErrors.FindString(out); e != "" {
					note = e
				}
			} else {
				out, err := l.Client.Run(b.ctx, b.peer, "churn", "-c", "50", "-d", strconv.Itoa(b.secs)+"s", "-url", url)
				if err != nil {
					return 0, err
				}
				var r peer.ChurnResult
				if err := json.Unmarshal([]byte(out), &r); err != nil {
					return 0, err
				}
				rate = r.PerSec
				if r.Errors > 0 {
					note = fmt.Sprintf("%d errors %v", r.Errors, r.Kinds)
				}
			}
			r := b.row(name, "conn/s", true)
			r.set(withNetward, rate)
			if note != "" {
				r.note += p.name() + ": " + note + " "
			}
			return 0, nil
		})
		if p.nw != nil {
			if terr := p.nw.Terminate(10 * time.Second); terr != nil && err == nil {
				err = fmt.Errorf("netward exit: %w", terr)
			}
		}
		l.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// memory measures netward's RSS growth with idle connections open.
func (b *bench) memory(n int) error {
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	nw, err := b.startNetward(l)
	if err != nil {
		return err
	}
	p := &path{b: b, l: l, nw: nw}
	var before, after int64
	err = p.measure(fmt.Sprintf("memory with %d idle connections", n), int64(n)*40, func() (int64, error) {
		// Warm up the stack's pools with one connection first.
		if _, err := l.Client.Run(b.ctx, "curl", "-s", "-o", "/dev/null", "http://"+hostPort(l.Topo.AppV4, peer.HTTPPort)+"/"); err != nil {
			return 0, err
		}
		time.Sleep(500 * time.Millisecond)
		var err error
		if before, err = nw.RSS(); err != nil {
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
		if after, err = nw.RSS(); err != nil {
			return 0, err
		}
		return 0, h.Stop(5 * time.Second)
	})
	if err != nil {
		return err
	}
	r := b.row(fmt.Sprintf("netward RSS growth per idle connection (%d open)", n), "KiB", false)
	r.set(true, float64(after-before)/float64(n)/1024)
	r.note = fmt.Sprintf("RSS %.1f MiB → %.1f MiB", float64(before)/(1<<20), float64(after)/(1<<20))
	return nw.Terminate(10 * time.Second)
}

func (b *bench) print(took time.Duration) {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("\nnetward bench — %s, %d cores, %s, kernel %s, host %s, %d s per measurement, took %v\n",
		time.Now().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.Version(), strings.TrimSpace(string(kernel)), host, b.secs, took.Round(time.Second))
	if f := strings.Fields(string(b.load)); len(f) >= 3 {
		fmt.Printf("load average at the start: %s %s %s (other work on the machine lowers every number)\n", f[0], f[1], f[2])
	}
	if len(b.nargs) > 0 {
		fmt.Printf("netward flags: %s\n", strings.Join(b.nargs, " "))
	}
	fmt.Printf("\n%-58s %14s %14s %9s  %s\n", "measurement", "kernel", "netward", "ratio", "")
	for _, r := range b.rows {
		k, n, ratio := "-", "-", "-"
		if r.hasK {
			k = fmt.Sprintf("%.2f %s", r.kernel, r.unit)
		}
		if r.hasN {
			n = fmt.Sprintf("%.2f %s", r.netward, r.unit)
		}
		if r.hasK && r.hasN && r.kernel > 0 {
			ratio = fmt.Sprintf("%.2f", r.netward/r.kernel)
		}
		fmt.Printf("%-58s %14s %14s %9s  %s\n", r.name, k, n, ratio, r.note)
	}
	fmt.Println("\nratio = netward/kernel; every netward measurement was checked to have crossed netward's TUN.")
}
