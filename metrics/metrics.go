// Package metrics is netward's operational state: Prometheus metrics, the
// table of active flows, /healthz and /readyz, and the admin endpoint that
// `netward status` reads.
//
// The datapath side is cheap: counters are resolved once (no label lookup
// per packet or per write), the flow table is sharded (no global lock on the
// per-flow path), and every method does nothing on a nil *Metrics or nil
// *ActiveFlow, so a datapath without metrics calls them unconditionally.
package metrics

import (
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// DefaultRule is the rule label of verdicts that no rule matched (the rule
// file's default action decided), as policy.Verdict.Rule "" is.
const DefaultRule = "default"

// Options configure Metrics.
type Options struct {
	// Version is netward's version, exported as netward_build_info and in
	// the status.
	Version string
	// Registry receives the metrics; nil creates one that also has the Go
	// runtime and process collectors.
	Registry *prometheus.Registry
	// Now is the clock for uptime and flow ages; default time.Now.
	Now func() time.Time
}

// TUNStats are the TUN device's packet counters, as the netstack counts
// them. They are read when metrics are scraped or status is asked.
type TUNStats struct {
	RxPackets uint64 // read from the TUN (client and server packets into the stack)
	TxPackets uint64 // written to the TUN
	RxDropped uint64 // read but not delivered (malformed, queue full)
	TxDropped uint64 // not written (queue full, write errors)
	// AcksDelayed are pure ACKs the datapath held back; AcksMerged of
	// them were never written because a later packet carried them.
	AcksDelayed, AcksMerged uint64
	// SynsHeld are client SYNs that reused the 4-tuple of a connection
	// the stack still held in TIME_WAIT and waited for it to end;
	// SynTimeouts of them were passed on still in TIME_WAIT, at the
	// longest wait. SynOverflows found too many waiting and were passed
	// on at once.
	SynsHeld, SynTimeouts, SynOverflows uint64
	// FINsMerged are FINs the stack sent right behind the last data of
	// a connection that went out in that data's packet.
	FINsMerged uint64
	// Direct are packets written by the goroutine that sent them, not
	// by a TUN writer: small ones that found the queue empty.
	Direct uint64
	// HandoffTimeWaits are TIME_WAIT sockets of flows handed off to the
	// kernel that netward destroyed so the client could reuse the port
	// at once; HandoffTimeWaitErrors could not be destroyed.
	HandoffTimeWaits, HandoffTimeWaitErrors uint64
}

// UpstreamStats describe the kernel upstream leg (netward run --upstream
// kernel), read when metrics are scraped.
type UpstreamStats struct {
	Kernel        bool   // new flows take the kernel leg (else the gVisor leg)
	KernelSockets int64  // kernel upstream sockets of flows in progress
	Fallbacks     uint64 // flows that took the gVisor leg: socket cap or file limit reached
	// Refused and Unreachable are admitted flows whose server answered
	// the connect with a reset, or not at all (the client got the same).
	Refused, Unreachable uint64
	// ClientGone are flows whose server connected but whose client did
	// not complete the handshake.
	ClientGone uint64
}

// EventStats mirrors event.Stats field for field, so that
// metrics.EventStats(log.Stats()) converts.
type EventStats struct {
	Emitted uint64
	Written uint64
	Dropped uint64
	Failed  uint64
}

// RulesInfo describes the rule set in use.
type RulesInfo struct {
	Hash     string    `json:"hash"`
	Count    int       `json:"count"`
	LoadedAt time.Time `json:"loaded_at"`
}

// Metrics holds netward's metrics and active-flow table. Create it with New.
type Metrics struct {
	reg     *prometheus.Registry
	version string
	now     func() time.Time
	start   time.Time

	flows FlowTable

	flowsTotal                prometheus.Counter
	udpDatagrams, udpBypassed *prometheus.CounterVec
	// Relayed bytes are plain atomics exported by funcCollector: an atomic
	// add is a third of prometheus.Counter.Add's cost, and this is paid on
	// every relay write.
	bytesToServer atomic.Uint64
	bytesToClient atomic.Uint64
	verdicts      *prometheus.CounterVec // rule, action
	inspectErrors *prometheus.CounterVec // kind
	limitHits     *prometheus.CounterVec // limit; exported by funcCollector
	handoffs      *prometheus.CounterVec // result
	limitDesc     *prometheus.Desc       // limitHits' descriptor
	peekTimeouts  prometheus.Counter
	reloadsOK     prometheus.Counter
	reloadsFailed prometheus.Counter
	ruleFetches   *prometheus.CounterVec // result
	rulesInfo     *prometheus.GaugeVec   // hash
	rulesCount    prometheus.Gauge
	rulesLoadedAt prometheus.Gauge

	rules       atomic.Pointer[RulesInfo]
	reloadError atomic.Pointer[string]
	tunStats    atomic.Pointer[func() TUNStats]
	upstream    atomic.Pointer[func() UpstreamStats]
	halfOpen    atomic.Pointer[func() uint64]
	eventStats  atomic.Pointer[func() EventStats]
	ready       atomic.Pointer[func() bool]
}

// New creates the metrics and registers them.
func New(opts Options) *Metrics {
	m := &Metrics{reg: opts.Registry, version: opts.Version, now: opts.Now}
	if m.now == nil {
		m.now = time.Now
	}
	m.start = m.now()
	if m.reg == nil {
		m.reg = prometheus.NewRegistry()
		m.reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	m.flows.init()

	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "netward", Name: name, Help: help})
	}
	m.flowsTotal = counter("flows_total", "Flows accepted by the stack (both legs up).")
	m.verdicts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "verdicts_total",
		Help: "Verdicts by rule (\"" + DefaultRule + "\" = the default action) and action."}, []string{"rule", "action"})
	m.inspectErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "inspect_errors_total",
		Help: "Client bytes that did not parse as their protocol, by kind."}, []string{"kind"})
	m.limitHits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "limit_hits_total",
		Help: "Flows refused or cut because a limit was reached, by limit (config name)."}, []string{"limit"})
	descs := make(chan *prometheus.Desc, 1)
	m.limitHits.Describe(descs)
	m.limitDesc = <-descs
	m.peekTimeouts = counter("inspect_timeouts_total", "Flows whose client sent nothing within limits.inspect_timeout.")
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "rule_reloads_total",
		Help: "Rule file loads (the first load included), by result (ok, failed)."}, []string{"result"})
	m.reloadsOK = reloads.WithLabelValues("ok")
	m.reloadsFailed = reloads.WithLabelValues("failed")
	m.ruleFetches = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "rule_fetches_total",
		Help: "Requests for a rule URL (the rule file and what it includes), by result (modified: 200, not_modified: 304, unreachable, http_error)."}, []string{"result"})
	m.rulesInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "netward", Name: "rules_info",
		Help: "The rule set in use: 1 with the hash of the loaded rule file as label."}, []string{"hash"})
	m.rulesCount = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "netward", Name: "rules",
		Help: "Rules in the loaded rule set."})
	m.rulesLoadedAt = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "netward", Name: "rules_loaded_timestamp_seconds",
		Help: "When the rule set in use was loaded (Unix time)."})
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "netward", Name: "flows_active",
		Help: "Flows being inspected or relayed now."}, func() float64 { return float64(m.flows.Len()) })
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "netward", Name: "build_info",
		Help:        "netward's version; always 1.",
		ConstLabels: prometheus.Labels{"version": m.version, "goversion": runtime.Version()}})
	build.Set(1)

	m.udpDatagrams = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "udp_datagrams_total",
		Help: "UDP datagrams netward read from the TUN, by what became of them: forwarded, held (until the verdict), refused (deny or drop), invalid (did not parse as QUIC or DNS), answered (a DNS query netward answered itself)."}, []string{"result"})
	m.udpBypassed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "udp_bypass_total",
		Help: "Allowed UDP flows handed to plain kernel forwarding (conntrack mark), by result (ok, failed)."}, []string{"result"})
	m.reg.MustRegister(m.udpDatagrams, m.udpBypassed)
	m.handoffs = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "netward", Name: "handoff_total",
		Help: "Allowed TCP flows whose client leg netward tried to move from gVisor to a kernel socket, by result: ok, or why the flow stayed in gVisor."}, []string{"result"})
	m.reg.MustRegister(m.handoffs)
	m.reg.MustRegister(m.flowsTotal, m.verdicts, m.inspectErrors, m.peekTimeouts,
		reloads, m.ruleFetches, m.rulesInfo, m.rulesCount, m.rulesLoadedAt, active, build, (*funcCollector)(m))
	return m
}

