// SPDX-License-Identifier: MIT
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

const char *const mem_kind_name[] = { "memfd", "alias", "anon", "huge" };

size_t test_ps = BASE_PS;
enum mem_kind test_kind = MEM_MEMFD;

void test_kind_begin(enum mem_kind kind)
{
	test_kind = kind;
	test_ps = kind == MEM_HUGE ? HUGE_PS : BASE_PS;
	if (kind != MEM_HUGE)
		return;
	const char *on = getenv("DXM_TEST_HUGE");
	if (!on || strcmp(on, "1"))
		cr_skip_test("SKIP: huge-page variants run in the "
			     "huge-behaviours test (DXM_TEST_HUGE=1 under "
			     "tests/hugepages.sh)");
}

/* dxm_alloc for kind (MEM_MEMFD or MEM_HUGE): 0 or the error; a huge
 * region the pool or the kernel cannot give skips the test. */
static int kind_alloc(struct dxm_ctx *ctx, enum mem_kind kind, size_t len,
		      void **p)
{
	if (kind != MEM_HUGE)
		return dxm_alloc(ctx, len, 0, p);
	int err = dxm_alloc(ctx, len, DXM_ALLOC_HUGE, p);
	if (err == -ENOMEM)
		cr_skip_test("SKIP: %zu huge pages of 2 MiB are not free: "
			     "reserve them in /proc/sys/vm/nr_hugepages "
			     "(tests/hugepages.sh does, as root)",
			     (len + HUGE_PS - 1) / HUGE_PS);
	if (err == -ENOSYS)
		cr_skip_test("SKIP: this kernel has no minor faults on "
			     "hugetlbfs (UFFD_FEATURE_MINOR_HUGETLBFS)");
	if (!err)
		cr_assert_eq(dxm_page_size(ctx, *p), (long)HUGE_PS);
	return err;
}

void *test_alloc(struct dxm_ctx *ctx, size_t len)
{
	void *p = NULL;
	int err = kind_alloc(ctx, test_kind, len, &p);
	cr_assert_eq(err, 0, "dxm_alloc(%zu, %s): %s", len,
		     mem_kind_name[test_kind], strerror(-err));
	return p;
}

struct dxm_ctx *ctx_or_skip(const struct dxm_ctx_opts *opts)
{
	/* The behaviours are the kernel's, one page per fault: a test that
	 * wants restore-around asks for a window. */
	struct dxm_ctx_opts o = { .sz = sizeof(o) };
	if (opts)
		memcpy(&o, opts, opts->sz < sizeof(o) ? opts->sz : sizeof(o));
	o.sz = sizeof(o);
	if (!o.restore_around)
		o.restore_around = 1;
	return ctx_create_or_skip(&o);
}

struct dxm_ctx *ctx_create_or_skip(const struct dxm_ctx_opts *opts)
{
	struct dxm_ctx *ctx = NULL;
	int err = dxm_ctx_create(&ctx, opts);
	if (err == -ENOSYS || err == -EPERM || err == -EACCES)
		cr_skip_test("SKIP: no usable userfaultfd here: %s (see the "
			     "library's message above)",
			     strerror(-err));
	cr_assert_eq(err, 0, "dxm_ctx_create: %s", strerror(-err));
	return ctx;
}

