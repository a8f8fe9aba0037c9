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
# not come from Debian counts too. gcc and libc6-dev: the race detector
# needs cgo, and without a C compiler Go turns cgo off. npm brings
# Debian's Node.js (18 on Debian 12), which only runs npm: the ImapFlow
# tests run on the Node.js 20 that npm ci installs beside imapflow.
missing=()
dpkg -s dovecot-imapd >/dev/null 2>&1 || missing+=(dovecot-imapd)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
dpkg -s libc6-dev >/dev/null 2>&1 || missing+=(libc6-dev)
# PostgreSQL for cluster mode: the tests run initdb and postgres
# themselves (internal/pgtest), as the postgres user the package creates.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)

# dovecot_running tells whether a system-wide Dovecot runs. The tests never
# use one (each starts its own server, with its own base_dir, on a free
# loopback port), so one that runs is left alone: it may be this machine's
# mail server.
dovecot_running() {
	[ -s /run/dovecot/master.pid ] && "${sudo[@]}" kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null
}

if [ "${#missing[@]}" -gt 0 ]; then
	echo "test.sh: installing ${missing[*]}" >&2
	was_running=false
	if dovecot_running; then
		was_running=true
	fi
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update
	"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
	# Installing dovecot-imapd may start the system-wide Dovecot on ports
	# 143 and 993. Stop it only if this install started it.
	if ! $was_running && dovecot_running; then
		echo "test.sh: stopping the system Dovecot that installing dovecot-imapd started; the tests do not use it" >&2
		if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
			"${sudo[@]}" systemctl stop dovecot.service dovecot.socket || true
		else
			"${sudo[@]}" service dovecot stop || true
		fi
	fi
fi

# Node clients for the integration tests (ImapFlow) and the Node.js 20
# they run on (the "node" package), pinned by the lock file. npm ci runs
# again when the lock file is newer than the last install.
node_dir=internal/integration/testdata/node
if [ ! -x "$node_dir/node_modules/.bin/node" ] || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
	echo "test.sh: npm ci in $node_dir" >&2
	(cd "$node_dir" && npm ci --no-audit --no-fund)
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

# -race needs cgo; Go turns it off by default where it finds no C compiler.
export CGO_ENABLED=1
export LEMONPROXY_REQUIRE_DOVECOT=1
export LEMONPROXY_REQUIRE_POSTGRES=1

echo "test.sh: go vet ./..." >&2
go vet ./...
echo "test.sh: staticcheck ./..." >&2
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "test.sh: go test -count=1 -race -timeout 15m $* ./..." >&2
go test -count=1 -race -timeout 15m "$@" ./...
