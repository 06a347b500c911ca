// SPDX-License-Identifier: MIT
/*
 * dxm stress: the watchdog and the state dump.
 *
 * Every worker (and the main thread, during setup and the final checks)
 * publishes the start time of the operation it is in: a CPU access, a
 * device operation, a system call, a fork, a re-allocation.  The watchdog
 * looks every 200 ms; an operation running longer than ST_HANG_MS is a
 * failure: it dumps the state (what each worker is doing, every region's
 * pages as dxm_check_exclusive and /proc/self/pagemap see them, dxm_stats,
 * the mirrors' stats) and stops the run.  If the stuck workers do not come
 * back within another 10 s, it ends the process: nothing can be cleaned up
 * under a hung thread.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stress_int.h"

static struct st_thread wd;
static atomic_bool wd_stop;

static ssize_t read_small(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		n = 0;
	buf[n] = 0;
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = 0;
	return n;
}

static void dump_worker(struct st_worker *w, const char *name, uint64_t now)
{
	uint64_t t0 = atomic_load(&w->op_t0);
	const char *op = atomic_load(&w->op_name);
	const char *step = atomic_load(&w->op_step);
	fprintf(stderr,
		"  %-6s %s%s%s%s region %d page %d, %s%llu ms; %lu ops started\n",
		name, t0 ? "in " : "idle, last ", op ? op : "-",
		step ? ": " : "", step ? step : "", atomic_load(&w->op_region),
		atomic_load(&w->op_page), t0 ? "for " : "",
		t0 ? (unsigned long long)((now - t0) / 1000000) : 0ull,
		atomic_load(&w->op_count));
}

static void dump_region(struct st_region *r)
{
	/* Read without the lock: the thread that holds it may be stuck. */
	if (!r->live) {
		fprintf(stderr, "  slot %d: empty\n", r->idx);
		return;
	}
	fprintf(stderr, "  slot %d: gen %u, %s, %zu pages, views", r->idx,
		r->gen, r->kind == ST_ANON ? "adopted" : "memfd", r->npages);
	for (int v = 0; v < ST_MAX_VIEWS; v++)
		if (r->view[v])
			fprintf(stderr, " [%d]=%p", v, (void *)r->view[v]);
	/* Data versions, run-length: "0-3 v0, 4 v2". */
	fprintf(stderr, "; data");
	size_t np = r->npages < ST_MAX_PAGES ? r->npages : ST_MAX_PAGES;
	for (size_t a = 0, b; a < np; a = b + 1) {
		for (b = a; b + 1 < np && r->dver[b + 1] == r->dver[a]; b++)
			;
		if (a == b)
			fprintf(stderr, "%s %zu v%llu", a ? "," : "", a,
				(unsigned long long)r->dver[a]);
		else
			fprintf(stderr, "%s %zu-%zu v%llu", a ? "," : "", a, b,
				(unsigned long long)r->dver[a]);
	}
	fprintf(stderr, "\n");
	char states[ST_MAX_PAGES * 176];
	st_page_states(r, false, "\n    ", states, sizeof(states));
	fprintf(stderr, "    %s\n", states);
}

static atomic_bool dump_done, dump_running;

/* Wait until a dump the watchdog has started (or is about to start, for a
 * failure just recorded) is over: it reads what the caller is freeing. */
bool st_dump_started(void)
{
	return atomic_load(&st.dumped);
}

bool st_dump_running(void)
{
	return atomic_load(&dump_running);
}

void st_dump_settle(void)
{
	if (!atomic_load(&st.failed))
		return;
	for (int i = 0; i < 50 && !atomic_load(&st.dumped); i++)
		st_sleep_us(10000);
	for (int i = 0; i < 700 && atomic_load(&dump_running); i++)
		st_sleep_us(10000);
}

/* Every thread of the process as the kernel sees it: state, where it
 * sleeps, and its kernel stack where we may read it (root). */
