package rules

import (
	"strings"
	"testing"
)

func TestDomainPatterns(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"example.com",
			[]string{"example.com", "EXAMPLE.com", "example.com.", "Example.COM."},
			[]string{"www.example.com", "notexample.com", "example.co", "com", ""}},
		{".example.com",
			[]string{"example.com", "www.example.com", "a.b.example.com", "WWW.Example.Com."},
			[]string{"notexample.com", "example.com.evil", "com"}},
		{"*.example.com",
			[]string{"www.example.com", "a.b.example.com", "X.EXAMPLE.COM."},
			[]string{"example.com", "example.com.", "badexample.com"}},
		{"EXAMPLE.org.",
			[]string{"example.org"},
			[]string{"www.example.org"}},
		// Internationalised names: written in Unicode, matched as punycode,
		// whichever form the flow carries.
		{"bücher.example",
			[]string{"xn--bcher-kva.example", "XN--BCHER-KVA.example", "bücher.example", "BÜCHER.example"},
			[]string{"bucher.example"}},
		{".xn--bcher-kva.example",
			[]string{"shop.bücher.example", "xn--bcher-kva.example"},
			[]string{"bucher.example"}},
		{"*.münchen.de",
			[]string{"www.xn--mnchen-3ya.de", "www.münchen.de"},
			[]string{"münchen.de"}},
		{"under_score.example",
			[]string{"under_score.example"},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			p, err := parseDomainPattern(tt.pattern)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			d := newDomainSet()
			d.add(p)
			var buf [maxNameLen]byte
			for _, n := range tt.match {
				name, ok := normName(&buf, n, false)
				if !ok || !d.match(name) {
					t.Errorf("%q does not match %q", n, tt.pattern)
				}
			}
			for _, n := range tt.noMatch {
				name, ok := normName(&buf, n, false)
				if ok && d.match(name) {
					t.Errorf("%q matches %q", n, tt.pattern)
				}
			}
		})
	}
}

func TestDomainPatternErrors(t *testing.T) {
	for _, p := range []string{"", ".", "*", "*.", "a.*.example", "ex*ample.com", "foo..bar", "http://example.com", "a b.com",
		strings.Repeat("a", 64) + ".com", "example.com:443", "-"} {
		if _, err := parseDomainPattern(p); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
}

func TestHostNormalisation(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Example.COM:8080", "example.com"},
		{"example.com.", "example.com"},
		{"example.com.:80", "example.com"},
		{"[2001:db8::1]:443", "2001:db8::1"},
		{"2001:db8::1", "2001:db8::1"},
		{"bücher.example:80", "xn--bcher-kva.example"},
	}
	for _, tt := range tests {
		var buf [maxNameLen]byte
		got, ok := normName(&buf, tt.in, true)
		if !ok || string(got) != tt.want {
			t.Errorf("normName(%q) = %q, %v; want %q", tt.in, got, ok, tt.want)
		}
	}
	var buf [maxNameLen]byte
	if _, ok := normName(&buf, strings.Repeat("a.", 200), false); ok {
		t.Error("overlong name accepted")
	}
}

func TestDomainSetMany(t *testing.T) {
	d := newDomainSet()
	for _, p := range []string{"a.example", ".b.example", "*.c.example", "c.example"} {
		dp, err := parseDomainPattern(p)
		if err != nil {
			t.Fatal(err)
		}
		d.add(dp)
	}
	for n, want := range map[string]bool{
		"a.example": true, "x.a.example": false,
		"b.example": true, "x.b.example": true,
		"c.example": true, "x.c.example": true, "y.x.c.example": true,
		"example": false, "d.example": false,
	} {
		if got := d.match([]byte(n)); got != want {
			t.Errorf("match(%q) = %v, want %v", n, got, want)
		}
	}
}

func TestDomainCovers(t *testing.T) {
	set := func(ps ...string) *domainSet {
		d := newDomainSet()
		for _, p := range ps {
			dp, err := parseDomainPattern(p)
			if err != nil {
				t.Fatal(err)
			}
			d.add(dp)
		}
		return d
	}
	tests := []struct {
		set  []string
		p    string
		want bool
	}{
		{[]string{".example.com"}, "example.com", true},
		{[]string{".example.com"}, "www.example.com", true},
		{[]string{".example.com"}, "*.example.com", true},
		{[]string{".example.com"}, ".www.example.com", true},
		{[]string{"*.example.com"}, ".example.com", false},
		{[]string{"*.example.com", "example.com"}, ".example.com", true},
		{[]string{"*.example.com"}, ".a.example.com", true},
		{[]string{"example.com"}, "*.example.com", false},
		{[]string{"example.com"}, "example.com", true},
	}
	for _, tt := range tests {
		p, _ := parseDomainPattern(tt.p)
		if got := set(tt.set...).coversPattern(p); got != tt.want {
			t.Errorf("%v covers %q = %v, want %v", tt.set, tt.p, got, tt.want)
		}
	}
}
