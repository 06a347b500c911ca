// SPDX-License-Identifier: MIT
/*
 * B14 device backends, the core's part: dxm_device_view() gives, once, the
 * device-side view of a whole region, which a backend imports before any
 * conversion.  Every address dxm_make_exclusive() returns lies in it; the
 * view of a memfd region is never revoked (pagemap) and never registered
 * with a userfaultfd (smaps); adopted memory's view is its staging area,
 * whose flags say what a backend must know about it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

/* A test on a context and len bytes of *kind memory (common.h). */
#define MEM_TEST(name, len)                                                    \
	MEM_TEST_OF(devview, MEM_KINDS_ALL_PARAMS, name, len, .timeout = 30)

static struct dxm_device_view view_of(struct dxm_ctx *ctx, const void *addr)
{
	struct dxm_device_view dv;
	memset(&dv, 0xa5, sizeof(dv));
	int err = dxm_device_view(ctx, addr, 0, &dv, sizeof(dv));
	cr_assert_eq(err, 0, "dxm_device_view(%p): %s", addr, strerror(-err));
	cr_assert_eq(dv.sz, sizeof(dv));
	cr_assert_eq(dv.fd, -1);
	return dv;
}

/* Whether the mapping holding addr is registered with a userfaultfd, read
 * off /proc/self/smaps ("um", "uw", "ui" in VmFlags). */
static bool uffd_registered(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	cr_assert_not_null(f);
	char line[512];
	bool in = false, reg = false, found = false;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2) { /* a header */
			in = s <= a && a < e;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			found = true;
			reg = strstr(line, " um") || strstr(line, " uw") ||
			      strstr(line, " ui");
			break;
		}
	}
	fclose(f);
	cr_assert(found, "no smaps entry for %p", addr);
	return reg;
}

/* The same view from every address of the region, from every CPU view of
 * it, with addr's own offset. */
MEM_TEST(one_view_per_region, 16 * PS)
{
	size_t len = m.len;
	struct dxm_device_view dv = view_of(ctx, m.base);
	cr_assert_not_null(dv.base);
	cr_assert_eq(dv.len, len);
	cr_assert_eq(dv.offset, 0);
	cr_assert_eq(dv.psize, PS);
	cr_assert_eq((uintptr_t)dv.base % PS, 0);
	cr_assert(dv.base != m.base && dv.base != m.region);
	if (*kind == MEM_ANON) {
		cr_assert_eq(dv.kind, DXM_DEVVIEW_STAGING);
		cr_assert_eq(dv.flags,
			     DXM_DEVVIEW_HOLES | DXM_DEVVIEW_REGISTERED);
	} else {
		cr_assert_eq(dv.kind, DXM_DEVVIEW_MEMFD);
		cr_assert_eq(dv.flags, 0);
	}
	for (size_t off = 0; off < len; off += 3 * PS + 8) {
		struct dxm_device_view d2 =
			view_of(ctx, (char *)m.base + off);
		cr_assert_eq(d2.base, dv.base);
		cr_assert_eq(d2.len, len);
		cr_assert_eq(d2.offset, off, "offset %zu for %zu", d2.offset,
			     off);
	}
	if (*kind == MEM_ALIAS) { /* the dxm_alloc view: the same */
		struct dxm_device_view d2 = view_of(ctx, m.region);
		cr_assert_eq(d2.base, dv.base);
	}
}

/* Every address dxm_make_exclusive returns is base + the page's offset. */
MEM_TEST(make_exclusive_returns_addresses_in_it, 8 * PS)
{
	struct dxm_device_view dv = view_of(ctx, m.base);
	void *dev[8];
	char *start = (char *)m.base + 2 * PS;
	cr_assert_eq(dxm_make_exclusive(ctx, start, 4 * PS, ctx, dev), 4);
	for (size_t i = 0; i < 4; i++)
		cr_assert_eq(dev[i], (char *)dv.base + (2 + i) * PS,
			     "page %zu: %p, view %p", i, dev[i], dv.base);
	dxm_exclusive_unlock(ctx, start, 4 * PS, dev);
}

/* While the CPU view is revoked (pagemap) the device view keeps the pages,
 * and the CPU sees the device's writes made through it once it faults
 * them back. */
MEM_TEST(view_is_never_revoked, 8 * PS)
{
	size_t len = m.len, n = len / PS;
	fill_index(m.base, len, 7);
	struct dxm_device_view dv = view_of(ctx, m.base);
	void *dev[8];
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, len, ctx, dev), 8);
	dxm_exclusive_unlock(ctx, m.base, len, dev);
	cr_assert_eq(pages_present(m.base, len), 0, "CPU view still mapped");
	cr_assert_eq(pages_present(dv.base, len), n,
		     "device view lost pages");
	cr_assert(check_index(dv.base, len, 7));
	uint64_t *w = dv.base;
	for (size_t i = 0; i < len / 8; i++)
		w[i] += 1000;
	cr_assert_eq(pages_present(m.base, len), 0);
	cr_assert(check_index(m.base, len, 1007)); /* faults back */
	if (*kind != MEM_ANON) {
		/* Given back to the CPU, the memfd's view still has them. */
		cr_assert_eq(pages_present(dv.base, len), n);
		cr_assert(check_index(dv.base, len, 1007));
	}
}

