#!/usr/bin/env bash
# `make test`: from a fresh clone, build everything and run every test.
#
# Phases: deps, kernel, rootfs, cargo fmt --check, cargo clippy -D warnings,
# host cargo test, guest distribution checks, the kselftests of the series
# in the guest, a short aem-fuzz run, the conformance suite in the guest.
# Each phase's time is printed (and kept in build/phase-times.txt).
# Every test result line is counted; the last line is "N passed, N failed".
# Exit status is non-zero on any failure, including a kernel WARNING, BUG
# or oops on a guest console and a guest timeout (qemu/guest.sh).
set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
mkdir -p build
LOG=build/test.log
TIMES=build/phase-times.txt
: >"$LOG"
: >"$TIMES"
exec > >(tee -a "$LOG") 2>&1

failed_phases=()

# phase NAME COMMAND...: run a phase, time it, remember a failure.
phase() {
	local name=$1 start rc
	shift
	start=$(date +%s)
	echo "=== $name"
	"$@"
	rc=$?
	local took=$(($(date +%s) - start))
	printf '%-22s %5ds  %s\n' "$name" "$took" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" >>"$TIMES"
	echo "=== $name: ${took}s, $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")"
	[ $rc -eq 0 ] || failed_phases+=("$name")
	return $rc
}

# check NAME COMMAND...: a phase that is also one counted test.
check() {
	local name=$1
	shift
	if "$@"; then echo "test $name ... ok"; else echo "test $name ... FAILED"; return 1; fi
}

summary() {
	echo
	echo "=== phase times"
	cat "$TIMES"
	local passed failed
	# libtest's per-test lines, plus our check lines, all in one format.
	passed=$(grep -cE '^test .* \.\.\. ok$' "$LOG")
	failed=$(grep -cE '^test .* \.\.\. FAILED$' "$LOG")
	if [ ${#failed_phases[@]} -gt 0 ]; then
		echo "failed phases: ${failed_phases[*]}"
		[ "$failed" -gt 0 ] || failed=${#failed_phases[@]}
	fi
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ ${#failed_phases[@]} -eq 0 ]
}

phase deps ci/deps.sh || { summary; exit 1; }
phase kernel ci/kernel.sh build || { summary; exit 1; }
phase rootfs make -s rootfs || { summary; exit 1; }
phase fmt check rust_fmt cargo fmt --all --check
phase clippy check rust_clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
phase host-tests cargo test --workspace --exclude aem-conformance
phase guest-checks ci/dist-checks.sh
# The kselftests of the series (tools/testing/selftests/aem), in the guest.
phase selftests-aem ci/selftests-aem.sh
# A short aem-fuzz run (SEC-3) on this kernel; `make fuzz` is the long one.
phase fuzz check aem_fuzz_smoke env KCONFIG="${KCONFIG:-default}" FUZZ_CALLS="${FUZZ_SMOKE_CALLS:-3000}" \
	AEM_TIMEOUT="${FUZZ_SMOKE_TIMEOUT:-180}" ci/fuzz.sh
phase conformance ci/conformance.sh
summary
