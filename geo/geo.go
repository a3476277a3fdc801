// Package geo looks up the country and autonomous system of an IP address in
// MaxMind DB (mmdb) files: a country database (GeoLite2/GeoIP2 Country or
// City, DB-IP country/city lite, or any mmdb whose records have the
// country.iso_code shape) and an ASN database (GeoLite2-ASN, GeoIP2-ISP, or
// any mmdb with autonomous_system_number / autonomous_system_organization).
//
// Both files are verified when opened, so a corrupt or truncated file is an
// error from Open, never a panic or a silent wrong answer later.
package geo

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/oschwald/geoip2-golang/v2"
	"github.com/oschwald/maxminddb-golang/v2"
)

// Info is what geo knows about one address. The zero Info means "unknown"
// (no database, or the address is not in it, e.g. a private address).
type Info struct {
	Country string // ISO 3166-1 alpha-2, upper case; "" if unknown
	ASN     uint32 // 0 if unknown
	ASOrg   string // the AS organisation; "" if unknown
}

// DB holds the opened databases. Either may be absent. A DB is safe for
// concurrent use; Close must not race with lookups.
type DB struct {
	country countryReader
	asn     asnReader
	paths   [2]string
	errs    atomic.Uint64
}

// Open opens and verifies the databases at countryPath and asnPath. An empty
// path means that database is not used; both empty gives a DB that answers
// every lookup with the zero Info.
func Open(countryPath, asnPath string) (*DB, error) {
	db := &DB{paths: [2]string{countryPath, asnPath}}
	if countryPath != "" {
		r, err := openCountry(countryPath)
		if err != nil {
			return nil, err
		}
		db.country = r
	}
	if asnPath != "" {
		r, err := openASN(asnPath)
		if err != nil {
			db.Close()
			return nil, err
		}
		db.asn = r
	}
	return db, nil
}

// HasCountry reports whether a country database is open. A nil DB has none.
func (db *DB) HasCountry() bool { return db != nil && db.country != nil }

// HasASN reports whether an ASN database is open. A nil DB has none.
func (db *DB) HasASN() bool { return db != nil && db.asn != nil }

// Paths returns the country and ASN database paths given to Open.
func (db *DB) Paths() (country, asn string) {
	if db == nil {
		return "", ""
	}
	return db.paths[0], db.paths[1]
}

// Errors counts lookups that failed on a damaged record (these answer the
// zero value for the damaged part). Verification at Open makes this rare.
func (db *DB) Errors() uint64 {
	if db == nil {
		return 0
	}
	return db.errs.Load()
}

// Lookup returns what the databases know about a. IPv4-mapped IPv6 addresses
// are looked up as IPv4. A nil DB returns the zero Info.
func (db *DB) Lookup(a netip.Addr) Info {
	var info Info
	if db == nil || !a.IsValid() {
		return info
	}
	a = a.Unmap().WithZone("")
	if db.country != nil {
		c, err := db.country.country(a)
		if err != nil {
			db.errs.Add(1)
		}
		info.Country = c
	}
	if db.asn != nil {
		n, org, err := db.asn.asn(a)
		if err != nil {
			db.errs.Add(1)
		}
		info.ASN, info.ASOrg = n, org
	}
	return info
}

// Close releases the databases. Lookups after Close answer the zero Info
// for the closed part and count an error.
func (db *DB) Close() error {
	if db == nil {
		return nil
	}
	var errs []error
	if db.country != nil {
		errs = append(errs, db.country.Close())
	}
	if db.asn != nil {
		errs = append(errs, db.asn.Close())
	}
	return errors.Join(errs...)
}

type countryReader interface {
	country(netip.Addr) (string, error)
	Close() error
}

type asnReader interface {
	asn(netip.Addr) (uint32, string, error)
	Close() error
}

// verify opens path with the low-level reader and checks the whole file:
// the search tree, the data section and the metadata. It returns the
// database type named in the metadata.
func verify(kind, path string) (string, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return "", fmt.Errorf("geo: open %s database %s: %w", kind, path, err)
	}
	defer r.Close()
	if err := r.Verify(); err != nil {
		return "", fmt.Errorf("geo: %s database %s is corrupt: %w", kind, path, err)
	}
	return r.Metadata.DatabaseType, nil
}

