#!/usr/bin/env bash
# Upstream kselftests (signals, timers, futex, rseq, sched, epoll) on the
# stock kernel and on the AEM kernel: every test that passes on stock must
# pass on AEM.
#
#   ci/kselftest.sh [all]   both kernels, selftests, both runs, comparison
#                           (AEM_KERNEL=keep: use build/bzImage-default as is)
#   ci/kselftest.sh stock   build/bzImage-stock: the pinned source without
#                           kernel-patches/, aem.config minus CONFIG_AEM*
#   ci/kselftest.sh build   the selftests, static, into build/kselftest/root,
#                           and build/kselftest/rootfs.cpio.gz (busybox + them)
#   ci/kselftest.sh run stock|default   one guest boot running every test
#                           (KSFT_ONLY="name ..." runs only those)
#   ci/kselftest.sh compare the table, build/kselftest/results.txt; exits 1
#                           when a test passing on stock fails on AEM
#   ci/kselftest.sh verdict compare, after running each regression again
#   ci/kselftest.sh list    the test list: NAME TIMEOUT DIR COMMAND
#
# The stock tree is `git archive aem-base` of build/linux (read-only on that
# repository).  Kernel builds take build/.kernel-build.lock.  Results of a
# run: build/kselftest/run-KCONFIG.txt, one line per test:
#   KSFT name rc=N secs=S
# rc 0 is pass, 4 skip, anything else fail (timeouts are killed: rc 137).
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$TOP/build"
KS="$BUILD/kselftest"
STOCK="$KS/linux-stock"
OBJ="$KS/obj-stock"
LOCK="$BUILD/.kernel-build.lock"
JOBS=${JOBS:-2}
SEL="$STOCK/tools/testing/selftests"
OUT="$KS/out"		# selftest build output
ROOT="$KS/root"		# the overlay: /kselftest in the guest
HDR="$OBJ/usr"		# UAPI headers of the stock tree

log() { echo "kselftest: $*" >&2; }
die() { echo "kselftest: error: $*" >&2; exit 1; }
# shellcheck source=kconfig.sh
. "$TOP/ci/kconfig.sh"

cc=gcc
command -v ccache >/dev/null && cc="ccache gcc"
export CCACHE_BASEDIR="$BUILD"

stock_tree() {
	local base
	base=$(git -C "$BUILD/linux" rev-parse aem-base)
	[ "$(cat "$STOCK/.aem-base" 2>/dev/null)" = "$base" ] && return
	log "extracting the stock tree (aem-base $base)"
	rm -rf "$STOCK" && mkdir -p "$STOCK"
	git -C "$BUILD/linux" archive aem-base | tar -x -C "$STOCK"
	echo "$base" >"$STOCK/.aem-base"
}

# aem.config without the AEM options, and without the -aem version suffix.
stock_fragment() {
	grep -v -E '^(# )?CONFIG_AEM[_= ]' "$TOP/kernel-patches/config/aem.config" |
		sed 's/^CONFIG_LOCALVERSION=.*/CONFIG_LOCALVERSION=""/'
}

stock_configure() {
	local frag="$KS/stock.config"
	stock_fragment >"$frag"
	kconfig_apply "$STOCK" "$OBJ" "$frag"
}

stock_headers() {
	stock_tree
	stock_configure
	[ -f "$HDR/include/linux/rseq.h" ] && return
	log "stock UAPI headers -> $HDR"
	flock "$LOCK" make -s -C "$STOCK" O="$OBJ" headers_install INSTALL_HDR_PATH="$HDR" >/dev/null
}

stock() {
	stock_headers
	# The stock tree is fixed: build again only for a new configuration.
	if [ -f "$BUILD/bzImage-stock" ] &&
	   cmp -s "$OBJ/.aem-config-stamp" "$OBJ/.stock-built-stamp" &&
	   cmp -s "$BUILD/bzImage-stock" "$OBJ/arch/x86/boot/bzImage"; then
		log "stock kernel: $BUILD/bzImage-stock is up to date"
		return
	fi
	log "building stock bzImage (-j$JOBS, CC='$cc'), waiting for $LOCK"
	flock "$LOCK" make -s -C "$STOCK" O="$OBJ" CC="$cc" LOCALVERSION= -j"$JOBS" bzImage
	cp "$OBJ/arch/x86/boot/bzImage" "$BUILD/bzImage-stock"
	cp "$OBJ/.aem-config-stamp" "$OBJ/.stock-built-stamp"
	log "built $BUILD/bzImage-stock: $(cat "$OBJ/include/config/kernel.release")"
}

