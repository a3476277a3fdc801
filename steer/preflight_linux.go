package steer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tunDevicePath is the TUN clone device; a variable so tests can point it
// at a path that does not exist.
var tunDevicePath = "/dev/net/tun"

// Preflight checks, without creating or changing anything, that Install can
// work: the values are valid, the process has CAP_NET_ADMIN, /dev/net/tun
// exists, iptables (and ip6tables) run, every configured interface exists,
// IP forwarding is on, and a device already named cfg.TUN (if any) is a TUN.
// It returns every problem at once (errors.Join); each wraps one of the
// package's sentinel errors.
func Preflight(cfg Config) error {
	var errs []error
	if err := cfg.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := checkCapNetAdmin(); err != nil {
		// Without the capability every further check is noise.
		return errors.Join(append(errs, err)...)
	}
	if err := checkTUNDevice(); err != nil {
		errs = append(errs, err)
	}
	if cfg.IPv6 && !KernelHasIPv6() {
		errs = append(errs, fmt.Errorf("steer: %w: the kernel has no IPv6 (/proc/sys/net/ipv6 is missing); set ipv6: false", ErrNoIPv6))
	}
	for _, v6 := range cfg.families() {
		if _, err := newIPTables(v6); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, checkForwarding(&cfg)...)
	for _, name := range cfg.Interfaces {
		if name == "" || name[len(name)-1] == '+' || validIfName(name, true) != nil {
			continue // wildcard, or already reported by validate
		}
		if _, err := netlink.LinkByName(name); err != nil {
			errs = append(errs, fmt.Errorf("steer: %w: %q: %v", ErrInterfaceNotFound, name, err))
		}
	}
	if validIfName(cfg.TUN, false) == nil {
		if l, err := netlink.LinkByName(cfg.TUN); err == nil && l.Type() != "tuntap" {
			errs = append(errs, fmt.Errorf("steer: %w: tun: %q exists and is a %s device, not a TUN", ErrBadConfig, cfg.TUN, l.Type()))
		}
	}
	return errors.Join(errs...)
}

// KernelHasIPv6 reports whether the kernel (and this network namespace) has
// IPv6.
func KernelHasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
}

// checkCapNetAdmin asks the kernel for the calling thread's effective
// capabilities; CAP_NET_ADMIN covers netlink changes, iptables and
// /proc/sys/net writes. (Capabilities are per thread; Go threads of one
// process share them unless changed with capset, which netward never does.)
func checkCapNetAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("steer: capget: %w", err)
	}
	if data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) == 0 {
		return fmt.Errorf("steer: %w: netward needs CAP_NET_ADMIN to change iptables, routes and interfaces; run it as root (uid is %d)", ErrNotPermitted, os.Geteuid())
	}
	return nil
}

func checkTUNDevice() error {
	fi, err := os.Stat(tunDevicePath)
	if err != nil {
		return fmt.Errorf("steer: %w: %s: %v (load the tun module, or give the container the device)", ErrNoTUNDevice, tunDevicePath, err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("steer: %w: %s is not a character device", ErrNoTUNDevice, tunDevicePath)
	}
	return nil
}

// newIPTables finds and runs (`-V`) iptables or ip6tables. Either backend
// (nf_tables or legacy) works; netward uses whichever the command on PATH
// is.
func newIPTables(v6 bool) (*iptables.IPTables, error) {
	cmd, proto := "iptables", iptables.ProtocolIPv4
	if v6 {
		cmd, proto = "ip6tables", iptables.ProtocolIPv6
	}
	if _, err := exec.LookPath(cmd); err != nil {
		return nil, fmt.Errorf("steer: %w: %s not found in PATH (install the iptables package): %v", ErrNoIPTables, cmd, err)
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(iptablesWaitSecs))
	if err != nil {
		return nil, fmt.Errorf("steer: %w: %s: %v", ErrNoIPTables, cmd, err)
	}
	return ipt, nil
}

// checkForwarding: with forwarding off there is no forwarded traffic and
// marked packets are dropped by the routing code, so refuse to start.
func checkForwarding(c *Config) []error {
	var errs []error
	if v, err := readInt("/proc/sys/net/ipv4/ip_forward"); err != nil {
		errs = append(errs, err)
	} else if v == 0 {
		errs = append(errs, fmt.Errorf("steer: %w: net.ipv4.ip_forward is 0; netward steers forwarded traffic only (sysctl -w net.ipv4.ip_forward=1)", ErrForwardingOff))
	}
	if c.IPv6 && KernelHasIPv6() {
		if v, err := readInt("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
			errs = append(errs, err)
		} else if v == 0 {
			errs = append(errs, fmt.Errorf("steer: %w: net.ipv6.conf.all.forwarding is 0; enable it or set ipv6: false", ErrForwardingOff))
		}
	}
	return errs
}
