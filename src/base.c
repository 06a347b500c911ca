// SPDX-License-Identifier: MIT
/*
 * Primitives every other file uses, and which call nothing of the library
 * but the log: the clock and the back-off, the process id, whether this
 * thread is a handler thread, the handler's wake-up, and the gate.
 *
 * Locking (this file owns the gate and zap_lock; the whole order is in
 * internal.h)
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
 *   new mapping's pages.
 */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

uint64_t dxmi_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A back-off: sleep *us microseconds, then double it, up to 1 ms.
 * Async-signal-safe (SIGBUS mode naps in its signal handler). */
void dxmi_nap_us(unsigned *us)
{
	struct timespec ts = { 0, (long)*us * 1000 };
	nanosleep(&ts, NULL);
	if (*us < 1000)
		*us *= 2;
}

/*
 * Wait before retrying an ioctl the kernel refused with EAGAIN: the
 * userfaultfd's mmap_changing, set from the moment a thread queues an
 * event (a REMOVE, an UNMAP, a fork) until that thread resumes after a
 * handler read it.  Usually a few microseconds; but a program that makes
 * events without a pause (MADV_DONTNEED in a loop) leaves gaps of about a
 * microsecond between them, and a back-off that grows to a millisecond
 * lands in one only now and then: a conversion against such a loop took
 * up to seconds, 40 a second on an idle machine.  So the first
 * EAGAIN_YIELDS tries (about a millisecond where the CPU is idle) only
 * yield, to the handler that reads the event and the thread that resumes
 * where they share the CPU, and catch a gap (900 conversions a second,
 * none over 9 ms); then the back-off of dxmi_nap_us, 5 us doubling up to
 * 1.28 ms, for an event that waits on something slow (a handler in a
 * device's callback).  *tries starts at 0.  Async-signal-safe.
 */
void dxmi_eagain_wait(unsigned *tries)
{
	unsigned n = *tries;
	if (n < EAGAIN_YIELDS + 8)
		++*tries;
	if (n < EAGAIN_YIELDS) {
		sched_yield();
		return;
	}
	n -= EAGAIN_YIELDS;
	struct timespec ts = { 0, 5000l << (n < 8 ? n : 8) };
	nanosleep(&ts, NULL);
}

/*
 * The process id, without a system call on every API call: cached, and
 * forgotten in a fork()ed child by fork.c's atfork handler.  (A raw clone
 * that bypasses the handlers keeps the parent's value in the child.)
 */
static atomic_int my_pid;

pid_t dxmi_self_pid(void)
{
	pid_t p = atomic_load_explicit(&my_pid, memory_order_relaxed);
	if (!p) {
		p = getpid();
		atomic_store_explicit(&my_pid, p, memory_order_relaxed);
	}
	return p;
}

void dxmi_self_pid_forget(void)
{
	atomic_store(&my_pid, 0);
}

/* ----------------------------------------------------------- handlers */

static __thread struct dxm_ctx *handler_of;

/* handler.c: this thread is one of ctx's handler threads. */
void dxmi_ctx_set_handler(struct dxm_ctx *ctx)
{
	handler_of = ctx;
}

bool dxmi_ctx_on_handler(struct dxm_ctx *ctx)
{
	return handler_of == ctx;
}

void dxmi_ctx_kick(struct dxm_ctx *ctx)
{
	uint64_t one = 1;
	if (write(ctx->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		pr_err("cannot wake the fault handler: %s", strerror(errno));
}

/* Take the gate and zap_lock, as a batch is read and applied under. */
void dxmi_gate_lock(struct dxm_ctx *ctx)
{
	pthread_mutex_lock(&ctx->gate);
	pthread_rwlock_wrlock(&ctx->zap_lock);
}

void dxmi_gate_unlock(struct dxm_ctx *ctx)
{
	pthread_rwlock_unlock(&ctx->zap_lock);
	pthread_mutex_unlock(&ctx->gate);
}

void dxmi_gate_init(struct dxm_ctx *ctx)
{
	pthread_mutex_init(&ctx->gate, NULL);
	/* Readers first: zaps run in parallel and are never starved by a
	 * handler that reads in a loop (DXM_CTX_HANDLER_SPIN). */
	pthread_rwlock_init(&ctx->zap_lock, NULL);
}

void dxmi_gate_fini(struct dxm_ctx *ctx)
{
	pthread_mutex_destroy(&ctx->gate);
	pthread_rwlock_destroy(&ctx->zap_lock);
}
