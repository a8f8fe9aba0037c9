#!/usr/bin/env bash
# Runs the whole test suite. This is the one command for a fresh Debian
# machine (as root) as well as for CI and developers: it installs what the
# tests need, then runs go vet and the tests with the race detector.
#
# Extra arguments are passed to "go test" before the package pattern, e.g.
#   scripts/test.sh -run TestProxy -v
#
# The integration tests start private Dovecot servers on free loopback
# ports (see internal/dovecottest); LEMONPROXY_REQUIRE_DOVECOT=1 makes them
# fail rather than skip if Dovecot is missing, so that CI cannot pass by
# silently skipping them.
set -euo pipefail

cd "$(dirname "$0")/.."

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	sudo=(sudo)
fi

# Packages the tests need, each with the check that tells it is installed.
# python3 is checked by command rather than dpkg, so that a Python that did
# not come from Debian counts too.
missing=()
dpkg -s dovecot-imapd >/dev/null 2>&1 || missing+=(dovecot-imapd)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ "${#missing[@]}" -gt 0 ]; then
	echo "test.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update
	"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Installing dovecot-imapd may start the system-wide Dovecot on ports 143
# and 993. The tests never use it (each starts its own server from a
# generated configuration), so stop it to save resources.
if [ -s /run/dovecot/master.pid ] && "${sudo[@]}" kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
	echo "test.sh: stopping the system Dovecot service; the tests do not use it" >&2
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		"${sudo[@]}" systemctl stop dovecot.service dovecot.socket || true
	else
		"${sudo[@]}" service dovecot stop || true
	fi
fi

# Node clients for the integration tests (ImapFlow), pinned by the lock file.
node_dir=internal/integration/testdata/node
if [ ! -d "$node_dir/node_modules" ]; then
	echo "test.sh: npm ci in $node_dir" >&2
	(cd "$node_dir" && npm ci --no-audit --no-fund)
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

export LEMONPROXY_REQUIRE_DOVECOT=1

echo "test.sh: go vet ./..." >&2
go vet ./...
echo "test.sh: staticcheck ./..." >&2
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "test.sh: go test -count=1 -race -timeout 15m $* ./..." >&2
go test -count=1 -race -timeout 15m "$@" ./...
