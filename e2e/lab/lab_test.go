package lab_test

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
)

func TestMain(m *testing.M) { os.Exit(labtest.Main(m)) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// TestTopology checks the lab is built as documented: names, addresses
// (usable at once: no tentative IPv6), routes, forwarding and the INVALID
// drop rule.
func TestTopology(t *testing.T) {
	l := labtest.New(t, lab.Options{})
	c := ctx(t)
	names := regexp.MustCompile(`^nw-[0-9a-f]{6}-`)
	for _, n := range []string{l.Client.Name, l.Appliance.Name, l.App.Name, l.ClientIf, l.ApplianceClientIf, l.ApplianceAppIf, l.AppIf} {
		if !names.MatchString(n) {
			t.Errorf("name %q lacks the lab prefix", n)
		}
	}
	for _, n := range []string{l.ClientIf, l.ApplianceClientIf, l.ApplianceAppIf, l.AppIf} {
		if len(n) > 15 {
			t.Errorf("interface name %q is longer than 15 bytes", n)
		}
	}
	topo := l.Topo
	want := map[*lab.NS][]string{
		l.Client:    {topo.ClientV4.String(), topo.ClientV6.String(), "198.51.100.3/24", "198.51.100.10/24"},
		l.Appliance: {topo.ApplianceClientV4.String(), topo.ApplianceClientV6.String(), topo.ApplianceAppV4.String(), topo.ApplianceAppV6.String()},
		l.App:       {topo.AppV4.String(), topo.AppV6.String()},
	}
	for ns, addrs := range want {
		out := labtest.Run(t, ns, "ip", "addr", "show")
		for _, a := range addrs {
			if !strings.Contains(out, "inet") || !strings.Contains(out, " "+a+" ") {
				t.Errorf("%s lacks address %s:\n%s", ns.Role, a, out)
			}
		}
		if strings.Contains(out, "tentative") {
			t.Errorf("%s has tentative (DAD) addresses:\n%s", ns.Role, out)
		}
	}
	for _, key := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if v, err := l.Appliance.Sysctl(c, key); err != nil || v != "1" {
			t.Errorf("appliance %s = %q, %v; want 1", key, v, err)
		}
	}
	for _, ns := range []*lab.NS{l.Client, l.App} {
		for _, fam := range []string{"-4", "-6"} {
			if out := labtest.Run(t, ns, "ip", fam, "route", "show", "default"); !strings.Contains(out, "via") {
				t.Errorf("%s has no %s default route: %q", ns.Role, fam, out)
			}
		}
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out := labtest.Run(t, l.Appliance, save, "-t", "filter")
		if !strings.Contains(out, "-A FORWARD -m conntrack --ctstate INVALID -j DROP") {
			t.Errorf("%s in the appliance lacks the INVALID drop rule:\n%s", save, out)
		}
	}
}

// TestFreshLabIPv6 pings across the lab right after New returns: each
// leg answers its first packet at once, over IPv6 too (before New waited
// for the veths' carrier, the first neighbour solicitation went unanswered
// and the first IPv6 connection took a 1 s retry).
func TestFreshLabIPv6(t *testing.T) {
	l := labtest.New(t, lab.Options{})
	for _, p := range []struct {
		ns *lab.NS
		to string
	}{
		{l.Client, l.Topo.ApplianceClientV6.Addr().String()},
		{l.App, l.Topo.ApplianceAppV6.Addr().String()},
		{l.Client, l.Topo.AppV6.Addr().String()},
	} {
		start := time.Now()
		labtest.Run(t, p.ns, "ping", "-6", "-c", "1", "-W", "3", p.to)
		if d := time.Since(start); d > 800*time.Millisecond {
			t.Errorf("%s: first ping to %s took %v, want < 800ms (no 1 s neighbour retry)", p.ns.Role, p.to, d)
		}
	}
}

