// SPDX-License-Identifier: MIT
/*
 * Fault-resolution modes: a handler thread that sleeps between faults
 * (default), one that always spins before sleeping (DXM_CTX_HANDLER_SPIN)
 * or spins in streams of faults (DXM_CTX_HANDLER_ADAPTIVE), and in-thread
 * resolution from SIGBUS (DXM_CTX_SIGBUS).  Each must give the same
 * guarantees: notifiers before the access completes, every device write
 * seen, no lost update under contention; SIGBUS mode's documented
 * differences are checked too.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

static const unsigned mode_flags[] = { 0, DXM_CTX_HANDLER_SPIN,
				       DXM_CTX_SIGBUS, DXM_CTX_HANDLER_ADAPTIVE };

struct mode_kind {
	unsigned mode; /* index into mode_flags */
	enum mem_kind kind;
};

#define MODES_PARAMS                                                           \
	static struct mode_kind p[] = {                                        \
		{ 0, MEM_MEMFD }, { 1, MEM_MEMFD }, { 2, MEM_MEMFD },          \
		{ 1, MEM_ALIAS }, { 2, MEM_ALIAS }, { 1, MEM_ANON },           \
		{ 2, MEM_ANON },  { 3, MEM_MEMFD }, { 3, MEM_ANON },           \
	};                                                                     \
	return cr_make_param_array(struct mode_kind, p,                        \
				   sizeof(p) / sizeof(p[0]))

static struct dxm_ctx *mode_ctx(unsigned mode)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .flags = mode_flags[mode] };
	return ctx_or_skip(&o);
}

/* The callback writes its mark through the device address; the CPU access
 * must see it: the notifier ran (and returned) before the access. */
static void *dev_of_page;
static int mark_hook(struct recorder *r, const struct dxm_range *range)
{
	(void)r;
	if (range->event == DXM_EVENT_CLEAR && dev_of_page)
		((volatile uint64_t *)dev_of_page)[1] = 0xc1ea7;
	return 0;
}

ParameterizedTestParameters(modes, restore_after_notifier) { MODES_PARAMS; }
ParameterizedTest(struct mode_kind *mk, modes, restore_after_notifier,
		  .timeout = 30)
{
	struct dxm_ctx *ctx = mode_ctx(mk->mode);
	struct mem m;
	mem_setup(ctx, mk->kind, 4 * PS, &m);
	static struct recorder rec;
	rec.hook = mark_hook;
	recorder_insert(ctx, &rec, m.base, 4 * PS);
	uint64_t *p = m.base;
	for (int round = 0; round < 50; round++) {
		void *dev[4];
		p[0] = (uint64_t)round;
		cr_assert_eq(dxm_make_exclusive(ctx, p, 4 * PS, &m, dev), 4);
		cr_assert_not(page_present(p));
		dev_of_page = dev[0];
		((volatile uint64_t *)dev[0])[0] += 1000; /* the device's write */
		dxm_exclusive_unlock(ctx, p, 4 * PS, dev);
		cr_assert_eq(p[0], (uint64_t)round + 1000);
		cr_assert_eq(p[1], 0xc1ea7, "the access completed before the "
					    "notifier ran");
		p[1] = 0;
		dev_of_page = NULL;
	}
	struct dxm_stats st;
	dxm_stats(ctx, &st, sizeof(st));
	cr_assert_geq(st.restores, 50);
	recorder_remove(&rec);
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* CPU threads and a device on the same counters: exact sums (contend,
 * common.c). */
ParameterizedTestParameters(modes, contention_no_lost_update) { MODES_PARAMS; }
ParameterizedTest(struct mode_kind *mk, modes, contention_no_lost_update,
		  .timeout = 60)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .flags = mode_flags[mk->mode] };
	contend(&o, mk->kind, 2, 1, 4000);
}

/* SIGBUS mode: a system call whose buffer is an exclusive page fails with
 * EFAULT and changes nothing (the kernel cannot raise SIGBUS for its own
 * access); dxm_range_fault is the remedy. */
