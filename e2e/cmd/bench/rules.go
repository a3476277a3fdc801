package main

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
)

// The names bench's traffic carries. Only the two allow rules at the end of
// the realistic rule file match them; every other rule is evaluated and
// fails.
const (
	benchSNI  = "bench.netward.test" // the TLS churn's SNI (and its certificate's name)
	benchHost = "bench.netward.test" // the HTTP churn's Host header

	ruleAllowTLS  = "allow-bench-tls"
	ruleAllowHTTP = "allow-bench-http"

	realisticRules   = 1000
	realisticDomains = 10000
)

// benchPorts are the application ports bench's traffic goes to (iperf3,
// HTTP, HTTPS, nwpeer serve's xfer/banner/echo, and the held-flow echo
// servers from flowPortBase up). Generated port rules stay clear of
// 5000–9999 and generated source-port rules below 1024 (no client uses
// those as ephemeral ports, even with ip_local_port_range 1024-65535).
const (
	iperfPort    = 5201
	tlsPort      = 8443
	flowPortBase = 9100
)

// ruleFile is the rule file every netward column runs with.
type ruleFile struct {
	mode  string // none, realistic or FILE
	path  string // "" for none
	files []string
	bytes int64  // the rule file and its list files
	check string // netward check's summary line
	sha   string // SHA-256 prefix netward check printed
	count int    // rules, as netward check counted them
	cases int    // netward test cases that passed (realistic only)
}

// describe is the header lines naming the rule file.
func (r *ruleFile) describe() string {
	switch r.mode {
	case "none":
		return "rules: none (netward run without --rules: no rule is evaluated, every flow allowed)"
	case "realistic":
		return fmt.Sprintf("rules: realistic, generated (same content every run): %d rules of mixed kinds (sni, host, domain, method+path, path, app,\n"+
			"  dst/src CIDR, ports, not:) and a list of %d domains, %s on disk; none matches bench's traffic but the allow rules\n"+
			"  %s (SNI) and %s (Host) at the end, and the default allow.\n"+
			"  netward check --strict: %s; netward test: %d cases pass",
			realisticRules, realisticDomains, kib(r.bytes), ruleAllowTLS, ruleAllowHTTP, r.check, r.cases)
	}
	return fmt.Sprintf("rules: %s, %s on disk; netward check: %s", r.path, kib(r.bytes), r.check)
}

func kib(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.0f KiB", float64(n)/1024)
}

// prepareRules makes (realistic) or takes (FILE) the rule file, and checks
// it with netward check (and, realistic, netward test).
func (b *bench) prepareRules(mode string) (*ruleFile, error) {
	r := &ruleFile{mode: mode}
	switch mode {
	case "none":
		return r, nil
	case "realistic":
		var err error
		if r.path, r.files, err = writeRealisticRules(filepath.Join(b.dir, "rules")); err != nil {
			return nil, err
		}
	default:
		abs, err := filepath.Abs(mode)
		if err != nil {
			return nil, err
		}
		r.path, r.files = abs, []string{abs}
	}
	for _, f := range r.files {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
		r.bytes += st.Size()
	}
	args := []string{"check", r.path}
	if mode == "realistic" {
		// No warnings either: a shadowed rule would never be evaluated.
		args = []string{"check", "--strict", r.path}
	}
	out, err := exec.CommandContext(b.ctx, b.netward, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("netward %s: %w:\n%s", strings.Join(args, " "), err, out)
	}
	m := regexp.MustCompile(`ok: (\d+) rules?, .*sha256 ([0-9a-f]+)`).FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("netward check: no summary in %q", out)
	}
	r.count, _ = strconv.Atoi(m[1])
	r.sha = m[2]
	_, r.check, _ = strings.Cut(strings.TrimSpace(string(out)), ": ")
	if mode != "realistic" {
		return r, nil
	}
	if r.count != realisticRules {
		return nil, fmt.Errorf("netward check counts %d rules in the realistic file, want %d", r.count, realisticRules)
	}
	cases := filepath.Join(filepath.Dir(r.path), "cases.yaml")
	out, err = exec.CommandContext(b.ctx, b.netward, "test", "--rules", r.path, cases).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("netward test on the realistic rules: %w:\n%s", err, out)
	}
	r.cases = strings.Count(string(out), "PASS")
	if r.cases == 0 {
		return nil, fmt.Errorf("netward test on the realistic rules passed no case:\n%s", out)
	}
	return r, nil
}

