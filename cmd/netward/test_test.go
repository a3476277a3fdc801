package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestTestExamples(t *testing.T) {
	code, out, errOut := runRulesTool(testTool, "--rules", exampleRules, "../../examples/rules/cases.yaml")
	if code != 0 || errOut != "" || !strings.HasSuffix(out, "14 cases: 14 passed, 0 failed\n") ||
		!strings.HasPrefix(out, "PASS  bad networks are dropped at the SYN (drop by bad-networks)\n") {
		t.Errorf("exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	code, out, _ = runRulesTool(testTool, "-q", "--rules", "../../examples/rules/geo.yaml", "../../examples/rules/geo-cases.yaml")
	if code != 0 || out != "5 cases: 5 passed, 0 failed\n" {
		t.Errorf("geo: exit %d, stdout %q", code, out)
	}
}

func TestTestFailures(t *testing.T) {
	dir := rulesToolDir(t, map[string]string{"cases.yaml": `cases:
  - name: wrong action
    src: 10.20.5.5:1
    dst: 192.0.2.23:23
    expect: allow
  - name: wrong rule
    src: 10.20.5.5:1
    dst: 192.0.2.80:443
    sni: x.ads.example
    expect: deny
    rule: no-telnet
  - name: wrong alerts and early
    src: 10.20.5.5:1
    dst: 192.0.2.80:80
    host: a.example.com
    method: POST
    path: /login
    expect: allow
    alerts: []
    early: true
  - name: right
    src: 10.20.5.5:1
    dst: 192.0.2.23:23
    expect: deny
`})
	cases := filepath.Join(dir, "cases.yaml")
	code, out, _ := runRulesTool(testTool, "--rules", exampleRules, cases)
	want := "FAIL  wrong action: got deny, want allow (" + cases + ":2)\n" +
		"FAIL  wrong rule: decided by ads, want no-telnet (" + cases + ":6)\n" +
		"FAIL  wrong alerts and early: alerts [watch-plain-http-logins], want []; not decided early, want decided from addresses, ports and geo (" + cases + ":12)\n" +
		"PASS  right (deny by no-telnet)\n" +
		"4 cases: 1 passed, 3 failed\n"
	if code != 1 || out != want {
		t.Errorf("exit %d, stdout:\n%s\nwant:\n%s", code, out, want)
	}
}

func TestTestCaseFileErrors(t *testing.T) {
	dir := rulesToolDir(t, map[string]string{"cases.yaml": `cases:
  - name: a
    src: 10.0.0.1:1
    dst: 10.0.0.2
    dst_port: 99999
    expect: allow
  - name: b
    src: 10.0.0.1:1
    dst: 10.0.0.2:1
    expcet: deny
  - name: a
    src: nope
    dst: 10.0.0.2:1
    app: tsl
    src_country: UK
    expect: reject
    early: maybe
`})
	cases := filepath.Join(dir, "cases.yaml")
	code, out, errOut := runRulesTool(testTool, "--rules", exampleRules, cases)
	want := []string{
		cases + `:5:15: dst_port: bad port "99999" (want 0-65535 or a range like 8000-8999)`,
		cases + `:7:5: case "b" has no expect: (allow, deny or drop)`,
		cases + `:10:5: unknown case key "expcet" (did you mean "expect"?)`,
		cases + `:12:10: src: bad address "nope" (want IP or IP:PORT)`,
		cases + `:14:10: app: bad app "tsl" (want one of dns, h2, http, quic, ssh, tls, udp, unknown) (did you mean "tls"?)`,
		cases + `:15:18: src_country: bad country code "UK" (did you mean "GB"?)`,
		cases + `:16:13: bad action "reject" (want allow, deny, drop)`,
		cases + `:17:12: early: want true or false`,
	}
	got := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
	if code != 1 || out != "" || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errOut, strings.Join(want, "\n"))
	}
}

func TestTestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"cases.yaml"}, {"--rules", exampleRules}} {
		if code, _, _ := runRulesTool(testTool, args...); code != 2 {
			t.Errorf("test %q: exit %d, want 2", args, code)
		}
	}
	if code, _, errOut := runRulesTool(testTool, "--rules", exampleRules, "/nonexistent.yaml"); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("missing cases: exit %d, %q", code, errOut)
	}
}
