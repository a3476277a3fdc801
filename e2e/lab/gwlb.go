package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// A GWLB lab is a fleet of appliances behind a Gateway Load Balancer:
//
//	site N:  sNcli ── sNgw ── sNapp      (the same inner addresses in every site)
//	                   │ TUN + `nwpeer gwlb` (encapsulates, hashes flows to targets)
//	underlay ul: a bridge on 203.0.113.0/24
//	                   │
//	          fw0, fw1, …: `netward run --geneve`
//
// Each site's gateway namespace routes what arrives from its client or
// application into a TUN (policy routing by input interface); `nwpeer
// gwlb` (peer.ServeGWLB) reads it, sends it GENEVE-encapsulated to the
// flow's healthy target, checks the options of what comes back, and writes
// the decapsulated packets into the TUN, which the main table routes to
// the client or the application. The appliances see only GENEVE.

// GWLBOptions configure NewGWLB.
type GWLBOptions struct {
	// Sites is the number of GWLB endpoints (each a client and an
	// application with the Default topology's addresses); 0 means 1.
	Sites int
	// Appliances is the number of targets; 0 means 2.
	Appliances int
	// InnerMTU is the MTU of the sites' links and TUNs; 0 means 1500.
	// GWLB's largest inner packet is 8432 bytes (gwlb.InnerMTU): its
	// 8500-byte frames less the outer headers. The underlay is always
	// 9001 (an EC2 instance's jumbo MTU).
	InnerMTU int
	// Dir, KeepDir and Logf are as in Options.
	Dir     string
	KeepDir bool
	Logf    func(format string, args ...any)
}

// GWLBLab is a built GWLB topology. Its Lab's Client, Appliance and App
// are nil: the namespaces are in Underlay, Appliances and Sites.
type GWLBLab struct {
	*Lab
	Underlay   *NS
	Appliances []*GWLBAppliance
	Sites      []*GWLBSite
}

// GWLBAppliance is one target.
type GWLBAppliance struct {
	*NS
	Addr netip.Addr // underlay address (GENEVE and /healthz)
	If   string     // its underlay interface
}

// GWLBSite is one GWLB endpoint with its client and application.
type GWLBSite struct {
	Client, Gateway, App *NS
	Addr                 netip.Addr // the GWLB's underlay address
	TUN                  string     // the TUN its traffic is routed into
	EndpointID           uint64
	AttachmentID         uint64
	// Stats is the address of the GWLB's stats endpoint, on the gateway
	// namespace's loopback.
	Stats string
	GWLB  *Proc // started by StartGWLB
}

// Underlay addressing.
var (
	gwlbUnderlay = netip.MustParsePrefix("203.0.113.0/24")
)

// GWLBApplianceAddr is appliance i's underlay address, 203.0.113.(10+i).
func GWLBApplianceAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}) }

// GWLBSiteAddr is site i's GWLB underlay address, 203.0.113.(100+i).
func GWLBSiteAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + i)}) }

// gwlbUnderlayMTU is the underlay links' MTU, an EC2 instance's.
const gwlbUnderlayMTU = "9001"

// gwlbTable is the gateway's routing table that leads into the TUN.
const gwlbTable = "100"

// NewGWLB builds a GWLB lab. On error everything already created is removed.
func NewGWLB(o GWLBOptions) (*GWLBLab, error) {
	if o.Sites == 0 {
		o.Sites = 1
	}
	if o.Appliances == 0 {
		o.Appliances = 2
	}
	if o.InnerMTU == 0 {
		o.InnerMTU = 1500
	}
	if o.InnerMTU < 1280 || o.InnerMTU > 8432 {
		return nil, fmt.Errorf("lab: GWLB lab inner MTU %d: must be 1280..8432", o.InnerMTU)
	}
	if o.Sites < 1 || o.Sites > 9 || o.Appliances < 1 || o.Appliances > 9 {
		return nil, fmt.Errorf("lab: GWLB lab of %d sites and %d appliances: each must be 1..9", o.Sites, o.Appliances)
	}
	l, err := newBase(Topology{}, o.Dir, o.KeepDir, o.Logf)
	if err != nil {
		return nil, err
	}
	g := &GWLBLab{Lab: l}
	if err := g.build(o); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return g, nil
}