// writeRealisticRules writes rules.yaml and its domain list into dir. The
// content is the same in every run (a fixed seed), so runs load the same
// file (same SHA-256) and their numbers compare.
func writeRealisticRules(dir string) (rulesPath string, files []string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	g := &ruleGen{rng: rand.New(rand.NewPCG(7, 2024)), seen: map[string]bool{}}
	var list strings.Builder
	list.WriteString("# blocked domains: random names under .example and .invalid (RFC 2606)\n")
	var listSample string
	for i := range realisticDomains {
		name := g.label(6, 12) + "." + []string{"example", "invalid"}[i%2]
		switch i % 4 {
		case 0, 1:
			name = "." + name // the name and everything under it
		case 2:
			name = "*." + name // everything under it
		}
		if i == realisticDomains/2 {
			listSample = "www" + strings.TrimPrefix(name, "*")
		}
		list.WriteString(name + "\n")
	}
	listPath := filepath.Join(dir, "blocked-domains.txt")
	if err := os.WriteFile(listPath, []byte(list.String()), 0o644); err != nil {
		return "", nil, err
	}
	rulesPath = filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(g.rules()), 0o644); err != nil {
		return "", nil, err
	}
	g.refused = append(g.refused, refusedCase{facts: "src: 198.51.100.2:40000\ndst: 192.0.2.2:443\nsni: " + listSample + "\n",
		expect: "deny", rule: g.blockedRule})
	cases := filepath.Join(dir, "cases.yaml")
	if err := os.WriteFile(cases, []byte(realisticCases(g.refused)), 0o644); err != nil {
		return "", nil, err
	}
	return rulesPath, []string{rulesPath, listPath}, nil
}

type ruleGen struct {
	rng     *rand.Rand
	seen    map[string]bool
	b       strings.Builder
	n       int
	refused []refusedCase
	// blockedRule is the name of the rule with the domain list.
	blockedRule string // flows some generated rules refuse
}

// refusedCase is a flow a generated rule refuses, for netward test.
type refusedCase struct {
	facts  string // YAML lines of the case's facts (src, dst, sni, …)
	expect string // deny or drop
	rule   string
	early  bool
}

// name is the name of the rule written last.
func (g *ruleGen) name(kind string) string { return fmt.Sprintf("%s-%04d", kind, g.n) }

// label is a random DNS label of lo..hi letters and digits, never seen
// before in this file.
func (g *ruleGen) label(lo, hi int) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789"
	for {
		n := lo + g.rng.IntN(hi-lo+1)
		b := make([]byte, n)
		b[0] = chars[g.rng.IntN(26)] // a letter first
		for i := 1; i < n; i++ {
			b[i] = chars[g.rng.IntN(len(chars))]
		}
		if s := string(b); !g.seen[s] {
			g.seen[s] = true
			return s
		}
	}
}

// port is a random destination port outside bench's 5000–9999, and not
// used by an earlier rule (one would shadow the other).
func (g *ruleGen) port() int {
	for {
		p := 10000 + g.rng.IntN(55000)
		if g.rng.IntN(2) == 0 {
			p = 1 + g.rng.IntN(4999)
		}
		if k := "port " + strconv.Itoa(p); !g.seen[k] {
			g.seen[k] = true
			return p
		}
	}
}

// v4 is a random /24 in 10.0.0.0/8 or 172.16.0.0/12 (private, never in
// the lab, never an earlier rule's: one would shadow the other).
func (g *ruleGen) v4() string {
	for {
		a := netip.AddrFrom4([4]byte{10, byte(g.rng.IntN(256)), byte(g.rng.IntN(256)), 0})
		if g.rng.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{172, byte(16 + g.rng.IntN(15)), byte(g.rng.IntN(256)), 0})
		}
		if s := a.String() + "/24"; !g.seen[s] {
			g.seen[s] = true
			return s
		}
	}
}

// v6 is a random /48 in fd00::/8 (unique local).
func (g *ruleGen) v6() string {
	for {
		if s := fmt.Sprintf("fd%02x:%x:%x::/48", g.rng.IntN(256), g.rng.IntN(1<<16), g.rng.IntN(1<<16)); !g.seen[s] {
			g.seen[s] = true
			return s
		}
	}
}

