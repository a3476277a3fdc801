// Package lab builds the netward test lab: three network namespaces in a
// line, client — appliance — application, joined by veth pairs, with IPv4
// and IPv6 from the documentation ranges only:
//
//	client ns                 appliance ns                       application ns
//	198.51.100.2/24 ──veth── 198.51.100.1/24 | 192.0.2.1/24 ──veth── 192.0.2.2/24
//	2001:db8:1::2/64          2001:db8:1::1/64 | 2001:db8:2::1/64     2001:db8:2::2/64
//	(+198.51.100.3..10)       ip_forward on (v4, v6)
//
// The client and the application route everything via the appliance, which
// forwards with the kernel until netward runs in it. The lab is a value
// (Topology) and works both inside `go test` (see package labtest) and in
// ordinary programs (the demo and the benchmark): New builds it, Close tears
// it down, Cleanup removes what killed runs left behind.
//
// Everything is done with the ip(8) and iptables(8) commands inside the
// lab's own namespaces; nothing in the host namespace is ever touched.
package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Prefix starts the name of every namespace and interface the lab creates,
// so Cleanup can find the leftovers of killed runs.
const Prefix = "nw-"

// Topology is the lab's addressing plan. Default returns the one every test
// uses; the fields are exported so tests can name addresses without
// repeating literals.
type Topology struct {
	ClientV4 netip.Prefix // the client's main address (and its network)
	ClientV6 netip.Prefix
	// ClientExtraV4 are more addresses on the client's interface, for tests
	// that need several distinct sources (geo rules, per-source limits).
	ClientExtraV4 []netip.Addr

	ApplianceClientV4 netip.Prefix // the appliance on the client's network
	ApplianceClientV6 netip.Prefix
	ApplianceAppV4    netip.Prefix // the appliance on the application's network
	ApplianceAppV6    netip.Prefix

	AppV4 netip.Prefix // the application server
	AppV6 netip.Prefix
}

