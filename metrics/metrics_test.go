package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// scrape fetches /metrics from h and returns "name{labels}" → value for
// netward's own series.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, fam := range fams {
		if !strings.HasPrefix(name, "netward_") {
			continue
		}
		for _, m := range fam.Metric {
			out[seriesName(name, m)] = value(m)
		}
	}
	return out
}

func seriesName(name string, m *dto.Metric) string {
	var labels []string
	for _, l := range m.Label {
		labels = append(labels, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(labels)
	if len(labels) == 0 {
		return name
	}
	return name + "{" + strings.Join(labels, ",") + "}"
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return -1
}

func TestCountersMoveExactly(t *testing.T) {
	now := t0
	m := New(Options{Version: "1.2.3", Now: func() time.Time { return now }})
	m.SetTUNStats(func() TUNStats {
		return TUNStats{RxPackets: 10, TxPackets: 9, RxDropped: 1, TxDropped: 2, AcksDelayed: 7, AcksMerged: 4, SynsHeld: 6, SynTimeouts: 1, SynOverflows: 2, FINsMerged: 11, HandoffTimeWaits: 3, HandoffTimeWaitErrors: 1}
	})
	m.SetEventStats(func() EventStats { return EventStats{Emitted: 7, Written: 5, Dropped: 1, Failed: 1} })
	m.SetUpstreamStats(func() UpstreamStats {
		return UpstreamStats{Kernel: true, KernelSockets: 6, Fallbacks: 8, Refused: 2, Unreachable: 3, ClientGone: 4}
	})

	a := m.StartFlow(1, ap("192.0.2.1:40000"), ap("198.51.100.1:443"), t0)
	b := m.StartFlow(2, ap("192.0.2.2:40001"), ap("198.51.100.2:80"), t0)
	a.SetVerdict("allow", "web")
	b.SetVerdict("deny", "")
	m.Verdict("deny", "") // refused at the SYN: a verdict, not a flow
	a.AddToServer(100)
	a.AddToServer(17)
	a.AddToClient(5000)
	a.AddToServer(0)
	a.AddToServer(-3)
	m.InspectError("tls")
	m.InspectError("tls")
	m.InspectError("http")
	m.InspectTimeout()
	m.LimitHit("max_flows")
	m.RulesLoaded("abc123", 42, t0)
	m.RulesReloadFailed(errors.New("rules.yaml:3: bad"))
	m.RulesLoaded("def456", 43, t0.Add(time.Minute))
	if ts, tc := b.End(); ts != 0 || tc != 0 {
		t.Fatalf("b.End() = %d, %d", ts, tc)
	}
	b.End() // twice is harmless

	got := scrape(t, m.Handler(false))
	want := map[string]float64{
		"netward_flows_total":                                 2,
		"netward_flows_active":                                1,
		"netward_bytes_total{direction=toserver}":             117,
		"netward_bytes_total{direction=toclient}":             5000,
		"netward_verdicts_total{action=allow,rule=web}":       1,
		"netward_verdicts_total{action=deny,rule=default}":    2,
		"netward_inspect_errors_total{kind=tls}":              2,
		"netward_inspect_errors_total{kind=http}":             1,
		"netward_inspect_timeouts_total":                      1,
		"netward_limit_hits_total{limit=max_flows}":           1,
		"netward_rule_reloads_total{result=ok}":               2,
		"netward_rule_reloads_total{result=failed}":           1,
		"netward_rules_info{hash=def456}":                     1,
		"netward_rules":                                       43,
		"netward_rules_loaded_timestamp_seconds":              float64(t0.Add(time.Minute).Unix()),
		"netward_tun_packets_total{direction=rx}":             10,
		"netward_tun_packets_total{direction=tx}":             9,
		"netward_tun_dropped_total{direction=rx}":             1,
		"netward_tun_dropped_total{direction=tx}":             2,
		"netward_tun_acks_delayed_total{result=written}":      3,
		"netward_tun_acks_delayed_total{result=merged}":       4,
		"netward_syn_time_wait_total{result=waited}":          5,
		"netward_tun_fins_merged_total":                       11,
		"netward_syn_time_wait_total{result=timeout}":         1,
		"netward_syn_time_wait_total{result=overflow}":        2,
		"netward_handoff_time_wait_total{result=destroyed}":   3,
		"netward_handoff_time_wait_total{result=failed}":      1,
		"netward_upstream_info{leg=kernel}":                   1,
		"netward_upstream_kernel_sockets":                     6,
		"netward_upstream_fallbacks_total":                    8,
		"netward_upstream_failures_total{reason=refused}":     2,
		"netward_upstream_failures_total{reason=unreachable}": 3,
		"netward_client_handshake_failures_total":             4,
		"netward_events_total{result=written}":                5,
		"netward_events_total{result=dropped}":                1,
		"netward_events_total{result=failed}":                 1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "netward_rules_info") && k != "netward_rules_info{hash=def456}" {
			t.Errorf("stale rules_info series %s", k)
		}
		if strings.HasPrefix(k, "netward_build_info") && !strings.Contains(k, "version=1.2.3") {
			t.Errorf("build_info without version: %s", k)
		}
	}

	// Unknown action values are folded, not turned into new series.
	a.SetVerdict("ALLOW; drop table", "web")
	if got := scrape(t, m.Handler(false)); got["netward_verdicts_total{action=other,rule=web}"] != 1 {
		t.Errorf("unknown action not folded into other: %v", got)
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestHealthReadyPprof(t *testing.T) {
	m := New(Options{})
	h := m.Handler(false)
	if code, _ := get(t, h, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get(t, h, "/readyz"); code != 503 {
		t.Errorf("/readyz before SetReady = %d, want 503", code)
	}
	var up bool
	var mu sync.Mutex
	m.SetReady(func() bool { mu.Lock(); defer mu.Unlock(); return up })
	if code, _ := get(t, h, "/readyz"); code != 503 {
		t.Errorf("/readyz with datapath down = %d, want 503", code)
	}
	mu.Lock()
	up = true
	mu.Unlock()
	if code, _ := get(t, h, "/readyz"); code != 200 {
		t.Errorf("/readyz with datapath up = %d, want 200", code)
	}
	if code, _ := get(t, h, "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without the flag = %d, want 404", code)
	}
	if code, _ := get(t, h, "/status"); code != 404 {
		t.Errorf("/status on the metrics listener = %d, want 404", code)
	}
	if code, body := get(t, m.Handler(true), "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ with the flag = %d", code)
	}
	// The default registry has the Go runtime collectors too.
	if _, body := get(t, h, "/metrics"); !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Error("Go and process collectors missing from /metrics")
	}
}

func TestListenMetrics(t *testing.T) {
	m := New(Options{})
	srv, err := m.ListenMetrics("127.0.0.1:0", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz = %s", resp.Status)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ListenMetrics("256.0.0.1:1", false, nil); err == nil {
		t.Fatal("listening on a bad address succeeded")
	}
}

func TestNilSafe(t *testing.T) {
	var m *Metrics
	f := m.StartFlow(1, ap("192.0.2.1:1"), ap("192.0.2.2:2"), t0)
	f.SetApp("tls")
	f.SetName("a")
	f.SetVerdict("allow", "")
	f.AddToServer(1)
	f.AddToClient(1)
	f.End()
	m.InspectError("x")
	m.Verdict("deny", "")
	m.InspectTimeout()
	m.LimitHit("x")
	m.RulesLoaded("h", 1, t0)
	m.RulesReloadFailed(nil)
	m.SetReady(func() bool { return true })
	if m.Ready() || m.Flows().Len() != 0 {
		t.Fatal("nil Metrics reports state")
	}
}

func TestFlowTableConcurrent(t *testing.T) {
	m := New(Options{})
	const workers, perWorker = 8, 500
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// A status reader runs all the time, as `netward status` may.
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				m.Status(Filter{})
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				id := uint64(w*perWorker + i)
				f := m.StartFlow(id, ap("192.0.2.1:1000"), ap("198.51.100.1:443"), t0)
				f.SetApp("tls")
				f.SetName("example.com")
				f.AddToServer(3)
				f.AddToClient(5)
				f.SetVerdict("allow", "web")
				if ts, tc := f.End(); ts != 3 || tc != 5 {
					t.Errorf("flow %d: End = %d, %d", id, ts, tc)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	st := m.Status(Filter{})
	n := uint64(workers * perWorker)
	if st.Counters.FlowsActive != 0 || len(st.Flows) != 0 || st.Counters.FlowsTotal != n ||
		st.Counters.BytesToServer != 3*n || st.Counters.BytesToClient != 5*n || st.Counters.Verdicts["allow"] != n {
		t.Fatalf("after all flows ended: %+v", st.Counters)
	}
}

func TestStatusFlows(t *testing.T) {
	now := t0
	m := New(Options{Version: "v9", Now: func() time.Time { return now }})
	now = t0.Add(time.Minute)
	a := m.StartFlow(10, ap("192.0.2.1:40000"), ap("198.51.100.1:443"), t0.Add(10*time.Second))
	a.SetApp("tls")
	a.SetName("www.example.com")
	a.SetVerdict("allow", "web")
	a.AddToServer(10)
	b := m.StartFlow(11, ap("[2001:db8::1]:40001"), ap("[2001:db8::2]:80"), t0)
	b.SetApp("http")
	b.SetVerdict("deny", "")
	m.StartFlow(12, ap("10.1.2.3:5555"), ap("198.51.100.1:22"), t0.Add(20*time.Second))

	st := m.Status(Filter{})
	if st.Version != "v9" || st.UptimeSeconds != 60 || st.Rules.Loaded {
		t.Errorf("status header: %+v", st)
	}
	var ids []uint64
	for _, f := range st.Flows {
		ids = append(ids, f.ID)
	}
	if len(ids) != 3 || ids[0] != 11 || ids[1] != 10 || ids[2] != 12 {
		t.Fatalf("flows not oldest first: %v", ids)
	}
	fa := st.Flows[1]
	if fa.App != "tls" || fa.Name != "www.example.com" || fa.Verdict != "allow" || fa.Rule != "web" ||
		fa.BytesToServer != 10 || fa.AgeSeconds != 50 {
		t.Errorf("flow a: %+v", fa)
	}
	if st.Flows[0].Rule != DefaultRule || st.Flows[2].Verdict != VerdictPending {
		t.Errorf("default rule / pending verdict: %+v %+v", st.Flows[0], st.Flows[2])
	}
}
