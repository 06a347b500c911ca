// SPDX-License-Identifier: MIT
/*
 * B2 restore: a CPU load, store or atomic on an exclusive page faults; the
 * notifiers run (DXM_EVENT_CLEAR, no owner) and return before the mapping
 * is restored; the CPU then sees every device write.  A system call whose
 * buffer is an exclusive page is resolved the same way (kernel-fault modes),
 * or fails with EFAULT and changes nothing (user-mode-only userfaultfd) until
 * dxm_range_fault() brings the range back.
 */
#include <errno.h>
#include <grp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

/* Each test also runs on huge pages (name_huge, common.h). */
#define KIND_TEST(name)                                                        \
	KIND_TEST_HUGE_OF(b2_restore, MEM_KINDS_PARAMS, name, .timeout = 30)

/* Every recorded CLEAR carries no owner. */
static void assert_clears_have_no_owner(struct recorder *r)
{
	pthread_mutex_lock(&r->lock);
	size_t bad = 0, clears = 0;
	for (size_t i = 0; i < r->nrec; i++)
		if (r->rec[i].event == DXM_EVENT_CLEAR) {
			clears++;
			bad += r->rec[i].owner != NULL;
		}
	pthread_mutex_unlock(&r->lock);
	cr_assert_eq(bad, 0, "%zu of %zu CLEAR events carry an owner", bad,
		     clears);
}

/* ------------------------------------------------ load, store, atomic */

/*
 * The probe runs inside the invalidate callback (the device's last moment
 * with the page): after a pause it reads the device view of the word, to
 * see whether the CPU's access already happened, and then writes its own
 * last value there (a device flushing its work before giving the page up),
 * which the CPU access must see.
 */
struct probe {
	volatile uint64_t *devw;
	_Atomic uint64_t seen_in_cb; /* written by the handler thread */
	uint64_t last_write;
	atomic_int clears;
};

static int probe_hook(struct recorder *r, const struct dxm_range *range)
{
	struct probe *p = r->hook_arg;
	if (range->event != DXM_EVENT_CLEAR || !p->devw)
		return 0;
	if (atomic_fetch_add(&p->clears, 1) == 0) {
		/* Take a while, as a device draining its queue would: an
		 * access let through early would land in this window. */
		struct timespec ts = { 0, 50 * 1000000L };
		nanosleep(&ts, NULL);
		atomic_store(&p->seen_in_cb, *p->devw);
		*p->devw = p->last_write;
	}
	return 0;
}

enum access { ACC_LOAD, ACC_STORE, ACC_ATOMIC };

