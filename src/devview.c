// SPDX-License-Identifier: MIT
/*
 * dxm_device_view: the device-side view of a whole region, for a backend
 * to import once (a Vulkan VK_EXT_external_memory_host import, a CUDA
 * cudaHostRegister, an RDMA memory registration) before any conversion.
 * dxm_make_exclusive() then returns addresses inside it, and the backend
 * turns them into offsets of its one import.
 *
 * No lock of its own: the region is found with dxmi_region_lookup() (vt_lock
 * for reading, left with a reference), and what is read of it (dev,
 * npages, kind, fd) is set when the region is made and stays until its
 * last reference goes.
 *
 * Locking: no lock of its own (a lookup in region.c's tables).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* A new descriptor of the memfd behind a device view: dxm's own, where it
 * kept one, else the file of the mapping itself through
 * /proc/self/map_files (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE). */
static int memfd_of(struct dxm_region *r, uintptr_t base, size_t len)
{
	if (r->fd >= 0) {
		int fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
		return fd >= 0 ? fd : -errno;
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)base, (unsigned long)(base + len));
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == EACCES ? -EPERM : -errno;
	return fd;
}

DXM_API int dxm_device_view(struct dxm_ctx *ctx, const void *addr,
			    unsigned flags, struct dxm_device_view *dv,
			    size_t size)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	size_t need = (flags & DXM_DEVVIEW_FD)
			      ? offsetof(struct dxm_device_view, fd) +
					sizeof(dv->fd)
			      : offsetof(struct dxm_device_view, fd);
	if (!addr || !dv || size < need || (flags & ~DXM_DEVVIEW_FD))
		return -EINVAL;
	struct dxm_where w;
	uintptr_t a = (uintptr_t)addr;
	if (dxmi_region_lookup(ctx, a, &w))
		return -EFAULT;
	struct dxm_region *r = w.r;
	struct dxm_device_view v = { 0 };
	v.sz = sizeof(v);
	v.base = r->dev;
	v.len = r->npages << r->pshift;
	v.offset = (w.pgoff << r->pshift) + (a - w.vstart);
	v.psize = r->psize;
	v.fd = -1;
	v.kind = r->kind->devview_kind;
	v.flags = r->kind->devview_flags;
	if (flags & DXM_DEVVIEW_FD) {
		if (!(r->kind->flags & KIND_FILE))
			err = -EOPNOTSUPP; /* private memory has no file */
		else
			err = v.fd = memfd_of(r, (uintptr_t)r->dev, v.len);
	}
	dxmi_region_put(r);
	if (err < 0)
		return err;
	/* A caller built against an older, shorter structure gets what it
	 * has room for (sz says how much that is). */
	if (size < sizeof(v))
		v.sz = size;
	memcpy(dv, &v, size < sizeof(v) ? size : sizeof(v));
	return 0;
}
