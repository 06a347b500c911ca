// SPDX-License-Identifier: MIT
/*
 * B11 bad input: unaligned, zero-length, overflowing, unmanaged, partially
 * managed, NULL and freed arguments, double free, a destroyed or foreign
 * context, and calls from a fork()ed child: every public function returns
 * its negative errno (dxm_check_exclusive false, dxm_exclusive_unlock and
 * dxm_ctx_destroy nothing), and afterwards the process and its data are
 * intact: a managed region keeps its content and its exclusive page, no
 * notifier was called, and it still works.  The tests on a region run on
 * 4 KiB pages and, as name_huge, on huge pages (common.h).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "common.h"

#define NPG 4
#define LEN (NPG * PS)
#define XPG 2	   /* the page the device holds exclusive */
#define DEVWORD 0xde11ce0000000bb1ull
#define ADD 7	   /* fill_index offset */

static struct recorder rec;
static const char owner[] = "b11";

struct fix {
	struct dxm_ctx *ctx;
	char *r;	 /* a managed region, page XPG exclusive */
	void *xdev;	 /* device address of page XPG */
	char *freed;	 /* a region that was freed */
	char *anon;	 /* unmanaged: mmap */
	char *heap;	 /* unmanaged: malloc */
	struct dxm_stats st;
};

static void setup(struct fix *f)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_or_skip(NULL);
	f->r = test_alloc(f->ctx, LEN);
	fill_index(f->r, LEN, ADD);
	recorder_insert(f->ctx, &rec, f->r, LEN);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(f->ctx, f->r + XPG * PS, PS, owner,
					dev),
		     1);
	f->xdev = dev[0];
	cr_assert_not_null(f->xdev);
	wr(f->xdev, DEVWORD);
	dxm_exclusive_unlock(f->ctx, f->r + XPG * PS, PS, dev);
	f->anon = mmap(NULL, 2 * PS, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(f->anon, MAP_FAILED);
	memset(f->anon, 0x3c, 2 * PS);
	f->heap = aligned_alloc(PS, 2 * PS);
	cr_assert_not_null(f->heap);
	memset(f->heap, 0x4d, 2 * PS);
	/* Last, so that nothing of the test reuses its addresses. */
	f->freed = test_alloc(f->ctx, LEN);
	cr_assert_eq(dxm_free(f->ctx, f->freed), 0);
	/* Only the conversion so far. */
	cr_assert_eq(rec.nrec, 1);
	f->st = stats(f->ctx);
}

/* Nothing happened behind the test's back: no notification since setup,
 * the exclusive page still exclusive and revoked, every other word as it
 * was, the same regions, the unmanaged memory untouched and writable. */
static void check_untouched(struct fix *f, const char *after)
{
	void *dev[1] = { f->xdev };
	cr_assert_eq(rec.nrec, 1, "after %s: a notifier was called (event %d)",
		     after, rec.nrec > 1 ? (int)rec.rec[1].event : -1);
	cr_assert(!page_present(f->r + XPG * PS),
		  "after %s: the exclusive page is mapped", after);
	cr_assert(dxm_check_exclusive(f->ctx, f->r + XPG * PS, PS, dev),
		  "after %s: the page is no longer exclusive", after);
	for (size_t i = 0; i < NPG; i++)
		if (i != XPG)
			cr_assert(check_index(f->r + i * PS, PS,
					      ADD + i * PS / 8),
				  "after %s: page %zu changed", after, i);
	struct dxm_stats st = stats(f->ctx);
	cr_assert_eq(st.regions, f->st.regions, "after %s", after);
	cr_assert_eq(st.managed_pages, f->st.managed_pages, "after %s", after);
	cr_assert_eq(st.pages_converted, f->st.pages_converted, "after %s",
		     after);
	for (size_t off = 0; off < 2 * PS; off++) {
		cr_assert_eq(f->anon[off], 0x3c, "after %s", after);
		cr_assert_eq(f->heap[off], 0x4d, "after %s", after);
	}
	f->anon[0] = 0x3c; /* still writable */
	f->heap[0] = 0x4d;
}

/* The end of every test: the data is intact and the region still works
 * (the exclusive page faults back with the device's write, the region can
 * be taken exclusive again). */
