// SPDX-License-Identifier: MIT
/*
 * B14 device backends: the CUDA backend (backends/cuda) on the CUDA device
 * present, the twin of test_vulkan.c.  A kernel does a read-modify-write
 * of counters as a device without PCIe AtomicOps does over the bus (a
 * load, then a store) while CPU threads increment the same counters
 * atomically: without dxm updates are lost, through the backend none are.
 * A CPU access to a page under work in flight waits for it and sees all
 * of it; the CPU view is revoked (pagemap) meanwhile; a device that does
 * not finish in time is declared lost without hanging the CPU.  Skips with
 * the reason where there is no CUDA device (or driver).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "dxm_cuda.h"

#define STRIDE	   16  /* 32-bit words between counters: one per cache line */
#define NCOUNTERS  128 /* two pages of counters */
#define CPU_THREADS 2

typedef struct dxm_cuda_counter_args args_t;

static struct dxm_cuda *cuda_or_skip(struct dxm_ctx *ctx, unsigned timeout_ms)
{
	char why[512] = "";
	struct dxm_cuda_opts o = { .sz = sizeof(o),
				   .device = -1,
				   .timeout_ms = timeout_ms,
				   .why = why,
				   .why_len = sizeof(why) };
	struct dxm_cuda *cu = NULL;
	int err = dxm_cuda_create(ctx, &o, &cu);
	if (err == -ENODEV)
		cr_skip_test("SKIP: %s", why);
	cr_assert_eq(err, 0, "dxm_cuda_create: %s (%s)", strerror(-err), why);
	return cu;
}

static struct dxm_cuda_kernel *counter_kernel(struct dxm_cuda *cu,
					      enum dxm_cuda_counter which)
{
	struct dxm_cuda_kernel *k;
	const uint32_t block[3] = { 64, 1, 1 };
	int err = dxm_cuda_kernel_create(cu, dxm_cuda_counter_kernel(which),
					 sizeof(args_t), block, &k);
	cr_assert_eq(err, 0, "dxm_cuda_kernel_create: %s", strerror(-err));
	return k;
}

static const uint32_t groups[3] = { (NCOUNTERS + 63) / 64, 1, 1 };

/* A context, the backend on it (cuda_or_skip) with the counter kernels,
 * and len bytes of kind memory, zeroed (none for len 0). */
struct cufix {
	struct dxm_ctx *ctx;
	struct dxm_cuda *cu;
	struct dxm_cuda_kernel *rmw, *atomic;
	struct mem m;
};

static uint32_t *cu_setup(struct cufix *f, unsigned timeout_ms,
			  enum mem_kind kind, size_t len)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_or_skip(NULL);
	f->cu = cuda_or_skip(f->ctx, timeout_ms);
	f->rmw = counter_kernel(f->cu, DXM_CUDA_COUNTER_RMW);
	f->atomic = counter_kernel(f->cu, DXM_CUDA_COUNTER_ATOMIC);
	if (!len)
		return NULL;
	mem_setup(f->ctx, kind, len, &f->m);
	memset(f->m.base, 0, len);
	return f->m.base;
}

static void cu_teardown(struct cufix *f)
{
	dxm_cuda_kernel_destroy(f->rmw);
	dxm_cuda_kernel_destroy(f->atomic);
	dxm_cuda_destroy(f->cu); /* waits for the device's runaway work */
	if (f->m.len)
		mem_teardown(&f->m);
	dxm_ctx_destroy(f->ctx);
}

/*
 * CPU threads: atomic increments of every counter, round after round,
 * until told to stop.  Thread i owns counters i, i + CPU_THREADS, ... and
 * counts its increments of each; the counts are read only once every
 * thread has been joined (as in test_vulkan.c).
 */
