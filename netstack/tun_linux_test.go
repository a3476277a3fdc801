package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a TUN device and iptables rules")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
}

// nsLab is the three-namespace topology of the dev lab, built only inside
// namespaces this test creates (both veth ends are created in place, so
// the host namespace is never touched):
//
//	c: 198.51.100.2, 2001:db8:1::2 ── a (netward, TUN) ── s: 192.0.2.2, 2001:db8:2::2
type nsLab struct {
	t       *testing.T
	c, a, s string
	tun     string
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newNSLab(t *testing.T) *nsLab {
	requireRoot(t)
	var rnd [3]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	l := &nsLab{t: t, c: "nwtc-" + id, a: "nwta-" + id, s: "nwts-" + id, tun: "nwt" + id}
	for _, ns := range []string{l.c, l.a, l.s} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	cmds := [][]string{
		{"ip", "-n", l.a, "link", "add", "ethc", "type", "veth", "peer", "name", "eth0", "netns", l.c},
		{"ip", "-n", l.a, "link", "add", "eths", "type", "veth", "peer", "name", "eth0", "netns", l.s},
		{"ip", "netns", "exec", l.a, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0"},
		{"ip", "-n", l.c, "addr", "add", "198.51.100.2/24", "dev", "eth0"},
		{"ip", "-n", l.c, "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"},
		{"ip", "-n", l.s, "addr", "add", "192.0.2.2/24", "dev", "eth0"},
		{"ip", "-n", l.s, "addr", "add", "2001:db8:2::2/64", "dev", "eth0", "nodad"},
		{"ip", "-n", l.a, "addr", "add", "198.51.100.1/24", "dev", "ethc"},
		{"ip", "-n", l.a, "addr", "add", "2001:db8:1::1/64", "dev", "ethc", "nodad"},
		{"ip", "-n", l.a, "addr", "add", "192.0.2.1/24", "dev", "eths"},
		{"ip", "-n", l.a, "addr", "add", "2001:db8:2::1/64", "dev", "eths", "nodad"},
	}
	for _, c := range cmds {
		run(t, c...)
	}
	for _, ns := range []string{l.c, l.a, l.s} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	for _, ns := range []string{l.c, l.s} {
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	run(t, "ip", "-n", l.a, "link", "set", "ethc", "up")
	run(t, "ip", "-n", l.a, "link", "set", "eths", "up")
	run(t, "ip", "-n", l.c, "route", "add", "default", "via", "198.51.100.1")
	run(t, "ip", "-n", l.c, "-6", "route", "add", "default", "via", "2001:db8:1::1")
	run(t, "ip", "-n", l.s, "route", "add", "default", "via", "192.0.2.1")
	run(t, "ip", "-n", l.s, "-6", "route", "add", "default", "via", "2001:db8:2::1")
	return l
}

// steer installs, by hand, what package steer installs: mark steered TCP,
// route marks to the TUN, untrack both legs; plus a firewall that drops
// conntrack-INVALID forwarded packets (the trap in datapath-notes.md).
func (l *nsLab) steer(upstreamKernel bool) {
	a, tun := l.a, l.tun
	run(l.t, "ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.conf."+tun+".rp_filter=0")
	run(l.t, "ip", "-n", a, "route", "add", "default", "dev", tun, "table", "20055")
	run(l.t, "ip", "-n", a, "-6", "route", "add", "default", "dev", tun, "table", "20055")
	run(l.t, "ip", "-n", a, "rule", "add", "fwmark", "0x4e57", "lookup", "20055", "pref", "20055")
	run(l.t, "ip", "-n", a, "-6", "rule", "add", "fwmark", "0x4e57", "lookup", "20055", "pref", "20055")
	for _, ipt := range []string{"iptables", "ip6tables"} {
		x := []string{"ip", "netns", "exec", a, ipt}
		run(l.t, append(x, "-t", "raw", "-A", "PREROUTING", "-i", tun, "-j", "CT", "--notrack")...)
		run(l.t, append(x, "-t", "raw", "-A", "PREROUTING", "!", "-i", tun, "-p", "tcp", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "CT", "--notrack")...)
		run(l.t, append(x, "-t", "mangle", "-A", "PREROUTING", "!", "-i", tun, "-p", "tcp", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "MARK", "--set-mark", "0x4e57")...)
		run(l.t, append(x, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")...)
	}
	if !upstreamKernel {
		return
	}
	// Kernel upstream sockets (Options.UpstreamKernel): the server's
	// answers go to the transparent socket, not to the TUN (the rule must
	// skip the TUN: gVisor's client leg has the same addresses); the
	// sockets' own packets (SO_MARK upstreamMark) are untracked; early
	// demux would tie gVisor's packets to the socket and ip_forward would
	// drop them.
	run(l.t, "ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.tcp_early_demux=0")
	for _, v := range []string{"-4", "-6"} {
		run(l.t, "ip", "-n", a, v, "rule", "add", "fwmark", "0x4e58", "lookup", "20056", "pref", "20054")
		run(l.t, "ip", "-n", a, v, "route", "add", "local", "default", "dev", "lo", "table", "20056")
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		x := []string{"ip", "netns", "exec", a, ipt}
		run(l.t, append(x, "-t", "mangle", "-I", "PREROUTING", "1", "!", "-i", tun, "-p", "tcp", "-m", "socket", "--transparent", "-j", "MARK", "--set-mark", "0x4e58")...)
		run(l.t, append(x, "-t", "mangle", "-I", "PREROUTING", "2", "-m", "mark", "--mark", "0x4e58", "-j", "ACCEPT")...)
		run(l.t, append(x, "-t", "raw", "-I", "OUTPUT", "1", "-m", "mark", "--mark", "0x4e59", "-j", "CT", "--notrack")...)
	}
}

// in runs fn on a thread inside namespace ns. Sockets and devices created
// there stay in ns after the thread goes back.
func in(t *testing.T, ns string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("netns.Get: %v", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("netns %s: %v", ns, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatalf("enter %s: %v", ns, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	fn()
}

// startNetward opens the TUN in the appliance namespace and serves it with
// a splicing Handler.
func (l *nsLab) startNetward(offload, upstreamKernel bool) (*Stack, *TUN) {
	var tun *TUN
	var err error
	in(l.t, l.a, func() { tun, err = OpenTUN(TUNOptions{Name: l.tun, MTU: 1500, Offload: offload}) })
	if err != nil {
		l.t.Fatalf("OpenTUN: %v", err)
	}
	if tun.VnetHdr != offload {
		l.t.Fatalf("TUN VnetHdr = %v, want %v", tun.VnetHdr, offload)
	}
	// netward runs inside the appliance namespace; this test does not, so
	// kernel upstream sockets are made there explicitly.
	inAppliance := func(dial func(context.Context, *Flow) (Conn, error)) func(context.Context, *Flow) (Conn, error) {
		return func(ctx context.Context, f *Flow) (Conn, error) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			orig, err := netns.Get()
			if err != nil {
				return nil, err
			}
			defer orig.Close()
			h, err := netns.GetFromName(l.a)
			if err != nil {
				return nil, err
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				return nil, err
			}
			defer func() {
				if err := netns.Set(orig); err != nil {
					panic("cannot return to the original network namespace: " + err.Error())
				}
			}()
			return dial(ctx, f)
		}
	}
	st, err := New(Options{Files: tun.Files, MTU: tun.MTU, VnetHdr: tun.VnetHdr, Handler: &spliceHandler{},
		UpstreamKernel: upstreamKernel, UpstreamMark: 0x4e59, wrapKernelDial: inAppliance})
	if err != nil {
		tun.Close()
		l.t.Fatalf("New: %v", err)
	}
	l.t.Cleanup(func() { st.Close() })
	if _, wg := st.link.(*wgEndpoint); wg == offload {
		l.t.Fatalf("offload=%v served by %T", offload, st.link)
	}
	l.steer(upstreamKernel)
	return st, tun
}

func TestTUNEndToEnd(t *testing.T) {
	for _, tc := range []struct{ offload, upstreamKernel bool }{{true, false}, {false, false}, {true, true}} {
		offload := tc.offload
		t.Run(fmt.Sprintf("offload=%v/upstream_kernel=%v", offload, tc.upstreamKernel), func(t *testing.T) {
			l := newNSLab(t)
			st, _ := l.startNetward(offload, tc.upstreamKernel)

			var echo, banner net.Listener
			in(t, l.s, func() {
				var err error
				if echo, err = net.Listen("tcp", ":7"); err != nil {
					t.Fatal(err)
				}
				if banner, err = net.Listen("tcp", ":22"); err != nil {
					t.Fatal(err)
				}
			})
			defer echo.Close()
			defer banner.Close()
			seen := make(chan string, 16)
			go func() {
				for {
					c, err := echo.Accept()
					if err != nil {
						return
					}
					seen <- c.RemoteAddr().String()
					go func() { io.Copy(c, c); c.(*net.TCPConn).CloseWrite(); c.Close() }()
				}
			}()
			go func() {
				for {
					c, err := banner.Accept()
					if err != nil {
						return
					}
					c.Write([]byte("220 ready\r\n"))
					c.Close()
				}
			}()

			for _, server := range []string{"192.0.2.2", "2001:db8:2::2"} {
				t.Run(server, func(t *testing.T) {
					dial := func(port string) (net.Conn, error) {
						var c net.Conn
						var err error
						in(t, l.c, func() {
							d := net.Dialer{Timeout: 3 * time.Second}
							c, err = d.Dial("tcp", net.JoinHostPort(server, port))
						})
						return c, err
					}
					// Bytes both ways, half-close, client address kept.
					c, err := dial("7")
					if err != nil {
						t.Fatalf("dial: %v", err)
					}
					defer c.Close()
					if got := <-seen; got != c.LocalAddr().String() {
						t.Errorf("server saw %s, want the client's %s", got, c.LocalAddr())
					}
					payload := make([]byte, 8<<20)
					rand.Read(payload)
					go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
					h := sha256.New()
					c.SetReadDeadline(time.Now().Add(20 * time.Second))
					n, err := io.Copy(h, c)
					want := sha256.Sum256(payload)
					if err != nil || n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), want[:]) {
						t.Errorf("echo: %d bytes, %v; equal sums: %v", n, err, bytes.Equal(h.Sum(nil), want[:]))
					}

					// Closed port: RST well under a second.
					start := time.Now()
					_, err = dial("9999")
					if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
						t.Errorf("closed port: %v after %v, want ECONNREFUSED under 1s", err, time.Since(start))
					}

					// Server-first protocol.
					b, err := dial("22")
					if err != nil {
						t.Fatalf("dial banner: %v", err)
					}
					b.SetReadDeadline(time.Now().Add(3 * time.Second))
					got, _ := io.ReadAll(b)
					b.Close()
					if string(got) != "220 ready\r\n" {
						t.Errorf("banner = %q", got)
					}
				})
			}
			s := st.Stats()
			if s.RxPackets.Load() == 0 || s.TxPackets.Load() == 0 {
				t.Errorf("no packets crossed the TUN: %+v", s)
			}
			if offload && !tc.upstreamKernel && (s.RxGSOPackets.Load() == 0 || s.TxGSOPackets.Load() == 0) {
				t.Errorf("offload on but no GSO packets: rx %d tx %d", s.RxGSOPackets.Load(), s.TxGSOPackets.Load())
			}
			if s.RxBadChecksum.Load() != 0 || s.RxMalformed.Load() != 0 {
				t.Errorf("bad packets from the TUN: checksum %d malformed %d", s.RxBadChecksum.Load(), s.RxMalformed.Load())
			}
		})
	}
}

func TestTUNDeletedFailsStack(t *testing.T) {
	l := newNSLab(t)
	st, _ := l.startNetward(true, false)
	select {
	case <-st.Failed():
		t.Fatalf("Failed before the TUN was deleted: %v", st.Err())
	default:
	}
	run(t, "ip", "-n", l.a, "link", "del", l.tun)
	select {
	case <-st.Failed():
		if st.Err() == nil {
			t.Errorf("Failed closed but Err is nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Failed not closed 5 s after the TUN was deleted")
	}
}
