/* SPDX-License-Identifier: MIT */
/*
 * dxm stress: internal declarations shared by the stress .c files.
 *
 * The model
 *   Regions live in a fixed table of slots (st.reg).  Each slot has a
 *   writer-preferring rwlock: a worker holds it for reading while it uses
 *   the region (CPU accesses, device operations, system calls, fork), and
 *   a worker that changes the region's shape (re-allocation, alias
 *   creation or removal, dxm_mprotect) holds it for writing, so that every
 *   user is quiesced first and the counters can be checked exactly.  No
 *   thread holds two region locks, except the forker, which takes two in
 *   slot order under st.fork_mtx.
 *
 *   Every page of a region starts with ST_NCNT 64-bit counter words; the
 *   rest of the page is a data area (word ST_NCNT is a version number, the
 *   others a pattern derived from region generation, page and version),
 *   written only under the page's data lock (dlock).
 *
 *   Counters: every actor (a CPU thread or a device thread) that increments
 *   a counter word adds one to its own expected count for that word
 *   (r->cnt), after the increment is done.  So at any time, for a counter
 *   word, sum(expected) read before a load <= value <= sum(expected) read
 *   after the load + (actors: one increment in flight each); and when the
 *   region is quiesced (write lock held), value == sum(expected) exactly.
 *
 *   Pages: st.ps is the regions' page size, the base page or, with --huge,
 *   2 MiB (every region a DXM_ALLOC_HUGE one, no adopted memory): a "page"
 *   everywhere below is one of those.  st.bps is the base page, what
 *   /proc/self/pagemap and pipes count in.
 */
#ifndef DXM_STRESS_INT_H
#define DXM_STRESS_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dxm.h"
#include "dxm_mirror.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ST_SANITIZED 1
#endif
#endif
#ifndef ST_SANITIZED
#define ST_SANITIZED 0
#endif

/*
 * ThreadSanitizer sees a system call's copy of a managed page (write(2)
 * from it) as a plain read racing with the atomic increments other threads
 * do on the counters there.  That is the point of the test, not a race:
 * such reads are excluded from its analysis.
 */
#if defined(__SANITIZE_THREAD__)
#define ST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ST_TSAN 1
#endif
#endif
#ifdef ST_TSAN
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
#define ST_IGNORE_READS_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
#define ST_IGNORE_READS_END() AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
#else
#define ST_IGNORE_READS_BEGIN() ((void)0)
#define ST_IGNORE_READS_END() ((void)0)
#endif

#define ST_MAX_THREADS 32
#define ST_MAX_DEVICES 8
#define ST_MAX_WORKERS (ST_MAX_THREADS + ST_MAX_DEVICES)
#define ST_MAX_REGIONS 32
#define ST_MAX_PAGES 16
#define ST_MAX_VIEWS 3	 /* the region's own view and up to 2 aliases */
#define ST_NCNT 8	 /* counter words at the start of each page */
#define ST_WATCH_MAX 4	 /* pages a watcher takes at once */
#define ST_HANG_MS 5000	 /* an operation running longer is a failure */
#define ST_MAX_CHURN 100 /* --churn */
#define ST_HUGE_PS ((size_t)2 << 20) /* --huge: DXM_ALLOC_HUGE's page */
/* --huge: 2 MiB pages the pool must have free, for every region slot at
 * its largest and for re-allocation (a new region while the pages of the
 * one torn down before are still going back: a munmap'd region is freed
 * on a handler thread). */
#define ST_HUGE_NEED(nregions) (((size_t)(nregions) + 2) * ST_MAX_PAGES)

enum st_kind { ST_MEMFD, ST_ANON };

