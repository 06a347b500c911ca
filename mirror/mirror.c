// SPDX-License-Identifier: MIT
/*
 * The software reference device.  Uses dxm's public API only.
 *
 * Locking: m->lock protects the page table and is the driver's lock of
 * the notifier protocol: the notifier callbacks take it to erase entries
 * and to call dxm_notifier_set_seq(); every device access through an
 * entry happens with it held.  So once a callback returned, the device no
 * longer touches the range.  dxm calls (make_exclusive, range_fault,
 * exclusive_unlock) are made without m->lock, as nouveau does.
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>

#include "dxm_mirror.h"

enum { TAG_READ = 1, TAG_WRITE = 2, TAG_ATOMIC = 4 };

struct entry {
	uintptr_t page; /* CPU page address */
	char *dev;	/* device-side address */
	unsigned tags;
	struct entry *next;
};

struct dxm_mirror {
	struct dxm_ctx *ctx;
	size_t psize;
	pthread_mutex_t lock;
	struct entry **bucket;
	size_t nbuckets, count;
	struct dxm_notifier *all; /* erases entries */
	struct dxm_mirror_stats st;
	bool checks;
};

/* Per-operation interval notifier for the sequence protocol (nouveau). */
struct op {
	struct dxm_mirror *m;
	struct dxm_notifier *n;
};

static inline size_t hash(struct dxm_mirror *m, uintptr_t page)
{
	uint64_t k = (uint64_t)(page / m->psize) * 0x9E3779B97F4A7C15ull;
	return (size_t)(k >> 20) & (m->nbuckets - 1);
}

static struct entry *lookup(struct dxm_mirror *m, uintptr_t page)
{
	for (struct entry *e = m->bucket[hash(m, page)]; e; e = e->next)
		if (e->page == page)
			return e;
	return NULL;
}

static void grow(struct dxm_mirror *m)
{
	size_t nb = m->nbuckets * 2;
	struct entry **b = calloc(nb, sizeof(*b));
	if (!b)
		return; /* keep the longer chains */
	struct entry **old = m->bucket;
	size_t on = m->nbuckets;
	m->bucket = b;
	m->nbuckets = nb;
	for (size_t i = 0; i < on; i++)
		while (old[i]) {
			struct entry *e = old[i];
			old[i] = e->next;
			size_t h = hash(m, e->page);
			e->next = b[h];
			b[h] = e;
		}
	free(old);
}

static int install(struct dxm_mirror *m, uintptr_t page, void *dev,
		   unsigned tags)
{
	struct entry *e = lookup(m, page);
	if (!e) {
		e = malloc(sizeof(*e));
		if (!e)
			return -ENOMEM;
		e->page = page;
		size_t h = hash(m, page);
		e->next = m->bucket[h];
		m->bucket[h] = e;
		if (++m->count > 2 * m->nbuckets)
			grow(m);
	}
	e->dev = dev;
	e->tags = tags;
	return 0;
}

static size_t erase_range(struct dxm_mirror *m, uintptr_t s, uintptr_t e)
{
	size_t n = 0;
	if ((e - s) / m->psize < m->nbuckets) {
		for (uintptr_t p = s; p < e; p += m->psize) {
			struct entry **pp = &m->bucket[hash(m, p)];
			for (; *pp; pp = &(*pp)->next)
				if ((*pp)->page == p) {
					struct entry *x = *pp;
					*pp = x->next;
					free(x);
					n++;
					break;
				}
		}
	} else {
		for (size_t i = 0; i < m->nbuckets; i++)
			for (struct entry **pp = &m->bucket[i]; *pp;) {
				struct entry *x = *pp;
				if (x->page >= s && x->page < e) {
					*pp = x->next;
					free(x);
					n++;
				} else {
					pp = &x->next;
				}
			}
	}
	m->count -= n;
	return n;
}

