package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/netward/netward/e2e/lab"
)

// proxyKinds are the -proxy columns: HAProxy (mode tcp, req.ssl_sni) and
// nginx (stream, ssl_preread), each a transparent proxy in the appliance
// (TPROXY in, the client's address out, as the tproxy-relay column) that
// lets TLS to tlsPort through only with the bench's SNI and passes every
// other port through in TCP mode (lab.ProxyConfig).
var proxyKinds = []string{lab.HAProxy, lab.Nginx}

// refusedSNI is the name the proxies' filter check sends, which they must
// refuse.
const refusedSNI = "refused.netward.test"

// parseProxies is the proxy columns -proxies and -proxy ask for, in
// proxyKinds order.
func parseProxies(all bool, list string) ([]string, error) {
	want := map[string]bool{}
	if all {
		for _, k := range proxyKinds {
			want[k] = true
		}
	}
	for _, k := range strings.Split(list, ",") {
		if k = strings.TrimSpace(k); k == "" {
			continue
		}
		if !slices.Contains(proxyKinds, k) {
			return nil, fmt.Errorf("-proxy: unknown proxy %q (want %s)", k, strings.Join(proxyKinds, ", "))
		}
		want[k] = true
	}
	var kinds []string
	for _, k := range proxyKinds {
		if want[k] {
			kinds = append(kinds, k)
		}
	}
	return kinds, nil
}

// proxyPackages are the Debian packages a proxy column needs, by what
// shows that they are installed.
func proxyPackages(kind string) map[string]func() bool {
	bin := func(name string) func() bool {
		return func() bool { _, err := exec.LookPath(name); return err == nil }
	}
	switch kind {
	case lab.HAProxy:
		return map[string]func() bool{"haproxy": bin("haproxy")}
	case lab.Nginx:
		return map[string]func() bool{"nginx": bin("nginx"), "libnginx-mod-stream": func() bool {
			_, err := os.Stat(lab.NginxStreamModule)
			return err == nil
		}}
	}
	return nil
}

