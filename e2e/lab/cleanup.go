package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// labNS matches the namespaces New creates, "nw-<6 hex>-cli|fw|app", and
// those NewGWLB creates: "nw-<6 hex>-ul" (the underlay), "-fw<N>" (the
// appliances), "-s<N>cli|s<N>app|s<N>gw" (the sites).
var labNS = regexp.MustCompile(`^` + Prefix + `[0-9a-f]{6}-(cli|fw|app|ul|fw[0-9]|s[0-9](cli|app|gw))$`)

// Cleanup removes the namespaces (with their interfaces, routes, firewall
// rules and processes) of every lab, such as those left by killed runs. It
// also removes labs in use by a concurrent run, so run it only when no test
// is running. It returns the names it removed.
func Cleanup(ctx context.Context) ([]string, error) {
	return cleanup(ctx, labNS.MatchString)
}

func cleanup(ctx context.Context, match func(name string) bool) ([]string, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: cleanup needs root")
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("lab: ip netns list: %w", err)
	}
	var removed []string
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line) // "name (id: 3)"
		if len(f) == 0 || !labNS.MatchString(f[0]) || !match(f[0]) {
			continue
		}
		killNamespacePIDs(ctx, f[0])
		if b, err := exec.CommandContext(ctx, "ip", "netns", "del", f[0]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("lab: ip netns del %s: %w: %s", f[0], err, b))
			continue
		}
		removed = append(removed, f[0])
	}
	return removed, errors.Join(errs...)
}

// killNamespacePIDs SIGKILLs every process whose network namespace is ns.
func killNamespacePIDs(ctx context.Context, ns string) {
	out, _ := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
