package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthHandler(t *testing.T) {
	var h Health
	var checkErr error
	get := func(method string) (int, string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.Handler().ServeHTTP(rec, httptest.NewRequest(method, "/healthz", nil))
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	steps := []struct {
		name     string
		do       func()
		code     int
		contains string
	}{
		{"starting", func() {}, http.StatusServiceUnavailable, "starting"},
		{"serving", func() { h.SetCheck(func() error { return checkErr }) }, http.StatusOK, "ok"},
		{"stack failed", func() { checkErr = errors.New("datapath failed: read queue 0: file already closed") }, http.StatusServiceUnavailable, "read queue 0"},
		{"recovered", func() { checkErr = nil }, http.StatusOK, "ok"},
		{"draining", h.Drain, http.StatusServiceUnavailable, "draining"},
		{"draining for good", func() { checkErr = nil }, http.StatusServiceUnavailable, "draining"},
	}
	for _, s := range steps {
		s.do()
		code, body := get(http.MethodGet)
		if code != s.code || !strings.Contains(body, s.contains) {
			t.Errorf("%s: %d %q, want %d containing %q", s.name, code, body, s.code, s.contains)
		}
	}
	if code, _ := get(http.MethodPost); code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", code)
	}
	if code, _ := get(http.MethodHead); code != http.StatusServiceUnavailable {
		t.Errorf("HEAD while draining: %d, want 503", code)
	}
	rec := httptest.NewRecorder()
	h.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("/metrics on the health listener: %d, want 404 (only /healthz is served)", rec.Code)
	}
	var nilH *Health
	if nilH.Status() == nil || nilH.Draining() {
		t.Error("a nil Health must be unhealthy and not draining")
	}
}

func TestListenHealth(t *testing.T) {
	var h Health
	h.SetCheck(func() error { return nil })
	srv, err := h.ListenHealth("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("status %d, Cache-Control %q", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
	if _, err := h.ListenHealth("nonsense", nil); err == nil || !strings.Contains(err.Error(), "health: listen nonsense") {
		t.Fatalf("bad address: %v", err)
	}
}
