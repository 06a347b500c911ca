// SPDX-License-Identifier: MIT
/*
 * Interval notifiers with the kernel's mmu_interval_notifier sequence
 * protocol (mm/mmu_notifier.c).
 *
 * Locking: ctx->ntf.mtx protects the notifier list, ctx->ntf.seq, ctx->ntf.active
 * and each notifier's busy/removed fields; ctx->ntf.cond is signalled when an
 * invalidation pass ends or a callback returns.  Callbacks run with no
 * library lock held.
 *
 * Sequence protocol:
 *   ctx->ntf.seq is even while no invalidation runs and odd while at least
 *   one does (n_active > 0).  An invalidation pass passes the odd value as
 *   cur_seq; the driver stores it with dxm_notifier_set_seq() under its own
 *   lock.  read_begin() returns the notifier's seq, first waiting while the
 *   notifier has been invalidated by a pass that is still running
 *   (n->seq == ctx->ntf.seq, odd); read_retry() is true iff the notifier's
 *   seq changed since.  So a driver that does
 *       seq = read_begin(n); ...set up...; lock; if (read_retry(n, seq))
 *       retry; ...program the device...; unlock
 *   never programs the device with state an invalidation already revoked.
 *
 * Removal waits until no callback of the notifier runs; after
 * dxm_notifier_remove() returns none will.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>

#include "inject.h"
#include "internal.h"
#include "trace.h"

DXM_API int dxm_notifier_insert(struct dxm_ctx *ctx, void *start, size_t len,
				const struct dxm_notifier_ops *ops, void *priv,
				struct dxm_notifier **np)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	uintptr_t s = (uintptr_t)start;
	if (!np || !ops || !ops->invalidate || !len || s + len < s)
		return -EINVAL;
	struct dxm_notifier *n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->ctx = ctx;
	/* Whole pages, so that every range a callback gets is page aligned
	 * (an unaligned interval would clip ranges mid-page). */
	n->start = s & ~(uintptr_t)(ctx->psize - 1);
	n->end = s + len > UINTPTR_MAX - ctx->psize
			 ? UINTPTR_MAX & ~(uintptr_t)(ctx->psize - 1)
			 : (s + len + ctx->psize - 1) &
				   ~(uintptr_t)(ctx->psize - 1);
	n->ops = ops;
	n->priv = priv;
	pthread_mutex_lock(&ctx->ntf.mtx);
	/* While a pass runs, a new notifier must wait for it in read_begin
	 * (it may cover the range being invalidated); otherwise its seq is
	 * an odd value no future pass will use. */
	unsigned long cur = atomic_load(&ctx->ntf.seq);
	atomic_store(&n->seq, ctx->ntf.active ? cur : cur - 1);
	n->next = ctx->ntf.list;
	ctx->ntf.list = n;
	ctx->ntf.count++;
	pthread_mutex_unlock(&ctx->ntf.mtx);
	*np = n;
	return 0;
}

DXM_API void dxm_notifier_remove(struct dxm_notifier *n)
{
	if (!n)
		return;
	struct dxm_ctx *ctx = n->ctx;
	pthread_mutex_lock(&ctx->ntf.mtx);
	for (struct dxm_notifier **pp = &ctx->ntf.list; *pp;
	     pp = &(*pp)->next)
		if (*pp == n) {
			*pp = n->next;
			ctx->ntf.count--;
			break;
		}
	n->removed = true;
	while (n->busy)
		pthread_cond_wait(&ctx->ntf.cond, &ctx->ntf.mtx);
	pthread_mutex_unlock(&ctx->ntf.mtx);
	free(n);
}

DXM_API void *dxm_notifier_priv(const struct dxm_notifier *n)
{
	return n ? n->priv : NULL;
}

DXM_API unsigned long dxm_notifier_read_begin(struct dxm_notifier *n)
{
	struct dxm_ctx *ctx = n->ctx;
	unsigned long seq = atomic_load(&n->seq);
	if (seq != atomic_load(&ctx->ntf.seq) || !(seq & 1))
		return seq; /* no pass that invalidated n is running */
	pthread_mutex_lock(&ctx->ntf.mtx);
	while ((seq = atomic_load(&n->seq)) == atomic_load(&ctx->ntf.seq) &&
	       (seq & 1))
		pthread_cond_wait(&ctx->ntf.cond, &ctx->ntf.mtx);
	pthread_mutex_unlock(&ctx->ntf.mtx);
	return seq;
}

DXM_API bool dxm_notifier_read_retry(struct dxm_notifier *n, unsigned long seq)
{
	return atomic_load(&n->seq) != seq;
}

DXM_API void dxm_notifier_set_seq(struct dxm_notifier *n, unsigned long seq)
{
	atomic_store(&n->seq, seq);
}

#define NOTIFY_STACK 64 /* no allocation below this (SIGBUS mode) */

