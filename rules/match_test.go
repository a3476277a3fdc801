package rules

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/geo/geotest"
	"github.com/netward/netward/inspect"
)

// flowSpec builds Facts tersely for tables.
type flowSpec struct {
	src, dst               string // ip:port
	app                    inspect.Proto
	sni, host              string
	method, path           string
	srcCountry, dstCountry string
	srcASN, dstASN         uint32
}

func (s flowSpec) facts() *Facts {
	f := &Facts{App: s.app, SNI: s.sni, Host: s.host, Method: s.method, Path: s.path}
	src, dst := s.src, s.dst
	if src == "" {
		src = "10.0.0.1:40000"
	}
	if dst == "" {
		dst = "192.0.2.10:443"
	}
	f.Src = netip.MustParseAddrPort(src)
	f.Dst = netip.MustParseAddrPort(dst)
	f.SrcGeo = geo.Info{Country: s.srcCountry, ASN: s.srcASN}
	f.DstGeo = geo.Info{Country: s.dstCountry, ASN: s.dstASN}
	return f
}

// oneRule is a rule file with one deny rule "r" holding cond and default
// allow; a flow that matches gets deny.
func oneRule(cond string) string {
	return "default: allow\nrules:\n  - name: r\n    action: deny\n" + indent(cond, "    ")
}

