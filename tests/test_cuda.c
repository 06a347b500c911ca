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
 * the reason where there is no CUDA device (or driver).  The bodies the
 * Vulkan backend's tests share are in gpu_common.c.
 */
#include <errno.h>
#include <string.h>

#include "dxm_cuda.h"
#include "gpu_common.h"

static int cu_dispatch(struct gpu_fix *f, void *k, void *addr, size_t len,
		       const struct gpu_args *a, const uint32_t groups[3],
		       bool unmanaged, uint64_t *ticket)
{
	struct dxm_cuda_counter_args ca = { a->count, a->stride, a->iters,
					    a->delta };
	return dxm_cuda_dispatch(f->dev, k, addr, len, &ca, groups,
				 unmanaged ? DXM_CUDA_UNMANAGED : 0, ticket);
}

static int cu_wait(struct gpu_fix *f, uint64_t ticket, uint64_t timeout_ns)
{
	return dxm_cuda_wait(f->dev, ticket, timeout_ns);
}

static int cu_done(struct gpu_fix *f, uint64_t ticket)
{
	return dxm_cuda_done(f->dev, ticket);
}

static void cu_stats(struct gpu_fix *f, struct gpu_stats *st)
{
	struct dxm_cuda_stats s;
	dxm_cuda_get_stats(f->dev, &s);
	*st = GPU_STATS(s);
}

static void cu_destroy(struct gpu_fix *f)
{
	dxm_cuda_kernel_destroy(f->rmw);
	dxm_cuda_kernel_destroy(f->atomic);
	dxm_cuda_destroy(f->dev);
}

static const struct gpu_backend cu_backend = {
	.dispatch = cu_dispatch,
	.wait = cu_wait,
	.done = cu_done,
	.stats = cu_stats,
	.destroy = cu_destroy,
};

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
					 sizeof(struct dxm_cuda_counter_args),
					 block, &k);
	cr_assert_eq(err, 0, "dxm_cuda_kernel_create: %s", strerror(-err));
	return k;
}

/* A context, the backend on it (cuda_or_skip) with the counter kernels,
 * and len bytes of kind memory, zeroed (none for len 0). */
static uint32_t *cu_setup(struct gpu_fix *f, unsigned timeout_ms,
			  enum mem_kind kind, size_t len)
{
	memset(f, 0, sizeof(*f));
	f->b = &cu_backend;
	f->ctx = ctx_or_skip(NULL);
	f->dev = cuda_or_skip(f->ctx, timeout_ms);
	f->rmw = counter_kernel(f->dev, DXM_CUDA_COUNTER_RMW);
	f->atomic = counter_kernel(f->dev, DXM_CUDA_COUNTER_ATOMIC);
	return len ? gpu_mem(f, kind, len) : NULL;
}

/* Without dxm: the load/add/store kernel on ordinary host memory races
 * with the CPU's atomics and loses updates. */
Test(cuda, lost_updates_without_dxm, .timeout = 300)
{
	struct gpu_fix f;
	cu_setup(&f, 0, MEM_MEMFD, 0);
	int64_t lost = gpu_unmanaged_rounds(&f, f.rmw, "load/add/store");
	cr_assert_gt(lost, 0, "no update lost in 5 rounds: the race did not "
			      "happen here");
	gpu_teardown(&f);
}

/* atomicAdd_system on ordinary host memory: atomic against the CPU only
 * where the bus carries atomics.  What happens is logged, not asserted
 * (beyond no counter gaining): it is the hardware's answer. */
Test(cuda, atomic_system_without_dxm, .timeout = 300)
{
	struct gpu_fix f;
	cu_setup(&f, 0, MEM_MEMFD, 0);
	struct dxm_cuda_stats st;
	dxm_cuda_get_stats(f.dev, &st);
	int64_t lost = gpu_unmanaged_rounds(&f, f.atomic, "atomicAdd_system");
	cr_log_info("%s, hostNativeAtomicSupported %d: atomicAdd_system lost "
		    "%lld updates",
		    dxm_cuda_device_name(f.dev), st.native_atomics,
		    (long long)lost);
	gpu_teardown(&f);
}

#define KIND_TEST(name, ...) KIND_TEST_OF(cuda, MEM_KINDS_PARAMS, name, __VA_ARGS__)

/* Through the backend: dispatch after dispatch while CPU threads hammer
 * the same counters; not one update lost. */
KIND_TEST(no_lost_updates_through_backend, .timeout = 300)
{
	struct gpu_fix f;
	cu_setup(&f, 0, *kind, 2 * PS);
	gpu_no_lost_updates(&f, *kind);
	gpu_teardown(&f);
}

/* A CPU access to a page under work in flight waits for that work and
 * then sees all of it; until then no CPU view maps the pages. */
KIND_TEST(cpu_access_waits_for_work_in_flight, .timeout = 300)
{
	struct gpu_fix f;
	uint32_t many = 4096; /* 64 pages of counters */
	cu_setup(&f, 0, *kind, many * STRIDE * 4);
	gpu_cpu_access_waits(&f, *kind, many, 20000);
	gpu_teardown(&f);
}

/* Adopted memory: its device view has holes, which cudaHostRegister
 * would pin; refused, the memory untouched. */
Test(cuda, adopted_memory_refused, .timeout = 60)
{
	struct gpu_fix f;
	uint32_t *c = cu_setup(&f, 0, MEM_ANON, 2 * PS);
	c[0] = 7;
	struct dxm_cuda_counter_args a = { NCOUNTERS, STRIDE, 1, 1 };
	int err = dxm_cuda_dispatch(f.dev, f.rmw, c, 2 * PS, &a, gpu_groups,
				    0, NULL);
	cr_assert_eq(err, -EOPNOTSUPP, "dispatch: %s", strerror(-err));
	cr_assert_eq(c[0], 7);
	gpu_teardown(&f);
}

/* A device that does not finish within the timeout is declared lost: the
 * CPU gets its page back, and the backend refuses further work. */
Test(cuda, lost_device_does_not_hang_cpu, .timeout = 300)
{
	struct gpu_fix f;
	size_t len = 2 * PS;
	cu_setup(&f, 100, MEM_MEMFD, len);
	/* One block, each thread a long chain of round trips to host
	 * memory: seconds on PCIe, and done not long after: a GPU that
	 * finishes within the timeout skips. */
	struct gpu_args a = { 64, STRIDE, 2000000, 1 };
	const uint32_t g[3] = { 1, 1, 1 };
	gpu_lost_device(&f, len, &a, g, true);
	gpu_teardown(&f);
}
