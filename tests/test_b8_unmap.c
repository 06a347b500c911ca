// SPDX-License-Identifier: MIT
/*
 * B8 unmap: munmap, mremap and dxm_free of ranges with exclusive pages
 * notify (DXM_EVENT_UNMAP, DXM_EVENT_REMAP), drop the state and leak
 * nothing; the rest of a region keeps working.  A program's munmap and
 * mremap reach dxm as userfaultfd events, handled after the system call
 * returned: the tests wait for them with a bounded poll.
 *
 * The B8 refinement on memfd memory: MADV_DONTNEED loses nothing (the page
 * cache keeps the data), so an exclusive page stays exclusive and the next
 * CPU access still goes through dxm's invalidation (DXM_EVENT_CLEAR) before
 * it completes and sees the device's writes; after MADV_REMOVE the next
 * CPU access still goes through dxm and does not hang.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

#define NPG 8
#define LEN (NPG * PS)
#define MAGIC 0xfeedfacecafe0b08ull
#define WAIT_MS 5000

static struct recorder rec, rec2;


/* Events ev recorded outside [start, end): must be none. */
static bool rec_only_within(struct recorder *r, enum dxm_event ev,
			    const void *start, const void *end)
{
	bool ok = true;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrec && ok; i++)
		if (r->rec[i].event == ev)
			ok = r->rec[i].start >= (uintptr_t)start &&
			     r->rec[i].end <= (uintptr_t)end;
	pthread_mutex_unlock(&r->lock);
	return ok;
}

static size_t count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	cr_assert_not_null(d);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}


/* The invalidate callback's last device write at one page: the CPU access
 * that caused the invalidation must see it. */
struct inv_write {
	uintptr_t page;		/* CPU address */
	volatile uint64_t *dev; /* device-side word */
	uint64_t val;
	int hits;
};

static int write_on_inval(struct recorder *r, const struct dxm_range *range)
{
	struct inv_write *w = r->hook_arg;
	if ((range->event == DXM_EVENT_CLEAR ||
	     range->event == DXM_EVENT_UNMAP) &&
	    (uintptr_t)range->start <= w->page &&
	    (uintptr_t)range->end > w->page && !w->hits++)
		*w->dev = w->val;
	return 0;
}

/* rec over both views a and b of a region: from the lowest address, *lo,
 * to the end of the highest, *len bytes. */
static void watch_span(struct dxm_ctx *ctx, void *a, void *b, char **lo,
		       size_t *len)
{
	char *x = a < b ? a : b, *y = a < b ? b : a;
	*lo = x;
	*len = (size_t)(y - x) + LEN;
	recorder_insert(ctx, &rec, *lo, *len);
}

/* rec over the view p, and its LEN bytes filled with fill_index(0): p. */
static char *watch(struct dxm_ctx *ctx, char *p)
{
	recorder_insert(ctx, &rec, p, LEN);
	fill_index(p, LEN, 0);
	return p;
}

/* Each test also runs on huge pages (name_huge, common.h). */
#define KIND_TEST(name)                                                        \
	KIND_TEST_HUGE_OF(b8_unmap, MEM_KINDS_PARAMS, name, .timeout = 30)
/* A test on a context and LEN bytes of *kind memory, which it frees
 * itself (common.h). */
#define MEM_TEST(name)                                                         \
	MEM_TEST_NOFREE_HUGE_OF(b8_unmap, MEM_KINDS_PARAMS, name, LEN,         \
				.timeout = 30)
/* A test on dxm_alloc memory (test_alloc): MEM_MEMFD, and huge pages. */
#define MEMFD_TEST(name)                                                       \
	MEMFD_TEST_HUGE_OF(b8_unmap, name, .timeout = 30)

/* ------------------------------------------------------------- munmap */

/* alloc, exclusive pages (one restored, one left locked), munmap of the
 * whole view; returns the region's address (now unmapped). */
