package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/config"
	"github.com/netward/netward/metrics"
)

type fakeSteering struct{ err error }

func (f *fakeSteering) Check() error { return f.err }

func TestDatapathCheck(t *testing.T) {
	failed := make(chan struct{})
	st := &fakeSteering{}
	check := datapathCheck(failed, func() error { return errors.New("netstack: read queue 0: file already closed") }, st)
	if err := check(); err != nil {
		t.Fatalf("healthy datapath: %v", err)
	}
	st.err = errors.New("steer: TUN netward0 is down")
	if err := check(); err == nil || !strings.Contains(err.Error(), "is down") {
		t.Fatalf("steering gone: %v", err)
	}
	st.err = nil
	close(failed)
	if err := check(); err == nil || !strings.Contains(err.Error(), "datapath failed: netstack: read queue 0") {
		t.Fatalf("failed stack: %v", err)
	}
}

func TestDrain(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	active := func() int64 { return 1 }
	hc := config.Health{Listen: ":9741", DrainTimeout: 150 * time.Millisecond}
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}

	t.Run("deadline", func(t *testing.T) {
		var h metrics.Health
		h.SetCheck(func() error { return nil })
		done := make(chan struct{})
		go func() {
			time.Sleep(50 * time.Millisecond)
			if !h.Draining() || h.Status() == nil {
				t.Error("not unhealthy during the drain")
			}
			close(done)
		}()
		if d := timed(func() { drain(&h, hc, make(chan os.Signal), nil, active, log) }); d < hc.DrainTimeout {
			t.Errorf("drain took %v, want the whole %v", d, hc.DrainTimeout)
		}
		<-done
	})
	t.Run("second signal", func(t *testing.T) {
		var h metrics.Health
		sigs := make(chan os.Signal, 1)
		sigs <- syscall.SIGTERM
		long := hc
		long.DrainTimeout = time.Hour
		if d := timed(func() { drain(&h, long, sigs, nil, active, log) }); d > 5*time.Second {
			t.Errorf("a second signal did not end the drain (%v)", d)
		}
	})
	t.Run("datapath failed", func(t *testing.T) {
		var h metrics.Health
		failed := make(chan struct{})
		close(failed)
		long := hc
		long.DrainTimeout = time.Hour
		if d := timed(func() { drain(&h, long, make(chan os.Signal), failed, active, log) }); d > 5*time.Second {
			t.Errorf("a failed datapath did not end the drain (%v)", d)
		}
	})
	for _, tt := range []struct {
		name string
		hc   config.Health
	}{
		{"no health listener", config.Health{DrainTimeout: time.Hour}},
		{"drain 0", config.Health{Listen: ":9741"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h metrics.Health
			if d := timed(func() { drain(&h, tt.hc, make(chan os.Signal), nil, active, log) }); d > time.Second || h.Draining() {
				t.Errorf("drained (%v, draining %v), want an immediate stop", d, h.Draining())
			}
		})
	}
}
