// SPDX-License-Identifier: MIT
/*
 * dxm stress: the CPU threads.  Each picks random operations: atomic
 * increments through a writable view, reads through any readable view
 * (counters within the bounds the counts allow, data intact), read(2) into
 * and write(2) from managed pages, and now and then a change of shape
 * (dxm_mprotect, aliases, re-allocation) or a fork.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stress_int.h"

static void op_inc(struct st_worker *w)
{
	st_op_begin(w, "cpu-inc");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	unsigned k = 1 + st_rnd(w, 64), n = 0;
	for (unsigned i = 0; i < k; i++) {
		size_t p = st_rnd(w, (unsigned)r->npages);
		int v = st_pick_view(w, r, p, 1, PROT_READ | PROT_WRITE);
		if (v < 0)
			continue;
		size_t word = st_rnd(w, ST_NCNT);
		st_op_where(w, r->idx, (int)p);
		st_op_step(w, "CPU atomic increment");
		__atomic_fetch_add((uint64_t *)(r->view[v] + p * st.ps) + word,
				   1, __ATOMIC_SEQ_CST);
		st_expect_inc(r, w->idx, p, word);
		n++;
	}
	st_release(r);
	st_count(w, OP_CPU_INC, n);
out:
	st_op_end(w);
}

/* Counters through a view: plain atomic loads (a CPU access that takes
 * the page back from a device). */
static void load_counters(const char *page, uint64_t *v)
{
	for (size_t k = 0; k < ST_NCNT; k++)
		v[k] = __atomic_load_n((const uint64_t *)page + k,
				       __ATOMIC_SEQ_CST);
}

static void op_view_read(struct st_worker *w, uint64_t *buf)
{
	st_op_begin(w, "view-read");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	size_t p = st_rnd(w, (unsigned)r->npages);
	int v = st_pick_view(w, r, p, 1, PROT_READ);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)p);
	const char *page = r->view[v] + p * st.ps;
	uint64_t lo[ST_NCNT], hi[ST_NCNT];
	st_op_step(w, "data lock");
	pthread_mutex_lock(&r->dlock[p]);
	st_op_step(w, "CPU read through a view");
	st_expect_sum(r, p, lo);
	load_counters(page, buf);
	st_expect_sum(r, p, hi);
	memcpy(buf + ST_NCNT, page + ST_NCNT * 8, st.ps - ST_NCNT * 8);
	if (st_bounds_check("CPU read", r, p, lo, buf, hi))
		st_data_check(w, "CPU read", r, p, buf + ST_NCNT);
	pthread_mutex_unlock(&r->dlock[p]);
	st_count(w, OP_ALIAS_READ, 1);
unlock:
	st_release(r);
out:
	st_op_end(w);
}

/* After a system call failed with EFAULT on a managed page: allowed only
 * with a user-mode-only userfaultfd or in DXM_CTX_SIGBUS mode, where
 * dxm_range_fault is the remedy. */
static bool efault(struct st_worker *w, const char *call, char *page,
		   unsigned flags)
{
	if (st.uffd_mode != DXM_UFFD_USER_ONLY &&
	    !(st.ctx_flags & DXM_CTX_SIGBUS)) {
		st_fail("%s on managed page %p failed with EFAULT with a %s "
			"userfaultfd (B2: it must wait for dxm and succeed)",
			call, (void *)page, dxm_uffd_mode_str(st.uffd_mode));
		return false;
	}
	st_count(w, OP_EFAULT, 1);
	st_op_step(w, "dxm_range_fault after EFAULT");
	long got = dxm_range_fault(st.ctx, page, st.ps, flags, NULL);
	if (got != 1) {
		st_fail("dxm_range_fault(%p) after %s failed with EFAULT: %ld "
			"(%s)",
			(void *)page, call, got,
			got < 0 ? strerror((int)-got) : "wrong count");
		return false;
	}
	return true;
}

/* What one write(2) into a worker's pipe carries: a base page, which an
 * empty pipe always takes at once (its capacity is at least one page),
 * however large the regions' pages are (--huge). */
static size_t pipe_chunk(size_t left)
{
	return left < st.bps ? left : st.bps;
}

/* read(2) from a pipe into the data area of a page (a system call that
 * writes a managed page), a base page at a time. */
static void op_sys_in(struct st_worker *w, uint64_t *buf, uint64_t *buf2)
{
	st_op_begin(w, "sys-read-into-page");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	size_t p = st_rnd(w, (unsigned)r->npages);
	int v = st_pick_view(w, r, p, 1, PROT_READ | PROT_WRITE);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)p);
	char *page = r->view[v] + p * st.ps, *dst = page + ST_NCNT * 8;
	size_t bytes = st.ps - ST_NCNT * 8, done = 0;
	st_op_step(w, "data lock");
	pthread_mutex_lock(&r->dlock[p]);
	uint64_t ver = r->dver[p] + 1;
	st_data_fill(r, p, ver, buf);
	while (done < bytes) {
		size_t chunk = pipe_chunk(bytes - done), got = 0;
		st_op_step(w, "write(2) to the pipe");
		ssize_t k = write(w->pipe[1], (char *)buf + done, chunk);
		if (k != (ssize_t)chunk) {
			st_fail("write(pipe, %zu): %zd (%s)", chunk, k,
				k < 0 ? strerror(errno) : "short");
			goto dunlock;
		}
		while (got < chunk) {
			st_op_step(w, "read(2) into a managed page");
			k = read(w->pipe[0], dst + done + got, chunk - got);
			if (k > 0) {
				got += (size_t)k;
				continue;
			}
			if (k < 0 && errno == EFAULT) {
				if (!efault(w, "read(2) into it", page,
					    DXM_FAULT_WRITE))
					goto dunlock;
				continue;
			}
			st_fail("read(pipe) into %p: %zd (%s)",
				(void *)(dst + done + got), k,
				k < 0 ? strerror(errno) : "end of file");
			goto dunlock;
		}
		done += chunk;
	}
	r->dver[p] = ver;
	st_op_step(w, "check what read(2) wrote");
	memcpy(buf2, dst, bytes);
	st_data_check(w, "after read(2) into the page", r, p, buf2);
	st_count(w, OP_SYS_IN, 1);
