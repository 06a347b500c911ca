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
 *
 * Page sizes: an operation works in the page size of the memory it
 * touches (dxm_page_size() at the start of its range: the base page, or
 * 2 MiB for a DXM_ALLOC_HUGE region), and an entry covers one such page,
 * keyed by its first byte's address and its size.  The hash is over base
 * page numbers either way.  A device access to a word finds the base
 * page's entry first (base-page memory pays nothing more than before),
 * then, only while huge entries exist, the entry of each huge page size
 * the mirror has seen that would contain it.
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
	size_t size;	/* its page size: m->psize, or a huge page's */
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
	size_t nhuge;	 /* entries larger than psize, among count */
	uint64_t hsizes; /* bit k: an entry of 2^k bytes (> psize) was made */
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

static struct entry *lookup(struct dxm_mirror *m, uintptr_t page, size_t size)
{
	for (struct entry *e = m->bucket[hash(m, page)]; e; e = e->next)
		if (e->page == page && e->size == size)
			return e;
	return NULL;
}

/* The entry of the page that holds the byte at a, whatever its size. */
static struct entry *lookup_addr(struct dxm_mirror *m, uintptr_t a)
{
	struct entry *e = lookup(m, a & ~(uintptr_t)(m->psize - 1), m->psize);
	if (e || !m->nhuge)
		return e;
	for (uint64_t b = m->hsizes; b && !e; b &= b - 1) {
		size_t size = (size_t)1 << __builtin_ctzll(b);
		e = lookup(m, a & ~(uintptr_t)(size - 1), size);
	}
	return e;
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

static int install(struct dxm_mirror *m, uintptr_t page, size_t size, void *dev,
		   unsigned tags)
{
	struct entry *e = lookup(m, page, size);
	if (!e) {
		e = malloc(sizeof(*e));
		if (!e)
			return -ENOMEM;
		e->page = page;
		e->size = size;
		size_t h = hash(m, page);
		e->next = m->bucket[h];
		m->bucket[h] = e;
		if (size != m->psize) {
			m->nhuge++;
			m->hsizes |= (uint64_t)1 << __builtin_ctzll(size);
		}
		if (++m->count > 2 * m->nbuckets)
			grow(m);
	}
	e->dev = dev;
	e->tags = tags;
	return 0;
}

/* Unlink and free *pp; returns 1. */
static size_t drop(struct dxm_mirror *m, struct entry **pp)
{
	struct entry *x = *pp;
	*pp = x->next;
	if (x->size != m->psize)
		m->nhuge--;
	free(x);
	return 1;
}

/* The entry of (page, size), if any; returns how many were erased. */
static size_t erase_one(struct dxm_mirror *m, uintptr_t page, size_t size)
{
	for (struct entry **pp = &m->bucket[hash(m, page)]; *pp;
	     pp = &(*pp)->next)
		if ((*pp)->page == page && (*pp)->size == size)
			return drop(m, pp);
	return 0;
}

/* Erase every entry whose page overlaps [s, e): a huge entry too when the
 * range covers only part of its page. */
static size_t erase_range(struct dxm_mirror *m, uintptr_t s, uintptr_t e)
{
	size_t n = 0;
	bool base = m->count > m->nhuge;
	/* The lookups a walk of the range would take: one per base page
	 * (while base entries exist), one per page of each huge size. */
	size_t steps = base ? (e - s) / m->psize : 0;
	for (uint64_t b = m->nhuge ? m->hsizes : 0; b && e > s; b &= b - 1) {
		unsigned k = (unsigned)__builtin_ctzll(b);
		steps += ((e - 1) >> k) - (s >> k) + 1;
	}
	if (steps < m->nbuckets) {
		if (base)
			for (uintptr_t p = s; p < e; p += m->psize)
				n += erase_one(m, p, m->psize);
		for (uint64_t b = m->nhuge ? m->hsizes : 0; b; b &= b - 1) {
			size_t size = (size_t)1 << __builtin_ctzll(b);
			for (uintptr_t p = s & ~(uintptr_t)(size - 1); p < e;
			     p += size)
				n += erase_one(m, p, size);
		}
	} else {
		for (size_t i = 0; i < m->nbuckets; i++)
			for (struct entry **pp = &m->bucket[i]; *pp;) {
				struct entry *x = *pp;
				if (x->page < e && x->page + x->size > s)
					n += drop(m, pp);
				else
					pp = &x->next;
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

/* The page size of the memory at addr: the region's (dxm_page_size), or
 * the base page where dxm knows no region (the dxm call that follows then
 * refuses the range itself, as for base pages). */
static size_t page_size_at(struct dxm_mirror *m, const void *addr)
{
	long ps = dxm_page_size(m->ctx, addr);
	return ps > 0 ? (size_t)ps : m->psize;
}

/* A range of whole pages of one page size; *psp gets that size. */
static int check_range(struct dxm_mirror *m, void *addr, size_t len,
		       size_t *psp)
{
	if (!m || !addr || !len)
		return -EINVAL;
	size_t ps = page_size_at(m, addr);
	if (((uintptr_t)addr | len) & (ps - 1))
		return -EINVAL;
	if (ps != m->psize && len > ps) {
		/* Huge pages to the end: a range that runs into memory of
		 * another page size is refused here, not half done. */
		long last = dxm_page_size(m->ctx, (char *)addr + len - 1);
		if (last > 0 && (size_t)last != ps)
			return -EINVAL;
	}
	*psp = ps;
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
static int map_range(struct dxm_mirror *m, uintptr_t s, size_t len, size_t ps,
		     unsigned need)
{
	size_t n = len / ps;
again:
	pthread_mutex_lock(&m->lock);
	bool all = true;
	for (size_t i = 0; i < n && all; i++) {
		struct entry *e = lookup(m, s + i * ps, ps);
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
			uintptr_t p = s + i * ps;
			struct entry *e = lookup(m, p, ps);
			if (e && (e->tags & need) == need)
				continue;
			err = install(m, p, ps, dev[i],
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
	size_t ps;
	int err = check_range(m, addr, len, &ps);
	if (err)
		return err;
	if (!buf)
		return -EINVAL;
	uintptr_t s = (uintptr_t)addr;
	err = map_range(m, s, len, ps, write ? TAG_READ | TAG_WRITE : TAG_READ);
	if (err)
		return err;
	for (size_t off = 0; off < len; off += ps) {
		struct entry *e = lookup(m, s + off, ps);
		if (write)
			dma_copy(e->dev, (char *)buf + off, ps);
		else
			dma_copy((char *)buf + off, e->dev, ps);
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

/* dxm_mirror_exclusive of a checked range of pages of size ps. */
static int exclusive(struct dxm_mirror *m, void *addr, size_t len, size_t ps)
{
	size_t n = len / ps, got = 0;
	void **dev = malloc(n * sizeof(*dev));
	if (!dev)
		return -ENOMEM;
	struct op op;
	int err = op_begin(m, &op, addr, len);
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
			uintptr_t p = (uintptr_t)addr + i * ps;
			if (!dev[i])
				continue;
			if (install(m, p, ps, dev[i],
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

int dxm_mirror_exclusive(struct dxm_mirror *m, void *addr, size_t len)
{
	size_t ps;
	int err = check_range(m, addr, len, &ps);
	return err ? err : exclusive(m, addr, len, ps);
}

long dxm_mirror_check_exclusive(struct dxm_mirror *m, void *addr, size_t len)
{
	size_t ps;
	int err = check_range(m, addr, len, &ps);
	if (err)
		return err;
	long k = 0;
	pthread_mutex_lock(&m->lock);
	for (size_t off = 0; off < len; off += ps) {
		struct entry *e = lookup(m, (uintptr_t)addr + off, ps);
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
	uintptr_t a = (uintptr_t)addr;
	for (;;) {
		pthread_mutex_lock(&m->lock);
		struct entry *e = lookup_addr(m, a);
		if (e && (e->tags & TAG_ATOMIC)) {
			void *dev = e->dev;
			/* Instrumentation: dxm must still hold the page for
			 * us; if it does not, the library broke its promise. */
			if (m->checks &&
			    !dxm_check_exclusive(m->ctx, (void *)e->page,
						 e->size, &dev))
				m->st.stale_accesses++;
			uint64_t v = rmw((uint64_t *)(e->dev + (a - e->page)),
					 delta);
			m->st.atomics++;
			pthread_mutex_unlock(&m->lock);
			if (old)
				*old = v;
			return 0;
		}
		pthread_mutex_unlock(&m->lock);
		/* The whole page that holds the word: a huge one on huge
		 * memory. */
		size_t ps = page_size_at(m, addr);
		int err = exclusive(m, (void *)(a & ~(uintptr_t)(ps - 1)), ps,
				    ps);
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
	size_t ps = page_size_at(m, addr);
	uintptr_t page = (uintptr_t)addr & ~(uintptr_t)(ps - 1);
	int err = map_range(m, page, ps, ps, TAG_READ | TAG_WRITE);
	if (err)
		return err;
	struct entry *e = lookup(m, page, ps);
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
