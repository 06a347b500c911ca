// SPDX-License-Identifier: MIT
/*
 * Huge pages: the same bytes as 4 KiB pages (dxm_alloc) and as 2 MiB pages
 * (DXM_ALLOC_HUGE), side by side in one run:
 *
 *   revoke    dxm_make_exclusive of the whole buffer (1 GiB; 64 MiB with
 *             --quick), every page mapped before it (dxm_range_fault,
 *             untimed); then unlocked.
 *   read-back after a device had the whole buffer and unlocked it, the
 *             CPU reads one word per 4 KiB in order: the time to walk it.
 *   restore   one CPU touch of one revoked page (4 KiB or 2 MiB).
 *
 * The two kinds are interleaved sample by sample.  Targets: revoke at
 * least 100x and read-back at least 10x faster with huge pages.
 *
 * The huge pages come from the system's pool: as root the group adds what
 * it lacks to /proc/sys/vm/nr_hugepages and puts the old count back at the
 * end; otherwise, with too few free, it says so and measures nothing.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define HP ((size_t)2 << 20)
#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"

enum { K_BASE, K_HUGE, NK };
static const char *const kind_name[NK] = { "4 KiB pages", "2 MiB pages" };

static long read_long(const char *path, const char *field)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char line[256];
	long v = -1;
	size_t n = field ? strlen(field) : 0;
	while (fgets(line, sizeof(line), f)) {
		if (!field) {
			v = strtol(line, NULL, 10);
			break;
		}
		if (!strncmp(line, field, n) && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

static bool write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return false;
	bool ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok;
}

/* Make n huge pages free; *old: the count to put back (-1: nothing). */
static bool reserve(long n, long *old)
{
	*old = -1;
	long free_pages = read_long("/proc/meminfo", "HugePages_Free");
	if (free_pages >= n)
		return true;
	long cur = read_long(NR_HUGEPAGES, NULL);
	if (cur < 0 || geteuid() != 0 || !write_long(NR_HUGEPAGES, cur + n - free_pages))
		return false;
	*old = cur;
	return read_long("/proc/meminfo", "HugePages_Free") >= n;
}

/* The owner of every conversion here (an identity only, no notifier): a
 * non-NULL owner, so that restore-around applies as for a driver. */
static struct bn_drv owner;

/* Map every page back (untimed), then time dxm_make_exclusive. */
static int revoke_once(struct dxm_ctx *ctx, char *p, size_t len, void **dev,
		       struct bn_series *s)
{
	long n = dxm_range_fault(ctx, p, len, DXM_FAULT_WRITE, NULL);
	if (n < 0)
		return (int)n;
	uint64_t t0 = bn_now();
	long got = dxm_make_exclusive(ctx, p, len, &owner, dev);
	uint64_t t1 = bn_now();
	if (got < 0)
		return (int)got;
	dxm_exclusive_unlock(ctx, p, len, dev);
	bn_add(s, (double)(t1 - t0));
	return 0;
}

/* Revoke the whole buffer, unlock, then time the CPU walking it. */
static int readback_once(struct dxm_ctx *ctx, char *p, size_t len,
			 void **dev, struct bn_series *s)
{
	int err = bn_dxm_revoke(ctx, &owner, p, len, dev);
	if (err)
		return err;
	uint64_t sum = 0, t0 = bn_now();
	for (size_t off = 0; off < len; off += bn_psize)
		sum += *(volatile uint64_t *)(p + off);
	uint64_t t1 = bn_now();
	__asm__ __volatile__("" ::"r"(sum));
	bn_add(s, (double)(t1 - t0));
	return 0;
}

/* One page revoked, then one touch timed. */
static int restore_once(struct dxm_ctx *ctx, char *p, size_t psize,
			void **dev, struct bn_series *s)
{
	int err = bn_dxm_revoke(ctx, &owner, p, psize, dev);
	if (err)
		return err;
	uint64_t t0 = bn_now();
	bn_touch(p + psize / 2);
	bn_add(s, (double)(bn_now() - t0));
	return 0;
}