static void check_usable_and_teardown(struct fix *f)
{
	check_untouched(f, "the test");
	cr_assert_eq(rd(f->r + XPG * PS), DEVWORD);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f->r + XPG * PS));
	cr_assert(check_index(f->r + XPG * PS + 8, PS - 8,
			      ADD + XPG * PS / 8 + 1));
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(f->ctx, f->r, LEN, owner, dev), NPG);
	cr_assert_eq(pages_present(f->r, LEN), 0);
	dxm_exclusive_unlock(f->ctx, f->r, LEN, dev);
	wr(f->r + 8, 1);
	cr_assert_eq(rd(f->r + 8), 1);
	cr_assert(check_index(f->r + PS, PS, ADD + PS / 8));
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(f->ctx, f->r), 0);
	munmap(f->anon, 2 * PS);
	free(f->heap);
	dxm_ctx_destroy(f->ctx);
}

/* Page XPG exclusive again after a test took it back, at its old device
 * address, and what was recorded since setup forgotten: what
 * check_usable_and_teardown expects. */
static void retake_xpg(struct fix *f)
{
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(f->ctx, f->r + XPG * PS, PS, owner,
					dev),
		     1);
	cr_assert_eq(dev[0], f->xdev);
	dxm_exclusive_unlock(f->ctx, f->r + XPG * PS, PS, dev);
	rec.nrec = 1;
	f->st = stats(f->ctx);
}

/* A test on a fresh struct fix (setup), on dxm_alloc memory: MEM_MEMFD,
 * and huge pages. */
#define FIX_TEST(name)                                                         \
	MEMFD_FIX_TEST_HUGE_OF(b11_badinput, name, struct fix, f, setup(&f),   \
			       .timeout = 30)

/* --------------------------------------------------------- bad ranges */

struct bad_range {
	const char *what;
	void *start;
	size_t len;
	int err;
};

static size_t bad_ranges(struct fix *f, struct bad_range *b)
{
	size_t n = 0;
	char *top = (char *)(UINTPTR_MAX & ~(uintptr_t)(PS - 1));
#define BAD(w, s, l, e) (b[n++] = (struct bad_range){ w, (void *)(s), l, e })
	BAD("unaligned start", f->r + 1, PS, -EINVAL);
	BAD("unaligned start (mid-region)", f->r + PS + 8, PS, -EINVAL);
	BAD("unaligned length", f->r, PS + 1, -EINVAL);
	BAD("unaligned short length", f->r, 100, -EINVAL);
	BAD("zero length", f->r, 0, -EINVAL);
	BAD("zero length (unaligned)", f->r + 3, 0, -EINVAL);
	BAD("NULL start", NULL, PS, -EINVAL);
	BAD("start + len wraps", f->r, SIZE_MAX & ~(PS - 1), -EINVAL);
	BAD("start + len wraps at the top", top, 2 * PS, -EINVAL);
	BAD("start + len ends at 0", top, PS, -EINVAL);
	BAD("unmanaged (mmap)", f->anon, PS, -EFAULT);
	BAD("unmanaged (malloc)", f->heap, PS, -EFAULT);
	BAD("unmanaged (kernel half)", 0xffff800000000000ull, PS, -EFAULT);
	BAD("runs past the region's end", f->r + (NPG - 1) * PS, 2 * PS,
	    -EFAULT);
	BAD("the region and one more page", f->r, LEN + PS, -EFAULT);
	BAD("starts before the region", f->r - PS, 2 * PS, -EFAULT);
	BAD("a freed region", f->freed, PS, -EFAULT);
	BAD("a freed region, whole", f->freed, LEN, -EFAULT);
#undef BAD
	return n;
}

/* call(f, b, dev) with each of the bad ranges, dev[i] the exclusive page's
 * device address: nothing changes. */
static void each_bad_range(struct fix *f,
			   void (*call)(struct fix *f,
					const struct bad_range *b, void **dev))
{
	struct bad_range b[32];
	void *dev[NPG + 4];
	for (size_t i = 0; i < NPG + 4; i++)
		dev[i] = f->xdev;
	size_t n = bad_ranges(f, b);
	for (size_t i = 0; i < n; i++) {
		call(f, &b[i], dev);
		check_untouched(f, b[i].what);
	}
}

static void bad_make_exclusive(struct fix *f, const struct bad_range *b,
			       void **dev)
{
	long got = dxm_make_exclusive(f->ctx, b->start, b->len, owner, dev);
	cr_assert_eq(got, b->err, "%s: %ld, expected %d", b->what, got, b->err);
}

