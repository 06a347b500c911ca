// SPDX-License-Identifier: MIT
/*
 * B6 mprotect (memfd memory): the kernel's hmm-tests "exclusive_mprotect"
 * scenario with the software mirror.  The mirror takes a range exclusive
 * and writes it with its atomic engine; dxm_mprotect(PROT_READ) tells the
 * notifiers (DXM_EVENT_PROTECTION) before the protection changes; then a
 * device write is refused (-EPERM), a device read still works, a CPU read
 * faults the page back and sees the device's data, and a CPU write raises
 * SIGSEGV.  dxm_mprotect back to read-write gives writes back to both.
 *
 * Then every error that dxm_mprotect(3) and dxm_range_fault(3) list, and
 * what a plain mprotect(2) behind dxm's back does, over memfd views,
 * aliases and adopted memory.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

#define NPG 4
#define LEN (NPG * PS)

static struct recorder rec;

/* What /proc/self/maps said about the range when the PROTECTION callback
 * ran: the change must not have happened yet. */
static char perms_at_callback[8];

/* The permissions ("rw-s") of the mapping holding addr, or "" if none. */
static void maps_perms(const void *addr, char out[8])
{
	FILE *f = fopen("/proc/self/maps", "re");
	cr_assert_not_null(f);
	char line[512];
	out[0] = 0;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char p[8];
		if (sscanf(line, "%lx-%lx %7s", &s, &e, p) == 3 && s <= a &&
		    a < e) {
			strcpy(out, p);
			break;
		}
	}
	fclose(f);
}

static int perms_hook(struct recorder *r, const struct dxm_range *range)
{
	(void)r;
	if (range->event == DXM_EVENT_PROTECTION && !perms_at_callback[0])
		maps_perms(range->start, perms_at_callback);
	return 0;
}

struct fix {
	struct dxm_ctx *ctx;
	struct mem m;
	struct dxm_mirror *mir; /* setup only */
	char *p; /* the view under test */
};

/* A context and LEN bytes of kind memory filled with fill_index(0), rec
 * over them. */
static void esetup(enum mem_kind kind, struct fix *f)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_mem(kind, LEN, &f->m);
	f->p = f->m.base;
	fill_index(f->p, LEN, 0);
	recorder_insert(f->ctx, &rec, f->p, LEN);
}

static void eteardown(struct fix *f)
{
	recorder_remove(&rec);
	mem_done(&f->m);
}

/* The same with a mirror, and rec noting the permissions its PROTECTION
 * callback saw. */
static void setup(enum mem_kind kind, struct fix *f)
{
	esetup(kind, f);
	f->mir = mirror_create(f->ctx);
	rec.hook = perms_hook;
}

static void teardown(struct fix *f)
{
	struct dxm_mirror_stats st;
	dxm_mirror_get_stats(f->mir, &st);
	cr_assert_eq(st.stale_accesses, 0, "the device used a revoked page");
	dxm_mirror_destroy(f->mir);
	eteardown(f);
}

/* The mirror takes [p, p+LEN) exclusive and adds 100 to word 0 of each
 * page; then p is made read-only. */
