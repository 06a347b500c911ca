// SPDX-License-Identifier: MIT
/*
 * Restore latency: a CPU thread touches (an atomic add) a page the CPU has
 * lost, and the time until the access completes is one sample.
 *
 *   dxm <mode>        the page was made exclusive (dxm_make_exclusive +
 *                     dxm_exclusive_unlock) with a driver-like notifier on
 *                     the region; the touch faults to dxm, which runs the
 *                     notifier (DXM_EVENT_CLEAR) and restores the mapping.
 *                     One entry per dxm resolution mode (bn_dxm_modes).
 *   uffd thread       a bare userfaultfd, no dxm logic: a memfd mapping
 *                     registered MINOR, revoked with MADV_DONTNEED; a handler
 *                     thread sleeps in poll(), read()s the message and
 *                     resolves it with UFFDIO_CONTINUE.
 *   uffd spin         the same handler, but after each message it keeps
 *                     polling with non-blocking read()s (and sched_yield()
 *                     in between) for SPIN_US before it goes back to sleep
 *                     in poll().
 *   uffd sigbus       UFFD_FEATURE_SIGBUS: no handler thread; the faulting
 *                     thread gets SIGBUS and issues UFFDIO_CONTINUE itself.
 *   minor fault       the plain kernel: MADV_DONTNEED of a memfd mapping,
 *                     the touch is an ordinary minor fault (no userfaultfd).
 *   mprotect+SIGSEGV  mprotect(PROT_NONE) of a one-page VMA; the touch
 *                     raises SIGSEGV and the handler mprotect()s it back.
 *                     The target compares with this, the cheapest case.
 *   mprotect+SIGSEGV, 16-page VMA
 *                     the same on the middle page of a 16-page mapping:
 *                     what a program protecting pages of a buffer pays
 *                     (the VMA is split in three, then merged back).
 *
 * Methods run in blocks of BLOCK touches, in a rotating order, round after
 * round; the first touch of every block is dropped (the warm-up that lets
 * a spinning handler start spinning; dropped for every method alike).
 * After a block, a spinning handler is let go back to sleep before the next
 * method runs, so that it does not compete for the 2 CPUs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "harness.h"
#include "hist.h"

#define BLOCK 16
#define SPIN_US 200
#define REGION_PAGES 16

/* ------------------------------------------------ the bare userfaultfd */

enum bare_mode { BARE_THREAD, BARE_SPIN, BARE_SIGBUS };

struct bare {
	enum bare_mode mode;
	int uffd, fd, stop_fd;
	char *map;
	size_t len;
	pthread_t thr;
	bool started;
	atomic_bool stop;
	atomic_int spinning;
	atomic_ulong faults;
};

/* UFFDIO_CONTINUE of one page; a page already there only needs a wake. */
static void bare_continue(int uffd, uintptr_t page)
{
	struct uffdio_continue c = {
		.range = { .start = page, .len = bn_psize },
	};
	if (ioctl(uffd, UFFDIO_CONTINUE, &c) && errno == EEXIST) {
		struct uffdio_range r = { .start = page, .len = bn_psize };
		ioctl(uffd, UFFDIO_WAKE, &r);
	}
}

/* Reads one batch of messages and resolves them; returns how many. */
static int bare_handle(struct bare *b)
{
	struct uffd_msg msg[16];
	ssize_t got = read(b->uffd, msg, sizeof(msg));
	if (got <= 0)
		return 0;
	int n = (int)(got / (ssize_t)sizeof(msg[0]));
	for (int i = 0; i < n; i++)
		if (msg[i].event == UFFD_EVENT_PAGEFAULT) {
			bare_continue(b->uffd,
				      msg[i].arg.pagefault.address &
					      ~(uint64_t)(bn_psize - 1));
			atomic_fetch_add(&b->faults, 1);
		}
	return n;
}

