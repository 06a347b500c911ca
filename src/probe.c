// SPDX-License-Identifier: MIT
/*
 * What needs no context: the kernel probe (dxm_probe), the library's
 * version, and the names of the API's values.  The probe opens the
 * userfaultfds a context would open, with the same features (uffd.c does
 * the opening and caches what the kernel offers), and closes them.
 *
 * Locking: no lock of its own (uffd.c's probe_mtx inside dxmi_uffd_open).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "internal.h"

/* ---------------------------------------------------------------- version */

DXM_API const char *dxm_version(void)
{
	return DXM_VERSION;
}

DXM_API unsigned dxm_version_major(void)
{
	return DXM_VERSION_MAJOR;
}

DXM_API unsigned dxm_version_minor(void)
{
	return DXM_VERSION_MINOR;
}

/* ------------------------------------------------------------------ probe */

/* The features are those dxm_ctx_create asks for (internal.h). */

/* Open a userfaultfd as a context would, and close it: 0 or -errno. */
static int try_open(struct dxm_uffd_info *info, uint64_t required,
		    uint64_t optional, bool quiet)
{
	int fd = dxmi_uffd_open(info, required, optional, quiet);
	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

DXM_API int dxm_probe(struct dxm_features *f, size_t size)
{
	if (!f ||
	    size < offsetof(struct dxm_features, flags) + sizeof(f->flags))
		return -EINVAL;
	struct dxm_features v = { .sz = sizeof(v) };
	struct dxm_uffd_info info, anon, sigbus;
	/* Not quiet: why dxm cannot run here is what dxm_ctx_create says. */
	int err = try_open(&info, CTX_UFFD_REQUIRED, CTX_UFFD_OPTIONAL, false);
	if (err)
		return err;
	v.uffd_mode = (uint32_t)info.mode;
	v.uffd_features = info.features;
	v.uffd_offered = info.offered;
	v.handler_threads = dxmi_ctx_default_threads();
	if (info.mode != DXM_UFFD_USER_ONLY)
		v.flags |= DXM_FEAT_KERNEL_FAULTS;
	/* The rest is optional in a context: its absence is an answer. */
	if (!try_open(&anon, ANON_UFFD_REQUIRED, ANON_UFFD_OPTIONAL, true)) {
		v.uffd_anon_features = anon.features;
		v.flags |= DXM_FEAT_ADOPT;
		if (anon.features & UFFD_FEATURE_EVENT_FORK)
			v.flags |= DXM_FEAT_FORK_EVENTS;
	}
	if (!try_open(&sigbus, CTX_UFFD_REQUIRED | UFFD_FEATURE_SIGBUS,
		      CTX_UFFD_OPTIONAL, true))
		v.flags |= DXM_FEAT_SIGBUS;
	/* An older caller gets what it has room for (sz says how much); a
	 * newer one's fields beyond ours read 0. */
	if (size < sizeof(v)) {
		v.sz = size;
		memcpy(f, &v, size);
	} else {
		memcpy(f, &v, sizeof(v));
		memset((char *)f + sizeof(v), 0, size - sizeof(v));
	}
	return 0;
}

/* ------------------------------------------------------------------ names */

static const char *const event_names[] = {
	[DXM_EVENT_CLEAR] = "clear",
	[DXM_EVENT_EXCLUSIVE] = "exclusive",
	[DXM_EVENT_UNMAP] = "unmap",
	[DXM_EVENT_PROTECTION] = "protection",
	[DXM_EVENT_FORK] = "fork",
	[DXM_EVENT_REMAP] = "remap",
};

DXM_API const char *dxm_event_str(enum dxm_event event)
{
	unsigned i = (unsigned)event;
	if (i < sizeof(event_names) / sizeof(event_names[0]) && event_names[i])
		return event_names[i];
	return "unknown";
}

DXM_API const char *dxm_uffd_mode_str(enum dxm_uffd_mode mode)
{
	switch ((int)mode) {
	case DXM_UFFD_DEV:
		return "dev";
	case DXM_UFFD_SYSCALL:
		return "syscall";
	case DXM_UFFD_USER_ONLY:
		return "user-only";
	default:
		return "unknown";
	}
}

DXM_API const char *dxm_resolution_str(unsigned ctx_flags)
{
	if (!dxmi_ctx_flags_ok(ctx_flags)) /* what dxm_ctx_create refuses */
		return "unknown";
	if (ctx_flags & DXM_CTX_SIGBUS)
		return "sigbus";
	return ctx_flags & DXM_CTX_HANDLER_SPIN	      ? "spin"
	       : ctx_flags & DXM_CTX_HANDLER_ADAPTIVE ? "adaptive"
						      : "thread";
}

DXM_API const char *dxm_uffd_feature_str(uint64_t feature)
{
	const char *name = dxmi_uffd_feature_name(feature, NULL);
	return name ? name : "unknown";
}
