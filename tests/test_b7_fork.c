// SPDX-License-Identifier: MIT
/*
 * B7 fork: exclusive pages of private (adopted) memory are restored in the
 * parent before the child exists (the notifiers see DXM_EVENT_FORK), then
 * ordinary copy-on-write applies: parent and child each see their own
 * increments, never each other's, and no child ever reads a zero page
 * where the parent had data.  This works for every user (pthread_atfork);
 * where the kernel grants UFFD_FEATURE_EVENT_FORK (root) a raw
 * syscall(SYS_fork), which bypasses the atfork handlers, is repaired too.
 * Shared (memfd) regions and their aliases are not inherited: a child's
 * access raises SIGSEGV.  In a child, every call on the parent's context
 * fails with -ECHILD, and the child's exit or exec disturbs nothing of the
 * parent's.
 *
 * Children only read and write memory and _exit(): they report through
 * their exit status, which the parent checks with waitpid.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

#define NPG 8
#define LEN (NPG * PS)
#define EVENT_FORK_BIT (1ull << 1) /* UFFD_FEATURE_EVENT_FORK */

static struct recorder rec;

/* A test on anon_setup(len) memory (common.h). */
#define ANON_TEST(name, len, ...) ANON_TEST_OF(b7_fork, name, len, __VA_ARGS__)

