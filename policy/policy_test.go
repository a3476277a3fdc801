package policy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/geo/geotest"
	"github.com/netward/netward/inspect"
	"github.com/netward/netward/rules"
)

const rulesV1 = `default: allow
lists:
  blocked: {file: blocked.txt}
rules:
  - name: blocked
    action: deny
    domain: $blocked
  - name: no-telnet
    action: drop
    dst_port: 23
`

const rulesV2 = `default: deny
rules:
  - name: web
    action: allow
    dst_port: [80, 443]
`

// syncBuffer is a log sink safe for the watcher goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	dir  string
	path string
	logs *syncBuffer
	e    *Engine
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{dir: dir, path: filepath.Join(dir, "rules.yaml"), logs: &syncBuffer{}}
	writeFile(t, fx.path, rulesV1)
	writeFile(t, filepath.Join(dir, "blocked.txt"), ".ads.example\n")
	opts.Path = fx.path
	opts.Logger = slog.New(slog.NewTextHandler(fx.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.Debounce == 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	fx.e = e
	return fx
}

func facts(dst string, sni string) *Facts {
	return &Facts{Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort(dst), SNI: sni, App: inspect.ProtoTLS}
}

func TestEngineDecisions(t *testing.T) {
	fx := newFixture(t, Options{})
	e := fx.e
	if v := e.Decide(facts("192.0.2.1:443", "x.ads.example")); v.Action != ActionDeny || v.Rule != "blocked" {
		t.Errorf("Decide = %v", v)
	}
	if v, ok := e.Early(facts("192.0.2.1:23", "")); ok {
		t.Errorf("Early decided %v although the domain rule comes first", v)
	}
	if v := e.Decide(facts("192.0.2.1:23", "")); v.Action != ActionDrop {
		t.Errorf("Decide = %v", v)
	}
	if v := e.Invalid(); v.Action != ActionDeny || v.Rule != RuleOnInvalid {
		t.Errorf("Invalid = %v", v)
	}
	v := e.Version()
	if v.Rules != 2 || len(v.SHA256) != 64 || v.Path != fx.path || time.Since(v.Loaded) > time.Minute {
		t.Errorf("Version = %+v", v)
	}
	if !strings.Contains(fx.logs.String(), "rules loaded") {
		t.Errorf("no load log:\n%s", fx.logs)
	}
}

func TestNewRefusesInvalid(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rules.yaml")
	writeFile(t, p, "default: allow\nrules:\n  - name: a\n    action: deny\n    dst: 10.0.0.0/33\n")
	_, err := New(Options{Path: p})
	var el rules.ErrorList
	if !errors.As(err, &el) || !strings.Contains(err.Error(), "rules.yaml:5:10: dst: bad CIDR") {
		t.Errorf("New error %v", err)
	}
	// Geo rules need the database.
	writeFile(t, p, "default: allow\nrules:\n  - name: a\n    action: deny\n    src_country: RU\n")
	if _, err := New(Options{Path: p}); err == nil || !strings.Contains(err.Error(), "needs a country database") {
		t.Errorf("New error %v", err)
	}
}

func TestReload(t *testing.T) {
	var calls []string
	var mu sync.Mutex
	fx := newFixture(t, Options{OnReload: func(v rules.Version, err error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, v.SHA256[:8]+" "+errString(err))
	}})
	e := fx.e
	v1 := e.Version()

	// Unchanged: same set kept.
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if e.Version() != v1 {
		t.Error("unchanged reload swapped the set")
	}

	// Valid change: swapped.
	writeFile(t, fx.path, rulesV2)
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if e.Version().SHA256 == v1.SHA256 || e.Version().Rules != 1 {
		t.Errorf("not swapped: %+v", e.Version())
	}
	if v := e.Decide(facts("192.0.2.1:22", "")); v.Action != ActionDeny || v.Rule != "" {
		t.Errorf("new rules not used: %v", v)
	}
	v2 := e.Version()

	// Invalid change: refused, logged, old rules stay.
	writeFile(t, fx.path, "default: allow\nrules:\n  - name: x\n    action: explode\n")
	err := e.Reload()
	if err == nil || !strings.Contains(err.Error(), `rules.yaml:4:13: bad action "explode"`) {
		t.Errorf("Reload error %v", err)
	}
	if e.Version() != v2 {
		t.Error("invalid file replaced the rules")
	}
	if !strings.Contains(fx.logs.String(), "rule reload refused") {
		t.Errorf("refusal not logged:\n%s", fx.logs)
	}

	// A change in a list file counts as a change.
	writeFile(t, fx.path, rulesV1)
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	before := e.Version().SHA256
	writeFile(t, filepath.Join(fx.dir, "blocked.txt"), ".ads.example\n.more.example\n")
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if e.Version().SHA256 == before {
		t.Error("list change not picked up")
	}
	if v := e.Decide(facts("192.0.2.1:443", "a.more.example")); v.Rule != "blocked" {
		t.Errorf("new list not used: %v", v)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 6 || !strings.HasSuffix(calls[3], "error") {
		t.Errorf("OnReload calls %q", calls)
	}
}

func errString(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func startWatch(t *testing.T, e *Engine) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Watch(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	// fsnotify adds its watches synchronously in Watch before the loop;
	// give the goroutine a moment to get there.
	time.Sleep(50 * time.Millisecond)
}

func TestWatch(t *testing.T) {
	fx := newFixture(t, Options{})
	e := fx.e
	startWatch(t, e)
	sha := func() string { return e.Version().SHA256 }
	v1 := sha()

	// In-place write.
	writeFile(t, fx.path, rulesV2)
	waitFor(t, "reload after write", func() bool { return e.Version().Rules == 1 })

	// Invalid write: refused, old rules stay.
	v2 := sha()
	writeFile(t, fx.path, "default: nope\n")
	waitFor(t, "refusal logged", func() bool { return strings.Contains(fx.logs.String(), "rule reload refused") })
	if sha() != v2 {
		t.Fatal("invalid file swapped in")
	}

	// Editor-style rename-replace.
	tmp := filepath.Join(fx.dir, ".rules.yaml.tmp")
	writeFile(t, tmp, rulesV1)
	if err := os.Rename(tmp, fx.path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reload after rename", func() bool { return sha() == v1 })

	// A list file change.
	writeFile(t, filepath.Join(fx.dir, "blocked.txt"), ".other.example\n")
	waitFor(t, "reload after list change", func() bool {
		return e.Decide(facts("192.0.2.1:443", "x.other.example")).Rule == "blocked"
	})
}

// TestWatchSymlinkSwap does what the Kubernetes atomic writer does to a
// ConfigMap volume: files live in a versioned directory, "..data" points
// at it, the visible names point through "..data", and an update re-points
// "..data" with a rename.
func TestWatchSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name, rulesText string) {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "rules.yaml"), rulesText)
		writeFile(t, filepath.Join(d, "blocked.txt"), ".ads.example\n")
	}
	mkVersion("..v1", rulesV1)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("..v1", filepath.Join(dir, "..data")))
	must(os.Symlink("..data/rules.yaml", filepath.Join(dir, "rules.yaml")))
	must(os.Symlink("..data/blocked.txt", filepath.Join(dir, "blocked.txt")))
	e, err := New(Options{Path: filepath.Join(dir, "rules.yaml"), Debounce: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	must(err)
	startWatch(t, e)
	if e.Version().Rules != 2 {
		t.Fatal("v1 not loaded")
	}
	mkVersion("..v2", rulesV2)
	must(os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(os.RemoveAll(filepath.Join(dir, "..v1")))
	waitFor(t, "reload after symlink swap", func() bool { return e.Version().Rules == 1 })
}

func TestConcurrentDecideAndReload(t *testing.T) {
	fx := newFixture(t, Options{})
	e := fx.e
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := facts("192.0.2.1:443", "x.ads.example")
			for !stop.Load() {
				v := e.Decide(f)
				// Either rule file: deny by blocked (v1) or allow by web (v2).
				if !(v.Rule == "blocked" && v.Action == ActionDeny) && !(v.Rule == "web" && v.Action == ActionAllow) {
					t.Errorf("inconsistent verdict %v", v)
					return
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		text := rulesV1
		if i%2 == 0 {
			text = rulesV2
		}
		writeFile(t, fx.path, text)
		if err := e.Reload(); err != nil {
			t.Error(err)
		}
	}
	stop.Store(true)
	wg.Wait()
}

func TestFillGeo(t *testing.T) {
	dir := t.TempDir()
	cp := filepath.Join(dir, "c.mmdb")
	if err := geotest.WriteCountry(cp, map[netip.Prefix]string{netip.MustParsePrefix("198.51.100.0/24"): "RU"}); err != nil {
		t.Fatal(err)
	}
	db, err := geo.Open(cp, "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p := filepath.Join(dir, "rules.yaml")
	writeFile(t, p, "default: allow\nrules:\n  - name: no-ru\n    action: drop\n    not: {src: 10.0.0.0/8}\n    src_country: RU\n")
	e, err := New(Options{Path: p, Geo: db, Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f := &Facts{Src: netip.MustParseAddrPort("198.51.100.9:1234"), Dst: netip.MustParseAddrPort("192.0.2.1:443")}
	e.FillGeo(f)
	if f.SrcGeo.Country != "RU" {
		t.Fatalf("FillGeo: %+v", f.SrcGeo)
	}
	if v, ok := e.Early(f); !ok || v.Action != ActionDrop || v.Rule != "no-ru" {
		t.Errorf("Early = %v, %v", v, ok)
	}
}

func TestDenyResponse(t *testing.T) {
	fx := newFixture(t, Options{})
	f := &Facts{Src: netip.MustParseAddrPort("10.0.0.1:5"), Dst: netip.MustParseAddrPort("192.0.2.1:80"), Host: "x.ads.example", Method: "GET", Path: "/"}
	v := fx.e.Decide(f)
	resp := string(fx.e.DenyResponse(v, f))
	head, body, ok := strings.Cut(resp, "\r\n\r\n")
	if !ok || !strings.HasPrefix(head, "HTTP/1.1 403 Forbidden\r\n") || !strings.Contains(head, "\r\nConnection: close") {
		t.Fatalf("response head %q", head)
	}
	if !strings.Contains(head, "Content-Length: "+strconv.Itoa(len(body))) || !strings.Contains(body, "<code>blocked</code>") {
		t.Errorf("response %q", resp)
	}
	f.Method = "HEAD"
	resp = string(fx.e.DenyResponse(v, f))
	if _, body, _ := strings.Cut(resp, "\r\n\r\n"); body != "" {
		t.Errorf("HEAD response has a body")
	}
	if got := TLSAlert(AlertAccessDenied); !bytes.Equal(got, []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31}) {
		t.Errorf("TLSAlert = % x", got)
	}
}

func BenchmarkEngineDecide(b *testing.B) {
	dir := b.TempDir()
	p := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(p, []byte(rulesV1), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "blocked.txt"), []byte(".ads.example\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	e, err := New(Options{Path: p, Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		b.Fatal(err)
	}
	f := facts("192.0.2.1:443", "www.example.com")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.Decide(f)
		}
	})
}
