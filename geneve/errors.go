package geneve

import "errors"

// Parse's errors, one per reason a packet is dropped; Reason names them
// for metric labels.
var (
	ErrTruncated       = errors.New("geneve: truncated header")
	ErrVersion         = errors.New("geneve: version is not 0")
	ErrProtocol        = errors.New("geneve: inner protocol is not IPv4 or IPv6")
	ErrOptionLength    = errors.New("geneve: bad option length")
	ErrCritical        = errors.New("geneve: unknown critical option")
	ErrDuplicateOption = errors.New("geneve: duplicate GWLB option")
)

// Reason is a short label for err, one of Parse's errors: "truncated",
// "version", "protocol", "option_length", "critical_option",
// "duplicate_option"; "other" for anything else.
func Reason(err error) string {
	switch err {
	case ErrTruncated:
		return "truncated"
	case ErrVersion:
		return "version"
	case ErrProtocol:
		return "protocol"
	case ErrOptionLength:
		return "option_length"
	case ErrCritical:
		return "critical_option"
	case ErrDuplicateOption:
		return "duplicate_option"
	}
	return "other"
}
