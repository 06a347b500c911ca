// SPDX-License-Identifier: MIT
/*
 * The public calls on regions and their CPU views (dxm_alloc, dxm_alias,
 * dxm_free, dxm_mprotect), and the end of a view: whether dxm_free or the
 * program's munmap detached it from the tables (region.c), the devices
 * are told (DXM_EVENT_UNMAP), its kind undoes it, and a region left with
 * no view is torn down under the teardown rule (region.c).
 *
 * No lock of its own: the tables are region.c's (vt_lock), the gate
 * base.c's; notifiers run with no lock held.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "inject.h"
#include "internal.h"

#define REG_MODE (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR)

/* ------------------------------------------------------------- new views */

struct view_map {
	struct dxm_region *r;
	bool from_fd;
	int inj;
};

/* A second mapping of r's shared pages: mremap() of the device view with
 * old_size 0, or, where that is refused (valgrind does, and the kernel
 * for hugetlb), the memfd, which the region then keeps open.  Either way
 * no fork()ed child inherits it (mremap copies the device view's
 * MADV_DONTFORK; the memfd's mapping is given it here). */
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
		if (p != MAP_FAILED)
			madvise(p, len, MADV_DONTFORK);
	}
	return p;
}

/*
 * A new CPU view of r, without keeping the memfd open, inserted into the
 * table under the gate (see base.c), then populated (only a brand-new
 * region: nobody knows its address yet, so no page of it can be
 * exclusive), then registered.
 */
static void finish_gone(struct dxm_ctx *ctx, struct dxm_gone *list,
			bool unmap);

/* On failure, *torn tells whether the view had been inserted and was torn
 * down again (which drops the table's reference when it was the last). */
static int new_view(struct dxm_ctx *ctx, struct dxm_region *r, bool populate,
		    void **addrp, bool *torn)
{
	*torn = false;
	size_t len = r->npages << r->pshift;
	int err = 0;
	struct view_map m = { .r = r };
	pthread_mutex_lock(&ctx->gate);
	void *p = dxmi_region_map_fresh(ctx, len, map_view, &m);
	if (p == MAP_FAILED) {
		err = -errno;
	} else {
		r->keep_fd |= m.from_fd;
		pthread_rwlock_wrlock(&ctx->tab.lock);
		unsigned group = r->next_group++;
		err = dxmi_region_add_piece(ctx, r, p, group);
		pthread_rwlock_unlock(&ctx->tab.lock);
	}
	pthread_mutex_unlock(&ctx->gate);
	if (err) {
		if (p != MAP_FAILED)
			munmap(p, len);
		return err;
	}
	if (populate)
		err = dxmi_sys_madvise(p, len, MADV_POPULATE_WRITE);
	if (!err)
		err = dxmi_uffd_register(r->uffd, (uintptr_t)p, len, REG_MODE);
	if (err) {
		struct dxm_gone *list = NULL;
		pthread_rwlock_wrlock(&ctx->tab.lock);
		int e2 = dxmi_region_detach_range(ctx, (uintptr_t)p, (uintptr_t)p + len,
				      -1, &list);
		pthread_rwlock_unlock(&ctx->tab.lock);
		if (e2)
			pr_err("cannot undo a failed view: %s", strerror(-e2));
		finish_gone(ctx, list, true);
		*torn = true;
		return err;
	}
	dxmi_region_wait_unmaps(ctx, (uintptr_t)p, (uintptr_t)p + len);
	*addrp = p;
	return 0;
}

/* The system's memory and swap, in bytes: a region's pages are all
 * allocated up front (fallocate), and a length past this can never be:
 * the kernel would fill the memory and call the OOM killer first. */
static uint64_t memory_total(void)
{
	struct sysinfo si;
	if (sysinfo(&si))
		return UINT64_MAX;
	return ((uint64_t)si.totalram + si.totalswap) * si.mem_unit;
}

