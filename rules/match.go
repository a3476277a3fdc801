package rules

import (
	"net/netip"
	"time"
)

// condKind is a condition type. The order is the evaluation order inside a
// rule: address, port and geo conditions (known before inspection) first,
// cheapest first, then the ones that need inspection.
type condKind uint8

const (
	condProto condKind = iota
	condDstPort
	condSrcPort
	condDst
	condSrc
	condDstCountry
	condSrcCountry
	condDstASN
	condSrcASN
	// conditions from here on need inspection (L7)
	condApp
	condMethod
	condSNI
	condHost
	condDomain
	condDNS
	condPath
	numCondKinds
)

const firstL7 = condApp

// condKeys are the rule file keys, indexed by condKind.
var condKeys = [numCondKinds]string{
	condProto:      "proto",
	condDstPort:    "dst_port",
	condSrcPort:    "src_port",
	condDst:        "dst",
	condSrc:        "src",
	condDstCountry: "dst_country",
	condSrcCountry: "src_country",
	condDstASN:     "dst_asn",
	condSrcASN:     "src_asn",
	condApp:        "app",
	condMethod:     "method",
	condSNI:        "sni",
	condHost:       "host",
	condDomain:     "domain",
	condDNS:        "dns",
	condPath:       "path",
}

func (k condKind) String() string { return condKeys[k] }

func (k condKind) isL7() bool { return k >= firstL7 }

// cond is one compiled condition. Which value field is set depends on kind.
// Conditions are matched by a switch on kind (not an interface call) so the
// facts pointer never escapes and a decision does not allocate.
type cond struct {
	kind condKind
	neg  bool // from a "not:" block
	line int  // position of the key, for explain
	col  int

	protos    uint8 // bit per Transport
	ports     portSet
	ips       *ipSet
	countries *countrySet
	asns      asnSet
	apps      uint64 // bit per inspect.Proto value (< 64)
	methods   []string
	domains   *domainSet
	paths     []pathPattern

	values []string // the values as written (lists as "$name"), for explain
}

// rule is one compiled rule.
type rule struct {
	name      string
	action    Action
	dnsAnswer DNSAnswer // dns_answer: what a denied DNS query is told
	line      int
	col       int
	conds     []cond // sorted by kind; L3/L4/geo first
	nL34      int    // conds[:nL34] are address/port/geo conditions
}

func (r *rule) hasL7() bool { return r.nL34 < len(r.conds) }

// Set is a compiled, immutable rule file. It is safe for concurrent use.
type Set struct {
	rules     []rule
	def       Action
	onInvalid Action
	denyPage  *denyPage
	needs     [numCondKinds]bool // which condition kinds occur at all
	version   Version
	warnings  []Diagnostic
	files     []string // the rule file, then every file it includes
	lists     int
	listItems int
	index     *ruleIndex // nil for small sets
}

// Version identifies a loaded rule file.
type Version struct {
	// SHA256 is the hex SHA-256 over the rule file's bytes followed by
	// those of every file it includes (lists, deny page), in a fixed order.
	SHA256 string
	// Loaded is when the set was compiled.
	Loaded time.Time
	// Rules is the number of rules.
	Rules int
	// Path is the rule file's path as given to Load ("" for Parse of
	// in-memory data without a name).
	Path string
}

// Version returns the identity of the loaded file.
func (s *Set) Version() Version { return s.version }

// Default returns the action when no rule matches.
func (s *Set) Default() Action { return s.def }

// OnInvalid returns the action for a flow whose first bytes could not be
// judged: a malformed ClientHello, an ambiguous HTTP request.
func (s *Set) OnInvalid() Action { return s.onInvalid }

// Invalid returns the verdict for a flow that could not be judged (see
// OnInvalid); its Rule is RuleOnInvalid.
func (s *Set) Invalid() Verdict { return Verdict{Action: s.onInvalid, Rule: RuleOnInvalid} }

// Warnings returns what Load found suspicious but valid (shadowed rules,
// unused lists), in file order.
func (s *Set) Warnings() []Diagnostic { return s.warnings }

