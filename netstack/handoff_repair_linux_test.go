package netstack

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestRepairSocketTakesNothingHalfMade: the client's packets that arrive
// while repairSocket is still setting its socket up go where steering
// sends a handed-off flow's packets until the socket has the upstream mark
// (gVisor, which stays silent; here a DROP), not to the half-made socket;
// the client sends them again, and the finished socket takes them. A
// socket that took a FIN in the middle failed TCP_REPAIR_OPTIONS (EPERM)
// after acknowledging bytes nobody delivered: the flow stalled.
//
// The connection is a real one on loopback in a private network
// namespace; its server end is closed in repair mode (silently) and
// continued by repairSocket from the state the kernel reports. The
// namespace has the socket-match rule of steer.upstreamPlan.
func TestRepairSocketTakesNothingHalfMade(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a private network namespace, TCP_REPAIR and iptables")
	}
	for _, tool := range []string{"iptables", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	// The namespace belongs to this goroutine's thread, which is never
	// unlocked: the runtime ends the thread with the test, and the
	// namespace, its sockets and its rules go with it. Sockets and
	// commands must be made from this goroutine.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare(CLONE_NEWNET): %v", err)
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up", "mtu", "1500") // a real link's MSS

	client, server := loopbackTCPPair(t) // no listener left: the repair socket binds its address
	local := netip.MustParseAddrPort(server.LocalAddr().String())
	remote := netip.MustParseAddrPort(server.RemoteAddr().String())
	st := repairedState(t, server)
	server.Close() // in repair mode: no FIN, no RST

	const mark = 0x4e59
	port := strconv.Itoa(int(local.Port()))
	run("iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "lo", "-p", "tcp", "--dport", port,
		"-m", "socket", "--transparent", "--restore-skmark", "-m", "mark", "--mark", strconv.Itoa(mark), "-j", "ACCEPT")
	run("iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "lo", "-p", "tcp", "--dport", port, "-j", "DROP")

	// The client uploads and half-closes while the socket is half made.
	upload := bytes.Repeat([]byte("netward "), 512)
	repairConnected = func() {
		if _, err := client.Write(upload); err != nil {
			t.Errorf("client write: %v", err)
		}
		if err := client.CloseWrite(); err != nil {
			t.Errorf("client close write: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // loopback delivers in µs
	}
	defer func() { repairConnected = nil }()
	kc, err := repairSocket(&st, local, remote, mark)
	repairConnected = nil
	if err != nil {
		t.Fatalf("repairSocket with the client's upload and FIN arriving half way: %v", err)
	}
	defer kc.Close()

	// The client's retransmission timeout (200 ms at least) brings it all.
	kc.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(kc)
	if err != nil {
		t.Fatalf("reading the upload from the repaired socket: %v (got %d of %d bytes)", err, len(got), len(upload))
	}
	if !bytes.Equal(got, upload) {
		t.Fatalf("the repaired socket got %d bytes, want the client's %d", len(got), len(upload))
	}
	if _, err := kc.Write([]byte("ok")); err != nil {
		t.Fatalf("answer: %v", err)
	}
	kc.CloseWrite()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	if answer, err := io.ReadAll(client); err != nil || string(answer) != "ok" {
		t.Fatalf("client read %q, %v; want the answer \"ok\" and EOF", answer, err)
	}
}

// repairedState puts c in repair mode and reads what repairSocket needs
// to continue it, as Handoff reads it from a gVisor endpoint.
func repairedState(t *testing.T, c *net.TCPConn) tcpState {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st tcpState
	var serr error
	check := func(op string, err error) {
		if err != nil && serr == nil {
			serr = &os.SyscallError{Syscall: op, Err: err}
		}
	}
	rc.Control(func(fd uintptr) {
		s := int(fd)
		check("TCP_REPAIR", unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, 1))
		seq := func(queue int) uint32 {
			check("TCP_REPAIR_QUEUE", unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, queue))
			v, err := unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_QUEUE_SEQ)
			check("TCP_QUEUE_SEQ", err)
			return uint32(v)
		}
		st.sndNxt = seq(tcpSendQueue)
		st.sndUna = st.sndNxt // nothing was sent
		st.rcvNxt = seq(tcpRecvQueue)
		var w tcpRepairWindow
		check("TCP_REPAIR_WINDOW", getsockoptBytes(s, unix.TCP_REPAIR_WINDOW, unsafe.Pointer(&w), unsafe.Sizeof(w)))
		st.sndWnd = w.sndWnd
		st.rcvAcc = w.rcvWup + w.rcvWnd
		// struct tcp_info: options at byte 5, the window scales' nibbles
		// at 6 (x/sys's TCPInfo pads them away), snd_mss at 16.
		var info [104]byte
		check("TCP_INFO", getsockoptBytes(s, unix.TCP_INFO, unsafe.Pointer(&info[0]), uintptr(len(info))))
		st.ts = info[5]&1 != 0
		st.sack = info[5]&2 != 0
		st.sndWndScale, st.rcvWndScale = info[6]&0xf, info[6]>>4
		st.maxPayload = int(*(*uint32)(unsafe.Pointer(&info[16])))
		if st.ts {
			v, err := unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_TIMESTAMP)
			check("TCP_TIMESTAMP", err)
			st.tsVal = uint32(v)
		}
	})
	if serr != nil {
		t.Fatalf("reading the connection's state: %v", serr)
	}
	return st
}

func getsockoptBytes(fd, opt int, p unsafe.Pointer, n uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_TCP, uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
