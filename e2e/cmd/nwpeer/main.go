// Command nwpeer is the lab's traffic peer. `nwpeer serve` runs every test
// server (package peer) until SIGTERM, `nwpeer relay` the bench's reference
// relay (peer.ServeRelay) in the appliance, `nwpeer gwlb` the lab's Gateway
// Load Balancer (peer.ServeGWLB) in a GENEVE site, `nwpeer genevereflect`
// the bench's baseline GENEVE appliance; the other subcommands are clients
// that print one JSON result line and exit non-zero on failure. The e2e
// tests, the demo and the benchmark run it under `ip netns exec`.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/peer"
	"github.com/netward/netward/relay"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nwpeer serve|relay|gwlb|genevereflect|genevejunk|echo|xfer|dial|reuse|banner|conns|pingpong|churn|hold [flags]")
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
		tlsPort := fs.Int("tls-port", 0, "also serve HTTP over TLS on `port` (needs -tls-cert, -tls-key)")
		cert := fs.String("tls-cert", "", "TLS certificate `PEM` file")
		key := fs.String("tls-key", "", "TLS key `PEM` file")
		dnsPort := fs.Int("dns-port", 0, "also serve DNS (UDP and TCP) on `port`, e.g. 53")
		h3Port := fs.Int("h3-port", 0, "also serve HTTP/3 (QUIC v1, v2) on UDP `port` (needs -tls-cert, -tls-key)")
		run = func(ctx context.Context) (any, error) {
			opts := peer.ServerOptions{Log: os.Stdout, QuietHTTP: *quiet, DNSPort: *dnsPort, H3Port: *h3Port, Ready: func() {
				fmt.Fprintln(os.Stderr, "nwpeer: serving")
			}}
			if *tlsPort != 0 || *h3Port != 0 {
				cfg, err := peer.ServerTLS(*cert, *key)
				if err != nil {
					return nil, err
				}
				opts.TLSPort, opts.TLS = *tlsPort, cfg
			}
			return nil, peer.Serve(ctx, opts)
		}
	case "relay":
		port := fs.Int("port", 0, "TPROXY `port` to listen on, every address (the caller installs the TPROXY rules)")
		sockmap := fs.Bool("sockmap", false, "move the bytes with an eBPF sockmap (sk_skb verdict redirect) instead of splice")
		run = func(ctx context.Context) (any, error) {
			var sm *relay.SockMap
			if *sockmap {
				var err error
				if sm, err = relay.NewSockMap(1 << 16); err != nil {
					return nil, err
				}
				defer sm.Close()
			}
			return nil, peer.ServeRelayWith(ctx, *port, sm, func() {
				fmt.Fprintln(os.Stderr, "nwpeer: serving")
			})
		}
	case "gwlb":
		var o peer.GWLBOptions
		fs.StringVar(&o.TUN, "tun", "", "existing TUN `device` the site routes its traffic into")
		local := fs.String("local", "", "underlay `IP` to send and receive GENEVE on (port 6081)")
		targets := fs.String("targets", "", "comma-separated appliance underlay `IPs`")
		fs.IntVar(&o.HealthPort, "health-port", 9741, "targets' /healthz `port`")
		fs.DurationVar(&o.HealthInterval, "health-interval", 200*time.Millisecond, "health check `interval`")
		fs.Uint64Var(&o.EndpointID, "endpoint-id", 1, "GWLB endpoint `ID` (option type 1)")
		fs.Uint64Var(&o.AttachmentID, "attachment-id", 1, "attachment `ID` (option type 2)")
		fs.StringVar(&o.Stats, "stats", "127.0.0.1:9080", "`address` of the stats endpoint (GET /stats)")
		fs.BoolVar(&o.Rebalance, "rebalance", true, "move an unhealthy target's open flows to healthy ones (false: only new flows avoid it, GWLB's default)")
		run = func(ctx context.Context) (any, error) {
			a, err := netip.ParseAddr(*local)
			if err != nil {
				return nil, fmt.Errorf("-local: %w", err)
			}
			o.Local = a
			for _, s := range strings.Split(*targets, ",") {
				t, err := netip.ParseAddr(s)
				if err != nil {
					return nil, fmt.Errorf("-targets: %w", err)
				}
				o.Targets = append(o.Targets, t)
			}
			o.Log = os.Stderr
			o.Ready = func() { fmt.Fprintln(os.Stderr, "nwpeer: serving") }
			return nil, peer.ServeGWLB(ctx, o)
		}
	case "genevereflect":
		listen := fs.String("listen", "", "UDP `address` to receive GENEVE on, e.g. 203.0.113.10:6081")
		health := fs.String("health", ":9741", "`address` of GET /healthz")
		run = func(ctx context.Context) (any, error) {
			return nil, peer.ServeGeneveReflector(ctx, *listen, *health, func() { fmt.Fprintln(os.Stderr, "nwpeer: serving") })
		}
	case "genevejunk":
		kind := fs.String("kind", "", "truncated, critical_option, protocol, oversized, wrong_class or option_length")
		n := fs.Int("n", 1, "`datagrams` to send")
		run = func(ctx context.Context) (any, error) {
			to, err := netip.ParseAddrPort(*addr)
			if err != nil {
				return nil, fmt.Errorf("-addr: %w", err)
			}
			return map[string]any{"kind": *kind, "sent": *n}, peer.SendGeneveJunk(to, *kind, *n)
		}
	case "echo":
		listen := fs.String("listen", "", "`address` to listen on, e.g. :9100 (dual-stack)")
		run = func(ctx context.Context) (any, error) {
			return nil, peer.ServeEcho(ctx, *listen, func() {
				fmt.Fprintln(os.Stderr, "nwpeer: serving")
			})
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
	case "reuse":
		n := fs.Int("n", 20, "HTTP requests, each on a new connection from the same client port")
		run = func(ctx context.Context) (any, error) {
			r := peer.Reuse(ctx, *src, *addr, *n)
			if r.OK != *n {
				return r, fmt.Errorf("%d of %d requests failed: %v", *n-r.OK, *n, r.Errors)
			}
			return r, nil
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
	case "h3get":
		var o peer.H3GetOptions
		fs.StringVar(&o.URL, "url", "", "`URL` to GET over HTTP/3")
		fs.StringVar(&o.SNI, "sni", "", "TLS server `name`")
		fs.StringVar(&o.Version, "version", "v1", "QUIC `version`: v1 or v2")
		fs.StringVar(&o.Curve, "curve", "x25519", "key share: x25519 (one-packet ClientHello) or mlkem (two packets)")
		fs.BoolVar(&o.NoScramble, "no-scramble", false, "turn off quic-go's ClientHello scrambling")
		fs.Int64Var(&o.Bytes, "n", 0, "GET /bytes?n=`BYTES` instead of the URL's path, and check they all arrive")
		initSize := fs.Uint("initial-packet-size", 0, "quic-go's InitialPacketSize in `bytes` (0: 1280; at least 1200)")
		run = func(ctx context.Context) (any, error) {
			o.Src, o.InitialPacketSize = *src, uint16(*initSize)
			return peer.H3Get(ctx, o)
		}
	case "dnsload":
		name := fs.String("name", "bench.example", "query `name` (each worker asks wN.NAME)")
		workers := fs.Int("c", 8, "concurrent `workers` (UDP sockets, one query in flight each)")
		dur := fs.Duration("d", 5*time.Second, "measuring `time`")
		run = func(ctx context.Context) (any, error) {
			return peer.DNSLoad(ctx, *addr, *name, *workers, *dur)
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
		host := fs.String("host", "", "Host `header` (default: the URL's)")
		ca := fs.String("tls-ca", "", "https: trust only this certificate `PEM` file (default: the system roots)")
		sni := fs.String("sni", "", "https: TLS server `name` to send and verify (default: the URL's host)")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			o := peer.ChurnOptions{URL: *url, Workers: *workers, Duration: *dur, Host: *host}
			if *ca != "" {
				if o.TLS, err = peer.ClientTLS(*ca, *sni); err != nil {
					return nil, err
				}
			} else if *sni != "" {
				o.TLS = &tls.Config{ServerName: *sni}
			}
			return peer.ChurnWith(ctx, d, o), nil
		}
	case "hold":
		n := fs.Int("n", 1000, "idle `connections` to hold until SIGTERM")
		par := fs.Int("parallel", 1, "`dials` in flight at once")
		echo := fs.Bool("echo", false, "each connection echoes one byte before it counts as open, and again on every SIGUSR1")
		run = func(ctx context.Context) (any, error) {
			d, err := peer.Dialer(*src, 10*time.Second)
			if err != nil {
				return nil, err
			}
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			check := make(chan struct{})
			go func() {
				for range usr1 {
					check <- struct{}{}
				}
			}()
			o := peer.HoldOptions{Addr: *addr, N: *n, Parallel: *par, Echo: *echo, Check: check}
			return nil, peer.HoldWith(ctx, d, o, func(r peer.HoldReport) { out(r) })
		}
	default:
		fmt.Fprintf(os.Stderr, "nwpeer: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	fs.Parse(os.Args[2:])
	if os.Args[1] != "serve" && os.Args[1] != "relay" && os.Args[1] != "echo" && os.Args[1] != "hold" && os.Args[1] != "gwlb" && os.Args[1] != "genevereflect" {
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
