package rules

import "strings"

// maxPathLen bounds the normalised paths built on the stack; longer paths
// are normalised on the heap.
const maxPathLen = 1024

// normPath returns the path part of an HTTP request-target in the form path
// conditions compare against, so that encodings a server would undo cannot
// slip past a rule:
//
//   - absolute-form targets (http://host/p) keep only their path;
//   - the query and fragment are cut off;
//   - %XX escapes are decoded, except %2F (an encoded '/', which servers
//     do not treat as a separator) which is kept as "%2F";
//   - "//" runs collapse to "/", and "." and ".." segments are removed
//     (RFC 3986 §5.2.4).
//
// Plain paths (the common case) come back as a subslice of buf without
// allocating. ok is false for an empty target; "*" (OPTIONS *) is kept.
func normPath(buf *[maxPathLen]byte, s string) ([]byte, bool) {
	if s == "" {
		return nil, false
	}
	if s[0] != '/' && s != "*" {
		// absolute-form: scheme://authority/path
		if i := strings.Index(s, "://"); i > 0 {
			rest := s[i+3:]
			j := strings.IndexByte(rest, '/')
			if j < 0 {
				s = "/"
			} else {
				s = rest[j:]
			}
		}
	}
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	if s == "" {
		s = "/"
	}
	var out []byte
	if len(s) <= len(buf) {
		out = buf[:0]
	} else {
		out = make([]byte, 0, len(s))
	}
	// Decode escapes.
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			d := unhex(s[i+1])<<4 | unhex(s[i+2])
			if d == '/' {
				out = append(out, '%', '2', 'F')
			} else {
				out = append(out, d)
			}
			i += 2
			continue
		}
		out = append(out, c)
	}
	if out[0] != '/' {
		return out, true
	}
	return removeDotSegments(out), true
}

// removeDotSegments collapses "//" and resolves "." and ".." segments of p
// (which starts with '/') in place. The output never outgrows the input
// read so far, so writing into p is safe.
func removeDotSegments(p []byte) []byte {
	w := 0
	for r := 0; r < len(p); {
		start := r + 1 // p[r] == '/'
		end := start
		for end < len(p) && p[end] != '/' {
			end++
		}
		seg := p[start:end]
		last := end == len(p)
		switch {
		case len(seg) == 0, len(seg) == 1 && seg[0] == '.':
			// "//" collapses; "/./" vanishes; a trailing "/" or "/." keeps
			// the slash.
			if last {
				p[w] = '/'
				w++
			}
		case len(seg) == 2 && seg[0] == '.' && seg[1] == '.':
			w = max(0, lastSlash(p[:w]))
			if last {
				p[w] = '/'
				w++
			}
		default:
			p[w] = '/'
			w += 1 + copy(p[w+1:], seg)
		}
		r = end
	}
	if w == 0 {
		p[0] = '/'
		w = 1
	}
	return p[:w]
}

func lastSlash(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '/' {
			return i
		}
	}
	return -1
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
