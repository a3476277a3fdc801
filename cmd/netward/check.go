package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/rules"
)

func init() {
	register("check", "validate a rule file", func(args []string) int {
		return checkMain(args, os.Stdout, os.Stderr)
	})
}

// checkMain validates a rule file: exit 0 and a one-line summary (warnings
// on stderr), or every error as FILE:LINE:COL: message on stderr and exit
// 1. Usage errors exit 2.
func checkMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	country := fs.String("geoip-country", "", "country `mmdb` to check country conditions against")
	asn := fs.String("geoip-asn", "", "ASN `mmdb` to check ASN conditions against")
	strict := fs.Bool("strict", false, "exit 1 on warnings too")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: netward check [--geoip-country FILE] [--geoip-asn FILE] [--strict] RULES.yaml")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	path := fs.Arg(0)
	db, err := geo.Open(*country, *asn)
	if err != nil {
		fmt.Fprintf(stderr, "netward check: %v\n", err)
		return 1
	}
	defer db.Close()
	s, err := rules.Load(path, rules.Options{HaveCountry: db.HasCountry(), HaveASN: db.HasASN()})
	if err != nil {
		printRulesError(stderr, "check", err)
		return 1
	}
	for _, w := range s.Warnings() {
		fmt.Fprintln(stderr, w)
	}
	fmt.Fprintln(stdout, rulesSummary(path, s))
	if *strict && len(s.Warnings()) > 0 {
		return 1
	}
	return 0
}

// printRulesError prints a load error: each diagnostic on its own line, or
// the error prefixed with the command.
func printRulesError(w io.Writer, cmd string, err error) {
	var el rules.ErrorList
	if errors.As(err, &el) {
		for _, d := range el {
			fmt.Fprintln(w, d)
		}
		return
	}
	fmt.Fprintf(w, "netward %s: %v\n", cmd, err)
}

// rulesSummary is the one-line description of a valid rule file.
func rulesSummary(path string, s *rules.Set) string {
	lists, entries := s.Lists()
	v := s.Version()
	warn := ""
	if n := len(s.Warnings()); n > 0 {
		warn = fmt.Sprintf(", %d %s", n, plural(n, "warning", "warnings"))
	}
	return fmt.Sprintf("%s: ok: %d %s, %d %s (%d %s), default %s, on_invalid %s, sha256 %s%s",
		path, v.Rules, plural(v.Rules, "rule", "rules"), lists, plural(lists, "list", "lists"),
		entries, plural(entries, "entry", "entries"), s.Default(), s.OnInvalid(), v.SHA256[:12], warn)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
