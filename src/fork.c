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
 * Locking: ctx->fork_lock (rwlock, writer-preferring).  A conversion of
 * adopted memory holds it for reading from before its first page is locked
 * until its pages are in staging; the prepare handler holds it for writing
 * from before it restores the pages until the fork is over (parent and
 * child handlers), so no conversion can move a page out in between.  The
 * registry lock (ctx.c) is held across the fork too, so a context created
 * or destroyed meanwhile cannot leave the child with a locked registry.
 */
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "internal.h"

static void restore_for_fork(struct dxm_region *r, void *arg)
{
	(*(unsigned *)arg)++;
	pages_to_cpu(r, 0, r->npages, PTC_INVALIDATE | PTC_WAIT,
		     DXM_EVENT_FORK);
}

/*
 * With UFFD_FEATURE_EVENT_FORK the kernel holds the fork until a handler
 * reads its event, and glibc holds the malloc and stdio locks meanwhile: a
 * handler caught allocating would never read it.  Park the handlers at a
 * safe point first (ctx.c, fork_park).  Last, after every page was
 * restored: restoring may need them.
 */
static void park_handlers(struct dxm_ctx *ctx)
{
	unsigned want = ctx->nhandlers - (ctx_on_handler(ctx) ? 1 : 0);
	atomic_store(&ctx->forking, 1);
	ctx_kick(ctx);
	for (int ms = 0; atomic_load(&ctx->fork_acks) < want; ms++) {
		if (ms == 2000) {
			pr_warn("fork: a fault handler is busy (a callback "
				"waiting for a lock this thread holds?); "
				"forking anyway");
			break;
		}
		poll(NULL, 0, 1);
	}
}

static void prepare_one(struct dxm_ctx *ctx)
{
	if (ctx->pid != self_pid() || ctx->uffd_anon < 0)
		return;
	pthread_rwlock_wrlock(&ctx->fork_lock);
	ctx->fork_locked = true;
	unsigned regions = 0;
	region_foreach(ctx, REGION_ANON, restore_for_fork, &regions);
	if (regions) /* forks that had private pages to restore */
		stat_add(&ctx->c.forks, 1);
	if (ctx->uinfo_anon.features & UFFD_FEATURE_EVENT_FORK)
		park_handlers(ctx);
}

/* In the parent, and in the child (its copy of the lock is held by its
 * only thread, the one that forked). */
static void release_one(struct dxm_ctx *ctx)
{
	if (atomic_exchange(&ctx->forking, 0))
		ctx_kick(ctx);
	if (ctx->fork_locked) {
		ctx->fork_locked = false;
		pthread_rwlock_unlock(&ctx->fork_lock);
	}
}

static void prepare(void)
{
	ctx_foreach_begin(prepare_one);
}

static void parent(void)
{
	ctx_foreach_end(release_one);
}

static void child(void)
{
	self_pid_forget();
	ctx_foreach_end(release_one);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void install(void)
{
	pthread_atfork(prepare, parent, child);
}

void fork_init(void)
{
	pthread_once(&once, install);
}

bool fork_enter(struct dxm_ctx *ctx)
{
	return pthread_rwlock_rdlock(&ctx->fork_lock) == 0;
}

void fork_exit(struct dxm_ctx *ctx)
{
	pthread_rwlock_unlock(&ctx->fork_lock);
}
