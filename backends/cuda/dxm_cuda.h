/* SPDX-License-Identifier: MIT */
/*
 * dxm_cuda - GPU kernels on host memory made safe, through CUDA.
 *
 * The CUDA twin of dxm_vk.h (backends/vulkan), with the same shape.  A
 * GPU on PCIe without AtomicOps (CUDA says hostNativeAtomicSupported = 0)
 * does even atomicAdd_system on host memory as a read and a later write:
 * a CPU write between the two is lost.  dxm_cuda runs a kernel on memory
 * from dxm_alloc() with the pages held exclusive: while the work is in
 * flight every CPU mapping of them is revoked, and a CPU access waits
 * until the work is done, then sees all of it.
 *
 * Written on dxm's public API only, as an outside driver would be: each
 * region's device view (dxm_device_view) is registered once with
 * cudaHostRegister (cudaHostGetDevicePointer gives the GPU's address of
 * it); a dispatch runs the driver loop of dxm_vk (read_begin ->
 * dxm_make_exclusive(owner = the backend) -> lock, read_retry -> launch
 * on the backend's stream and record a CUDA event, remembered for the
 * range -> unlock -> dxm_exclusive_unlock); the invalidate callback waits,
 * outside the lock, for the events of the work in flight on the range.
 *
 * A kernel takes the range as its first parameter and the caller's
 * push_size bytes as its second (by value), like binding 0 and the push
 * constants of a dxm_vk kernel:
 *
 *	__global__ void k(uint32_t *range, struct my_args a);
 *
 * Adopted memory (dxm_adopt) is refused with -EOPNOTSUPP: its device view
 * has holes (DXM_DEVVIEW_HOLES), and cudaHostRegister pins a whole range.
 *
 * All functions return 0 (or a count) on success and a negative errno.
 */
#ifndef DXM_CUDA_H
#define DXM_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dxm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dxm_cuda;
struct dxm_cuda_kernel;

struct dxm_cuda_opts {
	size_t sz;	     /* sizeof(struct dxm_cuda_opts) */
	int device;	     /* index among the CUDA devices that can map
				host memory; -1 (or 0): the first */
	unsigned timeout_ms; /* an invalidation waits this long for device
				work, then declares the device lost (0:
				10000) */
	char *why;	     /* if set, dxm_cuda_create's failure says why */
	size_t why_len;
};

/* -ENODEV: no CUDA device (or driver), or none that can map registered
 * host memory (opts->why says which). */
int dxm_cuda_create(struct dxm_ctx *ctx, const struct dxm_cuda_opts *opts,
		    struct dxm_cuda **cup);
/* Waits for all work (even after the device was declared lost), then
 * frees everything. */
void dxm_cuda_destroy(struct dxm_cuda *cu);
const char *dxm_cuda_device_name(const struct dxm_cuda *cu);

/* A kernel: func is a __global__ function (its host-side address, as for
 * cudaLaunchKernel) of the shape above, launched with blocks of block[]
 * threads. */
int dxm_cuda_kernel_create(struct dxm_cuda *cu, const void *func,
			   uint32_t push_size, const uint32_t block[3],
			   struct dxm_cuda_kernel **kp);
void dxm_cuda_kernel_destroy(struct dxm_cuda_kernel *k);

/* The counter kernels the tests run (backends/cuda/kernels.cu), with
 * these push constants; block of 64 threads.  Each thread does, iters
 * times, an increment by delta of its own 32-bit counter range[i *
 * stride], i < count. */
struct dxm_cuda_counter_args {
	uint32_t count;	 /* counters */
	uint32_t stride; /* 32-bit words between two counters */
	uint32_t iters;	 /* increments per counter */
	uint32_t delta;	 /* what each increment adds */
};
enum dxm_cuda_counter {
	DXM_CUDA_COUNTER_RMW,	 /* a volatile load, then a store: what a
				    device without AtomicOps does */
	DXM_CUDA_COUNTER_ATOMIC, /* atomicAdd_system */
};
const void *dxm_cuda_counter_kernel(enum dxm_cuda_counter which);

/* dxm_cuda_dispatch flags */
#define DXM_CUDA_UNMANAGED (1u << 0) /* addr is ordinary host memory, not
					dxm's: registered as it is and used
					with no exclusive access (what dxm
					prevents; for demonstrations) */

/*
 * Run kernel k with [addr, addr+len) (page aligned, in one region) as its
 * first parameter, groups[0..2] blocks, push (k's push_size bytes) as its
 * second.  Returns once the work is launched, the pages held exclusive by
 * the backend; *ticket (if not NULL) names the work for dxm_cuda_wait.
 * -EBUSY: the pages stayed busy (another device, or the CPU taking them
 * back) for the whole timeout; -ENODEV: the device is lost;
 * -EOPNOTSUPP: adopted memory, or a huge-page region (DXM_ALLOC_HUGE),
 * not supported yet.
 */
int dxm_cuda_dispatch(struct dxm_cuda *cu, struct dxm_cuda_kernel *k,
		      void *addr, size_t len, const void *push,
		      const uint32_t groups[3], unsigned flags,
		      uint64_t *ticket);

/* 0 once the work named by ticket is done, -ETIMEDOUT, -ENODEV (lost). */
int dxm_cuda_wait(struct dxm_cuda *cu, uint64_t ticket, uint64_t timeout_ns);
/* 1 if done, 0 if still in flight, -ENODEV. */
int dxm_cuda_done(struct dxm_cuda *cu, uint64_t ticket);

struct dxm_cuda_stats {
	uint64_t dispatches;	     /* launched */
	uint64_t retries;	     /* read_retry said "again" */
	uint64_t busy_retries;	     /* dxm_make_exclusive refused a page */
	uint64_t imports;	     /* device views registered */
	uint64_t invalidations;	     /* callbacks that found work in flight */
	uint64_t invalidate_wait_ns; /* time they waited for it */
	bool lost;		     /* the device is lost */
	bool native_atomics;	     /* cudaDevAttrHostNativeAtomicSupported:
					the GPU's atomics on host memory are
					atomic against the CPU's */
};
void dxm_cuda_get_stats(struct dxm_cuda *cu, struct dxm_cuda_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* DXM_CUDA_H */
