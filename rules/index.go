package rules

import (
	"net/netip"
	"sort"
)

// First match over N rules is a walk over N rules, unless most of them can
// be skipped without looking. For big rule sets the Set keeps indexes that
// give, for one flow, the few rules that could possibly match it:
//
//   - each rule gets an anchor: one of its conditions that must hold for
//     the rule to match and that an index can answer (a positive sni, host
//     or domain condition; else a positive dst, else src, else method,
//     else dst_port (single ports only), else app condition; each with at
//     most maxAnchorValues values);
//   - the index maps anchor values to the (sorted) rule numbers anchored
//     on them: domain patterns by name, prefixes by (masked prefix) per
//     prefix length;
//   - a flow's candidates are the rules its names and addresses hit, plus
//     the rules without an anchor; they are evaluated in rule order (a
//     merge of sorted lists), so first-match and alert semantics are
//     exactly those of the plain walk.
//
// Decide anchors on names first (more selective); Early, which knows no
// names, has its own anchoring on addresses only.

// indexMinRules is the rule count from which indexes are built; below it
// the plain walk is as fast.
const indexMinRules = 4

// maxAnchorValues bounds the values of an anchoring condition (a rule on a
// 10,000-domain list is better left unanchored: the list itself is a hash).
const maxAnchorValues = 64

// maxCands bounds the candidate lists one flow can gather on the stack;
// past it the decision falls back to the plain walk.
const maxCands = 32

type ruleIndex struct {
	names map[string]*nameEntry // decide: rules anchored on domain patterns
	dst   addrIndex             // decide: rules anchored on dst
	src   addrIndex             // decide: rules anchored on src
	// decide: rules anchored on methods, by the method upper-cased
	// (ASCII, as cond.test compares them)
	methods  map[string][]int32
	dstPorts map[uint16][]int32 // decide: rules anchored on single dst ports
	apps     [64][]int32        // decide: rules anchored on apps, by inspect.Proto
	free     []int32            // decide: rules without an anchor
	early    struct {
		dst, src addrIndex
		free     []int32
	}
}

// name fields of a nameEntry
const (
	fieldSNI = iota
	fieldHost
	fieldDomain
	fieldDNS
)

// nameEntry holds, for one pattern name, the rules anchored on it per
// field (sni, host, domain, dns) and pattern kind (exact, apex, sub).
type nameEntry [4][3][]int32

func kindSlot(k domainFlags) int {
	switch k {
	case domApex:
		return 1
	case domSub:
		return 2
	}
	return 0
}

// addrIndex finds the rules anchored on prefixes containing an address.
type addrIndex struct {
	m      map[netip.Prefix][]int32
	lens4  []int
	lens6  []int
	hasAny bool
}

func (x *addrIndex) add(p netip.Prefix, r int32) {
	if x.m == nil {
		x.m = make(map[netip.Prefix][]int32)
	}
	p = p.Masked()
	l := x.m[p]
	if n := len(l); n == 0 || l[n-1] != r {
		x.m[p] = append(l, r)
	}
	lens := &x.lens6
	if p.Addr().Is4() {
		lens = &x.lens4
	}
	if !containsInt(*lens, p.Bits()) {
		*lens = append(*lens, p.Bits())
		sort.Ints(*lens)
	}
	x.hasAny = true
}

func containsInt(l []int, n int) bool {
	for _, x := range l {
		if x == n {
			return true
		}
	}
	return false
}

func (x *addrIndex) lookup(a netip.Addr, c *cands) {
	if !x.hasAny || !a.IsValid() {
		return
	}
	lens := x.lens6
	if a.Is4() {
		lens = x.lens4
	}
	for _, l := range lens {
		p, err := a.Prefix(l)
		if err != nil {
			continue
		}
		if rs, ok := x.m[p]; ok {
			c.add(rs)
		}
	}
}

// cands is a set of sorted rule-number lists whose union, walked in order,
// is a flow's candidate rules. It lives on the decision's stack.
type cands struct {
	n        int
	overflow bool
	l        [maxCands][]int32
}