static void access_case(enum mem_kind kind, enum access acc)
{
	struct mem m;
	struct dxm_ctx *ctx = ctx_mem(kind, 2 * PS, &m);
	uint64_t *page = (uint64_t *)((char *)m.base + PS);
	volatile uint64_t *w = page;
	fill_index(page, PS, 0);

	static struct recorder rec;
	static struct probe pr;
	recorder_insert(ctx, &rec, m.base, 2 * PS);
	recorder_hook(&rec, probe_hook, &pr);

	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, page, PS, &m, dev), 1);
	cr_assert_not_null(dev[0]);
	/* The device writes the whole page, then word 0. */
	fill_index(dev[0], PS, 9000);
	((volatile uint64_t *)dev[0])[0] = 100;
	dxm_exclusive_unlock(ctx, page, PS, dev);
	cr_assert(!page_present(page), "the page is mapped while exclusive");
	cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
	struct dxm_stats st0 = stats(ctx);

	pr.last_write = 200;
	pr.devw = dev[0];
	uint64_t v = 0;
	/* The access faults and waits for the handler thread: keep the
	 * compiler from moving reads of what the callback wrote above it. */
	atomic_signal_fence(memory_order_seq_cst);
	switch (acc) {
	case ACC_LOAD:
		v = *w;
		atomic_signal_fence(memory_order_seq_cst);
		cr_assert_eq(v, 200,
			     "the load returned %llu: not the value the "
			     "invalidate callback wrote (100: callback ran "
			     "after the load)",
			     (unsigned long long)v);
		break;
	case ACC_STORE:
		*w = 300;
		atomic_signal_fence(memory_order_seq_cst);
		cr_assert_eq(atomic_load(&pr.seen_in_cb), 100,
			     "the callback saw %llu: the store completed "
			     "before the notifiers ran",
			     (unsigned long long)atomic_load(&pr.seen_in_cb));
		cr_assert_eq(*w, 300,
			     "the CPU store was overwritten by the callback: "
			     "it completed before the notifiers returned");
		cr_assert_eq(((volatile uint64_t *)dev[0])[0], 300);
		break;
	case ACC_ATOMIC:
		v = __atomic_fetch_add(page, 5, __ATOMIC_SEQ_CST);
		atomic_signal_fence(memory_order_seq_cst);
		cr_assert_eq(atomic_load(&pr.seen_in_cb), 100,
			     "the callback saw %llu: the atomic completed "
			     "before the notifiers ran",
			     (unsigned long long)atomic_load(&pr.seen_in_cb));
		cr_assert_eq(v, 200, "the atomic read %llu, expected 200",
			     (unsigned long long)v);
		cr_assert_eq(*w, 205);
		cr_assert_eq(((volatile uint64_t *)dev[0])[0], 205);
		break;
	}
	if (acc == ACC_LOAD)
		cr_assert_eq(atomic_load(&pr.seen_in_cb), 100);
	cr_assert_eq(atomic_load(&pr.clears), 1,
		     "%d CLEAR callbacks for one access",
		     atomic_load(&pr.clears));
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, page));
	assert_clears_have_no_owner(&rec);
	/* The rest of the device's writes. */
	for (size_t i = 1; i < PS / 8; i++)
		cr_assert_eq(page[i], 9000 + i, "word %zu is %llu", i,
			     (unsigned long long)page[i]);
	cr_assert(page_present(page), "the mapping was not restored");
	cr_assert(!dxm_check_exclusive(ctx, page, PS, dev));
	struct dxm_stats st1 = stats(ctx);
	cr_assert_eq(st1.restores - st0.restores, 1);
	/* Now an ordinary page: no further notification. */
	size_t before = rec.count;
	page[1] = 1;
	(void)*w;
	cr_assert_eq(rec.count, before);
	recorder_remove(&rec);
	mem_done(&m);
}

KIND_TEST(cpu_load_faults_back)
{
	access_case(*kind, ACC_LOAD);
}

KIND_TEST(cpu_store_faults_back)
{
	access_case(*kind, ACC_STORE);
}

KIND_TEST(cpu_atomic_faults_back)
{
	access_case(*kind, ACC_ATOMIC);
}

/* -------------------------------------------------- every device write */

/* Ping-pong: the device and the CPU take turns incrementing every word of
 * several pages; nothing is ever lost in either direction. */
KIND_TEST(sees_every_device_write)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct mem m;
	const size_t n = 16, words = n * PS / 8;
	mem_setup(ctx, *kind, n * PS, &m);
	uint64_t *p = m.base;
	fill_index(p, n * PS, 0);
	void *dev[16];
	static const int owners[2] = { 1, 2 };
	for (uint64_t round = 0; round < 20; round++) {
		cr_assert_eq(dxm_make_exclusive(ctx, p, n * PS,
						&owners[round & 1], dev),
			     (long)n);
		for (size_t i = 0; i < n; i++) {
			uint64_t *d = dev[i];
			cr_assert_not_null(d);
			for (size_t j = 0; j < PS / 8; j++)
				d[j] += 1;
		}
		/* A second device write to a few words, the last one wins. */
		for (size_t i = 0; i < n; i += 3)
			((uint64_t *)dev[i])[7] += 1000;
		dxm_exclusive_unlock(ctx, p, n * PS, dev);
		cr_assert_eq(pages_present(p, n * PS), 0);
		for (size_t k = 0; k < words; k++) {
			uint64_t want = k + 2 * round + 1;
			if (k % (PS / 8) == 7 && (k / (PS / 8)) % 3 == 0)
				want += 1000;
			cr_assert_eq(p[k], want,
				     "round %llu: word %zu is %llu, want %llu",
				     (unsigned long long)round, k,
				     (unsigned long long)p[k],
				     (unsigned long long)want);
			if (k % (PS / 8) == 7 && (k / (PS / 8)) % 3 == 0)
				p[k] -= 1000;
			p[k] += 1;
		}
	}
	cr_assert(check_index(p, n * PS, 40));
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* Pages no CPU view touched since the device wrote them: a brand-new
 * region, a page handed from one owner to another, a second view. */
