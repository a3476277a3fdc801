package geo_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netward/netward/geo"
	"github.com/netward/netward/geo/geotest"
)

func writeDBs(t testing.TB) (country, asn string) {
	t.Helper()
	dir := t.TempDir()
	country = filepath.Join(dir, "country.mmdb")
	asn = filepath.Join(dir, "asn.mmdb")
	if err := geotest.WriteCountry(country, map[netip.Prefix]string{
		netip.MustParsePrefix("192.0.2.0/24"):    "US",
		netip.MustParsePrefix("192.0.2.128/25"):  "CA", // more specific wins
		netip.MustParsePrefix("198.51.100.0/24"): "DE",
		netip.MustParsePrefix("2001:db8::/32"):   "JP",
		netip.MustParsePrefix("2001:db8:1::/48"): "FR",
	}); err != nil {
		t.Fatal(err)
	}
	if err := geotest.WriteASN(asn, map[netip.Prefix]geotest.ASN{
		netip.MustParsePrefix("192.0.2.0/24"):  {Number: 64500, Org: "Example Net"},
		netip.MustParsePrefix("2001:db8::/32"): {Number: 4200000001, Org: "Big ASN"},
	}); err != nil {
		t.Fatal(err)
	}
	return country, asn
}

func TestLookup(t *testing.T) {
	country, asn := writeDBs(t)
	db, err := geo.Open(country, asn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if !db.HasCountry() || !db.HasASN() {
		t.Fatal("databases not reported open")
	}
	tests := []struct {
		addr string
		want geo.Info
	}{
		{"192.0.2.1", geo.Info{Country: "US", ASN: 64500, ASOrg: "Example Net"}},
		{"192.0.2.200", geo.Info{Country: "CA", ASN: 64500, ASOrg: "Example Net"}},
		{"::ffff:192.0.2.1", geo.Info{Country: "US", ASN: 64500, ASOrg: "Example Net"}},
		{"198.51.100.7", geo.Info{Country: "DE"}},
		{"203.0.113.1", geo.Info{}},
		{"10.1.2.3", geo.Info{}},
		{"2001:db8::1", geo.Info{Country: "JP", ASN: 4200000001, ASOrg: "Big ASN"}},
		{"2001:db8:1::1", geo.Info{Country: "FR", ASN: 4200000001, ASOrg: "Big ASN"}},
		{"fe80::1%eth0", geo.Info{}},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := db.Lookup(netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("Lookup(%s) = %+v, want %+v", tt.addr, got, tt.want)
			}
		})
	}
	if db.Errors() != 0 {
		t.Errorf("Errors() = %d", db.Errors())
	}
}

func TestOpenOnlyOne(t *testing.T) {
	country, asn := writeDBs(t)
	db, err := geo.Open("", asn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db.HasCountry() || !db.HasASN() {
		t.Fatal("wrong databases reported open")
	}
	if got := db.Lookup(netip.MustParseAddr("192.0.2.1")); got != (geo.Info{ASN: 64500, ASOrg: "Example Net"}) {
		t.Errorf("got %+v", got)
	}
	db2, err := geo.Open(country, "")
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if got := db2.Lookup(netip.MustParseAddr("192.0.2.1")); got != (geo.Info{Country: "US"}) {
		t.Errorf("got %+v", got)
	}
	var none *geo.DB
	if none.HasCountry() || none.Lookup(netip.MustParseAddr("192.0.2.1")) != (geo.Info{}) {
		t.Error("nil DB must answer nothing")
	}
}

func TestOpenErrors(t *testing.T) {
	country, asn := writeDBs(t)
	dir := t.TempDir()
	good, err := os.ReadFile(country)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Flip bytes in the search tree: the metadata still reads, the tree
	// does not verify.
	tree := append([]byte(nil), good...)
	for i := 0; i < 64 && i < len(tree); i++ {
		tree[i] ^= 0xff
	}
	tests := []struct {
		name         string
		country, asn string
		want         string
	}{
		{"missing", filepath.Join(dir, "nope.mmdb"), "", "no such file"},
		{"empty", write("empty.mmdb", nil), "", "country database"},
		{"garbage", write("garbage.mmdb", []byte(strings.Repeat("not an mmdb ", 100))), "", "country database"},
		{"truncated", write("trunc.mmdb", good[:len(good)/2]), "", "country database"},
		{"corrupt tree", write("tree.mmdb", tree), "", "corrupt"},
		{"asn as country", asn, "", "not a country"},
		{"country as asn", "", country, "not an ASN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := geo.Open(tt.country, tt.asn)
			if err == nil {
				db.Close()
				t.Fatalf("Open succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "geo: ") {
				t.Errorf("error %q, want geo: prefix and %q", err, tt.want)
			}
		})
	}
}

// FuzzOpen feeds mutated database files to Open and Lookup: a damaged file
// is an error, never a panic.
func FuzzOpen(f *testing.F) {
	country, asn := writeDBs(f)
	for _, p := range []string{country, asn} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "fuzz.mmdb")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][2]string{{p, ""}, {"", p}} {
			db, err := geo.Open(args[0], args[1])
			if err != nil {
				continue
			}
			for _, a := range []string{"192.0.2.1", "2001:db8::1", "0.0.0.0", "ffff::1"} {
				db.Lookup(netip.MustParseAddr(a))
			}
			db.Close()
		}
	})
}

func BenchmarkLookup(b *testing.B) {
	country, asn := writeDBs(b)
	db, err := geo.Open(country, asn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	a := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		db.Lookup(a)
	}
}
