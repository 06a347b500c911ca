// SPDX-License-Identifier: MIT
/*
 * B1 exclusive: dxm_make_exclusive() revokes every CPU mapping of its pages
 * (checked from the kernel's side, /proc/self/pagemap), returns one
 * device-side address per page (or NULL), hands the pages back LOCKED, and
 * never copies or loses data.  Includes the kernel's hmm-tests "exclusive"
 * scenario on this memory.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* The physical frame behind addr (0 when the kernel hides PFNs from us or
 * the page is not present). */
static uint64_t page_pfn(const void *addr)
{
	uint64_t e = pagemap_entry(addr);
	return (e >> 63) & 1 ? e & ((1ull << 55) - 1) : 0;
}

static void touch_all(void *p, size_t len)
{
	for (size_t off = 0; off < len; off += PS)
		(void)*(volatile char *)((char *)p + off);
}

static void **dev_array(size_t n)
{
	void **dev = calloc(n, sizeof(*dev));
	cr_assert_not_null(dev);
	return dev;
}

/* Each test also runs on huge pages (name_huge, common.h). */
#define KIND_TEST(name)                                                        \
	KIND_TEST_HUGE_OF(b1_exclusive, MEM_KINDS_PARAMS, name, .timeout = 30)
/* A test on a context and len bytes of *kind memory (common.h). */
#define MEM_TEST(name, len)                                                    \
	MEM_TEST_HUGE_OF(b1_exclusive, MEM_KINDS_PARAMS, name, len,            \
			 .timeout = 30)

/* ------------------------------------------------------------------------ */

/* The return value is len / page size and every page gets its own,
 * page-aligned device-side address that is not a CPU view address. */
MEM_TEST(returns_npages_and_dev_per_page, 16 * PS)
{
	const size_t n = m.len / PS;
	void **dev = dev_array(n);
	for (size_t i = 0; i < n; i++)
		dev[i] = (void *)1; /* must be overwritten */

	long got = dxm_make_exclusive(ctx, m.base, n * PS, &m, dev);
	cr_assert_eq(got, (long)n, "make_exclusive(%s) returned %ld",
		     mem_kind_name[*kind], got);
	for (size_t i = 0; i < n; i++) {
		cr_assert_not_null(dev[i], "dev[%zu] is NULL", i);
		cr_assert_neq(dev[i], (void *)1, "dev[%zu] not written", i);
		cr_assert_eq((uintptr_t)dev[i] % PS, 0, "dev[%zu] unaligned",
			     i);
		char *d = dev[i];
		cr_assert(d < (char *)m.base || d >= (char *)m.base + n * PS,
			  "dev[%zu] is a CPU view address", i);
		cr_assert(d < (char *)m.region ||
				  d >= (char *)m.region + n * PS,
			  "dev[%zu] is a CPU view address", i);
		for (size_t j = 0; j < i; j++)
			cr_assert_neq(dev[i], dev[j], "dev[%zu] == dev[%zu]", i,
				      j);
	}
	struct dxm_stats st = stats(ctx);
	cr_assert_eq(st.pages_converted, n);
	cr_assert_eq(st.pages_refused, 0);

	/* A sub-range in the middle: its own count, and the same device
	 * addresses the first call gave for those pages. */
	dxm_exclusive_unlock(ctx, m.base, n * PS, dev);
	void *dev2[4];
	got = dxm_make_exclusive(ctx, (char *)m.base + 5 * PS, 4 * PS, &m,
				 dev2);
	cr_assert_eq(got, 4);
	for (size_t i = 0; i < 4; i++)
		cr_assert_eq(dev2[i], dev[5 + i], "dev of page %zu moved",
			     5 + i);
	dxm_exclusive_unlock(ctx, (char *)m.base + 5 * PS, 4 * PS, dev2);
	free(dev);
}

/* Every CPU view of every page loses its mapping: the kernel's pagemap says
 * not present.  Pages outside the range keep theirs. */
