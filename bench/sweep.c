// SPDX-License-Identifier: MIT
/*
 * Sweep: the CPU reading device results back.  A device had N pages
 * exclusive (16384 and 262144; --quick: 2048 and 16384) and unlocked them;
 * the CPU then touches one word per page, in order (read-back), in order
 * with a store (write-back), in reverse order, and in a random order.
 * Side by side in one run, interleaved sample by sample:
 *
 *   kernel minor      a plain MAP_SHARED memfd mapping zapped with
 *                     MADV_DONTNEED: every touch is a kernel minor fault
 *                     (no dxm, no userfaultfd): the floor
 *   mprotect+SIGSEGV  a second plain mapping of the same memfd made
 *                     PROT_NONE with mprotect; the first touch raises
 *                     SIGSEGV and the handler mprotect()s the WHOLE range
 *                     back to PROT_READ|PROT_WRITE: one signal restores
 *                     everything (the pages never left the page table)
 *   UFFDIO_CONTINUE   a third plain mapping of the same memfd, registered
 *                     MINOR with a userfaultfd of its own and zapped; one
 *                     UFFDIO_CONTINUE maps the whole range (no fault), then
 *                     the reads: what mapping the pages back costs through
 *                     the only call that can map a page of a registered
 *                     shmem view, dxm's floor for memfd (read-back only)
 *   dxm 1 page        restore_around = 1: one fault to the handler per page,
 *                     what dxm did before restore-around
 *   dxm               the default context (restore-around on, thread mode)
 *   dxm adopted       the same over adopted (dxm_adopt) memory
 *   dxm <mode>        the default context in each other resolution mode
 *   dxm adopted <mode>  (bn_dxm_modes: spin, sigbus), memfd and adopted,
 *                     read-back only; a mode this kernel lacks is a SKIP note
 *
 * Each figure is the time per page.  A note per dxm column says how often
 * the reading thread slept (voluntary context switches) per restore in
 * its in-order read-backs: 1 when it is woken once per window, more when
 * it faults again on a page its window is still bringing back.
 *
 * The cycle: at 64 and 4096 pages, round after round, the CPU reads one
 * word per page in order, then the device takes the same pages back
 * (dxm_make_exclusive + dxm_exclusive_unlock, default context, memfd),
 * against a raw zap: MADV_DONTNEED of a plain MAP_SHARED mapping of the
 * same memfd (bn_open_backing) whose pages the CPU has just read the same
 * way.  The revoke is timed alone (dxm_make_exclusive; the unlock is not
 * timed, as in the revoke group) and reported per page; the read-back of
 * the cycle is reported too (dxm's restore faults against the kernel's
 * minor faults).  A third method splits dxm's revoke: after the same
 * read-back through dxm, a bare MADV_DONTNEED of dxm's own view (the
 * kernel's share), the pages then made exclusive again, untimed.
 *
 * Targets: sequential read-back with the default context at most 1.0x the
 * kernel's minor faults and at most 1.1x mprotect+SIGSEGV, memfd and
 * adopted, at both sizes; random touches no slower than 1.05x one page
 * per fault (the window must not over-restore random access); the cycle's
 * revoke at least 0.80x the raw zap's throughput (the revoke group's
 * convention: raw zap time / dxm time, that is dxm's time per page at most
 * 1.25x the zap's), at 64 and 4096 pages.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "harness.h"

enum { O_SEQ, O_WRITE, O_REV, O_RAND, NO };
static const char *const oname[NO] = { "read-back", "write-back", "reverse",
				       "random" };

enum kind { K_KERNEL, K_MPROT, K_CONT, K_DXM };

/* The methods: these five first (their indices), then the other modes. */
enum { M_KERNEL, M_MPROT, M_CONT, M_ONE, M_DXM, M_ANON, M_FIXED };
#define MAXM (M_FIXED + 2 * 8)

