package event

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The eve* types are the EVE schema as far as netward writes it. Field names
// are Suricata's (etc/schema.json and the EVE index of the Suricata 7/8
// docs); netward's additions are eveGeo and eveNetward. Events are decoded
// with DisallowUnknownFields, so a misspelt or unexpected field fails.
type eveEvent struct {
	Timestamp string      `json:"timestamp"`
	FlowID    *uint64     `json:"flow_id"`
	InIface   string      `json:"in_iface"`
	EventType string      `json:"event_type"`
	SrcIP     string      `json:"src_ip"`
	SrcPort   *int        `json:"src_port"`
	DestIP    string      `json:"dest_ip"`
	DestPort  *int        `json:"dest_port"`
	Proto     string      `json:"proto"`
	AppProto  string      `json:"app_proto"`
	Flow      *eveFlow    `json:"flow"`
	Alert     *eveAlert   `json:"alert"`
	TLS       *eveTLS     `json:"tls"`
	HTTP      *eveHTTP    `json:"http"`
	SrcGeo    *eveGeo     `json:"src_geo"`
	DestGeo   *eveGeo     `json:"dest_geo"`
	Netward   *eveNetward `json:"netward"`
}

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

type eveAlert struct {
	Action      string  `json:"action"`
	SignatureID *uint32 `json:"signature_id"`
	Signature   string  `json:"signature"`
	Category    string  `json:"category"`
	Severity    int     `json:"severity"`
}

type eveTLS struct {
	SNI         string   `json:"sni"`
	Version     string   `json:"version"`
	JA3         *eveJA3  `json:"ja3"`
	JA4         string   `json:"ja4"`
	ClientALPNs []string `json:"client_alpns"`
}

type eveJA3 struct {
	Hash   string `json:"hash"`
	String string `json:"string"`
}