static void *bare_thread(void *arg)
{
	struct bare *b = arg;
	struct pollfd pfd[2] = {
		{ .fd = b->uffd, .events = POLLIN },
		{ .fd = b->stop_fd, .events = POLLIN },
	};
	for (;;) {
		if (b->mode == BARE_SPIN) {
			uint64_t until = bn_now() + SPIN_US * 1000ull;
			atomic_store(&b->spinning, 1);
			while (bn_now() < until && !atomic_load(&b->stop)) {
				/* sched_yield(): on 2 CPUs the faulting
				 * thread may be waiting for this one's CPU */
				if (bare_handle(b))
					until = bn_now() + SPIN_US * 1000ull;
				else
					sched_yield();
			}
			atomic_store(&b->spinning, 0);
		}
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[1].revents || atomic_load(&b->stop))
			break;
		if (pfd[0].revents & POLLIN)
			bare_handle(b);
	}
	return NULL;
}

static struct bare *sigbus_bare;
static struct sigaction old_sigbus;

static void bare_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	struct bare *b = sigbus_bare;
	uintptr_t a = (uintptr_t)si->si_addr;
	if (b && a >= (uintptr_t)b->map && a < (uintptr_t)b->map + b->len) {
		bare_continue(b->uffd, a & ~(uintptr_t)(bn_psize - 1));
		atomic_fetch_add(&b->faults, 1);
		errno = saved;
		return;
	}
	errno = saved;
	bn_sig_chain(&old_sigbus, sig, si, uc);
}

static int bare_setup(struct bare *b, enum bare_mode mode)
{
	memset(b, 0, sizeof(*b));
	b->mode = mode;
	b->uffd = b->fd = b->stop_fd = -1;
	b->len = REGION_PAGES * bn_psize;
	void *p;
	int err = bn_memfd_map(b->len, &b->fd, &p);
	if (err)
		return err;
	b->map = p;
	uint64_t feat = UFFD_FEATURE_MINOR_SHMEM;
	if (mode == BARE_SIGBUS)
		feat |= UFFD_FEATURE_SIGBUS;
	b->uffd = bn_open_uffd(feat);
	if (b->uffd < 0)
		return b->uffd;
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)b->map, .len = b->len },
		.mode = UFFDIO_REGISTER_MODE_MINOR,
	};
	if (ioctl(b->uffd, UFFDIO_REGISTER, &reg))
		return -errno;
	if (mode == BARE_SIGBUS)
		return 0;
	b->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->stop_fd < 0)
		return -errno;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = -pthread_create(&b->thr, NULL, bare_thread, b);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		return err;
	b->started = true;
	pthread_setname_np(b->thr, mode == BARE_SPIN ? "bench-uffd-spin"
						     : "bench-uffd");
	return 0;
}

static void bare_teardown(struct bare *b)
{
	if (b->started) {
		uint64_t one = 1;
		atomic_store(&b->stop, true);
		if (write(b->stop_fd, &one, sizeof(one)) < 0)
			perror("bench: eventfd");
		pthread_join(b->thr, NULL);
	}
	if (b->stop_fd >= 0)
		close(b->stop_fd);
	if (b->uffd >= 0)
		close(b->uffd);
	if (b->map)
		munmap(b->map, b->len);
	if (b->fd >= 0)
		close(b->fd);
}

/* Let a spinning bare handler go back to sleep (it stops within SPIN_US). */
static void bare_settle(struct bare *b)
{
	uint64_t until = bn_now() + 100 * 1000 * 1000ull;
	while (atomic_load(&b->spinning) && bn_now() < until)
		usleep(50);
}

/* ---------------------------------------------------------- the methods */

enum kind { K_MINOR, K_BARE, K_MPROT, K_DXM };

struct rmeth {
	char name[40];
	enum kind kind;
	struct bare bare;		   /* K_BARE */
	const struct bn_dxm_mode *mode;	   /* K_DXM */
	struct dxm_ctx *ctx;
	struct bn_drv drv;
	void *region;
	char *page;			   /* what is revoked and touched */
	int fd;				   /* K_MINOR, K_MPROT */
	size_t maplen;			   /* K_MINOR, K_MPROT */
	atomic_uchar held;		   /* K_MPROT */
	uint64_t touches;
	struct bn_series *s;
	int row;
};

