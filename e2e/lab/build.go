package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
)

// Module is the import path of netward's Go module.
const Module = "github.com/netward/netward"

// Build compiles the main package pkg (an import path, e.g.
// Module+"/cmd/netward") into dir and returns the binary's path. It must run
// inside the module's tree (tests and `go run` do).
func Build(ctx context.Context, pkg, dir string) (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, path.Base(pkg))
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("lab: go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	for _, p := range []string{filepath.Join(runtime.GOROOT(), "bin", "go"), "/usr/local/go/bin/go"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("lab: no go tool in PATH, GOROOT or /usr/local/go")
}
