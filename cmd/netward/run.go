package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netward/netward/config"
	"github.com/netward/netward/netstack"
	"github.com/netward/netward/relay"
	"github.com/netward/netward/steer"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("run", "steer forwarded TCP through netward and relay it", runMain)
}

// shutdownGrace bounds how long run waits for flows to close on a signal.
const shutdownGrace = 5 * time.Second

func runMain(args []string) int {
	fs := flag.NewFlagSet("netward run", flag.ContinueOnError)
	cf := config.NewFlags(fs)
	queues := fs.Int("queues", 1, "TUN queues, each read by its own goroutine (IFF_MULTI_QUEUE when > 1)")
	tunWriters := fs.Int("tun-writers", 1, "goroutines that write packets to the TUN from a queue, so the relay goes on while the kernel forwards what it sent; 0 writes each packet in the goroutine that sent it (less throughput)")
	tunDirectMax := fs.Int("tun-direct-max", netstack.DefaultTUNDirectMax, "largest packet (bytes) that skips the TUN writers' queue when it is empty, written by the goroutine that sent it (no writer wake-up: lower latency for requests and answers); pure ACKs always queue; 0 queues every packet")
	upstream := fs.String("upstream", "kernel", "how to reach the server: kernel (an IP_TRANSPARENT kernel socket bound to the client's address; netward installs the rules it needs, see steer/doc.go; if they cannot be installed and the flag was not given, netward warns and uses gvisor) or gvisor (a gVisor endpoint out through the TUN)")
	upstreamMark := fs.Uint("upstream-mark", 0x4e59, "SO_MARK of the kernel upstream sockets (--upstream kernel); must differ from mark")
	// Off by default: measured, it took HTTP Connection: close from 0.31
	// to 0.24 of kernel forwarding's connection rate (make bench); it pays
	// for long keep-alive flows only.
	handoffHTTP := fs.Bool("handoff-http", false, "with --handoff, hand HTTP/1 flows off too, after their first request is allowed; netward then reads and judges every later request from the kernel socket (pays for long keep-alive flows, costs short ones)")
	handoffSockmap := fs.Bool("handoff-sockmap", false, "with --handoff, move a handed-off flow's bytes between its kernel sockets with an eBPF sockmap (sk_skb verdict redirect) instead of splice: lower latency for small requests, lower single-stream bulk throughput (make bench -relay-sockmap); needs CAP_BPF; without it, a warning and splice")
	handoffAfterBytes := fs.Int64("handoff-after-bytes", 0, "with --handoff, relay a flow in gVisor until it has moved this many bytes (either way) or lived --handoff-after-age, and hand it off then, so short flows (a TLS handshake and one request) never switch; 0 hands off at the verdict (measured: short flows gain nothing by waiting, README)")
	handoffAfterAge := fs.Duration("handoff-after-age", 200*time.Millisecond, "with --handoff-after-bytes, hand a flow off once it is this old even if it moved fewer bytes (a long interactive flow gets the kernel's latency); 0: bytes only")
	handoff := fs.Bool("handoff", true, "after the verdict, move the client's connection of a flow that needs no more inspection (TLS after its ClientHello, protocols judged by their first bytes) from gVisor to a kernel socket (TCP_REPAIR) and splice it with the upstream socket in the kernel; needs --upstream kernel")
	tcpAccept := fs.String("tcp-accept", "auto", "who answers a client's TCP handshake: replay (the SYN is steered into the TUN; netward answers nothing until the verdict and the server's SYN-ACK, then writes the client's SYN back into the TUN for a transparent kernel listener, which answers: the client leg is a kernel socket from its first byte; needs --upstream kernel), gvisor (the same order, with gVisor answering and the client leg in gVisor until the handoff), kernel (a TPROXY rule hands the SYN to that listener at once, so no packet of the flow crosses the TUN: the handshake completes before the verdict and the server's answer, as a proxy's does; needs --upstream kernel; steer/doc.go), or auto: replay with the kernel upstream leg, else gvisor (and gvisor if the kernel leg's rules cannot be installed)")
	tcpAcceptPort := fs.Uint("tcp-accept-port", steer.DefaultAcceptPort, "the port of the transparent listener (--tcp-accept kernel or replay), on 127.0.0.1 and ::1")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: netward run [flags]\n\nSteers forwarded TCP into a TUN, terminates each flow and relays it\nwith the client's own address. Flags override the config file.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "netward run: unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	cfg, err := cf.Load()
	if err != nil {
		fmt.Fprintf(os.Stderr, "netward run: %v\n", err)
		return 2
	}
	if cfg.Geneve.Enabled && *upstream == "kernel" && flagGiven(fs, "upstream") {
		fmt.Fprintln(os.Stderr, "netward run: --geneve reaches the server back through the tunnel (the gVisor upstream leg); --upstream kernel does not apply")
		return 2
	}
	if *upstream != "gvisor" && *upstream != "kernel" {
		fmt.Fprintf(os.Stderr, "netward run: --upstream %q is not gvisor or kernel\n", *upstream)
		return 2
	}
	if *tcpAccept != "auto" && *tcpAccept != "gvisor" && *tcpAccept != "kernel" && *tcpAccept != "replay" {
		fmt.Fprintf(os.Stderr, "netward run: --tcp-accept %q is not auto, replay, gvisor or kernel\n", *tcpAccept)
		return 2
	}
	// The kernel client legs are a choice an operator made, or the default
	// that falls back (installSteering).
	acceptAsked := *tcpAccept != "auto" && *tcpAccept != "gvisor"
	if *tcpAccept == "auto" {
		*tcpAccept = "replay"
		if *upstream != "kernel" || cfg.Geneve.Enabled {
			*tcpAccept = "gvisor"
		}
	}
	if *tcpAccept != "gvisor" && (*upstream != "kernel" || cfg.Geneve.Enabled) {
		fmt.Fprintf(os.Stderr, "netward run: --tcp-accept %s needs --upstream kernel (and no --geneve): the accepted sockets' packets reach them by the kernel upstream leg's rules\n", *tcpAccept)
		return 2
	}
	if *tcpAcceptPort == 0 || *tcpAcceptPort > 65535 {
		fmt.Fprintf(os.Stderr, "netward run: --tcp-accept-port %d is not a port (1..65535)\n", *tcpAcceptPort)
		return 2
	}
	if *queues < 1 || *tunWriters < 0 || *tunDirectMax < 0 {
		fmt.Fprintf(os.Stderr, "netward run: --queues must be at least 1 (got %d), --tun-writers and --tun-direct-max at least 0 (got %d, %d)\n", *queues, *tunWriters, *tunDirectMax)
		return 2
	}
	if *handoffAfterBytes < 0 || *handoffAfterAge < 0 {
		fmt.Fprintf(os.Stderr, "netward run: --handoff-after-bytes and --handoff-after-age must be at least 0 (got %d, %v)\n", *handoffAfterBytes, *handoffAfterAge)
		return 2
	}
	log := newLogger(cfg.Log)
	if cfg.Geneve.Enabled {
		dp := datapathOptions{tunWriters: *tunWriters, tunDirectMax: *tunDirectMax}
		if err := runGeneve(cfg, dp, log); err != nil {
			log.Error("netward run failed", "error", err)
			return 1
		}
		return 0
	}
	dp := datapathOptions{queues: *queues, tunWriters: *tunWriters, tunDirectMax: *tunDirectMax, upstreamKernel: *upstream == "kernel", upstreamMark: uint32(*upstreamMark), handoff: *handoff, handoffHTTP: *handoffHTTP, handoffSockmap: *handoffSockmap, handoffAfterBytes: *handoffAfterBytes, handoffAfterAge: *handoffAfterAge}
	if *tcpAccept != "gvisor" {
		dp.acceptPort = uint16(*tcpAcceptPort)
		dp.replaySYN = *tcpAccept == "replay"
	}
	// An explicit kernel client leg has no gVisor fallback: its rules are
	// needed.
	dp.upstreamAsked = flagGiven(fs, "upstream") || acceptAsked
	if err := run(cfg, dp, log); err != nil {
		log.Error("netward run failed", "error", err)
		return 1
	}
	return 0
}

