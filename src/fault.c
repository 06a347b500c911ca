// SPDX-License-Identifier: MIT
/*
 * Resolving CPU faults, and giving pages back to the CPU.
 *
 * It calls into page state (pstate.c), notifiers (notifier.c), regions
 * (region.c) and the memory kinds; none of them calls back into it.
 *
 * A fault on page p (through CPU view address a) is resolved by its page
 * state:
 *   CPU            take PS_MAPPING, UFFDIO_CONTINUE a, drop PS_MAPPING
 *   EXCLUSIVE      -> INVALIDATING, notifiers (DXM_EVENT_CLEAR) for p in
 *                  every view, -> CPU|PS_MAPPING, UFFDIO_CONTINUE a, drop
 *   LOCKED         deferred: the driver holds the page (kernel: page lock)
 *   INVALIDATING   deferred: another thread is giving it back
 *   CPU|MAPPING    deferred: another thread is mapping it
 * The handler never blocks on a driver: a fault it cannot resolve now is
 * deferred, never waited for.
 *
 * Deferred faults and the ready list are pstate.c's; the handler loop
 * (handler.c) calls dxmi_fault_resolve for each fault message and
 * dxmi_fault_drain_ready for the faults released since.  This file owns no lock.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "inject.h"
#include "internal.h"
#include "trace.h"

static void finish_restore(struct dxm_fault *f);
static void flush_run(struct dxm_region *r, size_t a, size_t b, bool inv,
		      unsigned flags, enum dxm_event ev);

/*
 * A kind's restore of page pg (a fault at addr) said -EAGAIN.  If the page
 * is still INVALIDATING, its data is not back: the restore is put back on
 * the ready list, holding the region, and tried again once the handler
 * has read its userfaultfd.  True: done so.  Else the page is the CPU's
 * but not mapped, and the faulting thread must fault again.
 */
static bool requeued_restore(struct dxm_region *r, size_t pg, uintptr_t addr)
{
	if (ps_state(ps_load(&r->st[pg])) != PS_INVALIDATING)
		return false;
	dxmi_region_get(r);
	dxmi_region_hold(r); /* inside until finish_restore is done with it */
	dxmi_ps_requeue_restore(r, pg, addr);
	return true;
}

void dxmi_fault_drain_ready(struct dxm_ctx *ctx)
{
	dxmi_ps_requeued();
	/* Until empty, unless a restore was put back: then the handler must
	 * read its userfaultfd first (the kick brings it back here). */
	while (!dxmi_ps_requeued()) {
		struct dxm_fault *list = dxmi_ps_take_ready(ctx);
		if (!list)
			return;
		while (list) {
			struct dxm_fault *f = list;
			list = f->next;
			if (f->restore)
				finish_restore(f);
			else
				/* The access kind is not kept: a write that
				 * finds a zero page takes one more (ordinary)
				 * COW fault. */
				dxmi_fault_resolve(ctx, f->addr, false, 0,
					      f->epoch);
			free(f);
		}
	}
}

static void finish_restore(struct dxm_fault *f)
{
	struct dxm_region *r = f->r;
	/* Still inside (requeue_restore): a dxm_free waits for us, and
	 * whoever waits for the page (PTC_WAIT) is not left waiting. */
	int err = r->kind->restore(r, f->pg, f->addr);
	DXM_TRACE_RESTORE_END(f->addr, err);
	if (err == -EAGAIN && !requeued_restore(r, f->pg, f->addr))
		dxmi_uffd_wake(r->uffd, f->addr, r->psize);
	dxmi_region_exit(r);
	dxmi_region_put(r);
}

/* ------------------------------------------------------------ the fault */

/* Power-of-two histogram bucket of v (dxm_stats). */
static unsigned hist_bucket(uint64_t v)
{
	unsigned b = v ? 64 - (unsigned)__builtin_clzll(v) : 0;
	return b < DXM_STATS_HIST ? b : DXM_STATS_HIST - 1;
}

/* A restore of `pages` pages, begun at t0 (dxmi_now_ns), is over (the
 * restores were counted before the pages were mapped: a thread whose
 * access completed finds its page counted). */
static void count_restore(struct dxm_ctx *ctx, uint64_t t0, size_t pages)
{
	stat_add(&ctx->c.restore_us[hist_bucket((dxmi_now_ns() - t0) / 1000)],
		 1);
	stat_add(&ctx->c.restore_pages[hist_bucket(pages)], 1);
}

/* A kind's fill or restore got -EAGAIN: an event is unread and the page,
 * the CPU's now, is not mapped.  A handler thread never waits for that (it may be the one
 * to read the event): the faulting thread is woken to fault again.  The
 * faulting thread itself (here) waits (dxmi_eagain_wait) and tries again
 * (true). */
