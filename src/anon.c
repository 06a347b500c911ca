// SPDX-License-Identifier: MIT
/*
 * Adopted private anonymous memory (dxm_adopt).
 *
 * The CPU range stays the program's mapping; dxm registers it for MISSING
 * faults on its own userfaultfd (ctx->uffd_anon, which has EVENT_REMOVE: a
 * program's MADV_DONTNEED must discard data, so dxm must see it) and adds a
 * staging area: a private anonymous mapping of the same size, registered
 * with the same userfaultfd (UFFDIO_MOVE requires it), never inherited by
 * a child.  Making a page exclusive moves it (UFFDIO_MOVE: no copy, no
 * REMOVE event) from the CPU range to its staging slot, whose address is
 * the device-side address; a CPU fault moves it back after the notifiers
 * ran.  A page the CPU never had resolves to a zero page, as the kernel
 * would.
 *
 * Locking: ctx->trash.mtx (a leaf, internal.h) serializes the trash area
 * (anon_discard).  Otherwise page states follow pstate.h (the caller owns the
 * pages it moves: LOCKED on the way out, INVALIDATING or MAPPING on the way
 * in), and every ioctl on a CPU address runs under vt_lock (read) so the
 * address is still this region's.
 *
 * Kernel facts this relies on (checked on Linux 6.18): UFFDIO_MOVE fails
 * with EBUSY on a page shared copy-on-write (a write fault unshares it),
 * with EINVAL into a VMA that is not writable or whose protection differs
 * from the source's (then dxm copies), and skips holes with
 * UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES.  The move out does not ask for that:
 * a page the program discarded after dxm populated it fails with ENOENT
 * and gets a zero page in staging, so no exclusive page is ever a hole a
 * device would fault on (with the flag, such a race was also seen to
 * leave the move spinning inside the kernel).
 */
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "inject.h"
#include "internal.h"

static void anon_discard(struct dxm_region *r, size_t pg, size_t n);

static char zero_page[65536] __attribute__((aligned(65536)));

static inline uintptr_t stg(struct dxm_region *r, size_t pg)
{
	return (uintptr_t)r->dev + (pg << r->ctx->pshift);
}

/* Whether a page (present or swapped out) is mapped at a, read off
 * /proc/self/pagemap.  Reading is never a fault (a hole stays a hole). */
static bool page_at(struct dxm_ctx *ctx, uintptr_t a)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t e = 0;
	if (fd >= 0) {
		off_t off = (off_t)(a >> ctx->pshift) * 8;
		if (pread(fd, &e, sizeof(e), off) != sizeof(e))
			e = 0;
		close(fd);
	}
	return (e >> 62) & 3; /* bit 63 present, bit 62 swapped */
}

/*
 * UFFDIO_MOVE's EEXIST is not always true.  When the page it moves is
 * being migrated (compaction: a migration entry in the source), the kernel
 * waits and retries; on Linux 6.18 the retry moves the page without
 * counting it, tries the same page once more, finds the destination
 * filled (by itself) and returns EEXIST, the page moved.  Seen with
 * `echo 1 > /proc/sys/vm/compact_memory` in a loop, in both directions:
 * dxm took the staged page for a stray and discarded it (a lost page), or
 * logged a failed restore.  So an EEXIST whose source is now empty and
 * whose destination has a page is a move that happened.
 */
static bool moved_after_all(struct dxm_ctx *ctx, uintptr_t dst, uintptr_t src)
{
	return !page_at(ctx, src) && page_at(ctx, dst);
}

/* ------------------------------------------------------------- adoption */

/* Whether [start, end) is private anonymous memory that allows the access
 * (writable if write, else readable), read off /proc/self/maps. */
static int check_anon_range(uintptr_t start, uintptr_t end, bool write)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	char line[512];
	uintptr_t cur = start;
	int err = -EFAULT;
	while (cur < end && fgets(line, sizeof(line), f)) {
		unsigned long a, b, off, ino;
		char perm[5], dev[16], path[256] = "";
		if (sscanf(line, "%lx-%lx %4s %lx %15s %lu %255s", &a, &b, perm,
			   &off, dev, &ino, path) < 6)
			continue;
		if (b <= cur)
			continue;
		if (a > cur)
			break; /* a hole */
		if (perm[3] != 'p' || perm[write ? 1 : 0] == '-' || ino != 0 ||
		    (path[0] && strcmp(path, "[heap]"))) {
			err = -EINVAL;
			break;
		}
		cur = b;
	}
	fclose(f);
	return cur >= end ? 0 : err;
}

static void *map_staging(void *arg, size_t len)
{
	(void)arg;
	return mmap(NULL, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
}

DXM_API int dxm_adopt(struct dxm_ctx *ctx, void *addr, size_t len,
		      unsigned flags)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!range_ok(ctx, addr, len) || flags)
		return -EINVAL;
	if (ctx->uffd_anon < 0) {
		pr_err("dxm_adopt: this kernel lacks UFFD_FEATURE_MOVE "
		       "(Linux 6.8) or EVENT_REMOVE; use dxm_alloc");
		return -ENOSYS;
	}
	uintptr_t start = (uintptr_t)addr;
	/* Managed already (-EEXIST), or a dead view still in the table:
	 * wait for its munmap to be seen. */
	err = dxmi_region_wait_unclaimed(ctx, start, len, false);
	if (err)
		return err;
	err = check_anon_range(start, start + len, true);
	if (err) {
		if (err == -EINVAL)
			pr_warn("dxm_adopt: %p+%#zx is not private anonymous "
				"writable memory",
				addr, len);
		return err;
	}
	/* A user-mode-only (or SIGBUS-mode) userfaultfd cannot resolve a
	 * system call's access to a missing page: populate first, so that
	 * only exclusive pages fault. */
	if (!kernel_faults_resolved(ctx) &&
	    (err = dxmi_sys_madvise(addr, len, MADV_POPULATE_WRITE)))
		return err;

	struct dxm_region *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->ctx = ctx;
	r->fd = -1;
	r->kind = &dxmi_anon_kind;
	r->uffd = ctx->uffd_anon;
	r->psize = ctx->psize;
	r->pshift = ctx->pshift;
	r->npages = len >> ctx->pshift;
	atomic_init(&r->refs, 1);
	r->st = dxmi_st_alloc(r->npages);
	/* Staging must not sit where the table still has a dead view: a
	 * device's fault there would be taken for a CPU fault on it. */
	pthread_mutex_lock(&ctx->gate);
	r->dev = r->st ? dxmi_region_map_fresh(ctx, len, map_staging, NULL)
		       : MAP_FAILED;
	pthread_mutex_unlock(&ctx->gate);
	if (!r->st || r->dev == MAP_FAILED) {
		err = -ENOMEM;
		goto fail;
	}
	madvise(r->dev, len, MADV_DONTFORK);
	err = dxmi_uffd_register(r->uffd, (uintptr_t)r->dev, len,
			    UFFDIO_REGISTER_MODE_MISSING);
	if (err)
		goto fail;
	err = dxmi_region_adopt_insert(r, start, len);
	if (err)
		goto fail;
	stat_add(&ctx->c.regions, 1);
	stat_add(&ctx->c.managed_pages, r->npages);
	return 0;
