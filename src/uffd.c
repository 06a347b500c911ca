// SPDX-License-Identifier: MIT
/*
 * The userfaultfd: opening the strongest one the process may have, probing
 * its features once per process, and the ioctl wrappers.  This is the one
 * place where system-call failures become negative errno values.
 *
 * Locking: probe_mtx (a leaf, internal.h) guards the one kernel probe;
 * the rest are system calls and holds nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat_uffd.h"
#include "inject.h"
#include "internal.h"

static int open_dev(void)
{
	int dfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	int fd = ioctl(dfd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	int err = errno;
	close(dfd);
	return fd < 0 ? -err : fd;
}

static int open_sys(int extra)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | extra);
	return fd < 0 ? -errno : fd;
}

static int open_mode(int mode)
{
	switch (mode) {
	case DXM_UFFD_DEV:
		return open_dev();
	case DXM_UFFD_SYSCALL:
		return open_sys(0);
	default:
		return open_sys(UFFD_USER_MODE_ONLY);
	}
}

static int api(int fd, uint64_t features, uint64_t *out)
{
	struct uffdio_api a = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &a))
		return -errno;
	if (out)
		*out = a.features;
	return 0;
}

static const struct {
	uint64_t bit;
	const char *name;
} feature_names[] = {
	{ UFFD_FEATURE_MINOR_SHMEM, "UFFD_FEATURE_MINOR_SHMEM (Linux 5.14)" },
	{ UFFD_FEATURE_MISSING_SHMEM, "UFFD_FEATURE_MISSING_SHMEM (Linux 4.11)" },
	{ UFFD_FEATURE_EVENT_UNMAP, "UFFD_FEATURE_EVENT_UNMAP (Linux 4.11)" },
	{ UFFD_FEATURE_EVENT_REMAP, "UFFD_FEATURE_EVENT_REMAP (Linux 4.11)" },
	{ UFFD_FEATURE_THREAD_ID, "UFFD_FEATURE_THREAD_ID (Linux 4.14)" },
	{ UFFD_FEATURE_MOVE, "UFFD_FEATURE_MOVE (Linux 6.8)" },
	{ UFFD_FEATURE_EVENT_FORK, "UFFD_FEATURE_EVENT_FORK" },
	{ UFFD_FEATURE_SIGBUS, "UFFD_FEATURE_SIGBUS (Linux 4.14)" },
	{ UFFD_FEATURE_EVENT_REMOVE, "UFFD_FEATURE_EVENT_REMOVE (Linux 4.11)" },
};

static const char *feature_name(uint64_t bit)
{
	for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]);
	     i++)
		if (feature_names[i].bit == bit)
			return feature_names[i].name;
	return "an unnamed userfaultfd feature";
}

/*
 * Process-wide probe: which mode opens, and what the kernel offers in it.
 * A success is cached (a context only asks for what is offered); a failure
 * is not, so a passing one (no file descriptors left) or permissions
 * granted later do not stick.
 */
static pthread_mutex_t probe_mtx = PTHREAD_MUTEX_INITIALIZER;
static int probe_mode;	     /* 0: not probed successfully yet */
static int probe_err;	     /* why no mode opened, last time */
static uint64_t probe_offer; /* features offered in probe_mode */

