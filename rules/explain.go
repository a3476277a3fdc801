package rules

import (
	"fmt"
	"strconv"
	"strings"
)

// Explanation is how a Set judged one flow, rule by rule. It is for people
// (netward explain, netward test), not for the datapath: building it
// allocates.
type Explanation struct {
	Rules []RuleTrace
	// Verdict is what Decide returns for the flow.
	Verdict Verdict
	// Early and EarlyDecided are what Early returns for the flow's
	// addresses, ports and geo alone.
	Early        Verdict
	EarlyDecided bool
}

// RuleTrace is one rule's outcome.
type RuleTrace struct {
	Name   string `json:"name"`
	Action string `json:"action"`
	Line   int    `json:"line"`
	// Matched: every condition holds.
	Matched bool `json:"matched"`
	// Decided: this rule gave the verdict.
	Decided bool `json:"decided,omitempty"`
	// AfterDecision: an earlier rule decided; this one was evaluated only
	// for the explanation.
	AfterDecision bool `json:"after_decision,omitempty"`
	// Failed describes each condition that does not hold, in evaluation
	// order, e.g. `dst_port: 8080 is not in [443]`.
	Failed []string `json:"failed,omitempty"`
}

// Explain evaluates every rule against the flow and reports each outcome
// along with the verdict.
func (s *Set) Explain(f *Facts) Explanation {
	var ex Explanation
	ex.Verdict = s.Decide(f)
	ex.Early, ex.EarlyDecided = s.Early(f)
	var bufs flowBufs
	fl := s.prepare(f, false, &bufs)
	decided := false
	for i := range s.rules {
		r := &s.rules[i]
		tr := RuleTrace{Name: r.name, Action: r.action.String(), Line: r.line, AfterDecision: decided}
		for j := range r.conds {
			c := &r.conds[j]
			if !c.holds(&fl) {
				tr.Failed = append(tr.Failed, c.describe(&fl))
			}
		}
		tr.Matched = len(tr.Failed) == 0
		if tr.Matched && !decided && r.action != ActionAlert {
			tr.Decided, decided = true, true
		}
		ex.Rules = append(ex.Rules, tr)
	}
	return ex
}

// describe says why c does not hold for fl.
func (c *cond) describe(fl *flow) string {
	set := "[" + strings.Join(c.values, ", ") + "]"
	fact, known := c.fact(fl)
	key := c.kind.String()
	if c.neg {
		return fmt.Sprintf("not %s: %s is in %s", key, fact, set)
	}
	if !known {
		return fmt.Sprintf("%s: the flow has no %s (want %s)", key, fact, set)
	}
	return fmt.Sprintf("%s: %s is not in %s", key, fact, set)
}

// fact renders the flow's value for c's kind; known is false if the flow
// lacks it (then the string names the missing fact).
func (c *cond) fact(fl *flow) (string, bool) {
	f := fl.f
	switch c.kind {
	case condDstPort:
		return strconv.Itoa(int(f.Dst.Port())), true
	case condSrcPort:
		return strconv.Itoa(int(f.Src.Port())), true
	case condDst:
		return addrOrNone(fl.dst.String(), fl.dst.IsValid(), "destination address")
	case condSrc:
		return addrOrNone(fl.src.String(), fl.src.IsValid(), "source address")
	case condDstCountry:
		return addrOrNone(f.DstGeo.Country, f.DstGeo.Country != "", "destination country")
	case condSrcCountry:
		return addrOrNone(f.SrcGeo.Country, f.SrcGeo.Country != "", "source country")
	case condDstASN:
		return addrOrNone("AS"+strconv.FormatUint(uint64(f.DstGeo.ASN), 10), f.DstGeo.ASN != 0, "destination ASN")
	case condSrcASN:
		return addrOrNone("AS"+strconv.FormatUint(uint64(f.SrcGeo.ASN), 10), f.SrcGeo.ASN != 0, "source ASN")
	case condProto:
		return f.Transport.String(), true
	case condApp:
		return f.App.String(), true
	case condMethod:
		return addrOrNone(strconv.Quote(f.Method), f.Method != "", "method")
	case condSNI:
		return addrOrNone(string(fl.sni), fl.hasSNI, "SNI")
	case condHost:
		return addrOrNone(string(fl.host), fl.hasHost, "Host")
	case condDomain:
		switch {
		case fl.hasSNI && fl.hasHost:
			return string(fl.sni) + " (SNI) / " + string(fl.host) + " (Host)", true
		case fl.hasSNI:
			return string(fl.sni), true
		case fl.hasHost:
			return string(fl.host), true
		case fl.hasDNS:
			return string(fl.dns) + " (DNS)", true
		}
		return "SNI, Host or DNS name", false
	case condDNS:
		return addrOrNone(string(fl.dns), fl.hasDNS, "DNS name")
	case condPath:
		return addrOrNone(strconv.Quote(string(fl.path)), fl.hasPath, "path")
	}
	return "?", false
}

func addrOrNone(v string, ok bool, what string) (string, bool) {
	if !ok {
		return what, false
	}
	return v, true
}
