// Package config is netward's appliance configuration: the YAML file given
// by --config, its defaults, its validation, and the command-line flags
// that override it. Rule files are not here; they belong to package rules.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole appliance configuration. Every field has a YAML name,
// a default (see Default) and is documented in README.md.
type Config struct {
	// Interfaces are the input interfaces whose forwarded TCP is steered.
	// Empty means every interface but loopback and the TUN.
	Interfaces []string `yaml:"interfaces"`
	// TUN is the name of the TUN device netward creates.
	TUN string `yaml:"tun"`
	// MTU of the TUN device.
	MTU int `yaml:"mtu"`
	// Offload enables the TUN's virtio-net offloads (TSO/GSO super-packets).
	// false selects the plain one-packet-per-read path.
	Offload bool `yaml:"offload"`
	// AckDelay is how long a pure ACK of netward's TCP may wait for a
	// packet of its connection that carries it instead (offload only);
	// 0, the default, writes every ACK at once (see netstack/README.md for
	// the trade-off).
	AckDelay time.Duration `yaml:"ack_delay"`
	// IPv6 steers IPv6 too. Set false on kernels without IPv6.
	IPv6 bool `yaml:"ipv6"`
	// Mark is the firewall mark that selects steered packets.
	Mark uint32 `yaml:"mark"`
	// Table is the routing table that sends marked packets to the TUN.
	Table int `yaml:"table"`
	// RulePriority is the priority of netward's ip rules.
	RulePriority int `yaml:"rule_priority"`
	// FailMode is what happens to steered traffic when netward is not
	// running: "open" (plain kernel forwarding) or "closed" (blocked).
	FailMode string `yaml:"fail_mode"`

	// UDP steers forwarded UDP too: QUIC judged by its ClientHello, DNS
	// query by query, other UDP by addresses, ports and geo.
	UDP bool `yaml:"udp"`
	// UDPBypass hands an allowed QUIC or plain UDP flow to kernel
	// forwarding after its verdict (conntrack mark). false keeps every
	// datagram on netward's path (slower; for comparison).
	UDPBypass bool `yaml:"udp_bypass"`

	// Rules is the rule file (see rules/README.md): a path, or an
	// http:// or https:// URL that is polled every RulesPollInterval.
	// Empty: allow all.
	Rules string `yaml:"rules"`
	// RulesPollInterval is how often a rule URL is asked (conditionally:
	// ETag, Last-Modified) whether it changed. A rule file path is watched
	// instead.
	RulesPollInterval time.Duration `yaml:"rules_poll_interval"`
	// GeoIP names the mmdb files for country and ASN lookups.
	GeoIP GeoIP `yaml:"geoip"`

	Log     Log     `yaml:"log"`
	Metrics Metrics `yaml:"metrics"`
	Health  Health  `yaml:"health"`
	Admin   Admin   `yaml:"admin"`
	Limits  Limits  `yaml:"limits"`
	Geneve  Geneve  `yaml:"geneve"`
}

// Geneve configures the GENEVE datapath behind an AWS Gateway Load
// Balancer (netward run --geneve): flows arrive and leave encapsulated on
// UDP instead of through the TUN and the steering rules.
type Geneve struct {
	// Enabled turns the GENEVE datapath on (and the TUN and steering off).
	Enabled bool `yaml:"enabled"`
	// Listen is the UDP address GENEVE arrives on (GWLB sends to 6081).
	Listen string `yaml:"listen"`
	// MaxEndpoints caps the (GWLB endpoint, attachment) pairs served at
	// once, each with its own stack; packets of more are dropped and
	// counted.
	MaxEndpoints int `yaml:"max_endpoints"`
}

