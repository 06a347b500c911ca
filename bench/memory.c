// SPDX-License-Identifier: MIT
/*
 * Memory: dxm's metadata per managed page, and what dxm_alloc / dxm_free
 * cost from 4 KiB to 1 GiB (--quick: to 64 MiB) against a plain
 * allocation of the same memory: memfd_create + ftruncate + fallocate +
 * mmap(MAP_SHARED | MAP_POPULATE) + close, and munmap.
 *
 * metadata bytes/page is dxm_stats().metadata_bytes / managed_pages (the
 * page-state table).  heap bytes/page is what the C heap grew by
 * (mallinfo2: arena + mmapped chunks) for a 64 MiB region, so it also
 * counts the region and view structures.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

static int plain_alloc(size_t len, void **pp)
{
	return bn_memfd_map(len, NULL, pp);
}

static size_t heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

static void fmt_size(char *buf, size_t n, size_t bytes)
{
	if (bytes >= (1ul << 30))
		snprintf(buf, n, "%zu GiB", bytes >> 30);
	else if (bytes >= (1ul << 20))
		snprintf(buf, n, "%zu MiB", bytes >> 20);
	else
		snprintf(buf, n, "%zu KiB", bytes >> 10);
}

int bn_run_memory(void)
{
	struct dxm_ctx *ctx = NULL;
	int ret = -1;
	int err = bn_ctx(&ctx, 0, 0);
	BN_CHECK(!err, "dxm_ctx_create: %s", strerror(-err));

	/* Metadata per managed page, for a few region sizes. */
	static const size_t mpages[] = { 1, 256, 16384 };
	for (size_t i = 0; i < 3; i++) {
		struct dxm_stats a, b;
		void *p;
		BN_CHECK(!dxm_stats(ctx, &a, sizeof(a)), "dxm_stats");
		size_t h0 = heap_bytes();
		err = dxm_alloc(ctx, mpages[i] * bn_psize, 0, &p);
		BN_CHECK(!err, "dxm_alloc: %s", strerror(-err));
		size_t h1 = heap_bytes();
		BN_CHECK(!dxm_stats(ctx, &b, sizeof(b)), "dxm_stats");
		char size[32], fig[64];
		fmt_size(size, sizeof(size), mpages[i] * bn_psize);
		snprintf(fig, sizeof(fig), "metadata, %s region", size);
		double pages = (double)(b.managed_pages - a.managed_pages);
		bn_row_value("memory", fig, "dxm_stats bytes/page",
			     (double)(b.metadata_bytes - a.metadata_bytes) /
				     pages,
			     "B/page");
		bn_row_value("memory", fig, "heap growth bytes/page",
			     ((double)h1 - (double)h0) / pages, "B/page");
		dxm_free(ctx, p);
	}

	/* dxm_alloc / dxm_free against a plain memfd allocation. */
	static const size_t sizes[] = { 4096,	   65536,     1ul << 20,
					16ul << 20, 64ul << 20, 256ul << 20,
					1ul << 30 };
	static const size_t n_full[] = { 400, 300, 100, 30, 10, 5, 3 };
	static const size_t n_quick[] = { 60, 40, 15, 6, 3, 0, 0 };
	for (size_t si = 0; si < 7; si++) {
		size_t reps = bn_n(n_full[si], n_quick[si]);
		if (!reps)
			continue;
		char size[32], fa[48], ff[48];
		fmt_size(size, sizeof(size), sizes[si]);
		snprintf(fa, sizeof(fa), "alloc %s", size);
		snprintf(ff, sizeof(ff), "free %s", size);
		struct bn_series *pa = bn_series_new("memory", fa,
						     "plain memfd+mmap",
						     (long)sizes[si]);
		struct bn_series *da = bn_series_new("memory", fa, "dxm_alloc",
						     (long)sizes[si]);
		struct bn_series *pf = bn_series_new("memory", ff, "munmap",
						     (long)sizes[si]);
		struct bn_series *df = bn_series_new("memory", ff, "dxm_free",
						     (long)sizes[si]);
		BN_CHECK(pa && da && pf && df, "out of memory");
		int ra = bn_row(pa, BN_LAT, 1, "time", -1);
		bn_row(da, BN_LAT, 1, "time", ra);
		int rf = bn_row(pf, BN_LAT, 1, "time", -1);
		bn_row(df, BN_LAT, 1, "time", rf);
		for (size_t r = 0; r < reps; r++)
			for (int k = 0; k < 2; k++) {
				bool dxm = (k + r) % 2;
				void *p;
				uint64_t t0 = bn_now();
				err = dxm ? dxm_alloc(ctx, sizes[si], 0, &p)
					  : plain_alloc(sizes[si], &p);
				uint64_t t1 = bn_now();
				BN_CHECK(!err, "%s(%zu): %s",
					 dxm ? "dxm_alloc" : "plain alloc",
					 sizes[si], strerror(-err));
				err = dxm ? dxm_free(ctx, p)
					  : (munmap(p, sizes[si]) ? -errno : 0);
				uint64_t t2 = bn_now();
				BN_CHECK(!err, "free: %s", strerror(-err));
				bn_add(dxm ? da : pa, (double)(t1 - t0));
				bn_add(dxm ? df : pf, (double)(t2 - t1));
			}
	}
	ret = 0;
out:
	if (ctx)
		dxm_ctx_destroy(ctx);
	return ret;
}
