package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/geo/geotest"
)

// TestRules is issue 6's acceptance: rule enforcement with real clients
// (curl, openssl, Go's crypto/tls) in the namespace lab, through one
// `netward run --rules testdata/rules/base.yaml` with generated geo
// databases and the EVE log. The application (ruleApp, in the test
// process) records every connection and the bytes it received, so each
// refusal is also checked where it matters: no byte of a denied flow
// reached the server. Every check finds netward's own flow line for its
// connection, so traffic that bypassed netward fails.
//
// The subtests share the lab and netward and run in order; Reload, which
// changes the rules, comes last.
func TestRules(t *testing.T) {
	r := newRuleLab(t)
	t.Run("HTTPSCurl", r.testHTTPSCurl)
	t.Run("HTTPSOpenSSL", r.testHTTPSOpenSSL)
	t.Run("ClientHelloShapes", r.testClientHelloShapes)
	t.Run("ClientHelloAfterAlert", r.testClientHelloAfterAlert)
	t.Run("HTTP", r.testHTTP)
	t.Run("HTTPTrickled", r.testHTTPTrickled)
	t.Run("KeepAlive", r.testKeepAlive)
	t.Run("KeepAliveCurl", r.testKeepAliveCurl)
	t.Run("HTTPEvasion", r.testHTTPEvasion)
	t.Run("HTTPSwitch", r.testHTTPSwitch)
	t.Run("Drop", r.testDrop)
	t.Run("Early", r.testEarly)
	t.Run("EventLog", r.testEventLog)
	t.Run("Reload", r.testReload)
}

// The lab's application addresses, and its HTTP server on v4.
var (
	ruleAppV4   = netip.MustParseAddr("192.0.2.2")
	ruleAppV6   = netip.MustParseAddr("2001:db8:2::2")
	ruleHTTPDst = netip.AddrPortFrom(ruleAppV4, ruleHTTPPort)
)

// Geo database contents: the client network is in NL / AS64500, except
// one address in a denied country and one in a denied AS.
var (
	ruleGeoDeniedCountry = netip.MustParseAddr("198.51.100.3") // KP
	ruleGeoDeniedASN     = netip.MustParseAddr("198.51.100.4") // AS64666
	ruleGeoAllowed       = netip.MustParseAddr("198.51.100.5")
)

type ruleLab struct {
	lab       *lab.Lab
	app       *ruleApp
	nw        *lab.Netward
	rulesPath string
}

func newRuleLab(t *testing.T) *ruleLab {
	l := labtest.New(t, lab.Options{})
	r := &ruleLab{lab: l, app: startRuleApp(t, l.App)}
	rulesDir := filepath.Join(l.Dir, "rules")
	if err := os.Mkdir(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.rulesPath = filepath.Join(rulesDir, "rules.yaml")
	r.installRules(t, "base.yaml")
	country, asn := filepath.Join(l.Dir, "country.mmdb"), filepath.Join(l.Dir, "asn.mmdb")
	clientNet := netip.MustParsePrefix("198.51.100.0/24")
	err := geotest.WriteCountry(country, map[netip.Prefix]string{
		clientNet: "NL",
		netip.PrefixFrom(ruleGeoDeniedCountry, 32): "KP",
		netip.MustParsePrefix("192.0.2.0/24"):      "NL",
		netip.MustParsePrefix("2001:db8::/32"):     "NL",
	})
	if err == nil {
		err = geotest.WriteASN(asn, map[netip.Prefix]geotest.ASN{
			clientNet:                              {Number: 64500, Org: "Allowed Net"},
			netip.PrefixFrom(ruleGeoDeniedASN, 32): {Number: 64666, Org: "Denied Net"},
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	r.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: []string{
		"--rules", r.rulesPath, "--geoip-country", country, "--geoip-asn", asn}})
	return r
}

// installRules atomically replaces the rule file with testdata/rules/name
// (write a new file, rename it over the old, as editors do).
func (r *ruleLab) installRules(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "rules", name))
	if err != nil {
		t.Fatal(err)
	}
	tmp := r.rulesPath + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, r.rulesPath); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// ---- netward's per-flow log lines ----

// ruleFlowLine is netward's log line for one flow ("msg":"flow"), with the
// fields the rule tests check.
type ruleFlowLine struct {
	Msg        string `json:"msg"`
	FlowID     uint64 `json:"flow_id"`
	Src        string `json:"src"`
	Dst        string `json:"dst"`
	App        string `json:"app"`
	SNI        string `json:"sni"`
	Host       string `json:"host"`
	Verdict    string `json:"verdict"`
	Rule       string `json:"rule"`
	SrcCountry string `json:"src_country"`
	BytesUp    int64  `json:"bytes_up"`
	BytesDown  int64  `json:"bytes_down"`
	End        string `json:"end"`
	Error      string `json:"error"`
	line       string
}

func (f ruleFlowLine) String() string { return f.line }