static void exclusive_then_readonly(struct fix *f)
{
	cr_assert_eq(dxm_mirror_exclusive(f->mir, f->p, LEN), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(f->mir, f->p, LEN), NPG);
	cr_assert_eq(pages_present(f->p, LEN), 0);
	for (size_t i = 0; i < NPG; i++)
		cr_assert_eq(dxm_mirror_atomic_add(f->mir,
						   (uint64_t *)(f->p + i * PS),
						   100, NULL),
			     0);
	cr_assert_eq(pages_present(f->p, LEN), 0,
		     "the device's atomics let the CPU in");

	cr_assert_eq(dxm_mprotect(f->ctx, f->p, LEN, PROT_READ), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 1);
	for (size_t i = 0; i < NPG; i++)
		cr_assert(recorder_saw(&rec, DXM_EVENT_PROTECTION,
				       f->p + i * PS));
	cr_assert(perms_at_callback[0], "no PROTECTION callback");
	cr_assert_eq(perms_at_callback[1], 'w',
		     "the protection changed before the notifiers were told "
		     "(%s)",
		     perms_at_callback);
	char now[8];
	maps_perms(f->p, now);
	cr_assert_eq(now[1], '-', "the view is still writable (%s)", now);
	/* The mirror dropped its mappings when it was told. */
	cr_assert_eq(dxm_mirror_check_exclusive(f->mir, f->p, LEN), 0);
	/* dxm does not give the pages back by itself. */
	cr_assert_eq(pages_present(f->p, LEN), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
}

static uint64_t expect_word(size_t off)
{
	return off / 8 + (off % PS == 0 ? 100 : 0);
}

/* A test on a fresh struct fix (setup), which it tears down (common.h);
 * also on huge pages (name_huge). */
#define FIX_TEST(name, ...)                                                    \
	KIND_FIX_TEST_HUGE_OF(b6_mprotect, MEM_KINDS_PARAMS, name, struct fix, \
			      f, setup(*kind, &f), .timeout = 30,              \
			      ##__VA_ARGS__)

FIX_TEST(readonly_refuses_device_writes)
{
	exclusive_then_readonly(&f);
	char *buf = malloc(LEN), *got = malloc(LEN);
	cr_assert(buf && got);
	memset(buf, 0x5a, LEN);

	size_t nexcl = recorder_count_event(&rec, DXM_EVENT_EXCLUSIVE);
	/* Device writes are refused, whole range or one page. */
	cr_assert_eq(dxm_mirror_write(f.mir, f.p, buf, LEN), -EPERM);
	cr_assert_eq(dxm_mirror_write(f.mir, f.p + PS, buf, PS), -EPERM);
	/* So are exclusive access and atomics. */
	cr_assert_eq(dxm_mirror_exclusive(f.mir, f.p, LEN), -EPERM);
	cr_assert_eq(dxm_mirror_atomic_add(f.mir, (uint64_t *)f.p, 1, NULL),
		     -EPERM);
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.p, LEN, &rec, dev), -EPERM);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, dev),
		     -EPERM);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_EXCLUSIVE), nexcl,
		     "a refused conversion notified");

	/* A CPU read faults page 0 back (CLEAR first) and sees the device's
	 * data; the pages not read stay revoked. */
	cr_assert_eq(rd(f.p), 100);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f.p));
	cr_assert(page_present(f.p));
	cr_assert_eq(pages_present(f.p + PS, LEN - PS), 0);

	/* A device read works and sees everything (refused writes changed
	 * nothing). */
	memset(got, 0, LEN);
	cr_assert_eq(dxm_mirror_read(f.mir, f.p, got, LEN), 0);
	for (size_t off = 0; off < LEN; off += 8)
		cr_assert_eq(*(uint64_t *)(got + off), expect_word(off),
			     "device read at %#zx", off);
	for (size_t off = 0; off < LEN; off += 8)
		cr_assert_eq(rd(f.p + off), expect_word(off),
			     "CPU read at %#zx", off);

	/* Read-write again: device and CPU writes work. */
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 2);
	cr_assert_eq(dxm_mirror_write(f.mir, f.p, buf, LEN), 0);
	for (size_t off = 0; off < LEN; off += 8)
		cr_assert_eq(rd(f.p + off), 0x5a5a5a5a5a5a5a5aull);
	wr(f.p + 8, 7);
	wr(f.p + 3 * PS, 9);
	cr_assert_eq(dxm_mirror_read(f.mir, f.p, got, LEN), 0);
	cr_assert_eq(*(uint64_t *)(got + 8), 7);
	cr_assert_eq(*(uint64_t *)(got + 3 * PS), 9);
	cr_assert_eq(dxm_mirror_exclusive(f.mir, f.p, LEN), 0);
	cr_assert_eq(pages_present(f.p, LEN), 0);
	cr_assert_eq(dxm_mirror_atomic_add(f.mir, (uint64_t *)f.p, 1, NULL), 0);
	cr_assert_eq(rd(f.p), 0x5a5a5a5a5a5a5a5bull);
	free(buf);
	free(got);
	teardown(&f);
}

/* A CPU read first restores the page (read-only), then the CPU write
 * raises SIGSEGV. */
FIX_TEST(cpu_write_after_readonly_segfaults)
{
	exclusive_then_readonly(&f);
	cr_assert_eq(rd(f.p + PS), PS / 8 + 100);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f.p + PS));
	cr_assert(page_present(f.p + PS));
	cr_assert(store_segfaults(f.p + PS, 1),
		  "a CPU write to a read-only page succeeded");
	cr_assert_eq(rd(f.p + PS), PS / 8 + 100);
	teardown(&f);
}

/* A CPU write straight to a page still exclusive: SIGSEGV, not a hang
 * and not a writable restore. */
FIX_TEST(cpu_write_to_exclusive_readonly_page_segfaults)
{
	exclusive_then_readonly(&f);
	cr_assert(store_segfaults(f.p + 2 * PS, 1),
		  "a CPU write to a read-only page succeeded");
	cr_assert_eq(rd(f.p + 2 * PS), expect_word(2 * PS));
	teardown(&f);
}

/* Only the middle page made read-only: device writes are refused there
 * and only there; a device write to the writable view of the same pages
 * (MEM_ALIAS: the region's own view) still works. */
