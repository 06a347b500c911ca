// SPDX-License-Identifier: MIT
/*
 * dxm - the command-line tool.
 *
 *   dxm demo [--cpu-threads T] [--ops N] [--pages P]
 *       CPU threads do atomic increments on counters while the reference
 *       device does its non-atomic increments on the same counters: once
 *       through ordinary device access (updates are lost, and it says how
 *       many), once with exclusive access (none lost).
 *   dxm info
 *       What this kernel and this user get: userfaultfd mode and features.
 *   dxm bench [--quick] [--out DIR] [--only GROUP]
 *       Every measurement side by side with its baseline (bench/README.md).
 *   dxm stress [--seconds N] [--threads T] [--devices D] [--seed S]
 *       Random work on shared regions with invariants checked throughout.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "dxm.h"
#include "dxm_mirror.h"
#include "stress.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *mode_str(unsigned mode)
{
	switch (mode) {
	case DXM_UFFD_DEV:
		return "/dev/userfaultfd";
	case DXM_UFFD_SYSCALL:
		return "userfaultfd(2)";
	case DXM_UFFD_USER_ONLY:
		return "userfaultfd(2), user-mode only";
	default:
		return "?";
	}
}

/* ------------------------------------------------------------------ demo */

struct demo {
	struct dxm_ctx *ctx;
	struct dxm_mirror *mirror;
	uint64_t **counter; /* one per page, at the start of the page */
	unsigned ncounters;
	unsigned long ops;
	bool exclusive;
	atomic_int go, device_done;
	atomic_ulong cpu_incs;
	int err;
};

static void *cpu_thread(void *arg)
{
	struct demo *d = arg;
	unsigned long i = 0;
	while (!atomic_load(&d->go))
		;
	/* Keep going while the device works, so that the two overlap. */
	for (; i < d->ops || !atomic_load(&d->device_done); i++)
		__atomic_fetch_add(d->counter[i % d->ncounters], 1,
				   __ATOMIC_SEQ_CST);
	atomic_fetch_add(&d->cpu_incs, i);
	return NULL;
}

static void *device_thread(void *arg)
{
	struct demo *d = arg;
	while (!atomic_load(&d->go))
		;
	for (unsigned long i = 0; i < d->ops && !d->err; i++) {
		uint64_t *c = d->counter[i % d->ncounters];
		d->err = d->exclusive ? dxm_mirror_atomic_add(d->mirror, c, 1,
							      NULL)
				      : dxm_mirror_racy_add(d->mirror, c, 1);
	}
	atomic_store(&d->device_done, 1);
	return NULL;
}

static int run_round(struct demo *d, unsigned threads, bool exclusive)
{
	struct dxm_stats before, after;
	d->exclusive = exclusive;
	d->err = 0;
	atomic_store(&d->go, 0);
	atomic_store(&d->device_done, 0);
	atomic_store(&d->cpu_incs, 0);
	for (unsigned i = 0; i < d->ncounters; i++)
		*d->counter[i] = 0;
	dxm_mirror_flush(d->mirror);
	dxm_stats(d->ctx, &before, sizeof(before));

	pthread_t tid[65];
	for (unsigned i = 0; i < threads; i++)
		pthread_create(&tid[i], NULL, cpu_thread, d);
	pthread_create(&tid[threads], NULL, device_thread, d);
	double t0 = now_s();
	atomic_store(&d->go, 1);
	for (unsigned i = 0; i <= threads; i++)
		pthread_join(tid[i], NULL);
	double dt = now_s() - t0;
	if (d->err) {
		fprintf(stderr, "device error: %s\n", strerror(-d->err));
		return d->err;
	}
	dxm_stats(d->ctx, &after, sizeof(after));

	uint64_t sum = 0;
	for (unsigned i = 0; i < d->ncounters; i++)
		sum += *d->counter[i];
	uint64_t expect = atomic_load(&d->cpu_incs) + d->ops;
	uint64_t lost = expect - sum;
	uint64_t faults = after.cpu_faults - before.cpu_faults;
	uint64_t nfy = after.notifier_ns - before.notifier_ns;

	printf("%s device access:\n",
	       exclusive ? "with exclusive" : "without exclusive (ordinary)");
	printf("  increments expected %llu, counted %llu: %llu lost%s\n",
	       (unsigned long long)expect, (unsigned long long)sum,
	       (unsigned long long)lost,
	       lost ? " (the device's read-modify-write raced the CPU)" : "");
	printf("  time %.3f s; revocations %llu (%llu pages), CPU faults "
	       "resolved %llu (%llu deferred), pages given back %llu\n",
	       dt,
	       (unsigned long long)(after.conversions - before.conversions),
	       (unsigned long long)(after.pages_converted -
				    before.pages_converted),
	       (unsigned long long)faults,
	       (unsigned long long)(after.deferred_faults -
				    before.deferred_faults),
	       (unsigned long long)(after.restores - before.restores));
	printf("  notifier callbacks %llu, %.1f us in them; %.1f us per CPU "
	       "fault over the round\n",
	       (unsigned long long)(after.notifier_calls -
				    before.notifier_calls),
	       (double)nfy / 1e3, faults ? dt * 1e6 / (double)faults : 0.0);
	return exclusive && lost ? 1 : 0;
}

