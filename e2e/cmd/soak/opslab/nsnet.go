// Package opslab is what the operations tests (e2e/ops_*_test.go) and the
// soak program (e2e/cmd/soak) add to the lab (e2e/lab): sockets opened
// inside a lab namespace from the calling process (no helper process per
// connection), an application server that counts the TCP payload bytes of
// every connection (plain HTTP and TLS with a self-signed certificate), a
// Prometheus scraper, a raw SYN sender, and the soak run itself.
//
// A socket belongs to the network namespace of the thread that created it,
// for its whole life. So a listener or a connection is created on a locked
// OS thread switched into the namespace, and then used from any goroutine.
package opslab

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// NS is a network namespace (a name under /run/netns) that sockets can be
// opened in.
type NS struct {
	Name string
}

// Do runs f on an OS thread switched into the namespace. Sockets f creates
// stay in the namespace. f runs on its own goroutine: if the thread cannot
// be switched back, it is left locked and ends with that goroutine, so no
// other code ever runs in the wrong namespace.
func (n NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opslab: current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(n.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opslab: open netns %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opslab: enter netns %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// Tainted thread: stays locked, dies with this goroutine.
			errc <- fmt.Errorf("opslab: leave netns %s: %w", n.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener in the namespace.
func (n NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Dialer dials from the namespace. The zero Dialer's fields are those of
// net.Dialer.
type Dialer struct {
	NS NS
	net.Dialer
}

// DialContext connects from the namespace. The whole connect runs on the
// switched thread (net.Dialer creates the socket and connects in one call).
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := d.NS.Do(func() error {
		var err error
		c, err = d.Dialer.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func netDialer(timeout time.Duration) net.Dialer { return net.Dialer{Timeout: timeout} }