DXM_API int dxm_alloc(struct dxm_ctx *ctx, size_t len, unsigned flags,
		      void **addrp)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!addrp || !len || (flags & ~(DXM_ALLOC_INHERIT | DXM_ALLOC_HUGE)))
		return -EINVAL;
	if (flags & DXM_ALLOC_INHERIT) {
		pr_warn("dxm_alloc: DXM_ALLOC_INHERIT is not supported yet");
		return -EOPNOTSUPP;
	}
	const struct dxm_kind *kind = flags & DXM_ALLOC_HUGE ? &dxmi_hugetlb_kind
							     : &dxmi_memfd_kind;
	unsigned pshift = kind->pshift ? kind->pshift : ctx->pshift;
	size_t psize = (size_t)1 << pshift;
	if (len > SIZE_MAX / 2 || len > memory_total())
		return -ENOMEM;
	len = (len + psize - 1) & ~(psize - 1);

	struct dxm_region *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->ctx = ctx;
	r->kind = kind;
	r->uffd = ctx->uffd;
	r->fd = -1;
	r->psize = psize;
	r->pshift = pshift;
	r->npages = len >> pshift;
	r->st = dxmi_st_alloc(r->npages);
	atomic_init(&r->refs, 1);
	if (!r->st) {
		free(r);
		return -ENOMEM;
	}
	err = r->kind->create(r);
	if (err)
		goto fail;
	/* Before anyone can see the region (dxm_exclusive_unlock). */
	unsigned max = atomic_load(&ctx->max_pshift);
	while (max < pshift &&
	       !atomic_compare_exchange_weak(&ctx->max_pshift, &max, pshift))
		;
	pthread_rwlock_wrlock(&ctx->tab.lock);
	err = dxmi_rt_insert(ctx, r);
	pthread_rwlock_unlock(&ctx->tab.lock);
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
			dxmi_region_put(r); /* the only reference: frees r */
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
	dxmi_st_free(r->st, r->npages);
	free(r);
	return err == -ENOSPC || err == -EFBIG ? -ENOMEM : err;
}

DXM_API int dxm_alias(struct dxm_ctx *ctx, void *addr, void **aliasp)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!addr || !aliasp)
		return -EINVAL;
	struct dxm_where w;
	if (dxmi_region_lookup(ctx, (uintptr_t)addr, &w))
		return -ENOENT;
	struct dxm_region *r = w.r;
	if (w.vstart != (uintptr_t)addr || w.pgoff != 0 ||
	    !(r->kind->flags & KIND_ALIAS)) {
		dxmi_region_put(r); /* adopted private memory has one view */
		return -EINVAL;
	}
	if (!dxmi_region_enter(r)) {
		dxmi_region_put(r);
		return -ENOENT;
	}
	void *p;
	bool torn;
	err = new_view(ctx, r, false, &p, &torn);
	if (!err) {
		/* Map every page the CPU owns now; exclusive pages stay
		 * unmapped and fault like in every other view. */
		dxmi_pages_to_cpu(r, 0, r->npages, 0, DXM_EVENT_CLEAR);
		*aliasp = p;
	}
	dxmi_region_exit(r);
	dxmi_region_put(r);
	return err;
}

DXM_API long dxm_page_size(struct dxm_ctx *ctx, const void *addr)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	struct dxm_where w;
	struct dxm_region *r;
	size_t pg;
	if (!dxmi_region_lookup(ctx, (uintptr_t)addr, &w))
		r = w.r;
	else if (dxmi_region_lookup_dev(ctx, addr, &r, &pg))
		return -ENOENT;
	long size = (long)r->psize;
	dxmi_region_put(r);
	return size;
}

/* One detached piece: the devices are told, then its kind undoes it
 * (`unmap`: dxm_free, not a munmap the program did). */
