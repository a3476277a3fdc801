package lab

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Proxy is HAProxy or nginx in the appliance as a transparent, SNI
// filtering TCP proxy (ProxyConfig), with the rules that hand it the lab's
// TCP flows: the same TPROXY-in, IP_TRANSPARENT-out datapath as the
// reference relay (Relay), with the proxy's own inspection. The bench
// measures them next to netward: what a team that needs nothing but SNI
// filtering would deploy.
type Proxy struct {
	*Proc
	Config ProxyConfig
	lab    *Lab
	rules  tproxyRules
}

// The proxies' listener ports, mark and routing table in the appliance
// namespace (values of their own: netward's steering and the relay use
// others).
const (
	ProxyTLSPort = 9996
	ProxyTCPPort = 9997
	proxyMark    = "0x200000/0x200000"
	proxyTable   = "7902"
)

// ProxyOptions configure StartProxy.
type ProxyOptions struct {
	// Kind is HAProxy or Nginx.
	Kind string
	// Dir holds the configuration and sockets; empty: the lab's Dir.
	Dir string
	// TLSPorts are the destination ports whose flows are judged by SNI;
	// flows to every other port are passed through.
	TLSPorts []int
	// AllowSNI are the names allowed on TLSPorts; any other is refused.
	AllowSNI []string
	// Threads: see ProxyConfig (0: one per core).
	Threads int
}

// proxyRules hand flows to a proxy: TCP to TLSPorts to its TLS listener,
// other TCP from the client to its TCP listener, and the server's answers
// to the proxy's transparent upstream sockets delivered locally by the
// mark. Each is a rule spec after "-t mangle -A|-C|-D PREROUTING".
func (l *Lab) proxyRules(tlsPorts []int) [][]string {
	ports := make([]string, len(tlsPorts))
	for i, p := range tlsPorts {
		ports[i] = strconv.Itoa(p)
	}
	return [][]string{
		{"-i", l.ApplianceClientIf, "-p", "tcp", "-m", "multiport", "--dports", strings.Join(ports, ","),
			"-j", "TPROXY", "--on-port", strconv.Itoa(ProxyTLSPort), "--tproxy-mark", proxyMark},
		{"-i", l.ApplianceClientIf, "-p", "tcp", "-j", "TPROXY",
			"--on-port", strconv.Itoa(ProxyTCPPort), "--tproxy-mark", proxyMark},
		{"-i", l.ApplianceAppIf, "-p", "tcp", "-m", "socket", "--transparent",
			"-j", "MARK", "--set-mark", proxyMark},
	}
}

// StartProxy writes the proxy's configuration, starts it in the appliance
// (configuration, sockets and logs in the lab's or opts' Dir; the system's
// /etc/haproxy, /etc/nginx and services are never used), waits until it
// serves, and installs its rules and routes. On error it leaves nothing
// behind.
//
// nginx's listen directive has no transparent flag, and a TPROXY target
// only hands flows to a listener with IP_TRANSPARENT: StartProxy opens
// nginx's listeners itself, in the appliance, and hands them to nginx the
// way nginx hands them to its own new binary on an upgrade (inherited
// descriptors named in the NGINX environment variable). HAProxy's bind has
// the flag.
func (l *Lab) StartProxy(ctx context.Context, opts ProxyOptions) (*Proxy, error) {
	if len(opts.TLSPorts) == 0 {
		return nil, errors.New("lab: proxy: no TLS ports")
	}
	dir := opts.Dir
	if dir == "" {
		dir = l.Dir
	}
	// The proxies inherit this process's limit (the lab starts them as
	// its children): their caps must fit it.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil, fmt.Errorf("lab: proxy: open-file limit: %w", err)
	}
	cfg := ProxyConfig{Kind: opts.Kind, Dir: dir, TLSPort: ProxyTLSPort, TCPPort: ProxyTCPPort,
		AllowSNI: opts.AllowSNI, Threads: opts.Threads, Files: int(min(lim.Max, 400000))}
	text, err := cfg.Text()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg.Path(), []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("lab: proxy: %w", err)
	}
	if _, err := exec.LookPath(cfg.Kind); err != nil {
		return nil, fmt.Errorf("lab: proxy: %w", err)
	}
	p := &Proxy{Config: cfg, lab: l, rules: tproxyRules{lab: l, specs: l.proxyRules(opts.TLSPorts), mark: proxyMark, table: proxyTable}}
	switch cfg.Kind {
	case HAProxy:
		// -db: foreground, no daemon; the stats socket is in Dir.
		p.Proc, err = l.Appliance.Start("haproxy", "haproxy", "-db", "-f", cfg.Path())
	case Nginx:
		var files []*os.File
		files, err = l.Appliance.listenTransparent(ProxyTLSPort, ProxyTCPPort)
		if err != nil {
			return nil, err
		}
		names := make([]string, len(files))
		for i := range files {
			names[i] = strconv.Itoa(3+i) + ";" // ExtraFiles start at descriptor 3
		}
		p.Proc, err = l.Appliance.StartFiles("nginx", files, []string{"NGINX=" + strings.Join(names, "")},
			append([]string{"nginx"}, cfg.nginxArgs()...)...)
		for _, f := range files {
			f.Close() // nginx has its copies
		}
	}
	if err != nil {
		return nil, fmt.Errorf("lab: proxy: %w", err)
	}
	if err := p.waitReady(ctx); err != nil {
		return nil, errors.Join(err, p.Stop(5*time.Second))
	}
	if err := p.rules.install(ctx); err != nil {
		return nil, errors.Join(err, p.Stop(5*time.Second))
	}
	return p, nil
}

