package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/e2e/cmd/soak/opslab"
	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/e2e/peer"
)

// Issue 19: a fleet of `netward run --geneve` appliances behind the lab's
// Gateway Load Balancer (e2e/lab/gwlb.go, peer.ServeGWLB): two sites (GWLB
// endpoints) with the same inner addresses, two appliances as targets.

const (
	gwlbTLSPort = 8443
	gwlbSNI     = "app.example"
	gwlbRules   = `default: allow
rules:
  - name: deny-blocked-sni
    action: deny
    sni: blocked.example
  - name: deny-blocked-host
    action: deny
    host: blocked.example
  - name: no-ads
    action: deny
    dns: .ads.example
`
	// gwlbMetrics is where each appliance serves /metrics, on its loopback.
	gwlbMetrics = "127.0.0.1:9740"
)

type gwlbEnv struct {
	g    *lab.GWLBLab
	cert string
	// nw are the appliances' netward processes; apps the sites' servers.
	nw   []*lab.Netward
	apps []*lab.Proc
	args []string // netward's flags (to restart an appliance)
}

// gwlbEnvOptions shape a GWLB lab for a test.
type gwlbEnvOptions struct {
	sites   int
	gwlb    []string // more nwpeer gwlb flags
	netward []string // more netward flags
}

func newGWLBEnv(t *testing.T, o gwlbEnvOptions) *gwlbEnv {
	t.Helper()
	labtest.RequireRoot(t)
	labtest.RequireTools(t, "curl", "openssl", "iperf3", "dig")
	g := labtest.NewGWLB(t, lab.GWLBOptions{Sites: o.sites, Appliances: 2, InnerMTU: 8432})
	e := &gwlbEnv{g: g}
	tdir := t.TempDir()
	cert, key, err := peer.WriteCert(tdir, gwlbSNI)
	if err != nil {
		t.Fatal(err)
	}
	e.cert = cert
	rules := filepath.Join(tdir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(gwlbRules), 0o644); err != nil {
		t.Fatal(err)
	}
	e.args = append([]string{"--rules", rules, "--metrics", gwlbMetrics, "--drain-timeout", "0"}, o.netward...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range g.Appliances {
		w, err := g.StartAppliance(ctx, labtest.Netward(t), i, e.args...)
		if err != nil {
			t.Fatal(err)
		}
		e.nw = append(e.nw, w)
	}
	for i, s := range g.Sites {
		e.apps = append(e.apps, labtest.StartPeer(t, s.App,
			"-tls-port", strconv.Itoa(gwlbTLSPort), "-tls-cert", cert, "-tls-key", key,
			"-h3-port", strconv.Itoa(gwlbTLSPort), "-dns-port", "53"))
		if _, err := g.StartGWLB(ctx, labtest.Peer(t), i, o.gwlb...); err != nil {
			t.Fatal(err)
		}
	}
	for i := range g.Sites {
		e.waitHealthy(t, i, len(g.Appliances))
	}
	return e
}

// stats reads site i's GWLB counters.
func (e *gwlbEnv) stats(t testing.TB, i int, flows bool) peer.GWLBStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s peer.GWLBStats
	if err := e.g.GWLBStats(ctx, i, flows, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitHealthy waits until site i's GWLB has n healthy targets.
func (e *gwlbEnv) waitHealthy(t testing.TB, site, n int) peer.GWLBStats {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := e.stats(t, site, false)
		healthy := 0
		for _, tg := range s.Targets {
			if tg.Healthy {
				healthy++
			}
		}
		if healthy == n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("site %d: %d healthy targets after 15 s, want %d: %+v", site, healthy, n, s.Targets)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metrics reads appliance i's Prometheus exposition.
func (e *gwlbEnv) metrics(t testing.TB, i int) string {
	return labtest.Run(t, e.g.Appliances[i].NS, "curl", "-sS", "--max-time", "5", "http://"+gwlbMetrics+"/metrics")
}

// curl runs curl in site i's client against the application (v4 or v6).
func (e *gwlbEnv) curl(site int, fam, url string, extra ...string) (string, error) {
	t := lab.Default()
	host := t.AppV4.Addr().String()
	if fam == "6" {
		host = "[" + t.AppV6.Addr().String() + "]"
	}
	url = strings.ReplaceAll(url, "APP", host)
	args := append([]string{"curl", "-sS", "--max-time", "15"}, extra...)
	return runIn(e.g.Sites[site].Client, append(args, url)...)
}

func (e *gwlbEnv) curlTLS(site int, fam, sni, path string) (string, error) {
	t := lab.Default()
	host := t.AppV4.Addr().String()
	if fam == "6" {
		host = "[" + t.AppV6.Addr().String() + "]"
	}
	return runIn(e.g.Sites[site].Client, "curl", "-sS", "--max-time", "15", "--cacert", e.cert,
		"--resolve", fmt.Sprintf("%s:%d:%s", sni, gwlbTLSPort, host),
		fmt.Sprintf("https://%s:%d%s", sni, gwlbTLSPort, path))
}

// TestGWLB: through the lab's GWLB, allowed and denied flows by SNI and
// Host for IPv4 and IPv6, with the application seeing the real client
// address; the options echoed byte for byte; two endpoints with the same
// inner addresses kept apart; flows spread over both targets; iperf3 and
// openssl through the tunnel; malformed GENEVE counted; /healthz turning
// 503 when an appliance stops, and flows re-hashed to the survivor after
// the other is killed (the open flow is reset there: a terminating
// appliance has no state for it).
func TestGWLB(t *testing.T) {
	e := newGWLBEnv(t, gwlbEnvOptions{sites: 2})
	tp := lab.Default()

	t.Run("HTTP", func(t *testing.T) {
		for _, fam := range []string{"4", "6"} {
			// The server sees the client's address and port: the upstream
			// leg went back into the tunnel from the client's own end.
			out, err := e.curl(0, fam, "http://APP:8080/", "-w", " local_port=%{local_port}")
			client := tp.ClientV4.Addr().String()
			if fam == "6" {
				client = "[" + tp.ClientV6.Addr().String() + "]"
			}
			_, port, _ := strings.Cut(out, " local_port=")
			if err != nil || port == "" || !strings.Contains(out, "remote="+client+":"+port) {
				t.Fatalf("IPv%s: allowed HTTP: %v\n%s (want remote=%s:%s, the real client)", fam, err, out, client, port)
			}
			out, err = e.curl(0, fam, "http://APP:8080/", "-H", "Host: blocked.example", "-o", "/dev/null", "-w", "%{http_code}")
			if err != nil || out != "403" {
				t.Errorf("IPv%s: Host blocked.example: %v, status %q, want 403", fam, err, out)
			}
		}
	})

	t.Run("TLS", func(t *testing.T) {
		for _, fam := range []string{"4", "6"} {
			if out, err := e.curlTLS(0, fam, gwlbSNI, "/"); err != nil || !strings.Contains(out, "remote=") {
				t.Fatalf("IPv%s: allowed SNI: %v\n%s", fam, err, out)
			}
			if out, err := e.curlTLS(0, fam, "blocked.example", "/"); err == nil {
				t.Errorf("IPv%s: SNI blocked.example got an answer:\n%s", fam, out)
			}
		}
		// openssl: the denied handshake ends with netward's alert.
		out, _ := runIn(e.g.Sites[0].Client, "sh", "-c", fmt.Sprintf(
			"echo Q | openssl s_client -connect %s:%d -servername blocked.example 2>&1", tp.AppV4.Addr(), gwlbTLSPort))
		if !strings.Contains(out, "alert") {
			t.Errorf("openssl s_client with SNI blocked.example: no TLS alert:\n%s", out)
		}
		out, err := runIn(e.g.Sites[0].Client, "sh", "-c", fmt.Sprintf(
			"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect %s:%d -servername %s 2>/dev/null", tp.AppV4.Addr(), gwlbTLSPort, gwlbSNI))
		if err != nil || !strings.Contains(out, "remote=") {
			t.Errorf("openssl s_client with SNI %s: %v\n%s", gwlbSNI, err, out)
		}
	})

	t.Run("UDP", func(t *testing.T) {
		// QUIC by the ClientHello in its Initial, DNS query by query: the
		// same rules as in TUN mode, inside the tunnel.
		h3 := func(fam, sni string) (h3Result, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			addr := tp.AppV4.Addr()
			if fam == "6" {
				addr = tp.AppV6.Addr()
			}
			out, err := e.g.Sites[0].Client.Run(ctx, labtest.Peer(t), "h3get", "-url",
				"https://"+netip.AddrPortFrom(addr, gwlbTLSPort).String()+"/", "-sni", sni, "-timeout", "3s")
			var r h3Result
			if jerr := json.Unmarshal([]byte(lastLine(out)), &r); jerr != nil && err == nil {
				err = jerr
			}
			return r, err
		}
		for _, fam := range []string{"4", "6"} {
			if r, err := h3(fam, gwlbSNI); err != nil || r.Status != 200 {
				t.Errorf("IPv%s: HTTP/3 with SNI %s: %+v %v", fam, gwlbSNI, r, err)
			}
			if r, err := h3(fam, "blocked.example"); err == nil && r.Status == 200 {
				t.Errorf("IPv%s: HTTP/3 with SNI blocked.example got an answer: %+v", fam, r)
			}
			dig := func(name string) string {
				addr := tp.AppV4.Addr()
				if fam == "6" {
					addr = tp.AppV6.Addr()
				}
				out, _ := runIn(e.g.Sites[0].Client, "dig", "@"+addr.String(), "+time=2", "+tries=1", name, "A")
				return out
			}
			if out := dig("www.app.example"); !strings.Contains(out, peer.DNSAnswerA.String()) {
				t.Errorf("IPv%s: allowed DNS name: no answer %s:\n%s", fam, peer.DNSAnswerA, out)
			}
			if out := dig("x.ads.example"); !strings.Contains(out, "status: NXDOMAIN") || strings.Contains(out, peer.DNSAnswerA.String()) {
				t.Errorf("IPv%s: denied DNS name: want NXDOMAIN from netward:\n%s", fam, out)
			}
		}
		for _, l := range strings.Split(e.apps[0].Log(), "\n") {
			if strings.Contains(l, "ads.example") {
				t.Errorf("a denied DNS query reached the server: %s", l)
			}
		}
		var judged float64
		for i := range e.nw {
			judged += metricValue(e.metrics(t, i), `netward_udp_datagrams_total{result="refused"}`) +
				metricValue(e.metrics(t, i), `netward_udp_datagrams_total{result="answered"}`)
		}
		if judged == 0 {
			t.Errorf("no UDP refusal counted by the appliances: the datagrams were not judged")
		}
	})

	t.Run("Ping", func(t *testing.T) {
		// Not TCP: back to GWLB unchanged (netward_geneve_passthrough).
		if out, err := runIn(e.g.Sites[0].Client, "ping", "-c", "2", "-i", "0.2", "-W", "2", tp.AppV4.Addr().String()); err != nil {
			t.Errorf("ping through the tunnel: %v\n%s", err, out)
		}
		// A jumbo inner packet that fits GWLB's 8500-byte frame (8400 +
		// 28 ≤ 8432), not fragmented on the way.
		if out, err := runIn(e.g.Sites[0].Client, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "8400", tp.AppV4.Addr().String()); err != nil {
			t.Errorf("ping -s 8400 -M do through the tunnel: %v\n%s", err, out)
		}
	})

	t.Run("TwoEndpointsSameAddresses", func(t *testing.T) {
		// Each site's client asks its own application for its own path;
		// the inner 5-tuples may even be equal (same addresses, and the
		// clients' kernels pick ports on their own).
		for site := range e.g.Sites {
			for k := range 5 {
				path := fmt.Sprintf("/site%d/%d", site, k)
				if out, err := e.curl(site, "4", "http://APP:8080"+path); err != nil || !strings.Contains(out, "remote=") {
					t.Fatalf("site %d %s: %v\n%s", site, path, err, out)
				}
			}
		}
		for site, app := range e.apps {
			for _, l := range labtest.ServerLogs(t, app) {
				if strings.HasPrefix(l.Path, "/site") && !strings.HasPrefix(l.Path, fmt.Sprintf("/site%d/", site)) {
					t.Errorf("site %d's application got %s: flows of two endpoints were mixed", site, l.Path)
				}
			}
		}
		var eps float64
		for i := range e.nw {
			eps += metricValue(e.metrics(t, i), "netward_geneve_endpoints")
		}
		if eps < 2 {
			t.Errorf("netward_geneve_endpoints summed over the appliances = %v, want ≥ 2 (one stack per endpoint)", eps)
		}
	})

	t.Run("Iperf3", func(t *testing.T) {
		srv, err := e.g.Sites[0].App.Start("iperf3", "iperf3", "-s", "-1", "-p", "5201")
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop(2 * time.Second)
		time.Sleep(200 * time.Millisecond)
		out, err := runIn(e.g.Sites[0].Client, "iperf3", "-c", tp.AppV4.Addr().String(), "-p", "5201", "-t", "2", "-J")
		if err != nil {
			t.Fatalf("iperf3 through the tunnel: %v\n%s", err, out)
		}
		if bps := iperfJSON(t, out).End.SumReceived.BPS; bps < 10e6 {
			t.Errorf("iperf3 through the tunnel: %.0f bit/s, want > 10 Mbit/s", bps)
		} else {
			t.Logf("iperf3 through GWLB + netward: %.2f Gbit/s", bps/1e9)
		}
	})

	t.Run("OptionsEchoed", func(t *testing.T) {
		for site := range e.g.Sites {
			s := e.stats(t, site, false)
			if s.EchoOK == 0 || s.EchoMismatch != 0 || s.EchoUnknownFlow != 0 || s.BadGeneve != 0 {
				t.Errorf("site %d: echo ok %d, mismatch %d, unknown flow %d, bad GENEVE %d: want every packet back with its own options",
					site, s.EchoOK, s.EchoMismatch, s.EchoUnknownFlow, s.BadGeneve)
			}
		}
	})

	t.Run("FlowsSpread", func(t *testing.T) {
		// 20 more connections: the GWLB hashes them over both targets.
		for k := range 20 {
			if _, err := e.curl(0, "4", fmt.Sprintf("http://APP:8080/spread/%d", k)); err != nil {
				t.Fatal(err)
			}
		}
		s := e.stats(t, 0, false)
		for _, tg := range s.Targets {
			if tg.Sent == 0 || tg.Received == 0 {
				t.Errorf("target %s: sent %d, received %d: flows not spread over both appliances", tg.Addr, tg.Sent, tg.Received)
			}
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		a := e.g.Appliances[0]
		to := netip.AddrPortFrom(a.Addr, 6081).String()
		for _, c := range []struct{ kind, reason string }{
			{"truncated", "truncated"},
			{"critical_option", "critical_option"},
			{"protocol", "protocol"},
			{"oversized", "oversized"},
			{"wrong_class", "missing_option"},
			{"option_length", "option_length"},
		} {
			before := metricValue(e.metrics(t, 0), `netward_geneve_drops_total{reason="`+c.reason+`"}`)
			labtest.RunPeer(t, e.g.Sites[0].Gateway, nil, "genevejunk", "-addr", to, "-kind", c.kind, "-n", "3")
			var got float64
			for range 50 {
				if got = metricValue(e.metrics(t, 0), `netward_geneve_drops_total{reason="`+c.reason+`"}`); got >= before+3 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got != before+3 {
				t.Errorf("%s: netward_geneve_drops_total{reason=%q} %v → %v, want +3", c.kind, c.reason, before, got)
			}
		}
		if exited, _ := e.nw[0].Exited(); exited {
			t.Fatalf("netward exited on bad input:\n%s", e.nw[0].Log())
		}
		if out, err := e.curl(0, "4", "http://APP:8080/after-junk"); err != nil {
			t.Errorf("after bad input: %v\n%s", err, out)
		}
	})

	t.Run("HealthAndFailover", func(t *testing.T) {
		// An open connection from site 0 and the appliance its flow is on.
		c, echo, victim := e.openEcho(t)
		defer c.Close()
		on := e.g.Appliances[victim].Addr.String()
		survivor := 1 - victim

		// SIGKILL: no drain, /healthz gone; the GWLB's checks fail.
		e.nw[victim].Kill()
		e.waitHealthy(t, 0, 1)
		if s := e.stats(t, 0, false); s.Rehashed == 0 {
			t.Errorf("no flow re-hashed after target %s turned unhealthy", on)
		}
		// The open flow now reaches the survivor, which never saw its
		// handshake: it answers with a reset.
		var errEcho error
		for range 3 {
			if errEcho = echo('b'); errEcho != nil {
				break
			}
		}
		if errEcho == nil || !(errors.Is(errEcho, syscall.ECONNRESET) || errors.Is(errEcho, net.ErrClosed) || strings.Contains(errEcho.Error(), "reset")) {
			t.Errorf("the open flow after its appliance died: %v, want a connection reset by the survivor", errEcho)
		}
		// New flows all go to the survivor and work.
		before := e.stats(t, 0, false)
		for k := range 5 {
			if out, err := e.curl(0, "4", fmt.Sprintf("http://APP:8080/failover/%d", k)); err != nil || !strings.Contains(out, "remote=") {
				t.Fatalf("new flow %d after failover: %v\n%s", k, err, out)
			}
		}
		after := e.stats(t, 0, false)
		vt, _ := before.Target(e.g.Appliances[victim].Addr.String())
		vt2, _ := after.Target(e.g.Appliances[victim].Addr.String())
		if vt2.Sent != vt.Sent {
			t.Errorf("the GWLB sent %d packets to the dead target", vt2.Sent-vt.Sent)
		}

		// The survivor stops with SIGTERM: /healthz answers 503 (or is
		// gone) and the GWLB has no healthy target left.
		url := "http://" + netip.AddrPortFrom(e.g.Appliances[survivor].Addr, lab.GWLBHealthPort).String() + "/healthz"
		if code, _ := runIn(e.g.Appliances[survivor].NS, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url); code != "200" {
			t.Fatalf("survivor /healthz = %q before stop, want 200", code)
		}
		if err := e.nw[survivor].Terminate(15 * time.Second); err != nil {
			t.Errorf("netward did not stop cleanly on SIGTERM: %v", err)
		}
		e.waitHealthy(t, 0, 0)

		// Restart the killed appliance: the GWLB takes it back.
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		w, err := e.g.StartAppliance(sctx, labtest.Netward(t), victim, e.args...)
		if err != nil {
			t.Fatal(err)
		}
		e.nw[victim] = w
		e.waitHealthy(t, 0, 1)
		if out, err := e.curl(0, "4", "http://APP:8080/back"); err != nil || !strings.Contains(out, "remote=") {
			t.Errorf("after the appliance came back: %v\n%s", err, out)
		}
	})
}

// iperfJSON parses `iperf3 -J` output.
func iperfJSON(t testing.TB, out string) peer.IperfResult {
	t.Helper()
	var r peer.IperfResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("iperf3 -J output: %v\n%s", err, out)
	}
	return r
}

// openEcho opens a connection from site 0's client to its application's
// echo port, checks one echo, and returns it with an echo function and
// the index of the appliance the GWLB sent its flow to.
func (e *gwlbEnv) openEcho(t *testing.T) (net.Conn, func(byte) error, int) {
	t.Helper()
	d := &opslab.Dialer{NS: opslab.NS{Name: e.g.Sites[0].Client.Name}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(lab.Default().AppV4.Addr(), peer.EchoPort).String())
	if err != nil {
		t.Fatal(err)
	}
	echo := func(b byte) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{b}); err != nil {
			return err
		}
		var r [1]byte
		if _, err := c.Read(r[:]); err != nil {
			return err
		}
		if r[0] != b {
			return fmt.Errorf("echo %q, want %q", r[0], b)
		}
		return nil
	}
	if err := echo('a'); err != nil {
		c.Close()
		t.Fatal(err)
	}
	local := c.LocalAddr().String()
	var on string
	for _, f := range e.stats(t, 0, true).Flows {
		if f.Has(local) {
			on = f.Target
		}
	}
	for i, a := range e.g.Appliances {
		if a.Addr.String() == on {
			return c, echo, i
		}
	}
	c.Close()
	t.Fatalf("flow of %s not in the GWLB's flow table (target %q)", local, on)
	return nil, nil, 0
}

// TestGWLBDrain: SIGTERM with a drain deadline behind a GWLB that leaves
// open flows where they are (its default, no_rebalance): /healthz answers
// 503 at once, the GWLB sends new flows to the other appliance, the open
// flow goes on through the draining one, and netward stops at the
// deadline.
func TestGWLBDrain(t *testing.T) {
	const drain = 4 * time.Second
	e := newGWLBEnv(t, gwlbEnvOptions{sites: 1, gwlb: []string{"-rebalance=false"}})
	// Restart both appliances with a drain deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range e.nw {
		if err := e.nw[i].Terminate(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		w, err := e.g.StartAppliance(ctx, labtest.Netward(t), i, append(e.args, "--drain-timeout", drain.String())...)
		if err != nil {
			t.Fatal(err)
		}
		e.nw[i] = w
	}
	e.waitHealthy(t, 0, 2)
	c, echo, victim := e.openEcho(t)
	defer c.Close()
	a := e.g.Appliances[victim]
	start := time.Now()
	if err := e.nw[victim].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	url := "http://" + netip.AddrPortFrom(a.Addr, lab.GWLBHealthPort).String() + "/healthz"
	for {
		code, _ := runIn(a.NS, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url)
		if code == "503" {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("/healthz of the draining appliance = %q 1 s after SIGTERM, want 503", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.waitHealthy(t, 0, 1)
	if err := echo('b'); err != nil {
		t.Fatalf("the open flow on the draining appliance: %v", err)
	}
	for k := range 5 {
		path := fmt.Sprintf("/drain/%d", k)
		if out, err := e.curl(0, "4", "http://APP:8080"+path); err != nil || !strings.Contains(out, "remote=") {
			t.Fatalf("new flow %s while draining: %v\n%s", path, err, out)
		}
	}
	for _, f := range e.stats(t, 0, true).Flows {
		if f.Target == a.Addr.String() && !f.Has(c.LocalAddr().String()) && f.Proto == 6 {
			t.Errorf("a new flow %s ↔ %s went to the draining appliance", f.A, f.B)
		}
	}
	if err := echo('c'); err != nil {
		t.Fatalf("the open flow on the draining appliance, later: %v", err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), drain+10*time.Second)
	defer wcancel()
	e.nw[victim].Wait(wctx)
	if took := time.Since(start); took < drain-500*time.Millisecond || took > drain+6*time.Second {
		t.Errorf("the draining appliance stopped after %v, want about the %v deadline", took.Round(time.Millisecond), drain)
	}
}