func indent(s, pre string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = pre + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

func TestConditions(t *testing.T) {
	tests := []struct {
		name    string
		cond    string
		match   []flowSpec
		noMatch []flowSpec
	}{
		{"dst_port", "dst_port: [443, 8000-8999]",
			[]flowSpec{{dst: "192.0.2.1:443"}, {dst: "192.0.2.1:8000"}, {dst: "192.0.2.1:8999"}},
			[]flowSpec{{dst: "192.0.2.1:80"}, {dst: "192.0.2.1:9000"}}},
		{"not dst_port", "not: {dst_port: 443}",
			[]flowSpec{{dst: "192.0.2.1:80"}},
			[]flowSpec{{dst: "192.0.2.1:443"}}},
		{"src_port scalar", "src_port: 1024-65535",
			[]flowSpec{{src: "10.0.0.1:1024"}},
			[]flowSpec{{src: "10.0.0.1:1023"}}},
		{"dst cidr v4 v6", "dst: [192.0.2.0/25, 2001:db8::/32, 198.51.100.7]",
			[]flowSpec{{dst: "192.0.2.1:1"}, {dst: "[2001:db8::5]:1"}, {dst: "198.51.100.7:1"}, {dst: "[::ffff:192.0.2.9]:1"}},
			[]flowSpec{{dst: "192.0.2.200:1"}, {dst: "[2001:db9::1]:1"}, {dst: "198.51.100.8:1"}}},
		{"not src", "not:\n  src: [10.0.0.0/8]",
			[]flowSpec{{src: "192.168.1.1:5"}, {src: "[2001:db8::1]:5"}},
			[]flowSpec{{src: "10.9.9.9:5"}}},
		{"src_country", "src_country: [de, FR]",
			[]flowSpec{{srcCountry: "DE"}, {srcCountry: "FR"}},
			[]flowSpec{{srcCountry: "US"}, {}}},
		{"every country except US and CA", "not: {src_country: [US, CA]}",
			[]flowSpec{{srcCountry: "DE"}, {}},
			[]flowSpec{{srcCountry: "US"}, {srcCountry: "CA"}}},
		{"dst_country", "dst_country: RU",
			[]flowSpec{{dstCountry: "RU"}},
			[]flowSpec{{srcCountry: "RU"}}},
		{"asn", "src_asn: [AS64500, 64501]\ndst_asn: 4200000000",
			[]flowSpec{{srcASN: 64500, dstASN: 4200000000}, {srcASN: 64501, dstASN: 4200000000}},
			[]flowSpec{{srcASN: 64500}, {dstASN: 4200000000}, {}}},
		{"not asn", "not: {dst_asn: 64500}",
			[]flowSpec{{dstASN: 1}, {}},
			[]flowSpec{{dstASN: 64500}}},
		{"app", "app: [tls, h2]",
			[]flowSpec{{app: inspect.ProtoTLS}, {app: inspect.ProtoHTTP2}},
			[]flowSpec{{app: inspect.ProtoHTTP1}, {app: inspect.ProtoUnknown}, {app: inspect.ProtoSSH}}},
		{"app unknown", "app: unknown",
			[]flowSpec{{app: inspect.ProtoUnknown}},
			[]flowSpec{{app: inspect.ProtoTLS}}},
		{"not app", "not: {app: [http, tls]}",
			[]flowSpec{{app: inspect.ProtoSSH}},
			[]flowSpec{{app: inspect.ProtoHTTP1}}},
		{"method", "method: [post, PUT]",
			[]flowSpec{{method: "POST"}, {method: "put"}},
			[]flowSpec{{method: "GET"}, {}}},
		{"not method", "not: {method: GET}",
			[]flowSpec{{method: "POST"}, {}},
			[]flowSpec{{method: "GET"}}},
		{"sni", "sni: [.example.com]",
			[]flowSpec{{sni: "www.EXAMPLE.com."}, {sni: "example.com"}},
			[]flowSpec{{host: "example.com"}, {sni: "example.org"}}},
		{"not sni", "not: {sni: [.example.com]}",
			[]flowSpec{{sni: "example.org"}, {}},
			[]flowSpec{{sni: "a.example.com"}}},
		{"host", "host: [api.example.com]",
			[]flowSpec{{host: "API.example.com:8080"}, {host: "api.example.com."}},
			[]flowSpec{{sni: "api.example.com"}, {host: "x.api.example.com"}}},
		{"domain", "domain: ['*.example.com']",
			[]flowSpec{{sni: "a.example.com"}, {host: "b.example.com"}},
			[]flowSpec{{sni: "example.com"}, {host: "example.com"}, {}}},
		{"not domain", "not: {domain: [example.com]}",
			[]flowSpec{{sni: "example.org"}, {}},
			[]flowSpec{{host: "example.com"}}},
		{"path", "path: [/admin, '/img/*.png']",
			[]flowSpec{{path: "/admin/x"}, {path: "/img/a.png"}, {path: "/static/../admin"}},
			[]flowSpec{{path: "/img/a/b.png"}, {path: "/public"}, {}}},
		{"not path", "not: {path: /public/}",
			[]flowSpec{{path: "/admin"}, {}},
			[]flowSpec{{path: "/public/x"}}},
		{"all conditions must hold", "dst_port: 80\nmethod: POST\nhost: example.com",
			[]flowSpec{{dst: "192.0.2.1:80", method: "POST", host: "example.com"}},
			[]flowSpec{{dst: "192.0.2.1:81", method: "POST", host: "example.com"}, {dst: "192.0.2.1:80", method: "GET", host: "example.com"}}},
		{"positive and negated on the same fact", "domain: .example.com\nnot: {domain: admin.example.com}",
			[]flowSpec{{sni: "www.example.com"}},
			[]flowSpec{{sni: "admin.example.com"}, {sni: "example.org"}}},
		{"no conditions", "description: catch-all",
			[]flowSpec{{}},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustParse(t, oneRule(tt.cond))
			for _, fs := range tt.match {
				if v := s.Decide(fs.facts()); v.Action != ActionDeny || v.Rule != "r" {
					t.Errorf("%+v: got %v, want deny by r", fs, v)
				}
			}
			for _, fs := range tt.noMatch {
				if v := s.Decide(fs.facts()); v.Action != ActionAllow || v.Rule != "" {
					t.Errorf("%+v: got %v, want allow by default", fs, v)
				}
			}
		})
	}
}

const orderRules = `default: drop
on_invalid: allow
rules:
  - name: watch-ssh
    action: alert
    dst_port: 22
  - name: block-bad-net
    action: deny
    src: 203.0.113.0/24
  - name: watch-admin
    action: alert
    path: /admin
  - name: allow-web
    action: allow
    dst_port: [80, 443]
    domain: [.example.com]
  - name: allow-ssh
    action: allow
    dst_port: 22
  - name: never
    action: allow
    dst_port: 22
    src: 10.0.0.0/8
`

