// SPDX-License-Identifier: MIT
/*
 * dxm stress: small helpers (time, random numbers, failures, pagemap,
 * threads on stacks of our own, the huge-page pool).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "stress_int.h"

struct st_global st;

const char *const st_op_name[ST_NOPS] = {
	[OP_CPU_INC] = "cpu-inc",	  [OP_ALIAS_READ] = "view-read",
	[OP_SYS_IN] = "sys-read-into",	  [OP_SYS_OUT] = "sys-write-from",
	[OP_EFAULT] = "efault-retry",	  [OP_MPROTECT] = "mprotect",
	[OP_EPERM] = "eperm-checked",	  [OP_ALIAS_ADD] = "alias-add",
	[OP_ALIAS_DEL] = "alias-del",	  [OP_REALLOC] = "realloc",
	[OP_FREE] = "teardown-free",	  [OP_MUNMAP] = "teardown-munmap",
	[OP_VERIFY] = "verify-exact",	  [OP_FORK] = "fork",
	[OP_DEV_ATOMIC] = "dev-atomic",	  [OP_DEV_EXCL] = "dev-exclusive",
	[OP_DEV_BUSY] = "dev-exclusive-busy", [OP_DEV_READ] = "dev-read",
	[OP_WATCH] = "watch-convert",	  [OP_WATCH_INC] = "watch-inc",
	[OP_PAGEMAP] = "pagemap-check",	  [OP_PROBE] = "probe-check",
};

const char *const st_feature_name[ST_NFEATURES] = {
	[F_CPU_INC] = "cpu-inc",	 [F_ALIAS_READ] = "view-read",
	[F_SYS_IN] = "sys-in",		 [F_SYS_OUT] = "sys-out",
	[F_MPROTECT] = "mprotect",	 [F_ALIAS] = "alias",
	[F_REALLOC] = "realloc",	 [F_FORK] = "fork",
	[F_DEV_ATOMIC] = "dev-atomic",	 [F_DEV_EXCL] = "dev-excl",
	[F_DEV_READ] = "dev-read",	 [F_DEV_READ_ANON] = "dev-read-anon",
	[F_WATCH] = "watch",		 [F_PROBE] = "probe",
	[F_ANON] = "anon",		 [F_MEMFD] = "memfd",
	[F_ANON_MUNMAP] = "anon-munmap", [F_ANON_MPROTECT] = "anon-mprotect",
};

uint64_t st_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64* */
uint64_t st_rand(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

unsigned st_rnd(struct st_worker *w, unsigned n)
{
	return n ? (unsigned)(st_rand(&w->rng) % n) : 0;
}

bool st_enabled(enum st_feature f)
{
	return !st.disabled[f];
}

void st_sleep_us(unsigned us)
{
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Record a failure (the first reason is kept), print it and stop the
 * run. */
void st_fail(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&st.fail_mtx);
	if (!st.fail_reason[0])
		snprintf(st.fail_reason, sizeof(st.fail_reason), "%s", buf);
	st.nfailures++;
	pthread_mutex_unlock(&st.fail_mtx);
	fprintf(stderr, "stress: FAILURE at %.3f s: %s\n",
		(double)(st_now() - st.t_start) / 1e9, buf);
	fflush(stderr);
	atomic_store(&st.failed, true);
	atomic_store(&st.stop, true);
	/* The watchdog thread dumps the state: this thread may be one the
	 * dump would wait for (a fault handler running our print callback,
	 * a device holding its lock). */
}

/* For a state report: addr's page in /proc/self/pagemap, as one
 * character: 'P' present, 'S' swapped out, '-' neither (nothing mapped
 * there), '?' unreadable.  Never fails the run. */
char st_pagemap_char(const void *addr)
{
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)addr / st.bps * sizeof(e));
	if (!addr || st.pagemap_fd < 0 ||
	    pread(st.pagemap_fd, &e, sizeof(e), off) != (ssize_t)sizeof(e))
		return '?';
	return (e >> 63) & 1 ? 'P' : (e >> 62) & 1 ? 'S' : '-';
}

/* The kernel's view: /proc/self/pagemap's present bit for addr's page. */
bool st_present(const void *addr)
{
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)addr / st.bps * sizeof(e));
	ssize_t n = pread(st.pagemap_fd, &e, sizeof(e), off);
	if (n != (ssize_t)sizeof(e)) {
		st_fail("pread(/proc/self/pagemap) for %p: %s", addr,
			n < 0 ? strerror(errno) : "short read");
		return false;
	}
	return (e >> 63) & 1;
}

/*
 * Threads with 1 MiB stacks.  glibc caches the stacks of joined threads
 * (and frees nothing it allocated for them); stress_main starts as many
 * threads as the run will have at once before the leak baseline, so that
 * the run reuses those stacks and the mappings match at the end.
 */
int st_thread_start(struct st_thread *t, void *(*fn)(void *), void *arg)
{
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, (size_t)1 << 20);
	int err = pthread_create(&t->tid, &a, fn, arg);
	pthread_attr_destroy(&a);
	if (err)
		return -err;
	t->started = true;
	return 0;
}

void st_thread_join(struct st_thread *t)
{
	if (!t->started)
		return;
	pthread_join(t->tid, NULL);
	t->started = false;
}

/* --------------------------------------------------- the huge-page pool */

