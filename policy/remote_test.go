package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netward/netward/rules"
)

// ruleServer serves rule files from memory with ETag and Last-Modified
// validators, and answers conditional requests with 304.
type ruleServer struct {
	mu    sync.Mutex
	files map[string]*served
	log   []string // "GET /path cond=<If-None-Match>|<If-Modified-Since> → status"
	srv   *httptest.Server
}

type served struct {
	body         string
	etag         string
	lastModified time.Time
	status       int // non-zero: answer this instead
}

func newRuleServer(t *testing.T) *ruleServer {
	rs := &ruleServer{files: map[string]*served{}}
	rs.srv = httptest.NewServer(http.HandlerFunc(rs.serve))
	t.Cleanup(rs.srv.Close)
	return rs
}

func (rs *ruleServer) serve(w http.ResponseWriter, r *http.Request) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	f, ok := rs.files[r.URL.Path]
	status := http.StatusOK
	defer func() {
		rs.log = append(rs.log, fmt.Sprintf("GET %s cond=%s|%s → %d", r.URL.Path,
			r.Header.Get("If-None-Match"), r.Header.Get("If-Modified-Since"), status))
	}()
	switch {
	case !ok:
		status = http.StatusNotFound
	case f.status != 0:
		status = f.status
	}
	if status != http.StatusOK {
		http.Error(w, "nope", status)
		return
	}
	if f.etag != "" {
		w.Header().Set("ETag", f.etag)
		if r.Header.Get("If-None-Match") == f.etag {
			status = http.StatusNotModified
			w.WriteHeader(status)
			return
		}
	}
	if !f.lastModified.IsZero() {
		w.Header().Set("Last-Modified", f.lastModified.UTC().Format(http.TimeFormat))
		if ims, err := http.ParseTime(r.Header.Get("If-Modified-Since")); err == nil && f.etag == "" && !f.lastModified.Truncate(time.Second).After(ims) {
			status = http.StatusNotModified
			w.WriteHeader(status)
			return
		}
	}
	w.Write([]byte(f.body))
}

func (rs *ruleServer) set(path string, f served) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.files[path] = &f
}

func (rs *ruleServer) requests() []string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]string(nil), rs.log...)
}

func (rs *ruleServer) url(path string) string { return rs.srv.URL + path }

// counts records the hooks' calls.
type counts struct {
	mu       sync.Mutex
	fetches  map[string]int
	reloadOK int
	failed   []error
	hash     string
}

func (c *counts) options(path string, log *slog.Logger) Options {
	c.fetches = map[string]int{}
	return Options{
		Path:   path,
		Logger: log,
		OnFetch: func(r string) {
			c.mu.Lock()
			c.fetches[r]++
			c.mu.Unlock()
		},
		OnReload: func(v rules.Version, err error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if err != nil {
				c.failed = append(c.failed, err)
				return
			}
			c.reloadOK++
			c.hash = v.SHA256
		},
	}
}

