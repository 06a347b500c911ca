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

/* The kernel's UFFD_FEATURE_* bits by name, and the release that brought
 * the ones dxm asks for (linux/userfaultfd.h). */
static const struct {
	uint64_t bit;
	const char *name, *since;
} feature_names[] = {
	{ UFFD_FEATURE_PAGEFAULT_FLAG_WP, "UFFD_FEATURE_PAGEFAULT_FLAG_WP", NULL },
	{ UFFD_FEATURE_EVENT_FORK, "UFFD_FEATURE_EVENT_FORK", NULL },
	{ UFFD_FEATURE_EVENT_REMAP, "UFFD_FEATURE_EVENT_REMAP", "Linux 4.11" },
	{ UFFD_FEATURE_EVENT_REMOVE, "UFFD_FEATURE_EVENT_REMOVE", "Linux 4.11" },
	{ UFFD_FEATURE_MISSING_HUGETLBFS, "UFFD_FEATURE_MISSING_HUGETLBFS", NULL },
	{ UFFD_FEATURE_MISSING_SHMEM, "UFFD_FEATURE_MISSING_SHMEM", "Linux 4.11" },
	{ UFFD_FEATURE_EVENT_UNMAP, "UFFD_FEATURE_EVENT_UNMAP", "Linux 4.11" },
	{ UFFD_FEATURE_SIGBUS, "UFFD_FEATURE_SIGBUS", "Linux 4.14" },
	{ UFFD_FEATURE_THREAD_ID, "UFFD_FEATURE_THREAD_ID", "Linux 4.14" },
	{ UFFD_FEATURE_MINOR_HUGETLBFS, "UFFD_FEATURE_MINOR_HUGETLBFS", NULL },
	{ UFFD_FEATURE_MINOR_SHMEM, "UFFD_FEATURE_MINOR_SHMEM", "Linux 5.14" },
	{ UFFD_FEATURE_EXACT_ADDRESS, "UFFD_FEATURE_EXACT_ADDRESS", NULL },
	{ UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", NULL },
	{ UFFD_FEATURE_WP_UNPOPULATED, "UFFD_FEATURE_WP_UNPOPULATED", NULL },
	{ UFFD_FEATURE_POISON, "UFFD_FEATURE_POISON", NULL },
	{ UFFD_FEATURE_WP_ASYNC, "UFFD_FEATURE_WP_ASYNC", NULL },
	{ UFFD_FEATURE_MOVE, "UFFD_FEATURE_MOVE", "Linux 6.8" },
};

/* The name of one feature bit, or NULL; *since (if asked): the Linux
 * release that brought it, or NULL where dxm does not say. */
const char *dxmi_uffd_feature_name(uint64_t bit, const char **since)
{
	for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]);
	     i++)
		if (feature_names[i].bit == bit) {
			if (since)
				*since = feature_names[i].since;
			return feature_names[i].name;
		}
	return NULL;
}

/* For a log message: "UFFD_FEATURE_MOVE (Linux 6.8)". */
static const char *feature_name(uint64_t bit, char *buf, size_t len)
{
	const char *since = NULL;
	const char *name = dxmi_uffd_feature_name(bit, &since);
	if (!name)
		return "an unnamed userfaultfd feature";
	if (!since)
		return name;
	snprintf(buf, len, "%s (%s)", name, since);
	return buf;
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
		char buf[80];
		dxm_log(quiet ? DXM_LOG_INFO : DXM_LOG_ERROR,
			"the kernel lacks %s, which dxm needs",
			feature_name(bit, buf, sizeof(buf)));
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
		char buf[80];
		pr_info("%s refused (%s): continuing without it",
			feature_name(top, buf, sizeof(buf)), strerror(-err));
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

/* A range ioctl that failed part-way: the bytes done before the failing
 * page (done > 0), else -errno (the kernel may store it in done). */
static long partial(int64_t done)
{
	int err = errno;
	if (done > 0)
		return done;
	return done < 0 ? done : -err;
}

/*
 * The range ioctls (CONTINUE, MOVE, COPY, ZEROPAGE) return the bytes done:
 * len, or those before the failing page (> 0), or -errno; `field` is the
 * argument's count of what was done.  site: a failure tests may inject.
 */
#define RANGE_IOCTL(site, uffd, req, arg, field, len)                          \
	({                                                                     \
		int inj_ = inject(site);                                       \
		inj_		       ? -(long)inj_                           \
		: ioctl(uffd, req, arg) == 0 ? (long)(len)                     \
					     : partial((arg)->field);          \
	})

long dxmi_uffd_continue(int uffd, uintptr_t start, size_t len, bool wake)
{
	struct uffdio_continue c = {
		.range = { .start = start, .len = len },
		.mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE,
	};
	return RANGE_IOCTL(INJ_CONTINUE, uffd, UFFDIO_CONTINUE, &c, mapped, len);
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
	/* Tests: the first page moved and an EEXIST (inject.h, "moved"). */
	int moved = inject(INJ_MOVED);
	if (moved) {
		struct uffdio_move one = m;
		one.len = (size_t)sysconf(_SC_PAGESIZE);
		if (ioctl(uffd, UFFDIO_MOVE, &one) == 0)
			return -moved;
	}
	return RANGE_IOCTL(INJ_MOVE, uffd, UFFDIO_MOVE, &m, move, len);
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
	return RANGE_IOCTL(INJ_COPY, uffd, UFFDIO_COPY, &c, copy, len);
}

long dxmi_uffd_zeropage(int uffd, uintptr_t dst, size_t len)
{
	struct uffdio_zeropage z = { .range = { .start = dst, .len = len } };
	return RANGE_IOCTL(INJ_ZEROPAGE, uffd, UFFDIO_ZEROPAGE, &z, zeropage,
			   len);
}
