// SPDX-License-Identifier: MIT
/*
 * B4 sequence protocol: dxm_notifier_read_begin / read_retry / set_seq
 * behave like the kernel's mmu_interval_notifier: no invalidation between
 * begin and retry -> retry is false; any invalidation overlapping the
 * notifier in between -> true; non-overlapping invalidations do not call
 * it; read_begin waits for a running invalidation that already invalidated
 * the notifier; removal waits for a running callback; the callback's range
 * is clipped to the notifier's interval.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

/* A test on a context and len bytes of *kind memory (common.h), also on
 * huge pages (name_huge). */
#define KIND_TEST(name, len)                                                   \
	MEM_TEST_HUGE_OF(b4_seq, MEM_KINDS_PARAMS, name, len, .timeout = 30)

/* Wait (bounded) until *flag is set. */
static bool wait_flag(atomic_bool *flag, unsigned ms)
{
	uint64_t end = now_ms() + ms;
	while (!atomic_load(flag)) {
		if (now_ms() > end)
			return false;
		sleep_ms(1);
	}
	return true;
}

static size_t events_of(struct recorder *r, enum dxm_event ev,
			uintptr_t *start, uintptr_t *end)
{
	size_t k = 0;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrec; i++)
		if (r->rec[i].event == ev) {
			if (k == 0) {
				*start = r->rec[i].start;
				*end = r->rec[i].end;
			}
			k++;
		}
	pthread_mutex_unlock(&r->lock);
	return k;
}

/* Make [p, p+len) exclusive and unlocked. */
static void exclusive(struct dxm_ctx *ctx, void *p, size_t len,
		      const void *owner)
{
	void *dev[16];
	cr_assert_leq(len / PS, 16);
	cr_assert_eq(dxm_make_exclusive(ctx, p, len, owner, dev),
		     (long)(len / PS));
	for (size_t i = 0; i < len / PS; i++)
		cr_assert_not_null(dev[i]);
	dxm_exclusive_unlock(ctx, p, len, dev);
}

/* ------------------------------------------------------ begin / retry */

/* Nothing that invalidates the notifier happens: retry is false (and
 * read_begin is stable). */
KIND_TEST(no_invalidation_no_retry, 4 * PS)
{
	char *b = m.base;
	static struct recorder rec;
	recorder_insert(ctx, &rec, b, 2 * PS); /* pages 0 and 1 */
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, b, PS, &m, dev), 1);
	dxm_exclusive_unlock(ctx, b, PS, dev);

	unsigned long seq = dxm_notifier_read_begin(rec.n);
	cr_assert_eq(dxm_notifier_read_begin(rec.n), seq);
	size_t calls = rec.count;
	/* The device uses its page; the CPU uses an ordinary page; a page
	 * outside the notifier is converted and given back. */
	((volatile char *)dev[0])[0] = 1;
	cr_assert(dxm_check_exclusive(ctx, b, PS, dev));
	b[PS] = 2;
	(void)*(volatile char *)(b + PS);
	exclusive(ctx, b + 3 * PS, PS, &m);
	(void)*(volatile char *)(b + 3 * PS);
	/* Bringing CPU pages to the CPU invalidates nothing. */
	cr_assert_eq(dxm_range_fault(ctx, b + PS, PS, 0, NULL), 1);
	cr_assert(!dxm_notifier_read_retry(rec.n, seq),
		  "read_retry true although nothing invalidated it");
	cr_assert_eq(rec.count, calls);
	recorder_remove(&rec);
}

