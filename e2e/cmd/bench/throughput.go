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

type iperfResult = peer.IperfResult

type iperfCase struct {
	fam     string
	streams int
	rev     bool
}

var iperfCases = []iperfCase{
	{"4", 1, false}, {"4", 1, true}, {"4", 4, false}, {"4", 4, true},
	{"6", 1, false}, {"6", 1, true}, {"6", 4, false}, {"6", 4, true},
}

func (c iperfCase) name() string {
	dir := "client→app"
	if c.rev {
		dir = "app→client"
	}
	plural := "s"
	if c.streams == 1 {
		plural = ""
	}
	return fmt.Sprintf("iperf3 IPv%s, %d stream%s, %s", c.fam, c.streams, plural, dir)
}

// Labels of the CPU cost under each throughput row.
const (
	machineCPURow = "machine CPU per GB"
	netwardCPURow = "own CPU per GB (netward's, the relay's, the proxy's)"
)

func (b *bench) declareThroughput() {
	for _, c := range iperfCases {
		b.declare(c.name(), "Gbit/s")
		b.declareSub(c.name(), machineCPURow, "CPU-s/GB")
		b.declareSub(c.name(), netwardCPURow, "CPU-s/GB").noRatio = true
	}
	for _, fam := range []string{"4", "6"} {
		r := tlsBulkRow(fam, b.tlsBulkBytes())
		b.declare(r, "Gbit/s")
		b.declareSub(r, machineCPURow, "CPU-s/GB")
		b.declareSub(r, netwardCPURow, "CPU-s/GB").noRatio = true
	}
	for _, fam := range []string{"4", "6"} {
		b.declare(latencyRow(fam, "p50"), "µs")
		b.declare(latencyRow(fam, "p99"), "µs")
	}
}

// tlsBulkBytes is the size of the TLS bulk download: 1 GiB, 256 MiB with
// -short (3 s measurements).
func (b *bench) tlsBulkBytes() int64 {
	if b.secs < 10 {
		return 256 << 20
	}
	return 1 << 30
}

func tlsBulkRow(fam string, n int64) string {
	return fmt.Sprintf("TLS bulk IPv%s: curl %d MiB over HTTPS (SNI allowed), app→client", fam, n>>20)
}

// tlsBulk downloads tlsBulkBytes over HTTPS with the bench's SNI: one
// TLS flow that every column must judge by its ClientHello and then
// carry (issue 18's "TLS bulk" row).
func (p *path) tlsBulk(fam string) error {
	n := p.b.tlsBulkBytes()
	row := tlsBulkRow(fam, n)
	return p.measure(row, 0, func() (int64, error) {
		ctx, cancel := context.WithTimeout(p.b.ctx, 3*time.Minute)
		defer cancel()
		pids := p.ownPIDs()
		cpu, err := startCPU(pids)
		if err != nil {
			return 0, err
		}
		args := p.b.httpsCurl(p.l, fam, benchSNI, "/bytes?n="+strconv.FormatInt(n, 10), "-m", "170", "-w", "%{size_download} %{time_total}")
		out, err := p.l.Client.Run(ctx, args...)
		machine, netwrd, cerr := cpu.stop()
		if err != nil {
			return 0, err
		}
		if cerr != nil {
			return 0, cerr
		}
		var got int64
		var secs float64
		if _, err := fmt.Sscan(out, &got, &secs); err != nil || secs <= 0 {
			return 0, fmt.Errorf("curl's -w said %q: %v", out, err)
		}
		if got != n {
			return 0, fmt.Errorf("curl downloaded %d bytes, want %d", got, n)
		}
		p.b.set(row, "Gbit/s", p.col(), float64(got)*8/secs/1e9)
		p.setCPUPerGB(row, got, machine, netwrd, len(pids) > 0)
		return got, nil
	})
}

// cpuMeter measures machine-wide busy CPU and, for netward (or the relay,
// or a proxy), its own.
type cpuMeter struct {
	pids            []int // netward's, the relay's, or the proxy's processes; none for kernel forwarding
	machine, netwrd float64
}

func startCPU(pids []int) (*cpuMeter, error) {
	m := &cpuMeter{pids: pids}
	var err error
	if m.machine, err = machineBusy(); err != nil {
		return nil, err
	}
	if m.netwrd, err = processesCPU(pids); err != nil {
		return nil, err
	}
	return m, nil
}

// processesCPU is processCPU summed over pids.
func processesCPU(pids []int) (float64, error) {
	var sum float64
	for _, pid := range pids {
		s, err := processCPU(pid)
		if err != nil {
			return 0, err
		}
		sum += s
	}
	return sum, nil
}

