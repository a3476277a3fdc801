package main

// The demo's second part (issue 6): netward with a rule file. It prints
// the rules, writes GeoIP databases for the lab's addresses, starts a TLS
// server in the application, runs netward with the rules, and sends real
// clients (curl, openssl) that are allowed and denied by SNI, Host, path,
// method and country, printing each verdict and the rule behind it. It
// then shows netward's flow log, the EVE alerts, `netward check` and
// `netward explain`, and stops netward. Every step fails the demo when
// the outcome differs from the expected one, so the demo is also a smoke
// test of the rules end to end.

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
	"github.com/netward/netward/geo/geotest"
)

// demoRules is the rule file the demo runs netward with.
//
//go:embed testdata/rules.yaml
var demoRules []byte

// ruleTLSPort is where openssl s_server listens in the application.
const ruleTLSPort = 8443

// ruleDemo is the state the rule steps share.
type ruleDemo struct {
	dir                   string // in the lab's Dir
	rules, country, asn   string // files
	eve                   string // netward's EVE log
	deniedSrc, allowedSrc netip.Addr
	tls                   *lab.Proc
	nw                    *lab.Netward
	before                lab.Snapshot
	judged                []ruleJudged // what each client step saw netward decide
}

// ruleJudged is one client connection and netward's verdict on it.
type ruleJudged struct {
	src, dst      netip.AddrPort
	verdict, rule string
	alert         string // an alert rule that matched (logged, not deciding)
	early         bool   // refused at the SYN: the connection never opened
}

func init() {
	r := &ruleDemo{}
	steps = append(steps,
		step{"Rules: the rule file", r.writeRules},
		step{"Rules: GeoIP databases for the lab's addresses", r.writeGeo},
		step{"Rules: an HTTPS server in the application (openssl s_server)", r.startTLS},
		step{"Rules: start netward with the rules, the GeoIP databases and an EVE log", r.startNetward},
		step{"Rules: HTTPS judged by the ClientHello's SNI", r.tlsClients},
		step{"Rules: HTTP judged by Host, path and method", r.httpClients},
		step{"Rules: an alert rule logs the request and lets it through", r.alertClient},
		step{"Rules: judged by the client's country, at the SYN", r.geoClients},
		step{"Rules: netward's flow log: a verdict and a rule per flow", r.flowLog},
		step{"Rules: the EVE log's alert events (signature = rule)", r.eveAlerts},
		step{"Rules: netward check and netward explain", r.checkExplain},
		step{"UDP: HTTP/3 (QUIC) judged by the same SNI rule", r.quicClients},
		step{"UDP: DNS queries judged by name; netward answers the refused one", r.dnsClients},
		step{"Rules: stop netward (SIGTERM)", r.stop},
	)
}

func (r *ruleDemo) writeRules(d *demo) error {
	r.dir = filepath.Join(d.lab.Dir, "rules")
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return err
	}
	r.rules = filepath.Join(r.dir, "rules.yaml")
	if err := os.WriteFile(r.rules, demoRules, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  %s (from e2e/cmd/demo/testdata/rules.yaml):\n\n", r.rules)
	for _, line := range strings.Split(strings.TrimRight(string(demoRules), "\n"), "\n") {
		fmt.Fprintf(d.out, "      %s\n", line)
	}
	return nil
}

