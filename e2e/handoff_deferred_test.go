package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/e2e/peer"
)

// deferredHandoffBytes is TestHandoffDeferred's --handoff-after-bytes.
const deferredHandoffBytes = 4 << 20

// TestHandoffDeferred: with --handoff-after-bytes and --handoff-after-age,
// a short TLS flow (one request) ends in gVisor and is never handed off;
// a 64 MiB download is handed off in the middle, once it moved the
// threshold, so most of it never crosses the TUN, and it arrives whole;
// 100 MiB each way at once, switched while both directions are in
// flight, lose nothing (SHA-256); iperf3 completes both ways; and a flow
// that moves few bytes but outlives the age (a ping-pong) is handed off
// by age.
func TestHandoffDeferred(t *testing.T) {
	e := newHandoffEnv(t, "--handoff-after-bytes", strconv.Itoa(deferredHandoffBytes), "--handoff-after-age", "1s")
	d := e.d

	t.Run("ShortStaysInGVisor", func(t *testing.T) {
		for _, fam := range []string{"4", "6"} {
			before := e.handoffs(t)
			out, err := e.curlTLS(t, fam, handoffSNI, "/")
			if err != nil || !strings.Contains(out, "remote=") {
				t.Fatalf("IPv%s: curl https: %v\n%s", fam, err, out)
			}
			if got := e.handoffs(t); got != before {
				t.Errorf("IPv%s: a one-request TLS flow was handed off (%v → %v handoffs)", fam, before, got)
			}
		}
	})

	t.Run("BulkHandedOffMidway", func(t *testing.T) {
		ctx := context.Background()
		for _, fam := range []string{"4", "6"} {
			before := e.handoffs(t)
			tb, err := d.nw.TUNStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			const n = 64 << 20
			out, err := e.curlTLS(t, fam, handoffSNI, "/bytes?n="+strconv.Itoa(n), "-o", "/dev/null", "-w", "%{size_download}")
			if err != nil || strings.TrimSpace(out) != strconv.Itoa(n) {
				t.Fatalf("IPv%s: curl 64 MiB: %v, got %q bytes", fam, err, out)
			}
			ta, err := d.nw.TUNStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			delta := ta.Sub(tb)
			if got := e.handoffs(t); got != before+1 {
				t.Errorf("IPv%s: %v handoffs during a 64 MiB download, want 1\n%s", fam, got-before, grepLines(e.metrics(t), "netward_handoff_total"))
			}
			// The threshold and what was in flight at the switch cross
			// the TUN, not the rest.
			if moved := delta.RxBytes + delta.TxBytes; moved < deferredHandoffBytes || moved > 4*deferredHandoffBytes {
				t.Errorf("IPv%s: %d bytes crossed the TUN for a 64 MiB download, want between %d and %d", fam, moved, deferredHandoffBytes, 4*deferredHandoffBytes)
			}
			t.Logf("IPv%s: TUN during 64 MiB over TLS: %v", fam, delta)
		}
	})

	// (A download after the client's FIN, as xfer makes with little to
	// send, stays in gVisor: the kernel cannot repair a half-closed
	// connection, and nothing reads the client to switch it.)
	t.Run("SHA100MiBBothWays", func(t *testing.T) { checkXferHandedOff(t, d, e.handoffs, "4", 100<<20, 100<<20) })
	t.Run("SHA100MiBBothWaysv6", func(t *testing.T) { checkXferHandedOff(t, d, e.handoffs, "6", 100<<20, 100<<20) })

	t.Run("Iperf3", func(t *testing.T) {
		for _, reverse := range []bool{false, true} {
			before := e.handoffs(t)
			checkIperfArgs(t, d, reverse)
			// The control connection moves a few hundred bytes, but
			// lives the 3 s of the test: handed off by age.
			if got := e.handoffs(t); got < before+2 {
				t.Errorf("iperf3 (reverse %v): %v handoffs, want ≥ 2 (data by bytes, control by age)", reverse, got-before)
			}
		}
	})

	t.Run("ByAge", func(t *testing.T) {
		before := e.handoffs(t)
		var r peer.LatencyResult
		labtest.RunPeer(t, d.lab.Client, &r, "pingpong", "-addr", d.appAddr("4", peer.EchoPort), "-size", "16", "-d", "2500ms")
		if r.N == 0 {
			t.Fatalf("no ping-pong round: %+v", r)
		}
		if got := e.handoffs(t); got != before+1 {
			t.Errorf("a 2.5 s ping-pong of %d rounds of 16 bytes: %v handoffs, want 1 (by age)\n%s", r.N, got-before, grepLines(e.metrics(t), "netward_handoff_total"))
		}
		t.Logf("ping-pong: %d rounds, p50 %.0f µs, p99 %.0f µs", r.N, r.P50, r.P99)
	})

	t.Run("Metrics", func(t *testing.T) {
		t.Logf("%s", grepLines(e.metrics(t), "netward_handoff_total"))
		t.Logf("%s", grepLines(d.nw.Log(), "handoff"))
	})
}
