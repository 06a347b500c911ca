#!/usr/bin/env bash
# Model-check dxm's page protocol (model/dxm.pml), and the races of the
# teardown, the fork park, vt_lock and the raw-fork repair (teardown.pml,
# park.pml, vtlock.pml, rawfork.pml)
# with spin.
#
#   model/check.sh                 the checks (safety, progress, the known
#                                  livelocks, a known deadlock); exit 0 iff
#                                  all as expected
#   model/check.sh --mutants       also the broken variants: each must fail
#   model/check.sh --variants      also other orders and known-harmless or
#                                  proposed changes, each with its expected
#                                  verdict (README.md)
#   model/check.sh --full          also the bigger configurations (~8 GB,
#                                  several minutes)
#   model/check.sh --only NAME...  just the named checks (see --list)
#   model/check.sh --list          the checks, one a line
#   model/check.sh --tap ...       report in TAP (for meson's protocol: 'tap')
#
# Everything is built in a temporary directory, removed on success (kept,
# and named, when a check does not give the expected result, with the
# trail to replay: cd DIR && spin FLAGS -t -p -g MODEL.pml, FLAGS the
# check's -D flags, as the failure line prints).
# Environment: DXM_MODEL_JOBS (parallel checks, default min(nproc, 2)),
# DXM_MODEL_MEMLIM (MB per check, default 3000).
# Exit status: 0 all as expected, 1 some check not, 77 spin or a C compiler
# missing (skipped; with --tap: a "1..0 # SKIP" plan and 0).
set -u
here=$(cd "$(dirname "$0")" && pwd)