func (r *ruleDemo) writeGeo(d *demo) error {
	t := d.lab.Topo
	extra := t.ClientExtraV4
	if len(extra) < 2 {
		return fmt.Errorf("the lab has %d extra client addresses, the demo needs 2", len(extra))
	}
	// The last two extra addresses: the first part of the demo uses the first.
	r.deniedSrc, r.allowedSrc = extra[len(extra)-2], extra[len(extra)-1]
	clientNet, appNet := t.ClientV4.Masked(), t.AppV4.Masked()
	countries := []struct {
		prefix  netip.Prefix
		country string
		who     string
	}{
		{clientNet, "DE", "the client network"},
		{netip.PrefixFrom(r.deniedSrc, 32), "KP", "one client address (embargoed)"},
		{netip.PrefixFrom(r.allowedSrc, 32), "CA", "another client address"},
		{appNet, "NL", "the application"},
		{t.ClientV6.Masked(), "DE", "the client network"},
		{t.AppV6.Masked(), "NL", "the application"},
	}
	asns := map[netip.Prefix]geotest.ASN{
		clientNet:           {Number: 64500, Org: "Example Office Net"},
		t.ClientV6.Masked(): {Number: 64500, Org: "Example Office Net"},
		appNet:              {Number: 64501, Org: "Example Hosting"},
		t.AppV6.Masked():    {Number: 64501, Org: "Example Hosting"},
	}
	cmap := make(map[netip.Prefix]string, len(countries))
	for _, c := range countries {
		cmap[c.prefix] = c.country
	}
	r.country, r.asn = filepath.Join(r.dir, "country.mmdb"), filepath.Join(r.dir, "asn.mmdb")
	if err := geotest.WriteCountry(r.country, cmap); err != nil {
		return err
	}
	if err := geotest.WriteASN(r.asn, asns); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  %s (GeoLite2-Country format, written by geo/geotest):\n", r.country)
	for _, c := range countries {
		fmt.Fprintf(d.out, "      %-18s %s  %s\n", c.prefix, c.country, c.who)
	}
	fmt.Fprintf(d.out, "  %s: %s and %s AS64500 \"Example Office Net\", %s and %s AS64501 \"Example Hosting\"\n",
		r.asn, clientNet, t.ClientV6.Masked(), appNet, t.AppV6.Masked())
	fmt.Fprintf(d.out, "  (the most specific prefix wins: %s is KP, %s is CA, the other clients DE)\n", r.deniedSrc, r.allowedSrc)
	return nil
}

// startTLS starts openssl s_server -www (it answers GET with a status
// page) with a self-signed certificate.
func (r *ruleDemo) startTLS(d *demo) error {
	if _, err := exec.LookPath("openssl"); err != nil {
		return errors.New("openssl is not installed")
	}
	cert, key := filepath.Join(r.dir, "app-cert.pem"), filepath.Join(r.dir, "app-key.pem")
	if err := writeSelfSigned(cert, key, []string{"www.example", "*.blocked.example", "blocked.example"}); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  self-signed certificate %s (www.example, *.blocked.example)\n", cert)
	args := []string{"openssl", "s_server", "-accept", strconv.Itoa(ruleTLSPort), "-cert", cert, "-key", key, "-www"}
	fmt.Fprintf(d.out, "  [app] $ %s &\n", shellJoin(args))
	p, err := d.lab.App.Start("openssl-s_server", args...)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	if _, err := p.WaitLog(ctx, regexp.MustCompile(`ACCEPT`)); err != nil {
		return err
	}
	r.tls = p
	fmt.Fprintf(d.out, "  HTTPS on :%d; nwpeer still serves HTTP on :%d (any Host, path and method)\n", ruleTLSPort, peer.HTTPPort)
	return nil
}

// writeSelfSigned writes a self-signed certificate for names and its key
// as PEM files.
func writeSelfSigned(certPath, keyPath string, names []string) error {
	c, err := peer.SelfSigned(names...)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, c.CertPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, c.KeyPEM, 0o600)
}

func (r *ruleDemo) startNetward(d *demo) error {
	var err error
	if r.before, err = d.lab.Appliance.Snapshot(d.ctx); err != nil {
		return err
	}
	r.eve = filepath.Join(r.dir, "eve.json")
	opts := lab.NetwardOptions{Binary: d.netward, Args: []string{
		"--rules", r.rules, "--geoip-country", r.country, "--geoip-asn", r.asn, "--log", r.eve}}
	fmt.Fprintf(d.out, "  [appliance] $ %s &\n", shellJoin(append([]string{d.netward}, d.lab.NetwardArgs(opts)...)))
	start := time.Now()
	if r.nw, err = d.lab.StartNetward(d.ctx, opts); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  (the lab's flags come first; the later --log wins: this run's EVE log is %s)\n", r.eve)
	fmt.Fprintf(d.out, "  ready in %v\n", time.Since(start).Round(time.Millisecond))
	for _, line := range strings.Split(r.nw.Log(), "\n") {
		if strings.Contains(line, `"rules`) || strings.Contains(line, `"geo`) {
			d.indent(line)
		}
	}
	return nil
}