/* Operation counters (summary), one array per worker. */
enum st_op {
	OP_CPU_INC,	/* CPU atomic increments */
	OP_ALIAS_READ,	/* counter and data reads through a CPU view */
	OP_SYS_IN,	/* read(2) from a pipe into a managed page */
	OP_SYS_OUT,	/* write(2) from a managed page into a pipe */
	OP_EFAULT,	/* EFAULT then dxm_range_fault (user-mode-only) */
	OP_MPROTECT,	/* dxm_mprotect calls */
	OP_EPERM,	/* device accesses refused as expected (EPERM) */
	OP_ALIAS_ADD,	/* dxm_alias */
	OP_ALIAS_DEL,	/* alias removed (dxm_free or munmap) */
	OP_REALLOC,	/* regions re-allocated */
	OP_FREE,	/* region teardown by dxm_free */
	OP_MUNMAP,	/* region teardown by munmap */
	OP_VERIFY,	/* exact counter checks of a quiesced region */
	OP_FORK,	/* fork + child checks */
	OP_DEV_ATOMIC,	/* dxm_mirror_atomic_add */
	OP_DEV_EXCL,	/* dxm_mirror_exclusive: all pages */
	OP_DEV_BUSY,	/* dxm_mirror_exclusive: -EBUSY */
	OP_DEV_READ,	/* dxm_mirror_read */
	OP_WATCH,	/* watcher conversions (own driver) */
	OP_WATCH_INC,	/* watcher non-atomic increments */
	OP_PAGEMAP,	/* pagemap checks while a device held a page */
	OP_PROBE,	/* valid mirror-held pagemap checks */
	ST_NOPS
};
extern const char *const st_op_name[ST_NOPS];

/* Operations that --disable can turn off. */
enum st_feature {
	F_CPU_INC,
	F_ALIAS_READ,
	F_SYS_IN,
	F_SYS_OUT,
	F_MPROTECT,
	F_ALIAS,
	F_REALLOC,
	F_FORK,
	F_DEV_ATOMIC,
	F_DEV_EXCL,
	F_DEV_READ,
	F_DEV_READ_ANON,
	F_WATCH,
	F_PROBE,
	F_ANON,
	F_MEMFD,
	F_ANON_MUNMAP,
	F_ANON_MPROTECT,
	ST_NFEATURES
};
extern const char *const st_feature_name[ST_NFEATURES];

struct st_region {
	pthread_rwlock_t lock; /* writer-preferring; see the top */
	int idx;
	/* Changed only with lock held for writing. */
	bool live;
	enum st_kind kind;
	unsigned gen;
	size_t npages;
	char *view[ST_MAX_VIEWS]; /* view[0]: dxm_alloc's or the adopted one */
	unsigned char prot[ST_MAX_VIEWS][ST_MAX_PAGES];
	/* dxm_range_fault's dev[] at creation: the device-side addresses of a
	 * memfd region (dxm_check_exclusive); for adopted memory, the CPU
	 * addresses (an ordinary device access goes through the CPU view). */
	void *dev[ST_MAX_PAGES];
	/* The device-side addresses dxm_make_exclusive returned to a device
	 * (the watchers record them; NULL: none yet).  For adopted memory
	 * the only ones dxm_check_exclusive knows (staging slots).  Cleared
	 * at creation (lock held for writing), set under the read lock. */
	void *_Atomic xdev[ST_MAX_PAGES];
	/* Data area of each page. */
	pthread_mutex_t dlock[ST_MAX_PAGES];
	uint64_t dver[ST_MAX_PAGES]; /* under dlock */
	/* Expected counts: [actor][page][word]. */
	_Atomic uint64_t *cnt;
};

struct st_thread {
	pthread_t tid;
	bool started;
};

struct st_watcher; /* device.c */

struct st_worker {
	int idx; /* also the actor index */
	bool device;
	int dev; /* device index (device workers) */
	uint64_t rng;
	struct st_thread th;
	int pipe[2];
	struct st_watcher *watcher;
	atomic_int tid; /* gettid(), for the fatal-signal report */
	/* What it is doing now, for the watchdog. */
	_Atomic uint64_t op_t0; /* 0: between operations */
	_Atomic(const char *) op_name;
	_Atomic(const char *) op_step;
	atomic_int op_region;
	atomic_int op_page;
	atomic_ulong op_count; /* operations started */
	_Atomic uint64_t nops[ST_NOPS];
};

