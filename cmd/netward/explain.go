package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/rules"
)

func init() {
	register("explain", "show how the rules judge a flow", func(args []string) int {
		return explainMain(args, os.Stdout, os.Stderr)
	})
}

// explainMain prints each rule's outcome for a flow given by flags and the
// final verdict. Exit 0 when explained, 1 on a bad rule file, 2 on usage
// errors.
func explainMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rulesPath := fs.String("rules", "", "rule `file` (required)")
	src := fs.String("src", "", "client `address`: IP or IP:PORT (required)")
	dst := fs.String("dst", "", "server `address`: IP or IP:PORT (required)")
	srcPort := fs.Int("src-port", -1, "client `port` (if --src has none)")
	dstPort := fs.Int("dst-port", -1, "server `port` (if --dst has none)")
	app := fs.String("app", "", "protocol: "+strings.Join(rules.AppNames(), ", ")+" (default: dns with --dns; with --proto udp quic with --sni, else udp; tls with --sni, http with --host/--method/--path, else unknown)")
	proto := fs.String("proto", "tcp", "transport: tcp or udp (QUIC, DNS)")
	dnsName := fs.String("dns", "", "DNS query name (a DNS flow)")
	sni := fs.String("sni", "", "TLS server name (a QUIC flow's too, with --proto udp)")
	host := fs.String("host", "", "HTTP Host header")
	method := fs.String("method", "", "HTTP method")
	path := fs.String("path", "", "HTTP request path")
	srcCountry := fs.String("src-country", "", "client country (overrides the database)")
	dstCountry := fs.String("dst-country", "", "server country (overrides the database)")
	srcASN := fs.Uint("src-asn", 0, "client ASN (overrides the database)")
	dstASN := fs.Uint("dst-asn", 0, "server ASN (overrides the database)")
	country := fs.String("geoip-country", "", "country `mmdb` to look the addresses up in")
	asn := fs.String("geoip-asn", "", "ASN `mmdb` to look the addresses up in")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: netward explain --rules FILE --src IP[:PORT] --dst IP[:PORT] [flow flags] [--json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "netward explain: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() != 0 {
		return usageErr("unexpected argument %q (the flow is given by flags)", fs.Arg(0))
	}
	if *rulesPath == "" || *src == "" || *dst == "" {
		return usageErr("--rules, --src and --dst are required")
	}
	if *srcPort > 65535 || *dstPort > 65535 {
		return usageErr("ports are 0-65535")
	}
	var f rules.Facts
	var err error
	if f.Src, err = rules.ParseEndpoint(*src, *srcPort); err != nil {
		return usageErr("--src: %v", err)
	}
	if f.Dst, err = rules.ParseEndpoint(*dst, *dstPort); err != nil {
		return usageErr("--dst: %v", err)
	}
	f.SNI, f.Host, f.Method, f.Path, f.DNSName = *sni, *host, *method, *path, *dnsName
	t, ok := rules.ParseTransport(*proto)
	if !ok {
		return usageErr("--proto: want tcp or udp")
	}
	f.Transport = t
	if *app != "" {
		p, ok := rules.ParseApp(strings.ToLower(*app))
		if !ok {
			return usageErr("--app: want one of %s", strings.Join(rules.AppNames(), ", "))
		}
		f.App = p
	} else {
		f.App = rules.InferApp(&f)
	}
	db, err := geo.Open(*country, *asn)
	if err != nil {
		fmt.Fprintf(stderr, "netward explain: %v\n", err)
		return 1
	}
	defer db.Close()
	c := rules.Case{Facts: f, SrcCountry: strings.ToUpper(*srcCountry), DstCountry: strings.ToUpper(*dstCountry),
		SrcASN: uint32(*srcASN), DstASN: uint32(*dstASN)}
	f = c.FactsWith(db)

	// Without databases, geo conditions are judged on the --*-country and
	// --*-asn values given (unknown otherwise).
	opts := rules.Options{HaveCountry: db.HasCountry(), HaveASN: db.HasASN(), GeoFromFacts: !db.HasCountry() || !db.HasASN()}
	s, err := rules.Load(*rulesPath, opts)
	if err != nil {
		printRulesError(stderr, "explain", err)
		return 1
	}
	ex := s.Explain(&f)
	if *asJSON {
		return explainJSON(stdout, stderr, s, &f, ex)
	}
	explainText(stdout, s, &f, ex)
	return 0
}

