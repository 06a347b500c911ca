// SPDX-License-Identifier: MIT
/*
 * fork() and private (adopted) memory, as the kernel does since 5.14:
 * exclusive pages are restored in the parent before the child exists
 * (notifiers see DXM_EVENT_FORK), then ordinary copy-on-write applies.
 * This must work for every user, and a normal user is refused
 * UFFD_FEATURE_EVENT_FORK, so it is done in a pthread_atfork prepare
 * handler.  (Where EVENT_FORK is granted, anon.c also repairs a raw clone
 * that bypassed these handlers.)  Shared (memfd) regions are never
 * inherited (MADV_DONTFORK) and need nothing here.
 *
 * Locking: ctx->fk.lock (rwlock, writer-preferring).  A conversion of
 * adopted memory holds it for reading from before its first page is locked
 * until its pages are in staging; the prepare handler holds it for writing
 * from before it restores the pages until the fork is over (parent and
 * child handlers), so no conversion can move a page out in between.  The
 * registry lock (registry.c) is held across the fork too, so a context created
 * or destroyed meanwhile cannot leave the child with a locked registry.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <stdbool.h>
#include <time.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "internal.h"
#include "trace.h"

static void restore_for_fork(struct dxm_region *r, void *arg)
{
	/* Inside the region (region.c, the teardown rule): a dxm_free
	 * waits for us; one that began first holds fork_lock until its
	 * hand-back is over, so we cannot be here; a munmap drops it. */
	if (!dxmi_region_enter(r))
		return;
	(*(unsigned *)arg)++;
	dxmi_pages_to_cpu(r, 0, r->npages, PTC_INVALIDATE | PTC_WAIT,
		     DXM_EVENT_FORK);
	dxmi_region_exit(r);
}

/*
 * With UFFD_FEATURE_EVENT_FORK the kernel holds the fork until a handler
 * reads its event, and glibc holds the malloc and stdio locks meanwhile: a
 * handler caught allocating would never read it.  Park the handlers at a
 * safe point first (handler.c, fork_park).  Last, after every page was
 * restored: restoring may need them.
 *
 * Every handler must be reached: ctx->fk.fd stays readable until the
 * fork is over (no handler reads it), so each one's poll() returns, where
 * one wake-up on the shared eventfd would wake one handler only.  And every
 * handler must park: there is no timeout.  A handler that never parks is
 * inside a callback waiting for something this thread holds (a driver
 * lock held across fork(): restoring the pages above would have called
 * that callback on this very thread too); the watchdog names it.
 */
static void park_handlers(struct dxm_ctx *ctx)
{
	bool on_handler = dxmi_ctx_on_handler(ctx);
	unsigned want = ctx->nhandlers - (on_handler ? 1 : 0);
	uint64_t one = 1;
	atomic_store(&ctx->fk.forking, 1);
	if (write(ctx->fk.fd, &one, sizeof(one)) < 0)
		pr_err("fork: cannot reach the fault handlers: %s",
		       strerror(errno));
	uint64_t t0 = dxmi_now_ns();
	bool said = false;
	while (atomic_load(&ctx->fk.acks) < want) {
		if (!said && dxmi_now_ns() - t0 > 2000000000ull) {
			pr_warn("fork: still waiting for %u of %u fault "
				"handler(s) to park (one may be in a callback "
				"waiting for a lock this thread holds)",
				want - atomic_load(&ctx->fk.acks), want);
			said = true;
		}
		poll(NULL, 0, 1);
	}
	/* Handler 0 reads events while the others are parked, and applies
	 * them only after the fork: meanwhile a munmap it read has returned
	 * to the program, which may free or reuse the addresses.  Hold the
	 * gate for it (no handler can be waiting for it now), so that
	 * nobody sees the tables before its events are applied.  From a
	 * callback on a handler thread, that thread holds nothing but cannot
	 * park: handler 0 applies its backlog under the gate itself. */
	if (!on_handler)
		dxmi_gate_lock(ctx);
	atomic_store(&ctx->fk.gate, on_handler ? FG_NOGATE : FG_HELD);
}

static void prepare_one(struct dxm_ctx *ctx)
{
	if (ctx->pid != dxmi_self_pid() || ctx->uffd_anon < 0)
		return;
	DXM_TRACE_FORK_BEGIN(ctx);
	pthread_rwlock_wrlock(&ctx->fk.lock);
	ctx->fk.locked = true;
	unsigned regions = 0;
	dxmi_region_foreach(ctx, KIND_MOVES, restore_for_fork, &regions);
	if (regions) /* forks that had private pages to restore */
		stat_add(&ctx->c.forks, 1);
	if (ctx->uinfo_anon.features & UFFD_FEATURE_EVENT_FORK)
		park_handlers(ctx);
	DXM_TRACE_FORK_END(ctx, regions);
}

/* In the parent, and in the child (its copies of the locks are held by
 * its only thread, the one that forked; it has no handler). */
static void release(struct dxm_ctx *ctx, bool parent)
{
	if (!parent) {
		/* The child has no handler; the eventfds are the parent's. */
		atomic_store(&ctx->fk.forking, 0);
	} else if (atomic_load(&ctx->fk.forking)) {
		uint64_t v;
		/* Not readable any more before the handlers leave their
		 * park, so that none of them spins on it afterwards. */
		if (read(ctx->fk.fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			pr_err("fork: read(eventfd): %s", strerror(errno));
		atomic_store(&ctx->fk.forking, 0);
		dxmi_ctx_kick(ctx);
	}
	if (atomic_load(&ctx->fk.gate) == FG_HELD ||
	    atomic_load(&ctx->fk.gate) == FG_APPLIED) {
		/* Until handler 0 has applied what it read. */
		while (parent && atomic_load(&ctx->fk.gate) == FG_HELD &&
		       !atomic_load(&ctx->handlers[0].exited))
			poll(NULL, 0, 1);
		dxmi_gate_unlock(ctx);
	}
	atomic_store(&ctx->fk.gate, FG_NONE);
	if (ctx->fk.locked) {
		ctx->fk.locked = false;
		pthread_rwlock_unlock(&ctx->fk.lock);
	}
}

static void release_parent(struct dxm_ctx *ctx)
{
	release(ctx, true);
}

static void release_child(struct dxm_ctx *ctx)
{
	release(ctx, false);
}

static void prepare(void)
{
	dxmi_ctx_foreach_begin(prepare_one);
}

static void parent(void)
{
	dxmi_ctx_foreach_end(release_parent);
}

static void child(void)
{
	dxmi_self_pid_forget();
	dxmi_ctx_foreach_end(release_child);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void install(void)
{
	pthread_atfork(prepare, parent, child);
}

void dxmi_fork_init(void)
{
	pthread_once(&once, install);
}

bool dxmi_fork_enter(struct dxm_ctx *ctx)
{
	return pthread_rwlock_rdlock(&ctx->fk.lock) == 0;
}

void dxmi_fork_exit(struct dxm_ctx *ctx)
{
	pthread_rwlock_unlock(&ctx->fk.lock);
}

int dxmi_fork_state_init(struct dxm_ctx *ctx)
{
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&ctx->fk.lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	ctx->fk.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return ctx->fk.fd < 0 ? -errno : 0;
}

void dxmi_fork_state_fini(struct dxm_ctx *ctx)
{
	pthread_rwlock_destroy(&ctx->fk.lock);
	if (ctx->fk.fd >= 0)
		close(ctx->fk.fd);
}
