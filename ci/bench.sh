#!/usr/bin/env bash
# `make bench`: run the benchmarks in the guest, in the two lenses of
# docs/benchmarks.md, and print the tables.
#
#   wall-clock  TCG, -smp 2: real parallelism, noisy.
#   icount      -icount shift=0,sleep=off -smp 1: guest time advances one
#               ns per instruction, so figures repeat exactly; path length.
#
# Every figure is a ratio against a peer mechanism measured in the same
# boot: TCG time is not hardware time.
#
#   PERF-1  event -> handler latency (aem-bench perf1), both lenses
#   PERF-2  latency with up to 1,000,000 idle registrations (icount)
#   PERF-3  kernel memory per registration vs epoll (memcg slab)
#   PERF-4  HTTP server on AEM vs on epoll and on io_uring, 10,000 idle
#           connections and 100 active clients (examples/http-server),
#           both lenses
#
# The run ends with one line per aim, "PERF-n aim: ... met" or "NOT met",
# from the icount lens, where the aims are stated.
#   PERF-5  blocking/unblocking delivery: a critical section through the
#           thread-area word vs a sigprocmask pair (aem-bench perf5),
#           both lenses; aim: 50x cheaper, judged in the icount lens
#   PERF-6  event -> handler latency with two CPU hogs per CPU: boosted
#           AEM handler vs unboosted vs a SCHED_FIFO epoll thread
#           (aem-bench perf6), both lenses
#   EXEC-3  handler pools: event -> handler latency on an idle pool thread
#           and request throughput with 4 pool threads, LIFO and FIFO
#           wake order, vs an epoll thread feeding 4 workers through a
#           channel (aem-bench exec3), both lenses
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
cargo build -q --release --target x86_64-unknown-linux-gnu -p aem-bench
rel=target/x86_64-unknown-linux-gnu/release
bench=$rel/aem-bench
# The HTTP servers and the load generator are in the rootfs (make rootfs).

icount() {
	AEM_ACCEL=tcg AEM_SMP=1 AEM_QEMU_ARGS="-icount shift=0,sleep=off" "$@"
}

# PERF-4 in one boot: each server in turn under the same load, in a memory
# cgroup of its own; prints the load generator's lines and the ratio table.
# The server's CPU is user + system ticks over the whole load run (the
# accepts of the 10,000 idle connections included); its memory is the
# peak growth of its cgroup's `slab` (kernel objects: sockets, files,
# epoll items or AEM registrations) and `anon` (user memory: buffers)
# over the run, per connection.
perf4() {
	local out
	out=$(AEM_MEM=2048 "$@" qemu/guest.sh -- '
		[ -e /sys/fs/cgroup/cgroup.controllers ] || mount -t cgroup2 none /sys/fs/cgroup
		echo +memory >/sys/fs/cgroup/cgroup.subtree_control
		stat() { awk -v k=$2 '"'"'$1 == k { print $2 }'"'"' /sys/fs/cgroup/$1/memory.stat; }
		for s in http-epoll http-uring http-aem; do
			mkdir -p /sys/fs/cgroup/$s
			sh -c "echo \$\$ >/sys/fs/cgroup/$s/cgroup.procs; exec $s --addr 127.0.0.1:8080 --max-conns 20000" >/tmp/$s.log 2>&1 &
			pid=$!
			until grep -q listening /tmp/$s.log; do sleep 0.1; done
			slab0=$(stat $s slab); anon0=$(stat $s anon); slab1=$slab0; anon1=$anon0
			t0=$(cut -d" " -f14-15 /proc/$pid/stat | tr " " +)
			http-load --addr 127.0.0.1:8080 --idle 10000 --clients 100 --warmup 0.5 --duration 2 --timeout 120 >/tmp/load.out &
			load=$!
			while kill -0 $load 2>/dev/null; do
				v=$(stat $s slab); [ "$v" -gt "$slab1" ] && slab1=$v
				v=$(stat $s anon); [ "$v" -gt "$anon1" ] && anon1=$v
				sleep 0.2
			done
			wait $load
			t1=$(cut -d" " -f14-15 /proc/$pid/stat | tr " " +)
			echo "$s $(cat /tmp/load.out) server_ticks=$(( (t1) - (t0) )) slab_per_conn=$(( (slab1 - slab0) / 10100 )) anon_per_conn=$(( (anon1 - anon0) / 10100 ))"
			kill $pid; wait $pid
		done')
	echo "$out" | sed 's/^/  /'
	echo "$out" | awk '
		{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1]] = kv[2] } }
		END {
			e = "http-epoll"; u = "http-uring"; a = "http-aem"
			cpu[e] = v[e, "server_ticks"] / v[e, "requests"]
			cpu[u] = v[u, "server_ticks"] / v[u, "requests"]
			cpu[a] = v[a, "server_ticks"] / v[a, "requests"]
			printf "%-8s %-36s %8s %7s %8s %7s %7s\n", "id", "HTTP server, 10,000 idle + 100 clients", "req/s", "p99 us", "CPU/req", "slab/c", "anon/c"
			row("peer", "epoll server", e)
			row("PERF-4", "io_uring server (multishot, buf ring)", u)
			row("PERF-4", "AEM server (accept + read inline)", a)
			verdict(sprintf("server CPU per request <= 0.8x epoll and <= io_uring: %.2fx epoll, %.2fx io_uring", cpu[a] / cpu[e], cpu[a] / cpu[u]), cpu[a] <= 0.8 * cpu[e] && cpu[a] <= cpu[u])
			verdict(sprintf("p99 <= epoll: %.2fx", v[a, "p99_us"] / v[e, "p99_us"]), v[a, "p99_us"] <= v[e, "p99_us"])
			verdict(sprintf("kernel memory per connection <= epoll: %d vs %d bytes of slab", v[a, "slab_per_conn"], v[e, "slab_per_conn"]), v[a, "slab_per_conn"] <= v[e, "slab_per_conn"])
		}
		function row(id, name, s) {
			printf "%-8s %-36s %8d %7d %8.2f %7d %7d\n", id, name, v[s, "rps"], v[s, "p99_us"], cpu[s] / cpu["http-epoll"], v[s, "slab_per_conn"], v[s, "anon_per_conn"]
		}
		function verdict(what, ok) { printf "%-8s aim: %s %s\n", "PERF-4", what, ok ? "met" : "NOT met" }'
	echo "(CPU/req: server ticks per request, relative to the epoll server; slab/c, anon/c: peak growth of slab and anon in the memory.stat of the server cgroup over the run, bytes per connection)"
}

