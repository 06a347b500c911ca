// SPDX-License-Identifier: MIT
/*
 * dxm demo --device vulkan|cuda: the mirror's story (tools/dxm.c) told by
 * a real device through its backend.  CPU threads do atomic increments
 * on counters, one per page, while the device runs the backends' counter
 * kernel on the same counters: a read-modify-write as a load and a later
 * store, what a device without PCIe AtomicOps does over the bus
 * (backends/vulkan/shaders/counter.comp, backends/cuda/kernels.cu).
 * First on ordinary host memory, with the backend's UNMANAGED flag: the
 * device's stores overwrite CPU increments.  Then on dxm_alloc memory
 * through the backend's dispatch, which holds the pages exclusive while
 * the work is in flight: none is lost.  With CUDA, atomicAdd_system on
 * ordinary memory too, atomic against the CPU only where the bus carries
 * atomics.  Last, the latency of a CPU store to a page the device holds
 * (its work done), as the mirror's demo measures it.
 *
 * The same work as tests/test_vulkan.c and tests/test_cuda.c, sized to
 * take about a second on lavapipe.  Each backend is compiled in where the
 * build has it (DXM_DEMO_VULKAN, DXM_DEMO_CUDA: meson.build).
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "demo_gpu.h"

#if DXM_DEMO_VULKAN
#include "counter_spv.h"
#include "dxm_vk.h"
#endif
#if DXM_DEMO_CUDA
#include "dxm_cuda.h"
#endif

/* A CPU access waits this long for the device's work in flight before
 * the backend declares the device lost: far beyond any dispatch here,
 * lavapipe on a loaded machine included. */
#define TIMEOUT_MS 60000
#define WAIT_NS (120ull * 1000000000ull)
/* Rounds on ordinary memory until one loses updates, at most. */
#define DEMO_GPU_TRIES 5

/* The counter kernels' push constants (counter.comp's Args, struct
 * dxm_cuda_counter_args). */
struct counter_args {
	uint32_t count, stride, iters, delta;
};

enum kernel { K_RMW, K_ATOMIC, K_N };

/* What the demo reads of dxm_vk_stats and dxm_cuda_stats. */
struct gpu_stats {
	uint64_t dispatches, retries, busy_retries, invalidations;
	uint64_t invalidate_wait_ns;
	bool lost, native_atomics;
};

struct gpu_ops {
	const char *api;       /* "Vulkan" */
	const char *dispatch;  /* its dispatch function */
	const char *unmanaged; /* its flag for ordinary host memory */
	int (*open)(struct demo_gpu *g, char *why, size_t why_len);
	void (*close)(struct demo_gpu *g);
	int (*run)(struct demo_gpu *g, enum kernel k, void *addr, size_t len,
		   const struct counter_args *a, const uint32_t groups[3],
		   bool unmanaged, uint64_t *ticket);
	int (*wait)(struct demo_gpu *g, uint64_t ticket, uint64_t ns);
	void (*stats)(struct demo_gpu *g, struct gpu_stats *st);
};

struct demo_gpu {
	const struct gpu_ops *ops;
	struct dxm_ctx *ctx;
	void *dev;
	void *k[K_N]; /* NULL: the backend has no such kernel */
	char name[256];
};

/* ---------------------------------------------------------------- Vulkan */

#if DXM_DEMO_VULKAN
static int vk_open(struct demo_gpu *g, char *why, size_t why_len)
{
	struct dxm_vk_opts o = { .sz = sizeof(o),
				 .device = -1,
				 .timeout_ms = TIMEOUT_MS,
				 .why = why,
				 .why_len = why_len };
	struct dxm_vk *vk;
	struct dxm_vk_kernel *k;
	int err = dxm_vk_create(g->ctx, &o, &vk);
	if (err)
		return err;
	err = dxm_vk_kernel_create(vk, dxm_vk_counter_spv,
				   sizeof(dxm_vk_counter_spv),
				   sizeof(struct counter_args), &k);
	if (err) {
		snprintf(why, why_len, "%s: dxm_vk_kernel_create: %s",
			 dxm_vk_device_name(vk), strerror(-err));
		dxm_vk_destroy(vk);
		return err;
	}
	g->dev = vk;
	g->k[K_RMW] = k;
	snprintf(g->name, sizeof(g->name), "%s", dxm_vk_device_name(vk));
	return 0;
}

