// SPDX-License-Identifier: MIT
/*
 * Regions and their CPU views.
 *
 * A region is a memfd's pages: a device view (one MAP_SHARED mapping that is
 * never registered with the userfaultfd; device-side addresses point into
 * it) and one or more CPU views (the dxm_alloc mapping and its aliases), all
 * registered for MISSING and MINOR faults.  A CPU view is kept as pieces
 * (struct dxm_view): contiguous addresses with one protection.  Pieces are
 * split by dxm_mprotect, partial munmap and partial mremap.
 *
 * Locking
 *   ctx->vt_lock (rwlock, writer-preferring) protects the sorted piece table
 *   ctx->vt, every region's piece list and next_group.  Lookups take it for
 *   reading and leave with a region reference (refs), never with the lock:
 *   no library lock is held while a notifier runs.
 *
 *   ctx->gate (base.c) is held around "mmap + insert into the table" here,
 *   and by a handler thread around "read() events + detach the pieces they
 *   unmapped".  The kernel frees the addresses of a munmap before it queues
 *   the UNMAP event, and the munmap returns once the event is read: until
 *   then the table still holds the dead pieces, and a new mapping may land
 *   on their addresses.  So a new view, or a staging area, that overlaps a
 *   piece of the table is kept aside (a placeholder, so that the kernel
 *   hands out another address) and mapped again (region_map_fresh): the
 *   stale event can never tear down a new view.  dxm_adopt, whose address
 *   is the program's, waits instead for the stale piece to be detached.
 *   Lock order: gate -> zap_lock (base.c) -> vt_lock.
 *
 *   ctx->um_mtx protects ctx->um_passes: UNMAP events read and detached
 *   whose notifications are still running (a munmap returns before them).
 *   A new view or adoption waits, before it returns its address, until no
 *   such pass overlaps it, so that a driver keyed by CPU address is told
 *   about the old mapping before it can learn of the new one.
 *
 *   r->refs: the table holds one reference for the region while it has
 *   pieces; lookups add one each.  The last put unmaps the device view and
 *   frees the page states.
 *
 *   r->users: operations inside the region, and R_DYING once its teardown
 *   began: "The teardown rule" below.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "inject.h"
#include "internal.h"


#define REG_MODE (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR)

/* ------------------------------------------------------------ piece table */

