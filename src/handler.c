// SPDX-License-Identifier: MIT
/*
 * The handler loop: threads "dxm-fault/N" (all signals blocked) poll the
 * userfaultfds, a stop eventfd (never read: once written it wakes every
 * thread), a wake eventfd (deferred faults became ready) and the fork
 * eventfd (fork.c: never read here).  Each reads messages in batches under
 * the gate (base.c), applies their events to the tables (region.c, the
 * memory kinds), then resolves their faults (fault.c).  It parks for a
 * fork (fork_park below).
 *
 * This file owns no lock: it takes the gate and zap_lock (base.c) around
 * each read.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "inject.h"
#include "internal.h"
#include "trace.h"

#define BATCH 64

/* How dispatch() leaves the gate once the events are applied. */
enum gate_after {
	GATE_UNLOCK, /* unlock it (and zap_lock) */
	GATE_KEEP,   /* the forking thread holds it for us (FG_HELD) */
	GATE_HANDOVER, /* the same, last batch: tell it (FG_APPLIED) */
};

/* Act on n (<= BATCH) messages read under dxmi_gate_lock(): events first, then
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
			gone[ngone++] = dxmi_region_unmap_detach(
				ctx, m->arg.remove.start, m->arg.remove.end);
			break;
		case UFFD_EVENT_REMAP:
			dxmi_region_remap_move(ctx, m->arg.remap.from,
					  m->arg.remap.to, m->arg.remap.len);
			moved[nmoved].from = m->arg.remap.from;
			moved[nmoved++].len = m->arg.remap.len;
			break;
		case UFFD_EVENT_REMOVE:
			removed[nremoved++] = dxmi_anon_remove_begin(
				ctx, m->arg.remove.start, m->arg.remove.end);
			break;
		case UFFD_EVENT_FORK:
			forked[nforked++] = (int)m->arg.fork.ufd;
			break;
		}
	}
	if (after == GATE_UNLOCK)
		dxmi_gate_unlock(ctx);
	else if (after == GATE_HANDOVER)
		atomic_store(&ctx->fk.gate, FG_APPLIED);

	for (size_t i = 0; i < nforked; i++)
		dxmi_anon_fork_event(ctx, forked[i]);
	for (size_t i = 0; i < nmoved; i++)
		dxmi_notify_range(ctx, moved[i].from, moved[i].from + moved[i].len,
			     DXM_EVENT_REMAP, NULL);
	for (size_t i = 0; i < ngone; i++)
		dxmi_views_unmap_finish(ctx, gone[i]);
	for (size_t i = 0; i < nremoved; i++)
		dxmi_anon_remove_finish(ctx, removed[i]);
	for (size_t i = 0; i < n; i++) {
		struct uffd_msg *m = &msg[i];
		if (m->event == UFFD_EVENT_PAGEFAULT) {
			/* Counted before the thread can be woken. */
			stat_add(&ctx->c.cpu_faults, 1);
			DXM_TRACE_FAULT(m->arg.pagefault.address,
					m->arg.pagefault.flags,
					m->arg.pagefault.feat.ptid);
			dxmi_fault_resolve(ctx, m->arg.pagefault.address,
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
	dxmi_gate_lock(ctx);
	int inj = inject(INJ_READ);
	ssize_t got = inj ? (errno = inj, -1) : read(uffd, msg, sizeof(msg));
	if (got < 0) {
		dxmi_gate_unlock(ctx);
		if (errno != EAGAIN && errno != EINTR)
			pr_err("read(userfaultfd): %s", strerror(errno));
		return 0;
	}
	size_t n = (size_t)got / sizeof(msg[0]);
	DXM_TRACE_READ(uffd, n);
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
	atomic_fetch_add(&ctx->fk.acks, 1);
	while (atomic_load(&ctx->fk.forking) && !atomic_load(&ctx->stopping)) {
		struct pollfd p = { .fd = ctx->uffd_anon, .events = POLLIN };
		if (h->idx != 0 || n == FORK_BACKLOG ||
		    atomic_load(&ctx->fk.gate) == FG_NONE) {
			poll(NULL, 0, 1);
			continue;
		}
		if (poll(&p, 1, 1) == 1 && (p.revents & POLLIN)) {
			ssize_t got = read(ctx->uffd_anon, h->backlog + n,
					   (FORK_BACKLOG - n) * sizeof(*h->backlog));
			if (got > 0) {
				n += (size_t)got / sizeof(*h->backlog);
				DXM_TRACE_READ(ctx->uffd_anon,
					       (size_t)got / sizeof(*h->backlog));
			}
		}
	}
	atomic_fetch_sub(&ctx->fk.acks, 1);
	/* FG_HELD: the forking thread holds the gate for us until the
	 * backlog's events are applied (fork.c). */
	bool held = h->idx == 0 && atomic_load(&ctx->fk.gate) == FG_HELD;
	for (size_t i = 0; i < n; i += BATCH) {
		size_t k = n - i < BATCH ? n - i : BATCH;
		if (!held)
			dxmi_gate_lock(ctx);
		dispatch(ctx, h->backlog + i, k, epoch,
			 !held		 ? GATE_UNLOCK
			 : i + k < n ? GATE_KEEP
				     : GATE_HANDOVER);
	}
	if (held && !n)
		atomic_store(&ctx->fk.gate, FG_APPLIED);
}

