// Package geotest writes small MaxMind DB files for tests and the lab: a
// country database (type "GeoLite2-Country") and an ASN database (type
// "GeoLite2-ASN") mapping given prefixes to values. The files open with
// geo.Open like the real GeoLite2 databases.
//
// Documentation and private ranges (192.0.2.0/24, 10.0.0.0/8, 2001:db8::/32,
// ...) are allowed: MaxMind's writer excludes reserved networks by default,
// which would make test addresses unknowable.
package geotest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// ASN is one autonomous system record.
type ASN struct {
	Number uint32
	Org    string
}

// WriteCountry writes a country database to path mapping each prefix to an
// ISO 3166-1 alpha-2 code (stored as country.iso_code and
// registered_country.iso_code). More specific prefixes win over less
// specific ones regardless of map order.
func WriteCountry(path string, countries map[netip.Prefix]string) error {
	recs := make(map[netip.Prefix]mmdbtype.DataType, len(countries))
	for p, code := range countries {
		c := mmdbtype.Map{"iso_code": mmdbtype.String(code)}
		recs[p] = mmdbtype.Map{"country": c, "registered_country": c}
	}
	return write(path, "GeoLite2-Country", recs)
}

// WriteASN writes an ASN database to path mapping each prefix to an AS.
func WriteASN(path string, asns map[netip.Prefix]ASN) error {
	recs := make(map[netip.Prefix]mmdbtype.DataType, len(asns))
	for p, a := range asns {
		m := mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(a.Number)}
		if a.Org != "" {
			m["autonomous_system_organization"] = mmdbtype.String(a.Org)
		}
		recs[p] = m
	}
	return write(path, "GeoLite2-ASN", recs)
}

func write(path, dbType string, recs map[netip.Prefix]mmdbtype.DataType) error {
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            dbType,
		Description:             map[string]string{"en": "netward geotest " + dbType},
		IncludeReservedNetworks: true,
		RecordSize:              28,
	})
	if err != nil {
		return fmt.Errorf("geotest: new %s tree: %w", dbType, err)
	}
	// Insert less specific prefixes first so a more specific one overrides
	// its part of a covering prefix (Insert replaces what is there).
	masked := make(map[netip.Prefix]mmdbtype.DataType, len(recs))
	for p, v := range recs {
		if !p.IsValid() {
			return fmt.Errorf("geotest: invalid prefix %v", p)
		}
		if _, dup := masked[p.Masked()]; dup {
			return fmt.Errorf("geotest: prefix %v given twice", p.Masked())
		}
		masked[p.Masked()] = v
	}
	prefixes := make([]netip.Prefix, 0, len(masked))
	for p := range masked {
		prefixes = append(prefixes, p)
	}
	sort.Slice(prefixes, func(i, j int) bool {
		if bi, bj := treeBits(prefixes[i]), treeBits(prefixes[j]); bi != bj {
			return bi < bj
		}
		return prefixes[i].Addr().Less(prefixes[j].Addr())
	})
	for _, p := range prefixes {
		if err := tree.Insert(ipNet(p), masked[p]); err != nil {
			return fmt.Errorf("geotest: insert %v: %w", p, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("geotest: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("geotest: %w", err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("geotest: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("geotest: write %s: %w", path, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		return &net.IPNet{IP: net.IP(b[:]), Mask: net.CIDRMask(p.Bits(), 32)}
	}
	b := a.As16()
	return &net.IPNet{IP: net.IP(b[:]), Mask: net.CIDRMask(p.Bits(), 128)}
}

// treeBits is the prefix length in the writer's IPv6 tree, where IPv4 lives
// under ::/96.
func treeBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return p.Bits() + 96
	}
	return p.Bits()
}
