package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"
)

// The EVE schema, as Suricata writes it (field names from Suricata's
// eve-log output: output-json-*.c and the EVE JSON format documentation).
// Events are decoded with DisallowUnknownFields: a field name netward writes
// that is not here is a deviation from EVE and fails the test. Fields that
// netward documents as its own extensions are listed at the end of opsEvent.

// opsEvent is one line of the event log.
type opsEvent struct {
	Timestamp   string `json:"timestamp"`
	FlowID      uint64 `json:"flow_id"`
	PcapCnt     uint64 `json:"pcap_cnt"`
	InIface     string `json:"in_iface"`
	Vlan        []int  `json:"vlan"`
	EventType   string `json:"event_type"`
	SrcIP       string `json:"src_ip"`
	SrcPort     uint16 `json:"src_port"`
	DestIP      string `json:"dest_ip"`
	DestPort    uint16 `json:"dest_port"`
	Proto       string `json:"proto"`
	AppProto    string `json:"app_proto"`
	TxID        *int   `json:"tx_id"`
	Direction   string `json:"direction"`
	CommunityID string `json:"community_id"`
	Host        string `json:"host"`

	Flow  *opsEveFlow  `json:"flow"`
	TLS   *opsEveTLS   `json:"tls"`
	HTTP  *opsEveHTTP  `json:"http"`
	Alert *opsEveAlert `json:"alert"`

	// netward's documented extensions (event package doc, README "EVE"):
	// geo lookups and netward's verdict.
	SrcGeo  *opsEveGeo     `json:"src_geo"`
	DestGeo *opsEveGeo     `json:"dest_geo"`
	Netward *opsEveNetward `json:"netward"`

	line string
}

type opsEveFlow struct {
	PktsToServer  *uint64 `json:"pkts_toserver"`
	PktsToClient  *uint64 `json:"pkts_toclient"`
	BytesToServer *uint64 `json:"bytes_toserver"`
	BytesToClient *uint64 `json:"bytes_toclient"`
	Start         string  `json:"start"`
	End           string  `json:"end"`
	Age           *int64  `json:"age"`
	State         string  `json:"state"`
	Reason        string  `json:"reason"`
	Alerted       *bool   `json:"alerted"`
	Bypass        string  `json:"bypass"`
	Emergency     bool    `json:"emergency"`
	TxCnt         int     `json:"tx_cnt"`
}

type opsEveHash struct {
	Hash   string `json:"hash"`
	String string `json:"string"`
}

type opsEveTLS struct {
	Subject        string      `json:"subject"`
	IssuerDN       string      `json:"issuerdn"`
	Serial         string      `json:"serial"`
	Fingerprint    string      `json:"fingerprint"`
	SNI            string      `json:"sni"`
	Version        string      `json:"version"`
	NotBefore      string      `json:"notbefore"`
	NotAfter       string      `json:"notafter"`
	SessionResumed bool        `json:"session_resumed"`
	JA3            *opsEveHash `json:"ja3"`
	JA3S           *opsEveHash `json:"ja3s"`
	JA4            string      `json:"ja4"`
	ClientALPNs    []string    `json:"client_alpns"`
	ServerALPNs    []string    `json:"server_alpns"`
}

type opsEveHTTP struct {
	Hostname        string          `json:"hostname"`
	HTTPPort        int             `json:"http_port"`
	URL             string          `json:"url"`
	UserAgent       string          `json:"http_user_agent"`
	ContentType     string          `json:"http_content_type"`
	Refer           string          `json:"http_refer"`
	Method          string          `json:"http_method"`
	Protocol        string          `json:"protocol"`
	Status          int             `json:"status"`
	Length          int64           `json:"length"`
	Redirect        string          `json:"redirect"`
	XFF             string          `json:"xff"`
	RequestHeaders  json.RawMessage `json:"request_headers"`
	ResponseHeaders json.RawMessage `json:"response_headers"`
}

type opsEveAlert struct {
	Action      string          `json:"action"`
	GID         int             `json:"gid"`
	SignatureID uint32          `json:"signature_id"`
	Rev         int             `json:"rev"`
	Signature   string          `json:"signature"`
	Category    string          `json:"category"`
	Severity    int             `json:"severity"`
	Metadata    json.RawMessage `json:"metadata"`
}

