package main

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netward/netward/config"
)

// TestRulesFromURL: netward's services load the rules from an HTTP URL
// (loopback), export their sha256 and the fetches in /metrics, and pick up
// a new version by its ETag; a broken version keeps the rules in force.
func TestRulesFromURL(t *testing.T) {
	const v1 = "default: allow\nrules:\n  - name: no-telnet\n    action: drop\n    dst_port: 23\n"
	const v2 = "default: deny\nrules:\n  - name: web\n    action: allow\n    dst_port: 443\n"
	var mu sync.Mutex
	body, etag := v1, `"1"`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	serve := func(b, e string) {
		mu.Lock()
		body, etag = b, e
		mu.Unlock()
	}

	cfg := config.Default()
	cfg.Rules = srv.URL + "/rules.yaml"
	cfg.RulesPollInterval = 20 * time.Millisecond
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Admin.Socket = ""
	s, err := startServices(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	metricsURL := "http://" + s.servers[0].Addr().String() + "/metrics"

	want := func(what, hash string, lines ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			text := get(t, metricsURL)
			ok := strings.Contains(text, `netward_rules_info{hash="`+hash+`"} 1`)
			for _, l := range lines {
				ok = ok && strings.Contains(text, l)
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /metrics lacks the rules hash %s or %q:\n%s", what, hash, lines, grepLines(text, "netward_rule"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	want("first load", sha(v1), `netward_rule_reloads_total{result="ok"} 1`, `netward_rule_fetches_total{result="modified"} 1`, `netward_rule_fetches_total{result="not_modified"}`)

	serve(v2, `"2"`)
	want("new ETag", sha(v2), `netward_rule_reloads_total{result="ok"} 2`)

	serve("default: allow\nrules:\n  - name: x\n    action: frobnicate\n", `"3"`)
	want("broken", sha(v2), `netward_rule_reloads_total{result="failed"} 1`)
	if got := s.policy.Version().SHA256; got != sha(v2) {
		t.Fatalf("a broken rule file replaced the rules: %s", got)
	}
}

// TestRulesURLUnreachableAtStart: no rules, no start, and the error names
// the URL.
func TestRulesURLUnreachableAtStart(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // a loopback port nobody listens on any more
	cfg := config.Default()
	cfg.Rules = srv.URL + "/rules.yaml"
	cfg.Admin.Socket = ""
	_, err := startServices(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), cfg.Rules) {
		t.Fatalf("startServices with an unreachable rule URL: %v, want an error naming %s", err, cfg.Rules)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
