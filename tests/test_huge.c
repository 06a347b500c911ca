// SPDX-License-Identifier: MIT
/*
 * Huge pages (DXM_ALLOC_HUGE): a region of 2 MiB hugetlbfs pages keeps its
 * pages whole.  A region page is a huge page: make_exclusive revokes whole
 * huge pages (all 512 page-table entries gone, checked in
 * /proc/self/pagemap, the neighbours untouched), a CPU touch anywhere in
 * one gives back that huge page and only it, notified first; ranges must
 * be whole huge pages (-EINVAL, nothing changed); dev[] has one entry per
 * huge page; aliases, dxm_range_fault, dxm_mprotect and munmap behave as
 * for memfd regions; a short pool is -ENOMEM and leaves nothing reserved.
 *
 * The pages come from the system's pool: tests/hugepages.sh reserves them
 * (as root) around this program and puts the old count back; where too
 * few are free each test skips and says so.
 */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#define HP ((size_t)2 << 20)
#define HP_PTES (HP / PS)

static const char owner[] = "huge";

/* A field of /proc/meminfo ("HugePages_Free"...). */
static long meminfo(const char *field)
{
	FILE *f = fopen("/proc/meminfo", "r");
	cr_assert(f, "/proc/meminfo: %s", strerror(errno));
	char line[256];
	long v = -1;
	size_t n = strlen(field);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, n) && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	fclose(f);
	return v;
}

static void need_huge(size_t n)
{
	long free_pages = meminfo("HugePages_Free");
	if (meminfo("Hugepagesize") != 2048)
		cr_skip_test("SKIP: the default huge page is not 2 MiB here");
	if (free_pages < (long)n)
		cr_skip_test("SKIP: %zu free huge pages of 2 MiB needed, %ld "
			     "free: reserve them in /proc/sys/vm/nr_hugepages "
			     "(tests/hugepages.sh does, as root)",
			     n, free_pages);
}

/* A context and n huge pages of a DXM_ALLOC_HUGE region, filled with
 * fill_index(0). */
static char *huge_alloc(struct dxm_ctx **ctxp, size_t n)
{
	need_huge(n);
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *p;
	int err = dxm_alloc(ctx, n * HP, DXM_ALLOC_HUGE, (void **)&p);
	if (err == -ENOSYS)
		cr_skip_test("SKIP: this kernel has no minor faults on "
			     "hugetlbfs (UFFD_FEATURE_MINOR_HUGETLBFS)");
	cr_assert_eq(err, 0, "dxm_alloc(%zu huge pages): %s", n,
		     strerror(-err));
	fill_index(p, n * HP, 0);
	*ctxp = ctx;
	return p;
}

static void huge_done(struct dxm_ctx *ctx, char *p)
{
	cr_assert_eq(dxm_free(ctx, p), 0);
	dxm_ctx_destroy(ctx);
}

/* The kernel page size smaps reports for the mapping that holds p. */
static long smaps_kernel_page_kb(const void *p)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	cr_assert(f);
	char line[512];
	bool in = false;
	long kb = -1;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t a, b;
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2) {
			in = a <= (uintptr_t)p && (uintptr_t)p < b;
			continue;
		}
		if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

Test(huge, alloc_maps_huge_pages_and_says_their_size, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2);
	cr_expect_eq((uintptr_t)p % HP, 0, "%p is not 2 MiB aligned", p);
	cr_expect_eq(dxm_page_size(ctx, p), (long)HP);
	cr_expect_eq(dxm_page_size(ctx, p + HP + 12345), (long)HP);
	cr_expect_eq(smaps_kernel_page_kb(p), 2048);
	cr_expect_eq(pages_present(p, 2 * HP), 2 * HP_PTES);
	cr_expect(check_index(p, 2 * HP, 0));
	char *q;
	cr_assert_eq(dxm_alloc(ctx, PS, 0, (void **)&q), 0);
	cr_expect_eq(dxm_page_size(ctx, q), (long)PS);
	int local;
	cr_expect_eq(dxm_page_size(ctx, &local), -ENOENT);
	cr_expect_eq(dxm_free(ctx, q), 0);
	huge_done(ctx, p);
}

