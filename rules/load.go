package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/netward/netward/inspect"
	"gopkg.in/yaml.v3"
)

// Size limits for the files a rule file consists of. They bound the memory
// a hostile or mistaken file can make a load take.
const (
	MaxRuleFileBytes = 32 << 20
	MaxListFileBytes = 64 << 20
	MaxDenyPageBytes = 1 << 20
)

// Options say what a load may rely on.
type Options struct {
	// HaveCountry and HaveASN say whether a country / ASN database is
	// available. A rule file with src_country/dst_country (src_asn/dst_asn)
	// conditions is refused without one: its rules could never match.
	HaveCountry, HaveASN bool
	// GeoFromFacts accepts geo conditions without databases: the caller
	// (explain, test) supplies countries and ASNs in the facts itself.
	GeoFromFacts bool
	// ReadFile reads the files the rule file includes (lists, deny page).
	// nil means os.ReadFile with the size limits above.
	ReadFile func(name string) ([]byte, error)
	// Include names the file an include path p (as written in the rule
	// file) refers to, e.g. a URL resolved against the rule file's URL.
	// nil: p itself if absolute, else p relative to the rule file's
	// directory.
	Include func(p string) string
	// Now gives the load time recorded in Version; nil means time.Now.
	Now func() time.Time
}

// Load reads and compiles the rule file at path and the files it includes.
// An invalid file gives an ErrorList (every problem with its position).
func Load(path string, opts Options) (*Set, error) {
	data, err := readLimited(path, MaxRuleFileBytes)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	return Parse(path, data, opts)
}

// Parse compiles rule file data; path names it in diagnostics and is the
// base for relative include paths. It never panics on bad input.
func Parse(path string, data []byte, opts Options) (s *Set, err error) {
	defer func() {
		// yaml.v3 is well fuzzed but a parser of untrusted input must not
		// take the process down; report instead.
		if r := recover(); r != nil {
			s, err = nil, ErrorList{{File: path, Line: 1, Col: 1, Msg: fmt.Sprintf("internal error reading rule file: %v", r)}}
		}
	}()
	l := newLoader(path, opts)
	return l.load(data)
}