/* A CPU touch of an exclusive page (CLEAR). */
KIND_TEST(cpu_touch_retries, 4 * PS)
{
	char *b = m.base;
	static struct recorder rec;
	recorder_insert(ctx, &rec, b, 4 * PS);
	exclusive(ctx, b, 2 * PS, &m);
	unsigned long seq = dxm_notifier_read_begin(rec.n);
	cr_assert(!dxm_notifier_read_retry(rec.n, seq));
	(void)*(volatile char *)(b + PS);
	cr_assert(dxm_notifier_read_retry(rec.n, seq),
		  "a CPU touch of an exclusive page did not invalidate");
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, b + PS));
	/* A new begin is valid again until the next invalidation. */
	seq = dxm_notifier_read_begin(rec.n);
	cr_assert(!dxm_notifier_read_retry(rec.n, seq));
	b[0] = 1;
	cr_assert(dxm_notifier_read_retry(rec.n, seq));
	recorder_remove(&rec);
}

/* dxm_range_fault of an exclusive page (CLEAR through the API). */
KIND_TEST(range_fault_retries, 2 * PS)
{
	static struct recorder rec;
	recorder_insert(ctx, &rec, m.base, 2 * PS);
	exclusive(ctx, m.base, PS, &m);
	unsigned long seq = dxm_notifier_read_begin(rec.n);
	cr_assert_eq(dxm_range_fault(ctx, m.base, 2 * PS, 0, NULL), 2);
	cr_assert(dxm_notifier_read_retry(rec.n, seq));
	cr_assert(page_present(m.base));
	recorder_remove(&rec);
}

/* A make_exclusive by another owner (the recorder ignores its own). */
KIND_TEST(other_owner_conversion_retries, 4 * PS)
{
	char *b = m.base;
	static const int self = 1, other = 2;
	static struct recorder rec;
	recorder_insert_ignoring(ctx, &rec, b, 4 * PS, &self);
	unsigned long seq = dxm_notifier_read_begin(rec.n);
	exclusive(ctx, b, 4 * PS, &self);
	cr_assert(!dxm_notifier_read_retry(rec.n, seq),
		  "its own (filtered) conversion invalidated it");
	exclusive(ctx, b + 2 * PS, PS, &other);
	cr_assert(dxm_notifier_read_retry(rec.n, seq),
		  "another owner's conversion did not invalidate it");
	recorder_remove(&rec);
}

/* dxm_mprotect (PROTECTION). */
KIND_TEST(mprotect_retries, 4 * PS)
{
	char *b = m.base;
	static struct recorder rec;
	recorder_insert(ctx, &rec, b + 2 * PS, 2 * PS);
	unsigned long seq = dxm_notifier_read_begin(rec.n);
	cr_assert_eq(dxm_mprotect(ctx, b + 3 * PS, PS, PROT_READ), 0);
	cr_assert(dxm_notifier_read_retry(rec.n, seq),
		  "dxm_mprotect did not invalidate");
	cr_assert(recorder_saw(&rec, DXM_EVENT_PROTECTION, b + 3 * PS));
	/* Back to read-write: another invalidation. */
	seq = dxm_notifier_read_begin(rec.n);
	cr_assert_eq(dxm_mprotect(ctx, b + 2 * PS, 2 * PS,
				  PROT_READ | PROT_WRITE),
		     0);
	cr_assert(dxm_notifier_read_retry(rec.n, seq));
	/* Outside the notifier: not called, no retry. */
	seq = dxm_notifier_read_begin(rec.n);
	size_t calls = rec.count;
	cr_assert_eq(dxm_mprotect(ctx, b, 2 * PS, PROT_READ), 0);
	cr_assert(!dxm_notifier_read_retry(rec.n, seq));
	cr_assert_eq(rec.count, calls);
	recorder_remove(&rec);
}