// flagGiven reports whether the flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) (given bool) {
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		level = slog.LevelInfo // config.Validate has already refused bad levels
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// steerConfig maps the appliance config onto steer's.
func steerConfig(cfg *config.Config, log *slog.Logger) (steer.Config, error) {
	sc := steer.DefaultConfig()
	sc.TUN = cfg.TUN
	sc.Interfaces = cfg.Interfaces
	sc.Mark = cfg.Mark
	sc.Table = cfg.Table
	sc.RulePriority = cfg.RulePriority
	sc.IPv6 = cfg.IPv6
	sc.UDP = cfg.UDP
	sc.Logger = log
	fm, err := steer.ParseFailMode(cfg.FailMode)
	if err != nil {
		return sc, err
	}
	sc.FailMode = fm
	return sc, nil
}

// transparentMark is the mark steer gives the answers to the kernel
// upstream sockets (--upstream kernel); the next free one when the
// steering mark or the upstream mark already use it.
const transparentMark = 0x4e58

// kernelUpstreamSteer turns on steer's rules for the kernel upstream leg
// (transparent-socket mark, local table, raw OUTPUT notrack for
// upstreamMark, tcp_early_demux off), so --upstream kernel needs no rules
// by hand. The table and rule priority are steer's defaults.
func kernelUpstreamSteer(sc *steer.Config, upstreamMark uint32) {
	m := uint32(transparentMark)
	// Two marks can collide, so three tries find a free one; an unusable
	// mask is left for steer's validation to report.
	for range 2 {
		if m&sc.Mask != sc.Mark&sc.Mask && m&sc.Mask != upstreamMark&sc.Mask {
			break
		}
		m++
	}
	sc.TransparentMark = m
	sc.UpstreamMark = upstreamMark
}