func (g *ruleGen) cidrs() string {
	n := 1 + g.rng.IntN(3)
	var v []string
	for i := range n {
		if i%2 == 0 {
			v = append(v, g.v4())
		} else {
			v = append(v, g.v6())
		}
	}
	return "[" + strings.Join(v, ", ") + "]"
}

// quoted is the values as a YAML flow sequence's items: single-quoted,
// since a pattern may start with '*' (an alias in YAML).
func quoted(v ...string) string {
	q := make([]string, len(v))
	for i, s := range v {
		q[i] = "'" + s + "'"
	}
	return strings.Join(q, ", ")
}

func (g *ruleGen) action() string {
	return []string{"deny", "deny", "deny", "drop"}[g.rng.IntN(4)]
}

// rule writes one rule: name, action and YAML lines of conditions.
func (g *ruleGen) rule(kind, action string, conds ...string) {
	g.n++
	fmt.Fprintf(&g.b, "  - name: %s-%04d\n    action: %s\n", kind, g.n, action)
	for _, c := range conds {
		g.b.WriteString("    " + c + "\n")
	}
}

// rules is the rule file: address and port rules first (as the rules
// README advises), then rules on inspected facts, the domain list, and
// the two allow rules bench's traffic matches. The kinds and how many of
// each are what an egress policy of an office or VPC looks like.
func (g *ruleGen) rules() string {
	g.b.WriteString(`# Generated by netward bench: a realistic-size rule set that none of
# bench's flows match but the last two rules and the default.
default: allow
on_invalid: deny
lists:
  blocked-domains: {file: blocked-domains.txt}
  admins: [172.31.255.0/24, "fd99::/64"]
rules:
`)
	for i := range 120 { // known-bad destination networks
		a := g.action()
		v4 := g.v4()
		g.rule("bad-dst", a, "dst: ["+v4+", "+g.v6()+"]")
		if i == 60 {
			p := netip.MustParsePrefix(v4)
			g.refused = append(g.refused, refusedCase{facts: fmt.Sprintf("src: 198.51.100.2:40000\ndst: %s:80\n", p.Addr().Next()),
				expect: a, rule: g.name("bad-dst"), early: true})
		}
	}
	for range 80 { // quarantined clients
		g.rule("quarantine-src", "drop", "src: "+g.cidrs())
	}
	for range 60 { // ports nobody may reach
		p := g.port()
		v := strconv.Itoa(p)
		if g.rng.IntN(3) == 0 && p >= 10000 {
			// A range: the ports after p are taken too.
			hi := p + 1 + g.rng.IntN(20)
			for q := p + 1; q <= hi; q++ {
				g.seen["port "+strconv.Itoa(q)] = true
			}
			v += "-" + strconv.Itoa(hi)
		}
		g.rule("port", "deny", "dst_port: ["+v+", "+strconv.Itoa(g.port())+"]")
	}
	for range 40 { // services only admins may reach
		g.rule("admin-only", "deny", "dst: "+g.cidrs(), "dst_port: "+strconv.Itoa(g.port()), "not:", "  src: $admins")
	}
	for range 20 { // odd source ports toward a network
		g.rule("src-port", "drop", "src_port: "+strconv.Itoa(1+g.rng.IntN(1023)), "dst: "+g.v4())
	}
	g.b.WriteString("  # inspected facts\n")
	for i := range 250 { // TLS services by SNI
		v := []string{
			g.label(3, 10) + "." + g.label(4, 10) + ".test",
			"*.cdn-" + g.label(4, 8) + ".example",
			"." + g.label(5, 12) + ".invalid",
		}[:1+g.rng.IntN(3)]
		a := g.action()
		g.rule("sni", a, "sni: ["+quoted(v...)+"]")
		if i == 150 {
			g.refused = append(g.refused, refusedCase{facts: "src: 198.51.100.2:40000\ndst: 192.0.2.2:443\nsni: " + v[0] + "\n",
				expect: a, rule: g.name("sni")})
		}
	}
	for range 120 { // internal web apps' admin pages
		g.rule("host-admin", "deny", "host: ."+g.label(4, 10)+".corp.example", "path: [/admin/, /manage/, '=/login']")
	}
	for range 100 { // trackers by either name
		g.rule("domain", "deny", "domain: ["+quoted("."+g.label(5, 10)+".example", "*."+g.label(5, 10)+".invalid")+"]")
	}
	methods := []string{"DELETE", "PUT", "PATCH", "TRACE", "POST"}
	for i := range 100 { // writes to APIs
		m := methods[g.rng.IntN(len(methods))]
		path := "/api/v" + strconv.Itoa(1+g.rng.IntN(3)) + "/" + g.label(4, 10) + "/"
		g.rule("api-write", "deny", "method: ["+m+"]", "path: ["+path+"]")
		if i == 50 {
			g.refused = append(g.refused, refusedCase{facts: "src: 198.51.100.2:40000\ndst: 192.0.2.2:8080\nhost: " + benchHost + "\nmethod: " + m + "\npath: " + path + "x\n",
				expect: "deny", rule: g.name("api-write")})
		}
	}
	for range 60 { // exploit probes by path
		v := []string{"'=/" + g.label(4, 8) + ".php'", "'/**/" + g.label(4, 8) + ".sql'", "/cgi-" + g.label(3, 6) + "/"}[g.rng.IntN(3)]
		g.rule("path", "deny", "path: ["+v+"]")
	}
	for range 30 { // logged, not decided
		g.rule("watch", "alert", "app: http", "method: POST", "path: [/"+g.label(4, 8)+"/login]")
	}
	for range 15 { // no tunnels on TLS ports
		g.rule("app", "deny", "app: [ssh, h2]", "dst_port: "+strconv.Itoa(g.port()))
	}
	for g.n < realisticRules-3 { // more TLS services, to the round number
		g.rule("sni", g.action(), "sni: ["+g.label(3, 10)+"."+g.label(4, 10)+".test]")
	}
	g.rule("blocked-domains", "deny", "domain: $blocked-domains")
	g.blockedRule = g.name("blocked-domains")
	g.n++
	fmt.Fprintf(&g.b, "  - name: %s\n    action: allow\n    sni: %s\n", ruleAllowTLS, benchSNI)
	g.n++
	fmt.Fprintf(&g.b, "  - name: %s\n    action: allow\n    host: %s\n", ruleAllowHTTP, benchHost)
	return g.b.String()
}

