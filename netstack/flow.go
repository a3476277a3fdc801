package netstack

import (
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Flow is one forwarded TCP connection as the client sent it: the client's
// SYN from Client to Server. netward answers as Server toward the client and
// connects to Server as Client, so both ends see their real peer.
type Flow struct {
	ID     uint64         // unique in this process; EVE flow_id
	Client netip.AddrPort // original source (sent the SYN)
	Server netip.AddrPort // original destination
	Start  time.Time      // when the SYN reached the stack
}

// Admission is a Handler's answer to a new SYN.
type Admission uint8

const (
	// AdmitAccept dials the server and, once it answers, completes the
	// client's handshake and calls Serve.
	AdmitAccept Admission = iota
	// AdmitReset answers the client's SYN with an RST; nothing goes upstream.
	AdmitReset
	// AdmitDrop ignores the SYN: no answer to the client, no upstream SYN.
	AdmitDrop
)

func (a Admission) String() string {
	switch a {
	case AdmitAccept:
		return "accept"
	case AdmitReset:
		return "reset"
	case AdmitDrop:
		return "drop"
	}
	return "admission(" + strconv.Itoa(int(a)) + ")"
}

// Conn is one leg of a flow. Both legs are TCP connections terminated in the
// gVisor stack, so half-close is available on either.
type Conn interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
}

// BufferPool lends the buffers a kernel leg's ReadPooled reads into: a read
// fills at most len(*b).
type BufferPool interface {
	Get() *[]byte
	Put(b *[]byte)
}

// Handler decides about and serves forwarded flows.
type Handler interface {
	// Admit runs for each new SYN before anything is sent upstream
	// (L3/L4/geo verdicts). It must not block for long: it holds one of the
	// stack's in-flight handshake slots.
	Admit(f *Flow) Admission
	// Serve runs on its own goroutine once both legs are up; it owns and
	// closes both conns.
	Serve(f *Flow, client, server Conn)
}

// Abandoner is an optional Handler interface. Abandon is called for a flow
// that Admit accepted but that never reached Serve (the server refused or
// did not answer, the client left, netward is stopping), so a Handler that
// counts admitted flows against a limit can release them.
type Abandoner interface {
	Abandon(f *Flow)
}
