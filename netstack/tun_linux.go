package netstack

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// TUNOptions says how to create the TUN device.
type TUNOptions struct {
	// Name of the device, e.g. "netward0". Required.
	Name string
	// MTU of the device; 0 keeps the kernel default (1500).
	MTU int
	// Queues is the number of IFF_MULTI_QUEUE queues, each read by its own
	// goroutine; 0 or 1 opens a single-queue device.
	Queues int
	// Offload asks for IFF_VNET_HDR with TSO/checksum offload, so the kernel
	// passes GSO super-packets and partial checksums. If the kernel refuses,
	// the device falls back to plain packets (TUN.VnetHdr reports which).
	// Without Offload the device is wireguard's (wgtun.CreateTUN), single
	// queue, read and written in batches of plain packets (wgEndpoint).
	Offload bool
}

// TUN is an open TUN device. The kernel removes the device when the last
// of its files is closed (it is never made persistent), so nothing is left
// behind even if netward dies.
type TUN struct {
	Name    string
	Index   int  // interface index
	MTU     int  // device MTU
	VnetHdr bool // packets carry a virtio_net_hdr and offloads are on
	Files   []*os.File

	// dev is the wireguard device of a TUN opened without Offload (Files
	// is then its file); nil otherwise.
	dev wgtun.Device
}

// tunOffloads are the offloads netward asks for: TSO for IPv4 and IPv6 and
// checksum offload, as wireguard-go's tun_linux.go does (TCP only: netward
// steers no UDP).
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// tunTxQueueLen is the TUN's txqueuelen: the packets the kernel holds for
// netward's readers (see OpenTUN).
const tunTxQueueLen = 8192

// OpenTUN creates the TUN device, sets its MTU and brings it up. The
// device lives in the network namespace of the calling thread.
func OpenTUN(o TUNOptions) (*TUN, error) {
	if o.Name == "" {
		return nil, errors.New("netstack: TUN name is empty")
	}
	if len(o.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("netstack: TUN name %q longer than %d bytes", o.Name, unix.IFNAMSIZ-1)
	}
	if !littleEndian() {
		// virtio_net_hdr fields are in host order; vnethdr.go assumes LE.
		o.Offload = false
	}
	queues := max(o.Queues, 1)
	t := &TUN{Name: o.Name}
	vnet := o.Offload
	if !o.Offload {
		dev, err := createWGDevice(o.Name, o.MTU)
		if err != nil {
			return nil, err
		}
		t.dev = dev
		t.Files = []*os.File{dev.File()}
		queues = 0
	}
	for q := 0; q < queues; q++ {
		f, gotVnet, err := openQueue(o.Name, queues > 1, vnet)
		if err != nil && vnet && q == 0 {
			// Kernel without vnet_hdr/offload support: plain packets.
			f, gotVnet, err = openQueue(o.Name, queues > 1, false)
		}
		if err != nil {
			t.Close()
			return nil, err
		}
		if q == 0 {
			vnet = gotVnet
		}
		t.Files = append(t.Files, f)
	}
	t.VnetHdr = vnet

	link, err := netlink.LinkByName(o.Name)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("netstack: find TUN %s: %w", o.Name, err)
	}
	if o.MTU > 0 {
		if err := netlink.LinkSetMTU(link, o.MTU); err != nil {
			t.Close()
			return nil, fmt.Errorf("netstack: set MTU %d on %s: %w", o.MTU, o.Name, err)
		}
	}
	// The kernel queues packets for the TUN in a ring of txqueuelen
	// entries and drops when it is full (TX dropped). The default 500
	// overflowed on a burst of 1,000 SYNs (each SYN costs the reader more
	// than the sender), and every drop costs a client a 1 s SYN retransmit.
	if err := netlink.LinkSetTxQLen(link, tunTxQueueLen); err != nil {
		t.Close()
		return nil, fmt.Errorf("netstack: set txqueuelen on %s: %w", o.Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Close()
		return nil, fmt.Errorf("netstack: set %s up: %w", o.Name, err)
	}
	t.Index = link.Attrs().Index
	t.MTU = o.MTU
	if t.MTU == 0 {
		t.MTU = link.Attrs().MTU
	}
	return t, nil
}

// openQueue opens one queue of the device. With vnet it also enables the
// offloads; if TUNSETOFFLOAD fails the queue is unusable with vnet_hdr on
// (the kernel would still prepend headers but never send GSO), so it is
// reported as an error and the caller retries without.
func openQueue(name string, multi, vnet bool) (*os.File, bool, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, false, fmt.Errorf("netstack: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, false, fmt.Errorf("netstack: TUN name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if multi {
		flags |= unix.IFF_MULTI_QUEUE
	}
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, false, fmt.Errorf("netstack: create TUN %s: %w", name, err)
	}
	if vnet {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunOffloads); err != nil {
			unix.Close(fd)
			return nil, false, fmt.Errorf("netstack: enable offloads on %s: %w", name, err)
		}
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), vnet, nil
}

// Close closes all queues; the kernel then deletes the device. Safe to call
// more than once. After NewStack, the stack owns the files: close the Stack
// instead.
func (t *TUN) Close() error {
	if t.dev != nil {
		wgDevices.Delete(t.dev.File())
		return t.dev.Close() // closes the file; safe to repeat
	}
	var errs []error
	for _, f := range t.Files {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func littleEndian() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}
