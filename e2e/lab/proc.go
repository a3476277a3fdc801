package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a background process started in a namespace. Its standard output
// and standard error go to a log file in the lab's Dir; Close kills it.
type Proc struct {
	Name    string // label given to Start; also the log file's base name
	LogPath string
	NS      *NS

	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited
	err  error         // exit status; valid once done is closed
	once sync.Once
}

// Start starts args in the namespace in the background. The label names
// the process in errors and its log file (label.log, made unique).
func (n *NS) Start(label string, args ...string) (*Proc, error) {
	return n.StartFiles(label, nil, nil, args...)
}

// StartFiles is Start with files the process inherits as descriptors 3,
// 4, … (exec.Cmd.ExtraFiles) and more environment variables ("K=V").
func (n *NS) StartFiles(label string, files []*os.File, env []string, args ...string) (*Proc, error) {
	l := n.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("lab: start %s: lab is closed", label)
	}
	path := filepath.Join(l.Dir, label+".log")
	for i := 2; ; i++ {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		path = filepath.Join(l.Dir, fmt.Sprintf("%s.%d.log", label, i))
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", label, err)
	}
	// Not CommandContext: the process lives until Stop/Close, not a context.
	full := append([]string{"netns", "exec", n.Name}, args...)
	cmd := exec.Command("ip", full...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.ExtraFiles = files
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	// Own process group: Close can kill it and anything it forked, and a
	// Ctrl-C in the terminal does not reach it before the lab is ready to.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	l.logf("+ [%s] %s &  (log %s)", n.Role, strings.Join(args, " "), path)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: start %s: %w", label, err)
	}
	p := &Proc{Name: label, LogPath: path, NS: n, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// PID is the process id (ip netns exec execs the command, so this is the
// program itself).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Log returns everything the process has written so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its exit error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error {
	if exited, _ := p.Exited(); exited {
		return fmt.Errorf("lab: signal %s: already exited", p.Name)
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits for the process to exit and returns its exit error (nil for
// status 0), or ctx's error.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("lab: wait for %s: %w", p.Name, ctx.Err())
	}
}

// Stop sends SIGTERM, waits up to grace for the exit, then kills the group.
// It returns the exit error of a process that exited on its own in time.
func (p *Proc) Stop(grace time.Duration) error {
	if exited, err := p.Exited(); exited {
		return err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
		p.kill()
		return fmt.Errorf("lab: %s did not exit within %v of SIGTERM; killed", p.Name, grace)
	}
}

// kill SIGKILLs the process group and waits for the exit.
func (p *Proc) kill() {
	p.once.Do(func() {
		if exited, _ := p.Exited(); !exited {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	})
}

// WaitLog waits until the log matches re, the process exits, or ctx ends.
// It returns the first match.
func (p *Proc) WaitLog(ctx context.Context, re *regexp.Regexp) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if m := re.FindString(p.Log()); m != "" {
			return m, nil
		}
		select {
		case <-p.done:
			if m := re.FindString(p.Log()); m != "" {
				return m, nil
			}
			return "", fmt.Errorf("lab: %s exited (%v) before its log matched %q; log:\n%s", p.Name, p.err, re, tail(p.Log(), 4000))
		case <-ctx.Done():
			return "", fmt.Errorf("lab: %s: log did not match %q: %w; log:\n%s", p.Name, re, ctx.Err(), tail(p.Log(), 4000))
		case <-tick.C:
		}
	}
}

// RSS is the process's resident set size in bytes (VmRSS).
func (p *Proc) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0, fmt.Errorf("lab: rss of %s: %w", p.Name, err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := strings.Fields(string(rest)) // "1234 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("lab: rss of %s: %w", p.Name, err)
				}
				return kb << 10, nil
			}
		}
	}
	return 0, fmt.Errorf("lab: rss of %s: no VmRSS in /proc/%d/status", p.Name, p.PID())
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
