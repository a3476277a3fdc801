package opslab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MetricsClient reads netward's metrics listener, which listens inside the
// appliance namespace (each namespace has its own loopback).
type MetricsClient struct {
	Addr   string // host:port, e.g. 127.0.0.1:9740
	client *http.Client
}

// NewMetricsClient reads addr from inside ns.
func NewMetricsClient(ns NS, addr string) *MetricsClient {
	d := &Dialer{NS: ns, Dialer: netDialer(5 * time.Second)}
	return &MetricsClient{Addr: addr, client: &http.Client{
		Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}}
}

// Get fetches a path (e.g. "/healthz") and returns the status and body.
func (m *MetricsClient) Get(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.Addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("opslab: GET %s%s: %w", m.Addr, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("opslab: GET %s%s: %w", m.Addr, path, err)
	}
	return resp.StatusCode, string(b), nil
}

// Scrape reads /metrics.
func (m *MetricsClient) Scrape(ctx context.Context) (Metrics, error) {
	code, body, err := m.Get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("opslab: /metrics: status %d: %.200s", code, body)
	}
	return ParseMetrics(body)
}

// Metrics are the metric families of one scrape, by name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("opslab: parse metrics: %w", err)
	}
	return Metrics(fams), nil
}

// Has reports whether the family exists.
func (m Metrics) Has(name string) bool { _, ok := m[name]; return ok }

// Value is the sum of the series of the family name whose labels include
// all of labels (name, value pairs). A missing family or series is 0.
func (m Metrics) Value(name string, labels ...string) float64 {
	f, ok := m[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, s := range f.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}

func hasLabels(s *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range s.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Series returns every series of the family as "label=value,..." → value,
// for reports and deltas.
func (m Metrics) Series(name string) map[string]float64 {
	out := map[string]float64{}
	f, ok := m[name]
	if !ok {
		return out
	}
	for _, s := range f.GetMetric() {
		var parts []string
		for _, lp := range s.GetLabel() {
			parts = append(parts, lp.GetName()+"="+lp.GetValue())
		}
		sort.Strings(parts)
		var v float64
		switch {
		case s.Counter != nil:
			v = s.Counter.GetValue()
		case s.Gauge != nil:
			v = s.Gauge.GetValue()
		case s.Untyped != nil:
			v = s.Untyped.GetValue()
		}
		out[strings.Join(parts, ",")] = v
	}
	return out
}

// Delta is after − before for every series of the family that changed.
func Delta(before, after Metrics, name string) map[string]float64 {
	b, a := before.Series(name), after.Series(name)
	out := map[string]float64{}
	for k, v := range a {
		if d := v - b[k]; d != 0 {
			out[k] = d
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok && v != 0 {
			out[k] = -v
		}
	}
	return out
}