void mem_setup(struct dxm_ctx *ctx, enum mem_kind kind, size_t len,
	       struct mem *m)
{
	memset(m, 0, sizeof(*m));
	m->kind = kind;
	m->ctx = ctx;
	m->len = len;
	if (kind == MEM_ANON) {
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		cr_assert_neq(p, MAP_FAILED, "mmap(%zu): %s", len,
			      strerror(errno));
		int err = dxm_adopt(ctx, p, len, 0);
		if (err == -ENOSYS) {
			munmap(p, len);
			cr_skip_test("SKIP: dxm_adopt is not available here "
				     "(needs UFFD_FEATURE_MOVE, Linux 6.8, "
				     "and EVENT_REMOVE): %s",
				     strerror(-err));
		}
		cr_assert_eq(err, 0, "dxm_adopt(%zu): %s", len, strerror(-err));
		m->region = m->base = p;
		return;
	}
	int err = kind_alloc(ctx, kind, len, &m->region);
	cr_assert_eq(err, 0, "dxm_alloc(%zu, %s): %s", len,
		     mem_kind_name[kind], strerror(-err));
	m->base = m->region;
	if (kind == MEM_ALIAS) {
		err = dxm_alias(ctx, m->region, &m->base);
		cr_assert_eq(err, 0, "dxm_alias: %s", strerror(-err));
	}
}

void mem_teardown(struct mem *m)
{
	cr_assert_eq(dxm_free(m->ctx, m->region), 0);
	if (m->kind == MEM_ANON)
		cr_assert_eq(munmap(m->region, m->len), 0);
}

struct dxm_ctx *ctx_mem(enum mem_kind kind, size_t len, struct mem *m)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	mem_setup(ctx, kind, len, m);
	return ctx;
}

void mem_done(struct mem *m)
{
	mem_teardown(m);
	dxm_ctx_destroy(m->ctx);
}

void anon_setup(struct anon_fix *f, size_t len)
{
	memset(f, 0, sizeof(*f));
	f->ctx = ctx_mem(MEM_ANON, len, &f->m);
	f->p = f->m.base;
	fill_index(f->p, len, 0);
}

void anon_teardown(struct anon_fix *f)
{
	mem_done(&f->m);
}

size_t threads_named(const char *prefix, pid_t *tids, size_t max)
{
	size_t k = 0;
	DIR *d = opendir("/proc/self/task");
	cr_assert(d, "opendir(/proc/self/task): %s", strerror(errno));
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], name[32] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(name, sizeof(name), f) &&
		    !strncmp(name, prefix, strlen(prefix))) {
			if (k < max)
				tids[k] = atoi(e->d_name);
			k++;
		}
		fclose(f);
	}
	closedir(d);
	return k;
}

uint64_t pagemap_entry(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	cr_assert(fd >= 0, "open pagemap: %s", strerror(errno));
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)addr / BASE_PS * sizeof(e));
	cr_assert_eq(pread(fd, &e, sizeof(e), off), (ssize_t)sizeof(e));
	close(fd);
	return e;
}

/* Mapped: present (bit 63), or a swap-type entry (bit 62).  With no swap
 * on these machines, a swap-type entry is a page being migrated (memory
 * compaction moves pages at any time): still mapped.  A revoked page has
 * no entry at all. */
#define MAPPED(e) (((e) >> 62) & 3)

bool page_present(const void *addr)
{
	return MAPPED(pagemap_entry(addr)) != 0;
}

size_t pages_present(const void *addr, size_t len)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	cr_assert(fd >= 0, "open pagemap: %s", strerror(errno));
	/* Entries per page: 1, or 512 base pages per huge page, read 512
	 * at a time. */
	size_t per = PS / BASE_PS, n = len / BASE_PS, k = 0, in_page = 0;
	uint64_t buf[512];
	for (size_t i = 0; i < n; i += 512) {
		size_t c = n - i < 512 ? n - i : 512;
		off_t off = (off_t)(((uintptr_t)addr / BASE_PS + i) *
				    sizeof(buf[0]));
		cr_assert_eq(pread(fd, buf, c * sizeof(buf[0]), off),
			     (ssize_t)(c * sizeof(buf[0])));
		for (size_t j = 0; j < c; j++) {
			in_page += MAPPED(buf[j]) != 0;
			if ((i + j + 1) % per)
				continue;
			cr_assert(in_page == 0 || in_page == per,
				  "the page at %p is mapped in part: %zu of "
				  "its %zu base pages",
				  (const char *)addr +
					  (i + j + 1 - per) * BASE_PS,
				  in_page, per);
			k += in_page != 0;
			in_page = 0;
		}
	}
	close(fd);
	return k;
}

