package inspect

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestInternTable(t *testing.T) {
	var tab internTable
	if tab.str(nil) != "" || tab.str([]byte("h2")) != "h2" {
		t.Fatal("basic values")
	}
	b := []byte("www.example.com")
	s := tab.str(b)
	b[0] = 'X' // the string must not alias b
	if s != "www.example.com" {
		t.Fatalf("string aliases its bytes: %q", s)
	}
	if allocs := testing.AllocsPerRun(100, func() { tab.str([]byte("www.example.com")) }); allocs != 0 {
		t.Errorf("repeat costs %.1f allocations", allocs)
	}
	if allocs := testing.AllocsPerRun(100, func() { tab.str([]byte("http/1.1")) }); allocs != 0 {
		t.Errorf("well-known value costs %.1f allocations", allocs)
	}
	for i := range 1000 {
		v := fmt.Sprintf("host-%d.example", i)
		if got := tab.str([]byte(v)); got != v {
			t.Fatalf("%q != %q", got, v)
		}
		if len(tab.m) > internMaxEntries || tab.bytes > internMaxBytes {
			t.Fatalf("table grew to %d entries, %d bytes", len(tab.m), tab.bytes)
		}
	}
	long := strings.Repeat("x", internMaxLen+1)
	if tab.str([]byte(long)) != long {
		t.Fatal("long value")
	}
	if _, kept := tab.m[long]; kept {
		t.Error("over-long value kept")
	}
}

func TestAppendUint16(t *testing.T) {
	for _, v := range []uint16{0, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535, 771, 4865} {
		if got := string(appendUint16([]byte("x"), v)); got != "x"+strconv.Itoa(int(v)) {
			t.Errorf("%d: %q", v, got)
		}
	}
}

func TestSortUint16s(t *testing.T) {
	for _, in := range [][]uint16{nil, {1}, {3, 1, 2}, {0xffff, 0, 0x1301, 0x0a0a, 0x1301, 5}} {
		got := slices.Clone(in)
		sortUint16s(got)
		want := slices.Clone(in)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%v: %v", in, got)
		}
	}
}

func TestAppendHexList(t *testing.T) {
	for _, tt := range []struct {
		in   []uint16
		want string
	}{
		{nil, "x"},
		{[]uint16{0x0a0a}, "x"},
		{[]uint16{0x1301}, "x1301"},
		{[]uint16{0x1301, 0x2a2a, 0x00ff, 0xfe0d}, "x1301,00ff,fe0d"},
		{[]uint16{0xfafa, 0x0035}, "x0035"},
	} {
		if got := string(appendHexList([]byte("x"), tt.in)); got != tt.want {
			t.Errorf("%x: %q, want %q", tt.in, got, tt.want)
		}
	}
}
