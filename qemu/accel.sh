# shellcheck shell=bash
# Sourced by the boot scripts: sets QEMU, QEMU_BASE_ARGS, KERNEL_CMDLINE and
# KERNEL_PROBLEM_RE from KCONFIG, AEM_SMP, AEM_MEM and AEM_ACCEL.
#
# TCG is the default.  KVM is used only when AEM_ACCEL=kvm, or AEM_ACCEL=auto
# and a probe boot finished within 20 s (the result is cached in build/):
# on our machines /dev/kvm exists but a KVM guest can hang silently.

QEMU=qemu-system-x86_64
command -v "$QEMU" >/dev/null || { echo "qemu: $QEMU not installed (make deps)" >&2; exit 2; }

aem_kvm_probe() {
	local cache="$TOP/build/kvm-probe"
	if [ ! -f "$cache" ]; then
		local result=no
		if [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo; then
			local out
			out=$(timeout -k 2 20 "$QEMU" -accel kvm -cpu host -m 256 -nodefaults \
				-display none -no-reboot -kernel "$KERNEL" -initrd "$TOP/build/rootfs.cpio.gz" \
				-append "console=ttyS0 panic=-1" -serial stdio </dev/null 2>/dev/null || true)
			grep -q 'AEM-EXIT-STATUS' <<<"$out" && result=yes
		fi
		echo "$result" >"$cache"
	fi
	[ "$(cat "$cache")" = yes ]
}

case "${AEM_ACCEL:-auto}" in
tcg) accel=(-accel tcg -cpu max) ;;
kvm) accel=(-accel kvm -cpu host) ;;
auto) if aem_kvm_probe; then accel=(-accel kvm -cpu host); else accel=(-accel tcg -cpu max); fi ;;
*) echo "qemu: AEM_ACCEL must be tcg, kvm or auto" >&2; exit 2 ;;
esac

# Under TCG (without -icount) the guest's TSC counts at the host's TSC
# rate, but the guest measures that rate against the emulated PIT, and on
# a busy host the measurement fails: the TSC is declared unusable, time
# falls back to jiffies and high-resolution timers to 1 ms steps.  Tell
# the guest the rate when the host's TSC is constant and its rate known.
tsc_khz_arg=""
if [ "${accel[1]}" = tcg ] && [[ "${AEM_QEMU_ARGS:-}" != *-icount* ]] &&
   grep -qw constant_tsc /proc/cpuinfo; then
	tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
	[ -n "$tsc_khz" ] && [ "$tsc_khz" -gt 0 ] && tsc_khz_arg="tsc_early_khz=$tsc_khz"
fi

if [ "${KCONFIG:-default}" = debug ]; then
	mem=${AEM_MEM:-2048}
else
	mem=${AEM_MEM:-512}
fi

# shellcheck disable=SC2034  # used by the scripts that source this file
QEMU_BASE_ARGS=("${accel[@]}" -smp "${AEM_SMP:-2}" -m "$mem" -nodefaults
	-display none -no-reboot -monitor none)
# loglevel=5 shows WARNING-level messages (WARN(), lockdep) on the console
# log, where the scripts look for them; oops=panic turns an oops into an
# exit instead of a half-dead guest.  tsc=reliable: under TCG on a loaded
# host the clocksource watchdog compares the TSC with jiffies, which lose
# ticks, declares the TSC unstable and falls back to refined-jiffies; time
# then advances in lost-tick steps and high-resolution timers degrade to
# 1 ms.  QEMU's TSC follows the host clock, so it is the reliable one.
#
# The debug kernel boots with 4-level paging (no5lvl): under -cpu max
# (LA57) about one boot in seven reported a KASAN wild-memory-access in an
# interrupt taken during identify_cpu(), at a 5-level direct-map address,
# before any AEM code ran.
debug_args=""
[ "${KCONFIG:-default}" = debug ] && debug_args="no5lvl"
# shellcheck disable=SC2034
KERNEL_CMDLINE="console=ttyS0 loglevel=5 panic=-1 oops=panic tsc=reliable $tsc_khz_arg $debug_args ${AEM_CMDLINE:-}"
# shellcheck disable=SC2034
KERNEL_PROBLEM_RE='(WARNING:|BUG:|Oops|Kernel panic|UBSAN:|general protection fault|kmemleak: [0-9]+ new suspected|unreferenced object 0x)'
