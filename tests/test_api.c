// SPDX-License-Identifier: MIT
/*
 * What needs no context: dxm_probe against what a context reports in
 * dxm_stats, DXM_OPTS, the version calls and macros, and the names of the
 * API's values.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "common.h"

/* The probe, or skip where dxm cannot run; then it must agree with
 * dxm_ctx_create. */
static struct dxm_features probe_or_skip(void)
{
	struct dxm_features f = DXM_OPTS(dxm_features);
	int err = dxm_probe(&f, sizeof(f));
	if (err) {
		struct dxm_ctx *ctx;
		cr_assert_eq(dxm_ctx_create(&ctx, NULL), err,
			     "dxm_probe gave %d: a context must fail the same",
			     err);
		ctx_or_skip(NULL); /* skips with the reason */
	}
	return f;
}

static unsigned count_fds(void)
{
	unsigned n = 0;
	DIR *d = opendir("/proc/self/fd");
	cr_assert(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

Test(api, probe_agrees_with_a_context, .timeout = 30)
{
	unsigned fds = count_fds();
	struct dxm_features f = probe_or_skip();
	cr_assert_eq(count_fds(), fds, "dxm_probe must close its fds");
	cr_assert_eq(f.sz, sizeof(f));
	cr_assert_eq(f.reserved, 0);
	cr_assert_str_neq(dxm_uffd_mode_str(f.uffd_mode), "unknown");

	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct dxm_stats st = stats(ctx);
	dxm_ctx_destroy(ctx);
	cr_assert_eq(f.uffd_mode, st.uffd_mode);
	cr_assert_eq(f.uffd_features, st.uffd_features, "%#llx != %#llx",
		     (unsigned long long)f.uffd_features,
		     (unsigned long long)st.uffd_features);
	cr_assert_eq(f.uffd_anon_features, st.uffd_anon_features,
		     "%#llx != %#llx",
		     (unsigned long long)f.uffd_anon_features,
		     (unsigned long long)st.uffd_anon_features);
	cr_assert_eq(f.handler_threads, st.handler_threads);
	cr_assert_eq(f.uffd_features & ~f.uffd_offered, 0,
		     "enabled features must be offered ones");
	cr_assert_eq(!!(f.flags & DXM_FEAT_KERNEL_FAULTS),
		     st.uffd_mode != DXM_UFFD_USER_ONLY);
	cr_assert_eq(!!(f.flags & DXM_FEAT_ADOPT), st.uffd_anon_features != 0);
	cr_assert_eq(!!(f.flags & DXM_FEAT_FORK_EVENTS),
		     !!(st.uffd_anon_features & UFFD_FEATURE_EVENT_FORK));
	cr_assert_eq(f.flags & ~(DXM_FEAT_KERNEL_FAULTS | DXM_FEAT_ADOPT |
				 DXM_FEAT_SIGBUS | DXM_FEAT_FORK_EVENTS),
		     0);
	if (geteuid() == 0)
		cr_assert(f.flags & DXM_FEAT_KERNEL_FAULTS,
			  "root gets kernel-mode fault resolution");
	else
		cr_assert_not(f.flags & DXM_FEAT_FORK_EVENTS,
			      "EVENT_FORK needs CAP_SYS_PTRACE");
}

Test(api, probe_sigbus_agrees_with_a_sigbus_context, .timeout = 30)
{
	struct dxm_features f = probe_or_skip();
	struct dxm_ctx *ctx;
	int err = dxm_ctx_create(&ctx,
				 &DXM_OPTS(dxm_ctx_opts,
					   .flags = DXM_CTX_SIGBUS));
	if (!(f.flags & DXM_FEAT_SIGBUS)) {
		cr_assert_neq(err, 0, "DXM_FEAT_SIGBUS unset, yet a "
				      "DXM_CTX_SIGBUS context was created");
		return;
	}
	cr_assert_eq(err, 0, "DXM_FEAT_SIGBUS set: %s", strerror(-err));
	struct dxm_stats st = stats(ctx);
	dxm_ctx_destroy(ctx);
	cr_assert(st.uffd_features & UFFD_FEATURE_SIGBUS);
	cr_assert(f.uffd_offered & UFFD_FEATURE_SIGBUS);
	cr_assert_not(f.uffd_features & UFFD_FEATURE_SIGBUS,
		      "the default context has no SIGBUS");
}

Test(api, probe_handler_threads_follow_the_environment, .timeout = 30)
{
	probe_or_skip();
	static const struct {
		const char *env;
		unsigned want;
	} cases[] = { { "5", 5 }, { "64", 64 }, { "0", 1 }, { "65", 1 },
		      { "x", 1 } };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(setenv("DXM_HANDLER_THREADS", cases[i].env, 1), 0);
		struct dxm_features f = DXM_OPTS(dxm_features);
		cr_assert_eq(dxm_probe(&f, sizeof(f)), 0);
		cr_assert_eq(f.handler_threads, cases[i].want, "%s: %u",
			     cases[i].env, f.handler_threads);
		if (i == 0) {
			struct dxm_ctx *ctx = ctx_or_skip(NULL);
			cr_assert_eq(stats(ctx).handler_threads, 5);
			dxm_ctx_destroy(ctx);
		}
	}
}

Test(api, probe_sizes, .timeout = 30)
{
	struct dxm_features full = probe_or_skip();
	const size_t min = offsetof(struct dxm_features, flags) +
			   sizeof(full.flags);
	unsigned char buf[sizeof(struct dxm_features) + 64];

	cr_assert_eq(dxm_probe(NULL, sizeof(full)), -EINVAL);
	memset(buf, 0xa5, sizeof(buf));
	cr_assert_eq(dxm_probe((struct dxm_features *)buf, min - 1), -EINVAL);
	cr_assert_eq(dxm_probe((struct dxm_features *)buf, 0), -EINVAL);
	for (size_t i = 0; i < sizeof(buf); i++)
		cr_assert_eq(buf[i], 0xa5, "-EINVAL wrote byte %zu", i);

	/* An older caller's structure that stops after flags. */
	cr_assert_eq(dxm_probe((struct dxm_features *)buf, min), 0);
	struct dxm_features got;
	memcpy(&got, buf, min);
	cr_assert_eq(got.sz, min);
	cr_assert_eq(got.uffd_mode, full.uffd_mode);
	cr_assert_eq(got.flags, full.flags);
	for (size_t i = min; i < sizeof(buf); i++)
		cr_assert_eq(buf[i], 0xa5, "wrote byte %zu beyond size", i);

	/* A newer caller's bigger one: what we do not know reads 0. */
	memset(buf, 0xa5, sizeof(buf));
	cr_assert_eq(dxm_probe((struct dxm_features *)buf, sizeof(buf)), 0);
	memcpy(&got, buf, sizeof(got));
	cr_assert_eq(got.sz, sizeof(got));
	cr_assert_eq(got.uffd_features, full.uffd_features);
	for (size_t i = sizeof(got); i < sizeof(buf); i++)
		cr_assert_eq(buf[i], 0, "byte %zu beyond ours not zeroed", i);
}

Test(api, probe_in_a_forked_child, .timeout = 30)
{
	struct dxm_features f = probe_or_skip();
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* No context needed: it works where the parent's refuses. */
		struct dxm_features c = DXM_OPTS(dxm_features);
		struct dxm_stats st;
		int ok = dxm_probe(&c, sizeof(c)) == 0 &&
			 c.uffd_mode == f.uffd_mode &&
			 dxm_stats(ctx, &st, sizeof(st)) == -ECHILD;
		_exit(ok ? 0 : 1);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	dxm_ctx_destroy(ctx);
}

Test(api, opts_macro, .timeout = 30)
{
	struct dxm_ctx_opts o = DXM_OPTS(dxm_ctx_opts, .handler_threads = 2);
	cr_assert_eq(o.sz, sizeof(struct dxm_ctx_opts));
	cr_assert_eq(o.flags, 0);
	cr_assert_eq(o.spin_us, 0);
	cr_assert_eq(o.handler_threads, 2);
	struct dxm_features f = DXM_OPTS(dxm_features);
	cr_assert_eq(f.sz, sizeof(struct dxm_features));
	cr_assert_eq(f.uffd_mode, 0);
	cr_assert_eq(f.flags, 0);
	cr_assert_eq(f.uffd_features, 0);

	struct dxm_ctx *ctx = ctx_or_skip(&o);
	cr_assert_eq(stats(ctx).handler_threads, 2);
	dxm_ctx_destroy(ctx);
	/* Unknown flags are still refused through the macro. */
	cr_assert_eq(dxm_ctx_create(&ctx, &DXM_OPTS(dxm_ctx_opts,
						    .flags = 1u << 30)),
		     -EINVAL);
}

Test(api, version, .timeout = 30)
{
	char want[32];
	snprintf(want, sizeof(want), "%d.%d.%d", DXM_VERSION_MAJOR,
		 DXM_VERSION_MINOR, DXM_VERSION_PATCH);
	cr_assert_str_eq(DXM_VERSION, want);
	cr_assert_str_eq(dxm_version(), DXM_VERSION);
	cr_assert_eq(dxm_version_major(), DXM_VERSION_MAJOR);
	cr_assert_eq(dxm_version_minor(), DXM_VERSION_MINOR);
#ifdef DXM_MESON_VERSION
	cr_assert_str_eq(DXM_VERSION, DXM_MESON_VERSION,
			 "include/dxm.h and meson.build disagree");
#endif
}

/* n names: none NULL, empty or "unknown", no two the same. */
static void distinct(const char *const *names, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++) {
		cr_assert(names[i] && *names[i], "%s %zu: no name", what, i);
		cr_assert_str_neq(names[i], "unknown", "%s %zu", what, i);
		for (size_t j = 0; j < i; j++)
			cr_assert_str_neq(names[i], names[j], "%s %zu and %zu",
					  what, j, i);
	}
}

