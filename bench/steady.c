// SPDX-License-Identifier: MIT
/*
 * Steady state: what dxm costs while nothing changes hands.
 *
 *   CPU loop      an add on one word of every cache line of 1024 managed
 *                 pages (4 MiB) that are not exclusive (dxm_alloc), against
 *                 the same loop on a plain MAP_SHARED mapping of the same
 *                 memfd (the same pages without dxm: the baseline) and on
 *                 plain anonymous memory (for reference).
 *   device loop   the reference device's atomic (dxm_mirror_atomic_add)
 *                 on one word of each of 256 pages it holds exclusive,
 *                 against the same engine on plain memory: a driver lock,
 *                 a lookup in a page table like the mirror's, the same
 *                 load / 32 pauses / store, unlock.
 *
 * One pass over the pages is one sample; the methods alternate pass by
 * pass (rotating order).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dxm_mirror.h"
#include "harness.h"

#define CPU_PAGES 1024
#define DEV_PAGES 256

static void cpu_pass(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += 64)
		(*(volatile uint64_t *)(p + off))++;
}

/* ----------------------------------- the device engine on plain memory */

struct pentry {
	uintptr_t page;
	char *dev;
	unsigned tags;
	struct pentry *next;
};

struct plaindev {
	pthread_mutex_t lock;
	struct pentry *bucket[1024];
	struct pentry e[DEV_PAGES];
};

static size_t phash(uintptr_t page)
{
	uint64_t k = (uint64_t)(page / bn_psize) * 0x9E3779B97F4A7C15ull;
	return (size_t)(k >> 20) & 1023;
}

static void plaindev_init(struct plaindev *d, char *cpu, char *dev)
{
	memset(d, 0, sizeof(*d));
	pthread_mutex_init(&d->lock, NULL);
	for (size_t i = 0; i < DEV_PAGES; i++) {
		struct pentry *e = &d->e[i];
		e->page = (uintptr_t)cpu + i * bn_psize;
		e->dev = dev + i * bn_psize;
		e->tags = 7;
		size_t h = phash(e->page);
		e->next = d->bucket[h];
		d->bucket[h] = e;
	}
}

static int plaindev_atomic(struct plaindev *d, uint64_t *addr)
{
	uintptr_t page = (uintptr_t)addr & ~(uintptr_t)(bn_psize - 1);
	pthread_mutex_lock(&d->lock);
	struct pentry *e = d->bucket[phash(page)];
	while (e && e->page != page)
		e = e->next;
	if (!e || !(e->tags & 4)) {
		pthread_mutex_unlock(&d->lock);
		return -EFAULT;
	}
	bn_rmw((uint64_t *)(e->dev + ((uintptr_t)addr - page)), 1);
	pthread_mutex_unlock(&d->lock);
	return 0;
}

