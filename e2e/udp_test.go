package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
	"github.com/netward/netward/e2e/peer"
)

// TestUDP is issue 17's acceptance: QUIC (HTTP/3) and DNS judged by the
// same rule file as TCP, with real clients (quic-go, ngtcp2's gtlsclient,
// dig) against real servers in the application namespace (quic-go's
// HTTP/3 server and the lab's DNS server, which log every datagram
// source and query they get). Each refusal is checked where it matters:
// the server got nothing of a denied flow.
func TestUDP(t *testing.T) {
	u := newUDPLab(t)
	t.Run("DNS", u.testDNS)
	t.Run("DNSOverTCP", u.testDNSOverTCP)
	t.Run("QUIC", u.testQUIC)
	t.Run("GTLSClient", u.testGTLSClient)
	t.Run("Bypass", u.testBypass)
	t.Run("BadInput", u.testBadInput)
	t.Run("Events", u.testEvents)
}

const udpRules = `default: allow
on_invalid: deny
rules:
  - name: no-evil-quic
    action: deny
    sni: .evil.example
  - name: drop-silent-quic
    action: drop
    proto: udp
    sni: silent.example
  - name: no-ads
    action: deny
    dns: .ads.example
  - name: refuse-dns
    action: deny
    dns: refused.example
    dns_answer: refused
  - name: nodata-dns
    action: deny
    dns: nodata.example
    dns_answer: nodata
  - name: drop-dns
    action: drop
    dns: silent.example
  - name: deny-udp-port
    action: deny
    proto: udp
    dst_port: 9999
`

const (
	udpH3Port  = 8443
	udpDNSPort = 53
)

type udpLab struct {
	lab *lab.Lab
	app *lab.Proc
	nw  *lab.Netward
}

func newUDPLab(t *testing.T) *udpLab {
	labtest.RequireTools(t, "dig", "iperf3", "conntrack")
	l := labtest.New(t, lab.Options{RPFilter: 1})
	cert, key, err := peer.WriteCert(l.Dir, "allowed.example")
	if err != nil {
		t.Fatal(err)
	}
	u := &udpLab{lab: l}
	u.app = labtest.StartPeer(t, l.App, "-tls-cert", cert, "-tls-key", key,
		"-h3-port", fmt.Sprint(udpH3Port), "-dns-port", fmt.Sprint(udpDNSPort))
	rules := filepath.Join(l.Dir, "udp-rules.yaml")
	if err := os.WriteFile(rules, []byte(udpRules), 0o644); err != nil {
		t.Fatal(err)
	}
	u.nw = labtest.StartNetward(t, l, lab.NetwardOptions{Args: []string{"--rules", rules, "--udp-idle-timeout", "5s"}})
	return u
}

func (u *udpLab) appAddr(fam string) netip.Addr {
	if fam == "6" {
		return u.lab.Topo.AppV6.Addr()
	}
	return u.lab.Topo.AppV4.Addr()
}

func (u *udpLab) clientAddr(fam string) netip.Addr {
	if fam == "6" {
		return u.lab.Topo.ClientV6.Addr()
	}
	return u.lab.Topo.ClientV4.Addr()
}

// crossingUDP runs f and fails unless netward's TUN carried at least min
// packets meanwhile: proof the datagrams were steered, not forwarded.
func (u *udpLab) crossingUDP(t *testing.T, min uint64, f func()) {
	t.Helper()
	ctx := context.Background()
	before, err := u.nw.TUNStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f()
	after, err := u.nw.TUNStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(before); d.TxPackets < min {
		t.Fatalf("only %d packets went into netward's TUN (want ≥ %d): the datagrams bypassed netward", d.TxPackets, min)
	}
}

// serverLines returns the JSON lines of the application's server log that
// have key.
func (u *udpLab) serverLines(key string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(u.app.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			if _, ok := m[key]; ok {
				out = append(out, m)
			}
		}
	}
	return out
}

