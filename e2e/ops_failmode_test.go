package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
)

// TestOpsFailMode: after kill -9 of netward, fail-open lets client traffic
// through (plain kernel forwarding), fail-closed blocks it; then `netward
// cleanup` and a new `netward run` inspect again. One lab for both modes.
func TestOpsFailMode(t *testing.T) {
	labtest.RequireTools(t, "curl")
	e := newOpsEnv(t)
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			nw := e.start(t, "--fail-mode", mode)
			e.inspected(t, nw, "before kill -9")

			nw.Kill()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if ok, err := e.lab.Appliance.HasLink(ctx, nw.TUN); err != nil || ok {
				t.Fatalf("after kill -9 the TUN %s still exists (%v): this test would prove nothing", nw.TUN, err)
			}
			accepted := e.http.Counts().Accepted
			for _, v6 := range []bool{false, true} {
				dst := e.appAddr(v6, opsHTTPPort)
				r := e.curl(t, "--connect-timeout", "3", "-H", "Host: app.example", fmt.Sprintf("http://%s/", dst))
				switch mode {
				case "open":
					if r.Code != "200" {
						t.Errorf("fail-open, netward killed: curl %s got %s (exit %d: %s), want 200 by kernel forwarding", dst, r.Code, r.Exit, r.Stderr)
						continue
					}
					rec, err := e.http.WaitConn(ctx, r.Local)
					if err != nil || rec.Remote != r.Local {
						t.Errorf("fail-open: the application did not see the client %s: %v", r.Local, err)
					}
				case "closed":
					if r.Code == "200" || r.Exit == 0 {
						t.Errorf("fail-closed, netward killed: curl %s got %s, want it blocked", dst, r.Code)
					} else {
						t.Logf("fail-closed: curl %s blocked: exit %d: %s", dst, r.Exit, r.Stderr)
					}
				}
			}
			if mode == "closed" {
				if n := e.http.Counts().Accepted - accepted; n != 0 {
					t.Errorf("fail-closed: the application accepted %d connections while netward was dead", n)
				}
			}

			out := labtest.Run(t, e.lab.Appliance, labtest.Netward(t), "cleanup", "--tun", nw.TUN)
			if !strings.Contains(out, "removed") {
				t.Errorf("netward cleanup after kill -9 removed nothing:\n%s", out)
			}
			nw2 := e.start(t, "--fail-mode", mode)
			e.inspected(t, nw2, "after cleanup and restart")
			if err := nw2.Terminate(10 * time.Second); err != nil {
				t.Errorf("netward on SIGTERM: %v", err)
			}
		})
	}
	// Seven netward processes, each started within about a second of the
	// last, append to one event log: a SIEM joins events by flow_id, so a
	// flow_id must never name two flows.
	t.Run("FlowIDsUniqueAcrossRestarts", func(t *testing.T) {
		// Three more quick restarts (as systemd's Restart= would do), a
		// flow each.
		for i := range 3 {
			nw := e.start(t)
			e.inspected(t, nw, fmt.Sprintf("quick restart %d", i+1))
			if err := nw.Terminate(10 * time.Second); err != nil {
				t.Fatalf("netward on SIGTERM: %v", err)
			}
		}
		evs, err := opsReadEVE(filepath.Join(e.lab.Dir, "eve.json"))
		if err != nil {
			t.Fatal(err)
		}
		flows := map[uint64][]string{}
		n := 0
		for _, ev := range evs {
			if ev.EventType == "flow" {
				flows[ev.FlowID] = append(flows[ev.FlowID], ev.src().String()+" "+ev.Timestamp)
				n++
			}
		}
		for id, f := range flows {
			if len(f) > 1 {
				t.Errorf("flow_id %d names %d flows of different netward runs: %v", id, len(f), f)
			}
		}
		if n < 7 {
			t.Errorf("%d flow events in the log, want ≥ 7 (one per netward run)", n)
		}
	})
}

// inspected: a request crosses nw's TUN, reaches the application from the
// client's own address, and nw logs the flow.
func (e *opsEnv) inspected(t *testing.T, nw *lab.Netward, when string) {
	t.Helper()
	dst := e.appAddr(false, opsHTTPPort)
	var r opsCurlResult
	e.crossed(t, 4, func() { r = e.curl(t, "-H", "Host: app.example", fmt.Sprintf("http://%s/", dst)) })
	if r.Code != "200" {
		t.Fatalf("%s: curl through netward: %s (exit %d: %s)", when, r.Code, r.Exit, r.Stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nw.WaitFlows(ctx, 1, func(f lab.FlowLog) bool { return f.Src == r.Local.String() }); err != nil {
		t.Errorf("%s: netward did not log the flow from %s: %v", when, r.Local, err)
	}
	opsCheckFlowEvents(t, nw.EventLog, opsWantFlow{src: r.Local, dst: dst, app: "http", verdict: "allow", rule: "default",
		host: "app.example", url: "/", method: "GET", toServer: uint64(r.Sent), toClient: uint64(r.Recv), state: "closed", reason: "timeout"})
}
