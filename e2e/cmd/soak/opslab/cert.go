package opslab

import "github.com/netward/netward/e2e/peer"

// Cert is a self-signed certificate made for a test run (peer.Cert: the
// lab's one certificate generator).
type Cert = peer.Cert

// SelfSigned makes an ECDSA P-256 certificate for names, valid for a day.
func SelfSigned(names ...string) (*Cert, error) { return peer.SelfSigned(names...) }
