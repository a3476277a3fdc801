package netstack

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestSYNReplayCapture: a SYN's copy is kept by its 4-tuple with its TCP
// checksum completed (a SYN the kernel left to checksum offload carries
// only the pseudo-header's sum), in both families; a SYN too long for a
// copy, or an IPv6 one with an extension header, is not kept.
func TestSYNReplayCapture(t *testing.T) {
	for _, c := range []struct {
		proto    tcpip.NetworkProtocolNumber
		cli, srv netip.AddrPort
	}{
		{header.IPv4ProtocolNumber, cli4, srv4},
		{header.IPv6ProtocolNumber, cli6, srv6},
	} {
		want := tcpPacket(c.cli, c.srv, header.TCPFlagSyn, nil)
		partial := bytes.Clone(want)
		off := len(partial) - header.TCPMinimumSize
		header.TCP(partial[off:]).SetChecksum(0x1234) // as if left to offload
		r := newSYNReplay()
		if !r.capture(c.proto, partial) {
			t.Fatalf("%v: capture refused a plain SYN", c.cli)
		}
		sh := r.shard(replayKey{c.cli, c.srv})
		got, ok := sh.syns[replayKey{c.cli, c.srv}]
		if !ok {
			t.Fatalf("%v: no copy under the SYN's tuple", c.cli)
		}
		if !bytes.Equal(got.bytes(), want) {
			t.Errorf("%v: copy %x, want %x (checksum completed)", c.cli, got.bytes(), want)
		}
		if !tcpChecksumValid(got.bytes(), c.proto) {
			t.Errorf("%v: the copy's TCP checksum is not valid", c.cli)
		}
	}
	r := newSYNReplay()
	long := tcpPacket(cli4, srv4, header.TCPFlagSyn, make([]byte, maxSYNLen))
	if r.capture(header.IPv4ProtocolNumber, long) {
		t.Errorf("a %d-byte SYN was kept", len(long))
	}
	ext := tcpPacket(cli6, srv6, header.TCPFlagSyn, nil)
	header.IPv6(ext).SetNextHeader(0) // hop-by-hop options
	if r.capture(header.IPv6ProtocolNumber, ext) {
		t.Errorf("an IPv6 SYN with an extension header was kept")
	}
}

// TestSYNReplayLifecycle: start takes the SYN's copy for the flow; a SYN
// the client sends again finds the flow (replayed) with its newest copy;
// accept takes the flow once; an unaccepted flow expires (expire runs)
// and Shutdown's waiting takes the rest; a full shard keeps no more
// copies until old ones are swept.
func TestSYNReplayLifecycle(t *testing.T) {
	r := newSYNReplay()
	f := &Flow{ID: 1, Client: cli4, Server: srv4}
	k := replayKey{cli4, srv4}
	if _, ok := r.start(f, nil, time.Hour, func(*replayedFlow) {}); ok {
		t.Fatal("start with no SYN captured")
	}
	syn := tcpPacket(cli4, srv4, header.TCPFlagSyn, nil)
	r.capture(header.IPv4ProtocolNumber, syn)
	rf, ok := r.start(f, nil, time.Hour, func(*replayedFlow) { t.Error("expired") })
	if !ok || !bytes.Equal(rf.syn.bytes(), syn) {
		t.Fatalf("start: %v, %v", rf, ok)
	}
	again := bytes.Clone(syn)
	header.TCP(again[header.IPv4MinimumSize:]).SetSequenceNumber(1) // same; a retransmission
	r.capture(header.IPv4ProtocolNumber, again)
	if got, ok, _ := r.replayed(k); !ok || !bytes.Equal(got.bytes(), again) {
		t.Errorf("replayed after a second SYN: %v, %v", got.bytes(), ok)
	}
	if got, ok, _ := r.replayed(k); !ok || !bytes.Equal(got.bytes(), syn) {
		t.Errorf("replayed with no new copy: %v, %v; want the first SYN", got.bytes(), ok)
	}
	if n := r.waitingN.Load(); n != 1 {
		t.Errorf("%d flows waiting for their accept, want 1", n)
	}
	if r.accept(k) != rf || r.accept(k) != nil {
		t.Error("accept did not take the flow exactly once")
	}
	if n := r.waitingN.Load(); n != 0 {
		t.Errorf("after the accept, %d flows waiting, want 0", n)
	}
	if _, ok, accepted := r.replayed(k); ok || !accepted {
		t.Errorf("a SYN on the tuple of an accepted flow: waiting %v, accepted %v; want a port reuse", ok, accepted)
	}
	if r.end(k, rf, false) {
		t.Error("end(accepted=false) removed an accepted flow")
	}
	if !r.end(k, rf, true) {
		t.Error("end(accepted=true) did not remove the served flow")
	}
	if _, ok, _ := r.replayed(k); ok {
		t.Error("a flow that ended is still replayed")
	}

	var expired atomic.Int32
	done := make(chan struct{})
	r.capture(header.IPv4ProtocolNumber, syn)
	if _, ok := r.start(f, nil, time.Millisecond, func(*replayedFlow) { expired.Add(1); close(done) }); !ok {
		t.Fatal("start")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("an unaccepted flow never expired")
	}
	if r.accept(k) != nil {
		t.Error("an expired flow was accepted")
	}
	r.capture(header.IPv6ProtocolNumber, tcpPacket(cli6, srv6, header.TCPFlagSyn, nil))
	if _, ok := r.start(&Flow{ID: 2, Client: cli6, Server: srv6}, nil, time.Hour, func(*replayedFlow) { t.Error("expired") }); !ok {
		t.Fatal("start IPv6")
	}
	if w := r.waiting(); len(w) != 1 || w[0].flow.ID != 2 {
		t.Errorf("waiting: %v, want flow 2", w)
	}
	if expired.Load() != 1 {
		t.Errorf("expire ran %d times", expired.Load())
	}
	if n := r.waitingN.Load(); n != 0 {
		t.Errorf("after expiry and Shutdown, %d flows waiting, want 0", n)
	}

	// A full shard: keys whose server port differs by a multiple of
	// replayShards share a shard, as do client ports that do.
	full := newSYNReplay()
	srv := func(i int) netip.AddrPort { return netip.AddrPortFrom(srv4.Addr(), uint16(1+i*replayShards)) }
	sh := full.shard(replayKey{cli4, srv(0)})
	for i := range maxCapturedPerShard {
		if full.shard(replayKey{cli4, srv(i)}) != sh {
			t.Fatalf("server port %d is in another shard", srv(i).Port())
		}
		if !full.capture(header.IPv4ProtocolNumber, tcpPacket(cli4, srv(i), header.TCPFlagSyn, nil)) {
			t.Fatalf("capture %d refused below the bound", i)
		}
	}
	next := netip.AddrPortFrom(cli4.Addr(), cli4.Port()+replayShards)
	srv4 := srv(0)
	if full.capture(header.IPv4ProtocolNumber, tcpPacket(next, srv4, header.TCPFlagSyn, nil)) {
		t.Error("a full shard kept another copy")
	}
	for k, c := range sh.syns {
		c.at = c.at.Add(-2 * capturedTTL)
		sh.syns[k] = c
	}
	if !full.capture(header.IPv4ProtocolNumber, tcpPacket(next, srv4, header.TCPFlagSyn, nil)) || len(sh.syns) != 1 {
		t.Errorf("after the copies aged, capture did not sweep them: %d left", len(sh.syns))
	}
}
