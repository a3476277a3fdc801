package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/netward/netward/config"
	"github.com/netward/netward/metrics"
)

// datapathCheck is /healthz's check of the running datapath (see
// metrics.Health): nil while the stack has not failed (its TUN readers
// close failed when a queue can no longer be read: the device was deleted
// or broke) and the steering still sends traffic into the TUN (the TUN is
// up, its route and ip rules are there: steer.Steering.Check).
func datapathCheck(failed <-chan struct{}, why func() error, steering interface{ Check() error }) func() error {
	return func() error {
		select {
		case <-failed:
			return fmt.Errorf("datapath failed: %v", why())
		default:
		}
		return steering.Check()
	}
}

// drain is what run does on SIGINT/SIGTERM before it stops, when a load
// balancer asks /healthz (health.listen) and health.drain_timeout is not
// 0: /healthz answers 503 at once, so the load balancer sends new flows to
// other targets, while this one goes on serving — open flows and any new
// one — for the whole deadline (the load balancer notices only after its
// interval × unhealthy threshold, so an early end when no flow is open
// would drop the flows still being sent here). A second signal or a
// datapath failure ends the drain early.
func drain(h *metrics.Health, hc config.Health, sigs <-chan os.Signal, failed <-chan struct{}, active func() int64, log *slog.Logger) {
	if hc.Listen == "" || hc.DrainTimeout <= 0 {
		return
	}
	h.Drain()
	log.Info("draining: /healthz answers 503; open flows go on until the deadline (a second signal stops at once)",
		"drain_timeout", hc.DrainTimeout, "active_flows", active())
	t := time.NewTimer(hc.DrainTimeout)
	defer t.Stop()
	select {
	case <-t.C:
		log.Info("drain deadline reached", "active_flows", active())
	case sig := <-sigs:
		log.Info("second signal: ending the drain", "signal", sig.String(), "active_flows", active())
	case <-failed:
		log.Error("datapath failed while draining")
	}
}