# ---- the selftests ------------------------------------------------------

# Static programs (the initramfs has no libc), against the stock UAPI.
build_selftests() {
	stock_headers
	local khdr="-isystem $HDR/include" t
	rm -rf "$OUT" && mkdir -p "$OUT"
	for t in timers futex sched sigaltstack filesystems/epoll x86; do
		log "building $t"
		mkdir -p "$OUT/$t"
		make -s -k -C "$SEL/$t" OUTPUT="$OUT/$t" CC="gcc -static" \
			KHDR_INCLUDES="$khdr" -j"$JOBS" all >"$OUT/${t//\//_}.log" 2>&1 || true
	done
	# valid-adjtimex defines clock_adjtime(), which static glibc has too.
	make -s -C "$SEL/timers" OUTPUT="$OUT/timers" KHDR_INCLUDES="$khdr" \
		CC="gcc -static -Wl,--allow-multiple-definition" all >>"$OUT/timers.log" 2>&1 || true
	# rseq links librseq.so; here rseq.c goes into each program.  The
	# list test of basic_percpu_ops_test: 10000 rounds a thread, not 100000.
	log "building rseq"
	mkdir -p "$OUT/rseq"
	rm -rf "$OUT/rseq-src" && cp -r "$SEL/rseq" "$OUT/rseq-src"
	sed -i 's/for (i = 0; i < 100000; i++) {/for (i = 0; i < 10000; i++) {/' \
		"$OUT/rseq-src/basic_percpu_ops_test.c"
	grep -q 'i < 10000; i++' "$OUT/rseq-src/basic_percpu_ops_test.c" ||
		die "rseq/basic_percpu_ops_test.c: the list loop changed"
	local v n src defs
	for v in basic_test:basic_test.c: \
		basic_percpu_ops_test:basic_percpu_ops_test.c: \
		basic_percpu_ops_mm_cid_test:basic_percpu_ops_test.c:-DBUILDOPT_RSEQ_PERCPU_MM_CID \
		param_test:param_test.c: \
		param_test_compare_twice:param_test.c:-DRSEQ_COMPARE_TWICE \
		param_test_mm_cid:param_test.c:-DBUILDOPT_RSEQ_PERCPU_MM_CID \
		"param_test_mm_cid_compare_twice:param_test.c:-DBUILDOPT_RSEQ_PERCPU_MM_CID -DRSEQ_COMPARE_TWICE"; do
		IFS=: read -r n src defs <<<"$v"
		# shellcheck disable=SC2086
		(cd "$OUT/rseq-src" && gcc -static -O2 -Wall -g -I. -I"$SEL/rseq" $khdr -I"$STOCK/tools/include" \
			-D_GNU_SOURCE= -pthread $defs "$src" rseq.c -o "$OUT/rseq/$n") >>"$OUT/rseq.log" 2>&1 || true
	done
	assemble
}