func readLimited(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// valueClass is the type of value a condition (or a list used by it)
// holds.
type valueClass uint8

const (
	classProto valueClass = iota
	classPort
	classIP
	classCountry
	classASN
	classApp
	classMethod
	classDomain
	classPath
	numClasses
)

var classOf = [numCondKinds]valueClass{
	condProto:   classProto,
	condDstPort: classPort, condSrcPort: classPort,
	condDst: classIP, condSrc: classIP,
	condDstCountry: classCountry, condSrcCountry: classCountry,
	condDstASN: classASN, condSrcASN: classASN,
	condApp:    classApp,
	condMethod: classMethod,
	condSNI:    classDomain, condHost: classDomain, condDomain: classDomain, condDNS: classDomain,
	condPath: classPath,
}

// values holds parsed values of one class.
type values struct {
	protos    uint8
	ports     []portRange
	prefixes  []netip.Prefix
	countries []string
	asns      []uint32
	apps      []inspect.Proto
	methods   []string
	domains   []domainPattern
	paths     []pathPattern
}

func (v *values) add(o *values) {
	v.protos |= o.protos
	v.ports = append(v.ports, o.ports...)
	v.prefixes = append(v.prefixes, o.prefixes...)
	v.countries = append(v.countries, o.countries...)
	v.asns = append(v.asns, o.asns...)
	v.apps = append(v.apps, o.apps...)
	v.methods = append(v.methods, o.methods...)
	v.domains = append(v.domains, o.domains...)
	v.paths = append(v.paths, o.paths...)
}

// parseValue parses one value of a class into v.
func parseValue(v *values, class valueClass, s string) error {
	switch class {
	case classProto:
		t, ok := ParseTransport(s)
		if !ok {
			return fmt.Errorf("bad proto %q (want tcp or udp)", s)
		}
		v.protos |= 1 << t
	case classPort:
		r, err := parsePortRange(s)
		if err != nil {
			return err
		}
		v.ports = append(v.ports, r)
	case classIP:
		p, err := parsePrefix(s)
		if err != nil {
			return err
		}
		v.prefixes = append(v.prefixes, p)
	case classCountry:
		c, err := parseCountry(s)
		if err != nil {
			return err
		}
		v.countries = append(v.countries, c)
	case classASN:
		n, err := parseASN(s)
		if err != nil {
			return err
		}
		v.asns = append(v.asns, n)
	case classApp:
		p, ok := ParseApp(strings.ToLower(strings.TrimSpace(s)))
		if !ok {
			return fmt.Errorf("bad app %q (want one of %s)%s", s, strings.Join(AppNames(), ", "), suggest(s, AppNames()))
		}
		v.apps = append(v.apps, p)
	case classMethod:
		m, err := parseMethod(s)
		if err != nil {
			return err
		}
		v.methods = append(v.methods, m)
	case classDomain:
		p, err := parseDomainPattern(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("bad domain pattern %q: %v", s, err)
		}
		v.domains = append(v.domains, p)
	case classPath:
		p, err := parsePathPattern(strings.TrimSpace(s))
		if err != nil {
			return err
		}
		v.paths = append(v.paths, p)
	}
	return nil
}

// item is one value with where it was written.
type item struct {
	value     string
	file      string
	line, col int
}

// list is a named list from the "lists:" section.
type list struct {
	name      string
	line, col int
	items     []item
	used      bool
	parsed    [numClasses]*values // per class, parsed on first use
	failed    [numClasses]bool
	domains   *domainSet // compiled, shared by conditions that use only this list
	ips       *ipSet
}

type loader struct {
	path      string
	dir       string
	opts      Options
	d         diags
	hash      hash.Hash
	lists     map[string]*list
	listNames []string
	set       *Set
	names     map[string]int // rule name → line
}

func newLoader(path string, opts Options) *loader {
	if opts.ReadFile == nil {
		opts.ReadFile = func(name string) ([]byte, error) {
			return readLimited(name, MaxListFileBytes)
		}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &loader{
		path:  path,
		dir:   filepath.Dir(path),
		opts:  opts,
		hash:  sha256.New(),
		lists: make(map[string]*list),
		names: make(map[string]int),
		set:   &Set{onInvalid: ActionDeny, files: []string{path}},
	}
}

var topKeys = []string{"default", "on_invalid", "deny_page", "lists", "rules"}
var ruleKeys = func() []string {
	k := []string{"name", "action", "description", "dns_answer", "not"}
	for _, c := range condKeys {
		k = append(k, c)
	}
	return k
}()
var listKeys = []string{"file", "items"}
var denyPageKeys = []string{"file"}

func (l *loader) errorf(n *yaml.Node, format string, args ...any) {
	line, col := 1, 1
	if n != nil {
		line, col = n.Line, n.Column
	}
	l.d.errorf(l.path, line, col, format, args...)
}

func (l *loader) warnf(n *yaml.Node, format string, args ...any) {
	l.d.warnf(l.path, n.Line, n.Column, format, args...)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError turns a yaml.v3 syntax error into a diagnostic. yaml.v3 reports
// a line but no column.
func (l *loader) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		l.d.errorf(l.path, line, 1, "YAML syntax: %s", m[2])
		return
	}
	l.d.errorf(l.path, 1, 1, "YAML syntax: %s", strings.TrimPrefix(msg, "yaml: "))
}

func (l *loader) load(data []byte) (*Set, error) {
	l.hash.Write(data)
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.d.errorf(l.path, 1, 1, "empty rule file: want at least \"default:\"")
		} else {
			l.yamlError(err)
		}
		return nil, l.d.errors()
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		l.errorf(&extra, "a rule file is one YAML document; remove the second one (after ---)")
	} else if !errors.Is(err, io.EOF) {
		l.yamlError(err)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		n := &doc
		if len(doc.Content) == 1 {
			n = doc.Content[0]
		}
		l.errorf(n, "a rule file is a mapping with default:, rules: and optionally lists:, on_invalid:, deny_page:")
		return nil, l.d.errors()
	}
	root := doc.Content[0]
	top := l.mapping(root, topKeys, "top-level key")
	if n, ok := top["lists"]; ok {
		l.loadLists(n)
	}
	if n, ok := top["default"]; ok {
		if a, ok := l.action(n, false); ok {
			l.set.def = a
		}
	} else {
		l.errorf(root, "missing \"default:\" (the action when no rule matches: allow, deny or drop)")
	}
	if n, ok := top["on_invalid"]; ok {
		if a, ok := l.action(n, false); ok {
			l.set.onInvalid = a
		}
	}
	if n, ok := top["deny_page"]; ok {
		l.loadDenyPage(n)
	}
	if l.set.denyPage == nil {
		l.set.denyPage = defaultDenyPage
	}
	if n, ok := top["rules"]; ok {
		l.loadRules(n)
	}
	for _, name := range l.listNames {
		if li := l.lists[name]; !li.used {
			l.d.warnf(l.path, li.line, li.col, "list %q is not used by any rule", name)
		}
	}
	l.checkGeo()
	if errs := l.d.errors(); len(errs) > 0 {
		return nil, errs
	}
	l.findShadowed()
	s := l.set
	s.warnings = l.d.warnings()
	s.version = Version{
		SHA256: hex.EncodeToString(l.hash.Sum(nil)),
		Loaded: l.opts.Now(),
		Rules:  len(s.rules),
		Path:   l.path,
	}
	s.lists = len(l.lists)
	for _, li := range l.lists {
		s.listItems += len(li.items)
	}
	s.buildIndex()
	return s, nil
}

