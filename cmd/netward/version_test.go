package main

import (
	"bytes"
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildFrom(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/netward/netward", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "gvisor.dev/gvisor", Version: "v0.0.0-20260905035102-160fafc42237"},
			{Path: "github.com/prometheus/client_golang", Version: "v1.25.0"},
			{Path: "gopkg.in/yaml.v3", Version: "v3.0.1", Replace: &debug.Module{Path: "../yaml", Version: ""}},
			{Path: "example.com/unimportant", Version: "v1.0.0"},
		},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123"},
			{Key: "vcs.time", Value: "2025-03-01T12:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name     string
		ldflags  string
		bi       *debug.BuildInfo
		mainVer  string
		want     string
		wantDeps int
	}{
		{name: "ldflags wins", ldflags: "1.2.3", bi: bi, want: "1.2.3", wantDeps: 3},
		{name: "devel with revision", bi: bi, want: "devel+0123456789ab-dirty", wantDeps: 3},
		{name: "go install version", bi: bi, mainVer: "v1.4.0", want: "v1.4.0", wantDeps: 3},
		{name: "no build info", want: "devel"},
		{name: "no build info, ldflags", ldflags: "2.0.0", want: "2.0.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.bi
			if in != nil && tt.mainVer != "" {
				cp := *in
				cp.Main.Version = tt.mainVer
				in = &cp
			}
			b := buildFrom(tt.ldflags, in)
			if got := b.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if len(b.Deps) != tt.wantDeps {
				t.Errorf("deps %v, want %d key deps", b.Deps, tt.wantDeps)
			}
			if b.GoVersion == "" || b.Platform == "" {
				t.Errorf("Go version/platform missing: %+v", b)
			}
		})
	}
	b := buildFrom("", bi)
	if b.Deps[0].Path != "gvisor.dev/gvisor" || b.Deps[2].Version != "../yaml " {
		t.Errorf("deps (order of keyDeps, replacements shown): %+v", b.Deps)
	}
}

func TestVersionOutput(t *testing.T) {
	b := Build{Version: "1.2.3", Revision: "abc", Time: "2025-03-01T12:00:00Z", GoVersion: "go1.26.8", Platform: "linux/amd64",
		Deps: []Dep{{Path: "gvisor.dev/gvisor", Version: "v0.0.0-x"}}}
	var out, errOut bytes.Buffer
	if code := versionMain(nil, &out, &errOut, b); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	want := "netward 1.2.3\n  revision abc (2025-03-01T12:00:00Z)\n  go1.26.8 linux/amd64\n  gvisor.dev/gvisor                        v0.0.0-x\n"
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}

	out.Reset()
	if code := versionMain([]string{"-json"}, &out, &errOut, b); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var back Build
	dec := json.NewDecoder(&out)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil || back.Version != "1.2.3" || len(back.Deps) != 1 {
		t.Errorf("json: %+v %v", back, err)
	}

	if code := versionMain([]string{"extra"}, &out, &errOut, b); code != 2 {
		t.Errorf("extra argument: exit %d, want 2", code)
	}
}

// TestVersionOfThisBinary runs the real lookup: whatever the build, it
// names a version and the Go toolchain.
func TestVersionOfThisBinary(t *testing.T) {
	var out bytes.Buffer
	if code := runVersionTo(&out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(out.String(), "netward ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("output: %s", out.String())
	}
}

func runVersionTo(w *bytes.Buffer) int { return versionMain(nil, w, w, buildVersion()) }
