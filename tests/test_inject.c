// SPDX-License-Identifier: MIT
/*
 * Fault injection (built with -Dfault_injection=true only): chosen system
 * calls and ioctls fail the way the kernel makes them fail (EAGAIN while
 * the address space changes, EEXIST, ENOMEM, EINTR) or callbacks are slow.
 * The library retries what can be retried and reports what cannot; no page
 * content is ever lost and no fault is left hanging.
 */
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

#define NPAGES 64
#define LEN (NPAGES * PS)

static struct dxm_ctx *ctx_with(const char *spec)
{
	/* Read once per process, at the first injection site: each test
	 * runs in its own process. */
	setenv("DXM_INJECT", spec, 1);
	return ctx_or_skip(NULL);
}

/* Convert, let the device write, give everything back through CPU
 * increments, twice; every value must be exact. */
static void round_trips(struct dxm_ctx *ctx, enum mem_kind kind)
{
	struct mem m;
	mem_setup(ctx, kind, LEN, &m);
	struct dxm_mirror *dev;
	cr_assert_eq(dxm_mirror_create(ctx, &dev), 0);
	uint64_t *p = m.base;
	fill_index(p, LEN, 0);
	for (int round = 1; round <= 3; round++) {
		int err = dxm_mirror_exclusive(dev, p, LEN);
		cr_assert(err == 0 || err == -EBUSY, "exclusive: %s",
			  strerror(-err));
		for (size_t pg = 0; pg < NPAGES; pg++)
			cr_assert_eq(dxm_mirror_atomic_add(dev, &p[pg * PS / 8],
							   1000, NULL),
				     0);
		for (size_t i = 0; i < LEN / 8; i++)
			p[i]++;
		for (size_t i = 0; i < LEN / 8; i++) {
			uint64_t want = i + (uint64_t)round +
					(i % (PS / 8) ? 0 : 1000u * round);
			cr_assert_eq(p[i], want, "word %zu: %lu, want %lu", i,
				     (unsigned long)p[i], (unsigned long)want);
		}
	}
	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(dev, &ms);
	cr_assert_eq(ms.stale_accesses, 0);
	dxm_mirror_destroy(dev);
	mem_teardown(&m);
}

#define INJECT_TEST(name, spec, kind)                                          \
	Test(inject, name, .timeout = 60)                                      \
	{                                                                      \
		struct dxm_ctx *ctx = ctx_with(spec);                          \
		round_trips(ctx, kind);                                        \
		dxm_ctx_destroy(ctx);                                          \
	}

/* UFFDIO_CONTINUE: EAGAIN is retried; EEXIST (already mapped) wakes the
 * thread, which faults again if the page was not in fact mapped. */
INJECT_TEST(continue_eagain, "continue=EAGAIN/2", MEM_MEMFD)
INJECT_TEST(continue_eexist, "continue=EEXIST/3", MEM_MEMFD)
INJECT_TEST(continue_eagain_alias, "continue=EAGAIN/2", MEM_ALIAS)
/* UFFDIO_MOVE (adopted memory): retried both ways; a page that cannot be
 * moved out is refused alone and keeps its data. */
INJECT_TEST(move_eagain, "move=EAGAIN/2", MEM_ANON)
INJECT_TEST(move_eexist, "move=EEXIST/3", MEM_ANON)
INJECT_TEST(move_ebusy, "move=EBUSY/4", MEM_ANON)
/* Zero pages for never-populated adopted pages. */
INJECT_TEST(copy_zeropage_eagain, "copy=EAGAIN/2,zeropage=EAGAIN/2", MEM_ANON)
/* The handler's read and poll interrupted. */
INJECT_TEST(read_poll_eintr, "read=EINTR/3,poll=EINTR/2", MEM_MEMFD)
INJECT_TEST(read_poll_eintr_anon, "read=EINTR/3,poll=EINTR/2", MEM_ANON)

/* Restores (faults that gave pages back) in s's histogram. */
static uint64_t restore_calls(const struct dxm_stats *s)
{
	uint64_t n = 0;
	for (int i = 0; i < DXM_STATS_HIST; i++)
		n += s->restore_pages[i];
	return n;
}

/* This thread's voluntary context switches so far (each sleep in a
 * fault is one). */