Test(huge, revoke_takes_whole_huge_pages_and_only_those, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 3);
	void *dev[1] = { NULL };
	cr_assert_eq(dxm_make_exclusive(ctx, p + HP, HP, owner, dev), 1);
	cr_assert(dev[0] && dev[0] != p + HP);
	cr_expect_eq(pages_present(p + HP, HP), 0,
		     "%zu of the 512 entries of the exclusive huge page are "
		     "still mapped",
		     pages_present(p + HP, HP));
	cr_expect_eq(pages_present(p, HP), HP_PTES);
	cr_expect_eq(pages_present(p + 2 * HP, HP), HP_PTES);
	cr_expect(dxm_check_exclusive(ctx, p + HP, HP, dev));
	/* The device works on the whole huge page. */
	wr((char *)dev[0] + HP - 8, 0xd0d0);
	cr_expect(check_index(dev[0], HP - 8, HP / 8));
	dxm_exclusive_unlock(ctx, p + HP, HP, dev);
	cr_expect_eq(pages_present(p + HP, HP), 0);
	cr_expect_eq(rd(p + 2 * HP - 8), 0xd0d0);
	huge_done(ctx, p);
}

Test(huge, a_touch_gives_back_its_huge_page_notified_first, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 3);
	static struct recorder rec;
	recorder_insert(ctx, &rec, p, 3 * HP);
	void *dev[3];
	cr_assert_eq(dxm_make_exclusive(ctx, p, 3 * HP, owner, dev), 3);
	wr((char *)dev[1] + HP / 2, 77);
	dxm_exclusive_unlock(ctx, p, 3 * HP, dev);
	uint64_t before = stats(ctx).restores;
	/* One word in the middle of the middle page. */
	cr_expect_eq(rd(p + HP + HP / 2), 77);
	cr_expect_eq(stats(ctx).restores - before, 1);
	cr_expect(rec_covers(&rec, DXM_EVENT_CLEAR, p + HP, HP),
		  "the huge page was mapped back without its CLEAR");
	cr_expect(!rec_overlaps(&rec, DXM_EVENT_CLEAR, p, p + HP));
	cr_expect(!rec_overlaps(&rec, DXM_EVENT_CLEAR, p + 2 * HP, p + 3 * HP));
	cr_expect_eq(pages_present(p + HP, HP), HP_PTES,
		     "the touched huge page has %zu of 512 entries mapped",
		     pages_present(p + HP, HP));
	cr_expect_eq(pages_present(p, HP), 0);
	cr_expect_eq(pages_present(p + 2 * HP, HP), 0);
	cr_expect_eq(smaps_kernel_page_kb(p + HP), 2048);
	/* The others come back, with their data, when touched. */
	cr_expect(check_index(p, HP, 0));
	cr_expect(check_index(p + 2 * HP, HP, 2 * HP / 8));
	recorder_remove(&rec);
	huge_done(ctx, p);
}

Test(huge, ranges_must_be_whole_huge_pages, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2);
	void *dev[512];
	cr_expect_eq(dxm_make_exclusive(ctx, p, PS, owner, dev), -EINVAL);
	cr_expect_eq(dxm_make_exclusive(ctx, p + PS, HP, owner, dev),
		     -EINVAL);
	cr_expect_eq(dxm_make_exclusive(ctx, p, HP + PS, owner, dev),
		     -EINVAL);
	cr_expect_eq(dxm_range_fault(ctx, p, PS, 0, dev), -EINVAL);
	cr_expect_eq(dxm_mprotect(ctx, p + PS, HP, PROT_READ), -EINVAL);
	cr_expect(!dxm_check_exclusive(ctx, p, PS, dev));
	/* Nothing changed. */
	cr_expect_eq(pages_present(p, 2 * HP), 2 * HP_PTES);
	wr(p + PS, 5);
	cr_expect_eq(rd(p + PS), 5);
	cr_expect_eq(stats(ctx).conversions, 0);
	huge_done(ctx, p);
}

