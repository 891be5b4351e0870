#!/usr/bin/env bash
# The kernel pipeline: fetch the pinned Debian source, keep a git work tree
# of it with kernel-patches/ applied, build bzImage, export the series back.
#
#   ci/kernel.sh tree     create build/linux (or re-apply a changed series)
#   ci/kernel.sh build    tree + configure + bzImage + UAPI headers
#   ci/kernel.sh export   write the work tree's commits to kernel-patches/
#   ci/kernel.sh reset    discard the work tree's local work, re-apply series
#
# KCONFIG=default|debug|profile selects the config fragments and the object
# dir (profile: the function tracer, for profiling in the icount lens).
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$TOP/build"
TREE="$BUILD/linux"
PATCHES="$TOP/kernel-patches"
KCONFIG=${KCONFIG:-default}
OBJ="$BUILD/obj-$KCONFIG"
STATE="$TREE/.git/aem"	# what the tree was made from (outside the index)
JOBS=${JOBS:-$(nproc)}

# shellcheck source=../kernel-patches/pin
. "$PATCHES/pin"
# shellcheck source=kconfig.sh
. "$TOP/ci/kconfig.sh"

# FILE_PATH_CHANGES asks for a MAINTAINERS update whenever a patch adds a
# file; ours land in kernel/aem/, which patch 0001's entry already covers.
CHECKPATCH_OPTS="-q --terse --ignore FILE_PATH_CHANGES"
export CHECKPATCH_OPTS

log() { echo "kernel: $*"; }
die() { echo "kernel: error: $*" >&2; exit 1; }

