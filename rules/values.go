package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"go4.org/netipx"
)

// ---- ports ----

type portRange struct{ lo, hi uint16 }

// portSet is a sorted list of disjoint, non-adjacent ranges.
type portSet []portRange

func parsePortRange(s string) (portRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := parsePort(lo)
	if err != nil {
		return portRange{}, err
	}
	if !isRange {
		return portRange{a, a}, nil
	}
	b, err := parsePort(hi)
	if err != nil {
		return portRange{}, err
	}
	if b < a {
		return portRange{}, fmt.Errorf("port range %s: %d is above %d", s, a, b)
	}
	return portRange{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("bad port %q (want 0-65535 or a range like 8000-8999)", s)
	}
	return uint16(n), nil
}

func newPortSet(rs []portRange) portSet {
	rs = append([]portRange(nil), rs...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo < rs[j].lo })
	var out portSet
	for _, r := range rs {
		if n := len(out); n > 0 && uint32(r.lo) <= uint32(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

func (s portSet) contains(p uint16) bool {
	if len(s) <= 8 {
		for _, r := range s {
			if r.lo <= p && p <= r.hi {
				return true
			}
		}
		return false
	}
	i := sort.Search(len(s), func(i int) bool { return s[i].hi >= p })
	return i < len(s) && s[i].lo <= p
}

func (s portSet) containsRange(r portRange) bool {
	for _, x := range s {
		if x.lo <= r.lo && r.hi <= x.hi {
			return true
		}
	}
	return false
}

// ---- addresses ----

// parsePrefix parses an address or CIDR. The host bits of a CIDR must be
// zero (10.0.0.1/8 is more likely a typo than intended).
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad CIDR %q", s)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad CIDR %q: zones are not allowed", s)
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("bad CIDR %q: host bits set (did you mean %s?)", s, p.Masked())
		}
		return unmapPrefix(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("bad address %q (want an IP or CIDR)", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// unmapPrefix turns ::ffff:a.b.c.d/n (n >= 96) into a.b.c.d/(n-96): flows
// are matched with unmapped addresses.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// ipSet matches addresses in O(log n) ranges (netipx.IPSet keeps sorted,
// merged ranges and searches them).
type ipSet struct {
	set      *netipx.IPSet
	prefixes []netip.Prefix // as written, for shadow checks and explain
}

func newIPSet(ps []netip.Prefix) (*ipSet, error) {
	var b netipx.IPSetBuilder
	for _, p := range ps {
		b.AddPrefix(p)
	}
	s, err := b.IPSet()
	if err != nil {
		return nil, err
	}
	return &ipSet{set: s, prefixes: ps}, nil
}

func (s *ipSet) contains(a netip.Addr) bool { return s.set.Contains(a) }

// ---- countries ----

// countrySet is a bitmap over the 26*26 two-letter codes.
type countrySet [11]uint64

func countryIndex(c string) (int, bool) {
	if len(c) != 2 || c[0] < 'A' || c[0] > 'Z' || c[1] < 'A' || c[1] > 'Z' {
		return 0, false
	}
	return int(c[0]-'A')*26 + int(c[1]-'A'), true
}

func (s *countrySet) add(c string) {
	if i, ok := countryIndex(c); ok {
		s[i/64] |= 1 << (i % 64)
	}
}

func (s *countrySet) contains(c string) bool {
	i, ok := countryIndex(c)
	return ok && s[i/64]&(1<<(i%64)) != 0
}

func (s *countrySet) subsetOf(o *countrySet) bool {
	for i := range s {
		if s[i]&^o[i] != 0 {
			return false
		}
	}
	return true
}

func parseCountry(s string) (string, error) {
	c := strings.ToUpper(strings.TrimSpace(s))
	if isoCountries[c] {
		return c, nil
	}
	if alt, ok := countryMistakes[c]; ok {
		return "", fmt.Errorf("bad country code %q (did you mean %q?)", s, alt)
	}
	return "", fmt.Errorf("bad country code %q (want an ISO 3166-1 alpha-2 code like US or DE)", s)
}

// countryMistakes are codes people write that are not ISO 3166-1.
var countryMistakes = map[string]string{"UK": "GB", "EL": "GR", "KO": "KR", "SP": "ES"}

// isoCountries are the ISO 3166-1 alpha-2 codes in use, plus XK (Kosovo)
// which MaxMind databases use.
var isoCountries = func() map[string]bool {
	const codes = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ " +
		"CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR " +
		"GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP " +
		"KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT " +
		"MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW " +
		"SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG " +
		"UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK"
	m := make(map[string]bool)
	for _, c := range strings.Fields(codes) {
		m[c] = true
	}
	return m
}()

// ---- ASNs ----

type asnSet []uint32 // sorted, unique

func parseASN(s string) (uint32, error) {
	t := strings.TrimSpace(s)
	if len(t) > 2 && strings.EqualFold(t[:2], "AS") {
		t = t[2:]
	}
	n, err := strconv.ParseUint(t, 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad ASN %q (want a number like 64500 or AS64500)", s)
	}
	return uint32(n), nil
}

func newASNSet(ns []uint32) asnSet {
	s := append(asnSet(nil), ns...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := s[:0]
	for i, n := range s {
		if i == 0 || n != s[i-1] {
			out = append(out, n)
		}
	}
	return out
}

func (s asnSet) contains(n uint32) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= n })
	return i < len(s) && s[i] == n
}

