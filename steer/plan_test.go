package steer

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestDocListsDescribe keeps doc.go's listing of the kernel state true:
// every command Describe gives for the documented configurations must be
// in it.
func TestDocListsDescribe(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	closed := DefaultConfig()
	closed.FailMode = FailClosed
	explicit := DefaultConfig()
	explicit.Interfaces = []string{"eth1", "eth2"}
	upstream := DefaultConfig()
	upstream.TransparentMark, upstream.UpstreamMark = 0x4e58, 0x4e59
	accept := upstream
	accept.AcceptPort = DefaultAcceptPort
	for _, c := range []Config{DefaultConfig(), closed, upstream, accept} {
		for _, line := range Describe(c) {
			if !strings.Contains(string(doc), "//\t"+line+"\n") {
				t.Errorf("doc.go does not list %q", line)
			}
		}
	}
	var perIface int
	for _, line := range Describe(explicit) {
		if strings.Contains(line, "-i eth1 -p tcp") {
			perIface++
			if strings.HasPrefix(line, "iptables ") && !strings.Contains(string(doc), line) {
				t.Errorf("doc.go does not show %q", line)
			}
		}
		if strings.Contains(line, "-i lo") {
			t.Errorf("explicit interfaces still exclude lo: %q", line)
		}
	}
	if perIface != 4 { // raw + mangle, v4 + v6
		t.Errorf("%d per-interface rules for eth1; want 4", perIface)
	}
}

func TestPlanNoIPv6(t *testing.T) {
	c := DefaultConfig()
	c.IPv6 = false
	for _, line := range Describe(c) {
		if strings.Contains(line, "ip6tables") || strings.Contains(line, "ip -6") || strings.Contains(line, "ipv6") {
			t.Errorf("IPv6 off, yet %q", line)
		}
	}
}