/* dxm_free of the view the notifier watches (UNMAP). */
KIND_TEST_HUGE_OF(b4_seq, MEM_KINDS_PARAMS, free_retries, .timeout = 30)
{
	struct mem m;
	struct dxm_ctx *ctx = ctx_mem(*kind, 4 * PS, &m);
	static struct recorder rec;
	recorder_insert(ctx, &rec, m.base, 4 * PS);
	exclusive(ctx, m.base, PS, &m);
	unsigned long seq = dxm_notifier_read_begin(rec.n);
	cr_assert(!dxm_notifier_read_retry(rec.n, seq));
	/* Frees the region (memfd) or only the alias (alias). */
	cr_assert_eq(dxm_free(ctx, m.base), 0);
	cr_assert(dxm_notifier_read_retry(rec.n, seq),
		  "dxm_free did not invalidate");
	uintptr_t s = 0, e = 0;
	cr_assert_geq(events_of(&rec, DXM_EVENT_UNMAP, &s, &e), 1);
	cr_assert_eq(s, (uintptr_t)m.base);
	cr_assert_eq(e, (uintptr_t)m.base + 4 * PS);
	recorder_remove(&rec);
	if (m.region != m.base)
		mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* The callback decides: retry follows dxm_notifier_set_seq, not merely
 * "a callback ran" (a driver may ignore an event). */
struct quiet {
	atomic_int calls;
};

static bool quiet_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			     unsigned long cur_seq)
{
	(void)r;
	(void)cur_seq;
	struct quiet *q = dxm_notifier_priv(n);
	atomic_fetch_add(&q->calls, 1);
	return true;
}

static const struct dxm_notifier_ops quiet_ops = {
	.invalidate = quiet_invalidate
};

KIND_TEST(retry_follows_set_seq, 2 * PS)
{
	static struct quiet q;
	struct dxm_notifier *n;
	cr_assert_eq(dxm_notifier_insert(ctx, m.base, 2 * PS, &quiet_ops, &q,
					 &n),
		     0);
	unsigned long seq = dxm_notifier_read_begin(n);
	exclusive(ctx, m.base, PS, &m);
	(void)*(volatile char *)m.base;
	cr_assert_geq(atomic_load(&q.calls), 2);
	cr_assert(!dxm_notifier_read_retry(n, seq),
		  "read_retry true although the callback never set_seq");
	dxm_notifier_remove(n);
}

/* ------------------------------------------------------- overlapping */

/* Invalidations of pages 0-1 do not call notifiers on pages 2-3, on the
 * page before the region, or on another region. */
KIND_TEST(non_overlapping_not_called, 4 * PS)
{
	struct mem m2;
	mem_setup(ctx, *kind, 4 * PS, &m2);
	char *b = m.base;
	static struct recorder in, after, before, far;
	recorder_insert(ctx, &in, b, 2 * PS);
	recorder_insert(ctx, &after, b + 2 * PS, 2 * PS);
	recorder_insert(ctx, &before, b - PS, PS);
	recorder_insert(ctx, &far, m2.base, 4 * PS);
	struct recorder *out[3] = { &after, &before, &far };
	unsigned long seq[3];
	for (int i = 0; i < 3; i++)
		seq[i] = dxm_notifier_read_begin(out[i]->n);
	unsigned long seq_in = dxm_notifier_read_begin(in.n);

	exclusive(ctx, b, 2 * PS, &m);		 /* EXCLUSIVE */
	(void)*(volatile char *)b;		 /* CLEAR */
	cr_assert_eq(dxm_range_fault(ctx, b, 2 * PS, 0, NULL), 2); /* CLEAR */
	cr_assert_eq(dxm_mprotect(ctx, b, 2 * PS, PROT_READ), 0); /* PROT */
	cr_assert_eq(dxm_mprotect(ctx, b, 2 * PS, PROT_READ | PROT_WRITE), 0);

	cr_assert(dxm_notifier_read_retry(in.n, seq_in));
	cr_assert_geq(recorder_count_event(&in, DXM_EVENT_EXCLUSIVE), 1);
	cr_assert_geq(recorder_count_event(&in, DXM_EVENT_CLEAR), 2);
	cr_assert_geq(recorder_count_event(&in, DXM_EVENT_PROTECTION), 2);
	static const char *names[3] = { "the next pages", "the page before",
					"another region" };
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(out[i]->count, 0,
			     "a notifier on %s was called %zu time(s)",
			     names[i], out[i]->count);
		cr_assert(!dxm_notifier_read_retry(out[i]->n, seq[i]),
			  "a notifier on %s was invalidated", names[i]);
	}
	recorder_remove(&in);
	recorder_remove(&after);
	recorder_remove(&before);
	recorder_remove(&far);
	mem_teardown(&m2);
}

