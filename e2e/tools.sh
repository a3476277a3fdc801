#!/bin/sh
# tools.sh: the tools `make demo` and `make test` run (and .ci/run before
# them), each with the Debian/Ubuntu package that has it. Missing ones are
# installed when this runs as root on Debian or Ubuntu (apt-get update once,
# then apt-get install -y --no-install-recommends); otherwise it stops with
# one line naming the missing packages.
#
#   e2e/tools.sh           check, install what is missing (root, Debian/Ubuntu)
#   e2e/tools.sh --check   check only: exit 1 naming what is missing
#
# NETWARD_NO_INSTALL=1 never installs: what is missing is named on one line
# and the script exits 0 (the end-to-end tests then skip what they lack).
set -eu

# command:package, in .ci/run's order. ca-certificates has no command and is
# checked by its bundle below; Go is not a Debian package netward can use
# (it needs Go 1.26) and is only checked.
TOOLS="make:make git:git ip:iproute2 iptables:iptables ip6tables:iptables
modprobe:kmod sysctl:procps ps:procps curl:curl iperf3:iperf3 ping:iputils-ping
openssl:openssl wrk:wrk conntrack:conntrack dig:bind9-dnsutils
gtlsclient:ngtcp2-client"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

check_only=false
case "${1:-}" in
--check) check_only=true ;;
"") ;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac

# Administration tools live in sbin, which a user's PATH may lack; Go in
# /usr/local/go/bin, as the Makefile expects.
PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"
export PATH

# missing prints the packages whose commands are not found, each once.
missing() {
	out=""
	for t in $TOOLS; do
		cmd=${t%%:*}
		pkg=${t#*:}
		if ! command -v "$cmd" >/dev/null 2>&1; then
			case " $out " in
			*" $pkg "*) ;;
			*) out="$out $pkg" ;;
			esac
		fi
	done
	if [ ! -s "$CA_BUNDLE" ]; then
		out="$out ca-certificates"
	fi
	echo "${out# }"
}

# debian reports whether this is Debian, Ubuntu or a derivative with apt-get.
debian() {
	command -v apt-get >/dev/null 2>&1 || return 1
	[ -r /etc/os-release ] || return 1
	(
		. /etc/os-release
		case " ${ID:-} ${ID_LIKE:-} " in
		*" debian "* | *" ubuntu "*) exit 0 ;;
		esac
		exit 1
	)
}

nogo=""
if ! command -v go >/dev/null 2>&1; then
	nogo="; Go 1.26 is not installed either (https://go.dev/dl/, into /usr/local/go)"
fi

pkgs=$(missing)
if [ -z "$pkgs" ]; then
	if [ -n "$nogo" ]; then
		echo "netward: every tool is installed but Go: install Go 1.26 (https://go.dev/dl/, into /usr/local/go)" >&2
		exit 1
	fi
	exit 0
fi

if [ "${NETWARD_NO_INSTALL:-}" = 1 ]; then
	echo "netward: missing packages (not installed: NETWARD_NO_INSTALL=1; tests that need them skip): $pkgs$nogo" >&2
	exit 0
fi
if $check_only; then
	echo "netward: missing packages: $pkgs$nogo" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ] || ! debian; then
	echo "netward: missing packages: $pkgs (install them, or run make as root on Debian/Ubuntu to have them installed; NETWARD_NO_INSTALL=1 goes on without them)$nogo" >&2
	exit 1
fi

echo "netward: installing missing packages: $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086 # one word per package
apt-get install -y --no-install-recommends $pkgs
left=$(missing)
if [ -n "$left" ]; then
	echo "netward: still missing after apt-get install: $left" >&2
	exit 1
fi
if [ -n "$nogo" ]; then
	echo "netward: packages installed, but Go 1.26 is missing: install it from https://go.dev/dl/ into /usr/local/go" >&2
	exit 1
fi
