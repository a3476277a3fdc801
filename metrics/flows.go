package metrics

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// numShards spreads the flow table over independent locks: adding or
// removing a flow locks 1/64 of the table, and a status snapshot never holds
// more than one shard at a time. 64 keeps contention negligible at the flow
// rates a 2–16 core appliance sees while costing ~5 KiB.
const numShards = 64

// FlowTable is the registry of active flows: the relay adds each flow when
// it starts and removes it when it ends; `netward status` lists it. It is
// the FlowTable of a Metrics (Metrics.StartFlow).
type FlowTable struct {
	shards [numShards]flowShard
	active atomic.Int64
}

type flowShard struct {
	mu    sync.Mutex
	flows map[uint64]*ActiveFlow
	_     [40]byte // keep neighbouring shards' locks off one cache line
}

func (t *FlowTable) init() {
	for i := range t.shards {
		t.shards[i].flows = make(map[uint64]*ActiveFlow)
	}
}

// Len is the number of active flows.
func (t *FlowTable) Len() int {
	if t == nil {
		return 0
	}
	return int(t.active.Load())
}

// ActiveFlow is one flow in the table. The relay holds it for the flow's
// life and updates it; it is safe for concurrent use (the two copy
// directions add bytes concurrently, status reads it).
type ActiveFlow struct {
	m      *Metrics
	id     uint64
	client netip.AddrPort
	server netip.AddrPort
	start  time.Time

	toServer atomic.Uint64
	toClient atomic.Uint64

	mu      sync.Mutex // guards the strings below; held only to copy them
	app     string
	name    string // SNI or HTTP Host
	verdict string // "" = not decided yet
	rule    string
	ended   bool
	kernel  bool // the client leg was handed off to a kernel socket
}

// StartFlow adds a flow to the table and counts it in netward_flows_total.
// id is netstack.Flow.ID (unique in the process). It returns nil on a nil
// *Metrics; all ActiveFlow methods accept nil.
func (m *Metrics) StartFlow(id uint64, client, server netip.AddrPort, start time.Time) *ActiveFlow {
	if m == nil {
		return nil
	}
	f := &ActiveFlow{m: m, id: id, client: client, server: server, start: start}
	s := &m.flows.shards[id%numShards]
	s.mu.Lock()
	if _, dup := s.flows[id]; !dup {
		m.flows.active.Add(1)
	}
	s.flows[id] = f
	s.mu.Unlock()
	m.flowsTotal.Inc()
	return f
}

// SetApp records the detected protocol (inspect.Proto.String()).
func (f *ActiveFlow) SetApp(app string) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.app = app
	f.mu.Unlock()
}

// SetName records the name the client asked for: TLS SNI or HTTP Host.
func (f *ActiveFlow) SetName(name string) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.name = name
	f.mu.Unlock()
}

// SetKernel records that the flow's client leg left gVisor for a kernel
// socket (netstack.Stack.Handoff).
func (f *ActiveFlow) SetKernel() {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.kernel = true
	f.mu.Unlock()
}

// SetVerdict records a verdict for the flow and counts it in
// netward_verdicts_total{rule,action}. action is policy.Action.String()
// ("allow", "deny", "drop", "alert"); rule is policy.Verdict.Rule ("" = the
// default action). Each call counts once, so call it once per decision
// (e.g. once per HTTP request on a keep-alive connection).
func (f *ActiveFlow) SetVerdict(action, rule string) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.verdict, f.rule = action, rule
	f.mu.Unlock()
	f.m.verdicts.WithLabelValues(ruleLabel(rule), actionLabel(action)).Inc()
}

// Verdict counts a verdict for a flow that never entered the table: one
// refused at the SYN (an early L3/L4/geo verdict), where there is no
// ActiveFlow to call SetVerdict on. It does not count the flow in
// netward_flows_total.
func (m *Metrics) Verdict(action, rule string) {
	if m == nil {
		return
	}
	m.verdicts.WithLabelValues(ruleLabel(rule), actionLabel(action)).Inc()
}

