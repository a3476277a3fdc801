// Command capture records the first bytes a real client sends, for the
// inspect package's tests.
//
// It listens on 127.0.0.1 (a free port), runs the client command with
// "{port}" in its arguments replaced by that port, and saves what the first
// matching connection sent until the client has been quiet for -idle (a
// client that sent its ClientHello or request waits for an answer that never
// comes). Then it closes everything and kills the client. Nothing leaves the
// loopback interface.
//
//	go run ./inspect/testdata/capture -out inspect/testdata/tls/curl.bin -want tls -- \
//	    curl -sk --resolve x.example:{port}:127.0.0.1 https://x.example:{port}/
//
// Built-in Go clients instead of a command: -go tls (crypto/tls, default
// config: X25519MLKEM768 key share), -go http (net/http GET).
//
// It lives under testdata so that `go build ./...` and `go test ./...` skip
// it; see ../README.md for how each file was made.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	out := flag.String("out", "", "file to write the captured bytes to")
	want := flag.String("want", "any", "which connection to save: tls (first byte 0x16), http (anything else) or any")
	idle := flag.Duration("idle", 700*time.Millisecond, "stop reading after the client was quiet this long")
	wait := flag.Duration("wait", 30*time.Second, "give up after this long")
	goClient := flag.String("go", "", "built-in Go client instead of a command: tls or http")
	flag.Parse()
	if *out == "" || (*goClient == "" && flag.NArg() == 0) {
		flag.Usage()
		os.Exit(2)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	ctx, cancel := context.WithTimeout(context.Background(), *wait)
	defer cancel()

	var cmd *exec.Cmd
	switch *goClient {
	case "":
		args := make([]string, flag.NArg())
		for i, a := range flag.Args() {
			args[i] = strings.ReplaceAll(a, "{port}", port)
		}
		cmd = exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Stdin = nil
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Start(); err != nil {
			log.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	case "tls":
		go func() {
			conn, err := tls.Dial("tcp", "127.0.0.1:"+port, &tls.Config{
				ServerName: "x.example",
				NextProtos: []string{"h2", "http/1.1"},
			})
			if err == nil {
				conn.Close()
			}
		}()
	case "http":
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://x.example:"+port+"/path/to?q=1", nil)
			tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, "127.0.0.1:"+port)
			}}
			if resp, err := (&http.Client{Transport: tr}).Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	default:
		log.Fatalf("unknown -go client %q", *goClient)
	}

	go func() { <-ctx.Done(); ln.Close() }()
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatalf("no matching connection: %v", err)
		}
		data := readUntilIdle(conn, *idle)
		conn.Close()
		if len(data) == 0 || !matches(*want, data) {
			continue
		}
		if err := os.WriteFile(*out, data, 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d bytes\n", *out, len(data))
		return
	}
}

func matches(want string, data []byte) bool {
	switch want {
	case "tls":
		return data[0] == 0x16
	case "http":
		return data[0] != 0x16
	}
	return true
}

// readUntilIdle reads until the peer has sent nothing for idle (or closed,
// or 1 MiB).
func readUntilIdle(conn net.Conn, idle time.Duration) []byte {
	var data []byte
	buf := make([]byte, 64<<10)
	for quiet := 0; len(data) < 1<<20; {
		_ = conn.SetReadDeadline(time.Now().Add(idle))
		n, err := conn.Read(buf)
		data = append(data, buf[:n]...)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && len(data) == 0 && quiet < 10 {
				quiet++
				continue // not started yet
			}
			break
		}
	}
	return data
}
