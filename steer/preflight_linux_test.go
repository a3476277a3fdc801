package steer

import (
	"errors"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPreflight(t *testing.T) {
	l := newLab(t)
	tests := []struct {
		name    string
		mod     func(c *Config)
		setup   func(t *testing.T)
		inNS    string // lab namespace to run in; "" = appliance
		wantErr error
		wantMsg string
	}{
		{name: "ok", mod: func(c *Config) {}},
		{name: "ok interfaces", mod: func(c *Config) { c.Interfaces = []string{"a0", "a+"} }},
		{name: "interface not found", mod: func(c *Config) { c.Interfaces = []string{"a0", "nope0"} }, wantErr: ErrInterfaceNotFound, wantMsg: `"nope0"`},
		{name: "bad config", mod: func(c *Config) { c.Table = 254 }, wantErr: ErrBadConfig, wantMsg: "table 254"},
		{name: "tun name taken by a veth", mod: func(c *Config) { c.TUN = "a1" }, wantErr: ErrBadConfig, wantMsg: "not a TUN"},
		{name: "no /dev/net/tun", mod: func(c *Config) {}, setup: func(t *testing.T) {
			old := tunDevicePath
			tunDevicePath = "/nonexistent/net/tun"
			t.Cleanup(func() { tunDevicePath = old })
		}, wantErr: ErrNoTUNDevice, wantMsg: "/nonexistent/net/tun"},
		{name: "no iptables", mod: func(c *Config) {}, setup: func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
		}, wantErr: ErrNoIPTables, wantMsg: "iptables not found"},
		{name: "forwarding off", mod: func(c *Config) {}, inNS: "client", wantErr: ErrForwardingOff, wantMsg: "net.ipv4.ip_forward is 0"},
		{name: "ipv6 forwarding off", mod: func(c *Config) {}, inNS: "client", wantErr: ErrForwardingOff, wantMsg: "net.ipv6.conf.all.forwarding is 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			cfg := l.config()
			tt.mod(&cfg)
			ns := l.appliance
			if tt.inNS == "client" {
				ns = l.client
			}
			err := inNS(ns, func() error { return Preflight(cfg) })
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Preflight = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Preflight = %v; want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
			t.Logf("Preflight: %v", err)
		})
	}
}

// TestPreflightWithoutCapNetAdmin drops CAP_NET_ADMIN from one thread's
// effective set (capabilities are per thread), runs Preflight there, and
// raises it again.
func TestPreflightWithoutCapNetAdmin(t *testing.T) {
	requireRoot(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		errc <- Preflight(DefaultConfig()) // returns before touching anything
	}()
	err := <-errc
	if !errors.Is(err, ErrNotPermitted) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("Preflight without CAP_NET_ADMIN = %v; want ErrNotPermitted", err)
	}
	t.Logf("Preflight: %v", err)
	if err := checkCapNetAdmin(); err != nil {
		t.Fatalf("the capability was dropped beyond the test's thread: %v", err)
	}
}
