// SPDX-License-Identifier: MIT
/*
 * B9 aliases: a memfd region mapped at several CPU addresses (the
 * dxm_alloc view and dxm_alias views).  make_exclusive through any view
 * revokes the page in every view (checked in /proc/self/pagemap); a CPU
 * access through any view faults it back (DXM_EVENT_CLEAR, sent at the
 * page's address in every view) and every view sees the device's data;
 * freeing an alias leaves the region and the other views working; freeing
 * the region frees every alias.  Each test runs on 4 KiB pages and, as
 * name_huge, on huge pages (common.h).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#define NPG 4
#define LEN (NPG * PS)
#define NV 3 /* the region's own view and two aliases */
#define MAGIC 0xa11a5a11a5000000ull

static struct recorder recs[NV + 1];
static const char owner[] = "b9";

/* A test on dxm_alloc memory (test_alloc): MEM_MEMFD, and huge pages. */
#define MEMFD_TEST(name) MEMFD_TEST_HUGE_OF(b9_alias, name, .timeout = 30)

struct fix {
	struct dxm_ctx *ctx;
	char *v[NV + 1]; /* v[0]: the dxm_alloc view */
	size_t nv;
};

static void setup(struct fix *f)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_or_skip(NULL);
	f->v[0] = test_alloc(f->ctx, LEN);
	fill_index(f->v[0], LEN, 0);
	for (size_t k = 1; k < NV; k++) {
		int err = dxm_alias(f->ctx, f->v[0], (void **)&f->v[k]);
		cr_assert_eq(err, 0, "dxm_alias: %s", strerror(-err));
	}
	f->nv = NV;
	for (size_t k = 0; k < NV; k++) {
		for (size_t j = 0; j < k; j++)
			cr_assert_neq(f->v[k], f->v[j]);
		recorder_insert(f->ctx, &recs[k], f->v[k], LEN);
		cr_assert(check_index(f->v[k], LEN, 0));
		cr_assert_eq(pages_present(f->v[k], LEN), NPG,
			     "view %zu does not map the CPU's pages", k);
	}
}

static void teardown(struct fix *f)
{
	for (size_t k = 0; k < f->nv; k++)
		recorder_remove(&recs[k]);
	cr_assert_eq(dxm_free(f->ctx, f->v[0]), 0);
	dxm_ctx_destroy(f->ctx);
}

/* CLEAR events recorded at the page at offset off of each view. */
static bool clear_seen_everywhere(struct fix *f, size_t off)
{
	for (size_t k = 0; k < f->nv; k++)
		if (!recorder_saw(&recs[k], DXM_EVENT_CLEAR, f->v[k] + off))
			return false;
	return true;
}

/* The invalidate callback's last device write: the access that caused it
 * must see it. */
struct inv_write {
	volatile uint64_t *dev;
	uint64_t val;
	int hits;
};

static int write_on_clear(struct recorder *r, const struct dxm_range *range)
{
	struct inv_write *w = r->hook_arg;
	if (range->event == DXM_EVENT_CLEAR && w && !w->hits++)
		*w->dev = w->val;
	return 0;
}

/* make_exclusive through any view revokes the pages in every view, with
 * the same device-side addresses whichever view asked. */
