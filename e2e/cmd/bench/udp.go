package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/netward/netward/e2e/peer"
)

// udpRate is the offered load of the UDP throughput rows: fixed, so that
// the rows compare what arrives (and what is lost) at the same load.
const udpRate = "2G"

// dnsWorkers is the DNS load's concurrency (sockets with one query in
// flight each).
const dnsWorkers = 8

type iperfUDPResult struct {
	Error string `json:"error"`
	End   struct {
		Sum struct {
			BPS         float64 `json:"bits_per_second"`
			LostPercent float64 `json:"lost_percent"`
			Packets     int64   `json:"packets"`
		} `json:"sum"`
	} `json:"end"`
}

func udpRow(fam string) string {
	return fmt.Sprintf("iperf3 -u IPv%s at %sbit/s offered, 1 stream, client→app", fam, udpRate)
}

const (
	udpLossRow = "lost"
	udpTUNRow  = "datagrams through netward's TUN"
	dnsRow     = "DNS queries/s over UDP (8 sockets, every query judged)"
	h3Row      = "HTTP/3 download, 256 MiB (quic-go client and server)"
)

// h3Bytes is the HTTP/3 download's size.
const h3Bytes = 256 << 20

// declareUDP lays out the UDP rows.
func (b *bench) declareUDP() {
	for _, fam := range []string{"4", "6"} {
		b.declare(udpRow(fam), "Gbit/s")
		b.declareSub(udpRow(fam), udpLossRow, "%").noRatio = true
		b.declareSub(udpRow(fam), udpTUNRow, "%").noRatio = true
	}
	for _, fam := range []string{"4", "6"} {
		b.declare(dnsRow+" IPv"+fam, "q/s")
	}
	for _, fam := range []string{"4", "6"} {
		b.declare(h3Row+" IPv"+fam, "Gbit/s")
	}
}

// udpAll measures UDP through every column: an allowed plain UDP flow at a
// fixed offered rate (netward judges its first datagram and hands it to
// the kernel), and DNS queries, each of which netward judges.
func (b *bench) udpAll() error {
	b.declareUDP()
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	for range b.rounds {
		for _, v := range b.columns() {
			if v.external() {
				continue // the reference relay and the proxies are TCP only here
			}
			p, err := b.start(l, v, "UDP")
			if err != nil {
				return err
			}
			for _, fam := range []string{"4", "6"} {
				if err := p.iperfUDP(fam); err != nil {
					return errors.Join(err, p.stop())
				}
				if err := p.dnsLoad(fam); err != nil {
					return errors.Join(err, p.stop())
				}
				if err := p.h3Download(fam); err != nil {
					return errors.Join(err, p.stop())
				}
			}
			if err := p.stop(); err != nil {
				return err
			}
		}
	}
	return nil
}

// tunPackets is what netward's TUN carried toward netward, 0 for kernel
// forwarding.
func (p *path) tunPackets() (uint64, error) {
	if p.nw == nil {
		return 0, nil
	}
	s, err := p.nw.TUNStats(p.b.ctx)
	return s.TxPackets, err
}

func (p *path) iperfUDP(fam string) error {
	progress("%-10s iperf3 -u IPv%s", p.col(), fam)
	before, err := p.tunPackets()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(p.b.ctx, time.Duration(p.b.secs+30)*time.Second)
	defer cancel()
	out, err := p.l.Client.Run(ctx, "iperf3", "-c", p.l.appIP(fam), "-p", strconv.Itoa(iperfPort),
		"-u", "-b", udpRate, "-l", "1400", "-t", strconv.Itoa(p.b.secs), "-J")
	var r iperfUDPResult
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil {
		return errors.Join(err, jerr)
	}
	if r.Error != "" {
		return fmt.Errorf("%s iperf3 -u: %s", p.col(), r.Error)
	}
	if err != nil {
		return err
	}
	after, err := p.tunPackets()
	if err != nil {
		return err
	}
	p.b.set(udpRow(fam), "Gbit/s", p.col(), r.End.Sum.BPS*(1-r.End.Sum.LostPercent/100)/1e9)
	p.b.set(subKey(udpRow(fam), udpLossRow), "%", p.col(), r.End.Sum.LostPercent)
	if p.nw != nil {
		if after == before {
			return fmt.Errorf("%s iperf3 -u IPv%s: no datagram crossed netward's TUN (not steered)", p.col(), fam)
		}
		if r.End.Sum.Packets > 0 {
			p.b.set(subKey(udpRow(fam), udpTUNRow), "%", p.col(), 100*float64(after-before)/float64(r.End.Sum.Packets))
		}
	}
	return nil
}

func (p *path) dnsLoad(fam string) error {
	progress("%-10s DNS queries IPv%s", p.col(), fam)
	before, err := p.tunPackets()
	if err != nil {
		return err
	}
	out, err := p.l.Client.Run(p.b.ctx, p.b.peer, "dnsload", "-addr", p.l.appAddr(fam, 53),
		"-c", strconv.Itoa(dnsWorkers), "-d", strconv.Itoa(min(p.b.secs, 5))+"s")
	if err != nil {
		return err
	}
	var r peer.DNSLoadResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return err
	}
	after, err := p.tunPackets()
	if err != nil {
		return err
	}
	if p.nw != nil && after-before < uint64(r.Queries) {
		return fmt.Errorf("%s DNS: %d queries answered but only %d packets crossed netward's TUN", p.col(), r.Queries, after-before)
	}
	p.b.set(dnsRow+" IPv"+fam, "q/s", p.col(), r.QPS)
	return nil
}

// h3Download fetches h3Bytes over HTTP/3: an allowed QUIC flow judged by
// its SNI (the bench's allow rule), then carried by the kernel.
func (p *path) h3Download(fam string) error {
	progress("%-10s HTTP/3 download IPv%s", p.col(), fam)
	before, err := p.tunPackets()
	if err != nil {
		return err
	}
	url := fmt.Sprintf("https://%s/bytes?n=%d", p.l.appAddr(fam, tlsPort), h3Bytes)
	out, err := p.l.Client.Run(p.b.ctx, p.b.peer, "h3get", "-url", url, "-sni", benchSNI, "-timeout", "60s")
	if err != nil {
		return err
	}
	var r peer.H3Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return err
	}
	if r.Bytes != h3Bytes || r.Millis <= 0 {
		return fmt.Errorf("%s HTTP/3 download: %d bytes in %d ms", p.col(), r.Bytes, r.Millis)
	}
	after, err := p.tunPackets()
	if err != nil {
		return err
	}
	if p.nw != nil && after == before {
		return fmt.Errorf("%s HTTP/3 download: no datagram crossed netward's TUN (not steered)", p.col())
	}
	p.b.set(h3Row+" IPv"+fam, "Gbit/s", p.col(), float64(r.Bytes)*8/(float64(r.Millis)/1000)/1e9)
	return nil
}
