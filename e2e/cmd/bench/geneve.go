package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/peer"
)

// The GENEVE part (-only geneve): netward --geneve behind the lab's
// Gateway Load Balancer (e2e/lab/gwlb.go: one site, one appliance, jumbo
// frames) against the same lab with a GENEVE reflector as the appliance
// (nwpeer genevereflect: every datagram straight back to the GWLB). The
// lab's kernel has no GENEVE device, so there is no kernel "decapsulate,
// route, re-encapsulate" to compare with; the reflector is the least any
// appliance can do, and the kernel column of these rows. Both go through
// the same Go encapsulator (the lab's GWLB), which caps both.

// geneveColumn is the netward column the GENEVE rows fill: the first
// netward variant, run with --geneve and the variant's flags.
func (b *bench) geneveColumn() *variant {
	for i := range b.variants {
		if !b.variants[i].external() {
			return &b.variants[i]
		}
	}
	return nil
}

// peerServing is what nwpeer's servers print once they listen.
var peerServing = regexp.MustCompile(`nwpeer: serving`)

const (
	geneveRowUp    = "GENEVE: iperf3 1 stream c→s (kernel column: reflector)"
	geneveRowDown  = "GENEVE: iperf3 1 stream s→c (kernel column: reflector)"
	geneveRowHTTP  = "GENEVE: new TCP conn/s IPv4 (nwpeer churn -c50, Connection: close)"
	geneveRowTLS   = "GENEVE: new TLS conn/s IPv4 (nwpeer churn -c50, full handshake)"
	geneveIperfPrt = 5201
)

func (b *bench) geneveAll() error {
	v := b.geneveColumn()
	if v == nil {
		return errors.New("geneve: no netward column")
	}
	for _, r := range []string{geneveRowUp, geneveRowDown} {
		b.declare(r, "Gbit/s")
	}
	for _, r := range []string{geneveRowHTTP, geneveRowTLS} {
		b.declare(r, "conn/s").prec = 0
	}
	for range b.rounds {
		for _, col := range []*variant{nil, v} {
			if err := b.geneveOne(col); err != nil {
				return err
			}
		}
	}
	return nil
}