// Default is the standard lab: client 198.51.100.2 (+.3..10) and
// 2001:db8:1::2, appliance .1 on both sides, application 192.0.2.2 and
// 2001:db8:2::2.
func Default() Topology {
	extra := make([]netip.Addr, 0, 8)
	for i := 3; i <= 10; i++ {
		extra = append(extra, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
	}
	return Topology{
		ClientV4:          netip.MustParsePrefix("198.51.100.2/24"),
		ClientV6:          netip.MustParsePrefix("2001:db8:1::2/64"),
		ClientExtraV4:     extra,
		ApplianceClientV4: netip.MustParsePrefix("198.51.100.1/24"),
		ApplianceClientV6: netip.MustParsePrefix("2001:db8:1::1/64"),
		ApplianceAppV4:    netip.MustParsePrefix("192.0.2.1/24"),
		ApplianceAppV6:    netip.MustParsePrefix("2001:db8:2::1/64"),
		AppV4:             netip.MustParsePrefix("192.0.2.2/24"),
		AppV6:             netip.MustParsePrefix("2001:db8:2::2/64"),
	}
}

// Options configure New. The zero value builds the Default topology.
type Options struct {
	// Topology is the addressing plan; the zero value means Default().
	Topology Topology
	// Dir holds the logs of the lab's processes. Empty: a new temporary
	// directory, removed by Close unless KeepDir is set.
	Dir string
	// KeepDir keeps a temporary Dir after Close (to read logs of a failure).
	KeepDir bool
	// NoInvalidDrop leaves out the appliance's FORWARD rule
	// `-m conntrack --ctstate INVALID -j DROP`, which real appliances have
	// and which the lab installs by default because steering must survive it.
	NoInvalidDrop bool
	// RPFilter is the appliance's net.ipv4.conf.{all,default}.rp_filter:
	// 0 (the kernel's default in a new namespace) off, 1 strict, 2 loose.
	// Many distributions ship 1 or 2; netward must work with each.
	RPFilter int
	// Logf, if set, receives every command the lab runs to build and tear
	// down the topology, and other progress.
	Logf func(format string, args ...any)
}

// Lab is a built topology. Its fields are read-only.
type Lab struct {
	ID   string // six hex digits, unique per lab
	Topo Topology
	Dir  string // logs of processes started in the lab

	Client, Appliance, App *NS

	// Interface names; every one is ≤ 15 bytes and unique to the lab.
	ClientIf          string // the client's interface
	ApplianceClientIf string // the appliance's interface facing the client
	ApplianceAppIf    string // the appliance's interface facing the application
	AppIf             string // the application's interface

	logf    func(format string, args ...any)
	rmDir   bool
	mu      sync.Mutex
	procs   []*Proc
	closed  bool
	created []string // namespaces created so far, deleted by Close
}

// NS is one of the lab's network namespaces.
type NS struct {
	Name string // the name under /run/netns
	Role string // "client", "appliance" or "app"
	lab  *Lab
}

// New builds a lab. On error everything already created is removed.
func New(opts Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root (network namespaces)")
	}
	if opts.RPFilter < 0 || opts.RPFilter > 2 {
		return nil, fmt.Errorf("lab: RPFilter %d is not 0, 1 or 2", opts.RPFilter)
	}
	l, err := newBase(opts.Topology, opts.Dir, opts.KeepDir, opts.Logf)
	if err != nil {
		return nil, err
	}
	base := Prefix + l.ID // "nw-abcdef"
	l.ClientIf = base + "-c"
	l.ApplianceClientIf = base + "-fc"
	l.ApplianceAppIf = base + "-fa"
	l.AppIf = base + "-a"
	l.Client = &NS{Name: base + "-cli", Role: "client", lab: l}
	l.Appliance = &NS{Name: base + "-fw", Role: "appliance", lab: l}
	l.App = &NS{Name: base + "-app", Role: "app", lab: l}
	if err := l.build(opts); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// newBase makes what every lab has: its random ID, its log directory and
// its (still empty) lists of namespaces and processes, which Close removes.
func newBase(topo Topology, dir string, keepDir bool, logf func(string, ...any)) (*Lab, error) {
	if !topo.ClientV4.IsValid() {
		topo = Default()
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("lab: random id: %w", err)
	}
	id := hex.EncodeToString(b[:])
	l := &Lab{ID: id, Topo: topo, Dir: dir, logf: logf}
	if l.logf == nil {
		l.logf = func(string, ...any) {}
	}
	if l.Dir == "" {
		d, err := os.MkdirTemp("", "netward-lab-"+id+"-")
		if err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
		l.Dir, l.rmDir = d, !keepDir
	} else if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return l, nil
}

// addNS creates a namespace for the lab (deleted by Close) with IPv6 DAD
// and router advertisements off and loopback up.
func (l *Lab) addNS(ctx context.Context, name, role string) (*NS, error) {
	if err := l.host(ctx, "ip", "netns", "add", name); err != nil {
		return nil, err
	}
	l.created = append(l.created, name)
	ns := &NS{Name: name, Role: role, lab: l}
	for _, kv := range []string{
		"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
		"net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
	} {
		if err := ns.run(ctx, "sysctl", "-q", "-w", kv); err != nil {
			return nil, err
		}
	}
	if err := ns.run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return ns, nil
}

func (l *Lab) build(opts Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range []*NS{l.Client, l.Appliance, l.App} {
		if err := l.host(ctx, "ip", "netns", "add", ns.Name); err != nil {
			return err
		}
		l.created = append(l.created, ns.Name)
	}
	// IPv6 DAD is off everywhere (sysctl before any interface exists, plus nodad)
	// so addresses are usable at once rather than "tentative" for ~2 s.
	for _, ns := range []*NS{l.Client, l.Appliance, l.App} {
		for _, kv := range []string{
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
			"net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
		} {
			if err := ns.run(ctx, "sysctl", "-q", "-w", kv); err != nil {
				return err
			}
		}
		if err := ns.run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	t := l.Topo
	// Both ends of each veth are created directly inside their namespaces,
	// so no interface ever appears in the host namespace.
	steps := [][]string{
		{"ip", "link", "add", l.ClientIf, "netns", l.Client.Name, "type", "veth", "peer", "name", l.ApplianceClientIf, "netns", l.Appliance.Name},
		{"ip", "link", "add", l.AppIf, "netns", l.App.Name, "type", "veth", "peer", "name", l.ApplianceAppIf, "netns", l.Appliance.Name},
	}
	for _, s := range steps {
		if err := l.host(ctx, s...); err != nil {
			return err
		}
	}
	type addr struct {
		ns  *NS
		dev string
		p   netip.Prefix
	}
	addrs := []addr{
		{l.Client, l.ClientIf, t.ClientV4}, {l.Client, l.ClientIf, t.ClientV6},
		{l.Appliance, l.ApplianceClientIf, t.ApplianceClientV4}, {l.Appliance, l.ApplianceClientIf, t.ApplianceClientV6},
		{l.Appliance, l.ApplianceAppIf, t.ApplianceAppV4}, {l.Appliance, l.ApplianceAppIf, t.ApplianceAppV6},
		{l.App, l.AppIf, t.AppV4}, {l.App, l.AppIf, t.AppV6},
	}
	for _, a := range t.ClientExtraV4 {
		addrs = append(addrs, addr{l.Client, l.ClientIf, netip.PrefixFrom(a, t.ClientV4.Bits())})
	}
	for _, a := range addrs {
		args := []string{"ip", "addr", "add", a.p.String(), "dev", a.dev}
		if a.p.Addr().Is6() {
			args = append(args, "nodad")
		}
		if err := a.ns.run(ctx, args...); err != nil {
			return err
		}
	}
	for _, s := range []struct {
		ns   *NS
		args []string
	}{
		{l.Client, []string{"ip", "link", "set", l.ClientIf, "up"}},
		{l.Appliance, []string{"ip", "link", "set", l.ApplianceClientIf, "up"}},
		{l.Appliance, []string{"ip", "link", "set", l.ApplianceAppIf, "up"}},
		{l.App, []string{"ip", "link", "set", l.AppIf, "up"}},
		{l.Client, []string{"ip", "route", "add", "default", "via", t.ApplianceClientV4.Addr().String(), "dev", l.ClientIf}},
		{l.Client, []string{"ip", "-6", "route", "add", "default", "via", t.ApplianceClientV6.Addr().String(), "dev", l.ClientIf}},
		{l.App, []string{"ip", "route", "add", "default", "via", t.ApplianceAppV4.Addr().String(), "dev", l.AppIf}},
		{l.App, []string{"ip", "-6", "route", "add", "default", "via", t.ApplianceAppV6.Addr().String(), "dev", l.AppIf}},
		{l.Appliance, []string{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"}},
		{l.Appliance, []string{"sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"}},
		{l.Appliance, []string{"sysctl", "-q", "-w", fmt.Sprintf("net.ipv4.conf.all.rp_filter=%d", opts.RPFilter)}},
		{l.Appliance, []string{"sysctl", "-q", "-w", fmt.Sprintf("net.ipv4.conf.default.rp_filter=%d", opts.RPFilter)}},
	} {
		if err := s.ns.run(ctx, s.args...); err != nil {
			return err
		}
	}
	if err := l.waitLinksReady(ctx); err != nil {
		return err
	}
	if !opts.NoInvalidDrop {
		for _, ipt := range []string{"iptables", "ip6tables"} {
			if err := l.Appliance.run(ctx, ipt, "-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitLinksReady waits until every veth has its carrier (operstate UP)
// and IPv6 is up on it (a link-local address). `ip link set up` returns
// before that: a veth end stays NO-CARRIER for up to a second, and IPv6
// ignores neighbour solicitations on it meanwhile, so the first IPv6
// connection of a fresh lab waited a whole 1 s neighbour retry.
func (l *Lab) waitLinksReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, link := range []struct {
		ns  *NS
		dev string
	}{{l.Client, l.ClientIf}, {l.Appliance, l.ApplianceClientIf}, {l.Appliance, l.ApplianceAppIf}, {l.App, l.AppIf}} {
		for {
			state, err := link.ns.Run(ctx, "ip", "-o", "link", "show", "dev", link.dev)
			if err != nil {
				return err
			}
			ll, err := link.ns.Run(ctx, "ip", "-6", "-o", "addr", "show", "dev", link.dev, "scope", "link")
			if err != nil {
				return err
			}
			if strings.Contains(state, "state UP") && strings.Contains(ll, "fe80::") && !strings.Contains(ll, "tentative") {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("lab: %s in %s not up with IPv6 after 10 s: %s%s", link.dev, link.ns.Name, state, ll)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// Namespaces returns the client, appliance and application namespaces.
func (l *Lab) Namespaces() []*NS { return []*NS{l.Client, l.Appliance, l.App} }

// Close stops every process started in the lab and deletes its namespaces
// (which removes their interfaces, routes and firewall rules with them). It
// is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := l.procs
	l.mu.Unlock()

	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].kill()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range l.created {
		// Processes not started through the lab (e.g. leaked by a tool)
		// would keep the namespace's interfaces alive: kill them first.
		killNamespacePIDs(ctx, name)
		if err := l.host(ctx, "ip", "netns", "del", name); err != nil {
			errs = append(errs, err)
		}
	}
	if l.rmDir {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: %w", err))
		}
	}
	return errors.Join(errs...)
}

// host runs a command in the host namespace; only `ip netns add/del` and
// `ip link add ... netns X` (whose both ends land in lab namespaces) use it.
func (l *Lab) host(ctx context.Context, args ...string) error {
	l.logf("+ %s", strings.Join(args, " "))
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lab: %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Command returns a command that runs args inside the namespace.
func (n *NS) Command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", n.Name}, args...)
	return exec.CommandContext(ctx, "ip", full...)
}

// Run runs args inside the namespace and returns its standard output. A
// failure (non-zero exit) returns an error that includes standard error.
func (n *NS) Run(ctx context.Context, args ...string) (string, error) {
	cmd := n.Command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), &RunError{NS: n.Name, Args: args, Err: err, Stderr: stderr.String(), Stdout: stdout.String()}
	}
	return stdout.String(), nil
}

func (n *NS) run(ctx context.Context, args ...string) error {
	n.lab.logf("+ [%s] %s", n.Role, strings.Join(args, " "))
	_, err := n.Run(ctx, args...)
	return err
}

// RunError is a command that failed inside a namespace.
type RunError struct {
	NS     string
	Args   []string
	Err    error
	Stdout string
	Stderr string
}

func (e *RunError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = strings.TrimSpace(e.Stdout)
	}
	if len(msg) > 2000 {
		msg = msg[:2000] + "…"
	}
	return fmt.Sprintf("lab: [%s] %s: %v: %s", e.NS, strings.Join(e.Args, " "), e.Err, msg)
}

func (e *RunError) Unwrap() error { return e.Err }

// ExitCode is the command's exit status, or -1 if it did not exit normally.
func (e *RunError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