KIND_TEST(untouched_page_comes_in)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct mem m;
	const size_t n = 8;
	mem_setup(ctx, *kind, n * PS, &m); /* the CPU never touched it */
	void *other = NULL;
	cr_assert_eq(dxm_alias(ctx, m.region, &other), 0);
	static const int a = 1, b = 2;
	void *da[8], *db[8];

	cr_assert_eq(dxm_make_exclusive(ctx, m.base, n * PS, &a, da), (long)n);
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < PS / 8; j++)
			cr_assert_eq(((uint64_t *)da[i])[j], 0,
				     "a new region is not zero");
		fill_index(da[i], PS, 1000 + i * (PS / 8));
	}
	dxm_exclusive_unlock(ctx, m.base, n * PS, da);
	/* Owner b takes the pages over without the CPU in between. */
	cr_assert_eq(dxm_make_exclusive(ctx, m.base, n * PS, &b, db), (long)n);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(db[i], da[i]);
		cr_assert(check_index(db[i], PS, 1000 + i * (PS / 8)),
			  "owner b does not see owner a's writes");
		fill_index(db[i], PS, 50000 + i * (PS / 8));
	}
	dxm_exclusive_unlock(ctx, m.base, n * PS, db);

	cr_assert_eq(pages_present(other, n * PS), 0);
	cr_assert(check_index(m.base, n * PS, 50000),
		  "the CPU does not see the last owner's writes");
	/* A view the CPU has not touched since the device wrote. */
	cr_assert(check_index(other, n * PS, 50000),
		  "the second view does not see the device's writes");
	cr_assert_eq(pages_present(other, n * PS), n);
	cr_assert(check_index(m.region, n * PS, 50000));
	mem_teardown(&m);
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------------- system calls */

static bool kernel_faults(struct dxm_ctx *ctx)
{
	uint32_t mode = stats(ctx).uffd_mode;
	cr_assert(mode == DXM_UFFD_DEV || mode == DXM_UFFD_SYSCALL ||
			  mode == DXM_UFFD_USER_ONLY,
		  "unknown uffd_mode %u", mode);
	return mode != DXM_UFFD_USER_ONLY;
}

static void pattern(unsigned char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 7 + seed);
}

static bool all_bytes(const unsigned char *p, size_t len, unsigned char v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return false;
	return true;
}

/* What the system calls move: the first IO bytes of the page (one base
 * page: a pipe holds less than a huge page). */
#define IO BASE_PS

static size_t pipe_bytes(int fd)
{
	int k = -1;
	cr_assert_eq(ioctl(fd, FIONREAD, &k), 0);
	return (size_t)k;
}

/* read(2) from a pipe into an exclusive page: resolved (kernel-fault
 * modes), or EFAULT changing nothing, then fine after dxm_range_fault
 * (user-mode-only). */