// AddToServer counts n payload bytes relayed from the client to the server.
// It is two atomic adds: call it per write.
func (f *ActiveFlow) AddToServer(n int) {
	if f == nil || n <= 0 {
		return
	}
	f.toServer.Add(uint64(n))
	f.m.bytesToServer.Add(uint64(n))
}

// AddToClient counts n payload bytes relayed from the server to the client.
func (f *ActiveFlow) AddToClient(n int) {
	if f == nil || n <= 0 {
		return
	}
	f.toClient.Add(uint64(n))
	f.m.bytesToClient.Add(uint64(n))
}

// Bytes returns the payload bytes relayed so far each way.
func (f *ActiveFlow) Bytes() (toServer, toClient uint64) {
	if f == nil {
		return 0, 0
	}
	return f.toServer.Load(), f.toClient.Load()
}

// End removes the flow from the table and returns its byte counts, for the
// EVE flow event. Calling it again does nothing and returns the same counts.
func (f *ActiveFlow) End() (toServer, toClient uint64) {
	if f == nil {
		return 0, 0
	}
	f.mu.Lock()
	already := f.ended
	f.ended = true
	f.mu.Unlock()
	if !already {
		t := &f.m.flows
		s := &t.shards[f.id%numShards]
		s.mu.Lock()
		if s.flows[f.id] == f {
			delete(s.flows, f.id)
			t.active.Add(-1)
		}
		s.mu.Unlock()
	}
	return f.Bytes()
}

// FlowStatus is one active flow as `netward status` shows it.
type FlowStatus struct {
	ID            uint64         `json:"id"`
	Src           netip.AddrPort `json:"src"`
	Dst           netip.AddrPort `json:"dst"`
	Start         time.Time      `json:"start"`
	AgeSeconds    float64        `json:"age_seconds"`
	App           string         `json:"app,omitempty"`
	Name          string         `json:"name,omitempty"`
	Verdict       string         `json:"verdict"` // "pending" until decided
	Rule          string         `json:"rule,omitempty"`
	BytesToServer uint64         `json:"bytes_toserver"`
	BytesToClient uint64         `json:"bytes_toclient"`
	// Leg is where the client's connection is terminated: "gvisor", or
	// "kernel" once handed off.
	Leg string `json:"leg"`
}

// VerdictPending is FlowStatus.Verdict of a flow not decided yet.
const VerdictPending = "pending"

func (f *ActiveFlow) status(now time.Time) FlowStatus {
	f.mu.Lock()
	st := FlowStatus{
		ID: f.id, Src: f.client, Dst: f.server, Start: f.start,
		App: f.app, Name: f.name, Verdict: f.verdict, Rule: f.rule, Leg: "gvisor",
	}
	if f.kernel {
		st.Leg = "kernel"
	}
	f.mu.Unlock()
	if st.Verdict == "" {
		st.Verdict = VerdictPending
	} else if st.Rule == "" {
		st.Rule = DefaultRule
	}
	st.AgeSeconds = max(now.Sub(f.start).Seconds(), 0)
	st.BytesToServer, st.BytesToClient = f.Bytes()
	return st
}

// Snapshot returns the active flows that match filter, oldest first. It
// locks one shard at a time, so the datapath is never held up for long.
func (t *FlowTable) Snapshot(filter Filter, now time.Time) []FlowStatus {
	if t == nil {
		return nil
	}
	var out []FlowStatus
	var batch []*ActiveFlow
	for i := range t.shards {
		s := &t.shards[i]
		batch = batch[:0]
		s.mu.Lock()
		for _, f := range s.flows {
			batch = append(batch, f)
		}
		s.mu.Unlock()
		for _, f := range batch {
			if st := f.status(now); filter.Match(&st) {
				out = append(out, st)
			}
		}
	}
	slices.SortFunc(out, func(a, b FlowStatus) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}
