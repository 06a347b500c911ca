// SPDX-License-Identifier: MIT
/*
 * Regions and their CPU views: the tables, lookups, references, the
 * teardown rule, and the addresses new views may take.
 *
 * A region is a kind's pages (memfd.c, anon.c): a device view (device-side
 * addresses point into it) and one or more CPU views (the dxm_alloc
 * mapping and its aliases, or the adopted range), registered with the
 * kind's userfaultfd.  A CPU view is kept as pieces (struct dxm_view):
 * contiguous addresses with one protection.  Pieces are split by
 * dxm_mprotect, partial munmap and partial mremap.  The public calls that
 * make and free views are views.c's; this file calls nothing above the
 * primitives, the page states and the kinds' release.
 *
 * Locking
 *   ctx->tab.lock (rwlock, writer-preferring) protects the sorted piece table
 *   ctx->tab.vt, every region's piece list and next_group.  Lookups take it for
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
 *   hands out another address) and mapped again (dxmi_region_map_fresh): the
 *   stale event can never tear down a new view.  dxm_adopt, whose address
 *   is the program's, waits instead for the stale piece to be detached.
 *   (The lock order is internal.h's.)
 *
 *   ctx->tab.um_mtx protects ctx->tab.um_passes: UNMAP events read and detached
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



/* ------------------------------------------------------------ piece table */