MEMFD_TEST(exclusive_through_any_view_revokes_every_view)
{
	struct fix f;
	void *dev[NPG], *dev0[NPG];
	setup(&f);
	for (size_t v = 0; v < NV; v++) {
		long n = dxm_make_exclusive(f.ctx, f.v[v], LEN, owner, dev);
		cr_assert_eq(n, NPG, "through view %zu: %ld", v, n);
		for (size_t i = 0; i < NPG; i++) {
			cr_assert_not_null(dev[i]);
			if (v == 0)
				dev0[i] = dev[i];
			cr_assert_eq(dev[i], dev0[i],
				     "view %zu gives another device page", v);
		}
		for (size_t k = 0; k < NV; k++) {
			cr_assert_eq(pages_present(f.v[k], LEN), 0,
				     "made exclusive through view %zu, view "
				     "%zu still maps pages",
				     v, k);
			cr_assert(dxm_check_exclusive(f.ctx, f.v[k], LEN, dev),
				  "view %zu", k);
		}
		dxm_exclusive_unlock(f.ctx, f.v[v], LEN, dev);
		for (size_t k = 0; k < NV; k++)
			cr_assert_eq(pages_present(f.v[k], LEN), 0);
		/* A device-side fault through the next view gives every
		 * page back to every view. */
		size_t u = (v + 1) % NV;
		cr_assert_eq(dxm_range_fault(f.ctx, f.v[u], LEN, 0, NULL), NPG);
		for (size_t k = 0; k < NV; k++)
			cr_assert_eq(pages_present(f.v[k], LEN), NPG,
				     "range_fault did not map view %zu", k);
	}
	for (size_t k = 0; k < NV; k++)
		cr_assert(check_index(f.v[k], LEN, 0));
	teardown(&f);
}

/* For every pair (view made exclusive through, view touched): the touch
 * faults the page back after CLEAR was sent in every view, and every view
 * sees the device's writes. */
MEMFD_TEST(any_view_faults_back_and_every_view_sees_device_data)
{
	struct fix f;
	void *dev[NPG];
	setup(&f);
	for (size_t v = 0; v < NV; v++)
		for (size_t t = 0; t < NV; t++) {
			size_t pg = (v * NV + t) % NPG, off = pg * PS;
			uint64_t val = 100 * v + t;
			cr_assert_eq(dxm_make_exclusive(f.ctx, f.v[v] + off,
							PS, owner, dev),
				     1);
			cr_assert_not_null(dev[0]);
			wr(dev[0], val);
			struct inv_write w = { (volatile uint64_t *)dev[0] + 1,
					       MAGIC + val, 0 };
			for (size_t k = 0; k < NV; k++) {
				cr_assert(!page_present(f.v[k] + off));
				pthread_mutex_lock(&recs[k].lock);
				recs[k].nrec = 0;
				recs[k].hook = k == t ? write_on_clear : NULL;
				recs[k].hook_arg = k == t ? &w : NULL;
				pthread_mutex_unlock(&recs[k].lock);
			}
			dxm_exclusive_unlock(f.ctx, f.v[v] + off, PS, dev);
			cr_assert(!clear_seen_everywhere(&f, off));

			/* Reads through view t for odd pairs, writes for
			 * even ones. */
			if ((v + t) % 2) {
				cr_assert_eq(rd(f.v[t] + off), val,
					     "view %zu (exclusive through %zu)",
					     t, v);
			} else {
				wr(f.v[t] + off + 16, val);
			}
			cr_assert(page_present(f.v[t] + off));
			cr_assert(clear_seen_everywhere(&f, off),
				  "CLEAR not sent in every view (pair %zu,%zu)",
				  v, t);
			cr_assert_eq(w.hits, 1);
			for (size_t k = 0; k < NV; k++) {
				cr_assert_eq(rd(f.v[k] + off), val,
					     "view %zu", k);
				cr_assert_eq(rd(f.v[k] + off + 8), MAGIC + val,
					     "view %zu: the access completed "
					     "before the invalidation",
					     k);
				if ((v + t) % 2 == 0)
					cr_assert_eq(rd(f.v[k] + off + 16),
						     val);
			}
			/* One invalidation only, for all views. */
			for (size_t k = 0; k < NV; k++)
				cr_assert_eq(recorder_count_event(
						     &recs[k],
						     DXM_EVENT_CLEAR),
					     1);
			for (size_t k = 0; k < NV; k++) {
				pthread_mutex_lock(&recs[k].lock);
				recs[k].hook = NULL;
				recs[k].hook_arg = NULL;
				pthread_mutex_unlock(&recs[k].lock);
			}
		}
	teardown(&f);
}

