package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The strict EVE decoder of the e2e tests. An event is decoded with
// DisallowUnknownFields against exactly the fields netward writes (Suricata's
// names from its eve-log output, plus netward's documented extensions
// src_geo, dest_geo and netward): a renamed, misspelt or unexpected field
// fails the test instead of leaving a field empty, and so does a Suricata
// field the tests do not know yet, until it is added here. Then each event
// is checked for what every event must have (eveEvent.check) and for the
// fields of its flow object (eveFlow.check).

// eveEvent is one line of the event log. F is the Go shape of the flow
// object, as the test reading it wants it: eveFlow (pointers) or
// eveFlowValues (plain values). The decoder checks the object against
// eveFlow either way.
type eveEvent[F eveFlow | eveFlowValues] struct {
	Timestamp string `json:"timestamp"`
	FlowID    uint64 `json:"flow_id"`
	InIface   string `json:"in_iface"`
	EventType string `json:"event_type"`
	SrcIP     string `json:"src_ip"`
	SrcPort   uint16 `json:"src_port"`
	DestIP    string `json:"dest_ip"`
	DestPort  uint16 `json:"dest_port"`
	Proto     string `json:"proto"`
	AppProto  string `json:"app_proto"`

	Flow  *F        `json:"flow"`
	Alert *eveAlert `json:"alert"`
	TLS   *eveTLS   `json:"tls"`
	HTTP  *eveHTTP  `json:"http"`

	// netward's documented extensions (event package doc, README "EVE"):
	// geo lookups and netward's verdict.
	SrcGeo  *eveGeo     `json:"src_geo"`
	DestGeo *eveGeo     `json:"dest_geo"`
	Netward *eveNetward `json:"netward"`

	line string // the event as written, for failure messages
}

// eveFlow is the flow object with pointers, so that a field that is
// missing shows (check).
type eveFlow struct {
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
}

