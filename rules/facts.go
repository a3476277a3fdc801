package rules

import (
	"net/netip"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/inspect"
)

// Facts is what is known about a flow when it is judged. policy.Facts is
// this type. Before inspection only the addresses (and geo) are known; a
// full decision also has what inspect found in the first client bytes.
type Facts struct {
	Src, Dst netip.AddrPort
	// Transport is TCP (the zero value) or UDP.
	Transport Transport
	// App is the protocol inspect detected (ProtoUnknown if none).
	App inspect.Proto
	// SNI is the TLS server_name; Host the HTTP Host header (a port in it
	// is ignored). Either may be in any case, with a trailing dot, or in
	// Unicode: matching normalises them.
	SNI, Host string
	// Method and Path are from the HTTP request line; Path is the
	// request-target as sent (origin or absolute form).
	Method, Path string
	// DNSName is the name a DNS query asks for (rules dns: and domain:);
	// DNSType its type as EVE names it ("A", "AAAA"), for events only.
	DNSName, DNSType string
	// ALPN lists the protocols the TLS client offered (not matched by rules;
	// carried for events).
	ALPN []string
	// SrcGeo and DstGeo are the geo lookups of Src and Dst (zero if none).
	SrcGeo, DstGeo geo.Info
}

// appNames maps the rule "app:" values to protocols. It is built from
// inspect.Proto.String so the two can never disagree.
var appNames = func() map[string]inspect.Proto {
	m := make(map[string]inspect.Proto)
	for p := 0; p < 256; p++ {
		n := inspect.Proto(p).String()
		if _, ok := m[n]; !ok {
			m[n] = inspect.Proto(p)
		}
	}
	return m
}()

// AppNames returns the valid "app:" values.
func AppNames() []string {
	names := make([]string, 0, len(appNames))
	for n := range appNames {
		names = append(names, n)
	}
	sortStrings(names)
	return names
}

// ParseApp parses an "app:" value.
func ParseApp(s string) (inspect.Proto, bool) {
	p, ok := appNames[s]
	return p, ok
}