int bn_run_huge(void)
{
	const size_t len = bn_opt.quick ? (size_t)64 << 20 : (size_t)1 << 30;
	const size_t rounds = bn_n(3, 2), touches = bn_n(400, 40);
	struct dxm_ctx *ctx = NULL;
	char *buf[NK] = { NULL, NULL };
	void **dev = NULL;
	struct bn_series *rv[NK], *rb[NK], *rs[NK];
	int ret = -1, err;
	long old = -1;
	char fig[40];

	if (!reserve((long)(len / HP), &old)) {
		bn_note("huge: not measured: %zu free huge pages of 2 MiB are "
			"needed (as root the group reserves them itself in "
			NR_HUGEPAGES ")",
			len / HP);
		ret = 0;
		goto out;
	}
	err = bn_ctx(&ctx, 0, 0);
	BN_CHECK(!err, "dxm_ctx_create: %s", strerror(-err));
	for (int k = 0; k < NK; k++) {
		err = dxm_alloc(ctx, len, k == K_HUGE ? DXM_ALLOC_HUGE : 0,
				(void **)&buf[k]);
		if (k == K_HUGE && err == -ENOSYS) {
			bn_note("huge: not measured: no minor faults on "
				"hugetlbfs in this kernel");
			ret = 0;
			goto out;
		}
		if (k == K_HUGE && err == -ENOMEM) {
			/* The pool is the system's: another program (a test
			 * reserving its own pages) may take them between the
			 * check and here. */
			bn_note("huge: not measured: the %zu free huge pages "
				"were taken by another program meanwhile",
				len / HP);
			ret = 0;
			goto out;
		}
		BN_CHECK(!err, "dxm_alloc(%zu, %s): %s", len, kind_name[k],
			 strerror(-err));
		memset(buf[k], 1, len);
	}
	dev = calloc(len / bn_psize, sizeof(*dev));
	BN_CHECK(dev, "out of memory");

	snprintf(fig, sizeof(fig), "revoke %zu MiB", len >> 20);
	for (int k = 0; k < NK; k++)
		rv[k] = bn_series_new("huge", fig, kind_name[k], (long)len);
	snprintf(fig, sizeof(fig), "read-back %zu MiB", len >> 20);
	for (int k = 0; k < NK; k++)
		rb[k] = bn_series_new("huge", fig, kind_name[k], (long)len);
	for (int k = 0; k < NK; k++)
		rs[k] = bn_series_new("huge", "restore one page", kind_name[k],
				      k == K_HUGE ? (long)HP : (long)bn_psize);
	for (int k = 0; k < NK; k++)
		BN_CHECK(rv[k] && rb[k] && rs[k], "out of memory");

	for (size_t r = 0; r < rounds; r++)
		for (int i = 0; i < NK; i++) {
			int k = (int)((i + r) % NK);
			err = revoke_once(ctx, buf[k], len, dev, rv[k]);
			if (!err)
				err = readback_once(ctx, buf[k], len, dev,
						    rb[k]);
			BN_CHECK(!err, "%s: %s", kind_name[k], strerror(-err));
		}
	for (size_t t = 0; t < touches; t++)
		for (int k = 0; k < NK; k++) {
			size_t psize = k == K_HUGE ? HP : bn_psize;
			err = restore_once(ctx, buf[k], psize, dev, rs[k]);
			BN_CHECK(!err, "%s: %s", kind_name[k], strerror(-err));
		}

	int row_rv = bn_row(rv[K_BASE], BN_LAT, 1, "per call", -1);
	int row_rvh = bn_row(rv[K_HUGE], BN_LAT, 1, "per call", row_rv);
	int row_rb = bn_row(rb[K_BASE], BN_LAT, 1, "per walk", -1);
	int row_rbh = bn_row(rb[K_HUGE], BN_LAT, 1, "per walk", row_rb);
	int row_rs = bn_row(rs[K_BASE], BN_LAT, 1, "latency", -1);
	bn_row(rs[K_HUGE], BN_LAT, 1, "latency", row_rs);

	char meas[48], name[40];
	double x = 1 / bn_row_ratio(row_rvh, 0.5);
	snprintf(name, sizeof(name), "huge_revoke_%zuM", len >> 20);
	snprintf(meas, sizeof(meas), "%.0fx faster", x);
	bn_target(name, meas, ">= 100x faster than 4 KiB pages", x >= 100);
	x = 1 / bn_row_ratio(row_rbh, 0.5);
	snprintf(name, sizeof(name), "huge_readback_%zuM", len >> 20);
	snprintf(meas, sizeof(meas), "%.0fx faster", x);
	bn_target(name, meas, ">= 10x faster than 4 KiB pages", x >= 10);
	if (bn_opt.quick)
		bn_note("huge: --quick measures 64 MiB; the targets are set "
			"for 1 GiB (a full run)");
	ret = 0;
out:
	free(dev);
	for (int k = 0; k < NK; k++)
		if (buf[k])
			dxm_free(ctx, buf[k]);
	if (ctx)
		dxm_ctx_destroy(ctx);
	if (old >= 0 && !write_long(NR_HUGEPAGES, old))
		fprintf(stderr, "bench: could not put %s back to %ld\n",
			NR_HUGEPAGES, old);
	return ret;
}
