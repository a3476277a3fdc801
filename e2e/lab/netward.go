package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// NetwardOptions configure StartNetward.
type NetwardOptions struct {
	// Binary is the netward executable (see Build).
	Binary string
	// Interfaces to steer (--interfaces); nil passes no flag: netward's
	// default, every interface but loopback and the TUN.
	Interfaces []string
	// TUN is the TUN device's name; "" means netward0.
	TUN string
	// Args are more flags for `netward run` (e.g. "--offload=false",
	// "--rules", path). They come last, so they override the lab's.
	Args []string
	// ReadyTimeout bounds the wait for readiness; 0 means 20 s.
	ReadyTimeout time.Duration
}

// Netward is a `netward run` process in the appliance namespace.
type Netward struct {
	*Proc
	TUN         string
	EventLog    string // EVE JSON events (--log)
	AdminSocket string
	lab         *Lab
}

// DefaultTUN is the TUN name netward uses unless told otherwise.
const DefaultTUN = "netward0"

// ExtraArgsEnv names an environment variable whose flags are added to every
// `netward run` a lab starts, ahead of the test's own: the whole suite can
// run against a non-default configuration, e.g.
// NETWARD_E2E_ARGS="--upstream gvisor" go test ./e2e.
const ExtraArgsEnv = "NETWARD_E2E_ARGS"

// NetwardArgs returns the `netward run` command line StartNetward uses,
// without the binary. It gives each lab its own admin socket and event log.
func (l *Lab) NetwardArgs(opts NetwardOptions) []string {
	tun := opts.TUN
	if tun == "" {
		tun = DefaultTUN
	}
	ifs := opts.Interfaces
	args := []string{"run",
		"--tun", tun,
		"--admin-socket", filepath.Join(l.Dir, "netward-admin.sock"),
		"--log", filepath.Join(l.Dir, "eve.json"),
		"--log-level", "debug",
		"--log-format", "json", // so Flows can parse the per-flow lines
	}
	if len(ifs) > 0 {
		args = append(args, "--interfaces", strings.Join(ifs, ","))
	}
	args = append(args, strings.Fields(os.Getenv(ExtraArgsEnv))...)
	return append(args, opts.Args...)
}

// StartNetward starts `netward run` in the appliance namespace and waits
// until it is ready (see WaitReady). On a readiness failure the process is
// stopped and the error carries its log.
func (l *Lab) StartNetward(ctx context.Context, opts NetwardOptions) (*Netward, error) {
	if opts.Binary == "" {
		return nil, fmt.Errorf("lab: StartNetward: no Binary")
	}
	args := l.NetwardArgs(opts)
	p, err := l.Appliance.Start("netward", append([]string{opts.Binary}, args...)...)
	if err != nil {
		return nil, err
	}
	w := &Netward{Proc: p, TUN: flagValue(args, "--tun"), EventLog: flagValue(args, "--log"),
		AdminSocket: flagValue(args, "--admin-socket"), lab: l}
	timeout := opts.ReadyTimeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := w.WaitReady(rctx); err != nil {
		p.kill()
		return nil, err
	}
	return w, nil
}

// flagValue returns the value of the last "--name value" in args.
func flagValue(args []string, name string) string {
	v := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			v = args[i+1]
		}
	}
	return v
}

// WaitReady waits until netward's datapath is in place in the appliance
// namespace: the TUN is up, an ip rule sends marked packets to a table
// whose route leads into the TUN, and the mangle table has netward's
// chain. It fails early if the process exits.
func (w *Netward) WaitReady(ctx context.Context) error {
	var last string
	for {
		ok, why, err := w.lab.netwardReady(ctx, w.TUN)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		last = why
		select {
		case <-w.Done():
			return fmt.Errorf("lab: netward exited (%v) before it was ready (%s); log:\n%s", w.err, last, tail(w.Log(), 4000))
		case <-ctx.Done():
			return fmt.Errorf("lab: netward not ready: %s: %w; log:\n%s", last, ctx.Err(), tail(w.Log(), 4000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// netwardReady checks the appliance namespace once; why says what is
// missing.
func (l *Lab) netwardReady(ctx context.Context, tun string) (ok bool, why string, err error) {
	ns := l.Appliance
	up, err := ns.Run(ctx, "ip", "-o", "link", "show", "dev", tun)
	if err != nil {
		return false, "no TUN " + tun, nil
	}
	if !strings.Contains(up, ",UP") && !strings.Contains(up, "<UP") {
		return false, "TUN " + tun + " is not up", nil
	}
	rules, err := ns.Run(ctx, "ip", "-4", "rule", "show")
	if err != nil {
		return false, "", err
	}
	table := ""
	for _, line := range strings.Split(rules, "\n") {
		if strings.Contains(line, "fwmark") {
			if _, t, ok := strings.Cut(line, "lookup "); ok {
				table = strings.Fields(t)[0]
			}
		}
	}
	if table == "" {
		return false, "no fwmark ip rule", nil
	}
	routes, err := ns.Run(ctx, "ip", "-4", "route", "show", "table", table)
	if err != nil || !strings.Contains(routes, "dev "+tun) {
		return false, "table " + table + " has no route into " + tun, nil
	}
	mangle, err := ns.Run(ctx, "iptables-save", "-t", "mangle")
	if err != nil {
		return false, "", err
	}
	if !strings.Contains(mangle, "NETWARD") {
		return false, "no NETWARD chain in mangle", nil
	}
	return true, "", nil
}

// TUNStats reads the TUN's counters. Every flow that crosses netward moves
// them; a flow that does not (kernel forwarding took over) does not.
func (w *Netward) TUNStats(ctx context.Context) (LinkStats, error) {
	return w.lab.Appliance.LinkStats(ctx, w.TUN)
}

// Terminate sends SIGTERM and waits up to grace for a clean exit; the
// error is the exit status (nil for 0).
func (w *Netward) Terminate(grace time.Duration) error {
	if err := w.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := w.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			w.kill()
		}
		return err
	}
	return nil
}

// Kill sends SIGKILL (no chance to clean up) and waits for the exit.
func (w *Netward) Kill() { w.kill() }

// FlowLog is one of netward's per-flow log lines ("msg":"flow"), written
// when a flow ends.
type FlowLog struct {
	ID        uint64 `json:"flow_id"`
	Src       string `json:"src"`
	Dst       string `json:"dst"`
	BytesUp   int64  `json:"bytes_up"`
	BytesDown int64  `json:"bytes_down"`
	Duration  any    `json:"duration"` // slog writes nanoseconds in JSON
	End       string `json:"end"`
	Error     string `json:"error"`
	Line      string `json:"-"` // the raw line
}

// Flows returns the per-flow lines netward has logged so far.
func (w *Netward) Flows() []FlowLog {
	var out []FlowLog
	for _, line := range strings.Split(w.Log(), "\n") {
		if !strings.Contains(line, `"msg":"flow"`) {
			continue
		}
		var f FlowLog
		if json.Unmarshal([]byte(line), &f) == nil {
			f.Line = line
			out = append(out, f)
		}
	}
	return out
}

// WaitFlows waits until at least n flow lines satisfy match (nil: any), or
// ctx ends, and returns the matching lines.
func (w *Netward) WaitFlows(ctx context.Context, n int, match func(FlowLog) bool) ([]FlowLog, error) {
	for {
		var got []FlowLog
		for _, f := range w.Flows() {
			if match == nil || match(f) {
				got = append(got, f)
			}
		}
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("lab: %d of %d flow lines: %w", len(got), n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