/* The callback's range is the intersection of the invalidated range and
 * the notifier's interval. */
KIND_TEST(range_clipped_to_interval, 8 * PS)
{
	uintptr_t b = (uintptr_t)m.base, s = 0, e = 0;
	static struct recorder rec;
	recorder_insert(ctx, &rec, (void *)(b + 2 * PS), 4 * PS); /* 2..5 */

	exclusive(ctx, m.base, 8 * PS, &m);
	cr_assert_eq(events_of(&rec, DXM_EVENT_EXCLUSIVE, &s, &e), 1);
	cr_assert_eq(s, b + 2 * PS, "start %#lx, want %#lx", (unsigned long)s,
		     (unsigned long)(b + 2 * PS));
	cr_assert_eq(e, b + 6 * PS, "end %#lx, want %#lx", (unsigned long)e,
		     (unsigned long)(b + 6 * PS));
	/* A range that covers only the notifier's head. */
	cr_assert_eq(dxm_range_fault(ctx, m.base, 3 * PS, 0, NULL), 3);
	cr_assert_eq(events_of(&rec, DXM_EVENT_CLEAR, &s, &e), 1);
	cr_assert_eq(s, b + 2 * PS);
	cr_assert_eq(e, b + 3 * PS);
	cr_assert_eq(dxm_mprotect(ctx, m.base, 8 * PS, PROT_READ), 0);
	cr_assert_eq(events_of(&rec, DXM_EVENT_PROTECTION, &s, &e), 1);
	cr_assert_eq(s, b + 2 * PS);
	cr_assert_eq(e, b + 6 * PS);
	/* Every recorded range lies inside the interval. */
	pthread_mutex_lock(&rec.lock);
	for (size_t i = 0; i < rec.nrec; i++) {
		cr_assert_geq(rec.rec[i].start, b + 2 * PS);
		cr_assert_leq(rec.rec[i].end, b + 6 * PS);
		cr_assert_lt(rec.rec[i].start, rec.rec[i].end);
	}
	pthread_mutex_unlock(&rec.lock);
	recorder_remove(&rec);
}

/* ------------------------------------------- a callback that sleeps */

struct slow {
	struct dxm_notifier *n;
	unsigned sleep_ms;	/* on CLEAR events */
	atomic_int calls;
	atomic_bool in_cb;	/* a sleeping CLEAR callback has started */
	atomic_bool cb_done;	/* ... and is about to return */
};

static bool slow_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			    unsigned long cur_seq)
{
	struct slow *s = dxm_notifier_priv(n);
	atomic_fetch_add(&s->calls, 1);
	dxm_notifier_set_seq(n, cur_seq); /* invalidated: then slow */
	if (r->event == DXM_EVENT_CLEAR && s->sleep_ms &&
	    !atomic_load(&s->in_cb)) {
		atomic_store(&s->in_cb, true);
		sleep_ms(s->sleep_ms);
		atomic_store(&s->cb_done, true);
	}
	return true;
}

static const struct dxm_notifier_ops slow_ops = { .invalidate = slow_invalidate };

static void *touch_main(void *arg)
{
	(void)*(volatile char *)arg;
	return NULL;
}

struct waiter {
	struct slow *s;
	struct dxm_notifier *n; /* read_begin on it (NULL: remove s->n) */
	unsigned long seq;
	bool cb_done_at_return;
	uint64_t ms;
};

static void *begin_main(void *arg)
{
	struct waiter *w = arg;
	uint64_t t0 = now_ms();
	w->seq = dxm_notifier_read_begin(w->n);
	w->cb_done_at_return = atomic_load(&w->s->cb_done);
	w->ms = now_ms() - t0;
	return NULL;
}