struct hammer;
struct hammer_thread {
	struct hammer *h;
	unsigned idx;
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

/* Each counter against what was made of it: the CPU's increments plus dev
 * of the device's.  Returns the updates lost over all counters; *gained
 * gets the number of counters holding more than was made. */
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

/* One kernel on ordinary host memory, registered as it is, while the CPU
 * threads hammer it: the updates lost (up to 5 tries until some are). */
static int64_t unmanaged_rounds(struct cufix *f, struct dxm_cuda_kernel *k,
				const char *what)
{
	size_t len = 2 * PS;
	uint32_t *c = (uint32_t *)anon_map(len);
	args_t a = { NCOUNTERS, STRIDE, 60000, 1 };
	int64_t lost = 0;
	for (int round = 0; round < 5 && !lost; round++) {
		memset(c, 0, len);
		struct hammer h;
		hammer_start(&h, c);
		sleep_ms(5);
		uint64_t t;
		int err = dxm_cuda_dispatch(f->cu, k, c, len, &a, groups,
					    DXM_CUDA_UNMANAGED, &t);
		cr_assert_eq(err, 0, "dispatch: %s", strerror(-err));
		cr_assert_eq(dxm_cuda_wait(f->cu, t, 120ull * 1000000000ull),
			     0);
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

/* Without dxm: the load/add/store kernel on ordinary host memory races
 * with the CPU's atomics and loses updates. */
Test(cuda, lost_updates_without_dxm, .timeout = 300)
{
	struct cufix f;
	cu_setup(&f, 0, MEM_MEMFD, 0);
	int64_t lost = unmanaged_rounds(&f, f.rmw, "load/add/store");
	cr_assert_gt(lost, 0, "no update lost in 5 rounds: the race did not "
			      "happen here");
	cu_teardown(&f);
}

/* atomicAdd_system on ordinary host memory: atomic against the CPU only
 * where the bus carries atomics.  What happens is logged, not asserted
 * (beyond no counter gaining): it is the hardware's answer. */
Test(cuda, atomic_system_without_dxm, .timeout = 300)
{
	struct cufix f;
	cu_setup(&f, 0, MEM_MEMFD, 0);
	struct dxm_cuda_stats st;
	dxm_cuda_get_stats(f.cu, &st);
	int64_t lost = unmanaged_rounds(&f, f.atomic, "atomicAdd_system");
	cr_log_info("%s, hostNativeAtomicSupported %d: atomicAdd_system lost "
		    "%lld updates",
		    dxm_cuda_device_name(f.cu), st.native_atomics,
		    (long long)lost);
	cu_teardown(&f);
}

#define KIND_TEST(name, ...) KIND_TEST_OF(cuda, MEM_KINDS_PARAMS, name, __VA_ARGS__)

/* Through the backend: dispatch after dispatch while CPU threads hammer
 * the same counters; not one update lost. */
KIND_TEST(no_lost_updates_through_backend, .timeout = 300)
{
	struct cufix f;
	size_t len = 2 * PS;
	uint32_t *c = cu_setup(&f, 0, *kind, len);
	args_t a = { NCOUNTERS, STRIDE, 20000, 1 };
	unsigned rounds = 20;
	struct hammer h;
	hammer_start(&h, c);
	uint64_t t = 0;
	for (unsigned i = 0; i < rounds; i++) {
		int err = dxm_cuda_dispatch(f.cu, f.rmw, c, len, &a, groups, 0,
					    &t);
		cr_assert_eq(err, 0, "dispatch %u: %s", i, strerror(-err));
		sleep_ms(2);
	}
	cr_assert_eq(dxm_cuda_wait(f.cu, t, 120ull * 1000000000ull), 0);
	sleep_ms(20);
	unsigned long cpu = hammer_stop(&h);
	unsigned gained;
	int64_t lost = tally(c, &h, (uint64_t)rounds * a.iters * a.delta,
			     &gained);
	struct dxm_cuda_stats st;
	dxm_cuda_get_stats(f.cu, &st);
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
	cu_teardown(&f);
}

/* A CPU access to a page under work in flight waits for that work and
 * then sees all of it; until then no CPU view maps the pages. */
KIND_TEST(cpu_access_waits_for_work_in_flight, .timeout = 300)
{
	struct cufix f;
	uint32_t many = 4096; /* 64 pages of counters */
	size_t len = many * STRIDE * 4;
	uint32_t *c = cu_setup(&f, 0, *kind, len);
	args_t a = { many, STRIDE, 20000, 3 };
	const uint32_t g[3] = { many / 64, 1, 1 };
	uint64_t t;
	int err = dxm_cuda_dispatch(f.cu, f.rmw, c, len, &a, g, 0, &t);
	cr_assert_eq(err, 0, "dispatch: %s", strerror(-err));
	int busy = dxm_cuda_done(f.cu, t) == 0;
	cr_assert_eq(pages_present(f.m.base, len), 0,
		     "a CPU view maps a page under device work");
	if (*kind == MEM_ALIAS)
		cr_assert_eq(pages_present(f.m.region, len), 0);
	uint32_t v = __atomic_load_n(&c[(many - 1) * STRIDE],
				     __ATOMIC_SEQ_CST);
	cr_assert_eq(v, a.iters * a.delta, "saw %u of %u", v,
		     a.iters * a.delta);
	cr_assert_eq(dxm_cuda_done(f.cu, t), 1, "the access did not wait");
	for (uint32_t i = 0; i < many; i++)
		cr_assert_eq(c[i * STRIDE], a.iters * a.delta, "counter %u", i);
	struct dxm_cuda_stats st;
	dxm_cuda_get_stats(f.cu, &st);
	cr_log_info("%s: work %s in flight at the access; %llu "
		    "invalidation(s) waited %.1f ms",
		    mem_kind_name[*kind], busy ? "was" : "was no longer",
		    (unsigned long long)st.invalidations,
		    st.invalidate_wait_ns / 1e6);
	if (busy)
		cr_assert_geq(st.invalidations, 1);
	cu_teardown(&f);
}

/* Adopted memory: its device view has holes, which cudaHostRegister
 * would pin; refused, the memory untouched. */
Test(cuda, adopted_memory_refused, .timeout = 60)
{
	struct cufix f;
	uint32_t *c = cu_setup(&f, 0, MEM_ANON, 2 * PS);
	c[0] = 7;
	args_t a = { NCOUNTERS, STRIDE, 1, 1 };
	int err = dxm_cuda_dispatch(f.cu, f.rmw, c, 2 * PS, &a, groups, 0,
				    NULL);
	cr_assert_eq(err, -EOPNOTSUPP, "dispatch: %s", strerror(-err));
	cr_assert_eq(c[0], 7);
	cu_teardown(&f);
}

/* A device that does not finish within the timeout is declared lost: the
 * CPU gets its page back, and the backend refuses further work. */
Test(cuda, lost_device_does_not_hang_cpu, .timeout = 300)
{
	struct cufix f;
	size_t len = 2 * PS;
	uint32_t *c = cu_setup(&f, 100, MEM_MEMFD, len);
	/* One block, each thread a long chain of round trips to host
	 * memory: seconds on PCIe, and done not long after. */
	args_t a = { 64, STRIDE, 2000000, 1 };
	const uint32_t g[3] = { 1, 1, 1 };
	uint64_t t;
	cr_assert_eq(dxm_cuda_dispatch(f.cu, f.rmw, c, len, &a, g, 0, &t), 0);
	if (dxm_cuda_done(f.cu, t) == 1)
		cr_skip_test("SKIP: the device finished before the CPU "
			     "touched the page");
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	(void)*(volatile uint32_t *)c;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) +
		   (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	struct dxm_cuda_stats st;
	dxm_cuda_get_stats(f.cu, &st);
	cr_log_info("the CPU access took %.3f s", s);
	if (!st.lost && dxm_cuda_done(f.cu, t) == 1)
		cr_skip_test("SKIP: the device finished within the timeout "
			     "(%.3f s)",
			     s);
	cr_assert(st.lost, "not declared lost after %.3f s", s);
	cr_assert_lt(s, 30.0);
	uint64_t t2;
	cr_assert_eq(dxm_cuda_dispatch(f.cu, f.rmw, c, len, &a, g, 0, &t2),
		     -ENODEV);
	cr_assert_eq(dxm_cuda_wait(f.cu, t, 0), -ENODEV);
	cu_teardown(&f);
}