FIX_TEST(partial_readonly_refuses_only_that_page)
{
	cr_assert_eq(dxm_mirror_exclusive(f.mir, f.p, LEN), 0);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + PS, PS, PROT_READ), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 1);
	cr_assert(recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p + PS));
	cr_assert(!recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p));
	cr_assert(!recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p + 2 * PS));
	/* Only the read-only page was taken from the device. */
	cr_assert_eq(dxm_mirror_check_exclusive(f.mir, f.p, LEN), NPG - 1);

	uint64_t *buf = malloc(PS);
	cr_assert_not_null(buf);
	memset(buf, 0x11, PS);
	cr_assert_eq(dxm_mirror_write(f.mir, f.p + PS, buf, PS), -EPERM);
	cr_assert_eq(dxm_mirror_write(f.mir, f.p, buf, PS), 0);
	cr_assert_eq(dxm_mirror_write(f.mir, f.p + 2 * PS, buf, PS), 0);
	cr_assert_eq(rd(f.p), 0x1111111111111111ull);
	cr_assert_eq(rd(f.p + 2 * PS), 0x1111111111111111ull);
	cr_assert_eq(rd(f.p + PS), PS / 8, "a refused write changed data");
	cr_assert(check_index(f.p + PS, PS, PS / 8));
	cr_assert(check_index(f.p + 3 * PS, PS, 3 * PS / 8));
	wr(f.p + 3 * PS, 5);
	cr_assert_eq(rd(f.p + 3 * PS), 5);
	if (*kind == MEM_ALIAS) {
		/* The region's own view is still writable. */
		cr_assert_eq(dxm_mirror_write(f.mir, (char *)f.m.region + PS,
					      buf, PS),
			     0);
		cr_assert_eq(rd(f.p + PS), 0x1111111111111111ull);
	}
	free(buf);
	teardown(&f);
}

/* PROT_NONE: device reads are refused as well. */
FIX_TEST(prot_none_refuses_device_reads)
{
	cr_assert_eq(dxm_mirror_exclusive(f.mir, f.p, LEN), 0);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_NONE), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(f.mir, f.p, LEN), 0);
	uint64_t *buf = malloc(PS);
	cr_assert_not_null(buf);
	cr_assert_eq(dxm_mirror_read(f.mir, f.p, buf, PS), -EPERM);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 0, NULL), -EPERM);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ), 0);
	cr_assert_eq(dxm_mirror_read(f.mir, f.p, buf, PS), 0);
	cr_assert(check_index(buf, PS, 0));
	cr_assert(check_index(f.p, LEN, 0));
	free(buf);
	teardown(&f);
}

/* Adopted memory made read-only: dxm_range_fault for reading works (the
 * pages are read-populated), for writing and dxm_make_exclusive refuse
 * with -EPERM; after a raw mprotect behind dxm's back as well. */
Test(b6_mprotect, adopted_readonly_read_fault_ok_write_eperm, .timeout = 30)
{
	struct mem m;
	struct dxm_ctx *ctx = ctx_mem(MEM_ANON, 4 * PS, &m);
	memset(m.base, 3, 2 * PS); /* pages 2, 3 never touched */
	void *dev[4];
	cr_assert_eq(dxm_mprotect(ctx, m.base, 4 * PS, PROT_READ), 0);
	cr_assert_eq(dxm_range_fault(ctx, m.base, 4 * PS, 0, dev), 4);
	cr_assert_eq(((char *)dev[0])[0], 3);
	cr_assert_eq(((char *)dev[3])[0], 0);
	cr_assert_eq(dxm_range_fault(ctx, m.base, 4 * PS, DXM_FAULT_WRITE, dev),
		     -EPERM);
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, 4 * PS, NULL, dev),
		     -EPERM);
	cr_assert_eq(dxm_mprotect(ctx, m.base, 4 * PS, PROT_READ | PROT_WRITE),
		     0);
	/* The program's own mprotect, which dxm does not see. */
	cr_assert_eq(mprotect((char *)m.base + 2 * PS, 2 * PS, PROT_READ), 0);
	long r = dxm_make_exclusive(ctx, (char *)m.base + 2 * PS, 2 * PS, NULL,
				    dev);
	cr_assert_eq(r, -EPERM, "make_exclusive after a raw mprotect: %ld", r);
	mprotect((char *)m.base + 2 * PS, 2 * PS, PROT_READ | PROT_WRITE);
	mem_done(&m);
}

/* ------------------------------------------------------------------------
 * The documented errors of dxm_mprotect(3) and dxm_range_fault(3), one by
 * one, over every kind of memory: a region's own view (dxm_alloc), an
 * alias, and adopted memory (dxm_adopt).  After each refusal nothing
 * changed: no PROTECTION notification, the view still read-write, the
 * data as it was.
 */

#define KIND_ALL_TEST(name)                                                    \
	KIND_TEST_HUGE_OF(b6_mprotect, MEM_KINDS_ALL_PARAMS, name,             \
			  .timeout = 30)
/* A test on a fresh struct fix (esetup: no mirror), on every kind of
 * memory (huge pages too). */
#define EFIX_TEST(name)                                                        \
	KIND_FIX_TEST_HUGE_OF(b6_mprotect, MEM_KINDS_ALL_PARAMS, name,         \
			      struct fix, f, esetup(*kind, &f), .timeout = 30)

/* Nothing happened: nprot PROTECTION notifications so far, the view
 * read-write in /proc/self/maps, the data intact. */
static void check_intact(struct fix *f, size_t nprot, const char *after)
{
	char now[8];
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), nprot,
		     "after %s: the notifiers were called", after);
	maps_perms(f->p, now);
	cr_assert(now[0] == 'r' && now[1] == 'w', "after %s: the view is %s",
		  after, now);
	cr_assert(check_index(f->p, LEN, 0), "after %s: the data changed",
		  after);
}

