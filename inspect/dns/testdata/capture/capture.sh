#!/bin/sh
# Re-creates the real-client seeds of the fuzz corpus under
# inspect/dns/testdata/fuzz from the clients installed on this machine
# (Debian 12: BIND 9.18 dig and host, Python 3.11, glibc). Every client
# queries 127.0.0.1 only. Run from the repository root:
#   sh inspect/dns/testdata/capture/capture.sh
set -eu
P=inspect/dns/testdata/fuzz/FuzzParse
S=inspect/dns/testdata/fuzz/FuzzStreamReader
cap() { go run ./inspect/dns/testdata/capture "$@"; }
DIG="dig @127.0.0.1 -p {port} +tries=1 +timeout=1"

cap -out $P/dig-a -- $DIG www.example.com A
cap -out $P/dig-aaaa -- $DIG www.example.com AAAA
cap -out $P/dig-https -- $DIG www.example.com HTTPS
cap -out $P/dig-mixed-case-trailing-dot -- $DIG WwW.ExAmPlE.CoM. A
cap -out $P/dig-noedns -- $DIG +noedns www.example.com A
cap -out $P/dig-dnssec-cd -- $DIG +dnssec +cdflag example.com DNSKEY
cap -out $P/dig-nsid-cookie -- $DIG +nsid +cookie=0123456789abcdef example.com TXT
cap -out $P/dig-root-ns -- $DIG . NS
cap -out $P/dig-ptr -- $DIG -x 192.0.2.1
cap -out $P/dig-srv-underscore -- $DIG _sip._tcp.example.com SRV
cap -out $P/dig-idna -- $DIG xn--bcher-kva.example A
cap -out $P/dig-type65534 -- $DIG example.com TYPE65534
cap -out $P/dig-padding -- $DIG +padding=468 example.com A
cap -out $P/host-mx -- host -W 1 -p {port} -t MX example.com 127.0.0.1
cap -out $P/nslookup-a -- nslookup -port={port} -timeout=1 -retry=0 Example.NET 127.0.0.1
cap -out $S/dig-tcp-a -proto tcp -- $DIG +tcp www.example.com A
cap -out $S/dig-tcp-aaaa -proto tcp -- $DIG +tcp +dnssec Example.Org AAAA
cap -out $S/dig-tcp-https -proto tcp -- $DIG +tcp www.example.com HTTPS
