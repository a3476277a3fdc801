package inspect

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

var httpCaptureTests = []struct {
	file          string
	method, path  string
	host, ua      string
	contentLength int64
	h2c           bool
}{
	{"chromium-get.bin", "GET", "/index.html", "x.example",
		"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36", 0, false},
	{"curl-get.bin", "GET", "/path/to", "x.example", "curl/7.88.1", 0, false},
	{"curl-post.bin", "POST", "/form", "x.example", "curl/7.88.1", 7, false},
	{"curl-chunked.bin", "POST", "/upload", "x.example", "curl/7.88.1", -1, false},
	{"curl-h2c-upgrade.bin", "GET", "/", "x.example", "curl/7.88.1", 0, true},
	{"curl-proxy-absolute.bin", "GET", "/abs", "x.example", "curl/7.88.1", 0, false},
	{"go-get.bin", "GET", "/path/to", "x.example", "Go-http-client/1.1", 0, false},
	{"python-urllib.bin", "GET", "/py", "127.0.0.1", "Python-urllib/3.11", 0, false},
	{"node-get.bin", "GET", "/node", "x.example", "", 0, false},
	{"wget-get.bin", "GET", "/wget", "x.example", "Wget/1.21.3", 0, false},
}

func TestHTTPCaptures(t *testing.T) {
	for _, tt := range httpCaptureTests {
		t.Run(tt.file, func(t *testing.T) {
			in := mustRead(t, "testdata/http/"+tt.file)
			for _, chunks := range [][][]byte{{in}, randomSplitsOf(in, 1), randomSplits(in, 5)} {
				var p HTTPParser
				r := runHTTP(t, &p, chunks)
				if r.err != nil || len(r.events) != 1 || r.consumed != len(in) {
					t.Fatalf("err %v, %d requests, consumed %d of %d", r.err, len(r.events), r.consumed, len(in))
				}
				req := r.events[0].req
				if req.Method != tt.method || req.Path != tt.path || req.Host != tt.host || req.UserAgent != tt.ua ||
					req.ContentLength != tt.contentLength || req.H2CUpgrade != tt.h2c || req.Version != "HTTP/1.1" {
					t.Errorf("got %+v", req)
				}
				if want := int(tt.contentLength); want > 0 && r.events[0].end != len(in)-want {
					t.Errorf("head ends at %d, want %d", r.events[0].end, len(in)-want)
				}
			}
		})
	}
}

// wantReq is what a test expects of one request head.
type wantReq struct {
	method, path, host string
}

type httpCase struct {
	name string
	in   string
	opts HTTPOptions
	reqs []wantReq
	err  error // final error (a *ParseError value), nil if none
	// check runs on the requests, for cases that need more than wantReq.
	check func(t *testing.T, r httpResult)
}

