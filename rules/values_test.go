package rules

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPorts(t *testing.T) {
	var rs []portRange
	for _, s := range []string{"443", "8000-8999", "80", "81", "9000-9000", " 22 "} {
		r, err := parsePortRange(s)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		rs = append(rs, r)
	}
	set := newPortSet(rs)
	if len(set) != 4 { // 80-81 and 8000-8999+9000 merge
		t.Errorf("merged set %v", set)
	}
	for p, want := range map[uint16]bool{22: true, 80: true, 81: true, 82: false, 443: true, 7999: false, 8000: true, 8500: true, 8999: true, 9000: true, 9001: false, 0: false, 65535: false} {
		if got := set.contains(p); got != want {
			t.Errorf("contains(%d) = %v", p, got)
		}
	}
	// Many ranges: the binary-search path.
	var many []portRange
	for p := uint16(1000); p < 1100; p += 2 {
		many = append(many, portRange{p, p})
	}
	ms := newPortSet(many)
	for p := uint16(990); p < 1110; p++ {
		want := p >= 1000 && p < 1100 && p%2 == 0
		if ms.contains(p) != want {
			t.Errorf("many.contains(%d) != %v", p, want)
		}
	}
	for _, bad := range []string{"", "abc", "-1", "65536", "9-3", "1-2-3", "80-", "-80", "0x50"} {
		if _, err := parsePortRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPrefixes(t *testing.T) {
	good := map[string]string{
		"192.0.2.1":            "192.0.2.1/32",
		"192.0.2.0/24":         "192.0.2.0/24",
		"2001:db8::/32":        "2001:db8::/32",
		"2001:db8::1":          "2001:db8::1/128",
		"::ffff:192.0.2.1":     "192.0.2.1/32",
		"::ffff:192.0.2.0/120": "192.0.2.0/24",
		"0.0.0.0/0":            "0.0.0.0/0",
	}
	for in, want := range good {
		p, err := parsePrefix(in)
		if err != nil || p.String() != want {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"192.0.2.0/33", "192.0.2.1/24", "300.1.1.1", "example.com", "fe80::1%eth0", "2001:db8::/129", ""} {
		if _, err := parsePrefix(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	s, err := newIPSet([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("192.0.2.7/32")})
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{"10.1.2.3": true, "11.0.0.1": false, "2001:db8:ffff::1": true, "2001:db9::1": false, "192.0.2.7": true, "192.0.2.8": false} {
		if s.contains(netip.MustParseAddr(a)) != want {
			t.Errorf("contains(%s) != %v", a, want)
		}
	}
}

func TestCountriesASNsMethods(t *testing.T) {
	for _, c := range []string{"US", "de", " Jp ", "XK"} {
		if _, err := parseCountry(c); err != nil {
			t.Errorf("%q: %v", c, err)
		}
	}
	for _, c := range []string{"UK", "XX", "USA", "1", "", "U"} {
		if _, err := parseCountry(c); err == nil {
			t.Errorf("%q accepted", c)
		}
	}
	var cs countrySet
	cs.add("US")
	cs.add("ZW")
	if !cs.contains("US") || !cs.contains("ZW") || cs.contains("CA") || cs.contains("") || cs.contains("us") {
		t.Error("country set wrong")
	}
	for s, want := range map[string]uint32{"64500": 64500, "AS15169": 15169, "as4200000000": 4200000000} {
		if n, err := parseASN(s); err != nil || n != want {
			t.Errorf("parseASN(%q) = %d, %v", s, n, err)
		}
	}
	for _, s := range []string{"0", "AS", "ASX", "4294967296", "-1", "AS-1"} {
		if _, err := parseASN(s); err == nil {
			t.Errorf("ASN %q accepted", s)
		}
	}
	a := newASNSet([]uint32{5, 3, 5, 1})
	if len(a) != 3 || !a.contains(3) || a.contains(4) {
		t.Errorf("asn set %v", a)
	}
	for _, m := range []string{"GET", "post", "PROPFIND", "M-SEARCH"} {
		if _, err := parseMethod(m); err != nil {
			t.Errorf("%q: %v", m, err)
		}
	}
	for _, m := range []string{"", "GE T", "GET/", "\"GET\""} {
		if _, err := parseMethod(m); err == nil {
			t.Errorf("method %q accepted", m)
		}
	}
}

func TestPathPatterns(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"/admin", []string{"/admin", "/admin/", "/admin/x", "/administrator", "/admin?x=1", "/x/../admin", "//admin", "/%61dmin", "/./admin", "http://h/admin/x"},
			[]string{"/", "/Admin", "/adm", "/x/admin", "", "/%2e%2e/x"}},
		{"=/login", []string{"/login", "/login?next=/", "/a/../login"}, []string{"/login/", "/loginx", "/"}},
		{"/img/*.png", []string{"/img/a.png", "/img/.png", "/img/a.png?x"}, []string{"/img/a/b.png", "/img/a.png/x", "/img/a.jpg"}},
		{"/api/**/delete", []string{"/api/v1/delete", "/api/a/b/c/delete"}, []string{"/api/delete", "/api/v1/delete/x"}},
		{"/a/**", []string{"/a/", "/a/b", "/a/b%0Ac"}, []string{"/a", "/b/"}},
		{"/file?.txt", []string{"/file1.txt"}, []string{"/file.txt", "/file12.txt", "/file/.txt"}},
		{"/caf\u00e9/*", []string{"/caf%C3%A9/x"}, []string{"/cafe/x"}},
		{"/a%2Fb", []string{"/a%2fb", "/a%2Fb/c"}, []string{"/a/b"}},
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			p, err := parsePathPattern(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			var buf [maxPathLen]byte
			for _, s := range tt.match {
				n, ok := normPath(&buf, s)
				if !ok || !p.match(n) {
					t.Errorf("%q (normalised %q) does not match", s, n)
				}
			}
			for _, s := range tt.noMatch {
				n, ok := normPath(&buf, s)
				if ok && p.match(n) {
					t.Errorf("%q (normalised %q) matches", s, n)
				}
			}
		})
	}
	for _, bad := range []string{"admin", "", "=admin", "/a#b"} {
		if _, err := parsePathPattern(bad); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestNormPath(t *testing.T) {
	tests := map[string]string{
		"/":               "/",
		"/a/b/c":          "/a/b/c",
		"/a//b///c":       "/a/b/c",
		"/a/./b":          "/a/b",
		"/a/../b":         "/b",
		"/../../a":        "/a",
		"/a/b/..":         "/a/",
		"/a/b/.":          "/a/b/",
		"/a/":             "/a/",
		"/%41%2f%2F":      "/A%2F%2F",
		"/%zz":            "/%zz",
		"/%4":             "/%4",
		"/x?y=/../z":      "/x",
		"http://h:80":     "/",
		"HTTP://h/p?q":    "/p",
		"*":               "*",
		"/a/%2e%2e/b":     "/b",
		"example.com:443": "example.com:443",
	}
	for in, want := range tests {
		var buf [maxPathLen]byte
		got, ok := normPath(&buf, in)
		if !ok || string(got) != want {
			t.Errorf("normPath(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	long := "/" + string(make([]byte, 3*maxPathLen))
	var buf [maxPathLen]byte
	if got, ok := normPath(&buf, long); !ok || len(got) != len(long) {
		t.Errorf("long path: %d %v", len(got), ok)
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"/**", []string{"/", "/a/b/c"}, []string{""}},
		{"/**.php", []string{"/x.php", "/a/b/x.php", "/.php"}, []string{"/x.php5", "/x"}},
		{"/a***b", []string{"/ab", "/a/x/b"}, []string{"/a"}},
		{"/*/*", []string{"/a/b", "/a/"}, []string{"/a", "/a/b/c"}},
		{"/*a*a*a*a*a*b", []string{"/aaaaab"}, []string{"/" + string(make([]byte, 1000))}},
		{"/x?", []string{"/xy"}, []string{"/x", "/x/", "/xyz"}},
	}
	for _, tt := range tests {
		g, err := compileGlob(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range tt.match {
			if !g.match([]byte(s)) {
				t.Errorf("%q does not match %q", s, tt.pattern)
			}
		}
		for _, s := range tt.noMatch {
			if g.match([]byte(s)) {
				t.Errorf("%q matches %q", s, tt.pattern)
			}
		}
	}
	if _, err := compileGlob("/" + strings.Repeat("a", 300) + "*"); err == nil {
		t.Error("overlong glob accepted")
	}
}
