// SPDX-License-Identifier: MIT
/*
 * The memfd kind of memory (dxm_alloc): a region's pages are a sealed
 * memfd's.  Its device view is one MAP_SHARED mapping of them that is never
 * registered with a userfaultfd (device-side addresses point into it); its
 * CPU views (the dxm_alloc mapping and its aliases) are registered with
 * ctx->uffd for MISSING and MINOR faults.  Revoking zaps the CPU views
 * (MADV_DONTNEED drops the page table entries, the page cache keeps the
 * data); restoring maps the page back with UFFDIO_CONTINUE, in every view.
 *
 * No lock of its own: pages follow pstate.h (the caller owns those it
 * names), CPU addresses are used under vt_lock (dxmi_region_runs), and a zap
 * also holds zap_lock (base.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "inject.h"
#include "internal.h"

/* The region's memfd (mfd_flags: MFD_HUGETLB and its size, or 0), its
 * pages allocated, and the device view mapping them. */
int dxmi_memfd_create_file(struct dxm_region *r, unsigned mfd_flags)
{
	size_t len = r->npages << r->pshift;
	int fd = memfd_create("dxm", MFD_CLOEXEC | MFD_ALLOW_SEALING | mfd_flags);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)len) || fallocate(fd, 0, 0, (off_t)len) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		int err = -errno;
		close(fd);
		return err;
	}
	int inj = inject(INJ_MMAP);
	r->dev = inj ? MAP_FAILED
		     : mmap(NULL, len, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_POPULATE, fd, 0);
	int err = inj ? -inj : -errno;
	if (r->dev == MAP_FAILED) {
		close(fd);
		return err;
	}
	r->fd = fd; /* kept only where views cannot be made without it */
	/* No view is inherited by a fork()ed child: its page tables could
	 * not be revoked from here (docs/behaviours.md, B7).  mremap copies
	 * this. */
	madvise(r->dev, len, MADV_DONTFORK);
	return 0;
}

static int memfd_create_pages(struct dxm_region *r)
{
	return dxmi_memfd_create_file(r, 0);
}

/* ---------------------------------------------------------------- revoke */

static int zap_run(struct dxm_region *r, uintptr_t s, size_t pg, size_t n,
		   void *arg)
{
	(void)pg, (void)arg;
	int err = dxmi_sys_madvise((void *)s, n << r->pshift, MADV_DONTNEED);
	if (err)
		pr_err("zap of %#lx failed: %s", s, strerror(-err));
	return 0;
}

/*
 * Zap region pages [pg, pg+n) whose dev[i] is set, in every CPU view, one
 * madvise per contiguous run.  Under vt_lock, and zap_lock (base.c) so that
 * no address is zapped after its munmap returned and it was reused by
 * another mapping.  Left open: a munmap that the kernel has done but whose
 * event no handler has read yet (the munmap has not returned), while a
 * third thread maps something else at that address and this zap runs: the
 * kernel gives no way to zap only a mapping that is still ours.
 */
size_t dxmi_memfd_revoke(struct dxm_region *r, size_t pg, size_t n, void **dev,
			 uint8_t *need)
{
	struct dxm_ctx *ctx = r->ctx;
	for (size_t i = 0; i < n; i++)
		need[i] = dev[i] != NULL;
	pthread_rwlock_rdlock(&ctx->zap_lock); /* not between read and detach */
	dxmi_region_runs(r, pg, n, need, 0, zap_run, NULL);
	pthread_rwlock_unlock(&ctx->zap_lock);
	return 0;
}

/* --------------------------------------------------------------- restore */

/* Make a page the handler cannot resolve from the page cache (a hole the
 * program punched with MADV_REMOVE) exist again, zero-filled. */
static int fill_hole(struct dxm_region *r, size_t pg)
{
	return dxmi_sys_madvise(r->dev + (pg << r->pshift), r->psize,
			   MADV_POPULATE_WRITE);
}

static int continue_run(struct dxm_region *r, uintptr_t s, size_t pg,
			size_t n, bool wake)
{
	int tries = 0;
	while (n) {
		long got = dxmi_uffd_continue(r->uffd, s, n << r->pshift,
					      wake);
		if (got > 0) {
			size_t k = (size_t)got >> r->pshift;
			s += k << r->pshift, pg += k, n -= k;
			continue;
		}
		if (got == -EEXIST) {
			/* Already mapped (a duplicate fault): wake whoever
			 * waits on it and go on with the next page. */
			dxmi_uffd_wake(r->uffd, s, r->psize);
			s += r->psize, pg++, n--;
		} else if (got == -EAGAIN) {
			/* An event is unread (a munmap's UNMAP...): we hold
			 * vt_lock, and the handler that must read it may need
			 * the gate behind a writer of vt_lock, or be us.  The
			 * caller retries with no lock held. */
			return -EAGAIN;
		} else if ((got == -EFAULT || got == -ENOENT) && tries++ < 3 &&
			   !fill_hole(r, pg)) {
			continue;
		} else {
			/* Not ours any more (unmapped, unregistered): let
			 * the faulting threads retry on their own. */
			dxmi_uffd_wake(r->uffd, s, n << r->pshift);
			return (int)got;
		}
	}
	return 0;
}

struct cont {
	uintptr_t first;
	int ret;
	bool found;
	bool dontwake; /* the caller wakes (dxmi_region_wake) */
};

