// SPDX-License-Identifier: MIT
/*
 * Teardown and fork against everything else (src/region.c, "The teardown
 * rule"; src/fork.c).  Each test here failed on the code before the rule:
 *
 *   - a restore racing dxm_free of adopted memory (a fork's prepare
 *     handler, dxm_mprotect, the fault handler) moved the page into a view
 *     dxm_free had already detached: nothing moved, the page was marked
 *     the CPU's, the hand-back skipped it, and its data was lost with the
 *     staging area (hundreds of lost pages per second of racing);
 *   - dxm_range_fault racing dxm_free hung for ever;
 *   - with two handler threads every fork waited 2 s for a handler that
 *     never heard of it, then forked without parking it;
 *   - a thread waiting for an unread event (UFFDIO_MOVE's EAGAIN) held the
 *     view table's lock, and a handler that needed that lock to read the
 *     event never did: a deadlock.
 *
 * The races are run many times in a row (each iteration is a fresh
 * region); a single lost word fails the test.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define NPG 16
#define LEN (NPG * PS)
#define ITERATIONS 300

static const int owner;

/* Make [p, p+len) exclusive and unlock it: the data is in staging. */
static void take_all(struct dxm_ctx *ctx, char *p, size_t len)
{
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(ctx, p, len, &owner, dev),
		     (long)(len / PS));
	for (size_t i = 0; i < len / PS; i++)
		cr_assert_not_null(dev[i], "page %zu not made exclusive", i);
	dxm_exclusive_unlock(ctx, p, len, dev);
}

/* ------------------------------------------------ a racer against free */

enum race_op { RACE_FORK, RACE_MPROTECT, RACE_RANGE_FAULT, RACE_TOUCH };

struct racer {
	struct dxm_ctx *ctx;
	enum race_op op;
	char *_Atomic p; /* the region of this round */
	atomic_uint go, done;
	atomic_bool stop;
	pthread_t tid;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;
	unsigned seen = 0;
	while (!atomic_load(&r->stop)) {
		if (atomic_load(&r->go) == seen) {
			sched_yield();
			continue;
		}
		seen = atomic_load(&r->go);
		char *p = atomic_load(&r->p);
		switch (r->op) {
		case RACE_FORK: {
			pid_t pid = fork();
			if (pid == 0)
				_exit(0);
			if (pid > 0)
				waitpid(pid, NULL, 0);
			break;
		}
		case RACE_MPROTECT:
			/* 0, or -EFAULT once the region is gone. */
			dxm_mprotect(r->ctx, p, LEN, PROT_READ);
			break;
		case RACE_RANGE_FAULT:
			dxm_range_fault(r->ctx, p, LEN, 0, NULL);
			break;
		case RACE_TOUCH:
			/* CPU faults the handler resolves, unless the region
			 * is already the program's again. */
			for (size_t i = 0; i < NPG; i++)
				(void)*(volatile uint64_t *)(p + i * PS + 8);
			break;
		}
		atomic_store(&r->done, seen);
	}
	return NULL;
}

static void spin_us(unsigned us)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do
		clock_gettime(CLOCK_MONOTONIC, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000000L +
		       (t.tv_nsec - t0.tv_nsec) / 1000 <
	       (long)us);
}

/*
 * ITERATIONS times: adopt NPG fresh pages holding known words, make them
 * exclusive (the data moves to staging), let the racer start op, wait
 * 0-100 us, dxm_free; every word must be back in the range.
 */
static void race_free(enum race_op op)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct racer r = { .ctx = ctx, .op = op };
	cr_assert_eq(pthread_create(&r.tid, NULL, racer_main, &r), 0);
	unsigned lost_pages = 0, first_bad = 0;
	srand(12345);
	for (unsigned it = 1; it <= ITERATIONS; it++) {
		char *p = anon_map(LEN);
		fill_index(p, LEN, it);
		adopt_or_skip(ctx, p, LEN);
		take_all(ctx, p, LEN);
		atomic_store(&r.p, p);
		atomic_store(&r.go, it);
		spin_us((unsigned)rand() % 100);
		cr_assert_eq(dxm_free(ctx, p), 0, "iteration %u", it);
		while (atomic_load(&r.done) != it)
			sched_yield();
		for (size_t i = 0; i < NPG; i++)
			if (!check_index(p + i * PS, PS, it + i * PS / 8)) {
				if (!lost_pages)
					first_bad = it;
				lost_pages++;
			}
		munmap(p, LEN);
	}
	atomic_store(&r.stop, true);
	pthread_join(r.tid, NULL);
	cr_assert_eq(lost_pages, 0,
		     "%u page(s) lost in %u iterations (first in iteration %u)",
		     lost_pages, ITERATIONS, first_bad);
	dxm_ctx_destroy(ctx);
}