static char *alloc_take_munmap(struct dxm_ctx *ctx)
{
	char *p = test_alloc(ctx, LEN);
	void *dev[NPG];
	fill_index(p, LEN, 0);
	memset(&rec, 0, sizeof(rec));
	recorder_insert(ctx, &rec, p, LEN);
	take(ctx, p, LEN - PS, &rec, dev);
	cr_assert_eq(rd(p + 8), 1000);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p));
	/* The last page stays locked by the "device" through the munmap. */
	cr_assert_eq(dxm_make_exclusive(ctx, p + LEN - PS, PS, &rec, dev), 1);
	/* The CPU view and the device view are mapped now. */
	cr_assert_geq(maps_lines("memfd:dxm"), 2);
	cr_assert_eq(munmap(p, LEN), 0);
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, p, LEN), WAIT_MS),
		  "no DXM_EVENT_UNMAP for the munmapped view");
	cr_assert(rec_only_within(&rec, DXM_EVENT_UNMAP, p, p + LEN));
	/* The driver's late unlock of the page it held: harmless. */
	dxm_exclusive_unlock(ctx, p + LEN - PS, PS, dev);
	recorder_remove(&rec);
	return p;
}

MEMFD_TEST(munmap_whole_view_notifies_and_leaks_nothing)
{
	/* One handler thread whatever $DXM_HANDLER_THREADS says, and one
	 * cycle first, so that lazily created things (the handler thread's
	 * malloc arena) are not counted as a leak. */
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 1 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	struct dxm_stats st0 = stats(ctx);
	alloc_take_munmap(ctx);
	cr_assert(WAIT_FOR(stats(ctx).regions == st0.regions, WAIT_MS));

	struct dxm_stats st1 = stats(ctx);
	size_t maps1 = maps_lines(NULL);
	size_t memfd1 = maps_lines("memfd:dxm");
	size_t fds1 = count_fds();
	cr_assert_eq(memfd1, 0, "a mapping of the first region leaked");

	char *p = alloc_take_munmap(ctx);
	cr_assert(WAIT_FOR(stats(ctx).regions == st1.regions &&
				   stats(ctx).managed_pages ==
					   st1.managed_pages,
			   WAIT_MS),
		  "the region is still accounted after its only view was "
		  "unmapped");
	struct dxm_stats st2 = stats(ctx);
	cr_assert_eq(st2.events_unmap, st1.events_unmap + 1);
	cr_assert_eq(st2.metadata_bytes, st1.metadata_bytes);

	/* The address is not managed any more. */
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(ctx, p, PS, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_range_fault(ctx, p, PS, 0, NULL), -EFAULT);
	cr_assert_eq(dxm_mprotect(ctx, p, PS, PROT_READ), -EFAULT);
	cr_assert_eq(dxm_free(ctx, p), -ENOENT);
	cr_assert_eq(dxm_alias(ctx, p, dev), -ENOENT);

	/* Nothing leaked: mappings (the device view), descriptors. */
	cr_assert(WAIT_FOR(maps_lines(NULL) == maps1,
			   WAIT_MS),
		  "/proc/self/maps: %zu lines, %zu before",
		  maps_lines(NULL), maps1);
	cr_assert_eq(maps_lines("memfd:dxm"), 0);
	cr_assert_eq(count_fds(), fds1);

	/* The context still works. */
	char *q = test_alloc(ctx, PS);
	cr_assert_eq(dxm_make_exclusive(ctx, q, PS, NULL, dev), 1);
	dxm_exclusive_unlock(ctx, q, PS, dev);
	cr_assert_eq(rd(q), 0);
	cr_assert_eq(dxm_free(ctx, q), 0);
	dxm_ctx_destroy(ctx);
}

/* munmap of the middle of a view: only that part is notified; the rest of
 * the view (and, for an alias, the region's own view) keeps working. */
