package relay

import (
	"github.com/netward/netward/rules"
)

// plainDeny is the 403 sent when there is no policy to render the rule
// file's deny page (only on_invalid verdicts refuse then).
const plainDeny = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n403 Forbidden\n"

// denyResponse is the whole HTTP response for a denied request: 403 with
// the rule file's page naming the rule, and Connection: close.
func (gf *guardFlow) denyResponse(v rules.Verdict) []byte {
	if gf.g.Policy == nil {
		return []byte(plainDeny)
	}
	return gf.g.Policy.DenyResponse(v, &gf.facts)
}
