// SPDX-License-Identifier: MIT
/*
 * The context: its userfaultfd, the handler threads that read it, and the
 * process-wide registry of live contexts.
 *
 * Handler threads ("dxm-fault/N", all signals blocked) poll the userfaultfd,
 * a stop eventfd (never read: once written it wakes every thread) and a
 * wake eventfd (deferred faults became ready).  Each reads messages in
 * batches and resolves them (fault.c, region.c).
 *
 * Locking
 *   ctx->gate (mutex): a handler holds it from read() of a batch until it
 *   has applied the batch's events to the tables: detached the views UNMAP
 *   removed, moved those REMAP moved, and taken hold of the adopted pages
 *   REMOVE discarded; dxm_alloc and dxm_alias hold it from mmap() until
 *   their view is in the table.  A munmap (or madvise) returns once its
 *   event was read, so this keeps a stale event from tearing down a new
 *   mapping at the same address, and makes every fault read after an event
 *   see that event's effect, whichever handler thread reads it.  No
 *   callback runs under the gate: notifications for those events are sent
 *   after it is dropped.
 *
 *   ctx->epoch counts the mappings inserted (under the gate); a batch
 *   notes it when it is read.  A message is older than any mapping with a
 *   higher epoch: a fault message (or a deferred fault) on an address that
 *   was unmapped and reused since is only woken, never resolved against
 *   the new mapping (a stale message on a new staging area would look like
 *   a driver's access after invalidation).
 *
 *   ctx->zap_lock (rwlock): a handler holds it for writing together with
 *   the gate, from read() until the batch's events are applied; region_zap
 *   holds it for reading.  A munmap returns as soon as its event is read,
 *   and the program may map something else there at once: without this
 *   lock a zap could still find the old view in the table and discard the
 *   new mapping's pages.  Lock order: gate -> zap_lock -> vt_lock.
 *
 *   registry_mtx protects the registry (a short array of live contexts):
 *   every public call checks its ctx there first (ctx_check) so that a
 *   destroyed or foreign context gives -EBADF rather than a crash.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "inject.h"
#include "internal.h"

#define MAX_HANDLERS 64
#define BATCH 64

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A back-off: sleep *us microseconds, then double it, up to 1 ms.
 * Async-signal-safe (SIGBUS mode naps in its signal handler). */
void nap_us(unsigned *us)
{
	struct timespec ts = { 0, (long)*us * 1000 };
	nanosleep(&ts, NULL);
	if (*us < 1000)
		*us *= 2;
}

/* ---------------------------------------------------------------- registry */

#define MAX_CTX 256
static pthread_mutex_t registry_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct dxm_ctx *_Atomic registry[MAX_CTX];
static atomic_int registry_hi; /* slots in use are below this */

static int registry_add(struct dxm_ctx *ctx)
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

static bool registry_del(struct dxm_ctx *ctx)
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

bool ctx_live(struct dxm_ctx *ctx)
{
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++)
		if (atomic_load_explicit(&registry[i], memory_order_acquire) ==
		    ctx)
			return true;
	return false;
}

/* fork.c: call fn on every live context and keep the registry locked
 * until ctx_foreach_end (across a fork). */
void ctx_foreach_begin(void (*fn)(struct dxm_ctx *ctx))
{
	pthread_mutex_lock(&registry_mtx);
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++) {
		struct dxm_ctx *ctx = atomic_load(&registry[i]);
		if (ctx)
			fn(ctx);
	}
}

void ctx_foreach_end(void (*fn)(struct dxm_ctx *ctx))
{
	int hi = atomic_load(&registry_hi);
	for (int i = 0; i < hi; i++) {
		struct dxm_ctx *ctx = atomic_load(&registry[i]);
		if (ctx)
			fn(ctx);
	}
	pthread_mutex_unlock(&registry_mtx);
}

/*
 * The process id, without a system call on every API call: cached, and
 * forgotten in a fork()ed child by fork.c's atfork handler.  (A raw clone
 * that bypasses the handlers keeps the parent's value in the child.)
 */
static atomic_int my_pid;

pid_t self_pid(void)
{
	pid_t p = atomic_load_explicit(&my_pid, memory_order_relaxed);
	if (!p) {
		p = getpid();
		atomic_store_explicit(&my_pid, p, memory_order_relaxed);
	}
	return p;
}

