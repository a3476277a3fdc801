package netstack

// GrowStack grows the calling goroutine's stack to 16 KiB at once. Call it
// first thing in a per-flow goroutine: a goroutine starts with 2 KiB, and
// a flow's call chains (dial, gVisor's send path down to the TUN write)
// otherwise grow it two or three times, each time copying every frame
// then on the stack. A CPU profile of HTTP connection churn had 7 % of
// netward in runtime.copystack under handleSYN and the relay's copyDown;
// grown here, the stack holds only this frame and the copy is cheap.
// 16 KiB is what those goroutines reach anyway, so idle flows hold no more
// memory.
func GrowStack() { growStack(0) }

// growStack's frame is a little over 14 KiB: with the runtime's stack guard
// it needs a 16 KiB stack. The dynamic index keeps the array in the frame.
//
//go:noinline
func growStack(i int) byte {
	var frame [14 << 10]byte
	return frame[i&(len(frame)-1)]
}
