// SPDX-License-Identifier: MIT
/*
 * dxm stress: options, setup, the run, the final checks and the report.
 *
 * Invariants checked (each failure names the region, page and word):
 *   - every counter exact whenever a region is quiesced (re-allocation,
 *     and at the end), and within the bounds the counts allow at every
 *     read (CPU through any view, read(2)/write(2), device reads, the
 *     child of a fork);
 *   - no device access after its invalidation returned: the mirrors'
 *     stale_accesses, dxm_stats' stale_device_faults, and the watcher's
 *     own instrumentation (stress/device.c) stay 0;
 *   - no CPU access while a page is exclusive: /proc/self/pagemap shows no
 *     CPU view mapping a page while the watcher (under its lock) or a
 *     mirror (probe) holds it, and no counter moves under the watcher;
 *   - data never lost: data areas intact, adopted memory handed back by
 *     dxm_free with every page in place, fork children see the parent's
 *     data;
 *   - refusals where the API promises them (EPERM on read-only views,
 *     EFAULT only with a user-mode-only userfaultfd, SIGSEGV in a child
 *     touching a memfd region, ENOENT after munmap);
 *   - no operation runs longer than 5 s (watchdog, stress/watchdog.c);
 *   - no error or warning logged by the library;
 *   - no file descriptor, mapping or malloc'd memory leaked (stress/leak.c).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"
#include "stress.h"
#include "stress_int.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dxm stress [--seconds N] [--threads T] [--devices D] "
		"[--seed S]\n"
		"                  [--regions R] [--handlers H] [--around N] "
		"[--mode M]\n"
		"                  [--churn N]\n"
		"                  [--huge] [--disable OP,...] [--verbose]\n"
		"  --seconds N   run for N seconds (default 10)\n"
		"  --threads T   CPU threads (default 2, at most %d)\n"
		"  --devices D   reference devices, one thread each (default 2, "
		"at most %d)\n"
		"  --seed S      random seed (default: from the clock; printed)\n"
		"  --regions R   region slots (default 6, 2 to %d)\n"
		"  --handlers H  dxm fault-handler threads (default: the "
		"library's)\n"
		"  --around N    restore-around window, pages (default: the "
		"library's, 2048; a\n"
		"                small one, 4, gives back windows ahead of the "
		"in-order readers)\n"
		"  --mode M      fault resolution: thread (default), spin "
		"(DXM_CTX_HANDLER_SPIN),\n"
		"                sigbus (DXM_CTX_SIGBUS), adaptive "
		"(DXM_CTX_HANDLER_ADAPTIVE)\n"
		"  --churn N     fork() and region re-allocation (teardown, "
		"dxm_free of adopted\n"
		"                memory included, then a new region) N times as "
		"often (default 1,\n"
		"                at most %d): tried N times as often, their rate "
		"limits (one fork\n"
		"                per 50 ms, one re-allocation per 20 ms) divided "
		"by N\n"
		"  --huge        every region of 2 MiB huge pages "
		"(DXM_ALLOC_HUGE), adopted memory\n"
		"                off; needs (R + 2) x %d free huge pages "
		"(128 by default): as\n"
		"                root, what is missing is added to "
		"/proc/sys/vm/nr_hugepages and\n"
		"                taken off again at the end\n"
		"  --disable L   operations left out, among:",
		ST_MAX_THREADS, ST_MAX_DEVICES, ST_MAX_REGIONS, ST_MAX_CHURN,
		ST_MAX_PAGES);
	for (int i = 0; i < ST_NFEATURES; i++)
		fprintf(f, " %s", st_feature_name[i]);
	fprintf(f, "\n  --verbose     more output (twice: the library's info "
		   "messages too)\n");
}

static bool parse_uint(const char *s, unsigned long long max,
		       unsigned long long *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || !*s || *end || v > max)
		return false;
	*out = v;
	return true;
}

static int parse(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "seconds", required_argument, NULL, 's' },
		{ "threads", required_argument, NULL, 't' },
		{ "devices", required_argument, NULL, 'd' },
		{ "seed", required_argument, NULL, 'S' },
		{ "regions", required_argument, NULL, 'r' },
		{ "handlers", required_argument, NULL, 'H' },
		{ "around", required_argument, NULL, 'a' },
		{ "mode", required_argument, NULL, 'm' },
		{ "churn", required_argument, NULL, 'c' },
		{ "disable", required_argument, NULL, 'x' },
		{ "huge", no_argument, NULL, 'g' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	unsigned long long v;
	optind = 0;
	for (;;) {
		int c = getopt_long(argc, argv, "s:t:d:S:r:H:a:m:c:x:vh", opts,
				    NULL);
		if (c < 0)
			break;
		switch (c) {
		case 's':
			if (!parse_uint(optarg, 1000000, &v))
				goto bad;
			st.seconds = (unsigned)v;
			break;
		case 't':
			if (!parse_uint(optarg, ST_MAX_THREADS, &v) || !v)
				goto bad;
			st.nthreads = (unsigned)v;
			break;
		case 'd':
			if (!parse_uint(optarg, ST_MAX_DEVICES, &v))
				goto bad;
			st.ndevices = (unsigned)v;
			break;
		case 'S':
			if (!parse_uint(optarg, ~0ull, &v))
				goto bad;
			st.seed = v;
			break;
		case 'r':
			if (!parse_uint(optarg, ST_MAX_REGIONS, &v) || v < 2)
				goto bad;
			st.nregions = (unsigned)v;
			break;
		case 'H':
			if (!parse_uint(optarg, 64, &v))
				goto bad;
			st.handlers = (unsigned)v;
			break;
		case 'a':
			if (!parse_uint(optarg, 1u << 20, &v))
				goto bad;
			st.around = (unsigned)v;
			break;
		case 'm': {
			/* the library's names of the resolution modes */
			static const unsigned modes[] = {
				0, DXM_CTX_HANDLER_SPIN, DXM_CTX_SIGBUS,
				DXM_CTX_HANDLER_ADAPTIVE
			};
			const size_t n = sizeof(modes) / sizeof(modes[0]);
			size_t i = 0;
			while (i < n &&
			       strcmp(optarg, dxm_resolution_str(modes[i])))
				i++;
			if (i == n)
				goto bad;
			st.ctx_flags = modes[i];
			break;
		}
		case 'c':
			if (!parse_uint(optarg, ST_MAX_CHURN, &v) || !v)
				goto bad;
			st.churn = (unsigned)v;
			break;
		case 'x': {
			char *copy = strdup(optarg), *save = NULL;
			for (char *t = strtok_r(copy, ",", &save); t;
			     t = strtok_r(NULL, ",", &save)) {
				int f = -1;
				for (int i = 0; i < ST_NFEATURES; i++)
					if (!strcmp(t, st_feature_name[i]))
						f = i;
				if (f < 0) {
					fprintf(stderr,
						"stress: unknown operation '%s'\n",
						t);
					free(copy);
					goto bad;
				}
				st.disabled[f] = true;
			}
			free(copy);
			break;
		}
		case 'g':
			st.huge = true;
			break;
		case 'v':
			st.verbose++;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			goto bad;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "stress: unexpected argument '%s'\n", argv[optind]);
		goto bad;
	}
	if (st.disabled[F_ANON] && st.disabled[F_MEMFD]) {
		fprintf(stderr, "stress: --disable anon,memfd leaves no memory\n");
		goto bad;
	}
	if (st.huge && st.disabled[F_MEMFD]) {
		fprintf(stderr, "stress: --huge with --disable memfd leaves no "
				"memory (adopted memory has base pages only)\n");
		goto bad;
	}
	if (st.huge) {
		/* Every region a huge one: adopted memory has base pages. */
		st.ps = ST_HUGE_PS;
		st.disabled[F_ANON] = true;
	}
	return 0;
