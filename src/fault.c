// SPDX-License-Identifier: MIT
/*
 * Resolving CPU faults, and giving pages back to the CPU.
 *
 * The handler calls into page state (pstate.h), notifiers (notifier.c) and
 * regions (region.c); none of them calls back into the handler.
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
 * Locking: ctx->defer_mtx protects ctx->deferred (faults waiting for a
 * page) and ctx->ready (faults to resolve again).  A fault is deferred by
 * setting PS_WAITERS with a CAS that also checks the state is still one
 * that defers, with defer_mtx held, and queuing it before the lock is
 * dropped.  Whoever moves the page out of that state sees PS_WAITERS in
 * the value its own CAS replaced and calls fault_release_waiters(), which
 * takes defer_mtx: so the fault is already queued and is never lost.
 * Released faults go to ctx->ready and a handler thread resolves them
 * again from scratch (by address).
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "inject.h"
#include "internal.h"

static __thread bool requeued; /* a restore waits for events to be read */
static void finish_restore(struct dxm_fault *f);

/* ------------------------------------------------------------- deferral */

static bool try_defer(struct dxm_region *r, size_t pg, uintptr_t addr,
		      uint8_t s, uint64_t epoch)
{
	struct dxm_ctx *ctx = r->ctx;
	struct dxm_fault *f = malloc(sizeof(*f));
	if (!f)
		return false; /* the caller retries */
	*f = (struct dxm_fault){ .r = r, .pg = pg, .addr = addr,
				 .t0 = now_ns(), .epoch = epoch };
	pthread_mutex_lock(&ctx->defer_mtx);
	uint8_t cur = s;
	bool gone = r->forgotten;
	bool ok = gone || ps_cas(&r->st[pg], &cur, s | PS_WAITERS);
	if (ok && !gone) {
		f->next = ctx->deferred;
		ctx->deferred = f;
	}
	pthread_mutex_unlock(&ctx->defer_mtx);
	if (ok && !gone)
		stat_add(&ctx->c.deferred_faults, 1);
	else
		free(f);
	if (gone) /* torn down: the thread retries on what is there now */
		uffd_wake(r->uffd, addr, ctx->psize);
	return ok;
}

/*
 * A fault on a region whose teardown began (region.c, the teardown rule):
 * it waits until the teardown is over and releases it.  If it is over
 * already, the thread is woken at once.
 */
static void defer_dying(struct dxm_region *r, size_t pg, uintptr_t addr,
			uint64_t epoch)
{
	struct dxm_ctx *ctx = r->ctx;
	struct dxm_fault *f;
	while (!(f = malloc(sizeof(*f))))
		sched_yield();
	*f = (struct dxm_fault){ .r = r, .pg = pg, .addr = addr,
				 .t0 = now_ns(), .epoch = epoch };
	pthread_mutex_lock(&ctx->defer_mtx);
	bool gone = r->forgotten;
	if (!gone) {
		f->next = ctx->deferred;
		ctx->deferred = f;
	}
	pthread_mutex_unlock(&ctx->defer_mtx);
	if (gone) {
		free(f);
		uffd_wake(r->uffd, addr, ctx->psize);
	}
}

/* Move the faults deferred on region pages [pg, pg+n) to the ready list. */
void fault_release_waiters(struct dxm_region *r, size_t pg, size_t n)
{
	struct dxm_ctx *ctx = r->ctx;
	bool any = false;
	pthread_mutex_lock(&ctx->defer_mtx);
	for (struct dxm_fault **pp = &ctx->deferred; *pp;) {
		struct dxm_fault *f = *pp;
		if (f->r == r && f->pg >= pg && f->pg < pg + n) {
			*pp = f->next;
			f->next = ctx->ready;
			ctx->ready = f;
			any = true;
		} else {
			pp = &f->next;
		}
	}
	pthread_mutex_unlock(&ctx->defer_mtx);
	if (any)
		ctx_kick(ctx);
}

/* The region's teardown is over: its deferred faults are resolved again
 * (their addresses are gone: they are woken to retry), and no fault is
 * deferred on it any more. */