MEM_TEST(revokes_every_cpu_view, 32 * PS)
{
	const size_t n = m.len / PS, a = 4, k = 20; /* convert [a, a+k) */
	/* A second alias on top: a view the test never touches through. */
	void *extra = NULL;
	cr_assert_eq(dxm_alias(ctx, m.region, &extra), 0);
	void *views[3] = { m.region, m.base, extra };

	for (int v = 0; v < 3; v++) {
		touch_all(views[v], n * PS);
		cr_assert_eq(pages_present(views[v], n * PS), n,
			     "view %d not mapped before the conversion", v);
	}
	void **dev = dev_array(k);
	long got = dxm_make_exclusive(ctx, (char *)m.base + a * PS, k * PS,
				      &m, dev);
	cr_assert_eq(got, (long)k);
	for (int v = 0; v < 3; v++) {
		char *p = views[v];
		cr_assert_eq(pages_present(p + a * PS, k * PS), 0,
			     "%zu page(s) of view %d still mapped (%s)",
			     pages_present(p + a * PS, k * PS), v,
			     mem_kind_name[*kind]);
		for (size_t i = a; i < a + k; i++)
			cr_assert(!page_present(p + i * PS),
				  "page %zu of view %d present", i, v);
		cr_assert_eq(pages_present(p, a * PS), a,
			     "pages before the range lost their mapping");
		cr_assert_eq(pages_present(p + (a + k) * PS,
					   (n - a - k) * PS),
			     n - a - k,
			     "pages after the range lost their mapping");
	}
	/* Still revoked once unlocked (EXCLUSIVE), until a CPU touch. */
	dxm_exclusive_unlock(ctx, (char *)m.base + a * PS, k * PS, dev);
	for (int v = 0; v < 3; v++)
		cr_assert_eq(pages_present((char *)views[v] + a * PS, k * PS),
			     0, "view %d mapped again by the unlock", v);
	free(dev);
}

/* The device view shows what the CPU wrote; what the device writes is what
 * the CPU reads later; the device page is the very page the CPU maps (same
 * physical frame where the kernel shows frames). */
MEM_TEST(data_not_copied_or_lost, 8 * PS)
{
	const size_t n = m.len / PS;
	fill_index(m.base, n * PS, 1000);
	uint64_t pfn_before[8];
	for (size_t i = 0; i < n; i++)
		pfn_before[i] = page_pfn((char *)m.base + i * PS);

	void *dev[8];
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, n * PS, &m, dev),
		     (long)n);
	for (size_t i = 0; i < n; i++) {
		cr_assert(check_index(dev[i], PS, 1000 + i * (PS / 8)),
			  "device view of page %zu lost the CPU's data", i);
		/* The device side is the same page, not a copy. */
		uint64_t pfn = page_pfn(dev[i]);
		if (pfn && pfn_before[i])
			cr_assert_eq(pfn, pfn_before[i],
				     "page %zu was copied (pfn %#llx -> "
				     "%#llx)",
				     i, (unsigned long long)pfn_before[i],
				     (unsigned long long)pfn);
	}
	/* The device rewrites every word. */
	for (size_t i = 0; i < n; i++)
		fill_index(dev[i], PS, 5000000 + i * (PS / 8));
	dxm_exclusive_unlock(ctx, m.base, n * PS, dev);
	cr_assert_eq(pages_present(m.base, n * PS), 0);

	cr_assert(check_index(m.base, n * PS, 5000000),
		  "the CPU does not see the device's writes (%s)",
		  mem_kind_name[*kind]);
	/* The other view (the alias's region, or the region itself) agrees. */
	cr_assert(check_index(m.region, n * PS, 5000000));
	for (size_t i = 0; i < n; i++) {
		uint64_t pfn = page_pfn((char *)m.base + i * PS);
		if (pfn && pfn_before[i])
			cr_assert_eq(pfn, pfn_before[i],
				     "page %zu came back as another frame", i);
	}
}

/* ---------------------------------------------------- pages come LOCKED */

