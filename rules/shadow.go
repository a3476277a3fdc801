package rules

import (
	"sort"
	"strings"
)

// maxPairwiseShadow bounds the rule count for the full pairwise shadow
// check (quadratic). Above it only rules after a catch-all and rules with
// exactly the same conditions as an earlier one are found.
const maxPairwiseShadow = 2000

// findShadowed warns about rules that can never match because an earlier
// deciding rule matches every flow they match.
func (l *loader) findShadowed() {
	rs := l.set.rules
	catchAll := -1
	seen := make(map[string]int) // canonical conditions → first deciding rule
	var sigs []uint32
	if len(rs) <= maxPairwiseShadow {
		sigs = make([]uint32, len(rs))
		for i := range rs {
			sigs[i] = signature(&rs[i])
		}
	}
	for j := range rs {
		rj := &rs[j]
		by := -1
		switch {
		case catchAll >= 0:
			by = catchAll
		case len(rs) <= maxPairwiseShadow:
			sj := signature(rj)
			for i := 0; i < j; i++ {
				// a can cover b only if b has a condition on every fact a
				// has one on (same negation): a cheap test first.
				if rs[i].action != ActionAlert && sigs[i]&^sj == 0 && covers(&rs[i], rj) {
					by = i
					break
				}
			}
		default:
			if i, ok := seen[canonical(rj)]; ok {
				by = i
			}
		}
		if by >= 0 {
			ri := &rs[by]
			what := "every flow it matches is decided there"
			if len(ri.conds) == 0 {
				what = "that rule has no conditions and matches every flow"
			}
			l.d.warnf(l.path, rj.line, rj.col, "rule %q can never match: earlier rule %q (line %d) always wins; %s", rj.name, ri.name, ri.line, what)
		}
		if rj.action == ActionAlert {
			continue
		}
		if len(rj.conds) == 0 && catchAll < 0 {
			catchAll = j
		}
		if len(rs) > maxPairwiseShadow {
			if _, ok := seen[canonical(rj)]; !ok {
				seen[canonical(rj)] = j
			}
		}
	}
}

// signature has a bit per (condition kind, negated) the rule has.
func signature(r *rule) uint32 {
	var m uint32
	for _, c := range r.conds {
		b := uint(c.kind)
		if c.neg {
			b += uint(numCondKinds)
		}
		m |= 1 << b
	}
	return m
}

// canonical is a rule's conditions as text, equal for equal condition sets
// as written (value order aside).
func canonical(r *rule) string {
	var b strings.Builder
	for _, c := range r.conds {
		if c.neg {
			b.WriteString("!")
		}
		b.WriteString(c.kind.String())
		b.WriteByte('=')
		v := append([]string(nil), c.values...)
		sort.Strings(v)
		b.WriteString(strings.Join(v, ","))
		b.WriteByte(';')
	}
	return b.String()
}

// covers reports whether every flow that matches b also matches a: each of
// a's conditions is implied by a condition of b on the same fact (b's set
// is a subset of a's; for negated conditions, a superset).
func covers(a, b *rule) bool {
	for i := range a.conds {
		ca := &a.conds[i]
		implied := false
		for j := range b.conds {
			cb := &b.conds[j]
			if cb.kind != ca.kind || cb.neg != ca.neg {
				continue
			}
			if (!ca.neg && subset(cb, ca)) || (ca.neg && subset(ca, cb)) {
				implied = true
				break
			}
		}
		if !implied {
			return false
		}
	}
	return true
}

// subset reports whether x's values are a subset of y's (same kind).
func subset(x, y *cond) bool {
	switch classOf[x.kind] {
	case classPort:
		for _, r := range x.ports {
			if !y.ports.containsRange(r) {
				return false
			}
		}
		return true
	case classIP:
		if x.ips == y.ips {
			return true
		}
		for _, p := range x.ips.prefixes {
			if !y.ips.set.ContainsPrefix(p) {
				return false
			}
		}
		return true
	case classCountry:
		return x.countries.subsetOf(y.countries)
	case classASN:
		for _, n := range x.asns {
			if !y.asns.contains(n) {
				return false
			}
		}
		return true
	case classProto:
		return x.protos&^y.protos == 0
	case classApp:
		return x.apps&^y.apps == 0
	case classMethod:
		for _, m := range x.methods {
			if !contains(y.methods, m) {
				return false
			}
		}
		return true
	case classDomain:
		if x.domains == y.domains {
			return true
		}
		for _, p := range x.domains.patterns {
			if !y.domains.coversPattern(p) {
				return false
			}
		}
		return true
	case classPath:
		for i := range x.paths {
			ok := false
			for j := range y.paths {
				if y.paths[j].covers(&x.paths[i]) {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
		return true
	}
	return false
}