struct st_listener; /* regions.c */

struct st_global {
	/* options */
	unsigned seconds, nthreads, ndevices, nregions, handlers;
	unsigned around; /* restore_around (0: the library's) */
	unsigned churn; /* --churn: fork and re-allocation rates times this */
	unsigned ctx_flags; /* DXM_CTX_HANDLER_SPIN or DXM_CTX_SIGBUS (--mode) */
	uint64_t seed;
	int verbose;
	bool huge; /* --huge: DXM_ALLOC_HUGE regions only */
	bool disabled[ST_NFEATURES];

	/* the run */
	struct dxm_ctx *ctx;
	size_t ps;  /* the regions' page size (--huge: 2 MiB) */
	size_t bps; /* the base page */
	uint32_t uffd_mode;
	bool anon_ok;
	unsigned nactors, nworkers;
	struct dxm_mirror *mirror[ST_MAX_DEVICES];
	struct st_region reg[ST_MAX_REGIONS];
	struct st_worker w[ST_MAX_WORKERS];
	struct st_worker main_w; /* the main thread, for setup and the end */
	struct st_listener *listener;
	int pagemap_fd;
	uint64_t t_start;
	atomic_uint gen;
	atomic_bool stop;   /* time is up, or a failure */
	atomic_bool failed;
	atomic_bool dumped; /* a state dump was printed */
	pthread_mutex_t fail_mtx;
	char fail_reason[512];
	unsigned nfailures;
	pthread_mutex_t churn_mtx; /* one re-allocation at a time */
	pthread_mutex_t fork_mtx;  /* one fork at a time */
	_Atomic uint64_t last_realloc, last_fork;
	atomic_uint in_realloc, in_fork; /* threads in (or waiting to) */
	atomic_ulong lib_errors, lib_warnings;
	atomic_bool lib_stack_shown; /* gdb was run at the first one */
	atomic_ulong pagemap_violations, watcher_stale, watcher_changed;
	atomic_ulong alias_lazy; /* CPU pages a new alias did not map at once */
};
extern struct st_global st;

/* util.c */
uint64_t st_now(void);
uint64_t st_rand(uint64_t *state);
unsigned st_rnd(struct st_worker *w, unsigned n);
void st_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool st_present(const void *addr);
char st_pagemap_char(const void *addr);
int st_thread_start(struct st_thread *t, void *(*fn)(void *), void *arg);
void st_thread_join(struct st_thread *t);
void st_sleep_us(unsigned us);
bool st_enabled(enum st_feature f);
/* Adopted memory in the run (dxm_adopt works, and not disabled). */
static inline bool st_anon_used(void)
{
	return st.anon_ok && st_enabled(F_ANON);
}
/* --huge: the pool of 2 MiB huge pages (/proc/sys/vm/nr_hugepages). */
int st_pool_setup(size_t need, char *why, size_t len);
bool st_pool_wait(struct st_worker *w, size_t np);
long st_pool_added(void);
void st_pool_release(void); /* async-signal-safe */
static inline bool st_stopping(void)
{
	return atomic_load_explicit(&st.stop, memory_order_relaxed);
}

