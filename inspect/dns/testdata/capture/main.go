// Command capture records the DNS queries real clients send, as seeds for
// the fuzz targets of package dns. It listens on 127.0.0.1 (a free port, UDP
// and TCP), runs one client command with {port} replaced by that port, and
// writes the first query it receives (the bare message for UDP, the framed
// bytes for TCP) as a "go test fuzz v1" file. It never answers, so the client
// times out; run it with a short client timeout. See capture.sh.
//
//	go run ./inspect/dns/testdata/capture -out FILE -proto udp|tcp -- dig @127.0.0.1 -p {port} x.example
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	out := flag.String("out", "", "fuzz corpus `file` to write")
	proto := flag.String("proto", "udp", "udp: save a datagram; tcp: save the first framed message")
	flag.Parse()
	if *out == "" || flag.NArg() == 0 {
		log.Fatal("usage: capture -out FILE [-proto udp|tcp] -- command args ({port} is replaced)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan []byte, 1)
	var port int
	switch *proto {
	case "udp":
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		defer pc.Close()
		port = pc.LocalAddr().(*net.UDPAddr).Port
		go func() {
			buf := make([]byte, 65535)
			n, _, err := pc.ReadFrom(buf)
			if err == nil {
				got <- buf[:n]
			}
		}()
	case "tcp":
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		defer ln.Close()
		port = ln.Addr().(*net.TCPAddr).Port
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			var hdr [2]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			body := make([]byte, int(hdr[0])<<8|int(hdr[1]))
			if _, err := io.ReadFull(c, body); err != nil {
				return
			}
			got <- append(hdr[:], body...)
		}()
	default:
		log.Fatalf("-proto %q: want udp or tcp", *proto)
	}
	args := flag.Args()
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "{port}", strconv.Itoa(port))
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	select {
	case b := <-got:
		f := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(*out, []byte(f), 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d bytes\n", *out, len(b))
	case <-ctx.Done():
		log.Fatal("no query within 10 s")
	}
}
