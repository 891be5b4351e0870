# AEM Linux: the verbs.  `make run` boots the image and runs the demo;
# `make test` builds everything from a fresh clone and runs every test.
#
#   make deps            install missing Debian build packages (root)
#   make kernel          fetch the pinned source, apply kernel-patches/, build
#                        (KCONFIG=debug: KASAN, lockdep, kmemleak, UBSAN)
#   make kernel-tree     the patched git work tree, build/linux
#   make export-patches  build/linux's commits -> kernel-patches/
#   make kernel-reset    discard build/linux's work, re-apply kernel-patches/
#   make rootfs          build/rootfs.cpio.gz (ROOTFS_OVERLAY=DIR adds files)
#   make run             boot and run the demo (a shell when on a terminal);
#                        IMAGE=debian: boot the Debian image, a serial login
#   make deb             Debian packages of the kernel: linux-image, linux-headers,
#                        linux-libc-dev (linux/aem.h) in build/deb/$(KCONFIG)
#   make image           build/image/debian.img: Debian 12 (systemd, a root
#                        login on the serial console, DHCP) with the kernel
#                        packages of build/deb and our programs (ci/image.sh)
#   make guest CMD='..'  run CMD in a fresh guest; its output, and its exit
#                        status (exactly, from qemu/guest.sh)
#   make test            everything, ending in "N passed, N failed"
#   make test-debug      the conformance suite on the debug kernel (KASAN,
#                        lockdep, kmemleak scan after each test binary)
#   make test-dist       make deb, the packages in a Debian 12 chroot, make
#                        image and a boot of it (minutes; not in make test)
#   make fuzz            aem-fuzz: 1,000,000 random AEM calls in a debug-kernel
#                        guest, then a kmemleak scan (FUZZ_SEED, FUZZ_CALLS, ...)
#   make bench           the benchmark table
#   make conformance-tap build aem-conformance-tap, the conformance suite in
#                        one static binary with TAP output, for an installed
#                        AEM kernel (docs/conformance-tap.md); prints its path
#   make kselftest       upstream selftests (signals, timers, futex, rseq,
#                        sched, epoll) on a stock and on the AEM kernel
#   make bindings        regenerate aem-syscalls' UAPI bindings

SHELL := /bin/bash
KCONFIG ?= default
export KCONFIG

TARGET := x86_64-unknown-linux-gnu
# Guest programs are static: the initramfs has no libc.  Set per target so
# that build scripts and proc-macros on the host stay dynamic.
GUEST_CARGO := CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	cargo
GUEST_BINS := $(addprefix target/$(TARGET)/release/,aem-demo http-aem http-epoll http-uring http-load \
	aem-echo-server aem-pool-server aem-fork-server aem-periodic-timer aem-tokio-echo \
	aem-topic-pubsub aem-pressure-watch aem-word-watch aem-module-events aemstat)

.PHONY: deps kernel kernel-tree export-patches kernel-reset rootfs run guest \
	test test-debug fuzz bench bindings guest-bins kselftest conformance-tap image

deps:
	@ci/deps.sh

kernel: deps
	@ci/kernel.sh build

kernel-tree: deps
	@ci/kernel.sh tree
	@echo "kernel tree: build/linux (commit your work there, then 'make export-patches')"

export-patches:
	@ci/kernel.sh export

kernel-reset:
	@ci/kernel.sh reset

guest-bins:
	@$(GUEST_CARGO) build -q --release --target $(TARGET) -p aem-demo -p aem-http \
		-p aem-echo-server -p aem-pool-server -p aem-fork-server -p aem-periodic-timer \
		-p aem-tokio-echo -p aem-topic-pubsub -p aem-pressure-watch -p aem-word-watch \
		-p aem-module-events -p aemstat

rootfs: deps guest-bins
	@rootfs/build.sh build/rootfs.cpio.gz $(if $(ROOTFS_OVERLAY),--overlay $(ROOTFS_OVERLAY)) $(GUEST_BINS)

ifeq ($(IMAGE),debian)
run: image
	@AEM_IMAGE=debian qemu/run.sh
else
run: kernel rootfs
	@qemu/run.sh
endif

# The base system is cached in build/cache/; docs/build-times.md has times.
deb: deps
	@ci/deb.sh

image: deps deb guest-bins
	@ci/image.sh $(GUEST_BINS)

# make deb, the packages in a Debian 12 chroot, make image and a boot of
# the image: minutes and downloads, so not part of `make test`.
test-dist: deps guest-bins
	@ci/test-dist.sh

# The build's chatter goes to stderr, so stdout is the command's output.
# Make turns any failure into its own exit status 2 and names the guest's
# ("Error N"); qemu/guest.sh itself exits with the guest's status.
guest:
	@test -n "$(CMD)" || { echo "usage: make guest CMD='command'" >&2; exit 2; }
	@$(MAKE) -s kernel rootfs >&2
	@qemu/guest.sh -- "$(CMD)"

test:
	@ci/test.sh

test-debug: deps rootfs
	@KCONFIG=debug ci/kernel.sh build
	@KCONFIG=debug ci/conformance.sh
	@KCONFIG=debug FUZZ_CALLS=$${FUZZ_CALLS:-20000} ci/fuzz.sh

fuzz: deps rootfs
	@KCONFIG=debug ci/kernel.sh build
	@KCONFIG=debug ci/fuzz.sh

bench: kernel rootfs
	@ci/bench.sh

# Stock kernel (no kernel-patches/), the AEM kernel, the selftests, one
# guest on each kernel, the table: build/kselftest/results.txt.  The script
# builds both kernels under build/.kernel-build.lock.
kselftest: deps
	@ci/kselftest.sh

# The dev profile, as `cargo test` builds the suite (debug assertions on).
# The remapping gives the test files the paths `cargo test` gives them
# (conformance/tests/shim.rs: panic messages, which a test checks).  The
# API-1 tests embed C programs built against build/uapi/include (from
# `make kernel`); without it they fail, saying so.
conformance-tap:
	@$(GUEST_CARGO) rustc -q --target $(TARGET) -p aem-conformance-tap --bin aem-conformance-tap \
		-- --remap-path-prefix=conformance/tap/..=conformance >&2
	@echo target/$(TARGET)/debug/aem-conformance-tap

bindings: kernel
	cargo run -q -p aem-uapi-gen
