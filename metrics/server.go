package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics, /healthz and /readyz, and /debug/pprof/ when
// withPprof is set. This is what the --metrics listener serves.
func (m *Metrics) Handler(withPprof bool) http.Handler {
	mux := http.NewServeMux()
	m.addCommon(mux)
	if withPprof {
		// Registered on this mux, not http.DefaultServeMux, so pprof is only
		// reachable where it was asked for.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// AdminHandler serves /status (JSON, filtered by the src, dst, verdict and
// rule query parameters) as well as /metrics, /healthz and /readyz. It is
// served on the admin unix socket only: the flow list names clients and
// destinations, so it is not exposed on the network listener.
func (m *Metrics) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	m.addCommon(mux)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		filter, err := FilterFromValues(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(m.Status(filter)) // a failed write means the client went away
	})
	return mux
}

func (m *Metrics) addCommon(mux *http.ServeMux) {
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !m.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
}

// Server is a running HTTP listener (metrics or admin).
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error
}

// Serve serves h on ln until Close. Errors other than the close are logged
// to logger (slog.Default() if nil).
func Serve(ln net.Listener, h http.Handler, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.err = err
			logger.Error("metrics: http server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return s
}

// Addr is the listening address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server, giving requests in flight up to 2 s.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	return errors.Join(err, s.err)
}

// ListenMetrics serves Handler(withPprof) on the TCP address addr (the
// --metrics / metrics.listen value, e.g. "127.0.0.1:9740" or ":9740").
func (m *Metrics) ListenMetrics(addr string, withPprof bool, logger *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	return Serve(ln, m.Handler(withPprof), logger), nil
}

// ListenAdmin serves AdminHandler on the unix socket path (admin.socket,
// default /run/netward/admin.sock). It creates the directory (0750), removes
// a stale socket left by a crashed netward, and refuses to start when
// another netward answers on it. The socket is 0660: only root (and the
// socket's group) can read the status.
func (m *Metrics) ListenAdmin(path string, logger *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("metrics: admin socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("metrics: admin socket %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("metrics: admin socket %s is in use: is another netward running?", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("metrics: remove stale admin socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics: chmod admin socket: %w", err)
	}
	return Serve(ln, m.AdminHandler(), logger), nil
}
