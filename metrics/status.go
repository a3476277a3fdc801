package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Status is what the admin endpoint's /status returns and `netward status`
// prints.
type Status struct {
	Version       string       `json:"version"`
	StartedAt     time.Time    `json:"started_at"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Ready         bool         `json:"ready"`
	Rules         RulesStatus  `json:"rules"`
	Counters      Counters     `json:"counters"`
	Flows         []FlowStatus `json:"flows"`
}

// RulesStatus is the rule set in use and how reloads went.
type RulesStatus struct {
	RulesInfo
	Loaded        bool   `json:"loaded"` // false until the first RulesLoaded
	ReloadsOK     uint64 `json:"reloads_ok"`
	ReloadsFailed uint64 `json:"reloads_failed"`
	// LastError is the error of the last reload if it failed ("" after a
	// successful one).
	LastError string `json:"last_error,omitempty"`
}

// Counters are the process totals, as in /metrics.
type Counters struct {
	FlowsActive     int               `json:"flows_active"`
	FlowsTotal      uint64            `json:"flows_total"`
	BytesToServer   uint64            `json:"bytes_toserver"`
	BytesToClient   uint64            `json:"bytes_toclient"`
	Verdicts        map[string]uint64 `json:"verdicts"` // by action
	InspectErrors   map[string]uint64 `json:"inspect_errors"`
	InspectTimeouts uint64            `json:"inspect_timeouts"`
	LimitHits       map[string]uint64 `json:"limit_hits"`
	TUN             *TUNStats         `json:"tun,omitempty"`
	Events          *EventStats       `json:"events,omitempty"`
}

// Status collects the status, with the active flows that match filter.
func (m *Metrics) Status(filter Filter) *Status {
	now := m.now()
	st := &Status{
		Version:       m.version,
		StartedAt:     m.start,
		UptimeSeconds: now.Sub(m.start).Seconds(),
		Ready:         m.Ready(),
		Rules: RulesStatus{
			ReloadsOK:     counterValue(m.reloadsOK),
			ReloadsFailed: counterValue(m.reloadsFailed),
		},
		Counters: Counters{
			FlowsActive:     m.flows.Len(),
			FlowsTotal:      counterValue(m.flowsTotal),
			BytesToServer:   m.bytesToServer.Load(),
			BytesToClient:   m.bytesToClient.Load(),
			Verdicts:        vecValues(m.verdicts, "action"),
			InspectErrors:   vecValues(m.inspectErrors, "kind"),
			InspectTimeouts: counterValue(m.peekTimeouts),
			LimitHits:       m.limitValues(),
		},
		Flows: m.flows.Snapshot(filter, now),
	}
	if r := m.rules.Load(); r != nil {
		st.Rules.RulesInfo = *r
		st.Rules.Loaded = true
	}
	if e := m.reloadError.Load(); e != nil {
		st.Rules.LastError = *e
	}
	if f := m.tunStats.Load(); f != nil {
		s := (*f)()
		st.Counters.TUN = &s
	}
	if f := m.eventStats.Load(); f != nil {
		s := (*f)()
		st.Counters.Events = &s
	}
	if st.Flows == nil {
		st.Flows = []FlowStatus{}
	}
	return st
}

// FetchStatus asks the admin endpoint at socketPath for the status.
func FetchStatus(ctx context.Context, socketPath string, filter Filter) (*Status, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}}
	u := "http://netward/status"
	if q := filter.Values().Encode(); q != "" {
		u += "?" + q
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics: status request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: ask %s (is netward running?): %w", socketPath, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("metrics: %s: %s: %s", socketPath, resp.Status, msg)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("metrics: decode status from %s: %w", socketPath, err)
	}
	return &st, nil
}
