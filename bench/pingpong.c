// SPDX-License-Identifier: MIT
/*
 * Ping-pong: the device takes pages exclusive and does an atomic on each,
 * then the CPU touches them (and takes them back); one round trip per page.
 *
 *   dxm <mode>        the reference device: dxm_mirror_atomic_add() (which
 *                     takes the page exclusive when it does not hold it),
 *                     then a CPU atomic add on the page, which faults and
 *                     makes the mirror's notifier erase its entry.  The
 *                     512-page burst takes the whole range with one
 *                     dxm_mirror_exclusive() call, does one atomic per page,
 *                     then the CPU touches the 512 pages one after another.
 *   mprotect+SIGSEGV  the same device engine (lock, load, 32 pauses,
 *                     store) on a second, never-protected view of the
 *                     memfd; the device takes pages with mprotect(PROT_NONE)
 *                     of the CPU view; the CPU touch raises SIGSEGV, the
 *                     handler clears the device's "held" flag and
 *                     mprotect()s the page back.
 *
 * Both run in one thread, as a runtime does (launch, then read the
 * result).  The figure is page round trips per second, in each thread
 * placement (FREE, SAME, SPLIT: harness.h).
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

#define BURST 512
#define BLOCK 16

struct mpdev {
	char *cpu, *dev;
	size_t npages;
	int fd;
	atomic_uchar *held;
	pthread_mutex_t lock;
};

static int mpdev_init(struct mpdev *d, size_t npages)
{
	memset(d, 0, sizeof(*d));
	d->fd = -1;
	d->npages = npages;
	pthread_mutex_init(&d->lock, NULL);
	void *p;
	int err = bn_memfd_map(npages * bn_psize, &d->fd, &p);
	if (err)
		return err;
	d->cpu = p;
	d->dev = mmap(NULL, npages * bn_psize, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_POPULATE, d->fd, 0);
	d->held = calloc(npages, sizeof(*d->held));
	if (d->dev == MAP_FAILED || !d->held)
		return -ENOMEM;
	return bn_mp_watch(d->cpu, npages * bn_psize, d->held);
}

static void mpdev_fini(struct mpdev *d)
{
	if (d->cpu) {
		bn_mp_unwatch(d->cpu);
		munmap(d->cpu, d->npages * bn_psize);
	}
	if (d->dev && d->dev != MAP_FAILED)
		munmap(d->dev, d->npages * bn_psize);
	if (d->fd >= 0)
		close(d->fd);
	free(d->held);
	pthread_mutex_destroy(&d->lock);
}

static int mpdev_take(struct mpdev *d, size_t first, size_t n)
{
	if (mprotect(d->cpu + first * bn_psize, n * bn_psize, PROT_NONE))
		return -errno;
	for (size_t i = 0; i < n; i++)
		atomic_store(&d->held[first + i], 1);
	return 0;
}

static int mpdev_atomic(struct mpdev *d, size_t pg)
{
	for (;;) {
		pthread_mutex_lock(&d->lock);
		if (atomic_load(&d->held[pg])) {
			bn_rmw((uint64_t *)(d->dev + pg * bn_psize), 1);
			pthread_mutex_unlock(&d->lock);
			return 0;
		}
		pthread_mutex_unlock(&d->lock);
		int err = mpdev_take(d, pg, 1);
		if (err)
			return err;
	}
}

enum { MP, NFIX };

struct pmeth {
	char name[40];
	const struct bn_dxm_mode *mode; /* NULL: mprotect */
	struct dxm_ctx *ctx;
	struct dxm_mirror *mirror;
	char *one, *many;		/* dxm regions */
	struct mpdev mp_one, mp_many;	/* mprotect */
	uint64_t iters_one, iters_many;
	struct bn_series *s_one, *s_many;
	int row_one, row_many;
};

static int pm_setup(struct pmeth *m)
{
	if (!m->mode) {
		int err = mpdev_init(&m->mp_one, 1);
		if (!err)
			err = mpdev_init(&m->mp_many, BURST);
		return err;
	}
	void *a, *b;
	int err = bn_ctx(&m->ctx, m->mode->flags, 0);
	if (!err)
		err = dxm_mirror_create(m->ctx, &m->mirror);
	if (!err)
		err = dxm_alloc(m->ctx, bn_psize, 0, &a);
	if (err)
		return err;
	m->one = a;
	err = dxm_alloc(m->ctx, BURST * bn_psize, 0, &b);
	if (!err)
		m->many = b;
	return err;
}

static void pm_teardown(struct pmeth *m)
{
	if (!m->mode) {
		mpdev_fini(&m->mp_one);
		mpdev_fini(&m->mp_many);
		return;
	}
	if (m->mirror)
		dxm_mirror_destroy(m->mirror);
	if (m->one)
		dxm_free(m->ctx, m->one);
	if (m->many)
		dxm_free(m->ctx, m->many);
	if (m->ctx)
		dxm_ctx_destroy(m->ctx);
}

static int one_trip(struct pmeth *m)
{
	char *p;
	if (m->mode) {
		p = m->one;
		int err = dxm_mirror_atomic_add(m->mirror, (uint64_t *)p, 1,
						NULL);
		if (err)
			return err;
	} else {
		p = m->mp_one.cpu;
		int err = mpdev_atomic(&m->mp_one, 0);
		if (err)
			return err;
	}
	bn_touch(p);
	m->iters_one++;
	return 0;
}

