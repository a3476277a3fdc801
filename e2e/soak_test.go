package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/cmd/soak/opslab"
	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
)

// TestSoakShort is `make soak` (e2e/cmd/soak) for 2 minutes: mixed allowed
// and denied HTTP and TLS at full connection churn, then netward's
// goroutines and RSS must come back near their baseline. Skipped with
// -short.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the 2-minute soak in -short mode")
	}
	l := labtest.New(t, lab.Options{})
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := opslab.Soak(ctx, l, opslab.SoakOptions{
		Netward:  labtest.Netward(t),
		Duration: 2 * time.Minute,
		Settle:   30 * time.Second,
		Every:    10 * time.Second,
		Out:      &out,
	})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Failures {
		t.Error(f)
	}
}
