// SPDX-License-Identifier: MIT
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

const char *const mem_kind_name[] = { "memfd", "alias", "anon" };

struct dxm_ctx *ctx_or_skip(const struct dxm_ctx_opts *opts)
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
	int err = dxm_alloc(ctx, len, 0, &m->region);
	cr_assert_eq(err, 0, "dxm_alloc(%zu): %s", len, strerror(-err));
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

bool page_present(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	cr_assert(fd >= 0, "open pagemap: %s", strerror(errno));
	uint64_t e = 0;
	off_t off = (off_t)((uintptr_t)addr / PS * sizeof(e));
	cr_assert_eq(pread(fd, &e, sizeof(e), off), (ssize_t)sizeof(e));
	close(fd);
	return (e >> 63) & 1;
}

size_t pages_present(const void *addr, size_t len)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	cr_assert(fd >= 0, "open pagemap: %s", strerror(errno));
	size_t n = len / PS, k = 0;
	uint64_t buf[512];
	for (size_t i = 0; i < n; i += 512) {
		size_t c = n - i < 512 ? n - i : 512;
		off_t off = (off_t)(((uintptr_t)addr / PS + i) * sizeof(buf[0]));
		cr_assert_eq(pread(fd, buf, c * sizeof(buf[0]), off),
			     (ssize_t)(c * sizeof(buf[0])));
		for (size_t j = 0; j < c; j++)
			k += (buf[j] >> 63) & 1;
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
