package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/netward/netward/datagram"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/netward/netward/config"
	"github.com/netward/netward/event"
	"github.com/netward/netward/geo"
	"github.com/netward/netward/metrics"
	"github.com/netward/netward/netstack"
	"github.com/netward/netward/policy"
	"github.com/netward/netward/relay"
	"github.com/netward/netward/rules"
)

// services are what runs around the datapath: geo databases, the rule
// engine and its reloads, the event log, metrics and the admin socket. The
// Guard they build is the datapath's Handler.
type services struct {
	log     *slog.Logger
	geo     *geo.DB
	policy  *policy.Engine
	events  *event.Log
	metrics *metrics.Metrics
	health  *metrics.Health // /healthz for a load balancer (health.listen)
	servers []*metrics.Server
	guard   *relay.Guard
	udp     *datagram.Guard
	// udpLimits are the limits of every UDP guard (newUDPGuard).
	udpLimits datagram.Limits
	stop      []func()
}

// startServices opens everything a config names. On error nothing is left
// open.
func startServices(cfg *config.Config, log *slog.Logger) (s *services, err error) {
	s = &services{log: log}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	s.metrics = metrics.New(metrics.Options{Version: versionString()})
	if cfg.GeoIP.Country != "" || cfg.GeoIP.ASN != "" {
		if s.geo, err = geo.Open(cfg.GeoIP.Country, cfg.GeoIP.ASN); err != nil {
			return s, err
		}
	}
	if cfg.Rules != "" {
		s.policy, err = policy.New(policy.Options{
			Path:         cfg.Rules,
			Geo:          s.geo,
			Logger:       log,
			PollInterval: cfg.RulesPollInterval,
			OnFetch:      s.metrics.RuleFetch,
			OnReload: func(v rules.Version, err error) {
				if err != nil {
					s.metrics.RulesReloadFailed(err)
					return
				}
				s.metrics.RulesLoaded(v.SHA256, v.Rules, v.Loaded)
			},
		})
		if err != nil {
			return s, err
		}
	}
	if cfg.Log.Events != "" {
		var inIface string
		if len(cfg.Interfaces) == 1 {
			inIface = cfg.Interfaces[0] // else unknown per flow: in_iface is left out
		}
		s.events, err = event.New(event.Options{Path: cfg.Log.Events, QueueLen: cfg.Log.EventBuffer, InIface: inIface, Logger: log})
		if err != nil {
			return s, err
		}
		s.stop = append(s.stop, s.events.ReopenOnSignal(syscall.SIGUSR1))
		s.metrics.SetEventStats(func() metrics.EventStats { return metrics.EventStats(s.events.Stats()) })
	}
	if cfg.Metrics.Listen != "" {
		srv, err := s.metrics.ListenMetrics(cfg.Metrics.Listen, cfg.Metrics.Pprof, log)
		if err != nil {
			return s, err
		}
		s.servers = append(s.servers, srv)
	}
	s.health = &metrics.Health{}
	if cfg.Health.Listen != "" {
		// Up before the datapath, answering 503 until run attaches it.
		srv, err := s.health.ListenHealth(cfg.Health.Listen, log)
		if err != nil {
			return s, err
		}
		s.servers = append(s.servers, srv)
	}
	if cfg.Admin.Socket != "" {
		srv, err := s.metrics.ListenAdmin(cfg.Admin.Socket, log)
		if err != nil {
			return s, err
		}
		s.servers = append(s.servers, srv)
	}
	s.guard = &relay.Guard{
		Policy:  s.policy,
		Geo:     s.geo,
		Events:  s.events,
		Metrics: s.metrics,
		Log:     log,
		Limits: relay.Limits{
			MaxFlows:          cfg.Limits.MaxFlows,
			InspectBytes:      cfg.Limits.InspectBytes,
			InspectTimeout:    cfg.Limits.InspectTimeout,
			IdleTimeout:       cfg.Limits.IdleTimeout,
			HalfClosedTimeout: cfg.Limits.HalfClosedTimeout,
		},
	}
	s.udpLimits = datagram.Limits{
		MaxFlows:       cfg.Limits.MaxFlows,
		IdleTimeout:    cfg.Limits.UDPIdleTimeout,
		InspectTimeout: cfg.Limits.UDPInspectTimeout,
	}
	s.udp = s.newUDPGuard()
	if s.policy != nil {
		s.watchRules()
	}
	return s, nil
}

// newUDPGuard is a UDP guard with the services' policy, geo, events,
// metrics and limits; the caller sets Out (and Bypass, NewID) and starts
// it. The GENEVE datapath makes one per endpoint, as it does stacks.
func (s *services) newUDPGuard() *datagram.Guard {
	return &datagram.Guard{
		Policy:  s.policy,
		Geo:     s.geo,
		Events:  s.events,
		Metrics: s.metrics,
		Log:     s.log,
		Limits:  s.udpLimits,
	}
}

// watchRules reloads the rules on SIGHUP and when the file changes (a
// rule URL: when a poll finds it changed).
func (s *services) watchRules() {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		if err := s.policy.Watch(ctx, s.log); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("rule file watch stopped; SIGHUP still reloads", "error", err)
		}
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for {
			select {
			case <-hup:
				s.log.Info("SIGHUP: reloading rules")
				s.policy.Reload() // logs and counts its own result
			case <-ctx.Done():
				return
			}
		}
	}()
	s.stop = append(s.stop, func() { signal.Stop(hup); cancel() })
}

// attach connects the metrics to the running datapath.
func (s *services) attach(st *netstack.Stack) {
	stats := st.Stats()
	s.metrics.SetTUNStats(func() metrics.TUNStats {
		return metrics.TUNStats{
			RxPackets: stats.RxPackets.Load(),
			TxPackets: stats.TxPackets.Load(),
			RxDropped: stats.RxMalformed.Load() + stats.RxBadChecksum.Load() + stats.ReadErrors.Load(),
			TxDropped: stats.TxErrors.Load() + st.TxQueueDrops(),

			AcksDelayed: stats.TxAcksDelayed.Load(),
			AcksMerged:  stats.TxAcksMerged.Load(),

			SynsHeld:              stats.SynsHeld.Load(),
			SynTimeouts:           stats.SynGateTimeouts.Load(),
			SynOverflows:          stats.SynGateOverflows.Load(),
			HandoffTimeWaits:      stats.HandoffTimeWaits.Load(),
			HandoffTimeWaitErrors: stats.HandoffTimeWaitErrors.Load(),
			FINsMerged:            stats.TxFINsMerged.Load(),
			Direct:                stats.TxDirect.Load(),
		}
	})
	s.metrics.SetUpstreamStats(func() metrics.UpstreamStats {
		return metrics.UpstreamStats{Kernel: st.UpstreamKernel(), KernelSockets: st.KernelSockets(), Fallbacks: stats.UpstreamFallbacks.Load(),
			Refused: stats.FlowsRefused.Load(), Unreachable: stats.FlowsUnreachable.Load(),
			ClientGone: stats.ClientHandshakeFailures.Load()}
	})
	s.metrics.SetHalfOpenDrops(st.SynDropsInFlight)
	s.metrics.SetReady(func() bool { return true })
}

// Close stops everything started, the event log last so flows closed
// during shutdown are logged.
func (s *services) Close() error {
	var errs []error
	for _, stop := range s.stop {
		stop()
	}
	for _, srv := range s.servers {
		if err := srv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.events != nil {
		if err := s.events.Close(); err != nil {
			errs = append(errs, fmt.Errorf("event log: %w", err))
		}
	}
	if s.geo != nil {
		if err := s.geo.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
