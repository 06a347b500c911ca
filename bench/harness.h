/* SPDX-License-Identifier: MIT */
/*
 * Internal to the benchmark harness: samples and statistics (stats.c), the
 * result table and targets (bench.c), and the pieces several groups share
 * (common.c).  Every non-static name starts with bn_ so that nothing clashes
 * with the library's internal symbols when linked against libdxm.a.
 */
#ifndef DXM_BENCH_HARNESS_H
#define DXM_BENCH_HARNESS_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

#include "dxm.h"

/* ---------------------------------------------------------------- options */

struct bn_opts {
	bool quick;
	const char *out; /* directory for CSV files and plots */
};
extern struct bn_opts bn_opt;

/* n samples in a full run, nq with --quick */
static inline size_t bn_n(size_t n, size_t nq)
{
	return bn_opt.quick ? nq : n;
}

/* ----------------------------------------------------------------- timing */

static inline uint64_t bn_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void bn_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* The CPU access every restore and ping-pong figure times: an atomic add,
 * a single locked instruction, so a revoked page takes exactly one (write)
 * fault. */
static inline void bn_touch(void *p)
{
	__atomic_fetch_add((uint64_t *)p, 1, __ATOMIC_SEQ_CST);
}

/* ---------------------------------------------------------------- samples */

/* Every sample of one figure and method, in nanoseconds (stats.c). */
struct bn_series {
	char group[16];
	char figure[40];
	char method[40];
	long param; /* pages, threads, bytes: what the figure varies */
	double *v;
	size_t n, cap;
	double *sorted; /* cache, rebuilt when n changed */
	size_t nsorted;
};

struct bn_series *bn_series_new(const char *group, const char *figure,
				const char *method, long param);
void bn_add(struct bn_series *s, double ns);
double bn_quantile(struct bn_series *s, double q); /* nearest rank */
static inline double bn_median(struct bn_series *s)
{
	return bn_quantile(s, 0.5);
}
static inline double bn_p99(struct bn_series *s)
{
	return bn_quantile(s, 0.99);
}
/* Every series of a group as CSV: group,figure,method,param,sample,ns */
int bn_write_samples(const char *group, const char *path);
/* The empirical CDF of a series, at most `points` points, gnuplot data */
void bn_write_cdf(FILE *f, struct bn_series *s, size_t points);
void bn_series_free_all(void);

/* ------------------------------------------------------------------ table */

enum bn_kind {
	BN_LAT,	 /* time per sample, lower is better */
	BN_RATE, /* `work` units per sample: shown as units/s, higher better */
	BN_VALUE /* one number (no samples) */
};

/* Adds a table row for s; base is the row of its baseline (-1: none, the
 * row is a baseline itself).  Returns the row's id. */
int bn_row(struct bn_series *s, enum bn_kind kind, double work,
	   const char *unit, int base);
int bn_row_value(const char *group, const char *figure, const char *method,
		 double value, const char *unit);
/* The row's figure at quantile q in its display unit (ns for BN_LAT,
 * units/s for BN_RATE), and its ratio to its baseline at the same q. */
double bn_row_at(int row, double q);
double bn_row_ratio(int row, double q);
struct bn_series *bn_row_series(int row);

/* One line at the end: "target NAME: MEASURED (goal GOAL) ok|MISSED" */
void bn_target(const char *name, const char *measured, const char *goal,
	       bool ok);
/* A free-form note printed under the table (why a figure is what it is) */
void bn_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* <out>/<file> */
const char *bn_path(char *buf, size_t size, const char *file);
/* A plot: `body` is gnuplot commands (titles, `plot ...` of data files the
 * group wrote with bn_path); the driver sets the terminal and the output
 * <out>/<name>.png and runs gnuplot once at the end. */
void bn_plot(const char *name, const char *body);

/* ----------------------------------------------------------------- groups */

int bn_run_revoke(void);
int bn_run_restore(void);
int bn_run_pingpong(void);
int bn_run_steady(void);
int bn_run_scale(void);
int bn_run_memory(void);
int bn_run_huge(void);
int bn_run_sweep(void);
int bn_run_device(void);

/* ------------------------------------------------------- shared pieces */

extern size_t bn_psize;

/* On failure: say why and `goto out` (every user has that label). */
#define BN_CHECK(cond, ...)                                                   \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "bench: " __VA_ARGS__);               \
			fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__);    \
			goto out;                                             \
		}                                                             \
	} while (0)