static long sleeps(void)
{
	struct rusage ru;
	cr_assert_eq(getrusage(RUSAGE_THREAD, &ru), 0);
	return ru.ru_nvcsw;
}

/*
 * Restore-around: the faulting thread is woken once per window, when
 * every page of it is back, so a reader going through the window in order
 * never faults again on a page of it still being given back: it sleeps
 * once per fault (a window given back ahead of it is a restore with no
 * fault, and no sleep).  Every UFFDIO_CONTINUE and UFFDIO_MOVE is slowed down
 * (3 ms): a thread woken as soon as its own page was mapped faults on the
 * next page while the handler maps the rest, and sleeps a second time
 * (until that mapping wakes it: the handler never even reads the fault).
 */
static void woken_once_per_window(enum mem_kind kind)
{
	setenv("DXM_INJECT", "continue=0/3,move=0/3", 1);
	struct dxm_ctx_opts o = { .sz = sizeof(o), .restore_around = 16 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	struct mem m;
	mem_setup(ctx, kind, LEN, &m);
	char *p = m.base;
	fill_index(p, LEN, 0);
	void *dev[NPAGES];
	for (int round = 0; round < 3; round++) {
		take(ctx, p, LEN, "owner", dev);
		struct dxm_stats s0 = stats(ctx), s;
		long z0 = sleeps();
		uint64_t sum = 0; /* the device's words, read in order */
		for (size_t pg = 0; pg < NPAGES; pg++)
			sum += ((volatile uint64_t *)(p + pg * PS))[1];
		long z = sleeps() - z0;
		cr_assert_eq(sum, NPAGES * 1000 + NPAGES * (NPAGES - 1) / 2,
			     "a page lost its data");
		/* A restore is counted in the histogram once it returned,
		 * which may be just after the thread it woke went on. */
		uint64_t faults, calls;
		for (int ms = 0;; ms++) {
			s = stats(ctx);
			faults = s.cpu_faults - s0.cpu_faults;
			calls = restore_calls(&s) - restore_calls(&s0);
			if (calls >= faults || ms >= 1000)
				break;
			sleep_ms(1);
		}
		cr_assert_eq(s.restores - s0.restores, NPAGES);
		cr_assert_lt(faults, NPAGES / 4, "%llu faults: no restore-around",
			     (unsigned long long)faults);
		/* Each fault is a restore; so is each window given back
		 * ahead of the reader (dxm_stats.pages_ahead). */
		cr_assert_geq(calls, faults, "round %d: %llu faults, %llu "
					     "restores",
			      round, (unsigned long long)faults,
			      (unsigned long long)calls);
		cr_assert_eq(calls > faults, s.pages_ahead > s0.pages_ahead,
			     "round %d: %llu restores for %llu faults, %llu "
			     "pages ahead",
			     round, (unsigned long long)calls,
			     (unsigned long long)faults,
			     (unsigned long long)(s.pages_ahead -
						  s0.pages_ahead));
		/* One sleep per fault; one more for a preemption at most. */
		cr_assert_leq(z, (long)faults + 1,
			      "round %d: the reader slept %ld times for %llu "
			      "faults: woken before its window was back",
			      round, z, (unsigned long long)faults);
	}
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

Test(inject, restore_around_wakes_once_per_window, .timeout = 60)
{
	woken_once_per_window(MEM_MEMFD);
}

Test(inject, restore_around_wakes_once_per_window_adopted, .timeout = 60)
{
	woken_once_per_window(MEM_ANON);
}

/* mmap/mremap failing: a clean -ENOMEM, nothing leaked, and the next call
 * works. */
static size_t count_lines(const char *path)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;
	int c;
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

static size_t count_fds(void)
{
	size_t n = 0;
	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) != -1;
	return n;
}

Test(inject, mmap_enomem_leaks_nothing, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_with("mmap=ENOMEM/2");
	void *p, *q;
	cr_assert_eq(dxm_alloc(ctx, LEN, 0, &p), 0); /* call 1 passes */
	size_t maps = count_lines("/proc/self/maps"), fds = count_fds();
	cr_assert_eq(dxm_alloc(ctx, LEN, 0, &q), -ENOMEM);
	cr_assert_eq(count_lines("/proc/self/maps"), maps);
	cr_assert_eq(count_fds(), fds);
	struct dxm_stats st;
	dxm_stats(ctx, &st, sizeof(st));
	cr_assert_eq(st.regions, 1);
	cr_assert_eq(dxm_alloc(ctx, LEN, 0, &q), 0); /* call 3 passes */
	cr_assert_eq(dxm_free(ctx, q), 0);
	cr_assert_eq(dxm_free(ctx, p), 0);
	dxm_ctx_destroy(ctx);
}

Test(inject, mremap_enomem_alias_fails_cleanly, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_with("mremap=ENOMEM/2");
	char *p;
	void *a;
	cr_assert_eq(dxm_alloc(ctx, LEN, 0, (void **)&p), 0); /* mremap 1 */
	fill_index(p, LEN, 5);
	size_t maps = count_lines("/proc/self/maps");
	cr_assert_eq(dxm_alias(ctx, p, &a), -ENOMEM); /* mremap 2 */
	cr_assert_eq(count_lines("/proc/self/maps"), maps);
	cr_assert_eq(dxm_alias(ctx, p, &a), 0); /* mremap 3 */
	cr_assert(check_index(a, LEN, 5));
	cr_assert_eq(dxm_free(ctx, p), 0);
	dxm_ctx_destroy(ctx);
}

/* A slow callback (50 ms each): faults wait for it, but all resolve. */
Test(inject, slow_callbacks_still_resolve, .timeout = 60)
{
	struct dxm_ctx *ctx = ctx_with("notify=0/50");
	struct mem m;
	mem_setup(ctx, MEM_MEMFD, 8 * PS, &m);
	struct recorder rec = { 0 };
	recorder_insert(ctx, &rec, m.base, 8 * PS);
	uint64_t *p = m.base;
	void *dev[8];
	for (int round = 0; round < 3; round++) {
		cr_assert_eq(dxm_make_exclusive(ctx, p, 8 * PS, NULL, dev), 8);
		((uint64_t *)dev[3])[0] += 7;
		dxm_exclusive_unlock(ctx, p, 8 * PS, dev);
		for (size_t pg = 0; pg < 8; pg++)
			p[pg * PS / 8]++;
	}
	cr_assert_eq(p[3 * PS / 8], 3 * 7 + 3);
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 3 * 8);
	recorder_remove(&rec);
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* The watchdog reports a callback that does not return and a fault that
 * waits for an unlock that does not come, instead of hanging silently. */
static char logbuf[8192];
static pthread_mutex_t loglock = PTHREAD_MUTEX_INITIALIZER;
static int capture(enum dxm_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	pthread_mutex_lock(&loglock);
	size_t n = strlen(logbuf);
	vsnprintf(logbuf + n, sizeof(logbuf) - n, fmt, ap);
	pthread_mutex_unlock(&loglock);
	return 0;
}

static bool log_has(const char *s)
{
	pthread_mutex_lock(&loglock);
	bool found = strstr(logbuf, s) != NULL;
	pthread_mutex_unlock(&loglock);
	return found;
}

static void *touch(void *arg)
{
	return (void *)(uintptr_t)++*(volatile uint64_t *)arg;
}

Test(inject, watchdog_reports_slow_callback_and_stuck_fault, .timeout = 30)
{
	setenv("DXM_WATCHDOG_MS", "200", 1);
	struct dxm_ctx *ctx = ctx_with("notify=0/600");
	dxm_set_print(capture);
	struct mem m;
	mem_setup(ctx, MEM_MEMFD, 2 * PS, &m);
	struct recorder rec = { 0 };
	recorder_insert(ctx, &rec, m.base, 2 * PS);
	void *dev[2];
	/* A 600 ms callback (the EXCLUSIVE notification). */
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, 2 * PS, &m, dev), 2);
	cr_assert(log_has("has run for"), "no report of the slow callback: "
					  "'%s'", logbuf);
	/* A fault on a page left locked. */
	pthread_t t;
	pthread_create(&t, NULL, touch, m.base);
	for (int i = 0; i < 200 && !log_has("has waited"); i++)
		usleep(10000);
	cr_assert(log_has("dxm_exclusive_unlock"),
		  "no report of the stuck fault: '%s'", logbuf);
	struct dxm_stats st;
	dxm_stats(ctx, &st, sizeof(st));
	cr_assert_geq(st.watchdog_reports, 2);
	dxm_exclusive_unlock(ctx, m.base, 2 * PS, dev);
	pthread_join(t, NULL); /* and then it completes */
	recorder_remove(&rec);
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/*
 * With two handlers, one resolves a fault on a page of adopted memory the
 * CPU owns but never touched; while it is slow (300 ms between its lookup
 * and its zero page), the other reads the program's munmap of that memory,
 * and the program maps and adopts new memory at the same address, whose
 * page a device then takes.  The slow handler's zero page must not land in
 * the new memory: it would be a CPU mapping of the device's page, and the
 * CPU would read zeros where the device wrote.
 */