struct sw {
	char name[40];
	enum kind kind;
	const struct bn_dxm_mode *mode; /* K_DXM */
	unsigned restore_around;	/* K_DXM: 0, the default */
	bool anon;			/* K_DXM: adopted memory */
	bool all_orders;		/* else read-back only */
	bool on;			/* set up: measured */
	struct dxm_ctx *ctx;
	char *p;
	size_t len;
	struct bn_series *ser[2][NO];
	int row[2][NO];
	uint64_t sleeps, restores; /* K_DXM, over its read-backs */
	int uffd;		   /* K_CONT, when set up */
};

/* This thread's voluntary context switches so far. */
static uint64_t sleeps_now(void)
{
	struct rusage ru;
	return getrusage(RUSAGE_THREAD, &ru) ? 0 : (uint64_t)ru.ru_nvcsw;
}

/* Restores (faults or calls that gave pages back) so far in ctx. */
static uint64_t restores_now(struct dxm_ctx *ctx)
{
	struct dxm_stats st;
	uint64_t n = 0;
	if (!dxm_stats(ctx, &st, sizeof(st)))
		for (int i = 0; i < DXM_STATS_HIST; i++)
			n += st.restore_pages[i];
	return n;
}

static void touch_all(char *p, size_t n, int order, const uint32_t *perm)
{
	uint64_t sum = 0;
	for (size_t k = 0; k < n; k++) {
		size_t i = order == O_REV ? n - 1 - k
			   : order == O_RAND ? perm[k]
					     : k;
		volatile uint64_t *w = (volatile uint64_t *)(p + i * bn_psize);
		if (order == O_WRITE)
			*w = k;
		else
			sum += *w;
	}
	__asm__ __volatile__("" ::"r"(sum));
}

/* The owner of every conversion here (an identity only, no notifier): a
 * non-NULL owner, so that restore-around applies as for a driver. */
static struct bn_drv owner;

/* ------------------------------------------ mprotect + SIGSEGV, whole range */

/* The range made PROT_NONE; the first SIGSEGV in it gives all of it back
 * (bn_mp_watch, the restore group's, gives back one page per signal). */
static struct {
	_Atomic uintptr_t start, end;
	atomic_ulong faults;
} mpw;
static struct sigaction mpw_old;
static bool mpw_pushed;

static void mpw_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	uintptr_t a = (uintptr_t)si->si_addr;
	uintptr_t s = atomic_load(&mpw.start), e = atomic_load(&mpw.end);
	if (si->si_code == SEGV_ACCERR && s && a >= s && a < e) {
		mprotect((void *)s, e - s, PROT_READ | PROT_WRITE);
		atomic_fetch_add(&mpw.faults, 1);
		errno = saved;
		return;
	}
	errno = saved;
	bn_sig_chain(&mpw_old, sig, si, uc);
}

/* ------------------------------------------------------------ the methods */

