// SPDX-License-Identifier: MIT
/*
 * The CUDA backend.  Uses dxm's public API and the CUDA runtime only; the
 * driver loop, the locking and the work in flight are the shared driver's
 * (backends/common/dxm_driver.c, which says the locking rules): what is
 * here is CUDA's part of it, struct dxm_drv_ops.
 *
 * Work in flight: every launch goes to one stream, in order, followed by
 * a CUDA event, its fence.  A wait polls the events (CUDA has no wait
 * with a timeout on them).  The stream and the events are used under the
 * driver's lock only.
 *
 * The CUDA runtime's current device is per thread: every entry point, and
 * the callbacks, which run on dxm's handler threads, select cu->dev first
 * (ops.use).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dxm_cuda.h"
#include "dxm_driver.h"

#define why(o, ...) dxm_drv_why((o)->why, (o)->why_len, __VA_ARGS__)

/* A registered device view (or, unmanaged, a program's buffer). */
struct import {
	struct dxm_drv_import im;
	void *dptr; /* the GPU's address of im.base */
};

struct work {
	struct dxm_drv_work w;
	cudaEvent_t ev;
};

struct dxm_cuda_kernel {
	struct dxm_cuda *cu;
	const void *func;
	uint32_t push_size;
	uint32_t block[3];
};

struct dxm_cuda {
	struct dxm_drv drv; /* first: the owner dxm sees */
	int dev;
	bool native_atomics;
	cudaStream_t stream;
};

/* The driver's structs come first in ours. */
_Static_assert(offsetof(struct dxm_cuda, drv) == 0, "drv first");
_Static_assert(offsetof(struct import, im) == 0, "im first");
_Static_assert(offsetof(struct work, w) == 0, "w first");
#define CU(d) ((struct dxm_cuda *)(d))

static int cu_err(cudaError_t e)
{
	switch (e) {
	case cudaSuccess:
		return 0;
	case cudaErrorNotReady:
		return -ETIMEDOUT;
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorInvalidValue:
	case cudaErrorInvalidDeviceFunction:
		return -EINVAL;
	case cudaErrorHostMemoryAlreadyRegistered:
		return -EEXIST;
	case cudaErrorNotSupported:
		return -EOPNOTSUPP;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
	case cudaErrorDevicesUnavailable:
		return -ENODEV;
	default:
		return -EIO;
	}
}

static void use_dev(struct dxm_cuda *cu)
{
	cudaSetDevice(cu->dev);
}

/* ------------------------------------------------------------- device */

static int attr(int dev, enum cudaDeviceAttr a)
{
	int v = 0;
	if (cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess)
		return 0;
	return v;
}

/* What CUDA device d lacks that dxm_cuda needs, or NULL. */
static const char *unfit(int d)
{
	if (!attr(d, cudaDevAttrCanMapHostMemory))
		return "cannot map host memory";
	if (!attr(d, cudaDevAttrHostRegisterSupported))
		return "no cudaHostRegister";
	if (attr(d, cudaDevAttrComputeMode) == cudaComputeModeProhibited)
		return "compute prohibited";
	return NULL;
}

static int pick_device(struct dxm_cuda *cu, const struct dxm_cuda_opts *o)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n <= 0) {
		why(o, "no CUDA device (cudaGetDeviceCount: %d device(s), %s: "
		       "%s%s)",
		    e == cudaSuccess ? n : 0, cudaGetErrorName(e),
		    cudaGetErrorString(e),
		    e == cudaErrorInsufficientDriver
			    ? "; no NVIDIA driver (libcuda.so.1) here, or "
			      "one older than this CUDA runtime"
			    : "");
		cudaGetLastError(); /* not sticky: clear it */
		return -ENODEV;
	}
	int want = o && o->device > 0 ? o->device : 0, k = 0;
	char seen[384] = "";
	cu->dev = -1;
	for (int d = 0; d < n; d++) {
		struct cudaDeviceProp pr;
		if (cudaGetDeviceProperties(&pr, d) != cudaSuccess)
			snprintf(pr.name, sizeof(pr.name), "device %d", d);
		const char *lacks = unfit(d);
		size_t l = strlen(seen);
		snprintf(seen + l, sizeof(seen) - l, "%s%s%s%s", l ? ", " : "",
			 pr.name, lacks ? ": " : "", lacks ? lacks : "");
		if (lacks || k++ != want)
			continue;
		cu->dev = d;
		snprintf(cu->drv.name, sizeof(cu->drv.name), "%s", pr.name);
		break;
	}
	if (cu->dev < 0 && k) {
		why(o, "no device at index %d: %d CUDA device(s) with what "
		       "dxm_cuda needs (found: %s)",
		    want, k, seen);
		return -ENODEV;
	}
	if (cu->dev < 0) {
		why(o, "no CUDA device that can map registered host memory "
		       "(found: %s)",
		    seen);
		return -ENODEV;
	}
	cu->native_atomics =
		attr(cu->dev, cudaDevAttrHostNativeAtomicSupported) != 0;
	return 0;
}

