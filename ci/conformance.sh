#!/usr/bin/env bash
# The conformance suite in the guest: `cargo test` of conformance/, each
# test binary booted in a fresh guest of build/bzImage-$KCONFIG by
# qemu/cargo-runner.sh.  One test at a time: the tests of a file share
# their process's AEM context.  Extra arguments go to the test binaries.
#
# The whole suite runs on two CPUs; the scheduler tests (sched.rs) run
# again on one, where every boosted wake-up contends with the same CPU.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$TOP/qemu/cargo-runner.sh"
rc=0
cargo test -p aem-conformance --target x86_64-unknown-linux-gnu --no-fail-fast \
	-- --test-threads=1 "$@" || rc=$?
echo "=== scheduler tests on one CPU (-smp 1)"
AEM_SMP=1 cargo test -p aem-conformance --target x86_64-unknown-linux-gnu --no-fail-fast \
	--test sched -- --test-threads=1 "$@" || rc=$?
exit $rc