static int cmd_demo(int argc, char **argv)
{
	unsigned threads = 2, pages = 4;
	unsigned long ops = 20000;
	static const struct option lo[] = {
		{ "cpu-threads", required_argument, NULL, 't' },
		{ "ops", required_argument, NULL, 'n' },
		{ "pages", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "t:n:p:h", lo, NULL)) != -1) {
		switch (c) {
		case 't':
			threads = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'n':
			ops = strtoul(optarg, NULL, 0);
			break;
		case 'p':
			pages = (unsigned)strtoul(optarg, NULL, 0);
			break;
		default:
			printf("usage: dxm demo [--cpu-threads T] [--ops N] "
			       "[--pages P]\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (!threads || threads > 64 || !pages || pages > 4096 || !ops) {
		fprintf(stderr, "dxm demo: 1-64 threads, 1-4096 pages, ops > 0\n");
		return 2;
	}

	struct demo d = { .ops = ops, .ncounters = pages };
	int err = dxm_ctx_create(&d.ctx, NULL);
	if (err) {
		fprintf(stderr, "dxm demo: cannot create a context: %s\n",
			strerror(-err));
		return 1;
	}
	long psize = sysconf(_SC_PAGESIZE);
	char *mem;
	err = dxm_alloc(d.ctx, (size_t)pages * (size_t)psize, 0, (void **)&mem);
	if (!err)
		err = dxm_mirror_create(d.ctx, &d.mirror);
	if (err) {
		fprintf(stderr, "dxm demo: %s\n", strerror(-err));
		return 1;
	}
	d.counter = calloc(pages, sizeof(*d.counter));
	for (unsigned i = 0; i < pages; i++)
		d.counter[i] = (uint64_t *)(mem + (size_t)i * (size_t)psize);

	struct dxm_stats st;
	dxm_stats(d.ctx, &st, sizeof(st));
	printf("dxm demo: %u CPU threads (atomic increments) and 1 device "
	       "(%lu non-atomic increments) on %u counters, one per page\n",
	       threads, ops, pages);
	printf("userfaultfd: %s; %u handler thread(s)\n\n",
	       mode_str(st.uffd_mode), st.handler_threads);

	int rc = run_round(&d, threads, false);
	printf("\n");
	if (rc >= 0)
		rc = run_round(&d, threads, true);

	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(d.mirror, &ms);
	if (ms.stale_accesses) {
		fprintf(stderr, "dxm demo: %llu device accesses to pages dxm "
				"no longer held exclusive!\n",
			(unsigned long long)ms.stale_accesses);
		rc = 1;
	}
	printf("\n%s\n", rc == 0 ? "no update lost with exclusive access"
				  : "FAILED: updates lost with exclusive access");
	dxm_mirror_destroy(d.mirror);
	dxm_free(d.ctx, mem);
	dxm_ctx_destroy(d.ctx);
	free(d.counter);
	return rc ? 1 : 0;
}

/* ------------------------------------------------------------------ info */

static int cmd_info(void)
{
	struct dxm_ctx *ctx;
	int err = dxm_ctx_create(&ctx, NULL);
	if (err) {
		printf("dxm cannot run here: %s\n", strerror(-err));
		return 1;
	}
	struct dxm_stats st;
	dxm_stats(ctx, &st, sizeof(st));
	printf("userfaultfd mode: %s\n", mode_str(st.uffd_mode));
	printf("system calls on exclusive pages: %s\n",
	       st.uffd_mode == DXM_UFFD_USER_ONLY
		       ? "fail with EFAULT (call dxm_range_fault first)"
		       : "resolved");
	printf("features enabled: %#llx\n",
	       (unsigned long long)st.uffd_features);
	printf("handler threads: %u\n", st.handler_threads);
	dxm_ctx_destroy(ctx);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dxm <command> [options]\n"
		   "  demo   lost updates without exclusive access, none with it\n"
		   "  info   what userfaultfd this process gets\n"
		   "  bench  measurements against their baselines (--quick)\n"
		   "  stress random concurrent work, invariants checked\n");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "demo"))
		return cmd_demo(argc - 1, argv + 1);
	if (!strcmp(argv[1], "info"))
		return cmd_info();
	if (!strcmp(argv[1], "bench"))
		return bench_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "stress"))
		return stress_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "dxm: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
