// SPDX-License-Identifier: MIT
/*
 * dxm stress: small helpers (time, random numbers, failures, pagemap,
 * threads on stacks of our own).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
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
	off_t off = (off_t)((uintptr_t)addr / st.ps * sizeof(e));
	if (!addr || st.pagemap_fd < 0 ||
	    pread(st.pagemap_fd, &e, sizeof(e), off) != (ssize_t)sizeof(e))
		return '?';
	return (e >> 63) & 1 ? 'P' : (e >> 62) & 1 ? 'S' : '-';
}

/* The kernel's view: /proc/self/pagemap's present bit for addr's page. */
bool st_present(const void *addr)
{
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)addr / st.ps * sizeof(e));
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