func (c *counts) snapshot() (fetches map[string]int, ok, failed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := map[string]int{}
	for k, v := range c.fetches {
		f[k] = v
	}
	return f, c.reloadOK, len(c.failed)
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

const remoteV1 = "default: allow\nrules:\n  - name: no-telnet\n    action: drop\n    dst_port: 23\n"
const remoteV2 = "default: deny\nrules:\n  - name: web\n    action: allow\n    dst_port: [80, 443]\n"

func TestRemoteETag(t *testing.T) {
	rs := newRuleServer(t)
	rs.set("/r.yaml", served{body: remoteV1, etag: `"v1"`})
	var c counts
	e, err := New(c.options(rs.url("/r.yaml"), testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Version().SHA256; got != sha(remoteV1) {
		t.Fatalf("sha256 %s, want that of the served file %s", got, sha(remoteV1))
	}
	if e.Version().Path != rs.url("/r.yaml") {
		t.Errorf("version path %q, want the URL", e.Version().Path)
	}

	// Unchanged: one conditional request, 304, no reload.
	if err := e.pollOnce(e.log); err != nil {
		t.Fatal(err)
	}
	f, ok, failed := c.snapshot()
	if ok != 1 || failed != 0 || f[FetchNotModified] != 1 || f[FetchModified] != 1 {
		t.Fatalf("after a 304: reloads ok %d failed %d, fetches %v; want 1, 0, one modified and one not_modified", ok, failed, f)
	}
	if last := rs.requests()[1]; last != `GET /r.yaml cond="v1"| → 304` {
		t.Errorf("poll request %q, want a conditional GET answered 304", last)
	}

	// New ETag: reloaded, with the poll's body (one request, not two).
	rs.set("/r.yaml", served{body: remoteV2, etag: `"v2"`})
	if err := e.pollOnce(e.log); err != nil {
		t.Fatal(err)
	}
	if got := e.Version().SHA256; got != sha(remoteV2) {
		t.Fatalf("after the ETag changed: sha256 %s, want %s", got, sha(remoteV2))
	}
	if v, _ := e.Early(&Facts{Dst: mustAP("192.0.2.1:22")}); v.Action != ActionDeny {
		t.Errorf("after reload: port 22 %v, want deny (v2 default)", v.Action)
	}
	if n := len(rs.requests()); n != 3 {
		t.Errorf("%d requests, want 3 (load, 304, 200): %q", n, rs.requests())
	}
	_, ok, _ = c.snapshot()
	if ok != 2 || c.hash != sha(remoteV2) {
		t.Errorf("reloads ok %d hash %s, want 2 and v2's hash", ok, c.hash)
	}
	// And the next poll asks with the new ETag.
	if err := e.pollOnce(e.log); err != nil {
		t.Fatal(err)
	}
	if reqs := rs.requests(); reqs[len(reqs)-1] != `GET /r.yaml cond="v2"| → 304` {
		t.Errorf("poll after reload %q, want a conditional GET with the new ETag", reqs[len(reqs)-1])
	}
}

func TestRemoteLastModified(t *testing.T) {
	rs := newRuleServer(t)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	rs.set("/r.yaml", served{body: remoteV1, lastModified: t0})
	var c counts
	e, err := New(c.options(rs.url("/r.yaml"), testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.pollOnce(e.log); err != nil {
		t.Fatal(err)
	}
	want := "GET /r.yaml cond=|" + t0.Format(http.TimeFormat) + " → 304"
	if reqs := rs.requests(); reqs[1] != want {
		t.Fatalf("poll request %q, want %q", reqs[1], want)
	}
	rs.set("/r.yaml", served{body: remoteV2, lastModified: t0.Add(time.Minute)})
	if err := e.pollOnce(e.log); err != nil {
		t.Fatal(err)
	}
	if e.Version().SHA256 != sha(remoteV2) {
		t.Fatal("a newer Last-Modified did not reload")
	}
}

// TestRemoteKeepsRules: an HTTP error, an unreachable server and a broken
// file each keep the rules in force, are counted, and are retried (the
// error) or not (the same broken file, same ETag) at the next poll.
func TestRemoteKeepsRules(t *testing.T) {
	rs := newRuleServer(t)
	rs.set("/r.yaml", served{body: remoteV1, etag: `"v1"`})
	var c counts
	e, err := New(c.options(rs.url("/r.yaml"), testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	keep := func(what string) {
		t.Helper()
		if got := e.Version().SHA256; got != sha(remoteV1) {
			t.Fatalf("%s: rules replaced (sha256 %s)", what, got)
		}
	}

	rs.set("/r.yaml", served{body: remoteV1, etag: `"v1"`, status: http.StatusInternalServerError})
	err = e.pollOnce(e.log)
	var fe *FetchError
	if !errors.As(err, &fe) || fe.Result != FetchHTTPError || fe.Status != 500 {
		t.Fatalf("500: error %v, want a FetchError http_error 500", err)
	}
	keep("500")
	f, ok, failed := c.snapshot()
	if f[FetchHTTPError] != 1 || failed != 1 || ok != 1 {
		t.Fatalf("500: fetches %v, ok %d failed %d", f, ok, failed)
	}

	// Garbage with a new ETag: fetched, refused with url:line, kept.
	garbage := "default: allow\nrules:\n  - name: x\n    action: frobnicate\n"
	rs.set("/r.yaml", served{body: garbage, etag: `"broken"`})
	err = e.pollOnce(e.log)
	if err == nil || !strings.Contains(err.Error(), rs.url("/r.yaml")+":4:") {
		t.Fatalf("broken file: error %v, want one at %s:4", err, rs.url("/r.yaml"))
	}
	keep("broken file")
	// The same broken file is not fetched and refused again at every poll.
	if err := e.pollOnce(e.log); err != nil {
		t.Fatalf("poll of the unchanged broken file: %v", err)
	}
	_, _, failed = c.snapshot()
	if failed != 2 {
		t.Errorf("failed reloads %d, want 2 (the 500 and the broken file once)", failed)
	}

	// A YAML that is not even YAML.
	rs.set("/r.yaml", served{body: "\x00\xff{{{[", etag: `"bin"`})
	if err := e.pollOnce(e.log); err == nil {
		t.Fatal("binary garbage was accepted")
	}
	keep("garbage")

	// Unreachable.
	rs.srv.Close()
	err = e.pollOnce(e.log)
	if !errors.As(err, &fe) || fe.Result != FetchUnreachable {
		t.Fatalf("closed server: error %v, want a FetchError unreachable", err)
	}
	keep("unreachable")
	f, _, _ = c.snapshot()
	if f[FetchUnreachable] != 1 {
		t.Errorf("fetches %v, want one unreachable", f)
	}
	// SIGHUP's Reload while unreachable keeps them too.
	if err := e.Reload(); err == nil {
		t.Fatal("Reload of an unreachable URL succeeded")
	}
	keep("reload while unreachable")
}

// TestRemoteIncludes: lists and deny page resolve against the rule file's
// URL, count in the hash, and a change of a list alone reloads.
func TestRemoteIncludes(t *testing.T) {
	rs := newRuleServer(t)
	main := "default: allow\nlists:\n  bad: {file: lists/bad.txt}\nrules:\n  - name: bad\n    action: deny\n    domain: $bad\n"
	rs.set("/fleet/rules.yaml", served{body: main, etag: `"m1"`})
	rs.set("/fleet/lists/bad.txt", served{body: "bad.example\n", etag: `"l1"`})
	var c counts
	e, err := New(c.options(rs.url("/fleet/rules.yaml"), testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	files := e.Rules().Files()
	if len(files) != 2 || files[1] != rs.url("/fleet/lists/bad.txt") {
		t.Fatalf("files %q, want the rule file and the list's URL", files)
	}
	if v := e.Decide(&Facts{Dst: mustAP("192.0.2.1:443"), SNI: "bad.example"}); v.Rule != "bad" {
		t.Fatalf("bad.example: %+v, want rule bad", v)
	}
	h1 := e.Version().SHA256
	if err := e.pollOnce(e.log); err != nil || e.Version().SHA256 != h1 {
		t.Fatalf("unchanged poll: %v, hash changed %v", err, e.Version().SHA256 != h1)
	}
	rs.set("/fleet/lists/bad.txt", served{body: "bad.example\nworse.example\n", etag: `"l2"`})
	if err := e.pollOnce(e.log); err != nil {
		t.Fatal(err)
	}
	if e.Version().SHA256 == h1 {
		t.Fatal("a changed list did not reload")
	}
	if v := e.Decide(&Facts{Dst: mustAP("192.0.2.1:443"), SNI: "worse.example"}); v.Rule != "bad" {
		t.Fatalf("worse.example after reload: %+v, want rule bad", v)
	}

	// A missing list is an error at the include's line, named by its URL.
	rs.set("/fleet/rules.yaml", served{body: strings.Replace(main, "lists/bad.txt", "lists/gone.txt", 1), etag: `"m2"`})
	err = e.pollOnce(e.log)
	want := rs.url("/fleet/rules.yaml") + ":3:"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "lists/gone.txt: HTTP 404") {
		t.Fatalf("missing list: %v; want an error at %s naming the 404", err, want)
	}
}

func TestRemoteStart(t *testing.T) {
	rs := newRuleServer(t)
	rs.set("/bad.yaml", served{body: "rules: [\n"})
	for _, tt := range []struct {
		name, url, want string
	}{
		{"404", rs.url("/none.yaml"), "HTTP 404"},
		{"broken", rs.url("/bad.yaml"), rs.url("/bad.yaml") + ":"},
		{"no-host", "http:///rules.yaml", "has no host"},
		{"refused", "http://127.0.0.1:1/rules.yaml", "connect"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c counts
			_, err := New(c.options(tt.url, testLogger(t)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New(%s): %v, want an error containing %q", tt.url, err, tt.want)
			}
		})
	}
}

// TestRemoteWatch: Watch polls at the interval and reloads a change.
func TestRemoteWatch(t *testing.T) {
	rs := newRuleServer(t)
	rs.set("/r.yaml", served{body: remoteV1, etag: `"v1"`})
	var c counts
	opts := c.options(rs.url("/r.yaml"), testLogger(t))
	opts.PollInterval = 20 * time.Millisecond
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Watch(ctx, nil) }()
	rs.set("/r.yaml", served{body: remoteV2, etag: `"v2"`})
	deadline := time.Now().Add(5 * time.Second)
	for e.Version().SHA256 != sha(remoteV2) {
		if time.Now().After(deadline) {
			t.Fatalf("not reloaded within 5 s; requests %q", rs.requests())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch: %v", err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
