package config

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Flags are the command-line flags that override the config file. A flag
// overrides its field only when it is given, so a file's value is never
// replaced by a flag's default.
type Flags struct {
	fs   *flag.FlagSet
	path string
	set  map[string]func(c *Config, v string) error
}

// NewFlags registers --config and every override flag on fs. Call Load
// after fs.Parse.
func NewFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, set: map[string]func(*Config, string) error{}}
	fs.StringVar(&f.path, "config", "", "config `FILE` (YAML); flags override it")
	str := func(name, usage string, apply func(c *Config, v string)) {
		fs.String(name, "", usage)
		f.set[name] = func(c *Config, v string) error { apply(c, v); return nil }
	}
	str("tun", "TUN device `NAME` (default netward0)", func(c *Config, v string) { c.TUN = v })
	str("interfaces", "comma-separated input `interfaces` to steer (default: all but lo and the TUN)", func(c *Config, v string) {
		c.Interfaces = splitList(v)
	})
	str("rules", "rule `FILE`, or an http(s):// URL polled every --rules-poll-interval (default: allow all)", func(c *Config, v string) { c.Rules = v })
	fs.String("rules-poll-interval", "", "how often a rules URL is asked whether it changed (ETag/Last-Modified), e.g. 30s (default 30s)")
	f.set["rules-poll-interval"] = func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("--rules-poll-interval: %q is not a duration such as 30s", v)
		}
		c.RulesPollInterval = d
		return nil
	}
	str("geoip-country", "country mmdb `FILE`", func(c *Config, v string) { c.GeoIP.Country = v })
	str("geoip-asn", "ASN mmdb `FILE`", func(c *Config, v string) { c.GeoIP.ASN = v })
	str("log", "EVE event log `FILE` (- for stdout)", func(c *Config, v string) { c.Log.Events = v })
	str("log-level", "process log `level`: debug, info, warn, error", func(c *Config, v string) { c.Log.Level = v })
	str("log-format", "process log `format`: text or json", func(c *Config, v string) { c.Log.Format = v })
	str("metrics", "`ADDR` for /metrics, /healthz, /readyz (e.g. 127.0.0.1:9740)", func(c *Config, v string) { c.Metrics.Listen = v })
	str("health-listen", "`ADDR` for a load balancer's /healthz: 200 while the datapath serves, 503 otherwise and while draining (e.g. :9741)", func(c *Config, v string) { c.Health.Listen = v })
	fs.String("drain-timeout", "", "with --health-listen: on SIGTERM answer 503 and go on serving open flows this long before stopping, e.g. 30s; 0 = stop at once (default 10s)")
	f.set["drain-timeout"] = func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("--drain-timeout: %q is not a duration such as 10s", v)
		}
		c.Health.DrainTimeout = d
		return nil
	}
	str("fail-mode", "`open` or closed: what happens to traffic when netward is not running", func(c *Config, v string) { c.FailMode = v })
	str("admin-socket", "unix socket `PATH` that netward status reads", func(c *Config, v string) { c.Admin.Socket = v })
	fs.String("offload", "", "use TUN offloads: true or false (default true)")
	f.set["offload"] = func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("--offload: %q is not true or false", v)
		}
		c.Offload = b
		return nil
	}
	fs.String("ack-delay", "", "how long a pure ACK may wait for data to carry it, e.g. 200us; 0 = never (default 0)")
	f.set["ack-delay"] = func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("--ack-delay: %q is not a duration such as 200us", v)
		}
		c.AckDelay = d
		return nil
	}
	boolFlag := func(name, usage string, apply func(c *Config, b bool)) {
		fs.String(name, "", usage)
		f.set[name] = func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("--%s: %q is not true or false", name, v)
			}
			apply(c, b)
			return nil
		}
	}
	boolFlag("udp", "steer and judge UDP (QUIC, DNS): true or false (default true)", func(c *Config, b bool) { c.UDP = b })
	boolFlag("udp-bypass", "hand allowed QUIC/UDP flows to kernel forwarding after the verdict: true or false (default true)", func(c *Config, b bool) { c.UDPBypass = b })
	fs.String("udp-idle-timeout", "", "end a UDP flow idle this long, e.g. 60s (default 60s)")
	f.set["udp-idle-timeout"] = func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("--udp-idle-timeout: %q is not a positive duration such as 60s", v)
		}
		c.Limits.UDPIdleTimeout = d
		return nil
	}
	fs.Bool("geneve", false, "GENEVE datapath behind an AWS Gateway Load Balancer: flows arrive and leave encapsulated on UDP (--geneve-listen), no TUN, no steering")
	f.set["geneve"] = func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("--geneve: %q is not true or false", v)
		}
		c.Geneve.Enabled = b
		return nil
	}
	str("geneve-listen", "UDP `ADDR` GENEVE arrives on (default :6081)", func(c *Config, v string) { c.Geneve.Listen = v })
	fs.String("geneve-max-endpoints", "", "most GWLB (endpoint, attachment) pairs served at once, each with its own stack (default 64)")
	f.set["geneve-max-endpoints"] = func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("--geneve-max-endpoints: %q is not a number", v)
		}
		c.Geneve.MaxEndpoints = n
		return nil
	}
	fs.String("pprof", "", "serve /debug/pprof on the metrics listener: true or false")
	f.set["pprof"] = func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("--pprof: %q is not true or false", v)
		}
		c.Metrics.Pprof = b
		return nil
	}
	return f
}

// Path is the --config value.
func (f *Flags) Path() string { return f.path }

// Load reads the config file (if any), applies the flags that were given,
// and validates the result.
func (f *Flags) Load() (*Config, error) {
	c := Default()
	if f.path != "" {
		var err error
		if c, err = Load(f.path); err != nil {
			return nil, err
		}
	}
	var errs []string
	f.fs.Visit(func(fl *flag.Flag) {
		apply, ok := f.set[fl.Name]
		if !ok {
			return
		}
		if err := apply(c, fl.Value.String()); err != nil {
			errs = append(errs, err.Error())
		}
	})
	if len(errs) > 0 {
		return nil, fmt.Errorf("config: %s", strings.Join(errs, "; "))
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
