#!/usr/bin/env bash
# Build the base initramfs: busybox (static) with its applet links, /init,
# our static Rust binaries, and an optional overlay directory.
#
#   rootfs/build.sh OUT.cpio.gz [--overlay DIR] BINARY...
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
out=$1; shift
overlay=""
if [ "${1:-}" = --overlay ]; then overlay=$2; shift 2; fi

busybox=/bin/busybox	# from busybox-static: the guest has no libc
[ -x "$busybox" ] || { echo "rootfs: busybox-static is not installed (make deps)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,aem/bin}
cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list-full); do
	[ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done
cp "$HERE/init" "$stage/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
for bin in "$@"; do
	cp "$bin" "$stage/bin/"
done
if [ -n "$overlay" ]; then
	[ -d "$overlay" ] || { echo "rootfs: ROOTFS_OVERLAY=$overlay is not a directory" >&2; exit 1; }
	cp -a "$overlay"/. "$stage"/
fi
"$HERE/mkcpio.py" "$out" "$stage" --node dev/console:600:c:5:1 --node dev/null:666:c:1:3
echo "rootfs: $out ($(du -h "$out" | cut -f1))"