struct toucher {
	volatile uint64_t *p;
	bool write;
	uint64_t value; /* read, or to write */
	atomic_bool done;
	atomic_bool unlocked; /* set by main just before dxm_exclusive_unlock */
	atomic_int clear_before_unlock;
	atomic_int clear_after_unlock;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	if (t->write)
		*t->p = t->value;
	else
		t->value = *t->p;
	atomic_store(&t->done, true);
	return NULL;
}

static int order_hook(struct recorder *r, const struct dxm_range *range)
{
	struct toucher *t = r->hook_arg;
	if (range->event == DXM_EVENT_CLEAR) {
		if (atomic_load(&t->unlocked))
			atomic_fetch_add(&t->clear_after_unlock, 1);
		else
			atomic_fetch_add(&t->clear_before_unlock, 1);
	}
	return 0;
}

/* On 4 pages of memory m. */
static void locked_case(struct dxm_ctx *ctx, struct mem m, bool write)
{
	void *dev[1];
	uint64_t *w = (uint64_t *)((char *)m.base + PS);
	*w = 1;
	static struct recorder rec;
	static struct toucher t;
	recorder_insert(ctx, &rec, m.base, 4 * PS);
	recorder_hook(&rec, order_hook, &t);

	cr_assert_eq(dxm_make_exclusive(ctx, w, PS, &m, dev), 1);
	cr_assert_not_null(dev[0]);
	t.p = w;
	t.write = write;
	t.value = write ? 77 : 0;
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, toucher_main, &t), 0);
	/* Let the thread reach the fault (on a loaded machine it may take
	 * a while to run), then give a wrong completion time to happen. */
	for (int i = 0; i < 2000 && stats(ctx).deferred_faults == 0 &&
			!atomic_load(&t.done);
	     i++)
		sleep_ms(1);
	sleep_ms(200);
	cr_assert(!atomic_load(&t.done),
		  "a CPU %s of a LOCKED page completed before the unlock",
		  write ? "store" : "load");
	cr_assert_eq(atomic_load(&t.clear_before_unlock), 0,
		     "CLEAR sent while the page was still locked");
	/* The device still owns it: it writes while the CPU waits. */
	*(volatile uint64_t *)dev[0] = 42;
	cr_assert(!page_present(w));

	atomic_store(&t.unlocked, true);
	dxm_exclusive_unlock(ctx, w, PS, dev);
	cr_assert(join_within(th, 5000),
		  "the CPU access did not complete after the unlock");
	cr_assert(atomic_load(&t.done));
	cr_assert_eq(atomic_load(&t.clear_before_unlock), 0);
	cr_assert_geq(atomic_load(&t.clear_after_unlock), 1,
		      "no CLEAR notification for the CPU access");
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, w));
	if (write)
		cr_assert_eq(*w, 77, "the CPU store was lost");
	else
		cr_assert_eq(t.value, 42,
			     "the CPU read %llu, not the device's write",
			     (unsigned long long)t.value);
	cr_assert(page_present(w));
	struct dxm_stats st = stats(ctx);
	cr_assert_geq(st.deferred_faults, 1);
	recorder_remove(&rec);
}

MEM_TEST(locked_until_unlock_load, 4 * PS)
{
	locked_case(ctx, m, false);
}

MEM_TEST(locked_until_unlock_store, 4 * PS)
{
	locked_case(ctx, m, true);
}

/* A second make_exclusive on pages still LOCKED by someone else gets NULL
 * for them (and the others it asked for); once unlocked (EXCLUSIVE) a new
 * owner may take them over. */