static void syscall_read_case(struct dxm_ctx *ctx, enum mem_kind kind)
{
	struct mem m;
	mem_setup(ctx, kind, 2 * PS, &m);
	unsigned char *page = (unsigned char *)m.base + PS;
	static unsigned char want[IO];
	pattern(want, IO, 3);
	memset(page, 0xaa, PS);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	cr_assert_eq(write(pfd[1], want, IO), (ssize_t)IO);

	static struct recorder rec;
	recorder_insert(ctx, &rec, m.base, 2 * PS);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, page, PS, &m, dev), 1);
	memset(dev[0], 0x55, PS); /* the device's write */
	dxm_exclusive_unlock(ctx, page, PS, dev);
	cr_assert(!page_present(page));

	if (kernel_faults(ctx)) {
		ssize_t k = read(pfd[0], page, IO);
		cr_assert_eq(k, (ssize_t)IO, "read(2) into an exclusive "
			     "page: %zd (%s)", k, strerror(errno));
		cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, page),
			  "no CLEAR before the kernel wrote the page");
	} else {
		errno = 0;
		ssize_t k = read(pfd[0], page, IO);
		int e = errno;
		cr_assert_eq(k, -1, "read(2) into an exclusive page in "
			     "user-mode-only mode returned %zd", k);
		cr_assert_eq(e, EFAULT, "errno %d (%s), want EFAULT", e,
			     strerror(e));
		/* Nothing changed: the pipe still holds the data, the page
		 * is still exclusive with the device's bytes. */
		cr_assert_eq(pipe_bytes(pfd[0]), IO);
		cr_assert(!page_present(page));
		cr_assert(dxm_check_exclusive(ctx, page, PS, dev));
		cr_assert(all_bytes(dev[0], PS, 0x55));
		cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
		/* Bring it back to the CPU: the same call now works. */
		cr_assert_eq(dxm_range_fault(ctx, page, PS, DXM_FAULT_WRITE,
					     NULL),
			     1);
		cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, page));
		cr_assert(page_present(page));
		k = read(pfd[0], page, IO);
		cr_assert_eq(k, (ssize_t)IO, "read(2) after dxm_range_fault: "
			     "%zd (%s)", k, strerror(errno));
	}
	assert_clears_have_no_owner(&rec);
	cr_assert_eq(memcmp(page, want, IO), 0, "the page lacks the bytes");
	cr_assert_eq(memcmp(dev[0], want, IO), 0, "the device view differs");
	cr_assert(all_bytes(page + IO, PS - IO, 0x55),
		  "the rest of the page lost the device's bytes");
	cr_assert(!dxm_check_exclusive(ctx, page, PS, dev));
	cr_assert_eq(pipe_bytes(pfd[0]), 0);
	close(pfd[0]);
	close(pfd[1]);
	recorder_remove(&rec);
	mem_teardown(&m);
}

/* write(2) from an exclusive page into a pipe. */
static void syscall_write_case(struct dxm_ctx *ctx, enum mem_kind kind)
{
	struct mem m;
	mem_setup(ctx, kind, 2 * PS, &m);
	unsigned char *page = (unsigned char *)m.base + PS;
	static unsigned char want[IO], got[IO];
	memset(page, 0xaa, PS);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);

	static struct recorder rec;
	recorder_insert(ctx, &rec, m.base, 2 * PS);
	void *dev[1];
	cr_assert_eq(dxm_make_exclusive(ctx, page, PS, &m, dev), 1);
	pattern(want, IO, 11);
	memcpy(dev[0], want, IO); /* the device's write */
	dxm_exclusive_unlock(ctx, page, PS, dev);
	cr_assert(!page_present(page));

	ssize_t k;
	if (kernel_faults(ctx)) {
		k = write(pfd[1], page, IO);
		cr_assert_eq(k, (ssize_t)IO, "write(2) from an exclusive "
			     "page: %zd (%s)", k, strerror(errno));
		cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, page));
	} else {
		errno = 0;
		k = write(pfd[1], page, IO);
		int e = errno;
		cr_assert_eq(k, -1, "write(2) from an exclusive page in "
			     "user-mode-only mode returned %zd", k);
		cr_assert_eq(e, EFAULT, "errno %d (%s), want EFAULT", e,
			     strerror(e));
		cr_assert_eq(pipe_bytes(pfd[0]), 0, "bytes reached the pipe");
		cr_assert(!page_present(page));
		cr_assert(dxm_check_exclusive(ctx, page, PS, dev));
		cr_assert_eq(memcmp(dev[0], want, IO), 0);
		cr_assert_eq(recorder_count_event(&rec, DXM_EVENT_CLEAR), 0);
		cr_assert_eq(dxm_range_fault(ctx, page, PS, 0, NULL), 1);
		cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, page));
		k = write(pfd[1], page, IO);
		cr_assert_eq(k, (ssize_t)IO, "write(2) after dxm_range_fault: "
			     "%zd (%s)", k, strerror(errno));
	}
	assert_clears_have_no_owner(&rec);
	cr_assert_eq(pipe_bytes(pfd[0]), IO);
	cr_assert_eq(read(pfd[0], got, IO), (ssize_t)IO);
	cr_assert_eq(memcmp(got, want, IO), 0,
		     "the pipe did not get the device's bytes");
	cr_assert(!dxm_check_exclusive(ctx, page, PS, dev));
	close(pfd[0]);
	close(pfd[1]);
	recorder_remove(&rec);
	mem_teardown(&m);
}

