// SPDX-License-Identifier: MIT
/*
 * DXM_CTX_SIGBUS: in-thread fault resolution.  The context's userfaultfds
 * have UFFD_FEATURE_SIGBUS, so a CPU fault on a managed page raises SIGBUS
 * in the faulting thread instead of waking a handler thread; this handler
 * resolves it right there (notifiers, then UFFDIO_CONTINUE or UFFDIO_MOVE)
 * and returns, and the access is retried.  No cross-CPU wake-up: the
 * lowest latency (`dxm bench` compares the modes; docs/kernel-facts.md).
 *
 * The price, documented in dxm_ctx_create(3):
 *   - notifier callbacks run in the faulting thread's signal handler: a
 *     driver whose callback takes a lock that the same thread may hold
 *     while touching managed memory deadlocks;
 *   - a system call whose buffer is an exclusive page fails with EFAULT
 *     (the kernel cannot deliver SIGBUS for its own access);
 *   - the process's SIGBUS disposition is shared: the previous handler is
 *     called for every SIGBUS that is not a managed page's.
 *
 * The handler installs once per process and stays; contexts are found in
 * the registry (registry.c).  errno is preserved.
 *
 * Locking: none (async-signal-safe: the registry is searched without its
 * lock, and the handler is installed once, under pthread_once).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static struct sigaction prev;

/* A SIGBUS-mode context of this process that manages addr resolves it. */
static bool resolves(struct dxm_ctx *ctx, uintptr_t addr)
{
	/* getpid(), not the cached value: a raw clone's child keeps the
	 * parent's cache, and must not act on the parent's contexts. */
	return (ctx->flags & DXM_CTX_SIGBUS) && ctx->pid == getpid() &&
	       dxmi_fault_resolve_here(ctx, addr);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_err;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	/* Only a fault raised by the kernel (si_code > 0), not kill(2). */
	if (si->si_code > 0 && dxmi_registry_find(resolves, (uintptr_t)si->si_addr)) {
		errno = saved;
		return;
	}
	errno = saved;
	/* Not a managed page: whatever the program had. */
	if (prev.sa_flags & SA_SIGINFO) {
		prev.sa_sigaction(sig, si, uc);
	} else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
		prev.sa_handler(sig);
	} else if (prev.sa_handler == SIG_IGN && si->si_code <= 0) {
		return; /* an ignored SIGBUS sent by kill(2) */
	} else {
		/* The default action; for a fault even when ignored, as the
		 * kernel does: re-raised when the access is retried, or now
		 * for a signal sent by kill(2). */
		signal(SIGBUS, SIG_DFL);
		if (si->si_code <= 0)
			raise(SIGBUS);
	}
}

static void install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &prev))
		install_err = -errno;
}

int dxmi_sigbus_init(void)
{
	pthread_once(&once, install);
	if (install_err)
		pr_err("DXM_CTX_SIGBUS: cannot install a SIGBUS handler: %s",
		       strerror(-install_err));
	return install_err;
}