// Len returns the number of rules.
func (s *Set) Len() int { return len(s.rules) }

// RuleNames returns the rule names in order.
func (s *Set) RuleNames() []string {
	n := make([]string, len(s.rules))
	for i := range s.rules {
		n[i] = s.rules[i].name
	}
	return n
}

// Files returns the rule file's path followed by the paths of the files
// it includes (lists, deny page), as opened. A watcher reloads when any of
// them changes.
func (s *Set) Files() []string { return s.files }

// Lists returns the number of named lists and their total entries.
func (s *Set) Lists() (lists, entries int) { return s.lists, s.listItems }

// UsesGeo reports whether any rule has a country (country) or ASN (asn)
// condition.
func (s *Set) UsesGeo() (country, asn bool) {
	return s.needs[condSrcCountry] || s.needs[condDstCountry], s.needs[condSrcASN] || s.needs[condDstASN]
}

// flow is Facts prepared for matching: addresses unmapped, names and path
// normalised once per decision.
type flow struct {
	f               *Facts
	src, dst        netip.Addr
	sni, host, path []byte
	dns             []byte
	hasSNI, hasHost bool
	hasDNS          bool
	hasPath         bool
}

// flowBufs holds a flow's normalised names and path. The caller keeps it on
// its stack; flow slices point into it.
type flowBufs struct {
	sni, host, dns [maxNameLen]byte
	path           [maxPathLen]byte
}

// prepare builds the flow for f. It returns the flow by value and writes
// only into bufs, so neither escapes to the heap.
func (s *Set) prepare(f *Facts, early bool, bufs *flowBufs) flow {
	fl := flow{f: f, src: f.Src.Addr().Unmap(), dst: f.Dst.Addr().Unmap()}
	if early {
		return fl
	}
	if s.needs[condSNI] || s.needs[condDomain] {
		fl.sni, fl.hasSNI = normName(&bufs.sni, f.SNI, false)
	}
	if s.needs[condHost] || s.needs[condDomain] {
		fl.host, fl.hasHost = normName(&bufs.host, f.Host, true)
	}
	if s.needs[condDNS] || s.needs[condDomain] {
		fl.dns, fl.hasDNS = normName(&bufs.dns, f.DNSName, false)
	}
	if s.needs[condPath] {
		fl.path, fl.hasPath = normPath(&bufs.path, f.Path)
	}
	return fl
}

// holds reports whether the condition holds for the flow, including its
// negation.
func (c *cond) holds(fl *flow) bool {
	return c.test(fl) != c.neg
}