static bool rec_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq)
{
	struct recorder *rc = dxm_notifier_priv(n);
	pthread_mutex_lock(&rc->lock);
	rc->count++;
	if (r->event == DXM_EVENT_EXCLUSIVE && rc->ignore_owner &&
	    r->owner == rc->ignore_owner) {
		pthread_mutex_unlock(&rc->lock);
		return true;
	}
	dxm_notifier_set_seq(n, cur_seq);
	if (rc->nrec < REC_MAX)
		rc->rec[rc->nrec++] = (struct rec_event){
			(uintptr_t)r->start, (uintptr_t)r->end, r->event,
			r->owner };
	if (rc->hook)
		rc->hook(rc, r);
	pthread_mutex_unlock(&rc->lock);
	return true;
}

static const struct dxm_notifier_ops rec_ops = { .invalidate = rec_invalidate };

void recorder_insert(struct dxm_ctx *ctx, struct recorder *r, void *start,
		     size_t len)
{
	pthread_mutex_init(&r->lock, NULL);
	int err = dxm_notifier_insert(ctx, start, len, &rec_ops, r, &r->n);
	cr_assert_eq(err, 0, "dxm_notifier_insert: %s", strerror(-err));
}

void recorder_insert_ignoring(struct dxm_ctx *ctx, struct recorder *r,
			      void *start, size_t len, const void *owner)
{
	r->ignore_owner = owner;
	recorder_insert(ctx, r, start, len);
}

void recorder_remove(struct recorder *r)
{
	dxm_notifier_remove(r->n);
	r->n = NULL;
}

size_t recorder_count_event(struct recorder *r, enum dxm_event ev)
{
	size_t k = 0;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrec; i++)
		k += r->rec[i].event == ev;
	pthread_mutex_unlock(&r->lock);
	return k;
}

bool recorder_saw(struct recorder *r, enum dxm_event ev, const void *addr)
{
	uintptr_t a = (uintptr_t)addr;
	bool seen = false;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrec && !seen; i++)
		seen = r->rec[i].event == ev && r->rec[i].start <= a &&
		       r->rec[i].end >= a + PS;
	pthread_mutex_unlock(&r->lock);
	return seen;
}

bool rec_covers(struct recorder *r, enum dxm_event ev, const void *start,
		size_t len)
{
	for (size_t off = 0; off < len; off += PS)
		if (!recorder_saw(r, ev, (const char *)start + off))
			return false;
	return true;
}

bool rec_overlaps(struct recorder *r, enum dxm_event ev, const void *start,
		  const void *end)
{
	bool hit = false;
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nrec && !hit; i++)
		hit = r->rec[i].event == ev &&
		      r->rec[i].start < (uintptr_t)end &&
		      r->rec[i].end > (uintptr_t)start;
	pthread_mutex_unlock(&r->lock);
	return hit;
}

void recorder_hook(struct recorder *r,
		   int (*hook)(struct recorder *r,
			       const struct dxm_range *range),
		   void *arg)
{
	pthread_mutex_lock(&r->lock);
	r->hook_arg = arg;
	r->hook = hook;
	pthread_mutex_unlock(&r->lock);
}

void take_locked(struct dxm_ctx *ctx, char *p, size_t len, const void *owner,
		 void **dev)
{
	size_t n = len / PS;
	cr_assert_eq(dxm_make_exclusive(ctx, p, len, owner, dev), (long)n);
	for (size_t i = 0; i < n; i++) {
		cr_assert_not_null(dev[i], "page %zu refused", i);
		cr_assert_neq(dev[i], p + i * PS,
			      "the device address is the CPU address");
		wr((uint64_t *)dev[i] + 1, 1000 + i);
	}
	cr_assert_eq(pages_present(p, len), 0,
		     "an exclusive page is still mapped for the CPU");
}