# name | kind | spin -D flags | expect | what
#   kind:   safety (assertions, invalid end states) or ltl:PROPERTY, then
#           @FILE for a model other than dxm.pml (in this directory)
#   expect: pass, or fail:assert / fail:end / fail:cycle
base=(
"safety-2cpu-2dev|safety|-DREC_CAP=1|pass|(a)(b)(c)+deadlock: 1 handler, 2 CPU threads, 2 devices, devices retry for ever"
"safety-2handlers|safety|-DNH=2 -DNDEV_RUN=1 -DREC_CAP=1|pass|(a)(b)(c)+deadlock: 2 handlers, 2 CPU threads, 1 device, retry for ever"
"safety-k2|safety|-DK_CPU=2 -DK_DEV=2 -DNDEV_RUN=1 -DREC_CAP=1|pass|(a)(b)(c)+deadlock: 2 increments each, 2 CPU threads, 1 device"
"resolved-2cpu-2dev|ltl:resolved|-DDEV_TRIES=1|pass|(d) every fault resolved: 2 CPU threads, 2 devices (1 attempt each)"
"completes-2cpu-2dev|ltl:completes|-DDEV_TRIES=1|pass|(d) every faulting access completes: 2 CPU threads, 2 devices (1 attempt each)"
"resolved-2handlers|ltl:resolved|-DNH=2 -DNDEV_RUN=1 -DDEV_TRIES=2|pass|(d) every fault resolved: 2 handlers, 1 device (2 attempts)"
"completes-2handlers|ltl:completes|-DNH=2 -DNDEV_RUN=1 -DDEV_TRIES=2|pass|(d) every faulting access completes: 2 handlers, 1 device (2 attempts)"
"resolved-k2|ltl:resolved|-DK_CPU=2 -DK_DEV=2 -DNDEV_RUN=1 -DDEV_TRIES=2|pass|(d) every fault resolved: 2 increments each, 1 device (2 attempts)"
"completes-k2|ltl:completes|-DK_CPU=2 -DK_DEV=2 -DNDEV_RUN=1 -DDEV_TRIES=2|pass|(d) every faulting access completes: 2 increments each, 1 device (2 attempts)"
"livelock-unbounded|ltl:completes|-DNCPU_RUN=1 -DNDEV_RUN=1|fail:cycle|known: with a device that retries for ever an access can starve (README, Progress)"
"livelock-devices|ltl:resolved|-DNCPU_RUN=1|fail:cycle|known: two devices that retry for ever can keep a fault deferred for ever (README, Progress)"
"livelock-unbounded/c-order|ltl:completes|-DNCPU_RUN=1 -DNDEV_RUN=1 -DLIST_ORDER|fail:cycle|the same livelock with the callbacks in the C list's order"
"livelock-devices/c-order|ltl:resolved|-DNCPU_RUN=1 -DLIST_ORDER|fail:cycle|the same livelock with the callbacks in the C list's order"
"teardown|safety@teardown.pml|-DEAGAIN=0|pass|dxm_free of adopted memory vs a conversion, a restore inside (fork prepare, mprotect, range_fault) and a CPU fault: no lost data, no deadlock"
"teardown-requeue|safety@teardown.pml|-DRESTORER=0|pass|dxm_free vs a conversion and a CPU fault whose restore is re-queued on EAGAIN (defer_dying, hand-back)"
"teardown-all|safety@teardown.pml||pass|the whole teardown model: a conversion, a restore inside waiting (PTC_WAIT) for a page whose restore the handler re-queued on EAGAIN, a CPU fault, dxm_free"
"park|safety@park.pml||pass|2 handlers, 2 forks in a row: every handler parked while fork() runs, every fork completes"
"park-completes|ltl:forks_done@park.pml||pass|2 handlers, 2 forks in a row: every fork completes (weak fairness)"
"vtlock|safety@vtlock.pml||pass|munmap's unread UNMAP event, a move-in that naps on EAGAIN, mprotect, the handler: no deadlock on vt_lock"
"rawfork|safety@rawfork.pml||pass|the raw-fork repair of a LOCKED page that the device unlocks, the CPU takes back and the device takes again: no staging hole read, the child gets the data"
"rawfork-retake3|safety@rawfork.pml|-DRETAKE=3|pass|the same, the device taking the page again three times"
)
mutants=(
"BUG_MAP_BEFORE_NOTIFY|safety|-DREC_CAP=1 -DBUG_MAP_BEFORE_NOTIFY|fail:assert|handler restores the mapping before the notifiers ran"
"BUG_ZAP_BEFORE_LOCK|safety|-DREC_CAP=1 -DBUG_ZAP_BEFORE_LOCK|fail:assert|make_exclusive zaps before the CAS to PS_LOCKED"
"BUG_NO_MAPPING_WAIT|safety|-DREC_CAP=1 -DBUG_NO_MAPPING_WAIT|fail:assert|make_exclusive converts a page while PS_MAPPING"
"BUG_CB_NO_LOCK|safety|-DREC_CAP=1 -DBUG_CB_NO_LOCK|fail:assert|the driver's invalidate callback does not take m->lock"
"BUG_EARLY_UNLOCK_NO_RETRY|safety|-DREC_CAP=1 -DEARLY_UNLOCK -DNO_READ_RETRY|fail:assert|driver unlocks before installing and skips read_retry"
"BUG_EARLY_UNLOCK_NO_SET_SEQ|safety|-DREC_CAP=1 -DEARLY_UNLOCK -DBUG_NO_SET_SEQ|fail:assert|driver unlocks before installing; invalidate_op does not set_seq"
"BUG_UNLOCK_NO_RELEASE|safety|-DREC_CAP=1 -DBUG_UNLOCK_NO_RELEASE|fail:end|exclusive_unlock does not release the deferred faults"
"BUG_DEFER_PUSH_LATE|safety|-DREC_CAP=1 -DBUG_DEFER_PUSH_LATE|fail:end|try_defer queues the record after dropping defer_mtx"
"BUG_DEFER_BLIND|safety|-DREC_CAP=1 -DBUG_DEFER_BLIND|fail:end|try_defer stores s|PS_WAITERS without a CAS (the value it loaded)"
"BUG_UNLOCK_NO_RELEASE/ltl|ltl:resolved|-DDEV_TRIES=1 -DBUG_UNLOCK_NO_RELEASE|fail:cycle|the same, seen by the progress property"
"BUG_DETACH_FIRST|safety@teardown.pml|-DEAGAIN=0 -DBUG_DETACH_FIRST|fail:assert|dxm_free detaches the view before it waits for those inside (old order)"
"BUG_RESTORER_OUTSIDE|safety@teardown.pml|-DEAGAIN=0 -DBUG_RESTORER_OUTSIDE|fail:assert|the restore (old fork prepare handler) does not enter the region"
"BUG_ONE_SHOT_KICK|safety@park.pml|-DBUG_ONE_SHOT_KICK|fail:end|the fork kicks the handlers once through the shared wake_fd, waits with no timeout"
"BUG_ONE_SHOT_KICK+TIMEOUT|safety@park.pml|-DBUG_ONE_SHOT_KICK -DBUG_TIMEOUT|fail:assert|the same, and the old 2 s timeout: forks with a handler in poll()"
"BUG_ONE_SHOT_KICK/ltl|ltl:forks_done@park.pml|-DBUG_ONE_SHOT_KICK|fail:cycle|the same (no timeout), seen by the progress property"
"BUG_NAP_HOLDING_LOCK|safety@vtlock.pml|-DBUG_NAP_HOLDING_LOCK|fail:end|anon_move_in naps on EAGAIN with vt_lock held (old code)"
"BUG_NAP_HOLDING_LOCK/reader|safety@vtlock.pml|-DBUG_NAP_HOLDING_LOCK -DHANDLER_READS|fail:end|the same, the handler needing vt_lock for reading only: behind mprotect's waiting writer (898 s)"
"BUG_REQUEUE_OUTSIDE|safety@teardown.pml|-DBUG_REQUEUE_OUTSIDE|fail:end|a restore re-queued on EAGAIN leaves the region: a PTC_WAIT restore inside waits for its page, dxm_free for that one"
"BUG_HANDLER_WAITS|safety@vtlock.pml|-DBUG_HANDLER_WAITS|fail:end|a handler's anon_move_in waits on EAGAIN instead of re-queueing"
"BUG_DIRECT_COPY|safety@rawfork.pml|-DBUG_DIRECT_COPY|fail:assert|the old raw-fork repair: UFFDIO_COPY straight from a LOCKED page's staging slot (a handler's fault on a hole), a page given back left out"
"BUG_STAGING_ONLY|safety@rawfork.pml|-DBUG_STAGING_ONLY|fail:assert|the repair reads staging only, never the CPU view a page went back to"
"BUG_NO_MOVE_COUNT|safety@rawfork.pml|-DBUG_NO_MOVE_COUNT|fail:assert|the repair leaves out a hole the CPU's without asking whether a move back came between its pagemap and state reads: a page staged at the fork, given back in between, left out"
"BUG_MAPPING_IS_CPU|safety@rawfork.pml|-DBUG_MAPPING_IS_CPU|fail:assert|the repair takes a page given back but not yet moved (CPU with PS_MAPPING) for the CPU's and leaves it out: the child reads zero"
"BUG_MOVE_FIRST|safety@teardown.pml|-DBUG_MOVE_FIRST|fail:assert|a handler's restore moves an adopted page back while it is still INVALIDATING: an access completes while dxm_check_exclusive says held (fuzz: anon-held-window)"
)
variants=(
"EARLY_UNLOCK|safety|-DREC_CAP=1 -DEARLY_UNLOCK|pass|driver unlocks before installing: the sequence protocol keeps it safe"
"ZAP_BEFORE_NOTIFY|safety|-DREC_CAP=1 -DZAP_BEFORE_NOTIFY|pass|make_exclusive zaps before notifying (after the CAS)"
"NO_READ_RETRY|safety|-DREC_CAP=1 -DNO_READ_RETRY|pass|no read_retry: the page lock alone orders faults and conversions"
"NO_READ_BEGIN_WAIT|safety|-DREC_CAP=1 -DNO_READ_BEGIN_WAIT|pass|read_begin does not wait for a running pass"
"BUG_INVALIDATED_DROPS_WAITERS|safety|-DNH=2 -DNDEV_RUN=1 -DREC_CAP=1 -DBUG_INVALIDATED_DROPS_WAITERS|pass|invalidated() drops PS_WAITERS: the mapping that follows wakes every waiter"
"BUG_INVALIDATED_DROPS_WAITERS/ltl|ltl:completes|-DNH=2 -DNDEV_RUN=1 -DDEV_TRIES=2 -DBUG_INVALIDATED_DROPS_WAITERS|pass|the same, progress"
"STRICT_CPU_STATE|safety|-DREC_CAP=1 -DSTRICT_CPU_STATE|fail:assert|docs/design.md read literally: a CPU access completes only in PS_CPU"
"STRICT_DEV_STATE|safety|-DREC_CAP=1 -DSTRICT_DEV_STATE|fail:assert|docs/design.md read literally: a device touches the page only in LOCKED or EXCLUSIVE"
"FIX_RMW_LOCKED|ltl:completes|-DREC_CAP=1 -DFIX_RMW_LOCKED|fail:cycle|first atomic before exclusive_unlock, still read_retry: still a livelock"
"FIX_RMW_LOCKED+NO_READ_RETRY|ltl:completes|-DREC_CAP=1 -DFIX_RMW_LOCKED -DNO_READ_RETRY|pass|first atomic before exclusive_unlock, no read_retry: progress with devices retrying for ever"
"FIX_RMW_LOCKED+NO_READ_RETRY/safety|safety|-DREC_CAP=1 -DFIX_RMW_LOCKED -DNO_READ_RETRY|pass|the same, safety"
"FIX_WAIT_DYING|safety@teardown.pml|-DBUG_REQUEUE_OUTSIDE -DFIX_WAIT_DYING|pass|the other cure of BUG_REQUEUE_OUTSIDE (not taken): pages_to_cpu(PTC_WAIT) stops waiting once the region is dying"
"RAWFORK_FEW_TRIES|safety@rawfork.pml|-DRETAKE=3 -DTRIES=2|fail:assert|the raw-fork repair with 2 tries against a page passed back and forth 3 times: it can miss the page (the C code tries 8 times)"
"RESTORER_ON_HANDLER|safety@teardown.pml|-DRESTORER_ON_HANDLER|pass|pages_to_cpu on a handler thread (fork or dxm_mprotect from a callback): an -EAGAIN move-in is re-queued"
)
full=(
"safety-2cpu-2dev-cap2|safety|-DREC_CAP=2|pass|(a)(b)(c)+deadlock: as safety-2cpu-2dev, record lists kept exactly up to 2"
"safety-2handlers-cap2|safety|-DNH=2 -DNDEV_RUN=1 -DREC_CAP=2|pass|(a)(b)(c)+deadlock: as safety-2handlers, record lists kept exactly up to 2"
"safety-2cpu-2dev-k2|safety|-DK_CPU=2 -DREC_CAP=1|pass|(a)(b)(c)+deadlock: 2 CPU threads x 2 increments, 2 devices"
"resolved-2cpu-2dev-t2|ltl:resolved|-DDEV_TRIES=2|pass|(d) every fault resolved: 2 CPU threads, 2 devices (2 attempts)"
"park-3h3f|safety@park.pml|-DNH=3 -DNFORK=3|pass|as park, 3 handlers, 3 forks"
"park-completes-3h3f|ltl:forks_done@park.pml|-DNH=3 -DNFORK=3|pass|as park-completes, 3 handlers, 3 forks"
)

