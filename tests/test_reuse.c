// SPDX-License-Identifier: MIT
/*
 * Addresses reused after a munmap.  The kernel frees a munmap's addresses
 * before it queues the UNMAP event, and the munmap returns once a handler
 * has read it; dxm tells the devices after that.  Meanwhile the program
 * (or dxm itself) may map something new at the same addresses.  These
 * tests hold the handler thread inside a notifier callback to open those
 * windows wide and check that:
 *  - a new view never lands where a dead view's event is unread (it would
 *    be torn down by that event);
 *  - a new view is returned only after the devices were told about the
 *    old mapping at its address (DXM_EVENT_UNMAP);
 *  - dxm_adopt of a range the program unmapped and mapped again succeeds;
 *  - a fault deferred on a freed region is not taken, later, for a
 *    device's access to a staging area that reuses the address.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

#define WAIT_MS 5000

/* ------------------------------------------------------------ a blocker */

/* A notifier whose callback, for one event, blocks until released: it
 * holds the handler thread that runs it. */
static struct blocker {
	struct dxm_notifier *n;
	enum dxm_event event;
	pthread_mutex_t mtx;
	pthread_cond_t cond;
	atomic_bool entered, released;
	atomic_ulong unmap_seen_ms; /* when an UNMAP reached it (0: never) */
} blk = { .mtx = PTHREAD_MUTEX_INITIALIZER,
	  .cond = PTHREAD_COND_INITIALIZER };

static bool blk_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long seq)
{
	(void)n;
	(void)seq;
	if (r->event == DXM_EVENT_UNMAP && !atomic_load(&blk.unmap_seen_ms))
		atomic_store(&blk.unmap_seen_ms, now_ms());
	if (r->event != blk.event)
		return true;
	pthread_mutex_lock(&blk.mtx);
	atomic_store(&blk.entered, true);
	while (!atomic_load(&blk.released))
		pthread_cond_wait(&blk.cond, &blk.mtx);
	pthread_mutex_unlock(&blk.mtx);
	return true;
}

static const struct dxm_notifier_ops blk_ops = { .invalidate = blk_invalidate };

static void blk_insert(struct dxm_ctx *ctx, void *start, size_t len,
		       enum dxm_event ev)
{
	blk.event = ev;
	cr_assert_eq(dxm_notifier_insert(ctx, start, len, &blk_ops, NULL,
					 &blk.n),
		     0);
}

static void blk_release(void)
{
	pthread_mutex_lock(&blk.mtx);
	atomic_store(&blk.released, true);
	pthread_cond_broadcast(&blk.cond);
	pthread_mutex_unlock(&blk.mtx);
}

/* Hold the only handler thread in blk's DXM_EVENT_CLEAR callback: make a
 * page of region d exclusive, then touch it from another thread. */
static void *touch(void *p)
{
	(void)*(volatile char *)p;
	return NULL;
}

static pthread_t hold_handler(struct dxm_ctx *ctx, char *d)
{
	blk_insert(ctx, d, PS, DXM_EVENT_CLEAR);
	void *dev;
	cr_assert_eq(dxm_make_exclusive(ctx, d, PS, NULL, &dev), 1);
	dxm_exclusive_unlock(ctx, d, PS, &dev);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, touch, d), 0);
	cr_assert(WAIT_FOR(atomic_load(&blk.entered), WAIT_MS),
		  "the handler never ran the callback");
	return t;
}

struct unmapper {
	atomic_bool done; /* munmap returned */
	void *p;
	size_t len;
};

static void *do_munmap(void *arg)
{
	struct unmapper *u = arg;
	munmap(u->p, u->len);
	atomic_store(&u->done, true);
	return NULL;
}

static bool mapped(void *p)
{
	return msync(p, PS, MS_ASYNC) == 0 || errno != ENOMEM;
}

static struct dxm_ctx *one_handler_ctx(void)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 1 };
	return ctx_or_skip(&o);
}

/* ------------------------------------------------------------- the tests */