void self_pid_forget(void)
{
	atomic_store(&my_pid, 0);
}

/* sigbus.c: the SIGBUS-mode context that manages addr resolves it. */
bool ctx_resolve_sigbus(uintptr_t addr)
{
	int hi = atomic_load(&registry_hi);
	/* getpid(), not the cached value: a raw clone's child keeps the
	 * parent's cache, and must not act on the parent's contexts. */
	pid_t me = getpid();
	for (int i = 0; i < hi; i++) {
		struct dxm_ctx *ctx = atomic_load(&registry[i]);
		if (ctx && (ctx->flags & DXM_CTX_SIGBUS) && ctx->pid == me &&
		    fault_resolve_here(ctx, addr))
			return true;
	}
	return false;
}

int ctx_check(struct dxm_ctx *ctx)
{
	if (!ctx)
		return -EINVAL;
	if (!ctx_live(ctx))
		return -EBADF;
	if (ctx->pid != self_pid())
		return -ECHILD; /* a fork()ed child: not its memory */
	return 0;
}

/* ----------------------------------------------------------------- handler */

static __thread struct dxm_ctx *handler_of;

bool ctx_on_handler(struct dxm_ctx *ctx)
{
	return handler_of == ctx;
}

void ctx_kick(struct dxm_ctx *ctx)
{
	uint64_t one = 1;
	if (write(ctx->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		pr_err("cannot wake the fault handler: %s", strerror(errno));
}

/* Take the gate and zap_lock, as a batch is read and applied under. */
void gate_lock(struct dxm_ctx *ctx)
{
	pthread_mutex_lock(&ctx->gate);
	pthread_rwlock_wrlock(&ctx->zap_lock);
}

void gate_unlock(struct dxm_ctx *ctx)
{
	pthread_rwlock_unlock(&ctx->zap_lock);
	pthread_mutex_unlock(&ctx->gate);
}

/* How dispatch() leaves the gate once the events are applied. */
enum gate_after {
	GATE_UNLOCK, /* unlock it (and zap_lock) */
	GATE_KEEP,   /* the forking thread holds it for us (FG_HELD) */
	GATE_HANDOVER, /* the same, last batch: tell it (FG_APPLIED) */
};

/* Act on n (<= BATCH) messages read under gate_lock(): events first, then
 * faults; leaves the locks as `after` says once the events are applied. */
static void dispatch(struct dxm_ctx *ctx, struct uffd_msg *msg, size_t n,
		     uint64_t epoch, enum gate_after after)
{
	struct dxm_unmap *gone[BATCH];
	struct dxm_anon_rm *removed[BATCH];
	int forked[BATCH];
	struct {
		uintptr_t from, len;
	} moved[BATCH];
	size_t ngone = 0, nmoved = 0, nremoved = 0, nforked = 0;

	for (size_t i = 0; i < n; i++) {
		struct uffd_msg *m = &msg[i];
		switch (m->event) {
		case UFFD_EVENT_UNMAP:
			inject(INJ_DETACH); /* a slow handler, in tests */
			gone[ngone++] = region_unmap_detach(
				ctx, m->arg.remove.start, m->arg.remove.end);
			break;
		case UFFD_EVENT_REMAP:
			region_remap_move(ctx, m->arg.remap.from,
					  m->arg.remap.to, m->arg.remap.len);
			moved[nmoved].from = m->arg.remap.from;
			moved[nmoved++].len = m->arg.remap.len;
			break;
		case UFFD_EVENT_REMOVE:
			removed[nremoved++] = anon_remove_begin(
				ctx, m->arg.remove.start, m->arg.remove.end);
			break;
		case UFFD_EVENT_FORK:
			forked[nforked++] = (int)m->arg.fork.ufd;
			break;
		}
	}
	if (after == GATE_UNLOCK)
		gate_unlock(ctx);
	else if (after == GATE_HANDOVER)
		atomic_store(&ctx->fork_gate, FG_APPLIED);

	for (size_t i = 0; i < nforked; i++)
		anon_fork_event(ctx, forked[i]);
	for (size_t i = 0; i < nmoved; i++)
		notify_range(ctx, moved[i].from, moved[i].from + moved[i].len,
			     DXM_EVENT_REMAP, NULL);
	for (size_t i = 0; i < ngone; i++)
		region_unmap_finish(ctx, gone[i]);
	for (size_t i = 0; i < nremoved; i++)
		anon_remove_finish(ctx, removed[i]);
	for (size_t i = 0; i < n; i++) {
		struct uffd_msg *m = &msg[i];
		if (m->event == UFFD_EVENT_PAGEFAULT) {
			/* Counted before the thread can be woken. */
			stat_add(&ctx->c.cpu_faults, 1);
			fault_resolve(ctx, m->arg.pagefault.address,
				      m->arg.pagefault.flags &
					      UFFD_PAGEFAULT_FLAG_WRITE,
				      (pid_t)m->arg.pagefault.feat.ptid, epoch);
		} else if (m->event != UFFD_EVENT_UNMAP &&
			   m->event != UFFD_EVENT_REMAP &&
			   m->event != UFFD_EVENT_REMOVE &&
			   m->event != UFFD_EVENT_FORK) {
			pr_warn("unexpected userfaultfd event %u", m->event);
		}
	}
}

static size_t handle_batch(struct dxm_ctx *ctx, int uffd)
{
	struct uffd_msg msg[BATCH];
	gate_lock(ctx);
	int inj = inject(INJ_READ);
	ssize_t got = inj ? (errno = inj, -1) : read(uffd, msg, sizeof(msg));
	if (got < 0) {
		gate_unlock(ctx);
		if (errno != EAGAIN && errno != EINTR)
			pr_err("read(userfaultfd): %s", strerror(errno));
		return 0;
	}
	size_t n = (size_t)got / sizeof(msg[0]);
	dispatch(ctx, msg, n, atomic_load(&ctx->epoch), GATE_UNLOCK);
	return n;
}

/*
 * A fork is in progress (fork.c) and the kernel will hold it until a
 * handler has read its UFFD_EVENT_FORK, while glibc holds the malloc and
 * stdio locks for the whole fork: a handler thread must not allocate or
 * log until it is over.  So each handler parks here at a safe point; the
 * first one keeps reading the adopted-memory userfaultfd into a backlog
 * allocated up front (nothing else), and acts on it once the fork is
 * over.  One reader keeps the messages in order.
 */
static void fork_park(struct dxm_handler *h)
{
	struct dxm_ctx *ctx = h->ctx;
	size_t n = 0;
	/* Messages read from here on are no newer than this. */
	uint64_t epoch = atomic_load(&ctx->epoch);
	atomic_fetch_add(&ctx->fork_acks, 1);
	while (atomic_load(&ctx->forking) && !atomic_load(&ctx->stopping)) {
		struct pollfd p = { .fd = ctx->uffd_anon, .events = POLLIN };
		if (h->idx != 0 || n == FORK_BACKLOG ||
		    atomic_load(&ctx->fork_gate) == FG_NONE) {
			poll(NULL, 0, 1);
			continue;
		}
		if (poll(&p, 1, 1) == 1 && (p.revents & POLLIN)) {
			ssize_t got = read(ctx->uffd_anon, h->backlog + n,
					   (FORK_BACKLOG - n) * sizeof(*h->backlog));
			if (got > 0)
				n += (size_t)got / sizeof(*h->backlog);
		}
	}
	atomic_fetch_sub(&ctx->fork_acks, 1);
	/* FG_HELD: the forking thread holds the gate for us until the
	 * backlog's events are applied (fork.c). */
	bool held = h->idx == 0 && atomic_load(&ctx->fork_gate) == FG_HELD;
	for (size_t i = 0; i < n; i += BATCH) {
		size_t k = n - i < BATCH ? n - i : BATCH;
		if (!held)
			gate_lock(ctx);
		dispatch(ctx, h->backlog + i, k, epoch,
			 !held		 ? GATE_UNLOCK
			 : i + k < n ? GATE_KEEP
				     : GATE_HANDOVER);
	}
	if (held && !n)
		atomic_store(&ctx->fork_gate, FG_APPLIED);
}

/* DXM_CTX_HANDLER_SPIN: after a batch, keep reading for spin_ns before
 * going back to sleep in poll(), so that a fault that follows soon is
 * picked up without a wake-up (a CPU is kept busy meanwhile). */
static void spin(struct dxm_ctx *ctx)
{
	uint64_t until = now_ns() + ctx->spin_ns;
	/* A fork waits for every handler to park (handler_main). */
	while (now_ns() < until && !atomic_load(&ctx->stopping) &&
	       !atomic_load(&ctx->forking)) {
		size_t n = handle_batch(ctx, ctx->uffd);
		if (ctx->uffd_anon >= 0)
			n += handle_batch(ctx, ctx->uffd_anon);
		if (n) {
			fault_drain_ready(ctx);
			/* A munmapped region's teardown may wait for us. */
			region_run_quiet(ctx);
			until = now_ns() + ctx->spin_ns;
		} else {
			/* The faulting thread may be waiting for this CPU. */
			sched_yield();
		}
	}
}

static void *handler_main(void *arg)
{
	struct dxm_handler *h = arg;
	struct dxm_ctx *ctx = h->ctx;
	handler_of = ctx;
	struct pollfd pfd[5] = {
		{ .fd = ctx->stop_fd, .events = POLLIN },
		{ .fd = ctx->wake_fd, .events = POLLIN },
		{ .fd = ctx->uffd, .events = POLLIN },
		{ .fd = ctx->uffd_anon, .events = POLLIN }, /* -1: ignored */
		{ .fd = ctx->fork_fd, .events = POLLIN }, /* never read here */
	};
	for (;;) {
		if (atomic_load(&ctx->forking)) {
			fork_park(h);
			continue;
		}
		int inj = inject(INJ_POLL);
		int rc = inj ? (errno = inj, -1) : poll(pfd, 5, -1);
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			pr_err("poll(userfaultfd): %s", strerror(errno));
			break;
		}
		if (pfd[0].revents)
			break;
		if (pfd[1].revents) {
			uint64_t v;
			if (read(ctx->wake_fd, &v, sizeof(v)) < 0 &&
			    errno != EAGAIN)
				pr_err("read(eventfd): %s", strerror(errno));
		}
		for (int i = 2; i < 4; i++) {
			if (pfd[i].revents & POLLIN)
				handle_batch(ctx, pfd[i].fd);
			else if (pfd[i].revents & (POLLERR | POLLHUP))
				goto out;
		}
		fault_drain_ready(ctx);
		region_run_quiet(ctx);
		if (ctx->spin_ns)
			spin(ctx);
	}
out:
	if (!atomic_load(&ctx->stopping))
		pr_err("fault handler thread %u stopped unexpectedly", h->idx);
	atomic_store(&h->exited, true);
	return NULL;
}

static int start_handlers(struct dxm_ctx *ctx)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = 0;
	for (unsigned i = 0; i < ctx->nhandlers; i++) {
		struct dxm_handler *h = &ctx->handlers[i];
		h->ctx = ctx;
		h->idx = i;
		if (i == 0 && !(h->backlog = calloc(FORK_BACKLOG,
						     sizeof(*h->backlog)))) {
			err = -ENOMEM;
			break;
		}
		err = -pthread_create(&h->tid, NULL, handler_main, h);
		if (err)
			break;
		h->started = true;
		char name[16];
		snprintf(name, sizeof(name), "dxm-fault/%u", i % 100);
		pthread_setname_np(h->tid, name);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err;
}

static void stop_handlers(struct dxm_ctx *ctx)
{
	uint64_t one = 1;
	atomic_store(&ctx->stopping, true);
	if (write(ctx->stop_fd, &one, sizeof(one)) < 0)
		pr_err("cannot stop the fault handler: %s", strerror(errno));
	for (unsigned i = 0; i < ctx->nhandlers; i++)
		if (ctx->handlers[i].started) {
			if (pthread_equal(ctx->handlers[i].tid,
					  pthread_self())) {
				pr_err("dxm_ctx_destroy called from a callback "
				       "on the fault handler: leaking it");
				pthread_detach(ctx->handlers[i].tid);
			} else {
				pthread_join(ctx->handlers[i].tid, NULL);
			}
		}
}

/* --------------------------------------------------------------- create */

static unsigned env_threads(void)
{
	const char *e = getenv("DXM_HANDLER_THREADS");
	if (!e)
		return 1;
	long v = strtol(e, NULL, 10);
	return v >= 1 && v <= MAX_HANDLERS ? (unsigned)v : 1;
}

static const char *mode_name(int mode)
{
	switch (mode) {
	case DXM_UFFD_DEV:
		return "/dev/userfaultfd (system calls on exclusive pages are "
		       "resolved)";
	case DXM_UFFD_SYSCALL:
		return "userfaultfd(2) (system calls on exclusive pages are "
		       "resolved)";
	default:
		return "user-mode-only userfaultfd (a system call whose buffer "
		       "is an exclusive page fails with EFAULT)";
	}
}

static void ctx_free(struct dxm_ctx *ctx)
{
	anon_trash_fini(ctx);
	if (ctx->uffd >= 0)
		close(ctx->uffd);
	if (ctx->uffd_anon >= 0)
		close(ctx->uffd_anon);
	if (ctx->stop_fd >= 0)
		close(ctx->stop_fd);
	if (ctx->wake_fd >= 0)
		close(ctx->wake_fd);
	if (ctx->fork_fd >= 0)
		close(ctx->fork_fd);
	pthread_mutex_destroy(&ctx->gate);
	pthread_rwlock_destroy(&ctx->zap_lock);
	pthread_mutex_destroy(&ctx->um_mtx);
	pthread_mutex_destroy(&ctx->trash_mtx);
	pthread_cond_destroy(&ctx->um_cond);
	pthread_rwlock_destroy(&ctx->fork_lock);
	pthread_rwlock_destroy(&ctx->vt_lock);
	pthread_mutex_destroy(&ctx->defer_mtx);
	pthread_mutex_destroy(&ctx->n_mtx);
	pthread_cond_destroy(&ctx->n_cond);
	if (ctx->handlers)
		free(ctx->handlers[0].backlog);
	free(ctx->handlers);
	free(ctx);
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
	const unsigned known = DXM_CTX_REQUIRE_KERNEL_FAULTS |
			       DXM_CTX_HANDLER_SPIN | DXM_CTX_SIGBUS;
	if ((o.flags & ~known) ||
	    /* in-thread resolution cannot serve a system call's access */
	    ((o.flags & DXM_CTX_SIGBUS) &&
	     (o.flags & DXM_CTX_REQUIRE_KERNEL_FAULTS)))
		return -EINVAL;
	if (o.handler_threads > MAX_HANDLERS)
		return -EINVAL;

	struct dxm_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	ctx->uffd = ctx->uffd_anon = ctx->stop_fd = ctx->wake_fd = -1;
	ctx->fork_fd = -1;
	ctx->psize = (size_t)sysconf(_SC_PAGESIZE);
	ctx->pshift = (unsigned)__builtin_ctzl(ctx->psize);
	ctx->pid = self_pid();
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_mutex_init(&ctx->gate, NULL);
	/* Readers first: zaps run in parallel and are never starved by a
	 * handler that reads in a loop (DXM_CTX_HANDLER_SPIN). */
	pthread_rwlock_init(&ctx->zap_lock, NULL);
	pthread_mutex_init(&ctx->um_mtx, NULL);
	pthread_mutex_init(&ctx->trash_mtx, NULL);
	pthread_cond_init(&ctx->um_cond, NULL);
	pthread_rwlock_init(&ctx->fork_lock, &ra);
	pthread_rwlock_init(&ctx->vt_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&ctx->defer_mtx, NULL);
	pthread_mutex_init(&ctx->n_mtx, NULL);
	pthread_cond_init(&ctx->n_cond, NULL);
	atomic_init(&ctx->n_seq, 0);
	ctx->nhandlers = o.handler_threads ? o.handler_threads : env_threads();
	ctx->flags = o.flags;
	if (o.flags & DXM_CTX_HANDLER_SPIN)
		ctx->spin_ns = (uint64_t)(o.spin_us ? o.spin_us : 100) * 1000;

	int err = -ENOMEM;
	ctx->handlers = calloc(ctx->nhandlers, sizeof(*ctx->handlers));
	if (!ctx->handlers)
		goto fail;

	/* DXM_CTX_SIGBUS: faults raise SIGBUS in the faulting thread, which
	 * resolves them itself (sigbus.c); events still go to the handler. */
	const uint64_t sigbus = o.flags & DXM_CTX_SIGBUS ? UFFD_FEATURE_SIGBUS
							 : 0;
	const uint64_t required = UFFD_FEATURE_MINOR_SHMEM |
				  UFFD_FEATURE_MISSING_SHMEM |
				  UFFD_FEATURE_EVENT_UNMAP |
				  UFFD_FEATURE_EVENT_REMAP |
				  UFFD_FEATURE_THREAD_ID | sigbus;
	/* Not UFFD_FEATURE_EVENT_REMOVE: it makes every zap on this fd,
	 * dxm's own revokes included, wait for a handler to read an event
	 * (docs/kernel-facts.md); a
	 * program's MADV_DONTNEED of a memfd region loses nothing and the
	 * next CPU access faults to the handler anyway (dxm_alloc(3)).
	 * MOVE is for anonymous memory; EVENT_FORK is not enabled: shared
	 * regions are not inherited (MADV_DONTFORK). */
	const uint64_t optional = UFFD_FEATURE_MOVE;
	err = uffd_open(&ctx->uinfo, required, optional, false);
	if (err < 0)
		goto fail;
	ctx->uffd = err;
	/* Adopted memory gets its own userfaultfd: there a program's
	 * MADV_DONTNEED must discard data, so EVENT_REMOVE is on (dxm's own
	 * conversions are UFFDIO_MOVEs, which raise no REMOVE).  EVENT_FORK,
	 * where granted, repairs a raw clone (anon.c).  Optional: without
	 * MOVE only dxm_adopt fails. */
	int afd = uffd_open(&ctx->uinfo_anon,
			    UFFD_FEATURE_MOVE | UFFD_FEATURE_EVENT_UNMAP |
				    UFFD_FEATURE_EVENT_REMAP |
				    UFFD_FEATURE_EVENT_REMOVE |
				    UFFD_FEATURE_THREAD_ID | sigbus,
			    UFFD_FEATURE_EVENT_FORK, true);
	if (afd >= 0)
		ctx->uffd_anon = afd;
	else
		pr_info("dxm_adopt unavailable: %s", strerror(-afd));
	anon_trash_init(ctx);
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
	ctx->fork_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ctx->stop_fd < 0 || ctx->wake_fd < 0 || ctx->fork_fd < 0) {
		err = -errno;
		goto fail;
	}
	fork_init();
	if (sigbus && (err = sigbus_init()))
		goto fail;
	err = registry_add(ctx);
	if (err)
		goto fail;
	err = start_handlers(ctx);
	if (err) {
		stop_handlers(ctx);
		registry_del(ctx);
		goto fail;
	}
	err = watchdog_start(ctx);
	if (err) {
		stop_handlers(ctx);
		watchdog_stop(ctx); /* its locks exist once it was started */
		registry_del(ctx);
		goto fail;
	}
	static atomic_bool said;
	if (!atomic_exchange(&said, true))
		pr_info("userfaultfd mode: %s", mode_name(ctx->uinfo.mode));
	*ctxp = ctx;
	return 0;
fail:
	ctx_free(ctx);
	return err;
}