static void vk_close(struct demo_gpu *g)
{
	dxm_vk_kernel_destroy(g->k[K_RMW]);
	dxm_vk_destroy(g->dev);
}

static int vk_run(struct demo_gpu *g, enum kernel k, void *addr, size_t len,
		  const struct counter_args *a, const uint32_t groups[3],
		  bool unmanaged, uint64_t *ticket)
{
	return dxm_vk_dispatch(g->dev, g->k[k], addr, len, a, groups,
			       unmanaged ? DXM_VK_UNMANAGED : 0, ticket);
}

static int vk_wait(struct demo_gpu *g, uint64_t ticket, uint64_t ns)
{
	return dxm_vk_wait(g->dev, ticket, ns);
}

static void vk_stats(struct demo_gpu *g, struct gpu_stats *st)
{
	struct dxm_vk_stats s;
	dxm_vk_get_stats(g->dev, &s);
	*st = (struct gpu_stats){ .dispatches = s.dispatches,
				  .retries = s.retries,
				  .busy_retries = s.busy_retries,
				  .invalidations = s.invalidations,
				  .invalidate_wait_ns = s.invalidate_wait_ns,
				  .lost = s.lost };
}

static const struct gpu_ops vk_ops = {
	.api = "Vulkan",
	.dispatch = "dxm_vk_dispatch",
	.unmanaged = "DXM_VK_UNMANAGED",
	.open = vk_open,
	.close = vk_close,
	.run = vk_run,
	.wait = vk_wait,
	.stats = vk_stats,
};
#endif

/* ------------------------------------------------------------------ CUDA */

#if DXM_DEMO_CUDA
_Static_assert(sizeof(struct counter_args) ==
		       sizeof(struct dxm_cuda_counter_args),
	       "the counter kernels' arguments");

static int cu_open(struct demo_gpu *g, char *why, size_t why_len)
{
	struct dxm_cuda_opts o = { .sz = sizeof(o),
				   .device = -1,
				   .timeout_ms = TIMEOUT_MS,
				   .why = why,
				   .why_len = why_len };
	static const uint32_t block[3] = { 64, 1, 1 };
	static const enum dxm_cuda_counter which[K_N] = {
		[K_RMW] = DXM_CUDA_COUNTER_RMW,
		[K_ATOMIC] = DXM_CUDA_COUNTER_ATOMIC,
	};
	struct dxm_cuda *cu;
	int err = dxm_cuda_create(g->ctx, &o, &cu);
	if (err)
		return err;
	g->dev = cu;
	for (int i = 0; i < K_N && !err; i++) {
		struct dxm_cuda_kernel *k;
		err = dxm_cuda_kernel_create(
			cu, dxm_cuda_counter_kernel(which[i]),
			sizeof(struct counter_args), block, &k);
		g->k[i] = err ? NULL : k;
	}
	if (err) {
		snprintf(why, why_len, "%s: dxm_cuda_kernel_create: %s",
			 dxm_cuda_device_name(cu), strerror(-err));
		for (int i = 0; i < K_N; i++)
			dxm_cuda_kernel_destroy(g->k[i]);
		dxm_cuda_destroy(cu);
		return err;
	}
	snprintf(g->name, sizeof(g->name), "%s", dxm_cuda_device_name(cu));
	return 0;
}

static void cu_close(struct demo_gpu *g)
{
	for (int i = 0; i < K_N; i++)
		dxm_cuda_kernel_destroy(g->k[i]);
	dxm_cuda_destroy(g->dev);
}

static int cu_run(struct demo_gpu *g, enum kernel k, void *addr, size_t len,
		  const struct counter_args *a, const uint32_t groups[3],
		  bool unmanaged, uint64_t *ticket)
{
	return dxm_cuda_dispatch(g->dev, g->k[k], addr, len, a, groups,
				 unmanaged ? DXM_CUDA_UNMANAGED : 0, ticket);
}

static int cu_wait(struct demo_gpu *g, uint64_t ticket, uint64_t ns)
{
	return dxm_cuda_wait(g->dev, ticket, ns);
}

static void cu_stats(struct demo_gpu *g, struct gpu_stats *st)
{
	struct dxm_cuda_stats s;
	dxm_cuda_get_stats(g->dev, &s);
	*st = (struct gpu_stats){ .dispatches = s.dispatches,
				  .retries = s.retries,
				  .busy_retries = s.busy_retries,
				  .invalidations = s.invalidations,
				  .invalidate_wait_ns = s.invalidate_wait_ns,
				  .lost = s.lost,
				  .native_atomics = s.native_atomics };
}