struct toucher {
	volatile uint64_t *p;
	uint64_t seen;
};

static void *touch_read(void *arg)
{
	struct toucher *t = arg;
	t->seen = *t->p;
	return NULL;
}

Test(inject, slow_zero_fill_never_lands_in_memory_adopted_since,
     .timeout = 60)
{
	setenv("DXM_INJECT", "resolve=0/300", 1);
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 2 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	char *a = anon_map(PS);
	adopt_or_skip(ctx, a, PS);
	if (page_present(a))
		cr_skip_test("SKIP: dxm_adopt populated the page (so that "
			     "system calls find it under this userfaultfd): "
			     "no fault on a page the CPU never had");
	struct toucher t = { .p = (volatile uint64_t *)a };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, touch_read, &t), 0);
	/* The fault is counted before it is resolved (300 ms from now). */
	cr_assert(WAIT_FOR(stats(ctx).cpu_faults >= 1, 5000));
	cr_assert_eq(munmap(a, PS), 0); /* the other handler reads it */
	char *b = mmap(a, PS, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		       0);
	cr_assert_eq(b, a, "the address was not free again: %p", b);
	*(volatile uint64_t *)b = 7; /* no fault to convert it */
	cr_assert_eq(dxm_adopt(ctx, b, PS, 0), 0);
	void *dev;
	cr_assert_eq(dxm_make_exclusive(ctx, b, PS, NULL, &dev), 1);
	cr_assert_not_null(dev);
	*(volatile uint64_t *)dev = 1234; /* the device writes */
	dxm_exclusive_unlock(ctx, b, PS, &dev);
	cr_assert_lt(stats(ctx).cpu_faults, 2,
		     "the slow fault was over too soon: the test proves "
		     "nothing");
	cr_assert(!page_present(b),
		  "a CPU mapping of the device's page before any CPU access");
	pthread_join(th, NULL);
	/* The toucher faulted again on the new memory and got its page. */
	cr_assert_eq(t.seen, 1234, "the CPU read %lu where the device wrote "
				   "1234",
		     (unsigned long)t.seen);
	cr_assert_eq(*(volatile uint64_t *)b, 1234);
	cr_assert_eq(dxm_free(ctx, b), 0);
	munmap(b, PS);
	dxm_ctx_destroy(ctx);
}