static void assert_exit0(int status, const char *what)
{
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "%s: %s %d", what,
		  WIFEXITED(status) ? "exit status" : "killed by signal",
		  WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* The data take() (common.c) leaves on top of fill_index(0), page by page. */
static bool check_taken(const char *p, size_t npages)
{
	for (size_t i = 0; i < npages; i++) {
		const char *q = p + i * PS;
		if (rd(q) != i * PS / 8 || rd(q + 8) != 1000 + i ||
		    !check_index(q + 16, PS - 16, i * PS / 8 + 2))
			return false;
	}
	return true;
}

/* A child's version of check_taken: the index of the first bad page + 1,
 * or 0; a page of zeros is reported as 100 + its index. */
static int child_check_taken(const char *p, size_t npages)
{
	for (size_t i = 0; i < npages; i++) {
		const char *q = p + i * PS;
		if (rd(q + 8) == 0 && rd(q + 16) == 0)
			return 100 + (int)i;
		if (rd(q) != i * PS / 8 || rd(q + 8) != 1000 + i ||
		    !check_index(q + 16, PS - 16, i * PS / 8 + 2))
			return 1 + (int)i;
	}
	return 0;
}

/* -------------------------------------------------------- exclusive_cow */

/*
 * hmm-tests "exclusive_cow" on adopted memory: 4 MiB of i made exclusive
 * by the mirror, then fork; parent and child each read i, increment, and
 * see i + 1, never i + 2.  The parent goes first and the child only after
 * it (a shared page would show the child the parent's increment), then the
 * parent checks again after the child's (it must not see them).
 */
ANON_TEST(exclusive_cow, 4u << 20, .timeout = 60)
{
	size_t size = f.m.len, n = size / sizeof(uint64_t);
	uint64_t *ptr = (uint64_t *)f.p;
	struct dxm_mirror *mir = mirror_exclusive(f.ctx, ptr, size);
	struct dxm_stats st0 = stats(f.ctx);

	int go[2];
	cr_assert_eq(pipe(go), 0);
	pid_t self = getpid();
	pid_t pid = fork();
	cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
	if (pid == 0) {
		char c;
		child_start(self, go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		for (size_t i = 0; i < n; i++)
			if (ptr[i]++ != i)
				_exit(ptr[i] == i + 2 ? 3 /* the parent's */
				      : ptr[i] == 1   ? 4 /* a zero page */
						      : 5);
		for (size_t i = 0; i < n; i++)
			if (ptr[i] != i + 1)
				_exit(6);
		_exit(0);
	}
	/* The parent's pages came back before the child existed. */
	cr_assert_eq(dxm_mirror_check_exclusive(mir, ptr, size), 0,
		     "the device still holds pages after fork()");
	cr_assert_eq(stats(f.ctx).forks, st0.forks + 1);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(ptr[i]++, i, "parent read %zu", i);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(ptr[i], i + 1, "parent second pass %zu", i);
	cr_assert_eq(write(go[1], "g", 1), 1);
	int status = wait_child(pid);
	cr_assert(WIFEXITED(status),
		  "the child was killed by signal %d", WTERMSIG(status));
	int code = WEXITSTATUS(status);
	cr_assert_eq(code, 0, "child: %s (exit %d)",
		     code == 3	 ? "saw the parent's increment (i + 2)"
		     : code == 4 ? "read a zero page"
				 : "wrong data",
		     code);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(ptr[i], i + 1,
			     "the parent sees the child's increment at %zu", i);
	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(mir, &ms);
	cr_assert_eq(ms.stale_accesses, 0);
	/* The device can take the range again. */
	cr_assert_eq(dxm_mirror_exclusive(mir, ptr, size), 0);
	cr_assert_eq(dxm_mirror_atomic_add(mir, ptr + 5, 10, NULL), 0);
	cr_assert_eq(ptr[5], 16);
	dxm_mirror_destroy(mir);
	close(go[0]);
	close(go[1]);
}

/* --------------------------------------------------- DXM_EVENT_FORK */

/* When the FORK callback runs, no child exists yet (waitpid finds none)
 * and the page is not back yet; when fork() returns in the parent, every
 * exclusive page is mapped again.  The child sees the device's data. */
struct fork_seen {
	int calls;
	bool child_existed;
	bool present_at_callback;
	uintptr_t page;
};

static int fork_hook(struct recorder *r, const struct dxm_range *range)
{
	struct fork_seen *s = r->hook_arg;
	if (range->event != DXM_EVENT_FORK)
		return 0;
	int st;
	pid_t w = waitpid(-1, &st, WNOHANG);
	if (!(w == -1 && errno == ECHILD))
		s->child_existed = true;
	if ((uintptr_t)range->start <= s->page &&
	    (uintptr_t)range->end > s->page)
		s->present_at_callback |= page_present((void *)s->page);
	s->calls++;
	return 0;
}

ANON_TEST(fork_event_before_child_exists, LEN, .timeout = 30)
{
	void *dev[NPG];
	struct fork_seen seen = { .page = (uintptr_t)(p + 3 * PS) };
	recorder_insert(f.ctx, &rec, p, LEN);
	take(f.ctx, p + 2 * PS, 4 * PS, &rec, dev);
	pthread_mutex_lock(&rec.lock);
	rec.hook_arg = &seen;
	rec.hook = fork_hook;
	pthread_mutex_unlock(&rec.lock);

	pid_t self = getpid();
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		child_start(self, -1);
		for (size_t i = 2; i < 6; i++)
			if (rd(p + i * PS + 8) != 1000 + i - 2)
				_exit(10 + (int)i);
		_exit(check_index(p, 2 * PS, 0) ? 0 : 1);
	}
	/* Before the parent touches anything: restored in the parent. */
	cr_assert_eq(pages_present(p, LEN), NPG,
		     "exclusive pages were not restored by fork()");
	assert_exit0(wait_child(pid), "the child saw wrong data");
	pthread_mutex_lock(&rec.lock);
	int calls = seen.calls;
	pthread_mutex_unlock(&rec.lock);
	cr_assert_gt(calls, 0, "no DXM_EVENT_FORK");
	for (size_t i = 2; i < 6; i++)
		cr_assert(recorder_saw(&rec, DXM_EVENT_FORK, p + i * PS),
			  "no DXM_EVENT_FORK for exclusive page %zu", i);
	cr_assert(!seen.child_existed,
		  "the FORK callback ran after the child was created");
	cr_assert(!seen.present_at_callback,
		  "the page was given back before the FORK callback ran");
	for (size_t i = 2; i < 6; i++)
		cr_assert_eq(rd(p + i * PS + 8), 1000 + i - 2);
	recorder_remove(&rec);
}

/* ------------------------------------------------ a child that does nothing */

/* A child that never touches the pages and exits at once: the parent keeps
 * its data (the device's writes included) and converts again. */
ANON_TEST(child_never_touches_pages, LEN, .timeout = 30)
{
	void *dev[NPG];
	recorder_insert(f.ctx, &rec, p, LEN);
	take(f.ctx, p, LEN, &rec, dev);
	pid_t self = getpid();
	for (int round = 0; round < 3; round++) {
		pid_t pid = fork();
		cr_assert_neq(pid, -1);
		if (pid == 0)
			_exit(0);
		assert_exit0(wait_child(pid), "an idle child");
		cr_assert(check_taken(p, NPG), "round %d: the parent's data "
			  "changed", round);
		/* Convert again while (or after) the child held the pages
		 * shared copy-on-write. */
		cr_assert_eq(dxm_make_exclusive(f.ctx, p, LEN, &rec, dev), NPG);
		for (size_t i = 0; i < NPG; i++)
			cr_assert_not_null(dev[i], "round %d: page %zu refused",
					   round, i);
		cr_assert_eq(pages_present(p, LEN), 0);
		cr_assert_eq(rd((uint64_t *)dev[3] + 1), 1003);
		dxm_exclusive_unlock(f.ctx, p, LEN, dev);
	}
	/* An idle child that outlives a conversion: its pages were shared. */
	int go[2];
	cr_assert_eq(pipe(go), 0);
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		char c;
		child_start(self, go[1]);
		_exit(read(go[0], &c, 1) == 1 ? 0 : 1);
	}
	cr_assert_eq(dxm_make_exclusive(f.ctx, p, LEN, &rec, dev), NPG);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_not_null(dev[i], "page %zu refused", i);
		wr((uint64_t *)dev[i] + 2, 2000 + i);
	}
	dxm_exclusive_unlock(f.ctx, p, LEN, dev);
	cr_assert_eq(write(go[1], "g", 1), 1);
	assert_exit0(wait_child(pid), "an idle child");
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_eq(rd(p + i * PS + 8), 1000 + i);
		cr_assert_eq(rd(p + i * PS + 16), 2000 + i);
		cr_assert(check_index(p + i * PS + 24, PS - 24,
				      i * PS / 8 + 3));
	}
	cr_assert_eq(stats(f.ctx).pages_refused, 0);
	close(go[0]);
	close(go[1]);
	recorder_remove(&rec);
}