func (c *cands) add(rs []int32) {
	if len(rs) == 0 {
		return
	}
	if c.n == len(c.l) {
		c.overflow = true
		return
	}
	c.l[c.n] = rs
	c.n++
}

// next returns the smallest rule number above last in any list.
func (c *cands) next(last int32) (int32, bool) {
	best := int32(-1)
	for i := 0; i < c.n; i++ {
		l := c.l[i]
		for len(l) > 0 && l[0] <= last {
			l = l[1:]
		}
		c.l[i] = l
		if len(l) > 0 && (best < 0 || l[0] < best) {
			best = l[0]
		}
	}
	return best, best >= 0
}

// lookupName adds the rules anchored on patterns that name matches, for
// the given fields.
func (x *ruleIndex) lookupName(name []byte, fields [2]int, c *cands) {
	if e, ok := x.names[string(name)]; ok {
		for _, f := range fields {
			c.add(e[f][0]) // exact
			c.add(e[f][1]) // apex
		}
	}
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			continue
		}
		if e, ok := x.names[string(name[i+1:])]; ok {
			for _, f := range fields {
				c.add(e[f][1]) // apex
				c.add(e[f][2]) // sub
			}
		}
	}
}

// anchor returns the rule's first positive condition that ok accepts, or
// nil.
func anchor(r *rule, ok func(c *cond) bool) *cond {
	for i := range r.conds {
		if c := &r.conds[i]; !c.neg && ok(c) {
			return c
		}
	}
	return nil
}

// anchorName returns the rule's positive sni/host/domain condition with few
// enough patterns to index, or nil.
func anchorName(r *rule) *cond {
	return anchor(r, func(c *cond) bool {
		return (c.kind == condSNI || c.kind == condHost || c.kind == condDomain || c.kind == condDNS) && c.domains.len() <= maxAnchorValues
	})
}

// anchorAddr returns the rule's positive condition of kind (dst or src)
// with few enough prefixes to index, or nil.
func anchorAddr(r *rule, kind condKind) *cond {
	return anchor(r, func(c *cond) bool { return c.kind == kind && len(c.ips.prefixes) <= maxAnchorValues })
}

// maxMethodKey bounds the methods the index holds; a rule with a longer
// one is not anchored on its method, and a flow's longer method finds no
// anchored rule (none could match it).
const maxMethodKey = 32

// anchorMethod returns the rule's positive method condition whose values
// can all be keys (1 to maxMethodKey bytes), or nil.
func anchorMethod(r *rule) *cond {
	return anchor(r, func(c *cond) bool {
		if c.kind != condMethod || len(c.methods) == 0 || len(c.methods) > maxAnchorValues {
			return false
		}
		for _, m := range c.methods {
			if len(m) < 1 || len(m) > maxMethodKey {
				return false
			}
		}
		return true
	})
}

// methodKey writes m upper-cased (ASCII letters only, as equalFoldASCII
// folds) into buf and returns it, or nil if m is not 1 to maxMethodKey bytes.
func methodKey(m string, buf *[maxMethodKey]byte) []byte {
	if len(m) == 0 || len(m) > maxMethodKey {
		return nil
	}
	for i := 0; i < len(m); i++ {
		b := m[i]
		if 'a' <= b && b <= 'z' {
			b -= 'a' - 'A'
		}
		buf[i] = b
	}
	return buf[:len(m)]
}

// anchorDstPort returns the rule's positive dst_port condition made of at
// most maxAnchorValues single ports (no ranges), or nil.
func anchorDstPort(r *rule) *cond {
	return anchor(r, func(c *cond) bool {
		if c.kind != condDstPort || len(c.ports) == 0 || len(c.ports) > maxAnchorValues {
			return false
		}
		for _, pr := range c.ports {
			if pr.lo != pr.hi {
				return false
			}
		}
		return true
	})
}

// anchorApp returns the rule's positive app condition, or nil.
func anchorApp(r *rule) *cond {
	return anchor(r, func(c *cond) bool { return c.kind == condApp && c.apps != 0 })
}

// appendRule appends r to a rule list built in rule order, once.
func appendRule(l []int32, r int32) []int32 {
	if n := len(l); n > 0 && l[n-1] == r {
		return l
	}
	return append(l, r)
}