Test(modes, sigbus_syscall_efault, .timeout = 30)
{
	struct dxm_ctx *ctx = mode_ctx(2);
	struct mem m;
	mem_setup(ctx, MEM_MEMFD, PS, &m);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	memset(m.base, 'x', PS);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, PS, &m, dev), 1);
	dxm_exclusive_unlock(ctx, m.base, PS, dev);
	errno = 0;
	cr_assert_eq(write(pfd[1], m.base, PS), -1);
	cr_assert_eq(errno, EFAULT);
	cr_assert(dxm_check_exclusive(ctx, m.base, PS, dev));
	cr_assert_eq(dxm_range_fault(ctx, m.base, PS, 0, NULL), 1);
	cr_assert_eq(write(pfd[1], m.base, PS), (ssize_t)PS);
	close(pfd[0]);
	close(pfd[1]);
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* SIGBUS mode shares the process's SIGBUS: one that is not a managed
 * page's reaches the program's own handler. */
static sigjmp_buf jb;
static volatile sig_atomic_t program_handler_ran;
static void program_sigbus(int sig)
{
	(void)sig;
	program_handler_ran = 1;
	siglongjmp(jb, 1);
}

Test(modes, sigbus_chains_to_program_handler, .timeout = 30)
{
	signal(SIGBUS, program_sigbus);
	struct dxm_ctx *ctx = mode_ctx(2);
	/* A real SIGBUS: a mapping past the end of its file. */
	int fd = memfd_create("t", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	char *p = mmap(NULL, PS, PROT_READ, MAP_SHARED, fd, 0);
	cr_assert_neq(p, MAP_FAILED);
	if (!sigsetjmp(jb, 1))
		(void)*(volatile char *)p;
	cr_assert(program_handler_ran, "the program's SIGBUS handler did not "
				       "run");
	/* And managed pages still resolve. */
	struct mem m;
	mem_setup(ctx, MEM_MEMFD, PS, &m);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, PS, &m, dev), 1);
	*(uint64_t *)dev[0] = 77;
	dxm_exclusive_unlock(ctx, m.base, PS, dev);
	cr_assert_eq(*(uint64_t *)m.base, 77);
	mem_teardown(&m);
	munmap(p, PS);
	close(fd);
	dxm_ctx_destroy(ctx);
}

Test(modes, bad_flag_combinations, .timeout = 30)
{
	struct dxm_ctx *ctx;
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .flags = DXM_CTX_SIGBUS |
					   DXM_CTX_REQUIRE_KERNEL_FAULTS };
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL);
	o.flags = DXM_CTX_HANDLER_SPIN | DXM_CTX_HANDLER_ADAPTIVE;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL);
	o.flags = 1u << 30;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL);
}

/* ----------------------------------------------------- adaptive spinning */

/* The kernel thread id of handler thread "dxm-fault/0". */
static pid_t handler0_tid(void)
{
	pid_t tid = 0;
	threads_named("dxm-fault/0\n", &tid, 1);
	cr_assert(tid, "no thread dxm-fault/0");
	return tid;
}

