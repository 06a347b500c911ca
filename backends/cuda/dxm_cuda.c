// SPDX-License-Identifier: MIT
/*
 * The CUDA backend.  Uses dxm's public API and the CUDA runtime only; the
 * driver loop, the locking and the work in flight are dxm_vk.c's.
 *
 * Locking: cu->lock is the driver's lock of the notifier protocol and
 * protects everything below it in struct dxm_cuda (imports, work in
 * flight, the stream).  The notifier callbacks take it to call
 * dxm_notifier_set_seq() and to find the work in flight on their range,
 * and wait for that work after dropping it.  dxm calls are made without
 * it.
 *
 * Work in flight: every launch goes to one stream, in order, followed by
 * a CUDA event; it gets the next value of a counter and remembers the CPU
 * range it holds.  retire() queries the events oldest first and advances
 * cu->completed; a wait polls retire() (no lock held in between) until
 * completed reaches the value it waits for.  Events are destroyed under
 * the lock only, so no thread queries a destroyed one.
 *
 * The CUDA runtime's current device is per thread: every entry point, and
 * the callbacks, which run on dxm's handler threads, select cu->dev first.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "dxm_cuda.h"

#define DEFAULT_TIMEOUT_MS 10000
#define BUSY_TIMEOUT_NS	   (10ull * 1000000000ull)
#define POLL_MAX_US	   100

/* A registered device view (or, unmanaged, a program's buffer). */
struct import {
	void *base;
	size_t len;
	void *dptr;		  /* the GPU's address of base */
	uintptr_t cpu_lo, cpu_hi; /* CPU addresses dispatched through it */
	bool dead;		  /* its region is being unmapped */
	bool unmanaged;
	unsigned users; /* unmanaged: work in flight on it */
	struct import *next;
};

struct work {
	uint64_t value; /* cu->completed reaches it once the work is done */
	uintptr_t start, end;
	cudaEvent_t ev;
	struct import *own; /* unmanaged: released with the work */
	struct work *next;
};

struct dxm_cuda_kernel {
	struct dxm_cuda *cu;
	const void *func;
	uint32_t push_size;
	uint32_t block[3];
};

struct dxm_cuda {
	struct dxm_ctx *ctx;
	size_t psize;
	uint64_t timeout_ns;
	int dev;
	char name[256];
	struct dxm_notifier *all;

	pthread_mutex_t lock;
	cudaStream_t stream;
	struct import *imports;
	struct work *inflight; /* oldest first */
	uint64_t next_value, completed;
	struct dxm_cuda_stats st;
};

