package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// version is set at build time:
//
//	go build -ldflags "-X main.version=1.2.3" ./cmd/netward
//
// Without it, the module version and VCS revision that the go command
// records in the binary are used (see buildVersion).
var version string

func init() {
	register("version", "print netward's version, Go version and key dependency versions", runVersion)
}

// keyDeps are the dependencies whose versions matter when reading a bug
// report: the datapath (gVisor, wireguard's TUN code), the kernel
// interfaces, and the formats netward reads.
var keyDeps = []string{
	"gvisor.dev/gvisor",
	"golang.zx2c4.com/wireguard",
	"github.com/coreos/go-iptables",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/prometheus/client_golang",
	"github.com/oschwald/geoip2-golang/v2",
	"github.com/oschwald/maxminddb-golang/v2",
	"gopkg.in/yaml.v3",
	"golang.org/x/crypto",
	"golang.org/x/sys",
}

// Build describes the running binary.
type Build struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"` // commit time
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
	Deps      []Dep  `json:"dependencies"`
}

// Dep is one module dependency.
type Dep struct {
	Path    string `json:"path"`
	Version string `json:"version"`
}

// buildVersion reads the version: -X main.version wins, then the module
// version recorded by `go install module@version`, else "devel".
func buildVersion() Build {
	bi, _ := debug.ReadBuildInfo()
	return buildFrom(version, bi)
}

func buildFrom(ldflagsVersion string, bi *debug.BuildInfo) Build {
	b := Build{Version: ldflagsVersion, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi == nil {
		if b.Version == "" {
			b.Version = "devel"
		}
		return b
	}
	if bi.GoVersion != "" {
		b.GoVersion = bi.GoVersion
	}
	if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.Version = bi.Main.Version
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	deps := map[string]string{}
	for _, d := range bi.Deps {
		v := d.Version
		if d.Replace != nil {
			v = d.Replace.Path + " " + d.Replace.Version
		}
		deps[d.Path] = v
	}
	for _, p := range keyDeps {
		if v, ok := deps[p]; ok {
			b.Deps = append(b.Deps, Dep{Path: p, Version: v})
		}
	}
	return b
}

// String is the one-line version, as in netward_build_info and status:
// "1.2.3", or "devel+abcdef123456" (with "-dirty" for a modified tree).
func (b Build) String() string {
	s := b.Version
	if b.Version == "devel" && b.Revision != "" {
		r := b.Revision
		if len(r) > 12 {
			r = r[:12]
		}
		s += "+" + r
		if b.Modified {
			s += "-dirty"
		}
	}
	return s
}

// versionString is what run passes to metrics.Options.Version.
func versionString() string { return buildVersion().String() }

func runVersion(args []string) int {
	return versionMain(args, os.Stdout, os.Stderr, buildVersion())
}

func versionMain(args []string, stdout, stderr io.Writer, b Build) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netward version: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(b); err != nil {
			fmt.Fprintf(stderr, "netward version: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stdout, "netward %s\n", b.String())
	if b.Revision != "" {
		fmt.Fprintf(stdout, "  revision %s", b.Revision)
		if b.Time != "" {
			fmt.Fprintf(stdout, " (%s)", b.Time)
		}
		if b.Modified {
			fmt.Fprint(stdout, " modified")
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "  %s %s\n", b.GoVersion, b.Platform)
	for _, d := range b.Deps {
		fmt.Fprintf(stdout, "  %-40s %s\n", d.Path, d.Version)
	}
	return 0
}
