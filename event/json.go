package event

import (
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"
)

// This file is the JSON encoder: append-style, no reflection, no allocation
// beyond growing the destination slice. Every event is built into a pooled
// buffer by these helpers (see encode.go), so an event costs one pass over
// its fields and nothing for the garbage collector.

// TimeLayout is EVE's timestamp format: local time with microseconds and a
// numeric zone offset, e.g. 2017-04-07T22:24:37.251547+0100.
const TimeLayout = "2006-01-02T15:04:05.000000-0700"

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. The escaping matches
// encoding/json's (minus its HTML escaping, which EVE does not do):
// '"' and '\' are escaped, control characters become \n, \r, \t, \b, \f or
// \u00XX, each byte of invalid UTF-8 becomes \ufffd, and U+2028/U+2029 are
// escaped because some JavaScript-based log shippers treat them as line
// ends. The output is always valid UTF-8 and never contains a raw newline,
// so one event stays one line whatever a client put in its SNI or URL.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// object builds one JSON object field by field. It tracks only whether a
// comma is due, so it lives on the stack and costs nothing.
type object struct {
	b    []byte
	more bool
}

func (o *object) open()  { o.b = append(o.b, '{'); o.more = false }
func (o *object) close() { o.b = append(o.b, '}'); o.more = true }

// key appends the separator and `"name":`. name is a constant from this
// package and never needs escaping.
func (o *object) key(name string) {
	if o.more {
		o.b = append(o.b, ',')
	}
	o.b = append(o.b, '"')
	o.b = append(o.b, name...)
	o.b = append(o.b, '"', ':')
	o.more = true
}

func (o *object) str(name, v string) {
	o.key(name)
	o.b = appendString(o.b, v)
}

// strNonEmpty writes the field only when v is set: EVE leaves out what it
// does not know rather than logging empty strings.
func (o *object) strNonEmpty(name, v string) {
	if v != "" {
		o.str(name, v)
	}
}

func (o *object) uint(name string, v uint64) {
	o.key(name)
	o.b = strconv.AppendUint(o.b, v, 10)
}

func (o *object) int(name string, v int64) {
	o.key(name)
	o.b = strconv.AppendInt(o.b, v, 10)
}

func (o *object) bool(name string, v bool) {
	o.key(name)
	o.b = strconv.AppendBool(o.b, v)
}

func (o *object) time(name string, t time.Time) {
	o.key(name)
	o.b = append(o.b, '"')
	o.b = appendTime(o.b, t)
	o.b = append(o.b, '"')
}

// appendTime is t.AppendFormat(b, TimeLayout) at a fifth of the cost: the
// generic formatter re-parses the layout on every call, and a flow event has
// three timestamps.
func appendTime(b []byte, t time.Time) []byte {
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, TimeLayout)
	}
	hour, min, sec := t.Clock()
	_, off := t.Zone()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, min, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	off /= 60 // minutes, truncated as the time package does
	sign := byte('+')
	if off < 0 {
		sign, off = '-', -off
	}
	b = append(b, sign)
	b = appendDigits(b, off/60, 2)
	return appendDigits(b, off%60, 2)
}

// appendDigits appends v (>= 0) zero-padded to width (2, 4 or 6) digits,
// two digits per step.
func appendDigits(b []byte, v, width int) []byte {
	var tmp [6]byte
	for i := width - 2; i >= 0; i -= 2 {
		d := (v % 100) * 2
		tmp[i], tmp[i+1] = pairs[d], pairs[d+1]
		v /= 100
	}
	return append(b, tmp[:width]...)
}

const pairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"

// addr writes an IP address. IPv4-mapped IPv6 addresses (as a dual-stack
// socket or gVisor may hand them over) are written as plain IPv4, the way
// the client sent them.
func (o *object) addr(name string, a netip.Addr) {
	o.key(name)
	o.b = append(o.b, '"')
	o.b = a.Unmap().AppendTo(o.b)
	o.b = append(o.b, '"')
}

func (o *object) strArray(name string, vs []string) {
	o.key(name)
	o.b = append(o.b, '[')
	for i, v := range vs {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = appendString(o.b, v)
	}
	o.b = append(o.b, ']')
}

// child opens a nested object under name.
func (o *object) child(name string) {
	o.key(name)
	o.open()
}