Test(api, event_names, .timeout = 30)
{
	static const char *const want[] = { "clear",	  "exclusive",
					    "unmap",	  "protection",
					    "fork",	  "remap" };
	const enum dxm_event ev[] = { DXM_EVENT_CLEAR,	  DXM_EVENT_EXCLUSIVE,
				      DXM_EVENT_UNMAP,	  DXM_EVENT_PROTECTION,
				      DXM_EVENT_FORK,	  DXM_EVENT_REMAP };
	const char *got[6];
	for (size_t i = 0; i < 6; i++) {
		got[i] = dxm_event_str(ev[i]);
		cr_assert_str_eq(got[i], want[i]);
	}
	distinct(got, 6, "event");
	cr_assert_str_eq(dxm_event_str((enum dxm_event)-1), "unknown");
	cr_assert_str_eq(dxm_event_str((enum dxm_event)(DXM_EVENT_REMAP + 1)),
			 "unknown");
	cr_assert_str_eq(dxm_event_str((enum dxm_event)1000), "unknown");
}

Test(api, uffd_mode_names, .timeout = 30)
{
	/* The values of uffd_mode in `dxm info --json` (dxm(1)). */
	const char *got[] = { dxm_uffd_mode_str(DXM_UFFD_DEV),
			      dxm_uffd_mode_str(DXM_UFFD_SYSCALL),
			      dxm_uffd_mode_str(DXM_UFFD_USER_ONLY) };
	cr_assert_str_eq(got[0], "dev");
	cr_assert_str_eq(got[1], "syscall");
	cr_assert_str_eq(got[2], "user-only");
	distinct(got, 3, "mode");
	cr_assert_str_eq(dxm_uffd_mode_str((enum dxm_uffd_mode)0), "unknown");
	cr_assert_str_eq(dxm_uffd_mode_str((enum dxm_uffd_mode)4), "unknown");
	cr_assert_str_eq(dxm_uffd_mode_str((enum dxm_uffd_mode)-1), "unknown");
}

