package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "netward.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{name: "empty file is defaults", body: "", check: func(t *testing.T, c *Config) {
			if c.TUN != "netward0" || c.FailMode != "open" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "fields", body: "tun: nw1\ninterfaces: [eth0, eth1]\nfail_mode: closed\nlimits:\n  inspect_timeout: 500ms\n  max_flows: 10\n", check: func(t *testing.T, c *Config) {
			if c.TUN != "nw1" || len(c.Interfaces) != 2 || c.FailMode != "closed" ||
				c.Limits.InspectTimeout != 500*time.Millisecond || c.Limits.MaxFlows != 10 {
				t.Errorf("got %+v", c)
			}
			if c.Limits.MaxHalfOpen != Default().Limits.MaxHalfOpen {
				t.Errorf("unset field lost its default: %d", c.Limits.MaxHalfOpen)
			}
		}},
		{name: "unknown key has line", body: "tun: nw1\nfail_mdoe: open\n", wantErr: "line 2: field fail_mdoe not found"},
		{name: "bad fail mode", body: "fail_mode: sideways\n", wantErr: `fail_mode: "sideways" is not open or closed`},
		{name: "bad duration", body: "limits:\n  idle_timeout: forever\n", wantErr: "line 2"},
		{name: "negative limit", body: "limits:\n  max_flows: -1\n", wantErr: "limits.max_flows: must be greater than 0"},
		{name: "long tun name", body: "tun: abcdefghijklmnopq\n", wantErr: "must be 1..15 bytes"},
		{name: "tun in interfaces", body: "interfaces: [netward0]\n", wantErr: "netward's own TUN"},
		{name: "mark outside mask", body: "mark: 0x10000\n", wantErr: "mark: 0x10000 is outside"},
		{name: "reserved table", body: "table: 254\n", wantErr: "table: 254"},
		{name: "bad metrics addr", body: "metrics:\n  listen: nowhere\n", wantErr: "metrics.listen"},
		{name: "rules URL", body: "rules: https://rules.example/fleet/rules.yaml\nrules_poll_interval: 1m\n", check: func(t *testing.T, c *Config) {
			if c.Rules != "https://rules.example/fleet/rules.yaml" || c.RulesPollInterval != time.Minute {
				t.Errorf("got rules %q every %v", c.Rules, c.RulesPollInterval)
			}
		}},
		{name: "rules URL without host", body: "rules: https:///rules.yaml\n", wantErr: "not a URL with a host"},
		{name: "rules other scheme", body: "rules: ftp://rules.example/r.yaml\n", wantErr: "only http:// and https://"},
		{name: "health", body: "health:\n  listen: \":9741\"\n  drain_timeout: 30s\n", check: func(t *testing.T, c *Config) {
			if c.Health.Listen != ":9741" || c.Health.DrainTimeout != 30*time.Second {
				t.Errorf("got %+v", c.Health)
			}
		}},
		{name: "health default drain", body: "", check: func(t *testing.T, c *Config) {
			if c.Health.Listen != "" || c.Health.DrainTimeout != 10*time.Second {
				t.Errorf("got %+v", c.Health)
			}
		}},
		{name: "bad health addr", body: "health:\n  listen: everywhere\n", wantErr: "health.listen"},
		{name: "negative drain", body: "health:\n  drain_timeout: -1s\n", wantErr: "health.drain_timeout: -1s is outside"},
		{name: "rules poll too often", body: "rules_poll_interval: 10ms\n", wantErr: "rules_poll_interval: 10ms is below 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, tt.body)
			c, err := Load(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestFlagsOverrideOnlyWhenGiven(t *testing.T) {
	p := writeFile(t, "tun: fromfile\nfail_mode: closed\nlog:\n  level: debug\n")
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	f := NewFlags(fs)
	if err := fs.Parse([]string{"--config", p, "--fail-mode", "open", "--interfaces", "eth0, eth1", "--offload=false", "--ack-delay", "1ms"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.TUN != "fromfile" {
		t.Errorf("TUN = %q; a flag that was not given overrode the file", c.TUN)
	}
	if c.AckDelay != time.Millisecond {
		t.Errorf("--ack-delay 1ms: AckDelay = %v", c.AckDelay)
	}
	if c.FailMode != "open" || c.Log.Level != "debug" || c.Offload {
		t.Errorf("got fail_mode=%q level=%q offload=%v", c.FailMode, c.Log.Level, c.Offload)
	}
	if strings.Join(c.Interfaces, ",") != "eth0,eth1" {
		t.Errorf("interfaces = %q", c.Interfaces)
	}
}

func TestFlagsBadValue(t *testing.T) {
	for _, args := range [][]string{
		{"--offload", "maybe"},
		{"--ack-delay", "soon"},
		{"--ack-delay", "1s"},
		{"--fail-mode", "half"},
		{"--tun", "has/slash"},
	} {
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		f := NewFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Load(); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