static void bad_mprotect(struct fix *f, const struct bad_range *b, void **dev)
{
	(void)dev;
	int got = dxm_mprotect(f->ctx, b->start, b->len, PROT_READ);
	cr_assert_eq(got, b->err, "%s: %d, expected %d", b->what, got, b->err);
}

static void bad_range_fault(struct fix *f, const struct bad_range *b,
			    void **dev)
{
	long got = dxm_range_fault(f->ctx, b->start, b->len, 0, dev);
	cr_assert_eq(got, b->err, "%s: %ld, expected %d", b->what, got, b->err);
	got = dxm_range_fault(f->ctx, b->start, b->len, DXM_FAULT_WRITE, NULL);
	cr_assert_eq(got, b->err, "%s (write): %ld, expected %d", b->what, got,
		     b->err);
}

static void bad_check_exclusive(struct fix *f, const struct bad_range *b,
				void **dev)
{
	cr_assert(!dxm_check_exclusive(f->ctx, b->start, b->len, dev), "%s",
		  b->what);
}

static void bad_unlock(struct fix *f, const struct bad_range *b, void **dev)
{
	dxm_exclusive_unlock(f->ctx, b->start, b->len, dev);
}

FIX_TEST(make_exclusive_bad_ranges)
{
	each_bad_range(&f, bad_make_exclusive);
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.r, PS, owner, NULL), -EINVAL);
	check_untouched(&f, "NULL dev");
	check_usable_and_teardown(&f);
}

FIX_TEST(mprotect_bad_ranges)
{
	each_bad_range(&f, bad_mprotect);
	/* Bad protection bits. */
	static const int bad_prot[] = { 0x10, 0x8, PROT_GROWSDOWN,
					PROT_GROWSUP, -1 };
	for (size_t i = 0; i < sizeof(bad_prot) / sizeof(bad_prot[0]); i++) {
		cr_assert_eq(dxm_mprotect(f.ctx, f.r, LEN, bad_prot[i]),
			     -EINVAL, "prot %#x", bad_prot[i]);
		check_untouched(&f, "bad prot");
	}
	/* The region stayed writable everywhere (also past the partial
	 * ranges above). */
	for (size_t i = 0; i < NPG; i++)
		if (i != XPG) {
			wr(f.r + i * PS, ADD + i * PS / 8);
		}
	check_usable_and_teardown(&f);
}

FIX_TEST(range_fault_bad_ranges)
{
	void *dev[NPG];
	each_bad_range(&f, bad_range_fault);
	cr_assert_eq(dxm_range_fault(f.ctx, f.r, LEN, 1u << 7, dev), -EINVAL);
	cr_assert_eq(dxm_range_fault(f.ctx, f.r, LEN, ~0u, dev), -EINVAL);
	check_untouched(&f, "unknown flags");
	check_usable_and_teardown(&f);
}

/* dxm_check_exclusive: false for every bad range, a NULL or wrong dev
 * array, a page the CPU owns; and it changes nothing. */
FIX_TEST(check_exclusive_false_on_bad_input)
{
	each_bad_range(&f, bad_check_exclusive);
	cr_assert(!dxm_check_exclusive(f.ctx, f.r + XPG * PS, PS, NULL));
	void *wrong[1] = { (char *)f.xdev + PS };
	cr_assert(!dxm_check_exclusive(f.ctx, f.r + XPG * PS, PS, wrong));
	wrong[0] = NULL;
	cr_assert(!dxm_check_exclusive(f.ctx, f.r + XPG * PS, PS, wrong));
	/* The page before it is the CPU's (its true device address). */
	wrong[0] = (char *)f.xdev - PS;
	cr_assert(!dxm_check_exclusive(f.ctx, f.r + (XPG - 1) * PS, PS, wrong));
	void *dev[NPG];
	for (size_t i = 0; i < NPG; i++)
		dev[i] = f.xdev;
	cr_assert(!dxm_check_exclusive(f.ctx, f.r, LEN, dev));
	check_untouched(&f, "dxm_check_exclusive");
	check_usable_and_teardown(&f);
}

/* dxm_exclusive_unlock with bad ranges, NULL or forged dev arrays, pages
 * not locked, twice: nothing changes. */
