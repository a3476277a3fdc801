package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// opsWaitFlowEvents waits until the event log holds the flow event of the
// connection from src and returns all events of that flow (same flow_id
// and source), in log order. Every line of the log must decode strictly.
func opsWaitFlowEvents(t testing.TB, path string, src netip.AddrPort) []opsEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		all, err := opsReadEVE(path)
		if err != nil {
			t.Fatalf("event log: %v", err)
		}
		var id uint64
		for _, e := range all {
			if e.EventType == "flow" && e.src() == src {
				id = e.FlowID
			}
		}
		if id != 0 {
			var out []opsEvent
			for _, e := range all {
				if e.FlowID == id && e.src() == src {
					out = append(out, e)
				}
			}
			return out
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no flow event from %s in %s after 15 s (%d events)", src, path, len(all))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
