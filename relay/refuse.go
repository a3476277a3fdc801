package relay

import (
	"strconv"
	"strings"

	"github.com/netward/netward/rules"
)

// tlsAlertAccessDenied is a TLS record holding one fatal access_denied
// alert (RFC 8446 §6.2: alert level 2, description 49), what a client shows
// as "access denied". version is the ClientHello's legacy_version; the
// record carries it, capped at TLS 1.2 as RFC 8446 §5.1 asks of TLS 1.3
// (legacy_record_version).
func tlsAlertAccessDenied(version uint16) []byte {
	if version < 0x0301 || version > 0x0303 {
		version = 0x0303
	}
	return []byte{0x15, byte(version >> 8), byte(version), 0x00, 0x02, 0x02, 49}
}

// denyPage is the whole HTTP response for a denied request: 403, the rule
// file's page naming the rule, and Connection: close.
func (gf *guardFlow) denyPage(v rules.Verdict) []byte {
	data := rules.DenyPageData{
		Rule: v.RuleName(), Host: gf.facts.Host, Method: gf.facts.Method, Path: gf.facts.Path,
		Client: gf.f.Client.String(), Server: gf.f.Server.String(),
	}
	var body []byte
	if set := gf.g.rules(); set != nil {
		if b, err := set.DenyPage(data); err == nil {
			body = b
		} else if gf.g.Log != nil {
			gf.g.Log.Warn("deny page template failed; sending a plain page", "rule", data.Rule, "error", err)
		}
	}
	if body == nil {
		body = []byte("403 Forbidden: blocked by netward rule " + data.Rule + "\n")
	}
	var b strings.Builder
	b.Grow(160 + len(body))
	b.WriteString("HTTP/1.1 403 Forbidden\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteString("\r\nCache-Control: no-store\r\nConnection: close\r\nX-Netward-Rule: ")
	b.WriteString(headerSafe(data.Rule))
	b.WriteString("\r\n\r\n")
	b.Write(body)
	return []byte(b.String())
}

// headerSafe keeps a rule name to the bytes a header value may hold.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r > 0x7e {
			return '_'
		}
		return r
	}, s)
}
