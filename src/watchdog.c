// SPDX-License-Identifier: MIT
/*
 * The watchdog: one thread per context ("dxm-watchdog") that reports, once
 * each, what would otherwise hang silently:
 *   - an invalidate callback running longer than the threshold (every
 *     fault behind it waits);
 *   - a fault deferred longer than the threshold (a driver that never
 *     calls dxm_exclusive_unlock);
 *   - a handler thread that stopped without being asked.
 * It only reads and reports; it never changes state.  $DXM_WATCHDOG_MS
 * sets the threshold (default 5000; 0 turns the watchdog off).
 *
 * Locking: ctx->wd.mtx/wd_cond for its sleep and stop; it takes n_mtx and
 * defer_mtx briefly to scan (never while calling anything else).
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static void report(struct dxm_ctx *ctx)
{
	uint64_t now = dxmi_now_ns(), lim = ctx->wd.ms * 1000000ull;

	pthread_mutex_lock(&ctx->ntf.mtx);
	for (struct dxm_notifier *n = ctx->ntf.list; n; n = n->next) {
		uint64_t t0 = atomic_load(&n->cb_start);
		if (!t0 || t0 > now || now - t0 < lim || n->cb_reported == t0)
			continue;
		n->cb_reported = t0;
		stat_add(&ctx->c.watchdog_reports, 1);
		pr_err("watchdog: invalidate callback of notifier [%#lx, "
		       "%#lx) (event %s) has run for %llu ms; every fault "
		       "behind it waits",
		       n->start, n->end, dxm_event_str(atomic_load(&n->cb_event)),
		       (unsigned long long)((now - t0) / 1000000));
	}
	pthread_mutex_unlock(&ctx->ntf.mtx);

	pthread_mutex_lock(&ctx->wait.mtx);
	for (struct dxm_fault *f = ctx->wait.deferred; f; f = f->next) {
		if (f->reported || f->t0 > now || now - f->t0 < lim)
			continue;
		f->reported = true;
		stat_add(&ctx->c.watchdog_reports, 1);
		uint8_t s = ps_load(&f->r->st[f->pg]);
		pr_err("watchdog: CPU access to %#lx has waited %llu ms: the "
		       "page is %s%s",
		       f->addr, (unsigned long long)((now - f->t0) / 1000000),
		       ps_state(s) == PS_LOCKED ? "LOCKED" : "busy",
		       ps_state(s) == PS_LOCKED
			       ? " (dxm_make_exclusive without "
				 "dxm_exclusive_unlock?)"
			       : "");
	}
	pthread_mutex_unlock(&ctx->wait.mtx);

	for (unsigned i = 0; i < ctx->nhandlers; i++) {
		struct dxm_handler *h = &ctx->handlers[i];
		if (h->started && atomic_load(&h->exited) && !h->reported) {
			h->reported = true;
			stat_add(&ctx->c.watchdog_reports, 1);
			pr_err("watchdog: fault handler thread %u stopped; "
			       "faults it would have resolved hang",
			       i);
		}
	}
}

static void *watchdog_main(void *arg)
{
	struct dxm_ctx *ctx = arg;
	unsigned period = ctx->wd.ms / 4 ? ctx->wd.ms / 4 : 1;
	pthread_mutex_lock(&ctx->wd.mtx);
	while (!ctx->wd.stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += period / 1000;
		ts.tv_nsec += (long)(period % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&ctx->wd.cond, &ctx->wd.mtx, &ts);
		if (ctx->wd.stop)
			break;
		pthread_mutex_unlock(&ctx->wd.mtx);
		report(ctx);
		pthread_mutex_lock(&ctx->wd.mtx);
	}
	pthread_mutex_unlock(&ctx->wd.mtx);
	return NULL;
}

int dxmi_watchdog_start(struct dxm_ctx *ctx)
{
	const char *e = getenv("DXM_WATCHDOG_MS");
	long ms = e ? strtol(e, NULL, 10) : 5000;
	ctx->wd.ms = ms > 0 && ms < 86400000 ? (unsigned)ms : 0; /* <= 0: off */
	pthread_mutex_init(&ctx->wd.mtx, NULL);
	pthread_cond_init(&ctx->wd.cond, NULL);
	if (!ctx->wd.ms)
		return 0;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = -pthread_create(&ctx->wd.tid, NULL, watchdog_main, ctx);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!err) {
		ctx->wd.started = true;
		pthread_setname_np(ctx->wd.tid, "dxm-watchdog");
	}
	return err;
}

void dxmi_watchdog_stop(struct dxm_ctx *ctx)
{
	if (ctx->wd.started) {
		pthread_mutex_lock(&ctx->wd.mtx);
		ctx->wd.stop = true;
		pthread_cond_signal(&ctx->wd.cond);
		pthread_mutex_unlock(&ctx->wd.mtx);
		pthread_join(ctx->wd.tid, NULL);
		ctx->wd.started = false;
	}
	pthread_mutex_destroy(&ctx->wd.mtx);
	pthread_cond_destroy(&ctx->wd.cond);
}