static void dump_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return;
	fprintf(stderr, " threads (kernel view):\n");
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		int tid = atoi(e->d_name);
		char path[300], comm[64] = "?", wchan[128] = "?", stat[512] = "";
		const char *who = "";
		for (unsigned i = 0; i < st.nworkers; i++)
			if (atomic_load(&st.w[i].tid) == tid)
				who = st.w[i].device ? "dev" : "cpu";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		read_small(path, comm, sizeof(comm));
		snprintf(path, sizeof(path), "/proc/self/task/%s/wchan", e->d_name);
		read_small(path, wchan, sizeof(wchan));
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		read_small(path, stat, sizeof(stat));
		const char *rp = strrchr(stat, ')');
		char state = rp && rp[1] ? rp[2] : '?';
		int idx = -1;
		for (unsigned i = 0; i < st.nworkers; i++)
			if (atomic_load(&st.w[i].tid) == tid)
				idx = st.w[i].device ? st.w[i].dev : (int)i;
		if (idx >= 0)
			fprintf(stderr, "  tid %d %s%d (%s): state %c, wchan %s\n",
				tid, who, idx, comm, state, wchan);
		else
			fprintf(stderr, "  tid %d (%s): state %c, wchan %s\n", tid,
				comm, state, wchan);
		char stack[2048] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/stack",
			 e->d_name);
		if (read_small(path, stack, sizeof(stack)) > 0)
			for (char *l = strtok(stack, "\n"); l; l = strtok(NULL, "\n"))
				fprintf(stderr, "      %s\n", l);
	}
	closedir(d);
}

/* The last ST_LOG_KEEP info and debug messages of the library (a refused
 * page says why only at debug level), for the dump. */
#define ST_LOG_KEEP 64
static char log_ring[ST_LOG_KEEP][200];
static atomic_bool log_busy[ST_LOG_KEEP]; /* a writer is in that slot */
static atomic_uint log_next;

void st_log_keep(const char *tag, const char *msg)
{
	unsigned i = atomic_fetch_add(&log_next, 1) % ST_LOG_KEEP;
	if (atomic_exchange(&log_busy[i], true))
		return; /* 64 messages came while one was written: drop it */
	snprintf(log_ring[i], sizeof(log_ring[0]), "%.3f s %s: %s",
		 (double)(st_now() - st.t_start) / 1e9, tag, msg);
	atomic_store(&log_busy[i], false);
}

static void dump_log(void)
{
	unsigned n = atomic_load(&log_next);
	if (!n)
		return;
	unsigned first = n > ST_LOG_KEEP ? n - ST_LOG_KEEP : 0;
	fprintf(stderr, " the library's last %u info/debug message(s) of %u:\n",
		n - first, n);
	for (unsigned i = first; i < n; i++)
		fprintf(stderr, "  %s\n", log_ring[i % ST_LOG_KEEP]);
}

/* DXM_STRESS_GDB=1: every thread's user-space stack too, from gdb (which
 * must be installed; the process must allow ptrace by its parent or root).
 * What a hang is waiting for is often only visible there. */
static bool run_gdb(const char *title)
{
	const char *e = getenv("DXM_STRESS_GDB");
	if (!e || strcmp(e, "1"))
		return false;
	char cmd[256];
	snprintf(cmd, sizeof(cmd),
		 "gdb -p %d -batch -nx -ex 'set pagination off' "
		 "-ex 'thread apply all bt' >&2 2>/dev/null </dev/null",
		 (int)getpid());
	fprintf(stderr, "%s\n", title);
	fflush(stderr);
	if (system(cmd) != 0)
		fprintf(stderr, "  (gdb failed)\n");
	return true;
}

void st_user_stacks(const char *why)
{
	char title[256];
	snprintf(title, sizeof(title), "==== stress: %s: user stacks (gdb):",
		 why);
	run_gdb(title);
}

static void dump_user_stacks(void)
{
	run_gdb(" threads (user stacks, gdb):");
}

