#!/bin/sh
# Build fuzz_api, replay the regression inputs, then fuzz a fixed number of
# iterations from the seed corpus (copied to a temporary directory: the
# repository is never written).  Exits non-zero on any crash, invariant
# violation, leak or timeout.
#
#   fuzz/run.sh [-runs=N] [other libFuzzer options...]
#
# Environment:
#   FUZZ_BUILD      build directory (default: build-fuzz/ at the top)
#   FUZZ_RUNS       iterations (default 20000; a -runs=N argument wins)
#   FUZZ_UNPRIV=1   also run everything as uid/gid 65534 (needs root and
#                   setpriv): the user-mode-only userfaultfd of B12
#   FUZZ_PENDING=1  also replay fuzz/regressions/pending/ (known, unfixed
#                   library bugs; each must still crash: see README.md)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${FUZZ_BUILD:-$top/build-fuzz}
runs=${FUZZ_RUNS:-20000}

"$here/build.sh" "$out"
exe=$out/fuzz_api

work=$(mktemp -d "${TMPDIR:-/tmp}/dxm-fuzz.XXXXXX")
# As root, 4 huge pages of 2 MiB in the system's pool while it runs, so
# that DXM_ALLOC_HUGE regions are made and exercised (huge_round); the
# same 4 are taken off again at the end, whatever the count is then.
hp=/proc/sys/vm/nr_hugepages
hp_added=0
if [ "$(id -u)" = 0 ] && [ -w "$hp" ] &&
	echo $(($(cat "$hp") + 4)) >"$hp" 2>/dev/null; then
	hp_added=4
fi
cleanup() {
	rm -rf "$work"
	if [ "$hp_added" -gt 0 ]; then
		echo $(($(cat "$hp") - hp_added)) >"$hp" 2>/dev/null
		hp_added=0
	fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# as_user USER CMD...: run as root (USER=root) or as uid 65534
as_user() {
	u=$1
	shift
	if [ "$u" = root ]; then
		"$@"
	else
		setpriv --reuid=65534 --regid=65534 --clear-groups \
			--inh-caps=-all --bounding-set=-all "$@"
	fi
}

users=root
if [ "${FUZZ_UNPRIV:-0}" = 1 ]; then
	if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null 2>&1; then
		echo "run.sh: FUZZ_UNPRIV=1 needs root and setpriv(1)" >&2
		exit 1
	fi
	users="root nobody"
	chmod -R a+rX "$out"
	chmod a+rx "$work"
fi

status=0
for u in $users; do
	echo "=== fuzz_api as $u"
	# 1. regressions: every input that once crashed must pass now
	regs=$(find "$here/regressions" -maxdepth 1 -type f ! -name '*.md' | sort)
	if [ -n "$regs" ]; then
		# shellcheck disable=SC2086
		if ! as_user "$u" "$exe" -timeout=10 $regs >"$work/reg.log" 2>&1; then
			tail -n 60 "$work/reg.log"
			echo "run.sh: a regression input fails (as $u)" >&2
			status=1
			continue
		fi
		echo "regressions: $(echo "$regs" | wc -l) inputs pass"
	fi
	# 2. pending: known library bugs, each input must still reproduce
	if [ "${FUZZ_PENDING:-0}" = 1 ]; then
		for f in $(find "$here/regressions/pending" -type f ! -name '*.md' | sort); do
			if FUZZ_HIT_KNOWN=all as_user "$u" "$exe" -timeout=10 "$f" \
				>"$work/pending.log" 2>&1; then
				echo "pending: $(basename "$f") passes as $u" \
				     "(fixed? then move it to fuzz/regressions/)"
			else
				echo "pending: $(basename "$f") still fails:" \
				     "$(grep -m1 -E 'INVARIANT|ERROR: (libFuzzer|AddressSanitizer)' "$work/pending.log")"
			fi
		done
	fi
	# 3. fuzz a fixed number of iterations from the seeds
	corpus=$work/corpus-$u
	mkdir -p "$corpus" "$work/art-$u"
	cp "$here"/corpus/* "$corpus"/
	[ "$u" = root ] || chown -R 65534:65534 "$corpus" "$work/art-$u"
	start=$(date +%s)
	if ! as_user "$u" "$exe" -runs="$runs" -timeout=10 -max_len=512 \
		-artifact_prefix="$work/art-$u/" -print_final_stats=1 "$@" \
		"$corpus" >"$work/fuzz.log" 2>&1; then
		grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)|NEW_FUNC' "$work/fuzz.log" |
			tail -n 80
		for a in "$work/art-$u"/*; do
			[ -f "$a" ] || continue
			mkdir -p "$top/build-fuzz-artifacts"
			cp "$a" "$top/build-fuzz-artifacts/"
			echo "run.sh: input saved as build-fuzz-artifacts/$(basename "$a")"
		done
		echo "run.sh: fuzz_api failed as $u (see fuzz/README.md)" >&2
		status=1
		continue
	fi
	grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
		"$work/fuzz.log" || true
	echo "fuzz_api as $u: $runs runs in $(($(date +%s) - start)) s, no failure"
done
exit $status
