// SPDX-License-Identifier: MIT
/*
 * dxm stress: the device threads.  Device d drives mirror d (the reference
 * device: non-atomic increments under exclusive access, exclusive
 * conversions, ordinary reads) and a small instrumented driver of its own,
 * the watcher, written on the public API like the mirror:
 *
 *   the watcher takes 1..4 pages exclusive with the sequence protocol, and
 *   under its own lock, while its invalidate callback has not cleared a
 *   page, checks that
 *     - no CPU view maps the page (/proc/self/pagemap present bit: the
 *       kernel's view, not dxm's bookkeeping),
 *     - dxm_check_exclusive still says the page is the device's,
 *     - the counter word it last wrote through the device-side address is
 *       unchanged (no CPU access or other device completed meanwhile),
 *   then does a non-atomic increment through the device-side address.
 *   Any access after its callback returned would be a bug in the watcher;
 *   any of these checks failing is a bug in dxm.
 *
 * The probe does the pagemap check for the mirror itself, without its
 * lock: mirror stats (entries_erased) read before and after, and the
 * mirror's own check_exclusive before and after the pagemap read; if the
 * mirror held the page the whole time, no view may map it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stress_int.h"

struct st_watcher {
	struct st_worker *w;
	pthread_mutex_t lock;
	struct dxm_notifier *opn; /* over the range of the current round */
	int nh;
	struct {
		bool held;	  /* until the callback clears it (lock) */
		uintptr_t va;	  /* CPU address in the round's view */
		volatile uint64_t *dev; /* device-side address of the page */
		void *devpage;
		size_t page, word;
		uint64_t expect;  /* what the word holds after our increment */
	} h[ST_WATCH_MAX];
	uint64_t callbacks, cleared;
};

static bool watch_cb(struct dxm_notifier *n, const struct dxm_range *r,
		     unsigned long seq)
{
	struct st_watcher *wa = dxm_notifier_priv(n);
	if (r->event == DXM_EVENT_EXCLUSIVE && r->owner == wa)
		return true; /* our own conversion */
	pthread_mutex_lock(&wa->lock);
	dxm_notifier_set_seq(n, seq);
	wa->callbacks++;
	for (int i = 0; i < wa->nh; i++)
		if (wa->h[i].held && wa->h[i].va >= (uintptr_t)r->start &&
		    wa->h[i].va < (uintptr_t)r->end) {
			wa->h[i].held = false;
			wa->cleared++;
		}
	pthread_mutex_unlock(&wa->lock);
	return true;
}

static const struct dxm_notifier_ops watch_ops = { .invalidate = watch_cb };

int st_watcher_create(struct st_worker *w)
{
	struct st_watcher *wa = calloc(1, sizeof(*wa));
	if (!wa)
		return -ENOMEM;
	wa->w = w;
	pthread_mutex_init(&wa->lock, NULL);
	w->watcher = wa;
	return 0;
}

void st_watcher_destroy(struct st_worker *w)
{
	struct st_watcher *wa = w->watcher;
	if (!wa)
		return;
	if (wa->opn)
		dxm_notifier_remove(wa->opn);
	pthread_mutex_destroy(&wa->lock);
	free(wa);
	w->watcher = NULL;
}

/* For the dump: read without the lock (a hang may hold it). */
void st_watcher_dump(struct st_worker *w)
{
	struct st_watcher *wa = w->watcher;
	if (!wa)
		return;
	fprintf(stderr, "  watcher of dev%d: callbacks %llu, pages cleared %llu,"
			" round of %d page(s):",
		w->dev, (unsigned long long)wa->callbacks,
		(unsigned long long)wa->cleared, wa->nh);
	for (int i = 0; i < wa->nh; i++)
		fprintf(stderr, " [%#lx page %zu %s]", (unsigned long)wa->h[i].va,
			wa->h[i].page, wa->h[i].held ? "held" : "released");
	fprintf(stderr, "\n");
}

/* Whether w's watcher believes it holds the page at CPU address va (its
 * invalidate callback has not cleared it).  locked: take the watcher's
 * lock; else read without it (the dump: a hang may hold it). */
bool st_watcher_holds(struct st_worker *w, const void *va, bool locked)
{
	struct st_watcher *wa = w->watcher;
	bool held = false;
	if (!wa)
		return false;
	if (locked)
		pthread_mutex_lock(&wa->lock);
	for (int i = 0; i < wa->nh && i < ST_WATCH_MAX; i++)
		if (wa->h[i].held && wa->h[i].va == (uintptr_t)va)
			held = true;
	if (locked)
		pthread_mutex_unlock(&wa->lock);
	return held;
}

