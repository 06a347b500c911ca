// SPDX-License-Identifier: MIT
/*
 * Contexts, statistics and logging: creation options, the handler threads,
 * dxm_stats, dxm_set_print, and dxm_ctx_destroy with work outstanding.
 */
#include <grp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

static unsigned count_threads_named(const char *prefix)
{
	return (unsigned)threads_named(prefix, NULL, 0);
}

Test(ctx, handler_threads_are_named_and_counted, .timeout = 30)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 3 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	cr_assert_eq(count_threads_named("dxm-fault/"), 3);
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	cr_assert_eq(st.handler_threads, 3);
	dxm_ctx_destroy(ctx);
	cr_assert_eq(count_threads_named("dxm-fault/"), 0,
		     "destroy must join its threads");
}

Test(ctx, opts_null_and_short_struct, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	dxm_ctx_destroy(ctx);
	/* An older caller's struct that stops after `flags`. */
	struct dxm_ctx_opts o = { .sz = offsetof(struct dxm_ctx_opts, flags) +
					sizeof(unsigned) };
	cr_assert_eq(dxm_ctx_create(&ctx, &o), 0);
	dxm_ctx_destroy(ctx);
}

Test(ctx, stats_report_mode_features_and_metadata, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	cr_assert(st.uffd_mode >= DXM_UFFD_DEV &&
		  st.uffd_mode <= DXM_UFFD_USER_ONLY);
	if (geteuid() == 0)
		cr_assert_neq(st.uffd_mode, DXM_UFFD_USER_ONLY,
			      "root gets kernel-mode fault resolution");
	cr_assert_eq(st.regions, 0);
	void *p;
	cr_assert_eq(dxm_alloc(ctx, 1000 * PS, 0, &p), 0);
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	cr_assert_eq(st.regions, 1);
	cr_assert_eq(st.managed_pages, 1000);
	cr_assert_leq(st.metadata_bytes, 2 * st.managed_pages,
		      "page-state table over 2 bytes per page");
	/* A shorter (older) struct gets its prefix, a longer one zeroes. */
	uint64_t first = ~0ull;
	cr_assert_eq(dxm_stats(ctx, (struct dxm_stats *)&first, sizeof(first)),
		     0);
	cr_assert_eq(first, 0, "conversions");
	char big[sizeof(st) + 64];
	memset(big, 0xff, sizeof(big));
	cr_assert_eq(dxm_stats(ctx, (struct dxm_stats *)big, sizeof(big)), 0);
	for (size_t i = sizeof(st); i < sizeof(big); i++)
		cr_assert_eq(big[i], 0);
	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	cr_assert_eq(st.regions, 0);
	cr_assert_eq(st.managed_pages, 0);
	dxm_ctx_destroy(ctx);
}

/* A region of npages pages with rec over it, its first nconv pages made
 * exclusive (and unlocked): the region. */
static char *watched_region(struct dxm_ctx *ctx, struct recorder *rec,
			    size_t npages, size_t nconv)
{
	char *p;
	void *dev[8];
	cr_assert_eq(dxm_alloc(ctx, npages * PS, 0, (void **)&p), 0);
	recorder_insert(ctx, rec, p, npages * PS);
	cr_assert_eq(dxm_make_exclusive(ctx, p, nconv * PS, NULL, dev),
		     (long)nconv);
	dxm_exclusive_unlock(ctx, p, nconv * PS, dev);
	return p;
}

Test(ctx, stats_count_conversions_faults_and_notifiers, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct recorder rec = { 0 };
	char *p = watched_region(ctx, &rec, 8, 8);
	p[0] = 1;
	p[PS] = 1;
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	cr_assert_eq(st.conversions, 1);
	cr_assert_eq(st.pages_converted, 8);
	cr_assert_eq(st.pages_refused, 0);
	cr_assert_eq(st.cpu_faults, 2, "cpu_faults %llu", (unsigned long long)st.cpu_faults);
	cr_assert_eq(st.restores, 2);
	cr_assert_eq(st.notifier_calls, 3); /* EXCLUSIVE + 2 CLEAR */
	cr_assert_gt(st.notifier_ns, 0);
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(ctx, p), 0);
	dxm_ctx_destroy(ctx);
}