int bn_run_steady(void)
{
	const size_t clen = CPU_PAGES * bn_psize, dlen = DEV_PAGES * bn_psize;
	struct dxm_ctx *ctx = NULL;
	struct dxm_mirror *mirror = NULL;
	void *dcpu = NULL, *ddev = NULL, *pmem = MAP_FAILED,
	     *anon = MAP_FAILED, *pdev = MAP_FAILED;
	struct plaindev *pd = NULL;
	int ret = -1;

	int err = bn_ctx(&ctx, 0, 0);
	if (!err)
		err = dxm_mirror_create(ctx, &mirror);
	if (!err)
		/* The mirror's per-atomic dxm_check_exclusive is the tests'
		 * instrumentation, not the device's path. */
		dxm_mirror_set_checks(mirror, false);
	if (!err)
		err = dxm_alloc(ctx, clen, 0, &dcpu);
	if (!err)
		err = dxm_alloc(ctx, dlen, 0, &ddev);
	if (!err) {
		/* The plain loop runs on a plain mapping of dxm's own memfd:
		 * the same physical pages (bn_open_backing); where that is
		 * not permitted, on a memfd of its own. */
		off_t off;
		int fd = bn_open_backing(dcpu, &off);
		if (fd >= 0) {
			pmem = mmap(NULL, clen, PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_POPULATE, fd, off);
			err = pmem == MAP_FAILED ? -errno : 0;
			close(fd);
		} else {
			bn_note("steady: the plain CPU loop uses a memfd of "
				"its own (%s opening dxm's through "
				"/proc/self/map_files)",
				strerror(-fd));
			err = bn_memfd_map(clen, NULL, &pmem);
		}
	}
	if (!err)
		err = bn_memfd_map(dlen, NULL, &pdev);
	if (err) {
		fprintf(stderr, "bench: steady setup: %s\n", strerror(-err));
		goto out;
	}
	anon = mmap(NULL, clen, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	pd = malloc(sizeof(*pd));
	BN_CHECK(anon != MAP_FAILED && pd, "steady setup: out of memory");
	/* The plain engine's "device view" is the mapping itself. */
	plaindev_init(pd, pdev, pdev);
	err = dxm_mirror_exclusive(mirror, ddev, dlen);
	BN_CHECK(!err, "dxm_mirror_exclusive: %s", strerror(-err));

	/* CPU loop. */
	enum { C_PLAIN, C_DXM, C_ANON, NC };
	static const char *cname[NC] = { "plain memfd", "dxm (not exclusive)",
					 "plain anonymous" };
	char *cmem[NC] = { pmem, dcpu, anon };
	struct bn_series *cs[NC];
	int crow[NC];
	for (int m = 0; m < NC; m++) {
		cs[m] = bn_series_new("steady", "CPU loop, 1024 pages",
				      cname[m], CPU_PAGES);
		BN_CHECK(cs[m], "out of memory");
		crow[m] = bn_row(cs[m], BN_RATE, CPU_PAGES, "pages/s",
				 m ? crow[C_PLAIN] : -1);
	}
	for (int m = 0; m < NC; m++)
		cpu_pass(cmem[m], clen); /* warm up */
	size_t passes = bn_n(4000, 400);
	for (size_t r = 0; r < passes; r++)
		for (int k = 0; k < NC; k++) {
			int m = (int)((k + r) % NC);
			uint64_t t0 = bn_now();
			cpu_pass(cmem[m], clen);
			bn_add(cs[m], (double)(bn_now() - t0));
		}

	/* Device loop. */
	enum { D_PLAIN, D_DXM, ND };
	static const char *dname[ND] = { "plain memory engine",
					 "dxm mirror (held, no checks)" };
	char *dmem[ND] = { pdev, ddev };
	struct bn_series *ds[ND];
	int drow[ND];
	for (int m = 0; m < ND; m++) {
		ds[m] = bn_series_new("steady", "device atomics, 256 pages",
				      dname[m], DEV_PAGES);
		BN_CHECK(ds[m], "out of memory");
		drow[m] = bn_row(ds[m], BN_RATE, DEV_PAGES, "atomics/s",
				 m ? drow[D_PLAIN] : -1);
	}
	struct dxm_mirror_stats st0, st1;
	dxm_mirror_get_stats(mirror, &st0);
	size_t dpasses = bn_n(800, 80);
	for (size_t r = 0; r < dpasses + 1; r++)
		for (int k = 0; k < ND; k++) {
			int m = (int)((k + r) % ND);
			uint64_t t0 = bn_now();
			for (size_t i = 0; i < DEV_PAGES; i++) {
				uint64_t *w = (uint64_t *)(dmem[m] +
							   i * bn_psize);
				err = m == D_DXM ? dxm_mirror_atomic_add(
							   mirror, w, 1, NULL)
						 : plaindev_atomic(pd, w);
				BN_CHECK(!err, "device atomic: %s",
					 strerror(-err));
			}
			uint64_t t1 = bn_now();
			if (r) /* the first pass warms up */
				bn_add(ds[m], (double)(t1 - t0));
		}
	dxm_mirror_get_stats(mirror, &st1);
	BN_CHECK(st1.exclusive_calls == st0.exclusive_calls &&
			 st1.stale_accesses == 0 &&
			 dxm_mirror_check_exclusive(mirror, ddev, dlen) ==
				 DEV_PAGES,
		 "the mirror lost pages during the device loop");

	char meas[32];
	double ratio = 1.0 / bn_row_ratio(crow[C_DXM], 0.5);
	snprintf(meas, sizeof(meas), "%.3fx", ratio);
	bn_target("steady_cpu", meas, "<= 1.02x plain memfd time per pass",
		  ratio <= 1.02);
	ratio = 1.0 / bn_row_ratio(drow[D_DXM], 0.5);
	snprintf(meas, sizeof(meas), "%.3fx", ratio);
	bn_target("steady_device", meas,
		  "<= 1.02x plain-memory engine time per pass", ratio <= 1.02);
	ret = 0;
out:
	if (pd)
		pthread_mutex_destroy(&pd->lock);
	free(pd);
	if (anon != MAP_FAILED)
		munmap(anon, clen);
	if (pmem != MAP_FAILED)
		munmap(pmem, clen);
	if (pdev != MAP_FAILED)
		munmap(pdev, dlen);
	if (mirror)
		dxm_mirror_destroy(mirror);
	if (ddev)
		dxm_free(ctx, ddev);
	if (dcpu)
		dxm_free(ctx, dcpu);
	if (ctx)
		dxm_ctx_destroy(ctx);
	return ret;
}