func (u *udpLab) dig(t *testing.T, fam string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	all := append([]string{"dig", "@" + u.appAddr(fam).String(), "-p", fmt.Sprint(udpDNSPort), "+time=2", "+tries=1"}, args...)
	out, _ := u.lab.Client.Run(ctx, all...) // a timeout is an answer here
	return out
}

func (u *udpLab) testDNS(t *testing.T) {
	for _, fam := range []string{"4", "6"} {
		t.Run("IPv"+fam, func(t *testing.T) {
			u.crossingUDP(t, 1, func() {
				if out := u.dig(t, fam, "www.allowed.example", "A", "+short"); strings.TrimSpace(out) != "192.0.2.53" {
					t.Fatalf("allowed name: dig +short = %q, want 192.0.2.53", out)
				}
			})
			// The server saw the query from the client's own address.
			found := false
			for _, m := range u.serverLines("dns") {
				if strings.EqualFold(fmt.Sprint(m["dns"]), "www.allowed.example") &&
					strings.HasPrefix(fmt.Sprint(m["remote"]), strings.Trim(netip.AddrPortFrom(u.clientAddr(fam), 0).String(), ":0")) {
					found = true
				}
			}
			if !found {
				t.Fatalf("the DNS server did not see www.allowed.example from %s; its log:\n%s", u.clientAddr(fam), u.app.Log())
			}
			for _, c := range []struct{ name, status string }{
				{"x.ads.example", "NXDOMAIN"},
				{"refused.example", "REFUSED"},
				{"nodata.example", "NOERROR"},
			} {
				out := u.dig(t, fam, c.name, "A")
				if !strings.Contains(out, "status: "+c.status) || strings.Contains(out, "192.0.2.53") {
					t.Fatalf("%s: want status %s and no answer; dig said:\n%s", c.name, c.status, out)
				}
			}
			if out := u.dig(t, fam, "silent.example", "A"); !strings.Contains(out, "timed out") && !strings.Contains(out, "no servers could be reached") {
				t.Fatalf("dropped name: want a timeout; dig said:\n%s", out)
			}
			for _, m := range u.serverLines("dns") {
				n := strings.ToLower(fmt.Sprint(m["dns"]))
				if strings.HasSuffix(n, "ads.example") || n == "refused.example" || n == "nodata.example" || n == "silent.example" {
					t.Fatalf("a denied query reached the server: %v", m)
				}
			}
		})
	}
}

func (u *udpLab) testDNSOverTCP(t *testing.T) {
	if out := u.dig(t, "4", "+tcp", "tcp.allowed.example", "A", "+short"); strings.TrimSpace(out) != "192.0.2.53" {
		t.Fatalf("allowed over TCP: %q", out)
	}
	out := u.dig(t, "4", "+tcp", "y.ads.example", "A")
	if !strings.Contains(out, "status: NXDOMAIN") {
		t.Fatalf("denied over TCP: want NXDOMAIN; dig said:\n%s", out)
	}
	for _, m := range u.serverLines("dns") {
		if strings.HasSuffix(strings.ToLower(fmt.Sprint(m["dns"])), "y.ads.example") {
			t.Fatalf("a denied TCP query reached the server: %v", m)
		}
	}
}

// h3Result is nwpeer h3get's result line.
type h3Result struct {
	Status int    `json:"status"`
	Bytes  int64  `json:"bytes"`
	Local  string `json:"local"`
	Err    string `json:"error"`
}

func (u *udpLab) h3get(t *testing.T, fam, sni, version, curve string) (h3Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := "https://" + netip.AddrPortFrom(u.appAddr(fam), udpH3Port).String() + "/"
	out, err := u.lab.Client.Run(ctx, labtest.Peer(t), "h3get", "-url", url, "-sni", sni,
		"-version", version, "-curve", curve, "-timeout", "3s")
	var r h3Result
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(lastLine(out))), &r); jerr != nil && err == nil {
		err = jerr
	}
	return r, err
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// source is the client's address with the port of local (h3get's
// socket, bound to the unspecified address): what the server sees when
// netward keeps the client's address.
func (u *udpLab) source(fam, local string) string {
	ap, err := netip.ParseAddrPort(local)
	if err != nil {
		return local
	}
	return netip.AddrPortFrom(u.clientAddr(fam), ap.Port()).String()
}

