package main

import (
	"flag"
	"io"
	"log/slog"
	"reflect"
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
	for _, args := range [][]string{{"--offload", "maybe"}, {"--tun", ""}, {"extra"}, {"--queues", "x"}} {
		if code := runMain(args); code != 2 {
			t.Errorf("runMain(%q) = %d, want 2", args, code)
		}
	}
}
