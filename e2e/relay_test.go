package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab/labtest"
)

// TestReferenceRelay: the bench's -relay column, lab.Relay, really relays
// the lab's flows (its rules' counters carry the bytes), keeps the
// client's address and port, moves data and half-closes intact in both
// families, and its Stop leaves the appliance exactly as it was.
func TestReferenceRelay(t *testing.T) {
	labtest.RequireRoot(t)
	labtest.RequireTools(t, "iptables", "ip6tables", "curl")
	d := newLab(t)
	ctx := context.Background()
	before, err := d.lab.Appliance.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := d.lab.StartRelay(ctx, labtest.Peer(t))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			r.Stop(5 * time.Second)
		}
	})
	c0, s0, err := r.Bytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"HTTPv4": true, "HTTPv6": true, "SHA100MiBv4": true, "SHA100MiBv6": true, "HalfClose": true}
	var list []check
	for _, c := range checks {
		if want[c.name] {
			list = append(list, c)
		}
	}
	runChecks(t, d, list)
	c1, s1, err := r.Bytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Each SHA check sends 100 MiB each way, IPv4 and IPv6.
	if c, s := c1-c0, s1-s0; c < 200<<20 || s < 200<<20 {
		t.Errorf("the relay's rules counted %d bytes from clients and %d from servers, want ≥ 200 MiB each: the kernel forwarded the traffic", c, s)
	}
	if exited, err := r.Exited(); exited {
		t.Fatalf("the relay exited during the checks (%v):\n%s", err, r.Log())
	}
	stopped = true
	if err := r.Stop(5 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	after, err := d.lab.Appliance.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := after.Diff(before); diff != "" {
		t.Errorf("the relay left the appliance changed:\n%s", diff)
	}
	runChecks(t, d, list[:1]) // kernel forwarding again
}
