#!/usr/bin/env bash
# The checks are functions that check() calls (SC2317).
# shellcheck disable=SC2317
# `make test-dist`: the distribution verbs end to end (DIST-6, issue 16),
# kept out of `make test` because they take minutes and download Debian
# packages on a cold cache:
#
#   1. `make deb` builds the kernel packages (ci/deb.sh);
#   2. they install with dpkg into a Debian 12 root (a chroot) that has
#      Debian's own kernel, beside it; their files are where Debian puts a
#      kernel's; a module builds out of tree against linux-headers; they
#      purge without a trace;
#   3. `make image` builds the Debian image (ci/image.sh), which boots the
#      packaged kernel, runs `uname -r`, an example, aemstat and `perf list
#      'aem:*'`, and powers
#      off (qemu/guest.sh with AEM_IMAGE=debian).
#
# One libtest-style line per check (`test dist_6_... ... ok`), then
# "N passed, N failed"; exit status non-zero on any failure.  The chroot's
# base system is cached in build/cache/ like the image's.
# Environment: KCONFIG (default|debug: which flavour's packages step 1
# and 2 test; the image is always the default flavour's).
set -uo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP" || exit 1
KCONFIG=${KCONFIG:-default}
export KCONFIG
CACHE=$TOP/build/cache
DEBS=$TOP/build/deb/$KCONFIG
MIRROR=${AEM_IMAGE_MIRROR:-http://deb.debian.org}
passed=0
failed=0
work=$(mktemp -d)
root=$work/root
cleanup() {
	umount -R "$root/proc" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

result() {
	if [ "$2" = ok ]; then
		echo "test $1 ... ok"
		passed=$((passed + 1))
	else
		echo "test $1 ... FAILED"
		echo "  $1: $3"
		failed=$((failed + 1))
	fi
}

finish() {
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ]
	exit
}

# check NAME WHY COMMAND...: one test, ok when COMMAND succeeds.
check() {
	local name=$1 why=$2
	shift 2
	if "$@" >"$work/out" 2>&1; then
		result "$name" ok
	else
		result "$name" bad "$why: $(tail -n 5 "$work/out" | tr '\n' ' ')"
	fi
}

# ---- 1. make deb
start=$(date +%s)
if ci/deb.sh >"$work/deb.log" 2>&1; then
	result dist_6_make_deb_builds_the_kernel_packages ok
	echo "  (make deb: $(($(date +%s) - start)) s)"
else
	result dist_6_make_deb_builds_the_kernel_packages bad "$(tail -n 20 "$work/deb.log")"
	finish
fi
image_deb=
for d in "$DEBS"/linux-image-*.deb; do
	case $d in *-dbg_*) ;; *) image_deb=$d ;; esac