sel=("${base[@]}")
only=()
tap=0
while [ $# -gt 0 ]; do
	case $1 in
	--mutants) sel+=("${mutants[@]}") ;;
	--variants) sel+=("${variants[@]}") ;;
	--full) sel+=("${full[@]}") ;;
	--tap) tap=1 ;;
	--only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do only+=("$1"); shift; done; continue ;;
	--list) for c in "${base[@]}" "${mutants[@]}" "${variants[@]}" "${full[@]}"; do
			IFS='|' read -r n k f e w <<<"$c"; printf '%-32s %-24s %-11s %s\n' "$n" "$k" "$e" "$w"; done
		exit 0 ;;
	-h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "check.sh: unknown argument $1" >&2; exit 1 ;;
	esac
	shift
done
if [ ${#only[@]} -gt 0 ]; then
	sel=()
	for c in "${base[@]}" "${mutants[@]}" "${variants[@]}" "${full[@]}"; do
		for o in "${only[@]}"; do [ "${c%%|*}" = "$o" ] && sel+=("$c"); done
	done
	[ ${#sel[@]} -gt 0 ] || { echo "check.sh: no such check: ${only[*]}" >&2; exit 1; }
fi

# Skipped: exit 77 (meson's and .ci/run's "skipped"); with --tap a
# skip-all plan and exit 0 (meson's TAP protocol takes any other status
# for an error).
skip() {
	echo "check.sh: $1; skipped" >&2
	[ "$tap" = 1 ] && { echo "1..0 # SKIP $1"; exit 0; }
	exit 77
}
command -v spin >/dev/null 2>&1 || skip "spin not found (Debian: apt-get install spin)"
CC=${CC:-cc}
command -v "$CC" >/dev/null 2>&1 || skip "no C compiler ($CC)"

jobs=${DXM_MODEL_JOBS:-$(n=$(nproc 2>/dev/null || echo 1); [ "$n" -gt 2 ] && n=2; echo "$n")}
memlim=${DXM_MODEL_MEMLIM:-3000}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dxm-model.XXXXXX") || exit 1
keep=0
cleanup() { [ "$keep" = 0 ] && rm -rf "$tmp"; }
trap cleanup EXIT
trap 'keep=0; exit 130' INT TERM

# One check in $tmp/<index>: writes "status|line" to result.
run_one() {
	local idx=$1 c=$2 n k f e w dir out states secs depth kind first pml=dxm.pml
	IFS='|' read -r n k f e w <<<"$c"
	case $k in *@*) pml=${k#*@}; k=${k%@*} ;; esac
	dir=$tmp/$idx
	mkdir -p "$dir" && cp "$here/$pml" "$dir/$pml"
	out=$dir/pan.out
	# the small models: a smaller hash table (quicker to set up)
	local panw=""
	[ "$pml" = dxm.pml ] || panw=-w20
	(
		cd "$dir" || exit
		# shellcheck disable=SC2086
		spin $f -a "$pml" >spin.out 2>&1 || { cat spin.out; : >buildfail; exit; }
		TIMEFORMAT='%U %S'
		# shellcheck disable=SC2086
		if [ "$k" = safety ]; then
			$CC -O2 -w -DSAFETY -DNOCLAIM -DCOLLAPSE -DMEMLIM="$memlim" -o pan pan.c || { : >buildfail; exit; }
			{ time ./pan -m3000000 $panw 2>&1; } 2>cpu.out
		else
			$CC -O2 -w -DNFAIR=3 -DCOLLAPSE -DMEMLIM="$memlim" -o pan pan.c || { : >buildfail; exit; }
			{ time ./pan -m3000000 $panw -a -f -N "${k#ltl:}" 2>&1; } 2>cpu.out
		fi
	) >"$out" 2>&1
	states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | head -1)
	secs=$(awk '{ printf "%.1f", $1 + $2 }' "$dir/cpu.out" 2>/dev/null)
	depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$out" | head -1)
	first=$(grep -m1 -E '^pan:1: ' "$out" | sed 's/^pan:1: //; s/ (at depth [0-9]*)//')
	# name the invariant a failed assertion belongs to (dxm.pml INV_*, the
	# small models' INV_*, NONE_UNSAFE and end assertion)
	case $first in
	*"assertion violated ( !(pte)||(((st&3)==0)||((st&3)==1)))"*|*"assertion violated (( !(pte)||((st&3)==0))||((st&3)==1))"*)
		first="assertion violated: INV_MAP_STATE (CPU mapping while exclusive)" ;;
	*"assertion violated ( !(pte)|| !("*)
		first="assertion violated: INV_MAP_NODEV (CPU mapping while a device holds the page)" ;;
	*"assertion violated (( !(entry[0])||"*)
		first="assertion violated: INV_DEV_UNMAPPED (device entry on a CPU page)" ;;
	"assertion violated  !(revoked[d])"*)
		first="assertion violated: !revoked[d] (device access after its invalidate callback returned)" ;;
	"assertion violated ((st&3)==0)"*)
		first="assertion violated: STRICT_CPU_STATE (CPU access in PS_LOCKED before the zap)" ;;
	"assertion violated (((st&3)==1)||((st&3)==2))"*)
		first="assertion violated: STRICT_DEV_STATE (device access in PS_INVALIDATING)" ;;
	*"assertion violated  !((entry[0]&&entry[1]))"*)
		first="assertion violated: INV_ONE_DEV (two devices hold the page)" ;;
	*"assertion violated (( !(stg_present)||((st&3)!=0))||(st&4))"*)
		first="assertion violated: INV_STAGED (a PS_CPU page with its data in staging: lost)" ;;
	*"assertion violated  !((cpu_present&&stg_present))"*)
		first="assertion violated: INV_ONE_COPY (data in the CPU view and in staging)" ;;
	*"assertion violated (cpu_present&&(cpu_val==(1+incs)))"*)
		first="assertion violated: the counter is not in the CPU view after dxm_free" ;;
	*"assertion violated ( !(unsafe[0])"*)
		first="assertion violated: NONE_UNSAFE (a handler not parked while fork() runs)" ;;
	esac
	kind=none
	case $first in
	"assertion violated"*) kind=assert ;;
	"invalid end state"*) kind=end ;;
	"acceptance cycle"*|"non-progress cycle"*) kind=cycle ;;
	?*) kind=other ;;
	esac
	first=$(printf '%s' "$first" | cut -c1-100)
	local incomplete=""
	[ "$kind" = none ] && grep -qE 'max search depth too small|reached -DMEMLIM bound|Search not completed' "$out" &&
		incomplete=" (search incomplete)"
	[ -e "$dir/buildfail" ] && { echo "FAIL|$n: spin or cc failed (see $dir/pan.out)" >"$dir/result"; return; }
	local st="${states:-?} states, depth ${depth:-?}, ${secs:-?} s CPU"
	if [ "$e" = pass ]; then
		if [ "$kind" = none ] && [ -z "$incomplete" ] && grep -q 'errors: 0' "$out"; then
			echo "PASS|$n: $w: $st" >"$dir/result"
		else
			echo "FAIL|$n: $w: ${first:-no verdict}$incomplete; $st; replay: cd $dir && spin $f -t -p -g $pml" >"$dir/result"
		fi
	else
		if [ "$kind" = "${e#fail:}" ]; then
			echo "PASS|$n: fails as expected ($first): $w; $st" >"$dir/result"
		else
			echo "FAIL|$n: expected ${e#fail:}, got ${first:-no error}$incomplete: $w; $st (see $dir/pan.out)" >"$dir/result"
		fi
	fi
}