static bool retry_later(struct dxm_region *r, uintptr_t addr, bool here,
			unsigned *tries)
{
	if (!here) {
		dxmi_uffd_wake(r->uffd, addr, r->psize);
		return false;
	}
	dxmi_eagain_wait(tries); /* async-signal-safe */
	return true;
}

/* Take neighbour page i for restore-around: EXCLUSIVE for the same owner
 * (tag), now INVALIDATING and ours. */
static bool take_neighbour(struct dxm_region *r, size_t i, unsigned tag)
{
	uint8_t s = ps_load(&r->st[i]);
	return ps_state(s) == PS_EXCLUSIVE && ps_tag(s) == tag &&
	       ps_cas(&r->st[i], &s, PS_INVALIDATING | (s & PS_WAITERS));
}

/*
 * Restore-around (readahead's window, NVIDIA UVM's prefetch): a fault on
 * page pg, INVALIDATING and ours, that continues the region's last run
 * (the page after it, or before it) takes neighbours with it, the window
 * doubling up to ctx->ra_max while faults stay sequential and falling back
 * to one page when they do not.  Only pages EXCLUSIVE for the same owner
 * (tag 0: unknown, none), never a LOCKED one: a device still working on a
 * page keeps it.  Returns the run [*a, *b) that holds pg, every page of it
 * INVALIDATING and ours.
 *
 * Ahead (readahead's asynchronous window): once a forward window is whole
 * at ctx->ra_max, the handler, after waking the reader, also gives back
 * the next window, from the page after *b, and leaves *b exclusive: the
 * marker, on which the reader faults once it has read this window (it
 * reads while the handler brings the next one back).  A fault on the
 * marker gives back the marker alone, and the window ahead of the run
 * given back last.  So a reader that stops has at most one window more
 * given back early than restore-around alone gives (two ahead of the
 * page it faulted on).  *ahead: the first page to give back ahead
 * (give_back_ahead), or 0: none.
 */
static void around(struct dxm_region *r, size_t pg, unsigned tag, size_t *a,
		   size_t *b, size_t *ahead)
{
	*a = pg, *b = pg + 1, *ahead = 0;
	unsigned max = r->ctx->ra_max;
	if (max <= 1)
		return;
	bool fwd = pg == atomic_load_explicit(&r->ra.next, memory_order_relaxed);
	bool back = !fwd && pg + 1 == atomic_load_explicit(&r->ra.prev,
							   memory_order_relaxed);
	unsigned win = 1;
	if (fwd || back) {
		win = atomic_load_explicit(&r->ra.win, memory_order_relaxed) * 2;
		win = win < 2 ? 2 : win > max ? max : win;
	}
	if (tag && fwd)
		while (*b - pg < win && *b < r->npages && take_neighbour(r, *b, tag))
			++*b;
	if (tag && back)
		while (pg + 1 - *a < win && *a > 0 && take_neighbour(r, *a - 1, tag))
			--*a;
	size_t next = *b;
	if (tag && fwd && win == max) {
		size_t end = atomic_load_explicit(&r->ra.ahead,
						  memory_order_relaxed);
		bool marker = pg == atomic_load_explicit(&r->ra.mark,
							 memory_order_relaxed) &&
			      *b == pg + 1 && end > *b;
		if (marker)
			next = end; /* the reader reads [*b, end) next */
		if (marker || *b - pg == win)
			*ahead = next + 1 < r->npages ? next + 1 : 0;
	}
	atomic_store_explicit(&r->ra.next, next, memory_order_relaxed);
	atomic_store_explicit(&r->ra.prev, *a, memory_order_relaxed);
	atomic_store_explicit(&r->ra.win, win, memory_order_relaxed);
}

/*
 * Give back, ahead of a sequential reader (around), up to ctx->ra_max
 * pages from page `from` that are EXCLUSIVE for the same owner, the page
 * before `from` left exclusive (the marker).  Like a fault's window:
 * notified first (DXM_EVENT_CLEAR), then mapped in every view; nobody
 * waits for them (a thread that faults on one meanwhile is deferred and
 * resolved once it is mapped).  On a handler thread only, after the
 * faulting thread was woken.
 */
static void give_back_ahead(struct dxm_region *r, size_t from, unsigned tag)
{
	struct dxm_ctx *ctx = r->ctx;
	size_t b = from;
	while (b - from < ctx->ra_max && b < r->npages &&
	       take_neighbour(r, b, tag))
		b++;
	atomic_store_explicit(&r->ra.mark, from - 1, memory_order_relaxed);
	atomic_store_explicit(&r->ra.ahead, b, memory_order_relaxed);
	stat_add(&ctx->c.pages_ahead, b - from);
	flush_run(r, from, b, true, 0, DXM_EVENT_CLEAR);
}

/*
 * Resolve a fault on region page pg through addr.  here: we are the
 * faulting thread itself (DXM_CTX_SIGBUS), which may wait for a busy page;
 * a handler thread never waits: it defers.
 */