// ---- clients ----

// ruleCmd is a finished command.
type ruleCmd struct {
	exit           int
	stdout, stderr string
}

// runCmd runs args in ns and returns how it ended; only a failure to run
// it at all is an error. show is the command as printed.
func (r *ruleDemo) runCmd(d *demo, ns *lab.NS, show string, args ...string) (ruleCmd, error) {
	fmt.Fprintf(d.out, "  [%s] $ %s\n", ns.Role, show)
	ctx, cancel := context.WithTimeout(d.ctx, 15*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := ruleCmd{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		res.exit = ee.ExitCode()
	default:
		return res, fmt.Errorf("%s: %w", shellJoin(args), err)
	}
	return res, nil
}

// curlCase is one curl run and what it must show.
type curlCase struct {
	args    []string // after the common flags; the URL last
	status  int      // HTTP status; 0: none (exit must be exit)
	exit    int      // curl's exit status
	want    string   // in the body (status != 0) or in stderr
	verdict string   // netward's verdict
	rule    string   // and the deciding rule ("default": none)
	alert   string   // an alert rule the flow must log
	early   bool     // refused at the SYN
	note    string   // printed for an answer instead of the line with want
}

// curlWrite is curl's -w: the status and the local address on a last line.
const curlWrite = "\n%{http_code} %{local_ip} %{local_port}"

// curl runs c in the client namespace, checks the client's outcome and
// netward's verdict, and prints both on one line each.
func (r *ruleDemo) curl(d *demo, c curlCase) error {
	args := append([]string{"curl", "-sS", "--max-time", "5", "-w", curlWrite}, c.args...)
	res, err := r.runCmd(d, d.lab.Client, shellJoin(append([]string{"curl"}, c.args...)), args...)
	if err != nil {
		return err
	}
	body, last := res.stdout, ""
	if i := strings.LastIndexByte(body, '\n'); i >= 0 {
		body, last = body[:i], body[i+1:]
	}
	status, local := 0, netip.AddrPort{}
	if f := strings.Fields(last); len(f) == 3 {
		status, _ = strconv.Atoi(f[0])
		ip, err1 := netip.ParseAddr(f[1])
		port, err2 := strconv.ParseUint(f[2], 10, 16)
		if err1 == nil && err2 == nil && port != 0 {
			local = netip.AddrPortFrom(ip, uint16(port))
		}
	}
	var got string
	switch {
	case res.exit != c.exit || status != c.status:
		return fmt.Errorf("curl exit %d, HTTP %d, want exit %d, HTTP %d; stderr %q, body %q",
			res.exit, status, c.exit, c.status, clip(res.stderr), clip(body))
	case c.status == 0:
		line := firstLine(res.stderr, c.want)
		if line == "" {
			return fmt.Errorf("curl exit %d without %q in its error: %q", res.exit, c.want, clip(res.stderr))
		}
		got = fmt.Sprintf("exit %d: %s", res.exit, line)
	case c.status == 403:
		line := firstLine(body, c.want)
		if line == "" || strings.Contains(body, "remote=") {
			return fmt.Errorf("HTTP 403 without %q, or with the application's answer: %q", c.want, clip(body))
		}
		got = "403, the page says: " + stripTags(line)
	default:
		line := firstLine(body, c.want)
		if line == "" {
			return fmt.Errorf("HTTP %d without %q: %q", status, c.want, clip(body))
		}
		if c.note != "" {
			line = c.note
		}
		got = fmt.Sprintf("%d, %s", status, line)
	}
	fmt.Fprintf(d.out, "      → %s\n", got)
	// The destination is the URL's; curl's -w names the source, unless the
	// connection was refused (then the case fixes it with --local-port).
	dst, src, err := curlEndpoints(c.args, local)
	if err != nil {
		return err
	}
	return r.verify(d, ruleJudged{src: src, dst: dst, verdict: c.verdict, rule: c.rule, alert: c.alert, early: c.early},
		func(f ruleFlowLine) bool { return f.Src == src.String() && f.Dst == dst.String() })
}

// curlEndpoints finds a curl run's destination (from its URL or
// --resolve) and source (from -w, else --interface and --local-port).
func curlEndpoints(args []string, local netip.AddrPort) (dst, src netip.AddrPort, err error) {
	url := args[len(args)-1]
	hostport := strings.SplitN(strings.SplitN(url, "://", 2)[1], "/", 2)[0]
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--resolve": // name:port:addr
			if f := strings.SplitN(args[i+1], ":", 3); len(f) == 3 && f[0]+":"+f[1] == hostport {
				hostport = f[2] + ":" + f[1]
			}
		case "--interface":
			if a, err := netip.ParseAddr(args[i+1]); err == nil && !local.IsValid() {
				local = netip.AddrPortFrom(a, local.Port())
			}
		case "--local-port":
			if p, err := strconv.ParseUint(args[i+1], 10, 16); err == nil && local.Port() == 0 {
				local = netip.AddrPortFrom(local.Addr(), uint16(p))
			}
		}
	}
	if dst, err = netip.ParseAddrPort(hostport); err != nil {
		return dst, src, fmt.Errorf("curl %s: destination: %w", strings.Join(args, " "), err)
	}
	if !local.IsValid() || local.Port() == 0 {
		return dst, src, fmt.Errorf("curl %s: no source address and port", strings.Join(args, " "))
	}
	return dst, local, nil
}