// UDPDatagrams counts n datagrams in netward_udp_datagrams_total{result}.
func (m *Metrics) UDPDatagrams(result string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.udpDatagrams.WithLabelValues(result).Add(float64(n))
}

// UDPBypass counts a kernel bypass of an allowed UDP flow (ok) or a failed
// attempt (the flow then stays on netward's path).
func (m *Metrics) UDPBypass(ok bool) {
	if m == nil {
		return
	}
	r := "ok"
	if !ok {
		r = "failed"
	}
	m.udpBypassed.WithLabelValues(r).Inc()
}

// Registry is where the metrics are registered, for other packages'
// collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Flows is the active-flow table.
func (m *Metrics) Flows() *FlowTable {
	if m == nil {
		return nil
	}
	return &m.flows
}

// InspectError counts client bytes that did not parse as their protocol,
// e.g. kind "tls" or "http" (inspect's error kinds).
func (m *Metrics) InspectError(kind string) {
	if m == nil {
		return
	}
	m.inspectErrors.WithLabelValues(kind).Inc()
}

// InspectTimeout counts a flow whose client sent nothing within the
// inspect timeout (the peek gave up).
func (m *Metrics) InspectTimeout() {
	if m == nil {
		return
	}
	m.peekTimeouts.Inc()
}

