package peer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netward/netward/geneve"
	"golang.org/x/sys/unix"
)

// The lab's Gateway Load Balancer (`nwpeer gwlb`, ServeGWLB).
//
// It is a Go program, not the kernel's GENEVE device with tc rules: the
// lab's kernels may lack CONFIG_GENEVE (and tc flower / tunnel_key), and
// even where they have them the kernel cannot give each flow its own flow
// cookie TLV nor check that the appliance echoes it byte for byte. So the
// site's namespace routes the client↔application traffic into a TUN, and
// this program encapsulates every packet read from it the way AWS GWLB
// does (UDP to the target's port 6081, GWLB's three options of class
// 0x0108: endpoint ID, attachment ID, a random per-flow cookie), checks the
// options of everything that comes back, and writes the decapsulated
// packets back into the TUN, which the namespace's main table routes to
// the client or the application.

// GWLBOptions configure ServeGWLB.
type GWLBOptions struct {
	// TUN is the name of an existing (persistent) TUN device; the lab
	// makes it and routes the site's traffic into it.
	TUN string
	// Local is the GWLB's underlay address: GENEVE leaves from and
	// arrives at Local:6081.
	Local netip.Addr
	// Targets are the appliances' underlay addresses.
	Targets []netip.Addr
	// HealthPort is where each target answers GET /healthz.
	HealthPort int
	// HealthInterval between checks of a target; 0 means 200 ms. A target
	// turns unhealthy after 2 failed checks in a row and healthy after 2
	// good ones; it starts unhealthy.
	HealthInterval time.Duration
	// EndpointID and AttachmentID go into every packet's options.
	EndpointID, AttachmentID uint64
	// Rebalance moves the open flows of a target that turns unhealthy to
	// the healthy ones (GWLB's target_failover.on_unhealthy=rebalance);
	// false leaves them where they are and sends only new flows
	// elsewhere (GWLB's default, no_rebalance: what a draining target
	// relies on).
	Rebalance bool
	// Stats is the TCP address of the stats endpoint (GET /stats: a
	// GWLBStats as JSON; /stats?flows=1 lists the flows too).
	Stats string
	// Ready is called once the TUN, the GENEVE socket and the stats
	// endpoint are open.
	Ready func()
	// Log receives health changes and errors; nil discards.
	Log io.Writer
}

// Health check thresholds (in checks).
const (
	gwlbUnhealthyAfter = 2
	gwlbHealthyAfter   = 2
)

// GWLBStats are the lab GWLB's counters.
type GWLBStats struct {
	Targets []GWLBTarget `json:"targets"`
	// EchoOK counts GENEVE packets from a target whose options (and VNI)
	// are byte for byte the ones sent for the inner packet's flow;
	// EchoMismatch those whose options differ (dropped); EchoUnknownFlow
	// those whose inner flow this GWLB never sent (dropped).
	EchoOK          uint64 `json:"echo_ok"`
	EchoMismatch    uint64 `json:"echo_mismatch"`
	EchoUnknownFlow uint64 `json:"echo_unknown_flow"`
	// BadGeneve counts datagrams that did not parse or whose inner packet
	// is not IP.
	BadGeneve uint64 `json:"bad_geneve"`
	// NoTarget counts inner packets dropped for want of a healthy target.
	NoTarget uint64 `json:"no_target"`
	// NotIP counts packets read from the TUN that are not IPv4/IPv6.
	NotIP uint64 `json:"not_ip"`
	// Rehashed counts flows moved off a target that turned unhealthy.
	Rehashed uint64 `json:"rehashed"`
	// Errors counts failed TUN writes and UDP sends.
	Errors uint64 `json:"errors"`
	// FlowCount is the number of flows in the table; Flows lists them
	// (only for /stats?flows=1).
	FlowCount int        `json:"flow_count"`
	Flows     []GWLBFlow `json:"flows,omitempty"`
}

// GWLBTarget is one target's state.
type GWLBTarget struct {
	Addr    string `json:"addr"`
	Healthy bool   `json:"healthy"`
	// Changes counts health state changes.
	Changes int `json:"changes"`
	// Sent and Received count GENEVE packets to and from the target.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	// LastError is the last failed check's error.
	LastError string `json:"last_error,omitempty"`
}

