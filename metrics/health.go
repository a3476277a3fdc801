package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
)

// Health is the load balancer's health check (--health-listen): /healthz
// answers 200 only while the datapath serves — it has been attached
// (SetCheck), its check passes (the stack has not failed, the TUN is up
// and read, the steering is in place) and netward is not draining — and
// 503 with the reason otherwise. A Gateway Load Balancer stops sending new
// flows to a target that answers 503. The zero Health is unhealthy
// ("starting").
type Health struct {
	check    atomic.Pointer[func() error]
	draining atomic.Bool
}

// Errors /healthz reports before and after the datapath runs.
var (
	ErrStarting = errors.New("starting: the datapath is not up yet")
	ErrDraining = errors.New("draining: netward is stopping; open flows go on until the drain deadline")
)

// SetCheck sets the datapath check; nil error means serving. Until it is
// set, Status is ErrStarting.
func (h *Health) SetCheck(f func() error) {
	if h != nil && f != nil {
		h.check.Store(&f)
	}
}

// Drain turns the health check unhealthy for good: netward is stopping.
func (h *Health) Drain() {
	if h != nil {
		h.draining.Store(true)
	}
}

// Draining reports whether Drain was called.
func (h *Health) Draining() bool { return h != nil && h.draining.Load() }

// Status is nil while the datapath serves, else why not.
func (h *Health) Status() error {
	if h == nil {
		return ErrStarting
	}
	if h.draining.Load() {
		return ErrDraining
	}
	f := h.check.Load()
	if f == nil {
		return ErrStarting
	}
	return (*f)()
}

// Handler serves /healthz (GET and HEAD): "ok" or 503 and the reason, never
// cached.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		if err := h.Status(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	return mux
}

// ListenHealth serves Handler on the TCP address addr (--health-listen,
// health.listen; e.g. ":9741" for a load balancer's checks).
func (h *Health) ListenHealth(addr string, logger *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health: listen %s: %w", addr, err)
	}
	return Serve(ln, h.Handler(), logger), nil
}