/* ---------------------------------------------------- fork under load */

/*
 * CPU threads increment counters (word 0 of each page) with atomics, a
 * mirror does atomic adds on the same words (converting pages back and
 * forth), and another thread forks over and over.  Each child checks every
 * page: the counter no lower than where it started, the rest of the page
 * intact (a zero page where data was fails); the parent's sums are exact.
 */
#define LOAD_PAGES 8
#define LOAD_BASE (1ull << 32)
#define LOAD_FORKS 100
/* A loaded machine (sanitizers, a stress run beside) forks slowly: after
 * LOAD_SECS the forker stops once it made LOAD_MIN_FORKS.  A hang still
 * fails: the forker is given 40 s to finish. */
#define LOAD_MIN_FORKS 20
#define LOAD_SECS 20

struct load {
	char *p;
	struct dxm_mirror *mir;
	atomic_int stop, go;
	atomic_ulong cpu_incs;
	unsigned long dev_ops;
	atomic_int err;
	int bad_children, forks;
	int first_bad_status;
};

static uint64_t *load_counter(struct load *l, unsigned i)
{
	return (uint64_t *)(l->p + (size_t)(i % LOAD_PAGES) * PS);
}

static void *load_cpu(void *arg)
{
	struct load *l = arg;
	unsigned long i = 0;
	while (!atomic_load(&l->go))
		;
	for (; !atomic_load(&l->stop); i++)
		__atomic_fetch_add(load_counter(l, (unsigned)i), 1,
				   __ATOMIC_SEQ_CST);
	atomic_fetch_add(&l->cpu_incs, i);
	return NULL;
}

static void *load_dev(void *arg)
{
	struct load *l = arg;
	while (!atomic_load(&l->go))
		;
	for (unsigned long i = 0; !atomic_load(&l->stop); i++) {
		int err = dxm_mirror_atomic_add(l->mir,
						load_counter(l, (unsigned)i * 3),
						1, NULL);
		if (err) {
			atomic_store(&l->err, err);
			break;
		}
		l->dev_ops++;
	}
	return NULL;
}

static int load_child(struct load *l)
{
	for (unsigned i = 0; i < LOAD_PAGES; i++) {
		const uint64_t *w = (const uint64_t *)(l->p + (size_t)i * PS);
		if (w[0] < LOAD_BASE)
			return w[0] == 0 ? 100 + (int)i : 1 + (int)i;
		for (size_t k = 1; k < PS / 8; k++)
			if (w[k] != ((uint64_t)i << 20 | k))
				return w[k] == 0 ? 100 + (int)i : 1 + (int)i;
	}
	return 0;
}

