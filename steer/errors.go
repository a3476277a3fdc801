package steer

import "errors"

// Sentinel errors, for errors.Is. Preflight, Install and Cleanup wrap them
// with the detail a person needs to fix the problem.
var (
	// ErrBadConfig: a Config value is out of range or inconsistent.
	ErrBadConfig = errors.New("bad configuration")
	// ErrNotPermitted: the process lacks CAP_NET_ADMIN (run as root).
	ErrNotPermitted = errors.New("not permitted")
	// ErrNoTUNDevice: /dev/net/tun is missing (no tun module, or a
	// container without the device).
	ErrNoTUNDevice = errors.New("no TUN support")
	// ErrNoIPTables: the iptables or ip6tables command is missing or broken.
	ErrNoIPTables = errors.New("iptables unavailable")
	// ErrInterfaceNotFound: a configured interface (or, for Install, the
	// TUN) does not exist.
	ErrInterfaceNotFound = errors.New("interface not found")
	// ErrForwardingOff: IP forwarding is off, so there is no forwarded
	// traffic to steer.
	ErrForwardingOff = errors.New("IP forwarding is off")
	// ErrNoIPv6: IPv6 is asked for but the kernel has none.
	ErrNoIPv6 = errors.New("IPv6 unavailable")
	// ErrTUNInUse: Cleanup found the TUN attached to a running process.
	ErrTUNInUse = errors.New("TUN device in use")
)