done
release=${image_deb##*/linux-image-}
release=${release%%_*}
echo "  (packages of $release: $(find "$DEBS" -name '*.deb' -printf '%f ')"

# ---- 2. the packages in a Debian 12 root with Debian's own kernel
mkdir -p "$CACHE"
chroot_tar=$CACHE/dist-chroot-bookworm.tar
if [ ! -f "$chroot_tar" ]; then
	if ! mmdebstrap --mode=root --variant=minbase --format=tar \
		--aptopt='APT::Install-Recommends "false"' \
		--include=linux-image-amd64 bookworm "$chroot_tar.part" \
		"deb $MIRROR/debian bookworm main" \
		"deb $MIRROR/debian-security bookworm-security main" >"$work/mmdebstrap.log" 2>&1; then
		result dist_6_a_debian_12_root_bootstraps bad "$(tail -n 10 "$work/mmdebstrap.log")"
		finish
	fi
	mv "$chroot_tar.part" "$chroot_tar"
fi
mkdir -p "$root"
tar -C "$root" --numeric-owner -xpf "$chroot_tar"
debian_kernels=$(find "$root/boot" -name 'vmlinuz-*' | wc -l)
mkdir -p "$root/tmp/debs"
cp "$DEBS"/*.deb "$root/tmp/debs/"
rm -f "$root"/tmp/debs/*-dbg_*.deb
mount -t proc proc "$root/proc"

check dist_6_dpkg_installs_the_kernel_packages "dpkg -i failed" \
	chroot "$root" sh -c 'dpkg -i /tmp/debs/*.deb'
installed() {
	for p in "linux-image-$release" "linux-headers-$release" linux-libc-dev; do
		# shellcheck disable=SC2016  # dpkg-query's format
		[ "$(chroot "$root" dpkg-query -W -f='${Status}' "$p")" = "install ok installed" ] ||
			{ echo "$p is not installed"; return 1; }
	done
}
check dist_6_image_headers_and_uapi_packages_are_installed "dpkg-query" installed
kernel_files() {
	local f
	for f in "boot/vmlinuz-$release" "boot/config-$release" "boot/System.map-$release" \
		"lib/modules/$release/modules.dep" "usr/include/linux/aem.h" \
		"usr/src/linux-headers-$release/Makefile"; do
		[ -e "$root/$f" ] || { echo "no /$f"; return 1; }
	done
	grep -q '^CONFIG_AEM=y' "$root/boot/config-$release" || { echo "config without AEM"; return 1; }
	grep -rq '__NR_aem_register' "$root"/usr/include/*/asm/unistd_64.h ||
		{ echo "no __NR_aem_register in asm/unistd_64.h"; return 1; }
	# "linux-libc-dev:amd64: ..." (the package is Multi-Arch: same).
	chroot "$root" dpkg -S /usr/include/linux/aem.h | grep -Eq '^linux-libc-dev(:amd64)?: /usr/include/linux/aem.h$' ||
		{ echo "linux/aem.h does not belong to linux-libc-dev"; return 1; }
}
check dist_6_kernel_modules_and_uapi_header_are_where_debian_puts_them "files" kernel_files
beside() {
	local n
	n=$(find "$root/boot" -name 'vmlinuz-*' | wc -l)
	[ "$debian_kernels" -ge 1 ] || { echo "the root had no Debian kernel"; return 1; }
	[ "$n" -eq $((debian_kernels + 1)) ] || { echo "$n kernels in /boot, expected $((debian_kernels + 1))"; return 1; }
	chroot "$root" dpkg -l 'linux-image-*-amd64' | grep -q '^ii' ||
		{ echo "Debian's kernel is no longer installed"; return 1; }
	chroot "$root" dpkg --audit | grep . && return 1
	return 0
}
check dist_6_the_aem_kernel_installs_beside_debians_own beside beside
# A module built out of tree against the installed linux-headers package,
# as a driver vendor would: the sample module of the series.
module() {
	local m=$work/module
	mkdir -p "$m"
	cp build/linux/samples/aem/Makefile build/linux/samples/aem/*.c "$m/"
	make -s -C "$root/usr/src/linux-headers-$release" M="$m" CONFIG_SAMPLE_AEM=m modules &&
		modinfo -F vermagic "$m/aem_sample.ko" | grep -q "^$release "
}
check dist_6_a_module_builds_against_linux_headers "out-of-tree build" module
purge() {
	chroot "$root" dpkg --purge "linux-image-$release" "linux-headers-$release" || return 1
	local left
	left=$(ls -d "$root"/boot/*"$release"* "$root/lib/modules/$release" \
		"$root/usr/src/linux-headers-$release" 2>/dev/null)
	[ -z "$left" ] || { echo "left behind: $left"; return 1; }
}
check dist_6_the_packages_purge_without_a_trace "dpkg --purge" purge
umount -R "$root/proc"

# ---- 3. the image (the default flavour's packages)
if [ "$KCONFIG" != default ]; then
	finish
fi
start=$(date +%s)
if make -s image >"$work/image.log" 2>&1; then
	result dist_6_make_image_builds_the_debian_image ok
	echo "  (make image: $(($(date +%s) - start)) s)"
else
	result dist_6_make_image_builds_the_debian_image bad "$(tail -n 20 "$work/image.log")"
	finish
fi
start=$(date +%s)
# shellcheck disable=SC2016  # expanded in the guest
out=$(AEM_IMAGE=debian AEM_TIMEOUT=600 qemu/guest.sh -- '
	uname -r
	aem-demo | tail -n 3
	aem-periodic-timer --period-ms 50 --ticks 100000 >/tmp/timer.log 2>&1 &
	sleep 2
	aemstat -p $!
	kill $!
	echo "aem tracepoints in perf: $(perf list "aem:*" 2>/dev/null | grep -c "aem:.*Tracepoint")"' 2>&1)
status=$?
echo "  (the image's round trip: $(($(date +%s) - start)) s)"
image_run() {
	[ "$status" -eq 0 ] || { echo "guest exit status $status: $out"; return 1; }
	[ "$(echo "$out" | head -n1)" = "$release" ] || { echo "uname -r: $(echo "$out" | head -n1)"; return 1; }
	echo "$out" | grep -Eq '^ *[0-9]+ +aem-periodic-ti' || { echo "aemstat did not show the timer example: $out"; return 1; }
	echo "$out" | grep -Eq '^aem tracepoints in perf: [1-9]' || { echo "perf does not list the aem:* tracepoints: $out"; return 1; }
}
check dist_6_the_image_boots_the_aem_kernel_and_runs_an_example_aemstat_and_perf "image" image_run
finish
