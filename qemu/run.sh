#!/usr/bin/env bash
# Boot the AEM image and run the demo.  With a terminal attached, the guest
# then offers a shell (Ctrl-D or 'exit' powers it off; Ctrl-A X quits QEMU).
#
# Environment: as qemu/guest.sh (KCONFIG, AEM_SMP, AEM_MEM, AEM_ACCEL).
#
# AEM_IMAGE=debian (`make run IMAGE=debian`) boots the Debian image of
# `make image` instead: systemd, a login on the serial console (root, no
# password), user-mode network with the guest's port 8080 (http-aem) on the
# host's port AEM_HTTP_PORT (8080).  Changes are discarded at power-off.
# Without a terminal it checks the image: the login prompt, a root login on
# the console, `uname -r` and the demo, the port forward, power-off.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
KCONFIG=${KCONFIG:-default}
KERNEL="$TOP/build/bzImage-$KCONFIG"
ROOTFS="$TOP/build/rootfs.cpio.gz"
if [ "${AEM_IMAGE:-}" = debian ]; then
	exec "$HERE/run-image.sh"
fi
[ -z "${AEM_IMAGE:-}" ] || { echo "run: AEM_IMAGE must be empty (the initramfs) or debian" >&2; exit 2; }
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