MEM_TEST(munmap_middle_notifies_only_that_part)
{
	void *dev[NPG];
	char *p = m.base, *r = m.region, *lo;
	size_t span_len;
	watch_span(ctx, p, r, &lo, &span_len);
	fill_index(p, LEN, 0);
	take(ctx, p, LEN, &rec, dev);
	struct dxm_stats st0 = stats(ctx);

	cr_assert_eq(munmap(p + 2 * PS, 3 * PS), 0);
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, p + 2 * PS,
				      3 * PS),
			   WAIT_MS),
		  "no DXM_EVENT_UNMAP for the munmapped pages");
	cr_assert(rec_only_within(&rec, DXM_EVENT_UNMAP, p + 2 * PS,
				  p + 5 * PS),
		  "DXM_EVENT_UNMAP beyond the munmapped pages");
	cr_assert_eq(stats(ctx).regions, st0.regions);
	cr_assert_eq(stats(ctx).managed_pages, st0.managed_pages);
	cr_assert_eq(rec_overlaps(&rec, DXM_EVENT_CLEAR, lo, lo + span_len),
		     false);

	/* The rest is still exclusive and faults back through dxm. */
	cr_assert_eq(pages_present(p, 2 * PS), 0);
	cr_assert_eq(pages_present(p + 5 * PS, 3 * PS), 0);
	cr_assert_eq(rd(p + 8), 1000);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p));
	cr_assert_eq(rd(p + 6 * PS + 8), 1006);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p + 6 * PS));

	/* ... and can be taken again on each side of the hole. */
	cr_assert_eq(dxm_make_exclusive(ctx, p, LEN, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_make_exclusive(ctx, p + 2 * PS, PS, &rec, dev),
		     -EFAULT);
	cr_assert_eq(dxm_make_exclusive(ctx, p + 4 * PS, 2 * PS, &rec, dev),
		     -EFAULT);
	take(ctx, p, 2 * PS, &rec, dev);
	take(ctx, p + 5 * PS, 3 * PS, &rec, dev);
	wr(p + 16, 77);
	wr(p + 7 * PS + 16, 78);
	cr_assert_eq(rd(p + 8), 1000);
	cr_assert_eq(rd(p + 5 * PS + 8), 1000);
	cr_assert_eq(rd(p + 7 * PS + 8), 1002);
	cr_assert_eq(rd(p + 16), 77);
	cr_assert_eq(rd(p + 7 * PS + 16), 78);
	cr_assert(check_index(p + 24, PS - 24, 3));
	cr_assert(check_index(p + 6 * PS + 16, PS - 16, 6 * PS / 8 + 2));

	if (*kind == MEM_ALIAS) {
		/* The region's own view of the pages unmapped in the alias
		 * still works. */
		cr_assert_eq(rd(r + 3 * PS + 8), 1003);
		cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, r + 3 * PS));
		take(ctx, r + 2 * PS, 3 * PS, &rec, dev);
		cr_assert_eq(rd(r + 4 * PS + 8), 1002);
		cr_assert(check_index(r + 4 * PS + 16, PS - 16,
				      4 * PS / 8 + 2));
	}
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(ctx, r), 0);
	cr_assert(!memfd_view_mapped(r));
	cr_assert(!memfd_view_mapped(p));
	cr_assert(!memfd_view_mapped(p + 7 * PS));
	dxm_ctx_destroy(ctx);
}

/* munmap of an alias: notified at the alias's addresses only; the region
 * and its own view are untouched and usable. */
