package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/cmd/soak/opslab"
	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/metrics"
)

// Issue 5 (operations): the event log, the metrics, fail mode, limits and
// `netward status`, end to end through a real `netward run` in the lab.

// The application's servers in the ops labs (no nwpeer there).
const (
	opsHTTPPort = 8080
	opsTLSPort  = 8443
	// opsBlackholePort drops every SYN in the application (iptables), so
	// netward's upstream handshakes to it never finish.
	opsBlackholePort = 9444
	opsMetricsAddr   = "127.0.0.1:9740"
)

// opsRules: allow by default; refuse two ports at the SYN; deny one Host
// and one SNI; alert (allow and log) another Host. The port rules come
// first: a rule on addresses and ports alone decides at the SYN only when
// no rule before it needs the flow's content.
const opsRules = `default: allow
rules:
  - name: deny-port-8081
    action: deny
    dst_port: [8081]
  - name: drop-port-8082
    action: drop
    dst_port: [8082]
  - name: deny-blocked-host
    action: deny
    host: [blocked.example]
  - name: deny-blocked-sni
    action: deny
    sni: [blocked.example]
  - name: alert-watched-host
    action: alert
    host: [watched.example]
`

// opsEnv is a lab with the application's HTTP and TLS servers (which count
// every connection's bytes) and netward with rules and metrics.
type opsEnv struct {
	lab     *lab.Lab
	nw      *lab.Netward
	http    *opslab.Server
	https   *opslab.Server
	cert    *opslab.Cert
	certPEM string
	metrics *opslab.MetricsClient
	rules   string
	args    []string // netward run flags besides the lab's
}

// newOpsEnv builds the lab and the servers; netward is not started.
func newOpsEnv(t *testing.T) *opsEnv {
	t.Helper()
	l := labtest.New(t, lab.Options{RPFilter: 1})
	e := &opsEnv{lab: l}
	var err error
	if e.cert, err = opslab.SelfSigned("app.example", "blocked.example", "watched.example"); err != nil {
		t.Fatal(err)
	}
	if e.certPEM, err = e.cert.WritePEM(l.Dir, "app-cert.pem"); err != nil {
		t.Fatal(err)
	}
	app := opslab.NS{Name: l.App.Name}
	if e.http, err = opslab.Serve(app, ":"+strconv.Itoa(opsHTTPPort), opslab.ServerOptions{Record: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.http.Close() })
	if e.https, err = opslab.Serve(app, ":"+strconv.Itoa(opsTLSPort), opslab.ServerOptions{Record: true, TLS: e.cert.ServerConfig()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.https.Close() })
	e.rules = filepath.Join(l.Dir, "rules.yaml")
	if err := os.WriteFile(e.rules, []byte(opsRules), 0o644); err != nil {
		t.Fatal(err)
	}
	e.metrics = opslab.NewMetricsClient(opslab.NS{Name: l.Appliance.Name}, opsMetricsAddr)
	e.args = []string{"--rules", e.rules, "--metrics", opsMetricsAddr}
	return e
}

func (e *opsEnv) start(t *testing.T, extra ...string) *lab.Netward {
	t.Helper()
	e.nw = labtest.StartNetward(t, e.lab, lab.NetwardOptions{Args: append(append([]string{}, e.args...), extra...)})
	return e.nw
}

func (e *opsEnv) appAddr(v6 bool, port uint16) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(e.lab.Topo.AppV6.Addr(), port)
	}
	return netip.AddrPortFrom(e.lab.Topo.AppV4.Addr(), port)
}

