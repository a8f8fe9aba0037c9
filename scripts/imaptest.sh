#!/usr/bin/env bash
# Runs Dovecot's own scripted IMAP test suite (imaptest's src/tests)
# through lemonproxy: internal/imaptestrun's TestImaptest, which runs each
# group alone against Dovecot full directly, through the proxy over
# Dovecot legacy and through the proxy over Dovecot full, prints the
# table, and fails when a group passing directly does not pass through the
# proxy over legacy (but for its documented known exceptions). See
# docs/conformance.md, "Dovecot's imaptest through lemonproxy".
#
#   scripts/imaptest.sh [go test arguments, e.g. -run TestImaptest]
#
# imaptest comes from IMAPTEST_SRC (default ../shared/imaptest beside the
# repository: a snapshot of github.com/dovecot/imaptest with its build.sh)
# and is built into IMAPTEST_BIN's directory (default
# /tmp/imaptest-bin/imaptest) unless it is there already; the build needs
# Debian's dovecot-dev and a C toolchain, installed here when missing.
# LEMONPROXY_IMAPTEST_GROUPS=REGEXP runs only the groups it matches.
set -euo pipefail
cd "$(dirname "$0")/.."

src=${IMAPTEST_SRC:-$(cd .. && pwd)/shared/imaptest}
bin=${IMAPTEST_BIN:-/tmp/imaptest-bin/imaptest}

if [ ! -x "$bin" ]; then
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		sudo=(sudo)
	fi
	missing=()
	for p in dovecot-dev dovecot-imapd build-essential autoconf automake libtool pkg-config; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		"${sudo[@]}" apt-get install -y "${missing[@]}"
	fi
	# The snapshot has no git metadata; imaptest's version scripts take
	# VERSION instead (build.sh's README names a version file, which a
	# copy may lack).
	VERSION=${VERSION:-0.0.0-924f619} "$src/build.sh" "$(dirname "$bin")" >/dev/null
fi

export LEMONPROXY_IMAPTEST="$bin"
export LEMONPROXY_IMAPTEST_TESTS="${LEMONPROXY_IMAPTEST_TESTS:-$src/src/tests}"
export LEMONPROXY_REQUIRE_DOVECOT=1
exec go test -count=1 -v -timeout 30m "$@" ./internal/imaptestrun
