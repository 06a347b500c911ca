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
 * The bodies the CUDA backend's tests share are in gpu_common.c.
 */
#include <errno.h>
#include <string.h>

#include "gpu_common.h"
#include "counter_spv.h"
#include "dxm_vk.h"

static int vk_dispatch(struct gpu_fix *f, void *k, void *addr, size_t len,
		       const struct gpu_args *a, const uint32_t groups[3],
		       bool unmanaged, uint64_t *ticket)
{
	return dxm_vk_dispatch(f->dev, k, addr, len, a, groups,
			       unmanaged ? DXM_VK_UNMANAGED : 0, ticket);
}

static int vk_wait(struct gpu_fix *f, uint64_t ticket, uint64_t timeout_ns)
{
	return dxm_vk_wait(f->dev, ticket, timeout_ns);
}

static int vk_done(struct gpu_fix *f, uint64_t ticket)
{
	return dxm_vk_done(f->dev, ticket);
}

static void vk_stats(struct gpu_fix *f, struct gpu_stats *st)
{
	struct dxm_vk_stats s;
	dxm_vk_get_stats(f->dev, &s);
	*st = GPU_STATS(s);
}

static void vk_destroy(struct gpu_fix *f)
{
	dxm_vk_kernel_destroy(f->rmw);
	dxm_vk_destroy(f->dev);
}

static const struct gpu_backend vk_backend = {
	.dispatch = vk_dispatch,
	.wait = vk_wait,
	.done = vk_done,
	.stats = vk_stats,
	.destroy = vk_destroy,
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
				       sizeof(struct gpu_args), &k);
	cr_assert_eq(err, 0, "dxm_vk_kernel_create: %s", strerror(-err));
	return k;
}

/* A context, the backend on it (vk_or_skip) with the counter kernel (the
 * load/add/store one: f->rmw), and len bytes of kind memory, zeroed (none
 * for len 0). */
static uint32_t *vk_setup(struct gpu_fix *f, unsigned timeout_ms,
			  enum mem_kind kind, size_t len)
{
	memset(f, 0, sizeof(*f));
	f->b = &vk_backend;
	f->ctx = ctx_or_skip(NULL);
	f->dev = vk_or_skip(f->ctx, timeout_ms);
	f->rmw = counter_kernel(f->dev);
	return len ? gpu_mem(f, kind, len) : NULL;
}

/* Without dxm: the same shader on ordinary host memory, imported as it
 * is, races with the CPU's atomics and loses updates. */
Test(vulkan, lost_updates_without_dxm, .timeout = 300)
{
	struct gpu_fix f;
	vk_setup(&f, 0, MEM_MEMFD, 0);
	int64_t lost = gpu_unmanaged_rounds(&f, f.rmw, "load/add/store");
	cr_assert_gt(lost, 0, "no update lost in 5 rounds: the race did not "
			      "happen here (one CPU?)");
	gpu_teardown(&f);
}

#define KIND_TEST(name, ...)                                                   \
	KIND_TEST_OF(vulkan, MEM_KINDS_ALL_PARAMS, name, __VA_ARGS__)

/* Through the backend: dispatch after dispatch while CPU threads hammer
 * the same counters; not one update lost. */
KIND_TEST(no_lost_updates_through_backend, .timeout = 300)
{
	struct gpu_fix f;
	/* A CPU access may wait for every dispatch queued: no timeout a
	 * loaded machine could reach (a lost device would fail the test). */
	vk_setup(&f, 120000, *kind, 2 * PS);
	gpu_no_lost_updates(&f, *kind);
	gpu_teardown(&f);
}

/* A CPU access to a page under work in flight waits for that work and
 * then sees all of it; until then no CPU view maps the pages. */
KIND_TEST(cpu_access_waits_for_work_in_flight, .timeout = 300)
{
	struct gpu_fix f;
	uint32_t many = 4096; /* 64 pages of counters */
	/* Seconds of work on lavapipe, more on a loaded machine: a timeout
	 * far beyond it, or the device is declared lost (the next test). */
	vk_setup(&f, 120000, *kind, many * STRIDE * 4);
	gpu_cpu_access_waits(&f, *kind, many, 50000);
	gpu_teardown(&f);
}

/* A device that does not finish within the timeout is declared lost: the
 * CPU gets its page back, and the backend refuses further work. */
Test(vulkan, lost_device_does_not_hang_cpu, .timeout = 300)
{
	struct gpu_fix f;
	uint32_t many = 8192; /* 128 pages of counters */
	size_t len = many * STRIDE * 4;
	vk_setup(&f, 100, MEM_MEMFD, len);
	/* Long enough to outlast the timeout by far on any CPU. */
	struct gpu_args a = { many, STRIDE, 60000, 1 };
	const uint32_t g[3] = { many / 64, 1, 1 };
	gpu_lost_device(&f, len, &a, g, false);
	gpu_teardown(&f);
}
