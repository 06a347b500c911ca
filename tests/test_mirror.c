// SPDX-License-Identifier: MIT
/*
 * The reference device (dxm_mirror) on the kernel's hmm-tests scenarios:
 * ordinary reads and writes, and "exclusive" (4 MiB filled with i, device
 * takes it all exclusive and reads i, the CPU increments every value, a
 * second pass sees i+1, and the device no longer holds any page).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dxm_mirror.h"

#define MiB (1024 * 1024)

struct fixture {
	struct dxm_ctx *ctx;
	struct dxm_mirror *dev;
	struct dxm_mirror *dev2; /* two_devices only */
	struct mem m;
};

static void setup(struct fixture *f, enum mem_kind kind, size_t len)
{
	f->ctx = ctx_mem(kind, len, &f->m);
	f->dev = mirror_create(f->ctx);
	f->dev2 = NULL;
}

/* One page of kind memory and two devices on it. */
static void two_devices(struct fixture *f, enum mem_kind kind)
{
	setup(f, kind, PS);
	f->dev2 = mirror_create(f->ctx);
}

static void teardown(struct fixture *f)
{
	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(f->dev, &ms);
	cr_assert_eq(ms.stale_accesses, 0);
	dxm_mirror_destroy(f->dev);
	if (f->dev2)
		dxm_mirror_destroy(f->dev2);
	mem_done(&f->m);
}

/* A test on a fixture with len bytes of *kind memory (common.h), also on
 * huge pages (name_huge). */
#define MIRROR_TEST(name, len, ...)                                            \
	KIND_FIX_TEST_HUGE_OF(mirror, MEM_KINDS_PARAMS, name, struct fixture,  \
			      f, setup(&f, *kind, len), __VA_ARGS__)
/* A test on two_devices: on memfd memory, and huge pages. */
#define TWO_DEVICES_TEST(name)                                                 \
	MEMFD_FIX_TEST_HUGE_OF(mirror, name, struct fixture, f,                \
			       two_devices(&f, *kind), .timeout = 30)

MIRROR_TEST(read_sees_cpu_data, 16 * PS, .timeout = 30)
{
	fill_index(f.m.base, 16 * PS, 0);
	void *buf = malloc(16 * PS);
	cr_assert_eq(dxm_mirror_read(f.dev, f.m.base, buf, 16 * PS), 0);
	cr_assert(check_index(buf, 16 * PS, 0));
	/* The device's entries follow later CPU writes (same pages). */
	fill_index(f.m.base, 16 * PS, 7);
	cr_assert_eq(dxm_mirror_read(f.dev, f.m.base, buf, 16 * PS), 0);
	cr_assert(check_index(buf, 16 * PS, 7));
	free(buf);
	teardown(&f);
}

MIRROR_TEST(write_is_seen_by_cpu, 16 * PS, .timeout = 30)
{
	void *buf = malloc(16 * PS);
	fill_index(buf, 16 * PS, 3);
	cr_assert_eq(dxm_mirror_write(f.dev, f.m.base, buf, 16 * PS), 0);
	cr_assert(check_index(f.m.base, 16 * PS, 3));
	cr_assert(check_index(f.m.region, 16 * PS, 3));
	free(buf);
	teardown(&f);
}

/* hmm-tests "exclusive", on both kinds of memory. */
MIRROR_TEST(exclusive_4mib, 4 * MiB, .timeout = 60)
{
	size_t len = f.m.len, n = len / PS;
	uint64_t *p = f.m.base;
	fill_index(p, len, 0);

	cr_assert_eq(dxm_mirror_exclusive(f.dev, p, len), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(f.dev, p, len), (long)n);
	cr_assert_eq(pages_present(p, len), 0,
		     "pages still mapped after the conversion");
	cr_assert_eq(pages_present(f.m.region, len), 0);

	/* The device reads i through its exclusive entries. */
	void *buf = malloc(len);
	cr_assert_eq(dxm_mirror_read(f.dev, p, buf, len), 0);
	cr_assert(check_index(buf, len, 0));
	cr_assert_eq(dxm_mirror_check_exclusive(f.dev, p, len), (long)n,
		     "a device read must not give the pages up");

	/* The CPU reads and increments every value: each page faults back. */
	for (size_t i = 0; i < len / 8; i++) {
		cr_assert_eq(p[i], i);
		p[i]++;
	}
	for (size_t i = 0; i < len / 8; i++)
		cr_assert_eq(p[i], i + 1);

	/* Nothing is exclusive any more, from the device's view and from
	 * dxm's. */
	cr_assert_eq(dxm_mirror_check_exclusive(f.dev, p, len), 0);
	void **dev = calloc(n, sizeof(*dev));
	for (size_t i = 0; i < n; i++) {
		void *d = (char *)f.m.region + 0; /* any non-NULL pointer */
		cr_assert_not(dxm_check_exclusive(f.ctx, (char *)p + i * PS,
						  PS, &d));
	}
	free(dev);
	struct dxm_stats st;
	dxm_stats(f.ctx, &st, sizeof(st));
	cr_assert_geq(st.restores, n);
	cr_assert_geq(st.cpu_faults, n);
	free(buf);
	teardown(&f);
}

/* The device's atomics on an exclusive page, then the CPU: every device
 * write is seen. */
MIRROR_TEST(device_atomics_then_cpu, 4 * PS, .timeout = 30)
{
	uint64_t *c = f.m.base;
	*c = 100;
	for (int i = 0; i < 1000; i++) {
		uint64_t old;
		cr_assert_eq(dxm_mirror_atomic_add(f.dev, c, 1, &old), 0);
		cr_assert_eq(old, 100 + (uint64_t)i);
	}
	cr_assert_not(page_present(c));
	cr_assert_eq(*c, 1100);
	cr_assert(page_present(c));
	cr_assert_eq(dxm_mirror_check_exclusive(f.dev, f.m.base, PS), 0);
	teardown(&f);
}

/* Two devices take the same page from each other: each conversion by one
 * invalidates the other (DXM_EVENT_EXCLUSIVE with a foreign owner). */
TWO_DEVICES_TEST(two_devices_take_turns)
{
	struct dxm_mirror *b = f.dev2;
	uint64_t *c = f.m.base;
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(dxm_mirror_atomic_add(f.dev, c, 1, NULL), 0);
		cr_assert_eq(dxm_mirror_check_exclusive(f.dev, c, PS), 1);
		cr_assert_eq(dxm_mirror_atomic_add(b, c, 1, NULL), 0);
		cr_assert_eq(dxm_mirror_check_exclusive(b, c, PS), 1);
		cr_assert_eq(dxm_mirror_check_exclusive(f.dev, c, PS), 0);
	}
	cr_assert_eq(*c, 200);
	teardown(&f);
}

/* An ordinary device access to a page another device holds exclusive
 * takes it back first (hmm_range_fault on an exclusive entry). */
TWO_DEVICES_TEST(ordinary_access_revokes_other_owner)
{
	struct dxm_mirror *b = f.dev2;
	uint64_t *c = f.m.base;
	cr_assert_eq(dxm_mirror_atomic_add(f.dev, c, 5, NULL), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(f.dev, c, PS), 1);
	uint64_t *v = malloc(PS);
	cr_assert_not_null(v);
	cr_assert_eq(dxm_mirror_read(b, c, v, PS), 0);
	cr_assert_eq(v[0], 5);
	free(v);
	cr_assert_eq(dxm_mirror_check_exclusive(f.dev, c, PS), 0);
	cr_assert(page_present(c), "dxm_range_fault maps the page back");
	teardown(&f);
}