// Health configures the health check a load balancer (AWS Gateway Load
// Balancer) asks, and the drain on SIGTERM.
type Health struct {
	// Listen is the address of /healthz: 200 while the datapath serves,
	// 503 otherwise (starting, failed, steering gone, draining). ""
	// disables it, and the drain with it.
	Listen string `yaml:"listen"`
	// DrainTimeout is how long netward goes on serving after SIGINT or
	// SIGTERM with /healthz answering 503, so the load balancer sends new
	// flows elsewhere while open ones finish; then it stops as without a
	// health check. 0 stops at once. Only with Listen.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// GeoIP names the MaxMind-format databases.
type GeoIP struct {
	Country string `yaml:"country"` // GeoIP2/GeoLite2 Country or City mmdb
	ASN     string `yaml:"asn"`     // GeoIP2/GeoLite2 ASN mmdb
}

// Log configures the process log and the EVE event log.
type Log struct {
	// Level of the process log (stderr): debug, info, warn, error.
	Level string `yaml:"level"`
	// Format of the process log: text or json.
	Format string `yaml:"format"`
	// Events is where EVE JSON events go: "-" for stdout, a file path, or
	// "" for nowhere.
	Events string `yaml:"events"`
	// EventBuffer is how many events may wait for the writer before new
	// ones are dropped (and counted).
	EventBuffer int `yaml:"event_buffer"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is the address of /metrics, /healthz and /readyz; "" disables.
	Listen string `yaml:"listen"`
	// Pprof serves /debug/pprof on the same listener.
	Pprof bool `yaml:"pprof"`
}

// Admin configures the local endpoint that `netward status` reads.
type Admin struct {
	Socket string `yaml:"socket"`
}

// Limits bound what netward holds. Past a limit the flow is refused (RST)
// and the hit is counted and logged.
type Limits struct {
	// MaxFlows is the most concurrent flows.
	MaxFlows int `yaml:"max_flows"`
	// MaxHalfOpen is the most handshakes in progress (SYN received, upstream
	// not yet connected).
	MaxHalfOpen int `yaml:"max_half_open"`
	// InspectBytes is the most client bytes held per flow while inspecting.
	InspectBytes int `yaml:"inspect_bytes"`
	// InspectTimeout is how long to wait for the client's first bytes before
	// the flow is judged as app "unknown" (server-first protocols).
	InspectTimeout time.Duration `yaml:"inspect_timeout"`
	// ConnectTimeout bounds the upstream handshake.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// IdleTimeout closes an established flow with no bytes either way.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// HalfClosedTimeout closes a flow whose one side has finished and the
	// other has sent nothing since.
	HalfClosedTimeout time.Duration `yaml:"half_closed_timeout"`
	// UDPIdleTimeout ends a UDP flow that sent nothing through netward
	// for this long (a bypassed one lives while the kernel tracks it).
	UDPIdleTimeout time.Duration `yaml:"udp_idle_timeout"`
	// UDPInspectTimeout is how long a QUIC client may take to complete
	// its ClientHello (its Initial datagrams are held meanwhile).
	UDPInspectTimeout time.Duration `yaml:"udp_inspect_timeout"`
}

// Default returns the configuration used when no file and no flag says
// otherwise.
func Default() *Config {
	return &Config{
		TUN:          "netward0",
		MTU:          1500,
		Offload:      true,
		IPv6:         true,
		Mark:         0x4e57,
		Table:        20055,
		RulePriority: 20055,
		FailMode:     "open",
		UDP:          true,
		UDPBypass:    true,

		RulesPollInterval: 30 * time.Second,
		Log: Log{
			Level:       "info",
			Format:      "text",
			Events:      "",
			EventBuffer: 65536,
		},
		Metrics: Metrics{Listen: ""},
		Health:  Health{DrainTimeout: 10 * time.Second},
		Geneve:  Geneve{Listen: ":6081", MaxEndpoints: 64},
		Admin:   Admin{Socket: "/run/netward/admin.sock"},
		Limits: Limits{
			MaxFlows:          200000,
			MaxHalfOpen:       4096,
			InspectBytes:      64 << 10,
			InspectTimeout:    3 * time.Second,
			ConnectTimeout:    30 * time.Second,
			IdleTimeout:       15 * time.Minute,
			HalfClosedTimeout: 2 * time.Minute,
			UDPIdleTimeout:    60 * time.Second,
			UDPInspectTimeout: 2 * time.Second,
		},
	}
}

// Load reads the file at path over the defaults and validates the result.
// An empty path gives the defaults.
func Load(path string) (*Config, error) {
	c := Default()
	if path == "" {
		return c, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := c.decode(path, data); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

// decode applies a YAML document over c. Unknown keys are errors, with the
// file and line yaml.v3 reports.
func (c *Config) decode(path string, data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file means all defaults
		}
		return fmt.Errorf("config: %s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return nil
}

// Validate checks every field and returns all problems at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if err := ValidIfName(c.TUN); err != nil {
		bad("tun", "%v", err)
	}
	for _, name := range c.Interfaces {
		if err := ValidIfName(name); err != nil {
			bad("interfaces", "%v", err)
		} else if name == c.TUN {
			bad("interfaces", "%q is netward's own TUN device", name)
		}
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		bad("mtu", "%d is outside 1280..65535", c.MTU)
	}
	if c.AckDelay < 0 || c.AckDelay > 10*time.Millisecond {
		// Longer would start to look like loss to the peers' RTT
		// estimators; a kernel's own minimum delayed ACK is 40 ms, but
		// it also ACKs every second segment.
		bad("ack_delay", "%v is outside 0..10ms", c.AckDelay)
	}
	if c.Mark == 0 || c.Mark > 0xffff {
		// steer matches the mark under the mask 0xffff (the low 16 bits),
		// leaving the high bits to other tools.
		bad("mark", "%#x is outside 0x1..0xffff", c.Mark)
	}
	if c.Table <= 0 || c.Table >= 252 && c.Table <= 255 || int64(c.Table) > math.MaxUint32 {
		bad("table", "%d is not a free routing table id (1..251, 256..)", c.Table)
	}
	if c.RulePriority <= 0 || c.RulePriority >= 32766 {
		bad("rule_priority", "%d is outside 1..32765", c.RulePriority)
	}
	if _, err := ParseFailMode(c.FailMode); err != nil {
		bad("fail_mode", "%v", err)
	}
	if strings.HasPrefix(c.Rules, "http://") || strings.HasPrefix(c.Rules, "https://") {
		if u, err := url.Parse(c.Rules); err != nil || u.Host == "" {
			bad("rules", "%q is not a URL with a host", c.Rules)
		}
	} else if strings.Contains(c.Rules, "://") {
		bad("rules", "%q: only http:// and https:// URLs are supported", c.Rules)
	}
	if c.RulesPollInterval < time.Second {
		bad("rules_poll_interval", "%v is below 1s", c.RulesPollInterval)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is not text or json", c.Log.Format)
	}
	if c.Log.EventBuffer < 1 {
		bad("log.event_buffer", "must be at least 1")
	}
	if c.Metrics.Listen != "" {
		if _, err := netip.ParseAddrPort(c.Metrics.Listen); err != nil && !strings.HasPrefix(c.Metrics.Listen, ":") {
			bad("metrics.listen", "%q is not ip:port or :port", c.Metrics.Listen)
		}
	}
	if c.Health.Listen != "" {
		if _, err := netip.ParseAddrPort(c.Health.Listen); err != nil && !strings.HasPrefix(c.Health.Listen, ":") {
			bad("health.listen", "%q is not ip:port or :port", c.Health.Listen)
		}
	}
	if _, err := netip.ParseAddrPort(c.Geneve.Listen); c.Geneve.Enabled && err != nil && !strings.HasPrefix(c.Geneve.Listen, ":") {
		bad("geneve.listen", "%q is not ip:port or :port", c.Geneve.Listen)
	}
	if c.Geneve.MaxEndpoints < 1 || c.Geneve.MaxEndpoints > 4096 {
		bad("geneve.max_endpoints", "%d is outside 1..4096", c.Geneve.MaxEndpoints)
	}
	if c.Health.DrainTimeout < 0 || c.Health.DrainTimeout > time.Hour {
		bad("health.drain_timeout", "%v is outside 0..1h", c.Health.DrainTimeout)
	}
	l := c.Limits
	positive := []struct {
		name string
		v    int64
	}{
		{"limits.max_flows", int64(l.MaxFlows)},
		{"limits.max_half_open", int64(l.MaxHalfOpen)},
		{"limits.inspect_bytes", int64(l.InspectBytes)},
		{"limits.inspect_timeout", int64(l.InspectTimeout)},
		{"limits.connect_timeout", int64(l.ConnectTimeout)},
		{"limits.idle_timeout", int64(l.IdleTimeout)},
		{"limits.half_closed_timeout", int64(l.HalfClosedTimeout)},
		{"limits.udp_idle_timeout", int64(l.UDPIdleTimeout)},
		{"limits.udp_inspect_timeout", int64(l.UDPInspectTimeout)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			bad(p.name, "must be greater than 0")
		}
	}
	if l.InspectBytes > 0 && l.InspectBytes < 4096 {
		bad("limits.inspect_bytes", "%d is below 4096, too small for a ClientHello", l.InspectBytes)
	}
	return errors.Join(errs...)
}

// FailMode is what happens to steered traffic while netward is not running.
type FailMode uint8

const (
	FailOpen   FailMode = iota // plain kernel forwarding takes over
	FailClosed                 // steered traffic is blocked
)

func (m FailMode) String() string {
	if m == FailClosed {
		return "closed"
	}
	return "open"
}

// ParseFailMode parses "open" or "closed".
func ParseFailMode(s string) (FailMode, error) {
	switch s {
	case "open":
		return FailOpen, nil
	case "closed":
		return FailClosed, nil
	}
	return 0, fmt.Errorf("%q is not open or closed", s)
}

// ValidIfName checks a Linux interface name (IFNAMSIZ is 16 with the NUL).
func ValidIfName(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("interface name %q must be 1..15 bytes", name)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("interface name %q has a forbidden character", name)
	}
	return nil
}