t0=$(date +%s)
if [ "$tap" = 1 ]; then
	echo "1..${#sel[@]}"
	echo "# dxm model: $(spin -V | head -1), ${#sel[@]} checks, $jobs at a time"
else
	echo "dxm model: $(spin -V | head -1), ${#sel[@]} checks, $jobs at a time"
fi
i=0
running=0
for c in "${sel[@]}"; do
	i=$((i + 1))
	run_one "$i" "$c" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait

fails=0
for j in $(seq 1 "$i"); do
	r=$(cat "$tmp/$j/result" 2>/dev/null || echo "FAIL|check $j: no result")
	status=${r%%|*}
	if [ "$tap" = 1 ]; then
		if [ "$status" = PASS ]; then echo "ok $j - ${r#*|}"; else echo "not ok $j - ${r#*|}"; fi
	else
		printf '%-4s %s\n' "$status" "${r#*|}"
	fi
	if [ "$status" != PASS ]; then
		fails=$((fails + 1))
		keep=1
	fi
done
t1=$(date +%s)
p=""
[ "$tap" = 1 ] && p="# "
if [ "$fails" -eq 0 ]; then
	echo "${p}dxm model: all ${#sel[@]} checks as expected ($((t1 - t0)) s)"
	exit 0
fi
echo "${p}dxm model: $fails of ${#sel[@]} checks NOT as expected ($((t1 - t0)) s); kept $tmp"
exit 1
