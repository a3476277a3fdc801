package opslab

import (
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestBuildSYN: the SYNs SYNFlood writes are valid IPv4 TCP SYNs, as
// gVisor (netward's stack) checks them.
func TestBuildSYN(t *testing.T) {
	src, dst := [4]byte{198, 51, 100, 7}, [4]byte{192, 0, 2, 2}
	for _, tc := range []struct {
		sport, dport uint16
		seq          uint32
	}{{1024, 9444, 0}, {65535, 1, 0xffffffff}, {40000, 443, 0x12345678}} {
		p := make([]byte, 40)
		buildSYN(p, src, dst, tc.sport, tc.dport, tc.seq)
		ip := header.IPv4(p)
		if ip.TransportProtocol() != header.TCPProtocolNumber || ip.HeaderLength() != 20 || ip.TotalLength() != 40 {
			t.Fatalf("%+v: bad IPv4 header %x", tc, p[:20])
		}
		tcp := header.TCP(p[20:])
		if tcp.SourcePort() != tc.sport || tcp.DestinationPort() != tc.dport || tcp.SequenceNumber() != tc.seq || tcp.Flags() != header.TCPFlagSyn {
			t.Errorf("%+v: TCP header %x", tc, p[20:])
		}
		if !tcp.IsChecksumValid(tcpip.AddrFrom4(src), tcpip.AddrFrom4(dst), 0, 0) {
			t.Errorf("%+v: TCP checksum %#04x is not valid", tc, tcp.Checksum())
		}
	}
}

func TestParseMetricsDelta(t *testing.T) {
	before, err := ParseMetrics("# TYPE netward_verdicts_total counter\n" +
		"netward_verdicts_total{action=\"allow\",rule=\"default\"} 3\n" +
		"# TYPE go_goroutines gauge\ngo_goroutines 18\n")
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseMetrics("# TYPE netward_verdicts_total counter\n" +
		"netward_verdicts_total{action=\"allow\",rule=\"default\"} 5\n" +
		"netward_verdicts_total{action=\"deny\",rule=\"r\"} 1\n" +
		"# TYPE go_goroutines gauge\ngo_goroutines 20\n")
	if err != nil {
		t.Fatal(err)
	}
	d := Delta(before, after, "netward_verdicts_total")
	if len(d) != 2 || d["action=allow,rule=default"] != 2 || d["action=deny,rule=r"] != 1 {
		t.Errorf("Delta = %v", d)
	}
	if v := after.Value("netward_verdicts_total", "action", "deny"); v != 1 {
		t.Errorf("Value(action=deny) = %g", v)
	}
	if v := after.Value("netward_verdicts_total"); v != 6 {
		t.Errorf("Value(all) = %g", v)
	}
	if v := after.Value("go_goroutines"); v != 20 {
		t.Errorf("go_goroutines = %g", v)
	}
	if after.Has("nope") || after.Value("nope") != 0 {
		t.Error("a missing family is not 0")
	}
}

// TestJudge: the soak's criteria fail on each kind of problem they exist
// for, and pass a clean run.
func TestJudge(t *testing.T) {
	clean := func() *SoakResult {
		r := &SoakResult{
			Baseline: Sample{Goroutines: 18, RSS: 20 << 20, FlowsTotal: 0},
			Final:    Sample{Goroutines: 19, RSS: 40 << 20, FlowsTotal: 4000},
			TUN:      lab.LinkStats{RxPackets: 40000, TxPackets: 40000},
			Verdicts: map[string]float64{"action=allow,rule=default": 2000, "action=deny,rule=soak-deny-host": 1000, "action=deny,rule=soak-deny-sni": 1000},
		}
		r.Ops[HTTPAllowed].OK, r.Ops[TLSAllowed].OK, r.Ops[HTTPDenied].OK, r.Ops[TLSDenied].OK = 1000, 1000, 1000, 1000
		return r
	}
	for _, tc := range []struct {
		name    string
		breakIt func(r *SoakResult)
		want    string // "" = pass
	}{
		{"Clean", func(*SoakResult) {}, ""},
		{"GoroutineLeak", func(r *SoakResult) { r.Final.Goroutines = 18 + GoroutineSlack + 1 }, "goroutines did not come back"},
		{"RSSLeak", func(r *SoakResult) { r.Final.RSS = 30<<20 + RSSSlack + 1<<20 }, "RSS did not come back"},
		{"FlowsLeft", func(r *SoakResult) { r.Final.FlowsActive = 3 }, "still active"},
		{"DeniedLetThrough", func(r *SoakResult) { r.Ops[HTTPDenied].OK--; r.Ops[HTTPDenied].Wrong++ }, "verdict the rules do not give"},
		{"Errors", func(r *SoakResult) { r.Ops[TLSAllowed].OK -= 10; r.Ops[TLSAllowed].Err += 10 }, "connections failed"},
		{"NotThroughNetward", func(r *SoakResult) { r.TUN = lab.LinkStats{} }, "did not cross netward"},
		{"VerdictsMiscounted", func(r *SoakResult) { r.Verdicts["action=deny,rule=soak-deny-sni"] = 999 }, "soak-deny-sni"},
		{"FlowsMiscounted", func(r *SoakResult) { r.Final.FlowsTotal = 5000 }, "netward_flows_total"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := clean()
			tc.breakIt(r)
			judge(r, 30*time.Second)
			got := strings.Join(r.Failures, "\n")
			switch {
			case tc.want == "" && got != "":
				t.Errorf("a clean run failed: %s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("failures %q, want one with %q", got, tc.want)
			}
		})
	}
}
