/* SPDX-License-Identifier: MIT */
/*
 * dxm_vk - GPU compute on host memory made safe, through Vulkan.
 *
 * A device without PCIe AtomicOps (or any device whose read-modify-write
 * of host memory is two bus transactions) loses updates when the CPU
 * writes the same memory meanwhile.  dxm_vk runs a compute shader on
 * memory from dxm_alloc() or dxm_adopt() with the pages held exclusive:
 * while the work is in flight every CPU mapping of them is revoked, and a
 * CPU access waits until the work is done, then sees all of it.
 *
 * Written on dxm's public API only, as an outside driver would be (the
 * mirror is the model): each region's device view (dxm_device_view) is
 * imported once with VK_EXT_external_memory_host; a dispatch runs the
 * kernel's driver loop (read_begin -> dxm_make_exclusive(owner = the
 * backend) -> lock, read_retry -> record and submit, the timeline value
 * remembered for the range -> unlock -> dxm_exclusive_unlock); the
 * invalidate callback waits, outside the lock, for the work in flight on
 * the range.  The program writes the shader and calls dxm_vk_dispatch().
 *
 * All functions return 0 (or a count) on success and a negative errno.
 */
#ifndef DXM_VK_H
#define DXM_VK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dxm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dxm_vk;
struct dxm_vk_kernel;

struct dxm_vk_opts {
	size_t sz;	     /* sizeof(struct dxm_vk_opts) */
	int device;	     /* index among the devices that can import host
				memory; -1 (or 0): the first */
	unsigned timeout_ms; /* an invalidation waits this long for device
				work, then declares the device lost (0:
				10000) */
	char *why;	     /* if set, dxm_vk_create's failure says why */
	size_t why_len;
};

/* -ENODEV: no Vulkan device with VK_EXT_external_memory_host and timeline
 * semaphores (opts->why says which was missing). */
int dxm_vk_create(struct dxm_ctx *ctx, const struct dxm_vk_opts *opts,
		  struct dxm_vk **vkp);
/* Waits for all work, then frees everything. */
void dxm_vk_destroy(struct dxm_vk *vk);
const char *dxm_vk_device_name(const struct dxm_vk *vk);

/* A compute pipeline: binding 0 of set 0 is one storage buffer (the range
 * a dispatch is given), push_size bytes of push constants. */
int dxm_vk_kernel_create(struct dxm_vk *vk, const uint32_t *spirv,
			 size_t size, uint32_t push_size,
			 struct dxm_vk_kernel **kp);
void dxm_vk_kernel_destroy(struct dxm_vk_kernel *k);

/* dxm_vk_dispatch flags */
#define DXM_VK_UNMANAGED (1u << 0) /* addr is ordinary host memory, not
				      dxm's: imported as it is and used with
				      no exclusive access (what dxm
				      prevents; for demonstrations) */

/*
 * Run kernel k with [addr, addr+len) (page aligned, in one region) as its
 * storage buffer, groups[0..2] workgroups, push (k's push_size bytes) as
 * push constants.  Returns once the work is submitted, the pages held
 * exclusive by the backend; *ticket (if not NULL) names the work for
 * dxm_vk_wait.  -EBUSY: the pages stayed busy (another device, or the
 * CPU taking them back) for the whole timeout; -ENODEV: the device is
 * lost; -EOPNOTSUPP: a huge-page region (DXM_ALLOC_HUGE), not supported
 * yet.
 */
int dxm_vk_dispatch(struct dxm_vk *vk, struct dxm_vk_kernel *k, void *addr,
		    size_t len, const void *push, const uint32_t groups[3],
		    unsigned flags, uint64_t *ticket);

/* 0 once the work named by ticket is done, -ETIMEDOUT, -ENODEV (lost). */
int dxm_vk_wait(struct dxm_vk *vk, uint64_t ticket, uint64_t timeout_ns);
/* 1 if done, 0 if still in flight, -ENODEV. */
int dxm_vk_done(struct dxm_vk *vk, uint64_t ticket);

struct dxm_vk_stats {
	uint64_t dispatches;	     /* submitted */
	uint64_t retries;	     /* read_retry said "again" */
	uint64_t busy_retries;	     /* dxm_make_exclusive refused a page */
	uint64_t imports;	     /* device views imported */
	uint64_t invalidations;	     /* callbacks that found work in flight */
	uint64_t invalidate_wait_ns; /* time they waited for it */
	bool lost;		     /* the device is lost */
};
void dxm_vk_get_stats(struct dxm_vk *vk, struct dxm_vk_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* DXM_VK_H */
