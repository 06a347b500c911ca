#!/bin/sh
# Install what dxm needs to build and test on Debian/Ubuntu (run as root).
# Does nothing when everything is already there, so it is cheap to repeat.
# systemtap-sdt-dev gives <sys/sdt.h>: the USDT probes (src/trace.h); without
# it the library builds without them.  libvulkan-dev and glslang-tools build
# the Vulkan backend (backends/vulkan); mesa-vulkan-drivers gives lavapipe,
# a CPU Vulkan device its tests run on (without one they skip).
#   --ci   also what .ci/run's reliability jobs use (valgrind, gnuplot for
#          dxm bench's plots, spin for the protocol model, clang's fuzzer
#          and sanitizer runtimes)
# When another apt or dpkg process holds the package manager's locks (an
# unattended upgrade, say), it waits for them, up to DXM_APT_WAIT seconds
# (default 300), saying what it waits for, and fails after that.
set -e
pkgs="build-essential clang meson ninja-build pkg-config libcriterion-dev util-linux systemtap-sdt-dev libvulkan-dev glslang-tools mesa-vulkan-drivers"
[ "${1:-}" = "--ci" ] && pkgs="$pkgs valgrind gnuplot-nox spin libclang-rt-14-dev"
missing=""
for p in $pkgs; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages:$missing; run as root (or: sudo $0)" >&2
	exit 1
fi

wait_max=${DXM_APT_WAIT:-300}
locks="/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock"

# The pid of a process holding one of the locks (apt and dpkg take them
# with fcntl(F_SETLK): they show in /proc/locks by inode), or nothing.
lock_holder() {
	for f in $locks; do
		[ -e "$f" ] || continue
		ino=$(stat -c %i "$f") || continue
		pid=$(awk -v ino="$ino" '{ n = split($6, d, ":");
			if (d[n] == ino) { print $5; exit } }' /proc/locks)
		if [ -n "$pid" ]; then
			echo "$pid $f"
			return
		fi
	done
}

wait_for_apt() {
	waited=0
	while held=$(lock_holder) && [ -n "$held" ]; do
		pid=${held%% *}
		if [ "$waited" -ge "$wait_max" ]; then
			echo "deps.sh: gave up after ${wait_max} s: ${held#* } is still held by pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null || echo '?')); try again when it is done, or set DXM_APT_WAIT" >&2
			exit 1
		fi
		if [ $((waited % 30)) -eq 0 ]; then
			echo "deps.sh: waiting for pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null || echo '?')) to release ${held#* } ($waited of at most ${wait_max} s)" >&2
		fi
		sleep 5
		waited=$((waited + 5))
	done
}

export DEBIAN_FRONTEND=noninteractive
# apt also waits by itself (apt 1.9.11 and later) should another process
# take the locks between the check and the command.
wait_for_apt
apt-get -o DPkg::Lock::Timeout="$wait_max" update
wait_for_apt
# shellcheck disable=SC2086 # one word per package
apt-get -o DPkg::Lock::Timeout="$wait_max" install -y --no-install-recommends $missing