// GWLBFlow is one inner flow: its two ends (in the direction-free order
// of the flow table), its protocol, cookie and current target.
type GWLBFlow struct {
	A      string `json:"a"`
	B      string `json:"b"`
	Proto  uint8  `json:"proto"`
	Cookie uint32 `json:"cookie"`
	Target string `json:"target"`
}

// Has reports whether the flow has addr:port as one of its ends.
func (f GWLBFlow) Has(addrPort string) bool { return f.A == addrPort || f.B == addrPort }

// Target returns the named target's stats.
func (s *GWLBStats) Target(addr string) (GWLBTarget, bool) {
	for _, t := range s.Targets {
		if t.Addr == addr {
			return t, true
		}
	}
	return GWLBTarget{}, false
}

// gwlbKey is an inner flow's 5-tuple in a direction-free order.
type gwlbKey struct {
	a, b  netip.AddrPort
	proto uint8
}

type gwlbFlow struct {
	opts   []byte // the 32 option bytes every packet of the flow carries
	cookie uint32
	target int // index into targets
}

type gwlbTarget struct {
	addr     netip.Addr
	to       netip.AddrPort
	healthy  atomic.Bool
	sent     atomic.Uint64
	received atomic.Uint64
	// Health check state, owned by the target's checker but read by
	// stats under gwlb.mu.
	changes int
	lastErr string
}

type gwlb struct {
	o       GWLBOptions
	tun     *os.File
	conn    *net.UDPConn
	targets []*gwlbTarget
	log     io.Writer

	mu    sync.Mutex
	flows map[gwlbKey]*gwlbFlow

	echoOK, echoMismatch, echoUnknown, badGeneve, noTarget, notIP, rehashed, errs atomic.Uint64
}