static void *load_forker(void *arg)
{
	struct load *l = arg;
	pid_t self = getpid();
	while (!atomic_load(&l->go))
		;
	uint64_t until = now_ms() + LOAD_SECS * 1000;
	for (int k = 0; k < LOAD_FORKS; k++) {
		if (k >= LOAD_MIN_FORKS && now_ms() > until)
			break;
		pid_t pid = fork();
		if (pid < 0) {
			atomic_store(&l->err, -errno);
			break;
		}
		if (pid == 0) {
			child_start(self, -1);
			_exit(load_child(l));
		}
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			if (!l->bad_children++)
				l->first_bad_status = status;
		}
		l->forks++;
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return NULL;
}

ANON_TEST(fork_under_load, LOAD_PAGES * PS, .timeout = 60)
{
	struct load l = { .p = f.p };
	for (unsigned i = 0; i < LOAD_PAGES; i++) {
		uint64_t *w = (uint64_t *)(f.p + (size_t)i * PS);
		w[0] = LOAD_BASE;
		for (size_t k = 1; k < PS / 8; k++)
			w[k] = (uint64_t)i << 20 | k;
	}
	cr_assert_eq(dxm_mirror_create(f.ctx, &l.mir), 0);
	recorder_insert(f.ctx, &rec, f.p, LOAD_PAGES * PS);
	rec.ignore_owner = l.mir;
	struct dxm_stats st0 = stats(f.ctx);
	pthread_t cpu[2], dev, forker;
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&cpu[i], NULL, load_cpu, &l), 0);
	cr_assert_eq(pthread_create(&dev, NULL, load_dev, &l), 0);
	cr_assert_eq(pthread_create(&forker, NULL, load_forker, &l), 0);
	atomic_store(&l.go, 1);
	join_or_fail(forker, 40, "the forking thread");
	atomic_store(&l.stop, 1);
	for (int i = 0; i < 2; i++)
		join_or_fail(cpu[i], 5, "a CPU thread");
	join_or_fail(dev, 5, "the device thread");

	cr_assert_eq(atomic_load(&l.err), 0, "error: %s",
		     strerror(-atomic_load(&l.err)));
	cr_assert_geq(l.forks, LOAD_MIN_FORKS);
	cr_assert_eq(l.bad_children, 0,
		     "%d of %d children saw lost or zeroed data (first: %s %d)",
		     l.bad_children, l.forks,
		     WIFEXITED(l.first_bad_status) ? "exit" : "signal",
		     WIFEXITED(l.first_bad_status)
			     ? WEXITSTATUS(l.first_bad_status)
			     : WTERMSIG(l.first_bad_status));
	uint64_t sum = 0;
	for (unsigned i = 0; i < LOAD_PAGES; i++)
		sum += *load_counter(&l, i) - LOAD_BASE;
	uint64_t expect = atomic_load(&l.cpu_incs) + l.dev_ops;
	cr_assert_eq(sum, expect, "lost %lld updates across forks",
		     (long long)(expect - sum));
	for (unsigned i = 0; i < LOAD_PAGES; i++) {
		const uint64_t *w = (const uint64_t *)(f.p + (size_t)i * PS);
		for (size_t k = 1; k < PS / 8; k++)
			cr_assert_eq(w[k], (uint64_t)i << 20 | k);
	}
	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(l.mir, &ms);
	cr_assert_eq(ms.stale_accesses, 0);
	cr_assert_gt(l.dev_ops, 0, "the device made no progress");
	struct dxm_stats st = stats(f.ctx);
	cr_assert_eq(st.stale_device_faults, 0);
	cr_assert_geq(st.forks, st0.forks + (uint64_t)l.forks);
	cr_assert_gt(st.conversions, st0.conversions);
	/* Some forks found pages exclusive and gave them back first. */
	size_t fork_events = recorder_count_event(&rec, DXM_EVENT_FORK);
	cr_log_info("fork_under_load: %d forks, %zu DXM_EVENT_FORK, %lu device "
		    "atomics, %lu CPU increments",
		    l.forks, fork_events, l.dev_ops,
		    atomic_load(&l.cpu_incs));
	cr_assert_gt(fork_events, 0,
		     "no fork ever met an exclusive page: the test did not "
		     "test anything");
	recorder_remove(&rec);
	dxm_mirror_destroy(l.mir);
}

