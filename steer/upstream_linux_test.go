package steer

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// kernelUpstreamConfig is the lab's config with the kernel upstream leg on.
func (l *lab) kernelUpstreamConfig() Config {
	c := l.config()
	c.TransparentMark, c.UpstreamMark = 0x4e58, 0x4e59
	return c
}

// upstreamState is state plus the one global sysctl the kernel upstream
// leg changes.
func (l *lab) upstreamState(o stateOpts) string {
	l.t.Helper()
	return l.state(o) + "== tcp_early_demux = " + l.mustSh(l.applName, "cat", "/proc/sys/net/ipv4/tcp_early_demux")
}

// upstreamTraces are the kernel upstream leg's objects in a state.
func upstreamTraces(state string, c Config) []string {
	var out []string
	for _, line := range strings.Split(state, "\n") {
		for _, n := range []string{
			fmt.Sprintf("%#x", c.TransparentMark),
			fmt.Sprintf("%#x", c.UpstreamMark),
			fmt.Sprintf("lookup %d", c.TransparentTable),
			fmt.Sprintf("table %d", c.TransparentTable),
			"tcp_early_demux = 0",
		} {
			if strings.Contains(line, n) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// TestKernelUpstreamInstallRemove: with TransparentMark set, Install adds
// exactly what Describe lists for the kernel upstream leg, in front of the
// steering chain, and Remove takes all of it away, sysctl included.
func TestKernelUpstreamInstallRemove(t *testing.T) {
	l := newLab(t)
	l.openTUN(l.appliance, labTUN, false)
	cfg := l.kernelUpstreamConfig()
	before := l.upstreamState(stateOpts{tunSysctls: true})
	if !strings.HasSuffix(before, "tcp_early_demux = 1\n") {
		t.Fatalf("a fresh namespace should have tcp_early_demux 1:\n%s", before)
	}

	s := l.mustInstall(cfg)
	installed := s.Installed()
	t.Logf("installed:\n%s", strings.Join(installed, "\n"))
	for _, want := range []string{
		"ip route add local default dev lo table 20056",
		"ip -6 route add local default dev lo table 20056",
		"iptables -t raw -I OUTPUT 1 -j NETWARD_UPSTREAM",
		"ip6tables -t mangle -I PREROUTING 1 -p tcp -j NETWARD_TPROXY",
		"sysctl -w net.ipv4.tcp_early_demux=0   # was 1",
		"ip rule add priority 20054 fwmark 0x4e58/0xffff lookup 20056",
		"ip -6 rule add priority 20054 fwmark 0x4e58/0xffff lookup 20056",
	} {
		if !slices.Contains(installed, want) {
			t.Errorf("Installed() lacks %q", want)
		}
	}
	// The steering rule is still the last thing installed.
	if last := installed[len(installed)-1]; !strings.Contains(last, "priority 20055") {
		t.Errorf("last installed %q; want the steering ip rule", last)
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		pre := strings.Split(strings.TrimSpace(l.mustSh(l.applName, ipt, "-t", "mangle", "-S", "PREROUTING")), "\n")
		if len(pre) < 3 || pre[1] != "-A PREROUTING -p tcp -j NETWARD_TPROXY" || pre[2] != "-A PREROUTING -j NETWARD" {
			t.Errorf("%s mangle PREROUTING: want NETWARD_TPROXY before NETWARD:\n%s", ipt, strings.Join(pre, "\n"))
		}
	}
	got := l.mustSh(l.applName, "iptables", "-t", "raw", "-S", UpstreamChain)
	if !strings.Contains(got, `--comment "netward: net.ipv4.tcp_early_demux was 1"`) {
		t.Errorf("raw %s lacks the sysctl marker:\n%s", UpstreamChain, got)
	}
	if v := l.mustSh(l.applName, "cat", "/proc/sys/net/ipv4/tcp_early_demux"); strings.TrimSpace(v) != "0" {
		t.Errorf("tcp_early_demux = %s after Install; want 0", v)
	}
	for _, fam := range []string{"-4", "-6"} {
		if r := l.mustSh(l.applName, "ip", fam, "route", "show", "table", "20056"); !strings.Contains(r, "local default dev lo") {
			t.Errorf("ip %s route show table 20056 = %q; want the local default route", fam, r)
		}
	}

	if err := l.remove(s); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	after := l.upstreamState(stateOpts{tunSysctls: true})
	requireClean(t, "after Remove", before, after, cfg)
	if tr := upstreamTraces(after, cfg); len(tr) > 0 {
		t.Errorf("after Remove, the kernel upstream leg's objects remain:\n%s", strings.Join(tr, "\n"))
	}
}

// TestKernelUpstreamCleanupAfterCrash: after a crash, Cleanup with the
// defaults (as `netward cleanup` runs, knowing nothing of --upstream)
// removes the kernel upstream leg's objects too and restores
// tcp_early_demux from the marker; a value already 0 before Install is
// left at 0.
func TestKernelUpstreamCleanupAfterCrash(t *testing.T) {
	for _, demux := range []string{"1", "0"} {
		t.Run("early_demux="+demux, func(t *testing.T) {
			l := newLab(t)
			l.mustSh(l.applName, "sysctl", "-qw", "net.ipv4.tcp_early_demux="+demux)
			cfg := l.kernelUpstreamConfig()
			cfg.FailMode = FailClosed // the most objects
			before := l.upstreamState(stateOpts{})
			tun := l.openTUN(l.appliance, labTUN, false)
			l.mustInstall(cfg)
			if err := tun.close(); err != nil { // kill -9
				t.Fatal(err)
			}
			cleanCfg := l.config() // no TransparentMark: what netward cleanup has
			removed, err := l.cleanup(cleanCfg)
			if err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			t.Logf("removed:\n%s", strings.Join(removed, "\n"))
			want := []string{
				"ip rule del priority 20054 fwmark 0x4e58/0xffff lookup 20056",
				"ip -6 rule del priority 20054 fwmark 0x4e58/0xffff lookup 20056",
				"iptables -t mangle -X NETWARD_TPROXY",
				"ip6tables -t raw -D OUTPUT -j NETWARD_UPSTREAM",
				"ip route del local default table 20056",
				"ip -6 route del local default table 20056",
			}
			if demux == "1" {
				want = append(want, "sysctl -w net.ipv4.tcp_early_demux=1")
			}
			for _, w := range want {
				if !containsPrefix(removed, w) {
					t.Errorf("Cleanup did not report %q", w)
				}
			}
			after := l.upstreamState(stateOpts{})
			requireClean(t, "after Cleanup", before, after, cfg)
			if tr := upstreamTraces(after, cfg); len(tr) > 0 && demux == "1" {
				t.Errorf("after Cleanup, the kernel upstream leg's objects remain:\n%s", strings.Join(tr, "\n"))
			}
			if removed, err := l.cleanup(cleanCfg); err != nil || len(removed) != 0 {
				t.Errorf("second Cleanup = %v, %v; want nothing, nil", removed, err)
			}
		})
	}
}