MEM_TEST(locked_page_refused_to_second_caller, 8 * PS)
{
	char *b = m.base;
	static const int owner_a = 1, owner_b = 2;
	void *da[4], *db[4];
	/* A holds pages 2..5 locked. */
	cr_assert_eq(dxm_make_exclusive(ctx, b + 2 * PS, 4 * PS, &owner_a, da),
		     4);
	struct dxm_stats st0 = stats(ctx);
	/* B asks for pages 4..7: 4 and 5 are A's, 6 and 7 are free. */
	cr_assert_eq(dxm_make_exclusive(ctx, b + 4 * PS, 4 * PS, &owner_b, db),
		     4);
	cr_assert_null(db[0], "page 4 (locked by A) given to B");
	cr_assert_null(db[1], "page 5 (locked by A) given to B");
	cr_assert_not_null(db[2]);
	cr_assert_not_null(db[3]);
	struct dxm_stats st1 = stats(ctx);
	cr_assert_eq(st1.pages_refused - st0.pages_refused, 2);
	/* A still holds its pages. */
	cr_assert(dxm_check_exclusive(ctx, b + 2 * PS, 4 * PS, da));
	cr_assert_eq(pages_present(b + 2 * PS, 6 * PS), 0);

	dxm_exclusive_unlock(ctx, b + 4 * PS, 4 * PS, db);
	dxm_exclusive_unlock(ctx, b + 2 * PS, 4 * PS, da);
	/* EXCLUSIVE (unlocked) pages can be taken over by B. */
	cr_assert_eq(dxm_make_exclusive(ctx, b + 4 * PS, 2 * PS, &owner_b, db),
		     2);
	cr_assert_not_null(db[0]);
	cr_assert_not_null(db[1]);
	cr_assert_eq(db[0], da[2]);
	/* And while B holds them locked, A is refused in turn. */
	cr_assert_eq(dxm_make_exclusive(ctx, b + 4 * PS, PS, &owner_a, da), 1);
	cr_assert_null(da[0]);
	dxm_exclusive_unlock(ctx, b + 4 * PS, 2 * PS, db);
}

/* dxm_check_exclusive: true right after the conversion (locked or not),
 * false once a CPU access took a page back. */
MEM_TEST(check_true_until_cpu_touch, 4 * PS)
{
	char *b = m.base;
	void *dev[4];
	cr_assert_eq(dxm_make_exclusive(ctx, b, 4 * PS, &m, dev), 4);
	cr_assert(dxm_check_exclusive(ctx, b, 4 * PS, dev),
		  "not exclusive right after make_exclusive (locked)");
	dxm_exclusive_unlock(ctx, b, 4 * PS, dev);
	cr_assert(dxm_check_exclusive(ctx, b, 4 * PS, dev),
		  "not exclusive after the unlock");
	for (size_t i = 0; i < 4; i++)
		cr_assert(dxm_check_exclusive(ctx, b + i * PS, PS, &dev[i]));
	/* A wrong device address is not the exclusive one. */
	void *wrong[4] = { dev[1], dev[0], dev[2], dev[3] };
	cr_assert(!dxm_check_exclusive(ctx, b, 4 * PS, wrong));

	(void)*(volatile char *)(b + 2 * PS); /* CPU touch of page 2 */
	cr_assert(page_present(b + 2 * PS));
	cr_assert(!dxm_check_exclusive(ctx, b, 4 * PS, dev),
		  "still exclusive after a CPU touch");
	cr_assert(!dxm_check_exclusive(ctx, b + 2 * PS, PS, &dev[2]));
	cr_assert(dxm_check_exclusive(ctx, b, 2 * PS, dev),
		  "untouched pages lost exclusivity");
	cr_assert(dxm_check_exclusive(ctx, b + 3 * PS, PS, &dev[3]));
	/* A store too. */
	*(volatile char *)(b + 3 * PS) = 1;
	cr_assert(!dxm_check_exclusive(ctx, b + 3 * PS, PS, &dev[3]));
	cr_assert(dxm_check_exclusive(ctx, b, 2 * PS, dev));
}

