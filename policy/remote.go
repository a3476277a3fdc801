package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/netward/netward/rules"
)

// Rule files served over HTTP(S), for a fleet of appliances sharing one
// rule set. The rule file and the files it includes (lists, deny page,
// resolved against the rule file's URL) are fetched with GET; Watch polls
// them with conditional requests (If-None-Match with the ETag,
// If-Modified-Since with the Last-Modified the server sent) and reloads
// when one of them changed. Whatever goes wrong — no answer, an HTTP
// error, a file that does not compile — keeps the rules in force; it is
// logged, counted (OnFetch, OnReload) and tried again at the next poll.

// DefaultPollInterval is how often Watch polls a rule URL when
// Options.PollInterval is 0.
const DefaultPollInterval = 30 * time.Second

// fetchTimeout bounds one request, connect to last byte: a source that
// hangs must not hold a reload (and SIGHUP) for long.
const fetchTimeout = 15 * time.Second

// The results of a request for a rule URL, as passed to Options.OnFetch.
const (
	FetchModified    = "modified"     // 200: a body, new or not
	FetchNotModified = "not_modified" // 304: the copy in force is current
	FetchUnreachable = "unreachable"  // no answer: DNS, connect, TLS, timeout, cut-off body
	FetchHTTPError   = "http_error"   // any other status
)

// IsURL reports whether a rule source is an http:// or https:// URL rather
// than a file path.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// FetchError is a rule URL that could not be fetched. Result is
// FetchUnreachable or FetchHTTPError.
type FetchError struct {
	URL    string
	Result string
	Status int // the HTTP status of an FetchHTTPError
	Err    error
}

