// Package dns reads the DNS queries netward judges (UDP/53 datagrams, and DNS
// over TCP/53 with its 2-byte length framing, RFC 7766) and builds the
// answer netward sends, in the server's name, to a query a rule denies.
//
// Like package inspect it is pure parsing: no I/O, no goroutines, no state
// besides read-only tables. Every input is untrusted; none makes it panic,
// every size is capped, and every refusal is an *inspect.ParseError (Proto
// inspect.ProtoDNS) whose class says why:
//
//   - inspect.ErrMalformed: the bytes break the DNS wire format (RFC 1035
//     §4.1, RFC 6891 §6.1): truncated header, question or record, reserved
//     label types, a compression pointer in the question, two OPT records.
//   - ErrNotQuery (which is inspect.ErrInvalid): a well-formed message this
//     package does not judge: a response (QR=1), a message with no question
//     or more than one, or a question name that is not a host name (a byte
//     outside letters, digits, '-' and '_').
//   - inspect.ErrTooLarge: a message over the size cap.
//
// Parse is strict on purpose: a query netward cannot name with certainty is
// refused as invalid (the rules' on_invalid decides), never judged by a name
// the server might read differently.
package dns

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"

	"github.com/netward/netward/inspect"
	"golang.org/x/net/dns/dnsmessage"
)

// HeaderLen is the length of the fixed DNS message header (RFC 1035 §4.1.1).
const HeaderLen = 12

// MaxMessage is the largest DNS message there can be: TCP's 2-byte length
// (RFC 1035 §4.2.2), and the largest UDP payload.
const MaxMessage = 0xffff

// ResponseUDPSize is the EDNS UDP payload size AppendResponse advertises: the
// DNS Flag Day 2020 value, which avoids IP fragmentation on every path.
const ResponseUDPSize = 1232

// ErrNotQuery is the class of a well-formed DNS message that is not a query
// this package judges (a response, zero or several questions, a question
// name that is not a host name). It is inspect.ErrInvalid, so callers that
// switch on package inspect's classes need nothing new.
var ErrNotQuery = inspect.ErrInvalid

// Query is what a DNS query says, as far as policy and the event log need
// it. All fields are plain values; Name is an ordinary Go string that may be
// kept for ever.
type Query struct {
	ID uint16
	// Name is the question name normalised for matching: lower-case ASCII,
	// labels joined by dots, no trailing dot; "" for the root. IDNA is not
	// decoded: xn-- labels stay as they are. The name as sent (case
	// included) stays in the message; AppendResponse echoes it from there.
	Name  string
	Type  dnsmessage.Type
	Class dnsmessage.Class
	// Opcode is the header's opcode (0 QUERY, 4 NOTIFY, 5 UPDATE, ...);
	// for UPDATE the "question" is the zone (RFC 2136 §2.3).
	Opcode int
	RD     bool // recursion desired
	CD     bool // checking disabled (RFC 4035 §3.2.2)
	// EDNS is whether the Additional section has an OPT record (RFC 6891);
	// UDPSize is its requestor's payload size, as sent (RFC 6891 §6.2.5
	// reads values below 512 as 512), and DO its DNSSEC OK bit (RFC 3225),
	// which AppendResponse echoes.
	EDNS    bool
	UDPSize uint16
	DO      bool
}

func dnsError(class error, reason string) *inspect.ParseError {
	return &inspect.ParseError{Proto: inspect.ProtoDNS, Class: class, Reason: reason}
}