Test(huge, every_alias_loses_the_page_and_gets_it_back, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2), *a;
	cr_assert_eq(dxm_alias(ctx, p, (void **)&a), 0);
	cr_expect_eq((uintptr_t)a % HP, 0);
	cr_expect_eq(pages_present(a, 2 * HP), 2 * HP_PTES);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, a + HP, HP, owner, dev), 1);
	cr_expect_eq(pages_present(p + HP, HP), 0);
	cr_expect_eq(pages_present(a + HP, HP), 0);
	wr(dev[0], 4242);
	dxm_exclusive_unlock(ctx, a + HP, HP, dev);
	cr_expect_eq(rd(a + HP), 4242);
	/* Given back in every view (the faulting view first: the others
	 * right after the access went on). */
	cr_expect(WAIT_FOR(pages_present(p + HP, HP) == HP_PTES, 2000),
		  "the other view has %zu of 512 entries mapped",
		  pages_present(p + HP, HP));
	cr_expect_eq(rd(p + HP), 4242);
	cr_expect_eq(dxm_free(ctx, a), 0);
	huge_done(ctx, p);
}

Test(huge, range_fault_maps_back_and_gives_device_addresses, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2);
	void *dev[2], *dev2[2];
	cr_assert_eq(dxm_make_exclusive(ctx, p, 2 * HP, owner, dev), 2);
	dxm_exclusive_unlock(ctx, p, 2 * HP, dev);
	cr_assert_eq(dxm_range_fault(ctx, p, 2 * HP, DXM_FAULT_WRITE, dev2),
		     2);
	cr_expect_eq(dev2[0], dev[0]);
	cr_expect_eq(dev2[1], dev[1]);
	cr_expect_eq((char *)dev[1] - (char *)dev[0], (ptrdiff_t)HP);
	cr_expect_eq(pages_present(p, 2 * HP), 2 * HP_PTES);
	struct dxm_device_view dv;
	cr_assert_eq(dxm_device_view(ctx, p + HP + 100, 0, &dv, sizeof(dv)),
		     0);
	cr_expect_eq(dv.psize, HP);
	cr_expect_eq(dv.len, 2 * HP);
	cr_expect_eq(dv.offset, HP + 100);
	cr_expect_eq(dv.base, dev[0]);
	huge_done(ctx, p);
}

Test(huge, read_only_view_refuses_conversion, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2);
	void *dev[1];
	cr_assert_eq(dxm_mprotect(ctx, p + HP, HP, PROT_READ), 0);
	cr_expect_eq(dxm_make_exclusive(ctx, p + HP, HP, owner, dev), -EPERM);
	cr_expect_eq(dxm_make_exclusive(ctx, p, HP, owner, dev), 1);
	dxm_exclusive_unlock(ctx, p, HP, dev);
	cr_expect(check_index(p, 2 * HP, 0));
	cr_assert_eq(dxm_mprotect(ctx, p + HP, HP, PROT_READ | PROT_WRITE), 0);
	cr_expect_eq(dxm_make_exclusive(ctx, p + HP, HP, owner, dev), 1);
	dxm_exclusive_unlock(ctx, p + HP, HP, dev);
	huge_done(ctx, p);
}

Test(huge, unmap_tells_the_devices, .timeout = 30)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2), *a;
	cr_assert_eq(dxm_alias(ctx, p, (void **)&a), 0);
	static struct recorder rec;
	recorder_insert(ctx, &rec, a, 2 * HP);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, p, HP, owner, dev), 1);
	dxm_exclusive_unlock(ctx, p, HP, dev);
	cr_assert_eq(munmap(a, 2 * HP), 0);
	cr_expect(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, a, 2 * HP), 5000),
		  "no UNMAP for the alias's huge pages");
	/* The region lives on in its own view. */
	cr_expect(check_index(p, 2 * HP, 0));
	recorder_remove(&rec);
	huge_done(ctx, p);
}

