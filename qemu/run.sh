#!/usr/bin/env bash
# Boot the AEM image and run the demo.  With a terminal attached, the guest
# then offers a shell (Ctrl-D or 'exit' powers it off; Ctrl-A X quits QEMU).
#
# Environment: as qemu/guest.sh (KCONFIG, AEM_SMP, AEM_MEM, AEM_ACCEL).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
KCONFIG=${KCONFIG:-default}
KERNEL="$TOP/build/bzImage-$KCONFIG"
ROOTFS="$TOP/build/rootfs.cpio.gz"
[ -f "$KERNEL" ] || { echo "run: no $KERNEL; run 'make kernel'" >&2; exit 2; }
[ -f "$ROOTFS" ] || { echo "run: no $ROOTFS; run 'make rootfs'" >&2; exit 2; }

# shellcheck source=accel.sh
. "$HERE/accel.sh"
if [ -t 0 ] && [ -t 1 ]; then
	KERNEL_CMDLINE="$KERNEL_CMDLINE quiet aemshell=1"
	exec "$QEMU" "${QEMU_BASE_ARGS[@]}" -kernel "$KERNEL" -initrd "$ROOTFS" \
		-append "$KERNEL_CMDLINE" -serial mon:stdio
fi
timeout -k 5 "${AEM_TIMEOUT:-120}" "$QEMU" "${QEMU_BASE_ARGS[@]}" -kernel "$KERNEL" \
	-initrd "$ROOTFS" -append "$KERNEL_CMDLINE quiet" -serial stdio </dev/null |
	tee "$TOP/build/run.log"
grep -q 'AEM-EXIT-STATUS: 0' "$TOP/build/run.log"