/*
 * --huge takes its 2 MiB pages from the system's pool.  As root, what is
 * missing at the start is added to the pool's count and the same number
 * taken off again at the end, whatever the count is then (other programs
 * may change it meanwhile: only ever add, and subtract what was added),
 * also on a failure, a fatal signal, SIGINT or SIGTERM: st_pool_release(),
 * async-signal-safe, and only in the process that added them (not a fork
 * child).  The 2 MiB pool's own files (/proc/sys/vm/nr_hugepages is the
 * same count where 2 MiB is the default huge page size, as on x86-64).
 */
#define HP_DIR "/sys/kernel/mm/hugepages/hugepages-2048kB/"
#define HP_NR  HP_DIR "nr_hugepages"

static atomic_long pool_added; /* pages this run added to the pool */
static pid_t pool_pid;
static bool pool_root; /* may add pages */

/* A number from a sysfs or proc file, -1 if unreadable (async-signal-safe). */
static long hp_read(const char *path)
{
	char b[32];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, b, sizeof(b) - 1);
	close(fd);
	if (n <= 0 || b[0] < '0' || b[0] > '9')
		return -1;
	long v = 0;
	for (ssize_t i = 0; i < n && b[i] >= '0' && b[i] <= '9'; i++)
		v = v * 10 + (b[i] - '0');
	return v;
}

/* Async-signal-safe. */
static bool hp_write(const char *path, long v)
{
	char b[24];
	size_t i = sizeof(b);
	b[--i] = '\n';
	do
		b[--i] = (char)('0' + v % 10);
	while ((v /= 10) && i);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = write(fd, b + i, sizeof(b) - i);
	close(fd);
	return n == (ssize_t)(sizeof(b) - i);
}

/* Pages a new region can take now: free and not reserved; -1: no pool. */
static long hp_avail(void)
{
	long f = hp_read(HP_DIR "free_hugepages");
	long r = hp_read(HP_DIR "resv_hugepages");
	return f < 0 || r < 0 ? -1 : f - r;
}

/* Add n pages to the pool; returns how many it grew by. */
static long pool_add(long n)
{
	long cur = hp_read(HP_NR);
	if (cur < 0 || !hp_write(HP_NR, cur + n))
		return 0;
	long now = hp_read(HP_NR), got = now > cur ? now - cur : 0;
	atomic_fetch_add(&pool_added, got);
	return got;
}

long st_pool_added(void)
{
	return atomic_load(&pool_added);
}

/* Make sure `need` pages are free (adding them as root); else 0 and a
 * reason in why. */
int st_pool_setup(size_t need, char *why, size_t len)
{
	pool_pid = getpid();
	pool_root = geteuid() == 0 && access(HP_NR, W_OK) == 0;
	long avail = hp_avail(), added = 0;
	if (avail < 0) {
		snprintf(why, len,
			 "--huge: this system has no pool of 2 MiB huge pages "
			 "(%s)",
			 HP_DIR);
		return -ENOSYS;
	}
	if (avail < (long)need && pool_root) {
		added = pool_add((long)need - avail);
		avail = hp_avail();
	}
	if (avail >= (long)need)
		return 0;
	if (pool_root)
		snprintf(why, len,
			 "--huge needs %zu free 2 MiB huge pages; after adding "
			 "%ld to /proc/sys/vm/nr_hugepages the pool has %ld "
			 "free (not enough free contiguous memory?)",
			 need, added, avail);
	else
		snprintf(why, len,
			 "--huge needs %zu free 2 MiB huge pages (%u region "
			 "slots of up to %d pages, and 2 regions' worth for "
			 "re-allocation); the pool has %ld: as root, add %ld to "
			 "/proc/sys/vm/nr_hugepages (or run the stress as root, "
			 "which adds them and takes them off again at the end)",
			 need, st.nregions, ST_MAX_PAGES, avail,
			 (long)need - avail);
	return -ENOMEM;
}

/* Before a new region of np huge pages: wait until the pool has them free
 * (the pages of a region munmap'd just before go back from a handler
 * thread), as root topping the pool up after a second (another program
 * may have lowered the count); false and a failure after 2.5 s. */
bool st_pool_wait(struct st_worker *w, size_t np)
{
	uint64_t t0 = st_now();
	bool topped = false;
	st_op_step(w, "wait for free huge pages");
	for (;;) {
		long avail = hp_avail();
		if (avail >= (long)np)
			return true;
		uint64_t ms = (st_now() - t0) / 1000000;
		if (!topped && pool_root && ms >= 1000) {
			topped = true;
			pool_add((long)np - (avail > 0 ? avail : 0));
			continue;
		}
		if (ms >= ST_HANG_MS / 2 || st_stopping()) {
			if (!st_stopping())
				st_fail("--huge: a new region needs %zu free 2 MiB "
					"huge pages, the pool has %ld after %d ms "
					"(/proc/sys/vm/nr_hugepages: %ld, this run "
					"added %ld)",
					np, avail, ST_HANG_MS / 2, hp_read(HP_NR),
					st_pool_added());
			return false;
		}
		st_sleep_us(1000);
	}
}

/* Take off the pool what this run added (async-signal-safe). */
void st_pool_release(void)
{
	if (getpid() != pool_pid)
		return; /* a fork child: the parent gives them back */
	long a = atomic_exchange(&pool_added, 0);
	if (a <= 0)
		return;
	long cur = hp_read(HP_NR);
	if (cur >= 0)
		hp_write(HP_NR, cur > a ? cur - a : 0);
}
