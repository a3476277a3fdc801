package main

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

func TestCleanupUsage(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"bad mark", []string{"--mark", "lots"}, "not a number"},
		{"mark too big", []string{"--mark", "0x100000000"}, "not a number"},
		{"extra args", []string{"now"}, "unexpected arguments"},
		{"missing config", []string{"--config", "/nonexistent/netward.yaml"}, "no such file"},
		{"bad table", []string{"--table", "254"}, "table 254"},
		{"bad tun", []string{"--tun", "a/b"}, "forbidden character"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := cleanupMain(tt.args, &out, &errb); code != 2 {
				t.Errorf("exit %d; want 2 (stderr %q)", code, errb.String())
			}
			if !strings.Contains(errb.String(), tt.want) {
				t.Errorf("stderr %q; want %q", errb.String(), tt.want)
			}
		})
	}
}

// TestCleanupCommand leaves netward-like objects in a throwaway network
// namespace, as a killed netward would, and runs `netward cleanup` there.
func TestCleanupCommand(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespace, iptables)")
	}
	type result struct {
		code             int
		stdout, leftover string
		err              error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace switch
		ns, err := netns.New()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer ns.Close()
		sh := func(args ...string) error {
			out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
			if err != nil {
				return &exec.Error{Name: strings.Join(args, " ") + ": " + string(out), Err: err}
			}
			return nil
		}
		for _, cmd := range [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"ip", "tuntap", "add", "dev", "nwct0", "mode", "tun"}, // persistent: outlived its process
			{"iptables", "-t", "mangle", "-N", "NETWARD"},
			{"iptables", "-t", "mangle", "-A", "NETWARD", "-p", "tcp", "-j", "MARK", "--set-xmark", "0x4e57/0xffff"},
			{"iptables", "-t", "mangle", "-I", "PREROUTING", "1", "-p", "tcp", "-j", "NETWARD"},
			{"ip6tables", "-t", "raw", "-N", "NETWARD_RAW"},
			{"ip6tables", "-t", "raw", "-I", "PREROUTING", "1", "-m", "comment", "--comment", "netward \"x\"", "-j", "NETWARD_RAW"},
			{"ip", "rule", "add", "priority", "20055", "fwmark", "0x4e57/0xffff", "lookup", "20055"},
			{"ip", "-6", "rule", "add", "priority", "20055", "fwmark", "0x4e57/0xffff", "lookup", "20055"},
			{"ip", "route", "add", "prohibit", "default", "table", "20055", "metric", "10000"},
			{"ip", "-6", "route", "add", "prohibit", "default", "table", "20055", "metric", "10000"},
		} {
			if err := sh(cmd...); err != nil {
				res <- result{err: err}
				return
			}
		}
		var out, errb bytes.Buffer
		code := cleanupMain([]string{"--tun", "nwct0"}, &out, &errb)
		if code != 0 {
			res <- result{code: code, stdout: out.String() + errb.String()}
			return
		}
		var again bytes.Buffer
		if c := cleanupMain([]string{"--tun", "nwct0"}, &again, &errb); c != 0 {
			code = c
		}
		var left strings.Builder
		for _, args := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"ip", "rule"}, {"ip", "-6", "rule"}, {"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"}, {"ip", "link"}} {
			b, _ := exec.Command(args[0], args[1:]...).Output()
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "NETWARD") || strings.Contains(line, "20055") || strings.Contains(line, "nwct0") {
					left.WriteString(line + "\n")
				}
			}
		}
		res <- result{code: code, stdout: out.String() + "--\n" + again.String() + errb.String(), leftover: left.String()}
	}()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("output:\n%s", r.stdout)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{
		"removed: ip rule del priority 20055 fwmark 0x4e57/0xffff lookup 20055",
		"removed: ip -6 rule del priority 20055",
		"removed: iptables -t mangle -D PREROUTING -p tcp -j NETWARD",
		"removed: iptables -t mangle -X NETWARD",
		"removed: ip6tables -t raw -D PREROUTING -m comment --comment 'netward \"x\"' -j NETWARD_RAW",
		"removed: ip6tables -t raw -X NETWARD_RAW",
		"removed: ip route del prohibit default table 20055 metric 10000",
		"removed: ip -6 route del prohibit default table 20055 metric 10000",
		"removed: ip link del nwct0",
		"--\nnothing to clean up",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if r.leftover != "" {
		t.Errorf("left behind:\n%s", r.leftover)
	}
}