bad:
	usage(stderr);
	return -1;
}

/* ------------------------------------------------------------- logging */

static dxm_print_fn prev_print;

/* Every error or warning the library logs is a failure here: nothing in
 * the run should make it complain. */
static int print_fn(enum dxm_log_level level, const char *fmt, va_list ap)
{
	static const char *const tag[] = { "error", "warning", "info",
					   "debug" };
	char buf[512];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (level == DXM_LOG_ERROR || level == DXM_LOG_WARN) {
		atomic_fetch_add(level == DXM_LOG_ERROR ? &st.lib_errors
							: &st.lib_warnings,
				 1);
		/* The thread that logged it is stopped here, so that gdb
		 * (DXM_STRESS_GDB=1) shows how it got there. */
		if (!atomic_exchange(&st.lib_stack_shown, true))
			st_user_stacks("the library's first error or warning");
		st_fail("the library logged an %s: %s", tag[level], buf);
		return 0;
	}
	st_log_keep(tag[level], buf);
	if ((level == DXM_LOG_INFO && st.verbose > 1) ||
	    (level == DXM_LOG_DEBUG && st.verbose > 2))
		fprintf(stderr, "dxm %s: %s\n", tag[level], buf);
	return 0;
}

/* -------------------------------------------------------- fatal signals */