func (e *opsEnv) scrape(t testing.TB) opslab.Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := e.metrics.Scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *opsEnv) tunStats(t testing.TB) lab.LinkStats {
	t.Helper()
	s, err := e.nw.TUNStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// opsCurlResult is what curl's --write-out told about one transfer.
type opsCurlResult struct {
	Local      netip.AddrPort
	Code       string // HTTP status, "000" when there was none
	Sent, Recv int64  // request (head+body) and response (head+body) bytes: TCP payload for plain HTTP
	Exit       int    // curl's exit status
	Stderr     string
}

// curl runs curl in the client namespace; a failing curl is returned, not
// fatal (denied flows fail).
func (e *opsEnv) curl(t testing.TB, args ...string) opsCurlResult {
	t.Helper()
	full := append([]string{"curl", "-sS", "--max-time", "10", "-o", "/dev/null",
		"-w", "%{local_ip}|%{local_port}|%{http_code}|%{size_request}|%{size_upload}|%{size_header}|%{size_download}"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := e.lab.Client.Run(ctx, full...)
	var r opsCurlResult
	if err != nil {
		re, ok := err.(*lab.RunError)
		if !ok {
			t.Fatal(err)
		}
		r.Exit, r.Stderr = re.ExitCode(), strings.TrimSpace(re.Stderr)
	}
	f := strings.Split(strings.TrimSpace(out), "|")
	if len(f) != 7 {
		t.Fatalf("curl %s: write-out %q (exit %d: %s)", strings.Join(args, " "), out, r.Exit, r.Stderr)
	}
	port, _ := strconv.Atoi(f[1])
	if a, err := netip.ParseAddr(f[0]); err == nil { // empty when curl did not connect
		r.Local = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	r.Code = f[2]
	n := make([]int64, 4)
	for i := range n {
		n[i], _ = strconv.ParseInt(f[3+i], 10, 64)
	}
	r.Sent, r.Recv = n[0]+n[1], n[2]+n[3]
	return r
}

// opsWantFlow is what the event log must say about one connection.
type opsWantFlow struct {
	src, dst      netip.AddrPort
	app           string // app_proto
	verdict, rule string // netward.verdict / netward.rule
	alert         string // alert.action: "", "blocked" or "allowed"
	signature     string // alert.signature
	sni           string // tls.sni ("" = no tls event)
	tlsVersion    string
	host, url     string // http.hostname, http.url ("" = no http event)
	method        string
	httpStatus    int
	// flow.bytes_toserver and flow.bytes_toclient: the TCP payload the
	// client sent and received (Suricata counts the client's side of the
	// wire; for a relayed flow that is also what the server received and
	// sent; for a refused one it includes the held request and netward's
	// answer, as the event README's example shows: 517 and 7 for a denied
	// ClientHello).
	toServer, toClient uint64
	unknownBytes       bool   // the client's byte counts are not known (curl over TLS)
	state              string // flow.state
	reason             string // flow.reason
}

// opsCheckFlowEvents finds the events of the connection from w.src and checks
// each against w.
func opsCheckFlowEvents(t testing.TB, path string, w opsWantFlow) []opsEvent {
	t.Helper()
	evs := opsWaitFlowEvents(t, path, w.src)
	bad := false
	errorf := func(format string, args ...any) {
		t.Helper()
		bad = true
		t.Errorf(format, args...)
	}
	byType := map[string][]opsEvent{}
	for _, e := range evs {
		byType[e.EventType] = append(byType[e.EventType], e)
		if e.src() != w.src || e.dst() != w.dst {
			errorf("%s event: src %s dest %s, want %s → %s\n%s", e.EventType, e.src(), e.dst(), w.src, w.dst, e.line)
		}
		if e.Proto != "TCP" {
			errorf("%s event: proto %q, want TCP", e.EventType, e.Proto)
		}
		if e.AppProto != w.app {
			errorf("%s event: app_proto %q, want %q\n%s", e.EventType, e.AppProto, w.app, e.line)
		}
	}
	var lines []string
	for _, e := range evs {
		lines = append(lines, e.line)
	}
	all := strings.Join(lines, "\n")
	count := func(typ string, want int) {
		if got := len(byType[typ]); got != want {
			errorf("%d %s events for the flow, want %d:\n%s", got, typ, want, all)
		}
	}
	// flow
	count("flow", 1)
	if len(byType["flow"]) == 1 {
		f := byType["flow"][0]
		if evs[len(evs)-1].EventType != "flow" {
			errorf("the flow event is not the flow's last event:\n%s", all)
		}
		ff := f.Flow
		if !w.unknownBytes && (*ff.BytesToServer != w.toServer || *ff.BytesToClient != w.toClient) {
			errorf("flow bytes_toserver %d bytes_toclient %d, want %d and %d (what the client sent and received)\n%s",
				*ff.BytesToServer, *ff.BytesToClient, w.toServer, w.toClient, f.line)
		}
		if ff.State != w.state || ff.Reason != w.reason {
			errorf("flow state %q reason %q, want %q %q\n%s", ff.State, ff.Reason, w.state, w.reason, f.line)
		}
		if *ff.Alerted != (w.alert != "") {
			errorf("flow alerted %v, want %v\n%s", *ff.Alerted, w.alert != "", f.line)
		}
		start, _ := time.Parse(opsEveTimeLayout, ff.Start)
		end, _ := time.Parse(opsEveTimeLayout, ff.End)
		if end.Before(start) || time.Since(start) > 5*time.Minute {
			errorf("flow start %s end %s", ff.Start, ff.End)
		}
		if f.Netward == nil || f.Netward.Verdict != w.verdict || f.Netward.Rule != w.rule {
			errorf("flow netward %+v, want verdict %q rule %q\n%s", f.Netward, w.verdict, w.rule, f.line)
		}
	}
	// alert
	if w.alert == "" {
		count("alert", 0)
	} else {
		count("alert", 1)
		if len(byType["alert"]) == 1 {
			a := byType["alert"][0]
			if a.Alert.Action != w.alert || a.Alert.Signature != w.signature || a.Alert.SignatureID == 0 || a.Alert.Severity < 1 || a.Alert.Severity > 3 || a.Alert.Category == "" {
				errorf("alert %+v, want action %q signature %q, a signature_id, severity 1..3 and a category\n%s", *a.Alert, w.alert, w.signature, a.line)
			}
		}
	}
	// tls
	if w.sni == "" {
		count("tls", 0)
	} else {
		count("tls", 1)
		if len(byType["tls"]) == 1 {
			e := byType["tls"][0]
			if e.TLS.SNI != w.sni || e.TLS.Version != w.tlsVersion {
				errorf("tls sni %q version %q, want %q %q\n%s", e.TLS.SNI, e.TLS.Version, w.sni, w.tlsVersion, e.line)
			}
			if e.TLS.JA3 == nil || len(e.TLS.JA3.Hash) != 32 || e.TLS.JA3.String == "" || e.TLS.JA4 == "" {
				errorf("tls event without ja3 hash/string and ja4:\n%s", e.line)
			}
		}
	}
	// http
	if w.host == "" {
		count("http", 0)
	} else {
		count("http", 1)
		if len(byType["http"]) == 1 {
			h := byType["http"][0].HTTP
			if h.Hostname != w.host || h.URL != w.url || h.Method != w.method || h.Protocol != "HTTP/1.1" || h.Status != w.httpStatus {
				errorf("http %+v, want hostname %q url %q method %q protocol HTTP/1.1 status %d\n%s",
					*h, w.host, w.url, w.method, w.httpStatus, byType["http"][0].line)
			}
		}
	}
	if bad {
		t.Logf("events of the flow:\n%s", all)
	}
	return evs
}

// opsCounterFamilies are the counters a flow moves; opsCheckDeltas requires
// every change in them to be one the test expects.
var opsCounterFamilies = []string{
	"netward_flows_total", "netward_verdicts_total", "netward_bytes_total",
	"netward_limit_hits_total", "netward_inspect_timeouts_total", "netward_inspect_errors_total",
}

// opsCheckDeltas compares the change of every counter family with want
// (family → series "label=value,..." → delta); families not in want must
// not change.
func opsCheckDeltas(t testing.TB, before, after opslab.Metrics, want map[string]map[string]float64) {
	t.Helper()
	for _, fam := range opsCounterFamilies {
		if !after.Has(fam) && len(want[fam]) > 0 {
			t.Errorf("/metrics has no %s", fam)
			continue
		}
		got := opslab.Delta(before, after, fam)
		w := want[fam]
		if w == nil {
			w = map[string]float64{}
		}
		if fmt.Sprint(opsSortedMap(got)) != fmt.Sprint(opsSortedMap(w)) {
			t.Errorf("%s changed by %v, want %v", fam, opsSortedMap(got), opsSortedMap(w))
		}
	}
}

func opsSortedMap(m map[string]float64) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("{%s}=%g", k, v))
	}
	sort.Strings(out)
	return out
}

// crossed fails the test unless at least n packets went each way through
// netward's TUN while f ran.
func (e *opsEnv) crossed(t testing.TB, n uint64, f func()) {
	t.Helper()
	before, mBefore := e.tunStats(t), e.scrape(t)
	f()
	d := e.tunStats(t).Sub(before)
	if d.RxPackets >= n && d.TxPackets >= n {
		return
	}
	// A flow handed off to the kernel after its verdict leaves the TUN
	// after its handshake: netward's own counters, which only flows it
	// relays move, must then show it.
	mAfter := e.scrape(t)
	handoffs := mAfter.Value("netward_handoff_total", "result", "ok") - mBefore.Value("netward_handoff_total", "result", "ok")
	relayed := mAfter.Value("netward_bytes_total") - mBefore.Value("netward_bytes_total")
	if handoffs > 0 && relayed > 0 && d.RxPackets > 0 && d.TxPackets > 0 {
		return
	}
	// With SYN replay (the default) only the SYN crosses: in, and back
	// out once netward has judged the flow and reached the server. A
	// denied flow relays nothing.
	replayed := mAfter.Value("netward_syn_replayed_total") - mBefore.Value("netward_syn_replayed_total")
	if replayed > 0 && d.RxPackets > 0 && d.TxPackets > 0 {
		return
	}
	t.Errorf("traffic did not cross netward: TUN %s moved %v (%.0f handoffs, %.0f bytes relayed, %.0f SYNs replayed), want ≥ %d packets each way", e.nw.TUN, d, handoffs, relayed, replayed, n)
}

// TestOps is issue 5's acceptance for the event log, the metrics and
// `netward status`: one lab, one netward with rules, events, metrics and
// the admin socket; each subtest makes its own flows and checks exactly
// what they changed.
func TestOps(t *testing.T) {
	labtest.RequireTools(t, "curl")
	e := newOpsEnv(t)
	e.start(t)
	client := e.lab.Topo.ClientV4.Addr()

	t.Run("Health", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
			code, body, err := e.metrics.Get(ctx, path)
			if err != nil || code != 200 || strings.TrimSpace(body) != want {
				t.Errorf("%s: %d %q %v, want 200 %q", path, code, body, err, want)
			}
		}
		m := e.scrape(t)
		// Counter vectors (verdicts, limit hits, …) appear with their first
		// series; these exist from the start.
		for _, fam := range []string{"netward_flows_total", "netward_bytes_total", "netward_flows_active", "netward_inspect_timeouts_total",
			"go_goroutines", "process_resident_memory_bytes", "netward_tun_packets_total", "netward_events_total"} {
			if !m.Has(fam) {
				t.Errorf("/metrics has no %s", fam)
			}
		}
	})

	// httpCase: curl to the HTTP server with a Host, then the event log,
	// the server's own count and the metrics must agree.
	httpCase := func(t *testing.T, v6 bool, host string, n int, w opsWantFlow, wantCode string) {
		before := e.scrape(t)
		dst := e.appAddr(v6, opsHTTPPort)
		url := fmt.Sprintf("http://%s/bytes?n=%d", dst, n)
		var r opsCurlResult
		e.crossed(t, 4, func() { r = e.curl(t, "-H", "Host: "+host, url) })
		if r.Code != wantCode {
			t.Fatalf("curl %s (Host %s): status %s, want %s (%s)", url, host, r.Code, wantCode, r.Stderr)
		}
		w.src, w.dst = r.Local, dst
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec, err := e.http.WaitConn(ctx, r.Local)
		if err != nil {
			t.Fatalf("the application never saw the client's own address %s (relayed from another address?): %v", r.Local, err)
		}
		w.toServer, w.toClient = uint64(r.Sent), uint64(r.Recv)
		relayed := map[string]float64{} // netward_bytes_total: bytes relayed between the legs
		if w.verdict == "allow" {
			if rec.Recv != r.Sent || rec.Sent != r.Recv {
				t.Fatalf("curl sent %d and got %d bytes; the server got %d and sent %d", r.Sent, r.Recv, rec.Recv, rec.Sent)
			}
			relayed["direction=toserver"], relayed["direction=toclient"] = float64(r.Sent), float64(r.Recv)
		} else if rec.Recv != 0 || rec.Sent != 0 {
			t.Errorf("denied request: the server got %d bytes and sent %d; want nothing", rec.Recv, rec.Sent)
		}
		opsCheckFlowEvents(t, e.nw.EventLog, w)
		after := e.scrape(t)
		opsCheckDeltas(t, before, after, map[string]map[string]float64{
			"netward_flows_total":    {"": 1},
			"netward_verdicts_total": {"action=" + w.verdict + ",rule=" + w.rule: 1},
			"netward_bytes_total":    relayed,
		})
		if a := after.Value("netward_flows_active"); a != 0 {
			t.Errorf("netward_flows_active %g after the flow ended, want 0", a)
		}
		// With gVisor answering the handshake, on an idle lab the flow's
		// small packets (the SYN-ACK at least) find the TUN queue empty
		// and are written by their senders (default flags only:
		// --tun-writers 0 has no queue). With SYN replay gVisor sends
		// nothing.
		replayed := after.Value("netward_syn_replayed_total") - before.Value("netward_syn_replayed_total")
		if d := after.Value("netward_tun_direct_writes_total") - before.Value("netward_tun_direct_writes_total"); d < 1 && replayed == 0 && os.Getenv(lab.ExtraArgsEnv) == "" {
			t.Errorf("netward_tun_direct_writes_total +%g for the flow, want at least 1", d)
		}
	}
	t.Run("HTTPAllowed", func(t *testing.T) {
		httpCase(t, false, "app.example", 12345, opsWantFlow{app: "http", verdict: "allow", rule: "default",
			host: "app.example", url: "/bytes?n=12345", method: "GET", state: "closed", reason: "timeout"}, "200")
	})
	t.Run("HTTPAllowedIPv6", func(t *testing.T) {
		httpCase(t, true, "app.example:8080", 3000, opsWantFlow{app: "http", verdict: "allow", rule: "default",
			host: "app.example", url: "/bytes?n=3000", method: "GET", state: "closed", reason: "timeout"}, "200")
	})
	t.Run("HTTPAlerted", func(t *testing.T) {
		// An alert rule never decides (rules.ActionAlert): the default
		// allows, and the match is an alert event with action "allowed".
		httpCase(t, false, "watched.example", 100, opsWantFlow{app: "http", verdict: "allow", rule: "default",
			alert: "allowed", signature: "alert-watched-host",
			host: "watched.example", url: "/bytes?n=100", method: "GET", state: "closed", reason: "timeout"}, "200")
	})
	t.Run("HTTPDenied", func(t *testing.T) {
		httpCase(t, false, "blocked.example", 100, opsWantFlow{app: "http", verdict: "deny", rule: "deny-blocked-host",
			alert: "blocked", signature: "deny-blocked-host",
			host: "blocked.example", url: "/bytes?n=100", method: "GET", httpStatus: 403, state: "new", reason: "forced"}, "403")
	})

	tlsCase := func(t *testing.T, name string, w opsWantFlow, wantOK bool) {
		before := e.scrape(t)
		dst := e.appAddr(false, opsTLSPort)
		url := fmt.Sprintf("https://%s:%d/bytes?n=7000", name, opsTLSPort)
		var r opsCurlResult
		e.crossed(t, 4, func() {
			r = e.curl(t, "--cacert", e.certPEM, "--resolve", fmt.Sprintf("%s:%d:%s", name, opsTLSPort, dst.Addr()), url)
		})
		if ok := r.Code == "200"; ok != wantOK {
			t.Fatalf("curl %s: status %s exit %d (%s), want success %v", url, r.Code, r.Exit, r.Stderr, wantOK)
		}
		if !wantOK && !strings.Contains(strings.ToLower(r.Stderr), "access denied") {
			t.Errorf("denied TLS: curl says %q, want a TLS access_denied alert", r.Stderr)
		}
		w.src, w.dst = r.Local, dst
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec, err := e.https.WaitConn(ctx, r.Local)
		if err != nil {
			t.Fatalf("the application never saw the client's own address %s: %v", r.Local, err)
		}
		if wantOK {
			if rec.SNI != name || rec.Recv == 0 || rec.Sent < 7000 || rec.Err != "" {
				t.Fatalf("server record %+v: want SNI %s, the request and 7000+ bytes sent", rec, name)
			}
			// Relayed whole: what the server got and sent is what curl
			// sent and got.
			w.toServer, w.toClient = uint64(rec.Recv), uint64(rec.Sent)
		} else {
			if rec.Recv != 0 || rec.Sent != 0 {
				t.Errorf("denied ClientHello: the server got %d bytes and sent %d; want nothing", rec.Recv, rec.Sent)
			}
			w.unknownBytes = true // see TLSDeniedClientBytes
		}
		opsCheckFlowEvents(t, e.nw.EventLog, w)
		after := e.scrape(t)
		want := map[string]map[string]float64{
			"netward_flows_total":    {"": 1},
			"netward_verdicts_total": {"action=" + w.verdict + ",rule=" + w.rule: 1},
			"netward_bytes_total":    {},
		}
		if wantOK {
			want["netward_bytes_total"]["direction=toserver"] = float64(w.toServer)
			want["netward_bytes_total"]["direction=toclient"] = float64(w.toClient)
		}
		opsCheckDeltas(t, before, after, want)
	}
	t.Run("TLSAllowed", func(t *testing.T) {
		tlsCase(t, "app.example", opsWantFlow{app: "tls", verdict: "allow", rule: "default", sni: "app.example", tlsVersion: "TLS 1.3",
			state: "closed", reason: "timeout"}, true)
	})
	t.Run("TLSDenied", func(t *testing.T) {
		tlsCase(t, "blocked.example", opsWantFlow{app: "tls", verdict: "deny", rule: "deny-blocked-sni", sni: "blocked.example", tlsVersion: "TLS 1.3",
			alert: "blocked", signature: "deny-blocked-sni", state: "new", reason: "forced"}, false)
	})

	t.Run("TLSDeniedClientBytes", func(t *testing.T) {
		// curl does not say how many bytes its TLS layer wrote: a Go
		// client on a counting connection does.
		d := &opslab.Dialer{NS: opslab.NS{Name: e.lab.Client.Name}}
		d.Timeout = 5 * time.Second
		dst := e.appAddr(false, opsTLSPort)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		raw, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		cc := &opsCountingConn{Conn: raw}
		herr := tls.Client(cc, &tls.Config{ServerName: "blocked.example", RootCAs: e.cert.ClientPool()}).HandshakeContext(ctx)
		if herr == nil || !strings.Contains(herr.Error(), "access denied") {
			t.Fatalf("TLS to blocked.example: %v, want an access_denied alert", herr)
		}
		io.Copy(io.Discard, cc) // up to netward's FIN (or reset)
		raw.Close()
		src := netip.MustParseAddrPort(raw.LocalAddr().String())
		t.Logf("the client sent %d bytes (its ClientHello) and got %d (the alert)", cc.sent, cc.recv)
		opsCheckFlowEvents(t, e.nw.EventLog, opsWantFlow{src: src, dst: dst, app: "tls", verdict: "deny", rule: "deny-blocked-sni",
			alert: "blocked", signature: "deny-blocked-sni", sni: "blocked.example", tlsVersion: "TLS 1.3",
			toServer: uint64(cc.sent), toClient: uint64(cc.recv), state: "new", reason: "forced"})
	})

	// earlyCase: a rule on the port alone refuses at the SYN (deny: RST,
	// drop: silence); no upstream connection is made. The flow is still
	// logged (flow and alert events) and its verdict counted, but not in
	// netward_flows_total, which counts flows with both legs up.
	earlyCase := func(t *testing.T, port uint16, action, rule string) {
		srv, err := opslab.Serve(opslab.NS{Name: e.lab.App.Name}, fmt.Sprintf(":%d", port), opslab.ServerOptions{Record: true})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		before := e.scrape(t)
		dst := e.appAddr(false, port)
		var r opsCurlResult
		// The refused SYN crosses the TUN (and, for deny, its RST back).
		tunBefore := e.tunStats(t)
		// 0.5 s: before the client's first SYN retransmission (1 s).
		r = e.curl(t, "--connect-timeout", "0.5", "--local-port", "40000-40100", fmt.Sprintf("http://%s/", dst))
		tun := e.tunStats(t).Sub(tunBefore)
		wantExit := map[string]int{"deny": 7, "drop": 28}[action] // refused / timed out
		if r.Exit != wantExit || r.Code != "000" {
			t.Fatalf("curl to a port the rules %s: exit %d status %s (%s), want exit %d", action, r.Exit, r.Code, r.Stderr, wantExit)
		}
		if tun.TxPackets == 0 {
			t.Errorf("the SYN never reached netward's TUN: %v", tun)
		}
		if c := srv.Counts().Accepted; c != 0 {
			t.Errorf("the application accepted %d connections on a port refused at the SYN", c)
		}
		// curl reports no local port for a connection that never came up:
		// find the flow by its destination.
		evs, err := opsReadEVE(e.nw.EventLog)
		if err != nil {
			t.Fatal(err)
		}
		var src netip.AddrPort
		for _, ev := range evs {
			if ev.EventType == "flow" && ev.dst() == dst {
				src = ev.src()
			}
		}
		if !src.IsValid() || src.Addr() != client || src.Port() < 40000 || src.Port() > 40100 {
			t.Fatalf("no flow event from %s (ports 40000-40100) to %s (found %v)", client, dst, src)
		}
		opsCheckFlowEvents(t, e.nw.EventLog, opsWantFlow{src: src, dst: dst, app: "", verdict: action, rule: rule,
			alert: "blocked", signature: rule, state: "new", reason: "forced"})
		after := e.scrape(t)
		opsCheckDeltas(t, before, after, map[string]map[string]float64{
			"netward_verdicts_total": {"action=" + action + ",rule=" + rule: 1},
		})
	}
	t.Run("EarlyDeny", func(t *testing.T) { earlyCase(t, 8081, "deny", "deny-port-8081") })
	t.Run("EarlyDrop", func(t *testing.T) { earlyCase(t, 8082, "drop", "drop-port-8082") })
	t.Run("EarlyDropRetransmittedSYN", func(t *testing.T) {
		// A dropped client retransmits its SYN (after 1 s, 3 s, …) on the
		// same 5-tuple: that is one connection attempt, one EVE flow (as
		// Suricata keys flows by 5-tuple), one verdict.
		before := e.scrape(t)
		dst := e.appAddr(false, 8082)
		r := e.curl(t, "--connect-timeout", "3.5", "--local-port", "40200-40300", fmt.Sprintf("http://%s/", dst))
		if r.Exit != 28 {
			t.Fatalf("curl to a dropped port: exit %d (%s), want 28 (timeout)", r.Exit, r.Stderr)
		}
		evs, err := opsReadEVE(e.nw.EventLog)
		if err != nil {
			t.Fatal(err)
		}
		ids := map[netip.AddrPort][]uint64{}
		for _, ev := range evs {
			if ev.EventType == "flow" && ev.dst() == dst && ev.SrcPort >= 40200 && ev.SrcPort <= 40300 {
				ids[ev.src()] = append(ids[ev.src()], ev.FlowID)
			}
		}
		if len(ids) != 1 {
			t.Fatalf("flow events from %d client ports, want 1: %v", len(ids), ids)
		}
		for src, f := range ids {
			if len(f) != 1 {
				t.Errorf("one connection attempt from %s (SYN and its retransmissions) became %d flows: flow_ids %v", src, len(f), f)
			}
		}
		got := opslab.Delta(before, e.scrape(t), "netward_verdicts_total")
		if got["action=drop,rule=drop-port-8082"] != 1 {
			t.Errorf("netward_verdicts_total changed by %v for one dropped connection attempt, want {action=drop,rule=drop-port-8082}=1", opsSortedMap(got))
		}
	})

	t.Run("Status", func(t *testing.T) { opsCheckStatus(t, e, client) })
}