// verify waits for netward's flow line that match accepts, checks its
// verdict and rule, records the flow, and prints netward's side.
func (r *ruleDemo) verify(d *demo, want ruleJudged, match func(ruleFlowLine) bool) error {
	f, err := r.waitFlow(d, match)
	if err != nil {
		return err
	}
	if f.Verdict != want.verdict || f.Rule != want.rule {
		return fmt.Errorf("netward: %s by %s, want %s by %s: %s", f.Verdict, f.Rule, want.verdict, want.rule, f.line)
	}
	want.src = netip.MustParseAddrPort(f.Src)
	// At the SYN netward reads nothing: the flow has no protocol and no
	// bytes. Any later refusal happens after the first bytes were read.
	atSYN := f.End == "refused" && f.App == "unknown" && f.BytesUp == 0 && f.BytesDown == 0
	if atSYN != want.early {
		return fmt.Errorf("netward refused the flow at the SYN: %v, want %v: %s", atSYN, want.early, f.line)
	}
	how := ""
	switch {
	case want.early:
		how = ", at the SYN"
	case want.alert != "":
		how = ", alert " + want.alert + " logged"
	}
	country := ""
	if f.SrcCountry != "" {
		country = " (" + f.SrcCountry + ")"
	}
	seen := ""
	if want.verdict != "allow" && want.dst.Port() == peer.HTTPPort && d.app != nil {
		// nwpeer logs every request it answers, with the client's address.
		if strings.Contains(d.app.Log(), `"remote":"`+f.Src+`"`) {
			return fmt.Errorf("the application answered the refused request from %s", f.Src)
		}
		seen = "; the application got nothing"
	}
	r.judged = append(r.judged, want)
	fmt.Fprintf(d.out, "      netward: %s by rule %s%s — flow %d from %s%s%s\n", f.Verdict, f.Rule, how, f.FlowID, f.Src, country, seen)
	return nil
}

