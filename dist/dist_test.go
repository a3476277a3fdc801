// Package dist_test checks the files operators install from dist/: the
// example config loads with the config package's own loader (so its keys
// match config.go), and the unit and logrotate files say what netward needs.
package dist_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/netward/netward/config"
)

func TestAWSApplianceConfigLoads(t *testing.T) {
	c, err := config.Load("aws-appliance.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.FailMode != "closed" || c.Log.Events != "/var/log/netward/eve.json" ||
		c.Admin.Socket != "/run/netward/admin.sock" || c.Metrics.Listen != "127.0.0.1:9740" ||
		len(c.Interfaces) != 1 || c.Interfaces[0] != "ens5" || c.Limits.IdleTimeout.Seconds() != 340 {
		t.Errorf("aws-appliance.yaml not read as documented: %+v", c)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unitValues returns every value of key in a systemd unit.
func unitValues(unit, key string) []string {
	var out []string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestServiceUnit(t *testing.T) {
	unit := readFile(t, "netward.service")
	want := map[string]string{
		"ExecStart":               "/usr/local/bin/netward run --config /etc/netward/netward.yaml",
		"ExecStopPost":            "/usr/local/bin/netward cleanup --config /etc/netward/netward.yaml",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"Restart":                 "on-failure",
		"CapabilityBoundingSet":   "CAP_NET_ADMIN CAP_NET_RAW",
		"DeviceAllow":             "/dev/net/tun rw",
		"RuntimeDirectory":        "netward",
		"LogsDirectory":           "netward",
		"NoNewPrivileges":         "yes",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
	}
	for k, v := range want {
		got := unitValues(unit, k)
		if len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// Settings that would break steering must stay off.
	for _, k := range []string{"ProtectKernelTunables", "PrivateNetwork", "PrivateDevices", "User", "DynamicUser"} {
		if got := unitValues(unit, k); len(got) != 0 {
			t.Errorf("%s is set (%q): netward could not steer", k, got)
		}
	}
	// The admin socket the unit's RuntimeDirectory makes is the config default.
	if config.Default().Admin.Socket != "/run/netward/admin.sock" {
		t.Error("config's admin socket default moved out of RuntimeDirectory=netward")
	}
	if path, err := exec.LookPath("systemd-analyze"); err == nil {
		// verify checks the syntax; it complains about the missing binary
		// on a build machine, so only syntax errors fail the test.
		out, _ := exec.Command(path, "verify", "netward.service").CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "Unknown key") || strings.Contains(line, "Failed to parse") || strings.Contains(line, "Invalid") {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
	}
}

func TestLogrotateMatchesConfig(t *testing.T) {
	rot := readFile(t, "logrotate.d/netward")
	c, err := config.Load("aws-appliance.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rot, c.Log.Events+" {") {
		t.Errorf("logrotate does not rotate %s", c.Log.Events)
	}
	if !strings.Contains(rot, "--signal=SIGUSR1") || !strings.Contains(rot, "--kill-who=main") || !strings.Contains(rot, "delaycompress") {
		t.Error("logrotate must send SIGUSR1 to netward only, and delay compression")
	}
	if strings.Contains(rot, "copytruncate") {
		t.Error("copytruncate loses events; netward reopens on SIGUSR1")
	}
}

// TestAWSGWLBConfigLoads reads the netward.yaml of README-aws.md's Gateway
// Load Balancer section with the config loader, so the documented keys stay
// the ones netward reads.
func TestAWSGWLBConfigLoads(t *testing.T) {
	doc := readFile(t, "README-aws.md")
	_, sec, ok := strings.Cut(doc, "## 8. A fleet behind a Gateway Load Balancer")
	if !ok {
		t.Fatal("README-aws.md: no Gateway Load Balancer section")
	}
	_, block, ok := strings.Cut(sec, "```yaml\n")
	if !ok {
		t.Fatal("README-aws.md section 8: no yaml block")
	}
	block, _, _ = strings.Cut(block, "```")
	path := t.TempDir() + "/netward.yaml"
	if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("README-aws.md section 8's netward.yaml: %v", err)
	}
	if !c.Geneve.Enabled || c.Geneve.Listen != ":6081" || c.Geneve.MaxEndpoints != 64 ||
		c.Health.Listen != ":9741" || c.Health.DrainTimeout.Seconds() != 20 || !strings.HasPrefix(c.Rules, "https://") {
		t.Errorf("section 8's netward.yaml not read as documented: %+v", c)
	}
}