// TestOptions checks the options that change the appliance: no INVALID
// rule, and the rp_filter value.
func TestOptions(t *testing.T) {
	l := labtest.New(t, lab.Options{NoInvalidDrop: true, RPFilter: 2})
	if out := labtest.Run(t, l.Appliance, "iptables-save", "-t", "filter"); strings.Contains(out, "INVALID") {
		t.Errorf("INVALID rule present with NoInvalidDrop:\n%s", out)
	}
	for _, key := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
		if v, err := l.Appliance.Sysctl(ctx(t), key); err != nil || v != "2" {
			t.Errorf("%s = %q, %v; want 2", key, v, err)
		}
	}
	if _, err := lab.New(lab.Options{RPFilter: 3}); err == nil {
		t.Error("RPFilter 3 accepted")
	}
}

// TestCloseRemovesEverything checks Close kills the lab's processes and
// deletes its namespaces, and that a second Close is harmless.
func TestCloseRemovesEverything(t *testing.T) {
	labtest.RequireRoot(t)
	l, err := lab.New(lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.App.Start("sleeper", "sleep", "600")
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	dir := l.Dir
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if exited, _ := p.Exited(); !exited {
		t.Error("process still running after Close")
	}
	out, err := (&nsList{}).list()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range l.Namespaces() {
		if strings.Contains(out, ns.Name) {
			t.Errorf("namespace %s still exists after Close", ns.Name)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary log dir %s not removed: %v", dir, err)
	}
}

type nsList struct{}

func (nsList) list() (string, error) {
	b, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	var names []string
	for _, e := range b {
		names = append(names, e.Name())
	}
	return strings.Join(names, "\n"), nil
}

// TestProcLogAndStop checks background processes: output captured, log
// matching, exit status, and SIGTERM handling.
func TestProcLogAndStop(t *testing.T) {
	l := labtest.New(t, lab.Options{})
	c := ctx(t)
	p, err := l.Client.Start("echoer", "sh", "-c", "echo hello from $(ip -o -4 addr show scope global | head -1 | cut -d' ' -f2); exec sleep 600")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitLog(c, regexp.MustCompile(`hello from `+regexp.QuoteMeta(l.ClientIf))); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(5 * time.Second); err == nil {
		t.Error("sleep killed by SIGTERM reported success")
	}
	q, err := l.Client.Start("fails", "sh", "-c", "echo bye; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitLog(c, regexp.MustCompile(`never printed`)); err == nil || !strings.Contains(err.Error(), "bye") {
		t.Errorf("WaitLog on an exited process: %v; want an error with its log", err)
	}
}

// TestLinkStatsAndSnapshot checks the counters move with traffic and a
// snapshot sees (and diffs) a change.
func TestLinkStatsAndSnapshot(t *testing.T) {
	l := labtest.New(t, lab.Options{})
	labtest.RequireTools(t, "ping")
	c := ctx(t)
	before, err := l.Appliance.LinkStats(c, l.ApplianceClientIf)
	if err != nil {
		t.Fatal(err)
	}
	labtest.Run(t, l.Client, "ping", "-c", "3", "-i", "0.05", "-W", "2", l.Topo.AppV4.Addr().String())
	after, err := l.Appliance.LinkStats(c, l.ApplianceClientIf)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(before); d.RxPackets < 3 || d.TxPackets < 3 {
		t.Errorf("appliance client-side counters moved by %v for 3 pings", d)
	}
	if ok, err := l.Appliance.HasLink(c, "nosuch0"); ok || err != nil {
		t.Errorf("HasLink(nosuch0) = %v, %v", ok, err)
	}
	s1, err := l.Appliance.Snapshot(c)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := l.Appliance.Snapshot(c)
	if d := s2.Diff(s1); d != "" {
		t.Fatalf("two snapshots of an idle namespace differ:\n%s", d)
	}
	labtest.Run(t, l.Appliance, "iptables", "-w", "-t", "mangle", "-N", "NETWARD_TEST")
	labtest.Run(t, l.Appliance, "ip", "rule", "add", "fwmark", "0x99", "lookup", "99")
	s3, _ := l.Appliance.Snapshot(c)
	d := s3.Diff(s1)
	if !strings.Contains(d, "+ :NETWARD_TEST") || !strings.Contains(d, "lookup 99") {
		t.Errorf("diff misses the added chain or rule:\n%s", d)
	}
	if g := s3.Grep("netward_test"); len(g) != 1 {
		t.Errorf("Grep = %q, want the one chain line", g)
	}
}