/* The ranges every function refuses with -EINVAL, whatever the memory. */
struct ebad {
	const char *what;
	void *start;
	size_t len;
};

static size_t einval_ranges(struct fix *f, struct ebad *b)
{
	size_t n = 0;
	char *top = (char *)(UINTPTR_MAX & ~(uintptr_t)(PS - 1));
	b[n++] = (struct ebad){"NULL address", NULL, PS};
	b[n++] = (struct ebad){"unaligned address", f->p + 8, PS};
	b[n++] = (struct ebad){"unaligned length", f->p, PS + 1};
	b[n++] = (struct ebad){"zero length", f->p, 0};
	b[n++] = (struct ebad){"address + length overflows", f->p,
			       SIZE_MAX & ~(PS - 1)};
	b[n++] = (struct ebad){"address + length wraps to 0", top, PS};
	return n;
}

EFIX_TEST(mprotect_einval)
{
	struct ebad b[8];
	cr_assert_eq(dxm_mprotect(NULL, f.p, LEN, PROT_READ), -EINVAL,
		     "NULL ctx");
	check_intact(&f, 0, "NULL ctx");
	size_t n = einval_ranges(&f, b);
	for (size_t i = 0; i < n; i++) {
		int got = dxm_mprotect(f.ctx, b[i].start, b[i].len, PROT_READ);
		cr_assert_eq(got, -EINVAL, "%s: %d", b[i].what, got);
		check_intact(&f, 0, b[i].what);
	}
	static const int bad_prot[] = {
		0x8, 0x10, PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ | 0x100, -1};
	for (size_t i = 0; i < sizeof(bad_prot) / sizeof(bad_prot[0]); i++) {
		int got = dxm_mprotect(f.ctx, f.p, LEN, bad_prot[i]);
		cr_assert_eq(got, -EINVAL, "prot %#x: %d", bad_prot[i], got);
		check_intact(&f, 0, "a bad prot");
	}
	eteardown(&f);
}

EFIX_TEST(range_fault_einval)
{
	struct ebad b[8];
	void *dev[NPG];
	cr_assert_eq(dxm_range_fault(NULL, f.p, LEN, 0, dev), -EINVAL);
	size_t n = einval_ranges(&f, b);
	for (size_t i = 0; i < n; i++) {
		long got = dxm_range_fault(f.ctx, b[i].start, b[i].len, 0, dev);
		cr_assert_eq(got, -EINVAL, "%s: %ld", b[i].what, got);
		got = dxm_range_fault(f.ctx, b[i].start, b[i].len,
				      DXM_FAULT_WRITE, NULL);
		cr_assert_eq(got, -EINVAL, "%s (write): %ld", b[i].what, got);
	}
	/* Unknown flags, on a range that is fine. */
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 1u << 1, dev), -EINVAL);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE | 1u << 7,
				     dev),
		     -EINVAL);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, ~0u, dev), -EINVAL);
	check_intact(&f, 0, "dxm_range_fault");
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
	eteardown(&f);
}

/* dxm_mprotect and dxm_range_fault, for reading and for writing, refuse
 * each of b[0..n) with -EFAULT, and nothing happens. */
static void efault_ranges(struct fix *f, const struct ebad *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int got = dxm_mprotect(f->ctx, b[i].start, b[i].len, PROT_READ);
		cr_assert_eq(got, -EFAULT, "dxm_mprotect, %s: %d", b[i].what,
			     got);
		long r = dxm_range_fault(f->ctx, b[i].start, b[i].len, 0, NULL);
		cr_assert_eq(r, -EFAULT, "dxm_range_fault, %s: %ld", b[i].what,
			     r);
		r = dxm_range_fault(f->ctx, b[i].start, b[i].len,
				    DXM_FAULT_WRITE, NULL);
		cr_assert_eq(r, -EFAULT, "dxm_range_fault (write), %s: %ld",
			     b[i].what, r);
		check_intact(f, 0, b[i].what);
	}
}

/*
 * -EFAULT: not entirely inside one CPU view managed by the context.
 * Unmanaged memory, a range running past the view's end or starting
 * before it, and a range over a hole (a page the program unmapped).
 */