struct sbuf {
	char b[1024];
	size_t n;
};

static void s_str(struct sbuf *s, const char *t)
{
	while (t && *t && s->n < sizeof(s->b) - 1)
		s->b[s->n++] = *t++;
}

static void s_num(struct sbuf *s, unsigned long v, unsigned base)
{
	char t[24];
	int i = 0;
	do
		t[i++] = "0123456789abcdef"[v % base];
	while ((v /= base) && i < 23);
	if (base == 16)
		s_str(s, "0x");
	while (i && s->n < sizeof(s->b) - 1)
		s->b[s->n++] = t[--i];
}

static struct sigaction old_sa[32];
static const int fatal[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE };

/* A crash (SIGBUS is how dxm answers a device access to a page it no
 * longer holds): say where, and fail (async-signal-safe code only). */
static void on_fatal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	struct sbuf s = { .n = 0 };
	int tid = (int)gettid();
	s_str(&s, "stress: fatal signal ");
	s_str(&s, sig == SIGSEGV   ? "SIGSEGV"
		  : sig == SIGBUS  ? "SIGBUS"
		  : sig == SIGILL  ? "SIGILL"
				   : "SIGFPE");
	s_str(&s, " (code ");
	if (si->si_code < 0)
		s_str(&s, "-");
	s_num(&s, (unsigned long)(si->si_code < 0 ? -si->si_code : si->si_code),
	      10);
	s_str(&s, ") at ");
	s_num(&s, (unsigned long)si->si_addr, 16);
	s_str(&s, " in thread ");
	s_num(&s, (unsigned long)tid, 10);
	for (unsigned i = 0; i < st.nworkers; i++) {
		struct st_worker *w = &st.w[i];
		if (atomic_load(&w->tid) != tid)
			continue;
		s_str(&s, w->device ? " (dev" : " (cpu");
		s_num(&s, (unsigned long)(w->device ? w->dev : w->idx), 10);
		s_str(&s, " in ");
		s_str(&s, atomic_load(&w->op_name));
		s_str(&s, ": ");
		s_str(&s, atomic_load(&w->op_step));
		s_str(&s, ")");
	}
	s_str(&s, "\n");
	if (write(1, s.b, s.n) < 0) {
		/* nothing to do */
	}
	s.n = 0;
	/* A failure was recorded first (dxm sends SIGBUS after logging a
	 * stale device access): let the watchdog print its dump. */
	for (int i = 0; i < 700 && atomic_load(&st.failed) &&
			(!st_dump_started() || st_dump_running());
	     i++) {
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	s_str(&s, "stress: FAIL (fatal signal");
	if (st.fail_reason[0]) {
		s_str(&s, " after: ");
		s_str(&s, st.fail_reason);
	}
	s_str(&s, ")\n");
	if (write(1, s.b, s.n) < 0) {
		/* nothing to do */
	}
	st_pool_release();
	_exit(1);
}

/* SIGINT, SIGTERM, SIGHUP while huge pages this run added are in the
 * pool: give them back, then die of the signal as before. */
static const int stop_sigs[] = { SIGINT, SIGTERM, SIGHUP };
static struct sigaction old_stop_sa[sizeof(stop_sigs) / sizeof(stop_sigs[0])];

