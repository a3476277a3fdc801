package rules

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
)

// memFiles serves include files from a map, like a directory next to the
// rule file "rules.yaml".
func memFiles(files map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if s, ok := files[name]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
}

func parse(t *testing.T, src string, files map[string]string, opts Options) (*Set, error) {
	t.Helper()
	opts.ReadFile = memFiles(files)
	return Parse("rules.yaml", []byte(src), opts)
}

func mustParse(t *testing.T, src string) *Set {
	t.Helper()
	s, err := parse(t, src, nil, Options{GeoFromFacts: true})
	if err != nil {
		t.Fatalf("parse:\n%v", err)
	}
	return s
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		files map[string]string
		opts  Options
		want  []string
	}{
		{"empty file", "", nil, Options{}, []string{
			`rules.yaml:1:1: empty rule file: want at least "default:"`}},
		{"not a mapping", "- a\n- b\n", nil, Options{}, []string{
			`rules.yaml:1:1: a rule file is a mapping with default:, rules: and optionally lists:, on_invalid:, deny_page:`}},
		{"yaml syntax", "default: allow\nrules: [\n", nil, Options{}, []string{
			`rules.yaml:2:1: YAML syntax: did not find expected node content`}},
		{"missing default", "rules: []\n", nil, Options{}, []string{
			`rules.yaml:1:1: missing "default:" (the action when no rule matches: allow, deny or drop)`}},
		{"unknown keys", "defualt: allow\ndefault: allow\nrules:\n  - name: a\n    action: deny\n    dst_prot: 80\n", nil, Options{}, []string{
			`rules.yaml:1:1: unknown top-level key "defualt" (did you mean "default"?)`,
			`rules.yaml:6:5: unknown rule key "dst_prot" (did you mean "dst_port"?)`}},
		{"bad values", `default: allow
rules:
  - name: a
    action: block
  - name: b
    action: deny
    dst: [10.0.0.0/33, 192.0.2.1/24]
  - name: c
    action: deny
    dst_port: [80, 9-3, 70000]
  - name: d
    action: deny
    src_country: [US, UK, XX]
    app: [tsl]
`, nil, Options{GeoFromFacts: true}, []string{
			`rules.yaml:4:13: bad action "block" (want allow, deny, drop, alert)`,
			`rules.yaml:7:11: dst: bad CIDR "10.0.0.0/33"`,
			`rules.yaml:7:24: dst: bad CIDR "192.0.2.1/24": host bits set (did you mean 192.0.2.0/24?)`,
			`rules.yaml:10:20: dst_port: port range 9-3: 9 is above 3`,
			`rules.yaml:10:25: dst_port: bad port "70000" (want 0-65535 or a range like 8000-8999)`,
			`rules.yaml:13:23: src_country: bad country code "UK" (did you mean "GB"?)`,
			`rules.yaml:13:27: src_country: bad country code "XX" (want an ISO 3166-1 alpha-2 code like US or DE)`,
			`rules.yaml:14:11: app: bad app "tsl" (want one of dns, h2, http, quic, ssh, tls, udp, unknown) (did you mean "tls"?)`}},
		{"empty rule, duplicate name, missing parts", `default: deny
rules:
  -
  - {}
  - name: x
    action: allow
  - name: x
    action: allow
  - action: allow
  - name: y
  - name: z
    action: allow
    sni: []
`, nil, Options{}, []string{
			`rules.yaml:3:4: empty rule: want at least name: and action:`,
			`rules.yaml:4:5: empty rule: want at least name: and action:`,
			`rules.yaml:7:11: duplicate rule name "x" (first at line 5)`,
			`rules.yaml:9:5: rule has no name:`,
			`rules.yaml:10:5: rule "y" has no action: (allow, deny, drop or alert)`,
			`rules.yaml:13:10: sni: empty list (it would never match); remove the condition or add values`}},
		{"duplicate key", "default: allow\ndefault: deny\n", nil, Options{}, []string{
			`rules.yaml:2:1: duplicate key "default" (first at line 1)`}},
		{"default alert", "default: alert\n", nil, Options{}, []string{
			`rules.yaml:1:10: bad action "alert" (want allow, deny, drop)`}},
		{"lists", `default: allow
lists:
  ads: {file: ads.txt}
  nets: [10.0.0.0/8, nope]
  missing: {file: missing.txt}
rules:
  - name: a
    action: deny
    domain: [$ads, $adz]
  - name: b
    action: deny
    src: $nets
`, map[string]string{"ads.txt": "# ads\nads.example\n  bad..name  # comment\n"}, Options{}, []string{
			`ads.txt:3:3: list ads: bad domain pattern "bad..name": empty label`,
			`rules.yaml:4:22: list nets: bad address "nope" (want an IP or CIDR)`,
			`rules.yaml:5:19: read missing.txt: file does not exist`,
			`rules.yaml:9:20: unknown list "adz" (did you mean "ads"?)`}},
		{"geo without database", `default: allow
rules:
  - name: a
    action: deny
    src_country: US
  - name: b
    action: deny
    not:
      dst_asn: [AS64500]
`, nil, Options{}, []string{
			`rules.yaml:5:5: src_country needs a country database, and none is configured (--geoip-country)`,
			`rules.yaml:9:7: dst_asn needs an ASN database, and none is configured (--geoip-asn)`}},
		{"deny page", "default: allow\ndeny_page: \"{{.Nope}}\"\n", nil, Options{}, []string{
			`rules.yaml:2:12: deny_page: template: deny_page:1:2: executing "deny_page" at <.Nope>: can't evaluate field Nope in type rules.DenyPageData`}},
		{"aliases", "default: &a allow\non_invalid: *a\n", nil, Options{}, []string{
			`rules.yaml:2:13: YAML aliases (*name) are not supported; use lists: for shared values`}},
		{"two documents", "default: allow\n---\ndefault: deny\n", nil, Options{}, []string{
			`rules.yaml:2:1: a rule file is one YAML document; remove the second one (after ---)`}},
		{"bad names", "default: allow\nrules:\n  - name: \"(x)\"\n    action: deny\n  - name: \" y\"\n    action: deny\n", nil, Options{}, []string{
			`rules.yaml:3:11: rule names cannot start with '(' (reserved for (on_invalid))`,
			`rules.yaml:5:11: rule name " y" has leading or trailing space`}},
		{"bad not", "default: allow\nrules:\n  - name: a\n    action: deny\n    not: {name: x, sni: a.example}\n", nil, Options{}, []string{
			`rules.yaml:5:11: unknown condition in not: "name"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.src, tt.files, tt.opts)
			var el ErrorList
			if !errors.As(err, &el) {
				t.Fatalf("error %v (%T), want ErrorList", err, err)
			}
			got := strings.Split(el.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