static void resolve(struct dxm_region *r, size_t pg, uintptr_t addr,
		    bool write, bool here, uint64_t epoch)
{
	struct dxm_ctx *ctx = r->ctx;
	unsigned us = 5, tries = 0;
	int err;
	for (;;) {
		uint8_t s = ps_load(&r->st[pg]);
		switch (ps_state(s)) {
		case PS_CPU:
			if (s & PS_MAPPING)
				break; /* defer below */
			if (!ps_cas(&r->st[pg], &s, s | PS_MAPPING))
				continue;
			inject(INJ_RESOLVE); /* a slow handler, in tests */
			err = r->kind->fill(r, pg, addr, write);
			dxmi_ps_mapping_done(r, pg);
			if (err == -EAGAIN && retry_later(r, addr, here, &tries))
				continue;
			return;
		case PS_EXCLUSIVE:
			if (!ps_cas(&r->st[pg], &s,
				    PS_INVALIDATING | (s & PS_WAITERS)))
				continue;
			DXM_TRACE_RESTORE_BEGIN(addr, pg);
			uint64_t t0 = dxmi_now_ns();
			size_t a, b, ahead;
			around(r, pg, ps_tag(s), &a, &b, &ahead);
			/* Every page is notified before its mapping returns.
			 * A run of more than one page is restored whole
			 * before anyone is woken (restore_span); else the
			 * faulting page goes first, its neighbours after
			 * (those the kernel refuses now fault in later). */
			dxmi_notify_region_pages(r, a, b - a, DXM_EVENT_CLEAR,
						 NULL);
			stat_add(&ctx->c.restores, b - a);
			if (b - a > 1 && r->kind->restore_span) {
				err = r->kind->restore_span(r, a, b, pg, addr);
			} else {
				err = r->kind->restore(r, pg, addr);
				if (pg + 1 < b)
					r->kind->restore_run(r, pg + 1, b, 0);
				if (a < pg)
					r->kind->restore_run(r, a, pg, 0);
			}
			count_restore(ctx, t0, b - a);
			DXM_TRACE_RESTORE_END(addr, err);
			if (err == -EAGAIN && !requeued_restore(r, pg, addr) &&
			    retry_later(r, addr, here, &tries))
				continue;
			/* The faulting thread was woken: the next window
			 * comes back while it reads this one.  Not in the
			 * faulting thread itself (SIGBUS mode): it would
			 * wait for it. */
			if (ahead && !here && !err)
				give_back_ahead(r, ahead, ps_tag(s));
			return;
		default: /* LOCKED, INVALIDATING */
			break;
		}
		if (here) {
			dxmi_nap_us(&us); /* async-signal-safe */
			continue;
		}
		if (dxmi_ps_defer(r, pg, addr, s, epoch))
			return;
		sched_yield();
	}
}

/*
 * A fault message (or a deferred fault) read at `epoch`.  A mapping
 * inserted since (a higher epoch) is not what the thread faulted on: its
 * address was unmapped and reused after the message was queued.  The
 * thread is only woken; if it still faults, a fresh message follows.
 */
static void wake_any(struct dxm_ctx *ctx, uintptr_t addr)
{
	dxmi_uffd_wake(ctx->uffd, addr, ctx->psize);
	if (ctx->uffd_anon >= 0)
		dxmi_uffd_wake(ctx->uffd_anon, addr, ctx->psize);
}

void dxmi_fault_resolve(struct dxm_ctx *ctx, uintptr_t addr, bool write, pid_t tid,
		   uint64_t epoch)
{
	addr &= ~(uintptr_t)(ctx->psize - 1);
	struct dxm_where w;
	if (dxmi_region_lookup(ctx, addr, &w) == 0) {
		if (w.epoch > epoch) {
			wake_any(ctx, addr);
			dxmi_region_put(w.r);
			return;
		}
		addr &= ~(uintptr_t)(w.r->psize - 1); /* its region's page */
		size_t pg = w.pgoff + ((addr - w.vstart) >> w.r->pshift);
		if (dxmi_region_enter(w.r)) {
			resolve(w.r, pg, addr, write, false, epoch);
			dxmi_region_exit(w.r);
		} else {
			dxmi_ps_defer_dying(w.r, pg, addr, epoch);
		}
		dxmi_region_put(w.r);
		return;
	}
	struct dxm_region *r;
	size_t pg;
	if (dxmi_region_lookup_dev(ctx, (void *)addr, &r, &pg) == 0) {
		/* A device-side (staging) page of adopted memory. */
		if (r->kind->staging_fault && r->epoch <= epoch)
			r->kind->staging_fault(r, pg, addr, tid);
		else
			wake_any(ctx, addr);
		dxmi_region_put(r);
		return;
	}
	/* Not a managed address (any more): the view was unmapped or is
	 * being set up.  Let the thread fault again. */
	wake_any(ctx, addr);
}

