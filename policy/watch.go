package policy

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch reloads the rules when the rule file or a file it includes
// changes, until ctx is done (then it returns nil). It watches the
// directories holding those files rather than the files, because editors
// replace a file by writing a new one and renaming it over the old (the
// old file's watch would go stale), and Kubernetes swaps a ConfigMap volume
// by re-pointing the "..data" symlink. A burst of events is debounced into
// one Reload; a failed reload is logged and the current rules stay (the
// next change tries again). After each reload the watched directories are
// brought in line with the files the rules now include.
//
// logger receives watch errors; nil means the Engine's logger. Reload
// results are logged by Reload.
//
// For a rule URL, Watch polls it every Options.PollInterval instead (see
// remote.go).
func (e *Engine) Watch(ctx context.Context, logger *slog.Logger) error {
	if logger == nil {
		logger = e.log
	}
	if e.remote != nil {
		return e.poll(ctx, logger)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.opts.Path, err)
	}
	defer w.Close()
	ws := &watchState{w: w, log: logger, dirs: make(map[string]bool)}
	ws.sync(e.Rules().Files())
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod || !ws.relevant(ev.Name) {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(e.opts.Debounce)
			} else {
				timer.Reset(e.opts.Debounce)
			}
			fire = timer.C
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			logger.Error("rule file watch error", "path", e.opts.Path, "error", err.Error())
		case <-fire:
			fire = nil
			_ = e.Reload() // logged by Reload; the current rules stay on error
			ws.sync(e.Rules().Files())
		}
	}
}

type watchState struct {
	w     *fsnotify.Watcher
	log   *slog.Logger
	dirs  map[string]bool // watched directories
	files map[string]bool // paths whose events matter
}

// sync watches the directories of files (and of their symlink targets) and
// stops watching directories no longer needed.
func (ws *watchState) sync(files []string) {
	want := make(map[string]bool)
	ws.files = make(map[string]bool)
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			continue
		}
		ws.files[abs] = true
		want[filepath.Dir(abs)] = true
		if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
			ws.files[real] = true
			want[filepath.Dir(real)] = true
		}
	}
	for d := range ws.dirs {
		if !want[d] {
			_ = ws.w.Remove(d) // may be gone already (a replaced ..version dir)
			delete(ws.dirs, d)
		}
	}
	for d := range want {
		if ws.dirs[d] {
			continue
		}
		if err := ws.w.Add(d); err != nil {
			ws.log.Error("cannot watch rule directory", "dir", d, "error", err.Error())
			continue
		}
		ws.dirs[d] = true
	}
}

// relevant reports whether an event on name may change the rules: one of
// the files, or a Kubernetes "..data"-style entry that a file's symlink
// chain goes through.
func (ws *watchState) relevant(name string) bool {
	if ws.files[filepath.Clean(name)] {
		return true
	}
	return strings.HasPrefix(filepath.Base(name), "..")
}
