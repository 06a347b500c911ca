// SPDX-License-Identifier: MIT
/*
 * Revoke throughput: dxm_make_exclusive of 1, 64, 4096 and 262144 pages,
 * against the raw cost of zapping the same range (MADV_DONTNEED of a memfd
 * MAP_SHARED mapping, no dxm, no userfaultfd) and against
 * mprotect(PROT_NONE) of the same range.  The baselines' mappings are plain
 * mappings of dxm's own memfd (bn_open_backing), so all three work on the
 * same physical pages.
 *
 * Every sample starts from pages that are mapped in the CPU page table (dxm:
 * dxm_range_fault() brought them back; raw: MADV_POPULATE_WRITE; mprotect:
 * the pages stay mapped, mprotect(PROT_READ|PROT_WRITE) makes them
 * accessible again); only the revoking call is timed.  The three methods
 * are interleaved sample by sample, in a rotating order.  dxm's range has a
 * driver-like notifier (bn_drv) that sees the conversion and ignores it as
 * its own, as a driver does.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

enum { M_RAW, M_DXM, M_MPROT, NM };

int bn_run_revoke(void)
{
	static const long sizes[] = { 1, 64, 4096, 262144 };
	const size_t nsz = sizeof(sizes) / sizeof(sizes[0]);
	const size_t rounds_full[] = { 6000, 4000, 600, 30 };
	const size_t rounds_quick[] = { 400, 300, 40, 6 };
	const size_t maxpg = (size_t)sizes[nsz - 1];
	const size_t maxlen = maxpg * bn_psize;
	static const char *names[NM] = { "raw zap (MADV_DONTNEED)",
					 "dxm_make_exclusive",
					 "mprotect(PROT_NONE)" };
	struct dxm_ctx *ctx = NULL;
	struct bn_drv drv = { .n = NULL };
	void *dp = NULL, *rp = MAP_FAILED, *mp = MAP_FAILED;
	void **dev = NULL;
	int fd = -1, ret = -1;
	int rows[4][NM];

	int err = bn_ctx(&ctx, 0, 0);
	if (err) {
		fprintf(stderr, "bench: dxm_ctx_create: %s\n", strerror(-err));
		return -1;
	}
	err = dxm_alloc(ctx, maxlen, 0, &dp);
	if (err) {
		fprintf(stderr, "bench: dxm_alloc(%zu): %s\n", maxlen,
			strerror(-err));
		goto out;
	}
	err = bn_drv_attach(&drv, ctx, dp, maxlen);
	if (err) {
		fprintf(stderr, "bench: revoke setup: %s\n", strerror(-err));
		goto out;
	}
	/* The baselines map dxm's own memfd plainly: the same physical
	 * pages.  Where that is not permitted, a memfd of their own. */
	off_t off = 0;
	fd = bn_open_backing(dp, &off);
	if (fd >= 0) {
		rp = mmap(NULL, maxlen, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_POPULATE, fd, off);
	} else {
		bn_note("revoke: the baselines use a memfd of their own (%s "
			"opening dxm's through /proc/self/map_files): from "
			"4096 pages up the ratios then also depend on how "
			"fragmented each memfd's pages are",
			strerror(-fd));
		off = 0;
		err = bn_memfd_map(maxlen, &fd, &rp);
		if (err) {
			fprintf(stderr, "bench: revoke setup: %s\n",
				strerror(-err));
			goto out;
		}
	}
	/* The mprotect view: one more plain mapping of the same pages. */
	mp = mmap(NULL, maxlen, PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, fd, off);
	dev = malloc(maxpg * sizeof(*dev));
	if (rp == MAP_FAILED || mp == MAP_FAILED || !dev) {
		fprintf(stderr, "bench: revoke setup: out of memory\n");
		goto out;
	}

	for (size_t si = 0; si < nsz; si++) {
		size_t len = (size_t)sizes[si] * bn_psize;
		char fig[40];
		snprintf(fig, sizeof(fig), "%ld page%s", sizes[si],
			 sizes[si] > 1 ? "s" : "");
		struct bn_series *s[NM];
		for (int m = 0; m < NM; m++)
			if (!(s[m] = bn_series_new("revoke", fig, names[m],
						   sizes[si])))
				goto out;
		rows[si][M_RAW] = bn_row(s[M_RAW], BN_RATE, (double)sizes[si],
					 "pages/s", -1);
		rows[si][M_DXM] = bn_row(s[M_DXM], BN_RATE, (double)sizes[si],
					 "pages/s", rows[si][M_RAW]);
		rows[si][M_MPROT] = bn_row(s[M_MPROT], BN_RATE,
					   (double)sizes[si], "pages/s",
					   rows[si][M_RAW]);
		size_t rounds = bn_n(rounds_full[si], rounds_quick[si]);
		for (size_t r = 0; r < rounds; r++) {
			for (int k = 0; k < NM; k++) {
				int m = (int)((k + r) % NM);
				uint64_t t0, t1;
				switch (m) {
				case M_RAW:
					if (madvise(rp, len,
						    MADV_POPULATE_WRITE)) {
						perror("bench: populate");
						goto out;
					}
					t0 = bn_now();
					err = madvise(rp, len, MADV_DONTNEED);
					t1 = bn_now();
					BN_CHECK(!err, "MADV_DONTNEED: %s",
						 strerror(errno));
					break;
				case M_DXM: {
					long n = dxm_range_fault(ctx, dp, len,
								 0, NULL);
					BN_CHECK(n == sizes[si],
						 "dxm_range_fault: %ld", n);
					t0 = bn_now();
					n = dxm_make_exclusive(ctx, dp, len,
							       &drv, dev);
					t1 = bn_now();
					BN_CHECK(n == sizes[si],
						 "dxm_make_exclusive: %ld", n);
					for (long i = 0; i < n; i++)
						BN_CHECK(dev[i],
							 "page %ld refused", i);
					dxm_exclusive_unlock(ctx, dp, len, dev);
					break;
				}
				default:
					t0 = bn_now();
					err = mprotect(mp, len, PROT_NONE);
					t1 = bn_now();
					BN_CHECK(!err, "mprotect: %s",
						 strerror(errno));
					err = mprotect(mp, len,
						       PROT_READ | PROT_WRITE);
					BN_CHECK(!err, "mprotect: %s",
						 strerror(errno));
					break;
				}
				bn_add(s[m], (double)(t1 - t0));
			}
		}
	}
	/* Leave the region with the CPU before it is freed. */
	dxm_range_fault(ctx, dp, maxlen, 0, NULL);

	for (size_t si = 1; si < nsz; si++) {
		char name[40], meas[32];
		double ratio = bn_row_ratio(rows[si][M_DXM], 0.5);
		snprintf(name, sizeof(name), "revoke_%ld", sizes[si]);
		snprintf(meas, sizeof(meas), "%.3fx", ratio);
		bn_target(name, meas, ">= 0.80x raw zap", ratio >= 0.8);
	}

	/* Throughput against range size, one line per method. */
	char path[512];
	FILE *f = fopen(bn_path(path, sizeof(path), "revoke_plot.dat"), "w");
	if (f) {
		fprintf(f, "# pages");
		for (int m = 0; m < NM; m++)
			fprintf(f, " \"%s median\" \"p99\"", names[m]);
		fprintf(f, "\n");
		for (size_t si = 0; si < nsz; si++) {
			fprintf(f, "%ld", sizes[si]);
			for (int m = 0; m < NM; m++)
				fprintf(f, " %.6g %.6g",
					bn_row_at(rows[si][m], 0.5),
					bn_row_at(rows[si][m], 0.99));
			fprintf(f, "\n");
		}
		fclose(f);
		char body[2048];
		snprintf(body, sizeof(body),
			 "set title 'Revoke throughput against range size "
			 "(median, bars down to p99)'\n"
			 "set xlabel 'pages revoked per call'\n"
			 "set ylabel 'pages/s'\n"
			 "set logscale xy\nset key bottom right\n"
			 "set xtics (1, 64, 4096, 262144)\n"
			 "set xrange [0.7:400000]\n"
			 "plot '%s' u 1:2:3:2 w yerrorlines t '%s', "
			 "'' u 1:4:5:4 w yerrorlines t '%s', "
			 "'' u 1:6:7:6 w yerrorlines t '%s'\n",
			 path, names[0], names[1], names[2]);
		bn_plot("revoke", body);
	}
	ret = 0;
out:
	free(dev);
	if (mp != MAP_FAILED)
		munmap(mp, maxlen);
	if (rp != MAP_FAILED)
		munmap(rp, maxlen);
	if (fd >= 0)
		close(fd);
	bn_drv_detach(&drv);
	if (dp)
		dxm_free(ctx, dp);
	dxm_ctx_destroy(ctx);
	return ret;
}
