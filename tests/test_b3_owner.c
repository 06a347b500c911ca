// SPDX-License-Identifier: MIT
/*
 * B3 owner filter: conversions notify DXM_EVENT_EXCLUSIVE with the
 * converting owner, so a driver can ignore its own conversions; one that
 * does makes progress in nouveau's retry loop (read_begin -> make_exclusive
 * -> lock -> read_retry), one that does not would retry forever.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

/* A test on a context and len bytes of *kind memory (common.h), also on
 * huge pages (name_huge). */
#define MEM_TEST(name, len)                                                    \
	MEM_TEST_HUGE_OF(b3_owner, MEM_KINDS_PARAMS, name, len, .timeout = 30)

/* The recorded EXCLUSIVE events: how many, and how many by `owner` that
 * exactly cover [start, end). */
static size_t count_exclusive(struct recorder *r, const void *owner,
			      const void *start, const void *end,
			      size_t *exact)
{
	size_t k = 0, x = 0;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrec; i++) {
		struct rec_event *e = &r->rec[i];
		if (e->event != DXM_EVENT_EXCLUSIVE || e->owner != owner)
			continue;
		k++;
		x += e->start == (uintptr_t)start && e->end == (uintptr_t)end;
	}
	pthread_mutex_unlock(&r->lock);
	if (exact)
		*exact = x;
	return k;
}

/* --------------------------------------------------------------------- */

/* A conversion notifies DXM_EVENT_EXCLUSIVE with the converting owner,
 * for the converted pages, in every view; a later conversion by another
 * owner (takeover) carries that owner. */
MEM_TEST(exclusive_event_carries_owner, 8 * PS)
{
	char *b = m.base;
	static struct recorder rec, rec_region;
	recorder_insert(ctx, &rec, b, 8 * PS);
	if (m.region != m.base)
		recorder_insert(ctx, &rec_region, m.region, 8 * PS);
	static const int x = 1, y = 2;
	void *dev[4];

	cr_assert_eq(dxm_make_exclusive(ctx, b + 2 * PS, 4 * PS, &x, dev), 4);
	size_t exact = 0;
	cr_assert_eq(count_exclusive(&rec, &x, b + 2 * PS, b + 6 * PS, &exact),
		     1, "want one EXCLUSIVE event carrying owner x");
	cr_assert_eq(exact, 1, "the event does not cover the pages exactly");
	cr_assert_eq(count_exclusive(&rec, NULL, NULL, NULL, NULL), 0,
		     "an EXCLUSIVE event without its owner");
	if (m.region != m.base) {
		cr_assert_eq(count_exclusive(&rec_region, &x,
					     (char *)m.region + 2 * PS,
					     (char *)m.region + 6 * PS, &exact),
			     1, "the other view was not told");
		cr_assert_eq(exact, 1);
	}
	dxm_exclusive_unlock(ctx, b + 2 * PS, 4 * PS, dev);

	/* y takes two of the pages over. */
	cr_assert_eq(dxm_make_exclusive(ctx, b + 4 * PS, 2 * PS, &y, dev), 2);
	cr_assert_eq(count_exclusive(&rec, &y, b + 4 * PS, b + 6 * PS, &exact),
		     1);
	cr_assert_eq(exact, 1);
	cr_assert_eq(count_exclusive(&rec, &x, NULL, NULL, NULL), 1);
	dxm_exclusive_unlock(ctx, b + 4 * PS, 2 * PS, dev);

	/* Other events never carry an owner. */
	(void)*(volatile char *)(b + 4 * PS);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, b + 4 * PS));
	pthread_mutex_lock(&rec.lock);
	for (size_t i = 0; i < rec.nrec; i++)
		if (rec.rec[i].event != DXM_EVENT_EXCLUSIVE)
			cr_assert_null(rec.rec[i].owner);
	pthread_mutex_unlock(&rec.lock);
	recorder_remove(&rec);
	if (m.region != m.base)
		recorder_remove(&rec_region);
}