static int take_away(struct rmeth *m)
{
	void *dev[1];
	switch (m->kind) {
	case K_DXM:
		return bn_dxm_revoke(m->ctx, &m->drv, m->page, bn_psize, dev);
	case K_MPROT:
		atomic_store(&m->held, 1);
		return mprotect(m->page, bn_psize, PROT_NONE) ? -errno : 0;
	default:
		return madvise(m->page, bn_psize, MADV_DONTNEED) ? -errno : 0;
	}
}

static int setup(struct rmeth *m)
{
	int err;
	m->fd = -1;
	switch (m->kind) {
	case K_DXM:
		err = bn_ctx(&m->ctx, m->mode->flags, 0);
		if (!err)
			err = dxm_alloc(m->ctx, REGION_PAGES * bn_psize, 0,
					&m->region);
		if (!err)
			err = bn_drv_attach(&m->drv, m->ctx, m->region,
					    REGION_PAGES * bn_psize);
		m->page = m->region;
		return err;
	case K_BARE:
		m->page = m->bare.map;
		return 0; /* set up by the caller */
	case K_MINOR:
		m->maplen = REGION_PAGES * bn_psize;
		err = bn_memfd_map(m->maplen, &m->fd, &m->region);
		m->page = m->region;
		return err;
	case K_MPROT:
		/* maplen == one page: a VMA of its own, the cheapest case for
		 * mprotect.  Otherwise a page in the middle of a bigger VMA,
		 * which mprotect splits in three and merges back. */
		err = bn_memfd_map(m->maplen, &m->fd, &m->region);
		if (err)
			return err;
		m->page = (char *)m->region +
			  (m->maplen / bn_psize / 2) * bn_psize;
		return bn_mp_watch(m->page, bn_psize, &m->held);
	}
	return -EINVAL;
}

/* dxm's own restore-latency histogram, per mode, over every pass. */
static uint64_t mode_hist[8][DXM_STATS_HIST];

static void teardown(struct rmeth *m)
{
	switch (m->kind) {
	case K_DXM:
		if (!m->ctx)
			return;
		struct dxm_stats s;
		size_t mi = (size_t)(m->mode - bn_dxm_modes);
		if (!dxm_stats(m->ctx, &s, sizeof(s)) && mi < 8)
			for (int i = 0; i < DXM_STATS_HIST; i++)
				mode_hist[mi][i] += s.restore_us[i];
		bn_drv_detach(&m->drv);
		if (m->region)
			dxm_free(m->ctx, m->region);
		dxm_ctx_destroy(m->ctx);
		return;
	case K_BARE:
		bare_teardown(&m->bare);
		return;
	case K_MPROT:
		if (m->region)
			bn_mp_unwatch(m->page);
		/* fall through */
	case K_MINOR:
		if (m->region)
			munmap(m->region, m->maplen);
		if (m->fd >= 0)
			close(m->fd);
		return;
	}
}

#define MAX_MODES 8
static struct {
	int dxm[MAX_MODES]; /* row of each bn_dxm_modes entry */
	int bare[3];	    /* uffd thread, spin, sigbus */
	int mprot;
	bool done;
} pass_rows[BN_NPLACE];

