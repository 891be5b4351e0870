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
# tree.  MODE http-aem, http-epoll or http-uring traces that server
# instead (only its threads: set_ftrace_pid) while http-load drives it
# with 100 keep-alive clients for 1 s, and adds each function's calls and
# instructions per request served.  Sleep time is left out of durations
# (nosleep-time): a call that blocks counts only its own instructions.
# Builds the profiling kernel first if needed (one kernel build at a
# time, as make kernel).  Example (PERF-1's inline path):
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
bin=target/x86_64-unknown-linux-gnu/release
# Static, like every guest program (the initramfs has no C library).
build() {
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build -q --release --target x86_64-unknown-linux-gnu "$@"
}
case $mode in
http-*)
	build -p aem-http
	files=(--file "$bin/$mode" --file "$bin/http-load")
	# A second of requests is ~50 MiB of trace: held whole, or the counts
	# per request would be of what the ring kept.
	buffer_kb=131072 mem=1024
	# No warm-up and no idle connections: the trace holds the 100 clients'
	# accepts and every request http-load counts, nothing else.
	run="$mode --addr 127.0.0.1:8080 --max-conns 1000 >/tmp/server.log 2>&1 &
server=\$!
until grep -q listening /tmp/server.log; do sleep 0.1; done
echo \$server >\$T/set_ftrace_pid
echo 1 >\$T/tracing_on
http-load --addr 127.0.0.1:8080 --idle 0 --clients 100 --warmup 0 --duration 1 --timeout 120 >/tmp/load.out
echo 0 >\$T/tracing_on
kill \$server
cat /tmp/load.out
requests=\$(tr \" \" \"\\n\" </tmp/load.out | sed -n \"s/^requests=//p\")"
	;;
*)
	build -p aem-bench
	files=(--file "$bin/aem-bench")
	buffer_kb=8192 mem=512
	run="echo 1 >\$T/tracing_on
aem-bench $mode >/dev/null
echo 0 >\$T/tracing_on
requests=0"
	;;
esac

# shellcheck disable=SC2016  # expanded in the guest
guest='
T=/sys/kernel/tracing
[ -e $T/trace ] || mount -t tracefs nodev $T
echo 0 >$T/tracing_on
echo function_graph >$T/current_tracer
for f in '"$*"'; do echo $f >>$T/set_ftrace_filter || echo "kprofile: cannot trace $f (inlined?)"; done
echo '"$buffer_kb"' >$T/buffer_size_kb
echo nofuncgraph-irqs >$T/trace_options
echo funcgraph-tail >$T/trace_options
echo nosleep-time >$T/trace_options
echo >$T/trace
'"$run"'
[ $(cat $T/per_cpu/cpu0/stats | sed -n "s/^overrun: //p") = 0 ] || echo "kprofile: the trace buffer overran: calls are counted in what it kept (means stand)"
echo "mean ns (= instructions) x calls  function$([ "$requests" -gt 0 ] && echo "  [per request: calls, instructions]")"
awk -F"|" -v requests=$requests "
 /us +\\|/ || /ns +\\|/ {
   d = \$1; sub(/^.*\\) */, \"\", d); gsub(/[+!#*@\$ ]/, \"\", d)
   v = d; u = 1; if (d ~ /us\$/) { sub(/us\$/, \"\", v); u = 1000 } else sub(/ns\$/, \"\", v)
   f = \$2; if (f ~ /\\}/) { sub(/.*\\/\\* */, \"\", f); sub(/ *\\*\\/.*/, \"\", f) } else gsub(/[ ;(){}]/, \"\", f)
   n[f]++; s[f] += v * u
 }
 END {
   for (f in n) if (n[f] > 100) {
     printf \"%8.0f x %7d  %s\", s[f] / n[f], n[f], f
     if (requests > 0) printf \"  [%.2f, %.0f]\", n[f] / requests, s[f] / requests
     printf \"\\n\"
   }
 }" $T/trace | sort -rn
echo "one stretch of the call tree:"
grep -v "^#" $T/trace | sed -n "200,240p"
'
AEM_MEM=$mem AEM_ACCEL=tcg AEM_SMP=1 AEM_QEMU_ARGS="-icount shift=0,sleep=off" AEM_TIMEOUT=${AEM_TIMEOUT:-300} \
	qemu/guest.sh "${files[@]}" -- "$guest"
