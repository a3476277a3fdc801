// Command soak runs netward for a long time under mixed allowed and denied
// traffic at high connection churn (HTTP allowed, HTTP denied by Host, TLS
// allowed, TLS denied by SNI; 32 workers, a new connection per request) on
// a namespace lab, samples netward's goroutines and RSS before, during and
// after, and fails if they have not come back near the baseline once the
// traffic stops. It prints a summary table. Run it as root: `make soak`
// (SOAK_DURATION, default 10m). The e2e test TestSoakShort runs the same
// code for 2 minutes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/cmd/soak/opslab"
	"github.com/netward/netward/e2e/lab"
)

func main() {
	netward := flag.String("netward", "", "netward `binary` (default: build ./cmd/netward)")
	dur := flag.Duration("d", 10*time.Minute, "`duration` of the traffic")
	workers := flag.Int("c", 32, "concurrent `workers` (one connection at a time each)")
	settle := flag.Duration("settle", 30*time.Second, "`time` netward gets to return to its baseline after the traffic")
	every := flag.Duration("every", 0, "sampling `interval` (default: duration/12, at least 5s)")
	keep := flag.Bool("keep", false, "keep the lab's log directory")
	args := flag.String("args", "", "more `flags` for netward run, e.g. \"--upstream gvisor\"")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, *netward, *keep, opslab.SoakOptions{Duration: *dur, Workers: *workers, Settle: *settle, Every: *every, Out: os.Stdout, Args: strings.Fields(*args)})
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "soak: interrupted")
		os.Exit(1)
	case err != nil:
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(1)
	case !res.Passed():
		os.Exit(1)
	}
}

func run(ctx context.Context, netward string, keep bool, opts opslab.SoakOptions) (*opslab.SoakResult, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, iptables): run `sudo make soak`")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed", tool)
		}
	}
	if netward == "" {
		bin, err := os.MkdirTemp("", "netward-soak-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(bin)
		fmt.Println("building netward…")
		if netward, err = lab.Build(ctx, lab.Module+"/cmd/netward", bin); err != nil {
			return nil, err
		}
	}
	opts.Netward = netward
	l, err := lab.New(lab.Options{KeepDir: keep})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			fmt.Fprintf(os.Stderr, "soak: lab teardown: %v\n", cerr)
		}
		if keep {
			fmt.Printf("lab logs kept in %s\n", l.Dir)
		}
	}()
	fmt.Printf("lab %s: client %s, appliance %s, application %s\n", l.ID, l.Client.Name, l.Appliance.Name, l.App.Name)
	return opslab.Soak(ctx, l, opts)
}