static void gone_piece(struct dxm_ctx *ctx, struct dxm_gone *g, bool unmap)
{
	struct dxm_region *r = g->r;
	size_t len = g->end - g->start;
	dxmi_notify_range(ctx, g->start, g->end, DXM_EVENT_UNMAP, NULL);
	r->kind->gone(r, g->start, g->pgoff, len >> r->pshift, unmap,
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
		g->owner = g->last && dxmi_region_kill(g->r);
	for (struct dxm_gone *g = list; g; g = g->next)
		gone_piece(ctx, g, unmap);
	while (list) {
		struct dxm_gone *g = list;
		struct dxm_region *r = g->r;
		list = g->next;
		if (g->owner)
			dxmi_region_finish_when_quiet(r);
		else
			/* Faults deferred on addresses that are gone are
			 * resolved again, and woken to retry. */
			dxmi_ps_release_waiters(r, 0, r->npages);
		dxmi_region_put(r);
		free(g);
	}
}

/* dxm_free of a region: the teardown rule's first case. */
static int free_region(struct dxm_ctx *ctx, struct dxm_region *r)
{
	if (!dxmi_region_kill(r))
		return -ENOENT; /* a munmap or another dxm_free is at it */
	dxmi_region_wait_quiet(r);
	struct dxm_gone *list = NULL;
	int err = 0;
	pthread_mutex_lock(&ctx->gate);
	pthread_rwlock_wrlock(&ctx->tab.lock);
	while (r->views && !err) {
		struct dxm_view *p = r->views;
		err = dxmi_region_detach_range(ctx, p->start,
				   p->start + (p->npages << p->pshift),
				   (int)p->group, &list);
	}
	if (r->views == NULL)
		dxmi_rt_remove(ctx, r); /* a munmap may have done so already */
	pthread_rwlock_unlock(&ctx->tab.lock);
	pthread_mutex_unlock(&ctx->gate);
	while (list) {
		struct dxm_gone *g = list;
		list = g->next;
		gone_piece(ctx, g, true);
		dxmi_region_put(g->r);
		free(g);
	}
	dxmi_region_teardown_finish(r);
	return err;
}

DXM_API int dxm_free(struct dxm_ctx *ctx, void *addr)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!addr)
		return -EINVAL;
	struct dxm_gone *list = NULL;
	/* Under the gate: a view the program unmapped, whose munmap has
	 * returned, is detached already (-ENOENT). */
	pthread_mutex_lock(&ctx->gate);
	pthread_rwlock_wrlock(&ctx->tab.lock);
	struct dxm_view *v = dxmi_vt_find(ctx, (uintptr_t)addr);
	if (!v || v->start != (uintptr_t)addr || v->pgoff != 0) {
		pthread_rwlock_unlock(&ctx->tab.lock);
		pthread_mutex_unlock(&ctx->gate);
		return v ? -EINVAL : -ENOENT;
	}
	struct dxm_region *r = v->r;
	unsigned group = v->group;
	if (group == 0) {
		/* Freeing the dxm_alloc view frees the region with all its
		 * aliases, once nobody is inside it. */
		dxmi_region_get(r);
		pthread_rwlock_unlock(&ctx->tab.lock);
		pthread_mutex_unlock(&ctx->gate);
		/* A handler thread may be inside the region itself, or be
		 * what an operation inside waits for. */
		if (dxmi_ctx_on_handler(ctx)) {
			dxmi_region_put(r);
			return -EDEADLK;
		}
		/* A fork waits for the whole of it: adopted pages on their
		 * way back from staging would be holes in the child
		 * (fork.c).  fork_lock before entering anything. */
		dxmi_fork_enter(ctx);
		err = free_region(ctx, r);
		dxmi_fork_exit(ctx);
		dxmi_region_put(r);
		return err;
	}
	/* An alias: its pieces go; the region and its pages stay. */
	for (struct dxm_view *p = r->views; p && !err;) {
		if (p->group != group) {
			p = p->rnext;
			continue;
		}
		err = dxmi_region_detach_range(ctx, p->start,
				   p->start + (p->npages << p->pshift),
				   (int)group, &list);
		p = r->views; /* the list changed: restart */
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
	pthread_mutex_unlock(&ctx->gate);
	finish_gone(ctx, list, true);
	return err;
}

