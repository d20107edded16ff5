#!/usr/bin/env bash
# bench/run.sh - runs every benchmark on the release build and prints figures.
# Benchmarks never assert on timings; they print key=value lines to compare.
# Run it on a quiet machine: other load moves the figures a lot.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MAIL_BENCH_BUILD:-$PWD/build}
SECS=${MAIL_BENCH_SECONDS:-5}

echo "== gRPC unary round trips, one connection, 100 in flight"
"$BUILD/bench/bench_rpc" --secs="$SECS"
echo "== gRPC unary round trips, client and server on one core"
"$BUILD/bench/bench_rpc" --secs="$SECS" --same-core

echo "== blob store: raw fsync rate and Put throughput (4 KiB, 100 KiB; 1/16/64 clients)"
"$BUILD/bench/bench_store" --store="$BUILD/store/mail-store" --seconds="$SECS"

echo "== router: Deliver (10 KiB, R=2; 1/16/64 streams), FetchMeta of 1,000 envelopes, store Put beside it"
"$BUILD/bench/bench_router" --build-dir="$BUILD" --seconds="$SECS"
