package inspect

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// fuzzSeeds are the seed inputs of the fuzz targets: the real-client
// captures and the hand-made cases of the unit tests. They are committed
// under testdata/fuzz/<FuzzName>/ (go test runs them as part of the fuzz
// targets); TestFuzzSeedCorpus keeps the files in step with this list.
func fuzzSeeds(tb testing.TB) map[string]map[string][]byte {
	seeds := map[string]map[string][]byte{"FuzzTLSParser": {}, "FuzzHTTPParser": {}, "FuzzDetect": {}}
	for name, b := range captures(tb, "tls") {
		seeds["FuzzTLSParser"]["capture-"+name] = b
	}
	for _, c := range tlsEvasionCases() {
		seeds["FuzzTLSParser"]["case-"+c.name] = c.in
	}
	for name, b := range captures(tb, "http") {
		seeds["FuzzHTTPParser"]["capture-"+name] = b
	}
	for _, c := range httpCases() {
		seeds["FuzzHTTPParser"]["case-"+c.name] = []byte(c.in)
	}
	for _, dir := range []string{"tls", "http", "other"} {
		for name, b := range captures(tb, dir) {
			seeds["FuzzDetect"]["capture-"+dir+"-"+name] = b
		}
	}
	for i, c := range detectCases {
		seeds["FuzzDetect"][fmt.Sprintf("case-%02d", i)] = []byte(c.in)
	}
	return seeds
}

// encodeSeed writes a corpus file in the "go test fuzz v1" format for
// (data []byte, seed uint64).
func encodeSeed(data []byte, seed uint64) string {
	return fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint64(%d)\n", data, seed)
}

func seedFileName(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, name)
}

// TestFuzzSeedCorpus checks that every seed is committed. Run with
// INSPECT_WRITE_SEEDS=1 to (re)write the files. Other files in those
// directories (inputs the fuzzer found, kept as regression tests) are left
// alone.
func TestFuzzSeedCorpus(t *testing.T) {
	write := os.Getenv("INSPECT_WRITE_SEEDS") != ""
	for fuzzName, seeds := range fuzzSeeds(t) {
		dir := filepath.Join("testdata", "fuzz", fuzzName)
		names := make([]string, 0, len(seeds))
		for name := range seeds {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			path := filepath.Join(dir, seedFileName(name))
			// The split seed comes from the name, so adding a case does
			// not change the other files.
			h := fnv.New64a()
			h.Write([]byte(name))
			want := encodeSeed(seeds[name], h.Sum64()%1000+1)
			if write {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != want {
				t.Errorf("%s: missing or stale (%v); run INSPECT_WRITE_SEEDS=1 go test -run TestFuzzSeedCorpus ./inspect", path, err)
			}
		}
	}
}
