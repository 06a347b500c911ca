// SPDX-License-Identifier: MIT
/*
 * B14 device backends: the Vulkan backend (backends/vulkan) on the Vulkan
 * device present, Mesa's lavapipe in CI.  A compute shader does a
 * read-modify-write of counters as a device without PCIe AtomicOps does
 * over the bus (a load, then a store) while CPU threads increment the same
 * counters atomically: without dxm updates are lost, through the backend
 * none are.  A CPU access to a page under work in flight waits for it and
 * sees all of it; the CPU view is revoked (pagemap) meanwhile; a device
 * that does not finish in time is declared lost without hanging the CPU.
 * Skips with the reason where no Vulkan device can import host memory.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "counter_spv.h"
#include "dxm_vk.h"

#define STRIDE 16 /* 32-bit words between counters: one per cache line */
#define NCOUNTERS 128 /* two pages of counters */
#define CPU_THREADS 2

struct args {
	uint32_t count, stride, iters, delta;
};

static struct dxm_vk *vk_or_skip(struct dxm_ctx *ctx, unsigned timeout_ms)
{
	char why[512] = "";
	struct dxm_vk_opts o = { .sz = sizeof(o),
				 .device = -1,
				 .timeout_ms = timeout_ms,
				 .why = why,
				 .why_len = sizeof(why) };
	struct dxm_vk *vk = NULL;
	int err = dxm_vk_create(ctx, &o, &vk);
	if (err == -ENODEV)
		cr_skip_test("SKIP: %s", why);
	cr_assert_eq(err, 0, "dxm_vk_create: %s (%s)", strerror(-err), why);
	return vk;
}

static struct dxm_vk_kernel *counter_kernel(struct dxm_vk *vk)
{
	struct dxm_vk_kernel *k;
	int err = dxm_vk_kernel_create(vk, dxm_vk_counter_spv,
				       sizeof(dxm_vk_counter_spv),
				       sizeof(struct args), &k);
	cr_assert_eq(err, 0, "dxm_vk_kernel_create: %s", strerror(-err));
	return k;
}

static const uint32_t groups[3] = { (NCOUNTERS + 63) / 64, 1, 1 };

/* A context, the backend on it (vk_or_skip) with the counter kernel, and
 * len bytes of kind memory, zeroed (none for len 0). */
struct vkfix {
	struct dxm_ctx *ctx;
	struct dxm_vk *vk;
	struct dxm_vk_kernel *k;
	struct mem m;
};

static uint32_t *vk_setup(struct vkfix *f, unsigned timeout_ms,
			  enum mem_kind kind, size_t len)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_or_skip(NULL);
	f->vk = vk_or_skip(f->ctx, timeout_ms);
	f->k = counter_kernel(f->vk);
	if (!len)
		return NULL;
	mem_setup(f->ctx, kind, len, &f->m);
	memset(f->m.base, 0, len);
	return f->m.base;
}

static void vk_teardown(struct vkfix *f)
{
	dxm_vk_kernel_destroy(f->k);
	dxm_vk_destroy(f->vk); /* waits for the device's runaway work */
	if (f->m.len)
		mem_teardown(&f->m);
	dxm_ctx_destroy(f->ctx);
}

/*
 * CPU threads: atomic increments of every counter, round after round,
 * until told to stop.  Thread i owns counters i, i + CPU_THREADS, ... and
 * counts its increments of each; the counts are read only once every
 * thread has been joined, so what the test expects is exact per counter.
 */
struct hammer;
struct hammer_thread {
	struct hammer *h;
	unsigned idx; /* given at creation, not taken in arrival order */
	pthread_t t;
};

struct hammer {
	uint32_t *c;
	atomic_bool stop;
	struct hammer_thread th[CPU_THREADS];
	unsigned long cpu[NCOUNTERS]; /* CPU increments of each counter */
};

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

static void hammer_start(struct hammer *h, uint32_t *c)
{
	memset(h, 0, sizeof(*h));
	h->c = c;
	for (unsigned i = 0; i < CPU_THREADS; i++) {
		h->th[i].h = h;
		h->th[i].idx = i;
		cr_assert_eq(pthread_create(&h->th[i].t, NULL, hammer_fn,
					    &h->th[i]),
			     0);
	}
}