// ServeGWLB runs the lab's GWLB until ctx ends.
func ServeGWLB(ctx context.Context, o GWLBOptions) error {
	if o.HealthInterval <= 0 {
		o.HealthInterval = 200 * time.Millisecond
	}
	if len(o.Targets) == 0 {
		return errors.New("gwlb: no targets")
	}
	g := &gwlb{o: o, flows: map[gwlbKey]*gwlbFlow{}, log: o.Log}
	if g.log == nil {
		g.log = io.Discard
	}
	for _, a := range o.Targets {
		g.targets = append(g.targets, &gwlbTarget{addr: a, to: netip.AddrPortFrom(a, geneve.Port)})
	}
	tun, err := openTUN(o.TUN)
	if err != nil {
		return err
	}
	g.tun = tun
	defer tun.Close()
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.Local, geneve.Port)))
	if err != nil {
		return fmt.Errorf("gwlb: listen: %w", err)
	}
	g.conn = conn
	defer conn.Close()
	conn.SetReadBuffer(4 << 20)
	conn.SetWriteBuffer(4 << 20)
	ln, err := net.Listen("tcp", o.Stats)
	if err != nil {
		return fmt.Errorf("gwlb: stats listener: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(g.serveStats), ReadHeaderTimeout: 5 * time.Second}
	defer srv.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(2)
	go func() { defer wg.Done(); errc <- g.fromTUN() }()
	go func() { defer wg.Done(); errc <- g.fromTargets() }()
	go func() { srv.Serve(ln) }()
	for _, t := range g.targets {
		wg.Add(1)
		go func() { defer wg.Done(); g.check(ctx, t) }()
	}
	if o.Ready != nil {
		o.Ready()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	tun.Close()
	conn.Close()
	srv.Close()
	wg.Wait()
	return runErr
}

// openTUN attaches to the TUN device name (one packet per read and write,
// no packet information header), non-blocking so Close ends a Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("gwlb: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("gwlb: TUN name %q: %w", name, err)
	}
	ifr.SetUint16(uint16(unix.IFF_TUN | unix.IFF_NO_PI))
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("gwlb: attach to TUN %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// innerKey reads an inner packet's flow: addresses, protocol and, for TCP
// and UDP, ports (IPv6 extension headers are not walked: the lab sends
// none). The GENEVE protocol type goes with it.
func innerKey(p []byte) (k gwlbKey, proto uint16, ok bool) {
	var src, dst netip.Addr
	var l4 []byte
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		ihl := int(p[0]&0xf) * 4
		if ihl < 20 || len(p) < ihl {
			return k, 0, false
		}
		k.proto, proto = p[9], geneve.ProtoIPv4
		src, dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		if binary.BigEndian.Uint16(p[6:8])&0x1fff == 0 {
			l4 = p[ihl:]
		}
	case len(p) >= 40 && p[0]>>4 == 6:
		k.proto, proto = p[6], geneve.ProtoIPv6
		src, dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		l4 = p[40:]
	default:
		return k, 0, false
	}
	// An ICMP error belongs to the flow of the packet it quotes (the
	// appliance's port unreachable refusals of UDP flows).
	if quoted, ok := icmpErrorQuote(k.proto, l4); ok {
		if q, qproto, ok := innerKey(quoted); ok && qproto == proto && q.proto != 1 && q.proto != 58 {
			return q, proto, true
		}
	}
	var sp, dp uint16
	if (k.proto == 6 || k.proto == 17) && len(l4) >= 4 {
		sp, dp = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	}
	a, b := netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	if a.Compare(b) > 0 {
		a, b = b, a
	}
	k.a, k.b = a, b
	return k, proto, true
}

// icmpErrorQuote returns the packet an ICMP (proto 1: destination
// unreachable, time exceeded, parameter problem) or ICMPv6 (58: types 1–4)
// error quotes.
func icmpErrorQuote(proto uint8, l4 []byte) ([]byte, bool) {
	if len(l4) < 8 {
		return nil, false
	}
	switch typ := l4[0]; {
	case proto == 1 && (typ == 3 || typ == 11 || typ == 12), proto == 58 && typ >= 1 && typ <= 4:
		return l4[8:], true
	}
	return nil, false
}

// score is the flow's rendezvous hash for target t: a flow goes to the
// healthy target with the highest score, the same for both directions.
func (k gwlbKey) score(t netip.Addr) uint64 {
	h := fnv.New64a()
	var b [16 + 2 + 16 + 2 + 1 + 16]byte
	a16, b16, t16 := k.a.Addr().As16(), k.b.Addr().As16(), t.As16()
	copy(b[0:], a16[:])
	binary.BigEndian.PutUint16(b[16:], k.a.Port())
	copy(b[18:], b16[:])
	binary.BigEndian.PutUint16(b[34:], k.b.Port())
	b[36] = k.proto
	copy(b[37:], t16[:])
	h.Write(b[:])
	return h.Sum64()
}

// pick is the healthy target for k, or -1.
func (g *gwlb) pick(k gwlbKey) int {
	best, bestScore := -1, uint64(0)
	for i, t := range g.targets {
		if !t.healthy.Load() {
			continue
		}
		if s := k.score(t.addr); best < 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// headerLen is what the GWLB puts in front of every inner packet: the
// fixed header and its three options.
const gwlbHeaderLen = geneve.HeaderLen + 32

// fromTUN encapsulates every packet the site routes into the TUN and sends
// it to its flow's target.
func (g *gwlb) fromTUN() error {
	buf := make([]byte, gwlbHeaderLen+65536)
	h := geneve.Header{Options: make([]byte, 0, 32)}
	for {
		n, err := g.tun.Read(buf[gwlbHeaderLen:])
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("gwlb: read TUN: %w", err)
		}
		pkt := buf[gwlbHeaderLen : gwlbHeaderLen+n]
		k, proto, ok := innerKey(pkt)
		if !ok {
			g.notIP.Add(1)
			continue
		}
		g.mu.Lock()
		f := g.flows[k]
		if f == nil {
			f = &gwlbFlow{cookie: rand.Uint32(), target: g.pick(k)}
			f.opts = geneve.AWSOptions(make([]byte, 0, 32), g.o.EndpointID, g.o.AttachmentID, f.cookie)
			if f.target >= 0 {
				g.flows[k] = f
			}
		} else if f.target < 0 || g.o.Rebalance && !g.targets[f.target].healthy.Load() {
			f.target = g.pick(k)
			g.rehashed.Add(1)
		}
		ti := f.target
		h.Protocol = proto
		h.Options = append(h.Options[:0], f.opts...)
		g.mu.Unlock()
		if ti < 0 {
			g.noTarget.Add(1)
			continue
		}
		out, err := geneve.Append(buf[:0], &h) // exactly gwlbHeaderLen bytes, in front of pkt
		if err != nil || len(out) != gwlbHeaderLen {
			return fmt.Errorf("gwlb: build header: %v (%d bytes)", err, len(out))
		}
		t := g.targets[ti]
		if _, err := g.conn.WriteToUDPAddrPort(buf[:gwlbHeaderLen+n], t.to); err != nil {
			g.errs.Add(1)
			continue
		}
		t.sent.Add(1)
	}
}

// fromTargets checks and decapsulates what the targets send back and
// writes the inner packets into the TUN.
func (g *gwlb) fromTargets() error {
	buf := make([]byte, 65536)
	var h geneve.Header
	for {
		n, from, err := g.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("gwlb: receive: %w", err)
		}
		for _, t := range g.targets {
			if t.addr == from.Addr().Unmap() {
				t.received.Add(1)
			}
		}
		inner, err := geneve.Parse(buf[:n], &h)
		if err != nil {
			g.badGeneve.Add(1)
			continue
		}
		k, proto, ok := innerKey(inner)
		if !ok || proto != h.Protocol {
			g.badGeneve.Add(1)
			continue
		}
		g.mu.Lock()
		f := g.flows[k]
		match := f != nil && bytes.Equal(h.Options, f.opts) && h.VNI == 0 && !h.OAM && !h.Critical
		g.mu.Unlock()
		switch {
		case f == nil:
			g.echoUnknown.Add(1)
			continue
		case !match:
			g.echoMismatch.Add(1)
			fmt.Fprintf(g.log, "gwlb: options from %v for %v↔%v: %x, sent %x\n", from, k.a, k.b, h.Options, f.opts)
			continue
		}
		g.echoOK.Add(1)
		if _, err := g.tun.Write(inner); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			g.errs.Add(1)
		}
	}
}