Test(teardown, fork_racing_free_loses_nothing, .timeout = 120)
{
	race_free(RACE_FORK);
}

Test(teardown, mprotect_racing_free_loses_nothing, .timeout = 120)
{
	race_free(RACE_MPROTECT);
}

Test(teardown, range_fault_racing_free_neither_hangs_nor_loses,
     .timeout = 60)
{
	race_free(RACE_RANGE_FAULT);
}

Test(teardown, cpu_fault_racing_free_loses_nothing, .timeout = 120)
{
	race_free(RACE_TOUCH);
}

/* ------------------------------------------- fork with several handlers */

static atomic_uint fork_msgs;

static int count_fork_msgs(enum dxm_log_level level, const char *fmt,
			   va_list ap)
{
	char buf[512];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (strstr(buf, "fork"))
		atomic_fetch_add(&fork_msgs, 1);
	fprintf(stderr, "dxm %d: %s\n", (int)level, buf);
	return 0;
}

/*
 * Every handler thread parks for a fork (where EVENT_FORK makes dxm park
 * them): idle handlers all hear of it, a fork takes milliseconds, and
 * nothing is logged.  The old single wake-up reached one handler: each
 * fork then waited 2 s and forked with a handler running.
 */
static void forks_with_handlers(unsigned nhandlers)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .handler_threads = nhandlers };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	if (!(st.uffd_anon_features & (1ull << 1) /* EVENT_FORK */))
		cr_skip_test("SKIP: no UFFD_FEATURE_EVENT_FORK here (needs "
			     "CAP_SYS_PTRACE): handlers are not parked for "
			     "a fork");
	char *p = anon_map(LEN);
	fill_index(p, LEN, 7);
	adopt_or_skip(ctx, p, LEN);
	take_all(ctx, p, LEN);
	dxm_set_print(count_fork_msgs);
	uint64_t worst = 0;
	for (int i = 0; i < 10; i++) {
		sleep_ms(20); /* the handlers asleep in poll() */
		uint64_t t0 = now_ms();
		pid_t pid = fork();
		if (pid == 0)
			_exit(check_index(p, LEN, 7) ? 0 : 1);
		cr_assert_gt(pid, 0);
		uint64_t dt = now_ms() - t0;
		if (dt > worst)
			worst = dt;
		int wst;
		cr_assert_eq(waitpid(pid, &wst, 0), pid);
		cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0,
			  "the child did not see the parent's data");
		take_all(ctx, p, LEN);
	}
	dxm_set_print(NULL);
	cr_assert_lt(worst, 1000, "a fork took %llu ms with %u handlers",
		     (unsigned long long)worst, nhandlers);
	cr_assert_eq(atomic_load(&fork_msgs), 0,
		     "dxm logged about a fork (see above)");
	cr_assert(check_index(p, LEN, 7));
	cr_assert_eq(dxm_free(ctx, p), 0);
	dxm_ctx_destroy(ctx);
	munmap(p, LEN);
}

Test(teardown, fork_parks_two_handlers, .timeout = 60)
{
	forks_with_handlers(2);
}

Test(teardown, fork_parks_four_handlers, .timeout = 60)
{
	forks_with_handlers(4);
}

/* ----------------------------------- a handler waits; munmap waits for it */

struct block_cb {
	atomic_bool armed, in_cb, release;
};
static struct block_cb blk;

static bool on_handler_thread(void)
{
	char name[16] = "";
	pthread_getname_np(pthread_self(), name, sizeof(name));
	return !strncmp(name, "dxm-fault/", 10);
}

static bool blocking_invalidate(struct dxm_notifier *n,
				const struct dxm_range *r, unsigned long seq)
{
	dxm_notifier_set_seq(n, seq);
	if (r->event == DXM_EVENT_CLEAR && on_handler_thread() &&
	    atomic_exchange(&blk.armed, false)) {
		atomic_store(&blk.in_cb, true);
		while (!atomic_load(&blk.release))
			sleep_ms(1);
	}
	return true;
}

static const struct dxm_notifier_ops blocking_ops = {
	.invalidate = blocking_invalidate,
};

struct thr {
	struct dxm_ctx *ctx;
	char *p;
	long ret;
	atomic_bool finished;
	atomic_int tid;
};

static void *touch_main(void *arg)
{
	struct thr *t = arg;
	t->ret = (long)*(volatile uint64_t *)t->p;
	atomic_store(&t->finished, true);
	return NULL;
}

static void *munmap_main(void *arg)
{
	struct thr *t = arg;
	atomic_store(&t->tid, gettid());
	t->ret = munmap(t->p, PS);
	atomic_store(&t->finished, true);
	return NULL;
}