/* -------------------------------------------- shared regions not inherited */

/* In the child: the private memory q is there (exit status 3 if not). */
static int private_intact(void *q)
{
	return check_index(q, LEN, 0) ? 0 : 3;
}

/* A memfd region and its alias are not inherited (MADV_DONTFORK): a child
 * touching either, exclusive page or not, read or write, gets SIGSEGV.
 * Adopted private memory in the same process is inherited, as a copy. */
Test(b7_fork, shared_regions_not_inherited, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct mem shm, anon;
	mem_setup(ctx, MEM_ALIAS, LEN, &shm);
	mem_setup(ctx, MEM_ANON, LEN, &anon);
	char *r = shm.region, *a = shm.base, *q = anon.base;
	fill_index(r, LEN, 0);
	fill_index(q, LEN, 0);
	void *dev[NPG];
	recorder_insert(ctx, &rec, r, LEN);
	take(ctx, r + 2 * PS, PS, &rec, dev);
	char *targets[] = { r, r + 2 * PS, a, a + 2 * PS, r + PS, a + PS };
	size_t nt = sizeof(targets) / sizeof(targets[0]);
	for (size_t i = 0; i < nt; i++)
		child_touch_segfaults(i, targets[i], i >= 4, private_intact, q);
	/* The parent's regions are untouched; the exclusive page is still
	 * the device's and comes back through dxm. */
	cr_assert(dxm_check_exclusive(ctx, r + 2 * PS, PS, dev));
	cr_assert_eq(rd(a + 2 * PS + 8), 1000);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, r + 2 * PS));
	cr_assert(check_index(r, 2 * PS, 0));
	cr_assert(check_index(a + 3 * PS, LEN - 3 * PS, 3 * PS / 8));
	cr_assert(check_index(q, LEN, 0));
	recorder_remove(&rec);
	mem_teardown(&anon);
	mem_teardown(&shm);
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------------ the child's calls */

/*
 * In a child, every call on the parent's context fails with -ECHILD and
 * changes nothing; the child then execs /bin/true or exits.  The parent's
 * state is undisturbed: its regions, its memfd page still exclusive, no
 * notification from the child's exit or exec; conversions and restores
 * work afterwards on both kinds of memory.
 */
static int child_calls(struct dxm_ctx *ctx, char *r, char *q, void *xdev)
{
	static const struct dxm_notifier_ops ops = { NULL };
	void *p, *dev[NPG];
	struct dxm_notifier *n;
	struct dxm_stats st;
	int k = 0;
	CHILD_CHECK(dxm_alloc(ctx, PS, 0, &p) == -ECHILD);
	CHILD_CHECK(dxm_alias(ctx, r, &p) == -ECHILD);
	CHILD_CHECK(dxm_adopt(ctx, q, PS, 0) == -ECHILD);
	CHILD_CHECK(dxm_mprotect(ctx, r, PS, PROT_READ) == -ECHILD);
	CHILD_CHECK(dxm_mprotect(ctx, q, PS, PROT_READ) == -ECHILD);
	CHILD_CHECK(dxm_make_exclusive(ctx, r, PS, &rec, dev) == -ECHILD);
	CHILD_CHECK(dxm_make_exclusive(ctx, q, LEN, &rec, dev) == -ECHILD);
	CHILD_CHECK(dxm_range_fault(ctx, r, LEN, 0, dev) == -ECHILD);
	CHILD_CHECK(dxm_range_fault(ctx, q, LEN, 0, dev) == -ECHILD);
	CHILD_CHECK(dxm_notifier_insert(ctx, r, PS, &ops, NULL, &n) ==
		    -ECHILD);
	CHILD_CHECK(dxm_stats(ctx, &st, sizeof(st)) == -ECHILD);
	dev[0] = xdev;
	CHILD_CHECK(!dxm_check_exclusive(ctx, r + 2 * PS, PS, dev));
	dxm_exclusive_unlock(ctx, r + 2 * PS, PS, dev);
	CHILD_CHECK(dxm_free(ctx, r) == -ECHILD);
	CHILD_CHECK(dxm_free(ctx, q) == -ECHILD);
	dxm_ctx_destroy(ctx);
	/* The adopted memory is the child's own copy, the device's writes
	 * included; writing it changes nothing for the parent. */
	CHILD_CHECK(child_check_taken(q, NPG) == 0);
	wr(q + 16, 0xc41d);
	CHILD_CHECK(rd(q + 16) == 0xc41d);
	return 0;
}