FIX_TEST(exclusive_unlock_harmless)
{
	each_bad_range(&f, bad_unlock);
	dxm_exclusive_unlock(f.ctx, f.r, LEN, NULL);
	check_untouched(&f, "NULL dev");
	/* The exclusive page again (already unlocked), and the CPU's pages
	 * with their true device addresses: neither becomes exclusive. */
	void *one[1] = { f.xdev };
	dxm_exclusive_unlock(f.ctx, f.r + XPG * PS, PS, one);
	check_untouched(&f, "a second unlock");
	void *cpu[NPG];
	for (size_t i = 0; i < NPG; i++)
		cpu[i] = (char *)f.xdev + ((long)i - XPG) * (long)PS;
	dxm_exclusive_unlock(f.ctx, f.r, LEN, cpu);
	check_untouched(&f, "unlock of CPU pages");
	cr_assert(!dxm_check_exclusive(f.ctx, f.r, PS, cpu));
	cr_assert(page_present(f.r));

	/* A locked page and a forged unlock: it stays locked (exclusive,
	 * revoked) until the real unlock. */
	void *ldev[1];
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.r + 3 * PS, PS, owner, ldev),
		     1);
	size_t nrec = rec.nrec;
	void *forged[1] = { f.xdev };
	dxm_exclusive_unlock(f.ctx, f.r + 3 * PS, PS, forged);
	forged[0] = (void *)0x1000;
	dxm_exclusive_unlock(f.ctx, f.r + 3 * PS, PS, forged);
	cr_assert(dxm_check_exclusive(f.ctx, f.r + 3 * PS, PS, ldev));
	cr_assert(!page_present(f.r + 3 * PS));
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.r + 3 * PS, PS, owner, forged),
		     1);
	cr_assert_null(forged[0], "a locked page was converted twice");
	dxm_exclusive_unlock(f.ctx, f.r + 3 * PS, PS, ldev);
	dxm_exclusive_unlock(f.ctx, f.r + 3 * PS, PS, ldev); /* twice */
	cr_assert(dxm_check_exclusive(f.ctx, f.r + 3 * PS, PS, ldev));
	cr_assert_eq(rd(f.r + 3 * PS), ADD + 3 * PS / 8);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f.r + 3 * PS));
	cr_assert_eq(rec.nrec, nrec + 1); /* CLEAR */
	rec.nrec = 1; /* forget them for the final check */
	f.st = stats(f.ctx);
	check_usable_and_teardown(&f);
}

/* ---------------------------------------------------- memory functions */

FIX_TEST(alloc_bad_arguments)
{
	void *p = (void *)0x1234;
	const unsigned fl = TEST_ALLOC_FLAGS;
	cr_assert_eq(dxm_alloc(f.ctx, PS, fl, NULL), -EINVAL);
	cr_assert_eq(dxm_alloc(f.ctx, 0, fl, &p), -EINVAL);
	cr_assert_eq(dxm_alloc(f.ctx, PS, 1u << 9, &p), -EINVAL);
	cr_assert_eq(dxm_alloc(f.ctx, PS, ~0u, &p), -EINVAL);
	cr_assert_eq(dxm_alloc(f.ctx, PS, DXM_ALLOC_INHERIT, &p), -EOPNOTSUPP);
	cr_assert_eq(dxm_alloc(f.ctx, SIZE_MAX, fl, &p), -ENOMEM);
	cr_assert_eq(dxm_alloc(f.ctx, SIZE_MAX / 2 + 1, fl, &p), -ENOMEM);
	cr_assert_eq(dxm_alloc(f.ctx, SIZE_MAX - PS + 2, fl, &p), -ENOMEM);
	/* Past the memory and swap there is: refused before anything is
	 * allocated (the memory file's fallocate would fill the memory and
	 * end in the OOM killer; a 2^55 table would be 8 TiB). */
	struct sysinfo si;
	cr_assert_eq(sysinfo(&si), 0);
	size_t total = ((size_t)si.totalram + si.totalswap) * si.mem_unit;
	cr_assert_eq(dxm_alloc(f.ctx, total + PS, 0, &p), -ENOMEM);
	cr_assert_eq(dxm_alloc(f.ctx, total + PS, DXM_ALLOC_HUGE, &p), -ENOMEM);
	cr_assert_eq(dxm_alloc(f.ctx, (size_t)1 << 55, 0, &p), -ENOMEM);
	cr_assert_eq(dxm_alloc(f.ctx, (size_t)1 << 55, DXM_ALLOC_HUGE, &p),
		     -ENOMEM);
	cr_assert_eq(p, (void *)0x1234, "a failed dxm_alloc wrote *addrp");
	check_untouched(&f, "dxm_alloc");
	/* An unaligned length is rounded up, not refused. */
	cr_assert_eq(dxm_alloc(f.ctx, PS + 1, fl, &p), 0);
	cr_assert_eq(stats(f.ctx).managed_pages, f.st.managed_pages + 2);
	wr((char *)p + PS, 5);
	cr_assert_eq(dxm_free(f.ctx, p), 0);
	check_usable_and_teardown(&f);
}

