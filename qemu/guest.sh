#!/usr/bin/env bash
# Boot a fresh AEM guest, run one shell command in it, print the command's
# output on stdout and exit with its exit status.
#
#   qemu/guest.sh [--file HOSTFILE]... [--] COMMAND...
#
# --file copies a host file into the guest's /aem/bin (on PATH).  The guest
# boots build/bzImage-$KCONFIG with build/rootfs.cpio.gz plus a small archive
# holding the command and the files.  The run fails (exit 125) when the
# kernel panics, oopses, prints a WARNING/BUG, or the guest does not report
# an exit status within AEM_TIMEOUT seconds; the console log is then shown.
#
# Environment: KCONFIG=default|debug, AEM_SMP (2), AEM_MEM (MiB),
# AEM_ROOTFS (another base initramfs), AEM_TIMEOUT (600), AEM_ACCEL=auto|tcg|kvm (auto: KVM only if a probe works), AEM_QEMU_ARGS (extra options).
#
# AEM_IMAGE=debian boots the Debian image of `make image` instead
# (build/image/: its kernel, root=/dev/vda, changes discarded at power-off,
# user-mode network): systemd's aem-guest.service finds the command and the
# files on a second disk (a tar archive) and runs them as /init does here.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
KCONFIG=${KCONFIG:-default}
KERNEL="$TOP/build/bzImage-$KCONFIG"
ROOTFS=${AEM_ROOTFS:-$TOP/build/rootfs.cpio.gz}
TIMEOUT=${AEM_TIMEOUT:-600}
IMAGE=${AEM_IMAGE:-}
IMAGE_DIR=$TOP/build/image

files=()
while [ $# -gt 0 ]; do
	case "$1" in
	--file) files+=("$2"); shift 2 ;;
	--) shift; break ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--file F]... COMMAND..." >&2; exit 2; }
case "$IMAGE" in
"")
	[ -f "$KERNEL" ] || { echo "guest: no $KERNEL; run 'make kernel'" >&2; exit 2; }
	[ -f "$ROOTFS" ] || { echo "guest: no $ROOTFS; run 'make rootfs'" >&2; exit 2; }
	;;
debian)
	[ "$KCONFIG" = default ] || { echo "guest: the image has the default kernel only (KCONFIG=$KCONFIG)" >&2; exit 2; }
	[ -f "$IMAGE_DIR/debian.img" ] || { echo "guest: no $IMAGE_DIR/debian.img; run 'make image'" >&2; exit 2; }
	;;
*) echo "guest: AEM_IMAGE must be empty (the initramfs) or debian" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/aem-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/extra/aem/bin"
printf '%s\n' "$*" >"$work/extra/aem/cmd"
for f in "${files[@]}"; do
	[ -f "$f" ] || { echo "guest: --file $f: no such file" >&2; exit 2; }
	cp "$f" "$work/extra/aem/bin/"
done
# The modules built for this kernel (build/modules-$KCONFIG), such as the
# sample event source: a module fits the flavour it was built for only.
if compgen -G "$TOP/build/modules-$KCONFIG/*.ko" >/dev/null; then
	mkdir -p "$work/extra/lib/modules"
	cp "$TOP/build/modules-$KCONFIG"/*.ko "$work/extra/lib/modules/"
fi
if [ -z "$IMAGE" ]; then
	"$TOP/rootfs/mkcpio.py" "$work/extra.cpio.gz" "$work/extra"
	# The kernel unpacks concatenated archives in order: ours lands on top.
	cat "$ROOTFS" "$work/extra.cpio.gz" >"$work/initrd"
else
	# The image's second disk, /dev/vdb: a tar archive of aem/ and lib/
	# (no ./ entry: it would set the guest's / to this directory's mode).
	(cd "$work/extra" && tar -cf "$work/extra.tar" --owner=0 --group=0 -- *)
fi

# shellcheck source=accel.sh
. "$HERE/accel.sh"
if [ -z "$IMAGE" ]; then
	boot=(-kernel "$KERNEL" -initrd "$work/initrd" -append "$KERNEL_CMDLINE")
else
	boot=(-kernel "$IMAGE_DIR/vmlinuz")
	[ -f "$IMAGE_DIR/initrd.img" ] && boot+=(-initrd "$IMAGE_DIR/initrd.img")
	boot+=(-append "$KERNEL_CMDLINE root=/dev/vda rw aem.guest=1"
		-drive "file=$IMAGE_DIR/debian.img,format=raw,if=virtio,snapshot=on"
		-drive "file=$work/extra.tar,format=raw,if=virtio,readonly=on"
		-netdev "user,id=net0" -device "virtio-net-pci,netdev=net0")
fi
console="$work/console.log"
status=0
timeout -k 5 "$TIMEOUT" "$QEMU" "${QEMU_BASE_ARGS[@]}" \
	"${boot[@]}" \
	-serial "file:$console" -chardev stdio,id=out,signal=off -serial chardev:out \
	${AEM_QEMU_ARGS:-} </dev/null || status=$?

problem=$(grep -E "$KERNEL_PROBLEM_RE" "$console" || true)
exit_line=$(grep -a -o 'AEM-EXIT-STATUS: [0-9]*' "$console" | tail -n1 || true)
if [ -n "$problem" ] || [ -z "$exit_line" ]; then
	{
		echo "guest: ---- console ----"
		cat "$console"
		echo "guest: -----------------"
		if [ $status -eq 124 ]; then
			echo "guest: timed out after ${TIMEOUT}s"
		elif [ -n "$problem" ]; then
			echo "guest: kernel problem on the console: $(echo "$problem" | head -n1)"
		else
			echo "guest: no exit status reported (qemu exit $status)"
		fi
	} >&2
	exit 125
fi
exit "${exit_line#AEM-EXIT-STATUS: }"
