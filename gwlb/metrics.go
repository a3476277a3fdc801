package gwlb

import (
	"github.com/netward/netward/geneve"
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons, the reason label of netward_geneve_drops_total. Parse
// errors use geneve.Reason's labels.
const (
	DropOAM           = "oam"            // an OAM (control) packet
	DropMissingOption = "missing_option" // no GWLB endpoint or attachment ID
	DropOversized     = "oversized"      // inner packet larger than InnerMTU
	DropNotIP         = "not_ip"         // inner packet not a valid IPv4/IPv6 header
	DropEndpointLimit = "endpoint_limit" // MaxEndpoints stacks exist already
	DropStackError    = "stack_error"    // the endpoint's stack could not be built
	DropClosing       = "closing"        // a new endpoint while shutting down
	DropFlowTable     = "flow_table_full"
	DropStackBusy     = "stack_busy"   // the stack's socket buffer was full
	DropNoFlow        = "no_flow"      // a stack's packet of a flow GWLB never sent
	DropTxOversized   = "tx_oversized" // encapsulated, larger than GWLB's frame
	DropSendError     = "send_error"
)

var dropReasons = []string{
	geneve.Reason(geneve.ErrTruncated), geneve.Reason(geneve.ErrVersion), geneve.Reason(geneve.ErrProtocol),
	geneve.Reason(geneve.ErrOptionLength), geneve.Reason(geneve.ErrCritical), geneve.Reason(geneve.ErrDuplicateOption),
	"other",
	DropOAM, DropMissingOption, DropOversized, DropNotIP, DropEndpointLimit, DropStackError, DropClosing,
	DropFlowTable, DropStackBusy, DropNoFlow, DropTxOversized, DropSendError,
}

// Metrics are the datapath's Prometheus counters, resolved once (no label
// lookup per packet).
type Metrics struct {
	rxPackets, rxBytes, txPackets, txBytes prometheus.Counter
	toStack, fromStack, passthrough        prometheus.Counter
	drops                                  map[string]prometheus.Counter
	endpoints                              prometheus.Gauge
}

// NewMetrics creates the metrics and registers them on reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	pkts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netward_geneve_packets_total",
		Help: "GENEVE packets received from (in) and sent to (out) the Gateway Load Balancer."}, []string{"direction"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netward_geneve_bytes_total",
		Help: "Bytes of GENEVE packets (UDP payload) received (in) and sent (out)."}, []string{"direction"})
	stack := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netward_geneve_stack_packets_total",
		Help: "Inner TCP and UDP packets handed to the endpoints' stacks (in) and sent by them (out)."}, []string{"direction"})
	pass := prometheus.NewCounter(prometheus.CounterOpts{Name: "netward_geneve_passthrough_packets_total",
		Help: "Inner packets not judged (not TCP, nor UDP when UDP is judged), sent back to the Gateway Load Balancer unchanged."})
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netward_geneve_drops_total",
		Help: "GENEVE and inner packets dropped, by reason."}, []string{"reason"})
	eps := prometheus.NewGauge(prometheus.GaugeOpts{Name: "netward_geneve_endpoints",
		Help: "GWLB (endpoint ID, attachment ID) pairs with a stack."})
	m := &Metrics{
		rxPackets: pkts.WithLabelValues("in"), txPackets: pkts.WithLabelValues("out"),
		rxBytes: bytes.WithLabelValues("in"), txBytes: bytes.WithLabelValues("out"),
		toStack: stack.WithLabelValues("in"), fromStack: stack.WithLabelValues("out"),
		passthrough: pass,
		drops:       make(map[string]prometheus.Counter, len(dropReasons)),
		endpoints:   eps,
	}
	for _, r := range dropReasons {
		m.drops[r] = drops.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(pkts, bytes, stack, pass, drops, eps)
	}
	return m
}

func (m *Metrics) parseDrop(err error) { m.drops[geneve.Reason(err)].Inc() }