/* Stops and joins every thread, then returns their increments. */
static unsigned long hammer_stop(struct hammer *h)
{
	atomic_store(&h->stop, true);
	for (unsigned i = 0; i < CPU_THREADS; i++)
		cr_assert_eq(pthread_join(h->th[i].t, NULL), 0);
	unsigned long n = 0;
	for (unsigned i = 0; i < NCOUNTERS; i++)
		n += h->cpu[i];
	return n;
}

/*
 * Each counter against what was made of it: the CPU's increments plus
 * dev of the device's.  Returns the updates lost (want - got) over all
 * counters; *gained gets the number of counters holding more than was
 * made, which no race can explain (only wrong bookkeeping or work done
 * twice).
 */
static int64_t tally(const uint32_t *c, const struct hammer *h, uint64_t dev,
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

/* Without dxm: the same shader on ordinary host memory, imported as it
 * is, races with the CPU's atomics and loses updates. */
Test(vulkan, lost_updates_without_dxm, .timeout = 300)
{
	struct vkfix f;
	vk_setup(&f, 0, MEM_MEMFD, 0);
	struct dxm_vk *vk = f.vk;
	struct dxm_vk_kernel *k = f.k;
	size_t len = 2 * PS;
	uint32_t *c = (uint32_t *)anon_map(len);
	memset(c, 0, len);
	struct args a = { NCOUNTERS, STRIDE, 60000, 1 };
	int64_t lost = 0;
	for (int round = 0; round < 5 && !lost; round++) {
		memset(c, 0, len);
		struct hammer h;
		hammer_start(&h, c);
		sleep_ms(5);
		uint64_t t;
		int err = dxm_vk_dispatch(vk, k, c, len, &a, groups,
					  DXM_VK_UNMANAGED, &t);
		cr_assert_eq(err, 0, "dispatch: %s", strerror(-err));
		cr_assert_eq(dxm_vk_wait(vk, t, 120ull * 1000000000ull), 0);
		unsigned long cpu = hammer_stop(&h);
		unsigned gained;
		lost = tally(c, &h, a.iters, &gained);
		cr_log_info("round %d: %lu CPU increments, %llu device: %lld "
			    "lost",
			    round, cpu,
			    (unsigned long long)NCOUNTERS * a.iters,
			    (long long)lost);
		cr_assert_eq(gained, 0, "%u counters hold more than was made",
			     gained);
	}
	cr_assert_gt(lost, 0, "no update lost in 5 rounds: the race did not "
			      "happen here (one CPU?)");
	munmap(c, len);
	vk_teardown(&f);
}

#define KIND_TEST(name, ...)                                                   \
	KIND_TEST_OF(vulkan, MEM_KINDS_ALL_PARAMS, name, __VA_ARGS__)

/* Through the backend: dispatch after dispatch while CPU threads hammer
 * the same counters; not one update lost. */
KIND_TEST(no_lost_updates_through_backend, .timeout = 300)
{
	struct vkfix f;
	size_t len = 2 * PS;
	/* A CPU access may wait for every dispatch queued: no timeout a
	 * loaded machine could reach (a lost device would fail the test). */
	uint32_t *c = vk_setup(&f, 120000, *kind, len);
	struct dxm_vk *vk = f.vk;
	struct dxm_vk_kernel *k = f.k;
	struct args a = { NCOUNTERS, STRIDE, 20000, 1 };
	unsigned rounds = 20;
	struct hammer h;
	hammer_start(&h, c);
	uint64_t t = 0;
	for (unsigned i = 0; i < rounds; i++) {
		int err = dxm_vk_dispatch(vk, k, c, len, &a, groups, 0, &t);
		cr_assert_eq(err, 0, "dispatch %u: %s", i, strerror(-err));
		sleep_ms(2);
	}
	cr_assert_eq(dxm_vk_wait(vk, t, 120ull * 1000000000ull), 0);
	sleep_ms(20);
	unsigned long cpu = hammer_stop(&h);
	unsigned gained;
	int64_t lost = tally(c, &h, (uint64_t)rounds * a.iters * a.delta,
			     &gained);
	struct dxm_vk_stats st;
	dxm_vk_get_stats(vk, &st);
	cr_log_info("%s: %lu CPU increments, %u dispatches (%llu retries, "
		    "%llu busy), %llu invalidations waited %.1f ms",
		    mem_kind_name[*kind], cpu, rounds,
		    (unsigned long long)st.retries,
		    (unsigned long long)st.busy_retries,
		    (unsigned long long)st.invalidations,
		    st.invalidate_wait_ns / 1e6);
	cr_assert_eq(gained, 0, "%s: %u counters hold more than was made",
		     mem_kind_name[*kind], gained);
	cr_assert_eq(lost, 0, "%s: %lld updates lost", mem_kind_name[*kind],
		     (long long)lost);
	cr_assert_eq(st.dispatches, rounds);
	cr_assert(!st.lost);
	vk_teardown(&f);
}

/* A CPU access to a page under work in flight waits for that work and
 * then sees all of it; until then no CPU view maps the pages. */
KIND_TEST(cpu_access_waits_for_work_in_flight, .timeout = 300)
{
	struct vkfix f;
	uint32_t many = 4096; /* 64 pages of counters */
	size_t len = many * STRIDE * 4;
	/* Seconds of work on lavapipe, more on a loaded machine: a timeout
	 * far beyond it, or the device is declared lost (the next test). */
	uint32_t *c = vk_setup(&f, 120000, *kind, len);
	struct dxm_vk *vk = f.vk;
	struct dxm_vk_kernel *k = f.k;
	struct args a = { many, STRIDE, 50000, 3 };
	const uint32_t g[3] = { many / 64, 1, 1 };
	uint64_t t;
	int err = dxm_vk_dispatch(vk, k, c, len, &a, g, 0, &t);
	cr_assert_eq(err, 0, "dispatch: %s", strerror(-err));
	int busy = dxm_vk_done(vk, t) == 0;
	cr_assert_eq(pages_present(f.m.base, len), 0,
		     "a CPU view maps a page under device work");
	if (*kind == MEM_ALIAS)
		cr_assert_eq(pages_present(f.m.region, len), 0);
	/* The last counter: the last one the device gets to. */
	uint32_t v = __atomic_load_n(&c[(many - 1) * STRIDE],
				     __ATOMIC_SEQ_CST);
	cr_assert_eq(v, a.iters * a.delta, "saw %u of %u", v,
		     a.iters * a.delta);
	cr_assert_eq(dxm_vk_done(vk, t), 1, "the access did not wait");
	for (uint32_t i = 0; i < many; i++)
		cr_assert_eq(c[i * STRIDE], a.iters * a.delta, "counter %u", i);
	struct dxm_vk_stats st;
	dxm_vk_get_stats(vk, &st);
	cr_log_info("%s: work %s in flight at the access; %llu "
		    "invalidation(s) waited %.1f ms",
		    mem_kind_name[*kind], busy ? "was" : "was no longer",
		    (unsigned long long)st.invalidations,
		    st.invalidate_wait_ns / 1e6);
	if (busy)
		cr_assert_geq(st.invalidations, 1);
	vk_teardown(&f);
}

/* A device that does not finish within the timeout is declared lost: the
 * CPU gets its page back, and the backend refuses further work. */
Test(vulkan, lost_device_does_not_hang_cpu, .timeout = 300)
{
	struct vkfix f;
	uint32_t many = 8192; /* 128 pages of counters */
	size_t len = many * STRIDE * 4;
	uint32_t *c = vk_setup(&f, 100, MEM_MEMFD, len);
	struct dxm_vk *vk = f.vk;
	struct dxm_vk_kernel *k = f.k;
	/* Long enough to outlast the timeout by far on any CPU. */
	struct args a = { many, STRIDE, 60000, 1 };
	const uint32_t g[3] = { many / 64, 1, 1 };
	uint64_t t;
	cr_assert_eq(dxm_vk_dispatch(vk, k, c, len, &a, g, 0, &t), 0);
	if (dxm_vk_done(vk, t) == 1)
		cr_skip_test("SKIP: the device finished before the CPU "
			     "touched the page");
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	(void)*(volatile uint32_t *)c;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) +
		   (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	struct dxm_vk_stats st;
	dxm_vk_get_stats(vk, &st);
	cr_log_info("the CPU access took %.3f s", s);
	cr_assert(st.lost, "not declared lost after %.3f s", s);
	cr_assert_lt(s, 30.0);
	uint64_t t2;
	cr_assert_eq(dxm_vk_dispatch(vk, k, c, len, &a, g, 0, &t2), -ENODEV);
	cr_assert_eq(dxm_vk_wait(vk, t, 0), -ENODEV);
	vk_teardown(&f);
}