/*
 * The handler is held, so the UNMAP event of view b stays unread while
 * the kernel already gave b's addresses back.  A new region must not be
 * placed there: once the event is read it would tear the new view down.
 */
Test(reuse, new_view_avoids_a_dead_view_whose_event_is_unread, .timeout = 60)
{
	struct dxm_ctx *ctx = one_handler_ctx();
	const size_t len = 16 * PS;
	char *d, *e, *b;
	cr_assert_eq(dxm_alloc(ctx, PS, 0, (void **)&d), 0);
	cr_assert_eq(dxm_alloc(ctx, len, 0, (void **)&e), 0);
	cr_assert_eq(dxm_alloc(ctx, len, 0, (void **)&b), 0);
	pthread_t t = hold_handler(ctx, d);

	struct unmapper u = { .p = b, .len = len };
	pthread_t tu;
	cr_assert_eq(pthread_create(&tu, NULL, do_munmap, &u), 0);
	cr_assert(WAIT_FOR(!mapped(b), WAIT_MS), "munmap did not unmap");
	cr_assert(!atomic_load(&u.done), "munmap returned with no handler");

	/* Where would the kernel put a new mapping of that size? */
	void *probe = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	cr_assert_neq(probe, MAP_FAILED);
	munmap(probe, len);
	/* An alias is one new mapping (dxm_alloc makes two: the device
	 * view, which may take the address harmlessly, and the CPU view). */
	char *c;
	cr_assert_eq(dxm_alias(ctx, e, (void **)&c), 0);
	cr_log_info("dead view %p, kernel's choice %p, new view %p", b, probe,
		    c);
	if (probe != b)
		cr_log_info("the kernel would not reuse %p: the check is "
			    "weaker",
			    b);
	cr_assert(c + len <= b || b + len <= c,
		  "new view %p overlaps the dead view %p", c, b);

	blk_release();
	pthread_join(t, NULL);
	pthread_join(tu, NULL);
	cr_assert(u.done);
	memset(c, 0x5a, len);
	/* The stale event was applied; the new view is intact. */
	void *dev[16];
	cr_assert_eq(dxm_make_exclusive(ctx, c, len, NULL, dev), 16);
	dxm_exclusive_unlock(ctx, c, len, dev);
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(e[i], 0x5a);
	cr_assert_eq(dxm_free(ctx, e), 0);
	dxm_notifier_remove(blk.n);
	dxm_ctx_destroy(ctx);
}

struct allocer {
	struct dxm_ctx *ctx;
	void *e;
	void *p;
	int err;
	atomic_ulong done_ms;
};

static void *do_alloc(void *arg)
{
	struct allocer *a = arg;
	a->err = dxm_alias(a->ctx, a->e, &a->p);
	atomic_store(&a->done_ms, now_ms());
	return NULL;
}

/*
 * The handler is held inside the UNMAP notification of view b (the event
 * was read, so the munmap returned).  A new region that gets b's address
 * must not be returned before that notification is over: a driver keyed
 * by CPU address would otherwise learn of the new mapping first.
 */
Test(reuse, new_view_waits_for_the_unmap_pass_at_its_address, .timeout = 60)
{
	struct dxm_ctx *ctx = one_handler_ctx();
	const size_t len = 16 * PS;
	char *e, *b;
	cr_assert_eq(dxm_alloc(ctx, len, 0, (void **)&e), 0);
	cr_assert_eq(dxm_alloc(ctx, len, 0, (void **)&b), 0);
	blk_insert(ctx, b, len, DXM_EVENT_UNMAP);
	cr_assert_eq(munmap(b, len), 0);
	cr_assert(WAIT_FOR(atomic_load(&blk.entered), WAIT_MS),
		  "no UNMAP notification");

	void *probe = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	cr_assert_neq(probe, MAP_FAILED);
	munmap(probe, len);
	if (probe != b)
		cr_log_info("the kernel would not reuse %p (%p): the check "
			    "below is weaker",
			    b, probe);

	struct allocer a = { .ctx = ctx, .e = e };
	pthread_t ta;
	cr_assert_eq(pthread_create(&ta, NULL, do_alloc, &a), 0);
	sleep_ms(200);
	uint64_t released = now_ms();
	blk_release();
	pthread_join(ta, NULL);
	cr_assert_eq(a.err, 0);
	char *c = a.p;
	if (!(c + len <= b || b + len <= c))
		cr_assert_geq(atomic_load(&a.done_ms), released,
			      "dxm_alias returned %p during the UNMAP pass "
			      "of %p",
			      c, b);
	else
		cr_log_info("the new view %p does not reuse %p: nothing to "
			    "check this time",
			    c, b);
	cr_assert_eq(dxm_free(ctx, e), 0);
	dxm_notifier_remove(blk.n);
	dxm_ctx_destroy(ctx);
}

