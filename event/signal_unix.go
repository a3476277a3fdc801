//go:build unix

package event

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// ReopenOnSignal reopens the log each time one of sigs arrives (SIGUSR1 if
// none are given), which is what logrotate's postrotate sends (see
// dist/logrotate.d/netward). Errors are logged. stop ends the handling and
// restores the signal's default action.
func (l *Log) ReopenOnSignal(sigs ...os.Signal) (stop func()) {
	if l == nil {
		return func() {}
	}
	if len(sigs) == 0 {
		sigs = []os.Signal{syscall.SIGUSR1}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-ch:
				if err := l.Reopen(); err != nil {
					l.logger.Error("event: reopen on signal", "err", err)
				} else {
					l.logger.Info("event log reopened", "path", l.path)
				}
			case <-quit:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(ch)
			close(quit)
			<-finished
		})
	}
}