func openCountry(path string) (countryReader, error) {
	return openReader(path, "country", "a country or city",
		func(r *geoip2.Reader) error { _, err := r.Country(netip.IPv4Unspecified()); return err },
		func(r *geoip2.Reader) countryReader { return geoip2Country{r} },
		openCountryRaw)
}

func openASN(path string) (asnReader, error) {
	return openReader(path, "ASN", "an ASN",
		func(r *geoip2.Reader) error { _, err := r.ASN(netip.IPv4Unspecified()); return err },
		func(r *geoip2.Reader) asnReader { return geoip2ASN{r} },
		openASNRaw)
}

// openReader opens a database of one kind: through geoip2 when it knows the
// database type, else raw (a home-made mmdb with the same record shape,
// read field by field). probe is one lookup of the kind: geoip2 refuses it
// on databases of another kind (an ASN file given as the country database),
// and that is found now rather than on the first flow.
func openReader[R any](path, kind, want string, probe func(*geoip2.Reader) error,
	wrap func(*geoip2.Reader) R, raw func(string) (R, error)) (R, error) {
	var none R
	dbType, err := verify(kind, path)
	if err != nil {
		return none, err
	}
	r, err := geoip2.Open(path)
	var unknown geoip2.UnknownDatabaseTypeError
	switch {
	case errors.As(err, &unknown):
		if r != nil {
			r.Close()
		}
		return raw(path)
	case err != nil:
		return none, fmt.Errorf("geo: open %s database %s: %w", kind, path, err)
	}
	if err := probe(r); err != nil {
		r.Close()
		return none, fmt.Errorf("geo: %s is a %q database, not %s database", path, dbType, want)
	}
	return wrap(r), nil
}

type geoip2Country struct{ r *geoip2.Reader }

func (g geoip2Country) Close() error { return g.r.Close() }

func (g geoip2Country) country(a netip.Addr) (string, error) {
	c, err := g.r.Country(a)
	if err != nil || c == nil {
		return "", err
	}
	// Some networks (anycast, satellite, ...) have no located country,
	// only the one they are registered in; that is better than nothing for
	// filtering.
	if c.Country.ISOCode != "" {
		return c.Country.ISOCode, nil
	}
	return c.RegisteredCountry.ISOCode, nil
}

type geoip2ASN struct{ r *geoip2.Reader }

func (g geoip2ASN) Close() error { return g.r.Close() }

func (g geoip2ASN) asn(a netip.Addr) (uint32, string, error) {
	v, err := g.r.ASN(a)
	if err != nil || v == nil {
		return 0, "", err
	}
	if v.AutonomousSystemNumber > 0xffffffff {
		return 0, v.AutonomousSystemOrganization, fmt.Errorf("geo: ASN %d out of range", v.AutonomousSystemNumber)
	}
	return uint32(v.AutonomousSystemNumber), v.AutonomousSystemOrganization, nil
}

// rawCountry reads databases that geoip2 does not know by type name but that
// share the GeoIP2 record shape.
type rawCountry struct{ r *maxminddb.Reader }

func openCountryRaw(path string) (countryReader, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("geo: open country database %s: %w", path, err)
	}
	return rawCountry{r}, nil
}

func (g rawCountry) Close() error { return g.r.Close() }

func (g rawCountry) country(a netip.Addr) (string, error) {
	var rec struct {
		Country struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"country"`
		Registered struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"registered_country"`
	}
	res := g.r.Lookup(a)
	if err := res.Err(); err != nil || !res.Found() {
		return "", err
	}
	if err := res.Decode(&rec); err != nil {
		return "", err
	}
	if rec.Country.ISOCode != "" {
		return rec.Country.ISOCode, nil
	}
	return rec.Registered.ISOCode, nil
}

type rawASN struct{ r *maxminddb.Reader }

func openASNRaw(path string) (asnReader, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("geo: open ASN database %s: %w", path, err)
	}
	return rawASN{r}, nil
}

func (g rawASN) Close() error { return g.r.Close() }

func (g rawASN) asn(a netip.Addr) (uint32, string, error) {
	var rec struct {
		Number uint32 `maxminddb:"autonomous_system_number"`
		Org    string `maxminddb:"autonomous_system_organization"`
	}
	res := g.r.Lookup(a)
	if err := res.Err(); err != nil || !res.Found() {
		return 0, "", err
	}
	err := res.Decode(&rec)
	return rec.Number, rec.Org, err
}
