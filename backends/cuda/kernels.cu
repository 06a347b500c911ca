// SPDX-License-Identifier: MIT
//
// The counter kernels of dxm_cuda (dxm_cuda_counter_kernel), the CUDA
// twins of backends/vulkan/shaders/counter.comp.  Each thread owns one
// 32-bit counter, c[i * stride], and increments it iters times by delta:
//
// - rmw: the work of a device without PCIe AtomicOps, a read-modify-write
//   as two bus transactions, a load and a store (volatile: each one
//   reaches memory).  Against a CPU that increments the same counters
//   atomically, an update landing between the two is lost, unless the
//   device holds the page exclusive while it works.
// - atomic: atomicAdd_system.  Atomic against the CPU only where the host
//   bus carries atomics (hostNativeAtomicSupported); elsewhere it too is
//   a read and a write as far as the CPU can tell.
#include <stdint.h>

#include "dxm_cuda.h"

__global__ void dxm_cuda_counter_rmw(uint32_t *c,
				     struct dxm_cuda_counter_args a)
{
	uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= a.count)
		return;
	volatile uint32_t *p = c + (size_t)i * a.stride;
	for (uint32_t k = 0; k < a.iters; k++) {
		uint32_t v = *p;
		*p = v + a.delta;
	}
}

__global__ void dxm_cuda_counter_atomic(uint32_t *c,
					struct dxm_cuda_counter_args a)
{
	uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= a.count)
		return;
	uint32_t *p = c + (size_t)i * a.stride;
	for (uint32_t k = 0; k < a.iters; k++)
		atomicAdd_system(p, a.delta);
}

extern "C" const void *dxm_cuda_counter_kernel(enum dxm_cuda_counter which)
{
	switch (which) {
	case DXM_CUDA_COUNTER_RMW:
		return (const void *)dxm_cuda_counter_rmw;
	case DXM_CUDA_COUNTER_ATOMIC:
		return (const void *)dxm_cuda_counter_atomic;
	}
	return nullptr;
}
