package main

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/netward/netward/config"
	"github.com/netward/netward/gwlb"
	"github.com/netward/netward/netstack"
	"os"
)

func TestGeneveRefusesKernelUpstream(t *testing.T) {
	if rc := runMain([]string{"--geneve", "--upstream", "kernel"}); rc != 2 {
		t.Fatalf("run --geneve --upstream kernel = %d, want 2", rc)
	}
}

func TestGeneveConfigFlags(t *testing.T) {
	c := config.Default()
	if c.Geneve.Enabled || c.Geneve.Listen != ":6081" {
		t.Fatalf("default geneve config %+v", c.Geneve)
	}
}

// /healthz follows the GENEVE datapath: 200 while it receives, 503 once it
// is closed.
func TestGeneveHealth(t *testing.T) {
	cfg := config.Default()
	cfg.Admin.Socket = ""
	svc, err := startServices(cfg, newLogger(cfg.Log))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	d, err := gwlb.New(gwlb.Options{Listen: "127.0.0.1:0", NewStack: func(files []*os.File, mtu int) (*netstack.Stack, error) {
		return netstack.New(netstack.Options{Files: files, MTU: mtu, Handler: svc.guard})
	}})
	if err != nil {
		t.Fatal(err)
	}
	attachGeneve(svc, d)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: svc.health.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	get := func() int {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + ln.Addr().String() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != 200 {
		t.Fatalf("healthz with the datapath up = %d", code)
	}
	d.Close()
	if code := get(); code != 503 {
		t.Fatalf("healthz with the datapath closed = %d", code)
	}
}
