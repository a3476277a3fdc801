package event

import (
	"net/netip"
	"strconv"
	"time"
)

// Header is what every event carries: when, which flow, and the flow's
// 5-tuple. The relay fills one Header per flow and reuses it for each event
// of that flow.
type Header struct {
	// Time of the event; the zero Time means "now" when the event is logged.
	Time time.Time
	// FlowID is netstack.Flow.ID; it ties the flow's events together (EVE
	// flow_id).
	FlowID uint64
	// Src is the client (who sent the SYN), Dst the original destination.
	Src, Dst netip.AddrPort
	// InIface is the interface the flow came in on; "" uses Options.InIface
	// and, when that is empty too, leaves in_iface out.
	InIface string
	// AppProto is the detected application protocol, inspect.Proto.String():
	// "tls", "http", "h2", "ssh", "unknown"; "" leaves app_proto out.
	AppProto string
	// SrcGeo and DstGeo are written as src_geo and dest_geo when not zero.
	// geo.Info converts directly: event.Geo(info).
	SrcGeo, DstGeo Geo
	// Verdict and Rule are netward's decision for the flow (policy
	// Action.String() and Verdict.Rule), written in the "netward" object.
	// Verdict "" means not decided yet; Rule "" with a verdict means the
	// default action decided.
	Verdict string
	Rule    string
	// UDP writes proto "UDP" instead of "TCP".
	UDP bool
}

// Geo is where an address is, as far as the geo databases know. It has the
// same fields as geo.Info so that one converts to the other.
type Geo struct {
	Country string // ISO 3166-1 alpha-2; written as country_iso
	ASN     uint32 // written as asn
	ASOrg   string // written as as_org
}

// FlowState is EVE's flow.state.
type FlowState string

const (
	// StateNew: the flow never exchanged application data (refused at the
	// SYN or before the first byte).
	StateNew FlowState = "new"
	// StateEstablished: data flowed but the flow did not finish cleanly
	// (reset, enforced close, shutdown).
	StateEstablished FlowState = "established"
	// StateClosed: both sides finished (FIN both ways).
	StateClosed FlowState = "closed"
)

// FlowReason is EVE's flow.reason: why the flow record was written.
type FlowReason string

const (
	// ReasonTimeout: the flow ended by an idle or half-closed timeout, or
	// ended normally (Suricata also logs ordinary ends as "timeout").
	ReasonTimeout FlowReason = "timeout"
	// ReasonForced: netward ended the flow (a deny/drop verdict, a limit).
	ReasonForced FlowReason = "forced"
	// ReasonShutdown: netward was stopping.
	ReasonShutdown FlowReason = "shutdown"
)

// Flow is an EVE "flow" event, logged once when a flow ends.
type Flow struct {
	Header
	Start, End                   time.Time
	BytesToServer, BytesToClient uint64 // TCP payload bytes each way
	// PktsToServer and PktsToClient are the packets each way when the
	// datapath counts them; both 0 leaves the pkts_* fields out.
	PktsToServer, PktsToClient uint64
	State                      FlowState
	Reason                     FlowReason
	// Alerted is true when an alert event was logged for this flow.
	Alerted bool
}

// AlertAction is EVE's alert.action.
type AlertAction string

const (
	ActionAllowed AlertAction = "allowed" // alert-only rule: traffic passed
	ActionBlocked AlertAction = "blocked" // deny or drop
)

// Alert is an EVE "alert" event: a rule matched that blocks the flow or that
// asks for an alert.
type Alert struct {
	Header
	Action AlertAction
	// Signature is the rule name; "" is written as "default" (the default
	// action of the rule file decided).
	Signature string
	// SignatureID is alert.signature_id; 0 derives a stable id from the
	// signature (see SignatureID).
	SignatureID uint32
	// Category is alert.category; "" is written as DefaultCategory.
	Category string
	// Severity is alert.severity, 1 (high) to 3 (low) as in Suricata; 0
	// uses 2 for blocked and 3 for allowed.
	Severity int
}

// DefaultCategory is alert.category when the Alert does not set one.
const DefaultCategory = "netward policy"

// TLS is an EVE "tls" event, logged once per TLS flow after the ClientHello
// was inspected.
type TLS struct {
	Header
	SNI string
	// Version is the highest TLS version the client offered (see
	// HighestVersion); 0 leaves tls.version out. Suricata logs the
	// negotiated version; netward decides before the ServerHello, so it logs
	// what the client asked for.
	Version uint16
	ALPN    []string // tls.client_alpns
	JA3     string   // tls.ja3.string
	JA3Hash string   // tls.ja3.hash
	JA4     string   // tls.ja4
	// ECH is true when the ClientHello offered Encrypted Client Hello
	// (netward.ech).
	ECH bool
}

