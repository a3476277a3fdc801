package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/inspect"
	"gopkg.in/yaml.v3"
)

// A cases file lists sample flows and the verdict each must get, so rule
// changes can be tested in CI (netward test):
//
//	cases:
//	  - name: ads are blocked
//	    src: 10.0.0.5:51000
//	    dst: 203.0.113.10:443
//	    sni: ads.example.com
//	    expect: deny
//	    rule: block-ads        # optional: the deciding rule ("default" for the default)
//	    alerts: [watch-tls]    # optional: exactly these alert rules matched
//	    early: true            # optional: decided from addresses/ports/geo alone (or not)

// Case is one sample flow and what it must get.
type Case struct {
	Name      string
	File      string
	Line, Col int
	// Facts is the flow without geo.
	Facts Facts
	// Geo values written in the case; they override database lookups.
	SrcCountry, DstCountry string
	SrcASN, DstASN         uint32
	Expect                 Action
	// Rule, if HasRule, is the rule that must decide ("" for the default).
	Rule    string
	HasRule bool
	// Alerts, if HasAlerts, are exactly the alert rules that must match.
	Alerts    []string
	HasAlerts bool
	// Early, if HasEarly, says whether Early must decide the flow.
	Early    bool
	HasEarly bool
}

var caseKeys = []string{"name", "src", "dst", "src_port", "dst_port", "proto", "app", "sni", "host", "dns", "method", "path",
	"src_country", "dst_country", "src_asn", "dst_asn", "expect", "rule", "alerts", "early"}

// ParseCases reads a cases file. Errors come as an ErrorList with
// positions, like rule file errors.
func ParseCases(path string, data []byte) (cs []Case, err error) {
	defer func() {
		if r := recover(); r != nil {
			cs, err = nil, ErrorList{{File: path, Line: 1, Col: 1, Msg: fmt.Sprintf("internal error reading cases: %v", r)}}
		}
	}()
	l := newLoader(path, Options{})
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.d.errorf(path, 1, 1, "empty cases file: want \"cases:\" and a list of cases")
		} else {
			l.yamlError(err)
		}
		return nil, l.d.errors()
	}
	if len(doc.Content) != 1 {
		l.errorf(&doc, "want a mapping with \"cases:\"")
		return nil, l.d.errors()
	}
	top := l.mapping(doc.Content[0], []string{"cases"}, "top-level key")
	list, ok := top["cases"]
	switch {
	case !ok:
		if len(l.d.list) == 0 {
			l.errorf(doc.Content[0], "missing \"cases:\"")
		}
	case list.Kind != yaml.SequenceNode:
		l.errorf(list, "cases: want a list of cases")
	default:
		names := make(map[string]int)
		for _, n := range list.Content {
			if c, ok := l.parseCase(n); ok {
				if first, dup := names[c.Name]; dup {
					l.errorf(n, "duplicate case name %q (first at line %d)", c.Name, first)
					continue
				}
				names[c.Name] = c.Line
				cs = append(cs, c)
			}
		}
	}
	if errs := l.d.errors(); len(errs) > 0 {
		return nil, errs
	}
	return cs, nil
}

func (l *loader) parseCase(n *yaml.Node) (Case, bool) {
	c := Case{File: l.path, Line: n.Line, Col: n.Column, Facts: Facts{App: inspect.ProtoUnknown}}
	if n.Kind != yaml.MappingNode {
		l.errorf(n, "a case is a mapping with name:, src:, dst:, ... and expect:")
		return c, false
	}
	m := l.mapping(n, caseKeys, "case key")
	before := len(l.d.list)
	str := func(key string) (string, *yaml.Node, bool) {
		v, ok := m[key]
		if !ok {
			return "", nil, false
		}
		s, ok := l.scalar(v, "a value")
		return s, v, ok
	}
	if s, _, ok := str("name"); ok {
		c.Name = s
	} else if _, has := m["name"]; !has {
		l.errorf(n, "case has no name:")
	}
	var srcPort, dstPort int = -1, -1
	for _, k := range []string{"src_port", "dst_port"} {
		if s, v, ok := str(k); ok {
			p, err := parsePort(s)
			if err != nil {
				l.errorf(v, "%s: %v", k, err)
				continue
			}
			if k == "src_port" {
				srcPort = int(p)
			} else {
				dstPort = int(p)
			}
		}
	}
	endpoint := func(key string, port int, required bool) netip.AddrPort {
		s, v, ok := str(key)
		if !ok {
			if required {
				if _, has := m[key]; !has {
					l.errorf(n, "case %q has no %s:", c.Name, key)
				}
			}
			return netip.AddrPort{}
		}
		ap, err := ParseEndpoint(s, port)
		if err != nil {
			l.errorf(v, "%s: %v", key, err)
		}
		return ap
	}
	c.Facts.Src = endpoint("src", srcPort, true)
	c.Facts.Dst = endpoint("dst", dstPort, true)
	if s, v, ok := str("app"); ok {
		p, ok := ParseApp(strings.ToLower(s))
		if !ok {
			l.errorf(v, "app: bad app %q (want one of %s)%s", s, strings.Join(AppNames(), ", "), suggest(s, AppNames()))
		}
		c.Facts.App = p
	}
	if s, v, ok := str("proto"); ok {
		t, ok := ParseTransport(s)
		if !ok {
			l.errorf(v, "proto: bad proto %q (want tcp or udp)", s)
		}
		c.Facts.Transport = t
	}
	c.Facts.DNSName, _, _ = str("dns")
	c.Facts.SNI, _, _ = str("sni")
	c.Facts.Host, _, _ = str("host")
	c.Facts.Method, _, _ = str("method")
	c.Facts.Path, _, _ = str("path")
	if _, has := m["app"]; !has {
		c.Facts.App = InferApp(&c.Facts)
	}
	for _, k := range []string{"src_country", "dst_country"} {
		if s, v, ok := str(k); ok {
			cc, err := parseCountry(s)
			if err != nil {
				l.errorf(v, "%s: %v", k, err)
			}
			if k == "src_country" {
				c.SrcCountry = cc
			} else {
				c.DstCountry = cc
			}
		}
	}
	for _, k := range []string{"src_asn", "dst_asn"} {
		if s, v, ok := str(k); ok {
			a, err := parseASN(s)
			if err != nil {
				l.errorf(v, "%s: %v", k, err)
			}
			if k == "src_asn" {
				c.SrcASN = a
			} else {
				c.DstASN = a
			}
		}
	}
	if v, ok := m["expect"]; ok {
		if a, ok := l.action(v, false); ok {
			c.Expect = a
		}
	} else {
		l.errorf(n, "case %q has no expect: (allow, deny or drop)", c.Name)
	}
	if s, _, ok := str("rule"); ok {
		c.Rule, c.HasRule = s, true
		if s == "default" {
			c.Rule = ""
		}
	}
	if v, ok := m["alerts"]; ok {
		c.HasAlerts = true
		switch {
		case v.Kind == yaml.SequenceNode:
			for _, an := range v.Content {
				if s, ok := l.scalar(an, "an alert rule name"); ok {
					c.Alerts = append(c.Alerts, s)
				}
			}
		default:
			if s, ok := l.scalar(v, "a list of alert rule names"); ok {
				c.Alerts = []string{s}
			}
		}
	}
	if s, v, ok := str("early"); ok {
		b, err := strconv.ParseBool(s)
		if err != nil {
			l.errorf(v, "early: want true or false")
		}
		c.Early, c.HasEarly = b, true
	}
	return c, len(l.d.list) == before
}