static bool own_conversion(struct dxm_mirror *m, const struct dxm_range *r)
{
	/* Ignore our own conversions, or the retry loop livelocks. */
	return r->event == DXM_EVENT_EXCLUSIVE && r->owner == m;
}

static bool invalidate_all(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq)
{
	struct dxm_mirror *m = dxm_notifier_priv(n);
	if (own_conversion(m, r))
		return true;
	pthread_mutex_lock(&m->lock);
	dxm_notifier_set_seq(n, cur_seq);
	size_t k = erase_range(m, (uintptr_t)r->start, (uintptr_t)r->end);
	if (k) {
		m->st.invalidations++;
		m->st.entries_erased += k;
	}
	pthread_mutex_unlock(&m->lock);
	return true;
}

static bool invalidate_op(struct dxm_notifier *n, const struct dxm_range *r,
			  unsigned long cur_seq)
{
	struct op *op = dxm_notifier_priv(n);
	if (own_conversion(op->m, r))
		return true;
	pthread_mutex_lock(&op->m->lock);
	dxm_notifier_set_seq(n, cur_seq);
	pthread_mutex_unlock(&op->m->lock);
	return true;
}

static const struct dxm_notifier_ops all_ops = { .invalidate = invalidate_all };
static const struct dxm_notifier_ops op_ops = { .invalidate = invalidate_op };

int dxm_mirror_create(struct dxm_ctx *ctx, struct dxm_mirror **mp)
{
	if (!ctx || !mp)
		return -EINVAL;
	struct dxm_mirror *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->ctx = ctx;
	m->checks = true;
	m->psize = (size_t)sysconf(_SC_PAGESIZE);
	m->nbuckets = 1024;
	m->bucket = calloc(m->nbuckets, sizeof(*m->bucket));
	pthread_mutex_init(&m->lock, NULL);
	int err = m->bucket ? 0 : -ENOMEM;
	/* The whole user address space: every invalidation reaches us. */
	if (!err)
		err = dxm_notifier_insert(ctx, (void *)m->psize,
					  ((size_t)1 << 47) - m->psize,
					  &all_ops, m, &m->all);
	if (err) {
		free(m->bucket);
		free(m);
		return err;
	}
	*mp = m;
	return 0;
}

void dxm_mirror_flush(struct dxm_mirror *m)
{
	pthread_mutex_lock(&m->lock);
	erase_range(m, 0, UINTPTR_MAX);
	pthread_mutex_unlock(&m->lock);
}

void dxm_mirror_destroy(struct dxm_mirror *m)
{
	if (!m)
		return;
	dxm_notifier_remove(m->all);
	dxm_mirror_flush(m);
	pthread_mutex_destroy(&m->lock);
	free(m->bucket);
	free(m);
}

static int check_range(struct dxm_mirror *m, void *addr, size_t len)
{
	if (!m || !addr || !len || ((uintptr_t)addr | len) & (m->psize - 1))
		return -EINVAL;
	return 0;
}

static int op_begin(struct dxm_mirror *m, struct op *op, void *addr,
		    size_t len)
{
	op->m = m;
	return dxm_notifier_insert(m->ctx, addr, len, &op_ops, op, &op->n);
}

/*
 * Ordinary access: entries with `need` tags, faulting the missing pages
 * with dxm_range_fault() under the sequence protocol.  Returns with
 * m->lock held and every page of the range mapped, or an error unlocked.
 */