// mapping checks that n is a mapping with known, unique keys and returns
// the values by key.
func (l *loader) mapping(n *yaml.Node, known []string, what string) map[string]*yaml.Node {
	out := make(map[string]*yaml.Node)
	if l.alias(n) {
		return out
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(n, "want a mapping (key: value)")
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if l.alias(k) {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			l.errorf(k, "want a plain key")
			continue
		}
		if k.Value == "<<" {
			l.errorf(k, "YAML merge keys (<<) are not supported; use lists: for shared values")
			continue
		}
		if !contains(known, k.Value) {
			l.errorf(k, "unknown %s %q%s", what, k.Value, suggest(k.Value, known))
			continue
		}
		if _, dup := out[k.Value]; dup {
			l.errorf(k, "duplicate key %q (first at line %d)", k.Value, l.keyNode(n, k.Value).Line)
			continue
		}
		out[k.Value] = v
	}
	return out
}

func (l *loader) alias(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode {
		l.errorf(n, "YAML aliases (*name) are not supported; use lists: for shared values")
		return true
	}
	return false
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// scalar returns n's value if it is a scalar.
func (l *loader) scalar(n *yaml.Node, what string) (string, bool) {
	if l.alias(n) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		l.errorf(n, "want %s", what)
		return "", false
	}
	return n.Value, true
}

func (l *loader) action(n *yaml.Node, alertOK bool) (Action, bool) {
	v, ok := l.scalar(n, "an action")
	if !ok {
		return 0, false
	}
	a, ok := ParseAction(v)
	if ok && (a != ActionAlert || alertOK) {
		return a, true
	}
	valid := []string{"allow", "deny", "drop"}
	if alertOK {
		valid = append(valid, "alert")
	}
	l.errorf(n, "bad action %q (want %s)%s", v, strings.Join(valid, ", "), suggest(v, valid))
	return 0, false
}

var listNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