Test(api, resolution_names, .timeout = 30)
{
	const char *got[] = { dxm_resolution_str(0),
			      dxm_resolution_str(DXM_CTX_HANDLER_SPIN),
			      dxm_resolution_str(DXM_CTX_SIGBUS),
			      dxm_resolution_str(DXM_CTX_HANDLER_ADAPTIVE) };
	cr_assert_str_eq(got[0], "thread");
	cr_assert_str_eq(got[1], "spin");
	cr_assert_str_eq(got[2], "sigbus");
	cr_assert_str_eq(got[3], "adaptive");
	distinct(got, 4, "resolution");
	cr_assert_str_eq(dxm_resolution_str(DXM_CTX_HANDLER_SPIN |
					    DXM_CTX_HANDLER_ADAPTIVE),
			 "unknown");
	cr_assert_str_eq(dxm_resolution_str(DXM_CTX_SIGBUS |
					    DXM_CTX_HANDLER_ADAPTIVE),
			 "sigbus");
	cr_assert_str_eq(dxm_resolution_str(DXM_CTX_REQUIRE_KERNEL_FAULTS),
			 "thread");
	cr_assert_str_eq(dxm_resolution_str(DXM_CTX_REQUIRE_KERNEL_FAULTS |
					    DXM_CTX_HANDLER_SPIN),
			 "spin");
	cr_assert_str_eq(dxm_resolution_str(DXM_CTX_SIGBUS |
					    DXM_CTX_HANDLER_SPIN),
			 "sigbus");
	/* What dxm_ctx_create refuses has no mode. */
	cr_assert_str_eq(dxm_resolution_str(DXM_CTX_SIGBUS |
					    DXM_CTX_REQUIRE_KERNEL_FAULTS),
			 "unknown");
	cr_assert_str_eq(dxm_resolution_str(1u << 31), "unknown");
}