void take(struct dxm_ctx *ctx, char *p, size_t len, const void *owner,
	  void **dev)
{
	take_locked(ctx, p, len, owner, dev);
	dxm_exclusive_unlock(ctx, p, len, dev);
}

void fill_index(void *p, size_t len, uint64_t add)
{
	uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = i + add;
}

bool check_index(const void *p, size_t len, uint64_t add)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != i + add)
			return false;
	return true;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* pthread_timedjoin_np with a timeout ms milliseconds from now: 0, or its
 * error. */
static int join_timed(pthread_t t, unsigned ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return pthread_timedjoin_np(t, NULL, &ts);
}

bool join_within(pthread_t t, unsigned ms)
{
	return join_timed(t, ms) == 0;
}

void join_or_fail(pthread_t t, unsigned s, const char *what)
{
	int e = join_timed(t, s * 1000);
	cr_assert_eq(e, 0, "%s did not finish within %u s: %s", what, s,
		     strerror(e));
}

void no_core(void)
{
	struct rlimit rl = { 0, 0 };
	setrlimit(RLIMIT_CORE, &rl);
}

int wait_child(pid_t pid)
{
	int status;
	pid_t got;
	while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
		;
	cr_assert_eq(got, pid, "waitpid: %s", strerror(errno));
	return status;
}

void child_start(pid_t parent, int wfd)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(120);
	if (wfd >= 0)
		close(wfd);
}

void child_checks_passed(pid_t pid)
{
	int status = wait_child(pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x (check %d failed)", status,
		  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

void child_touch_segfaults(size_t i, char *addr, bool write,
			   int (*check)(void *arg), void *arg)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		child_start(parent, -1);
		no_core();
		int bad = check ? check(arg) : 0;
		if (bad)
			_exit(bad);
		if (write)
			wr(addr, 1);
		else
			(void)rd(addr);
		_exit(42);
	}
	int status = wait_child(pid);
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV,
		  "target %zu: the child was not killed by SIGSEGV "
		  "(status %#x)",
		  i, status);
}

static sigjmp_buf segv_jb;

static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(segv_jb, 1);
}

bool store_segfaults(void *addr, uint64_t v)
{
	struct sigaction sa = { .sa_handler = on_segv }, old;
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGSEGV, &sa, &old), 0);
	volatile bool faulted = true;
	if (!sigsetjmp(segv_jb, 1)) {
		wr(addr, v);
		faulted = false;
	}
	cr_assert_eq(sigaction(SIGSEGV, &old, NULL), 0);
	return faulted;
}

size_t maps_lines(const char *needle)
{
	FILE *f = fopen("/proc/self/maps", "re");
	cr_assert_not_null(f, "/proc/self/maps: %s", strerror(errno));
	char line[1024];
	size_t n = 0;
	while (fgets(line, sizeof(line), f))
		n += !needle || strstr(line, needle);
	fclose(f);
	return n;
}

char *anon_map(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap: %s", strerror(errno));
	return p;
}

void adopt_or_skip(struct dxm_ctx *ctx, void *p, size_t len)
{
	int err = dxm_adopt(ctx, p, len, 0);
	if (err == -ENOSYS)
		cr_skip_test("SKIP: dxm_adopt is not available here (needs "
			     "UFFD_FEATURE_MOVE, Linux 6.8)");
	cr_assert_eq(err, 0, "dxm_adopt: %s", strerror(-err));
}

struct dxm_stats stats(struct dxm_ctx *ctx)
{
	struct dxm_stats st;
	cr_assert_eq(dxm_stats(ctx, &st, sizeof(st)), 0);
	return st;
}

/* Whether addr is still a mapping of a dxm memfd.  Not just "mapped":
 * once a view is unmapped, anything may be mapped there (ASan's allocator
 * took a freed view's address in a CI run). */
