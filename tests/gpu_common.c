// SPDX-License-Identifier: MIT
/*
 * The test bodies test_vulkan.c and test_cuda.c share (gpu_common.h).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "gpu_common.h"

const uint32_t gpu_groups[3] = { (NCOUNTERS + 63) / 64, 1, 1 };

uint32_t *gpu_mem(struct gpu_fix *f, enum mem_kind kind, size_t len)
{
	mem_setup(f->ctx, kind, len, &f->m);
	memset(f->m.base, 0, len);
	return f->m.base;
}

void gpu_teardown(struct gpu_fix *f)
{
	f->b->destroy(f); /* waits for the device's runaway work */
	if (f->m.len)
		mem_teardown(&f->m);
	dxm_ctx_destroy(f->ctx);
}

/* ------------------------------------------------------------ the CPU */

static void *hammer_fn(void *arg)
{
	struct hammer_thread *me = arg;
	struct hammer *h = me->h;
	unsigned long n[NCOUNTERS] = { 0 };
	while (!atomic_load(&h->stop))
		for (unsigned i = me->idx; i < NCOUNTERS; i += CPU_THREADS) {
			__atomic_fetch_add(&h->c[i * STRIDE], 1,
					   __ATOMIC_SEQ_CST);
			n[i]++;
		}
	for (unsigned i = me->idx; i < NCOUNTERS; i += CPU_THREADS)
		h->cpu[i] = n[i];
	return NULL;
}

void hammer_start(struct hammer *h, uint32_t *c)
{
	memset(h, 0, sizeof(*h));
	h->c = c;
	for (unsigned i = 0; i < CPU_THREADS; i++) {
		h->th[i].h = h;
		h->th[i].idx = i;
		cr_assert_eq(
			pthread_create(&h->th[i].t, NULL, hammer_fn, &h->th[i]),
			0);
	}
}

unsigned long hammer_stop(struct hammer *h)
{
	atomic_store(&h->stop, true);
	for (unsigned i = 0; i < CPU_THREADS; i++)
		cr_assert_eq(pthread_join(h->th[i].t, NULL), 0);
	unsigned long n = 0;
	for (unsigned i = 0; i < NCOUNTERS; i++)
		n += h->cpu[i];
	return n;
}

int64_t tally(const uint32_t *c, const struct hammer *h, uint64_t dev,
	      unsigned *gained)
{
	int64_t lost = 0;
	*gained = 0;
	for (unsigned i = 0; i < NCOUNTERS; i++) {
		uint64_t want = h->cpu[i] + dev, got = c[i * STRIDE];
		if (got > want && (*gained)++ < 4)
			cr_log_error("counter %u: %llu, more than the %lu CPU "
				     "and %llu device increments made",
				     i, (unsigned long long)got, h->cpu[i],
				     (unsigned long long)dev);
		lost += (int64_t)want - (int64_t)got;
	}
	return lost;
}

/* ---------------------------------------------------------- the bodies */

int64_t gpu_unmanaged_rounds(struct gpu_fix *f, void *k, const char *what)
{
	size_t len = 2 * PS;
	uint32_t *c = (uint32_t *)anon_map(len);
	struct gpu_args a = { NCOUNTERS, STRIDE, 60000, 1 };
	int64_t lost = 0;
	for (int round = 0; round < 5 && !lost; round++) {
		memset(c, 0, len);
		struct hammer h;
		hammer_start(&h, c);
		sleep_ms(5);
		uint64_t t;
		int err =
			f->b->dispatch(f, k, c, len, &a, gpu_groups, true, &t);
		cr_assert_eq(err, 0, "dispatch: %s", strerror(-err));
		cr_assert_eq(f->b->wait(f, t, 120ull * 1000000000ull), 0);
		unsigned long cpu = hammer_stop(&h);
		unsigned gained;
		lost = tally(c, &h, a.iters, &gained);
		cr_log_info("%s, round %d: %lu CPU increments, %llu device: "
			    "%lld lost",
			    what, round, cpu,
			    (unsigned long long)NCOUNTERS * a.iters,
			    (long long)lost);
		cr_assert_eq(gained, 0, "%u counters hold more than was made",
			     gained);
	}
	munmap(c, len);
	return lost;
}

