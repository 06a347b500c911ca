/* SPDX-License-Identifier: MIT */
/*
 * dxm demo on a GPU (tools/demo_gpu.c): the mirror's story told by a real
 * device through a backend, Vulkan (backends/vulkan) or CUDA
 * (backends/cuda), each where it is built.
 */
#ifndef DXM_TOOLS_DEMO_GPU_H
#define DXM_TOOLS_DEMO_GPU_H

#include <stdbool.h>
#include <stddef.h>

#include "dxm.h"

/*
 * The GPU's work: DEMO_GPU_OPS increments per round by default (--ops),
 * the same number of each counter, in dispatches of at most
 * DEMO_GPU_ITERS_MAX of each: lavapipe ends shader loops after 65535
 * iterations (counter.comp), and a round of several dispatches lets the
 * CPU in between them.  About 50 ms of lavapipe's work per round, on
 * its own (the CPU threads' atomics on the same cache lines slow it).
 */
#define DEMO_GPU_OPS 2000000
#define DEMO_GPU_ITERS_MAX 50000

enum demo_gpu_kind { DEMO_GPU_VULKAN, DEMO_GPU_CUDA };

struct demo_params {
	unsigned long threads, ops, pages, samples;
};

struct demo_gpu;

/*
 * The backend of that kind on ctx, with its counter kernels, once the
 * device has incremented a counter through dxm and one on ordinary
 * memory.  0; -ENODEV: no such device here; -EOPNOTSUPP: this dxm was
 * built without that backend; another error (that first work failed, or
 * went wrong).  why (always, on an error) says what went wrong.
 */
int demo_gpu_open(enum demo_gpu_kind kind, struct dxm_ctx *ctx,
		  struct demo_gpu **gp, char *why, size_t why_len);
/* The device's name, as its backend gives it. */
const char *demo_gpu_name(const struct demo_gpu *g);
/* The demo itself: its exit status (0, or 1: an update lost with
 * exclusive access, or a failure). */
int demo_gpu_run(struct demo_gpu *g, const struct demo_params *p);
void demo_gpu_close(struct demo_gpu *g);

/*
 * One round trip of `dxm bench --only device`: the counter kernel (one
 * load/add/store of each of npages counters, one per page of addr)
 * dispatched and waited for: through the backend on dxm memory, or on
 * ordinary host memory with unmanaged.  0, or a negative errno.
 */
int demo_gpu_round_trip(struct demo_gpu *g, void *addr, size_t npages,
			bool unmanaged);

#endif
