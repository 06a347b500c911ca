// SPDX-License-Identifier: MIT
/*
 * The process-wide registry of live contexts: every public call checks
 * its ctx here first (dxmi_ctx_check) so that a destroyed or foreign context
 * gives -EBADF rather than a crash.
 *
 * Locking: registry_mtx (this file) protects additions and removals; a
 * lookup reads the slots without it (atomics), so the SIGBUS handler can
 * search it.  fork.c keeps it locked across a fork (dxmi_ctx_foreach_begin/end):
 * no context is created or destroyed meanwhile.
 */
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "internal.h"

#define MAX_CTX 256
static pthread_mutex_t registry_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct dxm_ctx *_Atomic registry[MAX_CTX];
static atomic_int registry_hi; /* slots in use are below this */

int dxmi_registry_add(struct dxm_ctx *ctx)
{
	pthread_mutex_lock(&registry_mtx);
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < MAX_CTX; i++) {
		if (atomic_load(&registry[i]))
			continue;
		atomic_store(&registry[i], ctx);
		if (i >= hi)
			atomic_store(&registry_hi, i + 1);
		pthread_mutex_unlock(&registry_mtx);
		return 0;
	}
	pthread_mutex_unlock(&registry_mtx);
	pr_err("dxm_ctx_create: more than %d live contexts", MAX_CTX);
	return -EMFILE;
}

bool dxmi_registry_del(struct dxm_ctx *ctx)
{
	bool found = false;
	pthread_mutex_lock(&registry_mtx);
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++)
		if (atomic_load(&registry[i]) == ctx) {
			atomic_store(&registry[i], NULL);
			found = true;
		}
	pthread_mutex_unlock(&registry_mtx);
	return found;
}

bool dxmi_ctx_live(struct dxm_ctx *ctx)
{
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++)
		if (atomic_load_explicit(&registry[i], memory_order_acquire) ==
		    ctx)
			return true;
	return false;
}

/* fork.c: call fn on every live context and keep the registry locked
 * until dxmi_ctx_foreach_end (across a fork). */
void dxmi_ctx_foreach_begin(void (*fn)(struct dxm_ctx *ctx))
{
	pthread_mutex_lock(&registry_mtx);
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++) {
		struct dxm_ctx *ctx = atomic_load(&registry[i]);
		if (ctx)
			fn(ctx);
	}
}

void dxmi_ctx_foreach_end(void (*fn)(struct dxm_ctx *ctx))
{
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++) {
		struct dxm_ctx *ctx = atomic_load(&registry[i]);
		if (ctx)
			fn(ctx);
	}
	pthread_mutex_unlock(&registry_mtx);
}

/* The first live context for which fn(ctx, arg) is true, or NULL: without
 * a lock, async-signal-safe (sigbus.c). */
struct dxm_ctx *dxmi_registry_find(bool (*fn)(struct dxm_ctx *ctx, uintptr_t arg),
			      uintptr_t arg)
{
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++) {
		struct dxm_ctx *ctx = atomic_load(&registry[i]);
		if (ctx && fn(ctx, arg))
			return ctx;
	}
	return NULL;
}

int dxmi_ctx_check(struct dxm_ctx *ctx)
{
	if (!ctx)
		return -EINVAL;
	if (!dxmi_ctx_live(ctx))
		return -EBADF;
	if (ctx->pid != dxmi_self_pid())
		return -ECHILD; /* a fork()ed child: not its memory */
	return 0;
}