static void range_case(enum mem_kind kind, size_t n)
{
	struct mem m;
	struct dxm_ctx *ctx = ctx_mem(kind, n * PS, &m);
	fill_index(m.base, n * PS, 7);
	cr_assert_eq(pages_present(m.base, n * PS), n);
	void **dev = dev_array(n);
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, n * PS, &m, dev),
		     (long)n);
	size_t null = 0;
	for (size_t i = 0; i < n; i++)
		null += !dev[i];
	cr_assert_eq(null, 0, "%zu of %zu pages refused", null, n);
	cr_assert_eq(pages_present(m.base, n * PS), 0);
	cr_assert_eq(pages_present(m.region, n * PS), 0);
	cr_assert(dxm_check_exclusive(ctx, m.base, n * PS, dev));
	for (size_t i = 0; i < n; i++)
		cr_assert(check_index(dev[i], PS, 7 + i * (PS / 8)),
			  "device page %zu lost data", i);
	dxm_exclusive_unlock(ctx, m.base, n * PS, dev);
	cr_assert(check_index(m.base, n * PS, 7));
	cr_assert_eq(pages_present(m.base, n * PS), n);
	cr_assert(!dxm_check_exclusive(ctx, m.base, n * PS, dev));
	free(dev);
	mem_done(&m);
}

KIND_TEST(range_4mib)
{
	range_case(*kind, (4u << 20) / PS);
}

KIND_TEST(range_one_page)
{
	range_case(*kind, 1);
}

/*
 * The kernel's scenario (hmm-tests.c, "exclusive"): 4 MiB filled with i,
 * all taken exclusive; the device reads i through its addresses; the CPU
 * reads and increments every value (each page faults back); a second pass
 * sees i + 1; no page is exclusive any more.
 */
MEM_TEST(kernel_scenario_4mib, 4u << 20)
{
	const size_t len = m.len, n = len / PS, words = PS / 8;
	uint64_t *ptr = m.base;
	for (size_t i = 0; i < len / 8; i++)
		ptr[i] = i;

	void **dev = dev_array(n);
	long got = dxm_make_exclusive(ctx, ptr, len, &m, dev);
	cr_assert_eq(got, (long)n);
	for (size_t i = 0; i < n; i++)
		cr_assert_not_null(dev[i], "page %zu refused", i);
	dxm_exclusive_unlock(ctx, ptr, len, dev);
	cr_assert_eq(pages_present(ptr, len), 0);
	cr_assert(dxm_check_exclusive(ctx, ptr, len, dev));

	/* The device reads i. */
	for (size_t p = 0; p < n; p++) {
		const uint64_t *d = dev[p];
		for (size_t j = 0; j < words; j++)
			cr_assert_eq(d[j], p * words + j,
				     "device read %llu at word %zu",
				     (unsigned long long)d[j], p * words + j);
	}

	struct dxm_stats st0 = stats(ctx);
	/* The CPU reads and increments every value. */
	for (size_t i = 0; i < len / 8; i++) {
		cr_assert_eq(ptr[i], i, "CPU read %llu at word %zu",
			     (unsigned long long)ptr[i], i);
		ptr[i]++;
	}
	cr_assert_eq(pages_present(ptr, len), n);
	/* Second pass: i + 1. */
	for (size_t i = 0; i < len / 8; i++)
		cr_assert_eq(ptr[i], i + 1, "word %zu is %llu", i,
			     (unsigned long long)ptr[i]);
	for (size_t p = 0; p < n; p++)
		cr_assert(!dxm_check_exclusive(ctx, (char *)ptr + p * PS, PS,
					       &dev[p]),
			  "page %zu still exclusive", p);
	/* The device's view agrees. */
	for (size_t p = 0; p < n; p++)
		cr_assert(check_index(dev[p], PS, 1 + p * words));
	/* The handler counts a fault after it woke the faulting thread:
	 * give the last count a bounded moment to land. */
	struct dxm_stats st1 = stats(ctx);
	for (int i = 0; i < 2000 && st1.cpu_faults - st0.cpu_faults < n; i++) {
		sleep_ms(1);
		st1 = stats(ctx);
	}
	cr_assert_geq(st1.cpu_faults - st0.cpu_faults, n,
		      "only %llu cpu faults for %zu pages",
		      (unsigned long long)(st1.cpu_faults - st0.cpu_faults),
		      n);
	cr_assert_eq(st1.restores - st0.restores, n,
		     "%llu restores for %zu pages",
		     (unsigned long long)(st1.restores - st0.restores), n);
	cr_assert_geq(st1.pages_converted, n);
	free(dev);
}