func TestOrderAndAlerts(t *testing.T) {
	s := mustParse(t, orderRules)
	tests := []struct {
		name string
		fs   flowSpec
		want string
	}{
		{"first match wins", flowSpec{src: "203.0.113.5:1", dst: "192.0.2.1:443", sni: "www.example.com"}, "deny by block-bad-net"},
		{"alerts collected and passed", flowSpec{dst: "192.0.2.1:22"}, "allow by allow-ssh (alerts: watch-ssh)"},
		{"l7 alert", flowSpec{dst: "192.0.2.1:80", host: "example.com", path: "/admin"}, "allow by allow-web (alerts: watch-admin)"},
		{"alert then default", flowSpec{dst: "192.0.2.1:8080", path: "/admin"}, "drop by default (alerts: watch-admin)"},
		{"default", flowSpec{dst: "192.0.2.1:443", sni: "example.org"}, "drop by default"},
	}
	for _, tt := range tests {
		if got := s.Decide(tt.fs.facts()).String(); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
	if v := s.Invalid(); v.Action != ActionAllow || v.Rule != RuleOnInvalid {
		t.Errorf("Invalid() = %v", v)
	}
	if w := s.Warnings(); len(w) != 1 || !strings.Contains(w[0].String(), `rules.yaml:20:5: warning: rule "never" can never match: earlier rule "allow-ssh" (line 17) always wins`) {
		t.Errorf("warnings %v", w)
	}
}

func TestEarly(t *testing.T) {
	s := mustParse(t, orderRules)
	tests := []struct {
		name    string
		fs      flowSpec
		decided bool
		want    string
	}{
		{"bad net decided early", flowSpec{src: "203.0.113.5:1", dst: "192.0.2.1:9"}, true, "deny by block-bad-net"},
		// watch-admin has a path condition and no address part: it could
		// match, so nothing after it can decide early.
		{"l7 alert blocks early decision", flowSpec{dst: "192.0.2.1:22"}, false, ""},
	}
	for _, tt := range tests {
		v, ok := s.Early(tt.fs.facts())
		if ok != tt.decided || (ok && v.String() != tt.want) {
			t.Errorf("%s: Early = %v, %v; want %q, %v", tt.name, v, ok, tt.want, tt.decided)
		}
	}
	s2 := mustParse(t, `default: allow
rules:
  - name: geo
    action: drop
    src_country: [RU]
  - name: tls-only
    action: deny
    dst_port: 443
    not: {app: tls}
  - name: smtp
    action: deny
    dst_port: 25
`)
	tests = []struct {
		name    string
		fs      flowSpec
		decided bool
		want    string
	}{
		{"geo decides", flowSpec{srcCountry: "RU", dst: "192.0.2.1:443"}, true, "drop by geo"},
		{"l7 part undecided", flowSpec{dst: "192.0.2.1:443"}, false, ""},
		{"l3 rule after l7 rule that cannot match", flowSpec{dst: "192.0.2.1:25"}, true, "deny by smtp"},
		{"default when nothing can match", flowSpec{dst: "192.0.2.1:80"}, true, "allow by default"},
	}
	for _, tt := range tests {
		v, ok := s2.Early(tt.fs.facts())
		if ok != tt.decided || (ok && v.String() != tt.want) {
			t.Errorf("%s: Early = %v, %v; want %q, %v", tt.name, v, ok, tt.want, tt.decided)
		}
	}
}

// TestEarlyAgreesWithDecide checks the Early contract: when Early decides,
// Decide gives the same verdict whatever the inspected facts are.
func TestEarlyAgreesWithDecide(t *testing.T) {
	s := mustParse(t, orderRules)
	srcs := []string{"10.0.0.1:1", "203.0.113.9:2", "[2001:db8::1]:3"}
	dsts := []string{"192.0.2.1:22", "192.0.2.1:80", "192.0.2.1:443", "192.0.2.1:9"}
	l7 := []flowSpec{{}, {sni: "a.example.com", app: inspect.ProtoTLS}, {host: "example.com", path: "/admin", method: "GET"}, {host: "x.org", path: "/"}}
	for _, src := range srcs {
		for _, dst := range dsts {
			early, ok := s.Early(flowSpec{src: src, dst: dst}.facts())
			if !ok {
				continue
			}
			for _, x := range l7 {
				x.src, x.dst = src, dst
				if got := s.Decide(x.facts()); got.String() != early.String() {
					t.Errorf("%s→%s %+v: Early %v, Decide %v", src, dst, x, early, got)
				}
			}
		}
	}
}

func TestListsFromFiles(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("# 10,000 blocked domains\n")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&b, "site%d.example\n", i)
	}
	b.WriteString(".tracker.example  # and everything below\n")
	write := func(name, s string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("lists/blocked.txt", b.String())
	write("lists/nets.txt", "198.51.100.0/24\n2001:db8:bad::/48\n")
	write("rules.yaml", `default: allow
lists:
  blocked: {file: lists/blocked.txt}
  nets: {file: lists/nets.txt}
  ports: {items: [25, 465-587]}
  inline: [evil.example]
rules:
  - name: blocked
    action: deny
    domain: [$blocked, $inline]
  - name: bad-nets
    action: drop
    dst: $nets
  - name: mail
    action: deny
    dst_port: $ports
`)
	s, err := Load(filepath.Join(dir, "rules.yaml"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if lists, n := s.Lists(); lists != 4 || n != 10001+2+2+1 {
		t.Errorf("Lists() = %d, %d", lists, n)
	}
	for fs, want := range map[flowSpec]string{
		{sni: "site0.example"}:        "deny by blocked",
		{sni: "site9999.example"}:     "deny by blocked",
		{host: "x.y.tracker.example"}: "deny by blocked",
		{sni: "evil.example"}:         "deny by blocked",
		{sni: "site10000.example"}:    "allow by default",
		{dst: "198.51.100.3:1"}:       "drop by bad-nets",
		{dst: "[2001:db8:bad::1]:1"}:  "drop by bad-nets",
		{dst: "192.0.2.1:500"}:        "deny by mail",
		{dst: "192.0.2.1:588"}:        "allow by default",
	} {
		if got := s.Decide(fs.facts()).String(); got != want {
			t.Errorf("%+v: %s, want %s", fs, got, want)
		}
	}
	// The version hash covers the lists: changing one changes it.
	v1 := s.Version().SHA256
	write("lists/nets.txt", "198.51.100.0/24\n")
	s2, err := Load(filepath.Join(dir, "rules.yaml"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Version().SHA256 == v1 || len(v1) != 64 {
		t.Errorf("version %q did not change with a list", v1)
	}
}

func TestGeoWithDatabase(t *testing.T) {
	dir := t.TempDir()
	cpath, apath := filepath.Join(dir, "c.mmdb"), filepath.Join(dir, "a.mmdb")
	if err := geotest.WriteCountry(cpath, map[netip.Prefix]string{
		netip.MustParsePrefix("198.51.100.0/24"): "RU",
		netip.MustParsePrefix("192.0.2.0/24"):    "US",
	}); err != nil {
		t.Fatal(err)
	}
	if err := geotest.WriteASN(apath, map[netip.Prefix]geotest.ASN{
		netip.MustParsePrefix("2001:db8::/32"): {Number: 64500, Org: "Test"},
	}); err != nil {
		t.Fatal(err)
	}
	db, err := geo.Open(cpath, apath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	src := `default: allow
rules:
  - name: no-ru
    action: drop
    dst_country: RU
  - name: asn
    action: deny
    dst_asn: 64500
`
	if _, err := parse(t, src, nil, Options{}); err == nil {
		t.Fatal("geo rules accepted without databases")
	}
	s, err := parse(t, src, nil, Options{HaveCountry: db.HasCountry(), HaveASN: db.HasASN()})
	if err != nil {
		t.Fatal(err)
	}
	for dst, want := range map[string]string{
		"198.51.100.1:443":  "drop by no-ru",
		"192.0.2.1:443":     "allow by default",
		"[2001:db8::1]:443": "deny by asn",
		"203.0.113.1:443":   "allow by default",
	} {
		f := &Facts{Src: netip.MustParseAddrPort("10.0.0.1:5"), Dst: netip.MustParseAddrPort(dst)}
		f.SrcGeo, f.DstGeo = db.Lookup(f.Src.Addr()), db.Lookup(f.Dst.Addr())
		v, ok := s.Early(f)
		if !ok || v.String() != want {
			t.Errorf("%s: Early %v %v, want %s", dst, v, ok, want)
		}
	}
}

func TestDenyPage(t *testing.T) {
	s := mustParse(t, "default: deny\n")
	page, err := s.DenyPage(DenyPageData{Rule: "block<ads>", Host: "x.example", Path: "/<script>"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(page), "block&lt;ads&gt;") || strings.Contains(string(page), "<script>") {
		t.Errorf("page not escaped:\n%s", page)
	}
	s, err = parse(t, "default: deny\ndeny_page: {file: page.html}\n", map[string]string{"page.html": "blocked by {{.Rule}} for {{.Client}}"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = s.DenyPage(DenyPageData{Rule: "r1", Client: "10.0.0.1"})
	if string(page) != "blocked by r1 for 10.0.0.1" {
		t.Errorf("page %q", page)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	s := mustParse(t, orderRules+`  - name: big
    action: deny
    domain: [.a.example, '*.b.example', c.example]
    path: [/x, '/y/*.png']
    method: [GET, POST]
    src: [10.0.0.0/8, 2001:db8::/32]
`)
	flows := []*Facts{
		flowSpec{dst: "192.0.2.1:443", sni: "WWW.Example.COM.", app: inspect.ProtoTLS}.facts(),
		flowSpec{dst: "192.0.2.1:8080", host: "x.b.example:8080", method: "get", path: "/y/../y/a.png?q"}.facts(),
		flowSpec{src: "[2001:db8::1]:1", dst: "192.0.2.1:7"}.facts(),
	}
	for _, f := range flows {
		f := f
		if n := testing.AllocsPerRun(100, func() { s.Decide(f) }); n != 0 {
			t.Errorf("Decide(%+v) allocates %v times", f, n)
		}
		if n := testing.AllocsPerRun(100, func() { s.Early(f) }); n != 0 {
			t.Errorf("Early(%+v) allocates %v times", f, n)
		}
	}
}

// TestUDPConditions: proto:, dns:, domain: over DNS names, dns_answer:,
// and the UDP apps, with and without the index.
func TestUDPConditions(t *testing.T) {
	src := `default: allow
rules:
  - name: no-ads
    action: deny
    dns: .ads.example
    dns_answer: refused
  - name: no-tracker
    action: deny
    domain: tracker.example
  - name: tcp-only
    action: deny
    proto: tcp
    dst_port: 7000
  - name: no-quic-to-x
    action: deny
    app: quic
    sni: x.example
`
	for _, pad := range []int{0, 100} { // 100 padding rules turn the index on
		text := src
		for i := 0; i < pad; i++ {
			text += fmt.Sprintf("  - name: pad-%d\n    action: deny\n    sni: pad%d.example\n", i, i)
		}
		s := mustParse(t, text)
		cli, dst := netip.MustParseAddrPort("198.51.100.2:4000"), netip.MustParseAddrPort("192.0.2.2:53")
		for _, c := range []struct {
			f            Facts
			rule         string
			answer       DNSAnswer
			wantDecision Action
		}{
			{Facts{Src: cli, Dst: dst, Transport: TransportUDP, App: inspect.ProtoDNS, DNSName: "A.Ads.Example."}, "no-ads", DNSAnswerRefused, ActionDeny},
			{Facts{Src: cli, Dst: dst, Transport: TransportUDP, App: inspect.ProtoDNS, DNSName: "tracker.example"}, "no-tracker", DNSAnswerNXDOMAIN, ActionDeny},
			{Facts{Src: cli, Dst: dst, Transport: TransportUDP, App: inspect.ProtoDNS, DNSName: "www.example"}, "", 0, ActionAllow},
			{Facts{Src: cli, Dst: netip.MustParseAddrPort("192.0.2.2:7000"), Transport: TransportUDP, App: inspect.ProtoUDP}, "", 0, ActionAllow},
			{Facts{Src: cli, Dst: netip.MustParseAddrPort("192.0.2.2:7000")}, "tcp-only", 0, ActionDeny},
			{Facts{Src: cli, Dst: dst, Transport: TransportUDP, App: inspect.ProtoQUIC, SNI: "x.example"}, "no-quic-to-x", 0, ActionDeny},
			{Facts{Src: cli, Dst: dst, App: inspect.ProtoTLS, SNI: "x.example"}, "", 0, ActionAllow},
		} {
			v := s.Decide(&c.f)
			if v.Action != c.wantDecision || v.Rule != c.rule || v.DNSAnswer != c.answer {
				t.Errorf("pad %d: %+v: got %v (answer %v), want %v by %q (answer %v)", pad, c.f, v, v.DNSAnswer, c.wantDecision, c.rule, c.answer)
			}
		}
	}
	if _, err := parse(t, "default: allow\nrules:\n  - name: x\n    action: deny\n    dns: a.example\n    dns_answer: servfial\n", nil, Options{}); err == nil || !strings.Contains(err.Error(), "bad dns_answer") {
		t.Fatalf("bad dns_answer: %v", err)
	}
	if _, err := parse(t, "default: allow\nrules:\n  - name: x\n    action: deny\n    proto: sctp\n", nil, Options{}); err == nil || !strings.Contains(err.Error(), "bad proto") {
		t.Fatalf("bad proto: %v", err)
	}
}
