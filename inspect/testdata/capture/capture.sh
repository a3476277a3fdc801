#!/bin/sh
# Re-creates the captures under inspect/testdata/{tls,http,other} from the
# clients installed on this machine (Debian 12: curl 7.88 + OpenSSL 3.0,
# wget 1.21 + GnuTLS, Python 3.11, Node 20, Chromium 156, OpenSSH 9.2, Go).
# Every client connects to 127.0.0.1 only. Run from the repository root:
#   sh inspect/testdata/capture/capture.sh
set -eu
D=inspect/testdata
cap() { go run ./inspect/testdata/capture "$@"; }
mkdir -p $D/tls $D/http $D/other

# Chromium: only x.example resolves (to the capture port); background
# networking off so the first connection is the page's.
CHROME="chromium --headless=new --no-sandbox --disable-gpu --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --disable-default-apps --user-data-dir=/tmp/inspect-capture-chromium"

# --- TLS ClientHellos -------------------------------------------------------
cap -out $D/tls/curl.bin -want tls -- \
  curl -sk --resolve x.example:{port}:127.0.0.1 https://x.example:{port}/
cap -out $D/tls/openssl-s_client.bin -want tls -- \
  openssl s_client -connect 127.0.0.1:{port} -servername x.example
cap -out $D/tls/openssl-s_client-tls12.bin -want tls -- \
  openssl s_client -connect 127.0.0.1:{port} -servername x.example -tls1_2
cap -out $D/tls/openssl-s_client-nosni.bin -want tls -- \
  openssl s_client -connect 127.0.0.1:{port} -noservername
cap -out $D/tls/go-pq.bin -want tls -go tls
cap -out $D/tls/python.bin -want tls -- python3 -c '
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["h2", "http/1.1"])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
ctx.wrap_socket(s, server_hostname="x.example")' {port}
cap -out $D/tls/node.bin -want tls -- node -e '
require("tls").connect({host: "127.0.0.1", port: +process.argv[1], servername: "x.example",
  ALPNProtocols: ["h2", "http/1.1"], rejectUnauthorized: false}).on("error", () => {});' {port}
# wget has no --resolve: it connects to the IP literal, so it sends no SNI.
cap -out $D/tls/wget-gnutls-nosni.bin -want tls -- \
  wget -q -O /dev/null --no-check-certificate --tries=1 https://127.0.0.1:{port}/
cap -out $D/tls/chromium.bin -want tls -- $CHROME \
  --host-resolver-rules="MAP x.example 127.0.0.1:{port}" --dump-dom https://x.example/

# --- HTTP/1.x requests --------------------------------------------------------
cap -out $D/http/curl-get.bin -want http -- \
  curl -s --resolve x.example:{port}:127.0.0.1 "http://x.example:{port}/path/to?q=1"
cap -out $D/http/curl-post.bin -want http -- \
  curl -s --resolve x.example:{port}:127.0.0.1 -d 'a=1&b=2' "http://x.example:{port}/form"
cap -out $D/http/curl-chunked.bin -want http -- \
  curl -s --resolve x.example:{port}:127.0.0.1 -H 'Transfer-Encoding: chunked' \
  --data-binary 'hello chunked world' "http://x.example:{port}/upload"
cap -out $D/http/curl-h2c-upgrade.bin -want http -- \
  curl -s --http2 --resolve x.example:{port}:127.0.0.1 "http://x.example:{port}/"
cap -out $D/http/curl-proxy-absolute.bin -want http -- \
  curl -s -x http://127.0.0.1:{port} "http://X.Example./abs?x=1"
cap -out $D/http/go-get.bin -want http -go http
cap -out $D/http/python-urllib.bin -want http -- python3 -c '
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/py?x=1" % sys.argv[1], timeout=5)' {port}
cap -out $D/http/node-get.bin -want http -- node -e '
require("http").get({host: "127.0.0.1", port: +process.argv[1], path: "/node?x=1",
  headers: {Host: "x.example"}}).on("error", () => {});' {port}
cap -out $D/http/wget-get.bin -want http -- \
  wget -q -O /dev/null --tries=1 --header "Host: x.example" "http://127.0.0.1:{port}/wget"
cap -out $D/http/chromium-get.bin -want http -- $CHROME \
  --disable-features=HttpsUpgrades,HttpsFirstModeV2ForEngagedSites \
  --host-resolver-rules="MAP x.example 127.0.0.1:{port}" --dump-dom "http://x.example/index.html?q=1"

# --- Other protocols ----------------------------------------------------------
cap -out $D/other/curl-h2-prior-knowledge.bin -want http -- \
  curl -s --http2-prior-knowledge "http://127.0.0.1:{port}/"
cap -out $D/other/ssh.bin -want any -- \
  ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p {port} 127.0.0.1