// LimitHit counts a flow refused or cut by a limit; limit is the config
// name ("max_flows", "max_half_open", "inspect_bytes", ...).
func (m *Metrics) LimitHit(limit string) {
	if m == nil || limit == "max_half_open" { // see SetHalfOpenDrops
		return
	}
	m.limitHits.WithLabelValues(limit).Inc()
}

// Handoff counts one handoff attempt (netward_handoff_total{result}).
func (m *Metrics) Handoff(result string) {
	if m == nil {
		return
	}
	m.handoffs.WithLabelValues(result).Inc()
}

// RulesLoaded records a successful (re)load of a rule set: its hash, its
// rule count and when it was loaded.
func (m *Metrics) RulesLoaded(hash string, count int, at time.Time) {
	if m == nil {
		return
	}
	m.reloadsOK.Inc()
	m.rulesInfo.Reset()
	m.rulesInfo.WithLabelValues(hash).Set(1)
	m.rulesCount.Set(float64(count))
	m.rulesLoadedAt.Set(float64(at.UnixNano()) / 1e9)
	m.rules.Store(&RulesInfo{Hash: hash, Count: count, LoadedAt: at})
	m.reloadError.Store(nil)
}

// RulesReloadFailed records a reload that failed; the previous rule set
// stays in use.
func (m *Metrics) RulesReloadFailed(err error) {
	if m == nil {
		return
	}
	m.reloadsFailed.Inc()
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	m.reloadError.Store(&msg)
}

// RuleFetch counts a request for a rule URL in
// netward_rule_fetches_total{result} (policy's Fetch* results).
func (m *Metrics) RuleFetch(result string) {
	if m == nil {
		return
	}
	m.ruleFetches.WithLabelValues(result).Inc()
}

// SetHalfOpenDrops sets where netward_limit_hits_total{limit="max_half_open"}
// is read from: the SYNs the stack dropped because limits.max_half_open
// handshakes were in progress (gVisor counts them itself).
func (m *Metrics) SetHalfOpenDrops(f func() uint64) {
	if m != nil {
		m.halfOpen.Store(&f)
	}
}

// limitValues is limit hits by limit, the stack's half-open drops included.
func (m *Metrics) limitValues() map[string]uint64 {
	v := vecValues(m.limitHits, "limit")
	if f := m.halfOpen.Load(); f != nil {
		v["max_half_open"] += (*f)()
	}
	return v
}

// SetTUNStats sets the function that reads the TUN counters.
func (m *Metrics) SetTUNStats(f func() TUNStats) {
	if m != nil && f != nil {
		m.tunStats.Store(&f)
	}
}

// SetUpstreamStats sets the function that reads the upstream leg's
// counters.
func (m *Metrics) SetUpstreamStats(f func() UpstreamStats) {
	if m != nil && f != nil {
		m.upstream.Store(&f)
	}
}

// SetEventStats sets the function that reads the event log's counters, e.g.
// func() metrics.EventStats { return metrics.EventStats(log.Stats()) }.
func (m *Metrics) SetEventStats(f func() EventStats) {
	if m != nil && f != nil {
		m.eventStats.Store(&f)
	}
}

// SetReady sets the function /readyz asks: true once the datapath is up
// (TUN open, stack running, steering installed). Until it is set, /readyz
// answers 503.
func (m *Metrics) SetReady(f func() bool) {
	if m != nil && f != nil {
		m.ready.Store(&f)
	}
}

// Ready reports what the function given to SetReady says.
func (m *Metrics) Ready() bool {
	if m == nil {
		return false
	}
	f := m.ready.Load()
	return f != nil && (*f)()
}