func (g *GWLBLab) build(o GWLBOptions) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := Prefix + g.ID
	var err error
	type step struct {
		ns   *NS
		args []string
	}
	var steps []step
	run := func() error {
		for _, s := range steps {
			if err := s.ns.run(ctx, s.args...); err != nil {
				return err
			}
		}
		steps = steps[:0]
		return nil
	}
	if g.Underlay, err = g.addNS(ctx, base+"-ul", "underlay"); err != nil {
		return err
	}
	bridge := base + "-br"
	steps = append(steps,
		step{g.Underlay, []string{"ip", "link", "add", bridge, "type", "bridge"}},
		step{g.Underlay, []string{"ip", "link", "set", bridge, "up"}})
	if err := run(); err != nil {
		return err
	}
	// attach connects ns to the underlay bridge with address a.
	attach := func(ns *NS, dev, peer string, a netip.Addr) error {
		if err := g.host(ctx, "ip", "link", "add", dev, "netns", ns.Name, "type", "veth", "peer", "name", peer, "netns", g.Underlay.Name); err != nil {
			return err
		}
		steps = append(steps,
			step{g.Underlay, []string{"ip", "link", "set", peer, "mtu", gwlbUnderlayMTU}},
			step{ns, []string{"ip", "link", "set", dev, "mtu", gwlbUnderlayMTU}},
			step{g.Underlay, []string{"ip", "link", "set", peer, "master", bridge}},
			step{g.Underlay, []string{"ip", "link", "set", peer, "up"}},
			step{ns, []string{"ip", "addr", "add", netip.PrefixFrom(a, gwlbUnderlay.Bits()).String(), "dev", dev}},
			step{ns, []string{"ip", "link", "set", dev, "up"}})
		return run()
	}
	for i := range o.Appliances {
		ns, err := g.addNS(ctx, fmt.Sprintf("%s-fw%d", base, i), "appliance")
		if err != nil {
			return err
		}
		a := &GWLBAppliance{NS: ns, Addr: GWLBApplianceAddr(i), If: fmt.Sprintf("%s-f%d", base, i)}
		if err := attach(ns, a.If, fmt.Sprintf("%s-uf%d", base, i), a.Addr); err != nil {
			return err
		}
		g.Appliances = append(g.Appliances, a)
	}
	t := Default()
	for i := range o.Sites {
		s := &GWLBSite{
			Addr: GWLBSiteAddr(i), TUN: fmt.Sprintf("%s-%dt", base, i),
			EndpointID: 0x0e0d_0000_0000_0000 | uint64(i+1), AttachmentID: 0x0a77_0000_0000_0000 | uint64(i+1),
			Stats: "127.0.0.1:9080",
		}
		if s.Client, err = g.addNS(ctx, fmt.Sprintf("%s-s%dcli", base, i), "client"); err != nil {
			return err
		}
		if s.Gateway, err = g.addNS(ctx, fmt.Sprintf("%s-s%dgw", base, i), "gwlb"); err != nil {
			return err
		}
		if s.App, err = g.addNS(ctx, fmt.Sprintf("%s-s%dapp", base, i), "app"); err != nil {
			return err
		}
		if err := attach(s.Gateway, fmt.Sprintf("%s-g%d", base, i), fmt.Sprintf("%s-ug%d", base, i), s.Addr); err != nil {
			return err
		}
		cli, gwCli := fmt.Sprintf("%s-%dc", base, i), fmt.Sprintf("%s-%dgc", base, i)
		app, gwApp := fmt.Sprintf("%s-%da", base, i), fmt.Sprintf("%s-%dga", base, i)
		for _, v := range [][]string{
			{"ip", "link", "add", cli, "netns", s.Client.Name, "type", "veth", "peer", "name", gwCli, "netns", s.Gateway.Name},
			{"ip", "link", "add", app, "netns", s.App.Name, "type", "veth", "peer", "name", gwApp, "netns", s.Gateway.Name},
		} {
			if err := g.host(ctx, v...); err != nil {
				return err
			}
		}
		addr := func(ns *NS, dev string, p netip.Prefix) step {
			args := []string{"ip", "addr", "add", p.String(), "dev", dev}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			return step{ns, args}
		}
		gw := s.Gateway
		mtu := strconv.Itoa(o.InnerMTU)
		steps = append(steps,
			step{s.Client, []string{"ip", "link", "set", cli, "mtu", mtu}},
			step{s.App, []string{"ip", "link", "set", app, "mtu", mtu}},
			step{gw, []string{"ip", "link", "set", gwCli, "mtu", mtu}},
			step{gw, []string{"ip", "link", "set", gwApp, "mtu", mtu}},
			addr(s.Client, cli, t.ClientV4), addr(s.Client, cli, t.ClientV6),
			addr(gw, gwCli, t.ApplianceClientV4), addr(gw, gwCli, t.ApplianceClientV6),
			addr(gw, gwApp, t.ApplianceAppV4), addr(gw, gwApp, t.ApplianceAppV6),
			addr(s.App, app, t.AppV4), addr(s.App, app, t.AppV6),
			step{s.Client, []string{"ip", "link", "set", cli, "up"}},
			step{s.App, []string{"ip", "link", "set", app, "up"}},
			step{gw, []string{"ip", "link", "set", gwCli, "up"}},
			step{gw, []string{"ip", "link", "set", gwApp, "up"}},
			step{s.Client, []string{"ip", "route", "add", "default", "via", t.ApplianceClientV4.Addr().String()}},
			step{s.Client, []string{"ip", "-6", "route", "add", "default", "via", t.ApplianceClientV6.Addr().String()}},
			step{s.App, []string{"ip", "route", "add", "default", "via", t.ApplianceAppV4.Addr().String()}},
			step{s.App, []string{"ip", "-6", "route", "add", "default", "via", t.ApplianceAppV6.Addr().String()}},
			step{gw, []string{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"}},
			step{gw, []string{"sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"}},
			// What the GWLB writes into the TUN comes in on the TUN but is
			// routed out of a veth: not the way back to its source.
			step{gw, []string{"sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"}},
			step{gw, []string{"sysctl", "-q", "-w", "net.ipv4.conf.default.rp_filter=0"}},
			step{gw, []string{"ip", "tuntap", "add", "dev", s.TUN, "mode", "tun"}},
			step{gw, []string{"ip", "link", "set", s.TUN, "mtu", mtu, "up"}},
			step{gw, []string{"sysctl", "-q", "-w", "net.ipv4.conf." + s.TUN + ".rp_filter=0"}},
		)
		for _, fam := range []string{"-4", "-6"} {
			steps = append(steps, step{gw, []string{"ip", fam, "route", "add", "default", "dev", s.TUN, "table", gwlbTable}})
			for _, dev := range []string{gwCli, gwApp} {
				steps = append(steps, step{gw, []string{"ip", fam, "rule", "add", "iif", dev, "lookup", gwlbTable, "pref", "100"}})
			}
		}
		if err := run(); err != nil {
			return err
		}
		g.Sites = append(g.Sites, s)
	}
	return nil
}

// StartAppliance starts `netward run --geneve` on appliance i with its
// health check on :9741 and extra flags, and waits until /healthz answers
// 200 on its underlay address.
func (g *GWLBLab) StartAppliance(ctx context.Context, binary string, i int, extra ...string) (*Netward, error) {
	a := g.Appliances[i]
	dir := filepath.Join(g.Dir, fmt.Sprintf("fw%d", i))
	args := []string{binary, "run", "--geneve",
		"--health-listen", ":" + strconv.Itoa(GWLBHealthPort),
		"--admin-socket", filepath.Join(g.Dir, fmt.Sprintf("netward%d-admin.sock", i)),
		"--log", dir + "-eve.json",
		"--log-level", "debug", "--log-format", "json",
	}
	p, err := a.Start(fmt.Sprintf("netward%d", i), append(args, extra...)...)
	if err != nil {
		return nil, err
	}
	w := &Netward{Proc: p, EventLog: dir + "-eve.json", AdminSocket: flagValue(args, "--admin-socket"), lab: g.Lab}
	url := "http://" + netip.AddrPortFrom(a.Addr, GWLBHealthPort).String() + "/healthz"
	for {
		if out, err := a.Run(ctx, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url); err == nil && out == "200" {
			return w, nil
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("lab: netward on %s exited (%v) before /healthz answered; log:\n%s", a.Name, p.err, tail(p.Log(), 4000))
		case <-ctx.Done():
			p.kill()
			return nil, fmt.Errorf("lab: netward on %s: /healthz not 200: %w; log:\n%s", a.Name, ctx.Err(), tail(p.Log(), 4000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// GWLBHealthPort is where the lab's appliances answer /healthz.
const GWLBHealthPort = 9741

// StartGWLB starts site i's GWLB (`nwpeer gwlb`) with the appliances as
// targets and waits until it serves.
func (g *GWLBLab) StartGWLB(ctx context.Context, peerBinary string, i int, extra ...string) (*Proc, error) {
	s := g.Sites[i]
	targets := make([]string, len(g.Appliances))
	for j, a := range g.Appliances {
		targets[j] = a.Addr.String()
	}
	args := []string{peerBinary, "gwlb", "-tun", s.TUN, "-local", s.Addr.String(), "-targets", strings.Join(targets, ","),
		"-health-port", strconv.Itoa(GWLBHealthPort), "-stats", s.Stats,
		"-endpoint-id", strconv.FormatUint(s.EndpointID, 10), "-attachment-id", strconv.FormatUint(s.AttachmentID, 10)}
	p, err := s.Gateway.Start(fmt.Sprintf("gwlb%d", i), append(args, extra...)...)
	if err != nil {
		return nil, err
	}
	if _, err := p.WaitLog(ctx, regexp.MustCompile(`nwpeer: serving`)); err != nil {
		p.kill()
		return nil, err
	}
	s.GWLB = p
	return p, nil
}

// GWLBStats reads site i's GWLB counters (with the flow table if flows)
// as JSON into v, a *peer.GWLBStats (lab does not import peer).
func (g *GWLBLab) GWLBStats(ctx context.Context, i int, flows bool, v any) error {
	s := g.Sites[i]
	url := "http://" + s.Stats + "/stats"
	if flows {
		url += "?flows=1"
	}
	out, err := s.Gateway.Run(ctx, "curl", "-sf", "--max-time", "5", url)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("lab: GWLB stats %q: %w", out, err)
	}
	return nil
}