/* DXM_CTX_SIGBUS: the faulting thread resolves its own fault (from its
 * SIGBUS handler).  False if addr is not this context's. */
bool dxmi_fault_resolve_here(struct dxm_ctx *ctx, uintptr_t addr)
{
	addr &= ~(uintptr_t)(ctx->psize - 1);
	struct dxm_where w;
	if (dxmi_region_lookup(ctx, addr, &w)) {
		struct dxm_region *r;
		size_t pg;
		if (dxmi_region_lookup_dev(ctx, (void *)addr, &r, &pg))
			return false;
		/* A device's touch of a staging page: a hole while it holds
		 * the page (filled with zeros); after its invalidation a
		 * driver bug, counted and left to kill the thread (the
		 * signal's default action), as in thread mode. */
		bool ok = r->kind->staging_fault &&
			  ps_is_exclusive(ps_load(&r->st[pg]));
		if (ok)
			r->kind->staging_fault(r, pg, addr, 0);
		else if (r->kind->staging_fault)
			stat_add(&ctx->c.stale_device_faults, 1);
		dxmi_region_put(r);
		return ok;
	}
	addr &= ~(uintptr_t)(w.r->psize - 1); /* its region's page */
	size_t pg = w.pgoff + ((addr - w.vstart) >> w.r->pshift);
	if (!dxmi_region_enter(w.r)) {
		/* Being torn down: retry the access in a while (once the
		 * view is gone, the kernel resolves it on its own). */
		unsigned us = 100;
		dxmi_region_put(w.r);
		dxmi_nap_us(&us);
		return true;
	}
	stat_add(&ctx->c.cpu_faults, 1);
	DXM_TRACE_FAULT(addr, DXM_TRACE_FAULT_HERE, 0);
	/* The access kind is unknown: an adopted page the CPU never had
	 * gets its own zeroed page, as a write would. */
	resolve(w.r, pg, addr, true, true, EPOCH_NOW);
	dxmi_region_exit(w.r);
	dxmi_region_put(w.r);
	return true;
}

/* ------------------------------------------------- giving pages back */

/* Finish a run [a, b) whose pages we own (MAPPING or INVALIDATING): the
 * devices are told (inv), then the kind maps them back. */
static void flush_run(struct dxm_region *r, size_t a, size_t b, bool inv,
		      unsigned flags, enum dxm_event ev)
{
	if (a == b)
		return;
	uint64_t t0 = dxmi_now_ns();
	size_t restores = 0;
	if (inv)
		dxmi_notify_region_pages(r, a, b - a, ev, NULL);
	for (size_t i = a; i < b; i++)
		restores += ps_state(ps_load(&r->st[i])) == PS_INVALIDATING;
	stat_add(&r->ctx->c.restores, restores);
	r->kind->restore_run(r, a, b, flags);
	if (restores)
		count_restore(r->ctx, t0, restores);
}

/*
 * Give region pages [pg, pg+n) to the CPU and map them in every view.
 * PTC_INVALIDATE: exclusive pages are invalidated first (notifiers see
 * `ev`: DXM_EVENT_CLEAR, or DXM_EVENT_FORK before a fork); otherwise they
 * are left exclusive.  PTC_WAIT: wait for pages a driver holds locked or
 * another thread is busy with; otherwise skip them.  Never called from a
 * handler thread with PTC_WAIT.
 */
void dxmi_pages_to_cpu(struct dxm_region *r, size_t pg, size_t n, unsigned flags,
		  enum dxm_event ev)
{
	size_t a = pg, i = pg, end = pg + n;
	bool inv = false;
	unsigned us = 20;
	while (i < end) {
		uint8_t s = ps_load(&r->st[i]);
		unsigned st = ps_state(s);
		if (st == PS_CPU && !(s & PS_MAPPING)) {
			if (ps_cas(&r->st[i], &s, s | PS_MAPPING))
				i++;
			continue;
		}
		if (st == PS_EXCLUSIVE && (flags & PTC_INVALIDATE)) {
			if (ps_cas(&r->st[i], &s, PS_INVALIDATING))
				i++, inv = true;
			continue;
		}
		/* A page we cannot take now: finish the run before it.  A
		 * page being mapped by another thread is waited for (a few
		 * microseconds, never blocked on a driver); locked or
		 * exclusive ones only with PTC_WAIT. */
		flush_run(r, a, i, inv, flags, ev);
		inv = false;
		if ((st == PS_CPU && (s & PS_MAPPING)) ||
		    ((flags & PTC_WAIT) && st != PS_EXCLUSIVE)) {
			dxmi_nap_us(&us);
		} else {
			i++;
		}
		a = i;
	}
	flush_run(r, a, i, inv, flags, ev);
}