// workers is how many worker processes (nginx) the proxy runs.
func (c ProxyConfig) workers() int {
	if c.Kind != Nginx {
		return 0
	}
	if c.Threads > 0 {
		return c.Threads
	}
	return runtime.NumCPU()
}

// waitReady waits until the proxy listens on both ports (HAProxy; its
// stats socket answers) or has started its workers (nginx, whose
// listeners were open before it started).
func (p *Proxy) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("lab: %s exited (%v); log:\n%s", p.Config.Kind, err, tail(p.Log(), 4000))
		}
		ready := false
		switch p.Config.Kind {
		case HAProxy:
			_, err := p.HAProxyStats()
			ready = err == nil
			for _, port := range []int{ProxyTLSPort, ProxyTCPPort} {
				out, err := p.lab.Appliance.Run(ctx, "ss", "-Hltn", "sport = :"+strconv.Itoa(port))
				ready = ready && err == nil && strings.Count(out, "\n") >= 2 // IPv4 and IPv6
			}
		case Nginx:
			ready = len(p.PIDs()) >= 1+p.Config.workers()
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: %s not ready: %w; log:\n%s", p.Config.Kind, ctx.Err(), tail(p.Log(), 4000))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PIDs are the proxy's processes: HAProxy's one (its threads are in it),
// or nginx's master and its workers.
func (p *Proxy) PIDs() []int {
	pids := []int{p.PID()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.PID(), p.PID()))
	if err != nil {
		return pids
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Stop stops the proxy and removes its rules and routes, so the appliance
// forwards as before.
func (p *Proxy) Stop(grace time.Duration) error {
	err := p.rules.remove()
	if p.Proc != nil {
		if serr := p.Proc.Stop(grace); serr != nil && !diedOf(serr, syscall.SIGTERM) {
			err = errors.Join(err, fmt.Errorf("lab: %s: %w\n%s", p.Config.Kind, serr, tail(p.Log(), 4000)))
		}
	}
	return err
}

// diedOf says whether err is the exit of a process killed by sig: HAProxy
// in the foreground (-db) stops on SIGTERM by dying of it.
func diedOf(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// Bytes are the bytes the proxy's rules have handed it so far, IPv4 and
// IPv6 together: from the client (TPROXY, both listeners) and from the
// server (MARK). They prove that traffic crossed the proxy rather than
// kernel forwarding.
func (p *Proxy) Bytes(ctx context.Context) (fromClient, fromServer int64, err error) {
	return p.rules.bytes(ctx)
}

// HAProxyFrontend is one frontend's counters in HAProxy's `show stat`.
type HAProxyFrontend struct {
	Sessions int64 // stot: connections accepted
	BytesIn  int64 // bin: from clients
	BytesOut int64 // bout: to clients
	Denied   int64 // dreq: refused by a tcp-request rule
}

// HAProxyStats reads the frontends' counters from HAProxy's stats socket,
// by frontend name.
func (p *Proxy) HAProxyStats() (map[string]HAProxyFrontend, error) {
	if p.Config.Kind != HAProxy {
		return nil, fmt.Errorf("lab: %s has no HAProxy stats", p.Config.Kind)
	}
	c, err := net.DialTimeout("unix", p.Config.StatsSocket(), 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("lab: haproxy stats: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, fmt.Errorf("lab: haproxy stats: %w", err)
	}
	out, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		return nil, fmt.Errorf("lab: haproxy stats: %w", err)
	}
	return ParseHAProxyStats(string(out))
}

// ParseHAProxyStats reads the FRONTEND rows of `show stat` CSV output.
func ParseHAProxyStats(out string) (map[string]HAProxyFrontend, error) {
	out = strings.TrimPrefix(strings.TrimLeft(out, " \n"), "# ")
	r := csv.NewReader(strings.NewReader(out))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil || len(recs) < 1 {
		return nil, fmt.Errorf("lab: haproxy show stat: %v: %q", err, tail(out, 500))
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, h := range []string{"pxname", "svname", "stot", "bin", "bout", "dreq"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("lab: haproxy show stat: no column %s in %q", h, recs[0])
		}
	}
	num := func(rec []string, h string) int64 {
		if col[h] >= len(rec) {
			return 0
		}
		n, _ := strconv.ParseInt(rec[col[h]], 10, 64) // empty: not counted
		return n
	}
	fe := map[string]HAProxyFrontend{}
	for _, rec := range recs[1:] {
		if len(rec) <= col["svname"] || rec[col["svname"]] != "FRONTEND" {
			continue
		}
		fe[rec[col["pxname"]]] = HAProxyFrontend{Sessions: num(rec, "stot"), BytesIn: num(rec, "bin"),
			BytesOut: num(rec, "bout"), Denied: num(rec, "dreq")}
	}
	return fe, nil
}

// HAProxyTotals sums the counters of the generated configuration's two
// frontends.
func HAProxyTotals(fe map[string]HAProxyFrontend) HAProxyFrontend {
	var t HAProxyFrontend
	for _, name := range []string{proxyTLSFrontend, proxyTCPFrontend} {
		f := fe[name]
		t.Sessions += f.Sessions
		t.BytesIn += f.BytesIn
		t.BytesOut += f.BytesOut
		t.Denied += f.Denied
	}
	return t
}

// listenTransparent opens TCP listeners with IP_TRANSPARENT in the
// namespace, on 0.0.0.0:port and [::]:port (IPV6_V6ONLY) for each port,
// in that order, and returns their descriptors (close-on-exec: a child
// gets them as ExtraFiles only).
func (n *NS) listenTransparent(ports ...int) ([]*os.File, error) {
	var files []*os.File
	err := n.do(func() error {
		for _, port := range ports {
			for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
				f, err := listenTransparentFD(fam, port)
				if err != nil {
					return err
				}
				files = append(files, f)
			}
		}
		return nil
	})
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, fmt.Errorf("lab: transparent listener in %s: %w", n.Name, err)
	}
	return files, nil
}

func listenTransparentFD(fam, port int) (*os.File, error) {
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: port}
	opts := [][3]int{{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1}, {unix.SOL_IP, unix.IP_TRANSPARENT, 1}}
	if fam == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Port: port}
		opts = [][3]int{{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1}, {unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1},
			{unix.SOL_IPV6, unix.IPV6_V6ONLY, 1}}
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen port %d: %w", port, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("transparent-listener-%d-%d", fam, port)), nil
}