func TestSplitRule(t *testing.T) {
	tests := []struct {
		line string
		want []string
		err  bool
	}{
		{"-A PREROUTING -j NETWARD", []string{"-A", "PREROUTING", "-j", "NETWARD"}, false},
		{`-A NETWARD -m u32 ! --u32 "0x4&0x3fff=0x0" -j RETURN`, []string{"-A", "NETWARD", "-m", "u32", "!", "--u32", "0x4&0x3fff=0x0", "-j", "RETURN"}, false},
		{`-A X -m comment --comment "a \"b\" c\\d" -j NETWARD_RAW`, []string{"-A", "X", "-m", "comment", "--comment", `a "b" c\d`, "-j", "NETWARD_RAW"}, false},
		{`-A X -m comment --comment ""`, []string{"-A", "X", "-m", "comment", "--comment", ""}, false},
		{"  -N   NETWARD  ", []string{"-N", "NETWARD"}, false},
		{"", nil, false},
		{`-A X "unterminated`, nil, true},
		{`-A X "ends in \`, nil, true},
	}
	for _, tt := range tests {
		got, err := splitRule(tt.line)
		if (err != nil) != tt.err || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, %v; want %q, err %v", tt.line, got, err, tt.want, tt.err)
		}
	}
}

func TestJumpTarget(t *testing.T) {
	for line, want := range map[string]string{
		"-A PREROUTING -j NETWARD":             "NETWARD",
		"-A PREROUTING -p tcp -g NETWARD_X":    "NETWARD_X",
		"-A PREROUTING --jump NETWARD_RAW":     "NETWARD_RAW",
		"-A PREROUTING -m mark --mark 1":       "",
		"-A PREROUTING -j":                     "",
		"-A NETWARD -j MARK --set-xmark 0x1/1": "MARK",
	} {
		args, err := splitRule(line)
		if err != nil {
			t.Fatal(err)
		}
		if got := jumpTarget(args); got != want {
			t.Errorf("jumpTarget(%q) = %q; want %q", line, got, want)
		}
	}
}

// quoteLikeIPTables quotes an argument as iptables -S does (save_string).
func quoteLikeIPTables(a string) string {
	if a != "" && !strings.ContainsAny(a, " \t\"\\'!&|;<>()[]{}*?$`") {
		return a
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
}

// FuzzSplitRule: splitRule never panics, and undoes iptables' quoting.
func FuzzSplitRule(f *testing.F) {
	f.Add("-A NETWARD -m comment --comment x", "a \"b\" c")
	f.Add("-A PREROUTING -j NETWARD", "")
	f.Add(`-A X "`, `\`)
	f.Fuzz(func(t *testing.T, line, arg string) {
		_, _ = splitRule(line)
		if strings.ContainsAny(arg, "\x00\n") {
			return
		}
		args := []string{"-A", "X", "--comment", arg, "-j", "NETWARD"}
		q := make([]string, len(args))
		for i, a := range args {
			q[i] = quoteLikeIPTables(a)
		}
		got, err := splitRule(strings.Join(q, " "))
		if err != nil || !reflect.DeepEqual(got, args) {
			t.Fatalf("splitRule(%q) = %q, %v; want %q", strings.Join(q, " "), got, err, args)
		}
	})
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"-m", "u32", "!", "--u32", "0x4&0x3fff=0x0", "it's"})
	want := `-m u32 ! --u32 '0x4&0x3fff=0x0' 'it'\''s'`
	if got != want {
		t.Errorf("shellJoin = %s; want %s", got, want)
	}
}

func TestEarlyDemuxMarker(t *testing.T) {
	for _, old := range []int{1, 2} {
		line := "-A " + UpstreamChain + " " + shellJoin(earlyDemuxMarker(old))
		// iptables -S writes the comment in double quotes.
		line = strings.ReplaceAll(line, "'", `"`)
		args, err := splitRule(line)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := parseEarlyDemuxMarker(args); !ok || v != old {
			t.Errorf("parseEarlyDemuxMarker(%q) = %d, %v; want %d, true", line, v, ok, old)
		}
	}
	for _, line := range []string{
		`-A NETWARD_UPSTREAM -m mark --mark 0x4e59/0xffff -j CT --notrack`,
		`-A NETWARD_UPSTREAM -m comment --comment "netward: net.ipv4.tcp_early_demux was x"`,
		`-A NETWARD_UPSTREAM -m comment --comment "netward: net.ipv4.ip_forward was 1"`,
		`-A NETWARD_UPSTREAM -m comment --comment "netward: net.ipv4.tcp_early_demux was -1"`,
	} {
		args, err := splitRule(line)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := parseEarlyDemuxMarker(args); ok {
			t.Errorf("parseEarlyDemuxMarker(%q) = %d, true; want no marker", line, v)
		}
	}
}

func TestPlanKernelUpstreamOff(t *testing.T) {
	for _, line := range Describe(DefaultConfig()) {
		for _, w := range []string{TransparentChain, UpstreamChain, "tcp_early_demux", "20056", "20054", "OUTPUT"} {
			if strings.Contains(line, w) {
				t.Errorf("kernel upstream off, yet %q", line)
			}
		}
	}
}

// TestPlanKernelAccept: with AcceptPort, each family's SYNs meet the
// TPROXY rule (loopback listener, the transparent mark) just before the
// MARK rule that would steer them into the TUN; without the kernel
// upstream leg the port is a config error.
func TestPlanKernelAccept(t *testing.T) {
	c := DefaultConfig()
	c.TransparentMark, c.UpstreamMark = 0x4e58, 0x4e59
	c.AcceptPort = 20100
	for _, v6 := range []bool{false, true} {
		lo := "127.0.0.1"
		if v6 {
			lo = "::1"
		}
		var mangle *chainPlan
		for _, cp := range chainsPlan(&c, v6) {
			if cp.table == "mangle" && cp.chain == MangleChain {
				mangle = &cp
			}
		}
		if mangle == nil {
			t.Fatalf("v6=%v: no %s chain", v6, MangleChain)
		}
		tproxy, mark := -1, -1
		for i, r := range mangle.rules {
			line := strings.Join(r, " ")
			if strings.Contains(line, "TPROXY") {
				tproxy = i
				want := "-p tcp --syn -j TPROXY --on-port 20100 --on-ip " + lo + " --tproxy-mark 0x4e58/0xffff"
				if line != want {
					t.Errorf("v6=%v: TPROXY rule %q; want %q", v6, line, want)
				}
			}
			if mark < 0 && strings.HasPrefix(line, "-p tcp -j MARK") {
				mark = i
			}
		}
		if tproxy < 0 || mark != tproxy+1 {
			t.Errorf("v6=%v: TPROXY rule at %d, TCP MARK at %d; want it just before", v6, tproxy, mark)
		}
	}
	off := DefaultConfig()
	off.AcceptPort = 20100
	if err := off.validate(); err == nil || !strings.Contains(err.Error(), "accept port") {
		t.Errorf("accept port without the kernel upstream leg: validate() = %v", err)
	}
	for _, line := range Describe(DefaultConfig()) {
		if strings.Contains(line, "TPROXY") {
			t.Errorf("kernel accept off, yet %q", line)
		}
	}
}

// TestPlanReplaySYN: with SYN replay, forwarded SYNs are steered into the
// TUN as without the kernel client leg (no TPROXY rule in the steering
// chain), and the only TPROXY rule takes SYNs out of the TUN, first in the
// transparent chain, before its rule that returns every other SYN; the
// socket match takes any transparent socket (the handshake's request
// socket has no mark).
func TestPlanReplaySYN(t *testing.T) {
	c := DefaultConfig()
	c.TransparentMark, c.UpstreamMark = 0x4e58, 0x4e59
	c.AcceptPort, c.ReplaySYN = 20100, true
	if err := c.validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	for _, v6 := range []bool{false, true} {
		lo := "127.0.0.1"
		if v6 {
			lo = "::1"
		}
		var tproxies []string
		var transparent *chainPlan
		for _, cp := range chainsPlan(&c, v6) {
			for _, r := range cp.rules {
				if line := strings.Join(r, " "); strings.Contains(line, "TPROXY") {
					tproxies = append(tproxies, cp.chain+": "+line)
				}
			}
			if cp.chain == TransparentChain {
				transparent = &cp
			}
		}
		want := TransparentChain + ": -i " + c.TUN + " -p tcp --syn -j TPROXY --on-port 20100 --on-ip " + lo + " --tproxy-mark 0x4e58/0xffff"
		if len(tproxies) != 1 || tproxies[0] != want {
			t.Errorf("v6=%v: TPROXY rules %q; want only %q", v6, tproxies, want)
		}
		if transparent == nil || len(transparent.rules) < 3 {
			t.Fatalf("v6=%v: transparent chain %v", v6, transparent)
		}
		if got := strings.Join(transparent.rules[1], " "); got != "-p tcp --syn -j RETURN" {
			t.Errorf("v6=%v: second transparent rule %q; want the SYN RETURN", v6, got)
		}
		if got := strings.Join(transparent.rules[2], " "); !strings.Contains(got, "--nowildcard") || strings.Contains(got, "--restore-skmark") {
			t.Errorf("v6=%v: socket match %q; want any transparent socket", v6, got)
		}
	}
	bad := DefaultConfig()
	bad.TransparentMark, bad.UpstreamMark = 0x4e58, 0x4e59
	bad.ReplaySYN = true
	if err := bad.validate(); err == nil || !strings.Contains(err.Error(), "SYN replay") {
		t.Errorf("SYN replay without an accept port: validate() = %v", err)
	}
}
