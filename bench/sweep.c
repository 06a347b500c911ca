// SPDX-License-Identifier: MIT
/*
 * Sweep: the CPU reading device results back.  A device had N pages
 * exclusive (16384 and 262144; --quick: 2048 and 16384) and unlocked them;
 * the CPU then touches one word per page, in order (read-back), in order
 * with a store (write-back), in reverse order, and in a random order.
 * Side by side in one run, interleaved sample by sample:
 *
 *   kernel minor   a plain MAP_SHARED memfd mapping zapped with
 *                  MADV_DONTNEED: every touch is a kernel minor fault (no
 *                  dxm, no userfaultfd): the floor
 *   dxm 1 page     restore_around = 1: one fault to the handler per page,
 *                  what dxm did before restore-around
 *   dxm            the default context (restore-around on)
 *   dxm adopted    the same over adopted (dxm_adopt) memory
 *
 * Each figure is the time per page.  Targets: sequential read-back with
 * the default context at most 1.0x the kernel's minor faults, memfd and
 * adopted, at both sizes; random touches no slower than 1.05x one page
 * per fault (the window must not over-restore random access).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "harness.h"

enum { M_KERNEL, M_ONE, M_DXM, M_ANON, NM };
static const char *const mname[NM] = { "kernel minor faults",
				       "dxm, 1 page per fault", "dxm",
				       "dxm adopted" };
enum { O_SEQ, O_WRITE, O_REV, O_RAND, NO };
static const char *const oname[NO] = { "read-back", "write-back", "reverse",
				       "random" };

struct sw {
	struct dxm_ctx *ctx;
	char *p;
	size_t len;
	bool anon;
};

static void touch_all(char *p, size_t n, int order, const uint32_t *perm)
{
	uint64_t sum = 0;
	for (size_t k = 0; k < n; k++) {
		size_t i = order == O_REV ? n - 1 - k
			   : order == O_RAND ? perm[k]
					     : k;
		volatile uint64_t *w = (volatile uint64_t *)(p + i * bn_psize);
		if (order == O_WRITE)
			*w = k;
		else
			sum += *w;
	}
	__asm__ __volatile__("" ::"r"(sum));
}

/* The owner of every conversion here (an identity only, no notifier): a
 * non-NULL owner, so that restore-around applies as for a driver. */
static struct bn_drv owner;

/* Take the pages away (untimed), then time the touches. */
static int once(struct sw *s, int m, size_t n, int order, const uint32_t *perm,
		void **dev, struct bn_series *ser)
{
	size_t len = n * bn_psize;
	if (m == M_KERNEL) {
		if (madvise(s->p, len, MADV_DONTNEED))
			return -errno;
	} else {
		int err = bn_dxm_revoke(s->ctx, &owner, s->p, len, dev);
		if (err)
			return err;
	}
	uint64_t t0 = bn_now();
	touch_all(s->p, n, order, perm);
	bn_add(ser, (double)(bn_now() - t0) / (double)n);
	return 0;
}

static int sw_setup(struct sw *s, int m, size_t len)
{
	memset(s, 0, sizeof(*s));
	s->len = len;
	if (m == M_KERNEL)
		return bn_memfd_map(len, NULL, (void **)&s->p);
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .restore_around = m == M_ONE ? 1 : 0 };
	int err = dxm_ctx_create(&s->ctx, &o);
	if (err)
		return err;
	if (m == M_ANON) {
		s->anon = true;
		s->p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (s->p == MAP_FAILED)
			return s->p = NULL, -errno;
		memset(s->p, 1, len);
		return dxm_adopt(s->ctx, s->p, len, 0);
	}
	return dxm_alloc(s->ctx, len, 0, (void **)&s->p);
}

static void sw_teardown(struct sw *s)
{
	if (s->ctx) {
		if (s->p)
			dxm_free(s->ctx, s->p);
		dxm_ctx_destroy(s->ctx);
	}
	if (s->p && (s->anon || !s->ctx))
		munmap(s->p, s->len);
}