// ParseEndpoint parses "IP", "IP:PORT" or "[IPv6]:PORT". port >= 0 gives
// the port when s has none (and must agree if s has one); without any
// port, the port is 0.
func ParseEndpoint(s string, port int) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if port >= 0 && int(ap.Port()) != port {
			return ap, fmt.Errorf("%q has port %d, and port %d is also given", s, ap.Port(), port)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("bad address %q (want IP or IP:PORT)", s)
	}
	if port < 0 {
		port = 0
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

// InferApp guesses the protocol of a hand-written flow: TLS if it has an
// SNI, HTTP if it has a Host, method or path, else unknown; for UDP
// (proto: udp): DNS with a dns: name, QUIC with an SNI, else udp. A dns:
// name alone means DNS over either transport.
func InferApp(f *Facts) inspect.Proto {
	switch {
	case f.DNSName != "":
		return inspect.ProtoDNS
	case f.Transport == TransportUDP && f.SNI != "":
		return inspect.ProtoQUIC
	case f.Transport == TransportUDP:
		return inspect.ProtoUDP
	case f.SNI != "":
		return inspect.ProtoTLS
	case f.Host != "" || f.Method != "" || f.Path != "":
		return inspect.ProtoHTTP1
	}
	return inspect.ProtoUnknown
}

// FactsWith returns the case's facts with geo from db (may be nil),
// overridden by the values the case gives.
func (c *Case) FactsWith(db *geo.DB) Facts {
	f := c.Facts
	f.SrcGeo = db.Lookup(f.Src.Addr())
	f.DstGeo = db.Lookup(f.Dst.Addr())
	if c.SrcCountry != "" {
		f.SrcGeo.Country = c.SrcCountry
	}
	if c.DstCountry != "" {
		f.DstGeo.Country = c.DstCountry
	}
	if c.SrcASN != 0 {
		f.SrcGeo.ASN = c.SrcASN
	}
	if c.DstASN != 0 {
		f.DstGeo.ASN = c.DstASN
	}
	return f
}

// Check judges the case's flow with s and reports whether it gets what the
// case expects; if not, why says what differs.
func (c *Case) Check(s *Set, db *geo.DB) (got Verdict, ok bool, why string) {
	f := c.FactsWith(db)
	got = s.Decide(&f)
	var diffs []string
	if got.Action != c.Expect {
		diffs = append(diffs, fmt.Sprintf("got %s, want %s", got.Action, c.Expect))
	}
	if c.HasRule && got.Rule != c.Rule {
		want := c.Rule
		if want == "" {
			want = "default"
		}
		diffs = append(diffs, fmt.Sprintf("decided by %s, want %s", got.RuleName(), want))
	}
	if c.HasAlerts && strings.Join(got.Alerts, ",") != strings.Join(c.Alerts, ",") {
		diffs = append(diffs, fmt.Sprintf("alerts [%s], want [%s]", strings.Join(got.Alerts, ", "), strings.Join(c.Alerts, ", ")))
	}
	if c.HasEarly {
		if _, decided := s.Early(&f); decided != c.Early {
			if decided {
				diffs = append(diffs, "decided early (from addresses, ports and geo), want undecided")
			} else {
				diffs = append(diffs, "not decided early, want decided from addresses, ports and geo")
			}
		}
	}
	return got, len(diffs) == 0, strings.Join(diffs, "; ")
}