// sawSource reports whether the HTTP/3 server got any datagram from src.
func (u *udpLab) sawSource(src string) bool {
	for _, m := range u.serverLines("udp_from") {
		if fmt.Sprint(m["udp_from"]) == src {
			return true
		}
	}
	return false
}

func (u *udpLab) testQUIC(t *testing.T) {
	for _, fam := range []string{"4", "6"} {
		for _, version := range []string{"v1", "v2"} {
			for _, curve := range []string{"x25519", "mlkem"} {
				t.Run(fmt.Sprintf("IPv%s/%s/%s", fam, version, curve), func(t *testing.T) {
					var r h3Result
					var err error
					u.crossingUDP(t, 2, func() { r, err = u.h3get(t, fam, "allowed.example", version, curve) })
					if err != nil || r.Status != 200 {
						t.Fatalf("allowed: %+v %v", r, err)
					}
					// The server saw the client's own address and port.
					from := u.source(fam, r.Local)
					seen := false
					for _, l := range peer.ParseH3Logs(u.app.Log()) {
						if l.Proto == "h3" && l.Remote == from && l.SNI == "allowed.example" {
							seen = true
						}
					}
					if !seen {
						t.Fatalf("the HTTP/3 server saw no request from %s; its log:\n%s", from, u.app.Log())
					}
					// Denied by SNI: the request fails and the server got
					// no datagram of the flow.
					r, err = u.h3get(t, fam, "www.evil.example", version, curve)
					if err == nil && r.Status == 200 {
						t.Fatalf("denied SNI got an answer: %+v", r)
					}
					if r.Local == "" {
						t.Fatalf("h3get reported no local address: %+v", r)
					}
					if from := u.source(fam, r.Local); u.sawSource(from) {
						t.Fatalf("the server got a datagram of the denied flow from %s", from)
					}
				})
			}
		}
	}
	t.Run("Drop", func(t *testing.T) {
		r, err := u.h3get(t, "4", "silent.example", "v1", "x25519")
		if err == nil && r.Status == 200 {
			t.Fatalf("dropped SNI got an answer: %+v", r)
		}
		if r.Local == "" || u.sawSource(u.source("4", r.Local)) {
			t.Fatalf("the server got a datagram of the dropped flow (or no local address: %+v)", r)
		}
	})
}

func (u *udpLab) testGTLSClient(t *testing.T) {
	labtest.RequireTools(t, "gtlsclient")
	ok, out := runGTLSClient(t, u.lab.Client, u.appAddr("4").String(), udpH3Port, "allowed.example")
	if !ok {
		t.Fatalf("gtlsclient to an allowed name failed:\n%s", out)
	}
	if ok, out := runGTLSClient(t, u.lab.Client, u.appAddr("4").String(), udpH3Port, "evil.example"); ok {
		t.Fatalf("gtlsclient to a denied name succeeded:\n%s", out)
	}
}

