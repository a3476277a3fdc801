package rules

import (
	"strconv"
	"strings"
	"testing"
)

func TestShadowing(t *testing.T) {
	tests := []struct {
		name        string
		first, then string // conditions of an earlier deny rule and a later allow rule
		shadowed    bool
	}{
		{"catch-all", "description: all", "dst_port: 80", true},
		{"same conditions", "dst_port: 80\nsni: a.example", "sni: a.example\ndst_port: [80]", true},
		{"port subset", "dst_port: 1-1024", "dst_port: [80, 443]", true},
		{"port not subset", "dst_port: 1-442", "dst_port: [80, 443]", false},
		{"cidr subset", "dst: [10.0.0.0/8, 2001:db8::/32]", "dst: [10.1.0.0/16, 2001:db8:1::1]", true},
		{"cidr not subset", "dst: 10.0.0.0/16", "dst: 10.0.0.0/8", false},
		{"more conditions later", "dst_port: 443", "dst_port: 443\nsni: a.example", true},
		{"more conditions earlier", "dst_port: 443\nsni: a.example", "dst_port: 443", false},
		{"domain apex covers sub", "domain: .example.com", "domain: [www.example.com, '*.a.example.com', .b.example.com]", true},
		{"wildcard does not cover apex", "sni: '*.example.com'", "sni: .example.com", false},
		{"different fact", "sni: a.example", "host: a.example", false},
		{"country subset", "src_country: [US, CA, MX]", "src_country: [CA]", true},
		{"asn subset", "dst_asn: [1, 2]", "dst_asn: 2", true},
		{"app subset", "app: [tls, h2]", "app: tls", true},
		{"method subset", "method: [GET, POST]", "method: get", true},
		{"path prefix", "path: /api", "path: [/api/v1, =/api]", true},
		{"path glob only equal", "path: '/a/*'", "path: /a/b", false},
		{"negation superset", "not: {src: 10.0.0.0/8}", "not: {src: [10.0.0.0/8, 192.168.0.0/16]}", true},
		{"negation subset", "not: {src: [10.0.0.0/8, 192.168.0.0/16]}", "not: {src: 10.0.0.0/8}", false},
		{"negated vs positive", "not: {dst_port: 22}", "dst_port: 80", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "default: allow\nrules:\n  - name: first\n    action: deny\n" + indent(tt.first, "    ") +
				"  - name: then\n    action: allow\n" + indent(tt.then, "    ")
			s := mustParse(t, src)
			got := len(s.Warnings()) == 1 && strings.Contains(s.Warnings()[0].Msg, `rule "then" can never match: earlier rule "first"`)
			if got != tt.shadowed {
				t.Errorf("shadowed = %v, want %v; warnings %v", got, tt.shadowed, s.Warnings())
			}
		})
	}
}

func TestShadowingAlertsAndLarge(t *testing.T) {
	// An alert rule never shadows; an alert rule can be shadowed.
	s := mustParse(t, "default: allow\nrules:\n  - {name: a, action: alert}\n  - {name: b, action: deny, dst_port: 80}\n  - {name: c, action: alert, dst_port: 80}\n")
	if w := s.Warnings(); len(w) != 1 || !strings.Contains(w[0].Msg, `rule "c" can never match: earlier rule "b"`) {
		t.Errorf("warnings %v", w)
	}
	// Above the pairwise limit, exact duplicates and rules after a
	// catch-all are still found.
	var b strings.Builder
	b.WriteString("default: allow\nrules:\n")
	for i := 0; i < maxPairwiseShadow+10; i++ {
		b.WriteString("  - {name: r" + strconv.Itoa(i) + ", action: deny, dst_port: " + strconv.Itoa(i+1) + "}\n")
	}
	b.WriteString("  - {name: dup, action: deny, dst_port: 7}\n  - {name: all, action: drop}\n  - {name: after, action: deny, sni: x.example}\n")
	s = mustParse(t, b.String())
	var msgs []string
	for _, w := range s.Warnings() {
		msgs = append(msgs, w.Msg)
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0], `"dup" can never match: earlier rule "r6"`) || !strings.Contains(msgs[1], `"after" can never match: earlier rule "all"`) {
		t.Errorf("warnings %q", msgs)
	}
}

func TestUnusedListWarning(t *testing.T) {
	s := mustParse(t, "default: allow\nlists:\n  spare: [a.example]\n")
	if w := s.Warnings(); len(w) != 1 || w[0].String() != `rules.yaml:3:3: warning: list "spare" is not used by any rule` {
		t.Errorf("warnings %v", w)
	}
}
