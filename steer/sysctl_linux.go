package steer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procSys is where sysctls live. /proc/sys/net is resolved in the network
// namespace of the calling thread, like netlink sockets and the iptables
// processes this package starts.
const procSys = "/proc/sys"

// confPath is the /proc/sys path of a per-device sysctl. Device names may
// contain '.', which the dotted sysctl form cannot express.
func confPath(family, dev, key string) string {
	return filepath.Join(procSys, "net", family, "conf", dev, key)
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("steer: read %s: %w", path, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("steer: read %s: %w", path, err)
	}
	return v, nil
}

func writeInt(path string, v int) error {
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("steer: write %s=%d: %w", path, v, err)
	}
	return nil
}

// sysctlDisplay turns a /proc/sys path back into a dotted sysctl name for
// logs and messages.
func sysctlDisplay(path string) string {
	rel, err := filepath.Rel(procSys, path)
	if err != nil {
		return path
	}
	return strings.ReplaceAll(rel, "/", ".")
}
