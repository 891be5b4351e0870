#!/usr/bin/env bash
# Where the instructions of a kernel path go (issue 15): the function_graph
# tracer of the profiling kernel (KCONFIG=profile: aem.config plus
# kernel-patches/config/profile.config, the function tracer) in the icount
# lens (-icount shift=0, one CPU), where one guest nanosecond is one
# instruction.  Only the functions named are patched (set_ftrace_filter):
# a function's duration is its own instructions, those of the named
# functions it calls, and the tracer's -- about 735 instructions inside
# each traced call and 700 around it (calibrate on a trivial leaf such as
# mutex_unlock: its duration is nearly all tracer).
#
#   ci/kprofile.sh MODE FUNCTION...
#
# runs `aem-bench MODE` (release build) under the tracer and prints each
# function's mean duration and call count, then one stretch of the call
# tree.  Builds the profiling kernel first if needed (one kernel build at
# a time, as make kernel).  Example (PERF-1's inline path):
#
#   ci/kprofile.sh profile-inline eventfd_write __wake_up_locked_key \
#       aem_fd_wake aem_kick_inline arch_do_signal_or_restart get_signal \
#       aem_deliver aem_dequeue aem_complete_record aem_setup_handler \
#       copy_fpstate_to_sigframe __rseq_handle_notify_resume mutex_unlock
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
[ $# -ge 2 ] || { echo "usage: ci/kprofile.sh MODE FUNCTION..." >&2; exit 2; }
mode=$1
shift
export KCONFIG=profile
flock build/.kernel-build.lock ci/kernel.sh build >&2
# Static, like every guest program (the initramfs has no C library).
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build -q --release --target x86_64-unknown-linux-gnu -p aem-bench
bench=target/x86_64-unknown-linux-gnu/release/aem-bench

# shellcheck disable=SC2016  # expanded in the guest
guest='
T=/sys/kernel/tracing
[ -e $T/trace ] || mount -t tracefs nodev $T
echo 0 >$T/tracing_on
echo function_graph >$T/current_tracer
for f in '"$*"'; do echo $f >>$T/set_ftrace_filter || echo "kprofile: cannot trace $f (inlined?)"; done
echo 8192 >$T/buffer_size_kb
echo nofuncgraph-irqs >$T/trace_options
echo funcgraph-tail >$T/trace_options
echo >$T/trace
echo 1 >$T/tracing_on
aem-bench '"$mode"' >/dev/null
echo 0 >$T/tracing_on
echo "mean ns (= instructions) x calls  function"
awk -F"|" "
 /us +\\|/ || /ns +\\|/ {
   d = \$1; sub(/^.*\\) */, \"\", d); gsub(/[+!#*@\$ ]/, \"\", d)
   v = d; u = 1; if (d ~ /us\$/) { sub(/us\$/, \"\", v); u = 1000 } else sub(/ns\$/, \"\", v)
   f = \$2; if (f ~ /\\}/) { sub(/.*\\/\\* */, \"\", f); sub(/ *\\*\\/.*/, \"\", f) } else gsub(/[ ;(){}]/, \"\", f)
   n[f]++; s[f] += v * u
 }
 END { for (f in n) if (n[f] > 100) printf \"%8.0f x %7d  %s\\n\", s[f] / n[f], n[f], f }" $T/trace | sort -rn
echo "one stretch of the call tree:"
grep -v "^#" $T/trace | sed -n "200,240p"
'
AEM_ACCEL=tcg AEM_SMP=1 AEM_QEMU_ARGS="-icount shift=0,sleep=off" AEM_TIMEOUT=${AEM_TIMEOUT:-300} \
	qemu/guest.sh --file "$bench" -- "$guest"