static void *remove_main(void *arg)
{
	struct waiter *w = arg;
	uint64_t t0 = now_ms();
	dxm_notifier_remove(w->s->n);
	w->cb_done_at_return = atomic_load(&w->s->cb_done);
	w->ms = now_ms() - t0;
	return NULL;
}

/* A notifier over [p, p+len) that calls back into s. */
static void slow_insert(struct dxm_ctx *ctx, struct slow *s, void *p,
			size_t len)
{
	cr_assert_eq(dxm_notifier_insert(ctx, p, len, &slow_ops, s, &s->n), 0);
}

/* Run fn (begin_main: read_begin on n; remove_main: remove s's notifier)
 * in a thread while s's CLEAR callback sleeps; once it returned, it must
 * have waited for the callback to end, or not (waits), else: why. */
static struct waiter *run_waiter(void *(*fn)(void *), struct slow *s,
				 struct dxm_notifier *n, const char *what,
				 bool waits, const char *why)
{
	static struct waiter w;
	w.s = s;
	w.n = n;
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, fn, &w), 0);
	cr_assert(join_within(t, 5000), "%s never returned", what);
	cr_assert_eq(w.cb_done_at_return, waits,
		     "%s returned after %llu ms: %s", what,
		     (unsigned long long)w.ms, why);
	return &w;
}

/* Start a CPU touch of an exclusive page whose CLEAR callback sleeps;
 * return once the callback is running. */
static pthread_t start_slow_clear(struct dxm_ctx *ctx, struct slow *s,
				  char *page)
{
	exclusive(ctx, page, PS, s);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, touch_main, page), 0);
	cr_assert(wait_flag(&s->in_cb, 5000), "the CLEAR callback never ran");
	cr_assert(!atomic_load(&s->cb_done));
	return t;
}

/* The CPU touch completes; then the sequence read_begin returned on n is
 * still valid, and n goes. */
static void touch_done_seq_valid(pthread_t toucher, struct dxm_notifier *n,
				 const struct waiter *w)
{
	cr_assert(join_within(toucher, 5000), "the CPU touch never completed");
	cr_assert(!dxm_notifier_read_retry(n, w->seq),
		  "the sequence read_begin returned is already stale");
	dxm_notifier_remove(n);
}

/* read_begin while an invalidation that already invalidated this notifier
 * still runs: it returns only after the callback returned, with a sequence
 * that is then valid. */
KIND_TEST(read_begin_waits_for_running_invalidation, 2 * PS)
{
	static struct slow s = { .sleep_ms = 200 };
	slow_insert(ctx, &s, m.base, 2 * PS);
	pthread_t toucher = start_slow_clear(ctx, &s, m.base);
	struct waiter *w = run_waiter(begin_main, &s, s.n, "read_begin", true,
				      "the invalidation that invalidated the "
				      "notifier was still running");
	touch_done_seq_valid(toucher, s.n, w);
	cr_assert(page_present(m.base));
}

/* A notifier inserted while an invalidation runs may have missed its
 * callback: its first read_begin waits for that invalidation to end. */
KIND_TEST(read_begin_after_insert_during_invalidation_waits, 2 * PS)
{
	static struct slow s = { .sleep_ms = 200 };
	slow_insert(ctx, &s, m.base, 2 * PS);
	pthread_t toucher = start_slow_clear(ctx, &s, m.base);
	static struct slow late; /* never sleeps */
	slow_insert(ctx, &late, m.base, 2 * PS);
	cr_assert(!atomic_load(&s.cb_done), "the callback ended too soon");
	struct waiter *w = run_waiter(begin_main, &s, late.n, "read_begin",
				      true,
				      "the notifier was inserted during an "
				      "invalidation that had not ended");
	touch_done_seq_valid(toucher, late.n, w);
	dxm_notifier_remove(s.n);
}