static int cont_run(struct dxm_region *r, uintptr_t s, size_t pg, size_t n,
		    void *arg)
{
	struct cont *c = arg;
	int err = continue_run(r, s, pg, n, !c->dontwake);
	if (err && (!c->ret || err == -EAGAIN))
		c->ret = err;
	c->found |= c->first >= s && c->first < s + (n << r->pshift);
	return 0;
}

/*
 * UFFDIO_CONTINUE region pages [pg, pg+n) into every CPU view.  With first
 * set (a fault: n == 1), the faulting view's page goes first, so that the
 * faulting thread is woken soonest.  The caller owns the pages'
 * PS_MAPPING bits.  -EAGAIN: the kernel refused for now (an event is
 * unread); some pages may be left unmapped and no thread was woken for
 * them: a handler wakes the faulting thread (it faults again), any other
 * caller naps and calls again (pages mapped meanwhile are skipped).
 */
static int memfd_continue(struct dxm_region *r, size_t pg, size_t n,
			  uintptr_t first)
{
	struct cont c = { .first = first, .found = !first };
	dxmi_region_runs(r, pg, n, NULL, first, cont_run, &c);
	if (!c.found) {
		/* The view went away: let the faulting thread retry. */
		dxmi_uffd_wake(r->uffd, first, r->psize);
		c.ret = -EFAULT;
	}
	return c.ret;
}

int dxmi_memfd_fill(struct dxm_region *r, size_t pg, uintptr_t addr, bool write)
{
	(void)write;
	return memfd_continue(r, pg, 1, addr) == -EAGAIN ? -EAGAIN : 0;
}

/* The data never left the page cache: map it back. */
int dxmi_memfd_restore(struct dxm_region *r, size_t pg, uintptr_t addr)
{
	dxmi_ps_invalidated(r, pg);
	int err = dxmi_memfd_fill(r, pg, addr, false);
	inject(INJ_RESTORED); /* a slow restore, in tests */
	dxmi_ps_mapping_done(r, pg);
	return err;
}

void dxmi_memfd_restore_run(struct dxm_region *r, size_t a, size_t b,
			    unsigned flags)
{
	/* The pages ours to give back are the CPU's now: their data never
	 * left the page cache. */
	dxmi_ps_invalidated_run(r, a, b);
	/* -EAGAIN: an event is unread.  With PTC_WAIT (the caller needs
	 * the mappings: dxm_range_fault) we wait, holding no lock; a
	 * handler (it may be the reader), or a caller for whom the mappings
	 * are only a head start (dxm_alias: its pages fault in anyway),
	 * leaves the pages to fault in. */
	unsigned tries = 0;
	while (memfd_continue(r, a, b - a, 0) == -EAGAIN &&
	       (flags & PTC_WAIT) && !dxmi_ctx_on_handler(r->ctx))
		dxmi_eagain_wait(&tries);
	for (size_t i = a; i < b; i++)
		dxmi_ps_mapping_done(r, i);
}

/*
 * A fault at addr on page pg of run [a, b) (restore-around), every page
 * INVALIDATING, ours and notified: one UFFDIO_CONTINUE per view's run,
 * waking nobody; the pages are dropped (PS_MAPPING cleared), and only
 * then are the threads woken.  The faulting thread waits for the whole
 * run (a sequential reader would fault on the next page at once), and
 * when it runs again the handler has nothing left to do for it: a
 * dxm_make_exclusive that follows finds no page still being mapped, and
 * the handler's CPU is on its way to sleep (its zap need not interrupt
 * it).  Returns what dxmi_memfd_restore() does.
 */
int dxmi_memfd_restore_span(struct dxm_region *r, size_t a, size_t b,
			    size_t pg, uintptr_t addr)
{
	(void)pg;
	dxmi_ps_invalidated_run(r, a, b);
	struct cont c = { .dontwake = true };
	dxmi_region_runs(r, a, b - a, NULL, 0, cont_run, &c);
	inject(INJ_RESTORED); /* a slow restore, in tests */
	for (size_t i = a; i < b; i++)
		dxmi_ps_mapping_done(r, i);
	dxmi_region_wake(r, a, b - a, addr);
	return c.ret == -EAGAIN ? -EAGAIN : 0;
}

/* ------------------------------------------------------------------ gone */

/* dxm_free undoes the view; after a program's munmap nothing is left to
 * do (the pages stay in the memfd until the region goes). */
void dxmi_memfd_gone(struct dxm_region *r, uintptr_t start, size_t pgoff,
		     size_t n, bool unmap, bool last)
{
	(void)pgoff, (void)last;
	if (unmap) {
		size_t len = n << r->pshift;
		dxmi_uffd_unregister(r->uffd, start, len);
		munmap((void *)start, len);
	}
}

const struct dxm_kind dxmi_memfd_kind = {
	.name = "memfd",
	.flags = KIND_ALIAS | KIND_FILE,
	.devview_kind = DXM_DEVVIEW_MEMFD,
	.create = memfd_create_pages,
	.revoke = dxmi_memfd_revoke,
	.fill = dxmi_memfd_fill,
	.restore = dxmi_memfd_restore,
	.restore_run = dxmi_memfd_restore_run,
	.restore_span = dxmi_memfd_restore_span,
	.gone = dxmi_memfd_gone,
};