// datapathOptions are run's flags that are not in the config file.
type datapathOptions struct {
	queues         int
	tunWriters     int
	tunDirectMax   int
	upstreamKernel bool
	upstreamAsked  bool // --upstream was given: no fallback from kernel to gvisor
	upstreamMark   uint32
	handoff        bool // --handoff (with the kernel upstream leg only)
	handoffHTTP    bool // --handoff-http
	handoffSockmap bool // --handoff-sockmap
	// --handoff-after-bytes, --handoff-after-age
	handoffAfterBytes int64
	handoffAfterAge   time.Duration
	// acceptPort is --tcp-accept-port with --tcp-accept kernel or
	// replay, else 0; replaySYN is --tcp-accept replay.
	acceptPort uint16
	replaySYN  bool
}

// run brings the datapath up in the order that never blackholes a flow:
// TUN and stack first, steering last; and tears it down in reverse on
// SIGINT/SIGTERM: stop accepting, close flows, remove steering, close the
// TUN (which deletes it).
func run(cfg *config.Config, dp datapathOptions, log *slog.Logger) error {
	sc, err := steerConfig(cfg, log)
	if err != nil {
		return err
	}
	if dp.upstreamKernel {
		kernelUpstreamSteer(&sc, dp.upstreamMark)
		sc.AcceptPort = dp.acceptPort
		sc.ReplaySYN = dp.replaySYN
	}
	if err := steer.Preflight(sc); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if dp.upstreamKernel {
		want := uint64(cfg.Limits.MaxFlows)
		if dp.acceptPort != 0 {
			want *= 2 // each flow's client leg is a kernel socket too
		}
		raiseFileLimit(want+netstack.FileReserve, log)
	}
	svc, err := startServices(cfg, log)
	if err != nil {
		return err
	}
	defer svc.Close()
	tun, err := netstack.OpenTUN(netstack.TUNOptions{
		Name:    cfg.TUN,
		MTU:     cfg.MTU,
		Queues:  dp.queues,
		Offload: cfg.Offload,
	})
	if err != nil {
		return err
	}
	if cfg.Offload && !tun.VnetHdr {
		log.Warn("TUN offloads unavailable; using plain packets (slower)", "tun", tun.Name)
	}
	var datagrams netstack.DatagramHandler
	if cfg.UDP {
		datagrams = svc.udp
	}
	st, err := netstack.New(netstack.Options{
		Files:        tun.Files,
		MTU:          tun.MTU,
		VnetHdr:      tun.VnetHdr,
		Handler:      svc.guard,
		Datagrams:    datagrams,
		Logger:       log,
		MaxInFlight:  cfg.Limits.MaxHalfOpen,
		DialTimeout:  cfg.Limits.ConnectTimeout,
		AckDelay:     cfg.AckDelay,
		TUNWriters:   dp.tunWriters,
		TUNDirectMax: dp.tunDirectMax,

		UpstreamKernel: dp.upstreamKernel,
		UpstreamMark:   dp.upstreamMark,
		ReplaySYN:      dp.replaySYN,
	})
	if err != nil {
		tun.Close()
		return err
	}
	// Set before steering sends the first flow.
	if dp.handoff && dp.upstreamKernel {
		svc.guard.Handoff = st
		svc.guard.HandoffHTTP = dp.handoffHTTP
		svc.guard.HandoffAfterBytes = dp.handoffAfterBytes
		svc.guard.HandoffAfterAge = dp.handoffAfterAge
		if dp.handoffSockmap {
			sm, err := relay.NewSockMap(cfg.Limits.MaxFlows)
			if err != nil {
				log.Warn("--handoff-sockmap: no eBPF sockmap here; handed-off flows are spliced", "error", err)
			} else {
				defer sm.Close()
				svc.guard.SockMap = sm
				svc.metrics.Registry().MustRegister(
					prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_handoff_sockmap_pairs_total",
						Help: "Handed-off flows whose bytes the eBPF sockmap moved (--handoff-sockmap)."},
						func() float64 { return float64(sm.Pairs.Load()) }),
					prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_handoff_sockmap_fallback_bytes_total",
						Help: "Bytes of sockmap flows that the verdict program could not redirect, forwarded by netward."},
						func() float64 { return float64(sm.Fallback.Load()) }))
			}
		}
	}
	// The UDP guard is complete before steering sends it a datagram.
	svc.udp.Out, svc.udp.NewID = st, st.NewFlowID
	if cfg.UDP && cfg.UDPBypass {
		ct, err := steer.OpenConntrack(sc)
		if err != nil {
			st.Close()
			return err
		}
		defer ct.Close()
		svc.udp.Bypass = ct
	}
	svc.udp.Start()
	defer svc.udp.Close()
	if dp.acceptPort != 0 {
		// Listening before the TPROXY rule sends the first SYN.
		if err := serveAccepted(st, sc, svc, log); err != nil {
			st.Close()
			return err
		}
	}
	steering, err := installSteering(sc, dp, st.UseGVisorUpstream, steer.Install, log)
	if err != nil {
		st.Close()
		return fmt.Errorf("install steering: %w", err)
	}
	svc.attach(st)
	svc.health.SetCheck(datapathCheck(st.Failed(), st.Err, steering))
	acceptPort := dp.acceptPort
	if !st.UpstreamKernel() {
		acceptPort = 0 // the fallback: no TPROXY rule sends the listener anything
	}
	log.Info("netward running", "tun", tun.Name, "offload", tun.VnetHdr, "queues", len(tun.Files), "tun_writers", dp.tunWriters, "tun_direct_max", dp.tunDirectMax,
		"mtu", tun.MTU, "ack_delay", cfg.AckDelay, "upstream_kernel", st.UpstreamKernel(), "tcp_accept_port", acceptPort, "syn_replay", st.SYNReplay(), "handoff", svc.guard.Handoff != nil, "handoff_sockmap", svc.guard.SockMap != nil, "udp", cfg.UDP, "udp_bypass", cfg.UDP && cfg.UDPBypass, "interfaces", interfacesAttr(cfg.Interfaces), "fail_mode", cfg.FailMode)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var failed error
	select {
	case <-sigs:
		// With a health check: unhealthy first, serve on until the drain
		// deadline (health.drain_timeout), then stop.
		drain(svc.health, cfg.Health, sigs, st.Failed(), st.Stats().FlowsActive.Load, log)
		failed = st.Err() // the datapath may have failed while draining
	case <-st.Failed():
		// The TUN went away under netward: nothing is relayed any more.
		// Tear down like on a signal and exit non-zero.
		failed = st.Err()
		log.Error("datapath failed", "error", failed)
	}
	signal.Stop(sigs)
	log.Info("netward stopping", "active_flows", st.Stats().FlowsActive.Load())

	errs := []error{failed} // nil unless the datapath failed
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	if err := st.Shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	cancel()
	if err := steering.Remove(); err != nil {
		errs = append(errs, fmt.Errorf("remove steering: %w", err))
	}
	if err := st.Close(); err != nil {
		errs = append(errs, err)
	}
	s := st.Stats()
	log.Info("netward stopped", "flows_served", s.FlowsServed.Load(),
		"refused_at_syn", s.FlowsReset.Load()+s.FlowsDropped.Load(),
		"upstream_refused", s.FlowsRefused.Load(), "upstream_unreachable", s.FlowsUnreachable.Load(),
		"syn_drops_in_flight", st.SynDropsInFlight(),
		"rx_packets", s.RxPackets.Load(), "tx_packets", s.TxPackets.Load(),
		"tx_acks_delayed", s.TxAcksDelayed.Load(), "tx_acks_merged", s.TxAcksMerged.Load(),
		"upstream_fallbacks", s.UpstreamFallbacks.Load(), "upstream_addr_busy_retries", s.DialAddrBusy.Load(), "tcp_accepted", s.FlowsAccepted.Load(), "syns_replayed", s.SYNsReplayed.Load(), "syns_not_captured", s.SYNsNotCaptured.Load(), "syns_held_time_wait", s.SynsHeld.Load(),
		"udp_datagrams", s.RxUDPPackets.Load(), "udp_flows", svc.udp.Stats().FlowsStarted.Load(), "udp_bypassed", svc.udp.Stats().Bypassed.Load())
	return errors.Join(errs...)
}