/* A memfd region's device view is not registered with any userfaultfd: a
 * device running on CPU threads (lavapipe) touches it from inside dxm's
 * invalidation wait.  Adopted memory's staging area is (UFFDIO_MOVE needs
 * it), and the view's flags say so. */
MEM_TEST(registration_is_what_flags_say, 4 * PS)
{
	struct dxm_device_view dv = view_of(ctx, m.base);
	cr_assert(uffd_registered(m.base), "the CPU view is registered");
	cr_assert_eq(uffd_registered(dv.base),
		     !!(dv.flags & DXM_DEVVIEW_REGISTERED),
		     "device view %p: smaps and flags %#x disagree", dv.base,
		     dv.flags);
	if (*kind != MEM_ANON)
		cr_assert(!uffd_registered(dv.base));
}

/* DXM_DEVVIEW_FD: the memfd itself, the view at offset 0 (where the
 * caller may reopen it: /proc/self/map_files needs CAP_SYS_ADMIN or
 * CAP_CHECKPOINT_RESTORE); adopted memory has no file. */
MEM_TEST(fd_of_memfd, 4 * PS)
{
	size_t len = m.len;
	fill_index(m.base, len, 3);
	struct dxm_device_view dv;
	int err = dxm_device_view(ctx, (char *)m.base + PS, DXM_DEVVIEW_FD,
				  &dv, sizeof(dv));
	if (*kind == MEM_ANON) {
		cr_assert_eq(err, -EOPNOTSUPP, "%d", err);
		return;
	}
	if (err == -EPERM) {
		mem_done(&m);
		cr_skip_test("SKIP: reopening the memfd needs CAP_SYS_ADMIN or "
			     "CAP_CHECKPOINT_RESTORE here");
	}
	cr_assert_eq(err, 0, "%s", strerror(-err));
	cr_assert(dv.fd >= 0);
	cr_assert_eq(dv.offset, PS);
	struct stat sb;
	cr_assert_eq(fstat(dv.fd, &sb), 0);
	cr_assert_eq((size_t)sb.st_size, len);
	cr_assert(fcntl(dv.fd, F_GETFD) & FD_CLOEXEC);
	uint64_t w;
	cr_assert_eq(pread(dv.fd, &w, sizeof(w), (off_t)dv.offset),
		     (ssize_t)sizeof(w));
	cr_assert_eq(w, PS / 8 + 3);
	close(dv.fd);
}

/* Bad input: each its errno, nothing written. */
Test(devview, bad_input, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	void *p;
	cr_assert_eq(dxm_alloc(ctx, 2 * PS, 0, &p), 0);
	struct dxm_device_view dv;
	memset(&dv, 0x5a, sizeof(dv));
	cr_assert_eq(dxm_device_view(NULL, p, 0, &dv, sizeof(dv)), -EINVAL);
	cr_assert_eq(dxm_device_view(ctx, NULL, 0, &dv, sizeof(dv)), -EINVAL);
	cr_assert_eq(dxm_device_view(ctx, p, 0, NULL, sizeof(dv)), -EINVAL);
	cr_assert_eq(dxm_device_view(ctx, p, 0, &dv, 0), -EINVAL);
	cr_assert_eq(dxm_device_view(ctx, p, 1u << 7, &dv, sizeof(dv)),
		     -EINVAL);
	/* No room for the descriptor asked for. */
	cr_assert_eq(dxm_device_view(ctx, p, DXM_DEVVIEW_FD, &dv,
				     offsetof(struct dxm_device_view, fd)),
		     -EINVAL);
	char *unmanaged = anon_map(PS);
	cr_assert_eq(dxm_device_view(ctx, unmanaged, 0, &dv, sizeof(dv)),
		     -EFAULT);
	cr_assert_eq(dxm_device_view(ctx, (char *)p + 2 * PS, 0, &dv,
				     sizeof(dv)),
		     -EFAULT);
	unsigned char junk[sizeof(dv)];
	memset(junk, 0x5a, sizeof(junk));
	cr_assert_eq(memcmp(&dv, junk, sizeof(dv)), 0, "written on failure");
	/* An older, shorter structure gets what it has room for. */
	size_t old = offsetof(struct dxm_device_view, fd);
	cr_assert_eq(dxm_device_view(ctx, p, 0, &dv, old), 0);
	cr_assert_eq(dv.sz, old);
	cr_assert_eq(dv.len, 2 * PS);
	cr_assert_eq(((unsigned char *)&dv)[old], 0x5a);
	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert_eq(dxm_device_view(ctx, p, 0, &dv, sizeof(dv)), -EFAULT);
	munmap(unmanaged, PS);
	dxm_ctx_destroy(ctx);
	cr_assert_eq(dxm_device_view(ctx, p, 0, &dv, sizeof(dv)), -EBADF);
}