static int map_range(struct dxm_mirror *m, uintptr_t s, size_t len,
		     unsigned need)
{
	size_t n = len / m->psize;
again:
	pthread_mutex_lock(&m->lock);
	bool all = true;
	for (size_t i = 0; i < n && all; i++) {
		struct entry *e = lookup(m, s + i * m->psize);
		all = e && (e->tags & need) == need;
	}
	if (all)
		return 0;
	pthread_mutex_unlock(&m->lock);

	void **dev = malloc(n * sizeof(*dev));
	if (!dev)
		return -ENOMEM;
	struct op op;
	int err = op_begin(m, &op, (void *)s, len);
	if (err) {
		free(dev);
		return err;
	}
	for (;;) {
		unsigned long seq = dxm_notifier_read_begin(op.n);
		long r = dxm_range_fault(m->ctx, (void *)s, len,
					 (need & TAG_WRITE) ? DXM_FAULT_WRITE
							    : 0,
					 dev);
		pthread_mutex_lock(&m->lock);
		m->st.faults++;
		if (r < 0) {
			pthread_mutex_unlock(&m->lock);
			err = (int)r;
			break;
		}
		if (dxm_notifier_read_retry(op.n, seq)) {
			pthread_mutex_unlock(&m->lock);
			continue;
		}
		for (size_t i = 0; i < n && !err; i++) {
			uintptr_t p = s + i * m->psize;
			struct entry *e = lookup(m, p);
			if (e && (e->tags & need) == need)
				continue;
			err = install(m, p, dev[i],
				      TAG_READ | (need & TAG_WRITE));
		}
		/* Never remove the notifier with m->lock held: removal waits
		 * for a running callback, which waits for m->lock. */
		pthread_mutex_unlock(&m->lock);
		break;
	}
	dxm_notifier_remove(op.n);
	free(dev);
	if (err)
		return err;
	goto again; /* returns locked once every entry is (still) there */
}

/* One page copied as a DMA engine would: word by word, each word read or
 * written once (relaxed atomics, so that the race with the CPU that this
 * non-exclusive access has by design is defined behaviour, not C's
 * undefined data race; ThreadSanitizer sees atomics). */
static void dma_copy(void *dst, const void *src, size_t len)
{
	if (((uintptr_t)dst | (uintptr_t)src) & 7) {
		memcpy(dst, src, len); /* a caller's unaligned buffer */
		return;
	}
	uint64_t *d = dst;
	const uint64_t *s = src;
	for (size_t i = 0; i < len / sizeof(*d); i++)
		__atomic_store_n(&d[i], __atomic_load_n(&s[i], __ATOMIC_RELAXED),
				 __ATOMIC_RELAXED);
}

static int copy(struct dxm_mirror *m, void *addr, void *buf, size_t len,
		bool write)
{
	int err = check_range(m, addr, len);
	if (err)
		return err;
	if (!buf)
		return -EINVAL;
	uintptr_t s = (uintptr_t)addr;
	err = map_range(m, s, len, write ? TAG_READ | TAG_WRITE : TAG_READ);
	if (err)
		return err;
	for (size_t off = 0; off < len; off += m->psize) {
		struct entry *e = lookup(m, s + off);
		if (write)
			dma_copy(e->dev, (char *)buf + off, m->psize);
		else
			dma_copy((char *)buf + off, e->dev, m->psize);
	}
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int dxm_mirror_read(struct dxm_mirror *m, void *addr, void *buf, size_t len)
{
	return copy(m, addr, buf, len, false);
}

int dxm_mirror_write(struct dxm_mirror *m, void *addr, const void *buf,
		     size_t len)
{
	return copy(m, addr, (void *)buf, len, true);
}

int dxm_mirror_exclusive(struct dxm_mirror *m, void *addr, size_t len)
{
	int err = check_range(m, addr, len);
	if (err)
		return err;
	size_t n = len / m->psize, got = 0;
	void **dev = malloc(n * sizeof(*dev));
	if (!dev)
		return -ENOMEM;
	struct op op;
	err = op_begin(m, &op, addr, len);
	if (err) {
		free(dev);
		return err;
	}
	for (;;) {
		unsigned long seq = dxm_notifier_read_begin(op.n);
		long r = dxm_make_exclusive(m->ctx, addr, len, m, dev);
		if (r < 0) {
			err = (int)r;
			break;
		}
		pthread_mutex_lock(&m->lock);
		m->st.exclusive_calls++;
		if (dxm_notifier_read_retry(op.n, seq)) {
			m->st.exclusive_retries++;
			pthread_mutex_unlock(&m->lock);
			dxm_exclusive_unlock(m->ctx, addr, len, dev);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			uintptr_t p = (uintptr_t)addr + i * m->psize;
			if (!dev[i])
				continue;
			if (install(m, p, dev[i],
				    TAG_READ | TAG_WRITE | TAG_ATOMIC) == 0)
				got++;
		}
		pthread_mutex_unlock(&m->lock);
		dxm_exclusive_unlock(m->ctx, addr, len, dev);
		break;
	}
	dxm_notifier_remove(op.n);
	free(dev);
	if (!err && got < n)
		err = -EBUSY;
	return err;
}

long dxm_mirror_check_exclusive(struct dxm_mirror *m, void *addr, size_t len)
{
	int err = check_range(m, addr, len);
	if (err)
		return err;
	long k = 0;
	pthread_mutex_lock(&m->lock);
	for (size_t off = 0; off < len; off += m->psize) {
		struct entry *e = lookup(m, (uintptr_t)addr + off);
		if (e && (e->tags & TAG_ATOMIC))
			k++;
	}
	pthread_mutex_unlock(&m->lock);
	return k;
}

/* The non-atomic engine: load, a pause wide enough to lose races, store. */
static uint64_t rmw(volatile uint64_t *p, uint64_t delta)
{
	uint64_t v = *p;
	for (int i = 0; i < 32; i++) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#else
		__asm__ __volatile__("" ::: "memory");
#endif
	}
	*p = v + delta;
	return v;
}