static void *range_fault_main(void *arg)
{
	struct thr *t = arg;
	t->ret = dxm_range_fault(t->ctx, t->p, PS, 0, NULL);
	atomic_store(&t->finished, true);
	return NULL;
}

static void *mprotect_main(void *arg)
{
	struct thr *t = arg;
	t->ret = dxm_mprotect(t->ctx, t->p, PS, PROT_READ | PROT_WRITE);
	atomic_store(&t->finished, true);
	return NULL;
}

/* Whether thread tid sleeps in the kernel at wchan `where`. */
static bool sleeps_in(int tid, const char *where)
{
	char path[64], buf[128] = "";
	snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 && strstr(buf, where);
}

/*
 * The deadlock dxm stress found, step by step:
 *   1. the only handler is inside a notifier callback (a CPU fault on
 *      page 0 of region A), so it reads no event for now;
 *   2. the program munmaps region B: the kernel queues the UNMAP event,
 *      and every UFFDIO_MOVE on that userfaultfd returns EAGAIN until a
 *      handler reads it; munmap waits for that;
 *   3. dxm_range_fault of page 1 of A wants to move it back: EAGAIN, so
 *      it waits for the handler (it used to wait holding the view
 *      table's lock for reading);
 *   4. dxm_mprotect of region C asks for the table's lock for writing
 *      (writer-preferring: later readers queue behind it);
 *   5. the callback returns; the handler needs the table's lock for
 *      reading to move page 0 back, then reads the UNMAP event.
 * Before the fix, 3 waited for 5, 5 for 4 and 4 for 3.
 */
Test(teardown, handler_waits_while_munmap_waits_for_it, .timeout = 30)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 1 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	char *a = anon_map(2 * PS), *b = anon_map(PS);
	fill_index(a, 2 * PS, 100);
	adopt_or_skip(ctx, a, 2 * PS);
	adopt_or_skip(ctx, b, PS);
	void *c;
	cr_assert_eq(dxm_alloc(ctx, PS, 0, &c), 0);
	struct dxm_notifier *n;
	cr_assert_eq(dxm_notifier_insert(ctx, a, 2 * PS, &blocking_ops, NULL,
					 &n),
		     0);
	take_all(ctx, a, 2 * PS);
	atomic_store(&blk.armed, true);

	/* 1. */
	struct thr touch = { .ctx = ctx, .p = a };
	pthread_t t1, t2, t3, t4;
	cr_assert_eq(pthread_create(&t1, NULL, touch_main, &touch), 0);
	cr_assert(WAIT_FOR(atomic_load(&blk.in_cb), 5000),
		  "the handler never called the notifier");
	/* 2. */
	struct thr um = { .ctx = ctx, .p = b };
	cr_assert_eq(pthread_create(&t2, NULL, munmap_main, &um), 0);
	/* wchan may be hidden (kernel.kptr_restrict): then time it is. */
	if (!WAIT_FOR(atomic_load(&um.tid) &&
			      (sleeps_in(um.tid, "userfaultfd_event") ||
			       atomic_load(&um.finished)),
		      500))
		sleep_ms(50);
	cr_assert(!atomic_load(&um.finished),
		  "munmap did not wait for its event to be read");
	/* 3. */
	struct thr rf = { .ctx = ctx, .p = a + PS };
	cr_assert_eq(pthread_create(&t3, NULL, range_fault_main, &rf), 0);
	sleep_ms(50);
	/* 4. */
	struct thr mp = { .ctx = ctx, .p = c };
	cr_assert_eq(pthread_create(&t4, NULL, mprotect_main, &mp), 0);
	sleep_ms(50);
	/* 5. */
	atomic_store(&blk.release, true);
	cr_assert(WAIT_FOR(atomic_load(&touch.finished) &&
				   atomic_load(&um.finished) &&
				   atomic_load(&rf.finished) &&
				   atomic_load(&mp.finished),
			   10000),
		  "deadlock: touch %d, munmap %d, range_fault %d, mprotect %d",
		  atomic_load(&touch.finished), atomic_load(&um.finished),
		  atomic_load(&rf.finished), atomic_load(&mp.finished));
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	pthread_join(t3, NULL);
	pthread_join(t4, NULL);
	cr_assert_eq(um.ret, 0);
	cr_assert_eq(rf.ret, 1);
	cr_assert_eq(mp.ret, 0);
	cr_assert_eq(touch.ret, 100);
	cr_assert(check_index(a, 2 * PS, 100));
	dxm_notifier_remove(n);
	cr_assert_eq(dxm_free(ctx, a), 0);
	cr_assert_eq(dxm_free(ctx, c), 0);
	dxm_ctx_destroy(ctx);
	munmap(a, 2 * PS);
}
