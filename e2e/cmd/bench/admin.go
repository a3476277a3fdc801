package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// sample is one Prometheus sample: labels and value.
type sample struct {
	labels map[string]string
	value  float64
}

// netwardMetrics are the samples of netward's /metrics, by metric name.
type netwardMetrics map[string][]sample

var labelRe = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// fetchMetrics reads /metrics from netward's admin socket (it serves
// there what --metrics would, without a TCP listener in the appliance).
func fetchMetrics(ctx context.Context, socket string) (netwardMetrics, error) {
	cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://netward/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics from %s: %w", socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics from %s: %s %v", socket, resp.Status, err)
	}
	m := netwardMetrics{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name, labels := line[:sp], ""
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], name[i:]
		}
		s := sample{labels: map[string]string{}, value: v}
		for _, kv := range labelRe.FindAllStringSubmatch(labels, -1) {
			s.labels[kv[1]] = kv[2]
		}
		m[name] = append(m[name], s)
	}
	return m, nil
}

// value is the sum of the metric's samples whose labels include match.
func (m netwardMetrics) value(name string, match map[string]string) float64 {
	var sum float64
	for _, s := range m[name] {
		ok := true
		for k, v := range match {
			ok = ok && s.labels[k] == v
		}
		if ok {
			sum += s.value
		}
	}
	return sum
}

// by sums the metric's samples by one label, leaving out zeros.
func (m netwardMetrics) by(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m[name] {
		if s.value != 0 {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

// label is the first sample's value of label (e.g. the rules' hash).
func (m netwardMetrics) label(name, label string) string {
	if s := m[name]; len(s) > 0 {
		return s[0].labels[label]
	}
	return ""
}

// verdicts is "rule/action N, …" of netward_verdicts_total, largest first.
func (m netwardMetrics) verdicts() string {
	type rv struct {
		key string
		n   float64
	}
	var all []rv
	for _, s := range m["netward_verdicts_total"] {
		if s.value != 0 {
			all = append(all, rv{s.labels["rule"] + "/" + s.labels["action"], s.value})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n })
	var parts []string
	for _, r := range all {
		parts = append(parts, fmt.Sprintf("%s %.0f", r.key, r.n))
	}
	return strings.Join(parts, ", ")
}

// counts formats a by() map as "k N, …" sorted by key, or "none".
func counts(c map[string]float64) string {
	if len(c) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.0f", k, c[k])
	}
	return strings.Join(parts, ", ")
}
