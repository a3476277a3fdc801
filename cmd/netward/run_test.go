package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"syscall"
	"testing"

	"github.com/netward/netward/config"
	"github.com/netward/netward/steer"
)

func TestSteerConfigFromFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want func(c *steer.Config)
	}{
		{"defaults", nil, func(c *steer.Config) {}},
		{"tun and interfaces", []string{"--tun", "nw9", "--interfaces", "eth0, eth1"}, func(c *steer.Config) {
			c.TUN = "nw9"
			c.Interfaces = []string{"eth0", "eth1"}
		}},
		{"fail closed", []string{"--fail-mode", "closed"}, func(c *steer.Config) { c.FailMode = steer.FailClosed }},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("run", flag.ContinueOnError)
			cf := config.NewFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := cf.Load()
			if err != nil {
				t.Fatal(err)
			}
			got, err := steerConfig(cfg, log)
			if err != nil {
				t.Fatal(err)
			}
			want := steer.DefaultConfig()
			want.Logger = log
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("steerConfig = %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--offload", "maybe"}, {"--tun", ""}, {"extra"}, {"--queues", "x"}, {"--queues", "0"}, {"--tun-writers", "-1"}, {"--tun-direct-max", "-1"}} {
		if code := runMain(args); code != 2 {
			t.Errorf("runMain(%q) = %d, want 2", args, code)
		}
	}
}

// The kernel upstream leg is the default; when its rules cannot be
// installed, netward falls back to the gVisor leg unless --upstream kernel
// was given.
func TestInstallSteeringUpstreamFallback(t *testing.T) {
	errNoSocketMatch := errors.New("iptables: No chain/target/match by that name (socket)")
	kernelSC := steer.DefaultConfig()
	kernelUpstreamSteer(&kernelSC, 0x4e59)
	for _, tt := range []struct {
		name          string
		dp            datapathOptions
		kernelFails   bool
		wantErr       bool
		wantInstalls  []bool // whether each install had the kernel leg's rules
		wantUseGVisor bool
	}{
		{"kernel default works", datapathOptions{upstreamKernel: true}, false, false, []bool{true}, false},
		{"kernel default falls back", datapathOptions{upstreamKernel: true}, true, false, []bool{true, false}, true},
		{"replay default falls back", datapathOptions{upstreamKernel: true, acceptPort: 20057, replaySYN: true}, true, false, []bool{true, false}, true},
		{"replay asked fails", datapathOptions{upstreamKernel: true, upstreamAsked: true, acceptPort: 20057, replaySYN: true}, true, true, []bool{true}, false},
		{"kernel asked fails", datapathOptions{upstreamKernel: true, upstreamAsked: true}, true, true, []bool{true}, false},
		{"gvisor asked", datapathOptions{upstreamAsked: true}, true, false, []bool{false}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sc := steer.DefaultConfig()
			if tt.dp.upstreamKernel {
				sc = kernelSC
				sc.AcceptPort, sc.ReplaySYN = tt.dp.acceptPort, tt.dp.replaySYN
			}
			var installs []bool
			install := func(c steer.Config) (*steer.Steering, error) {
				k := c.TransparentMark != 0
				if k != (c.UpstreamMark != 0) {
					t.Fatalf("install with transparent mark %#x and upstream mark %#x", c.TransparentMark, c.UpstreamMark)
				}
				installs = append(installs, k)
				if !k && (c.AcceptPort != 0 || c.ReplaySYN) {
					t.Errorf("gVisor leg's steering with the kernel client leg's: accept port %d, replay %v", c.AcceptPort, c.ReplaySYN)
				}
				if k && tt.kernelFails {
					return nil, errNoSocketMatch
				}
				return &steer.Steering{}, nil
			}
			usedGVisor := false
			_, err := installSteering(sc, tt.dp, func() { usedGVisor = true }, install, slog.New(slog.DiscardHandler))
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, want error %v", err, tt.wantErr)
			}
			if !slices.Equal(installs, tt.wantInstalls) || usedGVisor != tt.wantUseGVisor {
				t.Errorf("installs (kernel leg?) %v, gVisor leg %v; want %v, %v", installs, usedGVisor, tt.wantInstalls, tt.wantUseGVisor)
			}
		})
	}
}

// raiseFileLimit raises the soft limit to what the kernel leg needs, and
// never lowers it.
func TestRaiseFileLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Max < 64 {
		t.Skipf("hard file limit %d is too small to test with", orig.Max)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
	// Within the hard limit any process may raise its soft limit.
	half := orig.Max / 2
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: half, Max: orig.Max}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	for _, tt := range []struct{ want, cur uint64 }{
		{half + 10, half + 10}, // raised
		{half, half + 10},      // never lowered
	} {
		raiseFileLimit(tt.want, log)
		var got syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &got); err != nil {
			t.Fatal(err)
		}
		if got.Cur != tt.cur {
			t.Errorf("raiseFileLimit(%d): soft limit %d, want %d", tt.want, got.Cur, tt.cur)
		}
	}
}