static inline void pause_a_bit(void)
{
	for (int i = 0; i < 32; i++) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#else
		__asm__ __volatile__("" ::: "memory");
#endif
	}
}

/* The checks and an increment on every page still held (wa->lock held). */
static void watch_check(struct st_worker *w, struct st_watcher *wa,
			struct st_region *r, const char *phase, bool again)
{
	for (int i = 0; i < wa->nh && !st_stopping(); i++) {
		if (!wa->h[i].held)
			continue;
		size_t p = wa->h[i].page;
		int bad = -1;
		st_op_step(w, "watcher: pagemap check");
		if (!st_views_absent(r, p, &bad)) {
			atomic_fetch_add(&st.pagemap_violations, 1);
			st_fail("dev%d watcher (%s): region %d (gen %u, %s) page "
				"%zu is mapped in CPU view %d at %p while the "
				"device holds it and its invalidate callback "
				"has not run",
				w->dev, phase, r->idx, r->gen,
				r->kind == ST_ANON ? "adopted" : "memfd", p, bad,
				(void *)(r->view[bad] + p * st.ps));
			return;
		}
		st_count(w, OP_PAGEMAP, 1);
		void *d = wa->h[i].devpage;
		if (!dxm_check_exclusive(st.ctx, (void *)wa->h[i].va, st.ps,
					 &d)) {
			atomic_fetch_add(&st.watcher_stale, 1);
			st_fail("dev%d watcher (%s): dxm_check_exclusive(%#lx) "
				"is false while the device holds the page "
				"(its invalidate callback has not run): a device "
				"access now would be after dxm took the page",
				w->dev, phase, (unsigned long)wa->h[i].va);
			return;
		}
		volatile uint64_t *dw = wa->h[i].dev;
		uint64_t x = *dw;
		if (again && x != wa->h[i].expect) {
			atomic_fetch_add(&st.watcher_changed, 1);
			st_fail("dev%d watcher (%s): region %d (gen %u, %s) page "
				"%zu counter %zu changed from %llu to %llu while "
				"the device held the page exclusive: a CPU access "
				"or another device completed meanwhile",
				w->dev, phase, r->idx, r->gen,
				r->kind == ST_ANON ? "adopted" : "memfd", p,
				wa->h[i].word,
				(unsigned long long)wa->h[i].expect,
				(unsigned long long)x);
			return;
		}
		/* The non-atomic device increment. */
		pause_a_bit();
		*dw = x + 1;
		wa->h[i].expect = x + 1;
		st_expect_inc(r, w->idx, p, wa->h[i].word);
		st_count(w, OP_WATCH_INC, 1);
	}
}