void fault_forget_region(struct dxm_region *r)
{
	pthread_mutex_lock(&r->ctx->defer_mtx);
	r->forgotten = true;
	pthread_mutex_unlock(&r->ctx->defer_mtx);
	fault_release_waiters(r, 0, r->npages);
}

void fault_drain_ready(struct dxm_ctx *ctx)
{
	requeued = false;
	/* Until empty, unless a restore was put back: then the handler must
	 * read its userfaultfd first (the kick brings it back here). */
	while (!requeued) {
		pthread_mutex_lock(&ctx->defer_mtx);
		struct dxm_fault *list = ctx->ready;
		ctx->ready = NULL;
		pthread_mutex_unlock(&ctx->defer_mtx);
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
				fault_resolve(ctx, f->addr, false, 0,
					      f->epoch);
			free(f);
		}
	}
}

/* Clear PS_MAPPING (and PS_WAITERS) on a page we own the mapping of. */
static void mapping_done(struct dxm_region *r, size_t pg)
{
	uint8_t s = atomic_fetch_and_explicit(&r->st[pg],
					      (uint8_t) ~(PS_MAPPING | PS_WAITERS),
					      memory_order_acq_rel);
	if (s & PS_WAITERS)
		fault_release_waiters(r, pg, 1);
}

/* INVALIDATING -> CPU|MAPPING, keeping PS_WAITERS for mapping_done(). */
static void invalidated(struct dxm_region *r, size_t pg)
{
	uint8_t s = ps_load(&r->st[pg]);
	while (!ps_cas(&r->st[pg], &s,
		       PS_CPU | PS_MAPPING | (s & PS_WAITERS)))
		;
}

/* INVALIDATING -> CPU for a page that is not mapped again by us (its data
 * was discarded): waiters resolve it from scratch. */
void invalidated_to_cpu(struct dxm_region *r, size_t pg)
{
	uint8_t s = ps_load(&r->st[pg]);
	while (!ps_cas(&r->st[pg], &s, PS_CPU))
		;
	if (s & PS_WAITERS)
		fault_release_waiters(r, pg, 1);
}

/* An adopted page whose move back the kernel refused for now (EAGAIN: an
 * event is unread, and this handler thread may be the one to read it):
 * keep it INVALIDATING and try again once the handler has read events. */
static void requeue_restore(struct dxm_region *r, size_t pg, uintptr_t addr)
{
	struct dxm_ctx *ctx = r->ctx;
	struct dxm_fault *f;
	while (!(f = malloc(sizeof(*f))))
		sched_yield();
	region_get(r);
	region_hold(r); /* inside until finish_restore is done with it */
	*f = (struct dxm_fault){ .r = r, .pg = pg, .addr = addr,
				 .restore = true };
	pthread_mutex_lock(&ctx->defer_mtx);
	f->next = ctx->ready;
	ctx->ready = f;
	pthread_mutex_unlock(&ctx->defer_mtx);
	requeued = true;
	ctx_kick(ctx);
}

static void finish_restore(struct dxm_fault *f)
{
	struct dxm_region *r = f->r;
	/* Still inside (requeue_restore): a dxm_free waits for us, and
	 * whoever waits for the page (PTC_WAIT) is not left waiting. */
	if (anon_move_in(r, f->pg, 1, true)) {
		requeue_restore(r, f->pg, f->addr);
	} else {
		invalidated(r, f->pg);
		mapping_done(r, f->pg);
		uffd_wake(r->uffd, f->addr, r->ctx->psize);
	}
	region_exit(r);
	region_put(r);
}

/* ------------------------------------------------------------ the fault */

/*
 * Map a page we own (PS_MAPPING) for the CPU.  A memfd page is mapped in
 * every view, so that a kernel-mode access through another alias (a system
 * call, which fails with EFAULT under a user-mode-only userfaultfd) finds it
 * too; the faulting address is handled first.  An adopted page that is
 * the CPU's but not there is a page it never had: the kernel's answer, a
 * zero page (an invalidated one comes back from staging: resolve()).
 * -EAGAIN: the kernel refused for now, the faulting thread was not woken.
 */