// logLines decodes netward's JSON log lines.
func (r *ruleLab) logLines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(r.nw.Log(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (r *ruleLab) flows() []ruleFlowLine {
	var out []ruleFlowLine
	for _, line := range strings.Split(r.nw.Log(), "\n") {
		if !strings.Contains(line, `"msg":"flow"`) {
			continue
		}
		var f ruleFlowLine
		if json.Unmarshal([]byte(line), &f) == nil && f.Msg == "flow" {
			f.line = line
			out = append(out, f)
		}
	}
	return out
}

// waitFlow waits up to 10 s for netward's flow line that match accepts
// (flow lines are written when a flow ends).
func (r *ruleLab) waitFlow(t testing.TB, what string, match func(ruleFlowLine) bool) ruleFlowLine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		flows := r.flows()
		for i := len(flows) - 1; i >= 0; i-- { // newest first
			if match(flows[i]) {
				return flows[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("netward logged no flow line for %s (did the traffic cross netward?); log tail:\n%s", what, tailLines(r.nw.Log(), 8))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireVerdict waits for the flow line of the connection src → dst and
// checks netward's verdict and rule ("default" when no rule decided).
func (r *ruleLab) requireVerdict(t testing.TB, src, dst netip.AddrPort, verdict, rule string) ruleFlowLine {
	t.Helper()
	f := r.waitFlow(t, src.String()+" → "+dst.String(), func(f ruleFlowLine) bool { return f.Src == src.String() && f.Dst == dst.String() })
	if f.Verdict != verdict || f.Rule != rule {
		t.Errorf("netward judged %s %s by rule %q, want %s by %q: %s", src, f.Verdict, f.Rule, verdict, rule, f)
	}
	return f
}

// requireNothingReceived checks that the application got no byte from the
// client connection src. netward dials the application at the SYN, so the
// server may have accepted that connection; it must not have read from it.
func (r *ruleLab) requireNothingReceived(t testing.TB, src, dst netip.AddrPort) {
	t.Helper()
	r.app.mu.Lock()
	var recs []*ruleAppConn
	for _, c := range r.app.conns {
		// The 4-tuple, not the source alone: the client's kernel may reuse
		// an allowed flow's source port towards another destination port.
		if c.Remote == src && c.Local == dst {
			recs = append(recs, c)
		}
	}
	r.app.mu.Unlock()
	for _, c := range recs {
		if !c.settled() {
			t.Errorf("the application's connection from %s is still open 10 s after netward refused it", src)
		}
		if n := c.Recv(); n != 0 {
			t.Errorf("the application received %d bytes of the refused flow from %s", n, src)
		}
	}
	for _, q := range r.requests() {
		if q.Remote == src && q.Local == dst {
			t.Errorf("the application answered a request of the refused flow from %s: %+v", src, q)
		}
	}
}

func (r *ruleLab) requests() []ruleAppRequest {
	r.app.mu.Lock()
	defer r.app.mu.Unlock()
	return append([]ruleAppRequest(nil), r.app.reqs...)
}

// ---- running clients ----

// ruleCmdResult is a finished command in a namespace.
type ruleCmdResult struct {
	Exit           int // -1: did not exit normally
	Stdout, Stderr string
}

func ruleRunCmd(t testing.TB, ns *lab.NS, stdin string, args ...string) ruleCmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	res := ruleCmdResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Exit = ee.ExitCode()
	default:
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return res
}

// ruleCurlResult is one curl run with -w "\n%{http_code} %{local_ip} %{local_port}".
type ruleCurlResult struct {
	ruleCmdResult
	Status int
	Local  netip.AddrPort // the client's address and port ("" if it never connected)
	Body   string
}

func (c ruleCurlResult) String() string {
	return fmt.Sprintf("curl exit %d, status %d, local %v, body %q, stderr %q", c.Exit, c.Status, c.Local, c.Body, strings.TrimSpace(c.Stderr))
}

// curl runs curl in the client namespace with args (URL last).
func (r *ruleLab) curl(t testing.TB, args ...string) ruleCurlResult {
	t.Helper()
	full := append([]string{"curl", "-sS", "--max-time", "5", "-w", "\n%{http_code} %{local_ip} %{local_port}"}, args...)
	res := ruleCurlResult{ruleCmdResult: ruleRunCmd(t, r.lab.Client, "", full...)}
	body, tail, ok := ruleCutLast(res.Stdout, "\n")
	if !ok {
		t.Fatalf("curl %s: no -w line in %q", strings.Join(args, " "), res.Stdout)
	}
	res.Body = body
	f := strings.Fields(tail)
	if len(f) >= 1 {
		res.Status, _ = strconv.Atoi(f[0])
	}
	if len(f) == 3 {
		ip, err1 := netip.ParseAddr(f[1])
		port, err2 := strconv.ParseUint(f[2], 10, 16)
		if err1 == nil && err2 == nil && port != 0 {
			res.Local = netip.AddrPortFrom(ip, uint16(port))
		}
	}
	return res
}

func ruleCutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func ruleURLHost(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// ---- TLS ----

// testHTTPSCurl: curl gets the application's answer for an allowed SNI;
// for a denied one the handshake fails with netward's access_denied alert
// (curl exit 35) and the application never reads a byte.
func (r *ruleLab) testHTTPSCurl(t *testing.T) {
	labtest.RequireTools(t, "curl")
	for _, tc := range []struct {
		name, sni string
		app       netip.Addr
		rule      string // "" allows
	}{
		{"Allowed", "good.example", ruleAppV4, ""},
		{"AllowedV6", "good.example", ruleAppV6, ""},
		{"Denied", "www.evil.example", ruleAppV4, "block-evil-sni"},
		{"DeniedApex", "evil.example", ruleAppV4, "block-evil-sni"},
		{"DeniedV6", "www.evil.example", ruleAppV6, "block-evil-sni"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := strconv.Itoa(ruleTLSPort)
			dst := netip.AddrPortFrom(tc.app, ruleTLSPort)
			res := r.curl(t, "-k", "--resolve", tc.sni+":"+port+":"+ruleURLHost(tc.app),
				"https://"+tc.sni+":"+port+"/curl-tls")
			if !res.Local.IsValid() {
				t.Fatalf("curl did not connect: %v", res)
			}
			if tc.rule == "" {
				want := "app ok proto=https host=" + tc.sni + ":" + port + " method=GET path=/curl-tls sni=" + tc.sni + " remote=" + res.Local.String()
				if res.Exit != 0 || res.Status != 200 || strings.TrimSpace(res.Body) != want {
					t.Errorf("%v\nwant status 200 and body %q", res, want)
				}
				r.requireVerdict(t, res.Local, dst, "allow", "default")
				return
			}
			if res.Exit != 35 || !strings.Contains(strings.ToLower(res.Stderr), "access denied") || res.Body != "" {
				t.Errorf("%v\nwant exit 35 (TLS handshake failed) with the access denied alert", res)
			}
			r.requireVerdict(t, res.Local, dst, "deny", tc.rule)
			r.requireNothingReceived(t, res.Local, dst)
		})
	}
}

// testHTTPSOpenSSL: the same with openssl s_client -servername, which
// sends the name as given (upper case, trailing dot).
func (r *ruleLab) testHTTPSOpenSSL(t *testing.T) {
	labtest.RequireTools(t, "openssl", "timeout")
	for _, tc := range []struct {
		name, sni string
		rule      string
	}{
		{"Allowed", "good.example", ""},
		{"Denied", "www.evil.example", "block-evil-sni"},
		{"DeniedUpperCase", "WWW.EVIL.Example", "block-evil-sni"},
		{"DeniedTrailingDot", "www.evil.example.", "block-evil-sni"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := r.app.mark()
			dst := netip.AddrPortFrom(ruleAppV4, ruleTLSPort)
			req := "GET /openssl HTTP/1.1\r\nHost: " + tc.sni + "\r\nConnection: close\r\n\r\n"
			res := ruleRunCmd(t, r.lab.Client, req, "timeout", "10", "openssl", "s_client",
				"-connect", dst.String(), "-servername", tc.sni, "-quiet")
			// openssl does not say its port; the application's record of
			// the upstream connection does (it carries the client's port).
			conns, _ := r.app.since(mark)
			if len(conns) != 1 {
				t.Fatalf("the application saw %d connections, want 1 (netward dials it at the SYN); openssl exit %d: %s", len(conns), res.Exit, res.Stderr)
			}
			src := conns[0].Remote
			if tc.rule == "" {
				want := "app ok proto=https host=" + tc.sni + " method=GET path=/openssl sni=" + tc.sni + " remote=" + src.String()
				if res.Exit != 0 || !strings.Contains(res.Stdout, want) {
					t.Errorf("openssl exit %d, output %q, stderr %q; want the application's answer %q", res.Exit, res.Stdout, res.Stderr, want)
				}
				r.requireVerdict(t, src, dst, "allow", "default")
				return
			}
			if res.Exit == 0 || !strings.Contains(res.Stderr, "alert access denied") || strings.Contains(res.Stdout, "app ok") {
				t.Errorf("openssl exit %d, stdout %q, stderr %q; want a failure with \"alert access denied\"", res.Exit, res.Stdout, res.Stderr)
			}
			r.requireVerdict(t, src, dst, "deny", tc.rule)
			r.requireNothingReceived(t, src, dst)
		})
	}
}

// testClientHelloShapes sends the ClientHello of Go's crypto/tls whole, in
// 1-byte TCP segments, and re-framed into many small TLS records, with the
// SNI in mixed case and with a trailing dot. Allowed names complete the
// handshake and get the application's answer (or, for a trailing dot,
// which the Go server rejects, reach the server whole); denied names get
// the access_denied alert and the server reads nothing.
func (r *ruleLab) testClientHelloShapes(t *testing.T) {
	type name struct {
		label string
		sni   string    // crypto/tls's ServerName
		edit  [2]string // ruleHelloOpts.Replace
		rule  string    // "" allows
	}
	names := []name{
		{"Good", "good.example", [2]string{}, ""},
		{"GoodMixedCase", "GOOD.Example", [2]string{}, ""},
		{"GoodTrailingDot", "good.exampleZ", [2]string{"good.exampleZ", "good.example."}, ""},
		{"Evil", "www.evil.example", [2]string{}, "block-evil-sni"},
		{"EvilMixedCase", "WWW.Evil.EXAMPLE", [2]string{}, "block-evil-sni"},
		{"EvilTrailingDot", "www.evil.exampleZ", [2]string{"www.evil.exampleZ", "www.evil.example."}, "block-evil-sni"},
		{"EvilUpperTrailingDot", "WWW.EVIL.EXAMPLEZ", [2]string{"WWW.EVIL.EXAMPLEZ", "WWW.EVIL.EXAMPLE."}, "block-evil-sni"},
	}
	shapes := []struct {
		label string
		opts  ruleHelloOpts
	}{
		{"Whole", ruleHelloOpts{}},
		{"Segments1", ruleHelloOpts{Trickle: true}},
		{"Records40", ruleHelloOpts{Frag: 40}},
		{"Records1", ruleHelloOpts{Frag: 1}},
		{"Records7Segments1", ruleHelloOpts{Frag: 7, Trickle: true}},
	}
	dst := netip.AddrPortFrom(ruleAppV4, ruleTLSPort)
	for _, sh := range shapes {
		for _, n := range names {
			t.Run(sh.label+"/"+n.label, func(t *testing.T) {
				opts := sh.opts
				opts.Replace = n.edit
				res, err := r.tlsGet(dst, n.sni, opts)
				if err != nil {
					t.Fatal(err)
				}
				desc := fmt.Sprintf("ClientHello of %d bytes in %d records (%s)", len(res.Hello), res.Records, opts)
				if opts.Trickle && res.Segments < uint32(len(res.Hello)) {
					t.Errorf("%s went out in %d TCP segments, want one per byte", desc, res.Segments)
				}
				if opts.Frag > 0 && res.Records < 2 {
					t.Errorf("%s: want several records", desc)
				}
				switch {
				case n.rule != "":
					if res.Err == nil || !strings.Contains(res.Err.Error(), "access denied") {
						t.Errorf("%s: handshake error %v, want the access denied alert", desc, res.Err)
					}
					r.requireVerdict(t, res.Local, dst, "deny", n.rule)
					r.requireNothingReceived(t, res.Local, dst)
				case n.edit[0] == "":
					if res.Err != nil || !strings.HasPrefix(res.Body, "200 app ok proto=https") {
						t.Errorf("%s: error %v, answer %q; want the application's answer", desc, res.Err, res.Body)
					}
					r.requireVerdict(t, res.Local, dst, "allow", "default")
				default:
					// The Go server refuses a trailing-dot SNI itself; netward
					// must have let the whole ClientHello through to it.
					if res.Err != nil && strings.Contains(res.Err.Error(), "access denied") {
						t.Errorf("%s: netward refused an allowed name: %v", desc, res.Err)
					}
					r.requireVerdict(t, res.Local, dst, "allow", "default")
					c := r.app.conn(res.Local)
					if c == nil || !c.settled() || c.Recv() < int64(len(res.Hello)) {
						got := int64(-1)
						if c != nil {
							got = c.Recv()
						}
						t.Errorf("%s: the application received %d bytes, want the whole ClientHello", desc, got)
					}
				}
				t.Logf("%s: %v", desc, res.Err)
			})
		}
	}
}

// testClientHelloAfterAlert: a TLS warning alert before the ClientHello
// (crypto/tls servers skip it) must not carry a denied name past netward.
func (r *ruleLab) testClientHelloAfterAlert(t *testing.T) {
	dst := netip.AddrPortFrom(ruleAppV4, ruleTLSPort)
	for _, alert := range []struct {
		name  string
		bytes []byte
	}{
		{"UserCanceled", []byte{21, 3, 1, 0, 2, 1, 90}},
		{"NoRenegotiation", []byte{21, 3, 3, 0, 2, 1, 100}},
	} {
		t.Run(alert.name, func(t *testing.T) {
			res, err := r.tlsGet(dst, "www.evil.example", ruleHelloOpts{Prefix: alert.bytes})
			if err != nil {
				t.Fatal(err)
			}
			if res.Err == nil {
				t.Errorf("the handshake for www.evil.example after a warning alert succeeded: %q", res.Body)
			}
			f := r.waitFlow(t, res.Local.String(), func(f ruleFlowLine) bool { return f.Src == res.Local.String() && f.Dst == dst.String() })
			if f.Verdict != "deny" {
				t.Errorf("netward %s the flow by %q: %s", f.Verdict, f.Rule, f)
			}
			r.requireNothingReceived(t, res.Local, dst)
			t.Logf("netward %s by %q; client: %v", f.Verdict, f.Rule, res.Err)
		})
	}
}

// ---- HTTP ----

// testHTTP: requests denied by Host, by method and by path prefix get a
// 403 page naming the rule and never reach the application; near misses
// and ordinary requests get the application's answer.
func (r *ruleLab) testHTTP(t *testing.T) {
	labtest.RequireTools(t, "curl")
	for _, tc := range []struct {
		name string
		app  netip.Addr
		args []string // before the URL
		path string
		rule string // "" allows
	}{
		{"Allowed", ruleAppV4, nil, "/a", ""},
		{"AllowedV6", ruleAppV6, nil, "/a", ""},
		{"DenyHost", ruleAppV4, []string{"-H", "Host: blocked.example"}, "/a", "block-host"},
		{"DenyHostV6", ruleAppV6, []string{"-H", "Host: blocked.example"}, "/a", "block-host"},
		{"DenyHostMixedCaseTrailingDot", ruleAppV4, []string{"-H", "Host: BLOCKED.Example."}, "/a", "block-host"},
		{"DenyHostWithPort", ruleAppV4, []string{"-H", "Host: blocked.example:8080"}, "/a", "block-host"},
		{"AllowOtherHost", ruleAppV4, []string{"-H", "Host: notblocked.example"}, "/a", ""},
		{"DenyMethod", ruleAppV4, []string{"-X", "DELETE"}, "/items/1", "block-delete"},
		{"AllowOtherMethod", ruleAppV4, []string{"-X", "PUT"}, "/items/1", ""},
		{"DenyPathPrefix", ruleAppV4, nil, "/admin/users", "block-admin-path"},
		{"DenyPathDotSegments", ruleAppV4, []string{"--path-as-is"}, "/public/../admin/users", "block-admin-path"},
		{"DenyPathEncoded", ruleAppV4, nil, "/%61dmin/users", "block-admin-path"},
		{"AllowPathNotPrefix", ruleAppV4, nil, "/administrator", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(tc.app, ruleHTTPPort)
			url := "http://" + ruleURLHost(tc.app) + ":" + strconv.Itoa(ruleHTTPPort) + tc.path
			res := r.curl(t, append(tc.args, url)...)
			if !res.Local.IsValid() {
				t.Fatalf("curl did not connect: %v", res)
			}
			if tc.rule == "" {
				if res.Exit != 0 || res.Status != 200 || !strings.HasPrefix(res.Body, "app ok proto=http ") ||
					!strings.HasSuffix(strings.TrimSpace(res.Body), " remote="+res.Local.String()) {
					t.Errorf("%v\nwant the application's answer naming the client's own address", res)
				}
				r.requireVerdict(t, res.Local, dst, "allow", "default")
				return
			}
			if res.Exit != 0 || res.Status != 403 || !strings.Contains(res.Body, tc.rule) || strings.Contains(res.Body, "app ok") {
				t.Errorf("%v\nwant netward's 403 page naming rule %q", res, tc.rule)
			}
			r.requireVerdict(t, res.Local, dst, "deny", tc.rule)
			r.requireNothingReceived(t, res.Local, dst)
		})
	}
}

// testHTTPTrickled sends request heads one byte per TCP segment: netward
// must wait for the whole head, then judge it.
func (r *ruleLab) testHTTPTrickled(t *testing.T) {
	for _, tc := range []struct {
		name, host, path string
		rule             string
	}{
		{"Allowed", "good.example", "/trickle", ""},
		{"DenyHost", "blocked.example", "/trickle", "block-host"},
		{"DenyPath", "good.example", "/admin/trickle", "block-admin-path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ruleDial(r.lab.Client, netip.Addr{}, ruleHTTPDst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			req := "GET " + tc.path + " HTTP/1.1\r\nHost: " + tc.host + "\r\nUser-Agent: trickle\r\nConnection: close\r\n\r\n"
			segs, err := ruleTrickle(c, []byte(req))
			if err != nil {
				t.Fatal(err)
			}
			if segs < uint32(len(req)) {
				t.Errorf("%d-byte request head went out in %d segments, want one per byte", len(req), segs)
			}
			resp, body, err := ruleReadResponse(bufio.NewReader(c), "GET")
			if err != nil {
				t.Fatal(err)
			}
			c.Close() // netward logs the flow when both sides are done
			if tc.rule == "" {
				if resp.StatusCode != 200 || !strings.HasPrefix(body, "app ok proto=http host="+tc.host+" method=GET path="+tc.path) {
					t.Errorf("status %d, body %q; want the application's answer", resp.StatusCode, body)
				}
				r.requireVerdict(t, local, ruleHTTPDst, "allow", "default")
				return
			}
			if resp.StatusCode != 403 || !strings.Contains(body, tc.rule) {
				t.Errorf("status %d, body %q; want 403 naming %s", resp.StatusCode, body, tc.rule)
			}
			r.requireVerdict(t, local, ruleHTTPDst, "deny", tc.rule)
			r.requireNothingReceived(t, local, ruleHTTPDst)
		})
	}
}

// testKeepAlive: every request on a keep-alive connection is judged. The
// first (allowed) request gets the application's answer; the second,
// denied, gets the 403 and the connection closes; the application saw
// exactly the first request's bytes.
func (r *ruleLab) testKeepAlive(t *testing.T) {
	first := "GET /first HTTP/1.1\r\nHost: good.example\r\nUser-Agent: keepalive\r\n\r\n"
	for _, tc := range []struct {
		name, second, rule string
	}{
		{"DenyHost", "GET /second HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "block-host"},
		{"DenyMethod", "DELETE /second HTTP/1.1\r\nHost: good.example\r\n\r\n", "block-delete"},
		{"DenyPath", "GET /admin/second HTTP/1.1\r\nHost: good.example\r\n\r\n", "block-admin-path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ruleDial(r.lab.Client, netip.Addr{}, ruleHTTPDst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			br := bufio.NewReader(c)
			resp, body, err := ruleRoundTrip(c, br, first, "GET")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || !strings.HasPrefix(body, "app ok proto=http host=good.example method=GET path=/first") || resp.Close {
				t.Fatalf("first request: status %d, close %v, body %q; want the application's keep-alive answer", resp.StatusCode, resp.Close, body)
			}
			method, _, _ := strings.Cut(tc.second, " ")
			resp, body, err = ruleRoundTrip(c, br, tc.second, method)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 403 || !strings.Contains(body, tc.rule) {
				t.Errorf("second request: status %d, body %q; want 403 naming %s", resp.StatusCode, body, tc.rule)
			} else if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Errorf("after the 403 the connection is still open (read %d, %v)", n, err)
			}
			c.Close()
			r.requireVerdict(t, local, ruleHTTPDst, "deny", tc.rule)
			var got []string
			for _, q := range r.requests() {
				if q.Remote == local && q.Local == ruleHTTPDst {
					got = append(got, q.Method+" "+q.Path)
				}
			}
			if len(got) != 1 || got[0] != "GET /first" {
				t.Errorf("the application answered %q on the connection, want only GET /first", got)
			}
			if c := r.app.conn(local); c == nil || !c.settled() || c.Recv() != int64(len(first)) {
				got := int64(-1)
				if c != nil {
					got = c.Recv()
				}
				t.Errorf("the application received %d bytes on the connection, want exactly the first request's %d", got, len(first))
			}
		})
	}
}