FIX_TEST(alias_bad_arguments)
{
	void *a = (void *)0x1234;
	cr_assert_eq(dxm_alias(f.ctx, NULL, &a), -EINVAL);
	cr_assert_eq(dxm_alias(f.ctx, f.r, NULL), -EINVAL);
	cr_assert_eq(dxm_alias(f.ctx, f.anon, &a), -ENOENT);
	cr_assert_eq(dxm_alias(f.ctx, f.heap, &a), -ENOENT);
	cr_assert_eq(dxm_alias(f.ctx, f.freed, &a), -ENOENT);
	cr_assert_eq(dxm_alias(f.ctx, f.r + PS, &a), -EINVAL);
	cr_assert_eq(dxm_alias(f.ctx, f.r + 1, &a), -EINVAL);
	cr_assert_eq(dxm_alias(f.ctx, f.r + LEN, &a), -ENOENT);
	cr_assert_eq(a, (void *)0x1234, "a failed dxm_alias wrote *aliasp");
	check_untouched(&f, "dxm_alias");
	check_usable_and_teardown(&f);
}

FIX_TEST(free_bad_arguments_and_double_free)
{
	cr_assert_eq(dxm_free(f.ctx, NULL), -EINVAL);
	cr_assert_eq(dxm_free(f.ctx, f.anon), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, f.heap), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, f.freed), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, f.freed + PS), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, f.r + PS), -EINVAL);
	cr_assert_eq(dxm_free(f.ctx, f.r + XPG * PS), -EINVAL);
	cr_assert_eq(dxm_free(f.ctx, f.r + 1), -EINVAL);
	check_untouched(&f, "dxm_free");

	/* Double free of a region with an alias, and of an alias. */
	char *q = test_alloc(f.ctx, 2 * PS), *a, *b;
	cr_assert_eq(dxm_alias(f.ctx, q, (void **)&a), 0);
	cr_assert_eq(dxm_alias(f.ctx, q, (void **)&b), 0);
	cr_assert_eq(dxm_free(f.ctx, a), 0);
	cr_assert_eq(dxm_free(f.ctx, a), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, q), 0);
	cr_assert_eq(dxm_free(f.ctx, q), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, b), -ENOENT);
	cr_assert_eq(dxm_free(f.ctx, a), -ENOENT);
	check_untouched(&f, "double free");
	check_usable_and_teardown(&f);
}

/*
 * dxm_free from a notifier callback on a fault-handler thread (a CPU fault
 * on an exclusive page is resolved there: DXM_EVENT_CLEAR).  Freeing a
 * region would wait for the very resolution that runs the callback: it is
 * refused with -EDEADLK, and nothing changes.  An alias has nothing to
 * wait for: it is freed.  Afterwards the test thread frees the region.
 */
static struct {
	struct dxm_ctx *ctx;
	char *region, *alias;
	pthread_t test_thread;
	atomic_int calls, on_test_thread, ret_region, ret_alias;
} fh;

static bool free_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			    unsigned long seq)
{
	dxm_notifier_set_seq(n, seq);
	if (r->event == DXM_EVENT_CLEAR && atomic_fetch_add(&fh.calls, 1) == 0) {
		atomic_store(&fh.on_test_thread,
			     pthread_equal(pthread_self(), fh.test_thread));
		atomic_store(&fh.ret_region, dxm_free(fh.ctx, fh.region));
		atomic_store(&fh.ret_alias, dxm_free(fh.ctx, fh.alias));
	}
	return true;
}

