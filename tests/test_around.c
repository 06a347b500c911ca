// SPDX-License-Identifier: MIT
/*
 * Restore-around (dxm_ctx_opts.restore_around): a CPU fault on an
 * exclusive page may give back with it neighbours that are EXCLUSIVE for
 * the same owner, in a window that grows while faults are sequential (in
 * either direction).  Never a LOCKED neighbour, never another owner's
 * page; every page given back is notified (DXM_EVENT_CLEAR) before its
 * mapping returns; with a window of 1 a fault gives back its own page
 * only (checked in /proc/self/pagemap), as the kernel does.
 */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "common.h"

/* Pages of the long runs: 64, or 32 huge pages (64 MiB of the pool). */
#define NPG_MAX 64
#define NPG (PS == BASE_PS ? (size_t)NPG_MAX : (size_t)NPG_MAX / 2)
#define LEN (NPG * PS)
/* Each test also runs on huge pages (name_huge, common.h). */
#define KIND_TEST(name)                                                        \
	KIND_TEST_HUGE_OF(around, MEM_KINDS_ALL_PARAMS, name, .timeout = 30)

static const char owner_a[] = "a", owner_b[] = "b";

/* A context with a window of win pages and len bytes of kind memory,
 * filled with fill_index(0). */
static struct dxm_ctx *setup(enum mem_kind kind, unsigned win, size_t len,
			     struct mem *m)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .restore_around = win };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	mem_setup(ctx, kind, len, m);
	fill_index(m->base, len, 0);
	return ctx;
}

/* Page i's words after take() of a range starting at page first: word 1
 * is the device's 1000 + (i - first). */
static bool page_ok_from(const char *p, size_t i, size_t first)
{
	const uint64_t *w = (const uint64_t *)(p + i * PS);
	return w[0] == i * PS / 8 && w[1] == 1000 + i - first &&
	       w[PS / 8 - 1] == i * PS / 8 + PS / 8 - 1;
}

static bool page_ok(const char *p, size_t i)
{
	return page_ok_from(p, i, 0);
}

KIND_TEST(sequential_reads_take_fewer_faults)
{
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 16, LEN, &m);
	char *p = m.base;
	void *dev[NPG_MAX];
	take(ctx, p, LEN, owner_a, dev);
	struct dxm_stats s0 = stats(ctx);
	for (size_t i = 0; i < NPG; i++)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	struct dxm_stats s = stats(ctx);
	uint64_t faults = s.cpu_faults - s0.cpu_faults;
	cr_expect_eq(s.restores - s0.restores, NPG);
	/* windows 1, 2, 4, 8, 16, 16, 16: 7 faults for 63 pages (6 for 31) */
	cr_expect(faults < NPG / 4, "%llu faults for %zu pages read in order",
		  (unsigned long long)faults, NPG);
	cr_expect_eq(pages_present(p, LEN), NPG);
	mem_done(&m);
}

KIND_TEST(reverse_reads_take_fewer_faults)
{
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 16, LEN, &m);
	char *p = m.base;
	void *dev[NPG_MAX];
	take(ctx, p, LEN, owner_a, dev);
	struct dxm_stats s0 = stats(ctx);
	for (size_t i = NPG; i-- > 0;)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	uint64_t faults = stats(ctx).cpu_faults - s0.cpu_faults;
	cr_expect(faults < NPG / 4, "%llu faults for %zu pages read backwards",
		  (unsigned long long)faults, NPG);
	mem_done(&m);
}

KIND_TEST(window_of_one_gives_back_one_page)
{
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 1, 8 * PS, &m);
	char *p = m.base;
	void *dev[8];
	take(ctx, p, 8 * PS, owner_a, dev);
	for (size_t i = 0; i < 8; i++) {
		cr_assert(page_ok(p, i));
		cr_expect_eq(pages_present(p, 8 * PS), i + 1,
			     "after touching pages 0..%zu in order, %zu pages "
			     "are mapped",
			     i, pages_present(p, 8 * PS));
	}
	mem_done(&m);
}

KIND_TEST(locked_neighbour_is_never_given_back)
{
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 64, 16 * PS, &m);
	char *p = m.base;
	void *dev[16], *dev5[1];
	take(ctx, p, 16 * PS, owner_a, dev);
	/* The same owner takes page 5 again and keeps it locked. */
	cr_assert_eq(dxm_make_exclusive(ctx, p + 5 * PS, PS, owner_a, dev5), 1);
	cr_assert_not_null(dev5[0]);
	for (size_t i = 0; i < 5; i++)
		cr_assert(page_ok(p, i));
	cr_expect(!page_present(p + 5 * PS),
		  "a page the device holds locked was given back");
	cr_expect(dxm_check_exclusive(ctx, p + 5 * PS, PS, dev5));
	dxm_exclusive_unlock(ctx, p + 5 * PS, PS, dev5);
	for (size_t i = 5; i < 16; i++)
		cr_assert(page_ok(p, i));
	mem_done(&m);
}

