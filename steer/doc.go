// Package steer is everything netward does to the kernel's packet path:
// the iptables/ip6tables chains that select and mark forwarded TCP and UDP, the ip
// rules and the routing table that send it into netward's TUN, the TUN's
// address and sysctls, the fail-open/fail-closed behaviour, and the removal
// of all of it, on a clean stop (Remove) and after a crash (Cleanup).
//
// # Use
//
//	cfg := steer.DefaultConfig()          // then override from config/flags
//	cfg.TUN, cfg.Interfaces = c.TUN, c.Interfaces
//	cfg.Mark, cfg.Table, cfg.RulePriority = c.Mark, c.Table, c.RulePriority
//	cfg.FailMode, _ = steer.ParseFailMode(c.FailMode)
//	cfg.IPv6 = c.IPv6 && steer.KernelHasIPv6()
//	cfg.Logger = log
//	if err := steer.Preflight(cfg); err != nil { ... } // before the TUN exists
//	tun := netstack.OpenTUN(...)                        // creates cfg.TUN
//	s, err := steer.Install(cfg)                       // cleans leftovers, rolls back on error
//	...
//	err = s.Remove()                                   // on SIGTERM/SIGINT (before or after closing the TUN)
//
// Install, Remove and Cleanup act in the network namespace of the calling
// OS thread (netlink sockets, /proc/sys/net and the iptables processes all
// follow it); netward calls them from its main goroutine in the host's
// namespace. Errors wrap the sentinels in errors.go (ErrNotPermitted,
// ErrNoTUNDevice, ErrNoIPTables, ErrInterfaceNotFound, ErrBadConfig,
// ErrForwardingOff, ErrNoIPv6, ErrTUNInUse).
//
// # What Install creates
//
// For DefaultConfig (TUN netward0, all interfaces, fail open), in this
// order (Describe returns the same list for any Config):
//
//	ip link set netward0 up
//	sysctl -w net.ipv4.conf.netward0.forwarding=1
//	sysctl -w net.ipv4.conf.netward0.rp_filter=2   # only if max(all, netward0) is 1 (strict)
//	sysctl -w net.ipv6.conf.netward0.disable_ipv6=0
//	ip addr add 169.254.78.87/32 scope link dev netward0
//	ip route add default dev netward0 table 20055 metric 100
//	ip -6 route add default dev netward0 table 20055 metric 100
//	iptables -t raw -N NETWARD_RAW
//	iptables -t raw -A NETWARD_RAW -i netward0 -j CT --notrack
//	iptables -t raw -A NETWARD_RAW -i netward0 -j ACCEPT
//	iptables -t raw -A NETWARD_RAW ! -p tcp -j RETURN
//	iptables -t raw -A NETWARD_RAW -i lo -j RETURN
//	iptables -t raw -A NETWARD_RAW -m u32 ! --u32 '0x4&0x3fff=0x0' -j RETURN
//	iptables -t raw -A NETWARD_RAW -m addrtype --dst-type LOCAL -j RETURN
//	iptables -t raw -A NETWARD_RAW -p tcp -j CT --notrack
//	iptables -t raw -I PREROUTING 1 -j NETWARD_RAW
//	iptables -t mangle -N NETWARD
//	iptables -t mangle -A NETWARD -i netward0 -j RETURN
//	iptables -t mangle -A NETWARD -i lo -j RETURN
//	iptables -t mangle -A NETWARD -m u32 ! --u32 '0x4&0x3fff=0x0' -j RETURN
//	iptables -t mangle -A NETWARD -m addrtype --dst-type LOCAL -j RETURN
//	iptables -t mangle -A NETWARD -p udp -m connmark --mark 0x4e5a/0xffff -m u32 ! --u32 '0>>22&0x3C@8>>24&0x80=0x80&&0>>22&0x3C@9=0x1' -m u32 ! --u32 '0>>22&0x3C@8>>24&0x80=0x80&&0>>22&0x3C@9=0x6b3343cf' -j RETURN
//	iptables -t mangle -A NETWARD -p udp -m connmark --mark 0x4e5b/0xffff -m u32 --u32 '0>>22&0x3C@8>>24&0x80=0x0' -j RETURN
//	iptables -t mangle -A NETWARD -p tcp -j MARK --set-xmark 0x4e57/0xffff
//	iptables -t mangle -A NETWARD -p udp -j MARK --set-xmark 0x4e57/0xffff
//	iptables -t mangle -I PREROUTING 1 -j NETWARD
//	ip6tables -t raw -N NETWARD_RAW
//	ip6tables -t raw -A NETWARD_RAW -i netward0 -j CT --notrack
//	ip6tables -t raw -A NETWARD_RAW -i netward0 -j ACCEPT
//	ip6tables -t raw -A NETWARD_RAW ! -p tcp -j RETURN
//	ip6tables -t raw -A NETWARD_RAW -i lo -j RETURN
//	ip6tables -t raw -A NETWARD_RAW -m frag -j RETURN
//	ip6tables -t raw -A NETWARD_RAW -m addrtype --dst-type LOCAL -j RETURN
//	ip6tables -t raw -A NETWARD_RAW -p tcp -j CT --notrack
//	ip6tables -t raw -I PREROUTING 1 -j NETWARD_RAW
//	ip6tables -t mangle -N NETWARD
//	ip6tables -t mangle -A NETWARD -i netward0 -j RETURN
//	ip6tables -t mangle -A NETWARD -i lo -j RETURN
//	ip6tables -t mangle -A NETWARD -m frag -j RETURN
//	ip6tables -t mangle -A NETWARD -m addrtype --dst-type LOCAL -j RETURN
//	ip6tables -t mangle -A NETWARD -p udp -m connmark --mark 0x4e5a/0xffff -m u32 ! --u32 '48>>24&0x80=0x80&&49=0x1' -m u32 ! --u32 '48>>24&0x80=0x80&&49=0x6b3343cf' -j RETURN
//	ip6tables -t mangle -A NETWARD -p udp -m connmark --mark 0x4e5b/0xffff -m u32 --u32 '48>>24&0x80=0x0' -j RETURN
//	ip6tables -t mangle -A NETWARD -p tcp -j MARK --set-xmark 0x4e57/0xffff
//	ip6tables -t mangle -A NETWARD -p udp -j MARK --set-xmark 0x4e57/0xffff
//	ip6tables -t mangle -I PREROUTING 1 -j NETWARD
//	ip rule add priority 20055 fwmark 0x4e57/0xffff lookup 20055
//	ip -6 rule add priority 20055 fwmark 0x4e57/0xffff lookup 20055
//
// Sysctls and "link up" are changed (and restored by Remove) only when their
// value differs. With FailClosed, two more routes follow the TUN routes:
//
//	ip route add prohibit default table 20055 metric 10000
//	ip -6 route add prohibit default table 20055 metric 10000
//
// With Interfaces set (say eth1, eth2), the "-i lo -j RETURN" rules go and
// each final rule becomes one rule per interface:
//
//	iptables -t raw -A NETWARD_RAW -i eth1 -p tcp -j CT --notrack
//	iptables -t mangle -A NETWARD -i eth1 -p tcp -j MARK --set-xmark 0x4e57/0xffff
//	iptables -t mangle -A NETWARD -i eth1 -p udp -j MARK --set-xmark 0x4e57/0xffff
//
// Nothing is added to the filter or nat tables, to OUTPUT, or to any
// global sysctl, unless the kernel upstream leg is on (below).
//
// # Kernel upstream leg
//
// With TransparentMark set (netward run --upstream kernel: TransparentMark
// 0x4e58, UpstreamMark = --upstream-mark, 0x4e59 by default), the upstream
// of each flow is a kernel socket with IP_TRANSPARENT bound to the
// client's address and SO_MARK UpstreamMark, and Install adds, after the
// steering table's routes of each family:
//
//	ip route add local default dev lo table 20056
//	ip -6 route add local default dev lo table 20056
//
// after the steering chains of each family:
//
//	iptables -t raw -N NETWARD_UPSTREAM
//	iptables -t raw -A NETWARD_UPSTREAM -m mark --mark 0x4e59/0xffff -j CT --notrack
//	iptables -t raw -I OUTPUT 1 -j NETWARD_UPSTREAM
//	iptables -t mangle -N NETWARD_TPROXY
//	iptables -t mangle -A NETWARD_TPROXY -p tcp --syn -j RETURN
//	iptables -t mangle -A NETWARD_TPROXY ! -i netward0 -p tcp -m socket --transparent --restore-skmark -m mark --mark 0x4e59/0xffff -j MARK --set-xmark 0x4e58/0xffff
//	iptables -t mangle -A NETWARD_TPROXY -m mark --mark 0x4e58/0xffff -j ACCEPT
//	iptables -t mangle -I PREROUTING 1 -p tcp -j NETWARD_TPROXY
//	ip6tables -t raw -N NETWARD_UPSTREAM
//	ip6tables -t raw -A NETWARD_UPSTREAM -m mark --mark 0x4e59/0xffff -j CT --notrack
//	ip6tables -t raw -I OUTPUT 1 -j NETWARD_UPSTREAM
//	ip6tables -t mangle -N NETWARD_TPROXY
//	ip6tables -t mangle -A NETWARD_TPROXY -p tcp --syn -j RETURN
//	ip6tables -t mangle -A NETWARD_TPROXY ! -i netward0 -p tcp -m socket --transparent --restore-skmark -m mark --mark 0x4e59/0xffff -j MARK --set-xmark 0x4e58/0xffff
//	ip6tables -t mangle -A NETWARD_TPROXY -m mark --mark 0x4e58/0xffff -j ACCEPT
//	ip6tables -t mangle -I PREROUTING 1 -p tcp -j NETWARD_TPROXY
//
// then one global sysctl (unless it is 0 already), with the value to
// restore recorded first in the kernel itself, and before the steering ip
// rules:
//
//	iptables -t raw -A NETWARD_UPSTREAM -m comment --comment 'netward: net.ipv4.tcp_early_demux was 1'   # the value it had; only if not 0
//	sysctl -w net.ipv4.tcp_early_demux=0
//	ip rule add priority 20054 fwmark 0x4e58/0xffff lookup 20056
//	ip -6 rule add priority 20054 fwmark 0x4e58/0xffff lookup 20056
//
// Why: the server's answers are addressed to the client, so without these
// they would be steered (or forwarded) instead of reaching the socket.
// The socket match restores the socket's SO_MARK onto the packet and
// takes only UpstreamMark: netward's own sockets, and only full ones (a
// TIME_WAIT socket has no mark to restore). A client leg handed off to the
// kernel ends in TIME_WAIT; a new connection from the same client port has
// its handshake in gVisor, and its packets must go on to the TUN instead
// of into that TIME_WAIT.
// NETWARD_TPROXY is jumped to before NETWARD and ACCEPTs them, which ends
// mangle PREROUTING before they could get the steering mark; the ip rule
// delivers them locally. The TUN is excluded because gVisor's client leg
// has the same addresses as the upstream socket. The sockets' own packets
// are not tracked, because steer's raw rules leave their answers
// untracked and conntrack would keep SYN_SENT entries. Early demux would
// tie gVisor's client-leg packets (the socket's own 4-tuple) to the
// socket, and ip_forward would then drop them; net.ipv4.tcp_early_demux
// covers IPv6 TCP too. Remove restores it; after a crash, Cleanup restores
// it from the comment rule (only if it is still 0), before it removes the
// chains. Cleanup removes table 20056 and its rules whether or not the
// run that left them used the kernel upstream leg: DefaultConfig names
// both tables.
//
// # Kernel client leg
//
// With AcceptPort set too (netward run --tcp-accept kernel, port 20057 by
// default), each family's steering chain gets, just before its TCP MARK
// rule:
//
//	iptables -t mangle -A NETWARD -p tcp --syn -j TPROXY --on-port 20057 --on-ip 127.0.0.1 --tproxy-mark 0x4e58/0xffff
//	ip6tables -t mangle -A NETWARD -p tcp --syn -j TPROXY --on-port 20057 --on-ip ::1 --tproxy-mark 0x4e58/0xffff
//
// and the socket match of each family's NETWARD_TPROXY is, instead of the
// one above:
//
//	iptables -t mangle -A NETWARD_TPROXY ! -i netward0 -p tcp -m socket --transparent --nowildcard -j MARK --set-xmark 0x4e58/0xffff
//	ip6tables -t mangle -A NETWARD_TPROXY ! -i netward0 -p tcp -m socket --transparent --nowildcard -j MARK --set-xmark 0x4e58/0xffff
//
// A forwarded SYN becomes a connection to netward's transparent listener
// on the loopback address (no other packet reaches it there), and the
// transparent mark's ip rule delivers it locally. The accepted socket has
// the server's address, so the client's later packets meet the socket
// match of NETWARD_TPROXY. It takes any transparent socket here, not only
// full ones with netward's mark: the handshake's last ACK finds a request
// socket, which has no mark, and no connection has a handshake in gVisor
// that a TIME_WAIT could steal. A SYN on the 4-tuple of a TIME_WAIT is
// TPROXY's to resolve: it ends the TIME_WAIT and hands the SYN to the
// listener. TCP that no socket takes
// (a late segment after netward closed the socket) is steered into the
// TUN as before, where gVisor resets it. While no listener is open (netward
// stopped without removing its rules: a crash, until `netward cleanup`
// runs, which the systemd unit does), TPROXY drops SYNs: new TCP flows
// fail closed whatever the fail mode.
//
// # SYN replay
//
// With ReplaySYN set too (netward run --tcp-accept replay), the steering
// chain has no TPROXY rule: forwarded SYNs are steered into the TUN as
// without the kernel client leg, and netward admits the flow and dials the
// server before anything answers the client. The only TPROXY rule is the
// first of each family's NETWARD_TPROXY, for SYNs out of the TUN:
//
//	iptables -t mangle -A NETWARD_TPROXY -i netward0 -p tcp --syn -j TPROXY --on-port 20057 --on-ip 127.0.0.1 --tproxy-mark 0x4e58/0xffff
//	ip6tables -t mangle -A NETWARD_TPROXY -i netward0 -p tcp --syn -j TPROXY --on-port 20057 --on-ip ::1 --tproxy-mark 0x4e58/0xffff
//
// and the socket match is the kernel client leg's (any transparent
// socket). The only SYNs out of the TUN are the client SYNs netward writes
// back once the server has answered (the upstream leg is a kernel socket,
// so gVisor dials no server through the TUN); TPROXY hands them to the
// listener, and the kernel answers the handshake. The TUN's rp_filter
// (loose, above) accepts them: their source is routed via another
// interface. After a crash the TUN is gone, so no SYN meets the rule and
// the fail mode decides, as on the gVisor path.
//
// # Why each piece
//
//   - Selection: TCP, not from lo or the TUN, not a fragment, not addressed
//     to the appliance (addrtype LOCAL covers every local address, so SSH to
//     any of the appliance's addresses is never steered). The appliance's own
//     traffic never passes PREROUTING except on lo. ICMP and every other
//     protocol keep plain forwarding, so ping and PMTU discovery work.
//   - Fragments: the u32 match (IPv4: MF or offset set) and -m frag (IPv6:
//     a Fragment header) keep every fragment on the plain forwarding path,
//     so the fragments of one packet never split between two paths. When
//     conntrack is in use in the namespace (any conntrack/state rule), the
//     kernel reassembles before the raw table and the whole packet is
//     steered like any other; on its way into the TUN the kernel splits it
//     again into the original fragments, which gVisor reassembles.
//   - No loop: packets out of the TUN (gVisor's both legs) are never marked
//     (mangle "-i TUN -j RETURN"); they take the main table. Every packet
//     crosses the TUN at most once per direction.
//   - Conntrack: gVisor's two legs of a flow carry the same 5-tuple with
//     different sequence numbers; tracked, they would be merged and their
//     packets dropped as INVALID by a stateful firewall. So steered TCP
//     arriving from the network and everything arriving from the TUN is
//     NOTRACK'ed in raw PREROUTING (before conntrack). Steered flows are
//     therefore UNTRACKED: a FORWARD chain with "ESTABLISHED,RELATED -j
//     ACCEPT" and policy DROP must also accept "--ctstate UNTRACKED", and
//     steered flows are not NATed (masquerade on the appliance does not apply
//     to them).
//   - raw ACCEPT for the TUN: ends raw PREROUTING for gVisor's packets, so a
//     later "-m rpfilter --invert -j DROP" there (firewalld adds one) does not
//     drop them: their sources are routed via other interfaces.
//   - rp_filter: the kernel drops every packet arriving on an interface
//     without an IPv4 address whenever rp_filter is 1 or 2, and in strict
//     mode (1) drops gVisor's packets anyway (their sources route elsewhere).
//     The effective value is max(all, device), so setting the TUN to 2 makes
//     it loose without touching `all` or any other interface; the link-local
//     /32 (scope link, never chosen as a source) satisfies the address test.
//     IPv6 has no rp_filter. accept_local and route_localnet are not needed.
//   - The ip rule comes last in Install and goes first in Remove: steering
//     starts only when the path behind it is complete and stops before it is
//     taken apart.
//
// # UDP
//
// With UDP set (the default), forwarded UDP is marked and routed into the
// TUN like TCP, where netward judges it datagram by datagram (package
// datagram); the jump to NETWARD then takes every protocol, and the chain's
// selection is the same. Unlike TCP, UDP stays tracked: netward relays a
// datagram by writing it back, unchanged, into the TUN (packets from the
// TUN are untracked and never steered again), so the conntrack entry the
// kernel made for its arrival is the flow's only one, and it carries the
// bypass. When netward allows a flow it sets that entry's mark
// (Conntrack.Bypass): BypassMark for UDP that is not QUIC, BypassQUICMark
// for QUIC, and the two RETURN rules before the MARK rule then leave the
// flow's datagrams to plain forwarding, except those netward must still
// see: QUIC v1/v2 long headers (Initial, 0-RTT, Handshake, Retry) on both
// kinds, so that a Retry's new ClientHello, a second connection on the
// same 5-tuple or a QUIC handshake after other UDP is judged too. DNS flows
// are never bypassed: every query is judged. When the conntrack entry
// expires (net.netfilter.nf_conntrack_udp_timeout*), the flow's next
// datagram is steered and judged again. Fail modes apply to UDP as to TCP
// (the prohibit route answers steered UDP with ICMP administratively
// prohibited); bypassed flows keep flowing in both.
//
// # Interfaces
//
// The rules are stateless: with Interfaces set, TCP arriving on a listed
// interface is steered and TCP arriving on any other is not, whatever
// direction of a connection it belongs to. A flow is therefore steered
// whole only when both of its directions arrive on listed interfaces (on a
// router: list the LAN and the WAN side). A flow between a listed and an
// unlisted interface is steered in one direction only and fails. The
// default (empty list: every interface but lo and the TUN, matched by
// exclusion so interfaces added later are steered too) has no such case.
//
// # Fail modes and crashes
//
// When netward dies (kill -9), the kernel closes the TUN, the device
// disappears and takes its routes with it. The chains and ip rules stay.
//
//   - FailOpen: the steering table is empty, so the ip rule's lookup finds
//     nothing and the kernel goes on to the main table: plain forwarding.
//     The NOTRACK and MARK rules left behind do not hurt (the flows are
//     merely untracked). Tested with a "--ctstate INVALID -j DROP" rule.
//   - FailClosed: the prohibit route (metric 10000; the TUN route's 100 wins
//     while the TUN exists) takes over: steered TCP is refused with ICMP
//     administratively prohibited (clients fail at once instead of hanging)
//     until netward is back or `netward cleanup` runs.
//
// This relies on the TUN being non-persistent (netstack must not set
// TUNSETPERSIST): a persistent TUN keeps its routes after the process dies
// and black-holes steered traffic in both modes.
//
// Install starts by removing the leftovers of an earlier run (same as
// Cleanup, but keeping the TUN netstack has just opened): on a restart in
// FailClosed mode, steered traffic passes by plain forwarding for the few
// milliseconds between that cleanup and the new ip rule.
//
// Cleanup (netward cleanup) removes, in IPv4 and IPv6: every NETWARD* chain
// in mangle and raw and the jumps to it from the built-in chains, the ip
// rules at RulePriority with netward's mark and every ip rule that looks up
// Table or TransparentTable, every route in those tables, restores
// tcp_early_demux (see above), and the TUN if it is still there and not
// held open by a process. It refuses (ErrTUNInUse, nothing removed) while a
// process holds the TUN open, i.e. while netward runs.
//
// iptables and ip6tables are whatever commands PATH finds; the nf_tables
// and the legacy backend both work (tested). The mark's mask (0xffff) leaves
// the upper 16 mark bits to others.
package steer
