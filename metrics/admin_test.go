package metrics

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAddrFilter(t *testing.T) {
	tests := []struct {
		in      string
		want    string // String() of the result
		match   []string
		noMatch []string
		wantErr bool
	}{
		{in: "", want: "", match: []string{"192.0.2.1:1", "[2001:db8::1]:2"}},
		{in: "192.0.2.1", want: "192.0.2.1", match: []string{"192.0.2.1:1", "[::ffff:192.0.2.1]:5"}, noMatch: []string{"192.0.2.2:1"}},
		{in: "10.0.0.0/8", want: "10.0.0.0/8", match: []string{"10.9.8.7:1"}, noMatch: []string{"11.0.0.1:1", "[2001:db8::1]:1"}},
		{in: "10.1.2.3/8", want: "10.0.0.0/8", match: []string{"10.200.0.1:1"}},
		{in: "192.0.2.1:443", want: "192.0.2.1:443", match: []string{"192.0.2.1:443"}, noMatch: []string{"192.0.2.1:444", "192.0.2.2:443"}},
		{in: "[2001:db8::1]:443", want: "[2001:db8::1]:443", match: []string{"[2001:db8::1]:443"}, noMatch: []string{"[2001:db8::2]:443"}},
		{in: "2001:db8::/32", want: "2001:db8::/32", match: []string{"[2001:db8:5::1]:1"}, noMatch: []string{"192.0.2.1:1"}},
		{in: ":443", want: ":443", match: []string{"192.0.2.9:443", "[2001:db8::9]:443"}, noMatch: []string{"192.0.2.9:80"}},
		{in: ":0", wantErr: true},
		{in: ":70000", wantErr: true},
		{in: "192.0.2.1:0", wantErr: true},
		{in: "example.com", wantErr: true},
		{in: "10.0.0.0/33", wantErr: true},
		{in: "192.0.2.1:x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			f, err := ParseAddrFilter(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := f.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			back, err := ParseAddrFilter(f.String())
			if err != nil || back != f {
				t.Errorf("String() does not parse back: %v %+v", err, back)
			}
			for _, s := range tt.match {
				if !f.match(ap(s)) {
					t.Errorf("%s does not match", s)
				}
			}
			for _, s := range tt.noMatch {
				if f.match(ap(s)) {
					t.Errorf("%s matches", s)
				}
			}
		})
	}
}

func TestParseFilter(t *testing.T) {
	if _, err := ParseFilter("", "", "maybe", ""); err == nil {
		t.Error("bad verdict accepted")
	}
	if _, err := ParseFilter("nope", "", "", ""); err == nil || !strings.HasPrefix(err.Error(), "src:") {
		t.Errorf("bad src: %v", err)
	}
	if _, err := ParseFilter("", "nope", "", ""); err == nil || !strings.HasPrefix(err.Error(), "dst:") {
		t.Errorf("bad dst: %v", err)
	}
	f, err := ParseFilter("10.0.0.0/8", ":443", "deny", "no-social")
	if err != nil {
		t.Fatal(err)
	}
	back, err := FilterFromValues(f.Values())
	if err != nil || back != f {
		t.Fatalf("Values round trip: %+v, %v", back, err)
	}
	st := FlowStatus{Src: ap("10.1.1.1:5000"), Dst: ap("198.51.100.1:443"), Verdict: "deny", Rule: "no-social"}
	if !f.Match(&st) {
		t.Error("matching flow not selected")
	}
	st.Rule = "other"
	if f.Match(&st) {
		t.Error("other rule selected")
	}
	st.Rule, st.Verdict = "no-social", "allow"
	if f.Match(&st) {
		t.Error("other verdict selected")
	}
}

// shortSocket returns a socket path short enough for sun_path (108 bytes);
// t.TempDir() paths can be longer.
func shortSocket(t *testing.T) string {
	dir, err := os.MkdirTemp("", "nw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "admin.sock")
}

func TestAdminSocket(t *testing.T) {
	path := shortSocket(t)
	m := New(Options{Version: "v1"})
	srv, err := m.ListenAdmin(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o660 {
		t.Errorf("socket mode %v, want 0660", perm)
	}

	m.StartFlow(1, ap("192.0.2.1:1000"), ap("198.51.100.1:443"), t0).SetVerdict("allow", "web")
	m.StartFlow(2, ap("192.0.2.2:1000"), ap("198.51.100.2:80"), t0).SetVerdict("deny", "no-http")
	m.StartFlow(3, ap("10.0.0.3:1000"), ap("198.51.100.2:80"), t0)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		name   string
		filter Filter
		want   []uint64
	}{
		{"all", Filter{}, []uint64{1, 2, 3}},
		{"verdict", Filter{Verdict: "deny"}, []uint64{2}},
		{"pending", Filter{Verdict: VerdictPending}, []uint64{3}},
		{"rule", Filter{Rule: "web"}, []uint64{1}},
		{"dst port", must(ParseFilter("", ":80", "", "")), []uint64{2, 3}},
		{"src prefix", must(ParseFilter("192.0.2.0/24", "", "", "")), []uint64{1, 2}},
		{"none", Filter{Rule: "nothing"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := FetchStatus(ctx, path, tt.filter)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, f := range st.Flows {
				got = append(got, f.ID)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("flows %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("flows %v, want %v", got, tt.want)
				}
			}
			if st.Version != "v1" || st.Counters.FlowsActive != 3 {
				t.Errorf("status: %+v", st)
			}
		})
	}

	// A second netward must not take over a socket in use.
	if _, err := New(Options{}).ListenAdmin(path, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second ListenAdmin: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := FetchStatus(ctx, path, Filter{}); err == nil {
		t.Fatal("status from a closed server succeeded")
	}
}

func TestAdminSocketStaleAndForeign(t *testing.T) {
	path := shortSocket(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	// A stale socket: bound, then the process "crashed" without unlinking.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	srv, err := New(Options{}).ListenAdmin(path, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	srv.Close()

	// A regular file is never removed.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{}).ListenAdmin(path, nil); err == nil {
		t.Fatal("ListenAdmin replaced a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("regular file changed")
	}
}

func TestStatusBadQuery(t *testing.T) {
	m := New(Options{})
	if code, _ := get(t, m.AdminHandler(), "/status?verdict=maybe"); code != 400 {
		t.Errorf("bad filter: %d, want 400", code)
	}
	if code, body := get(t, m.AdminHandler(), "/status"); code != 200 || !strings.Contains(body, `"flows": []`) {
		t.Errorf("empty status: %d %s", code, body)
	}
}

func must(f Filter, err error) Filter {
	if err != nil {
		panic(err)
	}
	return f
}
