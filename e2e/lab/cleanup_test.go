package lab

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestCleanupRemovesLeftovers leaves a lab behind as a killed run would
// (no Close) and removes it by name, with a process still running in it.
// Only this lab's namespaces are matched, so concurrent labs are safe.
func TestCleanupRemovesLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if _, err := l.App.Start("sleeper", "sleep", "600"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !labNS.MatchString(l.Client.Name) {
		t.Fatalf("lab namespace %q does not match the cleanup pattern %s", l.Client.Name, labNS)
	}
	removed, err := cleanup(ctx, func(name string) bool { return strings.HasPrefix(name, Prefix+l.ID+"-") })
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 3 {
		t.Errorf("removed %q, want the lab's 3 namespaces", removed)
	}
	for _, ns := range l.Namespaces() {
		if _, err := os.Stat("/run/netns/" + ns.Name); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists: %v", ns.Name, err)
		}
	}
}

func TestDropEmptyTables(t *testing.T) {
	in := "*mangle\n:PREROUTING ACCEPT \n:INPUT ACCEPT \nCOMMIT\n" +
		"*raw\n:PREROUTING ACCEPT \n:NETWARD_RAW - \nCOMMIT\n" +
		"*filter\n:INPUT ACCEPT \n:FORWARD DROP \nCOMMIT\n" +
		"*nat\n:PREROUTING ACCEPT \n-A PREROUTING -j ACCEPT\nCOMMIT\n"
	got := dropEmptyTables(in)
	if strings.Contains(got, "*mangle") {
		t.Errorf("empty mangle table kept:\n%s", got)
	}
	for _, keep := range []string{"*raw", ":NETWARD_RAW", "*filter", ":FORWARD DROP", "*nat", "-A PREROUTING"} {
		if !strings.Contains(got, keep) {
			t.Errorf("dropped %q:\n%s", keep, got)
		}
	}
}