// The errors are made once, so refusing a message does not allocate.
var (
	errShort        = dnsError(inspect.ErrMalformed, "message shorter than the 12-byte header")
	errTooLong      = dnsError(inspect.ErrTooLarge, "message longer than 65535 bytes")
	errResponse     = dnsError(ErrNotQuery, "a response (QR=1), not a query")
	errNoQuestion   = dnsError(ErrNotQuery, "no question (QDCOUNT=0)")
	errQuestions    = dnsError(ErrNotQuery, "more than one question (QDCOUNT>1)")
	errNameByte     = dnsError(ErrNotQuery, "question name has a byte other than a letter, digit, '-' or '_'")
	errNameTrunc    = dnsError(inspect.ErrMalformed, "question name truncated")
	errNamePointer  = dnsError(inspect.ErrMalformed, "compression pointer in the question name")
	errLabelType    = dnsError(inspect.ErrMalformed, "reserved label type in the question name")
	errNameLong     = dnsError(inspect.ErrMalformed, "question name longer than 255 bytes")
	errQuestionEnd  = dnsError(inspect.ErrMalformed, "question type or class truncated")
	errQuestion     = dnsError(inspect.ErrMalformed, "question unreadable")
	errAnswers      = dnsError(inspect.ErrMalformed, "answer section truncated or malformed")
	errAuthorities  = dnsError(inspect.ErrMalformed, "authority section truncated or malformed")
	errAdditionals  = dnsError(inspect.ErrMalformed, "additional section truncated or malformed")
	errOPTTwice     = dnsError(inspect.ErrMalformed, "more than one OPT record")
	errOPTName      = dnsError(inspect.ErrMalformed, "OPT record owner is not the root")
	errFrameShort   = dnsError(inspect.ErrMalformed, "TCP message shorter than the 12-byte header")
	errFrameTooLong = dnsError(inspect.ErrTooLarge, "TCP message over the size limit")
	errAnswerValue  = errors.New("dns: unknown Answer")
)

// Parse reads one DNS message, msg, that must be a query (QR=0) with exactly
// one question, into q. Servers answer only the first question of a message
// with several (RFC 9619), so such a message is refused rather than judged
// by a name the server may not answer. The question name must not use a
// compression pointer: no client sends one there, and following it would be
// reading a name the server might resolve differently. The other sections
// are walked (so a truncated or malformed record is refused) and the
// Additional section is searched for an OPT record. Bytes after the last
// record are ignored, as most servers ignore them.
//
// Parse allocates only q.Name, and not even that when q already holds the
// same name (a Query reused across the queries of one flow).
func Parse(msg []byte, q *Query) error {
	prev := q.Name
	*q = Query{}
	if len(msg) < HeaderLen {
		return errShort
	}
	if len(msg) > MaxMessage {
		return errTooLong
	}
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return errShort
	}
	if h.Response {
		return errResponse
	}
	switch qd := binary.BigEndian.Uint16(msg[4:]); {
	case qd == 0:
		return errNoQuestion
	case qd > 1:
		return errQuestions
	}
	var buf [255]byte
	end, n, err := readName(msg, HeaderLen, buf[:])
	if err != nil {
		return err
	}
	if len(msg) < end+4 {
		return errQuestionEnd
	}
	qu, err := p.Question()
	if err != nil {
		return errQuestion
	}
	if err := p.SkipAllQuestions(); err != nil { // none left: moves to Answers
		return errQuestion
	}
	if err := p.SkipAllAnswers(); err != nil {
		return errAnswers
	}
	if err := p.SkipAllAuthorities(); err != nil {
		return errAuthorities
	}
	var edns, do bool
	var udpSize uint16
	for {
		rh, err := p.AdditionalHeader()
		if err == dnsmessage.ErrSectionDone {
			break
		}
		if err != nil {
			return errAdditionals
		}
		if rh.Type == dnsmessage.TypeOPT {
			if edns {
				return errOPTTwice // RFC 6891 §6.1.1: FORMERR
			}
			if rh.Name.Length != 1 || rh.Name.Data[0] != '.' {
				return errOPTName
			}
			edns, udpSize, do = true, uint16(rh.Class), rh.TTL&(1<<15) != 0
		}
		if err := p.SkipAdditional(); err != nil {
			return errAdditionals
		}
	}
	q.ID = h.ID
	q.EDNS, q.UDPSize, q.DO = edns, udpSize, do
	q.Type, q.Class = qu.Type, qu.Class
	q.Opcode = int(h.OpCode)
	q.RD, q.CD = h.RecursionDesired, h.CheckingDisabled
	if string(buf[:n]) == prev { // no allocation for the comparison
		q.Name = prev
	} else {
		q.Name = string(buf[:n])
	}
	return nil
}