/* Index of the first piece whose end is above addr (vt_lock held). */
static size_t vt_search(struct dxm_ctx *ctx, uintptr_t addr)
{
	size_t lo = 0, hi = ctx->vt_n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct dxm_view *v = ctx->vt[mid];
		if (v->start + (v->npages << ctx->pshift) <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct dxm_view *vt_find(struct dxm_ctx *ctx, uintptr_t addr)
{
	size_t i = vt_search(ctx, addr);
	if (i < ctx->vt_n && ctx->vt[i]->start <= addr)
		return ctx->vt[i];
	return NULL;
}

/* Whether addr is in a live piece of r (vt_lock held): a piece leaves the
 * table, when its munmap is applied, under vt_lock for writing. */
bool region_owns_addr(struct dxm_region *r, uintptr_t addr)
{
	struct dxm_view *v = vt_find(r->ctx, addr);
	return v && v->r == r;
}

static int vt_insert(struct dxm_ctx *ctx, struct dxm_view *v)
{
	if (ctx->vt_n == ctx->vt_cap) {
		size_t cap = ctx->vt_cap ? ctx->vt_cap * 2 : 16;
		struct dxm_view **nv = realloc(ctx->vt, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		ctx->vt = nv;
		ctx->vt_cap = cap;
	}
	size_t i = vt_search(ctx, v->start);
	memmove(&ctx->vt[i + 1], &ctx->vt[i],
		(ctx->vt_n - i) * sizeof(ctx->vt[0]));
	ctx->vt[i] = v;
	ctx->vt_n++;
	v->rnext = v->r->views;
	v->r->views = v;
	return 0;
}

static void vt_remove(struct dxm_ctx *ctx, struct dxm_view *v)
{
	size_t i = vt_search(ctx, v->start);
	if (i < ctx->vt_n && ctx->vt[i] == v) {
		memmove(&ctx->vt[i], &ctx->vt[i + 1],
			(ctx->vt_n - i - 1) * sizeof(ctx->vt[0]));
		ctx->vt_n--;
	}
	for (struct dxm_view **pp = &v->r->views; *pp; pp = &(*pp)->rnext)
		if (*pp == v) {
			*pp = v->rnext;
			break;
		}
}

/* Split the piece containing addr so that a piece starts at addr.  The
 * table needs room for one more entry (vt_lock held for writing). */
static int vt_split(struct dxm_ctx *ctx, uintptr_t addr)
{
	struct dxm_view *v = vt_find(ctx, addr);
	if (!v || v->start == addr)
		return 0;
	struct dxm_view *t = malloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	size_t head = (addr - v->start) >> ctx->pshift;
	*t = *v;
	t->start = addr;
	t->npages = v->npages - head;
	t->pgoff = v->pgoff + head;
	v->npages = head;
	int err = vt_insert(ctx, t);
	if (err) {
		v->npages += t->npages;
		free(t);
	}
	return err;
}

/* The region table, sorted by device-view address (vt_lock held). */
static size_t rt_search(struct dxm_ctx *ctx, uintptr_t dev)
{
	size_t lo = 0, hi = ctx->rt_n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct dxm_region *r = ctx->rt[mid];
		if ((uintptr_t)r->dev + (r->npages << ctx->pshift) <= dev)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int rt_insert(struct dxm_ctx *ctx, struct dxm_region *r)
{
	if (ctx->rt_n == ctx->rt_cap) {
		size_t cap = ctx->rt_cap ? ctx->rt_cap * 2 : 16;
		struct dxm_region **nr = realloc(ctx->rt, cap * sizeof(*nr));
		if (!nr)
			return -ENOMEM;
		ctx->rt = nr;
		ctx->rt_cap = cap;
	}
	size_t i = rt_search(ctx, (uintptr_t)r->dev);
	memmove(&ctx->rt[i + 1], &ctx->rt[i],
		(ctx->rt_n - i) * sizeof(ctx->rt[0]));
	ctx->rt[i] = r;
	ctx->rt_n++;
	return 0;
}

static void rt_remove(struct dxm_ctx *ctx, struct dxm_region *r)
{
	size_t i = rt_search(ctx, (uintptr_t)r->dev);
	if (i < ctx->rt_n && ctx->rt[i] == r) {
		memmove(&ctx->rt[i], &ctx->rt[i + 1],
			(ctx->rt_n - i - 1) * sizeof(ctx->rt[0]));
		ctx->rt_n--;
	}
}

/*
 * The region and page behind a device-side address (what
 * dxm_make_exclusive returned).  Pages are found by it, not by a CPU
 * address, where the CPU view may have been unmapped or moved since: as
 * the kernel's unlock_page() goes by page.
 */
int region_lookup_dev(struct dxm_ctx *ctx, const void *dev,
		      struct dxm_region **rp, size_t *pg)
{
	uintptr_t d = (uintptr_t)dev;
	int err = -ENOENT;
	pthread_rwlock_rdlock(&ctx->vt_lock);
	size_t i = rt_search(ctx, d);
	if (i < ctx->rt_n && (uintptr_t)ctx->rt[i]->dev <= d &&
	    !((d - (uintptr_t)ctx->rt[i]->dev) & (ctx->psize - 1))) {
		*rp = ctx->rt[i];
		*pg = (d - (uintptr_t)ctx->rt[i]->dev) >> ctx->pshift;
		region_get(*rp);
		err = 0;
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	return err;
}

static void fill_where(struct dxm_view *v, struct dxm_where *w)
{
	w->r = v->r;
	w->vstart = v->start;
	w->vnpages = v->npages;
	w->pgoff = v->pgoff;
	w->group = v->group;
	w->prot = v->prot;
	w->epoch = v->epoch;
}

/* ------------------------------------------------------- region lifetime */

void region_get(struct dxm_region *r)
{
	atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void region_put(struct dxm_region *r)
{
	if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
		return;
	struct dxm_ctx *ctx = r->ctx;
	if (r->kind->release)
		r->kind->release(r);
	munmap(r->dev, r->npages << ctx->pshift);
	if (r->fd >= 0)
		close(r->fd);
	stat_add(&ctx->c.regions, -1ul);
	stat_add(&ctx->c.managed_pages, -r->npages);
	free((void *)r->st);
	free(r);
}

/*
 * The teardown rule.  Every operation that owns pages of a region (takes a
 * page out of the CPU's hands or gives one back, moves data to or from
 * staging, maps a page into a view) does it inside the region, between
 * region_enter() and region_exit(): dxm_make_exclusive, dxm_range_fault,
 * dxm_mprotect, dxm_alias, the fork prepare handler's restore, the fault
 * handler's (or a SIGBUS handler's) resolution and a restore it re-queued,
 * a program's MADV_DONTNEED of adopted memory, a raw fork's repair.  A
 * teardown sets R_DYING, after which nobody enters, and
 *   dxm_free  waits until nobody is inside, and only then detaches the
 *             views and hands the pages back: no restore, move-in or
 *             hand-back ever runs against a detached view, and every page
 *             of staging is where the hand-back looks for it;
 *   munmap    (an UNMAP event, read by a handler, which must never wait:
 *             the operations inside may be waiting for it) detaches at
 *             once (the kernel has already unmapped the view: a move into
 *             it finds no view and moves nothing, and the data is the
 *             program's to drop), tells the devices, and leaves the rest
 *             to the last one out, who queues the region for a handler
 *             thread (region_run_quiet): states reset, deferred faults
 *             released for good, the table's reference dropped.
 * A fault on a dying region is deferred (fault.c) until the teardown
 * releases it.  Only the thread whose region_kill() set R_DYING tears the
 * region down.
 */
bool region_enter(struct dxm_region *r)
{
	if (atomic_fetch_add(&r->users, 1) & R_DYING) {
		region_exit(r);
		return false;
	}
	return true;
}

/* One more hold for a thread already inside (it cannot fail then): a
 * restore re-queued for later stays inside until it is done, so that a
 * dxm_free waits for it rather than for someone waiting on it. */
void region_hold(struct dxm_region *r)
{
	atomic_fetch_add(&r->users, 1);
}

/* Hand a region whose teardown waits for no one any more to a handler. */
static void run_on_quiet(struct dxm_region *r)
{
	if (!atomic_exchange(&r->on_quiet, false))
		return;
	struct dxm_ctx *ctx = r->ctx;
	/* A lock-free push: the last one out may be a SIGBUS handler. */
	struct dxm_region *top = atomic_load(&ctx->quiet);
	do
		r->quiet_next = top;
	while (!atomic_compare_exchange_weak(&ctx->quiet, &top, r));
	ctx_kick(ctx);
}

void region_exit(struct dxm_region *r)
{
	if (atomic_fetch_sub(&r->users, 1) == (R_DYING | 1))
		run_on_quiet(r);
}

/* Begin the teardown: no one enters from now on.  False if another
 * thread began it already (it owns the teardown). */
static bool region_kill(struct dxm_region *r)
{
	return !(atomic_fetch_or(&r->users, R_DYING) & R_DYING);
}

/* dxm_free: wait until nobody is inside (never on a handler thread). */
static void region_wait_quiet(struct dxm_region *r)
{
	unsigned us = 5;
	while (atomic_load(&r->users) != R_DYING)
		nap_us(&us);
}

/* The end of every teardown, views detached and the devices told: the
 * states are reset, faults deferred on the region are released for good,
 * and the table's reference goes. */
static void teardown_finish(struct dxm_region *r)
{
	for (size_t i = 0; i < r->npages; i++)
		atomic_store(&r->st[i], PS_CPU);
	ps_forget_region(r);
	region_put(r);
}

/* Handler threads: finish the munmapped regions whose last user left. */
void region_run_quiet(struct dxm_ctx *ctx)
{
	struct dxm_region *r = atomic_exchange(&ctx->quiet, NULL);
	while (r) {
		struct dxm_region *next = r->quiet_next;
		teardown_finish(r);
		r = next;
	}
}

/* munmap: the last one out finishes it on a handler thread; if nobody is
 * inside now, we do, at once (no lock held here): a fault read after the
 * UNMAP event then finds the region gone from the statistics too. */
static void region_finish_when_quiet(struct dxm_region *r)
{
	atomic_store(&r->on_quiet, true);
	if (atomic_load(&r->users) == R_DYING &&
	    atomic_exchange(&r->on_quiet, false))
		teardown_finish(r);
}

int region_lookup(struct dxm_ctx *ctx, uintptr_t addr, struct dxm_where *w)
{
	pthread_rwlock_rdlock(&ctx->vt_lock);
	struct dxm_view *v = vt_find(ctx, addr);
	if (v) {
		fill_where(v, w);
		region_get(v->r);
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	return v ? 0 : -EFAULT;
}

/*
 * Find the region behind [start, start+len): the range must lie in one CPU
 * view (any number of pieces of it, contiguous).  w describes the piece at
 * start; w->prot is the intersection of the pieces' protections.
 */
int region_lookup_range(struct dxm_ctx *ctx, uintptr_t start, size_t len,
			struct dxm_where *w)
{
	int err = -EFAULT;
	pthread_rwlock_rdlock(&ctx->vt_lock);
	size_t i = vt_search(ctx, start);
	if (i >= ctx->vt_n || ctx->vt[i]->start > start)
		goto out;
	struct dxm_view *v = ctx->vt[i];
	fill_where(v, w);
	uintptr_t end = start + len, cur = v->start;
	size_t pg = v->pgoff;
	for (; i < ctx->vt_n; i++) {
		struct dxm_view *p = ctx->vt[i];
		if (p->start != cur || p->r != v->r || p->group != v->group ||
		    p->pgoff != pg)
			break;
		w->prot &= p->prot;
		cur += p->npages << ctx->pshift;
		pg += p->npages;
		if (cur >= end) {
			region_get(v->r);
			err = 0;
			break;
		}
	}
out:
	pthread_rwlock_unlock(&ctx->vt_lock);
	return err;
}

/* The part [*a, *b) of region pages [pg, pg+n) that piece v shows; false
 * if none. */
static bool clip(const struct dxm_view *v, size_t pg, size_t n, size_t *a,
		 size_t *b)
{
	*a = v->pgoff > pg ? v->pgoff : pg;
	*b = v->pgoff + v->npages < pg + n ? v->pgoff + v->npages : pg + n;
	return *a < *b;
}

/*
 * The CPU address runs of region pages [pg, pg+n) in every view: one
 * [start, end) pair per piece that overlaps, at most `max` pairs written to
 * out.  Returns how many pairs there are (more than max: call again with
 * room for them all).
 */
size_t region_view_addrs(struct dxm_region *r, size_t pg, size_t n,
			 uintptr_t *out, size_t max)
{
	struct dxm_ctx *ctx = r->ctx;
	size_t k = 0, a, b;
	pthread_rwlock_rdlock(&ctx->vt_lock);
	for (struct dxm_view *v = r->views; v; v = v->rnext) {
		if (!clip(v, pg, n, &a, &b))
			continue;
		if (k < max) {
			out[2 * k] = v->start + ((a - v->pgoff) << ctx->pshift);
			out[2 * k + 1] = v->start +
					 ((b - v->pgoff) << ctx->pshift);
		}
		k++;
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	return k;
}

/*
 * For each CPU view piece of r, each run of region pages in [pg, pg+n)
 * whose mask byte is set (mask NULL: every page; mask[i] is page pg + i):
 * fn(r, cpu, first page, pages, arg), cpu the run's first CPU address.
 * Under vt_lock (read): the addresses stay r's while fn runs (a view is
 * detached under the write lock), so fn must not wait for a handler
 * (internal.h).  The first non-zero return of fn ends the walk and is
 * returned.
 */
int region_runs(struct dxm_region *r, size_t pg, size_t n,
		const uint8_t *mask,
		int (*fn)(struct dxm_region *r, uintptr_t cpu, size_t pg,
			  size_t n, void *arg),
		void *arg)
{
	struct dxm_ctx *ctx = r->ctx;
	int ret = 0;
	size_t a, b;
	pthread_rwlock_rdlock(&ctx->vt_lock);
	for (struct dxm_view *v = r->views; v && !ret; v = v->rnext) {
		if (!clip(v, pg, n, &a, &b))
			continue;
		while (a < b && !ret) {
			while (mask && a < b && !mask[a - pg])
				a++;
			size_t e = a;
			while (e < b && (!mask || mask[e - pg]))
				e++;
			if (e > a)
				ret = fn(r, v->start + ((a - v->pgoff) << ctx->pshift),
					 a, e - a, arg);
			a = e;
		}
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	return ret;
}

/* --------------------------------------------------------------- creation */

static int add_piece(struct dxm_ctx *ctx, struct dxm_region *r, void *addr,
		     unsigned group)
{
	struct dxm_view *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->start = (uintptr_t)addr;
	v->npages = r->npages;
	v->r = r;
	v->group = group;
	v->prot = PROT_READ | PROT_WRITE;
	v->epoch = atomic_fetch_add(&ctx->epoch, 1) + 1;
	int err = vt_insert(ctx, v);
	if (err)
		free(v);
	return err;
}

/* Whether a piece of the table overlaps [start, end) (vt_lock held). */
static bool vt_overlaps(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end)
{
	size_t i = vt_search(ctx, start);
	return i < ctx->vt_n && ctx->vt[i]->start < end;
}

/*
 * map() a new range of len bytes that no piece of the table claims: where
 * the kernel hands out the address of a piece whose munmap dxm has not
 * read yet, keep that mapping aside until another address comes up (see
 * the top of this file).  The caller holds the gate.
 */
#define MAX_PLACEHOLDERS 8
void *region_map_fresh(struct dxm_ctx *ctx, size_t len,
		       void *(*map)(void *arg, size_t len), void *arg)
{
	void *held[MAX_PLACEHOLDERS];
	size_t nheld = 0;
	void *p;
	for (;;) {
		p = map(arg, len);
		if (p == MAP_FAILED)
			break;
		pthread_rwlock_rdlock(&ctx->vt_lock);
		bool stale = vt_overlaps(ctx, (uintptr_t)p, (uintptr_t)p + len);
		pthread_rwlock_unlock(&ctx->vt_lock);
		if (!stale)
			break;
		if (nheld == MAX_PLACEHOLDERS) {
			munmap(p, len);
			p = MAP_FAILED;
			errno = EAGAIN;
			break;
		}
		pr_debug("new mapping at %p overlaps an unmapped view whose "
			 "event is unread: mapping again", p);
		held[nheld++] = p;
	}
	int e = errno;
	while (nheld)
		munmap(held[--nheld], len);
	errno = e;
	return p;
}

/* ----------------------------------------------------- UNMAP passes */

/* An UNMAP event read and detached, whose notifications may still run. */
struct dxm_unmap {
	uintptr_t start, end;
	struct dxm_gone *list;
	struct dxm_unmap *next; /* um_mtx */
};

/*
 * Wait until no UNMAP pass that overlaps [start, end) is running.  Not on
 * a handler thread: a driver's callback may be that pass.  Taking the gate
 * first makes every event read so far registered here.
 */
void region_wait_unmaps(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end)
{
	if (ctx_on_handler(ctx))
		return;
	pthread_mutex_lock(&ctx->gate);
	pthread_mutex_unlock(&ctx->gate);
	pthread_mutex_lock(&ctx->um_mtx);
	for (;;) {
		bool busy = false;
		for (struct dxm_unmap *u = ctx->um_passes; u && !busy;
		     u = u->next)
			busy = u->start < end && start < u->end;
		if (!busy)
			break;
		pthread_cond_wait(&ctx->um_cond, &ctx->um_mtx);
	}
	pthread_mutex_unlock(&ctx->um_mtx);
}

/* ------------------------------------------------------------- new views */

struct view_map {
	struct dxm_region *r;
	bool from_fd;
	int inj;
};

/* A second mapping of r's shared pages: mremap() of the device view with
 * old_size 0, or, where that is refused (valgrind does), the memfd, which
 * the region then keeps open. */
static void *map_view(void *arg, size_t len)
{
	struct view_map *m = arg;
	if ((m->inj = inject(INJ_MREMAP)))
		return errno = m->inj, MAP_FAILED;
	void *p = mremap(m->r->dev, 0, len, MREMAP_MAYMOVE);
	if (p == MAP_FAILED && errno == EINVAL && m->r->fd >= 0) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
			 m->r->fd, 0);
		m->from_fd = p != MAP_FAILED;
	}
	return p;
}

/*
 * A new CPU view of r, without keeping the memfd open, inserted into the
 * table under the gate (see base.c), then populated (only a brand-new
 * region: nobody knows its address yet, so no page of it can be
 * exclusive), then registered.
 */
static int detach_range(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end,
			int group, struct dxm_gone **list);
static void finish_gone(struct dxm_ctx *ctx, struct dxm_gone *list,
			bool unmap);

/* On failure, *torn tells whether the view had been inserted and was torn
 * down again (which drops the table's reference when it was the last). */
static int new_view(struct dxm_ctx *ctx, struct dxm_region *r, bool populate,
		    void **addrp, bool *torn)
{
	*torn = false;
	size_t len = r->npages << ctx->pshift;
	int err = 0;
	struct view_map m = { .r = r };
	pthread_mutex_lock(&ctx->gate);
	void *p = region_map_fresh(ctx, len, map_view, &m);
	if (p == MAP_FAILED) {
		err = -errno;
	} else {
		r->keep_fd |= m.from_fd;
		pthread_rwlock_wrlock(&ctx->vt_lock);
		unsigned group = r->next_group++;
		err = add_piece(ctx, r, p, group);
		pthread_rwlock_unlock(&ctx->vt_lock);
	}
	pthread_mutex_unlock(&ctx->gate);
	if (err) {
		if (p != MAP_FAILED)
			munmap(p, len);
		return err;
	}
	if (populate)
		err = sys_madvise(p, len, MADV_POPULATE_WRITE);
	if (!err)
		err = uffd_register(r->uffd, (uintptr_t)p, len, REG_MODE);
	if (err) {
		struct dxm_gone *list = NULL;
		pthread_rwlock_wrlock(&ctx->vt_lock);
		int e2 = detach_range(ctx, (uintptr_t)p, (uintptr_t)p + len,
				      -1, &list);
		pthread_rwlock_unlock(&ctx->vt_lock);
		if (e2)
			pr_err("cannot undo a failed view: %s", strerror(-e2));
		finish_gone(ctx, list, true);
		*torn = true;
		return err;
	}
	region_wait_unmaps(ctx, (uintptr_t)p, (uintptr_t)p + len);
	*addrp = p;
	return 0;
}

DXM_API int dxm_alloc(struct dxm_ctx *ctx, size_t len, unsigned flags,
		      void **addrp)
{
	int err = ctx_check(ctx);
	if (err)
		return err;
	if (!addrp || !len || (flags & ~DXM_ALLOC_INHERIT))
		return -EINVAL;
	if (flags & DXM_ALLOC_INHERIT) {
		pr_warn("dxm_alloc: DXM_ALLOC_INHERIT is not supported yet");
		return -EOPNOTSUPP;
	}
	if (len > SIZE_MAX / 2)
		return -ENOMEM;
	len = (len + ctx->psize - 1) & ~(ctx->psize - 1);

	struct dxm_region *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->ctx = ctx;
	r->kind = &memfd_kind;
	r->uffd = ctx->uffd;
	r->fd = -1;
	r->npages = len >> ctx->pshift;
	r->st = calloc(r->npages, sizeof(*r->st));
	atomic_init(&r->refs, 1);
	if (!r->st) {
		free(r);
		return -ENOMEM;
	}
	err = r->kind->create(r);
	if (err)
		goto fail;
	pthread_rwlock_wrlock(&ctx->vt_lock);
	err = rt_insert(ctx, r);
	pthread_rwlock_unlock(&ctx->vt_lock);
	if (err) {
		munmap(r->dev, len);
		close(r->fd);
		goto fail;
	}
	stat_add(&ctx->c.regions, 1);
	stat_add(&ctx->c.managed_pages, r->npages);

	void *addr;
	bool torn;
	err = new_view(ctx, r, true, &addr, &torn);
	if (err) {
		if (!torn)
			region_put(r); /* the only reference: frees r */
		return err == -ENOSPC || err == -EFBIG ? -ENOMEM : err;
	}
	/* The first view came from mremap (the usual case): the memfd is
	 * not needed, and a process may have many regions. */
	if (!r->keep_fd) {
		close(r->fd);
		r->fd = -1;
	}
	*addrp = addr;
	return 0;

fail:
	free((void *)r->st);
	free(r);
	return err == -ENOSPC || err == -EFBIG ? -ENOMEM : err;
}

DXM_API int dxm_alias(struct dxm_ctx *ctx, void *addr, void **aliasp)
{
	int err = ctx_check(ctx);
	if (err)
		return err;
	if (!addr || !aliasp)
		return -EINVAL;
	struct dxm_where w;
	if (region_lookup(ctx, (uintptr_t)addr, &w))
		return -ENOENT;
	struct dxm_region *r = w.r;
	if (w.vstart != (uintptr_t)addr || w.pgoff != 0 ||
	    !(r->kind->flags & KIND_ALIAS)) {
		region_put(r); /* adopted private memory has one view */
		return -EINVAL;
	}
	if (!region_enter(r)) {
		region_put(r);
		return -ENOENT;
	}
	void *p;
	bool torn;
	err = new_view(ctx, r, false, &p, &torn);
	if (!err) {
		/* Map every page the CPU owns now; exclusive pages stay
		 * unmapped and fault like in every other view. */
		pages_to_cpu(r, 0, r->npages, 0, DXM_EVENT_CLEAR);
		*aliasp = p;
	}
	region_exit(r);
	region_put(r);
	return err;
}

/* Whether the mapping at addr is registered for MISSING faults (with any
 * userfaultfd), read off /proc/self/smaps; false if unknown. */
static bool vma_uffd_registered(uintptr_t addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return false;
	char line[512];
	bool in = false, hit = false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2) { /* a new VMA */
			in = a <= addr && addr < b;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			hit = strstr(line, " um") != NULL;
			break;
		}
	}
	fclose(f);
	return hit;
}

/*
 * Wait until no piece of the table overlaps [start, start+len), except a
 * live view (-EEXIST).  Returns with the gate held on success if
 * keep_gate.
 */
int region_wait_unclaimed(struct dxm_ctx *ctx, uintptr_t start, size_t len,
			  bool keep_gate)
{
	uint64_t deadline = 0;
	unsigned us = 10;
	for (;;) {
		pthread_mutex_lock(&ctx->gate);
		pthread_rwlock_rdlock(&ctx->vt_lock);
		size_t i = vt_search(ctx, start);
		bool clash = i < ctx->vt_n && ctx->vt[i]->start < start + len;
		uintptr_t at = clash ? (ctx->vt[i]->start > start
						? ctx->vt[i]->start
						: start)
				     : 0;
		pthread_rwlock_unlock(&ctx->vt_lock);
		if (!clash) {
			if (!keep_gate)
				pthread_mutex_unlock(&ctx->gate);
			return 0;
		}
		pthread_mutex_unlock(&ctx->gate);
		if (vma_uffd_registered(at) || ctx_on_handler(ctx))
			return -EEXIST;
		if (!deadline) {
			deadline = now_ns() + 5000000000ull;
		} else if (now_ns() > deadline) {
			pr_err("dxm_adopt: %#lx is still a view whose munmap "
			       "no handler has read after 5 s",
			       at);
			return -EEXIST;
		}
		struct timespec ts = { 0, (long)us * 1000 };
		nanosleep(&ts, NULL);
		if (us < 1000)
			us *= 2;
	}
}

/*
 * Insert an adopted range (dxm_adopt): register it for MISSING faults and
 * add its one view, under the gate like a new mapping.  A piece already in
 * the table there is either a view that is still live (-EEXIST) or one
 * the program unmapped whose event no handler has read yet: then wait for
 * it to be detached (the munmap is blocked until it is read).
 */
int region_adopt_insert(struct dxm_region *r, uintptr_t start, size_t len)
{
	struct dxm_ctx *ctx = r->ctx;
	int err = region_wait_unclaimed(ctx, start, len, true);
	if (err)
		return err;
	/* under the gate */
	err = uffd_register(r->uffd, start, len, UFFDIO_REGISTER_MODE_MISSING);
	if (err) {
		if (err == -EBUSY)
			pr_warn("dxm_adopt: %#lx+%#zx is registered with "
				"another userfaultfd",
				start, len);
		pthread_mutex_unlock(&ctx->gate);
		return err;
	}
	pthread_rwlock_wrlock(&ctx->vt_lock);
	if (vt_overlaps(ctx, start, start + len))
		err = -EEXIST; /* cannot happen: checked under the gate */
	if (!err) {
		r->epoch = atomic_load(&ctx->epoch) + 1;
		err = rt_insert(ctx, r);
	}
	if (!err) {
		err = add_piece(ctx, r, (void *)start, 0);
		if (err)
			rt_remove(ctx, r);
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	if (err)
		uffd_unregister(r->uffd, start, len);
	pthread_mutex_unlock(&ctx->gate);
	if (!err)
		region_wait_unmaps(ctx, start, start + len);
	return err;
}

/* Call fn on every live region whose kind has every KIND_* flag of
 * kind_flags, with a reference and no lock. */
void region_foreach(struct dxm_ctx *ctx, unsigned kind_flags,
		    void (*fn)(struct dxm_region *r, void *arg), void *arg)
{
	pthread_rwlock_rdlock(&ctx->vt_lock);
	size_t n = 0;
	struct dxm_region **v = malloc((ctx->rt_n + 1) * sizeof(*v));
	for (size_t i = 0; v && i < ctx->rt_n; i++)
		if ((ctx->rt[i]->kind->flags & kind_flags) == kind_flags) {
			region_get(ctx->rt[i]);
			v[n++] = ctx->rt[i];
		}
	pthread_rwlock_unlock(&ctx->vt_lock);
	if (!v) {
		pr_err("out of memory walking the regions");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		fn(v[i], arg);
		region_put(v[i]);
	}
	free(v);
}

/* ---------------------------------------------------------------- removal */

/* A detached run of CPU addresses, to notify and unmap outside the locks. */
struct dxm_gone {
	struct dxm_region *r; /* referenced */
	uintptr_t start, end;
	size_t pgoff;
	bool last;	      /* the region has no piece left */
	bool owner;	      /* and this pass tears it down (region_kill) */
	struct dxm_gone *next;
};

/* Detach the pieces covering [start, end) (vt_lock held for writing). */
static int detach_range(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end,
			int group, struct dxm_gone **list)
{
	int err = vt_split(ctx, start);
	if (!err)
		err = vt_split(ctx, end);
	if (err)
		return err;
	size_t i = vt_search(ctx, start);
	while (i < ctx->vt_n && ctx->vt[i]->start < end) {
		struct dxm_view *v = ctx->vt[i];
		if (group >= 0 && v->group != (unsigned)group) {
			i++;
			continue;
		}
		struct dxm_gone *g = malloc(sizeof(*g));
		if (!g)
			return -ENOMEM;
		g->r = v->r;
		region_get(v->r);
		g->start = v->start;
		g->end = v->start + (v->npages << ctx->pshift);
		g->pgoff = v->pgoff;
		vt_remove(ctx, v);
		g->last = v->r->views == NULL;
		if (g->last)
			rt_remove(ctx, v->r);
		g->next = *list;
		*list = g;
		free(v);
	}
	return 0;
}

/* One detached piece: the devices are told, then its kind undoes it
 * (`unmap`: dxm_free, not a munmap the program did). */
static void gone_piece(struct dxm_ctx *ctx, struct dxm_gone *g, bool unmap)
{
	struct dxm_region *r = g->r;
	size_t len = g->end - g->start;
	notify_range(ctx, g->start, g->end, DXM_EVENT_UNMAP, NULL);
	r->kind->gone(r, g->start, g->pgoff, len >> ctx->pshift, unmap,
		      g->last);
	stat_add(&ctx->c.events_unmap, !unmap);
}

/*
 * Finish what detach_range started for a munmap, an alias's dxm_free or a
 * view that could not be set up: tell the devices, and when a region lost
 * its last view, tear it down under the teardown rule (the end is left to
 * the last one out: this may be a handler thread, which never waits).
 */
static void finish_gone(struct dxm_ctx *ctx, struct dxm_gone *list, bool unmap)
{
	for (struct dxm_gone *g = list; g; g = g->next)
		g->owner = g->last && region_kill(g->r);
	for (struct dxm_gone *g = list; g; g = g->next)
		gone_piece(ctx, g, unmap);
	while (list) {
		struct dxm_gone *g = list;
		struct dxm_region *r = g->r;
		list = g->next;
		if (g->owner)
			region_finish_when_quiet(r);
		else
			/* Faults deferred on addresses that are gone are
			 * resolved again, and woken to retry. */
			ps_release_waiters(r, 0, r->npages);
		region_put(r);
		free(g);
	}
}

/* dxm_free of a region: the teardown rule's first case. */
static int free_region(struct dxm_ctx *ctx, struct dxm_region *r)
{
	if (!region_kill(r))
		return -ENOENT; /* a munmap or another dxm_free is at it */
	region_wait_quiet(r);
	struct dxm_gone *list = NULL;
	int err = 0;
	pthread_mutex_lock(&ctx->gate);
	pthread_rwlock_wrlock(&ctx->vt_lock);
	while (r->views && !err) {
		struct dxm_view *p = r->views;
		err = detach_range(ctx, p->start,
				   p->start + (p->npages << ctx->pshift),
				   (int)p->group, &list);
	}
	if (r->views == NULL)
		rt_remove(ctx, r); /* a munmap may have done so already */
	pthread_rwlock_unlock(&ctx->vt_lock);
	pthread_mutex_unlock(&ctx->gate);
	while (list) {
		struct dxm_gone *g = list;
		list = g->next;
		gone_piece(ctx, g, true);
		region_put(g->r);
		free(g);
	}
	teardown_finish(r);
	return err;
}

DXM_API int dxm_free(struct dxm_ctx *ctx, void *addr)
{
	int err = ctx_check(ctx);
	if (err)
		return err;
	if (!addr)
		return -EINVAL;
	struct dxm_gone *list = NULL;
	/* Under the gate: a view the program unmapped, whose munmap has
	 * returned, is detached already (-ENOENT). */
	pthread_mutex_lock(&ctx->gate);
	pthread_rwlock_wrlock(&ctx->vt_lock);
	struct dxm_view *v = vt_find(ctx, (uintptr_t)addr);
	if (!v || v->start != (uintptr_t)addr || v->pgoff != 0) {
		pthread_rwlock_unlock(&ctx->vt_lock);
		pthread_mutex_unlock(&ctx->gate);
		return v ? -EINVAL : -ENOENT;
	}
	struct dxm_region *r = v->r;
	unsigned group = v->group;
	if (group == 0) {
		/* Freeing the dxm_alloc view frees the region with all its
		 * aliases, once nobody is inside it. */
		region_get(r);
		pthread_rwlock_unlock(&ctx->vt_lock);
		pthread_mutex_unlock(&ctx->gate);
		/* A handler thread may be inside the region itself, or be
		 * what an operation inside waits for. */
		if (ctx_on_handler(ctx)) {
			region_put(r);
			return -EDEADLK;
		}
		/* A fork waits for the whole of it: adopted pages on their
		 * way back from staging would be holes in the child
		 * (fork.c).  fork_lock before entering anything. */
		fork_enter(ctx);
		err = free_region(ctx, r);
		fork_exit(ctx);
		region_put(r);
		return err;
	}
	/* An alias: its pieces go; the region and its pages stay. */
	for (struct dxm_view *p = r->views; p && !err;) {
		if (p->group != group) {
			p = p->rnext;
			continue;
		}
		err = detach_range(ctx, p->start,
				   p->start + (p->npages << ctx->pshift),
				   (int)group, &list);
		p = r->views; /* the list changed: restart */
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	pthread_mutex_unlock(&ctx->gate);
	finish_gone(ctx, list, true);
	return err;
}

/* Under the gate (base.c): detach what a munmap removed, and register the
 * pass until region_unmap_finish() has told the devices. */
struct dxm_unmap *region_unmap_detach(struct dxm_ctx *ctx, uintptr_t start,
				      uintptr_t end)
{
	struct dxm_unmap *u;
	while (!(u = calloc(1, sizeof(*u))))
		sched_yield(); /* the event cannot be read again */
	u->start = start;
	u->end = end;
	pthread_rwlock_wrlock(&ctx->vt_lock);
	int err = detach_range(ctx, start, end, -1, &u->list);
	pthread_rwlock_unlock(&ctx->vt_lock);
	if (err)
		pr_err("cannot track munmap of [%#lx, %#lx): %s", start, end,
		       strerror(-err));
	pthread_mutex_lock(&ctx->um_mtx);
	u->next = ctx->um_passes;
	ctx->um_passes = u;
	pthread_mutex_unlock(&ctx->um_mtx);
	return u;
}

void region_unmap_finish(struct dxm_ctx *ctx, struct dxm_unmap *u)
{
	finish_gone(ctx, u->list, false);
	pthread_mutex_lock(&ctx->um_mtx);
	for (struct dxm_unmap **pp = &ctx->um_passes; *pp; pp = &(*pp)->next)
		if (*pp == u) {
			*pp = u->next;
			break;
		}
	pthread_cond_broadcast(&ctx->um_cond);
	pthread_mutex_unlock(&ctx->um_mtx);
	free(u);
}

void region_remap_move(struct dxm_ctx *ctx, uintptr_t from, uintptr_t to,
		       size_t len)
{
	stat_add(&ctx->c.events_remap, 1);
	pthread_rwlock_wrlock(&ctx->vt_lock);
	int err = vt_split(ctx, from);
	if (!err)
		err = vt_split(ctx, from + len);
	if (err) {
		pthread_rwlock_unlock(&ctx->vt_lock);
		pr_err("cannot track mremap of %#lx: %s", from, strerror(-err));
		return;
	}
	/* Move every piece in [from, from+len) to its new address; the new
	 * range cannot overlap the old one. */
	size_t i;
	while ((i = vt_search(ctx, from)) < ctx->vt_n &&
	       ctx->vt[i]->start < from + len) {
		struct dxm_view *v = ctx->vt[i];
		vt_remove(ctx, v);
		v->start = v->start - from + to;
		vt_insert(ctx, v); /* cannot fail: a slot was just freed */
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
}

/* ctx_destroy: free every region that is left. */
void region_destroy_all(struct dxm_ctx *ctx)
{
	for (;;) {
		pthread_rwlock_rdlock(&ctx->vt_lock);
		void *addr = NULL;
		for (size_t i = 0; i < ctx->vt_n && !addr; i++)
			if (ctx->vt[i]->group == 0 && ctx->vt[i]->pgoff == 0)
				addr = (void *)ctx->vt[i]->start;
		pthread_rwlock_unlock(&ctx->vt_lock);
		if (!addr)
			break;
		dxm_free(ctx, addr);
	}
	/* Pieces whose start piece the program unmapped itself. */
	struct dxm_gone *list = NULL;
	pthread_rwlock_wrlock(&ctx->vt_lock);
	while (ctx->vt_n) {
		struct dxm_view *v = ctx->vt[0];
		if (detach_range(ctx, v->start,
				 v->start + (v->npages << ctx->pshift), -1,
				 &list))
			break;
	}
	pthread_rwlock_unlock(&ctx->vt_lock);
	finish_gone(ctx, list, true);
	free(ctx->vt);
	ctx->vt = NULL;
	free(ctx->rt);
	ctx->rt = NULL;
}

/* ---------------------------------------------------------------- mprotect */

DXM_API int dxm_mprotect(struct dxm_ctx *ctx, void *addr, size_t len, int prot)
{
	int err = ctx_check(ctx);
	if (err)
		return err;
	if (!range_ok(ctx, addr, len) ||
	    (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)))
		return -EINVAL;
	struct dxm_where w;
	uintptr_t start = (uintptr_t)addr, end = start + len;
	if (region_lookup_range(ctx, start, len, &w))
		return -EFAULT;
	if (!region_enter(w.r)) {
		region_put(w.r);
		return -EFAULT;
	}
	/* Tell the devices first: a device write must not slip in between
	 * the change and the notification. */
	notify_range(ctx, start, end, DXM_EVENT_PROTECTION, NULL);
	struct dxm_region *r = w.r;
	size_t pg = w.pgoff + ((start - w.vstart) >> ctx->pshift);
	if ((r->kind->flags & KIND_MOVES) && !(prot & PROT_WRITE))
		/* UFFDIO_MOVE cannot restore into a read-only mapping: give
		 * the pages back first (the devices were just invalidated). */
		pages_to_cpu(r, pg, len >> ctx->pshift,
			     PTC_INVALIDATE | PTC_WAIT, DXM_EVENT_PROTECTION);
	pthread_rwlock_wrlock(&ctx->vt_lock);
	err = vt_split(ctx, start);
	if (!err)
		err = vt_split(ctx, end);
	if (!err && mprotect(addr, len, prot))
		err = -errno;
	if (!err && r->kind->protect)
		r->kind->protect(r, pg, len >> ctx->pshift, prot);
	if (!err)
		for (size_t i = vt_search(ctx, start);
		     i < ctx->vt_n && ctx->vt[i]->start < end; i++)
			ctx->vt[i]->prot = prot;
	pthread_rwlock_unlock(&ctx->vt_lock);
	region_exit(w.r);
	region_put(w.r);
	return err;
}