/* ------------------------------------------------ the driver's CUDA ops */

static void cu_use(struct dxm_drv *d)
{
	use_dev(CU(d));
}

static int cu_import(struct dxm_drv *d, struct dxm_drv_import *dim)
{
	(void)d;
	struct import *im = (struct import *)dim;
	cudaError_t e = cudaHostRegister(dim->base, dim->len,
					 cudaHostRegisterMapped |
						 cudaHostRegisterPortable);
	if (e == cudaSuccess) {
		e = cudaHostGetDevicePointer(&im->dptr, dim->base, 0);
		if (e != cudaSuccess)
			cudaHostUnregister(dim->base);
	}
	if (e != cudaSuccess) {
		cudaGetLastError(); /* not sticky: clear it */
		return cu_err(e);
	}
	return 0;
}

static void cu_unimport(struct dxm_drv *d, struct dxm_drv_import *im)
{
	(void)d;
	if (cudaHostUnregister(im->base) != cudaSuccess)
		cudaGetLastError(); /* not sticky: clear it */
}

/* Launch k on the GPU's address of byte off of dim (the kernel gets no
 * length: len is the caller's to respect) with an event after it. */
static int cu_launch(struct dxm_drv *d, void *kernel,
		     struct dxm_drv_import *dim, size_t off, size_t len,
		     const void *push, const uint32_t groups[3],
		     struct dxm_drv_work *dw)
{
	(void)len;
	struct dxm_cuda *cu = CU(d);
	struct dxm_cuda_kernel *k = kernel;
	struct work *w = (struct work *)dw;
	void *dptr = (char *)((struct import *)dim)->dptr + off;
	cudaError_t e =
		cudaEventCreateWithFlags(&w->ev, cudaEventDisableTiming);
	if (e != cudaSuccess)
		return cu_err(e);
	void *args[2] = { &dptr, (void *)push };
	dim3 grid = { groups[0], groups[1], groups[2] };
	dim3 block = { k->block[0], k->block[1], k->block[2] };
	e = cudaLaunchKernel(k->func, grid, block, args, 0, cu->stream);
	if (e == cudaSuccess)
		e = cudaEventRecord(w->ev, cu->stream);
	if (e != cudaSuccess) {
		/* A launch that was refused ran nothing; a sticky error
		 * (the context is unusable) loses the device. */
		if (cudaGetLastError() != cudaSuccess &&
		    cudaPeekAtLastError() != cudaSuccess)
			d->st.lost = true;
		cudaEventDestroy(w->ev);
		return cu_err(e);
	}
	return 0;
}

static int cu_done(struct dxm_drv *d, struct dxm_drv_work *dw)
{
	cudaError_t e = cudaEventQuery(((struct work *)dw)->ev);
	if (e == cudaErrorNotReady)
		return 0;
	if (e != cudaSuccess) {
		fprintf(stderr,
			"dxm_cuda: %s reports %s (%s); the device is "
			"declared lost, its pages given back to the CPU\n",
			d->name, cudaGetErrorName(e), cudaGetErrorString(e));
		return -ENODEV;
	}
	return 1;
}

static void cu_work_fini(struct dxm_drv *d, struct dxm_drv_work *dw)
{
	(void)d;
	cudaEventDestroy(((struct work *)dw)->ev);
}

static void cu_idle(struct dxm_drv *d)
{
	struct dxm_cuda *cu = CU(d);
	if (!cu->stream)
		return;
	use_dev(cu);
	cudaStreamSynchronize(cu->stream);
}

static const struct dxm_drv_ops cu_ops = {
	.prefix = "dxm_cuda",
	.import_size = sizeof(struct import),
	.work_size = sizeof(struct work),
	.refuse_holes = true, /* cudaHostRegister pins it all */
	.use = cu_use,
	.import = cu_import,
	.unimport = cu_unimport,
	.launch = cu_launch,
	.done = cu_done,
	.work_fini = cu_work_fini,
	.wait = NULL, /* poll the events */
	.idle = cu_idle,
};

