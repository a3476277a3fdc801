// Package labtest runs the lab (package lab) from Go tests: it skips
// without root, builds the binaries once per test binary, removes every lab
// in t.Cleanup, and prints the lab's process logs when a test fails.
//
//	func TestMain(m *testing.M) { os.Exit(labtest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		l := labtest.New(t, lab.Options{})
//		labtest.RequireTools(t, "curl")
//		srv := labtest.StartPeer(t, l.App)
//		nw := labtest.StartNetward(t, l, lab.NetwardOptions{})
//		...
//	}
package labtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
)

// InCI reports whether the tests run in CI (CI=true), where a missing tool
// fails the test instead of skipping it: CI must really run everything.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot skips the test unless it runs as root (or fails it in CI).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if InCI() {
			t.Fatal("e2e tests need root and CI=true: run them as root")
		}
		t.Skip("skipping: the lab needs root (network namespaces, iptables); run `sudo make test`")
	}
}

// RequireTools skips the test when a program is missing from PATH (or
// fails it in CI).
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("missing tools %s (install them, e.g. with .ci/run's apt-get line)", strings.Join(missing, ", "))
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip("skipping: " + msg)
}

var bins struct {
	once sync.Once
	dir  string
	err  error
	mu   sync.Mutex
	done map[string]string
}

// Main runs the tests and removes the binaries built for them.
func Main(m *testing.M) int {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	return code
}

// Binary builds the main package pkg (import path) once per test binary and
// returns the executable's path.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "netward-e2e-bin-")
		bins.done = map[string]string{}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	bins.mu.Lock()
	defer bins.mu.Unlock()
	if p, ok := bins.done[pkg]; ok {
		return p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := lab.Build(ctx, pkg, bins.dir)
	if err != nil {
		t.Fatal(err)
	}
	bins.done[pkg] = p
	return p
}

// Netward is the netward binary built from this tree.
func Netward(t testing.TB) string { return Binary(t, lab.Module+"/cmd/netward") }

// Peer is the nwpeer binary built from this tree.
func Peer(t testing.TB) string { return Binary(t, lab.Module+"/e2e/cmd/nwpeer") }

// New builds a lab for t (skipping without root, or without ip/iptables)
// and tears it down in t.Cleanup. If the test failed, the tails of the
// logs of every process started in the lab are logged and the log
// directory is kept.
func New(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "sysctl")
	opts.Dir = labDir(t, opts.Dir, "netward-lab-")
	l, err := lab.New(opts)
	if err != nil {
		os.RemoveAll(opts.Dir)
		t.Fatal(err)
	}
	teardown(t, l.Dir, l.Close)
	return l
}

// NewGWLB builds a GWLB lab for t (lab.NewGWLB), torn down like New's.
func NewGWLB(t testing.TB, opts lab.GWLBOptions) *lab.GWLBLab {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "ip", "sysctl")
	opts.Dir = labDir(t, opts.Dir, "netward-gwlb-")
	g, err := lab.NewGWLB(opts)
	if err != nil {
		os.RemoveAll(opts.Dir)
		t.Fatal(err)
	}
	teardown(t, g.Dir, g.Close)
	return g
}

// labDir is dir, or a new temporary directory named after prefix.
func labDir(t testing.TB, dir, prefix string) string {
	if dir != "" {
		return dir
	}
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// teardown closes a lab in t.Cleanup; if the test failed, it first logs
// the tails of the logs in dir and keeps dir.
func teardown(t testing.TB, dir string, close func() error) {
	t.Cleanup(func() {
		failed := t.Failed()
		if failed {
			logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
			for _, f := range logs {
				b, _ := os.ReadFile(f)
				s := string(b)
				if len(s) > 6000 {
					s = "…" + s[len(s)-6000:]
				}
				t.Logf("--- %s ---\n%s", filepath.Base(f), s)
			}
		}
		if err := close(); err != nil {
			t.Errorf("lab teardown: %v", err)
		}
		if failed {
			t.Logf("lab logs kept in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
}

// StartPeer starts `nwpeer serve` in ns and waits until it listens.
func StartPeer(t testing.TB, ns *lab.NS, extra ...string) *lab.Proc {
	t.Helper()
	p, err := ns.Start("nwpeer-"+ns.Role, append([]string{Peer(t), "serve"}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.WaitLog(ctx, regexp.MustCompile(`nwpeer: serving`)); err != nil {
		t.Fatal(err)
	}
	return p
}

// ServerLogs parses the JSON lines a `nwpeer serve` process has logged.
func ServerLogs(t testing.TB, p *lab.Proc) []peer.ServerLog {
	t.Helper()
	var out []peer.ServerLog
	for _, line := range strings.Split(p.Log(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var e peer.ServerLog
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("server log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// RunPeer runs an nwpeer client subcommand in ns and decodes its JSON result
// into res (nil to ignore it). It fails the test if the client fails.
func RunPeer(t testing.TB, ns *lab.NS, res any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := ns.Run(ctx, append([]string{Peer(t)}, args...)...)
	if err != nil {
		t.Fatalf("nwpeer %s: %v", strings.Join(args, " "), err)
	}
	if res != nil {
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), res); err != nil {
			t.Fatalf("nwpeer %s: result %q: %v", strings.Join(args, " "), out, err)
		}
	}
}

// StartNetward starts netward (the binary from this tree unless
// opts.Binary is set) in l's appliance namespace, fails the test if it does
// not become ready, and stops it in t.Cleanup (before the lab goes away).
func StartNetward(t testing.TB, l *lab.Lab, opts lab.NetwardOptions) *lab.Netward {
	t.Helper()
	if opts.Binary == "" {
		opts.Binary = Netward(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := l.StartNetward(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if exited, _ := w.Exited(); !exited {
			if err := w.Terminate(10 * time.Second); err != nil {
				t.Errorf("netward did not exit cleanly on SIGTERM: %v", err)
			}
		}
	})
	return w
}

// Run runs a command in ns and fails the test on error.
func Run(t testing.TB, ns *lab.NS, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := ns.Run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
