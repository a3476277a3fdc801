package lab

import "testing"

func TestRelayCounters(t *testing.T) {
	out := `Chain PREROUTING (policy ACCEPT 12 packets, 3456 bytes)
    pkts      bytes target     prot opt in     out     source               destination
  100000 1500000000 TPROXY     6    --  nw-1-fc *       0.0.0.0/0            0.0.0.0/0            TPROXY redirect 0.0.0.0:9998 mark 0x7e1a/0x7e1a
    2000     120000 MARK       6    --  nw-1-fa *       0.0.0.0/0            0.0.0.0/0            socket --transparent MARK or 0x7e1a
       7        420 ACCEPT     6    --  *      *       0.0.0.0/0            0.0.0.0/0
`
	c, s := RelayCounters(out)
	if c != 1500000000 || s != 120000 {
		t.Fatalf("RelayCounters = %d, %d; want 1500000000, 120000", c, s)
	}
}
