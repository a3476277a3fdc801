package rules

import (
	"errors"
	"strings"

	"golang.org/x/net/idna"
)

// Domain patterns (sni, host, domain conditions):
//
//	example.com     exactly example.com
//	.example.com    example.com and every name under it
//	*.example.com   every name under example.com, not example.com itself
//
// Patterns and flow names are compared case-insensitively, without a
// trailing dot, and internationalised names in A-label (punycode) form.

// domainFlags say which patterns a suffix key carries.
type domainFlags uint8

const (
	domExact domainFlags = 1 << iota // "example.com"
	domApex                          // ".example.com": the name and all below
	domSub                           // "*.example.com": all below only
)

// domainSet is a compiled set of domain patterns. Matching a name costs one
// map lookup per label of the name, whatever the number of patterns: the
// name itself is looked up for exact and apex patterns, then each suffix
// after a dot for apex and wildcard patterns.
type domainSet struct {
	m        map[string]domainFlags
	patterns []domainPattern // as added, for shadow checks (ranging over m is slow)
}

func newDomainSet() *domainSet { return &domainSet{m: make(map[string]domainFlags)} }

func (d *domainSet) add(p domainPattern) {
	if d.m[p.name]&p.kind == 0 {
		d.patterns = append(d.patterns, p)
	}
	d.m[p.name] |= p.kind
}

func (d *domainSet) len() int { return len(d.m) }

// match reports whether name (normalised: lower case ASCII, no trailing dot)
// matches a pattern in the set. It does not allocate: the compiler turns
// m[string(b)] into a lookup without a conversion copy.
func (d *domainSet) match(name []byte) bool {
	if f, ok := d.m[string(name)]; ok && f&(domExact|domApex) != 0 {
		return true
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if f, ok := d.m[string(name[i+1:])]; ok && f&(domApex|domSub) != 0 {
				return true
			}
		}
	}
	return false
}

// coversPattern reports whether every name p matches is matched by d (used
// to find shadowed rules).
func (d *domainSet) coversPattern(p domainPattern) bool {
	switch p.kind {
	case domExact:
		return d.matchString(p.name)
	case domApex:
		// The apex and all names below it.
		return d.coversAllBelow(p.name) && d.matchString(p.name)
	case domSub:
		return d.coversAllBelow(p.name)
	}
	return false
}

// matchString is match for a string name.
func (d *domainSet) matchString(name string) bool {
	if f := d.m[name]; f&(domExact|domApex) != 0 {
		return true
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if f := d.m[name[i+1:]]; f&(domApex|domSub) != 0 {
				return true
			}
		}
	}
	return false
}

// coversAllBelow reports whether every name strictly below name matches:
// an apex or wildcard pattern on name or on a suffix of it.
func (d *domainSet) coversAllBelow(name string) bool {
	if f := d.m[name]; f&(domApex|domSub) != 0 {
		return true
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if f := d.m[name[i+1:]]; f&(domApex|domSub) != 0 {
				return true
			}
		}
	}
	return false
}

type domainPattern struct {
	name string // A-label form, lower case, no leading "." or "*."
	kind domainFlags
}

func (p domainPattern) String() string {
	switch p.kind {
	case domApex:
		return "." + p.name
	case domSub:
		return "*." + p.name
	}
	return p.name
}

// patternProfile validates and maps patterns: UTS #46 lookup mapping (case
// folding, width mapping, ...), Bidi rule, DNS length limits. Underscores
// are allowed because real host names (and SNI values) carry them.
var patternProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.StrictDomainName(false),
	idna.VerifyDNSLength(true),
	idna.Transitional(false),
)

// nameProfile maps non-ASCII flow names to A-labels. It is lenient: a name
// it rejects just matches no pattern.
var nameProfile = idna.New(
	idna.MapForLookup(),
	idna.StrictDomainName(false),
	idna.Transitional(false),
)

var errEverything = errors.New("pattern matches every name; leave the condition out instead")

// parseDomainPattern parses one pattern as written in a rule file.
func parseDomainPattern(s string) (domainPattern, error) {
	kind := domExact
	switch {
	case strings.HasPrefix(s, "*."):
		kind, s = domSub, s[2:]
	case strings.HasPrefix(s, "."):
		kind, s = domApex, s[1:]
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" || s == "*" {
		return domainPattern{}, errEverything
	}
	if strings.ContainsAny(s, "*") {
		return domainPattern{}, errors.New("'*' is only allowed as the whole first label (*.example.com)")
	}
	if strings.Contains(s, "..") || strings.HasPrefix(s, ".") {
		return domainPattern{}, errors.New("empty label")
	}
	if strings.ContainsAny(s, " \t/:@[]") {
		return domainPattern{}, errors.New("not a domain name")
	}
	a, err := patternProfile.ToASCII(s)
	if err != nil {
		return domainPattern{}, err
	}
	if a == "" || strings.Contains(a, "..") || strings.HasPrefix(a, ".") {
		return domainPattern{}, errors.New("empty label")
	}
	return domainPattern{name: a, kind: kind}, nil
}

// maxNameLen bounds the names we normalise on the stack (RFC 1035: 253
// octets of text; longer names match no pattern).
const maxNameLen = 253

// normName writes the normalised form of a flow name (SNI or Host) into buf
// and returns it; ok is false if the name is empty or invalid. ASCII names,
// the common case, are lower-cased without allocating; others go through
// IDNA mapping.
func normName(buf *[maxNameLen]byte, s string, isHost bool) ([]byte, bool) {
	if isHost {
		s = stripPort(s)
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return nil, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			a, err := nameProfile.ToASCII(s)
			if err != nil {
				return nil, false
			}
			s = strings.TrimSuffix(a, ".")
			break
		}
	}
	if len(s) > maxNameLen {
		return nil, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(s)], true
}

// stripPort removes a ":port" from a Host header value, and the brackets of
// an IPv6 literal.
func stripPort(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			return h[1:i]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h, ':') == i {
		return h[:i]
	}
	return h
}