static void *dump_main(void *arg)
{
	const char *why = arg;
	uint64_t now = st_now();
	/* It reads what other threads hold locked (they may be stuck). */
	ST_IGNORE_READS_BEGIN();
	fprintf(stderr, "==== stress: state dump at %.3f s: %s\n",
		(double)(now - st.t_start) / 1e9, why);
	fprintf(stderr, " workers:\n");
	for (unsigned i = 0; i < st.nworkers; i++) {
		char name[16];
		snprintf(name, sizeof(name), "%s%u", st.w[i].device ? "dev" : "cpu",
			 st.w[i].device ? (unsigned)st.w[i].dev : i);
		dump_worker(&st.w[i], name, now);
	}
	dump_worker(&st.main_w, "main", now);
	for (unsigned i = 0; i < st.nworkers; i++)
		if (st.w[i].device)
			st_watcher_dump(&st.w[i]);
	dump_tasks();
	dump_log();
	dump_user_stacks();
	struct dxm_stats s;
	if (st.ctx && dxm_stats(st.ctx, &s, sizeof(s)) == 0)
		fprintf(stderr,
			" dxm_stats: conversions %llu, pages_converted %llu, "
			"pages_refused %llu, cpu_faults %llu, restores %llu, "
			"deferred_faults %llu, notifier_calls %llu "
			"(%llu ms), events_unmap %llu, events_remap %llu, "
			"events_remove %llu, forks %llu, regions %llu, "
			"managed_pages %llu, stale_device_faults %llu, "
			"watchdog_reports %llu, uffd_mode %u, handler_threads "
			"%u\n",
			(unsigned long long)s.conversions,
			(unsigned long long)s.pages_converted,
			(unsigned long long)s.pages_refused,
			(unsigned long long)s.cpu_faults,
			(unsigned long long)s.restores,
			(unsigned long long)s.deferred_faults,
			(unsigned long long)s.notifier_calls,
			(unsigned long long)(s.notifier_ns / 1000000),
			(unsigned long long)s.events_unmap,
			(unsigned long long)s.events_remap,
			(unsigned long long)s.events_remove,
			(unsigned long long)s.forks,
			(unsigned long long)s.regions,
			(unsigned long long)s.managed_pages,
			(unsigned long long)s.stale_device_faults,
			(unsigned long long)s.watchdog_reports, s.uffd_mode,
			s.handler_threads);
	fflush(stderr);
	/* These may block (pagemap takes the mmap lock, dxm_check_exclusive
	 * the view table lock, the mirror stats the mirror's lock). */
	fprintf(stderr, " regions (each page's state; %s):\n", st_page_legend);
	for (unsigned i = 0; i < st.nregions; i++)
		dump_region(&st.reg[i]);
	for (unsigned d = 0; d < st.ndevices; d++) {
		if (!st.mirror[d])
			continue;
		struct dxm_mirror_stats ms;
		dxm_mirror_get_stats(st.mirror[d], &ms);
		fprintf(stderr,
			" mirror %u: invalidations %llu, entries_erased %llu, "
			"exclusive_calls %llu, exclusive_retries %llu, faults "
			"%llu, atomics %llu, stale_accesses %llu\n",
			d, (unsigned long long)ms.invalidations,
			(unsigned long long)ms.entries_erased,
			(unsigned long long)ms.exclusive_calls,
			(unsigned long long)ms.exclusive_retries,
			(unsigned long long)ms.faults,
			(unsigned long long)ms.atomics,
			(unsigned long long)ms.stale_accesses);
	}
	fprintf(stderr, "==== end of dump\n");
	fflush(stderr);
	ST_IGNORE_READS_END();
	return NULL;
}

/*
 * The dump runs on a thread started with the watchdog: creating one at
 * dump time needs mmap, which waits behind a fork or any other holder of
 * the mmap lock, and those are the hangs worth a dump.
 */
static struct st_thread dumper;
static pthread_mutex_t dump_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dump_cond = PTHREAD_COND_INITIALIZER;
static char dump_why[512];
static bool dump_req, dump_quit;
static atomic_bool dumper_stuck;

static void *dumper_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&dump_mtx);
	for (;;) {
		while (!dump_req && !dump_quit)
			pthread_cond_wait(&dump_cond, &dump_mtx);
		if (dump_quit && !dump_req)
			break;
		dump_req = false;
		pthread_mutex_unlock(&dump_mtx);
		dump_main(dump_why);
		atomic_store(&dump_done, true);
		pthread_mutex_lock(&dump_mtx);
	}
	pthread_mutex_unlock(&dump_mtx);
	return NULL;
}

/* Print the dump on the dump thread, giving up after 5 s (a dxm call,
 * pagemap or a mirror lock in it may hang as well). */
