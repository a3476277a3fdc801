package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ruleHelloOpts say how ruleHelloConn rewrites and paces a connection's first
// write (the ClientHello record crypto/tls writes).
type ruleHelloOpts struct {
	// Replace, if set, swaps Replace[0] for Replace[1] (same length) in the
	// ClientHello: it sends names crypto/tls would normalise, e.g. a
	// trailing dot ("evil.exampleZ" → "evil.example."). The handshake
	// cannot complete then (the transcripts differ); what matters is what
	// netward and the server do with the hello.
	Replace [2]string
	// Frag > 0 re-frames the handshake message into TLS records of at most
	// Frag bytes each (RFC 8446 §5.1 lets a handshake message span records).
	Frag int
	// Trickle sends the first write one byte per TCP segment.
	Trickle bool
	// Prefix is sent before the ClientHello (e.g. a TLS warning alert,
	// which crypto/tls servers skip).
	Prefix []byte
}

func (o ruleHelloOpts) String() string {
	var parts []string
	if o.Trickle {
		parts = append(parts, "1-byte segments")
	}
	if o.Frag > 0 {
		parts = append(parts, fmt.Sprintf("%d-byte records", o.Frag))
	}
	if o.Replace[0] != "" {
		parts = append(parts, fmt.Sprintf("SNI %q", o.Replace[1]))
	}
	if len(o.Prefix) > 0 {
		parts = append(parts, fmt.Sprintf("after % x", o.Prefix))
	}
	if len(parts) == 0 {
		return "as crypto/tls sends it"
	}
	return strings.Join(parts, ", ")
}

// ruleHelloConn applies ruleHelloOpts to the first Write on a connection; later
// writes pass unchanged.
type ruleHelloConn struct {
	*net.TCPConn
	opts    ruleHelloOpts
	done    bool
	Sent    []byte // the first write as it went on the wire
	Records int    // TLS records in it
	// Segments is how many TCP data segments carried it (Trickle only).
	Segments uint32
}

func (c *ruleHelloConn) Write(b []byte) (int, error) {
	if c.done {
		return c.TCPConn.Write(b)
	}
	c.done = true
	out, err := ruleRewriteHello(b, c.opts)
	if err != nil {
		return 0, err
	}
	c.Sent, c.Records = out, ruleCountRecords(out)
	if !c.opts.Trickle {
		if _, err := c.TCPConn.Write(out); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	segs, err := ruleTrickle(c.TCPConn, out)
	c.Segments = segs
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// ruleRewriteHello applies Replace and Frag to rec, which must be exactly one
// TLS handshake record.
func ruleRewriteHello(rec []byte, o ruleHelloOpts) ([]byte, error) {
	if len(rec) < 5 || rec[0] != 22 || int(rec[3])<<8|int(rec[4]) != len(rec)-5 {
		return nil, fmt.Errorf("first write (%d bytes) is not one complete TLS handshake record", len(rec))
	}
	rec = bytes.Clone(rec)
	if from, to := o.Replace[0], o.Replace[1]; from != "" {
		if len(from) != len(to) || bytes.Count(rec, []byte(from)) != 1 {
			return nil, fmt.Errorf("replace %q → %q: want equal lengths and exactly one %q in the ClientHello", from, to, from)
		}
		i := bytes.Index(rec, []byte(from))
		copy(rec[i:], to)
	}
	out := bytes.Clone(o.Prefix)
	if o.Frag <= 0 {
		return append(out, rec...), nil
	}
	msg := rec[5:]
	for len(msg) > 0 {
		n := min(o.Frag, len(msg))
		out = append(out, 22, rec[1], rec[2], byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out, nil
}

func ruleCountRecords(b []byte) int {
	n := 0
	for len(b) >= 5 {
		l := int(b[3])<<8 | int(b[4])
		if len(b) < 5+l {
			break
		}
		b = b[5+l:]
		n++
	}
	return n
}

// ruleTrickle writes b one byte per TCP segment: TCP_NODELAY pushes each
// one-byte write at once, and the next waits until the kernel has sent the
// previous (tcp_info.tcpi_notsent_bytes is 0), so no two bytes share a
// segment. It returns the data segments the kernel sent meanwhile
// (tcpi_data_segs_out), which proves it.
func ruleTrickle(c *net.TCPConn, b []byte) (uint32, error) {
	if err := c.SetNoDelay(true); err != nil {
		return 0, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	info := func() (*unix.TCPInfo, error) {
		var ti *unix.TCPInfo
		var gerr error
		if err := raw.Control(func(fd uintptr) {
			ti, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		}); err != nil {
			return nil, err
		}
		return ti, gerr
	}
	start, err := info()
	if err != nil {
		return 0, fmt.Errorf("TCP_INFO: %w", err)
	}
	for i := range b {
		if _, err := c.Write(b[i : i+1]); err != nil {
			return 0, err
		}
		for deadline := time.Now().Add(5 * time.Second); ; {
			ti, err := info()
			if err != nil {
				return 0, fmt.Errorf("TCP_INFO: %w", err)
			}
			if ti.Notsent_bytes == 0 {
				break
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("byte %d of %d not sent within 5 s", i, len(b))
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	end, err := info()
	if err != nil {
		return 0, fmt.Errorf("TCP_INFO: %w", err)
	}
	return end.Data_segs_out - start.Data_segs_out, nil
}

// ruleTLSResult is what a Go TLS client saw.
type ruleTLSResult struct {
	Local    netip.AddrPort
	Hello    []byte // the ClientHello bytes as sent (record headers included)
	Records  int
	Segments uint32
	Err      error  // handshake or request error
	Body     string // the application's answer when the handshake succeeded
}

// tlsGet connects from the client namespace to dst, does a TLS handshake
// with sni (through ruleHelloConn with opts) and, if it succeeds, GET /go-tls.
func (r *ruleLab) tlsGet(dst netip.AddrPort, sni string, opts ruleHelloOpts) (ruleTLSResult, error) {
	var res ruleTLSResult
	c, err := ruleDial(r.lab.Client, netip.Addr{}, dst)
	if err != nil {
		return res, fmt.Errorf("dial %s: %w", dst, err)
	}
	defer c.Close()
	res.Local = netip.MustParseAddrPort(c.LocalAddr().String())
	hc := &ruleHelloConn{TCPConn: c, opts: opts}
	tc := tls.Client(hc, &tls.Config{ServerName: sni, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	res.Err = tc.Handshake()
	res.Hello, res.Records, res.Segments = hc.Sent, hc.Records, hc.Segments
	if res.Err != nil {
		return res, nil
	}
	resp, body, err := ruleRoundTrip(tc, bufio.NewReader(tc), "GET /go-tls HTTP/1.1\r\nHost: "+sni+"\r\nConnection: close\r\n\r\n", "GET")
	if err != nil {
		res.Err = err
		return res, nil
	}
	res.Body = fmt.Sprintf("%d %s", resp.StatusCode, body)
	return res, nil
}

// ruleRoundTrip writes one request and reads its response.
func ruleRoundTrip(w io.Writer, br *bufio.Reader, req, method string) (*http.Response, string, error) {
	if _, err := io.WriteString(w, req); err != nil {
		return nil, "", fmt.Errorf("write request: %w", err)
	}
	return ruleReadResponse(br, method)
}

func ruleReadResponse(br *bufio.Reader, method string) (*http.Response, string, error) {
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return nil, "", fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return resp, string(b), fmt.Errorf("read body: %w", err)
	}
	return resp, string(b), err
}