DXM_API void dxm_ctx_destroy(struct dxm_ctx *ctx)
{
	if (!ctx || !ctx_live(ctx))
		return;
	if (ctx->pid != self_pid()) {
		/* A fork()ed child: the memory is the parent's business. */
		return;
	}
	if (ctx_on_handler(ctx)) {
		pr_err("dxm_ctx_destroy: called from a notifier callback; "
		       "refused");
		return;
	}
	/* Regions first: devices are told (DXM_EVENT_UNMAP) while the
	 * handlers still run, so every waiting fault is resolved. */
	region_destroy_all(ctx);
	fault_drain_ready(ctx);
	if (!registry_del(ctx))
		return;
	stop_handlers(ctx);
	region_run_quiet(ctx); /* teardowns finished after the handlers */
	watchdog_stop(ctx);
	notifier_destroy_all(ctx);
	pthread_mutex_lock(&ctx->defer_mtx);
	struct dxm_fault *lists[2] = { ctx->deferred, ctx->ready };
	pthread_mutex_unlock(&ctx->defer_mtx);
	for (int k = 0; k < 2; k++)
		while (lists[k]) {
			struct dxm_fault *f = lists[k];
			lists[k] = f->next;
			free(f);
		}
	ctx_free(ctx);
}

DXM_API int dxm_stats(struct dxm_ctx *ctx, struct dxm_stats *st, size_t size)
{
	int err = ctx_check(ctx);
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
	memcpy(st, &s, size < sizeof(s) ? size : sizeof(s));
	if (size > sizeof(s))
		memset((char *)st + sizeof(s), 0, size - sizeof(s));
	return 0;
}
