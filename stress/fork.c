// SPDX-License-Identifier: MIT
/*
 * dxm stress: fork.  A CPU thread forks while the other threads and the
 * devices go on.  Just before, a device takes an adopted region exclusive;
 * dxm must restore those private pages in the parent before the child
 * exists (B7), so the child sees the parent's data as of the fork:
 *   - every data area intact, at the version the parent recorded (the
 *     parent holds the data locks across the fork);
 *   - every counter between what the parent counted before the fork and
 *     what it counted after (plus the increments in flight);
 * then the child increments its own copy (the parent must never see it:
 * copy-on-write), and touches a memfd region, which is not inherited
 * (MADV_DONTFORK): it must die of SIGSEGV.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stress_int.h"

#define FORK_EVERY_NS 50000000ull /* one fork per 50 ms at most (/ --churn) */
#define CHILD_ADD 1000003ull	  /* the child's own increment */
#define SURVIVED 42		  /* the child's exit code if it survives */

struct child_report {
	uint64_t status; /* 0 ok, 1 bad data, 2 own increment not seen */
	uint64_t page, word, got, want;
	uint64_t cnt[ST_MAX_PAGES][ST_NCNT];
};

static void write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t k = write(fd, c, n);
		if (k <= 0) {
			if (k < 0 && errno == EINTR)
				continue;
			_exit(3);
		}
		c += k;
		n -= (size_t)k;
	}
}

/* In the child: async-signal-safe code only (no malloc, no stdio). */
static __attribute__((noreturn)) void child(const struct st_region *a,
					    const struct st_region *m, int fd)
{
	static struct child_report rep; /* the child's own copy */
	memset(&rep, 0, sizeof(rep));
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigaction(SIGSEGV, &sa, NULL);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGSEGV);
	sigprocmask(SIG_UNBLOCK, &set, NULL);

	size_t nw = st.ps / 8;
	for (size_t p = 0; a && p < a->npages; p++) {
		const uint64_t *pg = (const uint64_t *)(a->view[0] + p * st.ps);
		for (size_t k = 0; k < ST_NCNT; k++)
			rep.cnt[p][k] = __atomic_load_n(&pg[k], __ATOMIC_RELAXED);
		for (size_t i = ST_NCNT; i < nw && !rep.status; i++) {
			uint64_t want = i == ST_NCNT
						? a->dver[p]
						: st_pattern(a->gen, p, a->dver[p],
							     i - ST_NCNT);
			if (pg[i] != want)
				rep = (struct child_report){ 1, p, i, pg[i], want,
							     { { 0 } } };
		}
	}
	for (size_t p = 0; a && p < a->npages && !rep.status; p++) {
		if (!(a->prot[0][p] & PROT_WRITE))
			continue;
		uint64_t *pg = (uint64_t *)(a->view[0] + p * st.ps);
		uint64_t old = __atomic_fetch_add(&pg[0], CHILD_ADD,
						  __ATOMIC_SEQ_CST);
		uint64_t now = __atomic_load_n(&pg[0], __ATOMIC_SEQ_CST);
		if (now != old + CHILD_ADD) {
			uint64_t c[ST_MAX_PAGES][ST_NCNT];
			memcpy(c, rep.cnt, sizeof(c));
			rep = (struct child_report){ 2, p, 0, now,
						     old + CHILD_ADD, { { 0 } } };
			memcpy(rep.cnt, c, sizeof(c));
		}
	}
	write_all(fd, &rep, sizeof(rep));
	if (m) {
		/* Not inherited: this must raise SIGSEGV. */
		volatile const char *c = m->view[0];
		(void)*c;
		_exit(SURVIVED);
	}
	_exit(0);
}

static bool read_report(int fd, struct child_report *rep)
{
	size_t got = 0;
	uint64_t t0 = st_now();
	while (got < sizeof(*rep)) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int k = poll(&pfd, 1, 100);
		if (k < 0 && errno != EINTR)
			return false;
		if (k > 0) {
			ssize_t n = read(fd, (char *)rep + got, sizeof(*rep) - got);
			if (n <= 0)
				return false;
			got += (size_t)n;
		}
		if (st_now() - t0 > 2ull * ST_HANG_MS * 1000000)
			return false;
	}
	return true;
}

