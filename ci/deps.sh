#!/usr/bin/env bash
# Install the Debian packages the build needs, only those that are missing.
# Idempotent: a second run with everything present does nothing.
set -euo pipefail

PACKAGES=(
	build-essential bc flex bison libelf-dev libssl-dev cpio rsync
	busybox-static qemu-system-x86 libclang-dev clang ccache git xz-utils
	python3 perl python3-ply python3-git rt-tests kmod debhelper
	mmdebstrap e2fsprogs
)

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all ${#PACKAGES[@]} build packages present"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing Debian packages: ${missing[*]}" >&2
	echo "deps: run 'make deps' as root, or: sudo apt-get install ${missing[*]}" >&2
	exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