static int restore_pass(enum bn_place place)
{
	static const char *const plots[BN_NPLACE] = {
		"restore_cdf", "restore_cdf_same", "restore_cdf_split"
	};
	char figure[40];
	snprintf(figure, sizeof(figure), "restore latency%s",
		 bn_place_suffix[place]);
	const char *plot = plots[place];
	const size_t nmeth = 6 + bn_n_dxm_modes;
	struct rmeth *meth = calloc(nmeth, sizeof(*meth));
	size_t n = 0;
	int ret = -1;
	bool sigbus_pushed = false;
	if (!meth)
		return -1;

	/* Table order: the kernel's own fault first (the reference of the
	 * baselines), the bare-uffd modes, mprotect, then dxm's modes (each
	 * against the bare handler that resolves faults the same way). */
	struct rmeth *minor = &meth[n++];
	snprintf(minor->name, sizeof(minor->name), "minor fault");
	minor->kind = K_MINOR;
	static const char *bare_names[] = { "uffd thread", "uffd spin",
					    "uffd sigbus" };
	struct rmeth *bare[3];
	for (int i = 0; i < 3; i++) {
		bare[i] = &meth[n++];
		snprintf(bare[i]->name, sizeof(bare[i]->name), "%s",
			 bare_names[i]);
		bare[i]->kind = K_BARE;
	}
	struct rmeth *mprot = &meth[n++];
	snprintf(mprot->name, sizeof(mprot->name), "mprotect+SIGSEGV");
	mprot->kind = K_MPROT;
	mprot->maplen = bn_psize;
	struct rmeth *mprot16 = &meth[n++];
	snprintf(mprot16->name, sizeof(mprot16->name),
		 "mprotect+SIGSEGV, 16-page VMA");
	mprot16->kind = K_MPROT;
	mprot16->maplen = REGION_PAGES * bn_psize;
	for (size_t i = 0; i < bn_n_dxm_modes; i++) {
		struct rmeth *m = &meth[n++];
		snprintf(m->name, sizeof(m->name), "dxm %s",
			 bn_dxm_modes[i].name);
		m->kind = K_DXM;
		m->mode = &bn_dxm_modes[i];
	}

	for (size_t i = 0; i < n; i++) {
		meth[i].fd = -1;
		meth[i].bare.uffd = meth[i].bare.fd = meth[i].bare.stop_fd = -1;
	}

	/* dxm contexts first, so that our SIGBUS handler sits on top of any
	 * handler a dxm mode installs and hands it what is not ours. */
	if (bn_place_handlers(place))
		goto out;
	for (size_t i = 0; i < n; i++)
		if (meth[i].kind == K_DXM && setup(&meth[i])) {
			fprintf(stderr, "bench: cannot set up %s\n",
				meth[i].name);
			goto out;
		}
	for (int i = 0; i < 3; i++) {
		int err = bare_setup(&bare[i]->bare, (enum bare_mode)i);
		if (err) {
			fprintf(stderr, "bench: bare userfaultfd (%s): %s\n",
				bare_names[i], strerror(-err));
			goto out;
		}
	}
	sigbus_bare = &bare[BARE_SIGBUS]->bare;
	if (bn_sig_push(SIGBUS, bare_sigbus, &old_sigbus))
		goto out;
	sigbus_pushed = true;
	for (size_t i = 0; i < n; i++)
		if (meth[i].kind != K_DXM && setup(&meth[i])) {
			fprintf(stderr, "bench: cannot set up %s\n",
				meth[i].name);
			goto out;
		}
	if (bn_place_main(place))
		goto out;

	for (size_t i = 0; i < n; i++) {
		struct rmeth *m = &meth[i];
		m->s = bn_series_new("restore", figure, m->name, 1);
		if (!m->s)
			goto out;
		int base = -1;
		if (m->kind == K_BARE || m->kind == K_MPROT)
			base = minor->row;
		if (m->kind == K_DXM)
			for (int b = 0; b < 3; b++)
				if (!strcmp(bare[b]->name, m->mode->bare))
					base = bare[b]->row;
		m->row = bn_row(m->s, BN_LAT, 1, "latency", base);
	}

	bare_settle(&bare[BARE_SPIN]->bare);
	size_t rounds = bn_n(1500, 60);
	for (size_t r = 0; r < rounds; r++) {
		for (size_t k = 0; k < n; k++) {
			struct rmeth *m = &meth[(k + r) % n];
			for (int j = 0; j < BLOCK; j++) {
				int err = take_away(m);
				BN_CHECK(!err, "revoke (%s): %s", m->name,
					 strerror(-err));
				uint64_t t0 = bn_now();
				bn_touch(m->page);
				uint64_t t1 = bn_now();
				m->touches++;
				if (j)
					bn_add(m->s, (double)(t1 - t0));
			}
			if (m->kind == K_BARE)
				bare_settle(&m->bare);
			if (m->kind == K_DXM && m->mode->settle_us)
				usleep(m->mode->settle_us);
		}
	}

	/* Every touch landed, exactly once, on the page it was meant for. */
	for (size_t i = 0; i < n; i++)
		BN_CHECK(*(volatile uint64_t *)meth[i].page == meth[i].touches,
			 "%s: the page holds %lu after %lu touches",
			 meth[i].name,
			 (unsigned long)*(volatile uint64_t *)meth[i].page,
			 (unsigned long)meth[i].touches);
	for (int i = 0; i < 3; i++)
		BN_CHECK(atomic_load(&bare[i]->bare.faults) ==
				 bare[i]->touches,
			 "%s: %lu faults for %lu touches", bare[i]->name,
			 atomic_load(&bare[i]->bare.faults),
			 (unsigned long)bare[i]->touches);

	/* Rows for the targets (bn_run_restore). */
	for (size_t i = 0, k = 0; i < n; i++)
		if (meth[i].kind == K_DXM && k < MAX_MODES)
			pass_rows[place].dxm[k++] = meth[i].row;
	for (int i = 0; i < 3; i++)
		pass_rows[place].bare[i] = bare[i]->row;
	pass_rows[place].mprot = mprot->row;
	pass_rows[place].done = true;

	/* The CDFs, one line per method. */
	char path[512];
	char file[64];
	snprintf(file, sizeof(file), "%s.dat", plot);
	FILE *f = fopen(bn_path(path, sizeof(path), file), "w");
	if (f) {
		for (size_t i = 0; i < n; i++) {
			fprintf(f, "# %s\n", meth[i].name);
			bn_write_cdf(f, meth[i].s, 2000);
			fprintf(f, "\n\n");
		}
		fclose(f);
		char body[4096];
		int off = snprintf(body, sizeof(body),
				   "set title 'Restore latency: CPU touch of a "
				   "revoked page until the access completes%s'\n"
				   "set xlabel 'latency (us)'\n"
				   "set ylabel 'fraction of touches'\n"
				   "set logscale x\nset yrange [0:1]\n"
				   "set key bottom right\nset grid\n"
				   "plot ",
				   place == BN_PLACE_SAME
					   ? " (every thread on one CPU)"
				   : place == BN_PLACE_SPLIT
					   ? " (handlers on the other CPU)"
					   : "");
		for (size_t i = 0; i < n && off < (int)sizeof(body); i++)
			off += snprintf(body + off, sizeof(body) - (size_t)off,
					"%s'%s' index %zu u 1:2 w l lw 2 t '%s'",
					i ? ", " : "", path, i, meth[i].name);
		if (off < (int)sizeof(body) - 1) {
			strcat(body, "\n");
			bn_plot(plot, body);
		}
	}
	ret = 0;
out:
	for (size_t i = 0; i < n; i++)
		if (meth[i].kind == K_BARE || meth[i].kind == K_MPROT ||
		    meth[i].kind == K_MINOR)
			teardown(&meth[i]);
	if (sigbus_pushed)
		bn_sig_pop(SIGBUS, &old_sigbus);
	sigbus_bare = NULL;
	for (size_t i = 0; i < n; i++)
		if (meth[i].kind == K_DXM)
			teardown(&meth[i]);
	bn_place_end(place);
	free(meth);
	return ret;
}

