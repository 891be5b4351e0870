#!/usr/bin/env bash
# Distribution checks (DIST-2, DIST-4, DIST-5, DIST-6): the boot scripts and the
# image, tested from the host through real guest boots.  Prints one libtest
# style line per check so ci/test.sh counts them with the rest.
set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

result() {
	if [ "$2" = ok ]; then
		echo "test $1 ... ok"
	else
		echo "test $1 ... FAILED"
		echo "  $1: $3"
		failures=$((failures + 1))
	fi
}

# DIST-2: the series is checkpatch-clean (the kernel's own script).
# Options as in ci/kernel.sh (which explains the one ignored check).
opts=$(sed -n 's/^CHECKPATCH_OPTS="\(.*\)"$/\1/p' ci/kernel.sh)
# shellcheck disable=SC2086
if (cd build/linux && PATH=/usr/bin:$PATH scripts/checkpatch.pl $opts "$TOP"/kernel-patches/*.patch) >"$work/cp" 2>&1; then
	result dist_2_patch_series_is_checkpatch_clean ok
else
	result dist_2_patch_series_is_checkpatch_clean bad "$(grep -E 'ERROR|WARNING' "$work/cp" | head -n5)"
fi

# DIST-5: a command's output reaches the host, and names the AEM kernel.
out=$(qemu/guest.sh uname -r 2>"$work/err")
rc=$?
if [ $rc -eq 0 ] && [[ "$out" =~ ^6\.12\.[0-9]+-aem$ ]]; then
	result dist_5_guest_prints_aem_kernel_version ok
else
	result dist_5_guest_prints_aem_kernel_version bad "exit $rc, output '$out' $(tail -n3 "$work/err")"
fi

# DIST-5: the command's exit status is the host's exit status.
qemu/guest.sh 'echo to-stdout; echo to-stderr >&2; exit 7' >"$work/out" 2>"$work/err"
rc=$?
if [ $rc -eq 7 ] && [ "$(cat "$work/out")" = "$(printf 'to-stdout\nto-stderr')" ]; then
	result dist_5_guest_exit_status_and_output_reach_host ok
else
	result dist_5_guest_exit_status_and_output_reach_host bad "exit $rc, output '$(cat "$work/out")'"
fi

# DIST-5: a kernel problem fails the run even when the command succeeds.
# sysrq 'l'... is not in the small kernel; a WARNING line forged on the
# console through /dev/kmsg at KERN_WARNING level exercises the same check.
qemu/guest.sh 'echo "<4>WARNING: CPU: 0 PID: 1 at forged/by/dist-checks" >/dev/kmsg; true' \
	>"$work/out" 2>"$work/err"
rc=$?
if [ $rc -eq 125 ] && grep -q 'kernel problem on the console' "$work/err"; then
	result dist_5_guest_fails_on_kernel_warning ok
else
	result dist_5_guest_fails_on_kernel_warning bad "exit $rc (want 125)"
fi

# DIST-5: the guest keeps the TSC clocksource under host load (tsc=reliable);
# on refined-jiffies, timers degrade to lost-tick 1 ms steps.
out=$(qemu/guest.sh 'sleep 2; cat /sys/devices/system/clocksource/clocksource0/current_clocksource' 2>"$work/err")
rc=$?
if [ $rc -eq 0 ] && { [ "$out" = tsc ] || [ "$out" = tsc-early ]; }; then
	result dist_5_guest_clocksource_is_tsc ok
else
	result dist_5_guest_clocksource_is_tsc bad "exit $rc, clocksource '$out'"
fi

# DIST-4: a program placed with ROOTFS_OVERLAY runs; its status reaches us.
mkdir -p "$work/overlay/usr/local/bin"
cat >"$work/overlay/usr/local/bin/overlay-hello" <<'EOF'
#!/bin/sh
echo "overlay says hello"
exit 5
EOF
chmod +x "$work/overlay/usr/local/bin/overlay-hello"
rootfs/build.sh "$work/rootfs.cpio.gz" --overlay "$work/overlay" \
	target/x86_64-unknown-linux-gnu/release/aem-demo >/dev/null
out=$(AEM_ROOTFS="$work/rootfs.cpio.gz" qemu/guest.sh /usr/local/bin/overlay-hello 2>"$work/err")
rc=$?
if [ $rc -eq 5 ] && [ "$out" = "overlay says hello" ]; then
	result dist_4_overlay_program_runs_with_its_exit_status ok
else
	result dist_4_overlay_program_runs_with_its_exit_status bad "exit $rc, output '$out'"
fi

# DIST-6: `make run`'s path boots and shows the demo, within 10 s of boot.
start=$(date +%s.%N)
qemu/run.sh >"$work/run" 2>&1
rc=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
if [ $rc -eq 0 ] && grep -q 'aem-demo: AEM ABI version' "$work/run" &&
   [ "$(echo "$took < 10" | bc)" = 1 ]; then
	result dist_6_run_shows_demo_within_10s ok
	echo "  demo boot to power-off: ${took}s"
else
	result dist_6_run_shows_demo_within_10s bad "exit $rc after ${took}s: $(tail -n5 "$work/run")"
fi

[ $failures -eq 0 ]