#define FEATURE(name) { name, #name }

Test(api, uffd_feature_names, .timeout = 30)
{
	/* Every bit up to UFFD_FEATURE_MOVE (Linux 6.8) has its own name. */
	const char *got[17];
	for (unsigned b = 0; b < 17; b++) {
		got[b] = dxm_uffd_feature_str(1ull << b);
		cr_assert(!strncmp(got[b], "UFFD_FEATURE_", 13), "bit %u: %s",
			  b, got[b]);
	}
	distinct(got, 17, "feature bit");
	/* The kernel header's names, for those it has. */
	static const struct {
		uint64_t bit;
		const char *name;
	} hdr[] = {
		FEATURE(UFFD_FEATURE_EVENT_FORK),
		FEATURE(UFFD_FEATURE_EVENT_REMAP),
		FEATURE(UFFD_FEATURE_EVENT_REMOVE),
		FEATURE(UFFD_FEATURE_MISSING_SHMEM),
		FEATURE(UFFD_FEATURE_EVENT_UNMAP),
		FEATURE(UFFD_FEATURE_SIGBUS),
		FEATURE(UFFD_FEATURE_THREAD_ID),
#ifdef UFFD_FEATURE_MINOR_SHMEM
		FEATURE(UFFD_FEATURE_MINOR_SHMEM),
#endif
#ifdef UFFD_FEATURE_MOVE
		FEATURE(UFFD_FEATURE_MOVE),
#endif
	};
	for (size_t i = 0; i < sizeof(hdr) / sizeof(hdr[0]); i++)
		cr_assert_str_eq(dxm_uffd_feature_str(hdr[i].bit), hdr[i].name);
	cr_assert_str_eq(dxm_uffd_feature_str(0), "unknown");
	cr_assert_str_eq(dxm_uffd_feature_str(UFFD_FEATURE_SIGBUS |
					      UFFD_FEATURE_EVENT_FORK),
			 "unknown");
	cr_assert_str_eq(dxm_uffd_feature_str(1ull << 63), "unknown");
}