void dxmi_notify_range(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end,
		  enum dxm_event ev, const void *owner)
{
	struct dxm_notifier *stack[NOTIFY_STACK], **hit = stack;
	size_t nhit, cap = NOTIFY_STACK;
	unsigned long cur;

	pthread_mutex_lock(&ctx->ntf.mtx);
	/* Every overlapping notifier is called: never skip one for want of
	 * memory, wait for it instead. */
	while (ctx->ntf.count > cap) {
		size_t want = ctx->ntf.count + 8;
		pthread_mutex_unlock(&ctx->ntf.mtx);
		struct dxm_notifier **more;
		while (!(more = malloc(want * sizeof(*more))))
			sched_yield();
		if (hit != stack)
			free(hit);
		hit = more;
		cap = want;
		pthread_mutex_lock(&ctx->ntf.mtx);
	}
	if (ctx->ntf.active++ == 0)
		atomic_fetch_add(&ctx->ntf.seq, 1); /* odd: a pass is running */
	cur = atomic_load(&ctx->ntf.seq);
	nhit = 0;
	for (struct dxm_notifier *n = ctx->ntf.list; n; n = n->next) {
		if (n->end <= start || n->start >= end)
			continue;
		n->busy++;
		hit[nhit++] = n;
	}
	pthread_mutex_unlock(&ctx->ntf.mtx);

	if (nhit) {
		uint64_t t0 = dxmi_now_ns();
		for (size_t i = 0; i < nhit; i++) {
			struct dxm_notifier *n = hit[i];
			struct dxm_range r = {
				.start = (void *)(start > n->start ? start
								   : n->start),
				.end = (void *)(end < n->end ? end : n->end),
				.event = ev,
				.owner = ev == DXM_EVENT_EXCLUSIVE ? owner
								   : NULL,
			};
			/* For the watchdog: the first of concurrent callbacks
			 * of n records its start, and clears only its own. */
			unsigned long t0 = dxmi_now_ns(), none = 0;
			bool mine = atomic_compare_exchange_strong(
				&n->cb_start, &none, t0);
			if (mine)
				atomic_store(&n->cb_event, ev);
			inject(INJ_NOTIFY); /* a slow callback, in tests */
			DXM_TRACE_NOTIFY(r.start,
					 (uintptr_t)r.end - (uintptr_t)r.start,
					 ev, r.owner, n);
			n->ops->invalidate(n, &r, cur);
			if (mine)
				atomic_compare_exchange_strong(&n->cb_start,
							       &t0, 0);
		}
		stat_add(&ctx->c.notifier_ns, dxmi_now_ns() - t0);
		stat_add(&ctx->c.notifier_calls, nhit);
	}

	pthread_mutex_lock(&ctx->ntf.mtx);
	for (size_t i = 0; i < nhit; i++)
		hit[i]->busy--;
	if (--ctx->ntf.active == 0)
		atomic_fetch_add(&ctx->ntf.seq, 1); /* even: no pass running */
	pthread_cond_broadcast(&ctx->ntf.cond);
	pthread_mutex_unlock(&ctx->ntf.mtx);
	if (hit != stack)
		free(hit);
}

/* Notify region pages [pg, pg+n) at their addresses in every CPU view
 * (every alias, every piece): none may be skipped. */
void dxmi_notify_region_pages(struct dxm_region *r, size_t pg, size_t n,
			 enum dxm_event ev, const void *owner)
{
	uintptr_t stack[2 * 32], *runs = stack; /* no allocation below 32 */
	size_t max = 32, k;
	while ((k = dxmi_region_view_addrs(r, pg, n, runs, max)) > max) {
		if (runs != stack)
			free(runs);
		max = k + 8;
		while (!(runs = malloc(2 * max * sizeof(*runs))))
			sched_yield();
	}
	for (size_t i = 0; i < k; i++)
		dxmi_notify_range(r->ctx, runs[2 * i], runs[2 * i + 1], ev, owner);
	if (runs != stack)
		free(runs);
}

void dxmi_notifier_destroy_all(struct dxm_ctx *ctx)
{
	pthread_mutex_lock(&ctx->ntf.mtx);
	struct dxm_notifier *n = ctx->ntf.list;
	ctx->ntf.list = NULL;
	ctx->ntf.count = 0;
	pthread_mutex_unlock(&ctx->ntf.mtx);
	while (n) {
		struct dxm_notifier *next = n->next;
		pr_warn("dxm_ctx_destroy: notifier [%#lx, %#lx) was not "
			"removed; freeing it", n->start, n->end);
		free(n);
		n = next;
	}
}

void dxmi_notifiers_init(struct dxm_ctx *ctx)
{
	pthread_mutex_init(&ctx->ntf.mtx, NULL);
	pthread_cond_init(&ctx->ntf.cond, NULL);
	atomic_init(&ctx->ntf.seq, 0);
}

void dxmi_notifiers_fini(struct dxm_ctx *ctx)
{
	pthread_mutex_destroy(&ctx->ntf.mtx);
	pthread_cond_destroy(&ctx->ntf.cond);
}