/*
 * Every fork, as root, also reaches the raw-fork repair (the kernel's
 * UFFD_FEATURE_EVENT_FORK), which runs on a handler thread after the fork
 * and copies the parent's staged pages into the child.  It must never copy
 * a page that another handler is giving back to the CPU at that moment:
 * the staging slot turns into a hole under the copy, and the kernel's read
 * of it is a fault on staging (an old version had the other handler put a
 * zero page there, which refused that page to every device for ever, or
 * take it for a driver's stale access).  Here the repair is slow (200 ms
 * before the region, 200 ms before each copy) and so is the callback of
 * the restore that runs meanwhile (250 ms).
 */
static bool noop_invalidate(struct dxm_notifier *n,
			    const struct dxm_range *r, unsigned long seq)
{
	(void)r;
	dxm_notifier_set_seq(n, seq);
	return true;
}

static const struct dxm_notifier_ops noop_ops = { .invalidate =
							  noop_invalidate };

/* A context with two handler threads and the injection spec, for the
 * raw-fork repair (UFFD_FEATURE_EVENT_FORK: root only), or a skip. */
static struct dxm_ctx *repair_ctx_or_skip(const char *inject_spec)
{
	setenv("DXM_INJECT", inject_spec, 1);
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 2 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	if (geteuid() != 0 ||
	    !(stats(ctx).uffd_anon_features & (1ull << 1)))
		cr_skip_test("SKIP: no UFFD_FEATURE_EVENT_FORK (it needs "
			     "root): the raw-fork repair never runs");
	return ctx;
}