/* A notifier that the running invalidation does not cover is not held up
 * by it. */
KIND_TEST(read_begin_not_held_by_unrelated_invalidation, 4 * PS)
{
	static struct slow s = { .sleep_ms = 1000 };
	slow_insert(ctx, &s, m.base, PS);
	static struct slow other; /* never sleeps */
	slow_insert(ctx, &other, (char *)m.base + 2 * PS, 2 * PS);
	pthread_t toucher = start_slow_clear(ctx, &s, m.base);
	struct waiter *w = run_waiter(begin_main, &s, other.n, "read_begin",
				      false,
				      "an uninvolved notifier waited for "
				      "another notifier's invalidation");
	cr_assert_eq(atomic_load(&other.calls), 0);
	touch_done_seq_valid(toucher, other.n, w);
	dxm_notifier_remove(s.n);
}

/* dxm_notifier_remove waits for a running callback; afterwards no
 * callback runs. */
KIND_TEST(remove_waits_for_running_callback, 2 * PS)
{
	static struct slow s = { .sleep_ms = 200 };
	slow_insert(ctx, &s, m.base, 2 * PS);
	char *b = m.base;
	exclusive(ctx, b + PS, PS, &s); /* for after the removal */
	pthread_t toucher = start_slow_clear(ctx, &s, b);
	run_waiter(remove_main, &s, NULL, "dxm_notifier_remove", true,
		   "its callback was still running");
	cr_assert(join_within(toucher, 5000));
	int calls = atomic_load(&s.calls);
	(void)*(volatile char *)(b + PS); /* CLEAR: nobody to call now */
	exclusive(ctx, b, 2 * PS, &m);
	cr_assert_eq(atomic_load(&s.calls), calls,
		     "a callback ran after dxm_notifier_remove returned");
}

/* --------------------------------------------------------------- priv */

MEMFD_TEST_HUGE_OF(b4_seq, notifier_priv_returns_priv, .timeout = 30)
{
	struct mem m;
	struct dxm_ctx *ctx = ctx_mem(*kind, PS, &m);
	static struct recorder rec;
	recorder_insert(ctx, &rec, m.base, PS);
	cr_assert_eq(dxm_notifier_priv(rec.n), &rec);
	/* The recorder finds itself through priv inside the callback. */
	exclusive(ctx, m.base, PS, &m);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_EXCLUSIVE), 1);

	static int cookie;
	struct dxm_notifier *n1, *n2;
	cr_assert_eq(dxm_notifier_insert(ctx, m.base, PS, &quiet_ops, &cookie,
					 &n1),
		     0);
	cr_assert_eq(dxm_notifier_insert(ctx, m.base, PS, &quiet_ops, NULL,
					 &n2),
		     0);
	cr_assert_eq(dxm_notifier_priv(n1), &cookie);
	cr_assert_null(dxm_notifier_priv(n2));
	cr_assert_null(dxm_notifier_priv(NULL));
	dxm_notifier_remove(n1);
	dxm_notifier_remove(n2);
	recorder_remove(&rec);
	mem_done(&m);
}

/* ------------------------------------------ many views, many pieces */

/* A region with many CPU views: a notifier on any of them is invalidated
 * by a conversion and by a CPU touch through another view. */
