#!/usr/bin/env bash
# Cargo runner for the guest (CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER):
# `cargo test --target x86_64-unknown-linux-gnu` hands us each static test
# binary and its arguments; we run it in a fresh guest and pass its output
# and exit status back, so libtest reports as usual.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
bin=$1; shift
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
exec "$HERE/guest.sh" --file "$bin" -- "$(basename "$bin")$args"