FIX_TEST(free_from_handler_callback_edeadlk)
{
	static const struct dxm_notifier_ops ops = { free_invalidate };
	char *a;
	cr_assert_eq(dxm_alias(f.ctx, f.r, (void **)&a), 0);
	fh.ctx = f.ctx;
	fh.region = f.r;
	fh.alias = a;
	fh.test_thread = pthread_self();
	atomic_store(&fh.ret_region, 1);
	atomic_store(&fh.ret_alias, 1);
	struct dxm_notifier *n;
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.r, LEN, &ops, NULL, &n), 0);
	f.st = stats(f.ctx);

	/* The CPU fault: the handler thread runs the callbacks. */
	cr_assert_eq(rd(f.r + XPG * PS), DEVWORD);
	cr_assert_eq(atomic_load(&fh.calls), 1);
	cr_assert(!atomic_load(&fh.on_test_thread),
		  "the fault was not resolved on a handler thread");
	cr_assert_eq(atomic_load(&fh.ret_region), -EDEADLK,
		     "dxm_free of the region from the handler: %d",
		     atomic_load(&fh.ret_region));
	cr_assert_eq(atomic_load(&fh.ret_alias), 0,
		     "dxm_free of an alias from the handler: %d",
		     atomic_load(&fh.ret_alias));
	dxm_notifier_remove(n);

	/* The region is intact and still managed; the alias is gone. */
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f.r + XPG * PS));
	cr_assert(!recorder_saw(&rec, DXM_EVENT_UNMAP, f.r));
	cr_assert_eq(stats(f.ctx).regions, f.st.regions);
	cr_assert_eq(stats(f.ctx).managed_pages, f.st.managed_pages);
	for (size_t i = 0; i < NPG; i++)
		if (i != XPG)
			cr_assert(check_index(f.r + i * PS, PS,
					      ADD + i * PS / 8),
				  "page %zu changed", i);
	cr_assert_eq(dxm_free(f.ctx, a), -ENOENT);
	/* Not mincore(): once unmapped, the address may hold anyone's
	 * mapping (ASan's allocator took it once in CI). */
	cr_assert(!memfd_view_mapped(a), "the alias is still mapped");
	/* Page XPG exclusive again, for the common end (which frees the
	 * region from the test thread: 0). */
	retake_xpg(&f);
	check_usable_and_teardown(&f);
}

static bool rec_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long seq)
{
	(void)n;
	(void)r;
	(void)seq;
	return true;
}

FIX_TEST(notifier_insert_bad_arguments)
{
	static const struct dxm_notifier_ops ok_ops = { rec_invalidate };
	static const struct dxm_notifier_ops null_ops = { NULL };
	struct dxm_notifier *n = (void *)0x1234;
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.r, LEN, &ok_ops, NULL, NULL),
		     -EINVAL);
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.r, LEN, NULL, NULL, &n),
		     -EINVAL);
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.r, LEN, &null_ops, NULL, &n),
		     -EINVAL);
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.r, 0, &ok_ops, NULL, &n),
		     -EINVAL);
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.r, SIZE_MAX, &ok_ops, NULL,
					 &n),
		     -EINVAL);
	cr_assert_eq(dxm_notifier_insert(NULL, f.r, LEN, &ok_ops, NULL, &n),
		     -EINVAL);
	cr_assert_eq(n, (void *)0x1234, "a failed insert wrote *np");
	check_untouched(&f, "dxm_notifier_insert");
	/* None of them was inserted: a CPU fault notifies only rec. */
	struct dxm_stats st0 = stats(f.ctx);
	cr_assert_eq(rd(f.r + XPG * PS), DEVWORD);
	cr_assert_eq(stats(f.ctx).notifier_calls, st0.notifier_calls + 1);
	cr_assert_eq(rec.nrec, 2);
	/* Put the page back for the common end. */
	retake_xpg(&f);
	check_usable_and_teardown(&f);
}

FIX_TEST(stats_bad_arguments)
{
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(f.ctx, NULL, sizeof(st)), -EINVAL);
	cr_assert_eq(dxm_stats(f.ctx, &st, 0), -EINVAL);
	cr_assert_eq(dxm_stats(f.ctx, &st, 4), -EINVAL);
	cr_assert_eq(dxm_stats(NULL, &st, sizeof(st)), -EINVAL);
	/* An older, smaller struct: only its part is written. */
	unsigned char buf[sizeof(st) + 64];
	memset(buf, 0xee, sizeof(buf));
	cr_assert_eq(dxm_stats(f.ctx, (struct dxm_stats *)buf, 8), 0);
	for (size_t i = 8; i < sizeof(buf); i++)
		cr_assert_eq(buf[i], 0xee, "byte %zu written", i);
	/* A newer, bigger one: the unknown tail is zeroed. */
	cr_assert_eq(dxm_stats(f.ctx, (struct dxm_stats *)buf, sizeof(buf)),
		     0);
	for (size_t i = sizeof(st); i < sizeof(buf); i++)
		cr_assert_eq(buf[i], 0, "byte %zu not zeroed", i);
	cr_assert_eq(((struct dxm_stats *)buf)->regions, f.st.regions);
	check_untouched(&f, "dxm_stats");
	check_usable_and_teardown(&f);
}