func (l *loader) loadLists(n *yaml.Node) {
	if l.alias(n) {
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(n, "lists: want a mapping of list names to {file: PATH} or [values]")
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if l.alias(k) || l.alias(v) {
			continue
		}
		if k.Kind != yaml.ScalarNode || !listNameRE.MatchString(k.Value) {
			l.errorf(k, "bad list name %q (letters, digits, _ . -)", k.Value)
			continue
		}
		if _, dup := l.lists[k.Value]; dup {
			l.errorf(k, "duplicate list %q (first at line %d)", k.Value, l.lists[k.Value].line)
			continue
		}
		li := &list{name: k.Value, line: k.Line, col: k.Column}
		l.lists[k.Value] = li
		l.listNames = append(l.listNames, k.Value)
		switch v.Kind {
		case yaml.SequenceNode:
			li.items = l.sequenceItems(v)
		case yaml.MappingNode:
			m := l.mapping(v, listKeys, "list key")
			file, hasFile := m["file"]
			items, hasItems := m["items"]
			switch {
			case hasFile && hasItems:
				l.errorf(v, "list %q: give file: or items:, not both", k.Value)
			case hasFile:
				li.items = l.listFile(file)
			case hasItems:
				if items.Kind != yaml.SequenceNode {
					l.errorf(items, "items: want a list of values")
				} else {
					li.items = l.sequenceItems(items)
				}
			default:
				l.errorf(v, "list %q: want file: PATH or items: [values]", k.Value)
			}
		default:
			l.errorf(v, "list %q: want {file: PATH} or a list of values", k.Value)
		}
	}
}

func (l *loader) sequenceItems(n *yaml.Node) []item {
	var out []item
	for _, c := range n.Content {
		v, ok := l.scalar(c, "a value")
		if !ok {
			continue
		}
		out = append(out, item{value: v, file: l.path, line: c.Line, col: c.Column})
	}
	return out
}

// include reads a file named relative to the rule file and adds it to the
// version hash.
func (l *loader) include(n *yaml.Node, limit int) (name string, data []byte, ok bool) {
	p, ok := l.scalar(n, "a file path")
	if !ok {
		return "", nil, false
	}
	if p == "" {
		l.errorf(n, "empty file path")
		return "", nil, false
	}
	name = p
	if l.opts.Include != nil {
		name = l.opts.Include(p)
	} else if !filepath.IsAbs(p) {
		name = filepath.Join(l.dir, p)
	}
	data, err := l.opts.ReadFile(name)
	if err != nil {
		l.errorf(n, "read %s: %v", name, unwrapPathError(err))
		return "", nil, false
	}
	if len(data) > limit {
		l.errorf(n, "%s is larger than %d bytes", name, limit)
		return "", nil, false
	}
	l.set.files = append(l.set.files, name)
	fmt.Fprintf(l.hash, "\x00%s\x00%d\x00", name, len(data))
	l.hash.Write(data)
	return name, data, true
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// listFile reads a list file: one value per line; blank lines and
// everything after a '#' are ignored.
func (l *loader) listFile(n *yaml.Node) []item {
	name, data, ok := l.include(n, MaxListFileBytes)
	if !ok {
		return nil
	}
	var out []item
	line := 0
	for len(data) > 0 {
		line++
		var ln []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			ln, data = data[:i], data[i+1:]
		} else {
			ln, data = data, nil
		}
		if i := bytes.IndexByte(ln, '#'); i >= 0 {
			ln = ln[:i]
		}
		trimmed := bytes.TrimLeftFunc(ln, unicode.IsSpace)
		col := len(ln) - len(trimmed) + 1
		trimmed = bytes.TrimRightFunc(trimmed, unicode.IsSpace)
		if len(trimmed) == 0 {
			continue
		}
		if !utf8.Valid(trimmed) {
			l.d.errorf(name, line, col, "not valid UTF-8")
			continue
		}
		out = append(out, item{value: string(trimmed), file: name, line: line, col: col})
	}
	return out
}

const ruleNameMax = 128