static void op_watch(struct st_worker *w)
{
	struct st_watcher *wa = w->watcher;
	st_op_begin(w, "watch");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	size_t max = r->npages < ST_WATCH_MAX ? r->npages : ST_WATCH_MAX;
	size_t n = 1 + st_rnd(w, (unsigned)max);
	size_t a = st_rnd(w, (unsigned)(r->npages - n + 1));
	int v = st_pick_view(w, r, a, n, PROT_READ | PROT_WRITE);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)a);
	char *addr = r->view[v] + a * st.ps;
	size_t len = n * st.ps;
	st_op_step(w, "watcher: dxm_notifier_insert");
	int err = dxm_notifier_insert(st.ctx, addr, len, &watch_ops, wa,
				      &wa->opn);
	if (err) {
		st_fail("dxm_notifier_insert: %s", strerror(-err));
		goto unlock;
	}
	void *dev[ST_WATCH_MAX];
	bool got_any = false;
	for (int tries = 0; tries < 100 && !st_stopping(); tries++) {
		st_op_step(w, "watcher: dxm_notifier_read_begin");
		unsigned long seq = dxm_notifier_read_begin(wa->opn);
		st_op_step(w, "watcher: dxm_make_exclusive");
		long got = dxm_make_exclusive(st.ctx, addr, len, wa, dev);
		if (got != (long)n) {
			st_fail("dxm_make_exclusive(%p, %zu pages) of region %d "
				"view %d: %ld (%s)",
				(void *)addr, n, r->idx, v, got,
				got < 0 ? strerror((int)-got) : "wrong count");
			break;
		}
		/* The device-side addresses, for the state reports: for
		 * adopted memory no one else can tell them (staging). */
		for (size_t i = 0; i < n; i++)
			if (dev[i])
				atomic_store_explicit(&r->xdev[a + i], dev[i],
						      memory_order_relaxed);
		st_op_step(w, "watcher: lock");
		pthread_mutex_lock(&wa->lock);
		if (dxm_notifier_read_retry(wa->opn, seq)) {
			pthread_mutex_unlock(&wa->lock);
			st_op_step(w, "watcher: dxm_exclusive_unlock (retry)");
			dxm_exclusive_unlock(st.ctx, addr, len, dev);
			continue;
		}
		wa->nh = (int)n;
		for (size_t i = 0; i < n; i++) {
			wa->h[i].held = dev[i] != NULL;
			wa->h[i].va = (uintptr_t)addr + i * st.ps;
			wa->h[i].devpage = dev[i];
			wa->h[i].page = a + i;
			wa->h[i].word = st_rnd(w, ST_NCNT);
			wa->h[i].dev = dev[i] ? (volatile uint64_t *)dev[i] +
							wa->h[i].word
					      : NULL;
			got_any |= dev[i] != NULL;
		}
		/* LOCKED: a CPU access waits until the unlock. */
		watch_check(w, wa, r, "locked", false);
		pthread_mutex_unlock(&wa->lock);
		st_op_step(w, "watcher: dxm_exclusive_unlock");
		dxm_exclusive_unlock(st.ctx, addr, len, dev);
		break;
	}
	if (got_any) {
		st_count(w, OP_WATCH, 1);
		/* EXCLUSIVE: let the CPU and the other devices in, then check
		 * again what is still ours. */
		for (int round = 0; round < 2 && !st_stopping(); round++) {
			if (st_rnd(w, 2))
				st_sleep_us(1 + st_rnd(w, 100));
			else
				sched_yield();
			st_op_step(w, "watcher: lock");
			pthread_mutex_lock(&wa->lock);
			watch_check(w, wa, r, "exclusive", true);
			pthread_mutex_unlock(&wa->lock);
		}
	}
	st_op_step(w, "watcher: dxm_notifier_remove");
	dxm_notifier_remove(wa->opn);
	pthread_mutex_lock(&wa->lock);
	wa->opn = NULL;
	wa->nh = 0;
	pthread_mutex_unlock(&wa->lock);
unlock:
	st_release(r);
out:
	st_op_end(w);
}

static void op_probe(struct st_worker *w, struct dxm_mirror *m)
{
	st_op_begin(w, "probe");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	size_t p = st_rnd(w, (unsigned)r->npages);
	int v = st_pick_view(w, r, p, 1, PROT_READ | PROT_WRITE);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)p);
	char *addr = r->view[v] + p * st.ps;
	st_op_step(w, "probe: dxm_mirror_exclusive");
	int err = dxm_mirror_exclusive(m, addr, st.ps);
	if (err && err != -EBUSY) {
		st_fail("dxm_mirror_exclusive(%p): %s", (void *)addr,
			strerror(-err));
		goto unlock;
	}
	for (int k = 0; k < 4 && !st_stopping(); k++) {
		struct dxm_mirror_stats s1, s2;
		int bad = -1;
		st_op_step(w, "probe: check");
		dxm_mirror_get_stats(m, &s1);
		long c1 = dxm_mirror_check_exclusive(m, addr, st.ps);
		bool absent = st_views_absent(r, p, &bad);
		long c2 = dxm_mirror_check_exclusive(m, addr, st.ps);
		dxm_mirror_get_stats(m, &s2);
		if (c1 == 1 && c2 == 1 &&
		    s1.entries_erased == s2.entries_erased) {
			st_count(w, OP_PROBE, 1);
			if (!absent) {
				atomic_fetch_add(&st.pagemap_violations, 1);
				st_fail("mirror %d held region %d (gen %u, %s) "
					"page %zu exclusive the whole time, yet "
					"CPU view %d maps it",
					w->dev, r->idx, r->gen,
					r->kind == ST_ANON ? "adopted" : "memfd",
					p, bad);
				break;
			}
		}
		sched_yield();
	}
unlock:
	st_release(r);
out:
	st_op_end(w);
}

