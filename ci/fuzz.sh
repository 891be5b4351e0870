#!/usr/bin/env bash
# `make fuzz`: aem-fuzz (fuzz/), a seeded fuzzer of the six AEM system
# calls, in a guest of the debug kernel (KASAN, lockdep, kmemleak, UBSAN):
# root workers, then unprivileged ones (uid 65534, a low RLIMIT_NOFILE).
# The sample module (build/modules-$KCONFIG/aem_sample.ko, in the guest's
# /lib/modules when built) is loaded first, as root, so that its event
# type and kernel topic are there to register on, and unloaded at the end:
# a registration's module reference left behind fails the run (exit 4).
# The guest's kmemleak scan runs after the command (rootfs/init), and
# qemu/guest.sh fails the run (exit 125) on any kernel WARNING, BUG, oops,
# KASAN/UBSAN report, kmemleak report or a guest that does not finish.
#
# Environment:
#   FUZZ_SEED (1), FUZZ_CALLS (1000000), FUZZ_PROCS (4), FUZZ_THREADS (2),
#   FUZZ_AVOID (classes to leave out, e.g. "known" or "ctx-epoll-loop";
#   default none), FUZZ_ARGS (more aem-fuzz arguments),
#   FUZZ_UNPRIV_SHARE (percent of the calls made unprivileged, 25),
#   KCONFIG (debug; build it with `KCONFIG=debug ci/kernel.sh build`),
#   AEM_TIMEOUT (guest time limit; default from the number of calls).
# To reproduce a failure: the same FUZZ_* values (the seed is printed).
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"

export KCONFIG=${KCONFIG:-debug}
seed=${FUZZ_SEED:-1}
calls=${FUZZ_CALLS:-1000000}
procs=${FUZZ_PROCS:-4}
threads=${FUZZ_THREADS:-2}
avoid=${FUZZ_AVOID:-}
share=${FUZZ_UNPRIV_SHARE:-25}
unpriv_calls=$((calls * share / 100))
root_calls=$((calls - unpriv_calls))

[ -f "build/bzImage-$KCONFIG" ] || {
	echo "fuzz: no build/bzImage-$KCONFIG; build it: KCONFIG=$KCONFIG ci/kernel.sh build" >&2
	exit 2
}
[ -f build/rootfs.cpio.gz ] || make -s rootfs

CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build -q --release --target x86_64-unknown-linux-gnu -p aem-fuzz
bin=target/x86_64-unknown-linux-gnu/release/aem-fuzz

args=(--procs "$procs" --threads "$threads")
[ -n "$avoid" ] && args+=(--avoid "$avoid")
# shellcheck disable=SC2206  # FUZZ_ARGS is a list of words
args+=(${FUZZ_ARGS:-})
cmd="aem-fuzz --seed $seed --calls $root_calls ${args[*]}"
if [ "$unpriv_calls" -gt 0 ]; then
	cmd="$cmd && aem-fuzz --seed $((seed + 1)) --calls $unpriv_calls --unprivileged ${args[*]}"
fi
# Load the sample module (if it was built and copied in) as root before
# the fuzzers; after them, unload it.  Children of the fuzzers may live
# some 20 s longer (their watchdogs) and keep registrations meanwhile:
# retry for 30 s.
mod=/lib/modules/aem_sample.ko
cmd="if [ -f $mod ]; then insmod $mod && echo 'fuzz: aem_sample loaded' || echo 'fuzz: insmod $mod failed'; fi
$cmd
st=\$?
if [ \$st = 0 ] && grep -qs '^aem_sample ' /proc/modules; then
	n=0
	until rmmod aem_sample 2>/dev/null; do
		n=\$((n + 1))
		if [ \$n -ge 30 ]; then
			echo \"fuzz: aem_sample still in use 30 s after the run: refcnt \$(cat /sys/module/aem_sample/refcnt)\"
			st=4
			break
		fi
		sleep 1
	done
	[ \$st = 0 ] && echo 'fuzz: aem_sample unloaded'
fi
exit \$st"

# Under TCG on two shared CPUs the debug kernel takes some 250 calls a
# second, the default kernel some 2000: allow for that, plus the boot and
# the kmemleak scan.  (1,000,000 calls on the debug kernel: over an hour.)
if [ -z "${AEM_TIMEOUT:-}" ]; then
	per_sec=$([ "$KCONFIG" = debug ] && echo 200 || echo 1000)
	export AEM_TIMEOUT=$((300 + calls / per_sec))
fi

echo "fuzz: $KCONFIG kernel, seed $seed, $calls calls (root $root_calls, unprivileged $unpriv_calls), avoid: ${avoid:-none}, timeout ${AEM_TIMEOUT}s"
start=$(date +%s)
rc=0
qemu/guest.sh --file "$bin" -- "$cmd" || rc=$?
echo "fuzz: guest exit $rc after $(($(date +%s) - start)) s"
case $rc in
0) echo "fuzz: ok" ;;
4) echo "fuzz: FAILED: the sample module stayed pinned after the run (a leaked module reference?)" ;;
125) echo "fuzz: FAILED: a kernel report, a hang or a crash (the console is above)" ;;
*) echo "fuzz: FAILED: aem-fuzz exit $rc (a worker hung or died; its seed and last operation are above)" ;;
esac
exit $rc
