package netstack

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingHandler counts Admit calls and admits nothing.
type countingHandler struct{ admits atomic.Int64 }

func (h *countingHandler) Admit(*Flow) Admission { h.admits.Add(1); return AdmitReset }
func (h *countingHandler) Serve(f *Flow, c, s Conn) {
	c.Close()
	s.Close()
}

// TestServeAcceptedRefusesDirectConnections: a connection to the
// transparent listener that no TPROXY rule sent (its local address is the
// listener's loopback address, not a server's) is reset and counted, never
// handed to the Handler; Shutdown closes the listener and ServeAccepted
// returns nil.
func TestServeAcceptedRefusesDirectConnections(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("IP_TRANSPARENT needs CAP_NET_ADMIN (run as root)")
	}
	h := &countingHandler{}
	l := newLab(t, labOptions{handler: h})
	defer l.close()
	ln, err := ListenTransparent(netip.MustParseAddrPort("127.0.0.1:0"), 0x4e59)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- l.net.ServeAccepted(ln) }()

	// The reset may come before Dial has seen the connection up.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a direct connection to the listener: %v, want a reset", err)
	}
	waitFor(t, "the accept error to be counted", func() bool { return l.net.Stats().AcceptErrors.Load() == 1 })
	if n := h.admits.Load(); n != 0 {
		t.Errorf("the Handler was asked to admit %d direct connections", n)
	}
	if err := l.net.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeAccepted after Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeAccepted still runs after Shutdown")
	}
}

// TestCloseSilently: a connection closed by closeSilently sends the peer
// neither FIN nor RST: the peer's read times out.
func TestCloseSilently(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("TCP_REPAIR needs CAP_NET_ADMIN (run as root)")
	}
	c, s := loopbackTCPPair(t)
	closeSilently(s)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("peer of a silently closed connection: read %v, want a timeout (no FIN, no RST)", err)
	}
}
