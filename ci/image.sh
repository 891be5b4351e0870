#!/usr/bin/env bash
# `make image`: a Debian 12 (bookworm) disk image that boots AEM Linux with
# a normal userland: systemd, a root login on the serial console, DHCP on
# QEMU's user-mode network, the kernel packages of `make deb`
# (build/deb/default), and our static programs in /usr/local/bin.
#
#   ci/image.sh [PROGRAM...]
#
# Outputs, in build/image/:
#   debian.img       raw ext4 file system (2 GiB, sparse), root=/dev/vda
#   vmlinuz          the kernel of the image's /boot, which QEMU boots with
#                    -kernel (initrd.img beside it only if the package made
#                    one: the AEM kernel needs none)
#   kernel-release   its `uname -r`
#
# The base system (mmdebstrap --variant=minbase plus PACKAGES below) is
# cached as a tarball in build/cache/, keyed by everything that goes into
# the bootstrap (delete it to take newer packages from the archive).  With
# the cache warm a build unpacks it, installs the kernel packages (dpkg -i,
# chrooted), our programs and ci/image-overlay/ (settings and units), and
# makes the file system with mkfs.ext4 -d: no loop mount.  An image whose
# inputs have not changed is not rebuilt.  Build times: docs/build-times.md.
# There is no fallback to build/bzImage-*: without the packages, or with a
# kernel whose config cannot boot the image, the build stops and says why.
#
# The image (qemu/run.sh and qemu/guest.sh with AEM_IMAGE=debian):
#   - root has no password: log in as root on the console;
#   - http-aem.service serves 0.0.0.0:8080 (qemu/run.sh forwards it to the
#     host);
#   - aem-guest.service runs qemu/guest.sh's command (kernel parameter
#     aem.guest=1, the command on a second disk, /dev/vdb) and powers off.
#
# Environment: AEM_IMAGE_DEBS (the kernel packages' directory),
# AEM_IMAGE_MIRROR (http://deb.debian.org), AEM_IMAGE_SIZE (2G),
# AEM_IMAGE_EXTRA (more Debian packages for the base system).
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
OUT=$TOP/build/image
CACHE=$TOP/build/cache
DEBS=${AEM_IMAGE_DEBS:-$TOP/build/deb/default}
MIRROR=${AEM_IMAGE_MIRROR:-http://deb.debian.org}
SIZE=${AEM_IMAGE_SIZE:-2G}
SUITE=bookworm

# The base system on top of minbase (which has apt, dpkg, login, passwd,
# tar, the shell utilities).  No recommended packages.
# shellcheck disable=SC2206  # AEM_IMAGE_EXTRA is a list of package names
# linux-perf: `perf trace -e 'aem:*'` (docs/man/aemstat.1.md).
PACKAGES=(systemd-sysv udev dbus libpam-systemd kmod iproute2 iputils-ping
	procps netbase less linux-perf ${AEM_IMAGE_EXTRA:-})
MIRRORS=(
	"deb $MIRROR/debian $SUITE main"
	"deb $MIRROR/debian $SUITE-updates main"
	"deb $MIRROR/debian-security $SUITE-security main"
)
# No manuals, documentation or translations (copyright files stay).  These
# go into the image's /etc/dpkg/dpkg.cfg.d/ too, so later installs follow.
BOOTSTRAP_OPTS=(--mode=root --variant=minbase --format=tar
	--aptopt='APT::Install-Recommends "false"'
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-include=/usr/share/locale/locale.alias')

die() { echo "image: $*" >&2; exit 1; }
elapsed() { echo $(($(date +%s) - $1)); }

command -v mmdebstrap >/dev/null || die "mmdebstrap not installed (make deps)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not installed (make deps)"
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap --mode=root, chroot)"

# The kernel: the packages of `make deb`.  No fallback to build/bzImage-*:
# an image whose /boot and /lib/modules do not match the kernel it boots
# would be a trap, so without the packages the build stops here.
shopt -s nullglob
images=("$DEBS"/linux-image-*.deb)
[ ${#images[@]} -gt 0 ] || die "no $DEBS/linux-image-*.deb: run 'make deb' first"
dbg=("$DEBS"/linux-image-*-dbg_*.deb)
[ ${#images[@]} -eq $((1 + ${#dbg[@]})) ] ||
	die "more than one linux-image package in $DEBS: ${images[*]##*/}"
debs=("$DEBS"/linux-image-*.deb "$DEBS"/linux-headers-*.deb "$DEBS"/linux-libc-dev_*.deb)
# The -dbg package (vmlinux with symbols) stays out: it is larger than the
# rest of the image.
kdebs=()
for d in "${debs[@]}"; do
	case "$d" in *-dbg_*) ;; *) kdebs+=("$d") ;; esac
done
shopt -u nullglob

# Our programs (the Makefile's GUEST_BINS).
bins=("$@")
for b in "${bins[@]}"; do
	[ -f "$b" ] || die "no program $b (make guest-bins)"
done
modules=()
for m in "$TOP"/build/modules-default/*.ko; do
	[ -f "$m" ] && modules+=("$m")
done

mkdir -p "$OUT" "$CACHE"
exec 9>"$CACHE/.image.lock"
flock 9

# ---- the base system, cached
key=$(printf '%s\n' "$SUITE" "${MIRRORS[@]}" "${BOOTSTRAP_OPTS[@]}" \
	"$(printf '%s\n' "${PACKAGES[@]}" | sort -u)" | sha256sum | cut -c1-16)
base=$CACHE/debian-$SUITE-$key.tar
start=$(date +%s)
if [ -f "$base" ]; then
	echo "image: base system cached: ${base#"$TOP"/}"
	bootstrap=cached
else
	echo "image: bootstrapping Debian $SUITE (${PACKAGES[*]}) into ${base#"$TOP"/}"
	mmdebstrap "${BOOTSTRAP_OPTS[@]}" --quiet \
		--include="$(IFS=,; echo "${PACKAGES[*]}")" \
		"$SUITE" "$base.tmp" "${MIRRORS[@]}"
	mv "$base.tmp" "$base"
	bootstrap="$(elapsed "$start") s"
	echo "image: bootstrap took $bootstrap"
	# Older bootstraps (other package lists) are not needed any more.
	find "$CACHE" -maxdepth 1 -name "debian-$SUITE-*.tar" ! -name "${base##*/}" -delete
fi

# ---- up to date?
self=$( (cat "$0"; cd "$TOP/ci/image-overlay" && find . -type f | sort | xargs cat) | sha256sum | cut -c1-16)
inputs=$( (echo "$key $self $SIZE"; sha256sum "${kdebs[@]}" "${bins[@]}" "${modules[@]}") |
	sed "s|$TOP/||" | sha256sum | cut -c1-16)
if [ -f "$OUT/debian.img" ] && [ -f "$OUT/vmlinuz" ] &&
	[ "$(cat "$OUT/inputs" 2>/dev/null)" = "$inputs" ]; then
	echo "image: build/image/debian.img is up to date ($(cat "$OUT/kernel-release"))"
	exit 0
fi

# ---- the image's tree: the base, the kernel, our programs and settings
istart=$(date +%s)
root=$(mktemp -d "$OUT/.root.XXXXXX")
trap 'rm -rf "$root" "$OUT/.debian.img.tmp"' EXIT
tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base"

# in_root CMD...: run CMD chrooted, with its own /proc (gone when it ends).
in_root() {
	unshare --mount --pid --fork --mount-proc="$root/proc" \
		chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive "$@"
}

mkdir -p "$root/tmp/aem-debs"
cp "${kdebs[@]}" "$root/tmp/aem-debs/"
echo "image: installing ${kdebs[*]##*/}"
in_root sh -c 'dpkg -i /tmp/aem-debs/*.deb' >"$OUT/dpkg.log" 2>&1 ||
	{ cat "$OUT/dpkg.log" >&2; die "dpkg -i of the kernel packages failed"; }
rm -rf "$root/tmp/aem-debs"

install -m 0755 "${bins[@]}" "$root/usr/local/bin/"
if [ ${#modules[@]} -gt 0 ]; then
	# Where the examples and tests look for it (as in the initramfs).
	install -m 0644 "${modules[@]}" "$root/lib/modules/"
fi

# Settings, units and scripts: the tree ci/image-overlay/ (modes as in git).
cp -R --preserve=mode "$TOP/ci/image-overlay/." "$root/"
in_root passwd -q -d root
in_root systemctl -q enable systemd-networkd.service http-aem.service aem-guest.service
# Timers that would download package lists in the middle of a test.
in_root systemctl -q mask apt-daily.timer apt-daily-upgrade.timer
# A machine id of its own: no "first boot" (systemd-firstboot prompts).
rm -f "$root/etc/machine-id"
in_root systemd-machine-id-setup >/dev/null 2>&1

# ---- the kernel QEMU boots, from the image's /boot
vmlinuz=("$root"/boot/vmlinuz-*)
if [ ${#vmlinuz[@]} -ne 1 ] || [ ! -f "${vmlinuz[0]}" ]; then
	die "expected one /boot/vmlinuz-* in the image: ${vmlinuz[*]##*/}"
fi
release=${vmlinuz[0]##*/vmlinuz-}
initrd=$root/boot/initrd.img-$release
# What the kernel needs to boot this image with no initrd: the disk and
# the network on virtio-pci, ext4, and what systemd and its DHCP client
# require.  (With an initrd, modules do.)
config=$root/boot/config-$release
if [ -f "$config" ]; then
	missing=()
	for opt in BLOCK PCI VIRTIO_PCI VIRTIO_BLK EXT4_FS NETDEVICES VIRTIO_NET PACKET \
		DEVTMPFS CGROUPS INOTIFY_USER FHANDLE SIGNALFD TIMERFD EPOLL UNIX; do
		if [ -f "$initrd" ]; then
			grep -qE "^CONFIG_$opt=[ym]$" "$config" || missing+=("CONFIG_$opt=y")
		else
			grep -qx "CONFIG_$opt=y" "$config" || missing+=("CONFIG_$opt=y")
		fi
	done
	[ ${#missing[@]} -eq 0 ] ||
		die "kernel $release cannot boot the image; its config lacks: ${missing[*]}"
else
	echo "image: WARNING: no /boot/config-$release in the image: kernel options not checked" >&2
fi
cp "${vmlinuz[0]}" "$OUT/vmlinuz.tmp"
rm -f "$OUT/initrd.img"
[ -f "$initrd" ] && cp "$initrd" "$OUT/initrd.img"

# ---- the file system: mkfs.ext4 -d copies the tree, no loop mount
rm -f "$OUT/.debian.img.tmp"
truncate -s "$SIZE" "$OUT/.debian.img.tmp"
mkfs.ext4 -q -F -L aem-root -d "$root" "$OUT/.debian.img.tmp"
mv "$OUT/.debian.img.tmp" "$OUT/debian.img"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$release" >"$OUT/kernel-release"
echo "$inputs" >"$OUT/inputs"
used=$(du -sh --apparent-size "$root" | cut -f1)
echo "image: build/image/debian.img: Debian $SUITE, kernel $release, $used of files in $SIZE;" \
	"bootstrap $bootstrap, image $(elapsed "$istart") s, total $(elapsed "$start") s"