/* A memfd of len bytes (allocated: its pages are in the page cache) mapped
 * MAP_SHARED and populated; *fdp (if not NULL) keeps the memfd open. */
int bn_memfd_map(size_t len, int *fdp, void **pp);

/* A bare userfaultfd (no dxm), non-blocking, with UFFDIO_API done for
 * features: the strongest the process may open (userfaultfd(2), then
 * user-mode-only, then /dev/userfaultfd).  The fd, or -errno. */
int bn_open_uffd(uint64_t features);

/* A file descriptor for the file behind the mapping at addr (through
 * /proc/self/map_files, which needs CAP_SYS_ADMIN or
 * CAP_CHECKPOINT_RESTORE) and addr's offset in it.  The baselines use it
 * to map dxm's own memfd a second time, plainly (not registered, not
 * managed), so that they work on the very same physical pages as dxm:
 * how fragmented the pages of a memfd are changes the cost of zapping
 * 1 GiB by 1.5x.  -errno when not permitted. */
int bn_open_backing(const void *addr, off_t *offp);

/* The dxm resolution modes measured: one table entry per mode.  `bare` is
 * the bare-userfaultfd mode it is compared with (restore.c). */
struct bn_dxm_mode {
	const char *name;  /* "thread", "spin", "sigbus" */
	unsigned flags;	   /* DXM_CTX_* */
	const char *bare;  /* method name of the bare-uffd baseline */
	unsigned settle_us; /* after a block of faults, let a spinning
			       handler go back to sleep before the next
			       method is measured */
};
extern const struct bn_dxm_mode bn_dxm_modes[];
extern const size_t bn_n_dxm_modes;

int bn_ctx(struct dxm_ctx **ctxp, unsigned flags, unsigned handler_threads);

/* A notifier that behaves like a driver's: it ignores its own conversions
 * and otherwise takes the driver lock and calls dxm_notifier_set_seq(). */
struct bn_drv {
	pthread_mutex_t lock;
	struct dxm_notifier *n;
	atomic_ulong calls;
};
int bn_drv_attach(struct bn_drv *d, struct dxm_ctx *ctx, void *start,
		  size_t len);
void bn_drv_detach(struct bn_drv *d);

/*
 * Where the threads run.  On these small VMs a wake-up of a thread whose
 * CPU is idle costs far more than a switch on a busy CPU, so the latency
 * groups measure three placements: FREE (the scheduler decides; what a
 * program gets), SAME (every thread on one CPU: the software path alone)
 * and SPLIT (handler threads on one CPU, the benchmark thread on another:
 * every fault wakes a thread on the other CPU).  Threads inherit the
 * affinity of the thread that creates them: call bn_place_handlers()
 * before creating contexts and handler threads, bn_place_main() after,
 * and bn_place_end() when the pass is over.
 */
enum bn_place { BN_PLACE_FREE, BN_PLACE_SAME, BN_PLACE_SPLIT, BN_NPLACE };
extern const char *const bn_place_suffix[BN_NPLACE]; /* "", ", same CPU"... */
bool bn_place_ok(enum bn_place p);
int bn_place_handlers(enum bn_place p);
int bn_place_main(enum bn_place p);
void bn_place_end(enum bn_place p);

/* make_exclusive + exclusive_unlock of [p, p+len) with d as owner; every
 * page must convert. */
int bn_dxm_revoke(struct dxm_ctx *ctx, struct bn_drv *d, void *p, size_t len,
		  void **dev);

/* mprotect + SIGSEGV, the classic user-space alternative: a SIGSEGV in a
 * watched range makes the faulting page PROT_READ|PROT_WRITE again and
 * clears its `held` flag (the device is told), then the access restarts. */
int bn_mp_watch(void *start, size_t len, atomic_uchar *held);
void bn_mp_unwatch(void *start);

/* Signal handlers installed on top of whatever is there, chaining to it
 * for addresses that are not ours. */
int bn_sig_push(int sig, void (*fn)(int, siginfo_t *, void *),
		struct sigaction *old);
void bn_sig_pop(int sig, const struct sigaction *old);
void bn_sig_chain(const struct sigaction *old, int sig, siginfo_t *si,
		  void *uc);

/* The mirror's non-atomic read-modify-write engine, copied for the
 * baselines (a load, 32 pauses, a store). */
static inline uint64_t bn_rmw(volatile uint64_t *p, uint64_t delta)
{
	uint64_t v = *p;
	for (int i = 0; i < 32; i++)
		bn_relax();
	*p = v + delta;
	return v;
}

#endif /* DXM_BENCH_HARNESS_H */