type eveHTTP struct {
	Hostname      string `json:"hostname"`
	URL           string `json:"url"`
	HTTPUserAgent string `json:"http_user_agent"`
	HTTPMethod    string `json:"http_method"`
	Protocol      string `json:"protocol"`
	Status        int    `json:"status"`
	Length        int64  `json:"length"`
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

// eveTimestamp is the pattern of "timestamp" in Suricata's schema.json.
var eveTimestamp = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+[+\-]\d+$`)

// decodeStrict parses one EVE line: exactly one JSON object, known fields
// only, ending in the line's only newline.
func decodeStrict(t testing.TB, line []byte) eveEvent {
	t.Helper()
	if len(line) == 0 || line[len(line)-1] != '\n' || bytes.Count(line, []byte{'\n'}) != 1 {
		t.Fatalf("event is not one line: %q", line)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var ev eveEvent
	if err := dec.Decode(&ev); err != nil {
		t.Fatalf("strict decode of %s: %v", line, err)
	}
	if dec.More() {
		t.Fatalf("trailing data after event: %s", line)
	}
	// Also reject duplicate keys, which encoding/json silently accepts.
	checkNoDuplicateKeys(t, line)
	if !eveTimestamp.MatchString(ev.Timestamp) {
		t.Fatalf("timestamp %q does not match EVE's pattern", ev.Timestamp)
	}
	return ev
}

func checkNoDuplicateKeys(t testing.TB, line []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(line))
	var walk func() error
	walk = func() error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key := k.(string)
				if seen[key] {
					t.Fatalf("duplicate key %q in %s", key, line)
				}
				seen[key] = true
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for dec.More() {
				if err := walk(); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	if err := walk(); err != nil {
		t.Fatalf("walk %s: %v", line, err)
	}
}

var (
	testZone  = time.FixedZone("", 3600)
	testStart = time.Date(2025, 3, 1, 12, 0, 0, 250_000_000, testZone)
	testEnd   = testStart.Add(90*time.Second + 500*time.Microsecond)
)

func testHeader() Header {
	return Header{
		Time:     testEnd,
		FlowID:   586497171462735,
		Src:      netip.MustParseAddrPort("192.0.2.10:50096"),
		Dst:      netip.MustParseAddrPort("[2001:db8::5]:443"),
		AppProto: "tls",
		SrcGeo:   Geo{Country: "DE", ASN: 64500, ASOrg: "Example \"AS\""},
		Verdict:  "deny",
		Rule:     "no-social",
	}
}

func encodeOne(t testing.TB, l *Log, emit func(*Log)) []byte {
	t.Helper()
	var buf bytes.Buffer
	nl, err := New(Options{Writer: &buf, InIface: "eth1", Now: func() time.Time { return testEnd }})
	if err != nil {
		t.Fatal(err)
	}
	emit(nl)
	if err := nl.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func u64(v uint64) *uint64 { return &v }
func i64(v int64) *int64   { return &v }
func intp(v int) *int      { return &v }
func boolp(v bool) *bool   { return &v }
func u32(v uint32) *uint32 { return &v }

func TestEventsStrict(t *testing.T) {
	h := testHeader()
	common := eveEvent{
		Timestamp: "2025-03-01T12:01:30.250500+0100",
		FlowID:    u64(586497171462735),
		InIface:   "eth1",
		SrcIP:     "192.0.2.10",
		SrcPort:   intp(50096),
		DestIP:    "2001:db8::5",
		DestPort:  intp(443),
		Proto:     "TCP",
		AppProto:  "tls",
		SrcGeo:    &eveGeo{CountryISO: "DE", ASN: 64500, ASOrg: `Example "AS"`},
		Netward:   &eveNetward{Verdict: "deny", Rule: "no-social"},
	}
	tests := []struct {
		name string
		emit func(*Log)
		want func(e *eveEvent)
	}{
		{
			name: "flow",
			emit: func(l *Log) {
				l.Flow(&Flow{Header: h, Start: testStart, End: testEnd,
					BytesToServer: 517, BytesToClient: 0, PktsToServer: 3, PktsToClient: 2,
					State: StateNew, Reason: ReasonForced, Alerted: true})
			},
			want: func(e *eveEvent) {
				e.EventType = "flow"
				e.Flow = &eveFlow{
					PktsToServer: u64(3), PktsToClient: u64(2),
					BytesToServer: u64(517), BytesToClient: u64(0),
					Start: "2025-03-01T12:00:00.250000+0100", End: "2025-03-01T12:01:30.250500+0100",
					Age: i64(90), State: "new", Reason: "forced", Alerted: boolp(true),
				}
			},
		},
		{
			name: "alert blocked",
			emit: func(l *Log) { l.Alert(&Alert{Header: h, Action: ActionBlocked, Signature: "no-social"}) },
			want: func(e *eveEvent) {
				e.EventType = "alert"
				e.Alert = &eveAlert{Action: "blocked", SignatureID: u32(SignatureID("no-social")),
					Signature: "no-social", Category: DefaultCategory, Severity: 2}
			},
		},
		{
			name: "alert allowed explicit",
			emit: func(l *Log) {
				l.Alert(&Alert{Header: h, Action: ActionAllowed, Signature: "watch", SignatureID: 9000001, Category: "Audit", Severity: 1})
			},
			want: func(e *eveEvent) {
				e.EventType = "alert"
				e.Alert = &eveAlert{Action: "allowed", SignatureID: u32(9000001), Signature: "watch", Category: "Audit", Severity: 1}
			},
		},
		{
			name: "tls",
			emit: func(l *Log) {
				l.TLS(&TLS{Header: h, SNI: "www.example.com", Version: 0x0304, ALPN: []string{"h2", "http/1.1"},
					JA3: "771,4865-4866,0-23,29-23,0", JA3Hash: "e7eca2baf4458d095b7f45da28c16c34",
					JA4: "t13d1516h2_8daaf6152771_b186095e22b6", ECH: true})
			},
			want: func(e *eveEvent) {
				e.EventType = "tls"
				e.TLS = &eveTLS{SNI: "www.example.com", Version: "TLS 1.3",
					JA3: &eveJA3{Hash: "e7eca2baf4458d095b7f45da28c16c34", String: "771,4865-4866,0-23,29-23,0"},
					JA4: "t13d1516h2_8daaf6152771_b186095e22b6", ClientALPNs: []string{"h2", "http/1.1"}}
				e.Netward.ECH = true
			},
		},
		{
			name: "http",
			emit: func(l *Log) {
				hh := h
				hh.AppProto = "http"
				l.HTTP(&HTTP{Header: hh, Hostname: "example.com", URL: "/a?b=\"c\"", Method: "GET",
					UserAgent: "curl/8.5.0", Protocol: "HTTP/1.1", Status: 403, Length: 1234})
			},
			want: func(e *eveEvent) {
				e.EventType = "http"
				e.AppProto = "http"
				e.HTTP = &eveHTTP{Hostname: "example.com", URL: `/a?b="c"`, HTTPMethod: "GET",
					HTTPUserAgent: "curl/8.5.0", Protocol: "HTTP/1.1", Status: 403, Length: 1234}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := encodeOne(t, nil, tt.emit)
			got := decodeStrict(t, line)
			want := common
			nw := *common.Netward
			want.Netward = &nw
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(want)
				t.Errorf("event %s\n got  %s\n want %s", line, gj, wj)
			}
			// Suricata's order: the common fields come first.
			if !bytes.HasPrefix(line, []byte(`{"timestamp":`)) || !bytes.Contains(line, []byte(`"in_iface":"eth1","event_type":"`+want.EventType+`","src_ip"`)) {
				t.Errorf("header order: %s", line)
			}
		})
	}
}

func TestEventsOmitUnknown(t *testing.T) {
	line := encodeOne(t, nil, func(l *Log) {
		l.Flow(&Flow{Header: Header{FlowID: 7, Src: netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"), Dst: netip.MustParseAddrPort("10.0.0.2:80")}})
	})
	got := decodeStrict(t, line)
	if got.SrcIP != "10.0.0.1" {
		t.Errorf("4in6 address written as %q, want 10.0.0.1", got.SrcIP)
	}
	if got.Flow.PktsToServer != nil || got.Flow.PktsToClient != nil {
		t.Errorf("pkts written though not counted: %s", line)
	}
	if got.Flow.Start != "" || got.Flow.Age != nil || got.Flow.State != "" {
		t.Errorf("unknown start/age/state written: %s", line)
	}
	if got.Flow.End != "2025-03-01T12:01:30.250500+0100" {
		t.Errorf("zero End should default to now: %s", line)
	}
	if got.SrcGeo != nil || got.DestGeo != nil || got.Netward != nil || got.AppProto != "" {
		t.Errorf("empty optional objects written: %s", line)
	}
	if got.InIface != "eth1" {
		t.Errorf("in_iface default not used: %s", line)
	}

	// A verdict with no rule is the default action.
	line = encodeOne(t, nil, func(l *Log) {
		l.Alert(&Alert{Header: Header{FlowID: 1, Verdict: "deny"}})
	})
	got = decodeStrict(t, line)
	if got.Netward == nil || got.Netward.Rule != "default" || got.Alert.Signature != "default" {
		t.Errorf("default rule: %s", line)
	}
}

func TestHostileFieldsStayOneEvent(t *testing.T) {
	evil := "x\"}\n{\"event_type\":\"alert\x00\xff\u2028"
	line := encodeOne(t, nil, func(l *Log) {
		h := Header{FlowID: 1, InIface: evil, AppProto: evil, Verdict: evil, Rule: evil,
			SrcGeo: Geo{Country: evil, ASOrg: evil}}
		l.HTTP(&HTTP{Header: h, Hostname: evil, URL: evil, Method: evil, UserAgent: evil, Protocol: evil})
	})
	got := decodeStrict(t, line)
	want := viaEncodingJSON(evil)
	if got.HTTP.URL != want || got.InIface != want || got.Netward.Rule != want || got.SrcGeo.ASOrg != want {
		t.Errorf("hostile strings not preserved: %s", line)
	}
}

func FuzzEvent(f *testing.F) {
	f.Add("example.com", "/", "GET", "curl/8", "h2", uint16(0x0304))
	f.Add("\x00\"\\", "\n\r", "\xff", "\u2028", "", uint16(0x7a7a))
	f.Fuzz(func(t *testing.T, host, url, method, ua, alpn string, version uint16) {
		h := Header{FlowID: 1, Src: netip.MustParseAddrPort("192.0.2.1:1"), Dst: netip.MustParseAddrPort("198.51.100.1:443"),
			AppProto: alpn, Rule: host, Verdict: method, SrcGeo: Geo{ASOrg: ua}}
		line := encodeOne(t, nil, func(l *Log) {
			l.TLS(&TLS{Header: h, SNI: host, Version: version, ALPN: []string{alpn, url}, JA3: ua, JA4: method})
		})
		ev := decodeStrict(t, line)
		if ev.TLS == nil || ev.TLS.SNI != viaEncodingJSON(host) {
			t.Fatalf("sni %q lost: %s", host, line)
		}
		line = encodeOne(t, nil, func(l *Log) {
			l.HTTP(&HTTP{Header: h, Hostname: host, URL: url, Method: method, UserAgent: ua, Protocol: alpn})
		})
		decodeStrict(t, line)
	})
}

// viaEncodingJSON is what s reads as after encoding/json wrote it.
func viaEncodingJSON(s string) string {
	b, _ := json.Marshal(s)
	var out string
	json.Unmarshal(b, &out)
	return out
}

func TestVersionName(t *testing.T) {
	for v, want := range map[uint16]string{0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3", 0x7f1c: "0x7f1c", 0x0005: "0x0005"} {
		if got := VersionName(v); got != want {
			t.Errorf("VersionName(%#x) = %q, want %q", v, got, want)
		}
	}
}

func TestHighestVersion(t *testing.T) {
	tests := []struct {
		in   []uint16
		want uint16
	}{
		{nil, 0},
		{[]uint16{0x0a0a}, 0},
		{[]uint16{0x3a3a, 0x0304, 0x0303}, 0x0304},
		{[]uint16{0x0301, 0x0303, 0xfafa}, 0x0303},
		{[]uint16{0x0a1a}, 0x0a1a}, // not GREASE: the two bytes differ
	}
	for _, tt := range tests {
		if got := HighestVersion(tt.in); got != tt.want {
			t.Errorf("HighestVersion(%#x) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
}

func TestSignatureIDStable(t *testing.T) {
	// FNV-1a 32 of "a" (the published test vector): the id must never
	// change between releases, SIEM rules key on it.
	if got := SignatureID("a"); got != 0xe40c292c {
		t.Errorf("SignatureID(a) = %#x, want 0xe40c292c", got)
	}
	if SignatureID("x") == SignatureID("y") {
		t.Error("different rules, same id")
	}
}

func TestEncodeNoAllocs(t *testing.T) {
	l := &Log{now: func() time.Time { return testEnd }, iface: "eth1"}
	h := testHeader()
	fl := &Flow{Header: h, Start: testStart, End: testEnd, BytesToServer: 1, State: StateClosed, Reason: ReasonTimeout}
	tl := &TLS{Header: h, SNI: "www.example.com", Version: 0x0304, ALPN: []string{"h2"}, JA3Hash: "abc", JA4: "t13d", ECH: true}
	ht := &HTTP{Header: h, Hostname: "example.com", URL: "/x", Method: "GET", UserAgent: "ua", Protocol: "HTTP/1.1"}
	al := &Alert{Header: h, Signature: "no-social"}
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(200, func() {
		buf = l.appendFlow(buf[:0], fl)
		buf = l.appendTLS(buf[:0], tl)
		buf = l.appendHTTP(buf[:0], ht)
		buf = l.appendAlert(buf[:0], al)
	})
	if allocs != 0 {
		t.Errorf("encoding allocates %v times per event set, want 0", allocs)
	}
}

func testNow() time.Time { return testEnd }

// The examples in README.md must be events netward could write.
func TestREADMEExamples(t *testing.T) {
	doc, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, `{"timestamp"`) {
			continue
		}
		n++
		ev := decodeStrict(t, []byte(line+"\n"))
		if ev.Alert != nil && *ev.Alert.SignatureID != SignatureID(ev.Alert.Signature) {
			t.Errorf("README alert signature_id %d, SignatureID(%q) = %d", *ev.Alert.SignatureID, ev.Alert.Signature, SignatureID(ev.Alert.Signature))
		}
	}
	if n < 3 {
		t.Errorf("found %d examples in README.md", n)
	}
}
