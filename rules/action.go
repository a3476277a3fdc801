package rules

import (
	"strconv"
	"strings"
)

// Action is what a rule (or the default) does with a flow.
type Action uint8

const (
	// ActionAllow relays the flow.
	ActionAllow Action = iota
	// ActionDeny refuses the flow visibly: an HTTP 403 page naming the
	// rule, a fatal TLS alert, or a TCP reset for other protocols.
	ActionDeny
	// ActionDrop closes the flow silently: nothing is sent back.
	ActionDrop
	// ActionAlert logs the match and goes on to the next rule. It never
	// decides a flow; the names of alert rules that matched are collected
	// in Verdict.Alerts.
	ActionAlert
)

var actionNames = [...]string{"allow", "deny", "drop", "alert"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "action(" + strconv.Itoa(int(a)) + ")"
}

// ParseAction parses an action name (case-insensitive).
func ParseAction(s string) (Action, bool) {
	for i, n := range actionNames {
		if strings.EqualFold(s, n) {
			return Action(i), true
		}
	}
	return 0, false
}

// Verdict is the outcome of a decision.
type Verdict struct {
	Action Action
	// Rule names the rule that decided. "" means the rule file's default;
	// RuleOnInvalid means the on_invalid setting.
	Rule string
	// Alerts names the alert rules that matched before the decision, in
	// rule order. nil when none did (the common case; no allocation).
	Alerts []string
	// DNSAnswer is what a DNS query the verdict denies is told (the
	// deciding rule's dns_answer:); the zero value is NXDOMAIN.
	DNSAnswer DNSAnswer
}

// DNSAnswer is the answer netward gives, in the server's name, to a DNS
// query a rule denies. NXDOMAIN is the default because every stub resolver
// stops on it; REFUSED makes some try the next server; NODATA (NOERROR with
// no answer) says the name exists but has no record of that type, as Route
// 53 DNS Firewall's NODATA does.
type DNSAnswer uint8

const (
	DNSAnswerNXDOMAIN DNSAnswer = iota
	DNSAnswerRefused
	DNSAnswerNODATA
)

var dnsAnswerNames = [...]string{"nxdomain", "refused", "nodata"}

func (a DNSAnswer) String() string {
	if int(a) < len(dnsAnswerNames) {
		return dnsAnswerNames[a]
	}
	return "dns_answer(" + strconv.Itoa(int(a)) + ")"
}

// ParseDNSAnswer parses a dns_answer: value (case-insensitive).
func ParseDNSAnswer(s string) (DNSAnswer, bool) {
	for i, n := range dnsAnswerNames {
		if strings.EqualFold(s, n) {
			return DNSAnswer(i), true
		}
	}
	return 0, false
}

// Transport is a flow's layer-4 protocol (the rule "proto:" values).
type Transport uint8

const (
	TransportTCP Transport = iota
	TransportUDP
)

func (t Transport) String() string {
	if t == TransportUDP {
		return "udp"
	}
	return "tcp"
}

// ParseTransport parses a proto: value (case-insensitive).
func ParseTransport(s string) (Transport, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp":
		return TransportTCP, true
	case "udp":
		return TransportUDP, true
	}
	return 0, false
}

// RuleOnInvalid is Verdict.Rule for a verdict given by the on_invalid
// setting (malformed ClientHello, ambiguous HTTP request). Rule names cannot
// start with '(' so it never clashes with a rule.
const RuleOnInvalid = "(on_invalid)"

// RuleName returns v.Rule, or "default" for the default verdict, for use in
// pages and logs.
func (v Verdict) RuleName() string {
	if v.Rule == "" {
		return "default"
	}
	return v.Rule
}

func (v Verdict) String() string {
	s := v.Action.String() + " by " + v.RuleName()
	if len(v.Alerts) > 0 {
		s += " (alerts: " + strings.Join(v.Alerts, ", ") + ")"
	}
	return s
}