/* Every notification for a page comes at its address in every view:
 * EXCLUSIVE (with the owner), CLEAR, and UNMAP when the region is freed. */
MEMFD_TEST(notifications_at_every_view_address)
{
	struct fix f;
	void *dev[1];
	setup(&f);
	size_t off = 2 * PS;
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.v[1] + off, PS, owner, dev),
		     1);
	for (size_t k = 0; k < NV; k++) {
		struct recorder *r = &recs[k];
		pthread_mutex_lock(&r->lock);
		cr_assert_eq(r->nrec, 1, "view %zu: %zu events", k, r->nrec);
		cr_assert_eq(r->rec[0].event, DXM_EVENT_EXCLUSIVE);
		cr_assert_eq(r->rec[0].owner, owner);
		cr_assert_eq(r->rec[0].start, (uintptr_t)(f.v[k] + off));
		cr_assert_eq(r->rec[0].end, (uintptr_t)(f.v[k] + off + PS));
		pthread_mutex_unlock(&r->lock);
	}
	dxm_exclusive_unlock(f.ctx, f.v[1] + off, PS, dev);
	cr_assert_eq(rd(f.v[2] + off), off / 8);
	for (size_t k = 0; k < NV; k++) {
		struct recorder *r = &recs[k];
		pthread_mutex_lock(&r->lock);
		cr_assert_eq(r->nrec, 2, "view %zu: %zu events", k, r->nrec);
		cr_assert_eq(r->rec[1].event, DXM_EVENT_CLEAR);
		cr_assert_null(r->rec[1].owner);
		cr_assert_eq(r->rec[1].start, (uintptr_t)(f.v[k] + off));
		cr_assert_eq(r->rec[1].end, (uintptr_t)(f.v[k] + off + PS));
		pthread_mutex_unlock(&r->lock);
	}
	cr_assert_eq(dxm_free(f.ctx, f.v[0]), 0);
	for (size_t k = 0; k < NV; k++) {
		cr_assert_eq(recorder_count_event(&recs[k], DXM_EVENT_UNMAP), 1);
		cr_assert(recorder_saw(&recs[k], DXM_EVENT_UNMAP, f.v[k]));
		cr_assert(recorder_saw(&recs[k], DXM_EVENT_UNMAP,
				       f.v[k] + LEN - PS));
		recorder_remove(&recs[k]);
	}
	dxm_ctx_destroy(f.ctx);
}

/* An alias made while a page is exclusive (or still locked) does not map
 * it: it faults back through dxm like in every other view. */
MEMFD_TEST(alias_made_while_exclusive_is_revoked)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *r = test_alloc(ctx, LEN), *a, *b;
	void *dev[2];
	fill_index(r, LEN, 0);
	cr_assert_eq(dxm_make_exclusive(ctx, r + PS, 2 * PS, owner, dev), 2);
	wr(dev[0], 11);
	dxm_exclusive_unlock(ctx, r + PS, PS, dev);
	/* Page 1 exclusive, page 2 still locked. */
	cr_assert_eq(dxm_alias(ctx, r, (void **)&a), 0);
	recorder_insert(ctx, &recs[1], a, LEN);
	cr_assert(page_present(a));
	cr_assert(!page_present(a + PS));
	cr_assert(!page_present(a + 2 * PS));
	cr_assert(page_present(a + 3 * PS));
	cr_assert(dxm_check_exclusive(ctx, a + PS, 2 * PS, dev));
	wr(dev[1], 22);
	dxm_exclusive_unlock(ctx, r + 2 * PS, PS, dev + 1);

	cr_assert_eq(rd(a + PS), 11);
	cr_assert(recorder_saw(&recs[1], DXM_EVENT_CLEAR, a + PS));
	cr_assert_eq(rd(a + 2 * PS), 22);
	cr_assert(recorder_saw(&recs[1], DXM_EVENT_CLEAR, a + 2 * PS));
	cr_assert_eq(rd(r + PS), 11);
	cr_assert_eq(rd(r + 2 * PS), 22);
	cr_assert(check_index(a + PS + 8, PS - 8, PS / 8 + 1));
	/* An alias of an alias is one more view of the same pages. */
	cr_assert_eq(dxm_alias(ctx, a, (void **)&b), 0);
	cr_assert_eq(dxm_make_exclusive(ctx, b, PS, owner, dev), 1);
	cr_assert(!page_present(r));
	cr_assert(!page_present(a));
	cr_assert(!page_present(b));
	wr(dev[0], 33);
	dxm_exclusive_unlock(ctx, b, PS, dev);
	cr_assert_eq(rd(r), 33);
	cr_assert(recorder_saw(&recs[1], DXM_EVENT_CLEAR, a));
	cr_assert_eq(rd(a), 33);
	cr_assert_eq(rd(b), 33);
	recorder_remove(&recs[1]);
	cr_assert_eq(dxm_free(ctx, r), 0);
	cr_assert(!memfd_view_mapped(a));
	cr_assert(!memfd_view_mapped(b));
	dxm_ctx_destroy(ctx);
}