/* Times thread tid went to sleep (voluntary context switches). */
static unsigned long sleeps_of(pid_t tid)
{
	char path[64], line[128];
	unsigned long v = 0;
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	FILE *f = fopen(path, "r");
	cr_assert(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "voluntary_ctxt_switches: %lu", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* Nanoseconds thread tid has run on a CPU. */
static unsigned long long cpu_ns_of(pid_t tid)
{
	char path[64];
	unsigned long long ns = 0;
	snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat", tid);
	FILE *f = fopen(path, "r");
	cr_assert(f);
	cr_assert_eq(fscanf(f, "%llu", &ns), 1);
	fclose(f);
	return ns;
}

#define STREAM 200

/* A context whose faults each give back one page, with a region of
 * STREAM pages that a device has made exclusive. */
static struct dxm_ctx *stream_setup(unsigned flags, void **p)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .flags = flags,
				  .spin_us = 20000,
				  .restore_around = 1 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	size_t ps = (size_t)getpagesize();
	cr_assert_eq(dxm_alloc(ctx, STREAM * ps, 0, p), 0);
	for (size_t i = 0; i < STREAM; i++)
		wr((char *)*p + i * ps, i);
	return ctx;
}

/* STREAM CPU faults one after the other, each on the next page of p, 2 ms
 * apart (far less than spin_us, far more than a loaded machine takes to
 * put a thread to sleep), none of them made exclusive again in between
 * (convert: each page is made exclusive again just before its fault): how
 * often the handler thread slept, per fault. */
static double sleeps_per_fault(struct dxm_ctx *ctx, char *p, bool convert)
{
	static int owner;
	size_t ps = (size_t)getpagesize();
	void *dev[STREAM];
	if (!convert) {
		cr_assert_eq(dxm_make_exclusive(ctx, p, STREAM * ps, &owner,
						dev),
			     STREAM);
		dxm_exclusive_unlock(ctx, p, STREAM * ps, dev);
	}
	pid_t tid = handler0_tid();
	unsigned long s0 = sleeps_of(tid);
	for (size_t i = 0; i < STREAM; i++) {
		if (convert) {
			cr_assert_eq(dxm_make_exclusive(ctx, p + i * ps, ps,
							&owner, dev),
				     1);
			dxm_exclusive_unlock(ctx, p + i * ps, ps, dev);
		}
		usleep(2000);
		cr_assert_eq(rd(p + i * ps), (uint64_t)i);
	}
	return (double)(sleeps_of(tid) - s0) / STREAM;
}

/* DXM_CTX_HANDLER_ADAPTIVE: a handler that served a fault soon after the
 * one before keeps reading for spin_us, so a stream of faults (a read-back)
 * finds it awake.  Once they stop, it sleeps: no CPU burnt when idle.
 * (spin_us is 20 ms here so that a loaded machine cannot make it miss.) */
Test(modes, adaptive_handler_spins_in_a_stream_of_faults, .timeout = 30)
{
	void *p;
	struct dxm_ctx *ctx = stream_setup(DXM_CTX_HANDLER_ADAPTIVE, &p);
	double z = sleeps_per_fault(ctx, p, false);
	cr_assert_lt(z, 0.5, "the handler slept %.2f times per fault", z);
	pid_t tid = handler0_tid();
	usleep(100000); /* past spin_us: it must be asleep now */
	unsigned long long c0 = cpu_ns_of(tid);
	usleep(200000);
	unsigned long long used = cpu_ns_of(tid) - c0;
	cr_assert_lt(used, 20000000ull,
		     "an idle handler ran %llu us in 200 ms", used / 1000);
	dxm_ctx_destroy(ctx);
}

/* ... but a conversion between two faults ends its spin (a spinning thread
 * of the process makes the conversion's TLB flush interrupt its CPU), and
 * a device and the CPU taking turns find it asleep, as by default. */
Test(modes, adaptive_handler_sleeps_between_conversions, .timeout = 30)
{
	void *p;
	struct dxm_ctx *ctx = stream_setup(DXM_CTX_HANDLER_ADAPTIVE, &p);
	double z = sleeps_per_fault(ctx, p, true);
	cr_assert_geq(z, 0.5, "the handler slept %.2f times per fault", z);
	dxm_ctx_destroy(ctx);
}

/* By default the handler goes back to sleep after every batch, so each
 * of these faults wakes it. */
Test(modes, default_handler_sleeps_after_every_fault, .timeout = 30)
{
	void *p;
	struct dxm_ctx *ctx = stream_setup(0, &p);
	double z = sleeps_per_fault(ctx, p, false);
	cr_assert_geq(z, 0.5, "the handler slept %.2f times per fault", z);
	dxm_ctx_destroy(ctx);
}

/* SIGBUS mode: a SIGBUS sent by kill(2) is not a fault to resolve; with
 * the default disposition the process dies of it, as without dxm. */
Test(modes, sigbus_kill_keeps_default_action, .timeout = 30,
     .signal = SIGBUS)
{
	struct dxm_ctx *ctx = mode_ctx(2);
	(void)ctx;
	kill(getpid(), SIGBUS);
	for (int i = 0; i < 100; i++)
		usleep(10000);
}