/* A recorder that ignores owner x is called for x's conversions but does
 * not record them (nor move its sequence); it records y's. */
MEM_TEST(recorder_ignores_its_own_owner, 4 * PS)
{
	static struct recorder rec;
	static const int x = 1, y = 2;
	char *b = m.base;
	recorder_insert_ignoring(ctx, &rec, b, 4 * PS, &x);
	void *dev[4];

	unsigned long seq = dxm_notifier_read_begin(rec.n);
	cr_assert_eq(dxm_make_exclusive(ctx, b, 2 * PS, &x, dev), 2);
	cr_assert_geq(rec.count, 1, "the notifier was not called for x");
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_EXCLUSIVE), 0,
		     "its own conversion was recorded");
	cr_assert(!dxm_notifier_read_retry(rec.n, seq),
		  "its own conversion invalidated it");
	dxm_exclusive_unlock(ctx, b, 2 * PS, dev);

	size_t calls = rec.count;
	cr_assert_eq(dxm_make_exclusive(ctx, b + 2 * PS, 2 * PS, &y, dev), 2);
	cr_assert_gt(rec.count, calls);
	cr_assert_eq(count_exclusive(&rec, &y, b + 2 * PS, b + 4 * PS, NULL),
		     1, "y's conversion was not recorded");
	cr_assert(recorder_saw(&rec, DXM_EVENT_EXCLUSIVE, b + 2 * PS));
	cr_assert(!recorder_saw(&rec, DXM_EVENT_EXCLUSIVE, b));
	cr_assert(dxm_notifier_read_retry(rec.n, seq),
		  "another owner's conversion did not invalidate it");
	dxm_exclusive_unlock(ctx, b + 2 * PS, 2 * PS, dev);
	recorder_remove(&rec);
}

/* ------------------------------------------------- a filtering driver */

struct mirror_job {
	struct dxm_mirror *mir;
	void *addr;
	size_t len;
	int rounds;
	int err;
	atomic_bool done;
};

static void *mirror_job_main(void *arg)
{
	struct mirror_job *j = arg;
	for (int i = 0; i < j->rounds && !j->err; i++) {
		j->err = dxm_mirror_exclusive(j->mir, j->addr, j->len);
		/* The CPU takes one page back before the next round. */
		if (!j->err)
			(void)*(volatile char *)((char *)j->addr +
						 (size_t)i % (j->len / PS) * PS);
	}
	atomic_store(&j->done, true);
	return NULL;
}

/* The mirror follows nouveau's loop and filters its own owner: each call
 * returns 0 in bounded time with no retry, and the device really holds the
 * pages. */
MEM_TEST(filtering_driver_makes_progress, 16 * PS)
{
	const size_t n = m.len / PS;
	fill_index(m.base, n * PS, 0);
	struct dxm_mirror *mir = mirror_create(ctx);

	static struct mirror_job j;
	j.mir = mir;
	j.addr = m.base;
	j.len = n * PS;
	j.rounds = 50;
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, mirror_job_main, &j), 0);
	cr_assert(join_within(t, 10000),
		  "dxm_mirror_exclusive did not return: the retry loop "
		  "livelocks");
	cr_assert_eq(j.err, 0, "dxm_mirror_exclusive: %s", strerror(-j.err));

	struct dxm_mirror_stats st;
	dxm_mirror_get_stats(mir, &st);
	cr_assert_eq(st.exclusive_calls, 50,
		     "%llu make_exclusive calls for 50 rounds",
		     (unsigned long long)st.exclusive_calls);
	cr_assert_eq(st.exclusive_retries, 0,
		     "%llu retries with nobody else around",
		     (unsigned long long)st.exclusive_retries);

	/* Once more: the device holds every page (and the CPU none). */
	cr_assert_eq(dxm_mirror_exclusive(mir, m.base, n * PS), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(mir, m.base, n * PS), (long)n);
	cr_assert_eq(pages_present(m.base, n * PS), 0);
	uint64_t *w = (uint64_t *)((char *)m.base + 3 * PS);
	uint64_t old = 0;
	cr_assert_eq(dxm_mirror_atomic_add(mir, w, 10, &old), 0);
	cr_assert_eq(old, 3 * PS / 8);
	cr_assert_eq(*(volatile uint64_t *)w, 3 * PS / 8 + 10);
	cr_assert_eq(dxm_mirror_check_exclusive(mir, (char *)m.base + 3 * PS,
						PS),
		     0, "the CPU access did not take the page from the mirror");
	dxm_mirror_get_stats(mir, &st);
	cr_assert_eq(st.stale_accesses, 0);
	dxm_mirror_destroy(mir);
}