/* Freeing an alias: UNMAP at that alias only; its address is no longer
 * managed; the region and the other views keep their exclusive pages and
 * keep working. */
MEMFD_TEST(free_alias_leaves_region_and_other_views)
{
	struct fix f;
	void *dev[NPG];
	setup(&f);
	struct dxm_stats st0 = stats(f.ctx);
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.v[1], LEN, owner, dev), NPG);
	for (size_t i = 0; i < NPG; i++)
		wr(dev[i], 500 + i);
	dxm_exclusive_unlock(f.ctx, f.v[1], LEN, dev);

	cr_assert_eq(dxm_free(f.ctx, f.v[1]), 0);
	cr_assert_eq(recorder_count_event(&recs[1], DXM_EVENT_UNMAP), 1);
	cr_assert(recorder_saw(&recs[1], DXM_EVENT_UNMAP, f.v[1]));
	cr_assert(recorder_saw(&recs[1], DXM_EVENT_UNMAP, f.v[1] + LEN - PS));
	cr_assert_eq(recorder_count_event(&recs[0], DXM_EVENT_UNMAP), 0);
	cr_assert_eq(recorder_count_event(&recs[2], DXM_EVENT_UNMAP), 0);
	char *gone = f.v[1], *r = f.v[0], *b = f.v[2];

	cr_assert(!memfd_view_mapped(gone));
	cr_assert_eq(dxm_free(f.ctx, gone), -ENOENT);
	cr_assert_eq(dxm_alias(f.ctx, gone, dev), -ENOENT);
	cr_assert_eq(dxm_make_exclusive(f.ctx, gone, LEN, owner, dev),
		     -EFAULT);
	cr_assert_eq(dxm_range_fault(f.ctx, gone, LEN, 0, NULL), -EFAULT);
	struct dxm_stats st1 = stats(f.ctx);
	cr_assert_eq(st1.regions, st0.regions);
	cr_assert_eq(st1.managed_pages, st0.managed_pages);

	/* Still exclusive in the remaining views. */
	cr_assert(dxm_check_exclusive(f.ctx, r, LEN, dev));
	cr_assert(dxm_check_exclusive(f.ctx, b, LEN, dev));
	cr_assert_eq(pages_present(r, LEN), 0);
	cr_assert_eq(pages_present(b, LEN), 0);
	cr_assert_eq(rd(b + PS), 501);
	cr_assert(recorder_saw(&recs[2], DXM_EVENT_CLEAR, b + PS));
	cr_assert(recorder_saw(&recs[0], DXM_EVENT_CLEAR, r + PS));
	cr_assert_eq(rd(r + PS), 501);
	cr_assert_eq(rd(r + 3 * PS), 503);
	cr_assert(recorder_saw(&recs[2], DXM_EVENT_CLEAR, b + 3 * PS));
	cr_assert_eq(recorder_count_event(&recs[1], DXM_EVENT_CLEAR), 0,
		     "notified at the freed alias's address");

	/* Both views take pages exclusive again; both are revoked. */
	cr_assert_eq(dxm_make_exclusive(f.ctx, b, LEN, owner, dev), NPG);
	cr_assert_eq(pages_present(r, LEN), 0);
	dxm_exclusive_unlock(f.ctx, b, LEN, dev);
	wr(r + 8, 1);
	cr_assert_eq(rd(b + 8), 1);
	cr_assert_eq(dxm_make_exclusive(f.ctx, r, LEN, owner, dev), NPG);
	cr_assert_eq(pages_present(b, LEN), 0);
	dxm_exclusive_unlock(f.ctx, r, LEN, dev);
	cr_assert_eq(rd(b + 2 * PS), 502);
	cr_assert(check_index(b + 2 * PS + 8, PS - 8, 2 * PS / 8 + 1));

	recorder_remove(&recs[0]);
	recorder_remove(&recs[1]);
	recorder_remove(&recs[2]);
	cr_assert_eq(dxm_free(f.ctx, r), 0);
	cr_assert(!memfd_view_mapped(b));
	cr_assert(!memfd_view_mapped(r));
	dxm_ctx_destroy(f.ctx);
}

