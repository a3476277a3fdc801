// Command demo shows netward at work on a namespace lab: it builds the
// lab, starts netward in the appliance, sends real traffic through it
// (curl over IPv4 and IPv6, a closed port, iperf3), shows what the
// application saw and netward's per-flow log, proves from the TUN's
// counters that the packets crossed netward, and tears everything down,
// also on Ctrl-C or failure. Run it as root: `make demo`.
//
// The demo is a list of steps; adding one (e.g. a rule that denies a
// request) is one more entry in steps.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
)

// step is one section of the demo.
type step struct {
	title string
	run   func(d *demo) error
}

var steps = []step{
	{"Build the lab: client — appliance — application (network namespaces)", (*demo).buildLab},
	{"Start the application's servers", (*demo).startServers},
	{"Start netward in the appliance", (*demo).startNetward},
	{"HTTP over IPv4", func(d *demo) error { return d.curl("4", "") }},
	{"HTTP over IPv6", func(d *demo) error { return d.curl("6", "") }},
	{"HTTP from another client address", func(d *demo) error {
		return d.curl("4", d.lab.Topo.ClientExtraV4[0].String())
	}},
	{"A download: 64 MiB, checksummed on both ends", (*demo).download},
	{"A closed port is refused at once", (*demo).closedPort},
	{"iperf3 through netward (3 s)", (*demo).iperf},
	{"What the application saw", (*demo).appView},
	{"netward's per-flow log", (*demo).flowLog},
	{"Proof: the packets crossed netward's TUN", (*demo).tunProof},
	{"Stop netward (SIGTERM): its steering is gone", (*demo).stop},
	{"After netward: the kernel forwards again (fail_mode open)", func(d *demo) error { return d.curl("4", "") }},
}

type demo struct {
	ctx       context.Context
	out       io.Writer
	netward   string
	peer      string
	lab       *lab.Lab
	nw        *lab.Netward
	app       *lab.Proc
	before    lab.Snapshot
	tunBefore lab.LinkStats
	verbose   bool
}

func main() {
	netward := flag.String("netward", "", "netward `binary` (default: build ./cmd/netward)")
	verbose := flag.Bool("v", false, "print every command that builds the lab")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{ctx: ctx, out: os.Stdout, netward: *netward, verbose: *verbose}
	err := d.main()
	if d.lab != nil {
		d.section("Tear down")
		if cerr := d.lab.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		} else {
			fmt.Fprintf(d.out, "  removed namespaces %s, %s, %s\n", d.lab.Client.Name, d.lab.Appliance.Name, d.lab.App.Name)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "\ndemo: interrupted")
		} else {
			fmt.Fprintf(os.Stderr, "\ndemo: FAILED: %v\n", err)
		}
		os.Exit(1)
	}
	fmt.Fprintln(d.out, "\ndemo: done")
}

func (d *demo) main() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, iptables): run `sudo make demo`")
	}
	for _, tool := range []string{"ip", "iptables", "curl", "iperf3", "dig"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed", tool)
		}
	}
	bin, err := os.MkdirTemp("", "netward-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	fmt.Fprintln(d.out, "building nwpeer (the lab's test servers and clients)…")
	if d.peer, err = lab.Build(d.ctx, lab.Module+"/e2e/cmd/nwpeer", bin); err != nil {
		return err
	}
	if d.netward == "" {
		fmt.Fprintln(d.out, "building netward…")
		if d.netward, err = lab.Build(d.ctx, lab.Module+"/cmd/netward", bin); err != nil {
			return err
		}
	}
	for i, s := range steps {
		d.section(fmt.Sprintf("%d. %s", i+1, s.title))
		if err := s.run(d); err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, s.title, err)
		}
		if d.ctx.Err() != nil {
			return d.ctx.Err()
		}
	}
	return nil
}

func (d *demo) section(title string) {
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		title = "\033[1m== " + title + "\033[0m" // bold on a terminal
	} else {
		title = "== " + title
	}
	fmt.Fprintf(d.out, "\n%s\n", title)
}

