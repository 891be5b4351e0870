#!/usr/bin/env bash
# The AEM kselftests (tools/testing/selftests/aem of build/linux, in the
# series) on the AEM kernel: built as ci/kselftest.sh builds the upstream
# ones (static, against the kernel's installed UAPI headers) into
# build/selftests-aem, run in one guest of build/bzImage-$KCONFIG, and
# their TAP results turned into one libtest-style line per test,
#
#   test kselftest_aem_<prog>_<test> ... ok
#   test kselftest_aem_<prog>_<test> ... FAILED
#
# which ci/test.sh counts (<test> without the harness's "global."
# fixture; "fixture.name" becomes fixture_name).  A test that skips is a
# failure here: on the AEM kernel every source and feature is built in.
# A program that crashes, exits non-zero outside its tests, or reports
# fewer results than its plan gets a line of its own,
# kselftest_aem_<prog> ... FAILED; a guest that reports a kernel problem
# or times out, kselftest_aem_guest ... FAILED.  The raw TAP is kept in
# build/selftests-aem/results.tap.  Exit status non-zero on any failure.
#
# Environment: KCONFIG (default), AEM_TIMEOUT (300), and qemu/guest.sh's.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
KCONFIG=${KCONFIG:-default}
SRC="$TOP/build/linux/tools/testing/selftests/aem"
OUT="$TOP/build/selftests-aem"
HDR="$TOP/build/obj-$KCONFIG/uapi/include"
TAP="$OUT/results.tap"

fail_early() {
	echo "test kselftest_aem_$1 ... FAILED"
	echo "  kselftest_aem_$1: $2"
	exit 1
}

[ -d "$SRC" ] || fail_early build "no $SRC (make kernel-tree)"
[ -f "$HDR/linux/aem.h" ] || fail_early build "no UAPI headers in $HDR (make kernel)"

rm -rf "$OUT" && mkdir -p "$OUT"
if ! make -s -C "$SRC" OUTPUT="$OUT" CC="gcc -static" \
	KHDR_INCLUDES="-isystem $HDR" all >"$OUT/build.log" 2>&1; then
	cat "$OUT/build.log"
	fail_early build "the selftests did not build (above)"
fi
mapfile -t progs < <(find "$OUT" -maxdepth 1 -type f -perm -u+x -printf '%f\n' | sort)
[ ${#progs[@]} -gt 0 ] || fail_early build "no programs in $OUT"

files=()
for p in "${progs[@]}"; do
	files+=(--file "$OUT/$p")
done
# One guest runs every program; each is framed by KSFT-PROG / KSFT-RC.
status=0
AEM_TIMEOUT=${AEM_TIMEOUT:-300} qemu/guest.sh "${files[@]}" -- \
	"for p in ${progs[*]}; do echo \"KSFT-PROG \$p\"; \$p; echo \"KSFT-RC \$p \$?\"; done" \
	>"$TAP" 2>"$OUT/guest.stderr" || status=$?

rc=0
awk -v progs="${progs[*]}" -v guest="$status" '
function id(t) {
	sub(/^global\./, "", t)
	gsub(/[^A-Za-z0-9_]/, "_", t)
	return "kselftest_aem_" prog "_" t
}
function report(name, ok, why) {
	if (ok) {
		print "test " name " ... ok"
		return
	}
	print "test " name " ... FAILED"
	if (why != "")
		print "  " name ": " why
	printf "%s", diag
	failures++
	prog_failed = 1
}
# The end of a program: its exit status @rc ("" when it never came).
function end_prog(rc,    why) {
	if (rc == "")
		why = "no exit status: the program or the guest died"
	else if (seen < plan)
		why = sprintf("%d of %d results, exit status %d", seen, plan, rc)
	else if (rc != 0 && !prog_failed)
		why = "exit status " rc " outside any test"
	if (why != "")
		report("kselftest_aem_" prog, 0, why)
	done[prog] = 1
	prog = ""
}
/^KSFT-PROG / { prog = $2; plan = 0; seen = 0; prog_failed = 0; diag = ""; next }
prog == "" { next }
/^KSFT-RC / { end_prog($3); next }
/^1\.\.0( |$)/ {
	reason = $0
	sub(/^1\.\.0 *(# *)?(SKIP *)?/, "", reason)
	report("kselftest_aem_" prog, 0, "skipped: " reason)
	next
}
/^1\.\.[0-9]+$/ { plan = substr($0, 4) + 0; next }
/^(not )?ok [0-9]+/ {
	line = $0
	bad = line ~ /^not /
	sub(/^(not )?ok [0-9]+ */, "", line)
	skip = line ~ /# *SKIP/
	name = line
	sub(/ *#.*$/, "", name)
	if (name == "")
		name = "skip"
	seen++
	why = ""
	if (skip) {
		why = line
		sub(/^[^#]*# */, "", why)
	}
	report(id(name), !bad && !skip, why)
	diag = ""
	next
}
/^# +(RUN|OK|FAIL) / { next }
/^#/ { diag = diag "    " $0 "\n" }
END {
	if (prog != "")
		end_prog("")
	n = split(progs, all, " ")
	for (i = 1; i <= n; i++)
		if (!(all[i] in done)) {
			print "test kselftest_aem_" all[i] " ... FAILED"
			print "  kselftest_aem_" all[i] ": did not run"
			failures++
		}
	if (guest != 0) {
		print "test kselftest_aem_guest ... FAILED"
		print "  kselftest_aem_guest: qemu/guest.sh exit " guest \
			(guest == 125 ? " (kernel problem or timeout)" : "")
		failures++
	}
	exit failures > 0
}' "$TAP" || rc=$?

if [ "$status" -ne 0 ]; then
	tail -n 40 "$OUT/guest.stderr"
fi
exit "$rc"
