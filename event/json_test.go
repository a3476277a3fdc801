package event

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// checkString verifies appendString(s) against encoding/json: the output is
// one valid JSON string, valid UTF-8, without raw control characters, and it
// decodes to exactly what encoding/json's own encoding of s decodes to.
func checkString(t *testing.T, s string) {
	t.Helper()
	got := appendString(nil, s)
	if !utf8.Valid(got) {
		t.Fatalf("appendString(%q) = %q: not valid UTF-8", s, got)
	}
	for _, c := range got {
		if c < 0x20 {
			t.Fatalf("appendString(%q) = %q: raw control byte %#x", s, got, c)
		}
	}
	if bytes.Contains(got, []byte("\u2028")) || bytes.Contains(got, []byte("\u2029")) {
		t.Fatalf("appendString(%q) = %q: raw line separator", s, got)
	}
	var mine string
	dec := json.NewDecoder(bytes.NewReader(got))
	if err := dec.Decode(&mine); err != nil {
		t.Fatalf("appendString(%q) = %q: %v", s, got, err)
	}
	if dec.More() {
		t.Fatalf("appendString(%q) = %q: trailing data", s, got)
	}
	ref, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var want string
	if err := json.Unmarshal(ref, &want); err != nil {
		t.Fatal(err)
	}
	if mine != want {
		t.Fatalf("appendString(%q) decodes to %q, encoding/json gives %q", s, mine, want)
	}
}

func TestAppendString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // exact encoding, "" = only compare with encoding/json
	}{
		{"empty", "", `""`},
		{"plain", "example.com", `"example.com"`},
		{"quote", `a"b`, `"a\"b"`},
		{"backslash", `a\b`, `"a\\b"`},
		{"newline", "GET /\r\nX-Evil: 1", `"GET /\r\nX-Evil: 1"`},
		{"tab", "a\tb", `"a\tb"`},
		{"backspace formfeed", "\b\f", `"\b\f"`},
		{"nul and controls", "\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"del passes", "\x7f", "\"\x7f\""},
		{"utf8", "bücher.example", `"bücher.example"`},
		{"invalid byte", "a\xffb", `"a\ufffdb"`},
		{"truncated rune", "\xe2\x82", `"\ufffd\ufffd"`},
		{"overlong slash", "\xc0\xaf", `"\ufffd\ufffd"`},
		{"surrogate half", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
		{"line separators", "a\u2028b\u2029c", `"a\u2028b\u2029c"`},
		{"html stays", "<script>&", `"<script>&"`},
		{"json injection", `","event_type":"alert`, `"\",\"event_type\":\"alert"`},
		{"4-byte rune", "😀", `"😀"`},
		{"long", strings.Repeat("a\"", 5000), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkString(t, tt.in)
			if tt.want != "" {
				if got := string(appendString(nil, tt.in)); got != tt.want {
					t.Errorf("appendString(%q) = %s, want %s", tt.in, got, tt.want)
				}
			}
		})
	}
}

func TestAppendStringAppends(t *testing.T) {
	got := appendString([]byte(`{"a":`), "x\n")
	if string(got) != `{"a":"x\n"` {
		t.Fatalf("got %s", got)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", `"\`, "\x00\n\r\t", "\xff\xfe", "\u2028", "é😀", "\xed\xa0\x80", "\xf4\x90\x80\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkString(t, s)
	})
}

func TestAppendTimeMatchesAppendFormat(t *testing.T) {
	zones := []*time.Location{time.UTC, time.FixedZone("", 3600), time.FixedZone("", -(9*3600 + 30*60)),
		time.FixedZone("", 5*3600+45*60), time.FixedZone("", -1)}
	if loc, err := time.LoadLocation("Europe/Amsterdam"); err == nil {
		zones = append(zones, loc) // 1900 dates there have a +00:19:32 offset
	}
	times := []time.Time{
		time.Date(2025, 3, 1, 12, 0, 0, 250_000_999, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(1900, 6, 1, 0, 0, 0, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Unix(0, 0),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		times = append(times, time.Unix(r.Int64N(1<<35)-(1<<34), r.Int64N(1e9)))
	}
	for _, tt := range times {
		for _, z := range zones {
			tz := tt.In(z)
			if got, want := string(appendTime(nil, tz)), tz.Format(TimeLayout); got != want {
				t.Fatalf("appendTime(%v) = %s, want %s", tz, got, want)
			}
		}
	}
}
