#!/bin/sh
# Run a test program with N more 2 MiB huge pages in the system's pool
# (/proc/sys/vm/nr_hugepages), then put the old count back, however the
# program ends.  As a normal user nothing is reserved: the program's tests
# skip unless the pool already has free pages.
#   hugepages.sh N PROGRAM [ARGS...]
n=$1
shift
f=/proc/sys/vm/nr_hugepages
old=
if [ "$(id -u)" = 0 ] && [ -w "$f" ]; then
	old=$(cat "$f")
	echo $((old + n)) >"$f" 2>/dev/null || old=
fi
restore() {
	[ -n "$old" ] && echo "$old" >"$f"
	old=
}
trap 'restore; exit 143' TERM
trap 'restore; exit 130' INT
"$@"
rc=$?
restore
exit $rc