var (
	tunPacketsDesc = prometheus.NewDesc("netward_tun_packets_total",
		"Packets through the TUN device, by direction (rx: into the stack, tx: out of it).", []string{"direction"}, nil)
	tunDropsDesc = prometheus.NewDesc("netward_tun_dropped_total",
		"Packets the TUN path dropped, by direction.", []string{"direction"}, nil)
	tunAcksDesc = prometheus.NewDesc("netward_tun_acks_delayed_total",
		"Pure ACKs held back by ack_delay, by outcome (written: after the delay or on a duplicate, merged: carried by a later packet).", []string{"result"}, nil)
	tunFINsMergedDesc = prometheus.NewDesc("netward_tun_fins_merged_total",
		"FINs written in the packet of the connection's last data instead of a packet of their own, as a kernel sender does (the client then closes second and keeps no TIME_WAIT).", nil, nil)
	tunDirectDesc = prometheus.NewDesc("netward_tun_direct_writes_total",
		"Packets written to the TUN by the goroutine that sent them instead of a TUN writer: small packets (requests, answers, ACKs) that found the write queue empty, so they did not wait for a writer to wake.", nil, nil)
	synTimeWaitDesc = prometheus.NewDesc("netward_syn_time_wait_total",
		"Client SYNs that reused the 4-tuple of a connection netward's stack still held in TIME_WAIT, by result (waited: held until it ended, then served as a new connection; timeout: still in TIME_WAIT after the longest wait, passed on and dropped; overflow: too many waiting, passed on and dropped). Dropped SYNs are retransmitted by the client.", []string{"result"}, nil)
	handoffTimeWaitDesc = prometheus.NewDesc("netward_handoff_time_wait_total",
		"TIME_WAIT sockets of flows handed off to the kernel, destroyed when the flow ended (the client's port is free again at once, as it is after a flow netward's own stack served), by result (destroyed, failed: SOCK_DESTROY refused; the socket then lingers in the kernel's TIME_WAIT).", []string{"result"}, nil)
	upstreamInfoDesc = prometheus.NewDesc("netward_upstream_info",
		"The upstream leg new flows take: leg=kernel (a kernel socket bound to the client's address) or gvisor (out through the TUN).", []string{"leg"}, nil)
	upstreamSocketsDesc = prometheus.NewDesc("netward_upstream_kernel_sockets",
		"Kernel upstream sockets (--upstream kernel) of flows in progress.", nil, nil)
	upstreamFallbacksDesc = prometheus.NewDesc("netward_upstream_fallbacks_total",
		"Flows that took the gVisor upstream leg although the kernel leg is on: its socket cap (file limit less a reserve) was reached.", nil, nil)
	upstreamFailuresDesc = prometheus.NewDesc("netward_upstream_failures_total",
		"Admitted flows whose server could not be reached, by reason (refused: it reset the connect, the client got a reset; unreachable: no answer within limits.connect_timeout, the client got none).", []string{"reason"}, nil)
	clientHandshakeFailuresDesc = prometheus.NewDesc("netward_client_handshake_failures_total",
		"Admitted flows whose server connected but whose client did not complete the handshake (it reset, or never answered the SYN-ACK); the server's connection was closed again.", nil, nil)
	bytesDesc = prometheus.NewDesc("netward_bytes_total",
		"TCP payload bytes relayed, by direction (toserver, toclient).", []string{"direction"}, nil)
	eventsDesc = prometheus.NewDesc("netward_events_total",
		"EVE events by outcome (written, dropped: queue full, failed: write error).", []string{"result"}, nil)
)

