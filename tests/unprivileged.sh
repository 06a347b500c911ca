#!/bin/sh
# Run a test program as a normal user (uid/gid 65534, no capabilities), the
# way most programs use dxm: a user-mode-only userfaultfd, no EVENT_FORK.
# meson registers every test program a second time through this wrapper.
# Run as a normal user already: nothing to drop, so the test is skipped
# (the plain run covers it).
if [ "$(id -u)" != 0 ]; then
	echo "1..0 # SKIP already unprivileged: the plain run covers it"
	exit 0
fi
if ! command -v setpriv >/dev/null 2>&1; then
	echo "1..0 # SKIP setpriv(1) (util-linux) is missing"
	exit 0
fi
exe=$1
shift
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$exe"; then
	echo "Bail out! uid 65534 cannot run $exe: make the build directory" \
	     "and its parents readable (chmod a+rX)"
	exit 1
fi
# Criterion's runner binds the socket /tmp/criterion_<its pid>.sock, and
# exec keeps this shell's pid.  A root run of the same pid killed before it
# cleaned up (a timeout, a kill) leaves that file behind, owned by root in
# the sticky /tmp: uid 65534 cannot replace it, and Criterion aborts with no
# word (SIGABRT after 0.04 s, once in a CI run).  No live process can own
# this pid's socket but us, so remove it while still root.
rm -f "/tmp/criterion_$$.sock"
exec setpriv --reuid=65534 --regid=65534 --clear-groups \
	--inh-caps=-all --bounding-set=-all "$exe" "$@"
