// SPDX-License-Identifier: MIT
/*
 * The context: creation (its userfaultfds, eventfds and handler threads),
 * destruction and statistics.  The handler threads are handler.c's, the
 * registry of live contexts registry.c's, the gate base.c's.
 *
 * Locking: no lock of its own; it creates and destroys them all (the
 * order is internal.h's).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "inject.h"
#include "internal.h"

/* --------------------------------------------------------------- create */

/* Handler threads when the options do not say: $DXM_HANDLER_THREADS or 1
 * (probe.c reports it too). */
unsigned dxmi_ctx_default_threads(void)
{
	const char *e = getenv("DXM_HANDLER_THREADS");
	if (!e)
		return 1;
	long v = strtol(e, NULL, 10);
	return v >= 1 && v <= MAX_HANDLERS ? (unsigned)v : 1;
}


static void ctx_free(struct dxm_ctx *ctx)
{
	dxmi_anon_trash_fini(ctx);
	if (ctx->uffd >= 0)
		close(ctx->uffd);
	if (ctx->uffd_anon >= 0)
		close(ctx->uffd_anon);
	if (ctx->stop_fd >= 0)
		close(ctx->stop_fd);
	if (ctx->wake_fd >= 0)
		close(ctx->wake_fd);
	dxmi_fork_state_fini(ctx);
	dxmi_gate_fini(ctx);
	dxmi_tables_fini(ctx);
	dxmi_waiters_fini(ctx);
	dxmi_notifiers_fini(ctx);
	if (ctx->handlers)
		free(ctx->handlers[0].backlog);
	free(ctx->handlers);
	free(ctx);
}

bool dxmi_ctx_flags_ok(unsigned flags)
{
	const unsigned known = DXM_CTX_REQUIRE_KERNEL_FAULTS |
			       DXM_CTX_HANDLER_SPIN | DXM_CTX_SIGBUS |
			       DXM_CTX_HANDLER_ADAPTIVE;
	return !(flags & ~known) &&
	       /* always spin, or sometimes */
	       !((flags & DXM_CTX_HANDLER_SPIN) &&
		 (flags & DXM_CTX_HANDLER_ADAPTIVE)) &&
	       /* in-thread resolution cannot serve a system call's access */
	       !((flags & DXM_CTX_SIGBUS) &&
		 (flags & DXM_CTX_REQUIRE_KERNEL_FAULTS));
}

DXM_API int dxm_ctx_create(struct dxm_ctx **ctxp, const struct dxm_ctx_opts *opts)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o) };
	if (!ctxp)
		return -EINVAL;
	if (opts) {
		if (opts->sz < offsetof(struct dxm_ctx_opts, flags) +
				       sizeof(opts->flags) ||
		    opts->sz > 4096)
			return -EINVAL;
		/* A newer caller's bigger struct: unknown fields must be 0. */
		for (size_t i = sizeof(o); i < opts->sz; i++)
			if (((const char *)opts)[i])
				return -E2BIG;
		memcpy(&o, opts, opts->sz < sizeof(o) ? opts->sz : sizeof(o));
	}
	if (!dxmi_ctx_flags_ok(o.flags) || o.handler_threads > MAX_HANDLERS)
		return -EINVAL;

	struct dxm_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	ctx->uffd = ctx->uffd_anon = ctx->stop_fd = ctx->wake_fd = -1;
	ctx->psize = (size_t)sysconf(_SC_PAGESIZE);
	ctx->pshift = (unsigned)__builtin_ctzl(ctx->psize);
	atomic_init(&ctx->max_pshift, ctx->pshift);
	ctx->pid = dxmi_self_pid();
	/* Each module's state, in the lock order (internal.h). */
	dxmi_gate_init(ctx);
	dxmi_waiters_init(ctx);
	dxmi_notifiers_init(ctx);
	dxmi_anon_trash_init_lock(ctx);
	int ierr = dxmi_tables_init(ctx);
	int ferr = dxmi_fork_state_init(ctx);
	ctx->nhandlers = o.handler_threads ? o.handler_threads
					   : dxmi_ctx_default_threads();
	ctx->flags = o.flags;
	if (o.flags & DXM_CTX_HANDLER_SPIN)
		ctx->spin_ns = (uint64_t)(o.spin_us ? o.spin_us : 100) * 1000;
	else if ((o.flags & DXM_CTX_HANDLER_ADAPTIVE) &&
		 !(o.flags & DXM_CTX_SIGBUS))
		ctx->adaptive_ns = (uint64_t)(o.spin_us ? o.spin_us : 50) * 1000;
	ctx->ra_max = o.restore_around ? o.restore_around : 2048;

	int err = ierr ? ierr : ferr;
	if (err)
		goto fail;
	err = -ENOMEM;
	ctx->handlers = calloc(ctx->nhandlers, sizeof(*ctx->handlers));
	if (!ctx->handlers)
		goto fail;

	/* DXM_CTX_SIGBUS: faults raise SIGBUS in the faulting thread, which
	 * resolves them itself (sigbus.c); events still go to the handler. */
	const uint64_t sigbus = o.flags & DXM_CTX_SIGBUS ? UFFD_FEATURE_SIGBUS
							 : 0;
	err = dxmi_uffd_open(&ctx->uinfo, CTX_UFFD_REQUIRED | sigbus,
			CTX_UFFD_OPTIONAL, false);
	if (err < 0)
		goto fail;
	ctx->uffd = err;
	/* Optional: without it only dxm_adopt fails. */
	int afd = dxmi_uffd_open(&ctx->uinfo_anon, ANON_UFFD_REQUIRED | sigbus,
			    ANON_UFFD_OPTIONAL, true);
	if (afd >= 0)
		ctx->uffd_anon = afd;
	else
		pr_info("dxm_adopt unavailable: %s", strerror(-afd));
	dxmi_anon_trash_init(ctx);
	if ((o.flags & DXM_CTX_REQUIRE_KERNEL_FAULTS) &&
	    ctx->uinfo.mode == DXM_UFFD_USER_ONLY) {
		pr_err("dxm_ctx_create: kernel-mode fault resolution needs "
		       "access to /dev/userfaultfd, "
		       "vm.unprivileged_userfaultfd = 1, or CAP_SYS_PTRACE");
		err = -EPERM;
		goto fail;
	}
	ctx->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ctx->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ctx->stop_fd < 0 || ctx->wake_fd < 0) {
		err = -errno;
		goto fail;
	}
	dxmi_fork_init();
	if (sigbus && (err = dxmi_sigbus_init()))
		goto fail;
	err = dxmi_registry_add(ctx);
	if (err)
		goto fail;
	err = dxmi_handlers_start(ctx);
	if (err) {
		dxmi_handlers_stop(ctx);
		dxmi_registry_del(ctx);
		goto fail;
	}
	err = dxmi_watchdog_start(ctx);
	if (err) {
		dxmi_handlers_stop(ctx);
		dxmi_watchdog_stop(ctx); /* its locks exist once it was started */
		dxmi_registry_del(ctx);
		goto fail;
	}
	static atomic_bool said;
	if (!atomic_exchange(&said, true))
		pr_info("userfaultfd mode: %s (%s)",
			dxm_uffd_mode_str(ctx->uinfo.mode),
			ctx->uinfo.mode == DXM_UFFD_USER_ONLY
				? "a system call whose buffer is an exclusive "
				  "page fails with EFAULT"
				: "system calls on exclusive pages are "
				  "resolved");
	*ctxp = ctx;
	return 0;