fail:
	if (r->dev != MAP_FAILED && r->dev) {
		/* no UNMAP event for our own staging */
		dxmi_uffd_unregister(r->uffd, (uintptr_t)r->dev, len);
		munmap(r->dev, len);
	}
	dxmi_st_free(r->st, r->npages);
	free(r);
	return err;
}

/* -------------------------------------------------------- conversions */

/*
 * Fault in the pages the CPU owns: before a conversion writable (write),
 * as the kernel's GUP with FOLL_WRITE does (a missing page becomes a zero
 * page, a page shared copy-on-write after a fork becomes the process's
 * own); for dxm_range_fault readable or writable as asked.  A range the
 * program made unreadable or unwritable behind dxm's back gives -EPERM.
 */
static int anon_populate(struct dxm_region *r, uintptr_t start, size_t pg,
			 size_t n, bool write)
{
	struct dxm_ctx *ctx = r->ctx;
	size_t i = 0;
	while (i < n) {
		while (i < n && ps_state(ps_load(&r->st[pg + i])) != PS_CPU)
			i++;
		size_t e = i;
		while (e < n && ps_state(ps_load(&r->st[pg + e])) == PS_CPU)
			e++;
		if (e == i)
			break;
		uintptr_t a = start + (i << ctx->pshift);
		size_t len = (e - i) << ctx->pshift;
		int err = dxmi_sys_madvise((void *)a, len,
				      write ? MADV_POPULATE_WRITE
					    : MADV_POPULATE_READ);
		if (err == -EFAULT && !kernel_faults_resolved(ctx)) {
			/* A user-mode-only or SIGBUS userfaultfd refuses the
			 * kernel's own fault: touch from user space instead
			 * (an atomic add of 0 writes without changing
			 * anything), once the range is known to allow it: the
			 * program may have changed it behind dxm's back. */
			if (check_anon_range(a, a + len, write))
				return -EPERM;
			for (size_t k = i; k < e; k++) {
				volatile char *c =
					(volatile char *)(start +
							  (k << ctx->pshift));
				if (write)
					__atomic_fetch_add(c, 0,
							   __ATOMIC_RELAXED);
				else
					(void)*c;
			}
		} else if (err == -EFAULT || err == -EINVAL) {
			/* EINVAL: a write to a read-only mapping (madvise(2));
			 * EFAULT: an access the mapping does not allow. */
			return -EPERM;
		} else if (err && err != -EINTR && err != -EAGAIN) {
			return err;
		}
		i = e;
	}
	return 0;
}

/* Move one run of the CPU range to staging (dev[i] is page pg + i), clearing
 * need[i] for each page done; returns pages refused.  *again: the kernel
 * refused for now (an event is unread) and the rest of the run is left. */
static size_t move_out_run(struct dxm_region *r, uintptr_t cpu, size_t pg,
			   size_t n, void **dev, uint8_t *need, bool *again)
{
	struct dxm_ctx *ctx = r->ctx;
	size_t refused = 0, i = 0;
	size_t stray_at = SIZE_MAX; /* the page whose stray was discarded */
	while (i < n) {
		long got = dxmi_uffd_move(r->uffd, stg(r, pg + i),
				     cpu + (i << ctx->pshift),
				     (n - i) << ctx->pshift, 0);
		if (got > 0) {
			size_t k = (size_t)got >> ctx->pshift;
			memset(need + i, 0, k);
			i += k;
			continue;
		}
		if (got == -EEXIST &&
		    moved_after_all(ctx, stg(r, pg + i),
				    cpu + (i << ctx->pshift))) {
			/* Moved after all: the staging page is the data, not
			 * a stray to discard. */
			pr_debug("UFFDIO_MOVE out of %#lx: EEXIST, but moved",
				 cpu + (i << ctx->pshift));
			need[i++] = 0;
			continue;
		}
		if (got == -ENOENT) {
			/* A hole (the program discarded the page after it
			 * was populated): the device gets a zero page in
			 * staging now, never a hole it would fault on. */
			long z = dxmi_uffd_zeropage(r->uffd, stg(r, pg + i),
					       ctx->psize);
			if (z > 0) {
				need[i++] = 0;
				continue;
			}
			got = z;
		}
		if (got == -EAGAIN) {
			*again = true;
			break;
		}
		if (got == -EEXIST && stray_at != i) {
			/* The staging slot of a page the CPU owns holds a
			 * page: nothing of the region's data (that is in the
			 * CPU view), a leftover of a race.  It would refuse
			 * this page to every device for ever: discard it. */
			pr_info("staging slot of page %zu held a stray page: "
				"discarded",
				pg + i);
			anon_discard(r, pg + i, 1);
			stray_at = i;
			continue;
		}
		/* Pinned, KSM, still shared, or the VMA changed: this page
		 * fails alone, as in the kernel. */
		pr_debug("UFFDIO_MOVE out of %#lx: %s", cpu + (i << ctx->pshift),
			 strerror((int)-got));
		dxmi_ps_set(r, pg + i, PS_CPU); /* refused */
		dev[i] = NULL;
		need[i++] = 0;
		refused++;
	}
	return refused;
}