void st_op_fork(struct st_worker *w)
{
	uint64_t now = st_now(), last = atomic_load(&st.last_fork);
	if (now - last < FORK_EVERY_NS / st.churn ||
	    !atomic_compare_exchange_strong(&st.last_fork, &last, now))
		return;
	atomic_fetch_add(&st.in_fork, 1);
	st_op_begin(w, "fork");
	st_op_step(w, "fork lock");
	pthread_mutex_lock(&st.fork_mtx);

	/* An adopted region and a memfd region, locked in slot order. */
	struct st_region *a = NULL, *m = NULL, *l1 = NULL, *l2 = NULL;
	for (int tries = 0; tries < 8 && !st_stopping(); tries++) {
		unsigned i = st_rnd(w, st.nregions), j = st_rnd(w, st.nregions);
		if (i == j)
			continue;
		if (i > j) {
			unsigned t = i;
			i = j;
			j = t;
		}
		l1 = &st.reg[i];
		l2 = &st.reg[j];
		st_op_step(w, "region rdlocks");
		pthread_rwlock_rdlock(&l1->lock);
		pthread_rwlock_rdlock(&l2->lock);
		struct st_region *x = l1, *y = l2;
		if (x->live && y->live && x->kind != y->kind) {
			a = x->kind == ST_ANON ? x : y;
			m = x->kind == ST_ANON ? y : x;
			break;
		}
		if (!st_anon_used() && x->live) { /* memfd only: no adopted
						     memory (--huge too) */
			m = x;
			break;
		}
		pthread_rwlock_unlock(&l2->lock);
		pthread_rwlock_unlock(&l1->lock);
		l1 = l2 = NULL;
	}
	if (!m)
		goto out;
	st_op_where(w, a ? a->idx : m->idx, -1);
	size_t np = a ? a->npages : 0;
	st_op_step(w, "data locks");
	for (size_t p = 0; p < np; p++)
		pthread_mutex_lock(&a->dlock[p]);
	/* A device holds the adopted pages when the fork comes. */
	if (a && st.ndevices && st_pick_view(w, a, 0, np, PROT_READ | PROT_WRITE) == 0) {
		st_op_step(w, "dxm_mirror_exclusive before fork");
		int err = dxm_mirror_exclusive(st.mirror[st_rnd(w, st.ndevices)],
					       a->view[0], np * st.ps);
		if (err && err != -EBUSY)
			st_fail("dxm_mirror_exclusive of adopted region %d "
				"before fork: %s",
				a->idx, strerror(-err));
	}
	uint64_t lo[ST_MAX_PAGES][ST_NCNT], hi[ST_MAX_PAGES][ST_NCNT];
	for (size_t p = 0; p < np; p++)
		st_expect_sum(a, p, lo[p]);
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC)) {
		st_fail("pipe2: %s", strerror(errno));
		goto unlock;
	}
	st_op_step(w, "fork()");
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0)
		child(a, m, pfd[1]);
	int saved = errno;
	for (size_t p = 0; p < np; p++)
		st_expect_sum(a, p, hi[p]);
	close(pfd[1]);
	if (pid < 0) {
		st_fail("fork: %s", strerror(saved));
		close(pfd[0]);
		goto unlock;
	}
	struct child_report rep;
	st_op_step(w, "read the child's report");
	bool got = read_report(pfd[0], &rep);
	close(pfd[0]);
	st_op_step(w, "waitpid");
	int status = 0;
	uint64_t t0 = st_now();
	pid_t k;
	while ((k = waitpid(pid, &status, WNOHANG)) == 0) {
		if (st_now() - t0 > 2ull * ST_HANG_MS * 1000000) {
			st_fail("fork: the child (pid %d) did not exit in %d ms; "
				"killing it",
				(int)pid, 2 * ST_HANG_MS);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			goto unlock;
		}
		st_sleep_us(200);
	}
	if (k < 0) {
		st_fail("waitpid(%d): %s", (int)pid, strerror(errno));
		goto unlock;
	}
	if (!got) {
		st_fail("fork: no report from the child (status %#x)", status);
		goto unlock;
	}
	if (rep.status == 1) {
		st_fail("fork: the child sees adopted region %d (gen %u) page "
			"%llu word %llu as %#llx, the parent's data as of the "
			"fork is %#llx",
			a->idx, a->gen, (unsigned long long)rep.page,
			(unsigned long long)rep.word,
			(unsigned long long)rep.got,
			(unsigned long long)rep.want);
		goto unlock;
	}
	if (rep.status == 2) {
		st_fail("fork: the child's own increment of adopted region %d "
			"page %llu is not visible to it: %llu, expected %llu",
			a->idx, (unsigned long long)rep.page,
			(unsigned long long)rep.got,
			(unsigned long long)rep.want);
		goto unlock;
	}
	for (size_t p = 0; p < np; p++)
		if (!st_bounds_check("fork: the child's copy", a, p, lo[p],
				     rep.cnt[p], hi[p]))
			goto unlock;
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSEGV) {
		st_fail("fork: the child touched memfd region %d at %p (not "
			"inherited): it should die of SIGSEGV, but %s %d",
			m->idx, (void *)m->view[0],
			WIFSIGNALED(status) ? "was killed by signal"
					    : "exited with",
			WIFSIGNALED(status) ? WTERMSIG(status)
					    : WEXITSTATUS(status));
		goto unlock;
	}
	/* The child's increments stay in the child. */
	for (size_t p = 0; p < np; p++) {
		if (!(a->prot[0][p] & PROT_READ))
			continue;
		uint64_t v[ST_NCNT], lo2[ST_NCNT], hi2[ST_NCNT];
		st_expect_sum(a, p, lo2);
		for (size_t c = 0; c < ST_NCNT; c++)
			v[c] = __atomic_load_n((uint64_t *)(a->view[0] +
							    p * st.ps) + c,
					       __ATOMIC_SEQ_CST);
		st_expect_sum(a, p, hi2);
		if (!st_bounds_check("parent after the child's increments", a,
				     p, lo2, v, hi2))
			goto unlock;
	}
	st_count(w, OP_FORK, 1);
unlock:
	for (size_t p = 0; p < np; p++)
		pthread_mutex_unlock(&a->dlock[p]);
	pthread_rwlock_unlock(&l2->lock);
	pthread_rwlock_unlock(&l1->lock);
out:
	pthread_mutex_unlock(&st.fork_mtx);
	st_op_end(w);
	atomic_fetch_sub(&st.in_fork, 1);
}
