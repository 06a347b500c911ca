// SPDX-License-Identifier: MIT
/*
 * Page-state transitions that more than one file makes (the states and the
 * byte are pstate.h's), and the faults that wait for a page: deferred
 * faults and the ready list.
 *
 * Locking (this file owns ctx->wait.mtx): defer_mtx protects
 * ctx->wait.deferred (faults waiting for a page) and ctx->wait.ready (faults to
 * resolve again).  A fault is deferred by setting PS_WAITERS with a CAS
 * that also checks the state is still one that defers, with defer_mtx
 * held, and queuing it before the lock is dropped.  Whoever moves the page
 * out of that state sees PS_WAITERS in the value its own CAS replaced and
 * calls dxmi_ps_release_waiters(), which takes defer_mtx: so the fault is
 * already queued and is never lost.  Released faults go to ctx->wait.ready and
 * a handler thread resolves them again from scratch (by address,
 * fault.c).  Nothing is called with defer_mtx held.
 */
#include <sched.h>
#include <stdlib.h>

#include "internal.h"

static __thread bool requeued; /* a restore waits for events to be read */

/* ------------------------------------------------------------- deferral */

bool dxmi_ps_defer(struct dxm_region *r, size_t pg, uintptr_t addr,
		      uint8_t s, uint64_t epoch)
{
	struct dxm_ctx *ctx = r->ctx;
	struct dxm_fault *f = malloc(sizeof(*f));
	if (!f)
		return false; /* the caller retries */
	*f = (struct dxm_fault){ .r = r, .pg = pg, .addr = addr,
				 .t0 = dxmi_now_ns(), .epoch = epoch };
	pthread_mutex_lock(&ctx->wait.mtx);
	uint8_t cur = s;
	bool gone = r->forgotten;
	bool ok = gone || ps_cas(&r->st[pg], &cur, s | PS_WAITERS);
	if (ok && !gone) {
		f->next = ctx->wait.deferred;
		ctx->wait.deferred = f;
	}
	pthread_mutex_unlock(&ctx->wait.mtx);
	if (ok && !gone)
		stat_add(&ctx->c.deferred_faults, 1);
	else
		free(f);
	if (gone) /* torn down: the thread retries on what is there now */
		dxmi_uffd_wake(r->uffd, addr, r->psize);
	return ok;
}

/*
 * A fault on a region whose teardown began (region.c, the teardown rule):
 * it waits until the teardown is over and releases it.  If it is over
 * already, the thread is woken at once.
 */
void dxmi_ps_defer_dying(struct dxm_region *r, size_t pg, uintptr_t addr,
			uint64_t epoch)
{
	struct dxm_ctx *ctx = r->ctx;
	struct dxm_fault *f;
	while (!(f = malloc(sizeof(*f))))
		sched_yield();
	*f = (struct dxm_fault){ .r = r, .pg = pg, .addr = addr,
				 .t0 = dxmi_now_ns(), .epoch = epoch };
	pthread_mutex_lock(&ctx->wait.mtx);
	bool gone = r->forgotten;
	if (!gone) {
		f->next = ctx->wait.deferred;
		ctx->wait.deferred = f;
	}
	pthread_mutex_unlock(&ctx->wait.mtx);
	if (gone) {
		free(f);
		dxmi_uffd_wake(r->uffd, addr, r->psize);
	}
}

/* Move the faults deferred on region pages [pg, pg+n) to the ready list. */
void dxmi_ps_release_waiters(struct dxm_region *r, size_t pg, size_t n)
{
	struct dxm_ctx *ctx = r->ctx;
	bool any = false;
	pthread_mutex_lock(&ctx->wait.mtx);
	for (struct dxm_fault **pp = &ctx->wait.deferred; *pp;) {
		struct dxm_fault *f = *pp;
		if (f->r == r && f->pg >= pg && f->pg < pg + n) {
			*pp = f->next;
			f->next = ctx->wait.ready;
			ctx->wait.ready = f;
			any = true;
		} else {
			pp = &f->next;
		}
	}
	pthread_mutex_unlock(&ctx->wait.mtx);
	if (any)
		dxmi_ctx_kick(ctx);
}

/* The region's teardown is over: its deferred faults are resolved again
 * (their addresses are gone: they are woken to retry), and no fault is
 * deferred on it any more. */
void dxmi_ps_forget_region(struct dxm_region *r)
{
	pthread_mutex_lock(&r->ctx->wait.mtx);
	r->forgotten = true;
	pthread_mutex_unlock(&r->ctx->wait.mtx);
	dxmi_ps_release_waiters(r, 0, r->npages);
}

