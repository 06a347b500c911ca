#!/bin/sh
# Install what dxm needs to build and test on Debian/Ubuntu (run as root).
# Does nothing when everything is already there, so it is cheap to repeat.
#   --ci   also what .ci/run's reliability jobs use (valgrind, gnuplot for
#          dxm bench's plots, spin for the protocol model, clang's fuzzer
#          and sanitizer runtimes)
set -e
pkgs="build-essential clang meson ninja-build pkg-config libcriterion-dev util-linux"
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
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends $missing