# The test list: NAME TIMEOUT DIR COMMAND...  (DIR under /kselftest).
# Timeouts are for two emulated CPUs under TCG.
test_list() {
	cat <<-'LIST'
	# sigaltstack/
	sigaltstack.sas 60 sigaltstack ./sas
	# x86/ (64-bit only: no IA32_EMULATION, no multilib): signal frames,
	# sigreturn, single-step, entry paths
	LIST
	local x t
	for x in sigreturn single_step_syscall sigaltstack sigtrap_loop syscall_nt \
		sysret_rip sysret_ss_attrs check_initial_reg_state mov_ss_trap \
		syscall_arg_fault fsgsbase fsgsbase_restore corrupt_xstate_header amx \
		nx_stack syscall_numbering test_mremap_vdso test_vsyscall iopl ioperm \
		lam test_shadow_stack; do
		# syscall_numbering probes every number with ptrace: over 120 s
		# under TCG (and its ptrace case fails on stock already).
		case $x in syscall_numbering) t=60 ;; *) t=120 ;; esac
		echo "x86.${x}_64 $t x86 ./${x}_64"
	done
	cat <<-'LIST'
	# futex/ (functional/run.sh, one line per invocation)
	futex.requeue_pi 120 futex/functional ./futex_requeue_pi
	futex.requeue_pi_b 120 futex/functional ./futex_requeue_pi -b
	futex.requeue_pi_b_l 120 futex/functional ./futex_requeue_pi -b -l
	futex.requeue_pi_b_o 120 futex/functional ./futex_requeue_pi -b -o
	futex.requeue_pi_l 120 futex/functional ./futex_requeue_pi -l
	futex.requeue_pi_o 120 futex/functional ./futex_requeue_pi -o
	futex.requeue_pi_b_l_t5000 120 futex/functional ./futex_requeue_pi -b -l -t 5000
	futex.requeue_pi_l_t5000 120 futex/functional ./futex_requeue_pi -l -t 5000
	futex.requeue_pi_b_l_t500000 120 futex/functional ./futex_requeue_pi -b -l -t 500000
	futex.requeue_pi_l_t500000 120 futex/functional ./futex_requeue_pi -l -t 500000
	futex.requeue_pi_b_t5000 120 futex/functional ./futex_requeue_pi -b -t 5000
	futex.requeue_pi_t5000 120 futex/functional ./futex_requeue_pi -t 5000
	futex.requeue_pi_b_t500000 120 futex/functional ./futex_requeue_pi -b -t 500000
	futex.requeue_pi_t500000 120 futex/functional ./futex_requeue_pi -t 500000
	futex.requeue_pi_b_o_t5000 120 futex/functional ./futex_requeue_pi -b -o -t 5000
	futex.requeue_pi_b_o_t500000 120 futex/functional ./futex_requeue_pi -b -o -t 500000
	futex.requeue_pi_b_l_t2000000000 120 futex/functional ./futex_requeue_pi -b -l -t 2000000000
	futex.requeue_pi_l_t2000000000 120 futex/functional ./futex_requeue_pi -l -t 2000000000
	futex.requeue_pi_mismatched_ops 120 futex/functional ./futex_requeue_pi_mismatched_ops
	futex.requeue_pi_signal_restart 120 futex/functional ./futex_requeue_pi_signal_restart
	futex.wait_timeout 120 futex/functional ./futex_wait_timeout
	futex.wait_wouldblock 120 futex/functional ./futex_wait_wouldblock
	futex.wait_uninitialized_heap 120 futex/functional ./futex_wait_uninitialized_heap
	futex.wait_private_mapped_file 120 futex/functional ./futex_wait_private_mapped_file
	futex.wait 120 futex/functional ./futex_wait
	futex.requeue 120 futex/functional ./futex_requeue
	futex.waitv 120 futex/functional ./futex_waitv
	# rseq/ (basic_percpu_ops_test: its list test 10000 rounds a thread,
	# not 100000: over 120 s under TCG)
	rseq.basic_test 60 rseq ./basic_test
	rseq.basic_percpu_ops_test 300 rseq ./basic_percpu_ops_test
	rseq.basic_percpu_ops_mm_cid_test 300 rseq ./basic_percpu_ops_mm_cid_test
	LIST
	# run_param_test.sh (1000 repetitions, 6 threads a CPU): every test
	# type with the four builds at its default parameters; the injection
	# matrix (loops at points 1-9; yield, kill, sleep at 7-9) for
	# param_test only, one entry a type (rseq/param_matrix.sh).
	local t n p
	for t in s:spinlock l:list b:buffer "b -M:buffer_barrier" m:memcpy \
		"m -M:memcpy_barrier" i:increment r:membarrier; do
		n=${t#*:} t=${t%%:*}
		for p in param_test param_test_compare_twice param_test_mm_cid \
			param_test_mm_cid_compare_twice; do
			echo "rseq.$p.$n 120 rseq ./$p -T $t -r 1000 -t 12"
		done
		echo "rseq.param_test.$n.injections 400 rseq ./param_matrix.sh param_test -T $t"
	done
	cat <<-'LIST'
	# sched/
	sched.cs_prctl_test 120 sched ./cs_prctl_test
	# filesystems/epoll/
	epoll.epoll_wakeup_test 600 filesystems/epoll ./epoll_wakeup_test
	# timers/ (the "safe" set; inconsistency-check shortened to 3 s a clock)
	timers.posix_timers 300 timers ./posix_timers
	timers.nanosleep 300 timers ./nanosleep
	timers.nsleep-lat 400 timers ./nsleep-lat
	timers.set-timer-lat 400 timers ./set-timer-lat
	timers.mqueue-lat 120 timers ./mqueue-lat
	timers.inconsistency-check 300 timers ./inconsistency-check -t 3
	timers.raw_skew 240 timers ./raw_skew
	timers.threadtest 120 timers ./threadtest -t 30
	timers.rtcpie 60 timers ./rtcpie
	# timers/ destructive but quick (the guest's clock is ours to change)
	timers.valid-adjtimex 120 timers ./valid-adjtimex
	timers.set-tz 60 timers ./set-tz
	timers.set-tai 60 timers ./set-tai
	LIST
}