Test(inject, raw_fork_repair_never_copies_a_page_being_given_back,
     .timeout = 60)
{
	struct dxm_ctx *ctx = repair_ctx_or_skip("forkfix=0/200,notify=0/250");
	char *a = anon_map(PS);
	*(volatile uint64_t *)a = 42;
	adopt_or_skip(ctx, a, PS);
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		/* Alive until the repair has copied (into a dead child, the
		 * kernel reads nothing). */
		usleep(1000 * 1000);
		_exit(0);
	}
	/* The repair waits 200 ms; the device takes the page meanwhile. */
	void *dev;
	cr_assert_eq(dxm_make_exclusive(ctx, a, PS, NULL, &dev), 1);
	cr_assert_not_null(dev);
	*(volatile uint64_t *)dev += 1;
	dxm_exclusive_unlock(ctx, a, PS, &dev);
	struct dxm_notifier *n;
	cr_assert_eq(dxm_notifier_insert(ctx, a, PS, &noop_ops, NULL, &n), 0);
	/* The CPU takes it back: INVALIDATING for 250 ms (the callback),
	 * while the repair looks at it (at 200 ms) and copies (at 400). */
	struct toucher t = { .p = (volatile uint64_t *)a };
	pthread_t th;
	sleep_ms(50);
	cr_assert_eq(pthread_create(&th, NULL, touch_read, &t), 0);
	pthread_join(th, NULL);
	cr_assert_eq(t.seen, 43);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	sleep_ms(500); /* the repair is over */
	dxm_notifier_remove(n);
	/* A staging slot left occupied would refuse the page for ever. */
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(dxm_make_exclusive(ctx, a, PS, NULL, &dev), 1);
		cr_assert_not_null(dev, "the page was refused (round %d)", i);
		dxm_exclusive_unlock(ctx, a, PS, &dev);
		cr_assert_eq(*(volatile uint64_t *)a, 43);
	}
	cr_assert_eq(stats(ctx).stale_device_faults, 0);
	cr_assert_eq(dxm_free(ctx, a), 0);
	munmap(a, PS);
	dxm_ctx_destroy(ctx);
}

/* Errors and warnings the library logs, counted. */
static atomic_int logged_errors;

static int count_errors(enum dxm_log_level level, const char *fmt, va_list ap)
{
	if (level <= DXM_LOG_WARN) {
		atomic_fetch_add(&logged_errors, 1);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	}
	return 0;
}

/* An adopted page that read 42, taken by a device that wrote 43 into it
 * (still locked), on a repair context (injection spec), errors counted. */
static char *page_of_43(const char *inject_spec, struct dxm_ctx **ctxp,
			void **dev)
{
	struct dxm_ctx *ctx = repair_ctx_or_skip(inject_spec);
	atomic_store(&logged_errors, 0);
	dxm_set_print(count_errors);
	char *a = anon_map(PS);
	*(volatile uint64_t *)a = 42;
	adopt_or_skip(ctx, a, PS);
	cr_assert_eq(dxm_make_exclusive(ctx, a, PS, NULL, dev), 1);
	cr_assert_not_null(*dev);
	*(volatile uint64_t *)*dev = 43;
	*ctxp = ctx;
	return a;
}

/* A raw fork (no pthread_atfork handler) whose child reads page a: its
 * exit status says what it read (0: 43, 2: zero, 3: other data).  Its
 * page is a hole until the repair copies it (the read waits for that). */
static pid_t raw_fork_reading(const char *a)
{
	pid_t pid = (pid_t)syscall(SYS_fork);
	cr_assert_neq(pid, -1, "SYS_fork: %s", strerror(errno));
	if (pid == 0) {
		uint64_t v = *(volatile const uint64_t *)a;
		syscall(SYS_exit_group, v == 43 ? 0 : v == 0 ? 2 : 3);
	}
	return pid;
}

/* The child of raw_fork_reading read 43, no error was logged; then the
 * page and its context go. */