// check health-checks t every interval until ctx ends.
func (g *gwlb) check(ctx context.Context, t *gwlbTarget) {
	c := &http.Client{
		Timeout:   max(g.o.HealthInterval, 300*time.Millisecond),
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	url := "http://" + netip.AddrPortFrom(t.addr, uint16(g.o.HealthPort)).String() + "/healthz"
	tick := time.NewTicker(g.o.HealthInterval)
	defer tick.Stop()
	good, bad := 0, 0
	for {
		var why string
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				why = "status " + strconv.Itoa(resp.StatusCode)
			}
		} else {
			why = err.Error()
		}
		if ctx.Err() != nil {
			return
		}
		if why == "" {
			good, bad = good+1, 0
		} else {
			good, bad = 0, bad+1
		}
		healthy := t.healthy.Load()
		g.mu.Lock()
		if why != "" {
			t.lastErr = why
		}
		switch {
		case !healthy && good >= gwlbHealthyAfter:
			t.healthy.Store(true)
			t.changes++
			fmt.Fprintf(g.log, "gwlb: target %v healthy\n", t.addr)
		case healthy && bad >= gwlbUnhealthyAfter:
			t.healthy.Store(false)
			t.changes++
			for k, f := range g.flows {
				if !g.o.Rebalance {
					break // open flows stay; new ones avoid t (pick)
				}
				if f.target >= 0 && g.targets[f.target] == t {
					f.target = g.pick(k)
					g.rehashed.Add(1)
				}
			}
			fmt.Fprintf(g.log, "gwlb: target %v unhealthy: %s\n", t.addr, why)
		}
		g.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Stats returns the counters; with flows, the flow table too.
func (g *gwlb) stats(flows bool) GWLBStats {
	s := GWLBStats{
		EchoOK: g.echoOK.Load(), EchoMismatch: g.echoMismatch.Load(), EchoUnknownFlow: g.echoUnknown.Load(),
		BadGeneve: g.badGeneve.Load(), NoTarget: g.noTarget.Load(), NotIP: g.notIP.Load(),
		Rehashed: g.rehashed.Load(), Errors: g.errs.Load(),
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range g.targets {
		s.Targets = append(s.Targets, GWLBTarget{Addr: t.addr.String(), Healthy: t.healthy.Load(), Changes: t.changes,
			Sent: t.sent.Load(), Received: t.received.Load(), LastError: t.lastErr})
	}
	s.FlowCount = len(g.flows)
	if flows {
		for k, f := range g.flows {
			e := GWLBFlow{A: k.a.String(), B: k.b.String(), Proto: k.proto, Cookie: f.cookie}
			if f.target >= 0 {
				e.Target = g.targets[f.target].addr.String()
			}
			s.Flows = append(s.Flows, e)
		}
		sort.Slice(s.Flows, func(i, j int) bool { return s.Flows[i].A+s.Flows[i].B < s.Flows[j].A+s.Flows[j].B })
	}
	return s
}

func (g *gwlb) serveStats(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/stats" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(g.stats(r.URL.Query().Get("flows") != ""))
}

// GeneveJunk builds a malformed or unacceptable GENEVE datagram of the
// given kind, each one a reason netward_geneve_drops_total counts:
// "truncated" (5 bytes), "critical_option" (an unknown critical option
// besides GWLB's), "protocol" (inner protocol type 0x6558, Ethernet),
// "oversized" (an inner packet larger than netward's inner MTU of 8432),
// "wrong_class" (an option of another class instead of GWLB's: no
// endpoint ID, "missing_option"), "option_length" (an option longer than
// the header says).
func GeneveJunk(kind string) ([]byte, error) {
	aws := geneve.AWSOptions(nil, 0xbad0, 0xbad1, 0xbad2)
	inner := make([]byte, 40) // an IPv4 TCP header pair, zeros after the IP header
	inner[0] = 0x45
	inner[8] = 64
	inner[9] = 6
	copy(inner[12:16], []byte{198, 51, 100, 2})
	copy(inner[16:20], []byte{192, 0, 2, 2})
	h := geneve.Header{Protocol: geneve.ProtoIPv4, Options: aws}
	switch kind {
	case "truncated":
		b, _ := geneve.Append(nil, &h)
		return b[:5], nil
	case "critical_option":
		opts, err := geneve.AppendOption(append([]byte(nil), aws...), 0x0200, 0x85, []byte{1, 2, 3, 4})
		if err != nil {
			return nil, err
		}
		h.Options, h.Critical = opts, true
	case "protocol":
		h.Protocol = 0x6558
	case "wrong_class":
		opts, err := geneve.AppendOption(nil, 0x0200, 0x01, make([]byte, 8))
		if err != nil {
			return nil, err
		}
		h.Options = opts
	case "option_length":
		b, err := geneve.Append(nil, &h)
		if err != nil {
			return nil, err
		}
		b[geneve.HeaderLen+3] = 0x1f // first option: 31 words, past the options' end
		return append(b, inner...), nil
	case "oversized":
		inner = make([]byte, 8600)
		inner[0] = 0x45
		binary.BigEndian.PutUint16(inner[2:4], uint16(len(inner)))
		inner[8], inner[9] = 64, 6
	default:
		return nil, fmt.Errorf("geneve junk: unknown kind %q (truncated, critical_option, protocol, oversized, wrong_class, option_length)", kind)
	}
	b, err := geneve.Append(nil, &h)
	if err != nil {
		return nil, err
	}
	return append(b, inner...), nil
}

// SendGeneveJunk sends n datagrams of kind (GeneveJunk) to to from an
// ephemeral port.
func SendGeneveJunk(to netip.AddrPort, kind string, n int) error {
	b, err := GeneveJunk(kind)
	if err != nil {
		return err
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return err
	}
	defer c.Close()
	for range n {
		if _, err := c.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// ServeGeneveReflector is the bench's baseline GENEVE appliance (`nwpeer
// genevereflect`): every datagram that arrives on listen goes back, byte
// for byte, to its sender's port 6081 — the least an appliance behind GWLB
// can do (no decapsulation, no stack, no inspection). The lab's kernel has
// no GENEVE device to forward with instead. It answers GET /healthz with
// 200 on health.
func ServeGeneveReflector(ctx context.Context, listen, health string, ready func()) error {
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("reflector: listen address: %w", err)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	defer conn.Close()
	conn.SetReadBuffer(8 << 20)
	conn.SetWriteBuffer(8 << 20)
	ln, err := net.Listen("tcp", health)
	if err != nil {
		return fmt.Errorf("reflector: health listener: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "ok\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	if ready != nil {
		ready()
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reflector: receive: %w", err)
		}
		// Errors (a full socket buffer) lose the packet, as a wire would.
		conn.WriteToUDPAddrPort(buf[:n], netip.AddrPortFrom(from.Addr(), geneve.Port))
	}
}