int dxm_mirror_atomic_add(struct dxm_mirror *m, uint64_t *addr, uint64_t delta,
			  uint64_t *old)
{
	if (!m || !addr || ((uintptr_t)addr & 7))
		return -EINVAL;
	uintptr_t page = (uintptr_t)addr & ~(uintptr_t)(m->psize - 1);
	size_t off = (uintptr_t)addr - page;
	for (;;) {
		pthread_mutex_lock(&m->lock);
		struct entry *e = lookup(m, page);
		if (e && (e->tags & TAG_ATOMIC)) {
			void *dev = e->dev;
			/* Instrumentation: dxm must still hold the page for
			 * us; if it does not, the library broke its promise. */
			if (m->checks &&
			    !dxm_check_exclusive(m->ctx, (void *)page,
						 m->psize, &dev))
				m->st.stale_accesses++;
			uint64_t v = rmw((uint64_t *)(e->dev + off), delta);
			m->st.atomics++;
			pthread_mutex_unlock(&m->lock);
			if (old)
				*old = v;
			return 0;
		}
		pthread_mutex_unlock(&m->lock);
		int err = dxm_mirror_exclusive(m, (void *)page, m->psize);
		if (err == -EBUSY)
			sched_yield(); /* locked by another device, or the CPU
					  is taking it back: try again */
		else if (err)
			return err;
	}
}

int dxm_mirror_racy_add(struct dxm_mirror *m, uint64_t *addr, uint64_t delta)
{
	if (!m || !addr || ((uintptr_t)addr & 7))
		return -EINVAL;
	uintptr_t page = (uintptr_t)addr & ~(uintptr_t)(m->psize - 1);
	int err = map_range(m, page, m->psize, TAG_READ | TAG_WRITE);
	if (err)
		return err;
	struct entry *e = lookup(m, page);
	rmw((uint64_t *)(e->dev + ((uintptr_t)addr - page)), delta);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

void dxm_mirror_set_checks(struct dxm_mirror *m, bool on)
{
	pthread_mutex_lock(&m->lock);
	m->checks = on;
	pthread_mutex_unlock(&m->lock);
}

void dxm_mirror_get_stats(struct dxm_mirror *m, struct dxm_mirror_stats *st)
{
	pthread_mutex_lock(&m->lock);
	*st = m->st;
	pthread_mutex_unlock(&m->lock);
}