// opsCountingConn counts the payload bytes a client wrote and read.
type opsCountingConn struct {
	net.Conn
	sent, recv int64
}

func (c *opsCountingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.recv += int64(n)
	return n, err
}

func (c *opsCountingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.sent += int64(n)
	return n, err
}

// opsHeldFlow is a connection the test keeps open while it asks netward.
type opsHeldFlow struct {
	conn net.Conn
	src  netip.AddrPort
}

// opsHold connects from src, makes one keep-alive request with host and
// reads the answer; the connection stays open.
func opsHold(t *testing.T, e *opsEnv, src netip.Addr, dst netip.AddrPort, host string, useTLS bool) opsHeldFlow {
	t.Helper()
	d := &opslab.Dialer{NS: opslab.NS{Name: e.lab.Client.Name}}
	d.Timeout = 5 * time.Second
	d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", dst, src, err)
	}
	t.Cleanup(func() { c.Close() })
	hf := opsHeldFlow{conn: c, src: netip.MustParseAddrPort(c.LocalAddr().String())}
	if host == "" {
		return hf // silent: netward waits for the first bytes
	}
	rw := c
	if useTLS {
		tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: e.cert.ClientPool()})
		if err := tc.HandshakeContext(ctx); err != nil {
			t.Fatalf("TLS to %s as %s: %v", dst, host, err)
		}
		rw = tc
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(rw, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	buf := make([]byte, 4096)
	n, err := rw.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		t.Fatalf("held request to %s as %s: %q %v", dst, host, buf[:n], err)
	}
	c.SetDeadline(time.Time{})
	return hf
}

