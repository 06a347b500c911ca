// SPDX-License-Identifier: MIT
/*
 * B6 mprotect (memfd memory): the kernel's hmm-tests "exclusive_mprotect"
 * scenario with the software mirror.  The mirror takes a range exclusive
 * and writes it with its atomic engine; dxm_mprotect(PROT_READ) tells the
 * notifiers (DXM_EVENT_PROTECTION) before the protection changes; then a
 * device write is refused (-EPERM), a device read still works, a CPU read
 * faults the page back and sees the device's data, and a CPU write raises
 * SIGSEGV.  dxm_mprotect back to read-write gives writes back to both.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

static uint64_t rd(const void *p)
{
	return *(const volatile uint64_t *)p;
}

static void wr(void *p, uint64_t v)
{
	*(volatile uint64_t *)p = v;
}

struct fix {
	struct dxm_ctx *ctx;
	struct mem m;
	struct dxm_mirror *mir;
	char *p; /* the view under test */
};

static void setup(enum mem_kind kind, struct fix *f)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_or_skip(NULL);
	mem_setup(f->ctx, kind, LEN, &f->m);
	f->p = f->m.base;
	fill_index(f->p, LEN, 0);
	cr_assert_eq(dxm_mirror_create(f->ctx, &f->mir), 0);
	recorder_insert(f->ctx, &rec, f->p, LEN);
	rec.hook = perms_hook;
}

static void teardown(struct fix *f)
{
	struct dxm_mirror_stats st;
	dxm_mirror_get_stats(f->mir, &st);
	cr_assert_eq(st.stale_accesses, 0, "the device used a revoked page");
	dxm_mirror_destroy(f->mir);
	recorder_remove(&rec);
	mem_teardown(&f->m);
	dxm_ctx_destroy(f->ctx);
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

#define KIND_TEST(name, ...)                                                   \
	ParameterizedTestParameters(b6_mprotect, name)                         \
	{                                                                      \
		MEM_KINDS_PARAMS;                                              \
	}                                                                      \
	ParameterizedTest(enum mem_kind *kind, b6_mprotect, name,              \
			  .timeout = 30, ##__VA_ARGS__)

KIND_TEST(readonly_refuses_device_writes)
{
	struct fix f;
	setup(*kind, &f);
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
KIND_TEST(cpu_write_after_readonly_segfaults, .signal = SIGSEGV)
{
	struct fix f;
	setup(*kind, &f);
	exclusive_then_readonly(&f);
	cr_assert_eq(rd(f.p + PS), PS / 8 + 100);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f.p + PS));
	cr_assert(page_present(f.p + PS));
	wr(f.p + PS, 1); /* SIGSEGV */
	cr_assert_fail("a CPU write to a read-only page succeeded");
}

/* A CPU write straight to a page still exclusive: SIGSEGV, not a hang
 * and not a writable restore. */
KIND_TEST(cpu_write_to_exclusive_readonly_page_segfaults, .signal = SIGSEGV)
{
	struct fix f;
	setup(*kind, &f);
	exclusive_then_readonly(&f);
	wr(f.p + 2 * PS, 1); /* SIGSEGV */
	cr_assert_fail("a CPU write to a read-only page succeeded");
}

/* Only the middle page made read-only: device writes are refused there
 * and only there; a device write to the writable view of the same pages
 * (MEM_ALIAS: the region's own view) still works. */
KIND_TEST(partial_readonly_refuses_only_that_page)
{
	struct fix f;
	setup(*kind, &f);
	cr_assert_eq(dxm_mirror_exclusive(f.mir, f.p, LEN), 0);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p + PS, PS, PROT_READ), 0);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_PROTECTION), 1);
	cr_assert(recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p + PS));
	cr_assert(!recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p));
	cr_assert(!recorder_saw(&rec, DXM_EVENT_PROTECTION, f.p + 2 * PS));
	/* Only the read-only page was taken from the device. */
	cr_assert_eq(dxm_mirror_check_exclusive(f.mir, f.p, LEN), NPG - 1);

	uint64_t buf[PS / 8];
	memset(buf, 0x11, sizeof(buf));
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
	teardown(&f);
}

/* PROT_NONE: device reads are refused as well. */
KIND_TEST(prot_none_refuses_device_reads)
{
	struct fix f;
	setup(*kind, &f);
	cr_assert_eq(dxm_mirror_exclusive(f.mir, f.p, LEN), 0);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_NONE), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(f.mir, f.p, LEN), 0);
	uint64_t buf[PS / 8];
	cr_assert_eq(dxm_mirror_read(f.mir, f.p, buf, PS), -EPERM);
	cr_assert_eq(dxm_range_fault(f.ctx, f.p, LEN, 0, NULL), -EPERM);
	cr_assert_eq(dxm_mprotect(f.ctx, f.p, LEN, PROT_READ), 0);
	cr_assert_eq(dxm_mirror_read(f.mir, f.p, buf, PS), 0);
	cr_assert(check_index(buf, PS, 0));
	cr_assert(check_index(f.p, LEN, 0));
	teardown(&f);
}

/* Adopted memory made read-only: dxm_range_fault for reading works (the
 * pages are read-populated), for writing and dxm_make_exclusive refuse
 * with -EPERM; after a raw mprotect behind dxm's back as well. */
Test(b6_mprotect, adopted_readonly_read_fault_ok_write_eperm, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct mem m;
	mem_setup(ctx, MEM_ANON, 4 * PS, &m);
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
	cr_assert(r == -EPERM || (r == 2 && !dev[0] && !dev[1]),
		  "make_exclusive after a raw mprotect: %ld", r);
	mprotect((char *)m.base + 2 * PS, 2 * PS, PROT_READ | PROT_WRITE);
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}
