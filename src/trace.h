/* SPDX-License-Identifier: MIT */
/*
 * USDT probes (provider "dxm"): tracing without a debugger.  Built in when
 * meson found <sys/sdt.h> (Debian: systemtap-sdt-dev; option -Dusdt, which
 * defines DXM_USDT=1); otherwise every macro below expands to nothing that
 * runs: its arguments are only type-checked (sizeof, not evaluated).
 *
 * A built-in probe is one `nop` at the call site plus an ELF note
 * (.note.stapsdt) saying where it is and where its arguments live: they
 * are asm operands, the note names the register or stack slot each one is
 * in already (the compiler may keep a value alive a little longer for it,
 * nothing is copied or computed for the probe).  No semaphores (_SDT_HAS_SEMAPHORES): no probe here
 * needs an expensive argument, and a semaphore would turn the nop into a
 * load and a branch.  A tracer (bpftrace, perf, SystemTap) replaces the
 * nop with a breakpoint while it is attached.  `readelf -n libdxm.so`
 * lists the probes; .ci/check-usdt checks that every one is there;
 * tools/dxm-restore-latency.bt uses them.
 *
 * The probes (arguments arg0, arg1, ... in bpftrace; all integers, the
 * pointers as addresses):
 *
 *   revoke(start, len, npages, owner)
 *	dxm_make_exclusive() revoked the CPU mappings of [start, start+len):
 *	npages of its pages are exclusive now (the others were refused),
 *	`owner` is the caller's owner cookie.
 *   read(uffd, nmsgs)
 *	a handler thread read nmsgs messages from userfaultfd uffd, at this
 *	moment: the time every fault of the batch was read.
 *   fault(addr, flags, tid)
 *	a CPU fault at addr: one per page-fault message, fired by the handler
 *	thread that read it (flags: UFFD_PAGEFAULT_FLAG_*, tid: the faulting
 *	thread's, 0 if unknown); or, with flags & DXM_TRACE_FAULT_HERE, the
 *	faulting thread's own resolution (DXM_CTX_SIGBUS), at the start of it.
 *   restore_begin(addr, pg)
 *	the fault at addr found its page (region page pg) exclusive: the
 *	restore starts (the notifiers run next).  Only restores driven by a
 *	fault: pages given back by dxm_range_fault, dxm_mprotect or a fork
 *	show as `notify` calls (and in dxm_stats' restores).
 *   restore_end(addr, err)
 *	err 0: the page is mapped at addr again and the faulting thread
 *	woken.  err -EAGAIN: the kernel refused for now (an event is
 *	unread): either the restore was put back (another restore_end for
 *	addr follows when a handler retries it) or the page is the CPU's but
 *	not mapped and the thread faults again (mapped then, no probe).
 *   notify(start, len, event, owner, notifier)
 *	an interval notifier's invalidate() callback is called for
 *	[start, start+len), with `event` (enum dxm_event) and `owner` (for
 *	DXM_EVENT_EXCLUSIVE, else 0); `notifier` is the struct dxm_notifier.
 *   fork_begin(ctx), fork_end(ctx, regions)
 *	fork()'s prepare handler for context ctx: what dxm adds to a fork
 *	(waiting for conversions, giving exclusive private pages back,
 *	parking the handlers) lies between them; `regions`: the adopted
 *	regions it went through.
 *
 * Restore latency (what tools/dxm-restore-latency.bt prints) is, as dxm
 * means it, from the moment the handler read the fault message (the
 * `read` of the handler thread whose `fault` names addr) to the moment
 * the mapping is back (`restore_end` with the same addr), so it includes
 * the events applied before the batch's faults, earlier faults of the
 * batch, a deferral (the page was locked by a device) and the notifiers.
 * In DXM_CTX_SIGBUS mode it starts at the faulting thread's `fault`.  A
 * begin/end pair with a common key (the page's CPU address) rather than
 * one probe carrying the latency: the read time would have to travel with
 * every fault (and be taken with a clock read, traced or not), where a
 * tracer takes it for free at `read`.
 */
#ifndef DXM_TRACE_H
#define DXM_TRACE_H

#include <stdint.h>

/* fault(): the faulting thread resolves its own fault (DXM_CTX_SIGBUS);
 * no UFFD_PAGEFAULT_FLAG_* is this high. */
#define DXM_TRACE_FAULT_HERE 0x80000000u

#if defined(DXM_USDT) && DXM_USDT
#include <sys/sdt.h>
#define DXM_TRACE_BUILT 1
#define DXM_PROBE1_(name, a) DTRACE_PROBE1(dxm, name, a)
#define DXM_PROBE2_(name, a, b) DTRACE_PROBE2(dxm, name, a, b)
#define DXM_PROBE3_(name, a, b, c) DTRACE_PROBE3(dxm, name, a, b, c)
#define DXM_PROBE4_(name, a, b, c, d) DTRACE_PROBE4(dxm, name, a, b, c, d)
#define DXM_PROBE5_(name, a, b, c, d, e) \
	DTRACE_PROBE5(dxm, name, a, b, c, d, e)
#else
#define DXM_TRACE_BUILT 0
#define DXM_NOP_(x) ((void)sizeof(x))
#define DXM_PROBE1_(name, a) DXM_NOP_(a)
#define DXM_PROBE2_(name, a, b) (DXM_NOP_(a), DXM_NOP_(b))
#define DXM_PROBE3_(name, a, b, c) (DXM_NOP_(a), DXM_NOP_(b), DXM_NOP_(c))
#define DXM_PROBE4_(name, a, b, c, d) \
	(DXM_NOP_(a), DXM_NOP_(b), DXM_NOP_(c), DXM_NOP_(d))
#define DXM_PROBE5_(name, a, b, c, d, e) \
	(DXM_NOP_(a), DXM_NOP_(b), DXM_NOP_(c), DXM_NOP_(d), DXM_NOP_(e))
#endif

/* Fixed argument types (a tracer reads the same width at every site). */
#define DXM_TRACE_REVOKE(start, len, npages, owner)                          \
	DXM_PROBE4_(revoke, (uintptr_t)(start), (uint64_t)(len),             \
		    (uint64_t)(npages), (uintptr_t)(owner))
#define DXM_TRACE_READ(uffd, nmsgs) \
	DXM_PROBE2_(read, (int)(uffd), (uint64_t)(nmsgs))
#define DXM_TRACE_FAULT(addr, flags, tid) \
	DXM_PROBE3_(fault, (uintptr_t)(addr), (uint32_t)(flags), (int)(tid))
#define DXM_TRACE_RESTORE_BEGIN(addr, pg) \
	DXM_PROBE2_(restore_begin, (uintptr_t)(addr), (uint64_t)(pg))
#define DXM_TRACE_RESTORE_END(addr, err) \
	DXM_PROBE2_(restore_end, (uintptr_t)(addr), (int)(err))
#define DXM_TRACE_NOTIFY(start, len, event, owner, notifier)                 \
	DXM_PROBE5_(notify, (uintptr_t)(start), (uint64_t)(len),             \
		    (int)(event), (uintptr_t)(owner), (uintptr_t)(notifier))
#define DXM_TRACE_FORK_BEGIN(ctx) DXM_PROBE1_(fork_begin, (uintptr_t)(ctx))
#define DXM_TRACE_FORK_END(ctx, regions) \
	DXM_PROBE2_(fork_end, (uintptr_t)(ctx), (uint32_t)(regions))

#endif /* DXM_TRACE_H */