static void on_stop(int sig)
{
	st_pool_release();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void catch_stop(bool on)
{
	for (size_t i = 0; i < sizeof(stop_sigs) / sizeof(stop_sigs[0]); i++) {
		if (on) {
			struct sigaction sa;
			memset(&sa, 0, sizeof(sa));
			sa.sa_handler = on_stop;
			sigaction(stop_sigs[i], &sa, &old_stop_sa[i]);
		} else {
			sigaction(stop_sigs[i], &old_stop_sa[i], NULL);
		}
	}
}

/* Installed before the first context: with DXM_CTX_SIGBUS, dxm installs
 * its SIGBUS handler once per process, over ours, and calls ours for a
 * SIGBUS that is not a managed page's; that one is then left in place. */
static void catch_fatal(bool on)
{
	for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
		if (!on && fatal[i] == SIGBUS && (st.ctx_flags & DXM_CTX_SIGBUS))
			continue;
		if (on) {
			struct sigaction sa;
			memset(&sa, 0, sizeof(sa));
			sa.sa_sigaction = on_fatal;
			sa.sa_flags = SA_SIGINFO;
			sigaction(fatal[i], &sa, &old_sa[fatal[i]]);
		} else {
			sigaction(fatal[i], &old_sa[fatal[i]], NULL);
		}
	}
}

/* ------------------------------------------------------------ warm-up */

/*
 * Everything that allocates for the life of the process, once, before the
 * leak baseline: the library's atfork handler and cached thread stacks (a
 * context with the same number of threads), stdio buffers, pagemap.  Also
 * finds out whether dxm_adopt works here.
 */
static pthread_barrier_t warm_barrier;

static void *warm_thread(void *arg)
{
	void *p = malloc(64); /* the thread's malloc cache */
	free(p);
	pthread_barrier_wait(&warm_barrier);
	return arg;
}

static int warm_up(const struct dxm_ctx_opts *o)
{
	struct dxm_ctx *ctx;
	int err = dxm_ctx_create(&ctx, o);
	if (err)
		return err;
	void *p = mmap(NULL, st.ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p != MAP_FAILED) {
		dxm_print_fn old = dxm_set_print(NULL);
		err = dxm_adopt(ctx, p, st.ps, 0);
		dxm_set_print(old);
		st.anon_ok = err == 0;
		if (err == 0)
			dxm_free(ctx, p);
		else if (err != -ENOSYS)
			fprintf(stderr, "stress: dxm_adopt in the warm-up: %s\n",
				strerror(-err));
		munmap(p, st.ps);
	}
	struct dxm_mirror *m;
	if (dxm_mirror_create(ctx, &m) == 0)
		dxm_mirror_destroy(m);
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	dxm_ctx_destroy(ctx);
	/* As many of our threads at once as the run has: the runner, the
	 * workers, the watchdog and the dump thread (glibc caches their
	 * stacks, and the TLS blocks that go with them). */
	unsigned n = st.nthreads + st.ndevices + 3;
	struct st_thread t[ST_MAX_WORKERS + 3];
	pthread_barrier_init(&warm_barrier, NULL, n);
	for (unsigned i = 0; i < n; i++)
		if (st_thread_start(&t[i], warm_thread, NULL))
			return -EAGAIN;
	for (unsigned i = 0; i < n; i++)
		st_thread_join(&t[i]);
	pthread_barrier_destroy(&warm_barrier);
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
	return 0;
}

/* ------------------------------------------------------------ reporting */

static void sum_ops(uint64_t out[ST_NOPS])
{
	memset(out, 0, ST_NOPS * sizeof(out[0]));
	for (unsigned i = 0; i < st.nworkers; i++)
		for (int k = 0; k < ST_NOPS; k++)
			out[k] += atomic_load(&st.w[i].nops[k]);
	for (int k = 0; k < ST_NOPS; k++)
		out[k] += atomic_load(&st.main_w.nops[k]);
}

static void progress(double t)
{
	uint64_t o[ST_NOPS];
	struct dxm_stats s;
	sum_ops(o);
	memset(&s, 0, sizeof(s));
	dxm_stats(st.ctx, &s, sizeof(s));
	printf("stress: %5.0f s: cpu-inc %llu, dev-atomic %llu, watch %llu, "
	       "reads %llu, syscalls %llu, realloc %llu, forks %llu; dxm: "
	       "%llu conversions, %llu restores, %llu faults (%llu "
	       "deferred)\n",
	       t, (unsigned long long)o[OP_CPU_INC],
	       (unsigned long long)o[OP_DEV_ATOMIC],
	       (unsigned long long)o[OP_WATCH],
	       (unsigned long long)(o[OP_ALIAS_READ] + o[OP_DEV_READ]),
	       (unsigned long long)(o[OP_SYS_IN] + o[OP_SYS_OUT]),
	       (unsigned long long)o[OP_REALLOC], (unsigned long long)o[OP_FORK],
	       (unsigned long long)s.conversions, (unsigned long long)s.restores,
	       (unsigned long long)s.cpu_faults,
	       (unsigned long long)s.deferred_faults);
	fflush(stdout);
}