/* The ready list, emptied: fault.c resolves each again. */
struct dxm_fault *dxmi_ps_take_ready(struct dxm_ctx *ctx)
{
	pthread_mutex_lock(&ctx->wait.mtx);
	struct dxm_fault *list = ctx->wait.ready;
	ctx->wait.ready = NULL;
	pthread_mutex_unlock(&ctx->wait.mtx);
	return list;
}

/* ---------------------------------------------------------- transitions */

/* Clear PS_MAPPING (and PS_WAITERS) on a page we own the mapping of. */
void dxmi_ps_mapping_done(struct dxm_region *r, size_t pg)
{
	uint8_t s = atomic_fetch_and_explicit(&r->st[pg],
					      (uint8_t) ~(PS_MAPPING | PS_WAITERS),
					      memory_order_acq_rel);
	if (s & PS_WAITERS)
		dxmi_ps_release_waiters(r, pg, 1);
}

/* INVALIDATING -> CPU|MAPPING, keeping PS_WAITERS for mapping_done(). */
void dxmi_ps_invalidated(struct dxm_region *r, size_t pg)
{
	uint8_t s = ps_load(&r->st[pg]);
	while (!ps_cas(&r->st[pg], &s,
		       PS_CPU | PS_MAPPING | (s & PS_WAITERS)))
		;
}

/* dxmi_ps_invalidated() for each page of [a, b) that is INVALIDATING (the
 * caller's: the others of the run are the CPU's, with PS_MAPPING). */
void dxmi_ps_invalidated_run(struct dxm_region *r, size_t a, size_t b)
{
	for (size_t i = a; i < b; i++)
		if (ps_state(ps_load(&r->st[i])) == PS_INVALIDATING)
			dxmi_ps_invalidated(r, i);
}

/* CPU|MAPPING -> INVALIDATING, keeping PS_WAITERS: an adopted page given
 * back (dxmi_ps_invalidated) whose move into the CPU view the kernel
 * refused for now; its data is still staged, and it is ours again to
 * re-queue (dxmi_ps_requeue_restore).  Only PS_WAITERS can change meanwhile
 * (a deferral: the MAPPING bit defers faults, and make_exclusive waits). */
void dxmi_ps_not_invalidated(struct dxm_region *r, size_t pg)
{
	uint8_t s = ps_load(&r->st[pg]);
	while (!ps_cas(&r->st[pg], &s, PS_INVALIDATING | (s & PS_WAITERS)))
		;
}

/* A page we own (LOCKED, INVALIDATING, or MAPPING) goes to state `to`,
 * flags cleared; its waiters resolve it again from scratch.  To PS_CPU: a
 * page not mapped again by us (its data was discarded or never left). */
void dxmi_ps_set(struct dxm_region *r, size_t pg, uint8_t to)
{
	uint8_t s = ps_load(&r->st[pg]);
	while (!ps_cas(&r->st[pg], &s, to))
		;
	if (s & PS_WAITERS)
		dxmi_ps_release_waiters(r, pg, 1);
}

/* An adopted page whose move back the kernel refused for now (EAGAIN: an
 * event is unread, and this handler thread may be the one to read it):
 * it stays INVALIDATING and is tried again once the handler has read
 * events (fault.c).  The caller gave it a region reference and holds the
 * region (dxmi_region_hold) until then. */
void dxmi_ps_requeue_restore(struct dxm_region *r, size_t pg, uintptr_t addr)
{
	struct dxm_ctx *ctx = r->ctx;
	struct dxm_fault *f;
	while (!(f = malloc(sizeof(*f))))
		sched_yield();
	*f = (struct dxm_fault){ .r = r, .pg = pg, .addr = addr,
				 .restore = true };
	pthread_mutex_lock(&ctx->wait.mtx);
	f->next = ctx->wait.ready;
	ctx->wait.ready = f;
	pthread_mutex_unlock(&ctx->wait.mtx);
	requeued = true;
	dxmi_ctx_kick(ctx);
}

/* Whether this thread re-queued a restore since the last call: the
 * handler must read its userfaultfd before it drains the ready list again. */
bool dxmi_ps_requeued(void)
{
	bool r = requeued;
	requeued = false;
	return r;
}

/* ---------------------------------------------------------- init, fini */

void dxmi_waiters_init(struct dxm_ctx *ctx)
{
	pthread_mutex_init(&ctx->wait.mtx, NULL);
}

/* The context is going: nobody resolves what is left. */
void dxmi_waiters_fini(struct dxm_ctx *ctx)
{
	struct dxm_fault *lists[2] = { ctx->wait.deferred, ctx->wait.ready };
	for (int k = 0; k < 2; k++)
		while (lists[k]) {
			struct dxm_fault *f = lists[k];
			lists[k] = f->next;
			free(f);
		}
	ctx->wait.deferred = ctx->wait.ready = NULL;
	pthread_mutex_destroy(&ctx->wait.mtx);
}