void gpu_no_lost_updates(struct gpu_fix *f, enum mem_kind kind)
{
	uint32_t *c = f->m.base;
	size_t len = f->m.len;
	struct gpu_args a = { NCOUNTERS, STRIDE, 20000, 1 };
	unsigned rounds = 20;
	struct hammer h;
	hammer_start(&h, c);
	uint64_t t = 0;
	for (unsigned i = 0; i < rounds; i++) {
		int err = f->b->dispatch(f, f->rmw, c, len, &a, gpu_groups,
					 false, &t);
		cr_assert_eq(err, 0, "dispatch %u: %s", i, strerror(-err));
		sleep_ms(2);
	}
	cr_assert_eq(f->b->wait(f, t, 120ull * 1000000000ull), 0);
	sleep_ms(20);
	unsigned long cpu = hammer_stop(&h);
	unsigned gained;
	int64_t lost =
		tally(c, &h, (uint64_t)rounds * a.iters * a.delta, &gained);
	struct gpu_stats st;
	f->b->stats(f, &st);
	cr_log_info("%s: %lu CPU increments, %u dispatches (%llu retries, "
		    "%llu busy), %llu invalidations waited %.1f ms",
		    mem_kind_name[kind], cpu, rounds,
		    (unsigned long long)st.retries,
		    (unsigned long long)st.busy_retries,
		    (unsigned long long)st.invalidations,
		    st.invalidate_wait_ns / 1e6);
	cr_assert_eq(gained, 0, "%s: %u counters hold more than was made",
		     mem_kind_name[kind], gained);
	cr_assert_eq(lost, 0, "%s: %lld updates lost", mem_kind_name[kind],
		     (long long)lost);
	cr_assert_eq(st.dispatches, rounds);
	cr_assert(!st.lost);
}

void gpu_cpu_access_waits(struct gpu_fix *f, enum mem_kind kind, uint32_t many,
			  uint32_t iters)
{
	uint32_t *c = f->m.base;
	size_t len = f->m.len;
	struct gpu_args a = { many, STRIDE, iters, 3 };
	const uint32_t g[3] = { many / 64, 1, 1 };
	uint64_t t;
	int err = f->b->dispatch(f, f->rmw, c, len, &a, g, false, &t);
	cr_assert_eq(err, 0, "dispatch: %s", strerror(-err));
	int busy = f->b->done(f, t) == 0;
	cr_assert_eq(pages_present(f->m.base, len), 0,
		     "a CPU view maps a page under device work");
	if (kind == MEM_ALIAS)
		cr_assert_eq(pages_present(f->m.region, len), 0);
	/* The last counter: the last one the device gets to. */
	uint32_t v = __atomic_load_n(&c[(many - 1) * STRIDE], __ATOMIC_SEQ_CST);
	cr_assert_eq(v, a.iters * a.delta, "saw %u of %u", v,
		     a.iters * a.delta);
	cr_assert_eq(f->b->done(f, t), 1, "the access did not wait");
	for (uint32_t i = 0; i < many; i++)
		cr_assert_eq(c[i * STRIDE], a.iters * a.delta, "counter %u", i);
	struct gpu_stats st;
	f->b->stats(f, &st);
	cr_log_info("%s: work %s in flight at the access; %llu "
		    "invalidation(s) waited %.1f ms",
		    mem_kind_name[kind], busy ? "was" : "was no longer",
		    (unsigned long long)st.invalidations,
		    st.invalidate_wait_ns / 1e6);
	if (busy)
		cr_assert_geq(st.invalidations, 1);
}

void gpu_lost_device(struct gpu_fix *f, size_t len, const struct gpu_args *a,
		     const uint32_t groups[3], bool may_finish)
{
	uint32_t *c = f->m.base;
	uint64_t t;
	cr_assert_eq(f->b->dispatch(f, f->rmw, c, len, a, groups, false, &t),
		     0);
	if (f->b->done(f, t) == 1)
		cr_skip_test("SKIP: the device finished before the CPU "
			     "touched the page");
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	(void)*(volatile uint32_t *)c;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) +
		   (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	struct gpu_stats st;
	f->b->stats(f, &st);
	cr_log_info("the CPU access took %.3f s", s);
	if (may_finish && !st.lost && f->b->done(f, t) == 1)
		cr_skip_test("SKIP: the device finished within the timeout "
			     "(%.3f s)",
			     s);
	cr_assert(st.lost, "not declared lost after %.3f s", s);
	cr_assert_lt(s, 30.0);
	uint64_t t2;
	cr_assert_eq(f->b->dispatch(f, f->rmw, c, len, a, groups, false, &t2),
		     -ENODEV);
	cr_assert_eq(f->b->wait(f, t, 0), -ENODEV);
}
