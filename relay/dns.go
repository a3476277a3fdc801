package relay

import (
	"encoding/binary"
	"time"

	"github.com/netward/netward/event"
	"github.com/netward/netward/inspect"
	"github.com/netward/netward/inspect/dns"
	"github.com/netward/netward/policy"
	"github.com/netward/netward/rules"
)

// dnsPort is where a TCP flow is read as DNS over TCP (RFC 7766): the
// protocol has no first bytes to tell it by.
const dnsPort = 53

// serveDNS judges every query of a DNS-over-TCP flow (2-byte length, then
// the message; RFC 1035 §4.2.2). An allowed query goes on; a denied one is
// answered by netward with the rule's dns_answer, after the server's
// answers to the earlier queries, and the connection closed; drop closes it
// unanswered.
func (gf *guardFlow) serveDNS(in *clientInput) *halfError {
	gf.facts.App = inspect.ProtoDNS
	gf.hdr.AppProto = "dns"
	gf.af.SetApp("dns")
	for {
		if len(in.buf) >= 2 {
			n := 2 + int(binary.BigEndian.Uint16(in.buf))
			if n > cap(in.buf) {
				gf.g.Metrics.InspectError("dns")
				return gf.invalid("dns", "DNS message larger than limits.inspect_bytes", refuseReset)
			}
			if len(in.buf) >= n {
				if err := gf.dnsQuery(in.buf[2:n]); err != nil || gf.refused {
					return err
				}
				if err := gf.forward(in.buf[:n]); err != nil {
					return err
				}
				in.consume(n)
				continue // pipelined queries (RFC 7766 §6.2.1.1)
			}
		}
		if in.eof {
			return gf.passClientFIN()
		}
		if in.timedOut {
			gf.g.Metrics.InspectTimeout()
			if gf.requests == 0 && len(in.buf) == 0 {
				// A silent client on port 53 is judged by what is known.
				gf.client.SetReadDeadline(time.Time{})
				v := gf.decide()
				if v.Action != rules.ActionAllow && v.Action != rules.ActionAlert {
					gf.refuse(v, refuseReset)
					return nil
				}
				in.timedOut = false
				continue
			}
			gf.g.Metrics.InspectError("dns")
			return gf.invalid("dns", "DNS message not complete within limits.inspect_timeout", refuseReset)
		}
		if err := in.readNext(); err != nil {
			return err
		}
	}
}

// dnsQuery judges one query; a refusal is enforced here (gf.refused is then
// set). Bytes that are not a query are judged by on_invalid.
func (gf *guardFlow) dnsQuery(msg []byte) *halfError {
	var q dns.Query
	if err := dns.Parse(msg, &q); err != nil {
		gf.g.Metrics.InspectError("dns")
		v := gf.g.invalid()
		if v.Action == rules.ActionAllow || v.Action == rules.ActionAlert {
			gf.record(v)
			return nil
		}
		gf.record(v)
		gf.refuse(v, refuseReset)
		return nil
	}
	gf.requests++
	if gf.requests == 1 {
		gf.client.SetReadDeadline(time.Time{})
	}
	gf.facts.DNSName, gf.facts.DNSType = q.Name, dns.TypeName(q.Type)
	gf.af.SetName(q.Name)
	v := gf.decide()
	e := event.DNS{Header: gf.hdr, ID: q.ID, RRName: q.Name, RRType: gf.facts.DNSType}
	if v.Action == rules.ActionAllow || v.Action == rules.ActionAlert {
		gf.dnsEvent(&e)
		return nil
	}
	if v.Action == rules.ActionDeny {
		a := policy.DNSAnswer(v)
		e.Answer = a.RcodeName()
		resp, err := dns.AppendResponse(make([]byte, 2, 2+len(msg)+64), msg, &q, a)
		if err == nil && len(resp) <= 0xffff+2 {
			binary.BigEndian.PutUint16(resp, uint16(len(resp)-2))
			gf.dnsRefusal = resp
		}
	}
	gf.dnsEvent(&e)
	how := refuseReset
	if gf.dnsRefusal != nil {
		how = refuseDNS
	}
	gf.refuse(v, how)
	return nil
}

func (gf *guardFlow) dnsEvent(e *event.DNS) {
	if gf.g.Events != nil {
		gf.g.Events.DNS(e)
	}
}