static char logbuf[4096];
static int last_errno_seen;
static int capture(enum dxm_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	size_t n = strlen(logbuf);
	vsnprintf(logbuf + n, sizeof(logbuf) - n, fmt, ap);
	errno = 12345; /* the library must restore the caller's errno */
	return 0;
}

Test(ctx, set_print_captures_silences_and_keeps_errno, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	dxm_print_fn old = dxm_set_print(capture);
	cr_assert_not_null(old, "a default printer exists");
	void *p;
	errno = EINTR;
	cr_assert_eq(dxm_alloc(ctx, PS, DXM_ALLOC_INHERIT, &p), -EOPNOTSUPP);
	cr_assert_eq(errno, EINTR, "errno preserved across logging");
	cr_assert(strstr(logbuf, "DXM_ALLOC_INHERIT"), "log: '%s'", logbuf);
	cr_assert_eq(dxm_set_print(NULL), capture);
	logbuf[0] = 0;
	cr_assert_eq(dxm_alloc(ctx, PS, DXM_ALLOC_INHERIT, &p), -EOPNOTSUPP);
	cr_assert_eq(logbuf[0], 0, "NULL silences");
	dxm_set_print(old);
	(void)last_errno_seen;
	dxm_ctx_destroy(ctx);
}

/* Destroy with exclusive pages outstanding, locked and unlocked: devices
 * are told (DXM_EVENT_UNMAP), nothing hangs, the threads are gone. */
Test(ctx, destroy_with_exclusive_pages_outstanding, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct recorder rec = { 0 };
	char *p = watched_region(ctx, &rec, 8, 4);
	void *dev[8];
	cr_assert_eq(dxm_make_exclusive(ctx, p + 4 * PS, 4 * PS, NULL, dev), 4);
	/* pages 4..7 stay locked */
	recorder_remove(&rec);
	struct recorder rec2 = { 0 };
	recorder_insert(ctx, &rec2, p, 8 * PS);
	dxm_notifier_remove(rec2.n);
	dxm_ctx_destroy(ctx);
	cr_assert_eq(count_threads_named("dxm-fault/"), 0);
	/* The mapping is gone with the region. */
	cr_assert_eq(msync(p, PS, MS_ASYNC), -1);
	cr_assert_eq(errno, ENOMEM);
}

Test(ctx, destroy_notifies_unmap, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct recorder *rec = calloc(1, sizeof(*rec));
	char *p = watched_region(ctx, rec, 2, 2);
	/* Free the region (as destroy does) while the notifier lives. */
	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert(recorder_saw(rec, DXM_EVENT_UNMAP, p));
	cr_assert(recorder_saw(rec, DXM_EVENT_UNMAP, p + PS));
	recorder_remove(rec);
	free(rec);
	dxm_ctx_destroy(ctx);
}

/* B12: a program that needs system calls on exclusive pages resolved can
 * demand it; a normal user is then refused with -EPERM and a message that
 * names the remedies, instead of failing later with EFAULT. */
Test(ctx, require_kernel_faults_refused_for_normal_user, .timeout = 30)
{
	if (geteuid() == 0) {
		struct dxm_ctx_opts o = { .sz = sizeof(o),
					  .flags = DXM_CTX_REQUIRE_KERNEL_FAULTS };
		struct dxm_ctx *ctx = ctx_or_skip(&o);
		dxm_ctx_destroy(ctx); /* root gets kernel-mode resolution */
		/* Now become a normal user, as most programs are. */
		cr_assert_eq(setgroups(0, NULL), 0);
		cr_assert_eq(setresgid(65534, 65534, 65534), 0);
		cr_assert_eq(setresuid(65534, 65534, 65534), 0);
	}
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	dxm_ctx_destroy(ctx);
	if (st.uffd_mode != DXM_UFFD_USER_ONLY)
		cr_skip_test("SKIP: this normal user gets kernel-mode fault "
			     "resolution (vm.unprivileged_userfaultfd = 1, or "
			     "access to /dev/userfaultfd)");
	dxm_print_fn old = dxm_set_print(capture);
	logbuf[0] = 0;
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .flags = DXM_CTX_REQUIRE_KERNEL_FAULTS };
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EPERM);
	dxm_set_print(old);
	cr_assert(strstr(logbuf, "/dev/userfaultfd") &&
			  strstr(logbuf, "vm.unprivileged_userfaultfd"),
		  "the message must name the remedies: '%s'", logbuf);
}
