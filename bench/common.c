// SPDX-License-Identifier: MIT
/*
 * Pieces several groups share: plain memfd memory, dxm contexts in each
 * resolution mode, a driver-like notifier, and the mprotect + SIGSEGV
 * machinery of the classic user-space alternative.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

#include <sys/ioctl.h>
#include <sys/syscall.h>

#include "compat_uffd.h" /* the library's: constants newer than the headers */

size_t bn_psize = 4096;

/*
 * The dxm resolution modes.  Adding a mode is one entry here: every group
 * that iterates over bn_dxm_modes (restore, ping-pong) measures it and the
 * restore group sets its target against `bare`, the bare-userfaultfd
 * handler that resolves faults the same way.
 */
const struct bn_dxm_mode bn_dxm_modes[] = {
	{ "thread", 0, "uffd thread", 0 },
#ifdef DXM_CTX_HANDLER_SPIN
	{ "spin", DXM_CTX_HANDLER_SPIN, "uffd spin", 2000 },
#endif
#ifdef DXM_CTX_SIGBUS
	{ "sigbus", DXM_CTX_SIGBUS, "uffd sigbus", 0 },
#endif
#ifdef DXM_CTX_HANDLER_ADAPTIVE
	/* Spins only in streams of faults: against the handler that sleeps. */
	{ "adaptive", DXM_CTX_HANDLER_ADAPTIVE, "uffd thread", 100 },
#endif
};
const size_t bn_n_dxm_modes = sizeof(bn_dxm_modes) / sizeof(bn_dxm_modes[0]);

int bn_open_uffd(uint64_t features)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd,
				  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0) {
		int dfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dfd >= 0) {
			fd = ioctl(dfd, USERFAULTFD_IOC_NEW,
				   O_CLOEXEC | O_NONBLOCK);
			close(dfd);
		}
	}
	if (fd < 0)
		return -errno;
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api)) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int bn_memfd_map(size_t len, int *fdp, void **pp)
{
	int fd = memfd_create("dxm-bench", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)len) || fallocate(fd, 0, 0, (off_t)len)) {
		int err = -errno;
		close(fd);
		return err;
	}
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, fd, 0);
	int err = -errno;
	if (fdp && p != MAP_FAILED)
		*fdp = fd;
	else
		close(fd);
	if (p == MAP_FAILED)
		return err;
	*pp = p;
	return 0;
}

int bn_open_backing(const void *addr, off_t *offp)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -errno;
	char line[512];
	uintptr_t a = (uintptr_t)addr;
	int fd = -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end, off;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s %lx", &start, &end, perms,
			   &off) != 4 ||
		    a < start || a >= end)
			continue;
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
			 start, end);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			fd = -errno;
		else
			*offp = (off_t)(off + (a - start));
		break;
	}
	fclose(f);
	return fd;
}

int bn_ctx(struct dxm_ctx **ctxp, unsigned flags, unsigned handler_threads)
{
	struct dxm_ctx_opts o = {
		.sz = sizeof(o),
		.flags = flags,
		.handler_threads = handler_threads,
	};
	return dxm_ctx_create(ctxp, &o);
}

/* ------------------------------------------------------- driver notifier */

static bool drv_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq)
{
	struct bn_drv *d = dxm_notifier_priv(n);
	if (r->event == DXM_EVENT_EXCLUSIVE && r->owner == d)
		return true; /* our own conversion */
	pthread_mutex_lock(&d->lock);
	dxm_notifier_set_seq(n, cur_seq);
	atomic_fetch_add_explicit(&d->calls, 1, memory_order_relaxed);
	pthread_mutex_unlock(&d->lock);
	return true;
}

static const struct dxm_notifier_ops drv_ops = { .invalidate = drv_invalidate };

int bn_drv_attach(struct bn_drv *d, struct dxm_ctx *ctx, void *start,
		  size_t len)
{
	pthread_mutex_init(&d->lock, NULL);
	atomic_init(&d->calls, 0);
	int err = dxm_notifier_insert(ctx, start, len, &drv_ops, d, &d->n);
	if (err)
		pthread_mutex_destroy(&d->lock);
	return err;
}

void bn_drv_detach(struct bn_drv *d)
{
	if (!d->n)
		return;
	dxm_notifier_remove(d->n);
	d->n = NULL;
	pthread_mutex_destroy(&d->lock);
}

int bn_dxm_revoke(struct dxm_ctx *ctx, struct bn_drv *d, void *p, size_t len,
		  void **dev)
{
	long n = dxm_make_exclusive(ctx, p, len, d, dev);
	if (n < 0)
		return (int)n;
	for (long i = 0; i < n; i++)
		if (!dev[i]) {
			dxm_exclusive_unlock(ctx, p, len, dev);
			return -EBUSY;
		}
	dxm_exclusive_unlock(ctx, p, len, dev);
	return 0;
}