static void child_read_43(pid_t pid, struct dxm_ctx *ctx, char *a)
{
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child was killed by signal %d",
		  WTERMSIG(status));
	cr_assert_eq(WEXITSTATUS(status), 0,
		     "the child read %s where the parent's page was 43",
		     WEXITSTATUS(status) == 2 ? "zero" : "other data");
	cr_assert_eq(stats(ctx).stale_device_faults, 0,
		     "a handler's own read was taken for a driver's");
	cr_assert_eq(atomic_load(&logged_errors), 0, "errors were logged");
	dxm_set_print(NULL);
	cr_assert_eq(dxm_free(ctx, a), 0);
	cr_assert_eq(*(volatile uint64_t *)a, 43);
	munmap(a, PS);
	dxm_ctx_destroy(ctx);
}

/*
 * The window the stress tool found (stress/README.md, the run "beside" of
 * session 6): a raw fork while a device holds a page LOCKED.  The repair
 * sees the page locked, and before it copies, the device unlocks and the
 * CPU takes the page back on the other handler: its staging slot is a
 * hole.  An old repair read the slot as UFFDIO_COPY's source: a fault on
 * staging from a handler thread, which the other handler took for a
 * driver's stale access and answered with SIGBUS (the process died).  The
 * repair must never fault, and the child must read the page as it is
 * (the device's 43, now in the parent's CPU view).  The repair waits
 * 400 ms before the region and 400 ms before the page; the CPU takes the
 * page at 600 ms.
 */
Test(inject, raw_fork_repair_of_a_locked_page_given_back_meanwhile,
     .timeout = 60)
{
	struct dxm_ctx *ctx;
	void *dev;
	/* Locked, staged, the device's. */
	char *a = page_of_43("forkfix=0/400", &ctx, &dev);
	pid_t pid = raw_fork_reading(a);
	sleep_ms(600);
	dxm_exclusive_unlock(ctx, a, PS, &dev);
	struct toucher t = { .p = (volatile uint64_t *)a };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, touch_read, &t), 0);
	pthread_join(th, NULL);
	cr_assert_eq(t.seen, 43);
	child_read_43(pid, ctx, a);
}

struct unmapper {
	void *p;
	size_t len;
};

static void *unmap_fn(void *arg)
{
	struct unmapper *u = arg;
	munmap(u->p, u->len);
	return NULL;
}

/* Two pages of adopted memory (5s) that a device took and unlocked, on a
 * context whose munmaps are applied 300 ms after they are read; errors
 * counted. */
static struct dxm_ctx *two_pages_slow_detach(char **ap, void **dev)
{
	setenv("DXM_INJECT", "detach=0/300", 1);
	atomic_store(&logged_errors, 0);
	dxm_set_print(count_errors);
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *a = anon_map(2 * PS);
	memset(a, 5, 2 * PS);
	adopt_or_skip(ctx, a, 2 * PS);
	cr_assert_eq(dxm_make_exclusive(ctx, a, 2 * PS, NULL, dev), 2);
	dxm_exclusive_unlock(ctx, a, 2 * PS, dev);
	*ap = a;
	return ctx;
}

/* munmap from another thread; once it returned, the handler has read its
 * event (and applies it 300 ms later). */
static void unmap_read_not_applied(void *p, size_t len)
{
	struct unmapper u = { p, len };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, unmap_fn, &u), 0);
	pthread_join(t, NULL);
}

/*
 * A fork restores every adopted page first, in every region.  Here one
 * region's munmap is read by the handler (the munmap has returned) but not
 * yet applied (300 ms): the restore finds the CPU view's mapping gone.  The
 * data goes with the munmap; nothing is copied, no error is logged, and
 * the fork does not wait a thousand failed copies.
 */
Test(inject, fork_restore_of_a_region_being_unmapped_is_quiet, .timeout = 60)
{
	char *a;
	void *dev[2];
	struct dxm_ctx *ctx = two_pages_slow_detach(&a, dev);
	unmap_read_not_applied(a, 2 * PS);
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0)
		_exit(0);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert_eq(atomic_load(&logged_errors), 0,
		     "the restore of an unmapped page logged an error");
	sleep_ms(400);
	cr_assert_eq(stats(ctx).regions, 0);
	dxm_ctx_destroy(ctx);
	dxm_set_print(NULL);
}

