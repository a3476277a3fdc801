package e2e

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
)

// TestUpstreamKernel: `netward run --upstream kernel` on a lab with no
// rules added by hand relays IPv4 and IPv6 with the client's own address,
// really through its transparent sockets, logs the flows, and leaves the
// appliance as it found it after SIGTERM, and after kill -9 and
// `netward cleanup` (tcp_early_demux included). The client leg is the
// default's: SYN replay to the transparent listener.
func TestUpstreamKernel(t *testing.T) { testUpstreamKernel(t, "--upstream", "kernel") }

// TestUpstreamKernelGVisorAccept is TestUpstreamKernel with gVisor
// answering the handshake and --handoff-http: these checks are also the
// end-to-end test of HTTP flows handed off to the kernel after their first
// request.
func TestUpstreamKernelGVisorAccept(t *testing.T) {
	testUpstreamKernel(t, "--upstream", "kernel", "--tcp-accept", "gvisor", "--handoff-http")
}

func testUpstreamKernel(t *testing.T, upstreamKernelArgs ...string) {
	d := newLab(t)
	l := d.lab
	labtest.RequireTools(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before, err := l.Appliance.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	demuxBefore := earlyDemux(t, d)
	requireClean := func(t *testing.T, when string) {
		t.Helper()
		after, err := l.Appliance.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := after.Diff(before); diff != "" {
			t.Errorf("%s, the appliance differs from before netward started:\n%s", when, diff)
		}
		if hits := after.Grep(append(netwardTraces(lab.DefaultTUN), "20056", "20057", "0x4e58", "0x4e59")...); len(hits) > 0 {
			t.Errorf("%s, netward traces remain:\n%s", when, strings.Join(hits, "\n"))
		}
		if got := earlyDemux(t, d); got != demuxBefore {
			t.Errorf("%s, net.ipv4.tcp_early_demux = %s; was %s before netward started", when, got, demuxBefore)
		}
	}

	t.Run("SIGTERM", func(t *testing.T) {
		d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: upstreamKernelArgs})
		if !strings.Contains(d.nw.Log(), `"upstream_kernel":true`) {
			t.Fatalf("netward's log lacks \"upstream_kernel\":true:\n%s", d.nw.Log())
		}
		if got := earlyDemux(t, d); got != "0" {
			t.Errorf("while netward runs, net.ipv4.tcp_early_demux = %s; want 0", got)
		}
		tproxyBefore := tproxyPackets(t, d)
		runChecks(t, d, []check{
			{"HTTPv4", []string{"curl"}, func(t testing.TB, d *datapath) { checkHTTP(t, d, "4", "") }},
			{"HTTPv6", []string{"curl"}, func(t testing.TB, d *datapath) { checkHTTP(t, d, "6", "") }},
			{"SHA16MiBv4", nil, func(t testing.TB, d *datapath) { checkXfer(t, d, "4", 16<<20, 16<<20) }},
			{"SHA16MiBv6", nil, func(t testing.TB, d *datapath) { checkXfer(t, d, "6", 16<<20, 16<<20) }},
			{"ClosedPortRefused", nil, checkClosedPort},
		})
		t.Run("FlowLog", func(t *testing.T) { checkFlowLog(t, d) })
		t.Run("NoConntrackInvalidDrops", func(t *testing.T) { checkNoInvalidDrops(t, d) })
		// The server's answers went to netward's transparent sockets (the
		// kernel upstream leg), not back through the TUN to gVisor.
		for fam, n := range tproxyPackets(t, d) {
			if n <= tproxyBefore[fam] {
				t.Errorf("%s: NETWARD_TPROXY matched no packet: the upstream leg was not a transparent kernel socket", fam)
			}
		}
		if err := d.nw.Terminate(15 * time.Second); err != nil {
			t.Fatalf("netward on SIGTERM: %v; log:\n%s", err, tailLines(d.nw.Log(), 20))
		}
		requireClean(t, "after SIGTERM")
		d.nw = nil
		checkHTTP(t, d, "4", "") // kernel forwarding again, TUN gone
	})
	t.Run("KillThenCleanup", func(t *testing.T) {
		d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: upstreamKernelArgs})
		checkHTTP(t, d, "4", "")
		d.nw.Kill()
		if got := earlyDemux(t, d); got != "0" {
			t.Fatalf("after kill -9, net.ipv4.tcp_early_demux = %s; want the 0 netward set, or this test proves nothing", got)
		}
		out, err := l.Appliance.Run(ctx, labtest.Netward(t), "cleanup", "--tun", lab.DefaultTUN)
		if err != nil {
			t.Fatalf("netward cleanup: %v", err)
		}
		t.Logf("netward cleanup:\n%s", out)
		for _, want := range []string{"NETWARD_TPROXY", "NETWARD_UPSTREAM", "lookup 20056", "tcp_early_demux"} {
			if !strings.Contains(out, want) {
				t.Errorf("netward cleanup removed nothing with %q", want)
			}
		}
		requireClean(t, "after kill -9 and netward cleanup")
		d.nw = nil
		checkHTTP(t, d, "4", "")
	})
}

// earlyDemux is the appliance's net.ipv4.tcp_early_demux.
func earlyDemux(t testing.TB, d *datapath) string {
	t.Helper()
	return strings.TrimSpace(labtest.Run(t, d.lab.Appliance, "sysctl", "-n", "net.ipv4.tcp_early_demux"))
}

var firstCounter = regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+MARK\s`)

// tproxyPackets reads how many packets NETWARD_TPROXY marked as answers
// to a transparent socket, per iptables command.
func tproxyPackets(t testing.TB, d *datapath) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		out := labtest.Run(t, d.lab.Appliance, ipt, "-w", "-t", "mangle", "-L", "NETWARD_TPROXY", "-v", "-x", "-n")
		m := firstCounter.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: no MARK rule in NETWARD_TPROXY:\n%s", ipt, out)
		}
		n[ipt], _ = strconv.Atoi(m[1])
	}
	return n
}