// ---- methods ----

func parseMethod(s string) (string, error) {
	m := strings.ToUpper(strings.TrimSpace(s))
	if m == "" {
		return "", errors.New("empty method")
	}
	for i := 0; i < len(m); i++ {
		if !isTchar(m[i]) {
			return "", fmt.Errorf("bad method %q (want a token like GET or POST)", s)
		}
	}
	return m, nil
}

// isTchar reports whether c may appear in an HTTP token (RFC 9110 §5.6.2).
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// ---- paths ----

// pathPattern is one path condition value:
//
//	/api/        prefix: every path starting with /api/
//	=/login      exactly /login
//	/img/*.png   glob over the whole path: * is any run of characters other
//	             than '/', ** any run including '/', ? one character
//	             other than '/'
type pathPattern struct {
	text   string // as written
	prefix string // prefix or exact text
	exact  bool
	glob   *glob
}

func parsePathPattern(s string) (pathPattern, error) {
	p := pathPattern{text: s}
	if strings.HasPrefix(s, "=") {
		p.exact, s = true, s[1:]
	}
	if !strings.HasPrefix(s, "/") {
		return p, fmt.Errorf("bad path %q (want it to start with /, or =/ for an exact path)", p.text)
	}
	if strings.Contains(s, "#") {
		return p, fmt.Errorf("bad path %q: fragments are never sent", p.text)
	}
	if !strings.ContainsAny(s, "*?") || p.exact {
		p.prefix = s
		return p, nil
	}
	g, err := compileGlob(s)
	if err != nil {
		return p, fmt.Errorf("bad path glob %q: %v", p.text, err)
	}
	p.glob = g
	return p, nil
}

func (p *pathPattern) match(path []byte) bool {
	switch {
	case p.glob != nil:
		return p.glob.match(path)
	case p.exact:
		return string(path) == p.prefix
	default:
		return len(path) >= len(p.prefix) && string(path[:len(p.prefix)]) == p.prefix
	}
}

// covers reports whether every path q matches also matches p.
func (p *pathPattern) covers(q *pathPattern) bool {
	if p.text == q.text {
		return true
	}
	if p.glob != nil || q.glob != nil {
		return false
	}
	if p.exact {
		return q.exact && q.prefix == p.prefix
	}
	return strings.HasPrefix(q.prefix, p.prefix)
}