/* Under the gate (base.c): detach what a munmap removed, and register the
 * pass until region_unmap_finish() has told the devices. */
void dxmi_views_unmap_finish(struct dxm_ctx *ctx, struct dxm_unmap *u)
{
	finish_gone(ctx, u->list, false);
	dxmi_region_unmap_done(ctx, u);
}

/* ctx_destroy: free every region that is left. */
void dxmi_views_destroy_all(struct dxm_ctx *ctx)
{
	for (;;) {
		pthread_rwlock_rdlock(&ctx->tab.lock);
		void *addr = NULL;
		for (size_t i = 0; i < ctx->tab.vt_n && !addr; i++)
			if (ctx->tab.vt[i]->group == 0 && ctx->tab.vt[i]->pgoff == 0)
				addr = (void *)ctx->tab.vt[i]->start;
		pthread_rwlock_unlock(&ctx->tab.lock);
		if (!addr)
			break;
		dxm_free(ctx, addr);
	}
	/* Pieces whose start piece the program unmapped itself. */
	struct dxm_gone *list = NULL;
	pthread_rwlock_wrlock(&ctx->tab.lock);
	while (ctx->tab.vt_n) {
		struct dxm_view *v = ctx->tab.vt[0];
		if (dxmi_region_detach_range(ctx, v->start,
				 v->start + (v->npages << v->pshift), -1,
				 &list))
			break;
	}
	pthread_rwlock_unlock(&ctx->tab.lock);
	finish_gone(ctx, list, true);
	free(ctx->tab.vt);
	ctx->tab.vt = NULL;
	free(ctx->tab.rt);
	ctx->tab.rt = NULL;
}

/* ---------------------------------------------------------------- mprotect */

DXM_API int dxm_mprotect(struct dxm_ctx *ctx, void *addr, size_t len, int prot)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!range_ok(ctx, addr, len) ||
	    (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)))
		return -EINVAL;
	struct dxm_where w;
	uintptr_t start = (uintptr_t)addr, end = start + len;
	if (dxmi_region_lookup_range(ctx, start, len, &w))
		return -EFAULT;
	if (!region_range_ok(w.r, addr, len)) {
		dxmi_region_put(w.r);
		return -EINVAL; /* not whole pages of a huge-page region */
	}
	if (!dxmi_region_enter(w.r)) {
		dxmi_region_put(w.r);
		return -EFAULT;
	}
	/* Tell the devices first: a device write must not slip in between
	 * the change and the notification. */
	dxmi_notify_range(ctx, start, end, DXM_EVENT_PROTECTION, NULL);
	struct dxm_region *r = w.r;
	size_t pg = w.pgoff + ((start - w.vstart) >> r->pshift);
	if ((r->kind->flags & KIND_MOVES) && !(prot & PROT_WRITE))
		/* UFFDIO_MOVE cannot restore into a read-only mapping: give
		 * the pages back first (the devices were just invalidated). */
		dxmi_pages_to_cpu(r, pg, len >> r->pshift,
			     PTC_INVALIDATE | PTC_WAIT, DXM_EVENT_PROTECTION);
	pthread_rwlock_wrlock(&ctx->tab.lock);
	err = dxmi_vt_split(ctx, start);
	if (!err)
		err = dxmi_vt_split(ctx, end);
	if (!err && mprotect(addr, len, prot))
		err = -errno;
	if (!err && r->kind->protect)
		r->kind->protect(r, pg, len >> r->pshift, prot);
	if (!err)
		for (size_t i = dxmi_vt_search(ctx, start);
		     i < ctx->tab.vt_n && ctx->tab.vt[i]->start < end; i++)
			ctx->tab.vt[i]->prot = prot;
	pthread_rwlock_unlock(&ctx->tab.lock);
	dxmi_region_exit(w.r);
	dxmi_region_put(w.r);
	return err;
}