/* ----------------------------------------------------------------- run */

static void defaults(void)
{
	memset(&st, 0, sizeof(st));
	st.seconds = 10;
	st.nthreads = 2;
	st.ndevices = 2;
	st.nregions = 6;
	st.churn = 1;
	st.ps = (size_t)sysconf(_SC_PAGESIZE);
	st.bps = st.ps;
	st.pagemap_fd = -1;
	pthread_mutex_init(&st.fail_mtx, NULL);
	pthread_mutex_init(&st.churn_mtx, NULL);
	pthread_mutex_init(&st.fork_mtx, NULL);
}

static uint64_t splitmix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	x ^= x >> 31;
	return x ? x : 1;
}

static void init_worker(struct st_worker *w, int idx)
{
	w->idx = idx;
	w->rng = splitmix(st.seed + 0x1000u * (unsigned)idx + 1);
	w->pipe[0] = w->pipe[1] = -1;
	atomic_store(&w->op_region, -1);
	atomic_store(&w->op_page, -1);
}

/* Create the context, mirrors, regions and workers; start them. */
static int setup(const struct dxm_ctx_opts *o)
{
	int err = dxm_ctx_create(&st.ctx, o);
	if (err) {
		st_fail("dxm_ctx_create: %s", strerror(-err));
		return err;
	}
	struct dxm_stats s;
	dxm_stats(st.ctx, &s, sizeof(s));
	st.uffd_mode = s.uffd_mode;
	bool waits = s.uffd_mode != DXM_UFFD_USER_ONLY &&
		     !(st.ctx_flags & DXM_CTX_SIGBUS);
	printf("stress: userfaultfd mode: %s (system calls on exclusive pages "
	       "%s); resolution: %s, %u handler thread(s); adopted memory: "
	       "%s\n",
	       dxm_uffd_mode_str(s.uffd_mode), waits ? "wait" : "get EFAULT",
	       dxm_resolution_str(st.ctx_flags), s.handler_threads,
	       !st.anon_ok ? "not available (dxm_adopt: ENOSYS), memfd only"
	       : st.disabled[F_ANON] ? "disabled"
				     : "yes");
	st.pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (st.pagemap_fd < 0) {
		st_fail("open(/proc/self/pagemap): %s", strerror(errno));
		return -errno;
	}
	for (unsigned d = 0; d < st.ndevices; d++) {
		err = dxm_mirror_create(st.ctx, &st.mirror[d]);
		if (err) {
			st_fail("dxm_mirror_create: %s", strerror(-err));
			return err;
		}
	}
	err = st_listener_init();
	if (err) {
		st_fail("dxm_notifier_insert (unmap listener): %s",
			strerror(-err));
		return err;
	}
	st.nworkers = st.nthreads + st.ndevices;
	st.nactors = st.nworkers;
	for (unsigned i = 0; i < st.nworkers; i++) {
		struct st_worker *w = &st.w[i];
		init_worker(w, (int)i);
		if (i >= st.nthreads) {
			w->device = true;
			w->dev = (int)(i - st.nthreads);
			if ((err = st_watcher_create(w))) {
				st_fail("out of memory");
				return err;
			}
		} else if (pipe2(w->pipe, O_CLOEXEC | O_NONBLOCK)) {
			st_fail("pipe2: %s", strerror(errno));
			return -errno;
		}
	}
	init_worker(&st.main_w, (int)st.nworkers);
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	st_op_begin(&st.main_w, "setup: regions");
	for (unsigned i = 0; i < st.nregions; i++) {
		struct st_region *r = &st.reg[i];
		r->idx = (int)i;
		pthread_rwlock_init(&r->lock, &ra);
		for (int p = 0; p < ST_MAX_PAGES; p++)
			pthread_mutex_init(&r->dlock[p], NULL);
		r->cnt = calloc((size_t)st.nactors * ST_MAX_PAGES * ST_NCNT,
				sizeof(*r->cnt));
		if (!r->cnt) {
			st_fail("out of memory");
			return -ENOMEM;
		}
		pthread_rwlock_wrlock(&r->lock);
		err = st_region_create(&st.main_w, r);
		pthread_rwlock_unlock(&r->lock);
		if (err)
			return err;
	}
	st_op_end(&st.main_w);
	pthread_rwlockattr_destroy(&ra);
	if ((err = st_watchdog_start())) {
		st_fail("cannot start the watchdog: %s", strerror(-err));
		return err;
	}
	for (unsigned i = 0; i < st.nworkers; i++) {
		struct st_worker *w = &st.w[i];
		err = st_thread_start(&w->th, w->device ? st_device_main
							: st_cpu_main,
				      w);
		if (err) {
			st_fail("cannot start a thread: %s", strerror(-err));
			return err;
		}
	}
	return 0;
}

