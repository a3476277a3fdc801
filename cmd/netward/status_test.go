package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/metrics"
)

// statusServer runs an admin socket with three flows and returns its path.
func statusServer(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nws") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "admin.sock")

	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	m := metrics.New(metrics.Options{Version: "1.2.3", Now: func() time.Time { return now }})
	now = t0.Add(time.Hour + 2*time.Minute + 3*time.Second)
	m.RulesLoaded("3f2a9c1e0b7d5a6f8e9d0c1b2a3f4e5d", 42, t0)
	m.RulesReloadFailed(errors.New("rules.yaml:7: unknown app \"ftp\""))
	m.SetReady(func() bool { return true })
	m.InspectTimeout()
	m.InspectError("tls")
	m.LimitHit("max_flows")
	m.SetTUNStats(func() metrics.TUNStats { return metrics.TUNStats{RxPackets: 100, TxPackets: 90, RxDropped: 1} })
	m.SetEventStats(func() metrics.EventStats { return metrics.EventStats{Emitted: 12, Written: 10, Dropped: 2} })

	ap := netip.MustParseAddrPort
	a := m.StartFlow(17, ap("10.0.0.5:51234"), ap("203.0.113.7:443"), now.Add(-12*time.Second))
	a.SetApp("tls")
	a.SetName("www.example.com")
	a.SetVerdict("allow", "web")
	a.AddToServer(517)
	a.AddToClient(4810)
	b := m.StartFlow(18, ap("[2001:db8::5]:40000"), ap("[2001:db8::80]:80"), now.Add(-3*time.Second))
	b.SetApp("http")
	b.SetName("evil host\n")
	b.SetVerdict("deny", "")
	m.StartFlow(19, ap("10.0.0.6:40001"), ap("198.51.100.22:22"), now.Add(-1*time.Second))

	srv, err := m.ListenAdmin(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return path
}

func runStatusTest(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := statusMain(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestStatusText(t *testing.T) {
	path := statusServer(t)
	code, out, errOut := runStatusTest(t, "--socket", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := `netward 1.2.3, up 1h2m3s, ready
rules     3f2a9c1e0b7d5a6f, 42 rules, loaded 2025-03-01T12:00:00Z, reloads ok 1 failed 1
          last reload failed: rules.yaml:7: unknown app "ftp"
flows     3 active, 3 total, bytes to server 517, to client 4810
verdicts  allow 1, deny 1
inspect   timeouts 1, errors tls 1
limits    max_flows 1
tun       rx 100 tx 90 packets, dropped rx 1 tx 0
events    written 10, dropped 2, failed 0

tcp id=17 age=12s src=10.0.0.5 sport=51234 dst=203.0.113.7 dport=443 app=tls name=www.example.com verdict=allow rule=web bytes_toserver=517 bytes_toclient=4810
tcp id=18 age=3s src=2001:db8::5 sport=40000 dst=2001:db8::80 dport=80 app=http name="evil host\n" verdict=deny rule=default bytes_toserver=0 bytes_toclient=0
tcp id=19 age=1s src=10.0.0.6 sport=40001 dst=198.51.100.22 dport=22 verdict=pending bytes_toserver=0 bytes_toclient=0
netward status: 3 flow entries have been shown.
`
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
}

func TestStatusFilters(t *testing.T) {
	path := statusServer(t)
	tests := []struct {
		name string
		args []string
		ids  []string
	}{
		{"src ip", []string{"--src", "10.0.0.5"}, []string{"17"}},
		{"src prefix", []string{"--src", "10.0.0.0/24"}, []string{"17", "19"}},
		{"dst v6", []string{"--dst", "2001:db8::/32"}, []string{"18"}},
		{"dst port", []string{"--dst", ":22"}, []string{"19"}},
		{"dst ip:port", []string{"--dst", "203.0.113.7:443"}, []string{"17"}},
		{"verdict", []string{"--verdict", "deny"}, []string{"18"}},
		{"pending", []string{"--verdict", "pending"}, []string{"19"}},
		{"rule", []string{"--rule", "web"}, []string{"17"}},
		{"default rule", []string{"--rule", "default"}, []string{"18"}},
		{"combined, none", []string{"--rule", "web", "--verdict", "deny"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runStatusTest(t, append([]string{"-socket", path}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var ids []string
			for _, line := range strings.Split(out, "\n") {
				if id, ok := strings.CutPrefix(line, "tcp id="); ok {
					ids = append(ids, strings.Fields(id)[0])
				}
			}
			if strings.Join(ids, ",") != strings.Join(tt.ids, ",") {
				t.Errorf("flows %v, want %v\n%s", ids, tt.ids, out)
			}
			if !strings.Contains(out, "flows     3 active") {
				t.Errorf("counters must not be filtered: %s", out)
			}
		})
	}
}

func TestStatusJSON(t *testing.T) {
	path := statusServer(t)
	code, out, errOut := runStatusTest(t, "--socket", path, "--json", "--verdict", "allow")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var st metrics.Status
	if err := dec.Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Version != "1.2.3" || st.Rules.Count != 42 || len(st.Flows) != 1 || st.Flows[0].Name != "www.example.com" ||
		st.Counters.Verdicts["deny"] != 1 || st.Counters.Events.Dropped != 2 {
		t.Errorf("json status: %+v", st)
	}
}

func TestStatusErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "nws")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "netward.yaml")
	if err := os.WriteFile(cfg, []byte("admin:\n  socket: "+filepath.Join(dir, "other.sock")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		code     int
		inStderr string
	}{
		{"no netward", []string{"--socket", filepath.Join(dir, "none.sock")}, 1, "is netward running?"},
		{"socket from config", []string{"--config", cfg}, 1, "other.sock"},
		{"bad config", []string{"--config", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{"bad src", []string{"--src", "nope"}, 2, "--src"},
		{"bad verdict", []string{"--verdict", "maybe"}, 2, "--verdict"},
		{"bad flag", []string{"--frobnicate"}, 2, "frobnicate"},
		{"extra arg", []string{"extra"}, 2, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runStatusTest(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.inStderr) {
				t.Errorf("exit %d (want %d), stderr %q (want %q in it)", code, tt.code, errOut, tt.inStderr)
			}
		})
	}
}