func httpCases() []httpCase {
	get := func(host, path string) wantReq { return wantReq{"GET", path, host} }
	long := strings.Repeat("a", 600)
	small := HTTPOptions{MaxHeaderBytes: 1024, MaxLineBytes: 256, MaxHeaders: 4}
	return []httpCase{
		{name: "simple", in: "GET /a?b=c HTTP/1.1\r\nHost: a.example\r\n\r\n", reqs: []wantReq{get("a.example", "/a")}},
		{name: "pipelined to two hosts", in: "GET /a HTTP/1.1\r\nHost: a.example\r\n\r\nGET /b HTTP/1.1\r\nHost: b.example\r\n\r\n",
			reqs: []wantReq{get("a.example", "/a"), get("b.example", "/b")}},
		{name: "Content-Length body then request",
			in:   "POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\nHost: b.example\r\n\r\n",
			reqs: []wantReq{{"POST", "/x", "a.example"}, get("b.example", "/y")},
			check: func(t *testing.T, r httpResult) {
				if r.events[1].end != len("POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\nHost: b.example\r\n\r\n") {
					t.Errorf("second head ends at %d", r.events[1].end)
				}
			}},
		{name: "request inside a body is body",
			in:   "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 42\r\n\r\nGET /evil HTTP/1.1\r\nHost: evil.example\r\n\r\n",
			reqs: []wantReq{{"POST", "/", "a.example"}},
			check: func(t *testing.T, r httpResult) {
				if r.consumed != len("POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 42\r\n\r\nGET /evil HTTP/1.1\r\nHost: evil.example\r\n\r\n") {
					t.Errorf("consumed %d", r.consumed)
				}
			}},
		{name: "chunked body then request",
			in: "POST /u HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5\r\nhello\r\n6;name=\"v\"\r\n world\r\nA \t;x\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n" +
				"GET /next HTTP/1.1\r\nHost: b.example\r\n\r\n",
			reqs: []wantReq{{"POST", "/u", "a.example"}, get("b.example", "/next")}},
		{name: "request inside chunk data is body",
			in: "POST /u HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: Chunked\r\n\r\n" +
				"22\r\nGET /evil HTTP/1.1\r\nHost: evil\r\n\r\n\r\n0\r\n\r\n",
			reqs: []wantReq{{"POST", "/u", "a.example"}}},
		{name: "leading empty lines", in: "\r\n\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n", reqs: []wantReq{get("a.example", "/")}},
		{name: "HTTP/1.0 without Host", in: "GET /old HTTP/1.0\r\n\r\n", reqs: []wantReq{get("", "/old")}},
		{name: "empty Host", in: "GET / HTTP/1.1\r\nHost:\r\n\r\n", reqs: []wantReq{get("", "/")}},
		{name: "Host normalised", in: "GET / HTTP/1.1\r\nHOST: WWW.Example.COM.:8080\r\n\r\n", reqs: []wantReq{get("www.example.com", "/")},
			check: func(t *testing.T, r httpResult) {
				if r.events[0].req.HostRaw != "WWW.Example.COM.:8080" {
					t.Errorf("HostRaw %q", r.events[0].req.HostRaw)
				}
			}},
		{name: "Host IPv6", in: "GET / HTTP/1.1\r\nHost: [2001:DB8::1]:8080\r\n\r\n", reqs: []wantReq{get("2001:db8::1", "/")}},
		{name: "Host IPv4 with port", in: "GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", reqs: []wantReq{get("192.0.2.1", "/")}},
		{name: "absolute-form", in: "GET http://Example.COM:8080/p/q?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", reqs: []wantReq{get("example.com", "/p/q")}},
		{name: "absolute-form https, no path", in: "GET HTTPS://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", reqs: []wantReq{get("a.example", "/")}},
		{name: "absolute-form, query only", in: "GET http://a.example?x HTTP/1.1\r\nHost: a.example\r\n\r\n", reqs: []wantReq{get("a.example", "/")}},
		{name: "absolute-form HTTP/1.0 without Host", in: "GET http://a.example/x HTTP/1.0\r\n\r\n", reqs: []wantReq{get("a.example", "/x")}},
		{name: "absolute-form authority differs from Host", in: "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", err: errHTTPHostMismatch},
		{name: "absolute-form with userinfo", in: "GET http://b.example@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: errHTTPHostEncoding},
		{name: "absolute-form ftp", in: "GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: errHTTPTarget},
		{name: "absolute-form empty authority", in: "GET http:///x HTTP/1.1\r\nHost: a.example\r\n\r\n", err: errHTTPTarget},
		{name: "CONNECT", in: "CONNECT A.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", reqs: []wantReq{{"CONNECT", "", "a.example"}}},
		{name: "CONNECT without port", in: "CONNECT a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", err: errHTTPTarget},
		{name: "CONNECT origin-form", in: "CONNECT /x HTTP/1.1\r\nHost: a.example\r\n\r\n", err: errHTTPTarget},
		{name: "OPTIONS *", in: "OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n", reqs: []wantReq{{"OPTIONS", "*", "a.example"}}},
		{name: "GET *", in: "GET * HTTP/1.1\r\nHost: a.example\r\n\r\n", err: errHTTPTarget},
		{name: "h2c upgrade then preface",
			in: "GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n" +
				h2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00",
			reqs: []wantReq{get("a.example", "/"), {"PRI", "*", ""}}, err: errHTTPUpgraded,
			check: func(t *testing.T, r httpResult) {
				if !r.events[0].req.H2CUpgrade || r.events[0].req.Upgrade != "h2c" || !r.events[1].req.H2Preface {
					t.Errorf("%+v", r.events)
				}
			}},
		{name: "preface first", in: h2Preface, reqs: []wantReq{{"PRI", "*", ""}}, err: errHTTPUpgraded},
		{name: "preface without upgrade", in: "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n" + h2Preface, reqs: []wantReq{get("a.example", "/")}, err: errHTTPPreface},
		{name: "broken preface", in: "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", err: errHTTPPreface},
		{name: "websocket upgrade", in: "GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", reqs: []wantReq{get("a.example", "/ws")},
			check: func(t *testing.T, r httpResult) {
				if r.events[0].req.Upgrade != "websocket" || r.events[0].req.H2CUpgrade {
					t.Errorf("%+v", r.events[0].req)
				}
			}},
		{name: "User-Agent and Referer, first wins", in: "GET / HTTP/1.1\r\nHost: a.example\r\nuser-agent:  UA/1 \r\nReferer: http://r.example/\r\nUser-Agent: UA/2\r\n\r\n",
			reqs: []wantReq{get("a.example", "/")},
			check: func(t *testing.T, r httpResult) {
				if q := r.events[0].req; q.UserAgent != "UA/1" || q.Referer != "http://r.example/" {
					t.Errorf("%+v", q)
				}
			}},
		{name: "HTTP/1.2 is read as 1.1", in: "XGET /admin HTTP/1.2\r\nHost: a.example\r\n\r\n", reqs: []wantReq{{"XGET", "/admin", "a.example"}},
			check: func(t *testing.T, r httpResult) {
				if r.events[0].req.Version != "HTTP/1.2" {
					t.Errorf("version %q", r.events[0].req.Version)
				}
			}},
		{name: "HTTP/1.9 without Host", in: "GET / HTTP/1.9\r\n\r\n", err: errHTTPNoHost},
		{name: "lower-case method is a token", in: "get / HTTP/1.1\r\nHost: a.example\r\n\r\n", reqs: []wantReq{{"get", "/", "a.example"}}},
		{name: "obs-text in value", in: "GET / HTTP/1.1\r\nHost: a.example\r\nX: caf\xc3\xa9\r\n\r\n", reqs: []wantReq{get("a.example", "/")}},

		// Ambiguous: the request smuggling shapes.
		{name: "two Host headers", in: "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", err: errHTTPDupHost},
		{name: "two equal Host headers", in: "GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", err: errHTTPDupHost},
		{name: "CL and TE", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", err: errHTTPCLTE},
		{name: "TE and CL", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", err: errHTTPCLTE},
		{name: "two Content-Length", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", err: errHTTPDupCL},
		{name: "Content-Length list", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", err: errHTTPBadCL},
		{name: "Content-Length sign", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", err: errHTTPBadCL},
		{name: "Content-Length negative", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", err: errHTTPBadCL},
		{name: "Content-Length hex", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", err: errHTTPBadCL},
		{name: "Content-Length empty", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  \r\n\r\n", err: errHTTPBadCL},
		{name: "Content-Length overflow", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", err: errHTTPBadCL},
		{name: "TE not chunked", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", err: errHTTPBadTE},
		{name: "TE chunked twice", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", err: errHTTPBadTE},
		{name: "TE xchunked", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", err: errHTTPBadTE},
		{name: "two TE lines", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", err: errHTTPDupTE},
		{name: "TE in HTTP/1.0", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", err: errHTTPTE10},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: a.example\r\nX: a\r\n b\r\n\r\n", err: errHTTPObsFold},
		{name: "whitespace after request line", in: "GET / HTTP/1.1\r\n Host: a.example\r\n\r\n", err: errHTTPObsFold},
		{name: "space before colon", in: "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", err: errHTTPSpaceColon},
		{name: "tab before colon", in: "GET / HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\nHost: a\r\n\r\n", err: errHTTPSpaceColon},
		{name: "bare CR in value", in: "GET / HTTP/1.1\r\nHost: a.example\r\nX: a\rb\r\n\r\n", err: errHTTPBareCR},
		{name: "bare CR in request line", in: "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPBareCR},
		{name: "bare LF", in: "GET / HTTP/1.1\nHost: a.example\n\n", err: errHTTPBareLF},
		{name: "bare LF after headers", in: "GET / HTTP/1.1\r\nHost: a.example\r\n\n", err: errHTTPBareLF},
		{name: "percent in Host", in: "GET / HTTP/1.1\r\nHost: exa%6Dple.com\r\n\r\n", err: errHTTPHostEncoding},
		{name: "comma in Host", in: "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", err: errHTTPHostEncoding},
		{name: "IPv6 zone in Host", in: "GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", err: errHTTPHostEncoding},
		{name: "chunk size overflow", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkOverflow},
		{name: "chunk size with space", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkSize},
		{name: "chunk size negative", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkSize},
		{name: "chunk size missing", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkSize},
		{name: "chunk size 0x prefix", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkSize},
		{name: "chunk data too long", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkEnd},
		{name: "chunk line bare LF", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPBareLF},
		{name: "chunk extension bare CR", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPBareCR},
		{name: "chunk extension control byte", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x01\r\nhello\r\n0\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPChunkExt},
		{name: "trailer obs-fold", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPObsFold},

		// Invalid.
		{name: "HTTP/1.1 without Host", in: "GET / HTTP/1.1\r\nX: y\r\n\r\n", err: errHTTPNoHost},
		{name: "bad method", in: "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPMethod},
		{name: "double space", in: "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPTarget},
		{name: "no version", in: "GET /\r\nHost: a\r\n\r\n", err: errHTTPRequestLine},
		{name: "HTTP/1.10", in: "GET / HTTP/1.10\r\nHost: a\r\n\r\n", err: errHTTPVersion},
		{name: "HTTP/3.0", in: "GET / HTTP/3.0\r\nHost: a\r\n\r\n", err: errHTTPVersion},
		{name: "HTTP/2.0", in: "GET / HTTP/2.0\r\nHost: a\r\n\r\n", err: errHTTPVersion},
		{name: "lower-case version", in: "GET / http/1.1\r\nHost: a\r\n\r\n", err: errHTTPVersion},
		{name: "target without slash", in: "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPTarget},
		{name: "DEL in target", in: "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPTarget},
		{name: "NUL in value", in: "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", err: errHTTPFieldValue},
		{name: "empty field name", in: "GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", err: errHTTPFieldName},
		{name: "no colon", in: "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", err: errHTTPFieldName},
		{name: "bad byte in name", in: "GET / HTTP/1.1\r\nHost: a\r\nX@Y: z\r\n\r\n", err: errHTTPFieldName},
		{name: "empty label in Host", in: "GET / HTTP/1.1\r\nHost: a..example\r\n\r\n", err: errHTTPHost},
		{name: "two trailing dots in Host", in: "GET / HTTP/1.1\r\nHost: a.example..\r\n\r\n", err: errHTTPHost},
		{name: "dot Host", in: "GET / HTTP/1.1\r\nHost: .\r\n\r\n", err: errHTTPHost},
		{name: "leading dot in Host", in: "GET / HTTP/1.1\r\nHost: .a.example\r\n\r\n", err: errHTTPHost},
		{name: "Host only a port", in: "GET / HTTP/1.1\r\nHost: :80\r\n\r\n", err: errHTTPHost},
		{name: "slash in Host", in: "GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n", err: errHTTPHost},
		{name: "bad port", in: "GET / HTTP/1.1\r\nHost: a.example:8o\r\n\r\n", err: errHTTPHost},
		{name: "UTF-8 Host", in: "GET / HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n", err: errHTTPHost},
		{name: "bad IPv6 Host", in: "GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", err: errHTTPHost},

		// Limits.
		{name: "long line", opts: small, in: "GET /" + long + " HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPLineTooLong},
		{name: "long line, no end yet", opts: small, in: "GET /" + long, err: errHTTPLineTooLong},
		{name: "line at limit", opts: small, in: "GET /" + strings.Repeat("a", 256-len("GET / HTTP/1.1\r\n")) + " HTTP/1.1\r\nHost: a\r\n\r\n",
			reqs: []wantReq{get("a", "/"+strings.Repeat("a", 256-len("GET / HTTP/1.1\r\n")))}},
		{name: "line one over limit", opts: small, in: "GET /" + strings.Repeat("a", 257-len("GET / HTTP/1.1\r\n")) + " HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPLineTooLong},
		{name: "too many headers", opts: small, in: "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", err: errHTTPTooManyFields},
		{name: "head too large", opts: small, in: "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: "+strings.Repeat("y", 250)+"\r\n", 3) + "Z: " + strings.Repeat("z", 250),
			err: errHTTPHeadTooLarge},
		{name: "many leading empty lines", opts: small, in: strings.Repeat("\r\n", 600) + "GET / HTTP/1.1\r\nHost: a\r\n\r\n", err: errHTTPHeadTooLarge},
		{name: "chunk line too long", opts: small, in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;" + long + "\r\n", reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPLineTooLong},
		{name: "too many trailers", opts: small, in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n",
			reqs: []wantReq{{"POST", "/", "a"}}, err: errHTTPTrailers},
	}
}

func TestHTTPCases(t *testing.T) {
	for _, tt := range httpCases() {
		t.Run(tt.name, func(t *testing.T) {
			var first httpResult
			for i, chunks := range [][][]byte{{[]byte(tt.in)}, randomSplitsOf([]byte(tt.in), 1), randomSplits([]byte(tt.in), 11)} {
				p := NewHTTPParser(tt.opts)
				r := runHTTP(t, p, chunks)
				if r.err != tt.err {
					t.Fatalf("feed %d: error %v, want %v (requests %+v)", i, r.err, tt.err, r.events)
				}
				if tt.err != nil {
					if !errors.Is(r.err, tt.err.(*ParseError).Class) {
						t.Fatalf("error %v does not match its class", r.err)
					}
					if n, _, err := p.Feed([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")); err != r.err || n != 0 {
						t.Fatalf("error not sticky: %d %v", n, err)
					}
				}
				if len(r.events) != len(tt.reqs) {
					t.Fatalf("feed %d: %d requests %+v, want %d", i, len(r.events), r.events, len(tt.reqs))
				}
				for j, w := range tt.reqs {
					got := r.events[j].req
					if got.Method != w.method || got.Path != w.path || got.Host != w.host {
						t.Errorf("request %d: %q %q host %q, want %q %q host %q", j, got.Method, got.Path, got.Host, w.method, w.path, w.host)
					}
				}
				if tt.err == nil && r.consumed != len(tt.in) {
					t.Errorf("consumed %d of %d", r.consumed, len(tt.in))
				}
				if tt.check != nil && i == 0 {
					tt.check(t, r)
				}
				// After an error, how much was consumed depends on the
				// split (bytes before the error are never forwarded).
				if i == 0 {
					first = r
				} else if tt.err == nil && r.consumed != first.consumed {
					t.Errorf("feed %d consumed %d, whole %d", i, r.consumed, first.consumed)
				}
			}
		})
	}
}

// TestHTTPFeedContract walks through the n and Status contract the relay
// relies on.
func TestHTTPFeedContract(t *testing.T) {
	head1 := "POST /a HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\n"
	head2 := "GET /b HTTP/1.1\r\nHost: b.example\r\n\r\n"
	var p HTTPParser
	steps := []struct {
		in   string
		n    int
		st   Status
		path string
	}{
		{head1[:10], 0, NeedMore, ""},           // incomplete head: keep all
		{head1 + "hel", len(head1), Done, "/a"}, // head done; body not consumed yet
		{"hel", 3, NeedMore, ""},                // body bytes: forwardable
		{"lo" + head2[:5], 2, NeedMore, ""},     // end of body, start of next head
		{head2[:5], 0, NeedMore, ""},            // nothing new
		{head2, len(head2), Done, "/b"},         // next head
		{"", 0, NeedMore, ""},                   // nothing
	}
	for i, s := range steps {
		n, st, err := p.Feed([]byte(s.in))
		if err != nil || n != s.n || st != s.st {
			t.Fatalf("step %d: %d %v %v, want %d %v", i, n, st, err, s.n, s.st)
		}
		if st == Done && p.Request().Path != s.path {
			t.Fatalf("step %d: path %q", i, p.Request().Path)
		}
	}
}

// TestHTTPScanResumes: a head presented again with more bytes appended is
// not scanned again from its start.
func TestHTTPScanResumes(t *testing.T) {
	var p HTTPParser
	head := "GET / HTTP/1.1\r\nHost: a.example\r\nUser-Agent: " + strings.Repeat("u", 5000) + "\r\n\r\n"
	for i := 1; i < len(head); i++ {
		n, st, err := p.Feed([]byte(head[:i]))
		if n != 0 || st != NeedMore || err != nil {
			t.Fatalf("at %d: %d %v %v", i, n, st, err)
		}
		if got := p.head.pos + p.head.scanned; got != i {
			t.Fatalf("at %d: scanned up to %d", i, got)
		}
	}
	if n, st, err := p.Feed([]byte(head)); n != len(head) || st != Done || err != nil {
		t.Fatalf("%d %v %v", n, st, err)
	}
	// Fewer bytes than before (a caller that lost its buffer) restarts the
	// scan rather than trusting stale offsets.
	p.Reset()
	p.Feed([]byte(head[:100]))
	if n, st, err := p.Feed([]byte(head[:50])); n != 0 || st != NeedMore || err != nil {
		t.Fatalf("%d %v %v", n, st, err)
	}
	if n, st, err := p.Feed([]byte(head)); n != len(head) || st != Done || err != nil {
		t.Fatalf("%d %v %v", n, st, err)
	}
}

// TestHTTPStringsOutliveParser: request strings do not alias the caller's
// buffer.
func TestHTTPStringsOutliveParser(t *testing.T) {
	buf := []byte("GET /path HTTP/1.1\r\nHost: a.example\r\nUser-Agent: ua\r\n\r\n")
	var p HTTPParser
	if _, st, _ := p.Feed(buf); st != Done {
		t.Fatal(st)
	}
	r := *p.Request()
	for i := range buf {
		buf[i] = 'X'
	}
	p.Reset()
	p.Feed([]byte("GET /other HTTP/1.1\r\nHost: b.example\r\n\r\n"))
	if r.Path != "/path" || r.Host != "a.example" || r.UserAgent != "ua" {
		t.Fatalf("%+v", r)
	}
}

// TestHTTPAllocs: a parser reused with Reset allocates nothing per request
// once the request's strings are interned.
func TestHTTPAllocs(t *testing.T) {
	for name, in := range map[string][]byte{
		"chromium":  mustRead(t, "testdata/http/chromium-get.bin"),
		"pipelined": []byte("GET /a HTTP/1.1\r\nHost: a.example\r\n\r\nPOST /b HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
	} {
		var p HTTPParser
		allocs := testing.AllocsPerRun(50, func() {
			p.Reset()
			b := in
			for len(b) > 0 {
				n, _, err := p.Feed(b)
				if err != nil || n == 0 {
					t.Fatal(n, err)
				}
				b = b[n:]
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per parse", name, allocs)
		}
	}
}

func TestHostNormalisation(t *testing.T) {
	var p HTTPParser
	for _, tt := range []struct{ in, want string }{
		{"Example.COM", "example.com"},
		{"example.com.", "example.com"},
		{"example.com.:443", "example.com"},
		{"EXAMPLE.com:", "example.com"},
		{"[::1]", "::1"},
		{"[2001:DB8::A]:8443", "2001:db8::a"},
		{"192.0.2.7", "192.0.2.7"},
		{"under_score.example", "under_score.example"},
	} {
		got, err := p.normalizeHost([]byte(tt.in), false, false)
		if err != nil || string(got) != tt.want {
			t.Errorf("%q: %q %v, want %q", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", ".", "a..b", "a:b:c", "[::1", "[::1]x", "[]", "a b", "a\x00b"} {
		if _, err := p.normalizeHost([]byte(in), false, false); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestHTTPRequestsAreDetected(t *testing.T) {
	for _, c := range httpCases() {
		if c.err != nil || !bytes.HasPrefix([]byte(c.in), []byte("GET")) {
			continue
		}
		if p, sure := Detect([]byte(c.in)); p != ProtoHTTP1 || !sure {
			t.Errorf("%s: Detect %v %v", c.name, p, sure)
		}
	}
}

func TestValidFieldValue(t *testing.T) {
	base := []byte("text/html,application/xhtml+xml;q=0.9 caf\xc3\xa9\t!~")
	if !validFieldValue(base) {
		t.Fatal("valid value refused")
	}
	for i := range base {
		for _, bad := range []byte{0, 1, '\n', '\r', 0x1f, 0x7f} {
			b := bytes.Clone(base)
			b[i] = bad
			if validFieldValue(b) {
				t.Fatalf("byte %#x at %d accepted", bad, i)
			}
		}
	}
	for c := range 256 {
		if got, want := validFieldValue([]byte{byte(c), 'a', 'a', 'a', 'a', 'a', 'a', 'a', 'a'}), fieldValueByte[c]; got != want {
			t.Errorf("%#x: %v", c, got)
		}
	}
}
