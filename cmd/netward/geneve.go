package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/netward/netward/config"
	"github.com/netward/netward/datagram"
	"github.com/netward/netward/gwlb"
	"github.com/netward/netward/metrics"
	"github.com/netward/netward/netstack"
)

// runGeneve is run behind an AWS Gateway Load Balancer (--geneve): flows
// arrive GENEVE-encapsulated on cfg.Geneve.Listen and every packet the
// stacks send goes back into the tunnel, the upstream leg included (dialed
// from gVisor with the client's address, as --upstream gvisor does through
// the TUN). No TUN, no steering rules. /healthz answers 200 while the
// listener receives and the stacks run.
func runGeneve(cfg *config.Config, dp datapathOptions, log *slog.Logger) error {
	svc, err := startServices(cfg, log)
	if err != nil {
		return err
	}
	defer svc.Close()
	// Each endpoint's stack has a UDP guard of its own: flows behind two
	// endpoints may have the same 5-tuple. No conntrack bypass here: every
	// datagram of a flow crosses the guard (there is no kernel path to
	// hand it to).
	var (
		guardsMu sync.Mutex
		guards   []*datagram.Guard
	)
	defer func() {
		guardsMu.Lock()
		defer guardsMu.Unlock()
		for _, g := range guards {
			g.Close()
		}
	}()
	flowIDs := netstack.NewFlowIDs() // one sequence over the endpoints' stacks: EVE flow_ids stay unique
	newStack := func(files []*os.File, mtu int) (*netstack.Stack, error) {
		var udp *datagram.Guard
		var datagrams netstack.DatagramHandler
		if cfg.UDP {
			udp = svc.newUDPGuard()
			datagrams = udp
		}
		st, err := netstack.New(netstack.Options{
			Files:        files,
			MTU:          mtu,
			Handler:      svc.guard,
			Datagrams:    datagrams,
			FlowIDs:      flowIDs,
			Logger:       log,
			MaxInFlight:  cfg.Limits.MaxHalfOpen,
			DialTimeout:  cfg.Limits.ConnectTimeout,
			TUNWriters:   dp.tunWriters,
			TUNDirectMax: dp.tunDirectMax,
		})
		if err != nil || udp == nil {
			return st, err
		}
		udp.Out, udp.NewID = st, st.NewFlowID
		udp.Start()
		guardsMu.Lock()
		guards = append(guards, udp)
		guardsMu.Unlock()
		return st, nil
	}
	d, err := gwlb.New(gwlb.Options{
		Listen:       cfg.Geneve.Listen,
		NewStack:     newStack,
		MaxEndpoints: cfg.Geneve.MaxEndpoints,
		UDP:          cfg.UDP,
		Metrics:      gwlb.NewMetrics(svc.metrics.Registry()),
		Logger:       log,
	})
	if err != nil {
		return err
	}
	attachGeneve(svc, d)
	log.Info("netward running (GENEVE)", "listen", d.LocalAddr().String(), "inner_mtu", gwlb.InnerMTU,
		"max_endpoints", cfg.Geneve.MaxEndpoints, "udp", cfg.UDP, "health_listen", cfg.Health.Listen)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var failed error
	select {
	case <-sigs:
		drain(svc.health, cfg.Health, sigs, d.Failed(), d.ActiveFlows, log)
		failed = d.Err()
	case <-d.Failed():
		failed = d.Err()
		log.Error("GENEVE datapath failed", "error", failed)
	}
	signal.Stop(sigs)
	log.Info("netward stopping", "active_flows", d.ActiveFlows())
	errs := []error{failed}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	if err := d.Shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	cancel()
	if err := d.Close(); err != nil {
		errs = append(errs, err)
	}
	log.Info("netward stopped")
	return errors.Join(errs...)
}

// attachGeneve connects health, readiness and the TUN counters (summed
// over the endpoints' stacks, which stand where the TUN does) to d.
func attachGeneve(svc *services, d *gwlb.Datapath) {
	svc.health.SetCheck(d.Check)
	svc.metrics.SetReady(func() bool { return d.Check() == nil })
	svc.metrics.SetHalfOpenDrops(func() uint64 {
		var n uint64
		for _, st := range d.Stacks() {
			n += st.SynDropsInFlight()
		}
		return n
	})
	svc.metrics.SetTUNStats(func() metrics.TUNStats {
		var t metrics.TUNStats
		for _, st := range d.Stacks() {
			s := st.Stats()
			t.RxPackets += s.RxPackets.Load()
			t.TxPackets += s.TxPackets.Load()
			t.RxDropped += s.RxMalformed.Load() + s.RxBadChecksum.Load() + s.ReadErrors.Load()
			t.TxDropped += s.TxErrors.Load() + st.TxQueueDrops()
		}
		return t
	})
}
