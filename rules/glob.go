package rules

import (
	"errors"
	"math/bits"
)

// glob is a compiled path glob: '*' matches a run of characters other than
// '/', '**' any run, '?' one character other than '/'; everything else
// matches itself, and the pattern must match the whole path.
//
// It is matched by simulating the pattern's NFA over a fixed bitset of
// positions: time is linear in the path for a given pattern (no
// backtracking blow-up on hostile paths) and nothing is allocated.
type glob struct {
	toks []globTok
}

type globTok struct {
	kind globKind
	b    byte
}

type globKind uint8

const (
	globLit   globKind = iota // one byte
	globOne                   // ?
	globStar                  // *
	globStars                 // **
)

// maxGlobToks bounds a pattern's length (positions fit the bitset).
const maxGlobToks = 255

type globState [4]uint64

func (s *globState) set(i int)      { s[i>>6] |= 1 << (i & 63) }
func (s *globState) has(i int) bool { return s[i>>6]&(1<<(i&63)) != 0 }
func (s *globState) empty() bool    { return s[0]|s[1]|s[2]|s[3] == 0 }

func compileGlob(p string) (*glob, error) {
	g := &glob{}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '*' && i+1 < len(p) && p[i+1] == '*':
			g.toks = append(g.toks, globTok{kind: globStars})
			for i+1 < len(p) && p[i+1] == '*' {
				i++
			}
		case c == '*':
			g.toks = append(g.toks, globTok{kind: globStar})
		case c == '?':
			g.toks = append(g.toks, globTok{kind: globOne})
		default:
			g.toks = append(g.toks, globTok{kind: globLit, b: c})
		}
	}
	if len(g.toks) > maxGlobToks {
		return nil, errors.New("glob too long")
	}
	return g, nil
}

// closure adds the positions reachable without consuming a byte: past a
// star, which may match nothing.
func (g *glob) closure(s *globState) {
	for i, t := range g.toks {
		if (t.kind == globStar || t.kind == globStars) && s.has(i) {
			s.set(i + 1)
		}
	}
}

func (g *glob) match(text []byte) bool {
	var cur globState
	cur.set(0)
	g.closure(&cur)
	for _, c := range text {
		var next globState
		for w, word := range cur {
			for word != 0 {
				i := w<<6 + bits.TrailingZeros64(word)
				word &= word - 1
				if i >= len(g.toks) {
					continue // the accepting position has no way out
				}
				switch t := g.toks[i]; t.kind {
				case globLit:
					if c == t.b {
						next.set(i + 1)
					}
				case globOne:
					if c != '/' {
						next.set(i + 1)
					}
				case globStar:
					if c != '/' {
						next.set(i)
					}
				case globStars:
					next.set(i)
				}
			}
		}
		if next.empty() {
			return false
		}
		g.closure(&next)
		cur = next
	}
	return cur.has(len(g.toks))
}