fail:
	ctx_free(ctx);
	return err;
}

DXM_API void dxm_ctx_destroy(struct dxm_ctx *ctx)
{
	if (!ctx || !dxmi_ctx_live(ctx))
		return;
	if (ctx->pid != dxmi_self_pid()) {
		/* A fork()ed child: the memory is the parent's business. */
		return;
	}
	if (dxmi_ctx_on_handler(ctx)) {
		pr_err("dxm_ctx_destroy: called from a notifier callback; "
		       "refused");
		return;
	}
	/* Regions first: devices are told (DXM_EVENT_UNMAP) while the
	 * handlers still run, so every waiting fault is resolved. */
	dxmi_views_destroy_all(ctx);
	dxmi_fault_drain_ready(ctx);
	if (!dxmi_registry_del(ctx))
		return;
	dxmi_handlers_stop(ctx);
	dxmi_region_run_quiet(ctx); /* teardowns finished after the handlers */
	dxmi_watchdog_stop(ctx);
	dxmi_notifier_destroy_all(ctx);
	ctx_free(ctx);
}

DXM_API int dxm_stats(struct dxm_ctx *ctx, struct dxm_stats *st, size_t size)
{
	int err = dxmi_ctx_check(ctx);
	if (err)
		return err;
	if (!st || size < sizeof(uint64_t))
		return -EINVAL;
	struct dxm_stats s = { 0 };
	struct dxm_counters *c = &ctx->c;
	s.conversions = atomic_load(&c->conversions);
	s.pages_converted = atomic_load(&c->pages_converted);
	s.pages_refused = atomic_load(&c->pages_refused);
	s.cpu_faults = atomic_load(&c->cpu_faults);
	s.restores = atomic_load(&c->restores);
	s.pages_ahead = atomic_load(&c->pages_ahead);
	s.deferred_faults = atomic_load(&c->deferred_faults);
	s.notifier_calls = atomic_load(&c->notifier_calls);
	s.notifier_ns = atomic_load(&c->notifier_ns);
	s.events_unmap = atomic_load(&c->events_unmap);
	s.events_remap = atomic_load(&c->events_remap);
	s.regions = atomic_load(&c->regions);
	s.managed_pages = atomic_load(&c->managed_pages);
	s.metadata_bytes = s.managed_pages * sizeof(dxm_pstate_t);
	s.uffd_mode = (uint32_t)ctx->uinfo.mode;
	s.handler_threads = ctx->nhandlers;
	s.uffd_features = ctx->uinfo.features;
	s.uffd_anon_features = ctx->uffd_anon >= 0 ? ctx->uinfo_anon.features
						   : 0;
	s.events_remove = atomic_load(&c->events_remove);
	s.forks = atomic_load(&c->forks);
	s.stale_device_faults = atomic_load(&c->stale_device_faults);
	s.watchdog_reports = atomic_load(&c->watchdog_reports);
	for (int i = 0; i < DXM_STATS_HIST; i++) {
		s.restore_us[i] = atomic_load(&c->restore_us[i]);
		s.restore_pages[i] = atomic_load(&c->restore_pages[i]);
	}
	memcpy(st, &s, size < sizeof(s) ? size : sizeof(s));
	if (size > sizeof(s))
		memset((char *)st + sizeof(s), 0, size - sizeof(s));
	return 0;
}