/* -------------------------------------------------------- create, destroy */

int dxm_cuda_create(struct dxm_ctx *ctx, const struct dxm_cuda_opts *opts,
		    struct dxm_cuda **cup)
{
	if (!ctx || !cup || (opts && opts->sz < sizeof(size_t)))
		return -EINVAL;
	struct dxm_cuda_opts o = { .sz = sizeof(o), .device = -1 };
	if (opts)
		memcpy(&o, opts, opts->sz < sizeof(o) ? opts->sz : sizeof(o));
	struct dxm_cuda *cu = calloc(1, sizeof(*cu));
	if (!cu)
		return -ENOMEM;
	dxm_drv_init(&cu->drv, &cu_ops, ctx, o.timeout_ms);
	cu->dev = -1;
	int err = pick_device(cu, &o);
	if (!err) {
		use_dev(cu);
		cudaError_t e = cudaStreamCreateWithFlags(&cu->stream,
							  cudaStreamNonBlocking);
		if (e != cudaSuccess) {
			why(&o, "%s: cudaStreamCreate: %s", cu->drv.name,
			    cudaGetErrorString(e));
			err = cu_err(e);
			cu->stream = NULL;
		}
	}
	if (!err)
		err = dxm_drv_start(&cu->drv);
	if (err)
		goto fail;
	*cup = cu;
	return 0;
fail:
	dxm_cuda_destroy(cu);
	return err;
}

void dxm_cuda_destroy(struct dxm_cuda *cu)
{
	if (!cu)
		return;
	dxm_drv_fini(&cu->drv); /* waits for the stream, even when lost */
	if (cu->stream)
		cudaStreamDestroy(cu->stream);
	free(cu);
}

const char *dxm_cuda_device_name(const struct dxm_cuda *cu)
{
	return cu ? cu->drv.name : "";
}

/* --------------------------------------------------------------- kernels */

int dxm_cuda_kernel_create(struct dxm_cuda *cu, const void *func,
			   uint32_t push_size, const uint32_t block[3],
			   struct dxm_cuda_kernel **kp)
{
	if (!cu || !func || !block || !block[0] || !block[1] || !block[2] ||
	    !kp || push_size > 4096)
		return -EINVAL;
	use_dev(cu);
	struct cudaFuncAttributes fa;
	cudaError_t e = cudaFuncGetAttributes(&fa, func);
	if (e != cudaSuccess)
		return cu_err(e);
	if ((uint64_t)block[0] * block[1] * block[2] >
	    (uint64_t)fa.maxThreadsPerBlock)
		return -EINVAL;
	struct dxm_cuda_kernel *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->cu = cu;
	k->func = func;
	k->push_size = push_size;
	memcpy(k->block, block, sizeof(k->block));
	*kp = k;
	return 0;
}

void dxm_cuda_kernel_destroy(struct dxm_cuda_kernel *k)
{
	free(k);
}

/* ------------------------------------------------------------- dispatch */

int dxm_cuda_dispatch(struct dxm_cuda *cu, struct dxm_cuda_kernel *k,
		      void *addr, size_t len, const void *push,
		      const uint32_t groups[3], unsigned flags,
		      uint64_t *ticket)
{
	if (!cu || !k || k->cu != cu ||
	    (groups && (!groups[0] || !groups[1] || !groups[2])) ||
	    (k->push_size && !push) || (flags & ~DXM_CUDA_UNMANAGED))
		return -EINVAL;
	return dxm_drv_dispatch(&cu->drv, k, addr, len, push, groups,
				flags & DXM_CUDA_UNMANAGED, ticket);
}

int dxm_cuda_wait(struct dxm_cuda *cu, uint64_t ticket, uint64_t timeout_ns)
{
	if (!cu)
		return -EINVAL;
	return dxm_drv_wait(&cu->drv, ticket, timeout_ns);
}

int dxm_cuda_done(struct dxm_cuda *cu, uint64_t ticket)
{
	if (!cu)
		return -EINVAL;
	return dxm_drv_done(&cu->drv, ticket);
}

void dxm_cuda_get_stats(struct dxm_cuda *cu, struct dxm_cuda_stats *st)
{
	struct dxm_drv_stats s;
	dxm_drv_get_stats(&cu->drv, &s);
	DXM_DRV_STATS_COPY(st, &s);
	st->native_atomics = cu->native_atomics;
}
