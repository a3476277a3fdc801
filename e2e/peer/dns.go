package peer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/netward/netward/inspect/dns"
	"golang.org/x/net/dns/dnsmessage"
)

// DNSPort is where the lab's DNS server listens (UDP and TCP) when
// ServerOptions.DNSPort asks for it.
const DNSPort = 53

// The DNS server's answers: every A query is answered DNSAnswerA, every
// AAAA query DNSAnswerAAAA (TTL DNSTTL), whatever the name; any other type
// gets NOERROR with no answer (NODATA).
var (
	DNSAnswerA    = netip.MustParseAddr("192.0.2.53")
	DNSAnswerAAAA = netip.MustParseAddr("2001:db8:2::53")
)

// DNSTTL is the TTL of the DNS server's records.
const DNSTTL = 60

// DNSLog is one line of the DNS server's log: one per query it read.
type DNSLog struct {
	// DNS is the question name as the client sent it (case kept, no
	// trailing dot; "." for the root).
	DNS    string `json:"dns"`
	Type   string `json:"type"`   // "A", "AAAA", "HTTPS", ... (dns.TypeName)
	Remote string `json:"remote"` // the client's address as the server sees it
	Local  string `json:"local,omitempty"`
	Proto  string `json:"proto"` // "udp" or "tcp"
	ID     uint16 `json:"id"`
	Rcode  string `json:"rcode"` // "NOERROR", "FORMERR", "NOTIMP"
	Answer string `json:"answer,omitempty"`
	Err    string `json:"err,omitempty"`
}

func (l *logger) logDNS(e DNSLog) {
	b, _ := json.Marshal(e)
	l.mu.Lock()
	l.w.Write(append(b, '\n'))
	l.mu.Unlock()
}

// DNSServer is an authoritative-for-everything DNS server on one port, UDP
// and TCP (RFC 7766 framing, pipelined queries answered in order). It is
// the lab's stand-in for a resolver: the answers are fixed so a test knows
// them, and each query is logged with the client address the server saw, so
// a test can check netward let the query through untouched (or never let it
// reach the server at all).
//
// UDP answers go out of one wildcard socket, so their source address is the
// one the kernel's route picks; with one address per family, as lab hosts
// have, that is the address the query was sent to.
type DNSServer struct {
	udp  net.PacketConn
	tcp  net.Listener
	lg   *logger
	once sync.Once
}

// ListenDNS opens the DNS server's sockets on addr ("host:port"; port 0
// picks a free port, the same for UDP and TCP). log receives one JSON
// DNSLog line per query (nil: none).
func ListenDNS(addr string, log io.Writer) (*DNSServer, error) {
	if log == nil {
		log = io.Discard
	}
	return listenDNS(addr, &logger{w: log})
}

func listenDNS(addr string, lg *logger) (*DNSServer, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("peer: dns %s: %w", addr, err)
	}
	// With port 0 the TCP port is picked first; UDP may find it taken.
	for try := 0; ; try++ {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("peer: dns listen tcp %s: %w", addr, err)
		}
		uaddr := net.JoinHostPort(host, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
		pc, err := net.ListenPacket("udp", uaddr)
		if err != nil {
			ln.Close()
			if port == "0" && try < 10 {
				continue
			}
			return nil, fmt.Errorf("peer: dns listen udp %s: %w", uaddr, err)
		}
		return &DNSServer{udp: pc, tcp: ln, lg: lg}, nil
	}
}

// Port returns the server's port (UDP and TCP).
func (s *DNSServer) Port() int { return s.tcp.Addr().(*net.TCPAddr).Port }

// Close closes the sockets; Serve then returns.
func (s *DNSServer) Close() error {
	s.once.Do(func() {
		s.udp.Close()
		s.tcp.Close()
	})
	return nil
}

// Serve answers queries until ctx ends or Close is called.
func (s *DNSServer) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	errc := make(chan error, 2)
	go func() { errc <- acceptLoop(s.tcp, s.serveTCP, s.lg) }()
	go func() { errc <- s.serveUDP() }()
	err := <-errc
	s.Close()
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

func (s *DNSServer) serveUDP() error {
	buf := make([]byte, 65535)
	out := make([]byte, 0, 512)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("peer: dns udp: %w", err)
		}
		resp, ok := s.answer(out[:0], buf[:n], from.String(), "", "udp")
		if !ok {
			continue
		}
		out = resp[:0]
		s.udp.WriteTo(resp, from)
	}
}