// QUIC is an EVE "quic" event, logged once per ClientHello read from a
// flow's Initial packets (a Retry or a new connection on the same 5-tuple
// gives another).
type QUIC struct {
	Header
	// Version is the QUIC version of the Initial: written as Suricata
	// does, "1" for v1, "6b3343cf" for v2 (hex without leading zeros).
	Version uint32
	SNI     string
	ALPN    []string // quic.client_alpns (netward's name, as tls.client_alpns)
	JA4     string   // quic.ja4
}

// DNS is an EVE "dns" event for one query (Suricata's version 2 request
// format: type "request", id, rrname, rrtype).
type DNS struct {
	Header
	ID     uint16
	RRName string // the query name as normalised (lower case, no trailing dot)
	RRType string // "A", "AAAA", "HTTPS", ...
	// Answer, when netward answered the query itself (a deny), is the
	// rcode it sent: "NXDOMAIN", "REFUSED" or "NOERROR" (NODATA).
	Answer string
}

// HTTP is an EVE "http" event, logged once per inspected HTTP/1.x request.
type HTTP struct {
	Header
	Hostname  string // http.hostname (Host header or absolute-form target)
	URL       string // http.url (the request target)
	Method    string // http.http_method
	UserAgent string // http.http_user_agent
	Protocol  string // http.protocol, e.g. "HTTP/1.1"
	// Status and Length are the response status and body length when known
	// (e.g. netward's own 403 page); 0 leaves them out.
	Status int
	Length int64
}

// SignatureID derives alert.signature_id from a rule name: the FNV-1a hash
// of the name, so the same rule keeps its id across restarts and reloads
// without the rule file numbering its rules. 0 is never returned.
func SignatureID(rule string) uint32 {
	const offset, prime = 2166136261, 16777619 // FNV-1a, 32 bit
	h := uint32(offset)
	for i := 0; i < len(rule); i++ {
		h ^= uint32(rule[i])
		h *= prime
	}
	if h == 0 {
		return 1
	}
	return h
}

// VersionName is the EVE spelling of a TLS protocol version (as Suricata
// writes tls.version).
func VersionName(v uint16) string {
	switch v {
	case 0x0300:
		return "SSLv3"
	case 0x0301:
		return "TLSv1"
	case 0x0302:
		return "TLS 1.1"
	case 0x0303:
		return "TLS 1.2"
	case 0x0304:
		return "TLS 1.3"
	}
	return "0x" + strconv.FormatUint(uint64(v)|0x10000, 16)[1:]
}

// HighestVersion is the highest real version in a ClientHello's versions
// list, ignoring GREASE values (RFC 8701: 0x?a?a). 0 if there is none.
func HighestVersion(versions []uint16) uint16 {
	var hi uint16
	for _, v := range versions {
		if v&0x0f0f == 0x0a0a && v>>8 == v&0xff {
			continue // GREASE
		}
		if v > hi {
			hi = v
		}
	}
	return hi
}

// appendHeader writes the fields every event starts with, in Suricata's
// order: timestamp, flow_id, in_iface, event_type, the tuple, proto,
// app_proto.
func (l *Log) appendHeader(o *object, h *Header, eventType string) {
	o.open()
	t := h.Time
	if t.IsZero() {
		t = l.now()
	}
	o.time("timestamp", t)
	o.uint("flow_id", h.FlowID)
	iface := h.InIface
	if iface == "" {
		iface = l.iface
	}
	o.strNonEmpty("in_iface", iface)
	o.str("event_type", eventType)
	if h.Src.IsValid() {
		o.addr("src_ip", h.Src.Addr())
		o.uint("src_port", uint64(h.Src.Port()))
	}
	if h.Dst.IsValid() {
		o.addr("dest_ip", h.Dst.Addr())
		o.uint("dest_port", uint64(h.Dst.Port()))
	}
	if h.UDP {
		o.str("proto", "UDP")
	} else {
		o.str("proto", "TCP")
	}
	o.strNonEmpty("app_proto", h.AppProto)
}

// appendTrailer writes what follows the event-type object: geo and the
// netward object, then closes the event and ends the line.
func appendTrailer(o *object, h *Header, ech bool) {
	appendGeo(o, "src_geo", &h.SrcGeo)
	appendGeo(o, "dest_geo", &h.DstGeo)
	if h.Verdict != "" || h.Rule != "" || ech {
		o.child("netward")
		o.strNonEmpty("verdict", h.Verdict)
		if h.Verdict != "" && h.Rule == "" {
			o.str("rule", "default")
		} else {
			o.strNonEmpty("rule", h.Rule)
		}
		if ech {
			o.bool("ech", true)
		}
		o.close()
	}
	o.close()
	o.b = append(o.b, '\n')
}

