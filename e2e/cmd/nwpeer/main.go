// Command nwpeer is the lab's traffic peer. `nwpeer serve` runs every test
// server (package peer) until SIGTERM; the other subcommands are clients
// that print one JSON result line and exit non-zero on failure. The e2e
// tests, the demo and the benchmark run it under `ip netns exec`.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/peer"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nwpeer serve|xfer|dial|banner|conns|pingpong|churn|hold [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "", "server `host:port`")
	src := fs.String("src", "", "source `IP` to bind")
	timeout := fs.Duration("timeout", 60*time.Second, "overall time limit")
	var run func(ctx context.Context) (any, error)
	switch os.Args[1] {
	case "serve":
		quiet := fs.Bool("quiet-http", false, "do not log HTTP requests")
		run = func(ctx context.Context) (any, error) {
			return nil, peer.Serve(ctx, peer.ServerOptions{Log: os.Stdout, QuietHTTP: *quiet, Ready: func() {
				fmt.Fprintln(os.Stderr, "nwpeer: serving")
			}})
		}
	case "xfer":
		send := fs.Int64("send", 0, "`bytes` to send")
		recv := fs.Int64("recv", 0, "`bytes` to ask back")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			return peer.Xfer(ctx, d, *addr, *send, *recv)
		}
	case "dial":
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, *timeout)
			if err != nil {
				return nil, err
			}
			return peer.Dial(ctx, d, *addr), nil
		}
	case "banner":
		wait := fs.Duration("wait", 3*time.Second, "how long to wait for the banner")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			return peer.ReadBanner(ctx, d, *addr, *wait)
		}
	case "conns":
		n := fs.Int("n", 1000, "concurrent `connections`")
		size := fs.Int("size", 4096, "`bytes` each connection echoes")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 30*time.Second)
			if err != nil {
				return nil, err
			}
			r := peer.Conns(ctx, d, *addr, *n, *size)
			if r.Failed > 0 {
				return r, fmt.Errorf("%d of %d connections failed", r.Failed, *n)
			}
			return r, nil
		}
	case "pingpong":
		size := fs.Int("size", 64, "message `bytes`")
		dur := fs.Duration("d", 5*time.Second, "measuring `time`")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			return peer.PingPong(ctx, d, *addr, *size, *dur)
		}
	case "churn":
		url := fs.String("url", "", "`URL` to GET")
		workers := fs.Int("c", 50, "concurrent `workers`")
		dur := fs.Duration("d", 10*time.Second, "`time` to run")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			return peer.Churn(ctx, d, *url, *workers, *dur), nil
		}
	case "hold":
		n := fs.Int("n", 1000, "idle `connections` to hold until SIGTERM")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			err = peer.Hold(ctx, d, *addr, *n, func(open int) {
				out(map[string]int{"ready": open})
			})
			return nil, err
		}
	default:
		fmt.Fprintf(os.Stderr, "nwpeer: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	fs.Parse(os.Args[2:])
	if os.Args[1] != "serve" && os.Args[1] != "hold" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	res, err := run(ctx)
	if res != nil {
		out(res)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nwpeer %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func out(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}