// stop returns the CPU-seconds used since start: all CPUs, and netward's.
func (m *cpuMeter) stop() (machine, netwrd float64, err error) {
	mach, err := machineBusy()
	if err != nil {
		return 0, 0, err
	}
	if len(m.pids) > 0 {
		nw, err := processesCPU(m.pids)
		if err != nil {
			return 0, 0, err
		}
		netwrd = nw - m.netwrd
	}
	return mach - m.machine, netwrd, nil
}

func (p *path) iperf(c iperfCase) error {
	args := []string{"iperf3", "-c", p.l.appIP(c.fam), "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(p.b.secs), "-P", strconv.Itoa(c.streams), "-J"}
	if c.rev {
		args = append(args, "-R")
	}
	return p.measure(c.name(), 0, func() (int64, error) {
		ctx, cancel := context.WithTimeout(p.b.ctx, time.Duration(p.b.secs+30)*time.Second)
		defer cancel()
		pids := p.ownPIDs()
		cpu, err := startCPU(pids)
		if err != nil {
			return 0, err
		}
		out, err := p.l.Client.Run(ctx, args...)
		machine, netwrd, cerr := cpu.stop()
		var r iperfResult
		if jerr := json.Unmarshal([]byte(out), &r); jerr != nil {
			return 0, errors.Join(err, jerr)
		}
		if r.Error != "" {
			return 0, errors.New(r.Error)
		}
		if err != nil {
			return 0, err
		}
		if cerr != nil {
			return 0, cerr
		}
		moved := r.End.SumReceived.Bytes
		p.b.set(c.name(), "Gbit/s", p.col(), r.End.SumReceived.BPS/1e9)
		p.setCPUPerGB(c.name(), moved, machine, netwrd, len(pids) > 0)
		return moved, nil
	})
}

// setCPUPerGB fills row's CPU sub-rows for moved bytes: the machine's,
// and the column's own process when it has one.
func (p *path) setCPUPerGB(row string, moved int64, machine, own float64, hasOwn bool) {
	if moved <= 0 {
		return
	}
	gb := float64(moved) / 1e9
	p.b.set(subKey(row, machineCPURow), "CPU-s/GB", p.col(), machine/gb)
	if hasOwn {
		p.b.set(subKey(row, netwardCPURow), "CPU-s/GB", p.col(), own/gb)
	}
}

// retried runs one measurement, and once more if it fails: iperf3 now and
// then never ends a run (its control connection waits forever for a
// stream's end), which would cost the whole bench. The failure is noted
// under the table; a second one ends the bench.
func (p *path) retried(what string, f func() error) error {
	err := f()
	if err == nil {
		return nil
	}
	p.b.health = append(p.b.health, fmt.Sprintf("  %s, %s: failed once, measured again: %v", p.col(), what, err))
	return f()
}

func latencyRow(fam, pct string) string {
	return fmt.Sprintf("latency %s IPv%s (64 B request/response, open conn)", pct, fam)
}

func (p *path) latency(fam string) error {
	return p.measure("latency IPv"+fam, 1000, func() (int64, error) {
		out, err := p.l.Client.Run(p.b.ctx, p.b.peer, "pingpong", "-size", "64",
			"-d", strconv.Itoa(min(p.b.secs, 5))+"s", "-addr", p.l.appAddr(fam, peer.EchoPort))
		if err != nil {
			return 0, err
		}
		var r peer.LatencyResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return 0, err
		}
		p.b.set(latencyRow(fam, "p50"), "µs", p.col(), r.P50)
		p.b.set(latencyRow(fam, "p99"), "µs", p.col(), r.P99)
		return int64(r.N) * 64, nil
	})
}

func (b *bench) throughputAndLatency() error {
	b.declareThroughput()
	l, err := b.newLab()
	if err != nil {
		return err
	}
	defer l.Close()
	for range b.rounds {
		for _, v := range b.columns() {
			p, err := b.start(l, v, "throughput and latency")
			if err != nil {
				return err
			}
			for _, c := range iperfCases {
				if err := p.retried(c.name(), func() error { return p.iperf(c) }); err != nil {
					return errors.Join(err, p.stop())
				}
			}
			for _, fam := range []string{"4", "6"} {
				if err := p.tlsBulk(fam); err != nil {
					return errors.Join(err, p.stop())
				}
			}
			for _, fam := range []string{"4", "6"} {
				if err := p.latency(fam); err != nil {
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