// serveTCP answers the framed queries of one connection, in order, until
// the client closes it or is idle for 30 s.
func (s *DNSServer) serveTCP(c net.Conn, _ *logger) {
	remote, local := c.RemoteAddr().String(), c.LocalAddr().String()
	buf := make([]byte, dns.MaxMessage)
	out := make([]byte, 2, 514)
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			if err == io.EOF {
				closeWrite(c)
			}
			return
		}
		msg := buf[:binary.BigEndian.Uint16(buf)]
		if _, err := io.ReadFull(c, msg); err != nil {
			s.lg.logDNS(DNSLog{Remote: remote, Local: local, Proto: "tcp", Err: "read: " + err.Error()})
			return
		}
		resp, ok := s.answer(out[:2], msg, remote, local, "tcp")
		if !ok {
			continue
		}
		binary.BigEndian.PutUint16(resp, uint16(len(resp)-2))
		if _, err := c.Write(resp); err != nil {
			return
		}
		out = resp[:2]
	}
}

// answer appends to dst the answer to msg and logs the query; ok is false
// when msg gets no answer (a response, or not even a header).
func (s *DNSServer) answer(dst, msg []byte, remote, local, proto string) (out []byte, ok bool) {
	e := DNSLog{Remote: remote, Local: local, Proto: proto}
	defer func() { s.lg.logDNS(e) }()
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		e.Err = "header: " + err.Error()
		return dst, false
	}
	e.ID = h.ID
	if h.Response {
		e.Err = "a response, not a query"
		return dst, false
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, Authoritative: true,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true, CheckingDisabled: h.CheckingDisabled}
	q, qerr := p.Question()
	switch {
	case qerr != nil:
		rh.RCode, e.Err = dnsmessage.RCodeFormatError, "question: "+qerr.Error()
	case binary.BigEndian.Uint16(msg[4:]) != 1:
		rh.RCode, e.Err = dnsmessage.RCodeFormatError, "not one question"
	case h.OpCode != 0:
		rh.RCode = dnsmessage.RCodeNotImplemented
	}
	var edns bool
	var do bool
	if qerr == nil {
		e.DNS, e.Type = strings.TrimSuffix(q.Name.String(), "."), dns.TypeName(q.Type)
		if e.DNS == "" {
			e.DNS = "."
		}
		if err := p.SkipAllQuestions(); err == nil {
			p.SkipAllAnswers()
			p.SkipAllAuthorities()
			for {
				ah, err := p.AdditionalHeader()
				if err != nil {
					break
				}
				if ah.Type == dnsmessage.TypeOPT {
					edns, do = true, ah.DNSSECAllowed()
				}
				if p.SkipAdditional() != nil {
					break
				}
			}
		}
	}
	e.Rcode = rcodeName(rh.RCode)
	b := dnsmessage.NewBuilder(dst, rh)
	b.StartQuestions()
	if qerr == nil && rh.RCode != dnsmessage.RCodeFormatError {
		b.Question(q) // the name as sent: 0x20 case kept
	}
	b.StartAnswers()
	if qerr == nil && rh.RCode == dnsmessage.RCodeSuccess && q.Class == dnsmessage.ClassINET {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: DNSTTL}
		switch q.Type {
		case dnsmessage.TypeA:
			b.AResource(hdr, dnsmessage.AResource{A: DNSAnswerA.As4()})
			e.Answer = DNSAnswerA.String()
		case dnsmessage.TypeAAAA:
			b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: DNSAnswerAAAA.As16()})
			e.Answer = DNSAnswerAAAA.String()
		}
	}
	if edns {
		b.StartAdditionals()
		var oh dnsmessage.ResourceHeader
		oh.SetEDNS0(dns.ResponseUDPSize, dnsmessage.RCodeSuccess, do)
		b.OPTResource(oh, dnsmessage.OPTResource{})
	}
	out, err = b.Finish()
	if err != nil {
		e.Err = "build: " + err.Error()
		return dst, false
	}
	return out, true
}

func rcodeName(r dnsmessage.RCode) string {
	switch r {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	}
	return r.String()
}
