package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/e2e/peer"
)

// acceptKernelRules: the lab's SNI allowed, another denied, an HTTP path
// denied (judged on every request of a keep-alive connection), and a port
// refused by address alone (decided before anything is inspected).
var acceptKernelRules = fmt.Sprintf(`default: allow
rules:
  - name: no-banner
    action: deny
    dst_port: %d
  - name: deny-blocked
    action: deny
    sni: blocked.example
  - name: no-admin
    action: deny
    app: http
    path: /admin
`, peer.BannerPort)

// TestTCPAcceptKernel: with --tcp-accept kernel, the kernel answers the
// client's handshake (TPROXY to netward's transparent listener) and every
// security property holds as on the gVisor path: an allowed TLS flow
// reaches the server with the client's own address (IPv4 and IPv6) and
// none of its packets crosses the TUN; a denied SNI and a denied path
// never reach the server, also as the second request of a keep-alive
// connection; a port refused by address is reset before any byte goes
// upstream; a closed port is a reset; netward status shows the flow in
// the kernel; a stop resets the flows, removes the TPROXY rules, and the
// appliance forwards as before (fail open); after kill -9, new flows fail
// closed until `netward cleanup`.
func TestTCPAcceptKernel(t *testing.T) {
	labtest.RequireTools(t, "curl", "openssl")
	l := labtest.New(t, lab.Options{RPFilter: 1})
	dir := t.TempDir()
	cert, key, err := peer.WriteCert(dir, handoffSNI)
	if err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(acceptKernelRules), 0o644); err != nil {
		t.Fatal(err)
	}
	app := labtest.StartPeer(t, l.App, "-tls-port", strconv.Itoa(handoffTLSPort), "-tls-cert", cert, "-tls-key", key)
	d := &datapath{lab: l, app: app}
	d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: []string{"--rules", rules, "--tcp-accept", "kernel"}})
	e := &handoffEnv{d: d, cert: cert, rules: rules}
	accepted := func(t testing.TB) float64 { return metricValue(e.metrics(t), "netward_tcp_accepted_total") }

	t.Run("TLSOffTUN", func(t *testing.T) {
		for _, fam := range []string{"4", "6"} {
			want := l.Topo.ClientV4.Addr().String()
			if fam == "6" {
				want = "[" + l.Topo.ClientV6.Addr().String() + "]"
			}
			ctx := context.Background()
			before, err := d.nw.TUNStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			acc := accepted(t)
			out, err := e.curlTLS(t, fam, handoffSNI, "/")
			if err != nil || !strings.Contains(out, "remote="+want+":") {
				t.Fatalf("IPv%s: curl https: %v; want the server to see remote=%s:…\n%s", fam, err, want, out)
			}
			n, err := e.curlTLS(t, fam, handoffSNI, "/bytes?n="+strconv.Itoa(16<<20), "-o", "/dev/null", "-w", "%{size_download}")
			if err != nil || strings.TrimSpace(n) != strconv.Itoa(16<<20) {
				t.Fatalf("IPv%s: curl 16 MiB: %v, got %q bytes", fam, err, n)
			}
			after, err := d.nw.TUNStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Nothing TCP crosses the TUN; the lab's own IPv6 neighbour
			// traffic may (a few packets).
			if delta := after.Sub(before); delta.RxPackets+delta.TxPackets > 10 {
				t.Errorf("IPv%s: two TLS flows moved %v through the TUN, want none", fam, delta)
			}
			if got := accepted(t); got != acc+2 {
				t.Errorf("IPv%s: netward_tcp_accepted_total went from %v to %v, want +2", fam, acc, got)
			}
		}
	})

	t.Run("TLSDenied", func(t *testing.T) { checkDeniedSNINeverReaches(t, e, app) })
	t.Run("HTTPKeepAliveEveryRequestJudged", func(t *testing.T) { checkKeepAliveEveryRequestJudged(t, d, "4") })

	t.Run("RefusedByPortBeforeUpstream", func(t *testing.T) {
		start := time.Now()
		out, err := runIn(l.Client, "curl", "-sS", "--max-time", "5", "telnet://"+d.appAddr("4", peer.BannerPort))
		if !resetAfterKernelHandshake(out, err) {
			t.Errorf("a port the rules refuse by address: %v\n%s; want a reset", err, out)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("the refusal took %v", took)
		}
		for _, s := range labtest.ServerLogs(t, app) {
			if s.Proto == "banner" {
				t.Errorf("the banner server got a connection of a refused flow: %+v", s)
			}
		}
	})

	t.Run("ClosedPortReset", func(t *testing.T) {
		// A reset at once, not a timeout.
		start := time.Now()
		out, err := runIn(l.Client, "curl", "-sS", "--max-time", "5", "http://"+d.appAddr("6", peer.ClosedPort)+"/")
		if !resetAfterKernelHandshake(out, err) {
			t.Errorf("a closed port: %v\n%s; want a reset", err, out)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("a closed port took %v to fail, want < 1 s", took)
		}
	})

	t.Run("StatusShowsKernelLeg", e.checkStatusShowsKernelLeg)

	t.Run("StopResetsAndFailsOpen", func(t *testing.T) {
		done, out, ok := e.downloadInKernel(t, "2M")
		if !ok {
			t.Fatalf("the download never showed leg=kernel:\n%s", out)
		}
		if err := d.nw.Terminate(15 * time.Second); err != nil {
			t.Fatalf("netward on SIGTERM: %v", err)
		}
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("the download cut by the stop ended as if complete")
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the client of an accepted flow was not reset when netward stopped")
		}
		for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
			if out := labtest.Run(t, l.Appliance, cmd); strings.Contains(out, "TPROXY") || strings.Contains(out, "NETWARD") {
				t.Errorf("%s after the stop still has netward's rules:\n%s", cmd, grepLines(out, "NETWARD"))
			}
		}
		if out := labtest.Run(t, l.Appliance, "ss", "-Hltn", "sport = :20057"); strings.TrimSpace(out) != "" {
			t.Errorf("the transparent listener outlived netward:\n%s", out)
		}
		out, err := e.curlTLS(t, "6", handoffSNI, "/")
		if err != nil || !strings.Contains(out, "remote=") {
			t.Errorf("after the stop, the appliance does not forward (fail open): %v\n%s", err, out)
		}
	})

	// kill -9 leaves the TPROXY rule without a listener: new TCP flows
	// fail closed (whatever the fail mode) until `netward cleanup`, which
	// the systemd unit runs after any exit, removes it.
	t.Run("CrashFailsClosedUntilCleanup", func(t *testing.T) {
		d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: []string{"--rules", rules, "--tcp-accept", "kernel"}})
		if out, err := e.curlTLS(t, "4", handoffSNI, "/"); err != nil {
			t.Fatalf("before the kill: %v\n%s", err, out)
		}
		d.nw.Kill()
		if out, err := e.curlTLS(t, "4", handoffSNI, "/", "--max-time", "2"); err == nil {
			t.Errorf("a new flow got through a killed netward's TPROXY rule:\n%s", out)
		}
		labtest.Run(t, l.Appliance, labtest.Netward(t), "cleanup", "--tun", d.nw.TUN)
		if out, err := e.curlTLS(t, "4", handoffSNI, "/"); err != nil || !strings.Contains(out, "remote=") {
			t.Errorf("after netward cleanup, the appliance does not forward: %v\n%s", err, out)
		}
	})
}