// serveAccepted opens the kernel client leg's transparent listeners (IPv4,
// and IPv6 when steered) and serves them on their own goroutines until
// the stack shuts down; a listener that fails otherwise fails the
// datapath's health check. Their counters are metrics.
func serveAccepted(st *netstack.Stack, sc steer.Config, svc *services, log *slog.Logger) error {
	addrs := []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	if sc.IPv6 {
		addrs = append(addrs, netip.IPv6Loopback())
	}
	var lns []*net.TCPListener
	for _, a := range addrs {
		ln, err := netstack.ListenTransparent(netip.AddrPortFrom(a, sc.AcceptPort), sc.UpstreamMark)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		go func() {
			if err := st.ServeAccepted(ln); err != nil {
				log.Error("kernel client leg: listener failed; new TCP flows are dropped", "error", err)
				svc.health.SetCheck(func() error { return err })
			}
		}()
	}
	stats := st.Stats()
	svc.metrics.Registry().MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_tcp_accepted_total",
			Help: "TCP connections the kernel accepted for netward (--tcp-accept kernel), before the Admit verdict."},
			func() float64 { return float64(stats.FlowsAccepted.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_tcp_accept_errors_total",
			Help: "Failed accepts of the kernel client leg's listener, and connections to it that no TPROXY rule sent (closed)."},
			func() float64 { return float64(stats.AcceptErrors.Load()) }))
	if sc.ReplaySYN {
		reg := svc.metrics.Registry()
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_syn_replayed_total",
			Help: "SYNs of admitted flows netward wrote back into the TUN for the kernel's listener (--tcp-accept replay), client retransmissions included."},
			func() float64 { return float64(stats.SYNsReplayed.Load()) }))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_syn_replay_port_reuse_total",
			Help: "SYNs on the tuple of a replayed flow still in netward (the client reused its port): the old client leg was destroyed first."},
			func() float64 { return float64(stats.ReplayPortReuse.Load()) }))
		for _, r := range []struct {
			reason string
			n      func() uint64
		}{
			{"not_captured", stats.SYNsNotCaptured.Load},  // the flow took gVisor's handshake
			{"unmatched", stats.ReplayUnmatched.Load},     // accepted, no replayed flow: reset
			{"expired", stats.ReplayExpired.Load},         // never accepted: server leg closed
			{"no_socket", stats.ReplayNoSocket.Load},      // no kernel socket for the server leg: reset
			{"half_open", stats.ReplayHalfOpenDrops.Load}, // max_half_open handshakes in the kernel: SYN dropped
		} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netward_syn_replay_failures_total",
				Help:        "SYN replay's failures by reason: not_captured (the flow took gVisor's handshake), unmatched (an accepted connection with no replayed flow: reset), expired (never accepted: the server leg was closed), no_socket (no kernel socket left for the server leg: reset), half_open (limits.max_half_open handshakes waiting in the kernel: SYN dropped).",
				ConstLabels: prometheus.Labels{"reason": r.reason}},
				func() float64 { return float64(r.n()) }))
		}
	}
	return nil
}