KIND_TEST(another_owners_page_is_never_given_back)
{
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 64, 16 * PS, &m);
	char *p = m.base;
	void *dev[16];
	static struct recorder rec;
	recorder_insert(ctx, &rec, p, 16 * PS);
	take(ctx, p, 8 * PS, owner_a, dev);
	take(ctx, p + 8 * PS, 8 * PS, owner_b, dev + 8);
	for (size_t i = 0; i < 8; i++)
		cr_assert(page_ok(p, i));
	cr_expect_eq(pages_present(p + 8 * PS, 8 * PS), 0,
		     "%zu of owner b's pages came back with owner a's",
		     pages_present(p + 8 * PS, 8 * PS));
	cr_expect(!rec_overlaps(&rec, DXM_EVENT_CLEAR, p + 8 * PS, p + 16 * PS),
		  "owner b was told to give up a page nobody touched");
	for (size_t i = 8; i < 16; i++)
		cr_assert(page_ok_from(p, i, 8));
	recorder_remove(&rec);
	mem_done(&m);
}

/* In each CLEAR callback: none of the pages it covers may be mapped yet. */
struct first {
	const char *base, *end;
	atomic_int mapped_in_cb, clears;
};

static int notified_first_hook(struct recorder *r,
			       const struct dxm_range *range)
{
	struct first *f = r->hook_arg;
	if (range->event != DXM_EVENT_CLEAR)
		return 0;
	atomic_fetch_add(&f->clears, 1);
	for (uintptr_t a = (uintptr_t)range->start; a < (uintptr_t)range->end;
	     a += PS)
		if ((const char *)a >= f->base && (const char *)a < f->end &&
		    page_present((const void *)a))
			atomic_fetch_add(&f->mapped_in_cb, 1);
	return 0;
}

KIND_TEST(every_page_is_notified_before_it_returns)
{
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 32, LEN, &m);
	char *p = m.base;
	void *dev[NPG_MAX];
	static struct recorder rec;
	static struct first f;
	f.base = p;
	f.end = p + LEN;
	recorder_insert(ctx, &rec, p, LEN);
	take(ctx, p, LEN, owner_a, dev);
	recorder_hook(&rec, notified_first_hook, &f);
	for (size_t i = 0; i < NPG; i++)
		cr_assert(page_ok(p, i));
	recorder_hook(&rec, NULL, NULL);
	cr_expect(rec_covers(&rec, DXM_EVENT_CLEAR, p, LEN),
		  "a page came back without its CLEAR");
	cr_expect_eq(atomic_load(&f.mapped_in_cb), 0,
		     "%d pages were mapped before their CLEAR returned",
		     atomic_load(&f.mapped_in_cb));
	cr_expect_lt(atomic_load(&f.clears), (int)(NPG / 4),
		     "%d CLEAR calls for %zu pages: no run was notified at "
		     "once",
		     atomic_load(&f.clears), NPG);
	struct dxm_stats s = stats(ctx);
	uint64_t multi = 0;
	for (int i = 2; i < DXM_STATS_HIST; i++)
		multi += s.restore_pages[i];
	cr_expect_gt(multi, 0, "no restore gave back more than one page");
	recorder_remove(&rec);
	mem_done(&m);
}

/*
 * Ahead: once a forward window is whole (16 pages here), the handler also
 * gives back the next window, leaving the page between exclusive (the
 * marker).  Windows 2, 4, 8 from page 0 (a first fault on page 0 counts
 * as sequential), then 16 from page 14: [14, 30), and [31, 47) ahead,
 * page 30 left exclusive.  The fault on page 30 gives back page 30 and
 * [48, 56) ahead (page 56 is locked: never given back); the fault on
 * page 47, [57, 64).  Every page gets its CLEAR before its mapping;
 * pages_ahead counts them.
 */
