package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/rules"
)

func init() {
	register("test", "run sample flows against a rule file (for CI)", func(args []string) int {
		return testMain(args, os.Stdout, os.Stderr)
	})
}

// testMain judges every case of a cases file with the rule file and prints
// PASS/FAIL per case and a summary. Exit 0 when all pass; 1 when one fails
// or a file is invalid (errors as FILE:LINE:COL: message); 2 on usage
// errors.
func testMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rulesPath := fs.String("rules", "", "rule `file` (required)")
	country := fs.String("geoip-country", "", "country `mmdb` to look case addresses up in")
	asn := fs.String("geoip-asn", "", "ASN `mmdb` to look case addresses up in")
	quiet := fs.Bool("q", false, "print failures and the summary only")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: netward test --rules RULES.yaml [--geoip-country FILE] [--geoip-asn FILE] [-q] CASES.yaml")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *rulesPath == "" || fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	casesPath := fs.Arg(0)
	db, err := geo.Open(*country, *asn)
	if err != nil {
		fmt.Fprintf(stderr, "netward test: %v\n", err)
		return 1
	}
	defer db.Close()
	s, err := rules.Load(*rulesPath, rules.Options{HaveCountry: db.HasCountry(), HaveASN: db.HasASN(),
		GeoFromFacts: !db.HasCountry() || !db.HasASN()})
	if err != nil {
		printRulesError(stderr, "test", err)
		return 1
	}
	data, err := os.ReadFile(casesPath)
	if err != nil {
		fmt.Fprintf(stderr, "netward test: %v\n", err)
		return 1
	}
	cases, err := rules.ParseCases(casesPath, data)
	if err != nil {
		printRulesError(stderr, "test", err)
		return 1
	}
	failed := 0
	for i := range cases {
		c := &cases[i]
		got, ok, why := c.Check(s, db)
		if ok {
			if !*quiet {
				fmt.Fprintf(stdout, "PASS  %s (%s)\n", c.Name, got)
			}
			continue
		}
		failed++
		fmt.Fprintf(stdout, "FAIL  %s: %s (%s:%d)\n", c.Name, why, c.File, c.Line)
	}
	fmt.Fprintf(stdout, "%d %s: %d passed, %d failed\n", len(cases), plural(len(cases), "case", "cases"), len(cases)-failed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}
