package e2e

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/e2e/peer"
)

func TestMain(m *testing.M) { os.Exit(labtest.Main(m)) }

// datapath is a lab with its servers running and one forwarding path under
// test: the kernel (nw == nil) or netward.
type datapath struct {
	lab  *lab.Lab
	nw   *lab.Netward
	app  *lab.Proc // nwpeer serve in the application namespace
	perf *lab.Proc // iperf3 -s in the application namespace
}

// newLab builds a lab with the application's servers running. The
// appliance has strict rp_filter, the hardest case for a TUN datapath
// (datapath notes) and the default of several distributions.
func newLab(t *testing.T) *datapath {
	t.Helper()
	l := labtest.New(t, lab.Options{RPFilter: 1})
	d := &datapath{lab: l, app: labtest.StartPeer(t, l.App)}
	return d
}

func (d *datapath) via() string {
	if d.nw == nil {
		return "kernel forwarding"
	}
	return "netward"
}

// appAddr is the application's address:port for the family ("4" or "6").
func (d *datapath) appAddr(fam string, port int) string {
	a := d.lab.Topo.AppV4.Addr()
	if fam == "6" {
		a = d.lab.Topo.AppV6.Addr()
	}
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// crossing runs f and fails the test unless the traffic f made took the
// path under test, at least minPkts packets each way: through netward's
// TUN, or, for the kernel path, across the appliance without any TUN (a
// silently lost steering route would make the kernel forward "netward's"
// traffic, so every netward check proves the packets crossed the TUN).
func (d *datapath) crossing(t testing.TB, minPkts uint64, f func()) {
	t.Helper()
	// No deadline: f may run long (iperf3); each read is quick.
	ctx := context.Background()
	dev, ns := d.lab.ApplianceClientIf, d.lab.Appliance
	if d.nw != nil {
		dev = d.nw.TUN
	} else if ok, err := ns.HasLink(ctx, lab.DefaultTUN); err != nil || ok {
		t.Fatalf("kernel path: TUN %s exists in the appliance (%v)", lab.DefaultTUN, err)
	}
	before, err := ns.LinkStats(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	var handoffsBefore, relayedBefore, acceptedBefore float64
	counted := d.nw != nil && d.nw.AdminSocket != ""
	if counted {
		handoffsBefore, relayedBefore, acceptedBefore = d.handoffCounters(t)
	}
	f()
	after, err := ns.LinkStats(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	delta := after.Sub(before)
	if counted && (delta.RxPackets < minPkts || delta.TxPackets < minPkts) {
		// A flow handed off to the kernel after its verdict leaves the
		// TUN after its handshake: netward's own counters, which only
		// flows it relays move, must show it.
		handoffs, relayed, accepted := d.handoffCounters(t)
		if handoffs > handoffsBefore && relayed > relayedBefore && delta.RxPackets > 0 && delta.TxPackets > 0 {
			t.Logf("netward %s: %v, then %v handoffs, %.0f bytes relayed in the kernel", dev, delta, handoffs-handoffsBefore, relayed-relayedBefore)
			return
		}
		// A flow the kernel accepted for netward (--tcp-accept kernel)
		// never crosses the TUN at all.
		if accepted > acceptedBefore && relayed > relayedBefore {
			t.Logf("netward %s: %v; %v connections accepted in the kernel, %.0f bytes relayed", dev, delta, accepted-acceptedBefore, relayed-relayedBefore)
			return
		}
	}
	if delta.RxPackets < minPkts || delta.TxPackets < minPkts {
		t.Errorf("traffic did not cross %s (%s): %s moved %v, want ≥ %d packets each way", d.via(), dev, dev, delta, minPkts)
	} else {
		t.Logf("%s %s: %v", d.via(), dev, delta)
	}
}

// handoffCounters are netward's netward_handoff_total{result="ok"},
// netward_bytes_total (both directions) and netward_tcp_accepted_total.
func (d *datapath) handoffCounters(t testing.TB) (handoffs, relayed, accepted float64) {
	t.Helper()
	m := labtest.Run(t, d.lab.Appliance, "curl", "-s", "--unix-socket", d.nw.AdminSocket, "http://netward/metrics")
	return metricValue(m, `netward_handoff_total{result="ok"}`),
		metricValue(m, `netward_bytes_total{direction="toserver"}`) + metricValue(m, `netward_bytes_total{direction="toclient"}`),
		metricValue(m, "netward_tcp_accepted_total")
}

// check is one end-to-end property, run on every datapath.
type check struct {
	name  string
	tools []string
	run   func(t testing.TB, d *datapath)
}

// iperfSeconds is the iperf3 run time per datapath: 10 s through netward
// (issue 3), 3 s for the kernel path, which only proves the lab.
func iperfSeconds(d *datapath) int {
	if d.nw == nil {
		return 3
	}
	return 10
}

var checks = []check{
	{"HTTPv4", []string{"curl"}, func(t testing.TB, d *datapath) { checkHTTP(t, d, "4", "") }},
	{"HTTPv6", []string{"curl"}, func(t testing.TB, d *datapath) { checkHTTP(t, d, "6", "") }},
	{"HTTPExtraSource", []string{"curl"}, func(t testing.TB, d *datapath) {
		checkHTTP(t, d, "4", d.lab.Topo.ClientExtraV4[4].String())
	}},
	{"SHA100MiBv4", nil, func(t testing.TB, d *datapath) { checkXfer(t, d, "4", 100<<20, 100<<20) }},
	{"SHA100MiBv6", nil, func(t testing.TB, d *datapath) { checkXfer(t, d, "6", 100<<20, 100<<20) }},
	{"Iperf3", []string{"iperf3"}, checkIperf},
	{"ClosedPortRefused", nil, checkClosedPort},
	{"HalfClose", nil, func(t testing.TB, d *datapath) { checkXfer(t, d, "4", 64<<10, 8<<20) }},
	{"ServerFirst", nil, checkBanner},
	{"PortReuse", nil, checkPortReuse},
	{"Concurrent1000", nil, checkConcurrent},
	{"Ping", []string{"ping"}, checkPing},
}

func runChecks(t *testing.T, d *datapath, list []check) {
	for _, c := range list {
		t.Run(c.name, func(t *testing.T) {
			labtest.RequireTools(t, c.tools...)
			c.run(t, d)
		})
	}
}

// checkHTTP: curl gets 200 from the application, which saw the client's
// own address and port (not the appliance's). src picks a client address.
func checkHTTP(t testing.TB, d *datapath, fam, src string) {
	want := d.lab.Topo.ClientV4.Addr()
	if fam == "6" {
		want = d.lab.Topo.ClientV6.Addr()
	}
	args := []string{"curl", "-sS", "-" + fam, "--max-time", "10", "-o", "-", "-w", "\n%{http_code} %{local_port}",
		"http://" + d.appAddr(fam, peer.HTTPPort) + "/"}
	if src != "" {
		want = netip.MustParseAddr(src)
		args = append(args[:len(args)-1], "--interface", src, args[len(args)-1])
	}
	var out string
	d.crossing(t, 4, func() { out = labtest.Run(t, d.lab.Client, args...) })
	body, status, _ := strings.Cut(out, "\n")
	code, localPort, _ := strings.Cut(strings.TrimSpace(status), " ")
	if code != "200" {
		t.Fatalf("curl via %s: status %q, body %q", d.via(), code, body)
	}
	seen, err := netip.ParseAddrPort(strings.TrimPrefix(strings.TrimSpace(body), "remote="))
	if err != nil {
		t.Fatalf("application's answer %q: %v", body, err)
	}
	if seen.Addr().Unmap() != want || strconv.Itoa(int(seen.Port())) != localPort {
		t.Errorf("application saw the client as %v, want %v port %s (the client's own address and port)", seen, want, localPort)
	}
}

// checkXfer sends send bytes and gets recv bytes back on one connection
// (after the client has shut its write side) and checks the SHA-256 of
// both directions on both ends.
func checkXfer(t testing.TB, d *datapath, fam string, send, recv int64) {
	var r peer.XferResult
	d.crossing(t, 8, func() {
		labtest.RunPeer(t, d.lab.Client, &r, "xfer", "-addr", d.appAddr(fam, peer.XferPort),
			"-send", strconv.FormatInt(send, 10), "-recv", strconv.FormatInt(recv, 10))
	})
	if r.Sent != send || r.ServerRecv != send || r.SentSHA != r.ServerRecvSHA {
		t.Errorf("client→server: client sent %d bytes sha %s; server got %d bytes sha %s", r.Sent, r.SentSHA, r.ServerRecv, r.ServerRecvSHA)
	}
	if r.Recv != recv {
		t.Errorf("server→client after the client's half-close: got %d bytes, want %d", r.Recv, recv)
	}
	// The server's own log line for this connection (found by the client's
	// port) must show the same digests: both ends agree.
	var srv *peer.ServerLog
	for _, e := range labtest.ServerLogs(t, d.app) {
		if e.Proto == "xfer" && sameAddrPort(e.Remote, r.Local) {
			srv = &e
		}
	}
	if srv == nil {
		t.Fatalf("no server log line for client %s", r.Local)
	}
	if srv.Err != "" || srv.RecvSHA != r.SentSHA || srv.SentSHA != r.RecvSHA || srv.Sent != recv {
		t.Errorf("server log %+v disagrees with the client %+v", *srv, r)
	}
	if ms := r.Millis; ms > 0 {
		t.Logf("%d MiB up + %d MiB down in %d ms (%.2f Gbit/s)", send>>20, recv>>20, ms, float64(send+recv)*8/float64(ms)/1e6)
	}
}

func sameAddrPort(a, b string) bool {
	x, err1 := netip.ParseAddrPort(a)
	y, err2 := netip.ParseAddrPort(b)
	return err1 == nil && err2 == nil && x.Addr().Unmap() == y.Addr().Unmap() && x.Port() == y.Port()
}

func checkIperf(t testing.TB, d *datapath) {
	if d.perf == nil {
		p, err := d.lab.App.Start("iperf3-server", "iperf3", "-s", "-p", "5201")
		if err != nil {
			t.Fatal(err)
		}
		d.perf = p
		waitListening(t, d.lab.App, 5201)
	}
	secs := iperfSeconds(d)
	var out string
	d.crossing(t, 1000, func() {
		out = labtest.Run(t, d.lab.Client, "iperf3", "-c", d.lab.Topo.AppV4.Addr().String(), "-p", "5201", "-t", strconv.Itoa(secs), "-J")
	})
	r := iperfJSON(t, out)
	if r.Error != "" || r.End.SumReceived.Bytes == 0 || r.End.SumReceived.Seconds < float64(secs)-0.5 {
		t.Fatalf("iperf3 %d s via %s did not complete: error %q, received %d bytes in %.1f s", secs, d.via(), r.Error, r.End.SumReceived.Bytes, r.End.SumReceived.Seconds)
	}
	t.Logf("iperf3 %d s via %s: %.2f Gbit/s", secs, d.via(), r.End.SumReceived.BPS/1e9)
}

// waitListening waits until something listens on TCP port in ns.
func waitListening(t testing.TB, ns *lab.NS, port int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out := labtest.Run(t, ns, "ss", "-Hltn", "sport = :"+strconv.Itoa(port))
		if strings.TrimSpace(out) != "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on port %d in %s", port, ns.Role)
}

// checkClosedPort: a closed port on the application is refused at once.
func checkClosedPort(t testing.TB, d *datapath) {
	for _, fam := range []string{"4", "6"} {
		var r peer.DialResult
		labtest.RunPeer(t, d.lab.Client, &r, "dial", "-timeout", "3s", "-addr", d.appAddr(fam, peer.ClosedPort))
		if r.Err != "refused" || r.Millis >= 1000 {
			t.Errorf("IPv%s closed port via %s: %q after %d ms, want refused in < 1 s", fam, d.via(), r.Err, r.Millis)
		}
	}
}

// checkBanner: a server-first protocol works: the banner arrives before
// the client sends anything.
func checkBanner(t testing.TB, d *datapath) {
	for _, fam := range []string{"4", "6"} {
		var r peer.BannerResult
		labtest.RunPeer(t, d.lab.Client, &r, "banner", "-wait", "5s", "-addr", d.appAddr(fam, peer.BannerPort))
		if r.Banner != peer.Banner {
			t.Errorf("IPv%s banner via %s: got %q", fam, d.via(), r.Banner)
		}
	}
}

// checkPortReuse: a client that connects again at once from the port of
// a connection the server closed first gets through without a SYN
// retransmission (1 s) or a reset: netward's stack keeps that tuple in
// TIME_WAIT, where the kernel accepts a new SYN.
func checkPortReuse(t testing.TB, d *datapath) {
	for _, fam := range []string{"4", "6"} {
		var r peer.ReuseResult
		d.crossing(t, 20, func() {
			labtest.RunPeer(t, d.lab.Client, &r, "reuse", "-n", "20", "-addr", d.appAddr(fam, peer.HTTPPort))
		})
		if r.MaxMillis >= 500 {
			t.Errorf("IPv%s via %s: slowest of 20 connects from port %d took %d ms, want < 500 (no SYN dropped)", fam, d.via(), r.Port, r.MaxMillis)
		}
		t.Logf("IPv%s via %s: 20 connects from port %d, slowest %d ms", fam, d.via(), r.Port, r.MaxMillis)
	}
}

// checkConcurrent: 1,000 connections open at once, each echoes its own
// bytes correctly.
func checkConcurrent(t testing.TB, d *datapath) {
	var r peer.ConnsResult
	d.crossing(t, 3000, func() {
		labtest.RunPeer(t, d.lab.Client, &r, "conns", "-n", "1000", "-size", "4096", "-timeout", "90s", "-addr", d.appAddr("4", peer.EchoPort))
	})
	if r.OK != 1000 {
		t.Errorf("1000 concurrent connections via %s: %d ok, errors %v", d.via(), r.OK, r.Errors)
	}
	t.Logf("1000 concurrent connections via %s in %d ms", d.via(), r.Millis)
}

// checkPing: ICMP echo works in both families (never steered).
func checkPing(t testing.TB, d *datapath) {
	for _, fam := range []string{"4", "6"} {
		host := d.lab.Topo.AppV4.Addr().String()
		if fam == "6" {
			host = d.lab.Topo.AppV6.Addr().String()
		}
		out, err := runIn(d.lab.Client, "ping", "-"+fam, "-c", "3", "-i", "0.2", "-W", "2", host)
		if err != nil {
			t.Errorf("ping -%s %s via %s: %v\n%s", fam, host, d.via(), err, out)
		}
	}
}

func runIn(ns *lab.NS, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return ns.Run(ctx, args...)
}

// TestKernelForwarding runs every check on the lab with plain kernel
// forwarding (no netward): it proves the lab and the checks themselves,
// and is the baseline the netward runs are compared with.
func TestKernelForwarding(t *testing.T) {
	d := newLab(t)
	runChecks(t, d, checks)
}