// ensureProxies installs the Debian packages the proxy columns need and
// are missing (apt-get, as root), without starting the services they
// ship: the bench runs its own instances, configured in its temporary
// directory, in the lab's appliance only.
func (b *bench) ensureProxies() error {
	var missing []string
	for _, v := range b.variants {
		for pkg, ok := range proxyPackages(v.proxy) {
			if !ok() && !slices.Contains(missing, pkg) {
				missing = append(missing, pkg)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	slices.Sort(missing)
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("proxy columns need %s, and there is no apt-get to install them", strings.Join(missing, " "))
	}
	progress("installing %s", strings.Join(missing, " "))
	// Debian's maintainer scripts start a package's service when it is
	// installed (invoke-rc.d, deb-systemd-invoke); a policy-rc.d that
	// answers 101 forbids it, as container images do. One already there is
	// the administrator's and stays as it is.
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Lstat(policy); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# netward bench: no service starts while it installs packages\nexit 101\n"), 0o755); err != nil {
			return err
		}
		defer os.Remove(policy)
	}
	install := func() ([]byte, error) {
		cmd := exec.CommandContext(b.ctx, "apt-get", append([]string{"install", "-y", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if out, err := install(); err != nil {
		// Perhaps no package lists yet (a fresh image).
		if uout, uerr := exec.CommandContext(b.ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return fmt.Errorf("apt-get install %s: %w\n%s\napt-get update: %v\n%s", strings.Join(missing, " "), err, out, uerr, uout)
		}
		if out, err := install(); err != nil {
			return fmt.Errorf("apt-get install %s: %w\n%s", strings.Join(missing, " "), err, out)
		}
	}
	for _, v := range b.variants {
		for pkg, ok := range proxyPackages(v.proxy) {
			if !ok() {
				return fmt.Errorf("%s: package %s still missing after apt-get install", v.name, pkg)
			}
		}
	}
	return nil
}

// tproxiedColumn is a column whose traffic its own TPROXY and MARK rules
// hand it: the reference relay or a proxy.
type tproxiedColumn interface {
	Bytes(ctx context.Context) (fromClient, fromServer int64, err error)
	Exited() (bool, error)
	Log() string
}

// tproxied is the path's relay or proxy, or nil.
func (p *path) tproxied() tproxiedColumn {
	switch {
	case p.relay != nil:
		return p.relay
	case p.proxy != nil:
		return p.proxy
	}
	return nil
}

// ownPIDs are the processes whose CPU time is the column's own: netward,
// the relay, or the proxy's (nginx's master and workers).
func (p *path) ownPIDs() []int {
	switch {
	case p.nw != nil:
		return []int{p.nw.PID()}
	case p.relay != nil:
		return []int{p.relay.PID()}
	case p.proxy != nil:
		return p.proxy.PIDs()
	}
	return nil
}

// startProxy starts the column's proxy, one thread or worker per core, and
// checks its SNI filter.
func (p *path) startProxy() error {
	var err error
	p.proxy, err = p.l.StartProxy(p.b.ctx, lab.ProxyOptions{Kind: p.v.proxy, TLSPorts: []int{tlsPort},
		AllowSNI: []string{benchSNI}, Threads: runtime.NumCPU()})
	if err != nil {
		return fmt.Errorf("%s: %w", p.col(), err)
	}
	if err := p.checkSNIFilter(); err != nil {
		return errors.Join(err, p.proxy.Stop(10*time.Second))
	}
	return nil
}

// checkSNIFilter checks, IPv4 and IPv6, that the proxy lets an HTTPS
// request with the bench's SNI through and refuses one with another SNI
// before anything reaches the application (its namespace accepted no
// connection), as netward's rules would.
func (p *path) checkSNIFilter() error {
	pid := p.l.app.PID()
	var denied0 int64
	if p.proxy.Config.Kind == lab.HAProxy {
		t, err := p.haproxyTotals()
		if err != nil {
			return err
		}
		denied0 = t.Denied
	}
	for _, fam := range []string{"4", "6"} {
		ctx, cancel := context.WithTimeout(p.b.ctx, 30*time.Second)
		out, err := p.l.Client.Run(ctx, p.b.httpsCurl(p.l, fam, benchSNI, "/", "-w", "%{http_code}")...)
		cancel()
		if err != nil || strings.TrimSpace(out) != "200" {
			return fmt.Errorf("%s: HTTPS with SNI %s, IPv%s: %q, %v: the proxy does not let the bench's SNI through", p.col(), benchSNI, fam, out, err)
		}
		opens, err := tcpCounter(pid, "PassiveOpens")
		if err != nil {
			return err
		}
		ctx, cancel = context.WithTimeout(p.b.ctx, 30*time.Second)
		out, err = p.l.Client.Run(ctx, p.b.httpsCurl(p.l, fam, refusedSNI, "/", "-k", "-w", "%{http_code}")...)
		cancel()
		if err == nil {
			return fmt.Errorf("%s: HTTPS with SNI %s, IPv%s, got through (HTTP %s): the proxy does not filter by SNI", p.col(), refusedSNI, fam, out)
		}
		after, err := tcpCounter(pid, "PassiveOpens")
		if err != nil {
			return err
		}
		if after != opens {
			return fmt.Errorf("%s: HTTPS with SNI %s, IPv%s: refused, but the application accepted %d connections meanwhile", p.col(), refusedSNI, fam, after-opens)
		}
	}
	note := fmt.Sprintf("%s: SNI filter checked at start, IPv4 and IPv6: %s allowed, %s refused with no connection reaching the application",
		p.col(), benchSNI, refusedSNI)
	if p.proxy.Config.Kind == lab.HAProxy {
		t, err := p.haproxyTotals()
		if err != nil {
			return err
		}
		if t.Denied-denied0 != 2 {
			return fmt.Errorf("%s: HAProxy counted %d denied requests for 2 refused flows", p.col(), t.Denied-denied0)
		}
		note += " (HAProxy's dreq counted both)"
	}
	p.b.proxyChecks[p.col()] = note
	return nil
}

// httpsCurl is curl fetching path over HTTPS from the application's TLS
// port with the SNI name (resolved to the application's address in fam),
// the body discarded, then more flags.
func (b *bench) httpsCurl(l *benchLab, fam, name, path string, more ...string) []string {
	ip := l.appIP(fam)
	if fam == "6" {
		ip = "[" + ip + "]"
	}
	args := []string{"curl", "-sS", "-o", "/dev/null", "-m", "20", "--cacert", b.cert,
		"--resolve", fmt.Sprintf("%s:%d:%s", name, tlsPort, ip)}
	args = append(args, more...)
	return append(args, fmt.Sprintf("https://%s:%d%s", name, tlsPort, path))
}

func (p *path) haproxyTotals() (lab.HAProxyFrontend, error) {
	fe, err := p.proxy.HAProxyStats()
	if err != nil {
		return lab.HAProxyFrontend{}, fmt.Errorf("%s: %w", p.col(), err)
	}
	return lab.HAProxyTotals(fe), nil
}

// checkHAProxyBytes checks HAProxy's own counters too: its frontends
// moved at least want bytes one way during the measurement.
func (p *path) checkHAProxyBytes(what string, before lab.HAProxyFrontend, want int64) error {
	after, err := p.haproxyTotals()
	if err != nil {
		return err
	}
	in, out := after.BytesIn-before.BytesIn, after.BytesOut-before.BytesOut
	if max(in, out) < want {
		return fmt.Errorf("%s %s: HAProxy's frontends counted only %d bytes in and %d out, want ≥ %d one way", p.col(), what, in, out, want)
	}
	return nil
}

var nginxProblem = regexp.MustCompile(`\[(warn|error|crit|alert|emerg)\] [0-9#]+: (?:\*[0-9]+ )?([^,(]*)`)

// stopProxy notes the proxy's own counters (HAProxy) or logged problems
// (nginx) and stops it.
func (p *path) stopProxy() error {
	note := fmt.Sprintf("%s, %s:", p.col(), p.what)
	if p.proxy.Config.Kind == lab.HAProxy {
		if t, err := p.haproxyTotals(); err == nil {
			note += fmt.Sprintf(" HAProxy frontends: %d sessions, %d denied, %d bytes in, %d out;", t.Sessions, t.Denied, t.BytesIn, t.BytesOut)
		}
	}
	c := map[string]float64{}
	for _, m := range nginxProblem.FindAllStringSubmatch(p.proxy.Log(), -1) {
		c[m[1]+" "+strconv.Quote(strings.TrimSpace(m[2]))]++
	}
	for _, line := range strings.Split(p.proxy.Log(), "\n") {
		if strings.Contains(line, "[WARNING]") || strings.Contains(line, "[ALERT]") {
			c[strings.TrimSpace(line)]++ // HAProxy's
		}
	}
	if len(c) > 0 {
		note += " logged " + counts(c)
	} else {
		note += " logged no warning or error"
	}
	p.b.health = append(p.b.health, note)
	if err := p.proxy.Stop(10 * time.Second); err != nil {
		return fmt.Errorf("%s: %w", p.col(), err)
	}
	return nil
}

// proxyDescription is the header line naming a proxy column.
func proxyDescription(kind string) string {
	threads := runtime.NumCPU()
	switch kind {
	case lab.HAProxy:
		return fmt.Sprintf("HAProxy %s in the appliance, mode tcp, nbthread %d, transparent (TPROXY in, source 0.0.0.0 usesrc clientip out, splice-auto):\n"+
			"  port %d: tcp-request inspect-delay, accept if req.ssl_sni -i %s, else reject; every other port passed through",
			version("haproxy", "-v"), threads, tlsPort, benchSNI)
	case lab.Nginx:
		return fmt.Sprintf("nginx %s in the appliance, stream module, worker_processes %d, transparent (TPROXY in, proxy_bind $remote_addr transparent out):\n"+
			"  port %d: ssl_preread on, map $ssl_preread_server_name: %s to the destination, else a socket that closes; every other port passed through",
			version("nginx", "-v"), threads, tlsPort, benchSNI)
	}
	return kind
}

var versionRe = regexp.MustCompile(`(?:version:? |nginx/)([0-9][0-9A-Za-z.+~-]*)`)

// version is the version a binary prints.
func version(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	if m := versionRe.FindStringSubmatch(string(out)); m != nil {
		return m[1]
	}
	return "(version unknown)"
}