static void why(const struct dxm_cuda_opts *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void why(const struct dxm_cuda_opts *o, const char *fmt, ...)
{
	if (!o || !o->why || !o->why_len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(o->why, o->why_len, fmt, ap);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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
		snprintf(cu->name, sizeof(cu->name), "%s", pr.name);
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
	cu->st.native_atomics =
		attr(cu->dev, cudaDevAttrHostNativeAtomicSupported) != 0;
	return 0;
}

/* ------------------------------------------------------ work in flight */

static void release_import(struct dxm_cuda *cu, struct import *im)
{
	for (struct import **pp = &cu->imports; *pp; pp = &(*pp)->next)
		if (*pp == im) {
			*pp = im->next;
			break;
		}
	if (cudaHostUnregister(im->base) != cudaSuccess)
		cudaGetLastError(); /* not sticky: clear it */
	free(im);
}

static void free_work(struct dxm_cuda *cu, struct work *w)
{
	cudaEventDestroy(w->ev);
	if (w->own && !--w->own->users)
		release_import(cu, w->own);
	free(w);
}

/* Free the work the device has finished (cu->lock held).  Once the device
 * is lost nothing is freed here: a kernel that did not finish in time may
 * still run on the registered memory, which dxm_cuda_destroy releases
 * after waiting for it. */
static void retire(struct dxm_cuda *cu)
{
	while (cu->inflight && !cu->st.lost) {
		struct work *w = cu->inflight;
		cudaError_t e = cudaEventQuery(w->ev);
		if (e == cudaErrorNotReady)
			break;
		if (e != cudaSuccess) {
			fprintf(stderr,
				"dxm_cuda: %s reports %s (%s); the device is "
				"declared lost, its pages given back to the "
				"CPU\n",
				cu->name, cudaGetErrorName(e),
				cudaGetErrorString(e));
			cu->st.lost = true;
			break;
		}
		cu->inflight = w->next;
		cu->completed = w->value;
		free_work(cu, w);
	}
}

/* Wait (no lock held) until the work up to value is done; a device that
 * does not get there in time is lost if lose. */
static int wait_value(struct dxm_cuda *cu, uint64_t value,
		      uint64_t timeout_ns, bool lose)
{
	uint64_t t0 = now_ns();
	unsigned us = 1;
	for (;;) {
		pthread_mutex_lock(&cu->lock);
		retire(cu);
		bool done = cu->completed >= value, lost = cu->st.lost;
		pthread_mutex_unlock(&cu->lock);
		if (lost)
			return -ENODEV;
		if (done)
			return 0;
		if (now_ns() - t0 >= timeout_ns)
			break;
		usleep(us);
		us = us < POLL_MAX_US ? us * 2 : POLL_MAX_US;
	}
	if (!lose)
		return -ETIMEDOUT;
	pthread_mutex_lock(&cu->lock);
	if (!cu->st.lost)
		fprintf(stderr,
			"dxm_cuda: %s did not finish its work in time; the "
			"device is declared lost, its pages given back to "
			"the CPU\n",
			cu->name);
	cu->st.lost = true;
	pthread_mutex_unlock(&cu->lock);
	return -ENODEV;
}

/* ------------------------------------------------------------ notifiers */

static bool own_conversion(struct dxm_cuda *cu, const struct dxm_range *r)
{
	/* Ignore our own conversions, or the retry loop livelocks (B3). */
	return r->event == DXM_EVENT_EXCLUSIVE && r->owner == cu;
}

/*
 * Every invalidation: set the sequence under the lock, note the newest
 * work in flight on the range, and wait for it outside the lock.  Only
 * then may the CPU have the pages back.  An UNMAP also marks the imports
 * used for the range dead (the device view goes with the region).
 */
static bool invalidate_all(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq)
{
	struct dxm_cuda *cu = dxm_notifier_priv(n);
	if (own_conversion(cu, r))
		return true;
	uintptr_t s = (uintptr_t)r->start, e = (uintptr_t)r->end;
	uint64_t value = 0;
	use_dev(cu);
	pthread_mutex_lock(&cu->lock);
	dxm_notifier_set_seq(n, cur_seq);
	retire(cu);
	for (struct work *w = cu->inflight; w; w = w->next)
		if (w->start < e && s < w->end && w->value > value)
			value = w->value;
	bool lost = cu->st.lost;
	pthread_mutex_unlock(&cu->lock);
	if (value && !lost) {
		uint64_t t0 = now_ns();
		wait_value(cu, value, cu->timeout_ns, true);
		pthread_mutex_lock(&cu->lock);
		cu->st.invalidations++;
		cu->st.invalidate_wait_ns += now_ns() - t0;
		pthread_mutex_unlock(&cu->lock);
	}
	if (r->event == DXM_EVENT_UNMAP || r->event == DXM_EVENT_REMAP) {
		pthread_mutex_lock(&cu->lock);
		for (struct import *im = cu->imports; im; im = im->next)
			if (!im->unmanaged && im->cpu_lo < e && s < im->cpu_hi)
				im->dead = true;
		pthread_mutex_unlock(&cu->lock);
	}
	return true;
}

/* The per-dispatch notifier of the sequence protocol. */
static bool invalidate_op(struct dxm_notifier *n, const struct dxm_range *r,
			  unsigned long cur_seq)
{
	struct dxm_cuda *cu = dxm_notifier_priv(n);
	if (own_conversion(cu, r))
		return true;
	pthread_mutex_lock(&cu->lock);
	dxm_notifier_set_seq(n, cur_seq);
	pthread_mutex_unlock(&cu->lock);
	return true;
}

static const struct dxm_notifier_ops all_ops = { .invalidate = invalidate_all };
static const struct dxm_notifier_ops op_ops = { .invalidate = invalidate_op };

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
	cu->ctx = ctx;
	cu->dev = -1;
	cu->psize = (size_t)sysconf(_SC_PAGESIZE);
	cu->timeout_ns = (uint64_t)(o.timeout_ms ? o.timeout_ms
						  : DEFAULT_TIMEOUT_MS) *
			 1000000ull;
	pthread_mutex_init(&cu->lock, NULL);
	int err = pick_device(cu, &o);
	if (!err) {
		use_dev(cu);
		cudaError_t e = cudaStreamCreateWithFlags(&cu->stream,
							  cudaStreamNonBlocking);
		if (e != cudaSuccess) {
			why(&o, "%s: cudaStreamCreate: %s", cu->name,
			    cudaGetErrorString(e));
			err = cu_err(e);
			cu->stream = NULL;
		}
	}
	/* The whole user address space: every invalidation reaches us. */
	if (!err)
		err = dxm_notifier_insert(ctx, (void *)cu->psize,
					  ((size_t)1 << 47) - cu->psize,
					  &all_ops, cu, &cu->all);
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
	if (cu->stream) {
		/* All work done before the notifier goes: a CPU access to a
		 * page still held must find nothing in flight.  A lost
		 * device's kernel may still run on registered memory: wait
		 * for it too before unregistering anything. */
		use_dev(cu);
		cudaStreamSynchronize(cu->stream);
	}
	if (cu->all)
		dxm_notifier_remove(cu->all);
	if (cu->stream) {
		pthread_mutex_lock(&cu->lock);
		while (cu->inflight) {
			struct work *w = cu->inflight;
			cu->inflight = w->next;
			free_work(cu, w);
		}
		while (cu->imports)
			release_import(cu, cu->imports);
		pthread_mutex_unlock(&cu->lock);
		cudaStreamDestroy(cu->stream);
	}
	pthread_mutex_destroy(&cu->lock);
	free(cu);
}

const char *dxm_cuda_device_name(const struct dxm_cuda *cu)
{
	return cu ? cu->name : "";
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

/* -------------------------------------------------------------- imports */

static int register_host(struct dxm_cuda *cu, void *base, size_t len,
			 struct import **imp)
{
	struct import *im = calloc(1, sizeof(*im));
	if (!im)
		return -ENOMEM;
	cudaError_t e = cudaHostRegister(base, len,
					 cudaHostRegisterMapped |
						 cudaHostRegisterPortable);
	if (e == cudaSuccess) {
		e = cudaHostGetDevicePointer(&im->dptr, base, 0);
		if (e != cudaSuccess)
			cudaHostUnregister(base);
	}
	if (e != cudaSuccess) {
		cudaGetLastError(); /* not sticky: clear it */
		free(im);
		return cu_err(e);
	}
	im->base = base;
	im->len = len;
	im->cpu_lo = UINTPTR_MAX;
	im->next = cu->imports;
	cu->imports = im;
	*imp = im;
	return 0;
}

/* The registration of the device view based at base (cu->lock held):
 * made once per region, dropped once the region's CPU view is unmapped
 * and nothing in flight uses it. */
static int get_import(struct dxm_cuda *cu, void *base, size_t len,
		      struct import **imp)
{
	for (struct import **pp = &cu->imports; *pp;) {
		struct import *im = *pp;
		if (im->dead) {
			bool used = false;
			for (struct work *w = cu->inflight; w && !used;
			     w = w->next)
				used = w->start < im->cpu_hi &&
				       im->cpu_lo < w->end;
			if (!used) {
				release_import(cu, im);
				continue;
			}
		} else if (!im->unmanaged && im->base == base &&
			   im->len == len) {
			*imp = im;
			return 0;
		}
		pp = &im->next;
	}
	int err = register_host(cu, base, len, imp);
	if (!err)
		cu->st.imports++;
	return err;
}

/* ------------------------------------------------------------- dispatch */

/* Launch k over dptr with an event after it (cu->lock held). */
static int launch(struct dxm_cuda *cu, struct dxm_cuda_kernel *k, void *dptr,
		  const void *push, const uint32_t groups[3], struct work *w)
{
	cudaError_t e = cudaEventCreateWithFlags(&w->ev,
						 cudaEventDisableTiming);
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
			cu->st.lost = true;
		cudaEventDestroy(w->ev);
		return cu->st.lost ? -ENODEV : cu_err(e);
	}
	w->value = ++cu->next_value;
	cu->st.dispatches++;
	/* In launch order: the oldest first. */
	struct work **pp = &cu->inflight;
	while (*pp)
		pp = &(*pp)->next;
	w->next = NULL;
	*pp = w;
	return 0;
}

/* Ordinary host memory, no dxm: the device races with the CPU. */
static int dispatch_unmanaged(struct dxm_cuda *cu, struct dxm_cuda_kernel *k,
			      void *addr, size_t len, const void *push,
			      const uint32_t groups[3], uint64_t *ticket)
{
	struct work *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_mutex_lock(&cu->lock);
	int err = cu->st.lost ? -ENODEV : 0;
	struct import *im = NULL;
	for (struct import *i = cu->imports; i && !err && !im; i = i->next)
		if (i->unmanaged && i->base == addr && i->len == len)
			im = i;
	if (!err && !im) {
		err = register_host(cu, addr, len, &im);
		if (!err)
			im->unmanaged = true;
	}
	if (!err) {
		im->users++;
		w->own = im;
		w->start = (uintptr_t)addr;
		w->end = (uintptr_t)addr + len;
		err = launch(cu, k, im->dptr, push, groups, w);
		if (err && !--im->users)
			release_import(cu, im);
	}
	if (!err && ticket)
		*ticket = w->value;
	pthread_mutex_unlock(&cu->lock);
	if (err)
		free(w);
	return err;
}

int dxm_cuda_dispatch(struct dxm_cuda *cu, struct dxm_cuda_kernel *k,
		      void *addr, size_t len, const void *push,
		      const uint32_t groups[3], unsigned flags,
		      uint64_t *ticket)
{
	if (!cu || !k || k->cu != cu || !addr || !len || !groups ||
	    !groups[0] || !groups[1] || !groups[2] ||
	    ((uintptr_t)addr | len) & (cu->psize - 1) ||
	    (k->push_size && !push) || (flags & ~DXM_CUDA_UNMANAGED))
		return -EINVAL;
	use_dev(cu);
	if (flags & DXM_CUDA_UNMANAGED)
		return dispatch_unmanaged(cu, k, addr, len, push, groups,
					  ticket);
	size_t n = len / cu->psize;
	void **dev = malloc(n * sizeof(*dev));
	struct work *w = calloc(1, sizeof(*w));
	struct dxm_notifier *op = NULL;
	int err = dev && w ? 0 : -ENOMEM;
	if (!err)
		err = dxm_notifier_insert(cu->ctx, addr, len, &op_ops, cu, &op);
	uint64_t t0 = now_ns();
	unsigned us = 1;
	while (!err) {
		/* The device view, registered once, before any conversion. */
		struct dxm_device_view dv;
		err = dxm_device_view(cu->ctx, addr, 0, &dv, sizeof(dv));
		if (err)
			break;
		if (dv.flags & DXM_DEVVIEW_HOLES) {
			err = -EOPNOTSUPP; /* cudaHostRegister pins it all */
			break;
		}
		if (dv.psize && dv.psize != cu->psize) {
			/* Huge pages: dev[] has one entry per huge page,
			 * and they were not tried here. */
			err = -EOPNOTSUPP;
			break;
		}
		unsigned long seq = dxm_notifier_read_begin(op);
		long got = dxm_make_exclusive(cu->ctx, addr, len, cu, dev);
		if (got < 0) {
			err = (int)got;
			break;
		}
		bool all = true;
		for (size_t i = 0; i < n && all; i++)
			all = dev[i] == (char *)dv.base + dv.offset +
						i * cu->psize;
		pthread_mutex_lock(&cu->lock);
		if (cu->st.lost) {
			err = -ENODEV;
		} else if (!all || dxm_notifier_read_retry(op, seq)) {
			/* A page busy (another device, the CPU taking it
			 * back), or an invalidation since read_begin. */
			if (all)
				cu->st.retries++;
			else
				cu->st.busy_retries++;
			pthread_mutex_unlock(&cu->lock);
			dxm_exclusive_unlock(cu->ctx, addr, len, dev);
			if (now_ns() - t0 > BUSY_TIMEOUT_NS) {
				err = -EBUSY;
				break;
			}
			usleep(us);
			us = us < 1000 ? us * 2 : us;
			continue;
		} else {
			retire(cu);
			struct import *im;
			err = get_import(cu, dv.base, dv.len, &im);
			w->start = (uintptr_t)addr;
			w->end = (uintptr_t)addr + len;
			if (!err)
				err = launch(cu, k,
					     (char *)im->dptr + dv.offset, push,
					     groups, w);
			if (!err) {
				if (w->start < im->cpu_lo)
					im->cpu_lo = w->start;
				if (w->end > im->cpu_hi)
					im->cpu_hi = w->end;
				if (ticket)
					*ticket = w->value;
				w = NULL; /* in flight */
			}
		}
		pthread_mutex_unlock(&cu->lock);
		/* The pages stay the device's until a CPU access: the
		 * invalidation then waits for this work. */
		dxm_exclusive_unlock(cu->ctx, addr, len, dev);
		break;
	}
	if (op)
		dxm_notifier_remove(op);
	free(w);
	free(dev);
	return err;
}

int dxm_cuda_wait(struct dxm_cuda *cu, uint64_t ticket, uint64_t timeout_ns)
{
	if (!cu)
		return -EINVAL;
	use_dev(cu);
	return wait_value(cu, ticket, timeout_ns, false);
}

int dxm_cuda_done(struct dxm_cuda *cu, uint64_t ticket)
{
	if (!cu)
		return -EINVAL;
	use_dev(cu);
	pthread_mutex_lock(&cu->lock);
	retire(cu);
	int ret = cu->st.lost ? -ENODEV : cu->completed >= ticket;
	pthread_mutex_unlock(&cu->lock);
	return ret;
}

void dxm_cuda_get_stats(struct dxm_cuda *cu, struct dxm_cuda_stats *st)
{
	pthread_mutex_lock(&cu->lock);
	*st = cu->st;
	pthread_mutex_unlock(&cu->lock);
}