// do runs f on an OS thread switched into the namespace: a socket belongs
// to the namespace of the thread that created it, for its whole life. f
// runs on its own goroutine; if the thread cannot be switched back, it
// stays locked and ends with that goroutine, so no other code ever runs in
// the wrong namespace.
func (n *NS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(n.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err) // tainted thread: dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// tproxyRules are TPROXY and MARK rules in the appliance's mangle
// PREROUTING (IPv4 and IPv6) with the ip rule and local route that deliver
// marked packets to local sockets.
type tproxyRules struct {
	lab   *Lab
	specs [][]string // after "-t mangle -A|-C|-D PREROUTING"
	mark  string
	table string
}

func (r tproxyRules) install(ctx context.Context) error {
	a := r.lab.Appliance
	for _, tool := range relayIPTables {
		for _, spec := range r.specs {
			if err := a.run(ctx, append([]string{tool, "-w", "-t", "mangle", "-A", "PREROUTING"}, spec...)...); err != nil {
				return errors.Join(err, r.remove())
			}
		}
	}
	for _, fam := range []struct{ flag, all string }{{"-4", "0.0.0.0/0"}, {"-6", "::/0"}} {
		if err := a.run(ctx, "ip", fam.flag, "rule", "add", "fwmark", r.mark, "lookup", r.table); err != nil {
			return errors.Join(err, r.remove())
		}
		if err := a.run(ctx, "ip", fam.flag, "route", "add", "local", fam.all, "dev", "lo", "table", r.table); err != nil {
			return errors.Join(err, r.remove())
		}
	}
	return nil
}

// remove removes whatever of the rules and routes is there.
func (r tproxyRules) remove() error {
	// Runs also when the caller's context is done (an interrupted bench).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := r.lab.Appliance
	var errs []error
	for _, tool := range relayIPTables {
		for _, spec := range r.specs {
			args := append([]string{tool, "-w", "-t", "mangle", "-C", "PREROUTING"}, spec...)
			if a.run(ctx, args...) != nil {
				continue // not installed
			}
			args[4] = "-D"
			if err := a.run(ctx, args...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		if out, err := a.Run(ctx, "ip", fam, "route", "show", "table", r.table); err == nil && strings.TrimSpace(out) != "" {
			if err := a.run(ctx, "ip", fam, "route", "flush", "table", r.table); err != nil {
				errs = append(errs, err)
			}
		}
		for range 10 {
			out, err := a.Run(ctx, "ip", fam, "rule", "show", "fwmark", r.mark)
			if err != nil || strings.TrimSpace(out) == "" {
				break
			}
			if err := a.run(ctx, "ip", fam, "rule", "del", "fwmark", r.mark, "lookup", r.table); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// bytes sums the TPROXY and MARK rules' byte counters, IPv4 and IPv6.
func (r tproxyRules) bytes(ctx context.Context) (tproxy, mark int64, err error) {
	for _, tool := range relayIPTables {
		out, err := r.lab.Appliance.Run(ctx, tool, "-w", "-t", "mangle", "-n", "-v", "-x", "-L", "PREROUTING")
		if err != nil {
			return 0, 0, err
		}
		t, m := RelayCounters(out)
		tproxy, mark = tproxy+t, mark+m
	}
	return tproxy, mark, nil
}