// serverSaw counts the requests app logged whose path starts with path.
func serverSaw(t testing.TB, app *lab.Proc, path string) int {
	n := 0
	for _, s := range labtest.ServerLogs(t, app) {
		if strings.HasPrefix(s.Path, path) {
			n++
		}
	}
	return n
}

// checkDeniedSNINeverReaches: a TLS flow whose SNI acceptKernelRules
// deny gets no answer, and the server sees nothing of it.
func checkDeniedSNINeverReaches(t *testing.T, e *handoffEnv, app *lab.Proc) {
	before := len(labtest.ServerLogs(t, app))
	if out, err := e.curlTLS(t, "4", "blocked.example", "/secret"); err == nil {
		t.Fatalf("a denied SNI got an answer:\n%s", out)
	}
	if n := serverSaw(t, app, "/secret"); n != 0 || len(labtest.ServerLogs(t, app)) != before {
		t.Errorf("the server saw a request of a denied SNI")
	}
}

// checkKeepAliveEveryRequestJudged: on one keep-alive connection, the
// request for a path acceptKernelRules deny gets a 403 after an allowed
// one, and never reaches the server.
func checkKeepAliveEveryRequestJudged(t *testing.T, d *datapath, fam string) {
	base := "http://" + d.appAddr(fam, peer.HTTPPort)
	out, err := runIn(d.lab.Client, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
		base+"/", base+"/admin/users", base+"/")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	// The 403 ends the connection; the third request connects again.
	if got := strings.Fields(out); len(got) != 6 || got[0] != "200" || got[2] != "403" || got[3] != "0" || got[4] != "200" {
		t.Errorf("keep-alive requests /, /admin/users, /: got %q, want 200 on a new connection, 403 on the same, 200", out)
	}
	if n := serverSaw(t, d.app, "/admin"); n != 0 {
		t.Errorf("the server saw %d requests for a denied path", n)
	}
}

// resetAfterKernelHandshake reports whether curl's result (out, err) is a
// reset. The kernel completes the handshake and netward resets the
// connection at once, so the reset may reach curl before it has seen the
// connection up: then curl says "Couldn't connect".
func resetAfterKernelHandshake(out string, err error) bool {
	if err == nil {
		return false
	}
	s := out + err.Error()
	return strings.Contains(s, "reset") || strings.Contains(s, "Couldn't connect")
}