/*
 * Targets.  They are judged on the pinned passes only: with FREE placement
 * each handler thread settles, for a whole run, either on the faulting
 * thread's CPU (~4 us) or on the other one (~50 us), independently of the
 * other handlers, so a ratio between two methods there can be 10x either
 * way by luck.  Each dxm mode must be within 1.25x of the bare handler of
 * the same mode in both pinned placements (the worse ratio is reported);
 * dxm's best mode, in its best placement, must beat mprotect+SIGSEGV
 * measured in the same pass.
 */
/* Across CPUs over the same CPU, at p50, of row kind *rows[k]. */
static double split_over_same(const int *same, const int *split, int k)
{
	return bn_row_at(split[k], 0.5) / bn_row_at(same[k], 0.5);
}

/*
 * The default mode across CPUs: at most 2x its own same-CPU p50.  What
 * is left across CPUs once the handler is awake is the faulting thread's
 * own CPU going idle while it waits; the bare handlers' ratios, printed
 * beside, show what this machine charges for that.
 */
static void split_target(void)
{
	if (!pass_rows[BN_PLACE_SAME].done || !pass_rows[BN_PLACE_SPLIT].done)
		return;
	const int *same = pass_rows[BN_PLACE_SAME].dxm,
		  *split = pass_rows[BN_PLACE_SPLIT].dxm;
	double x = split_over_same(same, split, 0);
	char meas[32];
	snprintf(meas, sizeof(meas), "%.2fx", x);
	bn_target("restore_default_split_vs_same", meas,
		  "<= 2x the same-CPU p50, default mode", x <= 2.0);
	same = pass_rows[BN_PLACE_SAME].bare;
	split = pass_rows[BN_PLACE_SPLIT].bare;
	bn_note("restore: across CPUs over the same CPU at p50: bare uffd "
		"thread %.2fx, uffd spin %.2fx (a handler that never sleeps: "
		"the faulting thread's own CPU still idles while it waits), "
		"uffd sigbus %.2fx",
		split_over_same(same, split, 0),
		split_over_same(same, split, 1),
		split_over_same(same, split, 2));
}

