package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// ruleDeniedByBase reports whether base.yaml denies an HTTP request the
// application answered (Host, method or path): such a request must never
// reach the application.
func ruleDeniedByBase(q ruleAppRequest) bool {
	host := strings.ToLower(strings.TrimSuffix(q.Host, "."))
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	return host == "blocked.example" || q.Method == "DELETE" || strings.HasPrefix(q.Path, "/admin/")
}

// testHTTPEvasion sends, on one connection each, request sequences that
// try to get a denied request (Host blocked.example, DELETE, /admin/)
// past netward: pipelining, bodies that hide a request, a refused
// protocol upgrade, ambiguous framing and Host forms servers read in
// another way. Whatever the client gets back, the application must not
// answer a denied request; when the application answered nothing at all,
// netward must have refused (not a silent pass-through of garbage).
func (r *ruleLab) testHTTPEvasion(t *testing.T) {
	const good = "Host: good.example\r\n"
	for _, tc := range []struct {
		name string
		// steps are written in turn; after each but the last the client
		// reads one response (keep-alive), after the last it reads until
		// EOF.
		steps []string
	}{
		{"Pipelined", []string{"GET /one HTTP/1.1\r\n" + good + "\r\nGET /admin/two HTTP/1.1\r\n" + good + "\r\n"}},
		{"PipelinedAfterBody", []string{"POST /one HTTP/1.1\r\n" + good + "Content-Length: 5\r\n\r\nhelloDELETE /two HTTP/1.1\r\n" + good + "\r\n"}},
		{"PipelinedAfterChunked", []string{"POST /one HTTP/1.1\r\n" + good + "Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET /two HTTP/1.1\r\nHost: blocked.example\r\n\r\n"}},
		{"CLAndTE", []string{"POST /one HTTP/1.1\r\n" + good + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/two HTTP/1.1\r\n" + good + "\r\n"}},
		{"AbsoluteFormHost", []string{"GET http://blocked.example/one HTTP/1.1\r\n" + good + "Connection: close\r\n\r\n"}},
		{"DuplicateHost", []string{"GET /one HTTP/1.1\r\n" + good + "Host: blocked.example\r\nConnection: close\r\n\r\n"}},
		{"HostTabAndSpace", []string{"GET /one HTTP/1.1\r\nHost:\tblocked.example \r\nConnection: close\r\n\r\n"}},
		{"BareLF", []string{"GET /admin/one HTTP/1.1\n" + "Host: good.example\n\n"}},
		{"HTTP10NoHost", []string{"GET /admin/one HTTP/1.0\r\n\r\n"}},
		{"LeadingEmptyLines", []string{"\r\n\r\nGET /admin/one HTTP/1.1\r\n" + good + "Connection: close\r\n\r\n"}},
		{"UnknownMethodLongTarget", []string{"XGET /admin/" + strings.Repeat("a", 6000) + " HTTP/1.1\r\n" + good + "Connection: close\r\n\r\n"}},
		{"AbsoluteFormUserinfo", []string{"GET http://good.example@blocked.example/one HTTP/1.1\r\n" + good + "Connection: close\r\n\r\n"}},
		// RFC 9112 §2.3: a server treats a higher HTTP/1.x minor version
		// as the highest it knows; Go's server answers HTTP/1.2 as 1.1.
		{"HTTP12", []string{"GET /admin/one HTTP/1.2\r\n" + good + "Connection: close\r\n\r\n"}},
		{"UnknownMethodHTTP12", []string{"XGET /admin/one HTTP/1.2\r\nHost: blocked.example\r\nConnection: close\r\n\r\n"}},
		{"LowerCaseMethod", []string{"delete /one HTTP/1.1\r\n" + good + "Connection: close\r\n\r\n"}},
		// The server answers the upgrade request with 200, not 101: the
		// connection stays HTTP/1.1 and the next request must be judged
		// (inspect.Request.Upgrade's documented contract).
		{"RefusedUpgrade", []string{
			"GET /ws HTTP/1.1\r\n" + good + "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			"GET /admin/after-upgrade HTTP/1.1\r\nHost: blocked.example\r\nConnection: close\r\n\r\n"}},
		// The same for a CONNECT the server refuses (405).
		{"RefusedCONNECT", []string{
			"CONNECT good.example:443 HTTP/1.1\r\nHost: good.example:443\r\n\r\n",
			"GET /admin/after-connect HTTP/1.1\r\nHost: blocked.example\r\nConnection: close\r\n\r\n"}},
		{"RefusedH2CUpgrade", []string{
			"GET /h2c HTTP/1.1\r\n" + good + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
			"GET /admin/after-h2c HTTP/1.1\r\nHost: blocked.example\r\nConnection: close\r\n\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := r.app.mark()
			c, err := ruleDial(r.lab.Client, netip.Addr{}, ruleHTTPDst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			br := bufio.NewReader(c)
			var got []string
			for i, step := range tc.steps {
				if _, err := io.WriteString(c, step); err != nil {
					got = append(got, "write: "+err.Error())
					break
				}
				if i < len(tc.steps)-1 {
					method, _, _ := strings.Cut(step, " ")
					resp, body, err := ruleReadResponse(br, method)
					if err != nil {
						got = append(got, err.Error())
						break
					}
					got = append(got, resp.Status+" "+ruleFirstLine(body))
				}
			}
			rest, _ := io.ReadAll(br)
			got = append(got, ruleStatusLines(string(rest)))
			c.Close()
			f := r.waitFlow(t, local.String(), func(f ruleFlowLine) bool { return f.Src == local.String() && f.Dst == ruleHTTPDst.String() })
			_, reqs := r.app.since(mark)
			for _, q := range reqs {
				if ruleDeniedByBase(q) {
					t.Errorf("the application answered a denied request: %s %s Host %q (netward: %s by %s)", q.Method, q.Path, q.Host, f.Verdict, f.Rule)
				}
			}
			if len(reqs) == 0 && f.Verdict == "allow" {
				t.Errorf("netward allowed the flow but the application answered nothing")
			}
			t.Logf("netward %s by %q; application answered %d requests; client got %q", f.Verdict, f.Rule, len(reqs), got)
		})
	}
}

func ruleFirstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// ruleStatusLines summarises raw responses: their status lines.
func ruleStatusLines(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "HTTP/") || strings.HasPrefix(l, "app ok") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, " | ")
}

// testHTTPSwitch: after a 101 to an Upgrade and a 200 to a CONNECT the
// connection is no longer HTTP: what the client sends next (WebSocket
// frames, TLS) passes unjudged to the application, which echoes it. (The
// refused switches are in testHTTPEvasion.)
func (r *ruleLab) testHTTPSwitch(t *testing.T) {
	// A masked WebSocket text frame "hello" (RFC 6455 §5.7) and the start
	// of a TLS record: neither is HTTP.
	wsFrame := "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
	tlsBytes := "\x16\x03\x01\x00\x05hello"
	for _, tc := range []struct {
		name, req, method string
		status            int
		data              string
	}{
		{"Upgrade101", "GET /upgrade HTTP/1.1\r\nHost: good.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "GET", 101, wsFrame},
		{"CONNECT200", "CONNECT " + ruleTunnelHost + " HTTP/1.1\r\nHost: " + ruleTunnelHost + "\r\n\r\n", "CONNECT", 200, tlsBytes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ruleDial(r.lab.Client, netip.Addr{}, ruleHTTPDst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			br := bufio.NewReader(c)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			// Read the status line and headers only: after them come raw
			// bytes, not a body.
			var head []string
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("reading the answer to %s: %v (got %q)", tc.name, err, head)
				}
				if line == "\r\n" {
					break
				}
				head = append(head, strings.TrimSpace(line))
			}
			if want := fmt.Sprintf("HTTP/1.1 %d ", tc.status); len(head) == 0 || !strings.HasPrefix(head[0], want) {
				t.Fatalf("answer %q, want %s…", head, want)
			}
			if _, err := io.WriteString(c, tc.data); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			echo, err := io.ReadAll(br)
			if err != nil || string(echo) != tc.data {
				t.Errorf("after the switch the application echoed %q (%v), want %q", echo, err, tc.data)
			}
			c.Close()
			r.requireVerdict(t, local, ruleHTTPDst, "allow", "default")
		})
	}
}
