package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ctaMarkMask is CTA_MARK_MASK (linux/netfilter/nfnetlink_conntrack.h),
// which the nl package does not name: with it the kernel changes only the
// mask's bits of the entry's mark (ctnetlink_change_mark), so the bits that
// belong to others survive.
const ctaMarkMask = 21

// Conntrack sets the conntrack marks of allowed UDP flows, which the
// steering rules skip (see the package documentation, "UDP"). It keeps one
// netlink socket, in the network namespace it was opened in, for its life;
// it is safe for concurrent use (one request at a time, so the answer read
// is the request's own).
type Conntrack struct {
	mu   sync.Mutex
	sock *nl.NetlinkSocket
	mask uint32
	all  uint32 // Config.BypassMark
	quic uint32 // Config.BypassQUICMark
}

// OpenConntrack opens the netlink socket for cfg's bypass marks, in the
// calling thread's network namespace.
func OpenConntrack(cfg Config) (*Conntrack, error) {
	if cfg.BypassMark == 0 || cfg.BypassQUICMark == 0 {
		return nil, fmt.Errorf("steer: conntrack: %w: bypass marks not set", ErrBadConfig)
	}
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("steer: conntrack netlink socket: %w", err)
	}
	return &Conntrack{sock: s, mask: cfg.Mask, all: cfg.BypassMark, quic: cfg.BypassQUICMark}, nil
}

// Close closes the socket.
func (c *Conntrack) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sock != nil {
		c.sock.Close()
		c.sock = nil
	}
	return nil
}

// ErrNoEntry: the kernel has no conntrack entry for the flow (it expired,
// or the flow was never tracked, e.g. an untracked namespace).
var ErrNoEntry = errors.New("no conntrack entry")

// Bypass marks the UDP flow client → server (as the client sent its first
// datagram) so that plain forwarding carries its later datagrams: all but
// QUIC long headers, or, with quic, only QUIC short headers.
func (c *Conntrack) Bypass(client, server netip.AddrPort, quic bool) error {
	mark := c.all
	if quic {
		mark = c.quic
	}
	return c.request(nl.IPCTNL_MSG_CT_NEW, client, server, mark)
}

// Alive reports whether the kernel still tracks the UDP flow (a bypassed
// flow whose datagrams netward no longer sees).
func (c *Conntrack) Alive(client, server netip.AddrPort) (bool, error) {
	err := c.request(nl.IPCTNL_MSG_CT_GET, client, server, 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrNoEntry):
		return false, nil
	}
	return false, err
}

func (c *Conntrack) request(op int, client, server netip.AddrPort, mark uint32) error {
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	family, srcType, dstType := uint8(unix.AF_INET), nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if client.Addr().Is6() {
		family, srcType, dstType = unix.AF_INET6, nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	if client.Addr().Is6() != server.Addr().Is6() {
		return fmt.Errorf("steer: conntrack: %v and %v are of different families", client, server)
	}
	req := nl.NewNetlinkRequest((unix.NFNL_SUBSYS_CTNETLINK<<8)|op, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
	tuple := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	ip.AddRtAttr(srcType, client.Addr().AsSlice())
	ip.AddRtAttr(dstType, server.Addr().AsSlice())
	proto := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{unix.IPPROTO_UDP})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, be16(client.Port()))
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, be16(server.Port()))
	req.AddData(tuple)
	if op == nl.IPCTNL_MSG_CT_NEW {
		req.AddData(nl.NewRtAttr(nl.CTA_MARK, be32(mark)))
		req.AddData(nl.NewRtAttr(ctaMarkMask, be32(c.mask)))
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sock == nil {
		return errors.New("steer: conntrack: closed")
	}
	if err := c.sock.Send(req); err != nil {
		return fmt.Errorf("steer: conntrack request: %w", err)
	}
	pid, err := c.sock.GetPid()
	if err != nil {
		return fmt.Errorf("steer: conntrack socket: %w", err)
	}
	for {
		msgs, from, err := c.sock.Receive()
		if err != nil {
			return fmt.Errorf("steer: conntrack answer: %w", err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq || m.Header.Pid != pid {
				continue // an answer to an earlier request that gave up
			}
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return errors.New("steer: conntrack: short netlink error")
				}
				errno := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
				switch {
				case errno == 0:
					return nil
				case unix.Errno(errno) == unix.ENOENT:
					return ErrNoEntry
				}
				return fmt.Errorf("steer: conntrack %v → %v: %w", client, server, unix.Errno(errno))
			case unix.NLMSG_DONE:
				return nil
			default:
				// CT_GET's answer: the entry itself; the ACK follows.
				if op == nl.IPCTNL_MSG_CT_GET {
					continue
				}
			}
		}
	}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
