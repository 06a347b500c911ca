// SPDX-License-Identifier: MIT
/*
 * The huge-page kind of memory (dxm_alloc with DXM_ALLOC_HUGE): the
 * memfd kind (memfd.c) on a hugetlbfs memfd of 2 MiB pages.  A region page
 * is a huge page: its state byte, its dev[] entry, what a revocation
 * zaps (one MADV_DONTNEED drops the whole huge mapping) and what a fault
 * maps back (one UFFDIO_CONTINUE of the aligned 2 MiB, a MINOR fault on
 * hugetlbfs, which needs UFFD_FEATURE_MINOR_HUGETLBFS).  Everything else
 * is memfd.c's, which works in the region's page size.
 *
 * No lock of its own (memfd.c's rules).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21u << 26) /* MFD_HUGE_SHIFT */
#endif
#define HUGE_SHIFT 21

static int hugetlb_create_pages(struct dxm_region *r)
{
	struct dxm_ctx *ctx = r->ctx;
	if (!(ctx->uinfo.features & UFFD_FEATURE_MINOR_HUGETLBFS)) {
		pr_warn("dxm_alloc: huge pages need minor faults on hugetlbfs "
		       "(UFFD_FEATURE_MINOR_HUGETLBFS, Linux 5.13), which this "
		       "kernel's userfaultfd does not offer");
		return -ENOSYS;
	}
	int err = dxmi_memfd_create_file(r, MFD_HUGETLB | MFD_HUGE_2MB);
	if (err == -ENOSPC || err == -ENOMEM) {
		/* fallocate and mmap's reservation fail so when the pool is
		 * short (memfd_create and ftruncate never do). */
		pr_warn("dxm_alloc: %zu huge page(s) of 2 MiB are not free in "
		       "the pool: reserve them in /proc/sys/vm/nr_hugepages "
		       "(see HugePages_Free in /proc/meminfo)",
		       r->npages);
		return -ENOMEM;
	}
	if (err == -EINVAL)
		pr_warn("dxm_alloc: this system has no 2 MiB huge pages "
		       "(memfd_create(MFD_HUGETLB | MFD_HUGE_2MB): %s)",
		       strerror(-err));
	return err;
}

const struct dxm_kind dxmi_hugetlb_kind = {
	.name = "hugetlb",
	.flags = KIND_ALIAS | KIND_FILE,
	.pshift = HUGE_SHIFT,
	.devview_kind = DXM_DEVVIEW_MEMFD,
	.create = hugetlb_create_pages,
	.revoke = dxmi_memfd_revoke,
	.fill = dxmi_memfd_fill,
	.restore = dxmi_memfd_restore,
	.restore_run = dxmi_memfd_restore_run,
	.restore_span = dxmi_memfd_restore_span,
	.gone = dxmi_memfd_gone,
};