// test reports whether the flow has a value in the condition's set. A flow
// without the fact (no SNI, no path, unknown country) has none.
func (c *cond) test(fl *flow) bool {
	f := fl.f
	switch c.kind {
	case condProto:
		return c.protos&(1<<f.Transport) != 0
	case condDstPort:
		return c.ports.contains(f.Dst.Port())
	case condSrcPort:
		return c.ports.contains(f.Src.Port())
	case condDst:
		return fl.dst.IsValid() && c.ips.contains(fl.dst)
	case condSrc:
		return fl.src.IsValid() && c.ips.contains(fl.src)
	case condDstCountry:
		return c.countries.contains(f.DstGeo.Country)
	case condSrcCountry:
		return c.countries.contains(f.SrcGeo.Country)
	case condDstASN:
		return f.DstGeo.ASN != 0 && c.asns.contains(f.DstGeo.ASN)
	case condSrcASN:
		return f.SrcGeo.ASN != 0 && c.asns.contains(f.SrcGeo.ASN)
	case condApp:
		return uint8(f.App) < 64 && c.apps&(1<<uint8(f.App)) != 0
	case condMethod:
		for _, m := range c.methods {
			if equalFoldASCII(f.Method, m) {
				return true
			}
		}
		return false
	case condSNI:
		return fl.hasSNI && c.domains.match(fl.sni)
	case condHost:
		return fl.hasHost && c.domains.match(fl.host)
	case condDomain:
		return fl.hasSNI && c.domains.match(fl.sni) || fl.hasHost && c.domains.match(fl.host) ||
			fl.hasDNS && c.domains.match(fl.dns)
	case condDNS:
		return fl.hasDNS && c.domains.match(fl.dns)
	case condPath:
		if !fl.hasPath {
			return false
		}
		for i := range c.paths {
			if c.paths[i].match(fl.path) {
				return true
			}
		}
		return false
	}
	return false
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// matchL34 reports whether the rule's address/port/geo conditions hold.
func (r *rule) matchL34(fl *flow) bool {
	for i := 0; i < r.nL34; i++ {
		if !r.conds[i].holds(fl) {
			return false
		}
	}
	return true
}

func (r *rule) match(fl *flow) bool {
	for i := range r.conds {
		if !r.conds[i].holds(fl) {
			return false
		}
	}
	return true
}

// Decide judges a flow with everything known about it: the first rule
// whose conditions all hold decides; alert rules that hold are collected
// and passed; if no rule decides, the default does. It does not allocate
// unless an alert rule matches.
func (s *Set) Decide(f *Facts) Verdict {
	var bufs flowBufs
	fl := s.prepare(f, false, &bufs)
	if s.index != nil {
		return s.decideIndexed(&fl)
	}
	return s.decideWalk(&fl)
}

// decideWalk is Decide over every rule, without the index.
func (s *Set) decideWalk(fl *flow) Verdict {
	return s.decideOver(fl, &ruleOrder{n: int32(len(s.rules))})
}

// ruleOrder yields rule indices in rule order: every rule, or only the
// candidates an index found (c). Decide and Early walk it the same way
// whichever it is.
type ruleOrder struct {
	c *cands
	n int32
}

// next returns the first index after last (-1 for the first).
func (o *ruleOrder) next(last int32) (int32, bool) {
	if o.c != nil {
		return o.c.next(last)
	}
	last++
	return last, last < o.n
}

// decideOver is Decide over the rules o yields.
func (s *Set) decideOver(fl *flow, o *ruleOrder) Verdict {
	var alerts []string
	for i, ok := o.next(-1); ok; i, ok = o.next(i) {
		r := &s.rules[i]
		if !r.match(fl) {
			continue
		}
		if r.action == ActionAlert {
			alerts = append(alerts, r.name)
			continue
		}
		return Verdict{Action: r.action, Rule: r.name, Alerts: alerts, DNSAnswer: r.dnsAnswer}
	}
	return Verdict{Action: s.def, Alerts: alerts}
}

// Early judges a flow from its addresses, ports and geo alone, before any
// byte is inspected. It walks the rules in order: a rule whose
// address/port/geo conditions fail is skipped; one that holds and has no
// other conditions decides (or, for alert, is collected); one that holds
// but also has conditions on inspected facts (sni, host, domain, method,
// path, app) leaves the flow undecided (ok is false). If no rule can match,
// the default decides. When ok is true, Decide on the same flow with any
// inspected facts gives the same verdict.
func (s *Set) Early(f *Facts) (v Verdict, ok bool) {
	fl := s.prepare(f, true, nil)
	if s.index != nil {
		return s.earlyIndexed(&fl)
	}
	return s.earlyWalk(&fl)
}

// earlyWalk is Early over every rule, without the index.
func (s *Set) earlyWalk(fl *flow) (Verdict, bool) {
	return s.earlyOver(fl, &ruleOrder{n: int32(len(s.rules))})
}

// earlyOver is Early over the rules o yields.
func (s *Set) earlyOver(fl *flow, o *ruleOrder) (Verdict, bool) {
	var alerts []string
	for i, ok := o.next(-1); ok; i, ok = o.next(i) {
		r := &s.rules[i]
		if !r.matchL34(fl) {
			continue
		}
		if r.hasL7() {
			return Verdict{}, false
		}
		if r.action == ActionAlert {
			alerts = append(alerts, r.name)
			continue
		}
		return Verdict{Action: r.action, Rule: r.name, Alerts: alerts, DNSAnswer: r.dnsAnswer}, true
	}
	return Verdict{Action: s.def, Alerts: alerts}, true
}