// nameByte classifies the bytes of a question name: 0 refused, 1 kept as
// is, 2 an upper-case letter (lowered).
var nameByte = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = 1
		t[c-'a'+'A'] = 2
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = 1
	}
	t['-'], t['_'] = 1, 1
	return t
}()

// readName walks the uncompressed name at msg[off:] and checks it is a host
// name. If dst is not nil it writes there the normalised dotted form (dst
// must hold 255 bytes) and n is its length. end is the offset just after the
// name.
func readName(msg []byte, off int, dst []byte) (end, n int, err error) {
	start := off
	for {
		if off >= len(msg) {
			return 0, 0, errNameTrunc
		}
		l := int(msg[off])
		off++
		switch l & 0xc0 {
		case 0:
		case 0xc0:
			return 0, 0, errNamePointer
		default:
			return 0, 0, errLabelType
		}
		if l == 0 {
			return off, n, nil
		}
		if off-start+l > 254 { // this label and the root byte after it
			return 0, 0, errNameLong
		}
		if off+l > len(msg) {
			return 0, 0, errNameTrunc
		}
		if dst != nil && n > 0 {
			dst[n] = '.'
			n++
		}
		for _, c := range msg[off : off+l] {
			k := nameByte[c]
			if k == 0 {
				return 0, 0, errNameByte
			}
			if dst != nil {
				if k == 2 {
					c += 'a' - 'A'
				}
				dst[n] = c
				n++
			}
		}
		off += l
	}
}

// Answer is what netward tells a client whose query a rule denies. Every
// answer is one the client stops on (it does not retry the same server);
// none carries a record, and none carries an SOA either: without one a
// negative answer is not cached (RFC 2308 §5), so a rule change is seen at
// the client's next query, and netward invents no zone.
type Answer uint8

const (
	// AnswerNXDOMAIN (rcode 3): the name does not exist. Every stub
	// resolver stops on it; the default.
	AnswerNXDOMAIN Answer = iota
	// AnswerREFUSED (rcode 5): the server will not answer; some stubs try
	// their next server.
	AnswerREFUSED
	// AnswerNODATA (NOERROR, no answer): the name exists but has no record
	// of that type.
	AnswerNODATA
	// AnswerSERVFAIL (rcode 2): the server failed; stubs may try their
	// next server.
	AnswerSERVFAIL
)

var answerWords = [...]string{"nxdomain", "refused", "nodata", "servfail"}

// String returns the rule-file word: "nxdomain", "refused", "nodata",
// "servfail".
func (a Answer) String() string {
	if int(a) < len(answerWords) {
		return answerWords[a]
	}
	return "answer(" + strconv.Itoa(int(a)) + ")"
}

// ParseAnswer parses a rule-file word (case-insensitive), one String returns.
func ParseAnswer(s string) (Answer, error) {
	for i, w := range answerWords {
		if strings.EqualFold(s, w) {
			return Answer(i), nil
		}
	}
	return 0, errors.New("dns: unknown answer " + strconv.Quote(s) + " (want nxdomain, refused, nodata or servfail)")
}

// Rcode returns the response code the answer carries.
func (a Answer) Rcode() dnsmessage.RCode {
	switch a {
	case AnswerNXDOMAIN:
		return dnsmessage.RCodeNameError
	case AnswerREFUSED:
		return dnsmessage.RCodeRefused
	case AnswerNODATA:
		return dnsmessage.RCodeSuccess
	case AnswerSERVFAIL:
		return dnsmessage.RCodeServerFailure
	}
	return dnsmessage.RCodeServerFailure
}

