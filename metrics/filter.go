package metrics

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Filter selects active flows for `netward status`. The zero Filter selects
// all.
type Filter struct {
	Src, Dst AddrFilter
	// Verdict is allow, deny, drop, alert or pending; "" is any.
	Verdict string
	// Rule is a rule name ("default" for the default action); "" is any.
	Rule string
}

// AddrFilter matches an address and port. The zero AddrFilter matches all.
type AddrFilter struct {
	Prefix netip.Prefix // invalid = any address
	Port   uint16       // 0 = any port
}

// ParseAddrFilter parses what --src and --dst take: an address
// (192.0.2.1, 2001:db8::1), a prefix (10.0.0.0/8), an address with a port
// (192.0.2.1:443, [2001:db8::1]:443), or a port alone (:443).
func ParseAddrFilter(s string) (AddrFilter, error) {
	switch {
	case s == "":
		return AddrFilter{}, nil
	case strings.HasPrefix(s, ":"):
		port, err := parsePort(s[1:])
		return AddrFilter{Port: port}, err
	case strings.Contains(s, "/"):
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return AddrFilter{}, fmt.Errorf("%q is not an address, prefix or address:port", s)
		}
		return AddrFilter{Prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return AddrFilter{Prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return AddrFilter{}, fmt.Errorf("%q is not an address, prefix or address:port", s)
	}
	if ap.Port() == 0 {
		return AddrFilter{}, fmt.Errorf("%q: port 0", s)
	}
	a := ap.Addr().Unmap()
	return AddrFilter{Prefix: netip.PrefixFrom(a, a.BitLen()), Port: ap.Port()}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port (1..65535)", s)
	}
	return uint16(n), nil
}

// String is the form ParseAddrFilter reads back.
func (a AddrFilter) String() string {
	switch {
	case !a.Prefix.IsValid() && a.Port == 0:
		return ""
	case !a.Prefix.IsValid():
		return ":" + strconv.Itoa(int(a.Port))
	case a.Port == 0 && a.Prefix.IsSingleIP():
		return a.Prefix.Addr().String()
	case a.Port == 0:
		return a.Prefix.String()
	case a.Prefix.IsSingleIP():
		return netip.AddrPortFrom(a.Prefix.Addr(), a.Port).String()
	}
	// A prefix with a port has no one-string form; it cannot come from
	// ParseAddrFilter.
	return a.Prefix.String()
}

func (a AddrFilter) match(ap netip.AddrPort) bool {
	if a.Prefix.IsValid() && !a.Prefix.Contains(ap.Addr().Unmap()) {
		return false
	}
	return a.Port == 0 || a.Port == ap.Port()
}

// Match reports whether st is selected.
func (f *Filter) Match(st *FlowStatus) bool {
	return f.Src.match(st.Src) && f.Dst.match(st.Dst) &&
		(f.Verdict == "" || f.Verdict == st.Verdict) &&
		(f.Rule == "" || f.Rule == st.Rule)
}

// ParseFilter builds a Filter from the --src, --dst, --verdict and --rule
// values and checks them.
func ParseFilter(src, dst, verdict, rule string) (Filter, error) {
	var f Filter
	var err error
	if f.Src, err = ParseAddrFilter(src); err != nil {
		return Filter{}, fmt.Errorf("src: %w", err)
	}
	if f.Dst, err = ParseAddrFilter(dst); err != nil {
		return Filter{}, fmt.Errorf("dst: %w", err)
	}
	switch verdict {
	case "", "allow", "deny", "drop", "alert", VerdictPending:
	default:
		return Filter{}, fmt.Errorf("verdict: %q is not allow, deny, drop, alert or pending", verdict)
	}
	f.Verdict, f.Rule = verdict, rule
	return f, nil
}

// Values encodes f as the admin endpoint's query parameters.
func (f Filter) Values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("src", f.Src.String())
	set("dst", f.Dst.String())
	set("verdict", f.Verdict)
	set("rule", f.Rule)
	return v
}

// FilterFromValues decodes the query parameters Values wrote.
func FilterFromValues(v url.Values) (Filter, error) {
	return ParseFilter(v.Get("src"), v.Get("dst"), v.Get("verdict"), v.Get("rule"))
}