func (r *ruleDemo) tlsClients(d *demo) error {
	app := d.lab.Topo.AppV4.Addr().String()
	port := strconv.Itoa(ruleTLSPort)
	fmt.Fprintln(d.out, "  (curl runs with -sS --max-time 5 and -w for its status and local port; -k: the certificate is self-signed)")
	for _, c := range []curlCase{
		{args: []string{"-k", "--resolve", "www.example:" + port + ":" + app, "https://www.example:" + port + "/"},
			status: 200, want: "Ciphers supported in s_server", note: "openssl s_server's status page", verdict: "allow", rule: "default"},
		{args: []string{"-k", "--resolve", "shop.blocked.example:" + port + ":" + app, "https://shop.blocked.example:" + port + "/"},
			exit: 35, want: "access denied", verdict: "deny", rule: "blocked-sites"},
	} {
		if err := r.curl(d, c); err != nil {
			return err
		}
	}
	// openssl sends the name as given; it does not say its port, so the
	// flow is found by its SNI, unique to this run.
	for _, c := range []struct {
		sni           string
		denied        bool
		verdict, rule string
	}{
		{"www.example", false, "allow", "default"},
		{"cdn.blocked.example", true, "deny", "blocked-sites"},
	} {
		args := []string{"openssl", "s_client", "-connect", app + ":" + port, "-servername", c.sni, "-brief"}
		res, err := r.runCmd(d, d.lab.Client, shellJoin(args)+" </dev/null", args...)
		if err != nil {
			return err
		}
		if c.denied {
			line := firstLine(res.stderr, "alert access denied")
			if res.exit == 0 || line == "" {
				return fmt.Errorf("openssl exit %d, want a failure with \"alert access denied\"; stderr %q", res.exit, clip(res.stderr))
			}
			fmt.Fprintf(d.out, "      → exit %d: %s\n", res.exit, line)
		} else {
			line := firstLine(res.stderr, "CONNECTION ESTABLISHED")
			if res.exit != 0 || line == "" {
				return fmt.Errorf("openssl exit %d, want the handshake done; stderr %q", res.exit, clip(res.stderr))
			}
			fmt.Fprintf(d.out, "      → exit 0: %s %s\n", line, firstLine(res.stderr, "Protocol version"))
		}
		dst := app + ":" + port
		err = r.verify(d, ruleJudged{verdict: c.verdict, rule: c.rule, dst: netip.MustParseAddrPort(dst)},
			func(f ruleFlowLine) bool { return f.SNI == c.sni && f.Dst == dst && !r.seen(f.Src) })
		if err != nil {
			return err
		}
	}
	return nil
}

// seen reports whether a client address:port was judged by an earlier step.
func (r *ruleDemo) seen(src string) bool {
	for _, j := range r.judged {
		if j.src.String() == src {
			return true
		}
	}
	return false
}

func (r *ruleDemo) httpClients(d *demo) error {
	url := "http://" + d.appAddr("4", peer.HTTPPort)
	for _, c := range []curlCase{
		{args: []string{"-H", "Host: www.example", url + "/"}, status: 200, want: "remote=", verdict: "allow", rule: "default"},
		{args: []string{"-H", "Host: admin.example", url + "/"}, status: 403, want: "admin-console", verdict: "deny", rule: "admin-console"},
		{args: []string{"-H", "Host: www.example", url + "/admin/users"}, status: 403, want: "admin-paths", verdict: "deny", rule: "admin-paths"},
		{args: []string{"-H", "Host: www.example", url + "/administrator"}, status: 200, want: "remote=", verdict: "allow", rule: "default"},
		{args: []string{"-H", "Host: www.example", "-X", "DELETE", url + "/items/7"}, status: 403, want: "no-delete", verdict: "deny", rule: "no-delete"},
	} {
		if err := r.curl(d, c); err != nil {
			return err
		}
	}
	return nil
}

func (r *ruleDemo) alertClient(d *demo) error {
	url := "http://" + d.appAddr("4", peer.HTTPPort)
	return r.curl(d, curlCase{args: []string{"-H", "Host: www.example", "-d", "user=alice", url + "/login"},
		status: 200, want: "remote=", verdict: "allow", rule: "default", alert: "watch-logins"})
}

func (r *ruleDemo) geoClients(d *demo) error {
	url := "http://" + d.appAddr("4", peer.HTTPPort) + "/"
	fmt.Fprintf(d.out, "  %s is in KP (embargoed), %s in CA; the client's own %s in DE\n", r.deniedSrc, r.allowedSrc, d.lab.Topo.ClientV4.Addr())
	for _, c := range []curlCase{
		{args: []string{"--interface", r.deniedSrc.String(), "--local-port", "41009", "--connect-timeout", "3", url},
			exit: 7, want: "Failed to connect", verdict: "deny", rule: "embargoed-countries", early: true},
		{args: []string{"--interface", r.allowedSrc.String(), url}, status: 200, want: "remote=" + r.allowedSrc.String(), verdict: "allow", rule: "default"},
	} {
		if err := r.curl(d, c); err != nil {
			return err
		}
	}
	return nil
}

