package e2e

import (
	"context"
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

// TestTCPAcceptReplay: with --tcp-accept replay, the SYN crosses the TUN
// and netward admits the flow and dials the server first, as on the gVisor
// path, and then the kernel's listener answers the handshake from the SYN
// netward writes back, so the client leg is a kernel socket from its
// SYN-ACK on. It keeps the gVisor path's answers at the SYN and its fail
// mode: a port refused by address, and a closed port, are refused before
// any handshake (the listener accepts nothing); an allowed TLS flow
// reaches the server with the client's own address (IPv4 and IPv6) and
// only its SYN crosses the TUN, twice; a denied SNI and a denied path
// never reach the server; 400 short connections from 8 clients at once
// all succeed with no replay failure; after kill -9 new flows are plainly
// forwarded (fail open), with no `netward cleanup`.
func TestTCPAcceptReplay(t *testing.T) {
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
	args := []string{"--rules", rules, "--tcp-accept", "replay"}
	d.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: args})
	e := &handoffEnv{d: d, cert: cert, rules: rules}
	metric := func(t testing.TB, name string) float64 { return metricValue(e.metrics(t), name) }
	failures := func(t testing.TB) float64 {
		m := e.metrics(t)
		n := 0.0
		for _, r := range []string{"not_captured", "unmatched", "expired", "no_socket", "half_open"} {
			n += metricValue(m, `netward_syn_replay_failures_total{reason="`+r+`"}`)
		}
		return n
	}

	t.Run("TLSKernelLegAfterReplay", func(t *testing.T) {
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
			replayed, accepted := metric(t, "netward_syn_replayed_total"), metric(t, "netward_tcp_accepted_total")
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
			// Each flow's SYN in and out again; the lab's own IPv6
			// neighbour traffic may add a few packets.
			if delta := after.Sub(before); delta.RxPackets+delta.TxPackets > 12 {
				t.Errorf("IPv%s: two TLS flows moved %v through the TUN, want their SYNs only", fam, delta)
			}
			if got := metric(t, "netward_syn_replayed_total"); got != replayed+2 {
				t.Errorf("IPv%s: netward_syn_replayed_total went from %v to %v, want +2", fam, replayed, got)
			}
			if got := metric(t, "netward_tcp_accepted_total"); got != accepted+2 {
				t.Errorf("IPv%s: netward_tcp_accepted_total went from %v to %v, want +2", fam, accepted, got)
			}
		}
	})

	t.Run("RefusedAtSYN", func(t *testing.T) {
		accepted := metric(t, "netward_tcp_accepted_total")
		for _, target := range []string{"telnet://" + d.appAddr("4", peer.BannerPort), "http://" + d.appAddr("6", peer.ClosedPort) + "/"} {
			start := time.Now()
			out, err := runIn(l.Client, "curl", "-sS", "--max-time", "5", target)
			// curl's "Couldn't connect" (exit 7) is also its answer to
			// a reset right after a handshake; the listener's count
			// below tells the two apart.
			if err == nil || !strings.Contains(out+err.Error(), "(7)") {
				t.Errorf("%s: %v\n%s; want curl's connect failure (a reset answering the SYN)", target, err, out)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("%s: the refusal took %v", target, took)
			}
		}
		if got := metric(t, "netward_tcp_accepted_total"); got != accepted {
			t.Errorf("the listener accepted %v connections of refused flows, want none", got-accepted)
		}
		for _, s := range labtest.ServerLogs(t, app) {
			if s.Proto == "banner" {
				t.Errorf("the banner server got a connection of a refused flow: %+v", s)
			}
		}
	})

	t.Run("TLSDenied", func(t *testing.T) { checkDeniedSNINeverReaches(t, e, app) })
	t.Run("HTTPKeepAliveEveryRequestJudged", func(t *testing.T) { checkKeepAliveEveryRequestJudged(t, d, "6") })

	t.Run("Churn", func(t *testing.T) {
		failed := failures(t)
		// 8 clients at once, 50 connections each, both families.
		script := `for c in 1 2 3 4 5 6 7 8; do
  ( for i in $(seq 50); do curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 "$([ $((c % 2)) = 0 ] && echo "$A4" || echo "$A6")"; done ) &
done; wait`
		out, err := runIn(l.Client, "env", "A4=http://"+d.appAddr("4", peer.HTTPPort)+"/", "A6=http://"+d.appAddr("6", peer.HTTPPort)+"/", "sh", "-c", script)
		if err != nil {
			t.Fatalf("churn: %v\n%s", err, out)
		}
		if ok := strings.Count(out, "200"); ok != 400 {
			t.Errorf("%d of 400 short connections answered 200:\n%s", ok, out)
		}
		if got := failures(t); got != failed {
			t.Errorf("netward_syn_replay_failures_total rose by %v during the churn, want 0", got-failed)
		}
	})

	t.Run("StatusShowsKernelLeg", e.checkStatusShowsKernelLeg)

	// The SYN is steered into the TUN first, so after kill -9 the TUN is
	// gone and the fail mode (open) decides, as without replay: no rule
	// is left that would send a SYN to the dead listener.
	t.Run("CrashFailsOpen", func(t *testing.T) {
		d.nw.Kill()
		if out, err := e.curlTLS(t, "4", handoffSNI, "/", "--max-time", "5"); err != nil || !strings.Contains(out, "remote=") {
			t.Errorf("after kill -9, a new flow is not forwarded (fail open): %v\n%s", err, out)
		}
		labtest.Run(t, l.Appliance, labtest.Netward(t), "cleanup", "--tun", d.nw.TUN)
	})
}