struct race {
	struct dxm_ctx *ctx;
	char *p;
	unsigned long rounds;
	atomic_bool stop;
};

static void *cpu_incs(void *arg)
{
	struct race *r = arg;
	unsigned long k = 0;
	while (!atomic_load(&r->stop)) {
		for (size_t i = 0; i < 2; i++)
			__atomic_fetch_add((uint64_t *)(r->p + i * HP), 1,
					   __ATOMIC_SEQ_CST);
		k++;
	}
	return (void *)k;
}

/* B10 on huge pages: a device without atomics (load, add, store through
 * the device view) and a CPU thread with atomics on the same counters. */
Test(huge, no_update_lost_between_cpu_and_device, .timeout = 60)
{
	struct dxm_ctx *ctx;
	char *p = huge_alloc(&ctx, 2);
	wr(p, 0);
	wr(p + HP, 0);
	struct race r = { .ctx = ctx, .p = p };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, cpu_incs, &r), 0);
	unsigned long dev_adds[2] = { 0, 0 };
	uint64_t until = now_ms() + 1500;
	while (now_ms() < until || dev_adds[0] < 200 || dev_adds[1] < 200) {
		void *dev[2];
		cr_assert_eq(dxm_make_exclusive(ctx, p, 2 * HP, owner, dev), 2);
		/* A page the CPU is taking back (its fault in flight) is
		 * refused: dev[i] NULL. */
		for (size_t i = 0; i < 2; i++) {
			if (!dev[i])
				continue;
			uint64_t v = rd(dev[i]);
			sched_yield(); /* a CPU write here would be lost */
			wr(dev[i], v + 1);
			dev_adds[i]++;
		}
		dxm_exclusive_unlock(ctx, p, 2 * HP, dev);
	}
	atomic_store(&r.stop, true);
	void *k;
	pthread_join(t, &k);
	unsigned long cpu = (unsigned long)k;
	cr_expect(cpu > 0);
	for (size_t i = 0; i < 2; i++)
		cr_expect_eq(rd(p + i * HP), cpu + dev_adds[i],
			     "counter %zu: %" PRIu64 ", expected %lu (cpu %lu + "
			     "device %lu)",
			     i, rd(p + i * HP), cpu + dev_adds[i], cpu,
			     dev_adds[i]);
	huge_done(ctx, p);
}

Test(huge, a_short_pool_is_enomem_and_leaves_nothing, .timeout = 30)
{
	need_huge(1);
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	long free_before = meminfo("HugePages_Free");
	long rsvd_before = meminfo("HugePages_Rsvd");
	size_t maps_before = maps_lines("dxm");
	char *p = NULL;
	int err = dxm_alloc(ctx, (size_t)(free_before + 1) * HP,
			    DXM_ALLOC_HUGE, (void **)&p);
	if (err == -ENOSYS)
		cr_skip_test("SKIP: no minor faults on hugetlbfs here");
	cr_expect_eq(err, -ENOMEM, "dxm_alloc of one huge page more than the "
				   "pool has: %s",
		     strerror(-err));
	cr_expect_eq(meminfo("HugePages_Free"), free_before);
	cr_expect_eq(meminfo("HugePages_Rsvd"), rsvd_before);
	cr_expect_eq(maps_lines("dxm"), maps_before);
	cr_expect_eq(stats(ctx).regions, 0);
	/* And what the pool has still works. */
	cr_expect_eq(dxm_alloc(ctx, HP, DXM_ALLOC_HUGE, (void **)&p), 0);
	cr_expect_eq(dxm_free(ctx, p), 0);
	cr_expect_eq(meminfo("HugePages_Free"), free_before);
	dxm_ctx_destroy(ctx);
}