static int burst(struct pmeth *m)
{
	char *p;
	if (m->mode) {
		p = m->many;
		int err = dxm_mirror_exclusive(m->mirror, p, BURST * bn_psize);
		if (err)
			return err;
		for (size_t i = 0; i < BURST; i++) {
			err = dxm_mirror_atomic_add(
				m->mirror, (uint64_t *)(p + i * bn_psize), 1,
				NULL);
			if (err)
				return err;
		}
	} else {
		p = m->mp_many.cpu;
		int err = mpdev_take(&m->mp_many, 0, BURST);
		for (size_t i = 0; i < BURST && !err; i++)
			err = mpdev_atomic(&m->mp_many, i);
		if (err)
			return err;
	}
	for (size_t i = 0; i < BURST; i++)
		bn_touch(p + i * bn_psize);
	m->iters_many++;
	return 0;
}

static bool check_pages(char *p, size_t npages, uint64_t iters)
{
	for (size_t i = 0; i < npages; i++)
		if (*(volatile uint64_t *)(p + i * bn_psize) != 2 * iters)
			return false;
	return true;
}

static int pingpong_pass(enum bn_place place)
{
	const size_t n = NFIX + bn_n_dxm_modes;
	char fig_one[40], fig_many[40];
	snprintf(fig_one, sizeof(fig_one), "1 page%s", bn_place_suffix[place]);
	snprintf(fig_many, sizeof(fig_many), "512-page burst%s",
		 bn_place_suffix[place]);
	struct pmeth *meth = calloc(n, sizeof(*meth));
	int ret = -1;
	if (!meth)
		return -1;
	snprintf(meth[MP].name, sizeof(meth[MP].name), "mprotect+SIGSEGV");
	for (size_t i = 0; i < bn_n_dxm_modes; i++) {
		meth[NFIX + i].mode = &bn_dxm_modes[i];
		snprintf(meth[NFIX + i].name, sizeof(meth[0].name),
			 "dxm %s (mirror)", bn_dxm_modes[i].name);
	}
	if (bn_place_handlers(place))
		goto out;
	for (size_t i = 0; i < n; i++) {
		meth[i].mp_one.fd = meth[i].mp_many.fd = -1;
		int err = pm_setup(&meth[i]);
		if (err) {
			fprintf(stderr, "bench: ping-pong setup (%s): %s\n",
				meth[i].name, strerror(-err));
			goto out;
		}
	}
	if (bn_place_main(place))
		goto out;
	for (size_t i = 0; i < n; i++) {
		struct pmeth *m = &meth[i];
		m->s_one = bn_series_new("pingpong", fig_one, m->name, 1);
		m->s_many = bn_series_new("pingpong", fig_many, m->name, BURST);
		if (!m->s_one || !m->s_many)
			goto out;
	}
	for (size_t i = 0; i < n; i++)
		meth[i].row_one = bn_row(meth[i].s_one, BN_RATE, 1,
					 "round trips/s",
					 i ? meth[MP].row_one : -1);
	for (size_t i = 0; i < n; i++)
		meth[i].row_many = bn_row(meth[i].s_many, BN_RATE, BURST,
					  "round trips/s",
					  i ? meth[MP].row_many : -1);

	size_t rounds = bn_n(250, 25), rounds_many = bn_n(60, 6);
	for (size_t r = 0; r < rounds; r++)
		for (size_t k = 0; k < n; k++) {
			struct pmeth *m = &meth[(k + r) % n];
			for (int j = 0; j < BLOCK; j++) {
				uint64_t t0 = bn_now();
				int err = one_trip(m);
				uint64_t t1 = bn_now();
				BN_CHECK(!err, "ping-pong (%s): %s", m->name,
					 strerror(-err));
				bn_add(m->s_one, (double)(t1 - t0));
			}
			if (m->mode && m->mode->settle_us)
				usleep(m->mode->settle_us);
		}
	for (size_t r = 0; r < rounds_many; r++)
		for (size_t k = 0; k < n; k++) {
			struct pmeth *m = &meth[(k + r) % n];
			uint64_t t0 = bn_now();
			int err = burst(m);
			uint64_t t1 = bn_now();
			BN_CHECK(!err, "ping-pong burst (%s): %s", m->name,
				 strerror(-err));
			bn_add(m->s_many, (double)(t1 - t0));
			if (m->mode && m->mode->settle_us)
				usleep(m->mode->settle_us);
		}

	/* Each round trip added 1 on the device and 1 on the CPU, none lost. */
	for (size_t i = 0; i < n; i++) {
		struct pmeth *m = &meth[i];
		char *one = m->mode ? m->one : m->mp_one.cpu;
		char *many = m->mode ? m->many : m->mp_many.cpu;
		BN_CHECK(check_pages(one, 1, m->iters_one) &&
				 check_pages(many, BURST, m->iters_many),
			 "ping-pong (%s): lost updates", m->name);
		if (m->mirror) {
			struct dxm_mirror_stats st;
			dxm_mirror_get_stats(m->mirror, &st);
			BN_CHECK(st.stale_accesses == 0,
				 "ping-pong (%s): %lu stale device accesses",
				 m->name, (unsigned long)st.stale_accesses);
		}
	}
	ret = 0;
out:
	for (size_t i = 0; i < n; i++)
		pm_teardown(&meth[i]);
	bn_place_end(place);
	free(meth);
	return ret;
}

/* One pass per placement (harness.h), FREE first. */
int bn_run_pingpong(void)
{
	for (int p = 0; p < BN_NPLACE; p++) {
		if (!bn_place_ok((enum bn_place)p))
			continue;
		int ret = pingpong_pass((enum bn_place)p);
		if (ret)
			return ret;
	}
	return 0;
}