static void child_calls_then(bool exec)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct mem shm, anon;
	mem_setup(ctx, MEM_MEMFD, LEN, &shm);
	mem_setup(ctx, MEM_ANON, LEN, &anon);
	char *r = shm.base, *q = anon.base;
	fill_index(r, LEN, 0);
	fill_index(q, LEN, 0);
	/* One recorder over both. */
	char *lo = r < q ? r : q, *hi = r < q ? q : r;
	recorder_insert(ctx, &rec, lo, (size_t)(hi - lo) + LEN);
	void *xdev[1], *dev[NPG];
	take(ctx, r + 2 * PS, PS, &rec, xdev);
	take(ctx, q, LEN, &rec, dev);
	struct dxm_stats st0 = stats(ctx);

	pid_t self = getpid();
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		child_start(self, -1);
		int k = child_calls(ctx, r, q, xdev[0]);
		if (k)
			_exit(k);
		if (exec) {
			char *argv[] = { "true", NULL };
			char *envp[] = { NULL };
			execve("/bin/true", argv, envp);
			_exit(99);
		}
		_exit(0);
	}
	child_checks_passed(pid);

	/* The parent's state is as it was. */
	struct dxm_stats st1 = stats(ctx);
	cr_assert_eq(st1.regions, st0.regions);
	cr_assert_eq(st1.managed_pages, st0.managed_pages);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_UNMAP), 0,
		     "the child's %s reached the parent's notifiers",
		     exec ? "exec" : "exit");
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_REMAP), 0);
	cr_assert(dxm_check_exclusive(ctx, r + 2 * PS, PS, xdev),
		  "the memfd page is no longer exclusive");
	cr_assert(!page_present(r + 2 * PS));
	cr_assert(check_taken(q, NPG), "the parent's adopted data changed");
	/* And works. */
	cr_assert_eq(rd(r + 2 * PS + 8), 1000);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, r + 2 * PS));
	take(ctx, r, LEN, &rec, dev);
	cr_assert_eq(rd(r + 5 * PS + 8), 1005);
	take(ctx, q, LEN, &rec, dev);
	cr_assert(check_taken(q, NPG));
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, q + 7 * PS));
	recorder_remove(&rec);
	mem_teardown(&anon);
	mem_teardown(&shm);
	dxm_ctx_destroy(ctx);
}

Test(b7_fork, child_calls_echild_then_execs, .timeout = 30)
{
	child_calls_then(true);
}

Test(b7_fork, child_calls_echild_then_exits, .timeout = 30)
{
	child_calls_then(false);
}

/* ------------------------------------------------------------- raw fork */

/*
 * syscall(SYS_fork) bypasses the pthread_atfork handlers: the exclusive
 * pages are still in staging when the child is created.  Where the kernel
 * grants UFFD_FEATURE_EVENT_FORK (root), dxm copies them into the child:
 * the child reads the parent's data (the device's writes included), never
 * a zero page; a page nobody ever touched reads zero and does not hang;
 * the child's writes are its own.
 */
static void need_event_fork(struct dxm_ctx *ctx)
{
	if (geteuid() != 0)
		cr_skip_test("SKIP: a raw fork is repaired only with "
			     "UFFD_FEATURE_EVENT_FORK, which needs root "
			     "(CAP_SYS_PTRACE); running as uid %d",
			     (int)geteuid());
	if (!(stats(ctx).uffd_anon_features & EVENT_FORK_BIT))
		cr_skip_test("SKIP: the kernel did not grant "
			     "UFFD_FEATURE_EVENT_FORK to dxm's userfaultfd "
			     "(features %#llx)",
			     (unsigned long long)stats(ctx).uffd_anon_features);
}

#define RAW_PG 16

static int raw_child(const char *p)
{
	int bad = child_check_taken(p, 12);
	if (bad)
		return bad;
	/* Page 14 was never touched by the CPU, then converted. */
	if (rd(p + 14 * PS + 8) != 1000)
		return 50;
	/* 12, 13 and 15: never touched by anybody. */
	for (size_t off = 0; off < PS; off += 8)
		if (rd(p + 12 * PS + off) || rd(p + 13 * PS + off) ||
		    rd(p + 15 * PS + off) ||
		    (off != 8 && rd(p + 14 * PS + off)))
			return 51;
	wr((char *)p + 16, 0xc41d);
	return rd(p + 16) == 0xc41d ? 0 : 52;
}