MEMFD_TEST(munmap_alias_notifies_alias_only)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *r = test_alloc(ctx, LEN), *a, *lo;
	size_t span_len;
	void *dev[NPG];
	cr_assert_eq(dxm_alias(ctx, r, (void **)&a), 0);
	watch_span(ctx, r, a, &lo, &span_len);
	fill_index(r, LEN, 0);
	take(ctx, r, LEN, &rec, dev);
	cr_assert_eq(pages_present(a, LEN), 0);
	struct dxm_stats st0 = stats(ctx);

	cr_assert_eq(munmap(a, LEN), 0);
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, a, LEN), WAIT_MS),
		  "no DXM_EVENT_UNMAP for the alias");
	cr_assert(rec_only_within(&rec, DXM_EVENT_UNMAP, a, a + LEN));
	cr_assert(!rec_overlaps(&rec, DXM_EVENT_UNMAP, r, r + LEN),
		  "the region's own view was notified");
	cr_assert_eq(stats(ctx).regions, st0.regions);
	cr_assert_eq(stats(ctx).managed_pages, st0.managed_pages);
	cr_assert_eq(dxm_free(ctx, a), -ENOENT);
	cr_assert_eq(dxm_make_exclusive(ctx, a, PS, &rec, dev), -EFAULT);

	/* The region still works: its pages are still exclusive. */
	cr_assert(dxm_check_exclusive(ctx, r, LEN, dev));
	cr_assert_eq(rd(r + 2 * PS + 8), 1002);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, r + 2 * PS));
	take(ctx, r, LEN, &rec, dev);
	cr_assert_eq(rd(r + 8), 1000);
	cr_assert(check_index(r + 16, PS - 16, 2));
	/* A new alias works too. */
	char *b;
	cr_assert_eq(dxm_alias(ctx, r, (void **)&b), 0);
	cr_assert_eq(pages_present(b, LEN), 1, "only page 0 is the CPU's");
	cr_assert_eq(rd(b + 5 * PS + 8), 1005);
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(ctx, r), 0);
	cr_assert(!memfd_view_mapped(b));
	dxm_ctx_destroy(ctx);
}

/* dxm_free with exclusive (and locked) pages: DXM_EVENT_UNMAP for every
 * view, before it returns; nothing stays accounted. */
KIND_TEST(dxm_free_notifies_unmap)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct mem m;
	void *dev[NPG];
	struct dxm_stats st0 = stats(ctx);
	mem_setup(ctx, *kind, LEN, &m);
	char *p = m.base, *r = m.region, *lo;
	size_t span_len;
	watch_span(ctx, p, r, &lo, &span_len);
	take(ctx, p, LEN / 2, &rec, dev);
	cr_assert_eq(dxm_make_exclusive(ctx, p + LEN / 2, PS, &rec, dev), 1);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_UNMAP), 0);

	cr_assert_eq(dxm_free(ctx, r), 0);
	cr_assert(rec_covers(&rec, DXM_EVENT_UNMAP, r, LEN));
	cr_assert(rec_covers(&rec, DXM_EVENT_UNMAP, p, LEN));
	cr_assert(!memfd_view_mapped(r));
	cr_assert(!memfd_view_mapped(p));
	struct dxm_stats st1 = stats(ctx);
	cr_assert_eq(st1.regions, st0.regions);
	cr_assert_eq(st1.managed_pages, st0.managed_pages);
	cr_assert_eq(dxm_free(ctx, r), -ENOENT);
	recorder_remove(&rec);
	dxm_ctx_destroy(ctx);
}

/* A CPU access in a helper thread, so that a hang fails the test quickly
 * instead of running into the timeout. */
struct access {
	char *addr;
	volatile uint64_t got;
	volatile bool done;
};

static void *access_main(void *arg)
{
	struct access *a = arg;
	a->got = rd(a->addr);
	a->done = true;
	return NULL;
}

static bool access_within(struct access *a, unsigned ms)
{
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, access_main, a), 0);
	if (!WAIT_FOR(a->done, ms))
		return false; /* the thread dies with the test process */
	pthread_join(t, NULL);
	return true;
}

/* A driver holds pages locked (make_exclusive through an alias, not yet
 * unlocked) when the program munmaps or mremaps that alias; the driver
 * then unlocks with the arguments it used.  The region's other view (or
 * the moved alias) must not stay locked forever: a CPU access there
 * completes, through the invalidation. */
