// Package policy judges flows by the current rule file. An Engine holds the
// compiled *rules.Set behind an atomic pointer: decisions never take a lock
// and never see a half-loaded file; Reload (SIGHUP, or Watch on a file
// change) swaps in a new set only if it compiles.
package policy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/rules"
)

// Facts is what is known about a flow (see rules.Facts).
type Facts = rules.Facts

// Action is what a verdict does with a flow.
type Action = rules.Action

// The actions.
const (
	ActionAllow = rules.ActionAllow
	ActionDeny  = rules.ActionDeny
	ActionDrop  = rules.ActionDrop
	ActionAlert = rules.ActionAlert
)

// Verdict is the outcome of a decision: the action, the rule that decided
// ("" for the default, rules.RuleOnInvalid for on_invalid) and the alert
// rules that matched on the way.
type Verdict = rules.Verdict

// RuleOnInvalid is Verdict.Rule of an on_invalid verdict.
const RuleOnInvalid = rules.RuleOnInvalid

// Options configure an Engine.
type Options struct {
	// Path is the rule file: a file path, or an http:// or https:// URL
	// (see remote.go: fetched at New and Reload, polled by Watch). Required.
	Path string
	// Geo is the geo database (nil: none). Its databases decide whether
	// rule files with country or ASN conditions are accepted, and FillGeo
	// uses it. The Engine does not close it.
	Geo *geo.DB
	// Logger receives reload results and warnings; nil means slog.Default().
	Logger *slog.Logger
	// OnReload, if set, is called after every load attempt with the
	// version now in use and the load error (nil on success). Metrics hook;
	// it must not block.
	OnReload func(v rules.Version, err error)
	// Debounce is how long Watch waits for a burst of file events to end
	// before reloading; 0 means 250ms.
	Debounce time.Duration
	// PollInterval is how often Watch asks a rule URL whether it changed;
	// 0 means DefaultPollInterval. Unused for a file path.
	PollInterval time.Duration
	// HTTPClient fetches a rule URL; nil means a client with a 15 s
	// timeout per request and the environment's proxy settings.
	HTTPClient *http.Client
	// OnFetch, if set, is called with the result of every request for a
	// rule URL (FetchModified, FetchNotModified, FetchUnreachable,
	// FetchHTTPError). Metrics hook; it must not block.
	OnFetch func(result string)
}

// Engine holds the current rule set. Its methods are safe for concurrent
// use.
type Engine struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[rules.Set]
	mu   sync.Mutex // serialises reloads (and polls of remote)
	// remote is the state of a rule URL; nil for a file path.
	remote *remote
}

// New loads the rule file and returns an Engine using it. An invalid file
// is an error (a rules.ErrorList listing every problem).
func New(opts Options) (*Engine, error) {
	if opts.Path == "" {
		return nil, errors.New("policy: no rule file")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 250 * time.Millisecond
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	e := &Engine{opts: opts, log: opts.Logger}
	if IsURL(opts.Path) {
		r, err := newRemote(opts.Path, opts.HTTPClient, opts.OnFetch)
		if err != nil {
			return nil, err
		}
		e.remote = r
	}
	s, err := e.load()
	if e.opts.OnReload != nil {
		var v rules.Version
		if s != nil {
			v = s.Version()
		}
		e.opts.OnReload(v, err)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: load %s:\n%w", opts.Path, err)
	}
	e.cur.Store(s)
	e.logLoaded(s, "rules loaded")
	return e, nil
}

func (e *Engine) load() (*rules.Set, error) {
	opts := rules.Options{
		HaveCountry: e.opts.Geo.HasCountry(),
		HaveASN:     e.opts.Geo.HasASN(),
	}
	if e.remote != nil {
		return e.remote.load(opts)
	}
	return rules.Load(e.opts.Path, opts)
}

func (e *Engine) logLoaded(s *rules.Set, msg string) {
	v := s.Version()
	lists, entries := s.Lists()
	e.log.Info(msg, "path", v.Path, "rules", v.Rules, "lists", lists, "list_entries", entries,
		"sha256", v.SHA256, "default", s.Default().String(), "on_invalid", s.OnInvalid().String())
	for _, w := range s.Warnings() {
		e.log.Warn("rule file warning", "warning", w.String())
	}
}

// Reload re-reads the rule file and the files it includes. If they
// compile, the new set replaces the current one atomically (decisions in
// flight finish on the old one); if not, the error is logged and returned
// and the current set stays. Reloading unchanged files (same SHA-256) keeps
// the current set and returns nil.
func (e *Engine) Reload() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, err := e.load()
	old := e.cur.Load()
	if err != nil {
		e.log.Error("rule reload refused; keeping the current rules", "path", e.opts.Path,
			"current_sha256", old.Version().SHA256, "error", err.Error())
		if e.opts.OnReload != nil {
			e.opts.OnReload(old.Version(), err)
		}
		return fmt.Errorf("policy: reload %s:\n%w", e.opts.Path, err)
	}
	if s.Version().SHA256 == old.Version().SHA256 {
		e.log.Debug("rules unchanged", "path", e.opts.Path, "sha256", old.Version().SHA256)
		if e.opts.OnReload != nil {
			e.opts.OnReload(old.Version(), nil)
		}
		return nil
	}
	e.cur.Store(s)
	e.logLoaded(s, "rules reloaded")
	if e.opts.OnReload != nil {
		e.opts.OnReload(s.Version(), nil)
	}
	return nil
}

// Rules returns the current rule set (for status and tools). It stays
// valid after a reload; it just is no longer current.
func (e *Engine) Rules() *rules.Set { return e.cur.Load() }

// Version returns the identity of the current rule set: SHA-256 of its
// files, load time, rule count, path.
func (e *Engine) Version() rules.Version { return e.cur.Load().Version() }

// FillGeo sets f.SrcGeo and f.DstGeo from the geo database (if any). Call
// it once per flow, before Early, so country and ASN conditions can match.
func (e *Engine) FillGeo(f *Facts) {
	if db := e.opts.Geo; db != nil {
		f.SrcGeo = db.Lookup(f.Src.Addr())
		f.DstGeo = db.Lookup(f.Dst.Addr())
	}
}

// Early judges a flow by its addresses, ports and geo alone (before any
// byte is inspected). ok is false when a rule needing inspected facts could
// still match; then the caller inspects and calls Decide. When ok is true,
// Decide would give the same verdict whatever inspection finds.
func (e *Engine) Early(f *Facts) (v Verdict, ok bool) { return e.cur.Load().Early(f) }

// Decide judges a flow with all its facts. It does not allocate unless an
// alert rule matches.
func (e *Engine) Decide(f *Facts) Verdict { return e.cur.Load().Decide(f) }

// Invalid returns the verdict for a flow whose first bytes cannot be judged
// (malformed ClientHello, ambiguous HTTP request): the rule file's
// on_invalid action (deny unless set), with Rule RuleOnInvalid.
func (e *Engine) Invalid() Verdict { return e.cur.Load().Invalid() }