# The guest's side: run every listed test, one parseable line each.
guest_runner() {
	cat <<-'RUNNER'
	#!/bin/sh
	# Runs /kselftest/tests.txt: NAME TIMEOUT DIR COMMAND...
	up() { cut -d' ' -f1 /proc/uptime; }
	echo "KSFT-BEGIN kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) build=$(uname -v | tr ' ' _)"
	grep -v -e '^#' -e '^$' /kselftest/tests.txt >/tmp/tests.txt
	while read -r name tmo dir cmd; do
		if [ -n "$KSFT_AFTER" ]; then
			[ "$name" = "$KSFT_AFTER" ] && KSFT_AFTER=
			continue
		fi
		if [ -n "$KSFT_ONLY" ]; then
			case " $KSFT_ONLY " in *" $name "*) ;; *) continue ;; esac
		fi
		echo "KSFT-START $name ($cmd, timeout ${tmo}s)"
		t0=$(up)
		(cd "/kselftest/$dir" && exec timeout -s KILL "$tmo" $cmd) </dev/null >/tmp/out 2>&1
		rc=$?
		t1=$(up)
		# awk ends every line, also an unfinished last one (a crash)
		awk '{ print "  | " $0 }' /tmp/out
		echo "KSFT $name rc=$rc secs=$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")"
	done </tmp/tests.txt
	echo "KSFT-END"
	RUNNER
}

# rseq/run_param_test.sh's injection matrix for one program and test type
# (that script needs bash; the guest has busybox sh).
param_matrix() {
	cat <<-'MATRIX'
	#!/bin/sh
	# param_matrix.sh PROG -T TYPE [-M]: run_param_test.sh's injections
	prog=$1; shift
	threads=$((6 * $(grep -c ^processor /proc/cpuinfo)))
	run() {
		echo "[RUN] $prog $*"
		./$prog "$@" -r 1000 -t $threads || { echo "[FAIL] $prog $* (exit $?)"; exit 1; }
	}
	for i in 1 2 3 4 5 6 7 8 9; do run "$@" -$i 10000; done
	for m in "-m 4 -y" "-m 2 -y" "-m 1 -y" "-m 4 -k" "-m 2 -k" "-m 1 -k" \
		"-m 4 -s 1" "-m 2 -s 1" "-m 1 -s 1"; do
		# shellcheck disable=SC2086
		for i in 7 8 9; do run "$@" -$i -1 $m; done
	done
	echo "[OK] all injections"
	MATRIX
}