/* Index of the first piece whose end is above addr (vt_lock held). */
size_t dxmi_vt_search(struct dxm_ctx *ctx, uintptr_t addr)
{
	size_t lo = 0, hi = ctx->tab.vt_n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct dxm_view *v = ctx->tab.vt[mid];
		if (v->start + (v->npages << v->pshift) <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct dxm_view *dxmi_vt_find(struct dxm_ctx *ctx, uintptr_t addr)
{
	size_t i = dxmi_vt_search(ctx, addr);
	if (i < ctx->tab.vt_n && ctx->tab.vt[i]->start <= addr)
		return ctx->tab.vt[i];
	return NULL;
}

/* Whether addr is in a live piece of r (vt_lock held): a piece leaves the
 * table, when its munmap is applied, under vt_lock for writing. */
bool dxmi_region_owns_addr(struct dxm_region *r, uintptr_t addr)
{
	struct dxm_view *v = dxmi_vt_find(r->ctx, addr);
	return v && v->r == r;
}

/* Room for one more entry in a table of n entries of `elem` bytes, *cap
 * allocated: the table (moved, maybe), or NULL. */
static void *grow(void *table, size_t n, size_t *cap, size_t elem)
{
	if (n < *cap)
		return table;
	size_t c = *cap ? *cap * 2 : 16;
	void *t = realloc(table, c * elem);
	if (t)
		*cap = c;
	return t;
}

static int vt_insert(struct dxm_ctx *ctx, struct dxm_view *v)
{
	struct dxm_view **t = grow(ctx->tab.vt, ctx->tab.vt_n, &ctx->tab.vt_cap,
				   sizeof(*t));
	if (!t)
		return -ENOMEM;
	ctx->tab.vt = t;
	size_t i = dxmi_vt_search(ctx, v->start);
	memmove(&ctx->tab.vt[i + 1], &ctx->tab.vt[i],
		(ctx->tab.vt_n - i) * sizeof(ctx->tab.vt[0]));
	ctx->tab.vt[i] = v;
	ctx->tab.vt_n++;
	v->rnext = v->r->views;
	v->r->views = v;
	return 0;
}

static void vt_remove(struct dxm_ctx *ctx, struct dxm_view *v)
{
	size_t i = dxmi_vt_search(ctx, v->start);
	if (i < ctx->tab.vt_n && ctx->tab.vt[i] == v) {
		memmove(&ctx->tab.vt[i], &ctx->tab.vt[i + 1],
			(ctx->tab.vt_n - i - 1) * sizeof(ctx->tab.vt[0]));
		ctx->tab.vt_n--;
	}
	for (struct dxm_view **pp = &v->r->views; *pp; pp = &(*pp)->rnext)
		if (*pp == v) {
			*pp = v->rnext;
			break;
		}
}

/* Split the piece containing addr so that a piece starts at addr.  The
 * table needs room for one more entry (vt_lock held for writing). */
int dxmi_vt_split(struct dxm_ctx *ctx, uintptr_t addr)
{
	struct dxm_view *v = dxmi_vt_find(ctx, addr);
	if (!v || v->start == addr)
		return 0;
	struct dxm_view *t = malloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	size_t head = (addr - v->start) >> v->pshift;
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
	size_t lo = 0, hi = ctx->tab.rt_n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct dxm_region *r = ctx->tab.rt[mid];
		if ((uintptr_t)r->dev + (r->npages << r->pshift) <= dev)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int dxmi_rt_insert(struct dxm_ctx *ctx, struct dxm_region *r)
{
	struct dxm_region **t = grow(ctx->tab.rt, ctx->tab.rt_n,
				     &ctx->tab.rt_cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	ctx->tab.rt = t;
	size_t i = rt_search(ctx, (uintptr_t)r->dev);
	memmove(&ctx->tab.rt[i + 1], &ctx->tab.rt[i],
		(ctx->tab.rt_n - i) * sizeof(ctx->tab.rt[0]));
	ctx->tab.rt[i] = r;
	ctx->tab.rt_n++;
	return 0;
}

void dxmi_rt_remove(struct dxm_ctx *ctx, struct dxm_region *r)
{
	size_t i = rt_search(ctx, (uintptr_t)r->dev);
	if (i < ctx->tab.rt_n && ctx->tab.rt[i] == r) {
		memmove(&ctx->tab.rt[i], &ctx->tab.rt[i + 1],
			(ctx->tab.rt_n - i - 1) * sizeof(ctx->tab.rt[0]));
		ctx->tab.rt_n--;
	}
}

/*
 * The region and page behind a device-side address (what
 * dxm_make_exclusive returned).  Pages are found by it, not by a CPU
 * address, where the CPU view may have been unmapped or moved since: as
 * the kernel's unlock_page() goes by page.
 */
int dxmi_region_lookup_dev(struct dxm_ctx *ctx, const void *dev,
		      struct dxm_region **rp, size_t *pg)
{
	uintptr_t d = (uintptr_t)dev;
	int err = -ENOENT;
	pthread_rwlock_rdlock(&ctx->tab.lock);
	size_t i = rt_search(ctx, d);
	struct dxm_region *r = i < ctx->tab.rt_n ? ctx->tab.rt[i] : NULL;
	if (r && (uintptr_t)r->dev <= d &&
	    !((d - (uintptr_t)r->dev) & (r->psize - 1))) {
		*rp = r;
		*pg = (d - (uintptr_t)r->dev) >> r->pshift;
		dxmi_region_get(*rp);
		err = 0;
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
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

/*
 * A region's page-state bytes, all PS_CPU (zero).  Large tables come
 * straight from mmap, untouched until used: a region of terabytes costs
 * gigabytes of table that a malloc would count at once (a fuzzer's malloc
 * limit counts it, and so does anyone watching the heap).  NULL if there
 * is no room.
 */
#define ST_MMAP_MIN (64u << 10)

dxm_pstate_t *dxmi_st_alloc(size_t npages)
{
	if (npages < ST_MMAP_MIN)
		return calloc(npages, sizeof(dxm_pstate_t));
	void *p = mmap(NULL, npages * sizeof(dxm_pstate_t),
		       PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

void dxmi_st_free(dxm_pstate_t *st, size_t npages)
{
	if (npages < ST_MMAP_MIN)
		free((void *)st);
	else if (st)
		munmap((void *)st, npages * sizeof(dxm_pstate_t));
}

void dxmi_region_get(struct dxm_region *r)
{
	atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void dxmi_region_put(struct dxm_region *r)
{
	if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
		return;
	struct dxm_ctx *ctx = r->ctx;
	if (r->kind->release)
		r->kind->release(r);
	munmap(r->dev, r->npages << r->pshift);
	if (r->fd >= 0)
		close(r->fd);
	stat_add(&ctx->c.regions, -1ul);
	stat_add(&ctx->c.managed_pages, -r->npages);
	dxmi_st_free(r->st, r->npages);
	free(r);
}

/*
 * The teardown rule.  Every operation that owns pages of a region (takes a
 * page out of the CPU's hands or gives one back, moves data to or from
 * staging, maps a page into a view) does it inside the region, between
 * dxmi_region_enter() and dxmi_region_exit(): dxm_make_exclusive, dxm_range_fault,
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
 *             thread (dxmi_region_run_quiet): states reset, deferred faults
 *             released for good, the table's reference dropped.
 * A fault on a dying region is deferred (fault.c) until the teardown
 * releases it.  Only the thread whose dxmi_region_kill() set R_DYING tears the
 * region down.
 */
bool dxmi_region_enter(struct dxm_region *r)
{
	if (atomic_fetch_add(&r->users, 1) & R_DYING) {
		dxmi_region_exit(r);
		return false;
	}
	return true;
}

/* One more hold for a thread already inside (it cannot fail then): a
 * restore re-queued for later stays inside until it is done, so that a
 * dxm_free waits for it rather than for someone waiting on it. */
void dxmi_region_hold(struct dxm_region *r)
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
	struct dxm_region *top = atomic_load(&ctx->tab.quiet);
	do
		r->quiet_next = top;
	while (!atomic_compare_exchange_weak(&ctx->tab.quiet, &top, r));
	dxmi_ctx_kick(ctx);
}

void dxmi_region_exit(struct dxm_region *r)
{
	if (atomic_fetch_sub(&r->users, 1) == (R_DYING | 1))
		run_on_quiet(r);
}

/* Begin the teardown: no one enters from now on.  False if another
 * thread began it already (it owns the teardown). */
bool dxmi_region_kill(struct dxm_region *r)
{
	return !(atomic_fetch_or(&r->users, R_DYING) & R_DYING);
}

/* dxm_free: wait until nobody is inside (never on a handler thread). */
void dxmi_region_wait_quiet(struct dxm_region *r)
{
	unsigned us = 5;
	while (atomic_load(&r->users) != R_DYING)
		dxmi_nap_us(&us);
}

/* The end of every teardown, views detached and the devices told: the
 * states are reset, faults deferred on the region are released for good,
 * and the table's reference goes. */
void dxmi_region_teardown_finish(struct dxm_region *r)
{
	for (size_t i = 0; i < r->npages; i++)
		atomic_store(&r->st[i], PS_CPU);
	dxmi_ps_forget_region(r);
	dxmi_region_put(r);
}

/* Handler threads: finish the munmapped regions whose last user left. */
void dxmi_region_run_quiet(struct dxm_ctx *ctx)
{
	struct dxm_region *r = atomic_exchange(&ctx->tab.quiet, NULL);
	while (r) {
		struct dxm_region *next = r->quiet_next;
		dxmi_region_teardown_finish(r);
		r = next;
	}
}

/* munmap: the last one out finishes it on a handler thread; if nobody is
 * inside now, we do, at once (no lock held here): a fault read after the
 * UNMAP event then finds the region gone from the statistics too. */
void dxmi_region_finish_when_quiet(struct dxm_region *r)
{
	atomic_store(&r->on_quiet, true);
	if (atomic_load(&r->users) == R_DYING &&
	    atomic_exchange(&r->on_quiet, false))
		dxmi_region_teardown_finish(r);
}

int dxmi_region_lookup(struct dxm_ctx *ctx, uintptr_t addr, struct dxm_where *w)
{
	pthread_rwlock_rdlock(&ctx->tab.lock);
	struct dxm_view *v = dxmi_vt_find(ctx, addr);
	if (v) {
		fill_where(v, w);
		dxmi_region_get(v->r);
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
	return v ? 0 : -EFAULT;
}

/*
 * Find the region behind [start, start+len): the range must lie in one CPU
 * view (any number of pieces of it, contiguous).  w describes the piece at
 * start; w->prot is the intersection of the pieces' protections.
 */
int dxmi_region_lookup_range(struct dxm_ctx *ctx, uintptr_t start, size_t len,
			struct dxm_where *w)
{
	int err = -EFAULT;
	pthread_rwlock_rdlock(&ctx->tab.lock);
	size_t i = dxmi_vt_search(ctx, start);
	if (i >= ctx->tab.vt_n || ctx->tab.vt[i]->start > start)
		goto out;
	struct dxm_view *v = ctx->tab.vt[i];
	fill_where(v, w);
	uintptr_t end = start + len, cur = v->start;
	size_t pg = v->pgoff;
	for (; i < ctx->tab.vt_n; i++) {
		struct dxm_view *p = ctx->tab.vt[i];
		if (p->start != cur || p->r != v->r || p->group != v->group ||
		    p->pgoff != pg)
			break;
		w->prot &= p->prot;
		cur += p->npages << p->pshift;
		pg += p->npages;
		if (cur >= end) {
			dxmi_region_get(v->r);
			err = 0;
			break;
		}
	}
out:
	pthread_rwlock_unlock(&ctx->tab.lock);
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
size_t dxmi_region_view_addrs(struct dxm_region *r, size_t pg, size_t n,
			 uintptr_t *out, size_t max)
{
	struct dxm_ctx *ctx = r->ctx;
	size_t k = 0, a, b;
	pthread_rwlock_rdlock(&ctx->tab.lock);
	for (struct dxm_view *v = r->views; v; v = v->rnext) {
		if (!clip(v, pg, n, &a, &b))
			continue;
		if (k < max) {
			out[2 * k] = v->start + ((a - v->pgoff) << r->pshift);
			out[2 * k + 1] = v->start +
					 ((b - v->pgoff) << r->pshift);
		}
		k++;
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
	return k;
}

/*
 * For each CPU view piece of r, each run of region pages in [pg, pg+n)
 * whose mask byte is set (mask NULL: every page; mask[i] is page pg + i):
 * fn(r, cpu, first page, pages, arg), cpu the run's first CPU address.
 * With first set (a CPU address), the run that holds it is walked before
 * every other one, so that a faulting thread is woken soonest.
 * Under vt_lock (read), taken once: the addresses stay r's while fn runs (a
 * view is detached under the write lock), so fn must not wait for a
 * handler (internal.h).  The first non-zero return of fn ends the walk and
 * is returned.
 */
int dxmi_region_runs(struct dxm_region *r, size_t pg, size_t n,
		const uint8_t *mask, uintptr_t first,
		int (*fn)(struct dxm_region *r, uintptr_t cpu, size_t pg,
			  size_t n, void *arg),
		void *arg)
{
	struct dxm_ctx *ctx = r->ctx;
	int ret = 0;
	size_t a, b;
	pthread_rwlock_rdlock(&ctx->tab.lock);
	for (int pass = first ? 0 : 1; pass < 2 && !ret; pass++) {
		for (struct dxm_view *v = r->views; v && !ret; v = v->rnext) {
			if (!clip(v, pg, n, &a, &b))
				continue;
			while (a < b && !ret) {
				while (mask && a < b && !mask[a - pg])
					a++;
				size_t e = a;
				while (e < b && (!mask || mask[e - pg]))
					e++;
				uintptr_t s = v->start +
					      ((a - v->pgoff) << r->pshift);
				bool here = first && first >= s &&
					    first < s + ((e - a) << r->pshift);
				if (e > a && here == (pass == 0))
					ret = fn(r, s, a, e - a, arg);
				a = e;
			}
		}
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
	return ret;
}

struct wake {
	uintptr_t addr;
	bool found;
};

static int wake_fn(struct dxm_region *r, uintptr_t cpu, size_t pg, size_t n,
		   void *arg)
{
	struct wake *w = arg;
	(void)pg;
	dxmi_uffd_wake(r->uffd, cpu, n << r->pshift);
	w->found |= w->addr >= cpu && w->addr < cpu + (n << r->pshift);
	return 0;
}

/* Wake the threads that wait on region pages [pg, pg+n) in every view,
 * and the one faulting at addr (0: none) even where no view holds it any
 * more (its munmap was read since: it faults again and finds none). */
void dxmi_region_wake(struct dxm_region *r, size_t pg, size_t n,
		      uintptr_t addr)
{
	struct wake w = { addr, !addr };
	dxmi_region_runs(r, pg, n, NULL, 0, wake_fn, &w);
	if (!w.found)
		dxmi_uffd_wake(r->uffd, addr, r->psize);
}

/* --------------------------------------------------------------- creation */

int dxmi_region_add_piece(struct dxm_ctx *ctx, struct dxm_region *r, void *addr,
		     unsigned group)
{
	struct dxm_view *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->start = (uintptr_t)addr;
	v->npages = r->npages;
	v->pshift = r->pshift;
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
	size_t i = dxmi_vt_search(ctx, start);
	return i < ctx->tab.vt_n && ctx->tab.vt[i]->start < end;
}

/*
 * map() a new range of len bytes that no piece of the table claims: where
 * the kernel hands out the address of a piece whose munmap dxm has not
 * read yet, keep that mapping aside until another address comes up (see
 * the top of this file).  The caller holds the gate.
 */
#define MAX_PLACEHOLDERS 8
void *dxmi_region_map_fresh(struct dxm_ctx *ctx, size_t len,
		       void *(*map)(void *arg, size_t len), void *arg)
{
	void *held[MAX_PLACEHOLDERS];
	size_t nheld = 0;
	void *p;
	for (;;) {
		p = map(arg, len);
		if (p == MAP_FAILED)
			break;
		pthread_rwlock_rdlock(&ctx->tab.lock);
		bool stale = vt_overlaps(ctx, (uintptr_t)p, (uintptr_t)p + len);
		pthread_rwlock_unlock(&ctx->tab.lock);
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

/*
 * Wait until no UNMAP pass that overlaps [start, end) is running.  Not on
 * a handler thread: a driver's callback may be that pass.  Taking the gate
 * first makes every event read so far registered here.
 */
void dxmi_region_wait_unmaps(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end)
{
	if (dxmi_ctx_on_handler(ctx))
		return;
	pthread_mutex_lock(&ctx->gate);
	pthread_mutex_unlock(&ctx->gate);
	pthread_mutex_lock(&ctx->tab.um_mtx);
	for (;;) {
		bool busy = false;
		for (struct dxm_unmap *u = ctx->tab.um_passes; u && !busy;
		     u = u->next)
			busy = u->start < end && start < u->end;
		if (!busy)
			break;
		pthread_cond_wait(&ctx->tab.um_cond, &ctx->tab.um_mtx);
	}
	pthread_mutex_unlock(&ctx->tab.um_mtx);
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
int dxmi_region_wait_unclaimed(struct dxm_ctx *ctx, uintptr_t start, size_t len,
			  bool keep_gate)
{
	uint64_t deadline = 0;
	unsigned us = 10;
	for (;;) {
		pthread_mutex_lock(&ctx->gate);
		pthread_rwlock_rdlock(&ctx->tab.lock);
		size_t i = dxmi_vt_search(ctx, start);
		bool clash = i < ctx->tab.vt_n && ctx->tab.vt[i]->start < start + len;
		uintptr_t at = clash ? (ctx->tab.vt[i]->start > start
						? ctx->tab.vt[i]->start
						: start)
				     : 0;
		pthread_rwlock_unlock(&ctx->tab.lock);
		if (!clash) {
			if (!keep_gate)
				pthread_mutex_unlock(&ctx->gate);
			return 0;
		}
		pthread_mutex_unlock(&ctx->gate);
		if (vma_uffd_registered(at) || dxmi_ctx_on_handler(ctx))
			return -EEXIST;
		if (!deadline) {
			deadline = dxmi_now_ns() + 5000000000ull;
		} else if (dxmi_now_ns() > deadline) {
			pr_err("dxm_adopt: %#lx is still a view whose munmap "
			       "no handler has read after 5 s",
			       at);
			return -EEXIST;
		}
		dxmi_nap_us(&us);
	}
}

/*
 * Insert an adopted range (dxm_adopt): register it for MISSING faults and
 * add its one view, under the gate like a new mapping.  A piece already in
 * the table there is either a view that is still live (-EEXIST) or one
 * the program unmapped whose event no handler has read yet: then wait for
 * it to be detached (the munmap is blocked until it is read).
 */
int dxmi_region_adopt_insert(struct dxm_region *r, uintptr_t start, size_t len)
{
	struct dxm_ctx *ctx = r->ctx;
	int err = dxmi_region_wait_unclaimed(ctx, start, len, true);
	if (err)
		return err;
	/* under the gate */
	err = dxmi_uffd_register(r->uffd, start, len, UFFDIO_REGISTER_MODE_MISSING);
	if (err) {
		if (err == -EBUSY)
			pr_warn("dxm_adopt: %#lx+%#zx is registered with "
				"another userfaultfd",
				start, len);
		pthread_mutex_unlock(&ctx->gate);
		return err;
	}
	pthread_rwlock_wrlock(&ctx->tab.lock);
	if (vt_overlaps(ctx, start, start + len))
		err = -EEXIST; /* cannot happen: checked under the gate */
	if (!err) {
		r->epoch = atomic_load(&ctx->epoch) + 1;
		err = dxmi_rt_insert(ctx, r);
	}
	if (!err) {
		err = dxmi_region_add_piece(ctx, r, (void *)start, 0);
		if (err)
			dxmi_rt_remove(ctx, r);
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
	if (err)
		dxmi_uffd_unregister(r->uffd, start, len);
	pthread_mutex_unlock(&ctx->gate);
	if (!err)
		dxmi_region_wait_unmaps(ctx, start, start + len);
	return err;
}

/* Call fn on every live region whose kind has every KIND_* flag of
 * kind_flags, with a reference and no lock. */
void dxmi_region_foreach(struct dxm_ctx *ctx, unsigned kind_flags,
		    void (*fn)(struct dxm_region *r, void *arg), void *arg)
{
	pthread_rwlock_rdlock(&ctx->tab.lock);
	size_t n = 0;
	struct dxm_region **v = malloc((ctx->tab.rt_n + 1) * sizeof(*v));
	for (size_t i = 0; v && i < ctx->tab.rt_n; i++)
		if ((ctx->tab.rt[i]->kind->flags & kind_flags) == kind_flags) {
			dxmi_region_get(ctx->tab.rt[i]);
			v[n++] = ctx->tab.rt[i];
		}
	pthread_rwlock_unlock(&ctx->tab.lock);
	if (!v) {
		pr_err("out of memory walking the regions");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		fn(v[i], arg);
		dxmi_region_put(v[i]);
	}
	free(v);
}

struct dxm_unmap *dxmi_region_unmap_detach(struct dxm_ctx *ctx, uintptr_t start,
				      uintptr_t end)
{
	struct dxm_unmap *u;
	while (!(u = calloc(1, sizeof(*u))))
		sched_yield(); /* the event cannot be read again */
	u->start = start;
	u->end = end;
	pthread_rwlock_wrlock(&ctx->tab.lock);
	int err = dxmi_region_detach_range(ctx, start, end, -1, &u->list);
	pthread_rwlock_unlock(&ctx->tab.lock);
	if (err)
		pr_err("cannot track munmap of [%#lx, %#lx): %s", start, end,
		       strerror(-err));
	pthread_mutex_lock(&ctx->tab.um_mtx);
	u->next = ctx->tab.um_passes;
	ctx->tab.um_passes = u;
	pthread_mutex_unlock(&ctx->tab.um_mtx);
	return u;
}

/* The end of a pass dxmi_region_unmap_detach began (views.c finished it). */
void dxmi_region_unmap_done(struct dxm_ctx *ctx, struct dxm_unmap *u)
{
	pthread_mutex_lock(&ctx->tab.um_mtx);
	for (struct dxm_unmap **pp = &ctx->tab.um_passes; *pp; pp = &(*pp)->next)
		if (*pp == u) {
			*pp = u->next;
			break;
		}
	pthread_cond_broadcast(&ctx->tab.um_cond);
	pthread_mutex_unlock(&ctx->tab.um_mtx);
	free(u);
}

void dxmi_region_remap_move(struct dxm_ctx *ctx, uintptr_t from, uintptr_t to,
		       size_t len)
{
	stat_add(&ctx->c.events_remap, 1);
	pthread_rwlock_wrlock(&ctx->tab.lock);
	int err = dxmi_vt_split(ctx, from);
	if (!err)
		err = dxmi_vt_split(ctx, from + len);
	if (err) {
		pthread_rwlock_unlock(&ctx->tab.lock);
		pr_err("cannot track mremap of %#lx: %s", from, strerror(-err));
		return;
	}
	/* Move every piece in [from, from+len) to its new address; the new
	 * range cannot overlap the old one. */
	size_t i;
	while ((i = dxmi_vt_search(ctx, from)) < ctx->tab.vt_n &&
	       ctx->tab.vt[i]->start < from + len) {
		struct dxm_view *v = ctx->tab.vt[i];
		vt_remove(ctx, v);
		v->start = v->start - from + to;
		vt_insert(ctx, v); /* cannot fail: a slot was just freed */
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
}

/* ------------------------------------------------------------ detaching */

/* Detach the pieces covering [start, end) (vt_lock held for writing). */
int dxmi_region_detach_range(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end,
			int group, struct dxm_gone **list)
{
	int err = dxmi_vt_split(ctx, start);
	if (!err)
		err = dxmi_vt_split(ctx, end);
	if (err)
		return err;
	size_t i = dxmi_vt_search(ctx, start);
	while (i < ctx->tab.vt_n && ctx->tab.vt[i]->start < end) {
		struct dxm_view *v = ctx->tab.vt[i];
		if (group >= 0 && v->group != (unsigned)group) {
			i++;
			continue;
		}
		struct dxm_gone *g = malloc(sizeof(*g));
		if (!g)
			return -ENOMEM;
		g->r = v->r;
		dxmi_region_get(v->r);
		g->start = v->start;
		g->end = v->start + (v->npages << v->pshift);
		g->pgoff = v->pgoff;
		vt_remove(ctx, v);
		g->last = v->r->views == NULL;
		if (g->last)
			dxmi_rt_remove(ctx, v->r);
		g->next = *list;
		*list = g;
		free(v);
	}
	return 0;
}

/* ---------------------------------------------------------- init, fini */

int dxmi_tables_init(struct dxm_ctx *ctx)
{
	/* Writers first: a handler detaching a munmapped view is never
	 * starved by a stream of lookups. */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int err = -pthread_rwlock_init(&ctx->tab.lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&ctx->tab.um_mtx, NULL);
	pthread_cond_init(&ctx->tab.um_cond, NULL);
	return err;
}

void dxmi_tables_fini(struct dxm_ctx *ctx)
{
	pthread_rwlock_destroy(&ctx->tab.lock);
	pthread_mutex_destroy(&ctx->tab.um_mtx);
	pthread_cond_destroy(&ctx->tab.um_cond);
	free(ctx->tab.vt);
	ctx->tab.vt = NULL;
	free(ctx->tab.rt);
	ctx->tab.rt = NULL;
}