EFIX_TEST(mprotect_and_range_fault_efault)
{
	char *un = mmap(NULL, 2 * PS, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(un, MAP_FAILED);

	struct ebad b[8];
	size_t n = 0;
	b[n++] = (struct ebad){"unmanaged memory", un, PS};
	b[n++] = (struct ebad){"past the view's end", f.p + (NPG - 1) * PS,
			       2 * PS};
	b[n++] = (struct ebad){"before the view", f.p - PS, 2 * PS};
	efault_ranges(&f, b, n);
	cr_assert_eq(rd(un), 0, "unmanaged memory changed");
	un[0] = 1; /* still writable */
	munmap(un, 2 * PS);

	/* A hole: the program unmaps page 1.  dxm_free of it waits until
	 * dxm has detached it (dxm_free(3): what is guaranteed once munmap
	 * has returned; see BUGS in dxm_mprotect(3)). */
	cr_assert_eq(munmap(f.p + PS, PS), 0);
	cr_assert_eq(dxm_free(f.ctx, f.p + PS), -ENOENT);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, 3 * PS, PROT_READ), -EFAULT);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, 3 * PS, 0, NULL), -EFAULT);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p + PS, PS, 0, NULL), -EFAULT);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 0);
	/* Around it, the view still works. */
	cr_assert_eq(dxm_range_fault(f.ctx, f.p + 2 * PS, 2 * PS, 0, NULL), 2);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, PS, PROT_READ), 0);
	cr_assert(check_index(f.p, PS, 0));
	cr_assert(check_index(f.p + 2 * PS, 2 * PS, 2 * PS / 8));
	eteardown(&f);
}

/*
 * -EFAULT over two views: the view is moved (mremap: dxm follows it) next
 * to a page of adopted memory, so that a range can run from one into the
 * other.
 */
EFIX_TEST(mprotect_and_range_fault_efault_over_two_views)
{
	char *to = reserve_aligned(LEN + PS);
	cr_assert_eq(mremap(f.p, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, to),
		     (void *)to, "mremap: %s", strerror(errno));
	if (f.m.region == f.m.base)
		f.m.region = to;
	f.m.base = f.p = to;
	char *nb = mmap(to + LEN, PS, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	cr_assert_eq(nb, to + LEN);
	memset(nb, 0x6b, PS);
	/* It takes the gate: dxm knows the view's new address after it. */
	int err = dxm_adopt(f.ctx, nb, PS, 0);
	if (err == -ENOSYS) {
		munmap(nb, PS);
		eteardown(&f);
		cr_skip_test("SKIP: dxm_adopt is not available here: %s",
			     strerror(-err));
	}
	cr_assert_eq(err, 0, "dxm_adopt: %s", strerror(-err));
	recorder_remove(&rec);
	recorder_insert(f.ctx, &rec, to, LEN + PS);

	struct ebad b[] = {
		{"the view's last page and the next view", to + LEN - PS,
		 2 * PS},
		{"both views whole", to, LEN + PS},
	};
	efault_ranges(&f, b, sizeof(b) / sizeof(b[0]));
	/* Each view alone is fine. */
	cr_assert_eq(dxm_range_fault(f.ctx, to, LEN, DXM_FAULT_WRITE, NULL),
		     NPG);
	/* (Adopted memory is in base pages, whatever the view's.) */
	cr_assert_eq(dxm_range_fault(f.ctx, nb, PS, DXM_FAULT_WRITE, NULL),
		     (long)(PS / BASE_PS));
	cr_assert_eq(dxm_mprotect(f.ctx, nb, PS, PROT_READ), 0);
	cr_assert_eq(dxm_mprotect(f.ctx, to + LEN - PS, PS, PROT_READ), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 2);
	cr_assert_eq(
		dxm_mprotect(f.ctx, to + LEN - PS, PS, PROT_READ | PROT_WRITE),
		0);
	cr_assert(check_index(f.p, LEN, 0));
	cr_assert_eq(nb[PS - 1], 0x6b);
	cr_assert_eq(dxm_free(f.ctx, nb), 0);
	munmap(nb, PS);
	eteardown(&f);
}

/*
 * -EFAULT, "the region is being freed": a dxm_free that waits for a
 * conversion still inside the region (its EXCLUSIVE callback is held up)
 * refuses new operations meanwhile.
 */
static const char blocker_owner[] = "blocker";
static atomic_int blk_in, blk_release;

static bool blocker_invalidate(struct dxm_notifier *n,
			       const struct dxm_range *r, unsigned long seq)
{
	dxm_notifier_set_seq(n, seq);
	if (r->event == DXM_EVENT_EXCLUSIVE && r->owner == blocker_owner) {
		atomic_store(&blk_in, 1);
		while (!atomic_load(&blk_release))
			sleep_ms(1);
	}
	return true;
}

struct call {
	struct fix *f;
	long ret;
	atomic_int done;
};

static void *convert_thread(void *arg)
{
	struct call *c = arg;
	void *dev[1];
	c->ret = dxm_make_exclusive(c->f->ctx, c->f->p, PS, blocker_owner, dev);
	if (c->ret == 1 && dev[0])
		dxm_exclusive_unlock(c->f->ctx, c->f->p, PS, dev);
	atomic_store(&c->done, 1);
	return NULL;
}

static void *free_thread(void *arg)
{
	struct call *c = arg;
	c->ret = dxm_free(c->f->ctx, c->f->m.region);
	atomic_store(&c->done, 1);
	return NULL;
}

EFIX_TEST(mprotect_and_range_fault_efault_while_freed)
{
	static const struct dxm_notifier_ops ops = {blocker_invalidate};
	struct dxm_notifier *bn;
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.p, LEN, &ops, NULL, &bn), 0);
	struct call conv = {.f = &f}, fr = {.f = &f};
	pthread_t tc, tf;
	cr_assert_eq(pthread_create(&tc, NULL, convert_thread, &conv), 0);
	cr_assert(WAIT_FOR(atomic_load(&blk_in), 5000));
	cr_assert_eq(pthread_create(&tf, NULL, free_thread, &fr), 0);
	/* Once the teardown has begun, nobody enters the region. */
	cr_assert(WAIT_FOR(dxm_range_fault(f.ctx, f.p + 2 * PS, PS, 0, NULL) ==
				   -EFAULT,
			   5000),
		  "dxm_range_fault still enters a region being freed");
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, NULL),
		     -EFAULT);
	size_t nprot = recorder_count_event(&rec, DXM_EVENT_PROTECTION);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + 2 * PS, PS, PROT_READ), -EFAULT);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ | PROT_WRITE),
		     -EFAULT);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), nprot);
	/* dxm_free waits for the conversion inside. */
	sleep_ms(20);
	cr_assert(!atomic_load(&fr.done), "dxm_free did not wait");
	atomic_store(&blk_release, 1);
	pthread_join(tc, NULL);
	pthread_join(tf, NULL);
	cr_assert_eq(conv.ret, 1, "the conversion: %ld", conv.ret);
	cr_assert_eq(fr.ret, 0, "dxm_free: %ld", fr.ret);
	cr_assert(recorder_saw(&rec, DXM_EVENT_UNMAP, f.p));
	/* Freed: what is left is refused as unmanaged. */
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ), -EFAULT);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 0, NULL), -EFAULT);
	if (*kind == MEM_ANON) {
		/* Handed back with every page in place. */
		cr_assert(check_index(f.p, LEN, 0));
		cr_assert_eq(munmap(f.p, LEN), 0);
	}
	dxm_notifier_remove(bn);
	recorder_remove(&rec);
	dxm_ctx_destroy(f.ctx);
}