bool memfd_view_mapped(const void *addr)
{
	FILE *f = fopen("/proc/self/maps", "re");
	cr_assert_not_null(f);
	char line[512];
	bool ours = false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) == 2 &&
		    a <= (uintptr_t)addr && (uintptr_t)addr < b) {
			ours = strstr(line, "/memfd:dxm") != NULL;
			break;
		}
	}
	fclose(f);
	return ours;
}

char *reserve_aligned(size_t len)
{
	char *p = mmap(NULL, len + PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap(%zu): %s", len + PS,
		      strerror(errno));
	char *a = (char *)(((uintptr_t)p + PS - 1) & ~(uintptr_t)(PS - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + len < p + len + PS)
		munmap(a + len, (size_t)(p + len + PS - (a + len)));
	return a;
}

struct dxm_mirror *mirror_create(struct dxm_ctx *ctx)
{
	struct dxm_mirror *mir;
	int err = dxm_mirror_create(ctx, &mir);
	cr_assert_eq(err, 0, "dxm_mirror_create: %s", strerror(-err));
	return mir;
}

struct dxm_mirror *mirror_exclusive(struct dxm_ctx *ctx, void *p, size_t len)
{
	struct dxm_mirror *mir = mirror_create(ctx);
	cr_assert_eq(dxm_mirror_exclusive(mir, p, len), 0);
	cr_assert_eq(dxm_mirror_check_exclusive(mir, p, len), (long)(len / PS));
	cr_assert_eq(pages_present(p, len), 0);
	return mir;
}

/* ------------------------------------------------------------ contend */

#define COUNTERS 8 /* one per page */

struct contention {
	struct mem m;
	struct dxm_mirror *dev[4]; /* none on huge pages: raw_device_add */
	unsigned long dev_ops;
	atomic_int go, devices_left;
	atomic_ulong cpu_incs;
	atomic_int err;
	int pagemap;		/* raw_device_add's /proc/self/pagemap */
	atomic_ulong raw_stale; /* ... pages it held that the CPU mapped */
};

static uint64_t *counter(struct contention *h, unsigned i)
{
	return (uint64_t *)((char *)h->m.base + (size_t)(i % COUNTERS) * PS);
}

static void *contend_cpu(void *arg)
{
	struct contention *h = arg;
	unsigned long i = 0;
	while (!atomic_load(&h->go))
		;
	/* Until every device is done, and at least 2000 increments. */
	for (; i < 2000 || atomic_load(&h->devices_left); i++)
		__atomic_fetch_add(counter(h, (unsigned)i), 1,
				   __ATOMIC_SEQ_CST);
	atomic_fetch_add(&h->cpu_incs, i);
	return NULL;
}

struct contend_dev {
	struct contention *h;
	unsigned idx;
};

/*
 * A device's add on huge pages, where the reference device does not go
 * (mirror_create): the counter's page taken exclusive (it comes back
 * locked: a CPU access waits), a plain load and store through the device
 * view (a CPU access let in meanwhile would lose an update), unlocked.  A
 * page locked by another device, or that the CPU is taking back, is
 * refused: again.  While it holds the page, no CPU view may map it
 * (/proc/self/pagemap).
 */
static int raw_device_add(struct contention *h, const void *owner,
			  uint64_t *c)
{
	char *page = (char *)((uintptr_t)c & ~(uintptr_t)(PS - 1));
	void *dev[1];
	for (;;) {
		long r = dxm_make_exclusive(h->m.ctx, page, PS, owner, dev);
		if (r < 0)
			return (int)r;
		if (dev[0])
			break;
		sched_yield();
	}
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)page / BASE_PS * sizeof(e));
	if (pread(h->pagemap, &e, sizeof(e), off) != (ssize_t)sizeof(e) ||
	    MAPPED(e) || !dxm_check_exclusive(h->m.ctx, page, PS, dev))
		atomic_fetch_add(&h->raw_stale, 1);
	uint64_t *d = (uint64_t *)((char *)dev[0] + ((char *)c - page));
	wr(d, rd(d) + 1);
	dxm_exclusive_unlock(h->m.ctx, page, PS, dev);
	return 0;
}