static int map_page(struct dxm_region *r, size_t pg, uintptr_t addr,
		    bool write)
{
	if (r->kind == REGION_SHM)
		return region_continue(r, pg, 1, addr) == -EAGAIN ? -EAGAIN : 0;
	return anon_zero_fill(r, addr, write);
}

/* map_page() got -EAGAIN: an event is unread and the page, the CPU's now,
 * is not mapped.  A handler thread never waits for that (it may be the one
 * to read the event): the faulting thread is woken to fault again.  The
 * faulting thread itself (here) naps and tries again (true). */
static bool retry_later(struct dxm_region *r, uintptr_t addr, bool here,
			unsigned *us)
{
	if (!here) {
		uffd_wake(r->uffd, addr, r->ctx->psize);
		return false;
	}
	nap_us(us); /* async-signal-safe */
	return true;
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
	unsigned us = 5;
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
			err = map_page(r, pg, addr, write);
			mapping_done(r, pg);
			if (err == -EAGAIN && retry_later(r, addr, here, &us))
				continue;
			return;
		case PS_EXCLUSIVE:
			if (!ps_cas(&r->st[pg], &s,
				    PS_INVALIDATING | (s & PS_WAITERS)))
				continue;
			notify_region_pages(r, pg, 1, DXM_EVENT_CLEAR, NULL);
			stat_add(&ctx->c.restores, 1);
			if (r->kind == REGION_ANON) {
				/* Moved back while still INVALIDATING: if the
				 * kernel refuses for now, the page stays put
				 * and is retried after the pending events. */
				if (anon_move_in(r, pg, 1, true)) {
					requeue_restore(r, pg, addr);
					return;
				}
				invalidated(r, pg);
				mapping_done(r, pg);
				/* Woken only now: the page is the CPU's. */
				uffd_wake(r->uffd, addr, ctx->psize);
				return;
			}
			invalidated(r, pg);
			err = map_page(r, pg, addr, write);
			mapping_done(r, pg);
			if (err == -EAGAIN && retry_later(r, addr, here, &us))
				continue;
			return;
		default: /* LOCKED, INVALIDATING */
			break;
		}
		if (here) {
			nap_us(&us); /* async-signal-safe */
			continue;
		}
		if (try_defer(r, pg, addr, s, epoch))
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
	uffd_wake(ctx->uffd, addr, ctx->psize);
	if (ctx->uffd_anon >= 0)
		uffd_wake(ctx->uffd_anon, addr, ctx->psize);
}

void fault_resolve(struct dxm_ctx *ctx, uintptr_t addr, bool write, pid_t tid,
		   uint64_t epoch)
{
	addr &= ~(uintptr_t)(ctx->psize - 1);
	struct dxm_where w;
	if (region_lookup(ctx, addr, &w) == 0) {
		if (w.epoch > epoch) {
			wake_any(ctx, addr);
			region_put(w.r);
			return;
		}
		size_t pg = w.pgoff + ((addr - w.vstart) >> ctx->pshift);
		if (region_enter(w.r)) {
			resolve(w.r, pg, addr, write, false, epoch);
			region_exit(w.r);
		} else {
			defer_dying(w.r, pg, addr, epoch);
		}
		region_put(w.r);
		return;
	}
	struct dxm_region *r;
	size_t pg;
	if (region_lookup_dev(ctx, (void *)addr, &r, &pg) == 0) {
		/* A device-side (staging) page of adopted memory. */
		if (r->kind == REGION_ANON && r->epoch <= epoch)
			anon_staging_fault(r, pg, addr, tid);
		else
			wake_any(ctx, addr);
		region_put(r);
		return;
	}
	/* Not a managed address (any more): the view was unmapped or is
	 * being set up.  Let the thread fault again. */
	wake_any(ctx, addr);
}

/* DXM_CTX_SIGBUS: the faulting thread resolves its own fault (from its
 * SIGBUS handler).  False if addr is not this context's. */