struct move_out {
	size_t pg; /* dev[0] and need[0] are page pg's */
	void **dev;
	uint8_t *need;
	size_t refused;
};

static int move_out_fn(struct dxm_region *r, uintptr_t cpu, size_t pg,
		       size_t n, void *arg)
{
	struct move_out *m = arg;
	bool again = false;
	m->refused += move_out_run(r, cpu, pg, n, m->dev + (pg - m->pg),
				   m->need + (pg - m->pg), &again);
	return again;
}

/*
 * Move region pages [pg, pg+n) whose need[i] is set (LOCKED by the
 * caller) out of the CPU's view into staging; need[] is the caller's
 * scratch.  A page that cannot move is given back to the CPU and its
 * dev[i] cleared.  Returns pages refused.  An EAGAIN (an event is unread)
 * is never retried under vt_lock: the handler that must read it may wait
 * for the gate behind a writer of vt_lock.  Any thread but a handler
 * waits with no lock held; a handler (it may be the reader) refuses the
 * rest.
 */
static size_t anon_move_out(struct dxm_region *r, size_t pg, size_t n,
			    void **dev, uint8_t *need)
{
	struct dxm_ctx *ctx = r->ctx;
	struct move_out m = { pg, dev, need, 0 };
	unsigned tries = 0;
	while (dxmi_region_runs(r, pg, n, need, 0, move_out_fn, &m)) {
		if (dxmi_ctx_on_handler(ctx))
			break;
		dxmi_eagain_wait(&tries);
	}
	/* Left: the kernel refused for now on a handler thread, or no
	 * view shows the page any more (a munmap is being read). */
	size_t refused = m.refused;
	for (size_t i = 0; i < n; i++) {
		if (!need[i])
			continue;
		dxmi_ps_set(r, pg + i, PS_CPU); /* refused */
		dev[i] = NULL;
		refused++;
	}
	return refused;
}

/*
 * Discarding staging pages.  A MADV_DONTNEED on staging would raise a
 * REMOVE event (uffd_anon has EVENT_REMOVE) that this thread, often a
 * handler, would wait for itself; unregistering around it takes the
 * mmap write lock, which a handler must never wait for: a thread in
 * UFFDIO_MOVE can hold the mmap lock while it waits on a program's
 * MADV_DONTNEED, which waits for a handler to read its REMOVE event
 * (found by anon::exclusive_page_is_never_a_staging_hole).  So the
 * pages are moved (UFFDIO_MOVE on ctx->uffd, which has no EVENT_REMOVE)
 * into a small trash area registered there, and zapped in it.  Where
 * that cannot be done (no MOVE on ctx->uffd, a read-only staging range),
 * the unregister path remains.
 */
void dxmi_anon_trash_init_lock(struct dxm_ctx *ctx)
{
	pthread_mutex_init(&ctx->trash.mtx, NULL);
}

void dxmi_anon_trash_init(struct dxm_ctx *ctx)
{
	if (ctx->uffd_anon < 0 || !(ctx->uinfo.features & UFFD_FEATURE_MOVE))
		return;
	size_t len = TRASH_PAGES << ctx->pshift;
	char *t = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (t == MAP_FAILED)
		return;
	madvise(t, len, MADV_DONTFORK);
	if (dxmi_uffd_register(ctx->uffd, (uintptr_t)t, len,
			  UFFDIO_REGISTER_MODE_MISSING)) {
		munmap(t, len);
		return;
	}
	ctx->trash.area = t;
}

void dxmi_anon_trash_fini(struct dxm_ctx *ctx)
{
	if (ctx->trash.area) {
		size_t len = TRASH_PAGES << ctx->pshift;
		dxmi_uffd_unregister(ctx->uffd, (uintptr_t)ctx->trash.area, len);
		munmap(ctx->trash.area, len);
		ctx->trash.area = NULL;
	}
	pthread_mutex_destroy(&ctx->trash.mtx);
}

/* Move staging [s, s+len) (len <= TRASH_PAGES pages) to the trash and
 * zap it there.  False if the kernel refused. */