static void *contend_device(void *arg)
{
	struct contend_dev *a = arg;
	struct contention *h = a->h;
	while (!atomic_load(&h->go))
		;
	for (unsigned long i = 0; i < h->dev_ops; i++) {
		uint64_t *c = counter(h, (unsigned)i + a->idx);
		int err = h->dev[a->idx] ? dxm_mirror_atomic_add(h->dev[a->idx],
								 c, 1, NULL)
					 : raw_device_add(h, a, c);
		if (err) {
			atomic_store(&h->err, err);
			break;
		}
	}
	atomic_fetch_sub(&h->devices_left, 1);
	return NULL;
}

void contend(const struct dxm_ctx_opts *opts, enum mem_kind kind,
	     unsigned ncpu, unsigned ndev, unsigned long dev_ops)
{
	test_kind_begin(kind);
	struct dxm_ctx *ctx = ctx_or_skip(opts);
	struct contention h = { .dev_ops = dev_ops, .pagemap = -1 };
	pthread_t t[16];
	struct contend_dev da[4];
	cr_assert(ncpu + ndev <= 16 && ndev <= 4);
	mem_setup(ctx, kind, COUNTERS * PS, &h.m);
	if (kind == MEM_HUGE) {
		h.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		cr_assert(h.pagemap >= 0, "open pagemap: %s", strerror(errno));
	}
	for (unsigned i = 0; kind != MEM_HUGE && i < ndev; i++)
		cr_assert_eq(dxm_mirror_create(ctx, &h.dev[i]), 0);
	atomic_store(&h.devices_left, (int)ndev);
	for (unsigned i = 0; i < ncpu; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, contend_cpu, &h), 0);
	for (unsigned i = 0; i < ndev; i++) {
		da[i] = (struct contend_dev){ &h, i };
		cr_assert_eq(pthread_create(&t[ncpu + i], NULL, contend_device,
					    &da[i]),
			     0);
	}
	atomic_store(&h.go, 1);
	for (unsigned i = ncpu; i < ncpu + ndev; i++)
		join_or_fail(t[i], 45, "a device thread");
	for (unsigned i = 0; i < ncpu; i++)
		join_or_fail(t[i], 5, "a CPU thread");
	cr_assert_eq(atomic_load(&h.err), 0, "device error %s",
		     strerror(-atomic_load(&h.err)));

	uint64_t sum = 0;
	for (unsigned i = 0; i < COUNTERS; i++)
		sum += *counter(&h, i);
	uint64_t expect = atomic_load(&h.cpu_incs) + (uint64_t)ndev * dev_ops;
	cr_assert_eq(sum, expect, "lost %lld updates (%s, %u cpu, %u dev)",
		     (long long)(expect - sum), mem_kind_name[kind], ncpu,
		     ndev);

	cr_assert_eq(atomic_load(&h.raw_stale), 0,
		     "%lu times the CPU mapped a page a device held",
		     atomic_load(&h.raw_stale));
	if (h.pagemap >= 0)
		close(h.pagemap);
	for (unsigned i = 0; kind != MEM_HUGE && i < ndev; i++) {
		struct dxm_mirror_stats ms;
		dxm_mirror_get_stats(h.dev[i], &ms);
		cr_assert_eq(ms.stale_accesses, 0,
			     "device %u touched %llu pages dxm no longer held",
			     i, (unsigned long long)ms.stale_accesses);
		cr_assert_eq(ms.atomics, dev_ops);
		dxm_mirror_destroy(h.dev[i]);
	}
	/* Both sides really contended: the devices took pages from the CPU
	 * and the CPU took them back. */
	struct dxm_stats st = stats(ctx);
	cr_assert_gt(st.conversions, 0);
	cr_assert_gt(st.restores, 0);
	cr_assert_eq(st.stale_device_faults, 0);
	mem_done(&h.m);
}