func (s *Set) buildIndex() {
	if len(s.rules) < indexMinRules {
		return
	}
	x := &ruleIndex{names: make(map[string]*nameEntry), methods: make(map[string][]int32), dstPorts: make(map[uint16][]int32)}
	for i := range s.rules {
		r, ri := &s.rules[i], int32(i)
		// Decide anchoring.
		if c := anchorName(r); c != nil {
			field := fieldDomain
			switch c.kind {
			case condSNI:
				field = fieldSNI
			case condHost:
				field = fieldHost
			case condDNS:
				field = fieldDNS
			}
			for name, flags := range c.domains.m {
				e := x.names[name]
				if e == nil {
					e = new(nameEntry)
					x.names[name] = e
				}
				for _, k := range []domainFlags{domExact, domApex, domSub} {
					if flags&k != 0 {
						l := e[field][kindSlot(k)]
						if n := len(l); n == 0 || l[n-1] != ri {
							e[field][kindSlot(k)] = append(l, ri)
						}
					}
				}
			}
		} else if c := anchorAddr(r, condDst); c != nil {
			for _, p := range c.ips.prefixes {
				x.dst.add(p, ri)
			}
		} else if c := anchorAddr(r, condSrc); c != nil {
			for _, p := range c.ips.prefixes {
				x.src.add(p, ri)
			}
		} else if c := anchorMethod(r); c != nil {
			var buf [maxMethodKey]byte
			for _, m := range c.methods {
				k := string(methodKey(m, &buf))
				x.methods[k] = appendRule(x.methods[k], ri)
			}
		} else if c := anchorDstPort(r); c != nil {
			for _, pr := range c.ports {
				x.dstPorts[pr.lo] = appendRule(x.dstPorts[pr.lo], ri)
			}
		} else if c := anchorApp(r); c != nil {
			for b := range x.apps {
				if c.apps&(1<<uint(b)) != 0 {
					x.apps[b] = appendRule(x.apps[b], ri)
				}
			}
		} else {
			x.free = append(x.free, ri)
		}
		// Early anchoring.
		if c := anchorAddr(r, condDst); c != nil {
			for _, p := range c.ips.prefixes {
				x.early.dst.add(p, ri)
			}
		} else if c := anchorAddr(r, condSrc); c != nil {
			for _, p := range c.ips.prefixes {
				x.early.src.add(p, ri)
			}
		} else {
			x.early.free = append(x.early.free, ri)
		}
	}
	s.index = x
}

// decideIndexed is Decide over the candidates the index gives.
func (s *Set) decideIndexed(fl *flow) Verdict {
	x := s.index
	var c cands
	c.add(x.free)
	if fl.hasSNI {
		x.lookupName(fl.sni, [2]int{fieldSNI, fieldDomain}, &c)
	}
	if fl.hasHost {
		x.lookupName(fl.host, [2]int{fieldHost, fieldDomain}, &c)
	}
	if fl.hasDNS {
		x.lookupName(fl.dns, [2]int{fieldDNS, fieldDomain}, &c)
	}
	x.dst.lookup(fl.dst, &c)
	x.src.lookup(fl.src, &c)
	if len(x.methods) > 0 {
		var buf [maxMethodKey]byte
		if k := methodKey(fl.f.Method, &buf); k != nil {
			c.add(x.methods[string(k)])
		}
	}
	if len(x.dstPorts) > 0 {
		c.add(x.dstPorts[fl.f.Dst.Port()])
	}
	if app := uint8(fl.f.App); app < 64 {
		c.add(x.apps[app])
	}
	if c.overflow {
		return s.decideWalk(fl)
	}
	return s.decideOver(fl, &ruleOrder{c: &c})
}

// earlyIndexed is Early over the candidates the index gives.
func (s *Set) earlyIndexed(fl *flow) (Verdict, bool) {
	x := s.index
	var c cands
	c.add(x.early.free)
	x.early.dst.lookup(fl.dst, &c)
	x.early.src.lookup(fl.src, &c)
	if c.overflow {
		return s.earlyWalk(fl)
	}
	return s.earlyOver(fl, &ruleOrder{c: &c})
}
