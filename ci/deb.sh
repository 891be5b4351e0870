#!/usr/bin/env bash
# `make deb`: Debian packages of the AEM kernel, built by the kernel's own
# `bindeb-pkg` from the patched tree and the CGL config (DIST-3):
#
#   linux-image-<release>    the kernel, its modules, System.map, config
#   linux-headers-<release>  for building modules against it (samples/aem)
#   linux-libc-dev           the UAPI headers, linux/aem.h and the AEM
#                            system call numbers included
#
# <release> is 6.12.<n>-aem (KCONFIG=default) or 6.12.<n>-aem-debug
# (KCONFIG=debug: KASAN, lockdep, kmemleak), so both flavours install beside
# Debian's own kernel and beside each other.  The packages land in
# build/deb/<flavour>/; the script prints their paths.
#
# The packages build in an object directory of their own
# (build/deb-<flavour>) with the configuration `make kernel` uses, so that a
# package build never relinks the kernel the tests boot.  It sits at the
# same depth as build/obj-<flavour>, so that the compiler sees the same
# relative paths and ccache (CCACHE_BASEDIR=build) hits for every object
# `make kernel` compiled.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
KCONFIG=${KCONFIG:-default}
BUILD=$TOP/build
TREE=$BUILD/linux
# bindeb-pkg writes its packages to the object directory's parent.
PKGDIR=$BUILD
OBJ=$BUILD/deb-$KCONFIG
OUT=$BUILD/deb/$KCONFIG
LOCK=$BUILD/.kernel-build.lock
JOBS=${JOBS:-$(nproc)}

log() { echo "deb: $*" >&2; }

case $KCONFIG in
default) suffix= ;;
debug) suffix=-debug ;;
*) echo "deb: KCONFIG must be 'default' or 'debug', not '$KCONFIG'" >&2; exit 2 ;;
esac

mkdir -p "$BUILD"
# The tree and its configuration, as `make kernel` makes them.
flock "$LOCK" ci/kernel.sh build >&2

# What the packages are made of: the pinned source, the series and the
# configuration.  Unchanged since the last build: nothing to do (a rebuild
# would only change the packages' timestamps, and `make image` with them).
stamp=$( (cat kernel-patches/pin "$BUILD/obj-$KCONFIG/.config"; cat kernel-patches/*.patch; echo "$suffix") |
	sha256sum | cut -d' ' -f1)
shopt -s nullglob
old=("$OUT"/linux-image-*.deb)
if [ ${#old[@]} -gt 0 ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
	log "packages up to date"
	ls -1 "$OUT"/*.deb
	exit 0
fi

cc=gcc
command -v ccache >/dev/null && cc="ccache gcc"
export CCACHE_BASEDIR="$BUILD"
mkdir -p "$OBJ"
cp "$BUILD/obj-$KCONFIG/.config" "$OBJ/.config"
make -s -C "$TREE" O="$OBJ" CC="$cc" LOCALVERSION="$suffix" olddefconfig >&2

rm -f "$PKGDIR"/*.deb "$PKGDIR"/*.buildinfo "$PKGDIR"/*.changes

release=$(make -s -C "$TREE" O="$OBJ" LOCALVERSION="$suffix" kernelrelease)
log "building packages of $release (-j$JOBS, CC='$cc')"
start=$(date +%s)
# KDEB_PKGVERSION: the release and a build number of 1, so that the
# version orders after the plain release (dpkg --compare-versions).
flock "$LOCK" make -s -C "$TREE" O="$OBJ" CC="$cc" LOCALVERSION="$suffix" \
	-j"$JOBS" KDEB_PKGVERSION="$release-1" KDEB_COMPRESS=xz KDEB_SOURCENAME=linux-aem \
	KBUILD_BUILD_USER=aem KBUILD_BUILD_HOST=aem-linux bindeb-pkg >&2
log "built in $(($(date +%s) - start)) s"

rm -rf "$OUT"
mkdir -p "$OUT"
debs=("$PKGDIR"/*.deb)
[ ${#debs[@]} -gt 0 ] || { echo "deb: bindeb-pkg made no package" >&2; exit 1; }
mv "${debs[@]}" "$OUT"/
mv "$PKGDIR"/*.buildinfo "$PKGDIR"/*.changes "$OUT"/ 2>/dev/null || true
echo "$stamp" >"$OUT/.stamp"
ls -1 "$OUT"/*.deb