/* -EBADF (not a live context) and -ECHILD (a fork()ed child). */
EFIX_TEST(mprotect_and_range_fault_ebadf_echild)
{
	uint64_t junk[64];
	memset(junk, 0xa5, sizeof(junk));
	struct dxm_ctx *bad = (struct dxm_ctx *)junk;
	cr_assert_eq(dxm_mprotect(bad, f.p, LEN, PROT_READ), -EBADF);
	cr_assert_eq(dxm_range_fault(bad, f.p, LEN, 0, NULL), -EBADF);
	struct dxm_ctx *dead = ctx_or_skip(NULL);
	dxm_ctx_destroy(dead);
	cr_assert_eq(dxm_mprotect(dead, f.p, LEN, PROT_READ), -EBADF);
	cr_assert_eq(dxm_range_fault(dead, f.p, LEN, DXM_FAULT_WRITE, NULL),
		     -EBADF);
	check_intact(&f, 0, "a dead context");

	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		int k = 0;
		if (dxm_mprotect(f.ctx, f.p, LEN, PROT_READ) != -ECHILD)
			k = 1;
		else if (dxm_range_fault(f.ctx, f.p, LEN, 0, NULL) != -ECHILD)
			k = 2;
		else if (dxm_range_fault(f.ctx, f.p, PS, DXM_FAULT_WRITE,
					 NULL) != -ECHILD)
			k = 3;
		_exit(k);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x", status);
	check_intact(&f, 0, "the child's calls");
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ | PROT_WRITE), 0);
	eteardown(&f);
}

/*
 * -ENOMEM: dxm's bookkeeping cannot allocate.  malloc is interposed and
 * fails on the test thread while armed (not under a sanitizer, which has
 * its own allocator).  A protection change of one page in the middle of
 * the view must split the view's piece.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NO_MALLOC_HOOK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||     \
	__has_feature(memory_sanitizer)
#define NO_MALLOC_HOOK 1
#endif
#endif

#ifndef NO_MALLOC_HOOK
extern void *__libc_malloc(size_t size);
static atomic_int malloc_armed;
static pthread_t malloc_thread;
static atomic_ulong malloc_refused;

void *malloc(size_t size)
{
	if (atomic_load_explicit(&malloc_armed, memory_order_relaxed) &&
	    pthread_equal(pthread_self(), malloc_thread)) {
		atomic_fetch_add(&malloc_refused, 1);
		errno = ENOMEM;
		return NULL;
	}
	return __libc_malloc(size);
}
#endif

KIND_ALL_TEST(mprotect_enomem)
{
#ifdef NO_MALLOC_HOOK
	(void)kind;
	cr_skip_test("SKIP: malloc cannot be made to fail under a sanitizer");
#else
	struct fix f;
	esetup(*kind, &f);
	malloc_thread = pthread_self();
	atomic_store(&malloc_armed, 1);
	int got = dxm_mprotect(f.ctx, f.p + PS, PS, PROT_READ);
	atomic_store(&malloc_armed, 0);
	cr_assert_eq(got, -ENOMEM, "dxm_mprotect: %d", got);
	cr_assert_gt(atomic_load(&malloc_refused), 0);
	/* The notifiers were told; the protection did not change, and dxm
	 * still holds the page writable. */
	check_intact(&f, 1, "-ENOMEM");
	wr(f.p + PS, 1);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.p + PS, PS, NULL, dev), 1);
	cr_assert_not_null(dev[0]);
	dxm_exclusive_unlock(f.ctx, f.p + PS, PS, dev);
	cr_assert_eq(rd(f.p + PS), 1);
	wr(f.p + PS, PS / 8);
	/* With memory, the same call works. */
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + PS, PS, PROT_READ), 0);
	char now[8];
	maps_perms(f.p + PS, now);
	cr_assert_eq(now[1], '-');
	cr_assert_eq(
		dxm_range_fault(f.ctx, f.p + PS, PS, DXM_FAULT_WRITE, NULL),
		-EPERM);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + PS, PS, PROT_READ | PROT_WRITE),
		     0);
	cr_assert(check_index(f.p, LEN, 0));
	eteardown(&f);
