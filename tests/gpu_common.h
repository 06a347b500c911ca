/* SPDX-License-Identifier: MIT */
/*
 * What test_vulkan.c and test_cuda.c share: the CPU threads that hammer
 * the counters, the tally of what was made of each, and the test bodies
 * that are the same on both backends, written against struct gpu_backend
 * (each test file fills one with its backend's calls).
 *
 * The counter kernels (backends/vulkan/shaders/counter.comp, the
 * load/add/store one of backends/cuda/kernels.cu) do, in each of count
 * threads i, iters increments by delta of the 32-bit counter
 * range[i * stride]; CPU threads increment the same counters atomically.
 */
#ifndef DXM_TEST_GPU_COMMON_H
#define DXM_TEST_GPU_COMMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common.h"

#define STRIDE	    16	/* 32-bit words between counters: one per cache line */
#define NCOUNTERS   128 /* two pages of counters */
#define CPU_THREADS 2

/* The counter kernels' push constants. */
struct gpu_args {
	uint32_t count, stride, iters, delta;
};

/* What the tests read of dxm_vk_stats and dxm_cuda_stats. */
struct gpu_stats {
	uint64_t dispatches, retries, busy_retries, invalidations;
	uint64_t invalidate_wait_ns;
	bool lost;
};
/* The struct gpu_stats of a dxm_vk_stats or dxm_cuda_stats s. */
#define GPU_STATS(s)                                                           \
	((struct gpu_stats){ .dispatches = (s).dispatches,                     \
			     .retries = (s).retries,                           \
			     .busy_retries = (s).busy_retries,                 \
			     .invalidations = (s).invalidations,               \
			     .invalidate_wait_ns = (s).invalidate_wait_ns,     \
			     .lost = (s).lost })

struct gpu_fix;

/* A backend's calls, on the fixture's device and kernel. */
struct gpu_backend {
	int (*dispatch)(struct gpu_fix *f, void *k, void *addr, size_t len,
			const struct gpu_args *a, const uint32_t groups[3],
			bool unmanaged, uint64_t *ticket);
	int (*wait)(struct gpu_fix *f, uint64_t ticket, uint64_t timeout_ns);
	int (*done)(struct gpu_fix *f, uint64_t ticket);
	void (*stats)(struct gpu_fix *f, struct gpu_stats *st);
	/* Its kernels, then the device. */
	void (*destroy)(struct gpu_fix *f);
};

/* A context, the backend on it with its counter kernels (rmw: the load,
 * then the store), and len bytes of kind memory (none for len 0). */
struct gpu_fix {
	const struct gpu_backend *b;
	struct dxm_ctx *ctx;
	void *dev;
	void *rmw, *atomic;
	struct mem m;
};

/* The fixture's memory: len bytes of kind on f->ctx, zeroed. */
uint32_t *gpu_mem(struct gpu_fix *f, enum mem_kind kind, size_t len);
/* b->destroy (which waits for the device's runaway work), the memory,
 * the context. */
void gpu_teardown(struct gpu_fix *f);

/* Groups of 64 threads for all NCOUNTERS counters. */
extern const uint32_t gpu_groups[3];

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

void hammer_start(struct hammer *h, uint32_t *c);
/* Stops and joins every thread, then returns their increments. */
unsigned long hammer_stop(struct hammer *h);

/*
 * Each counter against what was made of it: the CPU's increments plus
 * dev of the device's.  Returns the updates lost (want - got) over all
 * counters; *gained gets the number of counters holding more than was
 * made, which no race can explain (only wrong bookkeeping or work done
 * twice).
 */
int64_t tally(const uint32_t *c, const struct hammer *h, uint64_t dev,
	      unsigned *gained);

/* Kernel k on ordinary host memory, used as it is (unmanaged), while the
 * CPU threads hammer it: the updates lost (up to 5 rounds until some
 * are), asserting that no counter gained. */
int64_t gpu_unmanaged_rounds(struct gpu_fix *f, void *k, const char *what);

/* Through the backend, on f's memory of kind (2 pages): dispatch after
 * dispatch of f->rmw while CPU threads hammer the same counters; not one
 * update lost. */
void gpu_no_lost_updates(struct gpu_fix *f, enum mem_kind kind);

/* On f's memory of kind (many * STRIDE words): a CPU access to a page
 * under work in flight (iters increments by 3 of each of many counters)
 * waits for that work and then sees all of it; until then no CPU view
 * maps the pages. */
void gpu_cpu_access_waits(struct gpu_fix *f, enum mem_kind kind, uint32_t many,
			  uint32_t iters);

/*
 * On f's memory (len bytes, f's backend created with a short timeout):
 * work (a, groups) that does not finish within the timeout is declared
 * lost; the CPU gets its page back, and the backend refuses further work.
 * may_finish: a device fast enough to finish within the timeout skips
 * the test rather than fail it.
 */
void gpu_lost_device(struct gpu_fix *f, size_t len, const struct gpu_args *a,
		     const uint32_t groups[3], bool may_finish);

#endif /* DXM_TEST_GPU_COMMON_H */
