// SPDX-License-Identifier: MIT
/*
 * B10 contention: many CPU threads and several devices hammering the same
 * pages: no lost update, no device access after its invalidation returned,
 * no CPU mapping while a device holds a page, no deadlock, progress for both
 * sides.
 */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

/* Each test also runs on huge pages (name_huge, common.h). */
#define KIND_TEST(name)                                                        \
	KIND_TEST_HUGE_OF(b10_contention, MEM_KINDS_PARAMS, name, .timeout = 60)
/* A test on dxm_alloc memory (test_alloc): MEM_MEMFD, and huge pages. */
#define MEMFD_TEST(name) MEMFD_TEST_HUGE_OF(b10_contention, name, .timeout = 60)

/* contend() (common.c): CPU threads and devices on the same counters. */
KIND_TEST(cpu_and_one_device_no_lost_update)
{
	contend(NULL, *kind, 2, 1, 20000);
}

KIND_TEST(many_cpus_three_devices)
{
	contend(NULL, *kind, 4, 3, 5000);
}

MEMFD_TEST(two_handler_threads)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 2 };
	contend(&o, *kind, 4, 2, 5000);
}

/*
 * No CPU mapping while a device holds a page, checked from the kernel's
 * side: a device that took a page exclusive checks, under its own lock and
 * before its invalidate callback ran, that /proc/self/pagemap shows the
 * page absent in every view, while CPU threads hammer it.
 */
struct watcher {
	struct dxm_ctx *ctx;
	struct dxm_notifier *n;
	pthread_mutex_t lock;
	bool held;	  /* the device holds the page (under lock) */
	void *views[2];
	atomic_int stop;
	unsigned long checks, violations, late;
};

static bool watcher_invalidate(struct dxm_notifier *n,
			       const struct dxm_range *r, unsigned long seq)
{
	struct watcher *w = dxm_notifier_priv(n);
	if (r->event == DXM_EVENT_EXCLUSIVE && r->owner == w)
		return true;
	pthread_mutex_lock(&w->lock);
	dxm_notifier_set_seq(n, seq);
	w->held = false;
	pthread_mutex_unlock(&w->lock);
	return true;
}

static const struct dxm_notifier_ops watcher_ops = {
	.invalidate = watcher_invalidate
};

static void *toucher(void *arg)
{
	struct watcher *w = arg;
	unsigned long i = 0;
	while (!atomic_load(&w->stop))
		__atomic_fetch_add((uint64_t *)w->views[i++ & 1], 1,
				   __ATOMIC_SEQ_CST);
	return NULL;
}

MEMFD_TEST(no_cpu_mapping_while_device_holds_page)
{
	struct watcher w = { 0 };
	w.ctx = ctx_or_skip(NULL);
	pthread_mutex_init(&w.lock, NULL);
	w.views[0] = test_alloc(w.ctx, PS);
	cr_assert_eq(dxm_alias(w.ctx, w.views[0], &w.views[1]), 0);
	cr_assert_eq(dxm_notifier_insert(w.ctx, w.views[0], PS, &watcher_ops,
					 &w, &w.n),
		     0);
	struct dxm_notifier *n2;
	cr_assert_eq(dxm_notifier_insert(w.ctx, w.views[1], PS, &watcher_ops,
					 &w, &n2),
		     0);
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, toucher, &w);

	for (int round = 0; round < 2000; round++) {
		void *dev;
		unsigned long seq = dxm_notifier_read_begin(w.n);
		long r = dxm_make_exclusive(w.ctx, w.views[0], PS, &w, &dev);
		cr_assert_eq(r, 1);
		pthread_mutex_lock(&w.lock);
		if (dev && !dxm_notifier_read_retry(w.n, seq)) {
			w.held = true;
			/* The CPU cannot have a mapping in any view now. */
			w.checks++;
			if (page_present(w.views[0]) ||
			    page_present(w.views[1]))
				w.violations++;
			(*(volatile uint64_t *)dev)++;
		}
		pthread_mutex_unlock(&w.lock);
		if (dev)
			dxm_exclusive_unlock(w.ctx, w.views[0], PS, &dev);
		/* Let the CPU in, and check again while still held. */
		usleep(20);
		pthread_mutex_lock(&w.lock);
		if (w.held) {
			w.checks++;
			if (page_present(w.views[0]) ||
			    page_present(w.views[1]))
				w.violations++;
		}
		pthread_mutex_unlock(&w.lock);
	}
	atomic_store(&w.stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	cr_assert_gt(w.checks, 1000);
	cr_assert_eq(w.violations, 0,
		     "%lu of %lu checks found a CPU mapping while the device "
		     "held the page",
		     w.violations, w.checks);
	dxm_notifier_remove(w.n);
	dxm_notifier_remove(n2);
	cr_assert_eq(dxm_free(w.ctx, w.views[0]), 0);
	dxm_ctx_destroy(w.ctx);
}

/* Forward progress for the device: while CPU threads hammer every page of
 * a range, repeated dxm_mirror_exclusive calls of the whole range succeed
 * in bounded time. */
MEMFD_TEST(device_makes_progress_under_cpu_load)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct watcher w = { 0 };
	void *p = test_alloc(ctx, 4 * PS);
	w.views[0] = p;
	w.views[1] = (char *)p + 3 * PS;
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, toucher, &w);
	struct dxm_mirror *m = mirror_create(ctx);
	unsigned ok = 0;
	for (int i = 0; i < 200; i++) {
		int err = dxm_mirror_exclusive(m, p, 4 * PS);
		cr_assert(err == 0 || err == -EBUSY, "%s", strerror(-err));
		ok += err == 0;
	}
	atomic_store(&w.stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	cr_assert_gt(ok, 0, "the device never got the whole range");
	dxm_mirror_destroy(m);
	cr_assert_eq(dxm_free(ctx, p), 0);
	dxm_ctx_destroy(ctx);
}
