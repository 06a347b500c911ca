// SPDX-License-Identifier: MIT
/*
 * Exclusive access: dxm_make_exclusive (kernel: make_device_exclusive_range),
 * dxm_exclusive_unlock (unlock_page), dxm_check_exclusive
 * (check_device_exclusive_range, seed v4) and dxm_range_fault
 * (hmm_range_fault).
 *
 * Locking: no lock of its own.  Page states are CAS'd (pstate.h); a
 * conversion of memory whose pages move holds fork_lock (fork.c), then
 * the region is held with dxmi_region_enter() so a teardown waits for us
 * (internal.h's order); notifiers run with no library lock held.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "internal.h"
#include "trace.h"

/* Common prologue: check arguments, find the region, enter it.  convert:
 * a conversion, which holds off forks while it moves adopted pages out
 * (fork.c); fork_lock comes before entering the region (internal.h). */
static int begin(struct dxm_ctx *ctx, void *start, size_t len,
		 struct dxm_where *w, size_t *pg, bool convert)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!range_ok(ctx, start, len))
		return -EINVAL;
	if (dxmi_region_lookup_range(ctx, (uintptr_t)start, len, w))
		return -EFAULT;
	if (!region_range_ok(w->r, start, len)) {
		dxmi_region_put(w->r);
		return -EINVAL; /* not whole pages of a huge-page region */
	}
	bool forks = convert && (w->r->kind->flags & KIND_MOVES);
	if (forks)
		dxmi_fork_enter(ctx);
	if (!dxmi_region_enter(w->r)) {
		if (forks)
			dxmi_fork_exit(ctx);
		dxmi_region_put(w->r);
		return -EFAULT;
	}
	*pg = w->pgoff + (((uintptr_t)start - w->vstart) >> w->r->pshift);
	return 0;
}

static void end(struct dxm_where *w)
{
	dxmi_region_exit(w->r);
	dxmi_region_put(w->r);
}

/* The owner's tag (pstate.h): its slot in ctx's small table, taken on its
 * first conversion; 0 (no restore-around) for NULL or once the table is
 * full. */
static unsigned owner_tag(struct dxm_ctx *ctx, const void *owner)
{
	if (!owner)
		return 0;
	for (unsigned i = 0; i < PS_NTAGS; i++) {
		const void *o = atomic_load(&ctx->owner_tag[i]);
		if (!o && atomic_compare_exchange_strong(&ctx->owner_tag[i], &o,
							 owner))
			return i + 1;
		if (o == owner)
			return i + 1;
	}
	return 0;
}

static inline void *dev_addr(struct dxm_region *r, size_t pg)
{
	return r->dev + (pg << r->pshift);
}

DXM_API long dxm_make_exclusive(struct dxm_ctx *ctx, void *start, size_t len,
				const void *owner, void **dev)
{
	struct dxm_where w;
	size_t pg;
	if (!dev)
		return -EINVAL;
	int err = begin(ctx, start, len, &w, &pg, true);
	if (err)
		return err;
	/* A handler spinning adaptively goes to sleep: a thread of ours
	 * running on another CPU would make our zap's TLB flush interrupt
	 * it (handler.c). */
	if (ctx->adaptive_ns)
		atomic_fetch_add_explicit(&ctx->conversions_begun, 1,
					  memory_order_relaxed);
	struct dxm_region *r = w.r;
	size_t n = len >> r->pshift, done = 0;
	bool forks = r->kind->flags & KIND_MOVES; /* fork_lock held (begin) */
	uint8_t *need = NULL; /* the pages that were the CPU's */
	uint8_t locked = PS_LOCKED | owner_tag(ctx, owner) << PS_TAG_SHIFT;
	/* Like GUP with FOLL_WRITE in the kernel: a range the CPU view
	 * cannot write is refused.  No private page may be in staging while
	 * a fork copies the address space (fork.c): fork_lock is held from
	 * begin(). */
	if (!(w.prot & PROT_WRITE))
		err = -EPERM;
	else if (r->kind->populate)
		err = r->kind->populate(r, (uintptr_t)start, pg, n, true);
	if (!err && !(need = calloc(n, 1)))
		err = -ENOMEM;
	if (err) {
		if (forks)
			dxmi_fork_exit(ctx);
		end(&w);
		return err;
	}

	for (size_t i = 0; i < n; i++) {
		dxm_pstate_t *p = &r->st[pg + i];
		dev[i] = NULL;
		for (;;) {
			uint8_t s = ps_load(p);
			unsigned st = ps_state(s);
			if (st == PS_CPU && (s & PS_MAPPING)) {
				/* A thread is mapping it: our zap must come
				 * after its mapping.  It never blocks. */
				sched_yield();
				continue;
			}
			if (st != PS_CPU && st != PS_EXCLUSIVE)
				break; /* locked or being invalidated: fails */
			if (!ps_cas(p, &s, locked))
				continue;
			dev[i] = dev_addr(r, pg + i);
			need[i] = st == PS_CPU; /* else revoked already */
			done++;
			break;
		}
	}
	size_t refused = n - done;
	if (done) {
		/* Devices first (they give the pages up), then every CPU
		 * view loses its mappings: after this returns no CPU access
		 * completes without the handler. */
		dxmi_notify_region_pages(r, pg, n, DXM_EVENT_EXCLUSIVE, owner);
		refused += r->kind->revoke(r, pg, n, dev, need);
		stat_add(&ctx->c.conversions, 1);
		stat_add(&ctx->c.pages_converted, n - refused);
	}
	stat_add(&ctx->c.pages_refused, refused);
	DXM_TRACE_REVOKE(start, len, n - refused, owner);
	free(need);
	if (forks)
		dxmi_fork_exit(ctx);
	end(&w);
	return (long)n;
}