// sh runs a command in ns, printing it and its output.
func (d *demo) sh(ns *lab.NS, args ...string) (string, error) {
	fmt.Fprintf(d.out, "  [%s] $ %s\n", ns.Role, shellJoin(args))
	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel()
	out, err := ns.Run(ctx, args...)
	d.indent(out)
	return out, err
}

// shellJoin quotes the arguments that need it, so a printed command can be
// pasted into a shell.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n\"'%$&|;<>()*?[]{}\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

func (d *demo) indent(s string) {
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if line != "" {
			fmt.Fprintf(d.out, "      %s\n", line)
		}
	}
}

func (d *demo) buildLab() error {
	opts := lab.Options{}
	if d.verbose {
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(d.out, "  "+f+"\n", a...) }
	}
	l, err := lab.New(opts)
	if err != nil {
		return err
	}
	d.lab = l
	t := l.Topo
	fmt.Fprintf(d.out, `
    client %-15s        appliance %-15s          application %s
    %-15s ── %s ── %-15s   %s ── %s ── %s
    %-15s                  %-15s   %-15s            %s
    default route via the appliance; the appliance forwards (ip_forward=1)
    and drops conntrack-INVALID packets, as real appliances do.
`,
		l.Client.Name, l.Appliance.Name, l.App.Name,
		t.ClientV4.Addr(), l.ClientIf, t.ApplianceClientV4.Addr(), t.ApplianceAppV4.Addr(), l.AppIf, t.AppV4.Addr(),
		t.ClientV6.Addr(), t.ApplianceClientV6.Addr(), t.ApplianceAppV6.Addr(), t.AppV6.Addr())
	return nil
}

func (d *demo) startServers() error {
	cert, key, err := peer.WriteCert(d.lab.Dir, "www.example")
	if err != nil {
		return err
	}
	p, err := d.lab.App.Start("nwpeer-app", d.peer, "serve", "-h3-port", "8443", "-tls-cert", cert, "-tls-key", key, "-dns-port", "53")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	if _, err := p.WaitLog(ctx, regexp.MustCompile(`nwpeer: serving`)); err != nil {
		return err
	}
	d.app = p
	fmt.Fprintf(d.out, "  HTTP on :%d (answers with the address it sees), xfer on :%d, banner on :%d, echo on :%d, HTTP/3 on udp/8443, DNS on :53\n",
		peer.HTTPPort, peer.XferPort, peer.BannerPort, peer.EchoPort)
	perf, err := d.lab.App.Start("iperf3-server", "iperf3", "-s", "-p", "5201")
	if err != nil {
		return err
	}
	_ = perf
	fmt.Fprintln(d.out, "  iperf3 -s on :5201")
	return nil
}

func (d *demo) startNetward() error {
	var err error
	if d.before, err = d.lab.Appliance.Snapshot(d.ctx); err != nil {
		return err
	}
	opts := lab.NetwardOptions{Binary: d.netward}
	fmt.Fprintf(d.out, "  [appliance] $ %s &\n", shellJoin(append([]string{d.netward}, d.lab.NetwardArgs(opts)...)))
	start := time.Now()
	if d.nw, err = d.lab.StartNetward(d.ctx, opts); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  ready in %v: TUN %s is up and forwarded TCP is steered into it:\n", time.Since(start).Round(time.Millisecond), d.nw.TUN)
	if _, err := d.sh(d.lab.Appliance, "ip", "rule", "show"); err != nil {
		return err
	}
	if _, err := d.sh(d.lab.Appliance, "iptables", "-t", "mangle", "-S"); err != nil {
		return err
	}
	d.tunBefore, err = d.nw.TUNStats(d.ctx)
	return err
}

func (d *demo) appAddr(fam string, port uint16) string {
	a := d.lab.Topo.AppV4.Addr()
	if fam == "6" {
		a = d.lab.Topo.AppV6.Addr()
	}
	return netip.AddrPortFrom(a, port).String()
}