/* The wake eventfd was written (deferred faults became ready): reset it
 * before the ready list is drained. */
static void clear_wake(struct dxm_ctx *ctx)
{
	uint64_t v;
	if (read(ctx->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		pr_err("read(eventfd): %s", strerror(errno));
}

/*
 * After a batch, keep watching for ns before going back to sleep in
 * poll(), so that a fault that follows soon is picked up without a wake-up
 * (a CPU is kept busy meanwhile): always with DXM_CTX_HANDLER_SPIN
 * (spin_ns), and with DXM_CTX_HANDLER_ADAPTIVE only when the batch came
 * soon after the one before (adaptive_ns; see handler_main).  Every
 * message read restarts the period.  It polls without a timeout and takes
 * no lock until something is there to read: a spinning handler must not
 * contend for zap_lock with every dxm_make_exclusive (it would sleep on
 * it, and so would they).
 *
 * An adaptive spin (cut) also ends when a dxm_make_exclusive begins: while
 * a thread of the process runs on another CPU, every TLB flush of the
 * process (the conversion's zap or move) must interrupt that CPU, which
 * more than doubled the cost of a conversion (64 pages: 150 -> 360 ns a
 * page on a 2-vCPU guest); a sleeping handler's CPU is skipped.  And a
 * batch with a conversion begun since the one before starts none: faults
 * that follow each other with no conversion between (a read-back) keep
 * the handler spinning, while a device and the CPU taking turns find it
 * asleep, as without the flag.  Why this is not the default:
 * bench/README.md ("Spinning by default?").
 */
static void spin(struct dxm_ctx *ctx, uint64_t ns, bool cut)
{
	unsigned long conv = atomic_load_explicit(&ctx->conversions_begun,
						  memory_order_relaxed);
	struct pollfd pfd[3] = {
		{ .fd = ctx->wake_fd, .events = POLLIN },
		{ .fd = ctx->uffd, .events = POLLIN },
		{ .fd = ctx->uffd_anon, .events = POLLIN }, /* -1: ignored */
	};
	uint64_t until = dxmi_now_ns() + ns;
	/* A fork waits for every handler to park (handler_main). */
	while (dxmi_now_ns() < until && !atomic_load(&ctx->stopping) &&
	       !atomic_load(&ctx->fk.forking) &&
	       !(cut && atomic_load_explicit(&ctx->conversions_begun,
					     memory_order_relaxed) != conv)) {
		if (poll(pfd, 3, 0) <= 0) {
			/* The faulting thread may be waiting for this CPU. */
			sched_yield();
			continue;
		}
		size_t n = 0;
		bool bad = false;
		for (int i = 1; i < 3; i++)
			if (pfd[i].revents & POLLIN)
				n += handle_batch(ctx, pfd[i].fd);
			else if (pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL))
				bad = true;
		if (pfd[0].revents & POLLIN)
			clear_wake(ctx);
		dxmi_fault_drain_ready(ctx);
		/* A munmapped region's teardown may wait for us. */
		dxmi_region_run_quiet(ctx);
		if (bad)
			return; /* an error or hang-up: handler_main's poll */
		if (n)
			until = dxmi_now_ns() + ns;
	}
}

static void *handler_main(void *arg)
{
	struct dxm_handler *h = arg;
	struct dxm_ctx *ctx = h->ctx;
	dxmi_ctx_set_handler(ctx);
	atomic_store(&h->ktid, (int)syscall(SYS_gettid));
	struct pollfd pfd[5] = {
		{ .fd = ctx->stop_fd, .events = POLLIN },
		{ .fd = ctx->wake_fd, .events = POLLIN },
		{ .fd = ctx->uffd, .events = POLLIN },
		{ .fd = ctx->uffd_anon, .events = POLLIN }, /* -1: ignored */
		{ .fd = ctx->fk.fd, .events = POLLIN }, /* never read here */
	};
	/* When this thread last went idle, and how many conversions had
	 * begun then: the batch that wakes it next came soon after when it
	 * is less than adaptive_ns later, with no conversion between (see
	 * spin()). */
	uint64_t idle_since = 0;
	unsigned long idle_conv = 0;
	for (;;) {
		if (atomic_load(&ctx->fk.forking)) {
			fork_park(h);
			continue;
		}
		int inj = inject(INJ_POLL);
		int rc = inj ? (errno = inj, -1) : poll(pfd, 5, -1);
		bool soon = dxmi_now_ns() - idle_since < ctx->adaptive_ns &&
			    atomic_load_explicit(&ctx->conversions_begun,
						 memory_order_relaxed) ==
				    idle_conv;
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			pr_err("poll(userfaultfd): %s", strerror(errno));
			break;
		}
		if (pfd[0].revents)
			break;
		if (pfd[1].revents)
			clear_wake(ctx);
		size_t n = 0;
		for (int i = 2; i < 4; i++) {
			if (pfd[i].revents & POLLIN)
				n += handle_batch(ctx, pfd[i].fd);
			else if (pfd[i].revents & (POLLERR | POLLHUP))
				goto out;
		}
		dxmi_fault_drain_ready(ctx);
		dxmi_region_run_quiet(ctx);
		if (ctx->spin_ns)
			spin(ctx, ctx->spin_ns, false);
		else if (n && soon)
			spin(ctx, ctx->adaptive_ns, true);
		idle_since = dxmi_now_ns();
		idle_conv = atomic_load_explicit(&ctx->conversions_begun,
						 memory_order_relaxed);
	}
out:
	if (!atomic_load(&ctx->stopping))
		pr_err("fault handler thread %u stopped unexpectedly", h->idx);
	atomic_store(&h->exited, true);
	return NULL;
}

/* Whether kernel thread tid is one of ctx's handler threads (a fault's
 * thread id: UFFD_FEATURE_THREAD_ID). */
bool dxmi_ctx_is_handler_tid(struct dxm_ctx *ctx, pid_t tid)
{
	for (unsigned i = 0; tid > 0 && i < ctx->nhandlers; i++)
		if (atomic_load(&ctx->handlers[i].ktid) == tid)
			return true;
	return false;
}

int dxmi_handlers_start(struct dxm_ctx *ctx)
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

void dxmi_handlers_stop(struct dxm_ctx *ctx)
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