/*
 * How many entries dev[] has for [start, +len): one per page of the region
 * it is in.  With base pages only (or len under a huge page), len's base
 * pages.  Else the region of the CPU view at start, or where that view is
 * gone, of the first device address among the entries that every page
 * size has; 0 where none is set (reading further could overrun the array
 * of a huge-page range).
 */
static size_t unlock_pages(struct dxm_ctx *ctx, void *start, size_t len,
			   void **dev)
{
	unsigned max = atomic_load(&ctx->max_pshift), sh = 0;
	if (max == ctx->pshift || !(len >> max))
		return len >> ctx->pshift;
	struct dxm_where w;
	if (!dxmi_region_lookup(ctx, (uintptr_t)start, &w)) {
		sh = w.r->pshift;
		dxmi_region_put(w.r);
	} else {
		for (size_t i = 0; i < len >> max && !sh; i++) {
			struct dxm_region *r;
			size_t pg;
			if (dev[i] && !dxmi_region_lookup_dev(ctx, dev[i], &r, &pg)) {
				sh = r->pshift;
				dxmi_region_put(r);
			}
		}
	}
	return sh ? len >> sh : 0;
}

DXM_API void dxm_exclusive_unlock(struct dxm_ctx *ctx, void *start, size_t len,
				  void **dev)
{
	if (dxmi_ctx_check(ctx) || !dev || !range_ok(ctx, start, len)) {
		pr_warn("dxm_exclusive_unlock: invalid arguments %p+%#zx",
			start, len);
		return;
	}
	size_t n = unlock_pages(ctx, start, len, dev), bad = 0;
	if (!n) {
		pr_warn("dxm_exclusive_unlock: %p+%#zx: no page of it is known "
			"(its view and its pages' regions are gone)",
			start, len);
		return;
	}
	struct dxm_region *r = NULL;
	size_t base = 0; /* page of dev[i] in r is base + i, while it holds */
	for (size_t i = 0; i < n; i++) {
		if (!dev[i])
			continue;
		/* By device address: the CPU view may be gone or moved. */
		if (!r || dev[i] != dev_addr(r, base + i) ||
		    base + i >= r->npages) {
			size_t pg;
			if (r)
				dxmi_region_put(r);
			r = NULL;
			if (dxmi_region_lookup_dev(ctx, dev[i], &r, &pg)) {
				bad++;
				continue;
			}
			base = pg - i;
		}
		dxm_pstate_t *p = &r->st[base + i];
		uint8_t s = ps_load(p);
		do {
			if (ps_state(s) != PS_LOCKED)
				break;
		} while (!ps_cas(p, &s, PS_EXCLUSIVE | (s & PS_TAG_MASK)));
		if (ps_state(s) != PS_LOCKED)
			bad++;
		else if (s & PS_WAITERS)
			dxmi_ps_release_waiters(r, base + i, 1);
	}
	if (r)
		dxmi_region_put(r);
	if (bad)
		pr_warn("dxm_exclusive_unlock: %zu page(s) of %p were not "
			"locked (never locked by dxm_make_exclusive, unlocked "
			"already, or taken back by the program's "
			"MADV_DONTNEED)",
			bad, start);
}

DXM_API bool dxm_check_exclusive(struct dxm_ctx *ctx, void *start, size_t len,
				 void **dev)
{
	struct dxm_where w;
	size_t pg;
	if (!dev || begin(ctx, start, len, &w, &pg, false))
		return false;
	struct dxm_region *r = w.r;
	size_t n = len >> r->pshift;
	bool ok = true;
	for (size_t i = 0; i < n && ok; i++)
		ok = dev[i] == dev_addr(r, pg + i) &&
		     ps_is_exclusive(ps_load(&r->st[pg + i]));
	end(&w);
	return ok;
}

DXM_API long dxm_range_fault(struct dxm_ctx *ctx, void *start, size_t len,
			     unsigned flags, void **dev)
{
	struct dxm_where w;
	size_t pg;
	int err = begin(ctx, start, len, &w, &pg, false);
	if (err)
		return err;
	if ((flags & ~DXM_FAULT_WRITE) || dxmi_ctx_on_handler(ctx)) {
		/* From a callback on the handler thread it could wait for a
		 * page that thread itself must give back. */
		end(&w);
		return flags & ~DXM_FAULT_WRITE ? -EINVAL : -EDEADLK;
	}
	size_t n = len >> w.r->pshift;
	if (!(w.prot & PROT_READ) ||
	    ((flags & DXM_FAULT_WRITE) && !(w.prot & PROT_WRITE))) {
		end(&w);
		return -EPERM;
	}
	dxmi_pages_to_cpu(w.r, pg, n, PTC_INVALIDATE | PTC_WAIT, DXM_EVENT_CLEAR);
	/* Where pages move (adopted memory) they live in the CPU view now,
	 * and a page the program dropped must exist for a system call in
	 * user-mode-only mode: fault them in.  An ordinary device access
	 * goes through the CPU view itself (the staging slot is empty). */
	bool moves = w.r->kind->flags & KIND_MOVES;
	if (w.r->kind->populate &&
	    (err = w.r->kind->populate(w.r, (uintptr_t)start, pg, n,
				       flags & DXM_FAULT_WRITE))) {
		end(&w);
		return err;
	}
	if (dev)
		for (size_t i = 0; i < n; i++)
			dev[i] = moves ? (char *)start + (i << w.r->pshift)
				       : dev_addr(w.r, pg + i);
	end(&w);
	return (long)n;
}