assemble() {
	rm -rf "$ROOT" && mkdir -p "$ROOT/kselftest"
	local dir
	for dir in timers futex/functional sched sigaltstack filesystems/epoll x86 rseq; do
		mkdir -p "$ROOT/kselftest/$dir"
		find "$OUT/$dir" -maxdepth 1 -type f -perm -u+x ! -name '*.sh' \
			-exec cp {} "$ROOT/kselftest/$dir/" \;
		strip "$ROOT/kselftest/$dir"/* 2>/dev/null || true
	done
	test_list >"$ROOT/kselftest/tests.txt"
	guest_runner >"$ROOT/kselftest/run.sh"
	param_matrix >"$ROOT/kselftest/rseq/param_matrix.sh"
	chmod +x "$ROOT/kselftest/rseq/param_matrix.sh"
	# Listed programs that did not build.
	local name tmo d cmd missing=0
	while read -r name tmo d cmd; do
		case "$name" in ''|'#'*) continue ;; esac
		cmd=${cmd%% *}
		[ -x "$ROOT/kselftest/$d/${cmd#./}" ] || { log "not built: $d/${cmd#./} ($name)"; missing=1; }
	done <"$ROOT/kselftest/tests.txt"
	"$TOP/rootfs/build.sh" "$KS/rootfs.cpio.gz" --overlay "$ROOT" >&2
}

# ---- runs ----------------------------------------------------------------

# One guest runs the tests in order.  When the guest dies in a test (an
# oops panics: oops=panic), that test is recorded as "crash" and a new
# guest goes on with the next one.
run_guest() {
	local kc=$1 res total
	res="$KS/run-$kc${2:+-$2}.txt"
	[ -f "$BUILD/bzImage-$kc" ] || die "no build/bzImage-$kc"
	[ -f "$KS/rootfs.cpio.gz" ] || die "no selftests; run '$0 build'"
	total=$(awk '!/^#/ && NF { s += $2 } END { print s + 120 }' "$ROOT/kselftest/tests.txt")
	log "running on bzImage-$kc (guest limit ${total}s) -> $res"
	local t0=$SECONDS status after="" boot=0 last sha
	: >"$res"
	: >"${res%.txt}.stderr"
	while :; do
		boot=$((boot + 1)) status=0
		# Not while a build is copying the image (a just-written one).
		while [ $(($(date +%s) - $(stat -c %Y "$BUILD/bzImage-$kc"))) -lt 10 ]; do sleep 5; done
		sha=$(sha256sum "$BUILD/bzImage-$kc" | cut -c1-16)
		log "bzImage-$kc (sha256 $sha...): boot $boot${after:+, after $after}"
		# guest.sh shows the console log (on stderr) only on a problem.
		KCONFIG=$kc AEM_ROOTFS="$KS/rootfs.cpio.gz" AEM_TIMEOUT=$total AEM_MEM=${AEM_MEM:-1024} \
			"$TOP/qemu/guest.sh" -- \
			"KSFT_ONLY='${KSFT_ONLY:-}' KSFT_AFTER='$after' sh /kselftest/run.sh" \
			>>"$res" 2>>"${res%.txt}.stderr" || status=$?
		echo "KSFT-GUEST status=$status wall=$((SECONDS - t0)) image_sha256=$sha" >>"$res"
		[ $status -eq 125 ] || break
		# The test that was running when the guest died.
		last=$(awk '/^KSFT-START / { n = $2 } /^KSFT / { n = "" } END { print n }' "$res")
		if [ -z "$last" ]; then
			log "bzImage-$kc: kernel problem outside a test: see ${res%.txt}.stderr"
			break
		fi
		log "bzImage-$kc: guest died in $last (see ${res%.txt}.stderr)"
		echo "KSFT $last rc=crash secs=-" >>"$res"
		[ $boot -lt 10 ] || { log "10 boots: giving up"; break; }
		after=$last
	done
	log "bzImage-$kc: $boot boot(s), $((SECONDS - t0)) s, $(grep -c '^KSFT ' "$res") tests"
	return 0
}

# ---- the comparison ------------------------------------------------------

# Table of NAME STOCK AEM from run-stock.txt and run-default.txt into
# results.txt; fails when a test passing on stock does not pass on AEM, or
# the AEM guest reported a kernel problem the stock guest did not.
compare() {
	local out="$KS/results.txt" status=0 kc
	for kc in stock default; do
		[ -f "$KS/run-$kc.txt" ] || die "no run on bzImage-$kc; run '$0 run $kc'"
	done
	python3 - "$KS/run-stock.txt" "$KS/run-default.txt" "$ROOT/kselftest/tests.txt" \
		"$KS/run-default-retry.txt" "$KS/regressions.txt" "$KS/results.md" >"$out" <<-'PY' || status=$?
	import re, sys
	def load(path):
	    res, outs, info, cur = {}, {}, {}, None
	    try:
	        lines = open(path, errors="replace").read().splitlines()
	    except FileNotFoundError:
	        return res, outs, info
	    for l in lines:
	        m = re.match(r"KSFT-START (\S+)", l)
	        if m: cur = m.group(1); outs[cur] = []; continue
	        m = re.match(r"KSFT (\S+) rc=(\S+) secs=(\S+)", l)
	        if m:
	            rc = m.group(2)
	            r = {"0": "pass", "4": "skip", "137": "timeout", "crash": "crash"}.get(rc, "fail(%s)" % rc)
	            res[m.group(1)] = (r, m.group(3)); cur = None; continue
	        m = re.match(r"KSFT-BEGIN kernel=(\S+) cpus=\S+ build=(\S+)", l)
	        if m: info["kernel"] = "%s %s" % (m.group(1), m.group(2).replace("_", " "))
	        m = re.match(r"KSFT-GUEST status=(\d+) wall=(\d+) image_sha256=(\S+)", l)
	        if m:
	            info.setdefault("boots", []).append(int(m.group(1)))
	            info["status"], info["wall"], info["sha"] = int(m.group(1)), int(m.group(2)), m.group(3)
	            info.setdefault("shas", set()).add(m.group(3))
	            # 125 with no test running: a WARNING/BUG outside any crash
	            if int(m.group(1)) == 125 and cur is None: info["problem"] = True
	            cur = None
	        if cur and l.startswith("  | "): outs[cur].append(l[4:])
	    return res, outs, info
	def tap(lines):
	    # "ok 3 name", "not ok 7 name", "ok 4 # SKIP name": {name: result}
	    r = {}
	    for l in lines:
	        m = re.match(r"(not )?ok (\d+) (.*)", l)
	        if m:
	            d = m.group(3).strip()
	            r["%s %s" % (m.group(2), d)] = "skip" if "# SKIP" in d.upper() else ("fail" if m.group(1) else "pass")
	    return r
	st, so, si = load(sys.argv[1]); ae, ao, ai = load(sys.argv[2])
	rt, ro, _ = load(sys.argv[4])     # the AEM retry of the first run's regressions
	names = [l.split()[0] for l in open(sys.argv[3]) if l.strip() and not l.startswith("#")]
	for tag, i in (("stock", si), ("aem", ai)):
	    print("%-5s kernel %s, image sha256 %s..., guest status(es) %s, %s s" % (
	        tag, i.get("kernel", "?"), "/".join(sorted(i.get("shas", ["?"]))),
	        ",".join(map(str, i.get("boots", ["?"]))), i.get("wall", "?")))
	print("%-46s %-12s %-12s %s" % ("test", "stock", "aem", "secs stock/aem"))
	regress, subregress, counts, first, flaky = [], [], {}, [], []
	md = ["| test | stock | AEM | seconds (stock / AEM) | |", "|---|---|---|---:|---|"]
	for n in names:
	    s, a = st.get(n, ("not-run", "-")), ae.get(n, ("not-run", "-"))
	    # A guest death (oops, panic) on AEM only is a regression too.
	    bad = (s[0] == "pass" and a[0] != "pass") or (a[0] == "crash" and s[0] != "crash")
	    first.append(n) if bad else None
	    # Timing tests under TCG miss deadlines now and then: a failure
	    # that passes when run again is reported, not counted.
	    if bad and a[0] != "crash" and rt.get(n, ("",))[0] == "pass":
	        a = (a[0] + ",retry:pass", a[1]); bad = False; flaky.append(n)
	    if bad: regress.append(n)
	    # A test failing on both: its TAP subtests must not get worse.
	    sub = []
	    if not bad and s[0] != "pass":
	        ts, ta = tap(so.get(n, [])), tap(ao.get(n, []))
	        sub = [k for k, v in ts.items() if v == "pass" and ta.get(k) != "pass" and ta]
	        if sub:
	            first.append(n)
	            tr = tap(ro.get(n, []))
	            if tr and all(tr.get(k) == "pass" for k in sub):
	                a = (a[0] + ",retry:subtests-pass", a[1]); flaky.append(n)
	            else:
	                subregress.append((n, sub)); bad = True
	    counts[(s[0].split("(")[0], a[0].split("(")[0])] = counts.get((s[0].split("(")[0], a[0].split("(")[0]), 0) + 1
	    print("%-46s %-12s %-12s %s/%s%s" % (n, s[0], a[0], s[1], a[1], "  REGRESSION" if bad else ""))
	    md.append("| `%s` | %s | %s | %s / %s |%s" % (n, s[0], a[0], s[1], a[1], " **regression** |" if bad else " |"))
	print()
	print("counts (stock -> aem): " + ", ".join("%s->%s: %d" % (k[0], k[1], v) for k, v in sorted(counts.items())))
	sp = sum(1 for n in names if st.get(n, ("",))[0] == "pass")
	ap = sum(1 for n in names if ae.get(n, ("",))[0] == "pass")
	print("%d tests; pass on stock: %d, pass on AEM: %d" % (len(names), sp, ap))
	kernel_problem = ai.get("problem", False) and not si.get("problem", False)
	if kernel_problem:
	    print("AEM guest: a kernel WARNING/BUG or guest timeout outside any test crash; see build/kselftest/run-default.stderr")
	open(sys.argv[5], "w").write("".join(x + "\n" for x in first))
	open(sys.argv[6], "w").write("\n".join(md) + "\n")
	if flaky:
	    print("failed on AEM, passed when run again (timing under TCG): " + " ".join(flaky))
	for n, sub in subregress:
	    print("%s: subtests passing on stock, not on AEM: %s" % (n, "; ".join(sub)))
	for n in regress + [n for n, _ in subregress]:
	    print("\n---- %s on AEM (%s) ----" % (n, ae.get(n, ("not-run",))[0]))
	    print("\n".join(ao.get(n, [])[-60:]))
	if regress or subregress or kernel_problem:
	    print("\nVERDICT: FAIL: %d regression(s): %s" % (len(regress) + len(subregress),
	          " ".join(regress + [n for n, _ in subregress])))
	    sys.exit(1)
	print("\nVERDICT: PASS: every test that passes on stock passes on AEM")
	PY
	cat "$out"
	return $status
}

all() {
	local t0=$SECONDS
	stock
	# The AEM kernel as `make kernel` builds it (incremental); AEM_KERNEL=keep
	# takes build/bzImage-default as it is.
	if [ "${AEM_KERNEL:-}" != keep ] || [ ! -f "$BUILD/bzImage-default" ]; then
		log "AEM kernel: ci/kernel.sh build, waiting for $LOCK"
		KCONFIG=default flock "$LOCK" "$TOP/ci/kernel.sh" build >&2
	fi
	build_selftests
	run_guest stock
	run_guest default
	log "runs done after $((SECONDS - t0)) s"
	verdict
}

# The comparison; each regression is first run again in a fresh AEM guest.
verdict() {
	rm -f "$KS/run-default-retry.txt"
	if ! compare >/dev/null && [ -s "$KS/regressions.txt" ]; then
		log "again on AEM: $(tr '\n' ' ' <"$KS/regressions.txt")"
		KSFT_ONLY=$(tr '\n' ' ' <"$KS/regressions.txt") run_guest default retry
	fi
	compare
}

case "${1:-all}" in
stock) stock ;;
headers) stock_headers ;;
build) build_selftests ;;
assemble) assemble ;;
run) run_guest "${2:?usage: $0 run KCONFIG [TAG]}" "${3:-}" ;;
list) test_list ;;
compare) compare ;;
verdict) verdict ;;
all) all ;;
*) die "usage: $0 [all|stock|build|run stock|default|compare|list]" ;;
esac; exit	# one parse: the file may change under a long run