func (d *demo) curl(fam, src string) error {
	args := []string{"curl", "-sS", "--max-time", "10", "-w", "HTTP %{http_code}, client port %{local_port}\\n"}
	if src != "" {
		args = append(args, "--interface", src)
	}
	_, err := d.sh(d.lab.Client, append(args, "http://"+d.appAddr(fam, peer.HTTPPort)+"/")...)
	return err
}

func (d *demo) download() error {
	_, err := d.sh(d.lab.Client, d.peer, "xfer", "-addr", d.appAddr("4", peer.XferPort), "-send", "1048576", "-recv", "67108864")
	if err == nil {
		fmt.Fprintln(d.out, "  (sent 1 MiB, shut the write side, received 64 MiB; server_recv_sha = sent_sha)")
	}
	return err
}

func (d *demo) closedPort() error {
	_, err := d.sh(d.lab.Client, d.peer, "dial", "-timeout", "3s", "-addr", d.appAddr("4", peer.ClosedPort))
	return err
}

func (d *demo) iperf() error {
	_, err := d.sh(d.lab.Client, "iperf3", "-c", d.lab.Topo.AppV4.Addr().String(), "-p", "5201", "-t", "3", "-f", "g")
	return err
}

func (d *demo) appView() error {
	fmt.Fprintln(d.out, "  the application's log: every client address is the client's own, not the appliance's")
	for _, line := range strings.Split(d.app.Log(), "\n") {
		if strings.HasPrefix(line, "{") {
			fmt.Fprintf(d.out, "      %s\n", line)
		}
	}
	return nil
}

func (d *demo) flowLog() error {
	// Flow lines are written when a flow ends: wait until no new one has
	// come for half a second.
	var flows []lab.FlowLog
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		n := len(flows)
		time.Sleep(500 * time.Millisecond)
		if flows = d.nw.Flows(); len(flows) == n && n > 0 {
			break
		}
	}
	if len(flows) == 0 {
		return errors.New("netward logged no flow")
	}
	idw := len("flow")
	for _, f := range flows {
		idw = max(idw, len(fmt.Sprint(f.ID)))
	}
	fmt.Fprintf(d.out, "  %-*s %-24s %-22s %10s %10s  %s\n", idw, "flow", "client", "server", "bytes up", "bytes down", "end")
	for _, f := range flows {
		end := f.End
		if f.Error != "" {
			end += " (" + f.Error + ")"
		}
		fmt.Fprintf(d.out, "  %-*d %-24s %-22s %10d %10d  %s\n", idw, f.ID, f.Src, f.Dst, f.BytesUp, f.BytesDown, end)
	}
	fmt.Fprintln(d.out, "  (src is the client's own address and port; iperf3 ends its data stream with a reset)")
	return nil
}

func (d *demo) tunProof() error {
	s, err := d.nw.TUNStats(d.ctx)
	if err != nil {
		return err
	}
	delta := s.Sub(d.tunBefore)
	fmt.Fprintf(d.out, "  %s since netward started: %v\n", d.nw.TUN, delta)
	if delta.RxPackets == 0 || delta.TxPackets == 0 {
		return errors.New("no packets crossed the TUN: the kernel forwarded the traffic, not netward")
	}
	fmt.Fprintln(d.out, "  (tx = the kernel steered into the TUN; rx = netward sent out of it)")
	return nil
}

func (d *demo) stop() error {
	if err := d.nw.Terminate(10 * time.Second); err != nil {
		return fmt.Errorf("netward exit: %w", err)
	}
	fmt.Fprintln(d.out, "  netward exited 0:")
	for _, line := range strings.Split(d.nw.Log(), "\n") {
		if strings.Contains(line, `"msg":"netward stop`) {
			d.indent(line)
		}
	}
	after, err := d.lab.Appliance.Snapshot(d.ctx)
	if err != nil {
		return err
	}
	if diff := after.Diff(d.before); diff != "" {
		return fmt.Errorf("the appliance differs from before netward started:\n%s", diff)
	}
	fmt.Fprintln(d.out, "  iptables-save, ip6tables-save, ip rule, ip route show table all, ip link, ip addr, sysctls:")
	fmt.Fprintln(d.out, "  exactly as before netward started")
	return nil
}