type opsEveGeo struct {
	CountryISO string `json:"country_iso"`
	ASN        uint32 `json:"asn"`
	ASOrg      string `json:"as_org"`
}

type opsEveNetward struct {
	Verdict string `json:"verdict"`
	Rule    string `json:"rule"`
	ECH     bool   `json:"ech"`
}

// opsEveTimeLayout is Suricata's timestamp: local time, microseconds, numeric
// zone ("2017-04-07T22:24:37.251547+0100").
const opsEveTimeLayout = "2006-01-02T15:04:05.000000-0700"

// opsReadEVE decodes every line of the event log strictly; any line that is
// not a valid EVE event is an error.
func opsReadEVE(path string) ([]opsEvent, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []opsEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		e, err := opsDecodeEVE(line)
		if err != nil {
			return out, fmt.Errorf("%s:%d: %v\n%s", path, n, err, line)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

func opsDecodeEVE(line []byte) (opsEvent, error) {
	var e opsEvent
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("not an EVE event: %w", err)
	}
	if dec.More() {
		return e, fmt.Errorf("more than one JSON value on the line")
	}
	e.line = string(line)
	// The fields every Suricata event has.
	var missing []string
	if e.Timestamp == "" {
		missing = append(missing, "timestamp")
	}
	if e.FlowID == 0 {
		missing = append(missing, "flow_id")
	}
	if e.EventType == "" {
		missing = append(missing, "event_type")
	}
	if e.SrcIP == "" || e.SrcPort == 0 || e.DestIP == "" || e.DestPort == 0 {
		missing = append(missing, "src_ip/src_port/dest_ip/dest_port")
	}
	if e.Proto == "" {
		missing = append(missing, "proto")
	}
	if len(missing) > 0 {
		return e, fmt.Errorf("missing %v", missing)
	}
	if _, err := time.Parse(opsEveTimeLayout, e.Timestamp); err != nil {
		return e, fmt.Errorf("timestamp %q is not EVE's %s", e.Timestamp, opsEveTimeLayout)
	}
	obj := map[string]bool{"flow": e.Flow != nil, "tls": e.TLS != nil, "http": e.HTTP != nil, "alert": e.Alert != nil}
	if _, known := obj[e.EventType]; !known {
		return e, fmt.Errorf("event_type %q is not flow, tls, http or alert", e.EventType)
	}
	for name, present := range obj {
		if present != (name == e.EventType) {
			return e, fmt.Errorf("event_type %q with object %q present=%v", e.EventType, name, present)
		}
	}
	if f := e.Flow; f != nil {
		if f.BytesToServer == nil || f.BytesToClient == nil || f.Start == "" || f.End == "" || f.Age == nil || f.State == "" || f.Reason == "" || f.Alerted == nil {
			return e, fmt.Errorf("flow object lacks one of bytes_toserver, bytes_toclient, start, end, age, state, reason, alerted")
		}
		for _, ts := range []string{f.Start, f.End} {
			if _, err := time.Parse(opsEveTimeLayout, ts); err != nil {
				return e, fmt.Errorf("flow time %q is not EVE's %s", ts, opsEveTimeLayout)
			}
		}
	}
	return e, nil
}

func (e *opsEvent) src() netip.AddrPort {
	a, _ := netip.ParseAddr(e.SrcIP)
	return netip.AddrPortFrom(a, e.SrcPort)
}

func (e *opsEvent) dst() netip.AddrPort {
	a, _ := netip.ParseAddr(e.DestIP)
	return netip.AddrPortFrom(a, e.DestPort)
}

// opsWaitFlowEvents waits until the event log holds the flow event of the
// connection from src and returns all events of that flow (same flow_id
// and source), in log order. Every line of the log must decode strictly.
func opsWaitFlowEvents(t testing.TB, path string, src netip.AddrPort) []opsEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		all, err := opsReadEVE(path)
		if err != nil {
			t.Fatalf("event log: %v", err)
		}
		var id uint64
		for _, e := range all {
			if e.EventType == "flow" && e.src() == src {
				id = e.FlowID
			}
		}
		if id != 0 {
			var out []opsEvent
			for _, e := range all {
				if e.FlowID == id && e.src() == src {
					out = append(out, e)
				}
			}
			return out
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no flow event from %s in %s after 15 s (%d events)", src, path, len(all))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