func appendGeo(o *object, name string, g *Geo) {
	if g.Country == "" && g.ASN == 0 && g.ASOrg == "" {
		return
	}
	o.child(name)
	o.strNonEmpty("country_iso", g.Country)
	if g.ASN != 0 {
		o.uint("asn", uint64(g.ASN))
	}
	o.strNonEmpty("as_org", g.ASOrg)
	o.close()
}

func (l *Log) appendFlow(dst []byte, e *Flow) []byte {
	o := object{b: dst}
	l.appendHeader(&o, &e.Header, "flow")
	o.child("flow")
	if e.PktsToServer != 0 || e.PktsToClient != 0 {
		o.uint("pkts_toserver", e.PktsToServer)
		o.uint("pkts_toclient", e.PktsToClient)
	}
	o.uint("bytes_toserver", e.BytesToServer)
	o.uint("bytes_toclient", e.BytesToClient)
	if !e.Start.IsZero() {
		o.time("start", e.Start)
	}
	end := e.End
	if end.IsZero() {
		end = l.now()
	}
	o.time("end", end)
	if !e.Start.IsZero() {
		age := end.Sub(e.Start) / time.Second
		if age < 0 {
			age = 0
		}
		o.int("age", int64(age))
	}
	o.strNonEmpty("state", string(e.State))
	o.strNonEmpty("reason", string(e.Reason))
	o.bool("alerted", e.Alerted)
	o.close()
	appendTrailer(&o, &e.Header, false)
	return o.b
}

func (l *Log) appendAlert(dst []byte, e *Alert) []byte {
	o := object{b: dst}
	l.appendHeader(&o, &e.Header, "alert")
	o.child("alert")
	action := e.Action
	if action == "" {
		action = ActionBlocked
	}
	o.str("action", string(action))
	sig := e.Signature
	if sig == "" {
		sig = "default"
	}
	id := e.SignatureID
	if id == 0 {
		id = SignatureID(sig)
	}
	o.uint("signature_id", uint64(id))
	o.str("signature", sig)
	cat := e.Category
	if cat == "" {
		cat = DefaultCategory
	}
	o.str("category", cat)
	sev := e.Severity
	if sev == 0 {
		sev = 2
		if action == ActionAllowed {
			sev = 3
		}
	}
	o.int("severity", int64(sev))
	o.close()
	appendTrailer(&o, &e.Header, false)
	return o.b
}

func (l *Log) appendTLS(dst []byte, e *TLS) []byte {
	o := object{b: dst}
	l.appendHeader(&o, &e.Header, "tls")
	o.child("tls")
	o.strNonEmpty("sni", e.SNI)
	if e.Version != 0 {
		o.str("version", VersionName(e.Version))
	}
	if e.JA3 != "" || e.JA3Hash != "" {
		o.child("ja3")
		o.strNonEmpty("hash", e.JA3Hash)
		o.strNonEmpty("string", e.JA3)
		o.close()
	}
	o.strNonEmpty("ja4", e.JA4)
	if len(e.ALPN) > 0 {
		o.strArray("client_alpns", e.ALPN)
	}
	o.close()
	appendTrailer(&o, &e.Header, e.ECH)
	return o.b
}

func (l *Log) appendHTTP(dst []byte, e *HTTP) []byte {
	o := object{b: dst}
	l.appendHeader(&o, &e.Header, "http")
	o.child("http")
	o.strNonEmpty("hostname", e.Hostname)
	o.strNonEmpty("url", e.URL)
	o.strNonEmpty("http_user_agent", e.UserAgent)
	o.strNonEmpty("http_method", e.Method)
	o.strNonEmpty("protocol", e.Protocol)
	if e.Status != 0 {
		o.int("status", int64(e.Status))
	}
	if e.Length != 0 {
		o.int("length", e.Length)
	}
	o.close()
	appendTrailer(&o, &e.Header, false)
	return o.b
}

func (l *Log) appendQUIC(dst []byte, e *QUIC) []byte {
	o := object{b: dst}
	l.appendHeader(&o, &e.Header, "quic")
	o.child("quic")
	if e.Version != 0 {
		o.str("version", strconv.FormatUint(uint64(e.Version), 16))
	}
	o.strNonEmpty("sni", e.SNI)
	o.strNonEmpty("ja4", e.JA4)
	if len(e.ALPN) > 0 {
		o.strArray("client_alpns", e.ALPN)
	}
	o.close()
	appendTrailer(&o, &e.Header, false)
	return o.b
}

func (l *Log) appendDNS(dst []byte, e *DNS) []byte {
	o := object{b: dst}
	l.appendHeader(&o, &e.Header, "dns")
	o.child("dns")
	o.int("version", 2)
	o.str("type", "request")
	o.uint("id", uint64(e.ID))
	o.str("rrname", e.RRName)
	o.strNonEmpty("rrtype", e.RRType)
	o.strNonEmpty("netward_answer", e.Answer)
	o.close()
	appendTrailer(&o, &e.Header, false)
	return o.b
}
