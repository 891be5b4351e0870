#!/usr/bin/env bash
# qemu/run.sh with AEM_IMAGE=debian (`make run IMAGE=debian`): boot the
# Debian image of `make image` (build/image/) on its own kernel, root on
# /dev/vda, changes discarded at power-off, user-mode network with the
# guest's port 8080 (http-aem.service) on the host's 127.0.0.1:AEM_HTTP_PORT.
#
# With a terminal: the serial console, a login prompt (root, no password;
# Ctrl-A X quits QEMU).  Without one, a check of the image, console in
# build/run-debian.log: the login prompt, a root login on the console,
# `uname -r` and aem-demo there, http-aem through the port forward, and
# `systemctl poweroff`; each step's time is printed.
#
# Environment: as qemu/run.sh, and AEM_HTTP_PORT (8080), AEM_TIMEOUT (600,
# the whole check).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
KCONFIG=${KCONFIG:-default}
# accel.sh's KVM probe boots this kernel with the initramfs.
# shellcheck disable=SC2034
KERNEL="$TOP/build/bzImage-$KCONFIG"
IMAGE_DIR=$TOP/build/image
PORT=${AEM_HTTP_PORT:-8080}
TIMEOUT=${AEM_TIMEOUT:-600}
[ "$KCONFIG" = default ] || { echo "run: the image has the default kernel only (KCONFIG=$KCONFIG)" >&2; exit 2; }
[ -f "$IMAGE_DIR/debian.img" ] || { echo "run: no $IMAGE_DIR/debian.img; run 'make image'" >&2; exit 2; }

# shellcheck source=accel.sh
. "$HERE/accel.sh"
boot=(-kernel "$IMAGE_DIR/vmlinuz")
[ -f "$IMAGE_DIR/initrd.img" ] && boot+=(-initrd "$IMAGE_DIR/initrd.img")
boot+=(-append "$KERNEL_CMDLINE root=/dev/vda rw"
	-drive "file=$IMAGE_DIR/debian.img,format=raw,if=virtio,snapshot=on"
	-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$PORT-:8080"
	-device "virtio-net-pci,netdev=net0")

if [ -t 0 ] && [ -t 1 ]; then
	echo "run: Debian image, kernel $(cat "$IMAGE_DIR/kernel-release"): log in as root" \
		"(no password); http-aem: http://127.0.0.1:$PORT/; Ctrl-A X quits QEMU"
	exec "$QEMU" "${QEMU_BASE_ARGS[@]}" "${boot[@]}" -serial mon:stdio
fi

log=$TOP/build/run-debian.log
work=$(mktemp -d "${TMPDIR:-/tmp}/aem-run.XXXXXX")
qemu_pid=""
cleanup() {
	[ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/console-in"
: >"$log"
timeout -k 5 "$TIMEOUT" "$QEMU" "${QEMU_BASE_ARGS[@]}" "${boot[@]}" -serial stdio \
	<"$work/console-in" > >(tee -a "$log") 2>&1 &
qemu_pid=$!
exec 3>"$work/console-in"
start=$(date +%s)

fail() {
	echo "run: FAILED: $*" >&2
	exit 1
}
# wait_for REGEX WHAT: until the console shows REGEX (QEMU still running).
wait_for() {
	until grep -qaE "$1" "$log"; do
		kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU ended before $2"
		sleep 1
	done
	echo "run: $2 after $(($(date +%s) - start)) s" >&2
}
# send LINE: a line typed on the serial console.
send() { printf '%s\r' "$1" >&3; }

wait_for 'login: ?$' "login prompt on the console"
send root
# The shell's first output: the marker computed, not the echoed input.
# shellcheck disable=SC2016
send 'echo AEM-LOGGED-IN-$((6 * 7))'
wait_for 'AEM-LOGGED-IN-42' "root logged in"
# shellcheck disable=SC2016
send 'echo AEM-UNAME=$(uname -r); aem-demo; echo AEM-EXIT-STATUS: $?'
wait_for 'AEM-EXIT-STATUS: [0-9]+' "uname -r and aem-demo done"
release=$(cat "$IMAGE_DIR/kernel-release")
grep -qaF "AEM-UNAME=$release" "$log" || fail "uname -r is not $release"
grep -qa 'AEM-EXIT-STATUS: 0' "$log" || fail "aem-demo failed"

# http-aem.service through the port forward, from the host.
reply=""
for _ in $(seq 30); do
	if { exec 4<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null; then
		printf 'GET / HTTP/1.1\r\nHost: aem\r\nConnection: close\r\n\r\n' >&4
		reply=$(timeout 10 cat <&4 2>/dev/null || true)
		exec 4<&-
		[[ "$reply" == *"hello from http-aem"* ]] && break
	fi
	sleep 2
done
[[ "$reply" == *"hello from http-aem"* ]] || fail "no answer from http-aem on 127.0.0.1:$PORT: '$reply'"
echo "run: http-aem answered on the host's 127.0.0.1:$PORT: $(head -n1 <<<"$reply" | tr -d '\r')" >&2

send 'systemctl poweroff'
rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=""
[ $rc -eq 0 ] || fail "QEMU exit $rc (124: timed out after ${TIMEOUT}s)"
grep -qaE 'reboot: Power down' "$log" || fail "no power-off on the console"
echo "run: powered off after $(($(date +%s) - start)) s" >&2
if problem=$(grep -aE "$KERNEL_PROBLEM_RE" "$log"); then
	fail "kernel problem on the console: $(head -n1 <<<"$problem")"
fi