MEMFD_TEST_HUGE_OF(b4_seq, every_alias_notified, .timeout = 30)
{
	struct mem m;
	struct dxm_ctx *ctx = ctx_mem(*kind, PS, &m);
	enum { NALIAS = 40 };
	static void *alias[NALIAS];
	for (int i = 0; i < NALIAS; i++)
		cr_assert_eq(dxm_alias(ctx, m.region, &alias[i]), 0);
	static struct recorder first, last;
	recorder_insert(ctx, &first, m.region, PS); /* the dxm_alloc view */
	recorder_insert(ctx, &last, alias[NALIAS - 1], PS);
	unsigned long s1 = dxm_notifier_read_begin(first.n);
	unsigned long s2 = dxm_notifier_read_begin(last.n);
	exclusive(ctx, alias[NALIAS / 2], PS, &m);
	cr_assert(recorder_saw(&first, DXM_EVENT_EXCLUSIVE, m.region),
		  "a conversion through an alias did not notify the "
		  "dxm_alloc view (%d aliases)",
		  NALIAS);
	cr_assert(recorder_saw(&last, DXM_EVENT_EXCLUSIVE, alias[NALIAS - 1]));
	cr_assert(dxm_notifier_read_retry(first.n, s1));
	cr_assert(dxm_notifier_read_retry(last.n, s2));
	for (int i = 0; i < NALIAS; i++)
		cr_assert(!page_present(alias[i]), "alias %d still mapped", i);
	cr_assert(!page_present(m.region));

	s1 = dxm_notifier_read_begin(first.n);
	(void)*(volatile char *)alias[3];
	cr_assert(recorder_saw(&first, DXM_EVENT_CLEAR, m.region),
		  "a CPU touch through an alias did not notify the dxm_alloc "
		  "view");
	cr_assert(recorder_saw(&last, DXM_EVENT_CLEAR, alias[NALIAS - 1]));
	cr_assert(dxm_notifier_read_retry(first.n, s1));
	recorder_remove(&first);
	recorder_remove(&last);
	mem_done(&m);
}

/* One view split into many pieces by dxm_mprotect (split pieces are not
 * merged again): a conversion and a dxm_range_fault of the whole range
 * still invalidate a notifier on any page. */
enum { NP_MAX = 64 };
/* Pieces: 64, or 16 huge pages (32 MiB of the pool). */
#define NP (PS == BASE_PS ? (size_t)NP_MAX : (size_t)16)

KIND_TEST(every_view_piece_notified, NP * PS)
{
	char *b = m.base;
	for (size_t i = 0; i < NP; i++) {
		cr_assert_eq(dxm_mprotect(ctx, b + i * PS, PS, PROT_READ), 0);
		cr_assert_eq(dxm_mprotect(ctx, b + i * PS, PS,
					  PROT_READ | PROT_WRITE),
			     0);
	}
	static struct recorder head, mid, tail;
	recorder_insert(ctx, &head, b, PS);
	recorder_insert(ctx, &mid, b + NP / 2 * PS, PS);
	recorder_insert(ctx, &tail, b + (NP - 1) * PS, PS);
	struct recorder *rs[3] = { &head, &mid, &tail };
	static const char *names[3] = { "first", "middle", "last" };
	unsigned long seq[3];
	for (int i = 0; i < 3; i++)
		seq[i] = dxm_notifier_read_begin(rs[i]->n);

	static void *dev[NP_MAX];
	cr_assert_eq(dxm_make_exclusive(ctx, b, NP * PS, &m, dev), (long)NP);
	dxm_exclusive_unlock(ctx, b, NP * PS, dev);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(recorder_count_event(rs[i], DXM_EVENT_EXCLUSIVE),
			     1,
			     "the notifier on the %s page missed the "
			     "conversion of %zu view pieces",
			     names[i], NP);
		cr_assert(dxm_notifier_read_retry(rs[i]->n, seq[i]));
		seq[i] = dxm_notifier_read_begin(rs[i]->n);
	}
	cr_assert_eq(pages_present(b, NP * PS), 0);

	cr_assert_eq(dxm_range_fault(ctx, b, NP * PS, 0, NULL), (long)NP);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(recorder_count_event(rs[i], DXM_EVENT_CLEAR), 1,
			     "the notifier on the %s page was not told that "
			     "dxm_range_fault took it back",
			     names[i]);
		cr_assert(dxm_notifier_read_retry(rs[i]->n, seq[i]));
	}
	for (int i = 0; i < 3; i++)
		recorder_remove(rs[i]);
}
