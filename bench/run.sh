#!/usr/bin/env bash
# bench/run.sh - runs every benchmark on the release build and prints figures.
# Benchmarks never assert on timings; they print key=value lines to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MAIL_BENCH_BUILD:-build}
for b in "$BUILD"/bench/bench_*; do
	[ -x "$b" ] || continue
	echo "== $(basename "$b")"
	"$b" --build-dir="$PWD/$BUILD"
done
