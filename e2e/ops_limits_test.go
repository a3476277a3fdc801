package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netward/netward/e2e/cmd/soak/opslab"
	"github.com/netward/netward/e2e/lab/labtest"
)

// The limits the limits test configures (config file, limits.*).
const (
	opsMaxFlows       = 20
	opsMaxHalfOpen    = 64
	opsInspectTimeout = time.Second
	opsConnectTimeout = 2 * time.Second
)

// TestOpsLimits: past limits.max_flows flows are refused and counted; a
// client that stalls in its ClientHello is refused after
// limits.inspect_timeout and counted; a SYN flood fills limits.max_half_open
// and the drops are counted; netward stays up with bounded memory through
// all of it and serves normal traffic afterwards. One lab, one netward.
func TestOpsLimits(t *testing.T) {
	labtest.RequireTools(t, "curl")
	e := newOpsEnv(t)
	cfg := filepath.Join(e.lab.Dir, "netward.yaml")
	conf := fmt.Sprintf("limits:\n  max_flows: %d\n  max_half_open: %d\n  inspect_timeout: %s\n  connect_timeout: %s\n",
		opsMaxFlows, opsMaxHalfOpen, opsInspectTimeout, opsConnectTimeout)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	nw := e.start(t, "--config", cfg)
	up := func(t *testing.T, when string) {
		t.Helper()
		if exited, err := nw.Exited(); exited {
			t.Fatalf("%s: netward exited: %v", when, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if code, body, err := e.metrics.Get(ctx, "/healthz"); err != nil || code != 200 {
			t.Fatalf("%s: /healthz %d %q %v", when, code, body, err)
		}
		e.inspected(t, nw, when)
	}

	t.Run("MaxFlowsBurst", func(t *testing.T) {
		// 50 connections at once: the SYNs arrive within milliseconds, before
		// any flow is being served.
		checkMaxFlows(t, e, 50, true)
		up(t, "after the max_flows burst")
	})
	t.Run("MaxFlowsOneByOne", func(t *testing.T) {
		checkMaxFlows(t, e, opsMaxFlows+5, false)
		up(t, "after max_flows one by one")
	})
	t.Run("HalfClientHello", func(t *testing.T) {
		checkHalfClientHello(t, e)
		up(t, "after stalled ClientHellos")
	})
	// The flood needs max_flows above max_half_open: with max_flows 20,
	// the flows limit (reserved at the SYN) answers most SYNs with a reset
	// before the handshake limit is reached.
	if err := nw.Terminate(10 * time.Second); err != nil {
		t.Fatalf("netward on SIGTERM: %v", err)
	}
	flood := filepath.Join(e.lab.Dir, "netward-flood.yaml")
	conf = fmt.Sprintf("limits:\n  max_flows: 100000\n  max_half_open: %d\n  connect_timeout: %s\n", opsMaxHalfOpen, opsConnectTimeout)
	if err := os.WriteFile(flood, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	nw = e.start(t, "--config", flood)
	t.Run("SYNFlood", func(t *testing.T) {
		checkSYNFlood(t, e)
		up(t, "after the SYN flood")
	})
}

// dialResult is one connection attempt of checkMaxFlows.
type dialResult struct {
	conn net.Conn
	err  error
}

// checkMaxFlows opens n connections (all at once, or one after another
// keeping each open) to the HTTP server and checks that exactly
// max_flows are served and the rest refused at the SYN and counted.
func checkMaxFlows(t *testing.T, e *opsEnv, n int, burst bool) {
	before := e.scrape(t)
	d := &opslab.Dialer{NS: opslab.NS{Name: e.lab.Client.Name}}
	d.Timeout = 5 * time.Second
	dst := e.appAddr(false, opsHTTPPort).String()
	res := make([]dialResult, n)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if burst {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				res[i].conn, res[i].err = d.DialContext(ctx, "tcp", dst)
			}()
		}
		close(start)
		wg.Wait()
	} else {
		for i := range res {
			res[i].conn, res[i].err = d.DialContext(ctx, "tcp", dst)
		}
	}
	var open []net.Conn
	refused := 0
	other := map[string]int{}
	for _, r := range res {
		switch {
		case r.err == nil:
			open = append(open, r.conn)
		case errors.Is(r.err, syscall.ECONNREFUSED):
			refused++
		default:
			other[r.err.Error()]++
		}
	}
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	t.Logf("%d connections (burst %v): %d open, %d refused, other %v", n, burst, len(open), refused, other)
	if len(open) != opsMaxFlows || refused != n-opsMaxFlows || len(other) > 0 {
		t.Errorf("%d connections with limits.max_flows %d: %d served, %d refused, other errors %v; want %d served and %d refused",
			n, opsMaxFlows, len(open), refused, other, opsMaxFlows, n-opsMaxFlows)
	}
	// Every flow that was let in works.
	for i, c := range open {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
		b, err := io.ReadAll(c)
		if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200") {
			t.Errorf("served connection %d: %q %v", i, b, err)
		}
	}
	after := e.scrape(t)
	got := opslab.Delta(before, after, "netward_limit_hits_total")
	if got["limit=max_flows"] != float64(refused) || len(got) != 1 {
		t.Errorf("netward_limit_hits_total changed by %v, want {limit=max_flows}=%d (one per refused connection)", opsSortedMap(got), refused)
	}
	if f := opslab.Delta(before, after, "netward_flows_total")[""]; f != float64(len(open)) {
		t.Errorf("netward_flows_total +%g, want +%d (the served flows; refused SYNs are not flows)", f, len(open))
	}
	for _, c := range open {
		c.Close()
	}
	// The closed flows leave, so the next subtest starts with room.
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := e.scrape(t).Value("netward_flows_active")
		if a == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("netward_flows_active %g 10 s after every connection closed", a)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clientHello returns the first TLS record a Go client sends for sni.
func clientHello(t *testing.T, sni string) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	go func() {
		tls.Client(c1, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		c1.Close()
	}()
	defer c2.Close()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// checkHalfClientHello: clients that send 100 bytes of a ClientHello and
// then nothing are refused (TLS access_denied alert) once
// limits.inspect_timeout has passed; nothing reaches the server; the
// timeouts and the invalid input are counted.
func checkHalfClientHello(t *testing.T, e *opsEnv) {
	const n = 5
	hello := clientHello(t, "app.example")
	if len(hello) <= 100 {
		t.Fatalf("ClientHello of %d bytes", len(hello))
	}
	before := e.scrape(t)
	d := &opslab.Dialer{NS: opslab.NS{Name: e.lab.Client.Name}}
	d.Timeout = 5 * time.Second
	dst := e.appAddr(false, opsTLSPort)
	type result struct {
		src     netip.AddrPort
		got     []byte
		err     error
		elapsed time.Duration
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", dst.String())
			if err != nil {
				r.err = err
				return
			}
			defer c.Close()
			r.src = netip.MustParseAddrPort(c.LocalAddr().String())
			start := time.Now()
			if _, err := c.Write(hello[:100]); err != nil {
				r.err = err
				return
			}
			c.SetReadDeadline(time.Now().Add(opsInspectTimeout + 5*time.Second))
			r.got, r.err = io.ReadAll(c)
			r.elapsed = time.Since(start)
		}()
	}
	wg.Wait()
	// A fatal access_denied alert: content type 21, any version, length 2,
	// level 2 (fatal), description 49.
	alert := regexp.MustCompile(`^\x15\x03[\x01-\x04]\x00\x02\x02\x31$`)
	for _, r := range results {
		if r.err != nil && !errors.Is(r.err, syscall.ECONNRESET) {
			t.Errorf("stalled client %s: %v", r.src, r.err)
			continue
		}
		if !alert.Match(r.got) {
			t.Errorf("stalled client %s got %q, want a fatal access_denied TLS alert", r.src, r.got)
		}
		if r.elapsed < opsInspectTimeout-50*time.Millisecond || r.elapsed > opsInspectTimeout+3*time.Second {
			t.Errorf("stalled client %s refused after %v, want about limits.inspect_timeout (%v)", r.src, r.elapsed, opsInspectTimeout)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rec, err := e.https.WaitConn(ctx, r.src)
		cancel()
		if err != nil {
			t.Errorf("no upstream connection from the client's address %s: %v", r.src, err)
		} else if rec.Recv != 0 {
			t.Errorf("stalled client %s: the server got %d bytes of the held ClientHello", r.src, rec.Recv)
		}
		// The flow's bytes are the client's: 100 sent, the alert received.
		opsCheckFlowEvents(t, e.nw.EventLog, opsWantFlow{src: r.src, dst: dst, app: "tls", verdict: "deny", rule: "(on_invalid)",
			alert: "blocked", signature: "(on_invalid)", toServer: 100, toClient: uint64(len(r.got)), state: "new", reason: "forced"})
	}
	after := e.scrape(t)
	opsCheckDeltas(t, before, after, map[string]map[string]float64{
		"netward_flows_total":            {"": n},
		"netward_verdicts_total":         {"action=deny,rule=(on_invalid)": n},
		"netward_inspect_timeouts_total": {"": n},
		"netward_inspect_errors_total":   {"kind=tls": n},
	})
	if t.Failed() {
		return
	}
	t.Logf("%d stalled ClientHellos refused after %v..%v", n, results[0].elapsed, results[n-1].elapsed)
}

// checkSYNFlood sends 20,000 SYNs in 2 s, from the client's addresses with
// random ports, to a port where the application drops SYNs: every admitted
// SYN holds a handshake slot until limits.connect_timeout, so
// limits.max_half_open fills and the rest are dropped and counted.
// netward's memory and goroutines must stay bounded.
func checkSYNFlood(t *testing.T, e *opsEnv) {
	const count, dur = 20000, 2 * time.Second
	rule := []string{"INPUT", "-p", "tcp", "--dport", strconv.Itoa(opsBlackholePort), "-j", "DROP"}
	labtest.Run(t, e.lab.App, append([]string{"iptables", "-w", "-A"}, rule...)...)
	defer labtest.Run(t, e.lab.App, append([]string{"iptables", "-w", "-D"}, rule...)...)

	rss := func() int64 {
		t.Helper()
		v, err := e.nw.RSS()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := e.scrape(t)
	rssBefore := rss()
	tunBefore := e.tunStats(t)
	srcs := append([]netip.Addr{e.lab.Topo.ClientV4.Addr()}, e.lab.Topo.ClientExtraV4...)
	dst := netip.AddrPortFrom(e.lab.Topo.AppV4.Addr(), opsBlackholePort)

	var peak int64
	var goroutinesPeak float64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if v, err := e.nw.RSS(); err == nil {
				peak = max(peak, v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if m, err := e.metrics.Scrape(ctx); err == nil {
				goroutinesPeak = max(goroutinesPeak, m.Value("go_goroutines"))
			}
			cancel()
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	sent, err := opslab.SYNFlood(opslab.NS{Name: e.lab.Client.Name}, srcs, dst, count, dur)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("SYN flood: %v after %d SYNs", err, sent)
	}
	// Let every admitted handshake time out (connect_timeout) and go.
	time.Sleep(opsConnectTimeout + time.Second)
	close(stop)
	<-sampled
	after := e.scrape(t)
	rssAfter := rss()
	tun := e.tunStats(t).Sub(tunBefore)
	if exited, err := e.nw.Exited(); exited {
		t.Fatalf("netward exited during the SYN flood: %v", err)
	}
	drops := opslab.Delta(before, after, "netward_limit_hits_total")["limit=max_half_open"]
	t.Logf("SYN flood: %d SYNs in %v to %s; TUN %v", sent, took.Round(time.Millisecond), dst, tun)
	t.Logf("netward RSS before %.1f MiB, peak %.1f MiB, after %.1f MiB; goroutines before %g, peak %g, after %g; max_half_open drops counted: %g",
		mib(rssBefore), mib(peak), mib(rssAfter), before.Value("go_goroutines"), goroutinesPeak, after.Value("go_goroutines"), drops)

	if tun.TxPackets < uint64(count)*9/10 {
		t.Errorf("only %d of the %d SYNs reached netward's TUN", tun.TxPackets, count)
	}
	// At most max_half_open handshakes are in progress at once, each for
	// connect_timeout: over the flood at most ~3 × max_half_open SYNs are
	// admitted; all others must be dropped, and counted.
	if minDrops := float64(count - 4*opsMaxHalfOpen); drops < minDrops {
		t.Errorf("netward_limit_hits_total{limit=\"max_half_open\"} rose by %g during a flood of %d SYNs with max_half_open %d; want ≥ %g (the dropped SYNs)",
			drops, count, opsMaxHalfOpen, minDrops)
	}
	// Bounded memory: max_half_open endpoints and goroutines, not one per SYN.
	const rssSlack = 64 << 20
	if peak > rssBefore+rssSlack || rssAfter > rssBefore+rssSlack {
		t.Errorf("netward RSS grew from %.1f MiB to a peak of %.1f MiB (after %.1f MiB) during the flood; want < +%d MiB",
			mib(rssBefore), mib(peak), mib(rssAfter), rssSlack>>20)
	}
	if g := after.Value("go_goroutines"); g > before.Value("go_goroutines")+10 {
		t.Errorf("goroutines %g after the flood settled, %g before", g, before.Value("go_goroutines"))
	}
	if goroutinesPeak > before.Value("go_goroutines")+float64(4*opsMaxHalfOpen)+50 {
		t.Errorf("goroutines peaked at %g during the flood (max_half_open %d): not bounded by the limit", goroutinesPeak, opsMaxHalfOpen)
	}
	if a := after.Value("netward_flows_active"); a != 0 {
		t.Errorf("netward_flows_active %g after the flood, want 0", a)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