/*
 * A restore that finds the CPU view's mapping gone (its munmap read, not
 * yet applied: 300 ms here) moves nothing (ENOENT); the page's data goes
 * with the munmap, and its staging slot must not keep it: an old version
 * marked the page the CPU's with its data still staged, and the munmap's
 * clean-up, which drops only pages that are not the CPU's, left it there
 * until dxm_free (a page of memory per such race).
 */
Test(inject, restore_into_an_unmapped_page_leaves_no_staged_data,
     .timeout = 60)
{
	char *a;
	void *dev[2];
	struct dxm_ctx *ctx = two_pages_slow_detach(&a, dev);
	cr_assert(page_present(dev[1]), "page 1 is not in its staging slot");
	unmap_read_not_applied(a + PS, PS);
	(void)dxm_range_fault(ctx, a + PS, PS, 0, NULL);
	sleep_ms(400); /* the munmap is applied */
	cr_assert(!page_present(dev[1]),
		  "the unmapped page's data stayed in its staging slot");
	cr_assert_eq(atomic_load(&logged_errors), 0, "errors were logged");
	cr_assert_eq(dxm_range_fault(ctx, a, PS, 0, NULL), 1);
	cr_assert_eq(*(volatile char *)a, 5);
	cr_assert_eq(dxm_free(ctx, a), 0);
	munmap(a, PS);
	dxm_ctx_destroy(ctx);
	dxm_set_print(NULL);
}

/*
 * Linux 6.18, when a page UFFDIO_MOVE moves is under migration (memory
 * compaction), moves it and answers EEXIST.  dxm took that answer on the
 * way out for a stray page in the staging slot and discarded it (the
 * device's copy, then the CPU's data, were lost), and on the way back for
 * a failed restore (logged).  Here every move does that.
 */
Test(inject, move_that_says_eexist_but_moved_loses_nothing, .timeout = 60)
{
	setenv("DXM_INJECT", "moved=EEXIST/1", 1);
	atomic_store(&logged_errors, 0);
	dxm_set_print(count_errors);
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	const size_t n = 8;
	uint64_t *a = (uint64_t *)anon_map(n * PS);
	fill_index(a, n * PS, 3);
	adopt_or_skip(ctx, a, n * PS);
	void *dev[8];
	cr_assert_eq(dxm_make_exclusive(ctx, a, n * PS, NULL, dev), (long)n);
	for (size_t i = 0; i < n; i++) {
		cr_assert_not_null(dev[i], "page %zu refused", i);
		cr_assert(check_index(dev[i], PS, 3 + i * (PS / 8)),
			  "the device's page %zu does not hold the data", i);
		((uint64_t *)dev[i])[1] += 100; /* the device writes */
	}
	dxm_exclusive_unlock(ctx, a, n * PS, dev);
	cr_assert_eq(pages_present(a, n * PS), 0);
	for (size_t i = 0; i < n; i++) {
		uint64_t *w = a + i * (PS / 8);
		cr_assert_eq(w[0], 3 + i * (PS / 8), "page %zu lost its data",
			     i);
		cr_assert_eq(w[1], 3 + i * (PS / 8) + 1 + 100,
			     "page %zu lost the device's write", i);
	}
	cr_assert_eq(atomic_load(&logged_errors), 0,
		     "a move that happened was taken for a failure");
	cr_assert_eq(dxm_free(ctx, a), 0);
	dxm_ctx_destroy(ctx);
	dxm_set_print(NULL);
}

/*
 * A page reads as given back (dxm_check_exclusive false: its callbacks
 * have returned) before its mapping returns.  A thread need not wait for
 * the handler to wake it: one woken early by a signal retries its access,
 * and a system call's read does not wait at all; either completes as soon
 * as the page is mapped.  Here each restore waits 300 ms with the page
 * back in the CPU view ("restored=0/300"), and a second thread reads the
 * page through /proc/self/mem (a read that never waits for a userfaultfd
 * handler: a hole is EIO at once) until it is there, then asks
 * dxm_check_exclusive.  Adopted memory once moved its page back while it
 * was still INVALIDATING (fuzz: anon-held-window).
 */
struct prober {
	struct dxm_ctx *ctx;
	char *page;
	void *dev;	   /* its device address */
	atomic_bool done;  /* the faulting read returned */
	bool seen;	   /* the prober read the page */
	bool early;	   /* before the faulting read returned */
	bool held;	   /* dxm_check_exclusive said "held" then */
};