/* Watchdog bookkeeping for worker w. */
static inline void st_op_begin(struct st_worker *w, const char *name)
{
	atomic_store_explicit(&w->op_name, name, memory_order_relaxed);
	atomic_store_explicit(&w->op_step, "start", memory_order_relaxed);
	atomic_store_explicit(&w->op_region, -1, memory_order_relaxed);
	atomic_store_explicit(&w->op_page, -1, memory_order_relaxed);
	atomic_fetch_add_explicit(&w->op_count, 1, memory_order_relaxed);
	atomic_store_explicit(&w->op_t0, st_now(), memory_order_release);
}
static inline void st_op_step(struct st_worker *w, const char *step)
{
	atomic_store_explicit(&w->op_step, step, memory_order_relaxed);
}
static inline void st_op_where(struct st_worker *w, int region, int page)
{
	atomic_store_explicit(&w->op_region, region, memory_order_relaxed);
	atomic_store_explicit(&w->op_page, page, memory_order_relaxed);
}
static inline void st_op_end(struct st_worker *w)
{
	atomic_store_explicit(&w->op_t0, 0, memory_order_release);
}
static inline void st_count(struct st_worker *w, enum st_op op, uint64_t n)
{
	atomic_fetch_add_explicit(&w->nops[op], n, memory_order_relaxed);
}

/* regions.c */
size_t st_cidx(size_t actor, size_t page, size_t word);
void st_expect_inc(struct st_region *r, int actor, size_t page, size_t word);
void st_expect_sum(struct st_region *r, size_t page, uint64_t out[ST_NCNT]);
uint64_t st_pattern(unsigned gen, size_t page, uint64_t ver, size_t word);
void st_data_fill(const struct st_region *r, size_t page, uint64_t ver,
		  uint64_t *words);
bool st_data_check(struct st_worker *w, const char *what,
		   const struct st_region *r, size_t page, const void *area);
bool st_bounds_check(const char *what, const struct st_region *r, size_t page,
		     const uint64_t lo[ST_NCNT], const uint64_t *v,
		     const uint64_t hi[ST_NCNT]);
bool st_views_absent(const struct st_region *r, size_t page, int *view);
struct st_region *st_grab(struct st_worker *w, int kind, bool writer);
void st_release(struct st_region *r);
int st_pick_view(struct st_worker *w, const struct st_region *r, size_t page,
		 size_t n, int need);
int st_region_create(struct st_worker *w, struct st_region *r);
bool st_region_verify(struct st_worker *w, struct st_region *r,
		      const char *when);
void st_region_teardown(struct st_worker *w, struct st_region *r);
int st_listener_init(void);
void st_listener_fini(void);
bool st_munmap_wait(struct st_worker *w, void *addr, size_t len);
void st_op_realloc(struct st_worker *w);
void st_op_alias(struct st_worker *w);
void st_op_mprotect(struct st_worker *w);
void *st_dev_addr(const struct st_region *r, size_t page);
extern const char st_page_legend[];
size_t st_page_states(const struct st_region *r, bool locked,
		      const char *sep, char *buf, size_t len);

/* cpu.c */
void *st_cpu_main(void *arg);

/* device.c */
int st_watcher_create(struct st_worker *w);
void st_watcher_destroy(struct st_worker *w);
void *st_device_main(void *arg);
void st_watcher_dump(struct st_worker *w);
bool st_watcher_holds(struct st_worker *w, const void *va, bool locked);

/* fork.c */
void st_op_fork(struct st_worker *w);

/* watchdog.c */
int st_watchdog_start(void);
void st_watchdog_stop(void);
void st_dump(const char *why);
/* The library's last info and debug messages, kept for the dump. */
void st_log_keep(const char *tag, const char *msg);
/* DXM_STRESS_GDB=1: every thread's user-space stack, now, from gdb. */
void st_user_stacks(const char *why);
void st_dump_settle(void);
bool st_dump_started(void);
bool st_dump_running(void);

/* leak.c */
struct st_snap {
	char **fds, **maps;
	size_t nfds, nmaps;
	long long heap;	/* bytes in use (malloc) before it, -1: not measured */
	long long self; /* bytes the snapshot itself holds */
};
int st_snap_take(struct st_snap *s);
bool st_snap_compare(const struct st_snap *before, const struct st_snap *after,
		     char *why, size_t whylen);
void st_snap_free(struct st_snap *s);

#endif /* DXM_STRESS_INT_H */
