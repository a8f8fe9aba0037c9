#!/bin/sh
# The cluster benchmark behind docs/cluster-benchmark.md: three lemonproxy
# nodes behind HAProxy, one PostgreSQL, one Dovecot (Legacy profile), all on
# this machine, beside one node alone. As root, with an open-file limit of
# 20,000 and Debian's haproxy, dovecot-imapd and postgresql installed.
# Results (JSON) go to docs/load/cluster/; the run order puts one run of
# every figure first, then the repetitions of the idle runs.
set -eu
cd "$(dirname "$0")/.."
command -v haproxy >/dev/null || apt-get install -y haproxy
ulimit -n 20000 2>/dev/null || true
: "${LEMONPROXY_LOAD_WAIT:=3m}"  # wait for a load average below 1.5 before each run, at most this
export LEMONPROXY_LOAD_WAIT
run() { go test -run TestClusterBench -v -count=1 -timeout 3h ./load/; }
LEMONPROXY_CLUSTER_BENCH=idle LEMONPROXY_CLUSTER_RUNS=1 run
LEMONPROXY_CLUSTER_BENCH=takeover LEMONPROXY_CLUSTER_RUNS=3 run
LEMONPROXY_CLUSTER_BENCH=resync run
go test -run TestBytesPerMessage -v -count=1 ./cluster/pgstate/
LEMONPROXY_CLUSTER_BENCH=idle LEMONPROXY_CLUSTER_RUNS=2 LEMONPROXY_CLUSTER_FIRSTRUN=2 run
# The cluster with the one node's pool bound spread over its three nodes
# (1,000 idle pooled connections in all, as on one node), and a fourth
# run of the one node beside it.
LEMONPROXY_CLUSTER_BENCH=idle LEMONPROXY_CLUSTER_RUNS=1 LEMONPROXY_CLUSTER_POOL_TOTAL=333 LEMONPROXY_CLUSTER_FIRSTRUN=4 run
