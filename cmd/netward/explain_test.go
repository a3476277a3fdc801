package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netward/netward/geo/geotest"
)

const exampleRules = "../../examples/rules/rules.yaml"

func TestExplainText(t *testing.T) {
	code, out, errOut := runRulesTool(explainTool, "--rules", exampleRules,
		"--src", "10.20.5.5:50000", "--dst", "192.0.2.80", "--dst-port", "443", "--sni", "www.ads.example")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	want := []string{
		"flow:    tls 10.20.5.5:50000 -> 192.0.2.80:443 sni=www.ads.example",
		"",
		"    1  bad-networks             drop   line 25    no match: dst: 192.0.2.80 is not in [$bad-nets]",
		"    2  no-telnet                deny   line 30    no match: dst_port: 443 is not in [23, 2323]",
		"    3  ssh-admins-only          deny   line 34    no match: dst_port: 443 is not in [22]",
		"    4  watch-plain-http-logins  alert  line 41    no match: app: tls is not in [http]; method: the flow has no method (want [POST]); path: the flow has no path (want [/login, /**/login])",
		"    5  ads                      deny   line 48    match, decides",
		"    6  intranet-admin           deny   line 52    no match: host: the flow has no Host (want [.intranet.example]); path: the flow has no path (want [/admin])",
		"    7  only-tls-on-443          deny   line 59    no match: not app: tls is in [tls]",
		"early:   undecided (a rule needing inspected facts could match)",
		"verdict: deny by ads",
	}
	if len(lines) != len(want) {
		t.Fatalf("output:\n%s", out)
	}
	for i := range want {
		if i == 1 {
			if !strings.HasPrefix(lines[1], "rules:   "+exampleRules+" (7 rules, sha256 ") {
				t.Errorf("line 2: %q", lines[1])
			}
			continue
		}
		if lines[i] != want[i] {
			t.Errorf("line %d:\n got %q\nwant %q", i+1, lines[i], want[i])
		}
	}
}

