package steer

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr string // "" = valid
	}{
		{"default", func(c *Config) {}, ""},
		{"interfaces", func(c *Config) { c.Interfaces = []string{"eth0", "eth1.100", "wg+"} }, ""},
		{"closed", func(c *Config) { c.FailMode = FailClosed }, ""},
		{"no ipv6", func(c *Config) { c.IPv6 = false }, ""},
		{"empty tun", func(c *Config) { c.TUN = "" }, "tun: interface name"},
		{"long tun", func(c *Config) { c.TUN = "netward-is-too-long" }, "1..15 bytes"},
		{"tun with slash", func(c *Config) { c.TUN = "a/b" }, "forbidden character"},
		{"tun wildcard", func(c *Config) { c.TUN = "netward+" }, "forbidden character"},
		{"tun lo", func(c *Config) { c.TUN = "lo" }, "loopback"},
		{"iface is tun", func(c *Config) { c.Interfaces = []string{"netward0"} }, "own TUN"},
		{"iface lo", func(c *Config) { c.Interfaces = []string{"lo"} }, "loopback"},
		{"iface twice", func(c *Config) { c.Interfaces = []string{"eth0", "eth0"} }, "twice"},
		{"iface plus only", func(c *Config) { c.Interfaces = []string{"+"} }, "every interface"},
		{"iface empty", func(c *Config) { c.Interfaces = []string{""} }, "1..15 bytes"},
		{"iface bang", func(c *Config) { c.Interfaces = []string{"!eth0"} }, "forbidden character"},
		{"mark zero", func(c *Config) { c.Mark = 0 }, "mark must not be 0"},
		{"mask zero", func(c *Config) { c.Mask = 0 }, "mask must not be 0"},
		{"mark outside mask", func(c *Config) { c.Mark = 0x10000 }, "outside its mask"},
		{"table zero", func(c *Config) { c.Table = 0 }, "table 0"},
		{"table main", func(c *Config) { c.Table = 254 }, "table 254"},
		{"table local", func(c *Config) { c.Table = 255 }, "table 255"},
		{"table default", func(c *Config) { c.Table = 253 }, "table 253"},
		{"table too big", func(c *Config) { c.Table = 1 << 32 }, "not a free routing table"},
		{"table negative", func(c *Config) { c.Table = -1 }, "not a free routing table"},
		{"priority zero", func(c *Config) { c.RulePriority = 0 }, "rule priority 0"},
		{"priority main", func(c *Config) { c.RulePriority = 32766 }, "rule priority 32766"},
		{"fail mode", func(c *Config) { c.FailMode = 7 }, "fail mode 7"},
		{"tun addr unset", func(c *Config) { c.TUNAddr = netip.Addr{} }, "link-local"},
		{"tun addr private", func(c *Config) { c.TUNAddr = netip.MustParseAddr("10.0.0.1") }, "link-local"},
		{"tun addr v6", func(c *Config) { c.TUNAddr = netip.MustParseAddr("fe80::1") }, "link-local"},
		{"several", func(c *Config) { c.Mark, c.Table = 0, 0 }, "mark must not be 0"},
		{"kernel upstream", func(c *Config) { c.TransparentMark, c.UpstreamMark = 0x4e58, 0x4e59 }, ""},
		{"upstream mark alone", func(c *Config) { c.UpstreamMark = 0x4e59 }, "both or neither"},
		{"transparent mark alone", func(c *Config) { c.TransparentMark = 0x4e58 }, "both or neither"},
		{"transparent mark is steering mark", func(c *Config) { c.TransparentMark, c.UpstreamMark = DefaultMark, 0x4e59 }, "transparent mark 0x4e57 is the steering mark"},
		{"upstream mark is steering mark", func(c *Config) { c.TransparentMark, c.UpstreamMark = 0x4e58, DefaultMark }, "upstream mark 0x4e57 is the steering mark"},
		{"marks equal", func(c *Config) { c.TransparentMark, c.UpstreamMark = 0x4e58, 0x4e58 }, "both 0x4e58"},
		{"transparent mark outside mask", func(c *Config) { c.TransparentMark, c.UpstreamMark = 0x14e58, 0x4e59 }, "outside the mask"},
		{"transparent table is steering table", func(c *Config) { c.TransparentTable = DefaultTable }, "steering table"},
		{"transparent table main", func(c *Config) { c.TransparentTable = 254 }, "transparent table 254"},
		{"transparent priority is steering's", func(c *Config) { c.TransparentRulePriority = DefaultRulePriority }, "steering rule's"},
		{"transparent priority main", func(c *Config) { c.TransparentRulePriority = 32766 }, "transparent rule priority 32766"},
		{"transparent table unset", func(c *Config) {
			c.TransparentMark, c.UpstreamMark, c.TransparentTable = 0x4e58, 0x4e59, 0
		}, "transparent table must be set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate() = %v; want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate() = %v; want error containing %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrBadConfig) {
				t.Errorf("validate() = %v; want ErrBadConfig", err)
			}
		})
	}
}

func TestValidateReportsAll(t *testing.T) {
	c := DefaultConfig()
	c.Mark, c.Table, c.RulePriority = 0, 0, 0
	err := c.validate()
	for _, want := range []string{"mark", "table", "rule priority"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validate() = %v; want it to mention %q", err, want)
		}
	}
}

func TestFailMode(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want FailMode
		ok   bool
	}{
		{"open", FailOpen, true},
		{"closed", FailClosed, true},
		{" Closed ", FailClosed, true},
		{"", 0, false},
		{"shut", 0, false},
	} {
		got, err := ParseFailMode(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseFailMode(%q) = %v, %v", tt.in, got, err)
		}
		var m FailMode
		if err := m.UnmarshalText([]byte(tt.in)); (err == nil) != tt.ok || m != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v", tt.in, m, err)
		}
	}
	for _, m := range []FailMode{FailOpen, FailClosed} {
		b, err := m.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseFailMode(string(b))
		if err != nil || back != m {
			t.Errorf("round trip %v → %q → %v, %v", m, b, back, err)
		}
	}
	if _, err := FailMode(9).MarshalText(); err == nil {
		t.Error("MarshalText(9) succeeded")
	}
	if s := FailMode(9).String(); s != "FailMode(9)" {
		t.Errorf("String() = %q", s)
	}
}