// RcodeName returns the name of the rcode the answer carries, as Suricata's
// EVE writes it: "NXDOMAIN", "REFUSED", "NOERROR" (NODATA), "SERVFAIL".
func (a Answer) RcodeName() string {
	switch a {
	case AnswerNXDOMAIN:
		return "NXDOMAIN"
	case AnswerREFUSED:
		return "REFUSED"
	case AnswerNODATA:
		return "NOERROR"
	case AnswerSERVFAIL:
		return "SERVFAIL"
	}
	return ""
}

// AppendResponse appends to dst the response a to the query msg, which
// Parse read into q. The response is what the client waits for: the same ID
// and opcode, QR=1, RD and CD copied, RA=1 (it comes in the name of the
// client's resolver), the rcode of a, and the question copied byte for byte
// from msg, so a client that randomises the case of the name (DNS 0x20)
// finds it as it sent it. If the query had EDNS the response has an OPT
// record too (UDP size ResponseUDPSize, DO copied; RFC 6891 §7 wants one,
// and some clients drop an answer without it). The response is never longer
// than the query (the query's own OPT record is at least as long as the one
// added), so it fits wherever the query fitted.
//
// It does not allocate when dst has the capacity. On error dst is returned
// unchanged.
func AppendResponse(dst []byte, msg []byte, q *Query, a Answer) ([]byte, error) {
	if int(a) >= len(answerWords) {
		return dst, errAnswerValue
	}
	if len(msg) < HeaderLen {
		return dst, errShort
	}
	end, _, err := readName(msg, HeaderLen, nil)
	if err != nil {
		return dst, err
	}
	end += 4
	if len(msg) < end {
		return dst, errQuestionEnd
	}
	flags := uint16(1<<15) | uint16(q.Opcode&0xf)<<11 | 1<<7 | uint16(a.Rcode())
	if q.RD {
		flags |= 1 << 8
	}
	if q.CD {
		flags |= 1 << 4
	}
	var ar uint16
	if q.EDNS {
		ar = 1
	}
	dst = binary.BigEndian.AppendUint16(dst, q.ID)
	dst = binary.BigEndian.AppendUint16(dst, flags)
	dst = append(dst, 0, 1, 0, 0, 0, 0) // QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
	dst = binary.BigEndian.AppendUint16(dst, ar)
	dst = append(dst, msg[HeaderLen:end]...)
	if q.EDNS {
		var do byte
		if q.DO {
			do = 0x80
		}
		dst = append(dst,
			0,                           // owner: the root
			0, byte(dnsmessage.TypeOPT), // type
			ResponseUDPSize>>8, ResponseUDPSize&0xff, // class: UDP size
			0, 0, do, 0, // TTL: extended rcode, version 0, DO and Z flags
			0, 0) // RDLENGTH: no options
	}
	return dst, nil
}

// TypeName names a query type as Suricata's EVE log does ("A", "AAAA",
// "HTTPS", "ANY", ...); a type without a mnemonic is written as RFC 3597
// §5 says, e.g. "TYPE65534".
func TypeName(t dnsmessage.Type) string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	switch t {
	case 249:
		return "TKEY"
	case 250:
		return "TSIG"
	case 251:
		return "IXFR"
	case 252:
		return "AXFR"
	case 253:
		return "MAILB"
	case 254:
		return "MAILA"
	case 255:
		return "ANY"
	case 256:
		return "URI"
	case 257:
		return "CAA"
	case 32768:
		return "TA"
	case 32769:
		return "DLV"
	}
	return "TYPE" + strconv.Itoa(int(t))
}

// typeNames are the IANA mnemonics of types 1 to 109.
var typeNames = [...]string{
	1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG",
	9: "MR", 10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO",
	15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB", 19: "X25", 20: "ISDN",
	21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG", 25: "KEY", 26: "PX",
	27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID", 32: "NIMLOC",
	33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6",
	39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
	45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
	50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP",
	56: "NINFO", 57: "RKEY", 58: "TALINK", 59: "CDS", 60: "CDNSKEY",
	61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
	99: "SPF", 108: "EUI48", 109: "EUI64",
}