# PERF-6's reference: cyclictest (Debian rt-tests, `make deps`) on CPU 0
# with two hogs per CPU, in a guest whose initramfs adds it and the
# libraries it links (the guest has no C library of its own).  Prints the
# same columns as aem-bench perf6, from cyclictest's microsecond histogram.
cyclictest_rootfs=build/rootfs-cyclictest.cpio.gz
overlay=build/cyclictest-overlay
rm -rf "$overlay"
mkdir -p "$overlay/usr/bin"
cp /usr/bin/cyclictest "$overlay/usr/bin/"
for lib in $(ldd /usr/bin/cyclictest | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
	mkdir -p "$overlay$(dirname "$lib")"
	cp -L "$lib" "$overlay$lib"
done
rootfs/build.sh "$cyclictest_rootfs" --overlay "$overlay" >/dev/null
cyclictest_row() {
	AEM_ROOTFS=$cyclictest_rootfs "$@" qemu/guest.sh -- '
		for c in $(seq 0 $(($(nproc) - 1))); do
			for k in 1 2; do taskset -c $c sh -c "while :; do :; done" & done
		done
		cyclictest -q -m -p 90 -t 1 -a 0 -i 1000 -l 300 -h 20000' |
	awk '
		/^[0-9]+ +[0-9]+/ { n = $2 + 0; if (n) { h[$1 + 0] = n; total += n } }
		/^# Max Latencies/ { max = $4 + 0 }
		END {
			for (us = 0; us <= 20000; us++) {
				cum += h[us]
				if (!p50 && cum * 2 >= total) p50 = us
				if (!p99 && cum * 100 >= total * 99) p99 = us
			}
			printf "%-8s %-44s %9d %9d %10d\n", "ref", "cyclictest, SCHED_FIFO 90 timer (us x 1000)", p50 * 1000, p99 * 1000, max * 1000
		}'
}

echo "kernel $(qemu/guest.sh uname -r), $(date -u +%Y-%m-%d)"
echo
echo "== wall-clock lens (TCG, -smp 2)"
AEM_ACCEL=tcg qemu/guest.sh --file "$bench" aem-bench perf1
echo
AEM_ACCEL=tcg qemu/guest.sh --file "$bench" aem-bench perf5
echo
AEM_ACCEL=tcg qemu/guest.sh --file "$bench" aem-bench perf6
cyclictest_row env AEM_ACCEL=tcg
echo
AEM_ACCEL=tcg qemu/guest.sh --file "$bench" aem-bench exec3
echo
AEM_ACCEL=tcg qemu/guest.sh --file "$bench" aem-bench src9
echo
perf4 env AEM_ACCEL=tcg
echo
# The aims are judged in the icount lens: its lines are kept for the
# summary at the end.
icount_out=$(mktemp)
trap 'rm -f "$icount_out"' EXIT
{
	echo "== icount lens (-icount shift=0,sleep=off, -smp 1)"
	icount qemu/guest.sh --file "$bench" aem-bench perf1
	echo
	AEM_MEM=2048 icount qemu/guest.sh --file "$bench" aem-bench perf2
	echo
	icount qemu/guest.sh --file "$bench" aem-bench perf3
	echo
	icount qemu/guest.sh --file "$bench" aem-bench perf5
	echo
	icount qemu/guest.sh --file "$bench" aem-bench perf6
	cyclictest_row icount
	echo
	icount qemu/guest.sh --file "$bench" aem-bench exec3
	echo
	icount qemu/guest.sh --file "$bench" aem-bench src9
	echo
	perf4 icount
} | tee "$icount_out"
echo
echo "== aims (icount lens)"
grep -E '^PERF-[0-9] +aim: ' "$icount_out"