/* ------------------------------------- a driver that does not filter */

/* The driver is a recorder (common.c): it filters its own conversions
 * when its ignore_owner is itself, the owner it converts with. */

/* One round of nouveau's loop; true if read_retry said "again". */
static bool drv_round(struct dxm_ctx *ctx, struct recorder *d, void *addr,
		      size_t len, void **dev)
{
	unsigned long seq = dxm_notifier_read_begin(d->n);
	long got = dxm_make_exclusive(ctx, addr, len, d, dev);
	cr_assert_eq(got, (long)(len / PS));
	pthread_mutex_lock(&d->lock);
	bool retry = dxm_notifier_read_retry(d->n, seq);
	pthread_mutex_unlock(&d->lock);
	dxm_exclusive_unlock(ctx, addr, len, dev);
	return retry;
}

/* Without the filter, a driver's own conversion invalidates it: read_retry
 * is true after every make_exclusive, so its loop never ends.  With the
 * filter, the same loop succeeds at once. */
MEM_TEST(unfiltered_driver_sees_retry, 4 * PS)
{
	static struct recorder d; /* no filter */
	recorder_insert(ctx, &d, m.base, 4 * PS);
	void *dev[4];
	int retries = 0;
	for (int i = 0; i < 20; i++)
		retries += drv_round(ctx, &d, m.base, 4 * PS, dev);
	cr_assert_eq(retries, 20,
		     "an unfiltered driver saw read_retry false after its own "
		     "conversion (%d of 20 retried)",
		     retries);
	cr_assert_geq(d.count, 20);

	d.ignore_owner = &d; /* the filter */
	size_t calls = d.count;
	cr_assert(!drv_round(ctx, &d, m.base, 4 * PS, dev),
		  "a filtering driver must not retry on its own conversion");
	cr_assert_gt(d.count, calls, "the filter hid nothing: no call");
	recorder_remove(&d);
}

/* Filtering its own owner does not make a driver deaf: another owner's
 * conversion of its pages still invalidates it, and a CPU touch too. */
MEM_TEST(filtering_driver_sees_other_owners, 4 * PS)
{
	static struct recorder d;
	recorder_insert_ignoring(ctx, &d, m.base, 4 * PS, &d);
	static const int other = 7;
	void *dev[4];
	unsigned long seq = dxm_notifier_read_begin(d.n);
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, 4 * PS, &d, dev), 4);
	cr_assert(!dxm_notifier_read_retry(d.n, seq));
	dxm_exclusive_unlock(ctx, m.base, 4 * PS, dev);
	cr_assert_eq(dxm_make_exclusive(ctx, (char *)m.base + PS, PS, &other,
					dev),
		     1);
	cr_assert(dxm_notifier_read_retry(d.n, seq),
		  "another owner's conversion did not invalidate the driver");
	dxm_exclusive_unlock(ctx, (char *)m.base + PS, PS, dev);

	seq = dxm_notifier_read_begin(d.n);
	cr_assert(!dxm_notifier_read_retry(d.n, seq));
	(void)*(volatile char *)m.base; /* still the driver's: CLEAR */
	cr_assert(dxm_notifier_read_retry(d.n, seq),
		  "a CPU touch did not invalidate the driver");
	recorder_remove(&d);
}