void st_dump(const char *why)
{
	if (!dumper.started) {
		dump_main((void *)why);
		return;
	}
	atomic_store(&dump_done, false);
	atomic_store(&dump_running, true);
	pthread_mutex_lock(&dump_mtx);
	snprintf(dump_why, sizeof(dump_why), "%s", why);
	dump_req = true;
	pthread_cond_signal(&dump_cond);
	pthread_mutex_unlock(&dump_mtx);
	uint64_t t0 = st_now();
	/* gdb needs far longer than the dump's own reads to attach and walk
	 * every thread's stack. */
	const char *g = getenv("DXM_STRESS_GDB");
	int limit_ms = g && !strcmp(g, "1") ? 120000 : ST_HANG_MS;
	while (!atomic_load(&dump_done)) {
		if (st_now() - t0 > (uint64_t)limit_ms * 1000000) {
			fprintf(stderr, "==== stress: the dump itself hangs after "
					"%d ms (pagemap, a dxm call or a "
					"mirror lock in it blocks); giving up "
					"on it\n",
				limit_ms);
			atomic_store(&dumper_stuck, true);
			break;
		}
		st_sleep_us(10000);
	}
	atomic_store(&dump_running, false);
}

static struct st_worker *stuck(uint64_t now, uint64_t limit_ns)
{
	for (unsigned i = 0; i <= st.nworkers; i++) {
		struct st_worker *w = i < st.nworkers ? &st.w[i] : &st.main_w;
		uint64_t t0 = atomic_load(&w->op_t0);
		if (t0 && now > t0 && now - t0 > limit_ns)
			return w;
	}
	return NULL;
}

static void *wd_main(void *arg)
{
	(void)arg;
	const uint64_t lim = (uint64_t)ST_HANG_MS * 1000000;
	for (unsigned tick = 1; !atomic_load(&wd_stop); tick++) {
		st_sleep_us(20000);
		if (atomic_load(&st.failed) && !atomic_exchange(&st.dumped, true)) {
			pthread_mutex_lock(&st.fail_mtx);
			char why[512];
			snprintf(why, sizeof(why), "%s", st.fail_reason);
			pthread_mutex_unlock(&st.fail_mtx);
			st_dump(why);
		}
		if (tick % 10)
			continue;
		struct st_worker *w = stuck(st_now(), lim);
		if (!w)
			continue;
		const char *op = atomic_load(&w->op_name);
		const char *step = atomic_load(&w->op_step);
		char name[16];
		if (w == &st.main_w)
			snprintf(name, sizeof(name), "main");
		else
			snprintf(name, sizeof(name), "%s%d",
				 w->device ? "dev" : "cpu",
				 w->device ? w->dev : w->idx);
		st_fail("watchdog: %s has been in %s (%s), region %d page %d, "
			"for more than %d ms",
			name, op ? op : "?", step ? step : "?",
			atomic_load(&w->op_region), atomic_load(&w->op_page),
			ST_HANG_MS);
		if (!atomic_exchange(&st.dumped, true))
			st_dump("watchdog: an operation hangs");
		/* Give them 10 s to come back, else end the process. */
		uint64_t t0 = st_now();
		while (st_now() - t0 < 2 * lim && !atomic_load(&wd_stop)) {
			st_sleep_us(100000);
			if (!stuck(st_now(), lim))
				break;
		}
		if (stuck(st_now(), lim) && !atomic_load(&wd_stop)) {
			st_dump("still stuck 10 s later");
			pthread_mutex_lock(&st.fail_mtx);
			printf("stress: FAIL (%s)\n", st.fail_reason);
			pthread_mutex_unlock(&st.fail_mtx);
			fflush(stdout);
			fflush(stderr);
			st_pool_release();
			_exit(1);
		}
		/* They came back: the main thread reports. */
		while (!atomic_load(&wd_stop)) {
			st_sleep_us(200000);
			if (stuck(st_now(), 3 * lim)) {
				printf("stress: FAIL (%s)\n", st.fail_reason);
				fflush(stdout);
				st_pool_release();
				_exit(1);
			}
		}
	}
	return NULL;
}

int st_watchdog_start(void)
{
	atomic_store(&wd_stop, false);
	int err = st_thread_start(&dumper, dumper_main, NULL);
	if (!err)
		err = st_thread_start(&wd, wd_main, NULL);
	return err;
}

void st_watchdog_stop(void)
{
	atomic_store(&wd_stop, true);
	st_thread_join(&wd);
	if (dumper.started) {
		pthread_mutex_lock(&dump_mtx);
		dump_quit = true;
		pthread_cond_signal(&dump_cond);
		pthread_mutex_unlock(&dump_mtx);
		if (!atomic_load(&dumper_stuck))
			st_thread_join(&dumper);
	}
}