/* Take the pages away (untimed), then time the touches. */
static int once(struct sw *s, size_t n, int order, const uint32_t *perm,
		void **dev, struct bn_series *ser)
{
	size_t len = n * bn_psize;
	unsigned long faults = 0;
	switch (s->kind) {
	case K_KERNEL:
		if (madvise(s->p, len, MADV_DONTNEED))
			return -errno;
		break;
	case K_MPROT:
		atomic_store(&mpw.start, 0);
		atomic_store(&mpw.end, (uintptr_t)s->p + len);
		atomic_store(&mpw.start, (uintptr_t)s->p);
		faults = atomic_load(&mpw.faults);
		if (mprotect(s->p, len, PROT_NONE))
			return -errno;
		break;
	case K_CONT:
		if (madvise(s->p, len, MADV_DONTNEED))
			return -errno;
		break;
	case K_DXM: {
		int err = bn_dxm_revoke(s->ctx, &owner, s->p, len, dev);
		if (err)
			return err;
		break;
	}
	}
	bool count = s->kind == K_DXM && order == O_SEQ;
	uint64_t z0 = count ? sleeps_now() : 0;
	uint64_t r0 = count ? restores_now(s->ctx) : 0;
	uint64_t t0 = bn_now();
	if (s->kind == K_CONT) {
		struct uffdio_continue c = {
			.range = { (uintptr_t)s->p, len },
			.mode = UFFDIO_CONTINUE_MODE_DONTWAKE,
		};
		if (ioctl(s->uffd, UFFDIO_CONTINUE, &c))
			return -errno;
	}
	touch_all(s->p, n, order, perm);
	bn_add(ser, (double)(bn_now() - t0) / (double)n);
	if (count) {
		/* (A restore enters the histogram just after it woke the
		 * thread: the last one may be missed, out of thousands.) */
		s->sleeps += sleeps_now() - z0;
		s->restores += restores_now(s->ctx) - r0;
	}
	if (s->kind == K_MPROT) {
		/* One signal gave every page back. */
		atomic_store(&mpw.start, 0);
		if (atomic_load(&mpw.faults) != faults + 1)
			return -EPROTO;
	}
	/* Let a spinning handler go back to sleep before the next method. */
	if (s->kind == K_DXM && s->mode->settle_us)
		usleep(s->mode->settle_us);
	return 0;
}

/* The UFFDIO_CONTINUE column: a mapping of kfd registered MINOR with a
 * bare userfaultfd of its own (bn_open_uffd). */
static int cont_setup(struct sw *s, int kfd)
{
	if (kfd < 0)
		return -EBADF;
	void *p = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_SHARED, kfd,
		       0);
	if (p == MAP_FAILED)
		return -errno;
	s->p = p;
	int fd = bn_open_uffd(UFFD_FEATURE_MINOR_SHMEM);
	if (fd < 0)
		return fd;
	s->uffd = fd;
	struct uffdio_register reg = {
		.range = { (uintptr_t)p, s->len },
		.mode = UFFDIO_REGISTER_MODE_MINOR,
	};
	return ioctl(fd, UFFDIO_REGISTER, &reg) ? -errno : 0;
}