static void locked_then_view_gone(bool use_mremap)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *r = test_alloc(ctx, LEN), *a, *lo;
	size_t span_len;
	void *dev[2];
	fill_index(r, LEN, 0);
	cr_assert_eq(dxm_alias(ctx, r, (void **)&a), 0);
	watch_span(ctx, r, a, &lo, &span_len);
	cr_assert_eq(dxm_make_exclusive(ctx, a, 2 * PS, &rec, dev), 2);
	wr(dev[0], 4242);
	char *target = r;
	if (use_mremap) {
		char *q = reserve_aligned(LEN);
		cr_assert_eq(mremap(a, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED,
				    q),
			     q);
		cr_assert(WAIT_FOR(recorder_saw(&rec, DXM_EVENT_REMAP, a),
				   WAIT_MS));
		target = q;
	} else {
		cr_assert_eq(munmap(a, LEN), 0);
		cr_assert(WAIT_FOR(recorder_saw(&rec, DXM_EVENT_UNMAP, a),
				   WAIT_MS));
	}
	/* The driver's unlock, as it would do it. */
	dxm_exclusive_unlock(ctx, a, 2 * PS, dev);
	struct access acc = { .addr = target };
	cr_assert(access_within(&acc, 3000),
		  "a CPU access to a page locked through a view that is gone "
		  "waits forever");
	cr_assert_eq(acc.got, 4242);
	/* Notified at the page's address in every view; the recorder covers
	 * the region's own view (the moved alias may lie outside it). */
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, r) ||
		  recorder_saw(&rec, DXM_EVENT_UNMAP, r));
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(ctx, r), 0);
	dxm_ctx_destroy(ctx);
}

MEMFD_TEST(munmap_alias_with_locked_pages_does_not_hang)
{
	locked_then_view_gone(false);
}

MEMFD_TEST(mremap_alias_with_locked_pages_does_not_hang)
{
	locked_then_view_gone(true);
}

/* ------------------------------------------------------------- mremap */

/* mremap of a view to a new address: DXM_EVENT_REMAP for the old range,
 * and the view follows: the new address is managed (its exclusive page is
 * still exclusive and faults back through dxm), the old one is not. */