Test(b7_fork, raw_sys_fork_child_reads_parent_data, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	need_event_fork(ctx);
	struct mem m;
	mem_setup(ctx, MEM_ANON, RAW_PG * PS, &m);
	char *p = m.base;
	fill_index(p, 12 * PS, 0); /* pages 12-15 never touched */
	recorder_insert(ctx, &rec, p, RAW_PG * PS);
	void *dev[RAW_PG];
	take(ctx, p, 11 * PS, &rec, dev);
	take(ctx, p + 14 * PS, PS, &rec, dev);
	/* Page 11 stays locked by the device across the fork. */
	cr_assert_eq(dxm_make_exclusive(ctx, p + 11 * PS, PS, &rec, dev), 1);
	cr_assert_not_null(dev[0]);
	wr((uint64_t *)dev[0] + 1, 1011);
	cr_assert_eq(pages_present(p, 12 * PS), 0);
	struct dxm_stats st0 = stats(ctx);

	pid_t self = getpid();
	pid_t pid = (pid_t)syscall(SYS_fork);
	cr_assert_neq(pid, -1, "SYS_fork: %s", strerror(errno));
	if (pid == 0) {
		child_start(self, -1);
		syscall(SYS_exit_group, raw_child(p));
	}
	int status = wait_child(pid);
	cr_assert(WIFEXITED(status),
		  "the raw-forked child was killed by signal %d",
		  WTERMSIG(status));
	cr_assert_eq(WEXITSTATUS(status), 0,
		     "the raw-forked child %s (code %d)",
		     WEXITSTATUS(status) >= 100 ? "read a zero page where the "
						  "parent had data"
						: "read wrong data",
		     WEXITSTATUS(status));
	/* A second child that exits at once. */
	pid = (pid_t)syscall(SYS_fork);
	cr_assert_neq(pid, -1);
	if (pid == 0)
		syscall(SYS_exit_group, 0);
	assert_exit0(wait_child(pid), "an idle raw-forked child");

	/* The atfork path did not run; the parent's pages are still the
	 * device's and come back with its data. */
	cr_assert_eq(stats(ctx).forks, st0.forks);
	dxm_exclusive_unlock(ctx, p + 11 * PS, PS, dev);
	cr_assert(check_taken(p, 12), "the parent's data changed");
	cr_assert_eq(rd(p + 14 * PS + 8), 1000);
	cr_assert_eq(stats(ctx).stale_device_faults, 0);
	recorder_remove(&rec);
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* ---------------------------------------------------- back-to-back forks */

/*
 * fork() right after fork() in a process with adopted memory: every fork
 * completes.  (Where dxm has UFFD_FEATURE_EVENT_FORK, the kernel holds each
 * fork until dxm's handler has read the fork event, while glibc's fork()
 * holds the malloc locks: the handler, busy with the previous fork's event
 * when the next fork begins, must not be stuck on them.)  The children are
 * reaped only after the burst, so that each fork follows the previous one
 * at once; the last child of each burst checks the adopted data.
 */
#define BURST 16

Test(b7_fork, back_to_back_forks_complete, .timeout = 120)
{
	pid_t self = getpid();
	/* 40 rounds, or as many as 45 s allow on a loaded machine (at least
	 * 10): a fork that never completes still fails the test. */
	uint64_t until = now_ms() + 45000;
	for (int round = 0; round < 40; round++) {
		if (round >= 10 && now_ms() > until)
			break;
		struct anon_fix f;
		anon_setup(&f, 2 * PS);
		pid_t pids[BURST];
		for (int k = 0; k < BURST; k++) {
			pids[k] = fork();
			cr_assert_neq(pids[k], -1, "fork: %s", strerror(errno));
			if (pids[k] == 0 && k < BURST - 1)
				_exit(0);
			if (pids[k] == 0) {
				child_start(self, -1);
				_exit(check_index(f.p, 2 * PS, 0) ? 0 : 1);
			}
		}
		for (int k = 0; k < BURST; k++)
			assert_exit0(wait_child(pids[k]), "a child");
		anon_teardown(&f);
	}
}