/* In whatever mode this process gets (kernel faults resolved as root). */
KIND_TEST(syscall_read_into_exclusive_page)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	syscall_read_case(ctx, *kind);
	dxm_ctx_destroy(ctx);
}

KIND_TEST(syscall_write_from_exclusive_page)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	syscall_write_case(ctx, *kind);
	dxm_ctx_destroy(ctx);
}

/*
 * The same system calls as a normal user (B12): when the suite runs as
 * root, this process gives up root first so that only a user-mode-only
 * userfaultfd is left.
 */
static struct dxm_ctx *user_only_ctx(void)
{
	if (geteuid() == 0) {
		cr_assert_eq(setgroups(0, NULL), 0);
		cr_assert_eq(setresgid(65534, 65534, 65534), 0);
		cr_assert_eq(setresuid(65534, 65534, 65534), 0);
		/* Keep /proc/self/pagemap ours after the uid change. */
		cr_assert_eq(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
	}
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	if (stats(ctx).uffd_mode != DXM_UFFD_USER_ONLY)
		cr_skip_test("SKIP: an unprivileged process still gets kernel "
			     "fault resolution here (vm.unprivileged_"
			     "userfaultfd = 1?)");
	return ctx;
}

KIND_TEST(syscall_read_user_only_efault)
{
	struct dxm_ctx *ctx = user_only_ctx();
	syscall_read_case(ctx, *kind);
	dxm_ctx_destroy(ctx);
}

KIND_TEST(syscall_write_user_only_efault)
{
	struct dxm_ctx *ctx = user_only_ctx();
	syscall_write_case(ctx, *kind);
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------- restore histograms */

static uint64_t hist_sum(const uint64_t *h)
{
	uint64_t n = 0;
	for (int i = 0; i < DXM_STATS_HIST; i++)
		n += h[i];
	return n;
}

/* dxm_stats' histograms: each single-page fault is one restore of one
 * page (restore_pages[1]) with a time; dxm_range_fault of 8 exclusive
 * pages is one restore of 8 (bucket [8,16): 4). */
MEM_TEST_HUGE_OF(b2_restore, MEM_KINDS_ALL_PARAMS, restore_histograms_count,
		 16 * PS, .timeout = 30)
{
	char *p = m.base;
	void *dev[16];
	take(ctx, p, 16 * PS, "hist", dev);
	for (size_t i = 0; i < 4; i++)
		(void)rd(p + i * PS);
	struct dxm_stats s;
	cr_assert(WAIT_FOR((s = stats(ctx), hist_sum(s.restore_us) == 4), 2000),
		  "%llu restores timed, 4 faults",
		  (unsigned long long)hist_sum(s.restore_us));
	cr_expect_eq(s.restore_pages[1], 4);
	cr_expect_eq(hist_sum(s.restore_pages), 4);
	cr_expect_eq(dxm_range_fault(ctx, p + 8 * PS, 8 * PS, 0, NULL), 8);
	s = stats(ctx);
	cr_expect_eq(s.restore_pages[4], 1, "range_fault of 8 pages: %llu in "
					    "[8,16)",
		     (unsigned long long)s.restore_pages[4]);
	cr_expect_eq(hist_sum(s.restore_us), 5);
	cr_expect_eq(s.restores, 12);
}
