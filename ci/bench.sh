#!/usr/bin/env bash
# `make bench`: run bench/ (aem-bench) in the guest, in the two lenses of
# docs/benchmarks.md, and print the tables.
#
#   wall-clock  TCG, -smp 2: real parallelism, noisy.
#   icount      -icount shift=0,sleep=off -smp 1: guest time advances one
#               ns per instruction, so figures repeat exactly; path length.
#
# Every figure is a ratio against a peer mechanism measured in the same
# boot: TCG time is not hardware time.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
cargo build -q --release --target x86_64-unknown-linux-gnu -p aem-bench
bin=target/x86_64-unknown-linux-gnu/release/aem-bench

echo "kernel $(qemu/guest.sh uname -r), $(date -u +%Y-%m-%d)"
echo
echo "== wall-clock lens (TCG, -smp 2)"
AEM_ACCEL=tcg qemu/guest.sh --file "$bin" aem-bench
echo
echo "== icount lens (-icount shift=0,sleep=off, -smp 1)"
AEM_ACCEL=tcg AEM_SMP=1 AEM_QEMU_ARGS="-icount shift=0,sleep=off" \
	qemu/guest.sh --file "$bin" aem-bench