/* Stop the workers, check and free everything, destroy the context. */
static void finish(struct dxm_stats *fin)
{
	struct st_worker *mw = &st.main_w;
	atomic_store(&st.stop, true);
	for (unsigned i = 0; i < st.nworkers; i++)
		st_thread_join(&st.w[i].th);
	if (!st.ctx)
		return;

	st_op_begin(mw, "final checks and teardown");
	for (unsigned i = 0; i < st.nregions; i++) {
		struct st_region *r = &st.reg[i];
		if (!r->cnt)
			continue;
		st_op_where(mw, (int)i, -1);
		pthread_rwlock_wrlock(&r->lock);
		if (r->live)
			st_region_teardown(mw, r);
		pthread_rwlock_unlock(&r->lock);
	}
	st_op_end(mw);

	st_dump_settle();
	st_op_begin(mw, "mirrors");
	for (unsigned d = 0; d < st.ndevices; d++) {
		if (!st.mirror[d])
			continue;
		struct dxm_mirror_stats ms;
		dxm_mirror_get_stats(st.mirror[d], &ms);
		if (ms.stale_accesses)
			st_fail("mirror %u: %llu device accesses to pages dxm "
				"no longer held exclusive (stale_accesses)",
				d, (unsigned long long)ms.stale_accesses);
		printf("stress: mirror %u: %llu atomics, %llu exclusive calls "
		       "(%llu retried), %llu range faults, %llu invalidations "
		       "(%llu entries), stale_accesses %llu\n",
		       d, (unsigned long long)ms.atomics,
		       (unsigned long long)ms.exclusive_calls,
		       (unsigned long long)ms.exclusive_retries,
		       (unsigned long long)ms.faults,
		       (unsigned long long)ms.invalidations,
		       (unsigned long long)ms.entries_erased,
		       (unsigned long long)ms.stale_accesses);
		dxm_mirror_destroy(st.mirror[d]);
		st.mirror[d] = NULL;
	}
	for (unsigned i = 0; i < st.nworkers; i++)
		st_watcher_destroy(&st.w[i]);
	st_listener_fini();
	st_op_end(mw);

	/* munmap'd regions go away on a handler thread: wait for them. */
	st_op_begin(mw, "wait for dxm_stats.regions == 0");
	memset(fin, 0, sizeof(*fin));
	for (uint64_t t0 = st_now();;) {
		dxm_stats(st.ctx, fin, sizeof(*fin));
		if (!fin->regions || st_now() - t0 > 3000000000ull)
			break;
		st_sleep_us(1000);
	}
	st_op_end(mw);
	if (fin->regions || fin->managed_pages)
		st_fail("%llu regions (%llu pages) still managed after every "
			"region was freed",
			(unsigned long long)fin->regions,
			(unsigned long long)fin->managed_pages);
	if (fin->stale_device_faults)
		st_fail("dxm_stats: %llu stale device faults (a device touched "
			"a staging page after its invalidation returned)",
			(unsigned long long)fin->stale_device_faults);
	if (fin->watchdog_reports)
		st_fail("dxm_stats: %llu watchdog reports",
			(unsigned long long)fin->watchdog_reports);
	if (!atomic_load(&st.failed) && st.seconds >= 5) {
		/* Forward progress for both sides. */
		uint64_t o[ST_NOPS];
		sum_ops(o);
		if (st.ndevices && st_enabled(F_DEV_ATOMIC) && !o[OP_DEV_ATOMIC])
			st_fail("no device atomic completed");
		if (st_enabled(F_CPU_INC) && !o[OP_CPU_INC])
			st_fail("no CPU increment completed");
		if (st.ndevices && (!fin->conversions || !fin->restores))
			st_fail("no contention: %llu conversions, %llu restores",
				(unsigned long long)fin->conversions,
				(unsigned long long)fin->restores);
	}
	st_op_begin(mw, "dxm_ctx_destroy");
	dxm_ctx_destroy(st.ctx);
	st.ctx = NULL;
	st_op_end(mw);
}

