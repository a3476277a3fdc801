package lab

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestProxyConfigs checks that the generated configurations are what
// haproxy -c and nginx -t accept, with the binaries the bench would run.
func TestProxyConfigs(t *testing.T) {
	for _, kind := range []string{HAProxy, Nginx} {
		t.Run(kind, func(t *testing.T) {
			if _, err := exec.LookPath(kind); err != nil {
				t.Skipf("%s is not installed (Debian: apt-get install haproxy nginx libnginx-mod-stream)", kind)
			}
			if kind == Nginx {
				if _, err := os.Stat(NginxStreamModule); err != nil {
					t.Skipf("nginx's stream module is not installed (%s; Debian: libnginx-mod-stream)", NginxStreamModule)
				}
			}
			dir := t.TempDir()
			c := ProxyConfig{Kind: kind, Dir: dir, TLSPort: freePort(t), TCPPort: freePort(t),
				AllowSNI: []string{"bench.netward.test", "Other.Example"}, Threads: 2}
			text, err := c.Text()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(c.Path(), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("haproxy", "-c", "-f", c.Path())
			if kind == Nginx {
				// -t opens the listeners (not transparent here, and only
				// for the test) and never reads /etc/nginx.
				cmd = exec.Command("nginx", c.nginxArgs("-t")...)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s\nconfiguration:\n%s", strings.Join(cmd.Args, " "), err, out, text)
			}
			for _, want := range []string{"bench.netward.test", "other.example"} {
				if !strings.Contains(strings.ToLower(text), want) {
					t.Errorf("configuration does not name %s:\n%s", want, text)
				}
			}
		})
	}
}

func TestProxyConfigRefuses(t *testing.T) {
	for _, tt := range []struct {
		name string
		c    ProxyConfig
	}{
		{"kind", ProxyConfig{Kind: "squid", TLSPort: 1, TCPPort: 2, AllowSNI: []string{"a.test"}}},
		{"same ports", ProxyConfig{Kind: HAProxy, TLSPort: 1, TCPPort: 1, AllowSNI: []string{"a.test"}}},
		{"no SNI", ProxyConfig{Kind: Nginx, TLSPort: 1, TCPPort: 2}},
		{"injection", ProxyConfig{Kind: Nginx, TLSPort: 1, TCPPort: 2, AllowSNI: []string{"a.test; }"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.c.Text(); err == nil {
				t.Errorf("%+v: no error", tt.c)
			}
		})
	}
}

// freePort is a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
