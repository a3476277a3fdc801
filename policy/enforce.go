package policy

import (
	"strconv"

	"github.com/netward/netward/inspect/dns"
	"github.com/netward/netward/rules"
)

// What the relay sends for a deny, so the bytes on the wire are decided in
// one place:
//
//	HTTP/1.x  DenyResponse: a 403 with the rule file's deny page, then close
//	TLS       TLSAlert(AlertAccessDenied): one fatal alert record, then close
//	other     a TCP reset (nothing from here)
//
// For on_invalid denies of TLS flows whose ClientHello is malformed,
// AlertDecodeError says so more precisely.

// TLS alert descriptions (RFC 8446 §6).
const (
	AlertAccessDenied uint8 = 49 // policy refused the connection
	AlertDecodeError  uint8 = 50 // the ClientHello could not be parsed
)

// TLSAlert returns a fatal TLS alert record with description desc: record
// type alert (21), legacy_record_version 0x0303 (RFC 8446 §5.1: what TLS
// 1.3 uses for every record but the ClientHello, and what TLS 1.2 uses),
// length 2, level fatal (2), desc.
func TLSAlert(desc uint8) []byte {
	return []byte{21, 0x03, 0x03, 0x00, 0x02, 2, desc}
}

// DenyResponse returns the complete HTTP/1.1 response the relay sends for a
// deny verdict on an HTTP request: status 403, the current rule file's deny
// page naming v's rule, and "Connection: close" (the relay closes after
// writing it). For a HEAD request the body is left out.
func (e *Engine) DenyResponse(v Verdict, f *Facts) []byte {
	host := f.Host
	if host == "" {
		host = f.SNI
	}
	data := rules.DenyPageData{
		Rule:   v.RuleName(),
		Host:   host,
		Method: f.Method,
		Path:   f.Path,
		Client: f.Src.Addr().String(),
		Server: f.Dst.String(),
	}
	body, err := e.cur.Load().DenyPage(data)
	if err != nil {
		e.log.Error("deny page failed; sending a plain one", "error", err.Error())
		body = []byte("403 Forbidden\n")
	}
	ctype := "text/html; charset=utf-8"
	if err != nil {
		ctype = "text/plain; charset=utf-8"
	}
	resp := make([]byte, 0, 160+len(body))
	resp = append(resp, "HTTP/1.1 403 Forbidden\r\nContent-Type: "...)
	resp = append(resp, ctype...)
	resp = append(resp, "\r\nContent-Length: "...)
	resp = strconv.AppendInt(resp, int64(len(body)), 10)
	resp = append(resp, "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"...)
	if f.Method != "HEAD" {
		resp = append(resp, body...)
	}
	return resp
}

// DNSAnswer is the answer a DNS query the verdict denies gets: the
// deciding rule's dns_answer (NXDOMAIN by default).
func DNSAnswer(v Verdict) dns.Answer {
	switch v.DNSAnswer {
	case rules.DNSAnswerRefused:
		return dns.AnswerREFUSED
	case rules.DNSAnswerNODATA:
		return dns.AnswerNODATA
	}
	return dns.AnswerNXDOMAIN
}