static void *probe_fn(void *arg)
{
	struct prober *pr = arg;
	int fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	uint64_t v;
	while (!atomic_load(&pr->done) || !pr->seen) {
		if (pread(fd, &v, sizeof(v), (off_t)(uintptr_t)pr->page) !=
		    (ssize_t)sizeof(v))
			continue;
		pr->held = dxm_check_exclusive(pr->ctx, pr->page, PS, &pr->dev);
		pr->early = !atomic_load(&pr->done);
		pr->seen = true;
		break;
	}
	close(fd);
	return NULL;
}

static void given_back_before_mapped(enum mem_kind kind, unsigned window)
{
	setenv("DXM_INJECT", "restored=0/300", 1);
	struct dxm_ctx_opts o = { .sz = sizeof(o), .restore_around = window };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	struct mem m;
	mem_setup(ctx, kind, window * PS, &m);
	char *p = m.base;
	fill_index(p, window * PS, 0);
	void *dev[16];
	take(ctx, p, window * PS, "owner", dev);
	struct prober pr = { .ctx = ctx, .page = p, .dev = dev[0] };
	cr_assert(dxm_check_exclusive(ctx, p, PS, &pr.dev));
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, probe_fn, &pr), 0);
	sleep_ms(20); /* the prober finds the page revoked first */
	uint64_t v = rd(p + 8);
	atomic_store(&pr.done, true);
	pthread_join(th, NULL);
	cr_assert_eq(v, 1000, "the device's word was lost");
	cr_assert(pr.seen, "the prober could not read /proc/self/mem");
	cr_assert(!pr.held,
		  "a read of the page completed while dxm_check_exclusive "
		  "still said it was held (%s)",
		  pr.early ? "before the fault returned" : "after");
	/* Adopted memory, and restore-around, wake the faulting thread only
	 * once the restore is over: the prober read the page 300 ms before
	 * (else the test proved nothing).  A single memfd page's
	 * UFFDIO_CONTINUE wakes it at once. */
	if (kind == MEM_ANON || window > 1)
		cr_assert(pr.early, "the prober read the page only after the "
				    "fault returned: the test proves nothing");
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* memfd and adopted memory, a fault's own page and a window of 16. */
struct given_back_case {
	enum mem_kind kind;
	unsigned window;
};

ParameterizedTestParameters(inject, a_restored_page_reads_given_back_first)
{
	static struct given_back_case cases[] = {
		{ MEM_MEMFD, 1 }, { MEM_ANON, 1 },
		{ MEM_MEMFD, 16 }, { MEM_ANON, 16 },
	};
	return cr_make_param_array(struct given_back_case, cases,
				   sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct given_back_case *c, inject,
		  a_restored_page_reads_given_back_first, .timeout = 30)
{
	given_back_before_mapped(c->kind, c->window);
}

/*
 * So an adopted page is the CPU's (with PS_MAPPING) while it is still
 * staged, until its move.  A raw fork in that moment gives the child a
 * hole there (staging is MADV_DONTFORK), and the repair must copy the
 * page from staging: it does not go by "the CPU's" alone.  Each
 * UFFDIO_MOVE waits 300 ms before it enters the kernel ("move=0/300"):
 * the CPU's fault gives the page back, its move waits, and the fork comes
 * 100 ms into that wait; the other handler repairs the child.  Two
 * things tell the repair the page may be staged: its state (PS_MAPPING)
 * and the move under way (r->in_begun ahead of r->in_done); this fails
 * only without both.
 */
Test(inject, raw_fork_repair_of_a_page_given_back_before_it_moves,
     .timeout = 60)
{
	struct dxm_ctx *ctx;
	void *dev;
	char *a = page_of_43("move=0/300", &ctx, &dev);
	dxm_exclusive_unlock(ctx, a, PS, &dev);
	struct toucher t = { .p = (volatile uint64_t *)a };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, touch_read, &t), 0);
	sleep_ms(100);
	cr_assert(!dxm_check_exclusive(ctx, a, PS, &dev),
		  "the page is not given back 100 ms into its restore");
	cr_assert(!page_present(a), "the page moved before the fork: the "
				    "test proves nothing");
	pid_t pid = raw_fork_reading(a);
	pthread_join(th, NULL);
	cr_assert_eq(t.seen, 43);
	child_read_43(pid, ctx, a);
}
