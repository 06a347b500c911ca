// SPDX-License-Identifier: MIT
/*
 * B5 read/write exclusive: a page whose CPU mapping is read-only comes back
 * read-only.  The page is made exclusive through a writable view of a
 * memfd region; a read through a read-only view (dxm_mprotect(PROT_READ))
 * faults it back through dxm (DXM_EVENT_CLEAR first, then the device's
 * data), and a write through that view still raises SIGSEGV.  A range the
 * CPU view cannot write is refused by dxm_make_exclusive (-EPERM), like GUP
 * with FOLL_WRITE in the kernel.
 *
 * Memory kinds: MEM_MEMFD makes the region's own view read-only (the
 * writable view is an alias); MEM_ALIAS makes the alias read-only (the
 * writable view is the region's own); MEM_HUGE (the tests named *_huge)
 * is MEM_MEMFD on huge pages.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#define NPG 4
#define LEN (NPG * PS)
#define MAGIC 0x5eed5eed0000b5b5ull

static struct recorder rec;

/* The invalidate callback's last device write: the CPU must see it. */
struct clear_write {
	uintptr_t page;	  /* CPU address (of the read-only view) */
	volatile uint64_t *dev; /* device-side word to write */
	uint64_t val;
	int hits;
};

struct views {
	struct dxm_ctx *ctx;
	struct mem m;
	char *ro, *rw;	       /* the read-only view and a writable one */
	void *dev[NPG];	       /* exclusive_setup: the device addresses */
	struct clear_write cw; /* ... and the callback's last write */
};

static int write_on_clear(struct recorder *r, const struct dxm_range *range)
{
	struct clear_write *cw = r->hook_arg;
	if (range->event == DXM_EVENT_CLEAR &&
	    (uintptr_t)range->start <= cw->page &&
	    (uintptr_t)range->end > cw->page && !cw->hits++)
		*cw->dev = cw->val;
	return 0;
}

static void setup(enum mem_kind kind, struct views *v)
{
	memset(v, 0, sizeof(*v));
	v->ctx = ctx_or_skip(NULL);
	mem_setup(v->ctx, kind, LEN, &v->m);
	void *other;
	if (kind != MEM_ALIAS) {
		cr_assert_eq(dxm_alias(v->ctx, v->m.region, &other), 0);
		v->ro = v->m.region;
		v->rw = other;
	} else {
		v->ro = v->m.base;
		v->rw = v->m.region;
	}
	fill_index(v->rw, LEN, 0);
	/* One recorder over each view: notifications come at the page's
	 * address in every view. */
	recorder_insert(v->ctx, &rec, v->ro < v->rw ? v->ro : v->rw,
			(size_t)((v->ro < v->rw ? v->rw : v->ro) -
				 (v->ro < v->rw ? v->ro : v->rw)) +
				LEN);
}

static void teardown(struct views *v)
{
	recorder_remove(&rec);
	mem_teardown(&v->m);
	dxm_ctx_destroy(v->ctx);
}

/* setup, then make the read-only view read-only, the whole range
 * exclusive through the writable view, let the device write page 0 word
 * 0, arm the callback's last write, unlock. */
static void exclusive_setup(enum mem_kind kind, struct views *v)
{
	void **dev = v->dev;
	setup(kind, v);
	cr_assert_eq(dxm_mprotect(v->ctx, v->ro, LEN, PROT_READ), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 1);
	cr_assert_eq(pages_present(v->ro, LEN), NPG,
		     "the read-only view should map the pages before");
	long n = dxm_make_exclusive(v->ctx, v->rw, LEN, &rec, dev);
	cr_assert_eq(n, NPG, "dxm_make_exclusive: %ld", n);
	for (size_t i = 0; i < NPG; i++)
		cr_assert_not_null(dev[i], "page %zu refused", i);
	cr_assert_eq(pages_present(v->rw, LEN), 0);
	cr_assert_eq(pages_present(v->ro, LEN), 0,
		     "the read-only view was not revoked");
	/* The device's write while it holds the page. */
	wr(dev[0], 0xd00d);
	v->cw = (struct clear_write){ (uintptr_t)v->ro,
				      (volatile uint64_t *)dev[0] + 1, MAGIC,
				      0 };
	recorder_hook(&rec, write_on_clear, &v->cw);
	dxm_exclusive_unlock(v->ctx, v->rw, LEN, dev);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
}

/* A test on fresh views v (common.h): setup, or exclusive_setup; also on
 * huge pages (name_huge). */
