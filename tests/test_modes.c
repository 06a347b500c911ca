// SPDX-License-Identifier: MIT
/*
 * Fault-resolution modes: a blocking handler thread (default), a handler
 * that spins before sleeping (DXM_CTX_HANDLER_SPIN), and in-thread
 * resolution from SIGBUS (DXM_CTX_SIGBUS).  Each must give the same
 * guarantees: notifiers before the access completes, every device write
 * seen, no lost update under contention; SIGBUS mode's documented
 * differences are checked too.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

static const unsigned mode_flags[] = { 0, DXM_CTX_HANDLER_SPIN,
				       DXM_CTX_SIGBUS };

struct mode_kind {
	unsigned mode; /* index into mode_flags */
	enum mem_kind kind;
};

#define MODES_PARAMS                                                           \
	static struct mode_kind p[] = {                                        \
		{ 0, MEM_MEMFD }, { 1, MEM_MEMFD }, { 2, MEM_MEMFD },          \
		{ 1, MEM_ALIAS }, { 2, MEM_ALIAS }, { 1, MEM_ANON },           \
		{ 2, MEM_ANON },                                               \
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
	o.flags = 1u << 30;
	cr_assert_eq(dxm_ctx_create(&ctx, &o), -EINVAL);
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