static void restore_targets(void)
{
	double best = 0;
	for (size_t k = 0; k < bn_n_dxm_modes && k < MAX_MODES; k++) {
		double worst = 0;
		bool any = false;
		for (int p = BN_PLACE_SAME; p < BN_NPLACE; p++) {
			if (!pass_rows[p].done)
				continue;
			int row = pass_rows[p].dxm[k];
			double ratio = bn_row_ratio(row, 0.5);
			if (!any || ratio > worst)
				worst = ratio;
			any = true;
			double vs = bn_row_at(row, 0.5) /
				    bn_row_at(pass_rows[p].mprot, 0.5);
			if (!best || vs < best)
				best = vs;
		}
		if (!any)
			continue;
		char name[48], meas[32], goal[96];
		snprintf(name, sizeof(name), "restore_%s_vs_uffd",
			 bn_dxm_modes[k].name);
		snprintf(meas, sizeof(meas), "%.3fx", worst);
		snprintf(goal, sizeof(goal),
			 "<= 1.25x %s at p50, same and split CPUs",
			 bn_dxm_modes[k].bare);
		bn_target(name, meas, goal, worst <= 1.25);
	}
	if (pass_rows[BN_PLACE_FREE].done)
		bn_note("restore: targets are judged on the pinned passes (same "
			"CPU, split CPUs); with free placement each handler "
			"thread settles for the whole run on the faulting "
			"thread's CPU or on the other one, so ratios there "
			"depend on luck (the table shows them anyway)");
	if (best > 0) {
		char meas[32];
		snprintf(meas, sizeof(meas), "%.3fx", best);
		bn_target("restore_best_vs_mprotect", meas,
			  "< 1.00x mprotect+SIGSEGV at p50, best mode and "
			  "placement",
			  best < 1.0);
	}
	split_target();
}

/*
 * One pass per placement (harness.h): FREE first (what a program gets),
 * then SAME (every thread on one CPU) and SPLIT (handler threads on the
 * other CPU), which separate the software path from the cost of waking a
 * thread on another, idle, CPU.
 */
int bn_run_restore(void)
{
	memset(pass_rows, 0, sizeof(pass_rows));
	memset(mode_hist, 0, sizeof(mode_hist));
	for (int p = 0; p < BN_NPLACE; p++) {
		if (!bn_place_ok((enum bn_place)p))
			continue;
		int ret = restore_pass((enum bn_place)p);
		if (ret)
			return ret;
	}
	restore_targets();
	/* What dxm_stats says of the same restores (every placement). */
	for (size_t mi = 0; mi < bn_n_dxm_modes && mi < 8; mi++) {
		char *buf = NULL, what[64];
		size_t len = 0;
		FILE *f = open_memstream(&buf, &len);
		if (!f)
			break;
		snprintf(what, sizeof(what), "dxm %s, dxm_stats restore_us",
			 bn_dxm_modes[mi].name);
		dxm_tool_print_hist(f, "restore: ", what, mode_hist[mi], "us");
		fclose(f);
		if (len && buf[len - 1] == '\n')
			buf[len - 1] = 0;
		bn_note("%s", buf);
		free(buf);
	}
	return 0;
}
