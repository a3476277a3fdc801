// Package geneve parses and builds GENEVE headers (RFC 8926) as AWS
// Gateway Load Balancer sends them: the wire format only, no I/O.
//
// GWLB carries bare IP packets (protocol type 0x0800 or 0x86DD, no
// Ethernet) with three options of class 0x0108: the GWLB endpoint ID, the
// attachment ID and the flow cookie. An appliance must return every packet
// of a flow with the same options, so Header keeps their raw bytes
// (Header.Options) to be echoed byte for byte.
//
// Parse takes untrusted bytes through cryptobyte only and allocates
// nothing: Header.Options and the returned payload alias the input.
package geneve

import (
	"encoding/binary"

	"golang.org/x/crypto/cryptobyte"
)

// Port is GENEVE's IANA-assigned UDP destination port (RFC 8926 §3.3).
const Port = 6081

// HeaderLen is the fixed part of a GENEVE header, before the options.
const HeaderLen = 8

// MaxOptionsLen is the most option bytes a header can carry: Opt Len is 6
// bits counting 4-byte words (RFC 8926 §3.4).
const MaxOptionsLen = 63 * 4

// Protocol types of the inner packet (RFC 8926 §3.4: an EtherType).
const (
	ProtoIPv4 uint16 = 0x0800
	ProtoIPv6 uint16 = 0x86DD
)

// AWS GWLB's option class and types.
const (
	ClassAWS             uint16 = 0x0108
	TypeGWLBEndpointID   uint8  = 1 // 8 bytes
	TypeGWLBAttachmentID uint8  = 2 // 8 bytes
	TypeGWLBFlowCookie   uint8  = 3 // 4 bytes
)

// criticalBit is the high bit of an option's type: a receiver that does
// not understand a critical option must drop the packet (RFC 8926 §3.5).
const criticalBit = 0x80

// Header is a parsed GENEVE header.
type Header struct {
	// OAM is the O bit: a control packet, not data.
	OAM bool
	// Critical is the C bit: at least one option is critical.
	Critical bool
	// Protocol is the inner packet's protocol type (ProtoIPv4, ProtoIPv6).
	Protocol uint16
	// VNI is the 24-bit virtual network identifier (GWLB sends 0).
	VNI uint32
	// Options are the raw option TLVs, as received: what Append writes
	// back. After Parse they alias the parsed bytes.
	Options []byte

	// The AWS GWLB options found in Options; Has says which.
	EndpointID   uint64
	AttachmentID uint64
	FlowCookie   uint32
	Has          Found
}

// Found says which AWS options a header carries.
type Found uint8

// Found bits.
const (
	FoundEndpointID Found = 1 << iota
	FoundAttachmentID
	FoundFlowCookie
)

// Len is the length of the header Append writes for h.
func (h *Header) Len() int { return HeaderLen + len(h.Options) }

// Parse parses the GENEVE header at the start of b (the UDP payload) into
// h and returns the inner packet that follows it. Errors are the sentinels
// in errors.go. It checks the version (0), the protocol type (IPv4 or
// IPv6), every option's length, that no critical option is one it does
// not know, and that the AWS options have their sizes and appear at most
// once. Unknown non-critical options are kept and skipped (§3.5).
func Parse(b []byte, h *Header) (payload []byte, err error) {
	*h = Header{}
	s := cryptobyte.String(b)
	var verOpt, flags uint8
	var proto uint16
	var vni uint32
	var rsvd uint8
	if !s.ReadUint8(&verOpt) || !s.ReadUint8(&flags) || !s.ReadUint16(&proto) ||
		!s.ReadUint24(&vni) || !s.ReadUint8(&rsvd) {
		return nil, ErrTruncated
	}
	if verOpt>>6 != 0 {
		return nil, ErrVersion
	}
	var opts cryptobyte.String
	if !s.ReadBytes((*[]byte)(&opts), int(verOpt&0x3f)*4) {
		return nil, ErrTruncated
	}
	h.OAM = flags&0x80 != 0
	h.Critical = flags&0x40 != 0
	h.Protocol = proto
	h.VNI = vni
	h.Options = opts
	if proto != ProtoIPv4 && proto != ProtoIPv6 {
		return nil, ErrProtocol
	}
	for !opts.Empty() {
		var class uint16
		var typ, rlen uint8
		var data cryptobyte.String
		if !opts.ReadUint16(&class) || !opts.ReadUint8(&typ) || !opts.ReadUint8(&rlen) ||
			!opts.ReadBytes((*[]byte)(&data), int(rlen&0x1f)*4) {
			return nil, ErrOptionLength
		}
		if class != ClassAWS {
			if typ&criticalBit != 0 {
				return nil, ErrCritical
			}
			continue
		}
		var bit Found
		switch typ {
		case TypeGWLBEndpointID, TypeGWLBAttachmentID:
			var v uint64
			if len(data) != 8 || !data.ReadUint64(&v) {
				return nil, ErrOptionLength
			}
			if typ == TypeGWLBEndpointID {
				bit, h.EndpointID = FoundEndpointID, v
			} else {
				bit, h.AttachmentID = FoundAttachmentID, v
			}
		case TypeGWLBFlowCookie:
			var v uint32
			if len(data) != 4 || !data.ReadUint32(&v) {
				return nil, ErrOptionLength
			}
			bit, h.FlowCookie = FoundFlowCookie, v
		default:
			if typ&criticalBit != 0 {
				return nil, ErrCritical
			}
			continue
		}
		if h.Has&bit != 0 {
			return nil, ErrDuplicateOption
		}
		h.Has |= bit
	}
	return s, nil
}

// Append appends h's header (fixed part and h.Options as they are) to dst.
// It returns ErrOptionLength when the options are not a whole number of
// 4-byte words or longer than MaxOptionsLen.
func Append(dst []byte, h *Header) ([]byte, error) {
	if len(h.Options)%4 != 0 || len(h.Options) > MaxOptionsLen {
		return dst, ErrOptionLength
	}
	var flags byte
	if h.OAM {
		flags |= 0x80
	}
	if h.Critical {
		flags |= 0x40
	}
	dst = append(dst, byte(len(h.Options)/4), flags)
	dst = binary.BigEndian.AppendUint16(dst, h.Protocol)
	dst = append(dst, byte(h.VNI>>16), byte(h.VNI>>8), byte(h.VNI), 0)
	return append(dst, h.Options...), nil
}

// AppendOption appends one option TLV to dst (for building Options). data
// must be a whole number of 4-byte words, at most 124 bytes.
func AppendOption(dst []byte, class uint16, typ uint8, data []byte) ([]byte, error) {
	if len(data)%4 != 0 || len(data) > 31*4 {
		return dst, ErrOptionLength
	}
	dst = binary.BigEndian.AppendUint16(dst, class)
	dst = append(dst, typ, byte(len(data)/4))
	return append(dst, data...), nil
}

// AWSOptions appends GWLB's three options (endpoint ID, attachment ID,
// flow cookie), in the order GWLB sends them, to dst.
func AWSOptions(dst []byte, endpoint, attachment uint64, cookie uint32) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], endpoint)
	dst, _ = AppendOption(dst, ClassAWS, TypeGWLBEndpointID, b[:])
	binary.BigEndian.PutUint64(b[:], attachment)
	dst, _ = AppendOption(dst, ClassAWS, TypeGWLBAttachmentID, b[:])
	binary.BigEndian.PutUint32(b[:4], cookie)
	dst, _ = AppendOption(dst, ClassAWS, TypeGWLBFlowCookie, b[:4])
	return dst
}