bool fault_resolve_here(struct dxm_ctx *ctx, uintptr_t addr)
{
	addr &= ~(uintptr_t)(ctx->psize - 1);
	struct dxm_where w;
	if (region_lookup(ctx, addr, &w)) {
		struct dxm_region *r;
		size_t pg;
		if (region_lookup_dev(ctx, (void *)addr, &r, &pg))
			return false;
		/* A device's touch of a staging page: a hole while it holds
		 * the page (filled with zeros); after its invalidation a
		 * driver bug, counted and left to kill the thread (the
		 * signal's default action), as in thread mode. */
		bool ok = r->kind == REGION_ANON &&
			  ps_is_exclusive(ps_load(&r->st[pg]));
		if (ok)
			anon_staging_fault(r, pg, addr, 0);
		else if (r->kind == REGION_ANON)
			stat_add(&ctx->c.stale_device_faults, 1);
		region_put(r);
		return ok;
	}
	size_t pg = w.pgoff + ((addr - w.vstart) >> ctx->pshift);
	if (!region_enter(w.r)) {
		/* Being torn down: retry the access in a while (once the
		 * view is gone, the kernel resolves it on its own). */
		unsigned us = 100;
		region_put(w.r);
		nap_us(&us);
		return true;
	}
	stat_add(&ctx->c.cpu_faults, 1);
	/* The access kind is unknown: an adopted page the CPU never had
	 * gets its own zeroed page, as a write would. */
	resolve(w.r, pg, addr, true, true, EPOCH_NOW);
	region_exit(w.r);
	region_put(w.r);
	return true;
}

/* ------------------------------------------------- giving pages back */

/* Finish a run [a, b) whose pages we own (MAPPING or INVALIDATING). */
static void flush_run(struct dxm_region *r, size_t a, size_t b, bool inv,
		      unsigned flags, enum dxm_event ev)
{
	if (a == b)
		return;
	if (inv)
		notify_region_pages(r, a, b - a, ev, NULL);
	for (size_t i = a; i < b; i++) {
		if (ps_state(ps_load(&r->st[i])) != PS_INVALIDATING) {
			if (r->kind == REGION_ANON)
				mapping_done(r, i); /* nothing to map */
			continue;
		}
		stat_add(&r->ctx->c.restores, 1);
		/* Moved back while still INVALIDATING.  -EAGAIN: on a handler
		 * thread (a fork or dxm_mprotect from a callback), the data
		 * is still staged: the page stays INVALIDATING and is
		 * re-queued like a fault's, and is no longer ours (another
		 * handler may finish it at once). */
		if (r->kind == REGION_ANON && anon_move_in(r, i, 1, false)) {
			uintptr_t at[2] = { 0, 0 };
			region_view_addrs(r, i, 1, at, 1);
			requeue_restore(r, i, at[0]);
			continue;
		}
		invalidated(r, i);
		if (r->kind == REGION_ANON)
			mapping_done(r, i);
	}
	if (r->kind == REGION_SHM) {
		/* -EAGAIN: an event is unread.  With PTC_WAIT (the caller
		 * needs the mappings: dxm_range_fault) we wait, holding no
		 * lock; a handler (it may be the reader), or a caller for
		 * whom the mappings are only a head start (dxm_alias: its
		 * pages fault in anyway), leaves the pages to fault in. */
		unsigned us = 5;
		while (region_continue(r, a, b - a, 0) == -EAGAIN &&
		       (flags & PTC_WAIT) && !ctx_on_handler(r->ctx))
			nap_us(&us);
		for (size_t i = a; i < b; i++)
			mapping_done(r, i);
	}
}

/*
 * Give region pages [pg, pg+n) to the CPU and map them in every view.
 * PTC_INVALIDATE: exclusive pages are invalidated first (notifiers see
 * `ev`: DXM_EVENT_CLEAR, or DXM_EVENT_FORK before a fork); otherwise they
 * are left exclusive.  PTC_WAIT: wait for pages a driver holds locked or
 * another thread is busy with; otherwise skip them.  Never called from a
 * handler thread with PTC_WAIT.
 */
void pages_to_cpu(struct dxm_region *r, size_t pg, size_t n, unsigned flags,
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
			nap_us(&us);
		} else {
			i++;
		}
		a = i;
	}
	flush_run(r, a, i, inv, flags, ev);
}