// ---- netward's logs ----

// ruleFlowLine is netward's log line for one flow ("msg":"flow").
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
	line       string
}

func (r *ruleDemo) flows() []ruleFlowLine {
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

// waitFlow waits up to 5 s for the flow line match accepts (netward
// writes it when the flow ends).
func (r *ruleDemo) waitFlow(d *demo, match func(ruleFlowLine) bool) (ruleFlowLine, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, f := range r.flows() {
			if match(f) {
				return f, nil
			}
		}
		if time.Now().After(deadline) || d.ctx.Err() != nil {
			return ruleFlowLine{}, errors.New("netward logged no flow line for the connection: did it cross netward?")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *ruleDemo) flowLog(d *demo) error {
	flows := r.flows()
	if len(flows) < len(r.judged) {
		return fmt.Errorf("netward logged %d flows, the clients made %d", len(flows), len(r.judged))
	}
	const row = "  %-16v %-21s %-16s %-7s %-20s %-7s %-19s %-2s %s\n"
	fmt.Fprintf(d.out, row, "flow", "client", "server", "app", "sni / host", "verdict", "rule", "cc", "end")
	for _, f := range flows {
		name := f.SNI
		if name == "" {
			name = f.Host
		}
		fmt.Fprintf(d.out, row, f.FlowID, f.Src, f.Dst, f.App, name, f.Verdict, f.Rule, f.SrcCountry, f.End)
	}
	fmt.Fprintln(d.out, "  (end \"refused\": netward refused the flow — a 403, a TLS alert, or at the SYN a reset; app \"unknown\": nothing was read)")
	return nil
}

// ruleAlert is an EVE alert event, the fields the demo shows.
type ruleAlert struct {
	EventType string `json:"event_type"`
	FlowID    uint64 `json:"flow_id"`
	SrcIP     string `json:"src_ip"`
	SrcPort   uint16 `json:"src_port"`
	DestIP    string `json:"dest_ip"`
	DestPort  uint16 `json:"dest_port"`
	AppProto  string `json:"app_proto"`
	Alert     struct {
		Action    string `json:"action"`
		Signature string `json:"signature"`
	} `json:"alert"`
	line string
}

func (a ruleAlert) src() string {
	ip, err := netip.ParseAddr(a.SrcIP)
	if err != nil {
		return ""
	}
	return netip.AddrPortFrom(ip, a.SrcPort).String()
}

// readAlerts decodes the alert events in netward's EVE log.
func (r *ruleDemo) readAlerts() ([]ruleAlert, error) {
	data, err := os.ReadFile(r.eve)
	if err != nil {
		return nil, err
	}
	var out []ruleAlert
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var a ruleAlert
		if json.Unmarshal(sc.Bytes(), &a) == nil && a.EventType == "alert" {
			a.line = sc.Text()
			out = append(out, a)
		}
	}
	return out, sc.Err()
}

// wantAlerts lists the alerts the judged flows must have in the EVE log:
// "src action signature".
func (r *ruleDemo) wantAlerts() map[string]bool {
	want := map[string]bool{}
	for _, j := range r.judged {
		if j.verdict == "deny" || j.verdict == "drop" {
			want[j.src.String()+" blocked "+j.rule] = true
		}
		if j.alert != "" {
			want[j.src.String()+" allowed "+j.alert] = true
		}
	}
	return want
}

func (r *ruleDemo) eveAlerts(d *demo) error {
	// Events are written asynchronously.
	var alerts []ruleAlert
	var missing []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		var err error
		if alerts, err = r.readAlerts(); err != nil {
			return err
		}
		have := map[string]bool{}
		for _, a := range alerts {
			have[a.src()+" "+a.Alert.Action+" "+a.Alert.Signature] = true
		}
		missing = missing[:0]
		for w := range r.wantAlerts() {
			if !have[w] {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) || d.ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(d.out, "  [appliance] $ grep '\"event_type\":\"alert\"' %s\n", r.eve)
	const row = "  %-16v %-21s %-16s %-5s %-8s %s\n"
	fmt.Fprintf(d.out, row, "flow", "src", "dest", "app", "action", "signature")
	for _, a := range alerts {
		fmt.Fprintf(d.out, row, a.FlowID, a.src(), fmt.Sprintf("%s:%d", a.DestIP, a.DestPort), a.AppProto, a.Alert.Action, a.Alert.Signature)
	}
	if len(alerts) > 0 {
		fmt.Fprintln(d.out, "  one event in full:")
		d.indent(alerts[0].line)
	}
	if len(missing) > 0 {
		return fmt.Errorf("the EVE log lacks the alerts (src action signature): %s", strings.Join(missing, "; "))
	}
	return nil
}

// ---- rule tools ----

func (r *ruleDemo) checkExplain(d *demo) error {
	geoFlags := []string{"--geoip-country", r.country, "--geoip-asn", r.asn}
	args := append(append([]string{d.netward, "check"}, geoFlags...), r.rules)
	res, err := r.runCmd(d, d.lab.Appliance, shellJoin(args), args...)
	if err != nil {
		return err
	}
	d.indent(res.stdout)
	d.indent(res.stderr)
	if res.exit != 0 || !strings.Contains(res.stdout, ": ok: ") {
		return fmt.Errorf("netward check exit %d, want 0 and a summary", res.exit)
	}

	// Explain the Host-denied flow the HTTP step sent, with its real ports.
	var j *ruleJudged
	for i := range r.judged {
		if r.judged[i].rule == "admin-console" {
			j = &r.judged[i]
		}
	}
	if j == nil {
		return errors.New("no flow was denied by admin-console to explain")
	}
	fmt.Fprintln(d.out, "\n  why was the request for admin.example denied?")
	args = append(append([]string{d.netward, "explain", "--rules", r.rules}, geoFlags...),
		"--src", j.src.String(), "--dst", j.dst.String(), "--host", "admin.example", "--method", "GET", "--path", "/")
	res, err = r.runCmd(d, d.lab.Appliance, shellJoin(args), args...)
	if err != nil {
		return err
	}
	d.indent(res.stdout)
	d.indent(res.stderr)
	if res.exit != 0 || !strings.Contains(res.stdout, "verdict: deny by admin-console") {
		return fmt.Errorf("netward explain exit %d, want \"verdict: deny by admin-console\"", res.exit)
	}
	return nil
}

func (r *ruleDemo) stop(d *demo) error {
	if err := r.nw.Terminate(10 * time.Second); err != nil {
		return fmt.Errorf("netward exit: %w", err)
	}
	fmt.Fprintln(d.out, "  netward exited 0:")
	for _, line := range strings.Split(r.nw.Log(), "\n") {
		if strings.Contains(line, `"msg":"netward stop`) {
			d.indent(line)
		}
	}
	after, err := d.lab.Appliance.Snapshot(d.ctx)
	if err != nil {
		return err
	}
	if diff := after.Diff(r.before); diff != "" {
		return fmt.Errorf("the appliance differs from before netward started:\n%s", diff)
	}
	fmt.Fprintln(d.out, "  the appliance's iptables, ip rules, routes, links and sysctls are as before it started")
	// s_server has no SIGTERM handler: it ends by the signal.
	var ee *exec.ExitError
	if err := r.tls.Stop(5 * time.Second); err != nil && !(errors.As(err, &ee) && ee.ExitCode() == -1) {
		return fmt.Errorf("openssl s_server: %w", err)
	}
	return nil
}

// ---- text ----

// firstLine returns the first line of s that contains sub, trimmed.
func firstLine(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

var htmlTag = regexp.MustCompile(`<[^>]*>`)

func stripTags(s string) string { return strings.TrimSpace(htmlTag.ReplaceAllString(s, "")) }

// clip shortens client output quoted in an error.
func clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