// testKeepAliveCurl: the same with curl reusing its connection for a
// second URL.
func (r *ruleLab) testKeepAliveCurl(t *testing.T) {
	labtest.RequireTools(t, "curl")
	mark := r.app.mark()
	base := "http://" + ruleAppV4.String() + ":" + strconv.Itoa(ruleHTTPPort)
	res := ruleRunCmd(t, r.lab.Client, "", "curl", "-sS", "-v", "--max-time", "5", base+"/first",
		"--next", "-sS", "-v", "--max-time", "5", "-H", "Host: blocked.example", base+"/second")
	if !strings.Contains(res.Stderr, "Re-using existing connection") {
		t.Fatalf("curl did not reuse its connection, so this proves nothing; stderr:\n%s", res.Stderr)
	}
	if res.Exit != 0 || !strings.HasPrefix(res.Stdout, "app ok proto=http host=") ||
		!strings.Contains(res.Stdout, "path=/first") || !strings.Contains(res.Stdout, "block-host") ||
		!strings.Contains(res.Stderr, "< HTTP/1.1 200") || !strings.Contains(res.Stderr, "< HTTP/1.1 403") {
		t.Errorf("curl exit %d, stdout %q; want the application's answer to /first, then netward's 403 naming block-host; stderr:\n%s", res.Exit, res.Stdout, res.Stderr)
	}
	conns, reqs := r.app.since(mark)
	if len(conns) != 1 || len(reqs) != 1 || reqs[0].Path != "/first" {
		t.Fatalf("the application saw %d connections and requests %+v, want one connection with GET /first", len(conns), reqs)
	}
	r.requireVerdict(t, conns[0].Remote, ruleHTTPDst, "deny", "block-host")
}