#define VIEWS_TEST(name, ...)                                                  \
	KIND_FIX_TEST_HUGE_OF(b5_readonly, MEM_KINDS_PARAMS, name,             \
			      struct views, v, setup(*kind, &v),               \
			      .timeout = 30, ##__VA_ARGS__)
#define EXCLUSIVE_TEST(name, ...)                                              \
	KIND_FIX_TEST_HUGE_OF(b5_readonly, MEM_KINDS_PARAMS, name,             \
			      struct views, v, exclusive_setup(*kind, &v),     \
			      .timeout = 30, ##__VA_ARGS__)

/* A read through the read-only view restores the page (after the CLEAR
 * callback returned) with the device's data; the writable view still
 * writes, and the read-only view sees it. */
EXCLUSIVE_TEST(restore_through_readonly_view)
{
	cr_assert_eq(rd(v.ro), 0xd00d, "the device's write was lost");
	cr_assert_eq(rd(v.ro + 8), MAGIC,
		     "the CPU read completed before the CLEAR callback");
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, v.ro));
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, v.rw),
		  "CLEAR not sent at the page's address in the writable view");
	cr_assert(page_present(v.ro));
	cr_assert(!dxm_check_exclusive(v.ctx, v.rw, PS, v.dev));
	/* Pages not touched stay exclusive in both views. */
	cr_assert(!page_present(v.ro + PS));
	cr_assert(!page_present(v.rw + PS));
	cr_assert(dxm_check_exclusive(v.ctx, v.rw + PS, PS, v.dev + 1));

	/* The writable view writes page 0 and page 1 (a fault each). */
	wr(v.rw + 16, 4242);
	wr(v.rw + PS, 4343);
	cr_assert_eq(rd(v.ro + 16), 4242);
	cr_assert_eq(rd(v.ro + PS), 4343);
	cr_assert(check_index(v.ro + 24, PS - 24, 3));
	cr_assert(check_index(v.ro + PS + 8, LEN - PS - 8, PS / 8 + 1));

	/* Back to read-write: the read-only view writes again. */
	cr_assert_eq(dxm_mprotect(v.ctx, v.ro, LEN, PROT_READ | PROT_WRITE),
		     0);
	wr(v.ro + 2 * PS, 99);
	cr_assert_eq(rd(v.rw + 2 * PS), 99);
	teardown(&v);
}

/* The write comes only after the read restored the page: the restored
 * mapping is read-only, so the write raises SIGSEGV. */
EXCLUSIVE_TEST(write_through_readonly_view_after_restore_segfaults)
{
	cr_assert_eq(rd(v.ro), 0xd00d);
	cr_assert_eq(rd(v.ro + 8), MAGIC);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, v.ro));
	cr_assert(page_present(v.ro), "the read did not restore the page");
	cr_assert(store_segfaults(v.ro, 1),
		  "a write through a read-only view succeeded");
	cr_assert_eq(rd(v.ro), 0xd00d);
	teardown(&v);
}

/* Same, on a page the writable view never restored and without a read
 * first: the write must fault to SIGSEGV, not hang or restore writable. */
EXCLUSIVE_TEST(write_through_readonly_view_of_exclusive_page_segfaults)
{
	cr_assert(store_segfaults(v.ro + 3 * PS, 1),
		  "a write through a read-only view succeeded");
	cr_assert_eq(rd(v.ro + 3 * PS), 3 * PS / 8);
	teardown(&v);
}

/* dxm_make_exclusive on a range the CPU view cannot write: -EPERM, no
 * notification, nothing revoked.  A range with one read-only page is
 * refused as a whole; the writable page alone is not. */
VIEWS_TEST(make_exclusive_readonly_range_eperm)
{
	void *dev[NPG];
	cr_assert_eq(dxm_mprotect(v.ctx, v.ro, LEN, PROT_READ), 0);
	for (size_t i = 0; i < NPG; i++)
		dev[i] = (void *)0x1;
	cr_assert_eq(dxm_make_exclusive(v.ctx, v.ro, LEN, &rec, dev), -EPERM);
	cr_assert_eq(dxm_make_exclusive(v.ctx, v.ro + PS, PS, &rec, dev),
		     -EPERM);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_EXCLUSIVE), 0);
	cr_assert_eq(pages_present(v.ro, LEN), NPG);
	cr_assert_eq(pages_present(v.rw, LEN), NPG);
	/* A device write through the read-only view is refused too; a read
	 * is not. */
	cr_assert_eq(dxm_range_fault(v.ctx, v.ro, LEN, DXM_FAULT_WRITE, dev),
		     -EPERM);
	cr_assert_eq(dxm_range_fault(v.ctx, v.ro, LEN, 0, dev), NPG);

	/* One read-only page in a writable range. */
	cr_assert_eq(dxm_mprotect(v.ctx, v.ro, LEN, PROT_READ | PROT_WRITE),
		     0);
	cr_assert_eq(dxm_mprotect(v.ctx, v.ro + PS, PS, PROT_READ), 0);
	cr_assert_eq(dxm_make_exclusive(v.ctx, v.ro, 2 * PS, &rec, dev),
		     -EPERM);
	cr_assert_eq(pages_present(v.ro, LEN), NPG);
	cr_assert_eq(dxm_make_exclusive(v.ctx, v.ro, PS, &rec, dev), 1);
	cr_assert_not_null(dev[0]);
	cr_assert(!page_present(v.ro));
	cr_assert(!page_present(v.rw));
	dxm_exclusive_unlock(v.ctx, v.ro, PS, dev);
	cr_assert(check_index(v.ro, LEN, 0), "data changed");
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, v.ro));
	teardown(&v);
}

/* A page made exclusive while its view was writable, then the view made
 * read-only (the kernel's SWP_DEVICE_EXCLUSIVE_WRITE entry under a
 * read-only VMA): the restore follows the current protection. */
VIEWS_TEST(exclusive_then_readonly_restores_readonly)
{
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(v.ctx, v.ro, LEN, &rec, dev), NPG);
	wr(dev[1], 0xabc);
	dxm_exclusive_unlock(v.ctx, v.ro, LEN, dev);
	cr_assert_eq(dxm_mprotect(v.ctx, v.ro, LEN, PROT_READ), 0);
	cr_assert(recorder_saw(&rec, DXM_EVENT_PROTECTION, v.ro + PS));
	cr_assert(!page_present(v.ro + PS));
	cr_assert_eq(rd(v.ro + PS), 0xabc);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, v.ro + PS));
	cr_assert(page_present(v.ro + PS));
	cr_assert(store_segfaults(v.ro + PS, 1),
		  "a write through a read-only view succeeded");
	cr_assert_eq(rd(v.ro + PS), 0xabc);
	teardown(&v);
}