func (l *loader) loadRules(n *yaml.Node) {
	if l.alias(n) {
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.SequenceNode {
		l.errorf(n, "rules: want a list of rules (each starting with \"- name:\")")
		return
	}
	for _, rn := range n.Content {
		l.loadRule(rn)
	}
}

func (l *loader) loadRule(n *yaml.Node) {
	if l.alias(n) {
		return
	}
	if (n.Kind == yaml.ScalarNode && n.Tag == "!!null") || (n.Kind == yaml.MappingNode && len(n.Content) == 0) {
		l.errorf(n, "empty rule: want at least name: and action:")
		return
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(n, "a rule is a mapping with name:, action: and conditions")
		return
	}
	m := l.mapping(n, ruleKeys, "rule key")
	r := rule{line: n.Line, col: n.Column}
	valid := true
	if v, ok := m["name"]; ok {
		if name, ok := l.ruleName(v); ok {
			r.name = name
		} else {
			valid = false
		}
	} else {
		l.errorf(n, "rule has no name:")
		valid = false
	}
	if v, ok := m["action"]; ok {
		if a, ok := l.action(v, true); ok {
			r.action = a
		} else {
			valid = false
		}
	} else {
		l.errorf(n, "rule %q has no action: (allow, deny, drop or alert)", r.name)
		valid = false
	}
	if v, ok := m["description"]; ok {
		l.scalar(v, "a description (text)")
	}
	if v, ok := m["dns_answer"]; ok {
		if s, ok := l.scalar(v, "a DNS answer (nxdomain, refused or nodata)"); ok {
			if a, ok := ParseDNSAnswer(s); ok {
				r.dnsAnswer = a
			} else {
				l.errorf(v, "bad dns_answer %q (want nxdomain, refused or nodata)%s", s, suggest(s, dnsAnswerNames[:]))
				valid = false
			}
		} else {
			valid = false
		}
	}
	for k := condKind(0); k < numCondKinds; k++ {
		if v, ok := m[condKeys[k]]; ok {
			c, ok := l.condition(k, l.keyNode(n, condKeys[k]), v, false)
			if ok {
				r.conds = append(r.conds, c)
			} else {
				valid = false
			}
		}
	}
	if nn, ok := m["not"]; ok {
		nm := l.mapping(nn, condKeys[:], "condition in not:")
		if nn.Kind == yaml.MappingNode && len(nn.Content) == 0 {
			l.errorf(nn, "empty not: block")
			valid = false
		}
		for k := condKind(0); k < numCondKinds; k++ {
			if v, ok := nm[condKeys[k]]; ok {
				c, ok := l.condition(k, l.keyNode(nn, condKeys[k]), v, true)
				if ok {
					r.conds = append(r.conds, c)
				} else {
					valid = false
				}
			}
		}
	}
	if !valid {
		return
	}
	sort.SliceStable(r.conds, func(i, j int) bool { return r.conds[i].kind < r.conds[j].kind })
	for _, c := range r.conds {
		if !c.kind.isL7() {
			r.nL34++
		}
		l.set.needs[c.kind] = true
	}
	l.set.rules = append(l.set.rules, r)
}

// keyNode returns the key node for key in mapping n (for positions).
func (l *loader) keyNode(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i]
		}
	}
	return n
}

func (l *loader) ruleName(n *yaml.Node) (string, bool) {
	name, ok := l.scalar(n, "a rule name")
	if !ok {
		return "", false
	}
	switch {
	case name == "":
		l.errorf(n, "empty rule name")
		return "", false
	case len(name) > ruleNameMax:
		l.errorf(n, "rule name longer than %d bytes", ruleNameMax)
		return "", false
	case strings.HasPrefix(name, "("):
		l.errorf(n, "rule names cannot start with '(' (reserved for %s)", RuleOnInvalid)
		return "", false
	case strings.TrimSpace(name) != name:
		l.errorf(n, "rule name %q has leading or trailing space", name)
		return "", false
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			l.errorf(n, "rule name %q has a non-printable character", name)
			return "", false
		}
	}
	if first, dup := l.names[name]; dup {
		l.errorf(n, "duplicate rule name %q (first at line %d)", name, first)
		return "", false
	}
	l.names[name] = n.Line
	return name, true
}