// testDrop: a drop verdict answers nothing: the client times out instead
// of getting a reset, an alert or a page, and the application gets
// nothing. The cases wait out a 1 s client timeout each, so they run in
// parallel.
func (r *ruleLab) testDrop(t *testing.T) {
	labtest.RequireTools(t, "curl")
	port := strconv.Itoa(ruleTLSPort)
	tlsDst := netip.AddrPortFrom(ruleAppV4, ruleTLSPort)
	for _, tc := range []struct {
		name string
		args []string
		dst  netip.AddrPort
		rule string
		syn  bool // dropped at the SYN: the client never connects
	}{
		{"HTTPHost", []string{"-H", "Host: silent.example", "http://" + ruleHTTPDst.String() + "/drop"}, ruleHTTPDst, "drop-silent-host", false},
		{"TLSSNI", []string{"-k", "--resolve", "silent.example:" + port + ":" + ruleAppV4.String(), "https://silent.example:" + port + "/drop"}, tlsDst, "drop-silent-sni", false},
		{"SYNBySource", []string{"--interface", ruleDropSrc.String(), "--local-port", "47006", "http://" + ruleHTTPDst.String() + "/drop"}, ruleHTTPDst, "drop-src", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := r.curl(t, append([]string{"--max-time", "1"}, tc.args...)...)
			if res.Exit != 28 || res.Body != "" {
				t.Errorf("%v\nwant a timeout (exit 28) with no answer", res)
			}
			src := res.Local
			if tc.syn {
				if src.IsValid() {
					t.Errorf("%v\nwant no connection (SYN unanswered)", res)
				}
				src = netip.AddrPortFrom(ruleDropSrc, 47006)
			} else if !src.IsValid() {
				t.Fatalf("curl did not connect: %v", res)
			}
			f := r.requireVerdict(t, src, tc.dst, "drop", tc.rule)
			// bytes_up counts what the client sent (held, never forwarded:
			// requireNothingReceived checks the application's side); a
			// drop sends the client nothing.
			if f.BytesDown != 0 {
				t.Errorf("flow line %s: want no bytes to the client", f)
			}
			r.requireNothingReceived(t, src, tc.dst)
			if tc.syn {
				r.requireNoConnection(t, netip.AddrPortFrom(src.Addr(), 0))
			}
		})
	}
}