static bool trash_run(struct dxm_ctx *ctx, uintptr_t s, size_t len)
{
	bool ok = true;
	pthread_mutex_lock(&ctx->trash.mtx);
	for (size_t done = 0, tries = 0; done < len;) {
		long got = dxmi_uffd_move(ctx->uffd, (uintptr_t)ctx->trash.area + done,
				     s + done, len - done,
				     UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
		if (got > 0) {
			done += (size_t)got;
		} else if (got == -EEXIST &&
			   moved_after_all(ctx, (uintptr_t)ctx->trash.area + done,
					   s + done)) {
			done += ctx->psize; /* moved after all */
		} else if (got == -EAGAIN && ++tries < 1000) {
			sched_yield(); /* an event of ctx->uffd is unread */
		} else {
			ok = false;
			break;
		}
	}
	madvise(ctx->trash.area, len, MADV_DONTNEED);
	pthread_mutex_unlock(&ctx->trash.mtx);
	return ok;
}

/* Discard staging pages [pg, pg+n): their data is gone (the program
 * discarded it, or it was copied back). */
static void anon_discard(struct dxm_region *r, size_t pg, size_t n)
{
	struct dxm_ctx *ctx = r->ctx;
	uintptr_t s = stg(r, pg);
	size_t len = n << ctx->pshift;
	if (ctx->trash.area) {
		size_t max = TRASH_PAGES << ctx->pshift, done = 0;
		while (done < len) {
			size_t k = len - done < max ? len - done : max;
			if (!trash_run(ctx, s + done, k))
				break;
			done += k;
		}
		if (done == len)
			return;
		s += done;
		len -= done;
	}
	int err = dxmi_uffd_unregister(r->uffd, s, len);
	if (!err)
		err = dxmi_sys_madvise((void *)s, len, MADV_DONTNEED);
	if (!err)
		err = dxmi_uffd_register(r->uffd, s, len,
				    UFFDIO_REGISTER_MODE_MISSING);
	if (err)
		pr_err("cannot discard staging pages at %#lx: %s", s,
		       strerror(-err));
}

/*
 * Whether the staging page holds data (present or swapped out), read off
 * /proc/self/pagemap.  A hole must never be read from a handler thread: the
 * kernel would raise a MISSING fault on staging and wait for the handler.
 */
static bool staged_page_exists(struct dxm_region *r, size_t pg)
{
	return page_at(r->ctx, stg(r, pg));
}

/* Move one staged page back to the CPU at cpu (registered, ours).  If it
 * cannot move (a device pinned it: EBUSY; the program changed the
 * protection behind dxm's back: EINVAL; ...), copy it: never leave the CPU
 * a zero page where the device's data was. */
static int move_in_page(struct dxm_region *r, size_t pg, uintptr_t cpu,
			uint64_t wake_mode)
{
	struct dxm_ctx *ctx = r->ctx;
	/* DONTWAKE: the caller wakes the thread once the page is the CPU's */
	bool wake = !(wake_mode & UFFDIO_MOVE_MODE_DONTWAKE);
	long got;
	for (int tries = 0;; tries++) {
		got = dxmi_uffd_move(r->uffd, cpu, stg(r, pg), ctx->psize,
				UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES | wake_mode);
		if (got > 0)
			return 0; /* a hole moves nothing: the CPU then faults
				     on a page it never had, a zero page */
		/* EAGAIN: the kernel refuses every ioctl while an event
		 * (a munmap's UNMAP, a REMOVE...) is unread.  The caller
		 * waits for a handler to read it with no lock held, or, on a
		 * handler thread, which may be the one that must read it,
		 * gives the page up for now (data still staged). */
		if (got == -EAGAIN)
			return -EAGAIN;
		/* ENOENT (holes are allowed): the CPU view's mapping is gone,
		 * its munmap read by a handler and not yet applied.  The data
		 * goes with it: dropped here, since the page is the CPU's by
		 * the time the munmap's clean-up looks (anon_gone drops only
		 * pages that are not).  Nothing to copy either. */
		if (got == -ENOENT) {
			anon_discard(r, pg, 1);
			if (wake)
				dxmi_uffd_wake(r->uffd, cpu, ctx->psize);
			return 0;
		}
		if (got == -EEXIST && moved_after_all(ctx, cpu, stg(r, pg))) {
			/* Moved after all: the data is in the CPU view and
			 * the slot is empty.  An EEXIST does not wake. */
			pr_debug("restore of %#lx: EEXIST, but moved", cpu);
			if (wake)
				dxmi_uffd_wake(r->uffd, cpu, ctx->psize);
			return 0;
		}
		/* Else EEXIST cannot happen while the page is staged (the
		 * CPU view is empty): retried before anything is
		 * discarded. */
		if (got != -EEXIST || tries >= 1000)
			break;
		sched_yield();
	}
	if (got == -EEXIST) {
		/* The CPU really has another page there: keep it. */
		pr_err("restore of %#lx (page %zu of %zu, state %#x, staged "
		       "%s, %s thread): the CPU view has a page; the staged "
		       "one is dropped",
		       cpu, pg, r->npages, (unsigned)ps_load(&r->st[pg]),
		       staged_page_exists(r, pg) ? "yes" : "no",
		       dxmi_ctx_on_handler(ctx) ? "a handler" : "another");
	} else if (staged_page_exists(r, pg)) {
		pr_debug("restore of %#lx by copy: %s", cpu,
			 strerror((int)-got));
		for (int tries = 0;; tries++) {
			long c = dxmi_uffd_copy_mode(r->uffd, cpu, stg(r, pg),
						ctx->psize,
						wake ? 0
						     : UFFDIO_COPY_MODE_DONTWAKE);
			if (c > 0 || c == -EEXIST)
				break;
			if (tries >= 1000) {
				pr_err("restore of %#lx failed: %s; its data "
				       "stays in staging at %#lx",
				       cpu, strerror((int)-c), stg(r, pg));
				if (wake)
					dxmi_uffd_wake(r->uffd, cpu, ctx->psize);
				return 0;
			}
			sched_yield();
		}
	}
	anon_discard(r, pg, 1);
	if (wake)
		dxmi_uffd_wake(r->uffd, cpu, ctx->psize);
	return 0;
}

/* Moving pages back: need[i] is set for page pg0 + i while it is still
 * staged (mode: UFFDIO_MOVE_MODE_DONTWAKE or 0). */
struct move_in {
	uint8_t *need;
	size_t pg0;
	uint64_t mode;
};

/* One run of staged pages back into the CPU view at cpu: one UFFDIO_MOVE
 * for the whole run where the kernel allows, page by page (move_in_page:
 * its EEXIST, ENOENT and copy cases) from the first page it refuses. */
static int move_in_fn(struct dxm_region *r, uintptr_t cpu, size_t pg,
		      size_t n, void *arg)
{
	struct move_in *m = arg;
	unsigned sh = r->ctx->pshift;
	size_t i = 0;
	while (i < n) {
		long got = 0;
		if (n - i > 1)
			got = dxmi_uffd_move(r->uffd, cpu + (i << sh),
					     stg(r, pg + i), (n - i) << sh,
					     UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES |
						     m->mode);
		if (got > 0) {
			size_t k = (size_t)got >> sh;
			memset(m->need + (pg + i - m->pg0), 0, k);
			i += k;
			continue;
		}
		int err = move_in_page(r, pg + i, cpu + (i << sh), m->mode);
		if (err)
			return err;
		m->need[pg + i - m->pg0] = 0;
		i++;
	}
	return 0;
}

/* Move the region pages of [pg, pg+n) whose need[i] is set back from
 * staging into the CPU view; the caller owns them.  -EAGAIN (only on a
 * handler thread): the kernel refused for now; the pages still staged
 * keep need[i] set, and the caller must try them again later.  Any other
 * thread waits, holding no lock: the handler it waits for may need
 * vt_lock (a munmap's event is read and applied under it). */
static int anon_move_in(struct dxm_region *r, size_t pg, size_t n,
			uint8_t *need, bool dontwake)
{
	struct move_in m = { need, pg,
			     dontwake ? UFFDIO_MOVE_MODE_DONTWAKE : 0 };
	bool handler = dxmi_ctx_on_handler(r->ctx);
	unsigned tries = 0;
	int err = 0;
	atomic_fetch_add(&r->in_begun, 1); /* fix_run */
	while (dxmi_region_runs(r, pg, n, need, 0, move_in_fn, &m) == -EAGAIN) {
		if (handler) {
			err = -EAGAIN;
			break;
		}
		dxmi_eagain_wait(&tries);
	}
	atomic_fetch_add(&r->in_done, 1);
	return err;
}

/* A CPU fault on an exclusive page whose notifiers ran: the page is the
 * CPU's (with PS_MAPPING) before it moves back, as a memfd page is before
 * its UFFDIO_CONTINUE, so that a thread that finds it mapped (one woken
 * early by a signal retries its access) never completes while
 * dxm_check_exclusive still says "held".  If the kernel refuses the move
 * for now, the page is INVALIDATING again, still staged (the caller
 * re-queues it). */
static int anon_restore(struct dxm_region *r, size_t pg, uintptr_t addr)
{
	uint8_t need = 1;
	dxmi_ps_invalidated(r, pg);
	if (anon_move_in(r, pg, 1, &need, true)) {
		dxmi_ps_not_invalidated(r, pg);
		return -EAGAIN;
	}
	inject(INJ_RESTORED); /* a slow restore, in tests */
	dxmi_ps_mapping_done(r, pg);
	/* Woken only now: the page is the CPU's. */
	dxmi_uffd_wake(r->uffd, addr, r->ctx->psize);
	return 0;
}

/* Page i, given back (CPU|MAPPING) before its move: it is done once its
 * data is back in the CPU view; still staged (-EAGAIN on a handler thread,
 * a fork or dxm_mprotect from a callback), it is INVALIDATING again and
 * re-queued like a fault's: then it is no longer ours (another handler
 * may finish it at once). */
static void restore_one(struct dxm_region *r, size_t i, bool staged)
{
	if (staged) {
		uintptr_t at[2] = { 0, 0 };
		dxmi_region_view_addrs(r, i, 1, at, 1);
		dxmi_ps_not_invalidated(r, i);
		dxmi_region_get(r);
		dxmi_region_hold(r); /* until the restore is finished */
		dxmi_ps_requeue_restore(r, i, at[0]);
		return;
	}
	dxmi_ps_mapping_done(r, i);
}

#define RUN_STACK 64

/* A run given back (dxmi_pages_to_cpu, restore-around): the CPU's pages
 * are in place, the invalidated ones are given back (CPU|MAPPING) and move
 * back, a run of them in one UFFDIO_MOVE. */
static void anon_restore_run(struct dxm_region *r, size_t a, size_t b,
			     unsigned flags)
{
	(void)flags;
	size_t n = b - a;
	uint8_t stack[2 * RUN_STACK];
	uint8_t *need = n <= RUN_STACK ? stack : malloc(2 * n);
	if (!need) { /* no room for the masks: a page at a time */
		for (size_t i = a; i < b; i++)
			anon_restore_run(r, i, i + 1, flags);
		return;
	}
	uint8_t *mine = need + n; /* INVALIDATING: ours to move back */
	for (size_t i = 0; i < n; i++) {
		mine[i] = need[i] =
			ps_state(ps_load(&r->st[a + i])) == PS_INVALIDATING;
		if (mine[i])
			dxmi_ps_invalidated(r, a + i); /* before its move */
		else
			dxmi_ps_mapping_done(r, a + i); /* nothing to map */
	}
	anon_move_in(r, a, n, need, false);
	for (size_t i = 0; i < n; i++)
		if (mine[i])
			restore_one(r, a + i, need[i]);
	if (need != stack)
		free(need);
}

#define SPAN_CHUNK 512 /* bytes of stack: it may run on a signal stack */

/*
 * A fault at addr on page pg of the run [a, b) (restore-around), every
 * page INVALIDATING, ours and notified: the whole run is given back
 * (CPU|MAPPING, as anon_restore's page) and moves back waking nobody
 * (UFFDIO_MOVE_MODE_DONTWAKE), SPAN_CHUNK pages at a time, every page
 * moved is done (PS_MAPPING cleared), and only then is the run woken.  The faulting
 * thread runs again once, with nothing left for the handler to do for it
 * (a sequential reader would otherwise fault on the next page, still
 * moving).  A page the kernel refused for now (an event is unread) stays
 * staged: a neighbour is re-queued like a fault's restore (restore_one),
 * the faulting page's refusal is returned (-EAGAIN) for the caller to
 * re-queue, as anon_restore's.  No allocation (it may run in a SIGBUS
 * handler).
 */
static int anon_restore_span(struct dxm_region *r, size_t a, size_t b,
			     size_t pg, uintptr_t addr)
{
	uint8_t need[SPAN_CHUNK];
	bool staged = false;
	for (size_t c = a; c < b; c += SPAN_CHUNK) {
		size_t n = b - c < SPAN_CHUNK ? b - c : SPAN_CHUNK;
		memset(need, 1, n);
		dxmi_ps_invalidated_run(r, c, c + n); /* before the move */
		/* need[] is left set where no view shows a page any more,
		 * too: as anon_restore, the faulting page is then done (its
		 * data goes with the program's munmap), and as
		 * anon_restore_run, the neighbours are re-queued. */
		bool again = anon_move_in(r, c, n, need, true) == -EAGAIN;
		inject(INJ_RESTORED); /* a slow restore, in tests */
		for (size_t i = 0; i < n; i++)
			if (c + i != pg)
				restore_one(r, c + i, need[i]);
			else
				staged = again && need[i];
	}
	if (staged)
		dxmi_ps_not_invalidated(r, pg);
	else
		dxmi_ps_mapping_done(r, pg);
	dxmi_region_wake(r, a, b - a, addr);
	return staged ? -EAGAIN : 0;
}

/* dxm_free: move every staged page of [pg, pg+n) back to cpu, the view
 * already detached from the table (but still registered), nobody inside
 * the region (the teardown rule, region.c): every page that is not the
 * CPU's has its data in staging. */
static void hand_back(struct dxm_region *r, size_t pg, size_t n, uintptr_t cpu)
{
	for (size_t i = 0; i < n; i++) {
		if (ps_state(ps_load(&r->st[pg + i])) == PS_CPU)
			continue;
		unsigned tries = 0;
		while (move_in_page(r, pg + i, cpu + (i << r->ctx->pshift), 0) ==
		       -EAGAIN)
			dxmi_eagain_wait(&tries);
		atomic_store(&r->st[pg + i], PS_CPU);
	}
}

/* A CPU fault on a page that is not there and not exclusive: resolve it as
 * the kernel would, a zero page (a write gets its own zeroed page).
 * -EAGAIN: an event is unread; the thread was not woken (the caller's
 * business: fault.c). */
static int anon_zero_fill(struct dxm_region *r, size_t pg, uintptr_t addr,
			  bool write)
{
	(void)pg;
	struct dxm_ctx *ctx = r->ctx;
	long got = -ENOENT;
	pthread_rwlock_rdlock(&ctx->tab.lock);
	/* Still r's?  The caller looked addr up before it entered r; with
	 * two handlers (or in SIGBUS mode) another thread may have read a
	 * munmap's event since, and the program mapped and adopted new
	 * memory there, whose page may be a device's: a zero page there
	 * would be a CPU mapping of an exclusive page.  A view is detached
	 * under vt_lock, so while we hold it, it stays r's. */
	bool ours = dxmi_region_owns_addr(r, addr);
	if (ours && write && ctx->psize <= sizeof(zero_page))
		got = dxmi_uffd_copy(r->uffd, addr, (uintptr_t)zero_page,
				ctx->psize);
	else if (ours)
		got = dxmi_uffd_zeropage(r->uffd, addr, ctx->psize);
	pthread_rwlock_unlock(&ctx->tab.lock);
	if (got == -EAGAIN)
		return -EAGAIN;
	if (got <= 0)
		dxmi_uffd_wake(r->uffd, addr, ctx->psize); /* EEXIST etc. */
	return 0;
}

/*
 * A fault on a staging address: a device touching its page.  While the
 * page is the device's (LOCKED, EXCLUSIVE, or INVALIDATING: its callback
 * has not returned yet) it is a hole, filled with zeros.  Once the page is
 * the CPU's again, the device kept using it after its invalidation
 * returned: a driver bug that would otherwise write into a fresh page and
 * lose the data.  Reported, never silent.  The thread gets SIGBUS, unless
 * it is one of dxm's handler threads (a notifier callback, or dxm itself,
 * which never means to: the raw-fork repair reads through /proc/self/mem):
 * a SIGBUS there would kill the process for the handler's sake, so it
 * reads a zero page instead (a stray in staging, discarded by the page's
 * next conversion).
 */
static void anon_staging_fault(struct dxm_region *r, size_t pg,
			       uintptr_t addr, pid_t tid)
{
	struct dxm_ctx *ctx = r->ctx;
	uint8_t s = ps_load(&r->st[pg]);
	bool handler = dxmi_ctx_is_handler_tid(ctx, tid);
	if (!ps_is_exclusive(s)) {
		stat_add(&ctx->c.stale_device_faults, 1);
		pr_err("device access to %#lx (CPU page %zu of an adopted "
		       "range) after its invalidation returned: the driver "
		       "kept using a revoked page (%s %d %s)",
		       addr, pg, handler ? "dxm's handler thread" : "thread",
		       (int)tid,
		       handler ? "reads a zero page: a notifier callback, or "
				 "a dxm bug"
			       : "gets SIGBUS");
#ifdef DXM_DEBUG
		abort();
#endif
		if (!handler) {
			if (tid > 0)
				syscall(SYS_tgkill, getpid(), tid, SIGBUS);
			dxmi_uffd_wake(r->uffd, addr, ctx->psize);
			return;
		}
	}
	long got = dxmi_uffd_zeropage(r->uffd, addr, ctx->psize);
	if (got <= 0)
		dxmi_uffd_wake(r->uffd, addr, ctx->psize);
}

/* A piece detached: dxm_free hands its pages back to the program, every
 * page in place; after a program's munmap of part of the range, the
 * staged data of that part goes too (with the last view, staging goes
 * with the region). */
static void anon_gone(struct dxm_region *r, uintptr_t start, size_t pgoff,
		      size_t n, bool unmap, bool last)
{
	if (unmap) {
		hand_back(r, pgoff, n, start);
		dxmi_uffd_unregister(r->uffd, start, n << r->ctx->pshift);
		return;
	}
	if (last)
		return;
	for (size_t i = 0; i < n; i++) {
		uint8_t s = ps_load(&r->st[pgoff + i]);
		if (ps_state(s) != PS_CPU) {
			anon_discard(r, pgoff + i, 1);
			atomic_store(&r->st[pgoff + i], PS_CPU);
		} else if (s & PS_MAPPING) {
			/* Given back and perhaps still staged: its mover's
			 * UFFDIO_MOVE finds no view now (ENOENT), so the data
			 * is dropped here; the mover owns the state. */
			anon_discard(r, pgoff + i, 1);
		}
	}
}

/* Staging keeps the view's protection: UFFDIO_MOVE wants both sides
 * alike.  (Under vt_lock, for writing.) */
static void anon_protect(struct dxm_region *r, size_t pg, size_t n, int prot)
{
	size_t shift = r->ctx->pshift;
	mprotect(r->dev + (pg << shift), n << shift, prot);
}

/* The staging area goes with the region: no UNMAP event for our own
 * munmap. */
static void anon_release(struct dxm_region *r)
{
	dxmi_uffd_unregister(r->uffd, (uintptr_t)r->dev,
			r->npages << r->ctx->pshift);
}

/* ------------------------------------------------------ MADV_DONTNEED */

struct dxm_anon_rm {
	struct dxm_region *r; /* referenced */
	size_t pg, n;
	struct dxm_anon_rm *next;
};

/*
 * A program's MADV_DONTNEED (or MADV_FREE) on adopted memory, under the
 * gate: take the exclusive pages of the range (-> INVALIDATING) so that
 * any fault read after this event waits, and return them to finish.
 */
struct dxm_anon_rm *dxmi_anon_remove_begin(struct dxm_ctx *ctx, uintptr_t start,
				      uintptr_t end)
{
	struct dxm_anon_rm *list = NULL;
	stat_add(&ctx->c.events_remove, 1);
	for (uintptr_t a = start; a < end;) {
		struct dxm_where w;
		if (dxmi_region_lookup(ctx, a, &w)) {
			a += ctx->psize;
			continue;
		}
		uintptr_t vend = w.vstart + (w.vnpages << ctx->pshift);
		uintptr_t b = vend < end ? vend : end;
		size_t pg = w.pgoff + ((a - w.vstart) >> ctx->pshift);
		size_t n = (b - a) >> ctx->pshift;
		struct dxm_anon_rm *rm = NULL;
		/* Inside the region until dxmi_anon_remove_finish (region.c, the
		 * teardown rule); a region being torn down is left to it. */
		bool in = w.r->kind == &dxmi_anon_kind && dxmi_region_enter(w.r);
		for (size_t i = 0; i < n && in; i++) {
			dxm_pstate_t *p = &w.r->st[pg + i];
			uint8_t s = ps_load(p);
			while (ps_state(s) == PS_LOCKED ||
			       ps_state(s) == PS_EXCLUSIVE)
				if (ps_cas(p, &s,
					   PS_INVALIDATING | (s & PS_WAITERS)))
					break;
			if (ps_state(s) != PS_LOCKED &&
			    ps_state(s) != PS_EXCLUSIVE)
				continue;
			if (rm && rm->pg + rm->n == pg + i) {
				rm->n++;
				continue;
			}
			rm = malloc(sizeof(*rm));
			if (!rm) {
				/* Cannot track it: give it back now. */
				dxmi_ps_set(w.r, pg + i, PS_CPU);
				continue;
			}
			dxmi_region_get(w.r);
			dxmi_region_hold(w.r); /* until dxmi_anon_remove_finish */
			*rm = (struct dxm_anon_rm){ w.r, pg + i, 1, list };
			list = rm;
		}
		if (in)
			dxmi_region_exit(w.r);
		dxmi_region_put(w.r);
		a = b;
	}
	return list;
}

/* After the gate: the devices are told (DXM_EVENT_UNMAP), the staged data
 * is discarded as the program asked, and the pages are the CPU's again (a
 * later access gets a zero page). */
void dxmi_anon_remove_finish(struct dxm_ctx *ctx, struct dxm_anon_rm *rm)
{
	(void)ctx;
	while (rm) {
		struct dxm_anon_rm *next = rm->next;
		dxmi_notify_region_pages(rm->r, rm->pg, rm->n, DXM_EVENT_UNMAP, NULL);
		anon_discard(rm->r, rm->pg, rm->n);
		for (size_t i = 0; i < rm->n; i++)
			dxmi_ps_set(rm->r, rm->pg + i, PS_CPU);
		dxmi_region_exit(rm->r);
		dxmi_region_put(rm->r);
		free(rm);
		rm = next;
	}
}

/* ---------------------------------------------------------- raw fork */

/*
 * A fork that bypassed the pthread_atfork handlers (a raw clone) gave the
 * child holes where the parent's pages were in staging (staging is
 * MADV_DONTFORK), and, for a page given back to the parent between the
 * fork and this repair, a hole too: the page came back from staging.  The
 * repair copies, into each hole of the child, the page as it is now:
 * from staging if it is still there, else from the parent's CPU view.
 *
 * Every read goes through /proc/self/mem, never through a pointer.  Its
 * reads (GUP without FOLL_UNLOCKABLE, checked on Linux 6.18) cannot wait
 * for a userfaultfd handler: a hole reads as EIO at once.  A staging slot
 * may turn into a hole at any moment (a handler, or a thread in
 * dxm_range_fault, gives the page back; a device unlocks a page and the
 * CPU takes it), and this code runs on a handler thread: a direct read
 * of such a slot, as UFFDIO_COPY's source, was a fault on staging that
 * another handler took for a driver's stale access (SIGBUS to this
 * thread) or that this one waited for itself.  So nothing is held: the
 * page is read where it is, again if it moved meanwhile, and UFFDIO_COPY
 * takes it from a private buffer.  EEXIST (the child has the
 * page already) is the usual answer for a page the CPU had at the fork.
 *
 * Which pages: every page not the CPU's (nor being given back to it:
 * PS_MAPPING, its data perhaps still staged), and every page the CPU's
 * whose CPU-view page the parent alone maps (/proc/self/pagemap bit 56)
 * or has swapped out: a page given back since the fork, or one the parent
 * wrote or first touched since (the child then sees the parent's data of
 * now, not of the fork, for those pages only).  A page shared with the
 * child is the child's already.  The states are read after the pagemap:
 * a page staged then, the CPU's now, moved back in between; and since a
 * move back may have happened between the two reads, a hole the CPU's
 * is left out only if no move back into the region overlapped them
 * (r->in_begun, r->in_done: model/rawfork.pml); else it is tried too.
 */
struct fork_fix {
	int child;	/* the child's userfaultfd */
	int mem;	/* /proc/self/mem */
	int pagemap;	/* /proc/self/pagemap, or -1 */
	char *buf;	/* one page */
	size_t copied;
};

#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_EXCLUSIVE (1ull << 56)
#define FIX_CHUNK 512

/* Read one page at src without a fault; false if it is not there. */
static bool read_page(struct fork_fix *f, size_t psize, uintptr_t src)
{
	return pread(f->mem, f->buf, psize, (off_t)src) == (ssize_t)psize;
}

static void fix_page(struct fork_fix *f, struct dxm_region *r, size_t pg,
		     uintptr_t cpu, bool staged)
{
	size_t psize = r->ctx->psize;
	/* A try fails only if the page moved between its two reads
	 * (model/rawfork.pml). */
	for (int tries = 0; tries < 8; tries++) {
		if (!(staged && read_page(f, psize, stg(r, pg))) &&
		    !read_page(f, psize, cpu)) {
			staged = true; /* both empty: moving out again? */
			continue;
		}
		if (dxmi_uffd_copy(f->child, cpu, (uintptr_t)f->buf, psize) > 0)
			f->copied++;
		return;
	}
}

/* One run of a CPU view: cpu is page pg's address (under vt_lock, read:
 * region.c; nothing here waits for a handler). */
static int fix_run(struct dxm_region *r, uintptr_t cpu, size_t pg, size_t n,
		   void *arg)
{
	struct fork_fix *f = arg;
	unsigned shift = r->ctx->pshift;
	uint64_t pm[FIX_CHUNK];
	uint8_t st[FIX_CHUNK];
	for (size_t c = 0; c < n; c += FIX_CHUNK) {
		size_t k = n - c < FIX_CHUNK ? n - c : FIX_CHUNK;
		uintptr_t a = cpu + (c << shift);
		ssize_t want = (ssize_t)(k * sizeof(pm[0]));
		unsigned long done = atomic_load(&r->in_done);
		if (f->pagemap < 0 ||
		    pread(f->pagemap, pm, (size_t)want,
			  (off_t)((a >> shift) * sizeof(pm[0]))) != want)
			memset(pm, 0xff, sizeof(pm)); /* unknown: try each */
		for (size_t i = 0; i < k; i++)
			st[i] = ps_load(&r->st[pg + c + i]);
		/* No move back began or was under way meanwhile. */
		bool still = atomic_load(&r->in_begun) == done;
		for (size_t i = 0; i < k; i++) {
			/* CPU|MAPPING: given back, perhaps still staged (a
			 * restore moves it after the state changed). */
			bool staged = ps_is_exclusive(st[i]) ||
				      (st[i] & PS_MAPPING);
			bool present = pm[i] & PM_PRESENT;
			bool alone = (pm[i] & PM_SWAPPED) ||
				     (present && (pm[i] & PM_EXCLUSIVE));
			if (!staged && !alone && (present || still))
				continue; /* shared with the child, or nowhere */
			inject(INJ_FORKFIX); /* a slow repair, in tests */
			fix_page(f, r, pg + c + i, a + (i << shift),
				 staged || !present);
		}
	}
	return 0;
}

static void fix_child(struct dxm_region *r, void *arg)
{
	struct fork_fix *f = arg;
	struct dxm_ctx *ctx = r->ctx;
	if (r->kind != &dxmi_anon_kind || !dxmi_region_enter(r))
		return; /* torn down: nothing of it is the child's business */
	inject(INJ_FORKFIX); /* a slow repair, in tests */
	if (f->buf)
		dxmi_region_runs(r, 0, r->npages, NULL, 0, fix_run, f);
	/* The child runs free of dxm: its copy is ordinary memory. */
	pthread_rwlock_rdlock(&ctx->tab.lock);
	for (struct dxm_view *v = r->views; v; v = v->rnext)
		dxmi_uffd_unregister(f->child, v->start, v->npages << ctx->pshift);
	pthread_rwlock_unlock(&ctx->tab.lock);
	dxmi_region_exit(r);
}

/* UFFD_EVENT_FORK (only where the kernel grants EVENT_FORK): repair the
 * child, unregister its ranges and let it go. */
void dxmi_anon_fork_event(struct dxm_ctx *ctx, int child_uffd)
{
	struct fork_fix f = {
		.child = child_uffd,
		.mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC),
		.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC),
	};
	if (f.mem >= 0)
		f.buf = aligned_alloc(ctx->psize, ctx->psize);
	if (!f.buf)
		pr_warn("raw fork: cannot read /proc/self/mem (%s): the child "
			"has zero pages where the parent's pages are a "
			"device's",
			f.mem < 0 ? strerror(errno) : "no memory");
	dxmi_region_foreach(ctx, KIND_MOVES, fix_child, &f);
	close(child_uffd);
	free(f.buf);
	if (f.mem >= 0)
		close(f.mem);
	if (f.pagemap >= 0)
		close(f.pagemap);
	if (f.copied)
		pr_info("raw fork: %zu page(s) copied into the child",
			f.copied);
}

const struct dxm_kind dxmi_anon_kind = {
	.name = "adopted",
	.flags = KIND_MOVES,
	/* Staging: a page is there only while a device holds it, and the
	 * area is registered with the userfaultfd that UFFDIO_MOVE needs. */
	.devview_kind = DXM_DEVVIEW_STAGING,
	.devview_flags = DXM_DEVVIEW_HOLES | DXM_DEVVIEW_REGISTERED,
	.populate = anon_populate,
	.revoke = anon_move_out,
	.fill = anon_zero_fill,
	.restore = anon_restore,
	.restore_run = anon_restore_run,
	.restore_span = anon_restore_span,
	.gone = anon_gone,
	.staging_fault = anon_staging_fault,
	.protect = anon_protect,
	.release = anon_release,
};