#endif
}

/*
 * An error of mprotect(2) itself is returned as it is, after the
 * notifiers were called: with memory-deny-write-execute (prctl
 * PR_SET_MDWE, Linux 6.3) the kernel refuses to add PROT_EXEC with
 * EACCES.  dxm keeps the old protection.
 */
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

EFIX_TEST(mprotect_error_from_kernel_eacces)
{
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.p + 2 * PS, PS, NULL, dev), 1);
	cr_assert_not_null(dev[0]);
	dxm_exclusive_unlock(f.ctx, f.p + 2 * PS, PS, dev);
	/* Criterion runs each test in a process of its own: MDWE, which
	 * cannot be undone, ends with it. */
	if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)) {
		int e = errno;
		eteardown(&f);
		cr_skip_test("SKIP: no PR_SET_MDWE here (Linux 6.3): %s",
			     strerror(e));
	}
	int got = dxm_mprotect(f.ctx, f.p, LEN, PROT_READ | PROT_EXEC);
	cr_assert_eq(got, -EACCES, "dxm_mprotect: %d", got);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION),
		     *kind == MEM_ANON ? 2 : 1,
		     "the notifiers were not called first");
	if (*kind == MEM_ANON)
		/* Without PROT_WRITE the exclusive page came back first. */
		cr_assert(
			recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p + 2 * PS));
	/* The old protection holds, for the kernel and for dxm. */
	check_intact(&f, *kind == MEM_ANON ? 2 : 1, "-EACCES");
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.p, LEN, NULL, dev), NPG);
	dxm_exclusive_unlock(f.ctx, f.p, LEN, dev);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, NULL),
		     NPG);
	wr(f.p, 0);
	cr_assert(check_index(f.p, LEN, 0));
	eteardown(&f);
}

/*
 * -EPERM from dxm_range_fault: the view is not readable, or DXM_FAULT_WRITE
 * and it is not writable.  And BUGS of old: after dxm_mprotect(PROT_READ),
 * dxm_range_fault without DXM_FAULT_WRITE succeeds (in adopted memory
 * too, where it faults the pages in readable), with it -EPERM.  Pages 0-1
 * were exclusive, written by the device, when the protection changed.
 */
EFIX_TEST(range_fault_eperm_and_readonly_read_fault)
{
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.p, 2 * PS, NULL, dev), 2);
	cr_assert(dev[0] && dev[1]);
	wr(dev[0], 100);
	wr((char *)dev[1] + 8, 101);
	dxm_exclusive_unlock(f.ctx, f.p, 2 * PS, dev);

	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ), 0);
	size_t nclear = recorder_count_event(&rec, DXM_EVENT_CLEAR);
	long got = dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, dev);
	cr_assert_eq(got, -EPERM, "read-only, DXM_FAULT_WRITE: %ld", got);
	got = dxm_range_fault(f.ctx, f.p + 3 * PS, PS, DXM_FAULT_WRITE, NULL);
	cr_assert_eq(got, -EPERM, "read-only page, DXM_FAULT_WRITE: %ld", got);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), nclear,
		     "a refused dxm_range_fault invalidated");
	if (*kind != MEM_ANON)
		cr_assert_eq(pages_present(f.p, 2 * PS), 0,
			     "a refused dxm_range_fault gave pages back");
	got = dxm_range_fault(f.ctx, f.p, LEN, 0, dev);
	cr_assert_eq(got, NPG, "read-only, for reading: %ld", got);
	cr_assert_eq(pages_present(f.p, LEN), NPG);
	cr_assert_eq(rd(f.p), 100);
	cr_assert_eq(rd(f.p + PS + 8), 101);
	cr_assert_eq(rd(dev[0]), 100);
	if (*kind == MEM_ANON)
		cr_assert_eq(dev[3], f.p + 3 * PS);
	cr_assert_eq(rd(dev[3]), 3 * PS / 8);

	/* Partly read-only: a write fault over it is refused, a read fault
	 * is not. */
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + 2 * PS, PS, PROT_READ), 0);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, NULL),
		     -EPERM);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, 2 * PS, DXM_FAULT_WRITE, NULL),
		     2);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 0, NULL), NPG);

	/* PROT_NONE: refused either way. */
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + PS, PS, PROT_NONE), 0);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 0, NULL), -EPERM);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p + PS, PS, 0, NULL), -EPERM);
	cr_assert_eq(
		dxm_range_fault(f.ctx, f.p + PS, PS, DXM_FAULT_WRITE, NULL),
		-EPERM);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, PS, DXM_FAULT_WRITE, NULL), 1);

	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ | PROT_WRITE), 0);
	wr(f.p, 0);
	wr(f.p + PS + 8, PS / 8 + 1);
	cr_assert(check_index(f.p, LEN, 0));
	eteardown(&f);
}