/* Freeing the region frees every alias (an alias of an alias too): their
 * addresses are unmapped and no longer managed. */
MEMFD_TEST(free_region_frees_all_aliases)
{
	struct fix f;
	void *dev[NPG];
	setup(&f);
	struct dxm_stats st0 = stats(f.ctx);
	cr_assert_eq(dxm_alias(f.ctx, f.v[2], (void **)&f.v[3]), 0);
	recorder_insert(f.ctx, &recs[3], f.v[3], LEN);
	f.nv = NV + 1;
	cr_assert(check_index(f.v[3], LEN, 0));
	cr_assert_eq(stats(f.ctx).regions, st0.regions);
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.v[3], LEN, owner, dev), NPG);
	for (size_t k = 0; k < f.nv; k++)
		cr_assert_eq(pages_present(f.v[k], LEN), 0);
	/* Left locked: freeing must not wait for an unlock. */
	for (size_t k = 0; k < f.nv; k++)
		cr_assert(memfd_view_mapped(f.v[k]), "view %zu not seen as mapped", k);

	cr_assert_eq(dxm_free(f.ctx, f.v[0]), 0);
	struct dxm_stats st1 = stats(f.ctx);
	cr_assert_eq(st1.regions, st0.regions - 1);
	cr_assert_eq(st1.managed_pages, st0.managed_pages - NPG);
	for (size_t k = 0; k < f.nv; k++) {
		char *a = f.v[k];
		cr_assert(recorder_saw(&recs[k], DXM_EVENT_UNMAP, a),
			  "view %zu not notified", k);
		cr_assert(!memfd_view_mapped(a), "view %zu still mapped", k);
		cr_assert_eq(dxm_free(f.ctx, a), -ENOENT, "view %zu", k);
		cr_assert_eq(dxm_alias(f.ctx, a, dev), -ENOENT);
		cr_assert_eq(dxm_make_exclusive(f.ctx, a, PS, owner, dev),
			     -EFAULT);
		cr_assert_eq(dxm_mprotect(f.ctx, a, PS, PROT_READ), -EFAULT);
		cr_assert_eq(dxm_range_fault(f.ctx, a, PS, 0, NULL), -EFAULT);
		cr_assert(!dxm_check_exclusive(f.ctx, a, PS, dev));
		recorder_remove(&recs[k]);
	}
	dxm_ctx_destroy(f.ctx);
}
