#!/usr/bin/env bash
# `make bench`: run the benchmarks in one guest boot and print the table.
#
# Every figure is a ratio against a peer mechanism measured in the same
# boot (TCG time is not hardware time).  Each PERF-n benchmark is a program
# under bench/ that prints table rows; none exists yet, so the table is
# empty.  Results with date and kernel version go to docs/benchmarks.md.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"

benches=()
for b in bench/*/Cargo.toml; do
	[ -f "$b" ] && benches+=("$(basename "$(dirname "$b")")")
done

printf '%-8s %-44s %12s %12s %8s\n' id benchmark value peer ratio
if [ ${#benches[@]} -eq 0 ]; then
	echo "(no benchmarks yet: PERF-1..PERF-6 arrive with the features they measure)"
	exit 0
fi