/*
 * -EDEADLK: dxm_range_fault from a callback on a fault-handler thread (a
 * CPU fault on an exclusive page is resolved there: DXM_EVENT_CLEAR).
 */
static struct {
	struct dxm_ctx *ctx;
	char *target;
	pthread_t test_thread;
	atomic_int calls;
	atomic_long ret;
	atomic_int on_test_thread;
} dl;

static bool deadlock_invalidate(struct dxm_notifier *n,
				const struct dxm_range *r, unsigned long seq)
{
	dxm_notifier_set_seq(n, seq);
	if (r->event == DXM_EVENT_CLEAR &&
	    atomic_fetch_add(&dl.calls, 1) == 0) {
		atomic_store(&dl.on_test_thread,
			     pthread_equal(pthread_self(), dl.test_thread));
		atomic_store(&dl.ret,
			     dxm_range_fault(dl.ctx, dl.target, PS, 0, NULL));
	}
	return true;
}

EFIX_TEST(range_fault_edeadlk_on_handler)
{
	static const struct dxm_notifier_ops ops = {deadlock_invalidate};
	struct dxm_notifier *dn;
	dl.ctx = f.ctx;
	dl.target = f.p + 3 * PS;
	dl.test_thread = pthread_self();
	cr_assert_eq(dxm_notifier_insert(f.ctx, f.p, LEN, &ops, NULL, &dn), 0);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(f.ctx, f.p, PS, NULL, dev), 1);
	wr(dev[0], 77);
	dxm_exclusive_unlock(f.ctx, f.p, PS, dev);
	cr_assert_eq(rd(f.p), 77); /* the CPU fault */
	cr_assert_eq(atomic_load(&dl.calls), 1);
	cr_assert(!atomic_load(&dl.on_test_thread),
		  "the fault was not resolved on a handler thread");
	cr_assert_eq(atomic_load(&dl.ret), -EDEADLK, "dxm_range_fault: %ld",
		     atomic_load(&dl.ret));
	dxm_notifier_remove(dn);
	/* From the test thread the same call works. */
	cr_assert_eq(dxm_range_fault(f.ctx, dl.target, PS, 0, NULL), 1);
	wr(f.p, 0);
	check_intact(&f, 0, "-EDEADLK");
	eteardown(&f);
}

/*
 * BUGS of old, dxm_mprotect(3): a plain mprotect(2) behind dxm's back.
 * Adopted memory: dxm_make_exclusive fails with -EPERM (the pages cannot
 * be faulted in writable), converting nothing, as does dxm_range_fault
 * with DXM_FAULT_WRITE; without it, it succeeds.  A memfd view: dxm still
 * has the view as read-write and converts (the device view stays
 * writable), and dxm_range_fault with DXM_FAULT_WRITE succeeds.
 */
EFIX_TEST(plain_mprotect_readonly_then_make_exclusive)
{
	void *dev[NPG];
	cr_assert_eq(mprotect(f.p, LEN, PROT_READ), 0);
	long got = dxm_make_exclusive(f.ctx, f.p, LEN, NULL, dev);
	if (*kind == MEM_ANON) {
		cr_assert_eq(got, -EPERM, "adopted memory: %ld", got);
		cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_EXCLUSIVE),
			     0);
		cr_assert_eq(pages_present(f.p, LEN), NPG);
		got = dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, NULL);
		cr_assert_eq(got, -EPERM, "write fault: %ld", got);
		cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 0, NULL), NPG);
	} else {
		cr_assert_eq(got, NPG, "memfd view: %ld", got);
		for (size_t i = 0; i < NPG; i++)
			cr_assert_not_null(dev[i]);
		cr_assert_eq(pages_present(f.p, LEN), 0);
		wr(dev[1], 5);
		dxm_exclusive_unlock(f.ctx, f.p, LEN, dev);
		got = dxm_range_fault(f.ctx, f.p, LEN, DXM_FAULT_WRITE, NULL);
		cr_assert_eq(got, NPG, "write fault: %ld", got);
		/* Mapped back with the view's real protection. */
		cr_assert_eq(rd(f.p + PS), 5);
		wr(dev[1], PS / 8);
	}
	cr_assert_eq(mprotect(f.p, LEN, PROT_READ | PROT_WRITE), 0);
	check_intact(&f, 0, "a plain mprotect");
	eteardown(&f);
}