// opsCheckStatus holds flows open with different verdicts and sources and
// checks `netward status` lists them, and that its filters select them.
func opsCheckStatus(t *testing.T, e *opsEnv, client netip.Addr) {
	extra := e.lab.Topo.ClientExtraV4
	httpDst, tlsDst := e.appAddr(false, opsHTTPPort), e.appAddr(false, opsTLSPort)
	allowed := opsHold(t, e, extra[0], httpDst, "app.example", false)
	alerted := opsHold(t, e, extra[1], httpDst, "watched.example", false)
	tlsFlow := opsHold(t, e, extra[2], tlsDst, "app.example", true)
	silentAt := time.Now()
	silent := opsHold(t, e, extra[3], httpDst, "", false) // pending until inspect_timeout (3 s)

	status := func(args ...string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out := labtest.Run(t, e.lab.Appliance, append([]string{labtest.Netward(t), "status", "--socket", e.nw.AdminSocket}, args...)...)
		return out, time.Since(start)
	}
	type row struct{ verdict, rule, app, name string }
	want := map[netip.AddrPort]row{
		allowed.src: {"allow", "default", "http", "app.example"},
		alerted.src: {"allow", "default", "http", "watched.example"}, // an alert rule matched; the default decided
		tlsFlow.src: {"allow", "default", "tls", "app.example"},
		silent.src:  {"pending", "", "", ""},
	}
	// lines maps a flow's source to its status line.
	lines := func(out string) map[netip.AddrPort]string {
		m := map[netip.AddrPort]string{}
		for _, line := range strings.Split(out, "\n") {
			kv := map[string]string{}
			for _, f := range strings.Fields(line) {
				if k, v, ok := strings.Cut(f, "="); ok {
					kv[k] = v
				}
			}
			a, err1 := netip.ParseAddr(kv["src"])
			p, err2 := strconv.Atoi(kv["sport"])
			if err1 == nil && err2 == nil {
				m[netip.AddrPortFrom(a, uint16(p))] = line
			}
		}
		return m
	}

	out, took := status()
	got := lines(out)
	pendingVisible := time.Since(silentAt) < 2500*time.Millisecond
	for src, w := range want {
		line, ok := got[src]
		if w.verdict == "pending" && !pendingVisible {
			t.Logf("status took %v: the silent flow may be judged by now; not checked", took)
			continue
		}
		if !ok {
			t.Errorf("netward status does not list the open flow from %s:\n%s", src, out)
			continue
		}
		for _, kv := range []string{"verdict=" + w.verdict, "dst=" + e.lab.Topo.AppV4.Addr().String()} {
			if !strings.Contains(line, " "+kv+" ") {
				t.Errorf("flow from %s: no %s in %q", src, kv, line)
			}
		}
		if w.rule != "" && !strings.Contains(line, " rule="+w.rule+" ") {
			t.Errorf("flow from %s: no rule=%s in %q", src, w.rule, line)
		}
		if w.app != "" && (!strings.Contains(line, " app="+w.app+" ") || !strings.Contains(line, " name="+w.name+" ")) {
			t.Errorf("flow from %s: want app=%s name=%s in %q", src, w.app, w.name, line)
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("netward status (%v):\n%s", took, out)

	only := func(what string, out string, srcs ...netip.AddrPort) {
		t.Helper()
		got := lines(out)
		var gotSrcs []string
		for s := range got {
			gotSrcs = append(gotSrcs, s.String())
		}
		var wantSrcs []string
		for _, s := range srcs {
			wantSrcs = append(wantSrcs, s.String())
		}
		sort.Strings(gotSrcs)
		sort.Strings(wantSrcs)
		if strings.Join(gotSrcs, " ") != strings.Join(wantSrcs, " ") {
			t.Errorf("netward status %s lists %v, want %v:\n%s", what, gotSrcs, wantSrcs, out)
		}
	}
	out, _ = status("--src", extra[1].String())
	only("--src "+extra[1].String(), out, alerted.src)
	out, _ = status("--src", tlsFlow.src.String())
	only("--src "+tlsFlow.src.String(), out, tlsFlow.src)
	if time.Since(silentAt) < 2500*time.Millisecond {
		out, _ = status("--verdict", "pending")
		only("--verdict pending", out, silent.src)
	}
	out, _ = status("--verdict", "allow", "--dst", ":"+strconv.Itoa(opsTLSPort))
	only("--verdict allow --dst :8443", out, tlsFlow.src)
	out, _ = status("--src", client.String())
	only("--src "+client.String()+" (no flows from it)", out)

	// --json is the admin endpoint's Status, with the same flows. The
	// silent flow is allowed (app unknown) once inspect_timeout passes.
	wantAllowed := 3
	if time.Since(silentAt) > 2500*time.Millisecond {
		wantAllowed = -1 // 3 or 4: not checked
	}
	out, _ = status("--json", "--verdict", "allow")
	var st metrics.Status
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("netward status --json: %v\n%s", err, out)
	}
	if (wantAllowed >= 0 && len(st.Flows) != wantAllowed) || st.Counters.FlowsActive != 4 || !st.Ready || !st.Rules.Loaded {
		t.Errorf("status --json --verdict allow: %d flows (want %d), %d active (want 4), ready %v, rules loaded %v",
			len(st.Flows), wantAllowed, st.Counters.FlowsActive, st.Ready, st.Rules.Loaded)
	}
	for _, f := range st.Flows {
		if f.Verdict != "allow" || f.Rule != "default" || f.Dst.Addr() != e.lab.Topo.AppV4.Addr() {
			t.Errorf("status --json --verdict allow lists %+v", f)
		}
	}
	// Flows that end leave the table.
	for _, h := range []opsHeldFlow{allowed, alerted, tlsFlow, silent} {
		h.conn.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ = status("--src", e.lab.Topo.ClientV4.Masked().String())
		if len(lines(out)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("closed flows still listed after 10 s:\n%s", out)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}