// realisticCases are netward test cases: bench's own flows get the
// verdicts the bench expects (decided by the last rules or the default,
// after inspection, so the whole set was evaluated), and flows some
// generated rules target are refused (the file is live, not inert).
func realisticCases(refused []refusedCase) string {
	t := lab.Default()
	c4, c6 := t.ClientV4.Addr(), t.ClientV6.Addr()
	a4, a6 := t.AppV4.Addr(), t.AppV6.Addr()
	var b strings.Builder
	b.WriteString("cases:\n")
	add := func(name string, src, dst netip.Addr, port int, extra, rule string) {
		fmt.Fprintf(&b, "  - name: %s\n    src: %q\n    dst: %q\n%s    expect: allow\n    rule: %s\n    early: false\n",
			name, netip.AddrPortFrom(src, 40000).String(), netip.AddrPortFrom(dst, uint16(port)).String(), extra, rule)
	}
	for _, f := range []struct {
		fam      string
		src, dst netip.Addr
	}{{"IPv4", c4, a4}, {"IPv6", c6, a6}} {
		add("bench TLS "+f.fam, f.src, f.dst, tlsPort, "    sni: "+benchSNI+"\n", ruleAllowTLS)
		add("bench HTTP "+f.fam, f.src, f.dst, peer.HTTPPort, "    host: "+benchHost+"\n    method: GET\n    path: /\n", ruleAllowHTTP)
		for _, p := range []int{iperfPort, peer.EchoPort, flowPortBase, flowPortBase + 7} {
			add(fmt.Sprintf("bench port %d %s", p, f.fam), f.src, f.dst, p, "    app: unknown\n", "default")
		}
	}
	for i, r := range refused {
		fmt.Fprintf(&b, "  - name: refused %d\n", i+1)
		for _, line := range strings.Split(strings.TrimSpace(r.facts), "\n") {
			k, v, _ := strings.Cut(line, ": ")
			fmt.Fprintf(&b, "    %s: %q\n", k, v)
		}
		fmt.Fprintf(&b, "    expect: %s\n    rule: %s\n    early: %v\n", r.expect, r.rule, r.early)
	}
	return b.String()
}
