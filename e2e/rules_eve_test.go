package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/netward/netward/event"
)

// ruleEvent is one EVE JSON event as netward writes it (Suricata's field
// names plus netward's own object). It is decoded with
// DisallowUnknownFields: a renamed, misspelt or unexpected field fails the
// test instead of leaving a field empty.
type ruleEvent struct {
	Timestamp string            `json:"timestamp"`
	FlowID    uint64            `json:"flow_id"`
	InIface   string            `json:"in_iface"`
	EventType string            `json:"event_type"`
	SrcIP     string            `json:"src_ip"`
	SrcPort   uint16            `json:"src_port"`
	DestIP    string            `json:"dest_ip"`
	DestPort  uint16            `json:"dest_port"`
	Proto     string            `json:"proto"`
	AppProto  string            `json:"app_proto"`
	Flow      *ruleEventFlow    `json:"flow"`
	Alert     *ruleEventAlert   `json:"alert"`
	TLS       *ruleEventTLS     `json:"tls"`
	HTTP      *ruleEventHTTP    `json:"http"`
	SrcGeo    *ruleEventGeo     `json:"src_geo"`
	DestGeo   *ruleEventGeo     `json:"dest_geo"`
	Netward   *ruleEventNetward `json:"netward"`
}

type ruleEventFlow struct {
	PktsToServer  uint64 `json:"pkts_toserver"`
	PktsToClient  uint64 `json:"pkts_toclient"`
	BytesToServer uint64 `json:"bytes_toserver"`
	BytesToClient uint64 `json:"bytes_toclient"`
	Start         string `json:"start"`
	End           string `json:"end"`
	Age           int64  `json:"age"`
	State         string `json:"state"`
	Reason        string `json:"reason"`
	Alerted       bool   `json:"alerted"`
}

type ruleEventAlert struct {
	Action      string `json:"action"`
	SignatureID uint32 `json:"signature_id"`
	Signature   string `json:"signature"`
	Category    string `json:"category"`
	Severity    int    `json:"severity"`
}

type ruleEventTLS struct {
	SNI     string `json:"sni"`
	Version string `json:"version"`
	JA3     *struct {
		Hash   string `json:"hash"`
		String string `json:"string"`
	} `json:"ja3"`
	JA4         string   `json:"ja4"`
	ClientALPNs []string `json:"client_alpns"`
}

type ruleEventHTTP struct {
	Hostname  string `json:"hostname"`
	URL       string `json:"url"`
	UserAgent string `json:"http_user_agent"`
	Method    string `json:"http_method"`
	Protocol  string `json:"protocol"`
	Status    int    `json:"status"`
	Length    int64  `json:"length"`
}

type ruleEventGeo struct {
	CountryISO string `json:"country_iso"`
	ASN        uint32 `json:"asn"`
	ASOrg      string `json:"as_org"`
}

type ruleEventNetward struct {
	Verdict string `json:"verdict"`
	Rule    string `json:"rule"`
	ECH     bool   `json:"ech"`
}

// Src and Dst are the event's addresses.
func (e *ruleEvent) Src() netip.AddrPort { return ruleEventAddr(e.SrcIP, e.SrcPort) }
func (e *ruleEvent) Dst() netip.AddrPort { return ruleEventAddr(e.DestIP, e.DestPort) }

func ruleEventAddr(ip string, port uint16) netip.AddrPort {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

// ruleReadEVE strictly decodes every complete line of the EVE log at path. A
// line that does not decode, or whose event object does not match its
// event_type, is an error.
func ruleReadEVE(path string) ([]ruleEvent, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1] // a line being written is not complete yet
	} else {
		return nil, nil
	}
	var out []ruleEvent
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var e ruleEvent
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("%s:%d: %v: %s", path, n, err, sc.Bytes())
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, fmt.Errorf("%s:%d: data after the event: %s", path, n, sc.Bytes())
		}
		if err := e.check(); err != nil {
			return nil, fmt.Errorf("%s:%d: %v: %s", path, n, err, sc.Bytes())
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// check verifies what every event must have: a timestamp in EVE's format,
// a flow id, TCP addresses, and exactly the object its type names.
func (e *ruleEvent) check() error {
	if _, err := time.Parse(event.TimeLayout, e.Timestamp); err != nil {
		return fmt.Errorf("timestamp: %v", err)
	}
	if e.FlowID == 0 || e.Proto != "TCP" || !e.Src().IsValid() || !e.Dst().IsValid() {
		return fmt.Errorf("want flow_id, proto TCP, src and dest")
	}
	objs := map[string]bool{"flow": e.Flow != nil, "alert": e.Alert != nil, "tls": e.TLS != nil, "http": e.HTTP != nil}
	for typ, present := range objs {
		if present != (typ == e.EventType) {
			return fmt.Errorf("event_type %q with objects %v", e.EventType, objs)
		}
	}
	if _, known := objs[e.EventType]; !known {
		return fmt.Errorf("unknown event_type %q", e.EventType)
	}
	return nil
}