func (e *FetchError) Error() string {
	if e.Result == FetchHTTPError {
		return fmt.Sprintf("fetch %s: HTTP %d %s", e.URL, e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("fetch %s: %v", e.URL, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

type validator struct {
	etag, lastModified string
}

// remote is an Engine's state for a rule URL. Its fields are guarded by
// the Engine's mu (loads and polls are serialised).
type remote struct {
	base    *url.URL
	client  *http.Client
	onFetch func(string)
	// valid holds the validators the server sent with the last body of
	// each URL of the last load attempt; tried lists those URLs.
	valid map[string]validator
	tried []string
	// pending holds bodies a poll fetched (200) for the next load to use
	// instead of fetching them again.
	pending map[string][]byte
}

func newRemote(raw string, client *http.Client, onFetch func(string)) (*remote, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("policy: rule URL %q: %w", raw, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("policy: rule URL %q has no host", raw)
	}
	if client == nil {
		client = &http.Client{Timeout: fetchTimeout}
	}
	if onFetch == nil {
		onFetch = func(string) {}
	}
	return &remote{base: u, client: client, onFetch: onFetch, valid: map[string]validator{}, pending: map[string][]byte{}}, nil
}

// resolve names an included file: p resolved against the rule file's URL
// (a relative path is next to it, "/x" on the same server, a full URL
// anywhere).
func (r *remote) resolve(p string) string {
	ref, err := url.Parse(p)
	if err != nil {
		// The fetch of the unresolved name fails and the loader reports it
		// at the include's line.
		return p
	}
	return r.base.ResolveReference(ref).String()
}

// get fetches u. With a validator it asks conditionally and returns
// notModified on 304. A body over limit is an error.
func (r *remote) get(u string, limit int64, v *validator) (body []byte, nv validator, notModified bool, err error) {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		r.onFetch(FetchUnreachable)
		return nil, nv, false, &FetchError{URL: u, Result: FetchUnreachable, Err: err}
	}
	if v != nil {
		if v.etag != "" {
			req.Header.Set("If-None-Match", v.etag)
		}
		if v.lastModified != "" {
			req.Header.Set("If-Modified-Since", v.lastModified)
		}
	}
	resp, err := r.client.Do(req)
	if err != nil {
		r.onFetch(FetchUnreachable)
		return nil, nv, false, &FetchError{URL: u, Result: FetchUnreachable, Err: err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && v != nil:
		r.onFetch(FetchNotModified)
		return nil, *v, true, nil
	case resp.StatusCode != http.StatusOK:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		r.onFetch(FetchHTTPError)
		return nil, nv, false, &FetchError{URL: u, Result: FetchHTTPError, Status: resp.StatusCode}
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		r.onFetch(FetchUnreachable)
		return nil, nv, false, &FetchError{URL: u, Result: FetchUnreachable, Err: fmt.Errorf("read body: %w", err)}
	}
	r.onFetch(FetchModified)
	if int64(len(body)) > limit {
		return nil, nv, false, fmt.Errorf("%s is larger than %d bytes", u, limit)
	}
	return body, validator{etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}, false, nil
}

// fetch returns u's body for a load: the one a poll just fetched, or a
// fresh unconditional GET. It records u's validators for the next poll.
func (r *remote) fetch(u string, limit int64) ([]byte, error) {
	r.tried = append(r.tried, u)
	if b, ok := r.pending[u]; ok {
		delete(r.pending, u)
		if int64(len(b)) > limit {
			return nil, fmt.Errorf("%s is larger than %d bytes", u, limit)
		}
		return b, nil
	}
	b, v, _, err := r.get(u, limit, nil)
	if err != nil {
		return nil, err
	}
	r.valid[u] = v
	return b, nil
}

// load fetches and compiles the rule file and its includes. The rule
// file's URL is its name in diagnostics (url:line:col).
func (r *remote) load(opts rules.Options) (*rules.Set, error) {
	main := r.base.String()
	// Each fetch below records its URL's validators again (a poll has
	// recorded those of the bodies it left in pending), so files the rules
	// no longer include are dropped.
	old := r.valid
	r.valid, r.tried = map[string]validator{}, nil
	for u := range r.pending {
		if v, ok := old[u]; ok {
			r.valid[u] = v
		}
	}
	data, err := r.fetch(main, rules.MaxRuleFileBytes)
	if err != nil {
		r.pending = map[string][]byte{}
		return nil, fmt.Errorf("rules: %w", err)
	}
	opts.Include = r.resolve
	opts.ReadFile = func(name string) ([]byte, error) { return r.fetch(name, rules.MaxListFileBytes) }
	s, err := rules.Parse(main, data, opts)
	r.pending = map[string][]byte{}
	return s, err
}

// changed asks, conditionally, for each file of the last load attempt
// whether it changed since. The first one that did is kept for the load
// that follows. A file without validators (the server sent none, or its
// last fetch failed) is fetched in full and counts as changed.
func (r *remote) changed() (bool, error) {
	tried := r.tried
	if len(tried) == 0 {
		tried = []string{r.base.String()}
	}
	for _, u := range tried {
		var vp *validator
		if v, ok := r.valid[u]; ok && (v.etag != "" || v.lastModified != "") {
			vp = &v
		}
		b, v, notModified, err := r.get(u, rules.MaxListFileBytes, vp)
		if err != nil {
			return false, err
		}
		if notModified {
			continue
		}
		r.pending[u] = b
		r.valid[u] = v
		return true, nil
	}
	return false, nil
}

// poll is Watch for a rule URL: every interval, a conditional check and,
// if a file changed, a Reload.
func (e *Engine) poll(ctx context.Context, logger *slog.Logger) error {
	t := time.NewTicker(e.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_ = e.pollOnce(logger) // logged and counted; the current rules stay on error
	}
}

// pollOnce asks the rule URL whether it changed and reloads if it did.
func (e *Engine) pollOnce(logger *slog.Logger) error {
	e.mu.Lock()
	changed, err := e.remote.changed()
	e.mu.Unlock()
	if err != nil {
		old := e.cur.Load().Version()
		logger.Error("rule source unreachable; keeping the current rules", "url", e.opts.Path,
			"current_sha256", old.SHA256, "error", err.Error())
		err = fmt.Errorf("policy: poll %s: %w", e.opts.Path, err)
		if e.opts.OnReload != nil {
			e.opts.OnReload(old, err)
		}
		return err
	}
	if !changed {
		return nil
	}
	return e.Reload()
}