static void probe(void)
{
	static const int modes[] = { DXM_UFFD_DEV, DXM_UFFD_SYSCALL,
				     DXM_UFFD_USER_ONLY };
	pthread_mutex_lock(&probe_mtx);
	probe_err = -ENOSYS;
	for (size_t i = 0; i < 3 && !__atomic_load_n(&probe_mode, __ATOMIC_RELAXED); i++) {
		int fd = open_mode(modes[i]);
		if (fd < 0) {
			/* Before Linux 5.11, UFFD_USER_MODE_ONLY is an
			 * unknown flag (EINVAL): what stops us is still the
			 * permission refused just before. */
			if (fd == -EINVAL && modes[i] == DXM_UFFD_USER_ONLY)
				continue;
			/* Prefer reporting a permission problem over ENOENT
			 * from a missing /dev/userfaultfd. */
			if (fd != -ENOENT || probe_err == -ENOSYS)
				probe_err = fd;
			continue;
		}
		uint64_t offer = 0;
		int err = api(fd, 0, &offer);
		close(fd);
		if (err) {
			probe_err = err;
			continue;
		}
		probe_offer = offer;
		__atomic_store_n(&probe_mode, modes[i], __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&probe_mtx);
}

int dxmi_uffd_open(struct dxm_uffd_info *info, uint64_t required, uint64_t optional,
	      bool quiet)
{
	bool reprobed = false;
again:
	if (!__atomic_load_n(&probe_mode, __ATOMIC_ACQUIRE))
		probe();
	if (!probe_mode) {
		if (probe_err == -ENOSYS)
			pr_err("userfaultfd is not available in this kernel "
			       "(CONFIG_USERFAULTFD)");
		else
			pr_err("cannot open a userfaultfd: %s; grant access "
			       "to /dev/userfaultfd or set "
			       "vm.unprivileged_userfaultfd=1",
			       strerror(-probe_err));
		return probe_err == -EACCES ? -EPERM : probe_err;
	}
	uint64_t missing = required & ~probe_offer;
	if (missing) {
		uint64_t bit = missing & -missing;
		dxm_log(quiet ? DXM_LOG_INFO : DXM_LOG_ERROR,
			"the kernel lacks %s, which dxm needs",
			feature_name(bit));
		return -ENOSYS;
	}
	uint64_t want = required | (optional & probe_offer);
	for (;;) {
		int fd = open_mode(probe_mode);
		if ((fd == -EPERM || fd == -EACCES) && !reprobed) {
			/* The process gave up privileges since the probe
			 * (setuid): find what it may have now. */
			reprobed = true;
			__atomic_store_n(&probe_mode, 0, __ATOMIC_RELEASE);
			goto again;
		}
		if (fd < 0)
			return fd;
		int err = api(fd, want, NULL);
		if (!err) {
			info->mode = probe_mode;
			info->features = want;
			info->offered = probe_offer;
			return fd;
		}
		close(fd);
		/* A refused optional feature (EVENT_FORK needs
		 * CAP_SYS_PTRACE) never fails creation: drop it and retry. */
		uint64_t opt = want & optional;
		if (err != -EPERM && err != -EINVAL)
			return err;
		if (!opt) {
			pr_err("UFFDIO_API refused the features dxm needs: %s",
			       strerror(-err));
			return err;
		}
		uint64_t top = 1ull << (63 - __builtin_clzll(opt));
		pr_info("%s refused (%s): continuing without it",
			feature_name(top), strerror(-err));
		want &= ~top;
	}
}

int dxmi_uffd_register(int uffd, uintptr_t start, size_t len, uint64_t mode)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = mode,
	};
	return ioctl(uffd, UFFDIO_REGISTER, &reg) ? -errno : 0;
}

int dxmi_uffd_unregister(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(uffd, UFFDIO_UNREGISTER, &r) ? -errno : 0;
}

/* Returns the bytes mapped (> 0) or -errno; on a partial failure the
 * bytes mapped before the failing page, if any. */
long dxmi_uffd_continue(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_continue c = {
		.range = { .start = start, .len = len },
		.mode = 0,
	};
	int inj = inject(INJ_CONTINUE);
	if (inj)
		return -inj;
	if (ioctl(uffd, UFFDIO_CONTINUE, &c) == 0)
		return (long)len;
	int err = errno;
	if (c.mapped > 0)
		return c.mapped;
	return c.mapped < 0 ? c.mapped : -err;
}

int dxmi_uffd_wake(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(uffd, UFFDIO_WAKE, &r) ? -errno : 0;
}

int dxmi_sys_madvise(void *addr, size_t len, int advice)
{
	return madvise(addr, len, advice) ? -errno : 0;
}

/* UFFDIO_MOVE: bytes moved (> 0), or -errno (with a partial count, the
 * bytes moved before the failing page). */
long dxmi_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len,
	       uint64_t mode)
{
	struct uffdio_move m = {
		.dst = dst, .src = src, .len = len, .mode = mode,
	};
	int inj = inject(INJ_MOVE);
	if (inj)
		return -inj;
	if (ioctl(uffd, UFFDIO_MOVE, &m) == 0)
		return (long)len;
	int err = errno;
	if (m.move > 0)
		return m.move;
	return m.move < 0 ? m.move : -err;
}

long dxmi_uffd_copy(int uffd, uintptr_t dst, uintptr_t src, size_t len)
{
	return dxmi_uffd_copy_mode(uffd, dst, src, len, 0);
}

long dxmi_uffd_copy_mode(int uffd, uintptr_t dst, uintptr_t src, size_t len,
		    uint64_t mode)
{
	struct uffdio_copy c = {
		.dst = dst, .src = src, .len = len, .mode = mode,
	};
	int inj = inject(INJ_COPY);
	if (inj)
		return -inj;
	if (ioctl(uffd, UFFDIO_COPY, &c) == 0)
		return (long)len;
	int err = errno;
	if (c.copy > 0)
		return c.copy;
	return c.copy < 0 ? c.copy : -err;
}

long dxmi_uffd_zeropage(int uffd, uintptr_t dst, size_t len)
{
	struct uffdio_zeropage z = { .range = { .start = dst, .len = len } };
	int inj = inject(INJ_ZEROPAGE);
	if (inj)
		return -inj;
	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0)
		return (long)len;
	int err = errno;
	if (z.zeropage > 0)
		return z.zeropage;
	return z.zeropage < 0 ? z.zeropage : -err;
}