func TestExplainEarlyAndAlerts(t *testing.T) {
	code, out, _ := runRulesTool(explainTool, "--rules", exampleRules, "--src", "10.20.5.5", "--dst", "198.51.100.9:443")
	if code != 0 || !strings.Contains(out, "early:   drop by bad-networks (decided from addresses, ports and geo, before inspection)\n") ||
		!strings.HasSuffix(out, "verdict: drop by bad-networks\n") || !strings.Contains(out, "match (after the decision)") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
	code, out, _ = runRulesTool(explainTool, "--rules", exampleRules, "--src", "10.20.5.5:1", "--dst", "192.0.2.80:80",
		"--host", "shop.example.com", "--method", "POST", "--path", "/a/login")
	if code != 0 || !strings.Contains(out, "match, alert (goes on)") ||
		!strings.HasSuffix(out, "verdict: allow by default (alerts: watch-plain-http-logins)\n") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

func TestExplainJSON(t *testing.T) {
	code, out, errOut := runRulesTool(explainTool, "--json", "--rules", exampleRules,
		"--src", "[2001:db8:20:5::5]:50000", "--dst", "[2001:db8:bad::1]:80")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	var got struct {
		Flow struct {
			App, Src, Dst string
		}
		Rules []struct {
			Name    string
			Matched bool
			Decided bool
			Failed  []string
		}
		Early   *struct{ Action, Rule string }
		Verdict struct {
			Action, Rule string
			Alerts       []string
		}
		RulesSHA256 string `json:"rules_sha256"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.Flow.App != "unknown" || got.Flow.Src != "[2001:db8:20:5::5]:50000" || len(got.Rules) != 7 ||
		!got.Rules[0].Decided || got.Early == nil || got.Early.Rule != "bad-networks" ||
		got.Verdict.Action != "drop" || got.Verdict.Rule != "bad-networks" || len(got.RulesSHA256) != 64 {
		t.Errorf("JSON:\n%s", out)
	}
	// Undecided early is null; the default is named "default".
	code, out, _ = runRulesTool(explainTool, "--json", "--rules", exampleRules, "--src", "10.20.5.5:1", "--dst", "192.0.2.80:443", "--sni", "www.example.com")
	if code != 0 || !strings.Contains(out, `"early": null`) || !strings.Contains(out, `"rule": "default"`) {
		t.Errorf("exit %d, JSON:\n%s", code, out)
	}
}

func TestExplainGeo(t *testing.T) {
	// Countries from flags, without a database.
	code, out, errOut := runRulesTool(explainTool, "--rules", "../../examples/rules/geo.yaml",
		"--src", "198.51.100.4:1", "--dst", "192.0.2.22:22", "--src-country", "de")
	if code != 0 || !strings.HasSuffix(out, "verdict: deny by ssh-from-home-countries-only\n") || !strings.Contains(out, "src_country=DE") {
		t.Errorf("exit %d, stderr %q, output:\n%s", code, errOut, out)
	}
	// Countries from a database.
	dir := t.TempDir()
	country, asn := filepath.Join(dir, "c.mmdb"), filepath.Join(dir, "a.mmdb")
	if err := geotest.WriteCountry(country, map[netip.Prefix]string{netip.MustParsePrefix("198.51.100.0/24"): "CA", netip.MustParsePrefix("192.0.2.0/24"): "KP"}); err != nil {
		t.Fatal(err)
	}
	if err := geotest.WriteASN(asn, map[netip.Prefix]geotest.ASN{netip.MustParsePrefix("203.0.113.0/28"): {Number: 64501, Org: "Bad"}}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--src", "198.51.100.4:1", "--dst", "203.0.113.22:22"}, "verdict: allow by default\n"},
		{[]string{"--src", "198.51.100.4:1", "--dst", "192.0.2.22:22"}, "verdict: drop by embargoed-destinations\n"},
		{[]string{"--src", "198.51.100.4:1", "--dst", "203.0.113.9:80"}, "verdict: drop by bulletproof-hosting\n"},
		{[]string{"--src", "198.51.100.4:1", "--dst", "203.0.113.22:22", "--src-country", "RU"}, "verdict: deny by ssh-from-home-countries-only\n"},
	} {
		args := append([]string{"--rules", "../../examples/rules/geo.yaml", "--geoip-country", country, "--geoip-asn", asn}, tt.args...)
		code, out, errOut := runRulesTool(explainTool, args...)
		if code != 0 || !strings.HasSuffix(out, tt.want) {
			t.Errorf("%q: exit %d, stderr %q, output:\n%s", tt.args, code, errOut, out)
		}
	}
}

func TestExplainUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--src", "10.0.0.1", "--dst", "10.0.0.2"}, "netward explain: --rules, --src and --dst are required\n"},
		{[]string{"--rules", exampleRules, "--src", "nope", "--dst", "10.0.0.2:1"}, "netward explain: --src: bad address \"nope\" (want IP or IP:PORT)\n"},
		{[]string{"--rules", exampleRules, "--src", "10.0.0.1:5", "--src-port", "6", "--dst", "10.0.0.2:1"}, "netward explain: --src: \"10.0.0.1:5\" has port 5, and port 6 is also given\n"},
		{[]string{"--rules", exampleRules, "--src", "10.0.0.1", "--dst", "10.0.0.2:1", "--app", "gopher"}, "netward explain: --app: want one of dns, h2, http, quic, ssh, tls, udp, unknown\n"},
		{[]string{"--rules", exampleRules, "--src", "10.0.0.1", "--dst", "10.0.0.2:1", "extra"}, "netward explain: unexpected argument \"extra\" (the flow is given by flags)\n"},
	} {
		code, _, errOut := runRulesTool(explainTool, tt.args...)
		if code != 2 || errOut != tt.want {
			t.Errorf("%q: exit %d, stderr %q, want %q", tt.args, code, errOut, tt.want)
		}
	}
	code, _, errOut := runRulesTool(explainTool, "--rules", "../../examples/rules/cases.yaml", "--src", "10.0.0.1", "--dst", "10.0.0.2:1")
	if code != 1 || !strings.Contains(errOut, "cases.yaml:3:1: unknown top-level key \"cases\"") {
		t.Errorf("bad rule file: exit %d, stderr %q", code, errOut)
	}
}

// TestExplainUDP: explain takes a QUIC flow (--proto udp --sni) and a DNS
// query (--dns) and judges them by the same rules.
func TestExplainUDP(t *testing.T) {
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	os.WriteFile(rulesFile, []byte("default: allow\nrules:\n  - name: no-ads\n    action: deny\n    domain: .ads.example\n  - name: no-quic\n    action: deny\n    app: quic\n    sni: quic-only.example\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--proto", "udp", "--sni", "quic-only.example"}, "udp quic 198.51.100.2:4000 -> 192.0.2.2:443 sni=quic-only.example"},
		{[]string{"--sni", "quic-only.example"}, "verdict: allow"},
		{[]string{"--proto", "udp", "--dns", "x.ads.example"}, "verdict: deny by no-ads"},
	} {
		args := append([]string{"--rules", rulesFile, "--src", "198.51.100.2:4000", "--dst", "192.0.2.2:443"}, c.args...)
		code, out, errOut := runRulesTool(explainTool, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, errOut)
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%v: want %q in:\n%s", c.args, c.want, out)
		}
	}
}
