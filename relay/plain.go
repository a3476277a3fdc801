package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/netward/netward/netstack"
)

// Plain is the netstack.Handler that admits every flow and splices it
// unchanged. It logs one line per flow when the flow ends.
type Plain struct {
	// Log receives the per-flow lines; nil discards.
	Log *slog.Logger
}

var _ netstack.Handler = (*Plain)(nil)

// Admit implements netstack.Handler: every flow is accepted.
func (p *Plain) Admit(*netstack.Flow) netstack.Admission { return netstack.AdmitAccept }

// Serve implements netstack.Handler.
func (p *Plain) Serve(f *netstack.Flow, client, server netstack.Conn) {
	res := Splice(client, server, nil)
	if p.Log != nil {
		LogFlow(p.Log, f, res)
	}
}

// LogFlow writes the per-flow line: who, how much each way, how long, how
// it ended.
func LogFlow(log *slog.Logger, f *netstack.Flow, res Result) {
	attrs := []slog.Attr{
		slog.Uint64("flow_id", f.ID),
		slog.String("src", f.Client.String()),
		slog.String("dst", f.Server.String()),
		slog.Int64("bytes_up", res.Up),
		slog.Int64("bytes_down", res.Down),
		slog.Duration("duration", time.Since(f.Start).Round(time.Microsecond)),
		slog.String("end", res.End.String()),
	}
	if res.Err != nil {
		attrs = append(attrs, slog.String("error", res.Err.Error()))
	}
	log.LogAttrs(context.Background(), slog.LevelInfo, "flow", attrs...)
}
