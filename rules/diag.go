package rules

import (
	"fmt"
	"sort"
	"strings"
)

// Diagnostic is one problem found in a rule file (or a file it includes),
// with the position it refers to. Line and Col are 1-based.
type Diagnostic struct {
	File      string
	Line, Col int
	Msg       string
	Warning   bool // a warning does not make the file invalid
}

func (d Diagnostic) String() string {
	kind := ""
	if d.Warning {
		kind = "warning: "
	}
	return fmt.Sprintf("%s:%d:%d: %s%s", d.File, d.Line, d.Col, kind, d.Msg)
}

// ErrorList is the error Load and Parse return for an invalid rule file:
// every error found, in file order, each printing as FILE:LINE:COL: message.
type ErrorList []Diagnostic

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, d := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(d.String())
	}
	return b.String()
}

// diags collects diagnostics during a load.
type diags struct {
	list []Diagnostic
}

func (d *diags) errorf(file string, line, col int, format string, args ...any) {
	d.list = append(d.list, Diagnostic{File: file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)})
}

func (d *diags) warnf(file string, line, col int, format string, args ...any) {
	d.list = append(d.list, Diagnostic{File: file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...), Warning: true})
}

func (d *diags) errors() ErrorList {
	var out ErrorList
	for _, x := range d.list {
		if !x.Warning {
			out = append(out, x)
		}
	}
	sortDiags(out)
	return out
}

func (d *diags) warnings() []Diagnostic {
	var out []Diagnostic
	for _, x := range d.list {
		if x.Warning {
			out = append(out, x)
		}
	}
	sortDiags(out)
	return out
}

// sortDiags orders by file (the rule file's diagnostics interleave with its
// lists' only by file name), then position; stable so equal positions keep
// the order they were found in.
func sortDiags(l []Diagnostic) {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// suggest returns " (did you mean "x"?)" naming the candidate closest to s,
// or "" if none is close enough to be a likely typo.
func suggest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	ls := strings.ToLower(s)
	for _, c := range candidates {
		if d := editDistance(ls, strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	limit := 2
	if len(s) <= 3 {
		limit = 1
	}
	if best == "" || bestD > limit || bestD >= len(s) {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b, counting an adjacent
// transposition as one edit.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		if a == b {
			return 0
		}
		return 1 << 20
	}
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

func sortStrings(s []string) { sort.Strings(s) }
