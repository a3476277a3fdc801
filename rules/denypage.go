package rules

import (
	"bytes"
	"html/template"
	"io"

	"gopkg.in/yaml.v3"
)

// DenyPageData is what a deny page template can show. Every field is
// escaped for HTML by html/template; Host, Method and Path come from the
// client and must not be trusted.
type DenyPageData struct {
	Rule   string // the deciding rule's name ("default" for the default)
	Host   string // the request's Host header (or SNI)
	Method string
	Path   string
	Client string // client address
	Server string // original destination address
}

type denyPage struct {
	tmpl *template.Template
}

// DefaultDenyPage is the deny page template used when the rule file has no
// deny_page.
const DefaultDenyPage = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>403 Forbidden</title></head>
<body>
<h1>403 Forbidden</h1>
<p>The request to {{.Host}} was blocked by the network policy (rule <code>{{.Rule}}</code>).</p>
<p>If you think this is a mistake, contact your network administrators and name the rule.</p>
</body>
</html>
`

var defaultDenyPage = func() *denyPage {
	p, err := compileDenyPage(DefaultDenyPage)
	if err != nil {
		panic("rules: default deny page: " + err.Error())
	}
	return p
}()

func compileDenyPage(text string) (*denyPage, error) {
	t, err := template.New("deny_page").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	// Execute once on sample data so a reference to an unknown field is a
	// load error, not a broken page at the first deny.
	sample := DenyPageData{Rule: "r", Host: "h", Method: "GET", Path: "/", Client: "192.0.2.1:1", Server: "192.0.2.2:80"}
	if err := t.Execute(io.Discard, sample); err != nil {
		return nil, err
	}
	return &denyPage{tmpl: t}, nil
}

// DenyPage renders the deny page (the HTML body of the 403 response) for
// data. The template was checked at load, so an error here is unexpected;
// the caller should still send a plain 403.
func (s *Set) DenyPage(data DenyPageData) ([]byte, error) {
	var b bytes.Buffer
	if err := s.denyPage.tmpl.Execute(&b, data); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// loadDenyPage reads deny_page: an inline template (a string) or
// {file: PATH}.
func (l *loader) loadDenyPage(n *yaml.Node) {
	var text string
	switch {
	case n.Kind == yaml.MappingNode:
		m := l.mapping(n, denyPageKeys, "deny_page key")
		f, ok := m["file"]
		if !ok {
			l.errorf(n, "deny_page: want a template text or {file: PATH}")
			return
		}
		_, data, ok := l.include(f, MaxDenyPageBytes)
		if !ok {
			return
		}
		text = string(data)
	default:
		v, ok := l.scalar(n, "a template text or {file: PATH}")
		if !ok {
			return
		}
		text = v
	}
	p, err := compileDenyPage(text)
	if err != nil {
		l.errorf(n, "deny_page: %v", err)
		return
	}
	l.set.denyPage = p
}