// geneveOne measures one column on a fresh GWLB lab.
func (b *bench) geneveOne(v *variant) error {
	dir, err := os.MkdirTemp(b.dir, "gwlb-")
	if err != nil {
		return err
	}
	g, err := lab.NewGWLB(lab.GWLBOptions{Sites: 1, Appliances: 1, InnerMTU: 8432, Dir: dir})
	if err != nil {
		return err
	}
	defer g.Close()
	col, what := kernelColumn, "GENEVE reflector"
	site, fw := g.Sites[0], g.Appliances[0]
	var nw *lab.Netward
	if v == nil {
		p, err := fw.Start("reflector", b.peer, "genevereflect", "-listen", netip.AddrPortFrom(fw.Addr, 6081).String(),
			"-health", ":"+strconv.Itoa(lab.GWLBHealthPort))
		if err != nil {
			return err
		}
		if _, err := p.WaitLog(b.ctx, peerServing); err != nil {
			return err
		}
	} else {
		col, what = v.name, "netward --geneve"
		args := append([]string{"--log-level", "warn", "--drain-timeout", "0"}, v.args...)
		if b.rules.path != "" {
			args = append(args, "--rules", b.rules.path)
		}
		if nw, err = g.StartAppliance(b.ctx, b.netward, 0, args...); err != nil {
			return err
		}
		if err := (&path{b: b, v: v, nw: nw}).checkLoaded(); err != nil {
			return err
		}
	}
	app, err := site.App.Start("nwpeer-app", b.peer, "serve", "-tls-port", strconv.Itoa(tlsPort), "-tls-cert", b.cert, "-tls-key", b.key)
	if err != nil {
		return err
	}
	if _, err := app.WaitLog(b.ctx, peerServing); err != nil {
		return err
	}
	if _, err := site.App.Start("iperf3-server", "iperf3", "-s", "-p", strconv.Itoa(geneveIperfPrt)); err != nil {
		return err
	}
	if _, err := g.StartGWLB(b.ctx, b.peer, 0); err != nil {
		return err
	}
	if err := b.geneveWaitHealthy(g); err != nil {
		return err
	}
	progress("GENEVE: %s", what)
	before, err := geneveStackPackets(b, nw)
	if err != nil {
		return err
	}
	appIP := lab.Default().AppV4.Addr().String()
	for _, c := range []struct {
		row     string
		reverse bool
	}{{geneveRowUp, false}, {geneveRowDown, true}} {
		args := []string{"iperf3", "-c", appIP, "-p", strconv.Itoa(geneveIperfPrt), "-t", strconv.Itoa(b.secs), "-J"}
		if c.reverse {
			args = append(args, "-R")
		}
		out, err := site.Client.Run(b.ctx, args...)
		if err != nil {
			return fmt.Errorf("%s %s: %w", what, c.row, err)
		}
		var r iperfResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return fmt.Errorf("%s: iperf3 -J: %w", what, err)
		}
		b.set(c.row, "Gbit/s", col, r.End.SumReceived.BPS/1e9)
	}
	// At most 10 s of churn: the TUN rows' churn is the long one.
	churn := min(b.churn, 10*time.Second)
	dur := strconv.Itoa(int(churn/time.Second)) + "s"
	for _, c := range []struct {
		row  string
		args []string
	}{
		{geneveRowHTTP, []string{"-url", "http://" + appIP + ":" + strconv.Itoa(peer.HTTPPort) + "/", "-host", benchHost}},
		{geneveRowTLS, []string{"-url", "https://" + appIP + ":" + strconv.Itoa(tlsPort) + "/", "-tls-ca", b.cert, "-sni", benchSNI}},
	} {
		args := append([]string{b.peer, "churn", "-c", strconv.Itoa(churnWorkers), "-d", dur, "-timeout", (churn + 30*time.Second).String()}, c.args...)
		out, err := site.Client.Run(b.ctx, args...)
		if err != nil {
			return fmt.Errorf("%s %s: %w", what, c.row, err)
		}
		var r peer.ChurnResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return fmt.Errorf("%s: churn: %w", what, err)
		}
		row := b.set(c.row, "conn/s", col, r.PerSec)
		if r.Errors > 0 {
			row.note += fmt.Sprintf("%s: %d errors %v; ", col, r.Errors, r.Kinds)
		}
	}
	if nw != nil {
		// Every measurement must have crossed netward's stacks.
		after, err := geneveStackPackets(b, nw)
		if err != nil {
			return err
		}
		if after-before < 100_000 {
			return fmt.Errorf("%s: only %.0f inner packets crossed netward's stacks: the traffic went around it", what, after-before)
		}
		m, err := fetchMetrics(b.ctx, nw.AdminSocket)
		if err != nil {
			return err
		}
		b.health = append(b.health, fmt.Sprintf("%s GENEVE: %.0f packets in, %.0f out, drops %s", col,
			m.value("netward_geneve_packets_total", map[string]string{"direction": "in"}),
			m.value("netward_geneve_packets_total", map[string]string{"direction": "out"}),
			geneveDrops(m)))
		if err := nw.Terminate(10 * time.Second); err != nil {
			return fmt.Errorf("%s: netward did not stop cleanly: %w", what, err)
		}
	}
	var s peer.GWLBStats
	if err := g.GWLBStats(b.ctx, 0, false, &s); err != nil {
		return err
	}
	if s.EchoMismatch != 0 || s.EchoUnknownFlow != 0 {
		return fmt.Errorf("%s: the lab GWLB got %d packets with the wrong options and %d of unknown flows", what, s.EchoMismatch, s.EchoUnknownFlow)
	}
	return nil
}

func (b *bench) geneveWaitHealthy(g *lab.GWLBLab) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var s peer.GWLBStats
		if err := g.GWLBStats(b.ctx, 0, false, &s); err != nil {
			return err
		}
		if len(s.Targets) == 1 && s.Targets[0].Healthy {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GENEVE: the lab GWLB's target is not healthy after 15 s: %+v", s.Targets)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// geneveStackPackets is what netward's stacks took in (0 for the reflector).
func geneveStackPackets(b *bench, nw *lab.Netward) (float64, error) {
	if nw == nil {
		return 0, nil
	}
	m, err := fetchMetrics(b.ctx, nw.AdminSocket)
	if err != nil {
		return 0, err
	}
	return m.value("netward_geneve_stack_packets_total", map[string]string{"direction": "in"}), nil
}

// geneveDrops lists the non-zero drop counters.
func geneveDrops(m netwardMetrics) string {
	out := ""
	for _, r := range []string{"truncated", "oversized", "tx_oversized", "stack_busy", "no_flow", "send_error", "flow_table_full"} {
		if n := m.value("netward_geneve_drops_total", map[string]string{"reason": r}); n > 0 {
			out += fmt.Sprintf("%s=%.0f ", r, n)
		}
	}
	if out == "" {
		return "none"
	}
	return out
}
