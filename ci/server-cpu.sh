#!/usr/bin/env bash
# The HTTP servers' own CPU per request, in one icount-lens boot, without
# perf4's memory sampling (issue 15): each server in turn serves
# http-load's 100 keep-alive clients; prints the server's utime and stime
# (clock ticks, /proc/PID/stat) before and after, and http-load's line;
# no warm-up, so the ticks and the requests counted cover the same time.
#
#   ci/server-cpu.sh [SERVER...]        (default: http-epoll http-aem http-uring)
#
# Environment: IDLE (idle connections, 0), DUR (measured seconds, 5),
# MEMCG=1 (each server in a memory cgroup of its own, as perf4 does).
# The servers and http-load are built here and copied into the guest, so
# that a stale initramfs cannot measure old binaries.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
order=${*:-http-epoll http-aem http-uring}
# Static, like every guest program (the initramfs has no C library).
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build -q --release --target x86_64-unknown-linux-gnu -p aem-http
files=()
for s in $order http-load; do
	files+=(--file "target/x86_64-unknown-linux-gnu/release/$s")
done
# shellcheck disable=SC2016  # expanded in the guest
guest='
if [ -n "'"${MEMCG:-}"'" ]; then
	[ -e /sys/fs/cgroup/cgroup.controllers ] || mount -t cgroup2 none /sys/fs/cgroup
	echo +memory >/sys/fs/cgroup/cgroup.subtree_control
fi
for s in '"$order"'; do
	if [ -n "'"${MEMCG:-}"'" ]; then
		mkdir -p /sys/fs/cgroup/$s
		sh -c "echo \$\$ >/sys/fs/cgroup/$s/cgroup.procs; exec $s --addr 127.0.0.1:8080 --max-conns 20000" >/tmp/$s.log 2>&1 &
	else
		$s --addr 127.0.0.1:8080 --max-conns 20000 >/tmp/$s.log 2>&1 &
	fi
	pid=$!
	until grep -q listening /tmp/$s.log; do sleep 0.1; done
	a=$(cut -d" " -f14-15 /proc/$pid/stat)
	http-load --addr 127.0.0.1:8080 --idle '"${IDLE:-0}"' --clients 100 --warmup 0 --duration '"${DUR:-5}"' --timeout 120 >/tmp/load.out
	b=$(cut -d" " -f14-15 /proc/$pid/stat)
	echo "$s utime,stime before=${a% *},${a#* } after=${b% *},${b#* } $(cat /tmp/load.out)"
	kill $pid
	wait $pid || true
done'
AEM_MEM=2048 AEM_ACCEL=tcg AEM_SMP=1 AEM_QEMU_ARGS="-icount shift=0,sleep=off" qemu/guest.sh "${files[@]}" -- "$guest" |
	awk '/ before=/ {
		split($3, a, "[=,]"); split($4, b, "[=,]")
		for (i = 5; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "requests") r = kv[2] }
		t = b[2] + b[3] - a[2] - a[3]
		printf "%s\n  %s: %d ticks (user %d, system %d) for %d requests: %.0f instructions per request\n",
			$0, $1, t, b[2] - a[2], b[3] - a[3], r, t * 1e7 / r
	}'