static void cleanup(void)
{
	st_watchdog_stop();
	if (st.pagemap_fd >= 0)
		close(st.pagemap_fd);
	st.pagemap_fd = -1;
	for (unsigned i = 0; i < st.nworkers; i++)
		for (int k = 0; k < 2; k++)
			if (st.w[i].pipe[k] >= 0)
				close(st.w[i].pipe[k]);
	for (unsigned i = 0; i < st.nregions; i++) {
		struct st_region *r = &st.reg[i];
		if (!r->cnt)
			continue;
		free(r->cnt);
		r->cnt = NULL;
		pthread_rwlock_destroy(&r->lock);
		for (int p = 0; p < ST_MAX_PAGES; p++)
			pthread_mutex_destroy(&r->dlock[p]);
	}
}

static void summary(double secs, const struct dxm_stats *s)
{
	uint64_t o[ST_NOPS];
	sum_ops(o);
	printf("stress: ran %.1f s: seed %llu, %u CPU threads, %u devices, %u "
	       "region slots, churn %u%s\n",
	       secs, (unsigned long long)st.seed, st.nthreads, st.ndevices,
	       st.nregions, st.churn, st.huge ? ", huge pages" : "");
	printf("stress: operations:");
	for (int k = 0; k < ST_NOPS; k++)
		printf("%s %s %llu", k % 6 ? "," : "\n  ", st_op_name[k],
		       (unsigned long long)o[k]);
	printf("\n");
	printf("stress: dxm: %llu conversions (%llu pages, %llu refused), %llu "
	       "CPU faults, %llu restores (%llu ahead), %llu deferred, %llu "
	       "notifier calls, %llu unmap events, %llu remove events, %llu "
	       "forks\n",
	       (unsigned long long)s->conversions,
	       (unsigned long long)s->pages_converted,
	       (unsigned long long)s->pages_refused,
	       (unsigned long long)s->cpu_faults,
	       (unsigned long long)s->restores,
	       (unsigned long long)s->pages_ahead,
	       (unsigned long long)s->deferred_faults,
	       (unsigned long long)s->notifier_calls,
	       (unsigned long long)s->events_unmap,
	       (unsigned long long)s->events_remove,
	       (unsigned long long)s->forks);
	dxm_tool_print_hist(stdout, "stress: ", "restore latency, us",
			    s->restore_us, "us");
	dxm_tool_print_hist(stdout, "stress: ", "pages per restore",
			    s->restore_pages, "pages");
	if (atomic_load(&st.alias_lazy))
		printf("stress: note: %lu page(s) the CPU owned were not mapped "
		       "in a new alias at once (restores a handler was still "
		       "finishing: dxm_alias(3))\n",
		       atomic_load(&st.alias_lazy));
	printf("stress: invariants: %llu exact checks, %llu pagemap checks "
	       "under a device's lock and %llu mirror probes (%lu CPU "
	       "mappings seen), watcher: %lu stale, %lu changed; library: %lu "
	       "errors, %lu warnings, %llu stale device faults\n",
	       (unsigned long long)o[OP_VERIFY],
	       (unsigned long long)o[OP_PAGEMAP],
	       (unsigned long long)o[OP_PROBE],
	       atomic_load(&st.pagemap_violations),
	       atomic_load(&st.watcher_stale), atomic_load(&st.watcher_changed),
	       atomic_load(&st.lib_errors), atomic_load(&st.lib_warnings),
	       (unsigned long long)s->stale_device_faults);
}

struct run_arg {
	const struct dxm_ctx_opts *o;
	struct dxm_stats *fin;
	double secs;
};

/* The run, from the first context to the last check. */
static void *run(void *arg)
{
	struct run_arg *ra = arg;
	prev_print = dxm_set_print(print_fn);
	st.t_start = st_now();
	if (setup(ra->o) == 0) {
		uint64_t end = st.t_start + (uint64_t)st.seconds * 1000000000ull;
		uint64_t every = (st.verbose ? 1 : 5) * 1000000000ull;
		uint64_t next = st.t_start + every;
		while (!st_stopping() && st_now() < end) {
			st_sleep_us(20000);
			if (st_now() >= next && !st_stopping()) {
				progress((double)(st_now() - st.t_start) / 1e9);
				next += every;
			}
		}
	}
	ra->secs = (double)(st_now() - st.t_start) / 1e9;
	finish(ra->fin);
	cleanup();
	dxm_set_print(prev_print);
	return NULL;
}