// eveFlowValues is eveFlow with plain values, for tests that compare them
// directly; the decoder has checked that each is present.
type eveFlowValues struct {
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

type eveAlert struct {
	Action      string `json:"action"`
	SignatureID uint32 `json:"signature_id"`
	Signature   string `json:"signature"`
	Category    string `json:"category"`
	Severity    int    `json:"severity"`
}

type eveHash struct {
	Hash   string `json:"hash"`
	String string `json:"string"`
}

type eveTLS struct {
	SNI         string   `json:"sni"`
	Version     string   `json:"version"`
	JA3         *eveHash `json:"ja3"`
	JA4         string   `json:"ja4"`
	ClientALPNs []string `json:"client_alpns"`
}

type eveHTTP struct {
	Hostname  string `json:"hostname"`
	URL       string `json:"url"`
	UserAgent string `json:"http_user_agent"`
	Method    string `json:"http_method"`
	Protocol  string `json:"protocol"`
	Status    int    `json:"status"`
	Length    int64  `json:"length"`
}

type eveGeo struct {
	CountryISO string `json:"country_iso"`
	ASN        uint32 `json:"asn"`
	ASOrg      string `json:"as_org"`
}

type eveNetward struct {
	Verdict string `json:"verdict"`
	Rule    string `json:"rule"`
	ECH     bool   `json:"ech"`
}

// eveTimeLayout is Suricata's timestamp: local time, microseconds, numeric
// zone ("2017-04-07T22:24:37.251547+0100"). It is written out here rather
// than taken from the event package, so that the tests hold netward to EVE.
const eveTimeLayout = "2006-01-02T15:04:05.000000-0700"

// The names the tests use: ops_test.go reads flow objects with pointers,
// rules_test.go with values.
type (
	opsEvent  = eveEvent[eveFlow]
	ruleEvent = eveEvent[eveFlowValues]
)

const opsEveTimeLayout = eveTimeLayout

func opsReadEVE(path string) ([]opsEvent, error)   { return readEVE[eveFlow](path) }
func ruleReadEVE(path string) ([]ruleEvent, error) { return readEVE[eveFlowValues](path) }

func (e *eveEvent[F]) src() netip.AddrPort { return e.Src() }
func (e *eveEvent[F]) dst() netip.AddrPort { return e.Dst() }

// Src and Dst are the event's addresses; not valid if the IP is not.
func (e *eveEvent[F]) Src() netip.AddrPort { return eveAddr(e.SrcIP, e.SrcPort) }
func (e *eveEvent[F]) Dst() netip.AddrPort { return eveAddr(e.DestIP, e.DestPort) }

func eveAddr(ip string, port uint16) netip.AddrPort {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

// readEVE strictly decodes every line of the event log at path; any line
// that is not a valid EVE event, an empty one included, is an error. A last
// line without its newline may still be being written: if it is cut short
// it is left for the next read, otherwise it must be a valid event too.
func readEVE[F eveFlow | eveFlowValues](path string) ([]eveEvent[F], error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []eveEvent[F]
	for n, line := range bytes.SplitAfter(data, []byte("\n")) {
		complete := bytes.HasSuffix(line, []byte("\n"))
		if !complete && len(line) == 0 {
			break // the log ends with a newline
		}
		e, err := decodeEVE[F](line)
		if !complete && errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("%s:%d: %v\n%s", path, n+1, err, line)
		}
		out = append(out, e)
	}
	return out, nil
}

// decodeEVE decodes and checks one line (its newline, if any, included).
func decodeEVE[F eveFlow | eveFlowValues](line []byte) (eveEvent[F], error) {
	var e eveEvent[F]
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("not an EVE event: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return e, fmt.Errorf("data after the event")
	}
	e.line = string(bytes.TrimSuffix(line, []byte("\n")))
	// The flow object once more, with pointers, to see what is missing.
	var obj struct {
		Flow *eveFlow `json:"flow"`
	}
	if err := json.Unmarshal(line, &obj); err != nil {
		return e, fmt.Errorf("flow object: %w", err)
	}
	if err := e.check(); err != nil {
		return e, err
	}
	if obj.Flow != nil {
		return e, obj.Flow.check()
	}
	return e, nil
}

// check verifies what every event must have: a timestamp in EVE's format,
// a flow id, TCP addresses and ports, and exactly the object its type
// names.
func (e *eveEvent[F]) check() error {
	if _, err := time.Parse(eveTimeLayout, e.Timestamp); err != nil {
		return fmt.Errorf("timestamp %q is not EVE's %s", e.Timestamp, eveTimeLayout)
	}
	if e.FlowID == 0 {
		return fmt.Errorf("no flow_id")
	}
	if e.Proto != "TCP" {
		return fmt.Errorf("proto %q, want TCP", e.Proto)
	}
	if !e.Src().IsValid() || e.SrcPort == 0 || !e.Dst().IsValid() || e.DestPort == 0 {
		return fmt.Errorf("want src_ip, src_port, dest_ip and dest_port")
	}
	objs := map[string]bool{"flow": e.Flow != nil, "alert": e.Alert != nil, "tls": e.TLS != nil, "http": e.HTTP != nil}
	if _, known := objs[e.EventType]; !known {
		return fmt.Errorf("event_type %q is not flow, alert, tls or http", e.EventType)
	}
	for typ, present := range objs {
		if present != (typ == e.EventType) {
			return fmt.Errorf("event_type %q with objects %v", e.EventType, objs)
		}
	}
	return nil
}

// check verifies that the flow object has the fields every flow event
// has, and its times are in EVE's format.
func (f *eveFlow) check() error {
	if f.BytesToServer == nil || f.BytesToClient == nil || f.Start == "" || f.End == "" || f.Age == nil || f.State == "" || f.Reason == "" || f.Alerted == nil {
		return fmt.Errorf("flow object lacks one of bytes_toserver, bytes_toclient, start, end, age, state, reason, alerted")
	}
	for _, ts := range []string{f.Start, f.End} {
		if _, err := time.Parse(eveTimeLayout, ts); err != nil {
			return fmt.Errorf("flow time %q is not EVE's %s", ts, eveTimeLayout)
		}
	}
	return nil
}

// TestEVEDecoder: the strict decoder takes a well-formed event in either
// flow shape and refuses each way an event can be wrong.
func TestEVEDecoder(t *testing.T) {
	const flowLine = `{"timestamp":"2026-11-25T18:40:00.123456+0000","flow_id":7,"event_type":"flow",` +
		`"src_ip":"10.0.0.2","src_port":40000,"dest_ip":"192.0.2.10","dest_port":80,"proto":"TCP","app_proto":"http",` +
		`"flow":{"pkts_toserver":3,"pkts_toclient":2,"bytes_toserver":120,"bytes_toclient":0,` +
		`"start":"2026-11-25T18:40:00.000000+0000","end":"2026-11-25T18:40:00.123456+0000","age":0,` +
		`"state":"closed","reason":"shutdown","alerted":false},"netward":{"verdict":"allow","rule":"default"}}`
	const httpLine = `{"timestamp":"2026-11-25T18:40:00.123456+0000","flow_id":7,"event_type":"http",` +
		`"src_ip":"10.0.0.2","src_port":40000,"dest_ip":"192.0.2.10","dest_port":80,"proto":"TCP",` +
		`"http":{"hostname":"app.example","url":"/","http_method":"GET","protocol":"HTTP/1.1","length":0}}`
	for _, line := range []string{flowLine, httpLine} {
		if _, err := decodeEVE[eveFlow]([]byte(line + "\n")); err != nil {
			t.Errorf("eveFlow: %v\n%s", err, line)
		}
		e, err := decodeEVE[eveFlowValues]([]byte(line))
		if err != nil {
			t.Errorf("eveFlowValues: %v\n%s", err, line)
		}
		if e.line != line {
			t.Errorf("line %q, want %q", e.line, line)
		}
	}
	e, _ := decodeEVE[eveFlow]([]byte(flowLine))
	if e.Flow == nil || *e.Flow.BytesToServer != 120 || *e.Flow.Alerted || e.Src() != netip.MustParseAddrPort("10.0.0.2:40000") || e.dst() != netip.MustParseAddrPort("192.0.2.10:80") {
		t.Errorf("decoded %+v, flow %+v", e, e.Flow)
	}
	bad := []struct{ name, old, new string }{
		{"unknown field", `"app_proto":"http"`, `"app_proto":"http","community_id":"1:x"`},
		{"unknown flow field", `"age":0`, `"age":0,"bypass":"local"`},
		{"data after the event", `"default"}}`, `"default"}} {}`},
		{"timestamp layout", `"timestamp":"2026-11-25T18:40:00.123456+0000"`, `"timestamp":"2026-11-25T18:40:00Z"`},
		{"no flow_id", `"flow_id":7`, `"flow_id":0`},
		{"proto", `"proto":"TCP"`, `"proto":"UDP"`},
		{"src_ip", `"src_ip":"10.0.0.2"`, `"src_ip":"10.0.0"`},
		{"dest_port", `"dest_port":80`, `"dest_port":0`},
		{"unknown event_type", `"event_type":"flow"`, `"event_type":"dns"`},
		{"object of another type", `"event_type":"flow"`, `"event_type":"http"`},
		{"second object", `"netward":`, `"alert":{"action":"allowed"},"netward":`},
		{"flow field missing", `"alerted":false`, `"alerted":null`},
		{"flow time layout", `"start":"2026-11-25T18:40:00.000000+0000"`, `"start":"yesterday"`},
	}
	for _, c := range bad {
		line := strings.Replace(flowLine, c.old, c.new, 1)
		if line == flowLine {
			t.Fatalf("%s: %q is not in the line", c.name, c.old)
		}
		if _, err := decodeEVE[eveFlow]([]byte(line)); err == nil {
			t.Errorf("%s: eveFlow took %s", c.name, line)
		}
		if _, err := decodeEVE[eveFlowValues]([]byte(line)); err == nil {
			t.Errorf("%s: eveFlowValues took %s", c.name, line)
		}
	}

	// A log: a line cut short at its end is being written; anything else
	// that is not an event, an empty line included, is an error.
	dir := t.TempDir()
	for _, c := range []struct {
		name, log string
		events    int // -1: an error
	}{
		{"complete", flowLine + "\n" + httpLine + "\n", 2},
		{"last line being written", flowLine + "\n" + httpLine[:40], 1},
		{"last line without its newline", flowLine + "\n" + httpLine, 2},
		{"empty", "", 0},
		{"empty line", flowLine + "\n\n" + httpLine + "\n", -1},
		{"line cut short before a newline", httpLine[:40] + "\n" + flowLine + "\n", -1},
		{"bad last line", flowLine + "\n" + "nonsense", -1},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
		if err := os.WriteFile(path, []byte(c.log), 0o644); err != nil {
			t.Fatal(err)
		}
		for shape, read := range map[string]func(string) (int, error){
			"eveFlow":       func(p string) (int, error) { evs, err := opsReadEVE(p); return len(evs), err },
			"eveFlowValues": func(p string) (int, error) { evs, err := ruleReadEVE(p); return len(evs), err },
		} {
			n, err := read(path)
			switch {
			case c.events < 0 && err == nil:
				t.Errorf("%s (%s): no error", c.name, shape)
			case c.events >= 0 && (err != nil || n != c.events):
				t.Errorf("%s (%s): %d events, %v; want %d", c.name, shape, n, err, c.events)
			}
		}
	}
}