/* ----------------------------------------------------------- contexts */

/* No memory: nothing for huge pages to change. */
Test(b11_badinput, ctx_create_bad_opts, .timeout = 30)
{
	struct dxm_ctx *ctx = (void *)0x1234;
	struct dxm_ctx_opts o = { .sz = sizeof(o) };
	cr_assert_eq(dxm_ctx_create(NULL, NULL), -EINVAL);
	cr_assert_eq(dxm_ctx_create(NULL, &o), -EINVAL);

	o.sz = 0;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "sz 0");
	o.sz = sizeof(size_t);
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "sz without flags");
	o.sz = offsetof(struct dxm_ctx_opts, flags) + 1;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "sz mid-flags");
	o.sz = 1u << 20;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "sz 1 MiB");

	o = (struct dxm_ctx_opts){ .sz = sizeof(o), .flags = 1u << 30 };
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "unknown flag");
	o.flags = ~0u;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "all flags");
	o = (struct dxm_ctx_opts){ .sz = sizeof(o), .handler_threads = 65 };
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "65 threads");
	o.handler_threads = ~0u;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL, "UINT_MAX threads");

	/* A newer caller's bigger struct: unknown fields must be zero. */
	struct {
		struct dxm_ctx_opts o;
		uint64_t more[4];
	} big;
	memset(&big, 0, sizeof(big));
	big.o.sz = sizeof(big);
	big.more[3] = 1;
	cr_assert_eq(dxm_ctx_create(&ctx, &big.o), -E2BIG, "trailing byte");
	big.more[3] = 0;
	big.more[0] = 1ull << 63;
	cr_assert_eq(dxm_ctx_create(&ctx, &big.o), -E2BIG, "trailing byte");
	cr_assert_eq(ctx, (void *)0x1234, "a failed create wrote *ctxp");

	/* The same struct with the tail zeroed, and an older, smaller one
	 * without handler_threads, are accepted. */
	big.more[0] = 0;
	big.o.handler_threads = 2;
	struct dxm_ctx *c = ctx_or_skip(&big.o);
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(c, &st, sizeof(st)), 0);
	cr_assert_eq(st.handler_threads, 2);
	dxm_ctx_destroy(c);
	o = (struct dxm_ctx_opts){ .sz = offsetof(struct dxm_ctx_opts, flags) +
					 sizeof(o.flags),
				   .handler_threads = 65 };
	c = ctx_or_skip(&o);
	cr_assert_eq(dxm_stats(c, &st, sizeof(st)), 0);
	cr_assert_neq(st.handler_threads, 65, "read past sz");
	dxm_ctx_destroy(c);
}

/* NULL, foreign and destroyed contexts. */
static void all_calls_fail(struct dxm_ctx *ctx, char *r, int err)
{
	static const struct dxm_notifier_ops ops = { rec_invalidate };
	void *p = NULL, *dev[NPG];
	struct dxm_notifier *n = NULL;
	struct dxm_stats st;
	for (size_t i = 0; i < NPG; i++)
		dev[i] = r;
	cr_assert_eq(dxm_alloc(ctx, PS, 0, &p), err);
	cr_assert_eq(dxm_alias(ctx, r, &p), err);
	cr_assert_eq(dxm_adopt(ctx, r, PS, 0), err);
	cr_assert_eq(dxm_free(ctx, r), err);
	cr_assert_eq(dxm_mprotect(ctx, r, PS, PROT_READ), err);
	cr_assert_eq(dxm_make_exclusive(ctx, r, PS, owner, dev), err);
	long got = dxm_range_fault(ctx, r, PS, 0, dev);
	cr_assert_eq(got, err, "dxm_range_fault(ctx %p): %ld, expected %d",
		     (void *)ctx, got, err);
	cr_assert_eq(dxm_notifier_insert(ctx, r, PS, &ops, NULL, &n), err);
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), err);
	cr_assert(!dxm_check_exclusive(ctx, r, PS, dev));
	dxm_exclusive_unlock(ctx, r, PS, dev);
	dxm_ctx_destroy(ctx);
	cr_assert_null(n);
}