int bn_run_sweep(void)
{
	const size_t sizes[2] = { bn_opt.quick ? 2048 : 16384,
				  bn_opt.quick ? 16384 : 262144 };
	const size_t rounds[2] = { bn_n(3, 2), bn_n(1, 1) };
	struct sw s[NM];
	struct bn_series *ser[2][NO][NM];
	int rows[2][NO][NM];
	uint32_t *perm = NULL;
	void **dev = NULL;
	int ret = -1, err;
	size_t maxn = sizes[1];

	memset(s, 0, sizeof(s));
	perm = malloc(maxn * sizeof(*perm));
	dev = malloc(maxn * sizeof(*dev));
	BN_CHECK(perm && dev, "out of memory");
	for (int m = 0; m < NM; m++) {
		err = sw_setup(&s[m], m, maxn * bn_psize);
		if (err == -ENOSYS && m == M_ANON) {
			bn_note("sweep: no adopted memory here (dxm_adopt: %s)",
				strerror(-err));
			sw_teardown(&s[m]);
			memset(&s[m], 0, sizeof(s[m]));
			continue;
		}
		BN_CHECK(!err, "sweep setup (%s): %s", mname[m],
			 strerror(-err));
	}
	for (int z = 0; z < 2; z++)
		for (int o = 0; o < NO; o++) {
			char fig[40];
			snprintf(fig, sizeof(fig), "%s, %zu pages", oname[o],
				 sizes[z]);
			for (int m = 0; m < NM; m++) {
				ser[z][o][m] = bn_series_new("sweep", fig,
							     mname[m],
							     (long)sizes[z]);
				BN_CHECK(ser[z][o][m], "out of memory");
			}
		}
	for (int z = 0; z < 2; z++) {
		size_t n = sizes[z];
		for (size_t i = 0; i < n; i++)
			perm[i] = (uint32_t)i;
		srand(42);
		for (size_t i = n - 1; i > 0; i--) {
			size_t j = (size_t)rand() % (i + 1);
			uint32_t t = perm[i];
			perm[i] = perm[j], perm[j] = t;
		}
		for (size_t r = 0; r < rounds[z]; r++)
			for (int o = 0; o < NO; o++)
				for (int k = 0; k < NM; k++) {
					int m = (int)((k + r + o) % NM);
					if (!s[m].p)
						continue;
					err = once(&s[m], m, n, o, perm, dev,
						   ser[z][o][m]);
					BN_CHECK(!err, "sweep %s: %s", mname[m],
						 strerror(-err));
				}
	}
	for (int z = 0; z < 2; z++)
		for (int o = 0; o < NO; o++)
			for (int m = 0; m < NM; m++)
				rows[z][o][m] =
					s[m].p ? bn_row(ser[z][o][m], BN_LAT, 1,
							"per page",
							m ? rows[z][o][M_KERNEL]
							  : -1)
					       : -1;
	for (int z = 0; z < 2; z++) {
		char name[48], meas[48];
		for (int m = M_DXM; m <= M_ANON; m++) {
			if (rows[z][O_SEQ][m] < 0)
				continue;
			double x = bn_row_ratio(rows[z][O_SEQ][m], 0.5);
			snprintf(name, sizeof(name), "sweep_read_%s_%zu",
				 m == M_ANON ? "adopted" : "memfd", sizes[z]);
			snprintf(meas, sizeof(meas), "%.2fx", x);
			bn_target(name, meas, "<= 1.0x kernel minor faults",
				  x <= 1.0);
		}
		double one = bn_row_at(rows[z][O_RAND][M_ONE], 0.5);
		double dflt = bn_row_at(rows[z][O_RAND][M_DXM], 0.5);
		snprintf(name, sizeof(name), "sweep_random_%zu", sizes[z]);
		snprintf(meas, sizeof(meas), "%.2fx", dflt / one);
		bn_target(name, meas, "<= 1.05x one page per fault",
			  dflt <= 1.05 * one);
	}
	ret = 0;
out:
	for (int m = 0; m < NM; m++)
		sw_teardown(&s[m]);
	free(perm);
	free(dev);
	return ret;
}
