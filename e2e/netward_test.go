package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/config"
	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/e2e/peer"
	"github.com/netward/netward/netstack"
)

// TestNetward is issue 3's acceptance: every check, run through a real
// `netward run` in the appliance, each proving its traffic crossed the TUN;
// then the properties only netward has.
func TestNetward(t *testing.T) {
	d := newLab(t)
	d.nw = labtest.StartNetward(t, d.lab, lab.NetwardOptions{})
	runChecks(t, d, checks)
	t.Run("FlowLog", func(t *testing.T) { checkFlowLog(t, d) })
	t.Run("ApplianceOwnTrafficBypasses", func(t *testing.T) { checkLocalBypass(t, d) })
	t.Run("NoConntrackInvalidDrops", func(t *testing.T) { checkNoInvalidDrops(t, d) })
	t.Run("UpstreamKernelByDefault", func(t *testing.T) { checkUpstreamKernelDefault(t, d) })
}

// checkUpstreamKernelDefault: without --upstream netward runs the kernel
// upstream leg with SYN replay (and writes the TUN from one writer
// goroutine), and has raised its file limit (the lab's is 20,000 or so)
// to hold a socket per flow up to max_flows — or, without
// CAP_SYS_RESOURCE, kept it and said that flows past it take the gVisor leg.
func checkUpstreamKernelDefault(t testing.TB, d *datapath) {
	if os.Getenv(lab.ExtraArgsEnv) != "" {
		t.Skipf("%s is set: not the default configuration", lab.ExtraArgsEnv)
	}
	log := d.nw.Log()
	for _, want := range []string{`"upstream_kernel":true`, `"syn_replay":true`, `"tun_writers":1`} {
		if !strings.Contains(log, want) {
			t.Errorf("netward's log lacks %s:\n%s", want, tailLines(log, 20))
		}
	}
	proc := func(file, re string) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", d.nw.PID(), file))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(re).FindSubmatch(b)
		if m == nil {
			t.Fatalf("no %s in netward's %s:\n%s", re, file, b)
		}
		return string(m[1])
	}
	limit, _ := strconv.Atoi(proc("limits", `(?m)^Max open files\s+(\d+)`))
	capEff, _ := strconv.ParseUint(proc("status", `(?m)^CapEff:\s+([0-9a-f]+)`), 16, 64)
	const capSysResource = 24
	want := config.Default().Limits.MaxFlows + netstack.FileReserve
	switch {
	case capEff&(1<<capSysResource) != 0 && limit < want:
		t.Errorf("netward's file limit is %d, want ≥ %d (max_flows + netstack.FileReserve)", limit, want)
	case capEff&(1<<capSysResource) == 0 && limit < want && !strings.Contains(log, "cannot raise the file limit"):
		t.Errorf("netward kept a file limit of %d < %d (no CAP_SYS_RESOURCE) and did not warn:\n%s", limit, want, tailLines(log, 20))
	}
}

// TestNetwardVariants runs the basic checks on netward's other datapath
// configurations. OffloadOff is the fallback without TUN offloads (one
// packet per read); it also names the steered interfaces explicitly (both
// sides, as the README says), where the other tests use netward's default
// of every interface. A new variant is one more line in the table.
func TestNetwardVariants(t *testing.T) {
	basic := []string{"HTTPv4", "HTTPv6", "SHA100MiBv4", "SHA100MiBv6", "HalfClose"}
	for _, v := range []struct {
		name    string
		opts    func(l *lab.Lab) lab.NetwardOptions
		logged  string // must appear in netward's log: the variant is really on
		checked []string
	}{
		// The gVisor handshake, the client leg in gVisor until the
		// handoff (the default before SYN replay): the TUN variants
		// below take it too, as their packets are gVisor's.
		{"TCPAcceptGVisor", func(l *lab.Lab) lab.NetwardOptions {
			return lab.NetwardOptions{Args: []string{"--tcp-accept", "gvisor"}}
		}, `"syn_replay":false`, append(basic, "Iperf3", "ServerFirst", "ClosedPortRefused", "PortReuse", "Concurrent1000", "Ping")},
		{"OffloadOff", func(l *lab.Lab) lab.NetwardOptions {
			return lab.NetwardOptions{Interfaces: []string{l.ApplianceClientIf, l.ApplianceAppIf}, Args: []string{"--tcp-accept", "gvisor", "--offload=false"}}
		}, `"offload":false`, basic},
		// Each packet written to the TUN by the goroutine that sent it,
		// without the writer queue netward uses by default.
		{"TUNWritersInline", func(l *lab.Lab) lab.NetwardOptions {
			return lab.NetwardOptions{Args: []string{"--tcp-accept", "gvisor", "--tun-writers", "0"}}
		}, `"tun_writers":0`, basic},
		// The other upstream leg: gVisor, out through the TUN.
		{"UpstreamGVisor", func(l *lab.Lab) lab.NetwardOptions {
			return lab.NetwardOptions{Args: []string{"--upstream", "gvisor"}}
		}, `"upstream_kernel":false`, append(basic, "ClosedPortRefused", "PortReuse")},
		{"UpstreamGVisorOffloadOff", func(l *lab.Lab) lab.NetwardOptions {
			return lab.NetwardOptions{Args: []string{"--upstream", "gvisor", "--offload=false"}}
		}, `"upstream_kernel":false`, basic},
		// The kernel client leg: TPROXY to a transparent listener, no
		// TCP through the TUN (TestTCPAcceptKernel has the rest).
		{"TCPAcceptKernel", func(l *lab.Lab) lab.NetwardOptions {
			return lab.NetwardOptions{Args: []string{"--tcp-accept", "kernel"}}
		}, `"tcp_accept_port":20057`, append(basic, "Iperf3", "ServerFirst", "PortReuse", "Concurrent1000", "Ping")},
	} {
		t.Run(v.name, func(t *testing.T) {
			d := newLab(t)
			d.nw = labtest.StartNetward(t, d.lab, v.opts(d.lab))
			if !strings.Contains(d.nw.Log(), v.logged) {
				t.Errorf("netward's log lacks %s:\n%s", v.logged, d.nw.Log())
			}
			var list []check
			for _, c := range checks {
				if slices.Contains(v.checked, c.name) {
					list = append(list, c)
				}
			}
			if len(list) != len(v.checked) {
				t.Fatalf("unknown check names in %q", v.checked)
			}
			runChecks(t, d, list)
		})
	}
}