FIX_TEST(null_and_foreign_ctx)
{
	all_calls_fail(NULL, f.r, -EINVAL);
	check_untouched(&f, "a NULL context");
	/* A pointer that is no context (never dereferenced). */
	uint64_t junk[64];
	memset(junk, 0xa5, sizeof(junk));
	all_calls_fail((struct dxm_ctx *)junk, f.r, -EBADF);
	check_untouched(&f, "a foreign context");
	check_usable_and_teardown(&f);
}

FIX_TEST(use_after_ctx_destroy_ebadf)
{
	char *r = f.r;
	recorder_remove(&rec);
	dxm_ctx_destroy(f.ctx);
	/* The regions went with it (their views, whatever maps there
	 * now). */
	cr_assert(!memfd_view_mapped(r), "the region is still mapped");
	all_calls_fail(f.ctx, r, -EBADF);
	dxm_ctx_destroy(f.ctx); /* twice */
	/* The process is fine: a new context works. */
	struct dxm_ctx *c = ctx_or_skip(NULL);
	char *q = test_alloc(c, PS);
	void *dev[1];
	fill_index(q, PS, 1);
	cr_assert_eq(dxm_make_exclusive(c, q, PS, owner, dev), 1);
	cr_assert(!page_present(q));
	dxm_exclusive_unlock(c, q, PS, dev);
	cr_assert(check_index(q, PS, 1));
	cr_assert_eq(dxm_free(c, q), 0);
	dxm_ctx_destroy(c);
	munmap(f.anon, 2 * PS);
	free(f.heap);
}

/* --------------------------------------------------------------- fork */

/* In a fork()ed child every call on the parent's context is refused with
 * -ECHILD, and destroying it does nothing to the parent. */
static int child_calls(struct fix *f)
{
	static const struct dxm_notifier_ops ops = { rec_invalidate };
	void *p, *dev[NPG];
	struct dxm_notifier *n;
	struct dxm_stats st;
	int k = 0;
	CHILD_CHECK(dxm_alloc(f->ctx, PS, 0, &p) == -ECHILD);
	CHILD_CHECK(dxm_alias(f->ctx, f->r, &p) == -ECHILD);
	CHILD_CHECK(dxm_free(f->ctx, f->r) == -ECHILD);
	CHILD_CHECK(dxm_mprotect(f->ctx, f->r, PS, PROT_READ) == -ECHILD);
	CHILD_CHECK(dxm_make_exclusive(f->ctx, f->r, PS, owner, dev) ==
		    -ECHILD);
	CHILD_CHECK(dxm_range_fault(f->ctx, f->r, LEN, 0, dev) == -ECHILD);
	CHILD_CHECK(dxm_notifier_insert(f->ctx, f->r, PS, &ops, NULL, &n) ==
		    -ECHILD);
	CHILD_CHECK(dxm_stats(f->ctx, &st, sizeof(st)) == -ECHILD);
	CHILD_CHECK(dxm_adopt(f->ctx, f->anon, PS, 0) == -ECHILD);
	dev[0] = f->xdev;
	CHILD_CHECK(!dxm_check_exclusive(f->ctx, f->r + XPG * PS, PS, dev));
	dxm_exclusive_unlock(f->ctx, f->r + XPG * PS, PS, dev);
	dxm_ctx_destroy(f->ctx);
	/* Private memory is the child's own copy. */
	CHILD_CHECK(f->anon[0] == 0x3c);
	f->anon[0] = 0;
	return 0;
}

FIX_TEST(fork_child_calls_echild)
{
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0)
		_exit(child_calls(&f));
	child_checks_passed(pid);
	/* The parent's context survived the child's calls. */
	cr_assert_eq(stats(f.ctx).regions, f.st.regions);
	check_usable_and_teardown(&f);
}

/* A dxm region is not inherited (MADV_DONTFORK): a child touching it, its
 * alias, or its exclusive page gets SIGSEGV.  The parent is unaffected. */
FIX_TEST(fork_child_touch_segfaults)
{
	char *a;
	cr_assert_eq(dxm_alias(f.ctx, f.r, (void **)&a), 0);
	char *targets[] = { f.r, f.r + XPG * PS, a, a + XPG * PS, f.r + PS };
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
		child_touch_segfaults(i, targets[i], i == 4 /* a write */, NULL,
				      NULL);
	/* Still the parent's, exclusive page included. */
	cr_assert(check_index(a, PS, ADD));
	cr_assert_eq(dxm_free(f.ctx, a), 0);
	check_usable_and_teardown(&f);
}