static void *release_later(void *arg);

static void *anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(p, MAP_FAILED);
	return p;
}

/* A program that unmaps adopted memory and maps the same addresses again
 * may adopt them at once: the munmap has returned, so dxm knows. */
Test(reuse, adopt_right_after_munmap_of_adopted_memory, .timeout = 60)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	const size_t len = 4 * PS;
	char *p = anon(len);
	int err = dxm_adopt(ctx, p, len, 0);
	if (err == -ENOSYS)
		cr_skip_test("dxm_adopt: the kernel lacks UFFDIO_MOVE");
	cr_assert_eq(err, 0);
	for (int i = 0; i < 2000; i++) {
		cr_assert_eq(munmap(p, len), 0);
		char *q = mmap(p, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS |
				       MAP_FIXED_NOREPLACE,
			       -1, 0);
		cr_assert_eq(q, p, "cannot map %p again: %s", p,
			     strerror(errno));
		err = dxm_adopt(ctx, p, len, 0);
		cr_assert_eq(err, 0, "round %d: dxm_adopt: %s", i,
			     strerror(-err));
	}
	/* Adopting live adopted memory again is still refused at once. */
	uint64_t t0 = now_ms();
	cr_assert_eq(dxm_adopt(ctx, p, len, 0), -EEXIST);
	cr_assert_lt(now_ms() - t0, 1000, "-EEXIST took %llu ms",
		     (unsigned long long)(now_ms() - t0));
	cr_assert_eq(dxm_free(ctx, p), 0);
	munmap(p, len);
	dxm_ctx_destroy(ctx);
}

/* The same with the event unread (the handler held): dxm_adopt waits for
 * it instead of failing. */
Test(reuse, adopt_waits_for_an_unread_munmap, .timeout = 60)
{
	struct dxm_ctx *ctx = one_handler_ctx();
	const size_t len = 4 * PS;
	char *d;
	cr_assert_eq(dxm_alloc(ctx, PS, 0, (void **)&d), 0);
	char *p = anon(len);
	int err = dxm_adopt(ctx, p, len, 0);
	if (err == -ENOSYS)
		cr_skip_test("dxm_adopt: the kernel lacks UFFDIO_MOVE");
	cr_assert_eq(err, 0);
	pthread_t t = hold_handler(ctx, d);
	struct unmapper u = { .p = p, .len = len };
	pthread_t tu;
	cr_assert_eq(pthread_create(&tu, NULL, do_munmap, &u), 0);
	cr_assert(WAIT_FOR(!mapped(p), WAIT_MS), "munmap did not unmap");
	char *q = mmap(p, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		       0);
	cr_assert_eq(q, p);
	q[0] = 7;
	pthread_t tr;
	cr_assert_eq(pthread_create(&tr, NULL, release_later, NULL), 0);
	cr_assert_eq(dxm_adopt(ctx, q, len, 0), 0);
	pthread_join(tr, NULL);
	pthread_join(t, NULL);
	pthread_join(tu, NULL);
	void *dev[4];
	cr_assert_eq(dxm_make_exclusive(ctx, q, len, NULL, dev), 4);
	dxm_exclusive_unlock(ctx, q, len, dev);
	cr_assert_eq(q[0], 7);
	cr_assert_eq(dxm_free(ctx, q), 0);
	munmap(q, len);
	dxm_notifier_remove(blk.n);
	dxm_ctx_destroy(ctx);
}

