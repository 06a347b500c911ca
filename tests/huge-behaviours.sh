#!/bin/sh
# The huge-page variants of the behaviour tests: the tests named *_huge
# (tests/common.h), which skip unless DXM_TEST_HUGE=1.  Runs them in each
# PROGRAM, one program after another, with DXM_TEST_HUGE=1, as one TAP
# stream.  meson runs this under tests/hugepages.sh, which reserves the
# huge pages around all of them (as root) and puts the old count back.
#   huge-behaviours.sh [--via WRAPPER] PROGRAM...
# WRAPPER (tests/unprivileged.sh) runs each program, as a normal user.
via=
if [ "$1" = --via ]; then
	via=$2
	shift 2
fi
DXM_TEST_HUGE=1
export DXM_TEST_HUGE
out=$(mktemp) || exit 1
sum=$(mktemp) || exit 1
trap 'rm -f "$out" "$sum"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
echo "TAP version 13"
total=0
skipped=
for exe in "$@"; do
	# Two tests at a time (the huge pages reserved are sized for it).
	${via:+"$via"} "$exe" --tap --jobs 2 --filter '*/*_huge' >"$out"
	rc=$?
	# The huge variants' results, and anything but the other tests (the
	# filter reports them as skipped) and the program's plan and version.
	awk -v exe="${exe##*/}" -v rc="$rc" -v sum="$sum" '
		/^TAP version/ { next }
		/^1\.\.0 # SKIP/ { sub(/^1\.\.0 # SKIP */, ""); reason = $0;
				    next }
		/^1\.\./ { next }
		/^(not )?ok / {
			if ($0 !~ /^not ok / && $0 !~ /^ok - [^ ]*_huge( |$)/)
				next
			n++
			bad += $0 ~ /^not ok /
		}
		{ print }
		END {
			if (rc != 0 && !bad && reason == "") {
				print "not ok - " exe ": exit status " rc
				n++
			}
			print n + 0, reason > sum
		}' "$out"
	read -r n reason <"$sum"
	total=$((total + n))
	[ -n "$reason" ] && skipped=$reason
done
if [ "$total" = 0 ]; then
	echo "1..0 # SKIP ${skipped:-no huge-page variants}"
else
	echo "1..$total"
fi
