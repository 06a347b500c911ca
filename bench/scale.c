// SPDX-License-Identifier: MIT
/*
 * Scale: 1, 2, 4 and 8 CPU threads fault distinct exclusive pages at the
 * same time, with 1 and with 2 handler threads (dxm_ctx_opts
 * .handler_threads).  A round makes T x PAGES pages exclusive (one
 * dxm_make_exclusive call, untimed), then releases T threads that touch
 * their PAGES pages one after another; the round's wall time gives the
 * restore throughput (faults/s), each touch its latency.  The 8
 * configurations are interleaved round by round, in each of two thread
 * placements (harness.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAXT 8
#define MAXPAGES 64

struct worker {
	pthread_t t;
	int id;
	sem_t go;
	bool started;
	double lat[MAXPAGES];
};

static struct {
	char *base;
	size_t pages;
	atomic_bool quit;
	sem_t done;
} job;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (;;) {
		sem_wait(&w->go);
		if (atomic_load(&job.quit))
			break;
		for (size_t j = 0; j < job.pages; j++) {
			char *p = job.base + ((size_t)w->id * job.pages + j) *
						     bn_psize;
			uint64_t t0 = bn_now();
			bn_touch(p);
			w->lat[j] = (double)(bn_now() - t0);
		}
		sem_post(&job.done);
	}
	return NULL;
}

static int scale_pass(enum bn_place place)
{
	static const int threads[] = { 1, 2, 4, 8 };
	enum { NT = 4, NH = 2 };
	const size_t pages = bn_n(MAXPAGES, 32);
	const size_t len = MAXT * MAXPAGES * bn_psize;
	struct dxm_ctx *ctx[NH] = { NULL, NULL };
	struct bn_drv drv[NH];
	void *region[NH] = { NULL, NULL };
	struct worker w[MAXT];
	void **dev = NULL;
	struct bn_series *thr[NH][NT], *lat[NH][NT];
	int thr_row[NH][NT];
	int ret = -1;

	memset(drv, 0, sizeof(drv));
	memset(w, 0, sizeof(w));
	atomic_store(&job.quit, false);
	sem_init(&job.done, 0, 0);
	job.pages = pages;
	dev = malloc(MAXT * MAXPAGES * sizeof(*dev));
	BN_CHECK(dev, "out of memory");

	BN_CHECK(!bn_place_handlers(place), "cannot pin the handlers");
	for (int h = 0; h < NH; h++) {
		int err = bn_ctx(&ctx[h], 0, (unsigned)h + 1);
		if (!err)
			err = dxm_alloc(ctx[h], len, 0, &region[h]);
		if (!err)
			err = bn_drv_attach(&drv[h], ctx[h], region[h], len);
		BN_CHECK(!err, "scale setup: %s", strerror(-err));
	}
	BN_CHECK(!bn_place_main(place), "cannot pin the CPU threads");
	for (int i = 0; i < MAXT; i++) {
		w[i].id = i;
		sem_init(&w[i].go, 0, 0);
		int err = pthread_create(&w[i].t, NULL, worker_main, &w[i]);
		BN_CHECK(!err, "pthread_create: %s", strerror(err));
		w[i].started = true;
	}
	for (int h = 0; h < NH; h++) {
		char fig[40];
		snprintf(fig, sizeof(fig), "%d handler%s: faults/s%s", h + 1,
			 h ? "s" : "", bn_place_suffix[place]);
		for (int t = 0; t < NT; t++) {
			char m[40];
			snprintf(m, sizeof(m), "%d CPU thread%s", threads[t],
				 t ? "s" : "");
			thr[h][t] = bn_series_new("scale", fig, m, threads[t]);
			BN_CHECK(thr[h][t], "out of memory");
			thr_row[h][t] = bn_row(thr[h][t], BN_RATE,
					       (double)(threads[t] * pages),
					       "faults/s",
					       t ? thr_row[h][0] : -1);
		}
	}
	for (int h = 0; h < NH; h++) {
		char fig[40];
		snprintf(fig, sizeof(fig), "%d handler%s: latency%s", h + 1,
			 h ? "s" : "", bn_place_suffix[place]);
		int base = -1;
		for (int t = 0; t < NT; t++) {
			char m[40];
			snprintf(m, sizeof(m), "%d CPU thread%s", threads[t],
				 t ? "s" : "");
			lat[h][t] = bn_series_new("scale", fig, m, threads[t]);
			BN_CHECK(lat[h][t], "out of memory");
			int row = bn_row(lat[h][t], BN_LAT, 1, "latency", base);
			if (!t)
				base = row;
		}
	}

	size_t rounds = bn_n(100, 6);
	for (size_t r = 0; r < rounds; r++)
		for (int k = 0; k < NH * NT; k++) {
			int c = (int)((k + r) % (NH * NT));
			int h = c / NT, t = c % NT, T = threads[t];
			size_t n = (size_t)T * pages;
			int err = bn_dxm_revoke(ctx[h], &drv[h], region[h],
						n * bn_psize, dev);
			BN_CHECK(!err, "revoke: %s", strerror(-err));
			job.base = region[h];
			uint64_t t0 = bn_now();
			for (int i = 0; i < T; i++)
				sem_post(&w[i].go);
			for (int i = 0; i < T; i++)
				sem_wait(&job.done);
			uint64_t t1 = bn_now();
			bn_add(thr[h][t], (double)(t1 - t0));
			for (int i = 0; i < T; i++)
				for (size_t j = 0; j < pages; j++)
					bn_add(lat[h][t], w[i].lat[j]);
		}

	char path[512];
	char file[64];
	snprintf(file, sizeof(file), "%s.dat", place ? "scale_split" : "scale");
	FILE *f = fopen(bn_path(path, sizeof(path), file), "w");
	if (f) {
		fprintf(f, "# threads h1_median h1_p99 h2_median h2_p99\n");
		for (int t = 0; t < NT; t++)
			fprintf(f, "%d %.6g %.6g %.6g %.6g\n", threads[t],
				bn_row_at(thr_row[0][t], 0.5),
				bn_row_at(thr_row[0][t], 0.99),
				bn_row_at(thr_row[1][t], 0.5),
				bn_row_at(thr_row[1][t], 0.99));
		fclose(f);
		char body[1024];
		snprintf(body, sizeof(body),
			 "set title 'CPU threads faulting distinct pages at "
			 "once%s (median, bars to p99)'\n"
			 "set xlabel 'CPU threads'\nset ylabel 'faults/s'\n"
			 "set logscale x 2\nset xtics (1, 2, 4, 8)\n"
			 "set xrange [0.8:10]\nset yrange [0:*]\n"
			 "set key bottom right\n"
			 "plot '%s' u 1:2:3:2 w yerrorlines t '1 handler thread', "
			 "'' u 1:4:5:4 w yerrorlines t '2 handler threads'\n",
			 place ? ", handlers on the other CPU" : "", path);
		bn_plot(place ? "scale_split" : "scale", body);
	}
	ret = 0;
out:
	atomic_store(&job.quit, true);
	for (int i = 0; i < MAXT; i++)
		if (w[i].started) {
			sem_post(&w[i].go);
			pthread_join(w[i].t, NULL);
			sem_destroy(&w[i].go);
		}
	sem_destroy(&job.done);
	for (int h = 0; h < NH; h++) {
		if (!ctx[h])
			continue;
		bn_drv_detach(&drv[h]);
		if (region[h])
			dxm_free(ctx[h], region[h]);
		dxm_ctx_destroy(ctx[h]);
	}
	free(dev);
	bn_place_end(place);
	return ret;
}

/*
 * Two passes: FREE (the scheduler places every thread) and SPLIT (handler
 * threads on one CPU, the CPU threads on the other: a handler with a core
 * of its own).  SAME is left out: with every thread on one CPU nothing can
 * run in parallel.
 */
int bn_run_scale(void)
{
	int ret = scale_pass(BN_PLACE_FREE);
	if (!ret && bn_place_ok(BN_PLACE_SPLIT))
		ret = scale_pass(BN_PLACE_SPLIT);
	return ret;
}