KIND_TEST(a_sequential_reader_gets_the_next_window_ahead)
{
	if (PS != BASE_PS)
		cr_skip_test("SKIP: 64 huge pages (128 MiB of the pool)");
	struct mem m;
	struct dxm_ctx *ctx = setup(*kind, 16, 64 * PS, &m);
	char *p = m.base;
	void *dev[64], *dev56[1];
	static struct recorder rec;
	static struct first f;
	f.base = p;
	f.end = p + 64 * PS;
	recorder_insert(ctx, &rec, p, 64 * PS);
	take(ctx, p, 64 * PS, owner_a, dev);
	cr_assert_eq(dxm_make_exclusive(ctx, p + 56 * PS, PS, owner_a, dev56),
		     1);
	recorder_hook(&rec, notified_first_hook, &f);
	struct dxm_stats s0 = stats(ctx);
	for (size_t i = 0; i < 16; i++)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	/* The window ahead comes back after the reader was woken. */
	cr_assert(WAIT_FOR(pages_present(p + 31 * PS, 16 * PS) == 16, 2000),
		  "%zu of pages 31..46 given back ahead",
		  pages_present(p + 31 * PS, 16 * PS));
	cr_expect_eq(pages_present(p, 30 * PS), 30);
	cr_expect(!page_present(p + 30 * PS), "the marker was given back");
	cr_expect_eq(pages_present(p + 47 * PS, 17 * PS), 0,
		     "more than one window given back ahead");
	cr_expect_eq(stats(ctx).pages_ahead - s0.pages_ahead, 16);
	for (size_t i = 16; i < 47; i++)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	cr_assert(WAIT_FOR(pages_present(p + 48 * PS, 8 * PS) == 8, 2000));
	cr_expect(!page_present(p + 47 * PS), "the marker was given back");
	for (size_t i = 47; i < 56; i++)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	cr_assert(WAIT_FOR(pages_present(p + 57 * PS, 7 * PS) == 7, 2000));
	cr_expect(!page_present(p + 56 * PS), "a locked page was given back");
	cr_expect(dxm_check_exclusive(ctx, p + 56 * PS, PS, dev56));
	dxm_exclusive_unlock(ctx, p + 56 * PS, PS, dev56);
	for (size_t i = 56; i < 64; i++)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	recorder_hook(&rec, NULL, NULL);
	struct dxm_stats s = stats(ctx);
	cr_expect_eq(s.pages_ahead - s0.pages_ahead, 16 + 8 + 7);
	cr_expect_eq(s.restores - s0.restores, 64);
	cr_expect_eq(s.cpu_faults - s0.cpu_faults, 4 + 3,
		     "faults on pages 0, 2, 6, 14, then 30, 47, 56");
	cr_expect(rec_covers(&rec, DXM_EVENT_CLEAR, p, 64 * PS),
		  "a page came back without its CLEAR");
	cr_expect_eq(atomic_load(&f.mapped_in_cb), 0,
		     "%d pages were mapped before their CLEAR returned",
		     atomic_load(&f.mapped_in_cb));
	recorder_remove(&rec);
	mem_done(&m);
}

/* The default window grows to 2048 pages: wider than adopted memory's
 * moves of 512 pages at a time, and still one wake-up per window.  Every
 * page comes back with the device's data. */
KIND_TEST_OF(around, MEM_KINDS_ALL_PARAMS, default_window_is_wide_and_whole,
	     .timeout = 30)
{
	enum { N = 4096 };
	struct mem m;
	/* The library's defaults (ctx_or_skip asks for one page). */
	struct dxm_ctx *ctx = ctx_create_or_skip(NULL);
	mem_setup(ctx, *kind, N * BASE_PS, &m);
	fill_index(m.base, N * BASE_PS, 0);
	char *p = m.base;
	static void *dev[N];
	take(ctx, p, N * BASE_PS, owner_a, dev);
	struct dxm_stats s0 = stats(ctx);
	for (size_t i = 0; i < N; i++)
		cr_assert(page_ok(p, i), "page %zu lost its data", i);
	struct dxm_stats s = stats(ctx);
	cr_expect_eq(s.restores - s0.restores, N);
	/* windows 1, 2, ..., 1024, 2048, then the 1 page left: 13 faults */
	uint64_t faults = s.cpu_faults - s0.cpu_faults;
	cr_expect_leq(faults, 16, "%llu faults for %d pages read in order",
		      (unsigned long long)faults, N);
	uint64_t wide = 0; /* restores of 1024 pages or more */
	for (int i = 11; i < DXM_STATS_HIST; i++)
		wide += s.restore_pages[i] - s0.restore_pages[i];
	cr_expect_geq(wide, 2, "%llu restores of 1024 pages or more",
		      (unsigned long long)wide);
	cr_expect_eq(pages_present(p, N * BASE_PS), N);
	mem_done(&m);
}
