// Command lab manages the netward namespace lab by hand.
//
//	lab clean   remove every lab namespace (leftovers of killed runs)
//	lab up      build a lab, print its names, keep it until Ctrl-C
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/netward/netward/e2e/lab"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lab clean|up")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "clean":
		err = clean()
	case "up":
		err = up()
	default:
		err = fmt.Errorf("unknown subcommand %q (want clean or up)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func clean() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	removed, err := lab.Cleanup(ctx)
	for _, n := range removed {
		fmt.Println("removed namespace", n)
	}
	if err == nil && len(removed) == 0 {
		fmt.Println("no lab namespaces left behind")
	}
	return err
}

func up() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := lab.New(lab.Options{Logf: func(f string, a ...any) { fmt.Printf(f+"\n", a...) }})
	if err != nil {
		return err
	}
	defer l.Close()
	t := l.Topo
	fmt.Printf(`
lab %s is up:
  client     ns %-16s if %-13s %s %s (+%d more v4)
  appliance  ns %-16s if %-13s %s %s
                                   if %-13s %s %s
  app        ns %-16s if %-13s %s %s

  ip netns exec %s curl http://%s:8080/
Ctrl-C removes it.
`, l.ID,
		l.Client.Name, l.ClientIf, t.ClientV4, t.ClientV6, len(t.ClientExtraV4),
		l.Appliance.Name, l.ApplianceClientIf, t.ApplianceClientV4, t.ApplianceClientV6,
		l.ApplianceAppIf, t.ApplianceAppV4, t.ApplianceAppV6,
		l.App.Name, l.AppIf, t.AppV4, t.AppV6,
		l.Client.Name, t.AppV4.Addr())
	<-ctx.Done()
	return nil
}