/* ---------------------------------------------------------------- signals */

int bn_sig_push(int sig, void (*fn)(int, siginfo_t *, void *),
		struct sigaction *old)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, old) ? -errno : 0;
}

void bn_sig_pop(int sig, const struct sigaction *old)
{
	sigaction(sig, old, NULL);
}

void bn_sig_chain(const struct sigaction *old, int sig, siginfo_t *si,
		  void *uc)
{
	if (old->sa_flags & SA_SIGINFO) {
		if (old->sa_sigaction) {
			old->sa_sigaction(sig, si, uc);
			return;
		}
	} else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
		old->sa_handler(sig);
		return;
	}
	/* Nobody else wants it: the default action when the access restarts. */
	signal(sig, SIG_DFL);
}

/* ----------------------------------------------------- mprotect + SIGSEGV */

#define MP_MAX 8
static struct {
	_Atomic uintptr_t start, end;
	atomic_uchar *held;
} mp[MP_MAX];
static struct sigaction mp_old;
static int mp_users;

static void mp_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	uintptr_t a = (uintptr_t)si->si_addr;
	if (si->si_code == SEGV_ACCERR)
		for (int i = 0; i < MP_MAX; i++) {
			uintptr_t s = atomic_load(&mp[i].start);
			if (!s || a < s || a >= atomic_load(&mp[i].end))
				continue;
			uintptr_t pg = a & ~(uintptr_t)(bn_psize - 1);
			/* The device gives the page up first (the notifier),
			 * then the CPU gets it back. */
			if (mp[i].held)
				atomic_store(&mp[i].held[(pg - s) / bn_psize],
					     0);
			mprotect((void *)pg, bn_psize, PROT_READ | PROT_WRITE);
			errno = saved;
			return;
		}
	errno = saved;
	bn_sig_chain(&mp_old, sig, si, uc);
}

int bn_mp_watch(void *start, size_t len, atomic_uchar *held)
{
	for (int i = 0; i < MP_MAX; i++) {
		if (atomic_load(&mp[i].start))
			continue;
		if (mp_users++ == 0) {
			int err = bn_sig_push(SIGSEGV, mp_handler, &mp_old);
			if (err) {
				mp_users--;
				return err;
			}
		}
		mp[i].held = held;
		atomic_store(&mp[i].end, (uintptr_t)start + len);
		atomic_store(&mp[i].start, (uintptr_t)start);
		return 0;
	}
	return -ENOSPC;
}

void bn_mp_unwatch(void *start)
{
	for (int i = 0; i < MP_MAX; i++)
		if (atomic_load(&mp[i].start) == (uintptr_t)start) {
			atomic_store(&mp[i].start, 0);
			if (--mp_users == 0)
				bn_sig_pop(SIGSEGV, &mp_old);
			return;
		}
}

/* ------------------------------------------------------------- placement */

const char *const bn_place_suffix[BN_NPLACE] = { "", ", same CPU",
						 ", split CPUs" };
static cpu_set_t place_saved;
static bool place_pinned;
static int place_cpu[2] = { -1, -1 }; /* the first two allowed CPUs */

static void place_init(void)
{
	if (place_cpu[0] >= 0)
		return;
	cpu_set_t s;
	if (sched_getaffinity(0, sizeof(s), &s))
		return;
	for (int c = 0, k = 0; c < CPU_SETSIZE && k < 2; c++)
		if (CPU_ISSET(c, &s))
			place_cpu[k++] = c;
}

bool bn_place_ok(enum bn_place p)
{
	place_init();
	if (p == BN_PLACE_SAME)
		return place_cpu[0] >= 0;
	if (p == BN_PLACE_SPLIT)
		return place_cpu[1] >= 0;
	return true;
}

static int pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	return sched_setaffinity(0, sizeof(s), &s) ? -errno : 0;
}

int bn_place_handlers(enum bn_place p)
{
	if (p == BN_PLACE_FREE)
		return 0;
	if (!bn_place_ok(p))
		return -ENODEV;
	if (sched_getaffinity(0, sizeof(place_saved), &place_saved))
		return -errno;
	place_pinned = true;
	return pin(place_cpu[p == BN_PLACE_SPLIT ? 1 : 0]);
}

int bn_place_main(enum bn_place p)
{
	return p == BN_PLACE_FREE ? 0 : pin(place_cpu[0]);
}

void bn_place_end(enum bn_place p)
{
	if (p != BN_PLACE_FREE && place_pinned)
		sched_setaffinity(0, sizeof(place_saved), &place_saved);
	place_pinned = false;
}