// flowLine describes the flow as explain judged it.
func flowLine(f *rules.Facts) string {
	var b strings.Builder
	if f.Transport == rules.TransportUDP {
		b.WriteString("udp ")
	}
	fmt.Fprintf(&b, "%s %s -> %s", f.App, f.Src, f.Dst)
	add := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	add("sni", f.SNI)
	add("dns", f.DNSName)
	add("host", f.Host)
	add("method", f.Method)
	add("path", f.Path)
	add("src_country", f.SrcGeo.Country)
	add("dst_country", f.DstGeo.Country)
	if f.SrcGeo.ASN != 0 {
		add("src_asn", fmt.Sprintf("AS%d", f.SrcGeo.ASN))
	}
	if f.DstGeo.ASN != 0 {
		add("dst_asn", fmt.Sprintf("AS%d", f.DstGeo.ASN))
	}
	return b.String()
}

func explainText(w io.Writer, s *rules.Set, f *rules.Facts, ex rules.Explanation) {
	fmt.Fprintf(w, "flow:    %s\n", flowLine(f))
	fmt.Fprintf(w, "rules:   %s (%d rules, sha256 %s)\n", s.Version().Path, s.Len(), s.Version().SHA256[:12])
	width := 0
	for _, r := range ex.Rules {
		width = max(width, len(r.Name))
	}
	for i, r := range ex.Rules {
		var outcome string
		switch {
		case r.Decided:
			outcome = "match, decides"
		case r.Matched && r.Action == "alert" && !r.AfterDecision:
			outcome = "match, alert (goes on)"
		case r.Matched:
			outcome = "match (after the decision)"
		default:
			outcome = "no match: " + strings.Join(r.Failed, "; ")
		}
		fmt.Fprintf(w, "  %3d  %-*s  %-5s  line %-4d  %s\n", i+1, width, r.Name, r.Action, r.Line, outcome)
	}
	if ex.EarlyDecided {
		fmt.Fprintf(w, "early:   %s (decided from addresses, ports and geo, before inspection)\n", ex.Early)
	} else {
		fmt.Fprintf(w, "early:   undecided (a rule needing inspected facts could match)\n")
	}
	fmt.Fprintf(w, "verdict: %s\n", ex.Verdict)
}

type explainVerdictJSON struct {
	Action string   `json:"action"`
	Rule   string   `json:"rule"`
	Alerts []string `json:"alerts,omitempty"`
}

func verdictJSON(v rules.Verdict) explainVerdictJSON {
	return explainVerdictJSON{Action: v.Action.String(), Rule: v.RuleName(), Alerts: v.Alerts}
}

type explainFlowJSON struct {
	App        string `json:"app"`
	Src        string `json:"src"`
	Dst        string `json:"dst"`
	SNI        string `json:"sni,omitempty"`
	Host       string `json:"host,omitempty"`
	Method     string `json:"method,omitempty"`
	Path       string `json:"path,omitempty"`
	SrcCountry string `json:"src_country,omitempty"`
	DstCountry string `json:"dst_country,omitempty"`
	SrcASN     uint32 `json:"src_asn,omitempty"`
	DstASN     uint32 `json:"dst_asn,omitempty"`
}

func explainJSON(stdout, stderr io.Writer, s *rules.Set, f *rules.Facts, ex rules.Explanation) int {
	out := struct {
		Flow    explainFlowJSON     `json:"flow"`
		Rules   []rules.RuleTrace   `json:"rules"`
		Early   *explainVerdictJSON `json:"early"` // null: undecided
		Verdict explainVerdictJSON  `json:"verdict"`
		SHA256  string              `json:"rules_sha256"`
	}{
		Flow: explainFlowJSON{App: f.App.String(), Src: f.Src.String(), Dst: f.Dst.String(), SNI: f.SNI, Host: f.Host,
			Method: f.Method, Path: f.Path, SrcCountry: f.SrcGeo.Country, DstCountry: f.DstGeo.Country,
			SrcASN: f.SrcGeo.ASN, DstASN: f.DstGeo.ASN},
		Rules:   ex.Rules,
		Verdict: verdictJSON(ex.Verdict),
		SHA256:  s.Version().SHA256,
	}
	if out.Rules == nil {
		out.Rules = []rules.RuleTrace{}
	}
	if ex.EarlyDecided {
		v := verdictJSON(ex.Early)
		out.Early = &v
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(stderr, "netward explain: %v\n", err)
		return 1
	}
	return 0
}
