package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/e2e/cmd/soak/opslab"
	"github.com/netward/netward/e2e/lab/labtest"
)

// Issue 19 (a fleet behind a load balancer): rules loaded from a URL, the
// health check and the drain on SIGTERM, through a real `netward run`.

// fleetRuleServer serves one rule file with an ETag inside the appliance
// namespace, on its loopback: netward fetches it from there.
type fleetRuleServer struct {
	mu       sync.Mutex
	body     string
	etag     string
	requests []string // "If-None-Match → status"
	url      string
}

func newFleetRuleServer(t *testing.T, e *opsEnv, body string) *fleetRuleServer {
	t.Helper()
	ln, err := opslab.NS{Name: e.lab.Appliance.Name}.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rs := &fleetRuleServer{url: "http://" + ln.Addr().String() + "/fleet/rules.yaml"}
	rs.set(body)
	srv := &http.Server{Handler: rs, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rs
}

func (rs *fleetRuleServer) set(body string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.body, rs.etag = body, `"`+fleetSHA(body)[:16]+`"`
}

func (rs *fleetRuleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	status := http.StatusOK
	defer func() {
		rs.requests = append(rs.requests, fmt.Sprintf("%s → %d", r.Header.Get("If-None-Match"), status))
	}()
	if r.URL.Path != "/fleet/rules.yaml" {
		status = http.StatusNotFound
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", rs.etag)
	if r.Header.Get("If-None-Match") == rs.etag {
		status = http.StatusNotModified
		w.WriteHeader(status)
		return
	}
	io.WriteString(w, rs.body)
}

func (rs *fleetRuleServer) log() []string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]string(nil), rs.requests...)
}