static const struct gpu_ops cu_ops = {
	.api = "CUDA",
	.dispatch = "dxm_cuda_dispatch",
	.unmanaged = "DXM_CUDA_UNMANAGED",
	.open = cu_open,
	.close = cu_close,
	.run = cu_run,
	.wait = cu_wait,
	.stats = cu_stats,
};
#endif

/* ------------------------------------------------------------- the demo */

/*
 * One increment by the device of a counter in dxm_alloc memory, through
 * the backend, and of one in ordinary memory: what the demo does, tried
 * before it starts, so that a device that cannot do it (a driver that
 * refuses to import this memory, say) is not chosen.
 */
static int probe(struct demo_gpu *g, char *why, size_t why_len)
{
	size_t psize = (size_t)sysconf(_SC_PAGESIZE);
	struct counter_args a = { 1, 1, 1, 1 };
	static const uint32_t one[3] = { 1, 1, 1 };
	uint32_t *c[2] = { NULL, NULL };
	const char *what = "dxm_alloc";
	int err = dxm_alloc(g->ctx, psize, 0, (void **)&c[0]);
	for (int i = 0; i < 2 && !err; i++) {
		uint64_t t;
		if (i == 1) {
			what = "mmap";
			c[1] = mmap(NULL, psize, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (c[1] == MAP_FAILED) {
				c[1] = NULL;
				err = -errno;
				break;
			}
		}
		c[i][0] = 41;
		err = g->ops->run(g, K_RMW, c[i], psize, &a, one, i == 1, &t);
		if (!err)
			err = g->ops->wait(g, t, WAIT_NS);
		if (!err && c[i][0] != 42)
			err = -EIO;
	}
	if (err)
		snprintf(why, why_len,
			 "%s: a first increment on %s memory failed: %s",
			 g->name, what, strerror(-err));
	if (c[0])
		dxm_free(g->ctx, c[0]);
	if (c[1])
		munmap(c[1], psize);
	return err;
}

int demo_gpu_open(enum demo_gpu_kind kind, struct dxm_ctx *ctx,
		  struct demo_gpu **gp, char *why, size_t why_len)
{
	const struct gpu_ops *ops = NULL;
	const char *api = kind == DEMO_GPU_CUDA ? "CUDA" : "Vulkan";
#if DXM_DEMO_VULKAN
	if (kind == DEMO_GPU_VULKAN)
		ops = &vk_ops;
#endif
#if DXM_DEMO_CUDA
	if (kind == DEMO_GPU_CUDA)
		ops = &cu_ops;
#endif
	if (!ops) {
		snprintf(why, why_len,
			 "this dxm was built without the %s backend (-D%s; "
			 "see backends/%s/README.md)",
			 api, kind == DEMO_GPU_CUDA ? "cuda" : "vulkan",
			 kind == DEMO_GPU_CUDA ? "cuda" : "vulkan");
		return -EOPNOTSUPP;
	}
	struct demo_gpu *g = calloc(1, sizeof(*g));
	if (!g) {
		snprintf(why, why_len, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	g->ops = ops;
	g->ctx = ctx;
	why[0] = 0;
	int err = ops->open(g, why, why_len);
	if (err) {
		if (!why[0])
			snprintf(why, why_len, "%s", strerror(-err));
		free(g);
		return err;
	}
	err = probe(g, why, why_len);
	if (err) {
		demo_gpu_close(g);
		return err;
	}
	*gp = g;
	return 0;
}

const char *demo_gpu_name(const struct demo_gpu *g)
{
	return g->name;
}

void demo_gpu_close(struct demo_gpu *g)
{
	if (!g)
		return;
	g->ops->close(g);
	free(g);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The counters (one per page) and the device's work on them per round:
 * dispatches of iters increments of each. */
struct plan {
	uint32_t *mem, *plain; /* dxm_alloc's, and ordinary host memory */
	size_t len;
	struct counter_args a;
	uint32_t groups[3];
	unsigned long dispatches;
};

/* CPU threads: atomic increments of the counters in turn until told to
 * stop; the count is read once every thread has been joined. */
struct hammer {
	const struct plan *pl;
	uint32_t *c;
	atomic_uint running;
	atomic_int stop;
	atomic_ulong incs;
};

static void *hammer_fn(void *arg)
{
	struct hammer *h = arg;
	uint32_t n = h->pl->a.count, stride = h->pl->a.stride;
	unsigned long i = 0;
	atomic_fetch_add(&h->running, 1);
	for (; !atomic_load_explicit(&h->stop, memory_order_relaxed); i++)
		__atomic_fetch_add(&h->c[(i % n) * stride], 1,
				   __ATOMIC_SEQ_CST);
	atomic_fetch_add(&h->incs, i);
	return NULL;
}

/* What a round counted, and the statistics around it. */
struct tally {
	uint64_t expect, sum;
	double seconds;
	struct dxm_stats before, after;
	struct gpu_stats gb, ga;
};

/*
 * One round: the CPU threads hammer the counters while the device runs
 * kernel k on them, dispatch after dispatch (each waited for, so that the
 * CPU gets the pages back in between).  0, or a backend error.
 */
static int round_once(struct demo_gpu *g, const struct demo_params *p,
		      const struct plan *pl, enum kernel k, bool unmanaged,
		      struct tally *t)
{
	const struct counter_args *a = &pl->a;
	uint32_t *c = unmanaged ? pl->plain : pl->mem;
	struct hammer h = { .pl = pl, .c = c };
	pthread_t tid[64];
	unsigned nt = 0;
	int err = 0;

	for (uint32_t i = 0; i < a->count; i++)
		c[i * a->stride] = 0;
	dxm_stats(g->ctx, &t->before, sizeof(t->before));
	g->ops->stats(g, &t->gb);
	uint64_t t0 = now_ns();
	while (nt < p->threads && !err) {
		err = -pthread_create(&tid[nt], NULL, hammer_fn, &h);
		nt += !err;
	}
	/* The device starts once every CPU thread is at work. */
	while (!err && atomic_load(&h.running) < nt)
		sched_yield();
	for (unsigned long d = 0; d < pl->dispatches && !err; d++) {
		uint64_t ticket;
		err = g->ops->run(g, k, c, pl->len, a, pl->groups, unmanaged,
				  &ticket);
		if (!err)
			err = g->ops->wait(g, ticket, WAIT_NS);
	}
	atomic_store(&h.stop, 1);
	for (unsigned i = 0; i < nt; i++)
		pthread_join(tid[i], NULL);
	t->seconds = (double)(now_ns() - t0) / 1e9;
	dxm_stats(g->ctx, &t->after, sizeof(t->after));
	g->ops->stats(g, &t->ga);
	t->sum = 0;
	for (uint32_t i = 0; i < a->count; i++)
		t->sum += c[i * a->stride];
	t->expect = atomic_load(&h.incs) + (uint64_t)pl->dispatches *
						   a->count * a->iters *
						   a->delta;
	return err;
}

/*
 * A round, printed under title.  The load/add/store kernel on ordinary
 * memory is tried again, up to DEMO_GPU_TRIES times, until updates are
 * lost: on a busy machine the CPU threads and the device may not
 * overlap.  0; 1 if updates were lost through the backend, or any counter
 * counted more than was made; -1 on a backend error (said on stderr).
 */
static int gpu_round(struct demo_gpu *g, const struct demo_params *p,
		     const struct plan *pl, enum kernel k, bool unmanaged,
		     const char *title)
{
	bool again = unmanaged && k == K_RMW;
	struct tally t;
	int64_t lost = 0;
	int tries = 0, err;
	do {
		err = round_once(g, p, pl, k, unmanaged, &t);
		lost = (int64_t)(t.expect - t.sum);
	} while (!err && again && !lost && ++tries < DEMO_GPU_TRIES);
	if (err) {
		fprintf(stderr, "dxm demo: %s: %s\n", g->ops->dispatch,
			strerror(-err));
		return -1;
	}

	printf("%s:\n", title);
	printf("  increments expected %llu, counted %llu: %lld %s\n",
	       (unsigned long long)t.expect, (unsigned long long)t.sum,
	       (long long)(lost < 0 ? -lost : lost),
	       lost < 0 ? "MORE than were made" : "lost");
	if (unmanaged && lost > 0)
		printf("  (the device's %s raced the CPU's atomics)\n",
		       k == K_RMW ? "loads and stores" : "atomics");
	if (unmanaged && !lost && !again)
		printf("  (%s)\n", t.ga.native_atomics
					  ? "this bus carries the device's "
					    "atomics"
					  : "none this time");
	else if (unmanaged && !lost)
		printf("  (none in %d rounds: the CPU threads and the device "
		       "did not overlap; a\n"
		       "  busy machine, or one CPU?)\n",
		       tries);
	else if (unmanaged && tries)
		printf("  (%d round%s before it lost none: the CPU threads and "
		       "the device did not\n"
		       "  overlap)\n",
		       tries, tries > 1 ? "s" : "");
	if (unmanaged) {
		printf("  %.3f s, %lu dispatch%s\n", t.seconds,
		       pl->dispatches, pl->dispatches > 1 ? "es" : "");
		return lost < 0;
	}
	uint64_t nd = t.ga.dispatches - t.gb.dispatches;
	printf("  %.3f s; %llu dispatch%s (%llu retried), revocations %llu "
	       "(%llu pages),\n"
	       "  CPU faults resolved %llu (%llu deferred), pages given back "
	       "%llu, invalidate\n"
	       "  callbacks %llu, %llu of them waited for work in flight "
	       "(%.3f ms)\n",
	       t.seconds, (unsigned long long)nd, nd == 1 ? "" : "es",
	       (unsigned long long)(t.ga.retries - t.gb.retries +
				    t.ga.busy_retries - t.gb.busy_retries),
	       (unsigned long long)(t.after.conversions -
				    t.before.conversions),
	       (unsigned long long)(t.after.pages_converted -
				    t.before.pages_converted),
	       (unsigned long long)(t.after.cpu_faults - t.before.cpu_faults),
	       (unsigned long long)(t.after.deferred_faults -
				    t.before.deferred_faults),
	       (unsigned long long)(t.after.restores - t.before.restores),
	       (unsigned long long)(t.after.notifier_calls -
				    t.before.notifier_calls),
	       (unsigned long long)(t.ga.invalidations - t.gb.invalidations),
	       (double)(t.ga.invalidate_wait_ns - t.gb.invalidate_wait_ns) /
		       1e6);
	return lost != 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * The latency of one CPU store to a page the device holds: the device
 * increments the first counter once (its page taken exclusive), the
 * work is waited for, then one CPU store is timed: one fault, the
 * backend's invalidate callback (no work left in flight), the mapping
 * restored.  0, 1 if the counter does not hold every increment, -1 on a
 * failure.
 */
static int gpu_latency(struct demo_gpu *g, const struct plan *pl,
		       unsigned long samples)
{
	uint64_t *lat = calloc(samples, sizeof(*lat));
	struct counter_args a = { 1, pl->a.stride, 1, 1 };
	static const uint32_t one[3] = { 1, 1, 1 };
	size_t psize = (size_t)sysconf(_SC_PAGESIZE);
	uint32_t *c = pl->mem;
	struct dxm_stats before, after;
	int err = lat ? 0 : -ENOMEM;

	c[0] = 0;
	dxm_stats(g->ctx, &before, sizeof(before));
	for (unsigned long i = 0; i < samples && !err; i++) {
		uint64_t t;
		err = g->ops->run(g, K_RMW, c, psize, &a, one, false, &t);
		if (!err)
			err = g->ops->wait(g, t, WAIT_NS);
		uint64_t t0 = now_ns();
		__atomic_fetch_add(c, 1, __ATOMIC_SEQ_CST);
		lat[i] = now_ns() - t0;
	}
	dxm_stats(g->ctx, &after, sizeof(after));
	if (err) {
		fprintf(stderr, "dxm demo: %s: %s\n", g->ops->dispatch,
			strerror(-err));
		free(lat);
		return -1;
	}
	qsort(lat, samples, sizeof(*lat), cmp_u64);
	printf("a CPU store to a page the device holds exclusive, its work "
	       "done, %lu times\n"
	       "(%llu faults):\n"
	       "  median %.1f us, p99 %.1f us from the store to its completion "
	       "(the fault,\n"
	       "  the backend's invalidate callback, the mapping restored)\n",
	       samples,
	       (unsigned long long)(after.cpu_faults - before.cpu_faults),
	       (double)lat[(samples - 1) / 2] / 1e3,
	       (double)lat[(samples * 99 + 99) / 100 - 1] / 1e3);
	free(lat);
	if (c[0] != 2 * samples) {
		printf("  the counter holds %u, not the %lu increments made\n",
		       c[0], 2 * samples);
		return 1;
	}
	return 0;
}

int demo_gpu_round_trip(struct demo_gpu *g, void *addr, size_t npages,
			bool unmanaged)
{
	size_t psize = (size_t)sysconf(_SC_PAGESIZE);
	struct counter_args a = { (uint32_t)npages,
				  (uint32_t)(psize / sizeof(uint32_t)), 1, 1 };
	const uint32_t groups[3] = { (uint32_t)(npages + 63) / 64, 1, 1 };
	uint64_t ticket;
	int err = g->ops->run(g, K_RMW, addr, npages * psize, &a, groups,
			      unmanaged, &ticket);
	return err ? err : g->ops->wait(g, ticket, WAIT_NS);
}

int demo_gpu_run(struct demo_gpu *g, const struct demo_params *p)
{
	size_t psize = (size_t)sysconf(_SC_PAGESIZE);
	struct plan pl = { .len = p->pages * psize };
	/* ops increments in all, the same number of each counter (rounded
	 * up), in dispatches of at most DEMO_GPU_ITERS_MAX of each. */
	unsigned long each = (p->ops + p->pages - 1) / p->pages;
	pl.dispatches = (each + DEMO_GPU_ITERS_MAX - 1) / DEMO_GPU_ITERS_MAX;
	pl.a = (struct counter_args){
		.count = (uint32_t)p->pages,
		.stride = (uint32_t)(psize / sizeof(uint32_t)),
		.iters = (uint32_t)((each + pl.dispatches - 1) /
				    pl.dispatches),
		.delta = 1,
	};
	pl.groups[0] = (pl.a.count + 63) / 64;
	pl.groups[1] = pl.groups[2] = 1;

	int err = dxm_alloc(g->ctx, pl.len, 0, (void **)&pl.mem);
	if (err) {
		fprintf(stderr, "dxm demo: dxm_alloc: %s\n", strerror(-err));
		return 1;
	}
	pl.plain = mmap(NULL, pl.len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pl.plain == MAP_FAILED) {
		fprintf(stderr, "dxm demo: mmap: %s\n", strerror(errno));
		dxm_free(g->ctx, pl.mem);
		return 1;
	}

	struct dxm_stats st;
	dxm_stats(g->ctx, &st, sizeof(st));
	printf("dxm demo: %lu CPU threads (atomic increments) and the %s "
	       "device (%llu\n"
	       "non-atomic increments, each a load then a store: %lu "
	       "dispatch%s of %u per\n"
	       "counter) on %lu counters, one per page\n",
	       p->threads, g->ops->api,
	       (unsigned long long)pl.dispatches * pl.a.count * pl.a.iters,
	       pl.dispatches, pl.dispatches > 1 ? "es" : "", pl.a.iters,
	       p->pages);
	printf("userfaultfd: %s; %u handler thread(s)\n\n",
	       dxm_uffd_mode_str(st.uffd_mode), st.handler_threads);

	char title[160];
	snprintf(title, sizeof(title),
		 "without exclusive access (%s: ordinary host memory)",
		 g->ops->unmanaged);
	int rc = gpu_round(g, p, &pl, K_RMW, true, title);
	if (!rc && g->k[K_ATOMIC]) {
		struct gpu_stats gs;
		g->ops->stats(g, &gs);
		snprintf(title, sizeof(title),
			 "the same with atomicAdd_system (atomic against the "
			 "CPU only where the bus\n"
			 "carries atomics: hostNativeAtomicSupported = %d here)",
			 gs.native_atomics);
		printf("\n");
		rc = gpu_round(g, p, &pl, K_ATOMIC, true, title);
	}
	if (!rc) {
		snprintf(title, sizeof(title),
			 "with exclusive access (%s on dxm_alloc memory)",
			 g->ops->dispatch);
		printf("\n");
		rc = gpu_round(g, p, &pl, K_RMW, false, title);
	}
	if (!rc && p->samples) {
		printf("\n");
		rc = gpu_latency(g, &pl, p->samples);
	}

	struct gpu_stats gs;
	g->ops->stats(g, &gs);
	if (gs.lost) {
		fprintf(stderr, "dxm demo: the %s device was declared lost "
				"(no answer within %d s)\n",
			g->ops->api, TIMEOUT_MS / 1000);
		rc = 1;
	}
	printf("\n%s\n", rc == 0 ? "no update lost with exclusive access"
				  : "FAILED (see above)");
	munmap(pl.plain, pl.len);
	dxm_free(g->ctx, pl.mem);
	return rc ? 1 : 0;
}