// condition compiles one condition from its value node (a scalar or a list
// of scalars; "$name" values refer to lists).
func (l *loader) condition(k condKind, key, n *yaml.Node, neg bool) (cond, bool) {
	c := cond{kind: k, neg: neg, line: key.Line, col: key.Column}
	if l.alias(n) {
		return c, false
	}
	var nodes []*yaml.Node
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag != "!!null":
		nodes = []*yaml.Node{n}
	case n.Kind == yaml.SequenceNode:
		nodes = n.Content
	default:
		l.errorf(n, "%s: want a value or a list of values", k)
		return c, false
	}
	if len(nodes) == 0 {
		l.errorf(n, "%s: empty list (it would never match); remove the condition or add values", k)
		return c, false
	}
	class := classOf[k]
	var vals values
	var only *list // set if the condition is exactly one list reference
	ok := true
	for _, vn := range nodes {
		s, isScalar := l.scalar(vn, "a value")
		if !isScalar {
			ok = false
			continue
		}
		c.values = append(c.values, s)
		if strings.HasPrefix(s, "$") {
			li := l.useList(vn, s[1:], class)
			if li == nil {
				ok = false
				continue
			}
			if len(nodes) == 1 {
				only = li
			} else {
				vals.add(li.parsed[class])
			}
			continue
		}
		if err := parseValue(&vals, class, s); err != nil {
			l.errorf(vn, "%s: %v", k, err)
			ok = false
		}
	}
	if !ok {
		return c, false
	}
	if only != nil {
		vals = *only.parsed[class]
	}
	switch class {
	case classProto:
		c.protos = vals.protos
	case classPort:
		c.ports = newPortSet(vals.ports)
	case classIP:
		if only != nil && only.ips != nil {
			c.ips = only.ips
			break
		}
		s, err := newIPSet(vals.prefixes)
		if err != nil {
			l.errorf(n, "%s: %v", k, err)
			return c, false
		}
		c.ips = s
		if only != nil {
			only.ips = s
		}
	case classCountry:
		c.countries = new(countrySet)
		for _, x := range vals.countries {
			c.countries.add(x)
		}
	case classASN:
		c.asns = newASNSet(vals.asns)
	case classApp:
		for _, p := range vals.apps {
			if p < 64 {
				c.apps |= 1 << uint8(p)
			}
		}
	case classMethod:
		c.methods = uniqueStrings(vals.methods)
	case classDomain:
		if only != nil && only.domains != nil {
			c.domains = only.domains
			break
		}
		d := newDomainSet()
		for _, p := range vals.domains {
			d.add(p)
		}
		c.domains = d
		if only != nil {
			only.domains = d
		}
	case classPath:
		c.paths = vals.paths
	}
	return c, true
}

// useList resolves a "$name" reference and parses the list's values for
// class (once per list and class; errors point into the list).
func (l *loader) useList(n *yaml.Node, name string, class valueClass) *list {
	li, ok := l.lists[name]
	if !ok {
		l.errorf(n, "unknown list %q%s", name, suggest(name, l.listNames))
		return nil
	}
	li.used = true
	if li.failed[class] {
		return nil
	}
	if li.parsed[class] != nil {
		return li
	}
	if len(li.items) == 0 {
		l.errorf(n, "list %q is empty (it would never match)", name)
		li.failed[class] = true
		return nil
	}
	v := new(values)
	for _, it := range li.items {
		if strings.HasPrefix(it.value, "$") {
			l.d.errorf(it.file, it.line, it.col, "lists cannot refer to other lists (%s)", it.value)
			li.failed[class] = true
			continue
		}
		if err := parseValue(v, class, it.value); err != nil {
			l.d.errorf(it.file, it.line, it.col, "list %s: %v", name, err)
			li.failed[class] = true
		}
	}
	if li.failed[class] {
		return nil
	}
	li.parsed[class] = v
	return li
}

func uniqueStrings(s []string) []string {
	var out []string
	for _, x := range s {
		if !contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// checkGeo refuses geo conditions without the database they need.
func (l *loader) checkGeo() {
	if l.opts.GeoFromFacts {
		return
	}
	for _, r := range l.set.rules {
		for _, c := range r.conds {
			switch c.kind {
			case condSrcCountry, condDstCountry:
				if !l.opts.HaveCountry {
					l.d.errorf(l.path, c.line, c.col, "%s needs a country database, and none is configured (--geoip-country)", c.kind)
				}
			case condSrcASN, condDstASN:
				if !l.opts.HaveASN {
					l.d.errorf(l.path, c.line, c.col, "%s needs an ASN database, and none is configured (--geoip-asn)", c.kind)
				}
			}
		}
	}
}