// requireNoConnection checks that the application never accepted a
// connection from src (from any port of its address if src's port is 0):
// netward refused it at the SYN, before dialling.
func (r *ruleLab) requireNoConnection(t testing.TB, src netip.AddrPort) {
	t.Helper()
	r.app.mu.Lock()
	defer r.app.mu.Unlock()
	for _, c := range r.app.conns {
		if c.Remote == src || src.Port() == 0 && c.Remote.Addr() == src.Addr() {
			t.Errorf("the application accepted a connection from %s; refused at the SYN, netward must not have dialled it", c.Remote)
		}
	}
}

// Client addresses that base.yaml refuses at the SYN by address.
var (
	ruleDenySrc = netip.MustParseAddr("198.51.100.6")
	ruleDropSrc = netip.MustParseAddr("198.51.100.7")
)

// testEarly: flows that addresses, ports or geo alone deny are reset at
// the SYN: curl's connect is refused (exit 7; a dropped SYN would time
// out, a flow refused later would connect and get a 403) and the
// application never sees a connection. A neighbour of the denied geo
// addresses is allowed. Fixed client ports tie each attempt to its flow
// line.
func (r *ruleLab) testEarly(t *testing.T) {
	labtest.RequireTools(t, "curl")
	deniedPort := netip.AddrPortFrom(ruleAppV4, ruleDeniedPort)
	for _, tc := range []struct {
		name    string
		src     netip.AddrPort
		dst     netip.AddrPort
		rule    string // "" allows
		country string // expected src_country in the flow line
	}{
		{"GeoCountry", netip.AddrPortFrom(ruleGeoDeniedCountry, 47001), ruleHTTPDst, "geo-deny-country", "KP"},
		{"GeoASN", netip.AddrPortFrom(ruleGeoDeniedASN, 47002), ruleHTTPDst, "geo-deny-asn", "NL"},
		{"GeoAllowed", netip.AddrPortFrom(ruleGeoAllowed, 47003), ruleHTTPDst, "", "NL"},
		{"Source", netip.AddrPortFrom(ruleDenySrc, 47004), ruleHTTPDst, "deny-src", "NL"},
		{"DestinationPort", netip.AddrPortFrom(r.lab.Topo.ClientV4.Addr(), 47005), deniedPort, "deny-port", "NL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := r.curl(t, "--interface", tc.src.Addr().String(), "--local-port", strconv.Itoa(int(tc.src.Port())),
				"--connect-timeout", "3", "http://"+tc.dst.String()+"/early")
			if tc.rule == "" {
				want := "remote=" + tc.src.String()
				if res.Exit != 0 || res.Status != 200 || res.Local != tc.src || !strings.HasSuffix(strings.TrimSpace(res.Body), want) {
					t.Errorf("%v\nwant the application's answer with %s", res, want)
				}
				f := r.requireVerdict(t, tc.src, tc.dst, "allow", "default")
				if f.SrcCountry != tc.country {
					t.Errorf("flow line src_country %q, want %q: %s", f.SrcCountry, tc.country, f)
				}
				return
			}
			if res.Exit != 7 {
				t.Errorf("%v\nwant the connection refused (exit 7)", res)
			}
			r.requireNoConnection(t, tc.src)
			f := r.requireVerdict(t, tc.src, tc.dst, "deny", tc.rule)
			if f.End != "refused" || f.SrcCountry != tc.country || f.BytesUp != 0 || f.BytesDown != 0 {
				t.Errorf("flow line %s: want end refused, src_country %s, no bytes", f, tc.country)
			}
		})
	}
}

