package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSLoadResult is what DNSLoad measured.
type DNSLoadResult struct {
	Queries  int64   `json:"queries"`  // answered
	Timeouts int64   `json:"timeouts"` // unanswered within the per-query timeout
	QPS      float64 `json:"qps"`
	Workers  int     `json:"workers"`
}

// DNSLoad sends A queries for name to the DNS server at addr over UDP from
// workers sockets (one UDP flow each), one query in flight per socket, for
// dur, and counts the answers: the queries per second a resolver path
// carries when every query is judged.
func DNSLoad(ctx context.Context, addr, name string, workers int, dur time.Duration) (DNSLoadResult, error) {
	var answered, timeouts atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	deadline := start.Add(dur)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := net.Dial("udp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			qname, err := dnsmessage.NewName(fmt.Sprintf("w%d.%s.", w, name))
			if err != nil {
				errs <- err
				return
			}
			buf := make([]byte, 1500)
			for id := uint16(1); time.Now().Before(deadline) && ctx.Err() == nil; id++ {
				b := dnsmessage.NewBuilder(buf[:0:512], dnsmessage.Header{ID: id, RecursionDesired: true})
				b.StartQuestions()
				b.Question(dnsmessage.Question{Name: qname, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
				msg, err := b.Finish()
				if err != nil {
					errs <- err
					return
				}
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				for {
					n, err := c.Read(buf[512:])
					if err != nil {
						timeouts.Add(1)
						break
					}
					if n >= 2 && uint16(buf[512])<<8|uint16(buf[513]) == id {
						answered.Add(1)
						break
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	elapsed := time.Since(start).Seconds()
	r := DNSLoadResult{Queries: answered.Load(), Timeouts: timeouts.Load(), QPS: float64(answered.Load()) / elapsed, Workers: workers}
	if err := <-errs; err != nil {
		return r, err
	}
	if r.Queries == 0 {
		return r, errors.New("no query answered")
	}
	return r, nil
}