// testBypass: after the verdict, an allowed flow's datagrams go by the
// kernel (the conntrack mark), not through netward's TUN.
func (u *udpLab) testBypass(t *testing.T) {
	ctx := context.Background()
	perf, err := u.lab.App.Start("iperf3-udp", "iperf3", "-s", "-p", "5202")
	if err != nil {
		t.Fatal(err)
	}
	defer perf.Stop(2 * time.Second)
	time.Sleep(300 * time.Millisecond)
	before, _ := u.nw.TUNStats(ctx)
	out := labtest.Run(t, u.lab.Client, "iperf3", "-c", u.appAddr("4").String(), "-p", "5202", "-u", "-b", "50M", "-t", "2", "-J")
	after, _ := u.nw.TUNStats(ctx)
	var res struct {
		End struct {
			Sum struct {
				Packets int64 `json:"packets"`
			} `json:"sum"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.End.Sum.Packets < 1000 {
		t.Fatalf("iperf3 -u: %v, %d packets", err, res.End.Sum.Packets)
	}
	if d := after.Sub(before).TxPackets; d == 0 || d > uint64(res.End.Sum.Packets)/10 {
		t.Fatalf("%d of %d datagrams crossed netward's TUN: want at least the first and not the rest (kernel bypass)", d, res.End.Sum.Packets)
	}
	marks := labtest.Run(t, u.lab.Appliance, "conntrack", "-L", "-p", "udp", "--dport", "5202")
	if !strings.Contains(marks, "mark=20058") { // 0x4e5a
		t.Fatalf("the allowed UDP flow's conntrack entry has no bypass mark:\n%s", marks)
	}
}

// testBadInput sends datagrams that are not what their port promises:
// netward refuses them (on_invalid: deny) and keeps serving.
func (u *udpLab) testBadInput(t *testing.T) {
	dst := u.appAddr("4").String()
	sends := []string{
		// random bytes to 443: plain UDP, judged by addresses: allowed
		`printf 'hello' > /dev/udp/` + dst + `/443`,
		// a truncated Initial (long header, v1, cut after the DCID)
		`printf '\xc0\x00\x00\x00\x01\x08\x01\x02\x03\x04' > /dev/udp/` + dst + `/8443`,
		// an Initial that does not decrypt
		`head -c 1200 /dev/zero | tr '\0' 'A' | (printf '\xc0\x00\x00\x00\x01\x08\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x44\x9e'; cat) > /dev/udp/` + dst + `/8443`,
		// a denied UDP port
		`printf 'x' > /dev/udp/` + dst + `/9999`,
	}
	for _, s := range sends {
		// A refusal may come back as ICMP port unreachable, which fails
		// the sender's next write: that is netward's answer, not an error.
		labtest.Run(t, u.lab.Client, "bash", "-c", s+" 2>/dev/null || true")
	}
	// netward is still serving: an allowed request goes through.
	if r, err := u.h3get(t, "4", "allowed.example", "v1", "x25519"); err != nil || r.Status != 200 {
		t.Fatalf("after bad input: %+v %v", r, err)
	}
	if exited, _ := u.nw.Exited(); exited {
		t.Fatal("netward exited")
	}
	m := labtest.Run(t, u.lab.Appliance, "curl", "-s", "--unix-socket", u.nw.AdminSocket, "http://netward/metrics")
	for _, want := range []string{`netward_udp_datagrams_total{result="invalid"}`, `netward_udp_datagrams_total{result="refused"}`, `netward_udp_bypass_total{result="ok"}`} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
}

// testEvents checks the EVE quic and dns events.
func (u *udpLab) testEvents(t *testing.T) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(u.nw.EventLog)
		s := string(data)
		var missing []string
		for _, want := range []string{`"event_type":"quic"`, `"sni":"www.evil.example"`, `"event_type":"dns"`,
			`"rrname":"x.ads.example"`, `"proto":"UDP"`, `"signature":"no-evil-quic"`} {
			if !strings.Contains(s, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("EVE log lacks %v; tail:\n%s", missing, tailLines(s, 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var gtlsBody = regexp.MustCompile(`\[:status: 200\][\s\S]*x-remote-addr: 198\.51\.100\.2:`)

// runGTLSClient runs ngtcp2's gtlsclient (Debian's ngtcp2-client) from ns
// against addr:port with sni; ok is whether it got an HTTP/3 response.
func runGTLSClient(t *testing.T, ns *lab.NS, addr string, port int, sni string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// gtlsclient 0.12 takes its SNI from the host argument (an IP literal
	// gives "localhost"): name the server in the namespace's own hosts
	// file, which ip netns exec mounts over /etc/hosts.
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(addr+" "+sni+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(ctx, "gtlsclient", "--exit-on-first-stream-close", "--timeout=3s", "--sni="+sni,
		sni, fmt.Sprint(port), fmt.Sprintf("https://%s:%d/", sni, port))
	b, err := cmd.CombinedOutput()
	out := string(b)
	// A 200 whose x-remote-addr is the client's own address (kept
	// through netward).
	_ = err // gtlsclient's exit status does not tell an HTTP answer from none
	return gtlsBody.MatchString(out), out
}