func fleetSHA(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// fleetRulesV2 replaces opsRules: now app.example is denied and
// blocked.example allowed.
const fleetRulesV2 = `default: allow
rules:
  - name: deny-app
    action: deny
    host: [app.example]
`

// TestRulesURL: netward loads its rules from an HTTP URL, exports their
// sha256, asks again with If-None-Match (304: nothing reloaded), and
// judges by the new rules once the file's ETag changes; a broken file
// then keeps them.
func TestRulesURL(t *testing.T) {
	e := newOpsEnv(t)
	labtest.RequireTools(t, "curl")
	rs := newFleetRuleServer(t, e, opsRules)
	e.args = []string{"--rules", rs.url, "--rules-poll-interval", "1s", "--metrics", opsMetricsAddr}
	e.start(t)
	url := fmt.Sprintf("http://%s/", e.appAddr(false, opsHTTPPort))
	code := func(host string) string { return e.curl(t, "-H", "Host: "+host, url).Code }

	if c := code("blocked.example"); c != "403" {
		t.Fatalf("blocked.example under the URL's rules: %s, want 403", c)
	}
	if c := code("app.example"); c != "200" {
		t.Fatalf("app.example under the URL's rules: %s, want 200", c)
	}
	m := e.scrape(t)
	if v := m.Value("netward_rules_info", "hash", fleetSHA(opsRules)); v != 1 {
		t.Fatalf("netward_rules_info{hash=sha256 of the served file} = %v; series %v", v, m.Series("netward_rules_info"))
	}
	waitFor(t, 5*time.Second, "a conditional poll answered 304", func() bool {
		return e.scrape(t).Value("netward_rule_fetches_total", "result", "not_modified") >= 1
	})
	if ok := e.scrape(t).Value("netward_rule_reloads_total", "result", "ok"); ok != 1 {
		t.Errorf("reloads ok %v after 304s, want 1 (the first load only)", ok)
	}

	rs.set(fleetRulesV2)
	waitFor(t, 5*time.Second, "the new rules' hash", func() bool {
		return e.scrape(t).Value("netward_rules_info", "hash", fleetSHA(fleetRulesV2)) == 1
	})
	if c := code("app.example"); c != "403" {
		t.Errorf("app.example after the reload: %s, want 403", c)
	}
	if c := code("blocked.example"); c != "200" {
		t.Errorf("blocked.example after the reload: %s, want 200", c)
	}

	rs.set("default: allow\nrules: [\n")
	waitFor(t, 5*time.Second, "a failed reload", func() bool {
		return e.scrape(t).Value("netward_rule_reloads_total", "result", "failed") >= 1
	})
	if c := code("app.example"); c != "403" {
		t.Errorf("app.example after a broken file: %s, want 403 (the rules in force stay)", c)
	}
	if v := e.scrape(t).Value("netward_rules_info", "hash", fleetSHA(fleetRulesV2)); v != 1 {
		t.Errorf("the hash changed with a broken file")
	}
	if !strings.Contains(e.nw.Log(), rs.url+":2:") {
		t.Errorf("netward's log has no error at %s:2", rs.url)
	}
	t.Logf("requests: %q", rs.log())
}

// TestHealthDrain: /healthz is 200 while netward serves and 503 when its
// steering is gone; on SIGTERM it turns 503 at once, an open flow and a
// new one are still served during the drain, and netward exits cleanly
// (no steering left) only after the deadline.
func TestHealthDrain(t *testing.T) {
	e := newOpsEnv(t)
	labtest.RequireTools(t, "curl")
	const healthAddr = "127.0.0.1:9741"
	const drainFor = 4 * time.Second
	health := opslab.NewMetricsClient(opslab.NS{Name: e.lab.Appliance.Name}, healthAddr)
	healthz := func() (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		code, body, err := health.Get(ctx, "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		return code, body
	}
	wantHealth := func(what string, code int, contains string) {
		t.Helper()
		waitFor(t, 3*time.Second, what, func() bool {
			c, body := healthz()
			return c == code && strings.Contains(body, contains)
		})
	}
	nw := e.start(t, "--health-listen", healthAddr, "--drain-timeout", drainFor.String())
	wantHealth("/healthz 200 while serving", http.StatusOK, "ok")

	// The check reads the steering itself: a missing ip rule is a 503.
	ctx := context.Background()
	rule := []string{"priority", "20055", "fwmark", "0x4e57/0xffff", "lookup", "20055"}
	if _, err := e.lab.Appliance.Run(ctx, append([]string{"ip", "rule", "del"}, rule...)...); err != nil {
		t.Fatal(err)
	}
	wantHealth("/healthz 503 without the steering rule", http.StatusServiceUnavailable, "steering rule is missing")
	if _, err := e.lab.Appliance.Run(ctx, append([]string{"ip", "rule", "add"}, rule...)...); err != nil {
		t.Fatal(err)
	}
	wantHealth("/healthz 200 with the rule back", http.StatusOK, "ok")

	dst := e.appAddr(false, opsHTTPPort)
	held := opsHold(t, e, e.lab.Topo.ClientExtraV4[0], dst, "app.example", false)

	start := time.Now()
	if err := nw.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wantHealth("/healthz 503 draining after SIGTERM", http.StatusServiceUnavailable, "draining")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("/healthz turned 503 %v after SIGTERM", d)
	}

	// The open flow goes on: another request on it is answered.
	held.conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(held.conn, "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
	buf := make([]byte, 4096)
	n, err := held.conn.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		t.Fatalf("request on the open flow during the drain: %q %v", buf[:n], err)
	}
	// A new flow too (a load balancer may send one before it notices).
	if c := e.curl(t, "-H", "Host: app.example", fmt.Sprintf("http://%s/", dst)).Code; c != "200" {
		t.Errorf("new flow during the drain: %s, want 200", c)
	}
	if exited, _ := nw.Exited(); exited {
		t.Fatalf("netward exited %v after SIGTERM, before the %v drain deadline; log:\n%s", time.Since(start), drainFor, nw.Log())
	}

	wctx, cancel := context.WithTimeout(ctx, drainFor+20*time.Second)
	defer cancel()
	if err := nw.Wait(wctx); err != nil {
		t.Fatalf("netward after the drain: %v; log:\n%s", err, nw.Log())
	}
	if d := time.Since(start); d < drainFor {
		t.Errorf("netward exited %v after SIGTERM, before the %v drain deadline", d, drainFor)
	}
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"ip", "rule", "show"}} {
		out, err := e.lab.Appliance.Run(ctx, cmd...)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "NETWARD") || strings.Contains(out, "0x4e57") {
			t.Errorf("%s after the drain still shows netward's steering:\n%s", strings.Join(cmd, " "), out)
		}
	}
	for _, want := range []string{"draining", "drain deadline reached", "netward stopped"} {
		if !strings.Contains(nw.Log(), want) {
			t.Errorf("netward's log lacks %q", want)
		}
	}
}

// waitFor polls ok every 100 ms until it holds or d has passed.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
	}
}