// funcCollector exports counters that are not prometheus.Counters (relayed
// bytes, and those other packages keep: TUN, event log), read when scraped.
type funcCollector Metrics

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	c.limitHits.Describe(ch)
	ch <- bytesDesc
	ch <- tunPacketsDesc
	ch <- tunDropsDesc
	ch <- tunAcksDesc
	ch <- synTimeWaitDesc
	ch <- handoffTimeWaitDesc
	ch <- tunFINsMergedDesc
	ch <- tunDirectDesc
	ch <- upstreamInfoDesc
	ch <- upstreamSocketsDesc
	ch <- upstreamFallbacksDesc
	ch <- upstreamFailuresDesc
	ch <- clientHandshakeFailuresDesc
	ch <- eventsDesc
}

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	c.limitHits.Collect(ch)
	if f := c.halfOpen.Load(); f != nil {
		// LimitHit is never called with "max_half_open", so this label
		// value is only ever emitted here.
		ch <- prometheus.MustNewConstMetric(c.limitDesc, prometheus.CounterValue, float64((*f)()), "max_half_open")
	}
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(c.bytesToServer.Load()), "toserver")
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(c.bytesToClient.Load()), "toclient")
	if f := c.tunStats.Load(); f != nil {
		s := (*f)()
		ch <- prometheus.MustNewConstMetric(tunPacketsDesc, prometheus.CounterValue, float64(s.RxPackets), "rx")
		ch <- prometheus.MustNewConstMetric(tunPacketsDesc, prometheus.CounterValue, float64(s.TxPackets), "tx")
		ch <- prometheus.MustNewConstMetric(tunDropsDesc, prometheus.CounterValue, float64(s.RxDropped), "rx")
		ch <- prometheus.MustNewConstMetric(tunDropsDesc, prometheus.CounterValue, float64(s.TxDropped), "tx")
		ch <- prometheus.MustNewConstMetric(tunAcksDesc, prometheus.CounterValue, float64(s.AcksDelayed-min(s.AcksMerged, s.AcksDelayed)), "written")
		ch <- prometheus.MustNewConstMetric(tunAcksDesc, prometheus.CounterValue, float64(s.AcksMerged), "merged")
		ch <- prometheus.MustNewConstMetric(tunFINsMergedDesc, prometheus.CounterValue, float64(s.FINsMerged))
		ch <- prometheus.MustNewConstMetric(tunDirectDesc, prometheus.CounterValue, float64(s.Direct))
		ch <- prometheus.MustNewConstMetric(synTimeWaitDesc, prometheus.CounterValue, float64(s.SynsHeld-min(s.SynTimeouts, s.SynsHeld)), "waited")
		ch <- prometheus.MustNewConstMetric(synTimeWaitDesc, prometheus.CounterValue, float64(s.SynTimeouts), "timeout")
		ch <- prometheus.MustNewConstMetric(synTimeWaitDesc, prometheus.CounterValue, float64(s.SynOverflows), "overflow")
		ch <- prometheus.MustNewConstMetric(handoffTimeWaitDesc, prometheus.CounterValue, float64(s.HandoffTimeWaits), "destroyed")
		ch <- prometheus.MustNewConstMetric(handoffTimeWaitDesc, prometheus.CounterValue, float64(s.HandoffTimeWaitErrors), "failed")
	}
	if f := c.upstream.Load(); f != nil {
		s := (*f)()
		leg := "gvisor"
		if s.Kernel {
			leg = "kernel"
		}
		ch <- prometheus.MustNewConstMetric(upstreamInfoDesc, prometheus.GaugeValue, 1, leg)
		ch <- prometheus.MustNewConstMetric(upstreamSocketsDesc, prometheus.GaugeValue, float64(s.KernelSockets))
		ch <- prometheus.MustNewConstMetric(upstreamFallbacksDesc, prometheus.CounterValue, float64(s.Fallbacks))
		ch <- prometheus.MustNewConstMetric(upstreamFailuresDesc, prometheus.CounterValue, float64(s.Refused), "refused")
		ch <- prometheus.MustNewConstMetric(upstreamFailuresDesc, prometheus.CounterValue, float64(s.Unreachable), "unreachable")
		ch <- prometheus.MustNewConstMetric(clientHandshakeFailuresDesc, prometheus.CounterValue, float64(s.ClientGone))
	}
	if f := c.eventStats.Load(); f != nil {
		s := (*f)()
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(s.Written), "written")
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(s.Dropped), "dropped")
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(s.Failed), "failed")
	}
}

// counterValue reads a counter's value (status only, not the hot path).
func counterValue(c prometheus.Counter) uint64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil || d.Counter == nil {
		return 0
	}
	return uint64(d.Counter.GetValue())
}

// vecValues sums a counter vector's children by the value of one label.
func vecValues(v *prometheus.CounterVec, label string) map[string]uint64 {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		v.Collect(ch)
		close(ch)
	}()
	out := map[string]uint64{}
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil || d.Counter == nil {
			continue
		}
		for _, lp := range d.Label {
			if lp.GetName() == label {
				out[lp.GetValue()] += uint64(d.Counter.GetValue())
			}
		}
	}
	return out
}

// ruleLabel maps policy's "" (no rule matched) to DefaultRule.
func ruleLabel(rule string) string {
	if rule == "" {
		return DefaultRule
	}
	return rule
}

// actionLabel keeps the action label to known values; anything else would
// be a bug in the caller, but must not create label values without bound.
func actionLabel(action string) string {
	switch action {
	case "allow", "deny", "drop", "alert":
		return action
	}
	return "other"
}