// ---- event log ----

// testEventLog: after denied requests the EVE log has, for each flow, the
// alert naming the rule, the tls or http event with the name that was
// judged, and the flow event with the flow's addresses, all with the same
// flow_id; an alert rule logs an "allowed" alert and lets the request
// through; every line of the log decodes strictly.
func (r *ruleLab) testEventLog(t *testing.T) {
	labtest.RequireTools(t, "curl")
	port := strconv.Itoa(ruleTLSPort)
	tlsDst := netip.AddrPortFrom(ruleAppV4, ruleTLSPort)
	geoSrc := netip.AddrPortFrom(ruleGeoDeniedCountry, 47007)
	httpRes := r.curl(t, "-H", "Host: blocked.example", "-A", "eve-test", "http://"+ruleHTTPDst.String()+"/eve?x=1")
	tlsRes := r.curl(t, "-k", "--resolve", "www.evil.example:"+port+":"+ruleAppV4.String(), "https://www.evil.example:"+port+"/eve")
	geoRes := r.curl(t, "--interface", geoSrc.Addr().String(), "--local-port", strconv.Itoa(int(geoSrc.Port())),
		"--connect-timeout", "3", "http://"+ruleHTTPDst.String()+"/eve")
	alertRes := r.curl(t, "http://"+ruleHTTPDst.String()+"/curious/eve")
	okRes := r.curl(t, "http://"+ruleHTTPDst.String()+"/eve-ok")
	if httpRes.Status != 403 || tlsRes.Exit != 35 || geoRes.Exit != 7 || alertRes.Status != 200 || okRes.Status != 200 {
		t.Fatalf("the requests did not go as in the other subtests:\n%v\n%v\n%v\n%v\n%v", httpRes, tlsRes, geoRes, alertRes, okRes)
	}

	// Events are written asynchronously, and flow events when flows end.
	var events []ruleEvent
	find := func(typ string, src, dst netip.AddrPort) *ruleEvent {
		for i := len(events) - 1; i >= 0; i-- {
			if e := &events[i]; e.EventType == typ && e.Src() == src && e.Dst() == dst {
				return e
			}
		}
		return nil
	}
	flows := [][2]netip.AddrPort{{httpRes.Local, ruleHTTPDst}, {tlsRes.Local, tlsDst}, {geoSrc, ruleHTTPDst},
		{alertRes.Local, ruleHTTPDst}, {okRes.Local, ruleHTTPDst}}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if events, err = ruleReadEVE(r.nw.EventLog); err != nil {
			t.Fatal(err) // strict decoding failed
		}
		missing := 0
		for _, f := range flows {
			if find("flow", f[0], f[1]) == nil {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the EVE log %s lacks flow events for %d of the test's %d flows after 10 s (%d events)", r.nw.EventLog, missing, len(flows), len(events))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// check checks one flow's events: the flow event, an alert of the
	// rule, and (appEvent != "") the tls or http event, by flow_id.
	check := func(t *testing.T, src, dst netip.AddrPort, verdict, rule, alertAction, appEvent string) *ruleEvent {
		t.Helper()
		flow := find("flow", src, dst)
		if flow.Netward == nil || flow.Netward.Verdict != verdict || flow.Netward.Rule != ruleOrDefault(rule, verdict) {
			t.Errorf("flow event netward %+v: want verdict %s, rule %s", flow.Netward, verdict, ruleOrDefault(rule, verdict))
		}
		if flow.Flow.Alerted != (alertAction != "") {
			t.Errorf("flow event alerted %v, want %v", flow.Flow.Alerted, alertAction != "")
		}
		// A refused flow's bytes_toserver are the client's held bytes
		// (what it sent, as Suricata counts them); that the server got
		// none is checked on the server. Nothing was relayed: state new.
		if verdict != "allow" && flow.Flow.State != "new" {
			t.Errorf("flow event state %q for a refused flow, want new", flow.Flow.State)
		}
		var alerts []*ruleEvent
		for i := range events {
			if e := &events[i]; e.EventType == "alert" && e.FlowID == flow.FlowID {
				alerts = append(alerts, e)
			}
		}
		switch {
		case alertAction == "" && len(alerts) > 0:
			t.Errorf("%d alert events for a flow that no rule alerted on: %+v", len(alerts), *alerts[0].Alert)
		case alertAction != "" && len(alerts) != 1:
			t.Errorf("%d alert events for flow_id %d, want 1", len(alerts), flow.FlowID)
		case alertAction != "":
			a := alerts[0]
			if a.Alert.Signature != rule || a.Alert.Action != alertAction || a.Src() != src || a.Dst() != dst {
				t.Errorf("alert %v → %v %+v: want signature %q, action %s", a.Src(), a.Dst(), *a.Alert, rule, alertAction)
			}
		}
		if appEvent == "" {
			return nil
		}
		for i := range events {
			if e := &events[i]; e.EventType == appEvent && e.FlowID == flow.FlowID {
				if e.Src() != src || e.Dst() != dst || e.AppProto != appEvent {
					t.Errorf("%s event %v → %v app_proto %q, want %v → %v %s", appEvent, e.Src(), e.Dst(), e.AppProto, src, dst, appEvent)
				}
				return e
			}
		}
		t.Fatalf("no %s event with flow_id %d", appEvent, flow.FlowID)
		return nil
	}
	t.Run("HTTPDenied", func(t *testing.T) {
		e := check(t, httpRes.Local, ruleHTTPDst, "deny", "block-host", "blocked", "http")
		if h := e.HTTP; h.Hostname != "blocked.example" || h.Method != "GET" || h.URL != "/eve?x=1" || h.UserAgent != "eve-test" || h.Status != 403 {
			t.Errorf("http event %+v: want hostname blocked.example, GET /eve?x=1, user agent eve-test, status 403", *h)
		}
	})
	t.Run("TLSDenied", func(t *testing.T) {
		e := check(t, tlsRes.Local, tlsDst, "deny", "block-evil-sni", "blocked", "tls")
		if e.TLS.SNI != "www.evil.example" {
			t.Errorf("tls event sni %q, want www.evil.example", e.TLS.SNI)
		}
	})
	t.Run("GeoDenied", func(t *testing.T) {
		check(t, geoSrc, ruleHTTPDst, "deny", "geo-deny-country", "blocked", "")
		if f := find("flow", geoSrc, ruleHTTPDst); f.SrcGeo == nil || f.SrcGeo.CountryISO != "KP" {
			t.Errorf("flow event src_geo %+v, want country_iso KP", f.SrcGeo)
		}
	})
	t.Run("AlertRule", func(t *testing.T) {
		e := check(t, alertRes.Local, ruleHTTPDst, "allow", "watch-curious", "allowed", "http")
		if e.HTTP.URL != "/curious/eve" || e.HTTP.Status != 0 {
			t.Errorf("http event %+v: want url /curious/eve, no status of netward's own", *e.HTTP)
		}
	})
	t.Run("Allowed", func(t *testing.T) {
		check(t, okRes.Local, ruleHTTPDst, "allow", "", "", "http")
		flow := find("flow", okRes.Local, ruleHTTPDst)
		if flow.Flow.BytesToServer == 0 || flow.Flow.BytesToClient == 0 {
			t.Errorf("flow event %+v: want bytes both ways", *flow.Flow)
		}
		if flow.SrcGeo == nil || flow.SrcGeo.CountryISO != "NL" || flow.SrcGeo.ASN != 64500 || flow.SrcGeo.ASOrg != "Allowed Net" {
			t.Errorf("flow event src_geo %+v, want NL / AS64500 Allowed Net", flow.SrcGeo)
		}
	})
}

// ruleOrDefault is how netward names the deciding rule: the rule, or
// "default" when the rule file's default decided (allow with only alert
// rules matching included).
func ruleOrDefault(rule, verdict string) string {
	if rule == "" || verdict == "allow" {
		return "default"
	}
	return rule
}

// ---- reload ----

// testReload changes the rules under a running download: by SIGHUP (with
// the file changed where the watcher cannot see it), by the file watcher
// (rename over the file), and to a broken file (by both). New flows follow
// each new rule set at once; the broken file changes nothing and its error
// is logged; the download, whose Host the new rules deny, completes.
func (r *ruleLab) testReload(t *testing.T) {
	labtest.RequireTools(t, "curl")
	base := "http://" + ruleAppV4.String() + ":" + strconv.Itoa(ruleHTTPPort)
	expect := func(t *testing.T, host, rule string) {
		t.Helper()
		res := r.curl(t, "-H", "Host: "+host, base+"/reload")
		if !res.Local.IsValid() {
			t.Fatalf("curl did not connect: %v", res)
		}
		if rule == "" {
			if res.Status != 200 || !strings.HasPrefix(res.Body, "app ok") {
				t.Errorf("Host %s: %v; want the application's answer", host, res)
			}
			r.requireVerdict(t, res.Local, ruleHTTPDst, "allow", "default")
			return
		}
		if res.Status != 403 || !strings.Contains(res.Body, rule) {
			t.Errorf("Host %s: %v; want 403 naming %s", host, res, rule)
		}
		r.requireVerdict(t, res.Local, ruleHTTPDst, "deny", rule)
	}

	// A download that stays open (the server holds the second half) across
	// every reload.
	const half = 4 << 20
	out := filepath.Join(r.lab.Dir, "download.bin")
	dl, err := r.lab.Client.Start("curl-download", "curl", "-sS", "--max-time", "60", "-H", "Host: download.example",
		"-o", out, "-w", "%{http_code} %{size_download} %{local_port}\n", base+"/hold?n="+strconv.Itoa(half))
	if err != nil {
		t.Fatal(err)
	}
	defer r.app.release()
	for deadline := time.Now().Add(10 * time.Second); ; {
		// curl's stdio buffer may hold the last few KiB it received.
		if fi, err := os.Stat(out); err == nil && fi.Size() >= half-64<<10 {
			break
		}
		if exited, _ := dl.Exited(); exited || time.Now().After(deadline) {
			t.Fatalf("the download did not get its first %d bytes; curl log: %s", half, dl.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	expect(t, "download.example", "") // allowed before the reloads

	t.Run("SIGHUP", func(t *testing.T) {
		// Write the new rules through a hard link in a directory netward does
		// not watch: only the signal can load them.
		hidden := filepath.Join(r.lab.Dir, "hidden")
		if err := os.MkdirAll(hidden, 0o755); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(hidden, "rules.yaml")
		os.Remove(link)
		if err := os.Link(r.rulesPath, link); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join("testdata", "rules", "reload-sighup.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(link, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		sha := hex.EncodeToString(sum[:])
		time.Sleep(400 * time.Millisecond) // longer than the watcher's debounce
		if r.loaded(sha) {
			t.Fatal("netward loaded the rules without a signal: the test cannot tell SIGHUP works")
		}
		expect(t, "v2.example", "") // still the old rules
		// A keep-alive connection open across the reload: its next request
		// is judged by the new rules.
		ka, err := ruleDial(r.lab.Client, netip.Addr{}, ruleHTTPDst)
		if err != nil {
			t.Fatal(err)
		}
		defer ka.Close()
		ka.SetDeadline(time.Now().Add(20 * time.Second))
		kaLocal := netip.MustParseAddrPort(ka.LocalAddr().String())
		kaReader := bufio.NewReader(ka)
		resp, body, err := ruleRoundTrip(ka, kaReader, "GET /before-reload HTTP/1.1\r\nHost: v2.example\r\n\r\n", "GET")
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("keep-alive request before the reload: %v, body %q, err %v; want the application's keep-alive answer", resp, body, err)
		}

		before := len(r.logLines())
		if err := r.nw.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		r.waitLoaded(t, sha)
		if !r.loggedSince(before, "SIGHUP: reloading rules") {
			t.Errorf("no \"SIGHUP: reloading rules\" log line before the reload")
		}
		expect(t, "v2.example", "deny-v2")
		resp, body, err = ruleRoundTrip(ka, kaReader, "GET /after-reload HTTP/1.1\r\nHost: v2.example\r\n\r\n", "GET")
		if err != nil || resp.StatusCode != 403 || !strings.Contains(body, "deny-v2") {
			t.Errorf("keep-alive request after the reload: %v, body %q, err %v; want 403 naming deny-v2", resp, body, err)
		}
		ka.Close()
		r.requireVerdict(t, kaLocal, ruleHTTPDst, "deny", "deny-v2")
		expect(t, "download.example", "deny-download")
		expect(t, "good.example", "")
	})
	t.Run("FileWatch", func(t *testing.T) {
		sha := r.installRules(t, "reload-watch.yaml")
		r.waitLoaded(t, sha)
		expect(t, "v3.example", "deny-v3")
		expect(t, "v2.example", "")
		expect(t, "download.example", "deny-download")
	})
	t.Run("BrokenFile", func(t *testing.T) {
		refused := func() int { return r.countLog("rule reload refused; keeping the current rules", "blokc") }
		n := refused()
		r.installRules(t, "reload-broken.yaml")
		r.waitLog(t, "the watcher's refusal of the broken file", func() bool { return refused() > n })
		expect(t, "v3.example", "deny-v3") // the old rules still apply
		expect(t, "broken.example", "")
		if err := r.nw.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		r.waitLog(t, "the refusal of the broken file on SIGHUP", func() bool { return refused() > n+1 })
		expect(t, "v3.example", "deny-v3")
		expect(t, "broken.example", "")
		if exited, _ := r.nw.Exited(); exited {
			t.Fatal("netward exited on a broken rule file")
		}
	})

	// The download started under the first rules finishes intact.
	r.app.release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dl.Wait(ctx); err != nil {
		t.Fatalf("the download across the reloads failed: %v; curl: %s", err, dl.Log())
	}
	f := strings.Fields(dl.Log())
	if len(f) != 3 || f[0] != "200" || f[1] != strconv.Itoa(2*half) {
		t.Fatalf("download: curl says %q, want status 200 and %d bytes", dl.Log(), 2*half)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != ruleHoldSHA(half) {
		t.Errorf("the download's SHA-256 is %s, want %s", got, ruleHoldSHA(half))
	}
	port, _ := strconv.Atoi(f[2])
	fl := r.requireVerdict(t, netip.AddrPortFrom(r.lab.Topo.ClientV4.Addr(), uint16(port)), ruleHTTPDst, "allow", "default")
	if fl.BytesDown < 2*half || fl.End != "closed" {
		t.Errorf("the download's flow line %s: want %d bytes down and end closed", fl, 2*half)
	}
}

// loaded reports whether netward logged that it loaded rules with sha.
func (r *ruleLab) loaded(sha string) bool {
	for _, m := range r.logLines() {
		if (m["msg"] == "rules reloaded" || m["msg"] == "rules loaded") && m["sha256"] == sha {
			return true
		}
	}
	return false
}

func (r *ruleLab) waitLoaded(t testing.TB, sha string) {
	t.Helper()
	r.waitLog(t, "rules "+sha[:12]+" loaded", func() bool { return r.loaded(sha) })
}

func (r *ruleLab) waitLog(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("netward did not log %s within 10 s; log tail:\n%s", what, tailLines(r.nw.Log(), 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countLog counts log lines with message msg whose text contains sub.
func (r *ruleLab) countLog(msg, sub string) int {
	n := 0
	for _, line := range strings.Split(r.nw.Log(), "\n") {
		var m struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == msg && strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

func (r *ruleLab) loggedSince(n int, msg string) bool {
	lines := r.logLines()
	for _, m := range lines[min(n, len(lines)):] {
		if m["msg"] == msg {
			return true
		}
	}
	return false
}