series_hash() {
	{ cat "$PATCHES"/*.patch 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
}

# Download the .deb into build/download and verify it. Sets DEB.
fetch_source() {
	mkdir -p "$BUILD/download"
	local want="$VERSION" sha="$SHA256"
	if ! apt-cache madison linux-source-6.12 2>/dev/null | grep -q .; then
		[ "$(id -u)" -eq 0 ] || die "apt has no package lists; run 'apt-get update' as root"
		apt-get update -qq
	fi
	if ! apt-cache madison linux-source-6.12 | awk '{print $3}' | grep -qxF "$VERSION"; then
		want=$(apt-cache madison linux-source-6.12 | awk '{print $3}' | sort -V | tail -n1)
		[ -n "$want" ] || die "no linux-source-6.12 in the apt archive"
		sha=""
		cat >&2 <<-EOF
		#####################################################################
		# WARNING: pinned linux-source-6.12 $VERSION is gone from the archive.
		# WARNING: falling back to the newest 6.12: $want
		# WARNING: its checksum is verified by apt only, not by our pin.
		# WARNING: update kernel-patches/pin once the series is checked on it.
		#####################################################################
		EOF
	fi
	DEB="$BUILD/download/linux-source-6.12_${want//:/%3a}_all.deb"
	if [ ! -f "$DEB" ]; then
		log "downloading linux-source-6.12=$want"
		(cd "$BUILD/download" && apt-get download -q "linux-source-6.12=$want" 2>&1 |
			grep -v 'unsandboxed' || true)
		[ -f "$DEB" ] || die "download of linux-source-6.12=$want failed"
	fi
	if [ -n "$sha" ]; then
		echo "$sha  $DEB" | sha256sum -c --quiet - ||
			{ rm -f "$DEB"; die "SHA-256 mismatch for $DEB (removed)"; }
		log "verified $(basename "$DEB") sha256 $sha"
	fi
	BASE_VERSION=$want
}

create_tree() {
	fetch_source
	local tmp="$BUILD/linux.tmp"
	rm -rf "$tmp" && mkdir -p "$tmp"
	log "extracting"
	dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$tmp" ./usr/src/linux-source-6.12.tar.xz
	tar -xJf "$tmp/usr/src/linux-source-6.12.tar.xz" -C "$tmp"
	rm -rf "$tmp/usr"
	mv "$tmp/linux-source-6.12" "$tmp/linux"
	log "committing the base tree"
	(
		cd "$tmp/linux"
		git init -q -b aem
		git config user.name "AEM Linux developers"
		git config user.email "aem-dev@aem-linux.invalid"
		git config gc.auto 0
		git add -A -f .
		git commit -q -m "Debian linux-source-6.12 $BASE_VERSION"
		# Debian's .gitignore ignores every top-level path ("/*"), which
		# would hide the new files a patch adds; drop that block.
		sed -i '/^# Debian packaging/,$d' .gitignore
		sed -i '$ { /^#$/d }' .gitignore
		git commit -q -a -m "Track new files: drop Debian's top-level .gitignore rule"
		git tag aem-base
	)
	rm -rf "$TREE"
	mv "$tmp/linux" "$TREE"
	rmdir "$tmp"
	apply_series
}

apply_series() {
	(
		cd "$TREE"
		git reset -q --hard aem-base
		if ls "$PATCHES"/*.patch >/dev/null 2>&1; then
			log "applying $(ls "$PATCHES"/*.patch | wc -l) patches"
			git am -q --whitespace=nowarn "$PATCHES"/*.patch ||
				{ git am --abort; die "kernel-patches/ does not apply"; }
		fi
	)
	record_state
}

record_state() {
	mkdir -p "$STATE"
	series_hash >"$STATE/series"
	git -C "$TREE" rev-parse HEAD >"$STATE/head"
}

tree() {
	if [ ! -d "$TREE/.git" ] || [ ! -f "$STATE/head" ]; then
		create_tree
		return
	fi
	[ "$(series_hash)" = "$(cat "$STATE/series")" ] && return
	# kernel-patches/ changed (a pull, a checkout). Re-apply only when the
	# tree holds no work of its own, or we would throw that work away.
	if [ "$(git -C "$TREE" rev-parse HEAD)" = "$(cat "$STATE/head")" ] &&
	   [ -z "$(git -C "$TREE" status --porcelain --untracked-files=no)" ]; then
		log "kernel-patches/ changed: re-applying the series"
		apply_series
	else
		die "kernel-patches/ changed, and build/linux has local work.
  Keep the tree's work:   make export-patches   (overwrites kernel-patches/)
  Keep kernel-patches/:   make kernel-reset     (discards the tree's work)"
	fi
}

configure() {
	local frags=("$PATCHES/config/aem.config")
	case $KCONFIG in
	default) ;;
	debug | profile) frags+=("$PATCHES/config/$KCONFIG.config") ;;
	*) die "KCONFIG must be 'default', 'debug' or 'profile', not '$KCONFIG'" ;;
	esac
	kconfig_apply "$TREE" "$OBJ" "${frags[@]}"
}

build() {
	tree
	configure
	local cc=gcc
	command -v ccache >/dev/null && cc="ccache gcc"
	# Paths under build/ hash the same from any clone of the repository.
	export CCACHE_BASEDIR="$BUILD"
	log "building bzImage ($KCONFIG, -j$JOBS, CC='$cc')"
	# LOCALVERSION= (set, empty) stops setlocalversion from appending '+'
	# for a git tree; the version is then exactly $(kernelversion)-aem.
	make -s -C "$TREE" O="$OBJ" CC="$cc" LOCALVERSION= -j"$JOBS" bzImage
	make -s -C "$TREE" O="$OBJ" headers_install INSTALL_HDR_PATH="$OBJ/uapi" >/dev/null
	cp "$OBJ/arch/x86/boot/bzImage" "$BUILD/bzImage-$KCONFIG"
	build_modules "$cc"
	# The crates build against the default kernel's headers; the debug
	# kernel has the same UAPI.
	if [ "$KCONFIG" = default ]; then
		rm -rf "$BUILD/uapi"
		cp -r "$OBJ/uapi" "$BUILD/uapi"
	fi
	log "built $BUILD/bzImage-$KCONFIG: $(cat "$OBJ/include/config/kernel.release")"
}

# The sample module (samples/aem), built out of tree against this kernel
# as a driver vendor would build one, into build/modules-$KCONFIG; the
# guest finds it in /lib/modules (qemu/guest.sh).  A module fits the
# kernel flavour it was built for only: each flavour has its own.
build_modules() {
	local cc=$1 mod="$BUILD/modules-$KCONFIG"
	make -s -C "$TREE" O="$OBJ" CC="$cc" LOCALVERSION= -j"$JOBS" modules
	rm -rf "$mod" && mkdir -p "$mod/aem"
	cp "$TREE"/samples/aem/{Makefile,*.c} "$mod/aem/"
	make -s -C "$OBJ" M="$mod/aem" CC="$cc" CONFIG_SAMPLE_AEM=m modules
	cp "$mod/aem/aem_sample.ko" "$mod/"
	log "built $mod/aem_sample.ko"
}

export_series() {
	[ -d "$TREE/.git" ] || die "no kernel tree; run 'make kernel-tree' first"
	[ -z "$(git -C "$TREE" status --porcelain --untracked-files=no)" ] ||
		die "build/linux has uncommitted changes; commit them first"
	rm -f "$PATCHES"/*.patch
	git -C "$TREE" format-patch -q --no-signature --zero-commit -N \
		-o "$PATCHES" aem-base..HEAD
	record_state
	log "exported $(ls "$PATCHES"/*.patch 2>/dev/null | wc -l) patches to kernel-patches/"
	if [ -x "$TREE/scripts/checkpatch.pl" ]; then
		# Debian's python3 has the modules spdxcheck.py wants (make deps).
		(cd "$TREE" && PATH=/usr/bin:$PATH scripts/checkpatch.pl $CHECKPATCH_OPTS "$PATCHES"/*.patch) ||
			echo "kernel: checkpatch found problems (above)" >&2
	fi
}

case "${1:-}" in
tree) tree ;;
build) build ;;
export) export_series ;;
reset) [ -d "$TREE/.git" ] || die "no kernel tree"; apply_series ;;
*) echo "usage: $0 tree|build|export|reset" >&2; exit 2 ;;
esac
