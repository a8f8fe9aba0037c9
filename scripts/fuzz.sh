#!/bin/sh
# fuzz.sh runs every fuzz target of the repository for a while, one after
# the other, and prints one summary line per target (the figures that
# docs/hardening.md records). A finding stops nothing: the failing input
# is saved by go test under the package's testdata/fuzz/ and the target is
# reported as FAIL.
#
#   scripts/fuzz.sh [DURATION] [REGEXP]
#
# DURATION is per target (default 10m); REGEXP picks targets by name.
# FUZZ_PARALLEL sets -parallel (default: all cores). New inputs are
# minimised for at most 10 s (go test's default, 60 s, left slow targets
# such as FuzzInflate minimising most of the run). Logs go to
# ${FUZZ_LOG:-/tmp/lemonproxy-fuzz}/TARGET.log.
set -u
cd "$(dirname "$0")/.."
dur=${1:-10m}
pick=${2:-.}
log=${FUZZ_LOG:-/tmp/lemonproxy-fuzz}
mkdir -p "$log"
par=""
if [ -n "${FUZZ_PARALLEL:-}" ]; then
	par="-parallel $FUZZ_PARALLEL"
fi
rm -f "$log/failed"
# Every "func FuzzX" in a _test.go file, with its package directory.
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
	dir=$(dirname "$file")
	for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file"); do
		echo "$target" | grep -Eq "$pick" || continue
		out="$log/$target.log"
		# shellcheck disable=SC2086
		go test -run '^$' -fuzz "^$target\$" -fuzztime "$dur" -fuzzminimizetime 10s $par "$dir" >"$out" 2>&1
		rc=$?
		last=$(grep -E '^fuzz: elapsed' "$out" | tail -1)
		if [ $rc -eq 0 ]; then
			result=PASS
		else
			result=FAIL
			touch "$log/failed"
		fi
		echo "$result $target $dir $last"
	done
done
! [ -e "$log/failed" ]