/* --huge: give back the huge pages this run added to the pool (also
 * done, quietly, on a fatal signal, SIGINT or SIGTERM). */
static void pool_give_back(void)
{
	long added = st_pool_added();
	st_pool_release();
	if (added)
		printf("stress: huge pages: the %ld added to "
		       "/proc/sys/vm/nr_hugepages taken off again\n",
		       added);
}

static int stress_run(void);

int stress_main(int argc, char **argv)
{
	defaults();
	int err = parse(argc, argv);
	if (err)
		return err < 0 ? 2 : 0;
	if (!st.seed)
		st.seed = splitmix((uint64_t)time(NULL) ^
				   ((uint64_t)getpid() << 32) ^ st_now());
	printf("stress: %u s, %u CPU threads, %u devices, %u region slots, "
	       "churn %u, seed %llu%s\n",
	       st.seconds, st.nthreads, st.ndevices, st.nregions, st.churn,
	       (unsigned long long)st.seed,
	       st.huge ? ", huge pages (2 MiB)" : "");
	fflush(stdout);
	if (!st.huge)
		return stress_run();
	char why[512];
	size_t need = ST_HUGE_NEED(st.nregions);
	catch_stop(true);
	if (st_pool_setup(need, why, sizeof(why))) {
		pool_give_back();
		catch_stop(false);
		printf("stress: FAIL (%s)\n", why);
		return 1;
	}
	if (st_pool_added())
		printf("stress: huge pages: %zu needed, %ld added to "
		       "/proc/sys/vm/nr_hugepages for the run\n",
		       need, st_pool_added());
	else
		printf("stress: huge pages: %zu needed, free in the pool\n",
		       need);
	fflush(stdout);
	int rc = stress_run();
	pool_give_back(); /* after a failure to start: the rest did */
	catch_stop(false);
	return rc;
}

/* The run itself, from the warm-up to the verdict. */
static int stress_run(void)
{
	int err;
#if !ST_SANITIZED
	mallopt(M_ARENA_MAX, 1); /* no per-thread arenas: see leak.c */
#endif
	catch_fatal(true);
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .flags = st.ctx_flags,
				  .handler_threads = st.handlers,
				  .restore_around = st.around };
	err = warm_up(&o);
	if (err) {
		catch_fatal(false);
		printf("stress: FAIL (no dxm context: %s)\n", strerror(-err));
		return 1;
	}
	struct st_snap before, after;
	if (st_snap_take(&before)) {
		catch_fatal(false);
		printf("stress: FAIL (cannot read /proc/self)\n");
		return 1;
	}
	/*
	 * Everything from here to the end of the checks runs on a thread of
	 * its own, whose malloc cache goes back to the heap when it exits:
	 * the heap in use is then comparable with the baseline (this thread
	 * allocates nothing meanwhile).
	 */
	struct st_thread runner;
	struct dxm_stats fin;
	memset(&fin, 0, sizeof(fin));
	struct run_arg ra = { .o = &o, .fin = &fin };
	if (st_thread_start(&runner, run, &ra)) {
		catch_fatal(false);
		printf("stress: FAIL (cannot start a thread)\n");
		st_snap_free(&before);
		return 1;
	}
	st_thread_join(&runner);
	catch_fatal(false);
	double secs = ra.secs;

	char why[512] = "";
	bool clean = true;
	if (!atomic_load(&st.failed)) {
		if (st_snap_take(&after)) {
			st_fail("cannot read /proc/self");
		} else {
			clean = st_snap_compare(&before, &after, why, sizeof(why));
			st_snap_free(&after);
		}
	}
	st_snap_free(&before);
	if (!clean) {
		atomic_store(&st.dumped, true); /* nothing left to dump */
		st_fail("leak: %s", why);
	}
	pool_give_back(); /* --huge: every region is gone */
	summary(secs, &fin);
	if (atomic_load(&st.failed)) {
		printf("stress: FAIL (%s)\n", st.fail_reason);
		return 1;
	}
	printf("stress: PASS\n");
	return 0;
}