MEM_TEST(mremap_view_follows)
{
	void *dev[NPG];
	char *p = watch(ctx, m.base), *r = m.region;
	take(ctx, p + PS, PS, &rec, dev);
	struct dxm_stats st0 = stats(ctx);

	char *q = reserve_aligned(LEN);
	recorder_insert(ctx, &rec2, q, LEN);
	cr_assert_eq(mremap(p, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, q),
		     q, "mremap: %s", strerror(errno));
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_REMAP, p, LEN), WAIT_MS),
		  "no DXM_EVENT_REMAP for the old range");
	cr_assert(rec_only_within(&rec, DXM_EVENT_REMAP, p, p + LEN));
	cr_assert(WAIT_FOR(stats(ctx).events_remap > st0.events_remap,
			   WAIT_MS));
	cr_assert_eq(stats(ctx).regions, st0.regions);

	/* The old address is not managed any more. */
	cr_assert_eq(dxm_make_exclusive(ctx, p, LEN, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_make_exclusive(ctx, p, PS, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_free(ctx, p), -ENOENT);

	/* The exclusive page moved with the view, still exclusive. */
	cr_assert(!page_present(q + PS));
	cr_assert(dxm_check_exclusive(ctx, q + PS, PS, dev));
	cr_assert_eq(rd(q + PS + 8), 1000);
	cr_assert(recorder_saw(&rec2, DXM_EVENT_CLEAR, q + PS),
		  "no CLEAR at the page's new address");
	cr_assert(check_index(q, PS, 0));
	cr_assert(check_index(q + 2 * PS, LEN - 2 * PS, 2 * PS / 8));

	/* make_exclusive at the new address works. */
	take(ctx, q, LEN, &rec, dev);
	cr_assert(recorder_saw(&rec2, DXM_EVENT_EXCLUSIVE, q + 3 * PS));
	cr_assert_eq(rd(q + 3 * PS + 8), 1003);
	cr_assert(recorder_saw(&rec2, DXM_EVENT_CLEAR, q + 3 * PS));
	wr(q + 4 * PS, 44);
	cr_assert_eq(rd((*kind == MEM_ALIAS ? r : q) + 4 * PS), 44);

	recorder_remove(&rec);
	recorder_remove(&rec2);
	if (*kind != MEM_ALIAS) {
		cr_assert_eq(dxm_free(ctx, q), 0);
	} else {
		cr_assert_eq(dxm_free(ctx, r), 0);
	}
	cr_assert(!memfd_view_mapped(q));
	cr_assert(!memfd_view_mapped(r));
	dxm_ctx_destroy(ctx);
}

/* mremap of one page out of the middle of a view: the view splits; both
 * the moved page and the rest stay managed. */
MEM_TEST(mremap_partial_view_follows)
{
	void *dev[NPG];
	char *p = watch(ctx, m.base);
	take(ctx, p, LEN, &rec, dev);

	char *q = reserve_aligned(PS);
	recorder_insert(ctx, &rec2, q, PS);
	cr_assert_eq(mremap(p + 3 * PS, PS, PS, MREMAP_MAYMOVE | MREMAP_FIXED,
			    q),
		     q, "mremap: %s", strerror(errno));
	cr_assert(WAIT_FOR(recorder_saw(&rec, DXM_EVENT_REMAP, p + 3 * PS),
			   WAIT_MS));
	cr_assert(rec_only_within(&rec, DXM_EVENT_REMAP, p + 3 * PS,
				  p + 4 * PS));

	cr_assert_eq(dxm_make_exclusive(ctx, p, LEN, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_make_exclusive(ctx, p + 3 * PS, PS, &rec, dev),
		     -EFAULT);
	cr_assert_eq(rd(q + 8), 1003);
	cr_assert(recorder_saw(&rec2, DXM_EVENT_CLEAR, q));
	cr_assert_eq(rd(p + 4 * PS + 8), 1004);
	cr_assert_eq(rd(p + 2 * PS + 8), 1002);
	take(ctx, q, PS, &rec, dev);
	take(ctx, p + 4 * PS, LEN - 4 * PS, &rec, dev);
	take(ctx, p, 3 * PS, &rec, dev);
	cr_assert_eq(rd(q + 8), 1000);
	cr_assert_eq(rd(p + 7 * PS + 8), 1003);
	cr_assert(check_index(q + 16, PS - 16, 3 * PS / 8 + 2));
	recorder_remove(&rec);
	recorder_remove(&rec2);
	cr_assert_eq(dxm_free(ctx, m.region), 0);
	cr_assert(!memfd_view_mapped(q));
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------------------- madvise */

/* The B8 refinement: MADV_DONTNEED on a memfd region loses nothing; the
 * exclusive page stays exclusive (the device may still write it) and the
 * next CPU access is invalidated first and sees every device write. */
MEM_TEST(madv_dontneed_keeps_exclusive_page)
{
	void *dev[NPG];
	struct inv_write w;
	char *p = watch(ctx, m.base);
	take(ctx, p + PS, PS, &rec, dev);
	cr_assert_eq(pages_present(p, LEN), NPG - 1);

	cr_assert_eq(madvise(p, LEN, MADV_DONTNEED), 0);
	cr_assert_eq(pages_present(p, LEN), 0);
	/* Still the device's page: no invalidation yet. */
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
	cr_assert(dxm_check_exclusive(ctx, p + PS, PS, dev));
	/* The device writes it after the MADV_DONTNEED, and once more from
	 * its invalidate callback. */
	wr((uint64_t *)dev[0] + 2, 2222);
	w = (struct inv_write){ (uintptr_t)(p + PS),
				(volatile uint64_t *)dev[0] + 3, MAGIC, 0 };
	recorder_hook(&rec, write_on_inval, &w);

	cr_assert_eq(rd(p + PS + 8), 1000, "the device's write was lost");
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p + PS),
		  "the CPU saw the page without an invalidation");
	cr_assert_eq(rd(p + PS + 24), MAGIC,
		     "the CPU access completed before the invalidation");
	cr_assert_eq(rd(p + PS + 16), 2222);
	cr_assert(check_index(p + PS + 32, PS - 32, PS / 8 + 4));
	cr_assert(!dxm_check_exclusive(ctx, p + PS, PS, dev));
	/* The other pages come back from the page cache, with no CLEAR. */
	cr_assert(check_index(p, PS, 0));
	cr_assert(check_index(p + 2 * PS, LEN - 2 * PS, 2 * PS / 8));
	cr_assert(rec_only_within(&rec, DXM_EVENT_CLEAR, p + PS, p + 2 * PS));
	cr_assert_eq(w.hits, 1);

	/* And it can be taken again. */
	take(ctx, p, LEN, &rec, dev);
	cr_assert_eq(rd(p + 5 * PS + 8), 1005);
	recorder_remove(&rec);
	mem_done(&m);
}

/* MADV_REMOVE (hole punch) on exclusive pages: the next CPU access, read
 * or write, still goes through dxm (invalidated before it completes) and
 * does not hang; a removed CPU page comes back too; other pages keep
 * their data. */
MEM_TEST(madv_remove_exclusive_page_goes_through_dxm)
{
	void *dev[NPG];
	struct inv_write w;
	char *p = watch(ctx, m.base);
	take(ctx, p + PS, 2 * PS, &rec, dev);
	w = (struct inv_write){ (uintptr_t)(p + PS),
				(volatile uint64_t *)dev[0] + 3, MAGIC, 0 };

	cr_assert_eq(madvise(p, 3 * PS, MADV_REMOVE), 0, "MADV_REMOVE: %s",
		     strerror(errno));
	cr_assert_eq(pages_present(p, 3 * PS), 0);
	recorder_hook(&rec, write_on_inval, &w);

	/* Read of page 1: the callback's write lands first; the hole
	 * punched the rest of the page to zero. */
	cr_assert_eq(rd(p + PS + 24), MAGIC,
		     "the CPU access completed before the invalidation");
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p + PS) ||
			  recorder_saw(&rec, DXM_EVENT_UNMAP, p + PS),
		  "the CPU saw the page without an invalidation");
	cr_assert_eq(rd(p + PS + 8), 0);
	cr_assert(page_present(p + PS));
	/* Write to page 2. */
	wr(p + 2 * PS + 16, 5);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p + 2 * PS) ||
		  recorder_saw(&rec, DXM_EVENT_UNMAP, p + 2 * PS));
	cr_assert_eq(rd(p + 2 * PS + 16), 5);
	cr_assert_eq(rd(p + 2 * PS + 8), 0);
	/* Page 0 (the CPU's when it was removed). */
	cr_assert_eq(rd(p + 8), 0);
	wr(p + 8, 6);
	cr_assert_eq(rd(p + 8), 6);
	cr_assert(!recorder_saw(&rec, DXM_EVENT_CLEAR, p));
	/* Untouched pages keep their data. */
	cr_assert(check_index(p + 3 * PS, LEN - 3 * PS, 3 * PS / 8));

	/* The punched pages can be taken exclusive again. */
	take(ctx, p, 3 * PS, &rec, dev);
	cr_assert_eq(rd(p + 2 * PS + 8), 1002);
	cr_assert_eq(rd(p + 2 * PS + 16), 5);
	cr_assert_eq(rd(m.region == m.base ? p + 8 : (char *)m.region + 8),
		     1000);
	recorder_remove(&rec);
	mem_done(&m);
}
