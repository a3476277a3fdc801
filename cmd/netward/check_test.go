package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netward/netward/geo/geotest"
)

// runRulesTool runs one of the rule tools (checkMain, explainMain,
// testMain) and returns its exit code, stdout and stderr.
func runRulesTool(main func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func checkTool(args []string, o, e *bytes.Buffer) int   { return checkMain(args, o, e) }
func explainTool(args []string, o, e *bytes.Buffer) int { return explainMain(args, o, e) }
func testTool(args []string, o, e *bytes.Buffer) int    { return testMain(args, o, e) }

// rulesToolDir writes files into a temporary directory and returns it.
func rulesToolDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheckValid(t *testing.T) {
	code, out, errOut := runRulesTool(checkTool, "../../examples/rules/rules.yaml")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	want := "../../examples/rules/rules.yaml: ok: 7 rules, 3 lists (10 entries), default allow, on_invalid deny, sha256 "
	if !strings.HasPrefix(out, want) || strings.Count(out, "\n") != 1 {
		t.Errorf("stdout %q, want one line starting %q", out, want)
	}
}

func TestCheckErrors(t *testing.T) {
	dir := rulesToolDir(t, map[string]string{
		"rules.yaml": `default: allow
lists:
  blocked: {file: blocked.txt}
rules:
  - name: a
    action: deny
    domain: $blocked
    dst_prot: 443
  - name: a
    action: allow
  - name: b
    action: deny
    src: 10.0.0.0/33
    src_port: 2000-1000
    dst_country: [US, XX]
  - {}
  - name: c
    action: permit
`,
		"blocked.txt": "ok.example\nbad..example\n",
	})
	path := filepath.Join(dir, "rules.yaml")
	code, out, errOut := runRulesTool(checkTool, path)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	want := []string{
		dir + "/blocked.txt:2:1: list blocked: bad domain pattern \"bad..example\": empty label",
		path + `:8:5: unknown rule key "dst_prot" (did you mean "dst_port"?)`,
		path + `:9:11: duplicate rule name "a" (first at line 5)`,
		path + `:13:10: src: bad CIDR "10.0.0.0/33"`,
		path + `:14:15: src_port: port range 2000-1000: 2000 is above 1000`,
		path + `:15:23: dst_country: bad country code "XX" (want an ISO 3166-1 alpha-2 code like US or DE)`,
		path + `:16:5: empty rule: want at least name: and action:`,
		path + `:18:13: bad action "permit" (want allow, deny, drop, alert)`,
	}
	if got := strings.Split(strings.TrimRight(errOut, "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, strings.Join(want, "\n"))
	}
}

func TestCheckWarningsAndStrict(t *testing.T) {
	dir := rulesToolDir(t, map[string]string{"rules.yaml": `default: deny
rules:
  - name: web
    action: allow
    dst_port: [80, 443]
  - name: https
    action: deny
    dst_port: 443
    sni: .example.com
`})
	path := filepath.Join(dir, "rules.yaml")
	code, out, errOut := runRulesTool(checkTool, path)
	wantWarn := path + `:6:5: warning: rule "https" can never match: earlier rule "web" (line 3) always wins; every flow it matches is decided there` + "\n"
	if code != 0 || errOut != wantWarn || !strings.Contains(out, "2 rules") || !strings.HasSuffix(out, ", 1 warning\n") {
		t.Errorf("exit %d\nstdout %q\nstderr %q\nwant stderr %q", code, out, errOut, wantWarn)
	}
	if code, _, _ := runRulesTool(checkTool, "--strict", path); code != 1 {
		t.Errorf("--strict exit %d, want 1", code)
	}
}

func TestCheckGeo(t *testing.T) {
	dir := t.TempDir()
	country, asn := filepath.Join(dir, "c.mmdb"), filepath.Join(dir, "a.mmdb")
	if err := geotest.WriteCountry(country, map[netip.Prefix]string{netip.MustParsePrefix("192.0.2.0/24"): "US"}); err != nil {
		t.Fatal(err)
	}
	if err := geotest.WriteASN(asn, map[netip.Prefix]geotest.ASN{netip.MustParsePrefix("192.0.2.0/24"): {Number: 64500}}); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runRulesTool(checkTool, "../../examples/rules/geo.yaml")
	if code != 1 || !strings.Contains(errOut, "geo.yaml:9:5: dst_country needs a country database, and none is configured (--geoip-country)\n") {
		t.Errorf("without databases: exit %d, stderr %q", code, errOut)
	}
	code, out, errOut := runRulesTool(checkTool, "--geoip-country", country, "--geoip-asn", asn, "../../examples/rules/geo.yaml")
	if code != 0 || !strings.Contains(out, ": ok: 3 rules") {
		t.Errorf("with databases: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A damaged database is an error, not a panic.
	bad := filepath.Join(dir, "bad.mmdb")
	if err := os.WriteFile(bad, []byte("not a database"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runRulesTool(checkTool, "--geoip-country", bad, "../../examples/rules/geo.yaml")
	if code != 1 || !strings.HasPrefix(errOut, "netward check: geo: ") {
		t.Errorf("bad database: exit %d, stderr %q", code, errOut)
	}
}

func TestCheckUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"a", "b"}, {"--nope", "x"}} {
		if code, _, _ := runRulesTool(checkTool, args...); code != 2 {
			t.Errorf("check %q: exit %d, want 2", args, code)
		}
	}
	code, _, errOut := runRulesTool(checkTool, "/nonexistent/rules.yaml")
	if code != 1 || !strings.Contains(errOut, "netward check: rules: open /nonexistent/rules.yaml: no such file or directory") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}
}