static void op_dev_atomic(struct st_worker *w, struct dxm_mirror *m)
{
	st_op_begin(w, "dev-atomic");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	unsigned k = 1 + st_rnd(w, 16), n = 0;
	for (unsigned i = 0; i < k && !st_stopping(); i++) {
		size_t p = st_rnd(w, (unsigned)r->npages);
		int v = st_pick_view(w, r, p, 1, PROT_READ | PROT_WRITE);
		if (v < 0)
			continue;
		size_t word = st_rnd(w, ST_NCNT);
		uint64_t *addr = (uint64_t *)(r->view[v] + p * st.ps) + word;
		st_op_where(w, r->idx, (int)p);
		st_op_step(w, "dxm_mirror_atomic_add");
		int err = dxm_mirror_atomic_add(m, addr, 1, NULL);
		if (err) {
			st_fail("dxm_mirror_atomic_add(%p) (region %d view %d "
				"page %zu): %s",
				(void *)addr, r->idx, v, p, strerror(-err));
			break;
		}
		st_expect_inc(r, w->idx, p, word);
		n++;
	}
	st_count(w, OP_DEV_ATOMIC, n);
	st_release(r);
out:
	st_op_end(w);
}

static void op_dev_excl(struct st_worker *w, struct dxm_mirror *m)
{
	st_op_begin(w, "dev-exclusive");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	size_t n = 1 + st_rnd(w, (unsigned)r->npages);
	size_t a = st_rnd(w, (unsigned)(r->npages - n + 1));
	int v = st_pick_view(w, r, a, n, PROT_READ | PROT_WRITE);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)a);
	st_op_step(w, "dxm_mirror_exclusive");
	int err = dxm_mirror_exclusive(m, r->view[v] + a * st.ps, n * st.ps);
	if (err == 0)
		st_count(w, OP_DEV_EXCL, 1);
	else if (err == -EBUSY)
		st_count(w, OP_DEV_BUSY, 1);
	else
		st_fail("dxm_mirror_exclusive(%p, %zu pages) (region %d view "
			"%d): %s",
			(void *)(r->view[v] + a * st.ps), n, r->idx, v,
			strerror(-err));
unlock:
	st_release(r);
out:
	st_op_end(w);
}

static void op_dev_read(struct st_worker *w, struct dxm_mirror *m,
			uint64_t *buf)
{
	st_op_begin(w, "dev-read");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	if (r->kind == ST_ANON && !st_enabled(F_DEV_READ_ANON))
		goto unlock;
	size_t p = st_rnd(w, (unsigned)r->npages);
	int v = st_pick_view(w, r, p, 1, PROT_READ);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)p);
	uint64_t lo[ST_NCNT], hi[ST_NCNT];
	st_op_step(w, "data lock");
	pthread_mutex_lock(&r->dlock[p]);
	st_expect_sum(r, p, lo);
	st_op_step(w, "dxm_mirror_read");
	int err = dxm_mirror_read(m, r->view[v] + p * st.ps, buf, st.ps);
	st_expect_sum(r, p, hi);
	if (err)
		st_fail("dxm_mirror_read(%p) (region %d, %s, view %d page %zu): "
			"%s",
			(void *)(r->view[v] + p * st.ps), r->idx,
			r->kind == ST_ANON ? "adopted" : "memfd", v, p,
			strerror(-err));
	else if (st_bounds_check("device read", r, p, lo, buf, hi) &&
		 st_data_check(w, "device read", r, p, buf + ST_NCNT))
		st_count(w, OP_DEV_READ, 1);
	pthread_mutex_unlock(&r->dlock[p]);
unlock:
	st_release(r);
out:
	st_op_end(w);
}

void *st_device_main(void *arg)
{
	struct st_worker *w = arg;
	atomic_store(&w->tid, (int)gettid());
	struct dxm_mirror *m = st.mirror[w->dev];
	uint64_t *buf = malloc(st.ps);
	if (!buf) {
		st_fail("out of memory");
		return NULL;
	}
	while (!st_stopping()) {
		unsigned x = st_rnd(w, 1000);
		if (x < 450) {
			if (st_enabled(F_DEV_ATOMIC))
				op_dev_atomic(w, m);
		} else if (x < 570) {
			if (st_enabled(F_DEV_EXCL))
				op_dev_excl(w, m);
		} else if (x < 670) {
			if (st_enabled(F_DEV_READ))
				op_dev_read(w, m, buf);
		} else if (x < 870) {
			if (st_enabled(F_WATCH))
				op_watch(w);
		} else if (x < 970) {
			if (st_enabled(F_PROBE))
				op_probe(w, m);
		} else {
			sched_yield();
		}
	}
	free(buf);
	return NULL;
}