static void *release_later(void *arg)
{
	(void)arg;
	sleep_ms(100);
	blk_release();
	return NULL;
}

struct reader {
	int fd;
	void *buf;
	ssize_t got;
	int err;
};

static void *do_read(void *arg)
{
	struct reader *r = arg;
	r->got = read(r->fd, r->buf, 8);
	r->err = errno;
	return NULL;
}

/*
 * A fault deferred on a locked page of region a (a system call's, so that
 * its thread survives a's end), a freed, then a staging area of adopted
 * memory that reuses the faulting address: when the handler finally
 * resolves the deferred fault it must not take it for a device touching
 * that staging page after its invalidation (a driver bug it would report
 * and punish).
 */
Test(reuse, deferred_fault_of_a_freed_region_is_not_a_device_fault,
     .timeout = 60)
{
	struct dxm_ctx *ctx = one_handler_ctx();
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	if (st.uffd_mode == DXM_UFFD_USER_ONLY)
		cr_skip_test("needs a userfaultfd that resolves system calls' "
			     "faults (user-mode-only here)");
	if (!st.uffd_anon_features)
		cr_skip_test("dxm_adopt: the kernel lacks UFFDIO_MOVE");
	const size_t len = 4 * PS;
	char *d, *a;
	cr_assert_eq(dxm_alloc(ctx, PS, 0, (void **)&d), 0);
	cr_assert_eq(dxm_alloc(ctx, len, 0, (void **)&a), 0);

	/* 1. A system call faults on a's locked page: deferred. */
	void *adev[4];
	cr_assert_eq(dxm_make_exclusive(ctx, a, len, NULL, adev), 4);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	cr_assert_eq(write(pfd[1], "12345678", 8), 8);
	struct reader rd = { .fd = pfd[0], .buf = a };
	pthread_t tr;
	cr_assert_eq(pthread_create(&tr, NULL, do_read, &rd), 0);
	cr_assert(WAIT_FOR((dxm_stats(ctx, &st, sizeof(st)),
			    st.deferred_faults >= 1),
			   WAIT_MS));

	/* 2. Hold the handler, release the fault, free a. */
	pthread_t th = hold_handler(ctx, d);
	dxm_exclusive_unlock(ctx, a, len, adev);
	cr_assert_eq(dxm_free(ctx, a), 0);
	pthread_join(tr, NULL); /* woken by the unregister: EFAULT */

	/* 3. Adopt memory until its staging area sits on a's address. */
	char *stage = NULL, *mem[8];
	int n;
	for (n = 0; n < 8 && !stage; n++) {
		mem[n] = anon(len);
		memset(mem[n], 1, len); /* no MISSING fault: handler held */
		cr_assert_eq(dxm_adopt(ctx, mem[n], len, 0), 0);
		void *dev[4];
		cr_assert_eq(dxm_make_exclusive(ctx, mem[n], len, NULL, dev),
			     4);
		dxm_exclusive_unlock(ctx, mem[n], len, dev);
		if (dev[0] == a)
			stage = mem[n];
		/* back to the CPU: a device touch now would be stale */
		cr_assert_eq(dxm_range_fault(ctx, mem[n], len, 0, NULL), 4);
	}
	if (!stage)
		cr_log_info("no staging area reused %p: the check is weaker", a);

	/* 4. The handler resolves the old deferred fault now. */
	blk_release();
	pthread_join(th, NULL);
	sleep_ms(100);
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	cr_assert_eq(st.stale_device_faults, 0,
		     "an old CPU fault was taken for a device's stale access");
	for (int i = 0; i < n; i++) {
		cr_assert_eq(dxm_free(ctx, mem[i]), 0);
		munmap(mem[i], len);
	}
	dxm_notifier_remove(blk.n);
	dxm_ctx_destroy(ctx);
}
