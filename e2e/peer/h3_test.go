package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/http2/hpack"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startH3 runs an HTTP/3 server on every address (port chosen by the
// kernel) for the test.
func startH3(t *testing.T) (*H3Server, *lockedBuffer, int) {
	t.Helper()
	cert, err := SelfSigned("allowed.example")
	if err != nil {
		t.Fatal(err)
	}
	log := &lockedBuffer{}
	s, err := ListenH3(H3Options{Addr: ":0", TLS: cert.ServerConfig(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, log, s.Addr().(*net.UDPAddr).Port
}

func h3Get(t *testing.T, o H3GetOptions) H3Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := H3Get(ctx, o)
	if err != nil {
		t.Fatalf("H3Get %+v: %v (result %+v)", o, err, r)
	}
	return r
}

// TestH3 gets / over both families, both QUIC versions and both key
// shares, and checks what the client and the server each saw.
func TestH3(t *testing.T) {
	s, log, port := startH3(t)
	for _, host := range []string{"127.0.0.1", "::1"} {
		for _, ver := range []string{"v1", "v2"} {
			for _, curve := range []string{"x25519", "mlkem"} {
				t.Run(host+"/"+ver+"/"+curve, func(t *testing.T) {
					ip := netip.MustParseAddr(host)
					before := s.Datagrams(ip)
					url := "https://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/"
					r := h3Get(t, H3GetOptions{URL: url, SNI: "allowed.example", Version: ver, Curve: curve, Src: host})
					if r.Status != 200 || r.Version != ver || r.ALPN != "h3" {
						t.Errorf("result %+v: want status 200, version %s, ALPN h3", r, ver)
					}
					if want := "remote=" + r.Local + "\n"; r.Body != want || r.Bytes != int64(len(want)) {
						t.Errorf("body %q (%d bytes), want %q", r.Body, r.Bytes, want)
					}
					// x25519: the ClientHello fits one Initial; X25519MLKEM768
					// adds 1,216 bytes of key share: two.
					wantHello := map[string]int{"x25519": 1, "mlkem": 2}[curve]
					if r.HelloPackets != wantHello {
						t.Errorf("the ClientHello (%d bytes) went out in %d Initial packets %v, want %d", r.HelloLen, r.HelloPackets, r.HelloPacketBytes, wantHello)
					}
					t.Logf("ClientHello %d bytes in %d Initial packets %v, CRYPTO frames %v", r.HelloLen, r.HelloPackets, r.HelloPacketBytes, r.HelloCrypto)
					var req, udp *H3Log
					for _, e := range ParseH3Logs(log.String()) {
						switch {
						case e.Proto == "h3" && e.Remote == r.Local:
							req = &e
						case e.Proto == "udp" && e.UDPFrom == r.Local:
							udp = &e
						}
					}
					if req == nil || req.SNI != "allowed.example" || req.Version != ver || req.H3 != "/" || req.ALPN != "h3" {
						t.Errorf("server log for %s: %+v; want h3 / with SNI allowed.example, version %s:\n%s", r.Local, req, ver, log)
					}
					if udp == nil {
						t.Errorf("no udp_from line for %s:\n%s", r.Local, log)
					}
					if got := s.Datagrams(ip) - before; got < uint64(wantHello)+1 {
						t.Errorf("the server counted %d datagrams from %s, want at least %d", got, ip, wantHello+1)
					}
				})
			}
		}
	}
}

// TestH3Bytes downloads 4 MiB and checks them.
func TestH3Bytes(t *testing.T) {
	_, log, port := startH3(t)
	const n = 4 << 20
	r := h3Get(t, H3GetOptions{URL: "https://127.0.0.1:" + strconv.Itoa(port) + "/bytes?n=" + strconv.Itoa(n), SNI: "allowed.example"})
	h := sha256.New()
	io.Copy(h, io.LimitReader(NewStream(n), n))
	if want := hex.EncodeToString(h.Sum(nil)); r.Bytes != n || r.SHA != want {
		t.Errorf("got %d bytes sha %s, want %d sha %s", r.Bytes, r.SHA, n, want)
	}
	var found bool
	for _, e := range ParseH3Logs(log.String()) {
		if e.Proto == "h3" && e.Path == "/bytes" && e.Sent == n && e.SentSHA == r.SHA {
			found = true
		}
	}
	if !found {
		t.Errorf("no server log line for /bytes with %d bytes:\n%s", n, log)
	}
}

// TestH3NoScramble: with quic-go's ClientHello scrambling off the hello
// still goes through (and the option is there for tests that need the
// CRYPTO frames in order).
func TestH3NoScramble(t *testing.T) {
	t.Setenv("QUIC_GO_DISABLE_CLIENTHELLO_SCRAMBLING", "")
	_, _, port := startH3(t)
	for _, curve := range []string{"x25519", "mlkem"} {
		r := h3Get(t, H3GetOptions{URL: "https://127.0.0.1:" + strconv.Itoa(port) + "/", SNI: "allowed.example", Curve: curve, NoScramble: true})
		if r.Status != 200 {
			t.Errorf("%s: %+v", curve, r)
		}
		// In order: each CRYPTO frame starts where the one before ended.
		var next int64
		for _, f := range r.HelloCrypto {
			if f[0] != next {
				t.Errorf("%s: CRYPTO frames %v out of order without scrambling", curve, r.HelloCrypto)
				break
			}
			next = f[0] + f[1]
		}
		t.Logf("%s unscrambled: %d packets, CRYPTO frames %v", curve, r.HelloPackets, r.HelloCrypto)
	}
}

// TestH3CountsEveryDatagram: a datagram that is no QUIC at all is counted
// and logged too.
func TestH3CountsEveryDatagram(t *testing.T) {
	s, log, port := startH3(t)
	c, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		if _, err := c.Write([]byte("not quic")); err != nil {
			t.Fatal(err)
		}
	}
	local := c.LocalAddr().String()
	deadline := time.Now().Add(5 * time.Second)
	for s.Datagrams(netip.MustParseAddr("127.0.0.1")) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.Datagrams(netip.MustParseAddr("127.0.0.1")); got != 3 {
		t.Fatalf("counted %d datagrams, want 3", got)
	}
	var lines int
	for _, e := range ParseH3Logs(log.String()) {
		if e.Proto == "udp" && e.UDPFrom == local {
			lines++
		}
	}
	if lines != 1 {
		t.Errorf("%d udp_from lines for %s, want 1:\n%s", lines, local, log)
	}
	if srcs := s.Sources(); len(srcs) != 1 || srcs[0].String() != local {
		t.Errorf("Sources() = %v, want [%s]", srcs, local)
	}
}

// TestQPACK decodes what encodeHeaders makes, and the forms other encoders
// use (Huffman strings, static name references, multi-byte integers).
func TestQPACK(t *testing.T) {
	in := []field{{":method", "GET"}, {":path", "/bytes?n=5"}, {":authority", "allowed.example:8443"},
		{"x-long", string(bytes.Repeat([]byte("a"), 300))}, {":status", "200"}}
	got, err := decodeHeaders(encodeHeaders(in))
	if err != nil || len(got) != len(in) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for i := range in {
		if got[i] != in[i] {
			t.Errorf("field %d: %v, want %v", i, got[i], in[i])
		}
	}
	// Literal with static name reference (:authority, index 0) and a
	// Huffman-coded value; literal name, Huffman-coded both.
	b := []byte{0, 0, 0x50}
	hv := hpack.AppendHuffmanString(nil, "allowed.example")
	b = append(appendPrefixInt(b, 0x80, 7, uint64(len(hv))), hv...)
	hn := hpack.AppendHuffmanString(nil, "user-agent")
	b = append(appendPrefixInt(b, 0x28, 3, uint64(len(hn))), hn...)
	hv = hpack.AppendHuffmanString(nil, "ngtcp2")
	b = append(appendPrefixInt(b, 0x80, 7, uint64(len(hv))), hv...)
	got, err = decodeHeaders(b)
	want := []field{{":authority", "allowed.example"}, {"user-agent", "ngtcp2"}}
	if err != nil || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("huffman: %v %v, want %v", got, err, want)
	}
	if _, err := decodeHeaders([]byte{1, 0, 0x80}); err == nil {
		t.Error("a dynamic table reference decoded")
	}
	if len(qpackStatic) != 99 || qpackStatic[98] != (field{"x-frame-options", "sameorigin"}) || qpackStatic[25] != (field{":status", "200"}) {
		t.Error("static table is off")
	}
}

// TestH3ConnsArePlain: quic-go must not see the sockets as
// OOBCapablePacketConn, or it reads them around the counting wrappers.
func TestH3ConnsArePlain(t *testing.T) {
	for _, pc := range []net.PacketConn{&countingPacketConn{}} {
		if _, ok := pc.(quic.OOBCapablePacketConn); ok {
			t.Errorf("%T is a quic.OOBCapablePacketConn", pc)
		}
	}
}