// installSteering installs sc. When the kernel upstream leg's rules fail
// and the leg is only the default (no --upstream), it warns and installs
// the steering of the gVisor leg instead, which needs none of them (no
// socket match, no local table): a default must not keep the appliance
// from starting. An explicit --upstream kernel fails instead.
func installSteering(sc steer.Config, dp datapathOptions, useGVisor func(), install func(steer.Config) (*steer.Steering, error), log *slog.Logger) (*steer.Steering, error) {
	s, err := install(sc)
	if err == nil || !dp.upstreamKernel || dp.upstreamAsked {
		return s, err
	}
	log.Warn("the kernel upstream leg's rules could not be installed; using the gVisor upstream leg, with gVisor answering every handshake (give --upstream gvisor to skip the attempt, --upstream kernel to make it fatal)", "error", err)
	useGVisor()
	sc.TransparentMark, sc.UpstreamMark = 0, 0
	sc.AcceptPort, sc.ReplaySYN = 0, false
	return install(sc)
}

// raiseFileLimit raises RLIMIT_NOFILE to want (up to fs.nr_open), so the
// kernel upstream leg can hold a socket per flow up to max_flows, as
// servers that hold a socket per connection do. Without the privilege it
// keeps the limit it has: flows past it take the gVisor leg (netstack's
// socket cap), which it says.
func raiseFileLimit(want uint64, log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the file limit", "error", err)
		return
	}
	if lim.Cur >= want {
		return
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < want {
			want = n
		}
	}
	raised := syscall.Rlimit{Cur: want, Max: max(lim.Max, want)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		log.Warn("cannot raise the file limit to max_flows: flows past it take the gVisor upstream leg",
			"limit", lim.Cur, "want", want, "error", err)
		return
	}
	log.Debug("raised the file limit for the kernel upstream leg", "from", lim.Cur, "to", want)
}

func interfacesAttr(names []string) string {
	if len(names) == 0 {
		return "all"
	}
	return strings.Join(names, ",")
}
