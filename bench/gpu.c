// SPDX-License-Identifier: MIT
/*
 * Device: one round trip of a real device through its backend, for each
 * backend this dxm was built with whose device is present (CUDA, Vulkan:
 * tools/demo_gpu.c, the demo's own wiring of backends/cuda and
 * backends/vulkan).  A round trip is what a program alternating device
 * and CPU phases pays: the backend acquires the pages
 * (dxm_make_exclusive), dispatches the counter kernel (one load/add/store
 * of a counter on each page) and the program waits for it; then the CPU
 * touches every page (an atomic add): each touch faults, the backend's
 * invalidate callback finds the work done, and the page is restored.
 *
 * Against the same work with no dxm: the kernel dispatched on ordinary
 * host memory (the backend's UNMANAGED flag), waited for, then the same
 * CPU touches, which do not fault.  That is what a program does today,
 * and where a bus without atomics loses updates (dxm demo); the ratio is
 * dxm's price for not losing them.  1 and 64 pages; no target.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "demo_gpu.h"
#include "harness.h"

static const struct {
	enum demo_gpu_kind kind;
	const char *name;
} kinds[] = { { DEMO_GPU_CUDA, "cuda" }, { DEMO_GPU_VULKAN, "vulkan" } };

static void touch_pages(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		__atomic_fetch_add((uint32_t *)(p + i * bn_psize), 1,
				   __ATOMIC_SEQ_CST);
}

/* Round trips of one device on n pages: dxm memory and ordinary memory,
 * interleaved sample by sample. */
static int measure(struct demo_gpu *g, const char *name, struct dxm_ctx *ctx,
		   size_t n)
{
	size_t len = n * bn_psize, rounds = bn_n(400, 40);
	char *mem = NULL, *plain = MAP_FAILED;
	char fig[64], meth[64];
	int ret = -1, err = dxm_alloc(ctx, len, 0, (void **)&mem);
	BN_CHECK(!err, "dxm_alloc: %s", strerror(-err));
	plain = mmap(NULL, len, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	BN_CHECK(plain != MAP_FAILED, "mmap: %s", strerror(errno));
	snprintf(fig, sizeof(fig), "round trip, %zu page%s", n,
		 n > 1 ? "s" : "");
	snprintf(meth, sizeof(meth), "%s, no dxm", name);
	struct bn_series *sp = bn_series_new("device", fig, meth, (long)n);
	snprintf(meth, sizeof(meth), "%s through dxm", name);
	struct bn_series *sd = bn_series_new("device", fig, meth, (long)n);
	for (size_t r = 0; r < rounds && !err; r++) {
		uint64_t t0 = bn_now();
		err = demo_gpu_round_trip(g, plain, n, true);
		touch_pages(plain, n);
		uint64_t t1 = bn_now();
		if (!err)
			err = demo_gpu_round_trip(g, mem, n, false);
		touch_pages(mem, n);
		uint64_t t2 = bn_now();
		bn_add(sp, (double)(t1 - t0));
		bn_add(sd, (double)(t2 - t1));
	}
	BN_CHECK(!err, "%s: dispatch: %s", name, strerror(-err));
	/* Each round: one increment by the device, one by the CPU. */
	for (size_t i = 0; i < n; i++) {
		uint32_t v = *(uint32_t *)(mem + i * bn_psize);
		BN_CHECK(v == 2 * rounds, "%s: page %zu counts %u, not %zu",
			 name, i, v, 2 * rounds);
	}
	int base = bn_row(sp, BN_LAT, 1, "time", -1);
	bn_row(sd, BN_LAT, 1, "time", base);
	ret = 0;
out:
	if (mem)
		dxm_free(ctx, mem);
	if (plain != MAP_FAILED)
		munmap(plain, len);
	return ret;
}

int bn_run_device(void)
{
	struct dxm_ctx *ctx = NULL;
	int ret = -1, ran = 0, err = bn_ctx(&ctx, 0, 0);
	BN_CHECK(!err, "dxm_ctx_create: %s", strerror(-err));
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		static const size_t sizes[] = { 1, 64 };
		struct demo_gpu *g;
		char why[512] = "", name[32];
		err = demo_gpu_open(kinds[k].kind, ctx, &g, why, sizeof(why));
		if (err) {
			bn_note("device: %s not measured: %s", kinds[k].name,
				why[0] ? why : strerror(-err));
			continue;
		}
		snprintf(name, sizeof(name), "%s", kinds[k].name);
		bn_note("device: %s is %s", kinds[k].name, demo_gpu_name(g));
		for (size_t i = 0; i < 2 && !err; i++)
			err = measure(g, name, ctx, sizes[i]);
		demo_gpu_close(g);
		if (err)
			goto out;
		ran++;
	}
	if (!ran)
		bn_note("device: no backend's device here: nothing measured");
	ret = 0;
out:
	if (ctx)
		dxm_ctx_destroy(ctx);
	return ret;
}
