package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// scriptTools are e2e/tools.sh's commands and their packages; the test
// hides some of them and expects the script to name their packages.
var scriptTools = map[string]string{
	"make": "make", "git": "git", "ip": "iproute2", "iptables": "iptables", "ip6tables": "iptables",
	"modprobe": "kmod", "sysctl": "procps", "ps": "procps", "curl": "curl", "iperf3": "iperf3",
	"ping": "iputils-ping", "openssl": "openssl", "wrk": "wrk", "conntrack": "conntrack",
	"dig": "bind9-dnsutils", "gtlsclient": "ngtcp2-client", "go": "",
}

// toolsPath makes a directory holding links to every tool in scriptTools
// found on this machine except hide, for the script's PATH. The script
// adds sbin and /usr/local/go/bin itself, so hidden tools must live
// elsewhere: the test skips when they do not.
func toolsPath(t *testing.T, hide ...string) string {
	t.Helper()
	dir := t.TempDir()
	for cmd := range scriptTools {
		p, err := exec.LookPath(cmd)
		if err != nil {
			t.Skipf("%s is not installed here: the check-only test needs every tool but the hidden ones", cmd)
		}
		hidden := false
		for _, h := range hide {
			hidden = hidden || h == cmd
		}
		if hidden {
			if d := filepath.Dir(p); d == "/usr/sbin" || d == "/sbin" || d == "/usr/local/go/bin" {
				t.Skipf("%s is in %s, which the script always searches", cmd, d)
			}
			continue
		}
		if err := os.Symlink(p, filepath.Join(dir, cmd)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func runTools(t *testing.T, path string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"tools.sh"}, args...)...)
	cmd.Env = append([]string{"PATH=" + path}, env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tools.sh: %v", err)
	}
	return string(out), code
}

// TestToolsScript runs e2e/tools.sh (what make demo, make test and .ci/run
// run first) in check-only mode with a PATH that lacks tools: it must name
// each missing package once, on one line, and fail; with everything there
// it is silent. No root needed, nothing is installed.
func TestToolsScript(t *testing.T) {
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err != nil {
		t.Skip("no CA bundle here: the script would name ca-certificates too")
	}
	t.Run("all-present", func(t *testing.T) {
		out, code := runTools(t, toolsPath(t), nil, "--check")
		if code != 0 || out != "" {
			t.Fatalf("exit %d, output %q; want 0 and nothing", code, out)
		}
	})
	t.Run("missing", func(t *testing.T) {
		out, code := runTools(t, toolsPath(t, "wrk", "dig", "curl"), nil, "--check")
		if code != 1 {
			t.Fatalf("exit %d, want 1; output %q", code, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "netward: missing packages: ") {
			t.Fatalf("output %q: want one line \"netward: missing packages: ...\"", out)
		}
		got := strings.Fields(strings.TrimPrefix(lines[0], "netward: missing packages: "))
		want := []string{"curl", "wrk", "bind9-dnsutils"} // the script's order
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("named %q, want %q", got, want)
		}
	})
	t.Run("one-package-two-commands", func(t *testing.T) {
		// ps and sysctl are both procps; sysctl is in sbin, so only ps can
		// be hidden, and procps must still be named once.
		out, code := runTools(t, toolsPath(t, "ps"), nil, "--check")
		if code != 1 || strings.Count(out, "procps") != 1 {
			t.Fatalf("exit %d, output %q; want 1 naming procps once", code, out)
		}
	})
	t.Run("no-install", func(t *testing.T) {
		// NETWARD_NO_INSTALL=1 names what is missing and goes on, also
		// without --check (it would install as root otherwise).
		out, code := runTools(t, toolsPath(t, "wrk"), []string{"NETWARD_NO_INSTALL=1"})
		if code != 0 || !strings.Contains(out, "NETWARD_NO_INSTALL=1") || !strings.Contains(out, ": wrk") {
			t.Fatalf("exit %d, output %q; want 0 and a line naming wrk", code, out)
		}
	})
	t.Run("bad-argument", func(t *testing.T) {
		if _, code := runTools(t, toolsPath(t), nil, "--frobnicate"); code != 2 {
			t.Fatalf("exit %d, want 2", code)
		}
	})
}