/* kfd: the kernel column's memfd, which the mprotect column maps again. */
static int sw_setup(struct sw *s, int *kfd)
{
	switch (s->kind) {
	case K_KERNEL:
		return bn_memfd_map(s->len, kfd, (void **)&s->p);
	case K_MPROT: {
		if (*kfd < 0)
			return -EBADF;
		void *p = mmap(NULL, s->len, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_POPULATE, *kfd, 0);
		if (p == MAP_FAILED)
			return -errno;
		s->p = p;
		int err = bn_sig_push(SIGSEGV, mpw_handler, &mpw_old);
		mpw_pushed = !err;
		return err;
	}
	case K_CONT:
		return cont_setup(s, *kfd);
	case K_DXM:
		break;
	}
	struct dxm_ctx_opts o = { .sz = sizeof(o),
				  .flags = s->mode->flags,
				  .restore_around = s->restore_around };
	int err = dxm_ctx_create(&s->ctx, &o);
	if (err) {
		s->ctx = NULL;
		return err;
	}
	if (s->anon) {
		s->p = mmap(NULL, s->len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (s->p == MAP_FAILED)
			return s->p = NULL, -errno;
		memset(s->p, 1, s->len);
		return dxm_adopt(s->ctx, s->p, s->len, 0);
	}
	return dxm_alloc(s->ctx, s->len, 0, (void **)&s->p);
}

static void sw_teardown(struct sw *s)
{
	if (s->kind == K_MPROT && mpw_pushed) {
		atomic_store(&mpw.start, 0);
		bn_sig_pop(SIGSEGV, &mpw_old);
		mpw_pushed = false;
	}
	if (s->kind == K_CONT && s->uffd > 0)
		close(s->uffd);
	s->uffd = 0;
	if (s->ctx) {
		if (s->p)
			dxm_free(s->ctx, s->p);
		dxm_ctx_destroy(s->ctx);
	}
	if (s->p && (s->anon || !s->ctx))
		munmap(s->p, s->len);
	s->ctx = NULL;
	s->p = NULL;
	s->on = false;
}

/* -------------------------------------------------------------- the cycle */

/*
 * Round after round: the CPU reads one word per page in order, then the
 * pages are taken away again.  Both methods work on the same physical
 * pages (the raw mapping is a plain mapping of dxm's memfd, as in the
 * revoke group), interleaved round by round.
 */
enum { C_RAW, C_DXM, C_VIEW, NC };

static int cycle(void **dev)
{
	static const size_t sizes[2] = { 64, 4096 };
	const size_t rounds[2] = { bn_n(2000, 100), bn_n(100, 10) };
	static const char *const rname[NC] = {
		"raw zap (MADV_DONTNEED)", "dxm_make_exclusive",
		"dxm's view zapped (MADV_DONTNEED, no dxm)"
	};
	/* The read-back of C_VIEW's rounds is dxm's too: C_DXM's series. */
	static const char *const tname[C_VIEW] = { "kernel minor faults",
						   "dxm" };
	const size_t maxlen = sizes[1] * bn_psize;
	struct dxm_ctx *ctx = NULL;
	void *dp = NULL, *rp = MAP_FAILED;
	int fd = -1, ret = -1, err;
	int rev[2][NC], rb[2][C_VIEW];

	err = bn_ctx(&ctx, 0, 0);
	BN_CHECK(!err, "sweep cycle: dxm_ctx_create: %s", strerror(-err));
	err = dxm_alloc(ctx, maxlen, 0, &dp);
	BN_CHECK(!err, "sweep cycle: dxm_alloc: %s", strerror(-err));
	off_t off = 0;
	fd = bn_open_backing(dp, &off);
	if (fd >= 0) {
		rp = mmap(NULL, maxlen, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_POPULATE, fd, off);
		BN_CHECK(rp != MAP_FAILED, "sweep cycle: mmap: %s",
			 strerror(errno));
	} else {
		bn_note("sweep: the cycle's raw zap uses a memfd of its own "
			"(%s opening dxm's through /proc/self/map_files)",
			strerror(-fd));
		err = bn_memfd_map(maxlen, &fd, &rp);
		BN_CHECK(!err, "sweep cycle: %s", strerror(-err));
	}

	for (int z = 0; z < 2; z++) {
		size_t n = sizes[z], len = n * bn_psize;
		char fr[40], ft[40];
		struct bn_series *sr[NC], *st[NC];
		snprintf(fr, sizeof(fr), "cycle revoke, %zu pages", n);
		snprintf(ft, sizeof(ft), "cycle read-back, %zu pages", n);
		for (int m = 0; m < NC; m++) {
			sr[m] = bn_series_new("sweep", fr, rname[m], (long)n);
			st[m] = m == C_VIEW ? st[C_DXM]
					    : bn_series_new("sweep", ft,
							    tname[m], (long)n);
			BN_CHECK(sr[m] && st[m], "out of memory");
		}
		for (int m = 0; m < NC; m++)
			rev[z][m] = bn_row(sr[m], BN_LAT, 1, "per page",
					   m ? rev[z][C_RAW] : -1);
		for (int m = 0; m < C_VIEW; m++)
			rb[z][m] = bn_row(st[m], BN_LAT, 1, "per page",
					  m ? rb[z][C_RAW] : -1);

		/* Start with the pages taken away (untimed). */
		BN_CHECK(dxm_range_fault(ctx, dp, len, 0, NULL) == (long)n,
			 "sweep cycle: dxm_range_fault");
		err = bn_dxm_revoke(ctx, &owner, dp, len, dev);
		BN_CHECK(!err, "sweep cycle: revoke: %s", strerror(-err));
		BN_CHECK(!madvise(rp, len, MADV_DONTNEED),
			 "sweep cycle: MADV_DONTNEED: %s", strerror(errno));
		for (size_t r = 0; r < rounds[z]; r++)
			for (int k = 0; k < NC; k++) {
				int m = (int)((k + r) % NC);
				char *p = m == C_RAW ? rp : dp;
				uint64_t t0 = bn_now();
				touch_all(p, n, O_SEQ, NULL);
				uint64_t t1 = bn_now();
				bn_add(st[m], (double)(t1 - t0) / (double)n);
				if (m != C_DXM) {
					t0 = bn_now();
					err = madvise(p, len, MADV_DONTNEED);
					t1 = bn_now();
					BN_CHECK(!err,
						 "sweep cycle: MADV_DONTNEED: "
						 "%s",
						 strerror(errno));
					/* dxm's pages, the CPU's but unmapped
					 * now: exclusive again (untimed), as
					 * the next round expects. */
					if (m == C_VIEW)
						BN_CHECK(!bn_dxm_revoke(ctx,
								&owner, dp,
								len, dev),
							 "sweep cycle: "
							 "revoke");
				} else {
					t0 = bn_now();
					long got = dxm_make_exclusive(
						ctx, dp, len, &owner, dev);
					t1 = bn_now();
					BN_CHECK(got == (long)n,
						 "sweep cycle: "
						 "dxm_make_exclusive: %ld",
						 got);
					for (size_t i = 0; i < n; i++)
						BN_CHECK(dev[i],
							 "sweep cycle: page "
							 "%zu refused",
							 i);
					dxm_exclusive_unlock(ctx, dp, len, dev);
				}
				bn_add(sr[m], (double)(t1 - t0) / (double)n);
			}
	}
	/* Leave the region with the CPU before it is freed. */
	dxm_range_fault(ctx, dp, maxlen, 0, NULL);

	/* The revoke group's convention: throughput against the raw zap's,
	 * that is the zap's time per page over dxm's. */
	for (int z = 0; z < 2; z++) {
		char name[40], meas[32];
		double ratio = 1.0 / bn_row_ratio(rev[z][C_DXM], 0.5);
		snprintf(name, sizeof(name), "sweep_cycle_revoke_%zu",
			 sizes[z]);
		snprintf(meas, sizeof(meas), "%.3fx", ratio);
		bn_target(name, meas, ">= 0.80x raw zap", ratio >= 0.8);
	}
	ret = 0;
out:
	if (rp != MAP_FAILED)
		munmap(rp, maxlen);
	if (fd >= 0)
		close(fd);
	if (dp)
		dxm_free(ctx, dp);
	dxm_ctx_destroy(ctx);
	return ret;
}

/* ------------------------------------------------------------------ group */

int bn_run_sweep(void)
{
	const size_t sizes[2] = { bn_opt.quick ? 2048 : 16384,
				  bn_opt.quick ? 16384 : 262144 };
	const size_t rounds[2] = { bn_n(3, 2), bn_n(1, 1) };
	const size_t maxn = sizes[1];
	struct sw s[MAXM];
	size_t nm = 0;
	uint32_t *perm = NULL;
	void **dev = NULL;
	int ret = -1, err, kfd = -1;

	memset(s, 0, sizeof(s));
	/* The fixed columns, in the order of enum M_*. */
	static const struct {
		const char *name;
		enum kind kind;
		unsigned restore_around;
		bool anon;
	} fixed[M_FIXED] = {
		[M_KERNEL] = { "kernel minor faults", K_KERNEL, 0, false },
		[M_MPROT] = { "mprotect+SIGSEGV", K_MPROT, 0, false },
		[M_CONT] = { "UFFDIO_CONTINUE, no fault", K_CONT, 0, false },
		[M_ONE] = { "dxm, 1 page per fault", K_DXM, 1, false },
		[M_DXM] = { "dxm", K_DXM, 0, false },
		[M_ANON] = { "dxm adopted", K_DXM, 0, true },
	};
	for (; nm < M_FIXED; nm++) {
		snprintf(s[nm].name, sizeof(s[nm].name), "%s", fixed[nm].name);
		s[nm].kind = fixed[nm].kind;
		s[nm].mode = &bn_dxm_modes[0]; /* thread: no flags */
		s[nm].restore_around = fixed[nm].restore_around;
		s[nm].anon = fixed[nm].anon;
		s[nm].all_orders = fixed[nm].kind != K_CONT;
	}
	/* Every other resolution mode, memfd then adopted, read-back only. */
	for (int anon = 0; anon < 2; anon++)
		for (size_t i = 0; i < bn_n_dxm_modes && nm < MAXM; i++) {
			if (!bn_dxm_modes[i].flags)
				continue;
			struct sw *m = &s[nm++];
			snprintf(m->name, sizeof(m->name), "dxm %s%s",
				 anon ? "adopted " : "", bn_dxm_modes[i].name);
			m->kind = K_DXM;
			m->mode = &bn_dxm_modes[i];
			m->anon = anon;
		}

	perm = malloc(maxn * sizeof(*perm));
	dev = malloc(maxn * sizeof(*dev));
	BN_CHECK(perm && dev, "out of memory");
	struct dxm_features feat = DXM_OPTS(dxm_features);
	bool probed = !dxm_probe(&feat, sizeof(feat));
	for (size_t m = 0; m < nm; m++) {
		s[m].len = maxn * bn_psize;
		if (s[m].kind == K_DXM && (s[m].mode->flags & DXM_CTX_SIGBUS) &&
		    probed && !(feat.flags & DXM_FEAT_SIGBUS)) {
			bn_note("sweep: SKIP: %s: no DXM_CTX_SIGBUS here "
				"(dxm_probe: no UFFD_FEATURE_SIGBUS)",
				s[m].name);
			continue;
		}
		err = sw_setup(&s[m], &kfd);
		if (err && s[m].kind == K_DXM && s[m].mode->flags &&
		    !s[m].ctx) {
			bn_note("sweep: SKIP: %s: dxm_ctx_create: %s",
				s[m].name, strerror(-err));
			sw_teardown(&s[m]);
			continue;
		}
		if (err && s[m].kind == K_CONT) {
			bn_note("sweep: SKIP: %s: a userfaultfd registered "
				"MINOR on shmem: %s",
				s[m].name, strerror(-err));
			sw_teardown(&s[m]);
			continue;
		}
		if (err == -ENOSYS && s[m].anon) {
			bn_note("sweep: SKIP: %s: no adopted memory here "
				"(dxm_adopt: %s)",
				s[m].name, strerror(-err));
			sw_teardown(&s[m]);
			continue;
		}
		BN_CHECK(!err, "sweep setup (%s): %s", s[m].name,
			 strerror(-err));
		s[m].on = true;
	}
	for (int z = 0; z < 2; z++)
		for (int o = 0; o < NO; o++) {
			char fig[40];
			snprintf(fig, sizeof(fig), "%s, %zu pages", oname[o],
				 sizes[z]);
			for (size_t m = 0; m < nm; m++) {
				if (!s[m].on ||
				    (o != O_SEQ && !s[m].all_orders))
					continue;
				s[m].ser[z][o] =
					bn_series_new("sweep", fig, s[m].name,
						      (long)sizes[z]);
				BN_CHECK(s[m].ser[z][o], "out of memory");
			}
		}
	for (int z = 0; z < 2; z++) {
		size_t n = sizes[z];
		for (size_t i = 0; i < n; i++)
			perm[i] = (uint32_t)i;
		srand(42);
		for (size_t i = n - 1; i > 0; i--) {
			size_t j = (size_t)rand() % (i + 1);
			uint32_t t = perm[i];
			perm[i] = perm[j], perm[j] = t;
		}
		for (size_t r = 0; r < rounds[z]; r++)
			for (int o = 0; o < NO; o++)
				for (size_t k = 0; k < nm; k++) {
					struct sw *m =
						&s[(k + r + (size_t)o) % nm];
					if (!m->ser[z][o])
						continue;
					err = once(m, n, o, perm, dev,
						   m->ser[z][o]);
					BN_CHECK(!err, "sweep %s: %s", m->name,
						 err == -EPROTO
							 ? "not one SIGSEGV "
							   "per sweep"
							 : strerror(-err));
				}
	}
	for (int z = 0; z < 2; z++)
		for (int o = 0; o < NO; o++)
			for (size_t m = 0; m < nm; m++) {
				int base = m ? s[M_KERNEL].row[z][o] : -1;
				s[m].row[z][o] = -1;
				if (s[m].ser[z][o])
					s[m].row[z][o] =
						bn_row(s[m].ser[z][o], BN_LAT,
						       1, "per page", base);
			}
	for (int z = 0; z < 2; z++) {
		char name[48], meas[48];
		for (int m = M_DXM; m <= M_ANON; m++) {
			int row = s[m].row[z][O_SEQ];
			if (row < 0)
				continue;
			const char *what = m == M_ANON ? "adopted" : "memfd";
			double x = bn_row_ratio(row, 0.5);
			snprintf(name, sizeof(name), "sweep_read_%s_%zu", what,
				 sizes[z]);
			snprintf(meas, sizeof(meas), "%.2fx", x);
			bn_target(name, meas, "<= 1.0x kernel minor faults",
				  x <= 1.0);
			x = bn_row_at(row, 0.5) /
			    bn_row_at(s[M_MPROT].row[z][O_SEQ], 0.5);
			snprintf(name, sizeof(name),
				 "sweep_read_%s_%zu_vs_mprotect", what,
				 sizes[z]);
			snprintf(meas, sizeof(meas), "%.2fx", x);
			bn_target(name, meas, "<= 1.1x mprotect+SIGSEGV",
				  x <= 1.1);
		}
		int cont = s[M_CONT].row[z][O_SEQ], dx = s[M_DXM].row[z][O_SEQ];
		if (cont >= 0 && dx >= 0)
			bn_note("sweep: read-back, %zu pages: mapping the pages "
				"back with UFFDIO_CONTINUE alone (no fault) is "
				"%.2fx the kernel's minor faults; dxm (memfd) "
				"is %.2fx that",
				sizes[z], bn_row_ratio(cont, 0.5),
				bn_row_at(dx, 0.5) / bn_row_at(cont, 0.5));
		double one = bn_row_at(s[M_ONE].row[z][O_RAND], 0.5);
		double dflt = bn_row_at(s[M_DXM].row[z][O_RAND], 0.5);
		snprintf(name, sizeof(name), "sweep_random_%zu", sizes[z]);
		snprintf(meas, sizeof(meas), "%.2fx", dflt / one);
		bn_target(name, meas, "<= 1.05x one page per fault",
			  dflt <= 1.05 * one);
	}
	for (size_t m = 0; m < nm; m++)
		if (s[m].on && s[m].kind == K_DXM && s[m].restores)
			bn_note("sweep: %s: the reader slept %.2f times per "
				"restore in its in-order read-backs (%llu "
				"restores)",
				s[m].name,
				(double)s[m].sleeps / (double)s[m].restores,
				(unsigned long long)s[m].restores);
	/* The columns' memory goes before the cycle takes its own. */
	for (size_t m = 0; m < nm; m++)
		sw_teardown(&s[m]);
	if (kfd >= 0)
		close(kfd);
	kfd = -1;
	ret = cycle(dev);
out:
	for (size_t m = 0; m < nm; m++)
		sw_teardown(&s[m]);
	if (kfd >= 0)
		close(kfd);
	free(perm);
	free(dev);
	return ret;
}