dunlock:
	pthread_mutex_unlock(&r->dlock[p]);
unlock:
	st_release(r);
out:
	st_op_end(w);
}

/* write(2) of a whole page (counters and data) into a pipe (a system call
 * that reads a managed page), a base page at a time, each read back from
 * the pipe at once; the copy must be within bounds and intact. */

/* Read n bytes written into w's pipe back into dst. */
static bool drain(struct st_worker *w, char *dst, size_t n)
{
	for (size_t got = 0; got < n;) {
		ssize_t k = read(w->pipe[0], dst + got, n - got);
		if (k <= 0) {
			st_fail("read(pipe): %zd (%s)", k,
				k < 0 ? strerror(errno) : "end of file");
			return false;
		}
		got += (size_t)k;
	}
	return true;
}

static void op_sys_out(struct st_worker *w, uint64_t *buf)
{
	st_op_begin(w, "sys-write-from-page");
	struct st_region *r = st_grab(w, -1, false);
	if (!r)
		goto out;
	size_t p = st_rnd(w, (unsigned)r->npages);
	int v = st_pick_view(w, r, p, 1, PROT_READ);
	if (v < 0)
		goto unlock;
	st_op_where(w, r->idx, (int)p);
	char *page = r->view[v] + p * st.ps;
	size_t done = 0;
	uint64_t lo[ST_NCNT], hi[ST_NCNT] = { 0 };
	st_op_step(w, "data lock");
	pthread_mutex_lock(&r->dlock[p]);
	st_expect_sum(r, p, lo);
	while (done < st.ps) {
		st_op_step(w, "write(2) from a managed page");
		ST_IGNORE_READS_BEGIN();
		ssize_t k = write(w->pipe[1], page + done,
				  pipe_chunk(st.ps - done));
		ST_IGNORE_READS_END();
		if (k > 0) {
			if (!drain(w, (char *)buf + done, (size_t)k))
				goto check;
			done += (size_t)k;
			continue;
		}
		if (k < 0 && errno == EFAULT) {
			if (!efault(w, "write(2) from it", page, 0))
				goto check;
			continue;
		}
		st_fail("write(pipe) from %p: %zd (%s)", (void *)(page + done),
			k, k < 0 ? strerror(errno) : "nothing written");
		goto check;
	}
	st_expect_sum(r, p, hi);
check:
	if (done == st.ps && !st_stopping() &&
	    st_bounds_check("write(2) from the page", r, p, lo, buf, hi) &&
	    st_data_check(w, "write(2) from the page", r, p, buf + ST_NCNT))
		st_count(w, OP_SYS_OUT, 1);
	pthread_mutex_unlock(&r->dlock[p]);
unlock:
	st_release(r);
out:
	st_op_end(w);
}

/* The mix below tries a re-allocation 60 times and a fork 30 times in 1000
 * operations.  --churn N: N - 1 more tries of each, on top of the mix,
 * and their rate limits (regions.c, fork.c) divided by N.  One of these
 * extra tries is skipped while another thread is in (or waiting for) an
 * operation of the same kind: they run one at a time anyway, and a thread
 * queued behind one would do nothing else meanwhile. */
#define CHURN_REALLOC 60
#define CHURN_FORK 30

static void churn_more(struct st_worker *w)
{
	unsigned n = st.churn - 1;
	if (st_enabled(F_REALLOC) && st_rnd(w, 1000) < CHURN_REALLOC * n &&
	    !atomic_load_explicit(&st.in_realloc, memory_order_relaxed))
		st_op_realloc(w);
	if (st_enabled(F_FORK) && !st_stopping() &&
	    st_rnd(w, 1000) < CHURN_FORK * n &&
	    !atomic_load_explicit(&st.in_fork, memory_order_relaxed))
		st_op_fork(w);
}

void *st_cpu_main(void *arg)
{
	struct st_worker *w = arg;
	atomic_store(&w->tid, (int)gettid());
	uint64_t *buf = malloc(st.ps), *buf2 = malloc(st.ps);
	if (!buf || !buf2) {
		st_fail("out of memory");
		goto out;
	}
	while (!st_stopping()) {
		if (st.churn > 1)
			churn_more(w);
		unsigned x = st_rnd(w, 1000);
		if (x < 450) {
			if (st_enabled(F_CPU_INC))
				op_inc(w);
		} else if (x < 600) {
			if (st_enabled(F_ALIAS_READ))
				op_view_read(w, buf);
		} else if (x < 700) {
			if (st_enabled(F_SYS_IN))
				op_sys_in(w, buf, buf2);
		} else if (x < 800) {
			if (st_enabled(F_SYS_OUT))
				op_sys_out(w, buf);
		} else if (x < 840) {
			if (st_enabled(F_MPROTECT))
				st_op_mprotect(w);
		} else if (x < 870) {
			if (st_enabled(F_ALIAS))
				st_op_alias(w);
		} else if (x < 870 + CHURN_REALLOC) {
			if (st_enabled(F_REALLOC))
				st_op_realloc(w);
		} else if (x < 870 + CHURN_REALLOC + CHURN_FORK) {
			if (st_enabled(F_FORK))
				st_op_fork(w);
		} else {
			sched_yield();
		}
	}
out:
	free(buf);
	free(buf2);
	return NULL;
}