// checkFlowLog: netward logged one flow line per relayed connection, with
// the client's address as src and the application as dst.
func checkFlowLog(t testing.TB, d *datapath) {
	var out string
	out = labtest.Run(t, d.lab.Client, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{local_port}",
		"http://"+d.appAddr("4", peer.HTTPPort)+"/flowlog")
	port, _ := strconv.Atoi(strings.TrimSpace(out))
	src := netip.AddrPortFrom(d.lab.Topo.ClientV4.Addr(), uint16(port)).String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dst := d.appAddr("4", peer.HTTPPort)
	flows, err := d.nw.WaitFlows(ctx, 1, func(f lab.FlowLog) bool { return f.Src == src && f.Dst == dst })
	if err != nil {
		t.Fatalf("no flow line %s → %s: %v; log tail:\n%s", src, dst, err, tailLines(d.nw.Log(), 10))
	}
	if f := flows[len(flows)-1]; f.BytesUp == 0 || f.BytesDown == 0 || f.ID == 0 {
		t.Errorf("flow line %s: want a flow id and bytes both ways", f.Line)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// checkLocalBypass: connections to the appliance's own addresses, and
// connections the appliance makes itself, are not steered: the TUN's
// counters and netward's flow log do not move, while the same traffic
// between client and application would move them by hundreds of packets.
func checkLocalBypass(t testing.TB, d *datapath) {
	l := d.lab
	labtest.StartPeer(t, l.Appliance)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	flowsBefore := len(d.nw.Flows())
	before, err := d.nw.TUNStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type conn struct {
		from *lab.NS
		to   netip.Addr
	}
	topo := l.Topo
	var conns []conn
	for _, a := range []netip.Prefix{topo.ApplianceClientV4, topo.ApplianceClientV6, topo.ApplianceAppV4, topo.ApplianceAppV6} {
		conns = append(conns, conn{l.Client, a.Addr()}) // to the appliance itself
	}
	for _, a := range []netip.Prefix{topo.AppV4, topo.AppV6, topo.ClientV4, topo.ClientV6} {
		conns = append(conns, conn{l.Appliance, a.Addr()}) // from the appliance itself
	}
	labtest.StartPeer(t, l.Client) // the appliance's connections to the client need a server there
	for _, c := range conns {
		for range 5 {
			var r peer.XferResult
			labtest.RunPeer(t, c.from, &r, "xfer", "-addr", netip.AddrPortFrom(c.to, peer.XferPort).String(), "-send", "65536", "-recv", "65536")
			if r.ServerRecvSHA != r.SentSHA || r.Recv != 65536 {
				t.Fatalf("%s → %v: transfer failed: %+v", c.from.Role, c.to, r)
			}
		}
	}
	after, err := d.nw.TUNStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 40 connections with 128 KiB each would be ≥ 400 packets each way
	// through the TUN. A few packets of tolerance allow for the kernel's own
	// IPv6 housekeeping on the TUN (router/multicast solicitations).
	if delta := after.Sub(before); delta.RxPackets > 3 || delta.TxPackets > 3 {
		t.Errorf("traffic to/from the appliance itself crossed the TUN: %v", delta)
	}
	time.Sleep(200 * time.Millisecond) // flow lines are written at flow end
	if n := len(d.nw.Flows()); n != flowsBefore {
		t.Errorf("netward logged %d flows for traffic to/from the appliance itself:\n%s", n-flowsBefore, tailLines(d.nw.Log(), n-flowsBefore))
	}
}

var invalidRule = regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+DROP\s.*ctstate INVALID`)

// checkNoInvalidDrops: the appliance's INVALID drop rule dropped nothing:
// conntrack did not see netward's two legs as one broken connection.
func checkNoInvalidDrops(t testing.TB, d *datapath) {
	for _, ipt := range []string{"iptables", "ip6tables"} {
		out := labtest.Run(t, d.lab.Appliance, ipt, "-w", "-L", "FORWARD", "-v", "-x", "-n")
		m := invalidRule.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: no INVALID drop rule in FORWARD:\n%s", ipt, out)
		}
		if m[1] != "0" {
			t.Errorf("%s: the INVALID drop rule dropped %s packets during the tests:\n%s", ipt, m[1], out)
		}
	}
}

// netwardTraces are words that name something of netward's in the
// appliance's firewall, rules, routes and links (chains, TUN, table, mark).
func netwardTraces(tun string) []string {
	c := config.Default()
	return []string{"netward", tun, strconv.Itoa(c.Table), fmt.Sprintf("0x%x", c.Mark)}
}

// TestNetwardStopLeavesNothing: after SIGTERM, and after kill -9 followed
// by `netward cleanup`, the appliance is exactly as before netward
// started, and forwarding works again (fail-open).
func TestNetwardStopLeavesNothing(t *testing.T) {
	d := newLab(t)
	l := d.lab
	labtest.RequireTools(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, err := l.Appliance.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hits := before.Grep(netwardTraces(lab.DefaultTUN)...); len(hits) > 0 {
		t.Fatalf("the fresh lab already has netward traces: %q", hits)
	}
	requireClean := func(t *testing.T, when string) {
		t.Helper()
		after, err := l.Appliance.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := after.Diff(before); diff != "" {
			t.Errorf("%s, the appliance differs from before netward started:\n%s", when, diff)
		}
		if hits := after.Grep(netwardTraces(lab.DefaultTUN)...); len(hits) > 0 {
			t.Errorf("%s, netward traces remain:\n%s", when, strings.Join(hits, "\n"))
		}
		d.nw = nil
		checkHTTP(t, d, "4", "") // kernel forwarding again, TUN gone
	}

	t.Run("SIGTERM", func(t *testing.T) {
		d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{})
		checkHTTP(t, d, "4", "")
		if err := d.nw.Terminate(15 * time.Second); err != nil {
			t.Fatalf("netward on SIGTERM: %v; log:\n%s", err, tailLines(d.nw.Log(), 20))
		}
		requireClean(t, "after SIGTERM")
	})
	t.Run("KillThenCleanup", func(t *testing.T) {
		d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{})
		checkHTTP(t, d, "4", "")
		d.nw.Kill()
		left, err := l.Appliance.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(left.Grep("NETWARD")) == 0 {
			t.Fatalf("after kill -9 no NETWARD chain is left, so this test proves nothing about cleanup:\n%s", left.Diff(before))
		}
		out, err := l.Appliance.Run(ctx, labtest.Netward(t), "cleanup", "--tun", lab.DefaultTUN)
		if err != nil {
			t.Fatalf("netward cleanup: %v", err)
		}
		t.Logf("netward cleanup:\n%s", out)
		requireClean(t, "after kill -9 and netward cleanup")
	})
}

// TestNetwardBadStart: `netward run` with a missing interface or a bad
// config value exits non-zero at once with a message naming the problem,
// and leaves the appliance as it was.
func TestNetwardBadStart(t *testing.T) {
	d := newLab(t)
	l := d.lab
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, err := l.Appliance.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	badConfig := filepath.Join(l.Dir, "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("fail_mode: sideways\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts lab.NetwardOptions
		want []string // all must appear in the output
	}{
		{"MissingInterface", lab.NetwardOptions{Interfaces: []string{"nosuch0"}}, []string{"nosuch0"}},
		{"BadConfigValue", lab.NetwardOptions{Args: []string{"--config", badConfig}}, []string{"fail_mode", "sideways", badConfig}},
		{"BadFlagValue", lab.NetwardOptions{Args: []string{"--fail-mode", "half"}}, []string{"fail", "half"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{labtest.Netward(t)}, l.NetwardArgs(tc.opts)...)
			runCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			start := time.Now()
			out, err := l.Appliance.Run(runCtx, args...)
			var re *lab.RunError
			if !errors.As(err, &re) || re.ExitCode() <= 0 {
				t.Fatalf("netward run exited %v (want non-zero) after %v; output:\n%s", err, time.Since(start), out)
			}
			msg := re.Stderr + re.Stdout
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message does not name %q:\n%s", w, msg)
				}
			}
			if strings.Count(msg, "\n") > 15 || strings.Contains(msg, "goroutine ") {
				t.Errorf("message is not a clear error (long or a panic):\n%s", msg)
			}
			t.Logf("exit %d: %s", re.ExitCode(), strings.TrimSpace(msg))
			after, err := l.Appliance.Snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := after.Diff(before); diff != "" {
				t.Errorf("a failed start left changes behind:\n%s", diff)
			}
		})
	}
}
