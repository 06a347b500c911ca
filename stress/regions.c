// SPDX-License-Identifier: MIT
/*
 * dxm stress: regions (memfd regions with aliases, of base pages or, with
 * --huge, of 2 MiB pages; and adopted private anonymous memory), their
 * expected counts and data patterns, their creation, exact verification
 * and teardown, and the operations that change their shape:
 * re-allocation, alias creation and removal, dxm_mprotect.  See
 * stress_int.h for the model.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stress_int.h"

/* At most one re-allocation per 20 ms (divided by --churn). */
#define REALLOC_EVERY_NS 20000000ull

/* --------------------------------------------------- counts and patterns */

size_t st_cidx(size_t actor, size_t page, size_t word)
{
	return (actor * ST_MAX_PAGES + page) * ST_NCNT + word;
}

void st_expect_inc(struct st_region *r, int actor, size_t page, size_t word)
{
	atomic_fetch_add_explicit(&r->cnt[st_cidx((size_t)actor, page, word)],
				  1, memory_order_release);
}

void st_expect_sum(struct st_region *r, size_t page, uint64_t out[ST_NCNT])
{
	for (size_t w = 0; w < ST_NCNT; w++) {
		uint64_t s = 0;
		for (size_t a = 0; a < st.nactors; a++)
			s += atomic_load_explicit(&r->cnt[st_cidx(a, page, w)],
						  memory_order_acquire);
		out[w] = s;
	}
}

uint64_t st_pattern(unsigned gen, size_t page, uint64_t ver, size_t word)
{
	uint64_t z = ((uint64_t)gen << 40) ^ ((uint64_t)page << 32) ^
		     (ver << 12) ^ (uint64_t)word;
	z += 0x9E3779B97F4A7C15ull;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* The data area of a page (after the counters): word 0 is the version. */
void st_data_fill(const struct st_region *r, size_t page, uint64_t ver,
		  uint64_t *words)
{
	size_t n = st.ps / 8 - ST_NCNT;
	words[0] = ver;
	for (size_t i = 1; i < n; i++)
		words[i] = st_pattern(r->gen, page, ver, i);
}

/* Check a copy of a page's data area against the version recorded for it
 * (the caller holds the page's dlock). */
bool st_data_check(struct st_worker *w, const char *what,
		   const struct st_region *r, size_t page, const void *area)
{
	(void)w;
	size_t n = st.ps / 8 - ST_NCNT, bad = 0, first = 0, zero = 0;
	const uint64_t *v = area;
	uint64_t ver = r->dver[page];
	for (size_t i = 0; i < n; i++) {
		uint64_t want = i ? st_pattern(r->gen, page, ver, i) : ver;
		zero += v[i] == 0;
		if (v[i] != want && !bad++)
			first = i;
	}
	if (!bad)
		return true;
	uint64_t want = first ? st_pattern(r->gen, page, ver, first) : ver;
	st_fail("%s: region %d (gen %u, %s) page %zu: %zu of %zu data words "
		"wrong, first at word %zu: %#llx, expected %#llx (version "
		"found %llu, expected %llu%s)",
		what, r->idx, r->gen, r->kind == ST_ANON ? "adopted" : "memfd",
		page, bad, n, first + ST_NCNT, (unsigned long long)v[first],
		(unsigned long long)want, (unsigned long long)v[0],
		(unsigned long long)ver,
		zero == n ? "; the page reads all zeros" : "");
	return false;
}

bool st_bounds_check(const char *what, const struct st_region *r, size_t page,
		     const uint64_t lo[ST_NCNT], const uint64_t *v,
		     const uint64_t hi[ST_NCNT])
{
	for (size_t w = 0; w < ST_NCNT; w++) {
		if (v[w] >= lo[w] && v[w] <= hi[w] + st.nactors)
			continue;
		st_fail("%s: region %d (gen %u, %s) page %zu counter %zu reads "
			"%llu; the increments counted say %llu..%llu (%s)",
			what, r->idx, r->gen,
			r->kind == ST_ANON ? "adopted" : "memfd", page, w,
			(unsigned long long)v[w], (unsigned long long)lo[w],
			(unsigned long long)(hi[w] + st.nactors),
			v[w] < lo[w] ? "lost updates" : "increments from nowhere");
		return false;
	}
	return true;
}

/* Whether no CPU view maps the page (the kernel's view); *view gets the
 * first view that does. */
bool st_views_absent(const struct st_region *r, size_t page, int *view)
{
	for (int v = 0; v < ST_MAX_VIEWS; v++)
		if (r->view[v] && st_present(r->view[v] + page * st.ps)) {
			*view = v;
			return false;
		}
	return true;
}

/* ------------------------------------------------------------ using one */

/* A live region (of `kind`, or any if kind < 0), locked for reading or
 * writing; NULL if none was found quickly. */
struct st_region *st_grab(struct st_worker *w, int kind, bool writer)
{
	for (int tries = 0; tries < 8 && !st_stopping(); tries++) {
		struct st_region *r = &st.reg[st_rnd(w, st.nregions)];
		st_op_where(w, r->idx, -1);
		st_op_step(w, writer ? "region wrlock" : "region rdlock");
		if (writer)
			pthread_rwlock_wrlock(&r->lock);
		else
			pthread_rwlock_rdlock(&r->lock);
		if (r->live && (kind < 0 || (int)r->kind == kind))
			return r;
		pthread_rwlock_unlock(&r->lock);
	}
	return NULL;
}

void st_release(struct st_region *r)
{
	pthread_rwlock_unlock(&r->lock);
}

/* A view in which pages [page, page+n) all have the `need` protection
 * bits, or -1. */
int st_pick_view(struct st_worker *w, const struct st_region *r, size_t page,
		 size_t n, int need)
{
	int cand[ST_MAX_VIEWS], k = 0;
	for (int v = 0; v < ST_MAX_VIEWS; v++) {
		if (!r->view[v])
			continue;
		bool ok = true;
		for (size_t p = page; p < page + n && ok; p++)
			ok = (r->prot[v][p] & need) == need;
		if (ok)
			cand[k++] = v;
	}
	return k ? cand[st_rnd(w, (unsigned)k)] : -1;
}

static const char *kind_name(const struct st_region *r)
{
	return r->kind == ST_ANON ? "adopted" : "memfd";
}

/* ------------------------------------------------------- state reports */

/* The device-side address of a page that dxm_check_exclusive knows, or
 * NULL: for a memfd region, its page in the device view (dxm_range_fault
 * gave it at creation, and a watcher's dxm_make_exclusive the same); for
 * adopted memory, only the staging slot a dxm_make_exclusive returned to
 * a watcher (dxm_range_fault gives the CPU address there, which
 * dxm_check_exclusive never takes for a device's). */
void *st_dev_addr(const struct st_region *r, size_t page)
{
	void *x = atomic_load_explicit(&((struct st_region *)r)->xdev[page],
				       memory_order_relaxed);
	return r->kind == ST_ANON ? x : x ? x : r->dev[page];
}

const char st_page_legend[] =
	"cpu: /proc/self/pagemap of each CPU view (P present, S swapped, "
	"- neither; (r-) or (--): that view is not read-write); held: the "
	"devices the stress believes hold the page exclusive (mN: mirror N's "
	"own table, wN: dev N's watcher; -: none); dxm: dxm_check_exclusive "
	"at the page's device-side address (yes, no; ?: address unknown, for "
	"adopted memory until a watcher's dxm_make_exclusive returned it); "
	"dev: pagemap of that address (adopted: the staging slot)";

static void sadd(char *b, size_t len, size_t *o, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void sadd(char *b, size_t len, size_t *o, const char *fmt, ...)
{
	if (*o >= len)
		return;
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(b + *o, len - *o, fmt, ap);
	va_end(ap);
	if (k > 0)
		*o = *o + (size_t)k < len ? *o + (size_t)k : len - 1;
}

/* One page's state: see st_page_legend. */
static void page_state(const struct st_region *r, size_t p, bool locked,
		       char *t, size_t tl)
{
	static const char *const prot[] = { "--", "r-", "-w", "rw" };
	size_t o = 0;
	char *cpu = NULL;
	t[0] = 0;
	sadd(t, tl, &o, "cpu ");
	for (int v = 0; v < ST_MAX_VIEWS; v++) {
		if (!r->view[v])
			continue;
		char *va = r->view[v] + p * st.ps;
		sadd(t, tl, &o, "%s%c", cpu ? "," : "", st_pagemap_char(va));
		if (r->prot[v][p] != (PROT_READ | PROT_WRITE))
			sadd(t, tl, &o, "(%s)", prot[r->prot[v][p] & 3]);
		if (!cpu)
			cpu = va;
	}
	if (!cpu)
		sadd(t, tl, &o, "(no view)");
	sadd(t, tl, &o, ", held");
	bool any = false;
	for (unsigned i = 0; i < st.nworkers; i++) {
		struct st_worker *w = &st.w[i];
		if (!w->device)
			continue;
		bool m = false, wa = false;
		for (int v = 0; v < ST_MAX_VIEWS; v++) {
			if (!r->view[v])
				continue;
			char *va = r->view[v] + p * st.ps;
			if (st.mirror[w->dev] &&
			    dxm_mirror_check_exclusive(st.mirror[w->dev], va,
						       st.ps) > 0)
				m = true;
			if (st_watcher_holds(w, va, locked))
				wa = true;
		}
		if (m)
			sadd(t, tl, &o, "%sm%d", any ? "," : " ", w->dev);
		any |= m;
		if (wa)
			sadd(t, tl, &o, "%sw%d", any ? "," : " ", w->dev);
		any |= wa;
	}
	if (!any)
		sadd(t, tl, &o, " -");
	void *d = st_dev_addr(r, p);
	sadd(t, tl, &o, ", dxm %s, dev %c",
	     !d || !cpu ? "?"
	     : dxm_check_exclusive(st.ctx, cpu, st.ps, &d) ? "yes"
							     : "no",
	     d ? st_pagemap_char(d) : '?');
}

/*
 * Every page's state (st_page_legend) in run-length form: "0-3 [cpu P,
 * held -, dxm no, dev -]" and the next run after sep.  locked: the caller
 * holds the region's lock for writing (else the dump: nothing is locked,
 * a thread holding a lock may be stuck).  Returns the length written.
 */
size_t st_page_states(const struct st_region *r, bool locked,
		      const char *sep, char *buf, size_t len)
{
	char tok[ST_MAX_PAGES][160];
	size_t o = 0, np = r->npages < ST_MAX_PAGES ? r->npages : ST_MAX_PAGES;
	if (len)
		buf[0] = 0;
	for (size_t p = 0; p < np; p++)
		page_state(r, p, locked, tok[p], sizeof(tok[p]));
	for (size_t a = 0, b; a < np; a = b + 1) {
		for (b = a; b + 1 < np && !strcmp(tok[a], tok[b + 1]); b++)
			;
		if (a == b)
			sadd(buf, len, &o, "%s%zu [%s]", a ? sep : "", a, tok[a]);
		else
			sadd(buf, len, &o, "%s%zu-%zu [%s]", a ? sep : "", a, b,
			     tok[a]);
	}
	return o;
}

/* ------------------------------------------------------------- creation */

/* Create a region in slot r (locked for writing, not live). */
int st_region_create(struct st_worker *w, struct st_region *r)
{
	size_t ps = st.ps;
	bool anon = st.anon_ok && st_enabled(F_ANON) &&
		    (!st_enabled(F_MEMFD) || st_rnd(w, 2));
	size_t np = 1 + st_rnd(w, ST_MAX_PAGES), len = np * ps;
	int err;

	memset(r->view, 0, sizeof(r->view));
	memset(r->prot, 0, sizeof(r->prot));
	for (size_t p = 0; p < ST_MAX_PAGES; p++)
		atomic_store_explicit(&r->xdev[p], NULL, memory_order_relaxed);
	if (anon) {
		st_op_step(w, "mmap + dxm_adopt");
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			err = -errno;
			st_fail("mmap(%zu): %s", len, strerror(-err));
			return err;
		}
		err = dxm_adopt(st.ctx, p, len, 0);
		if (err) {
			st_fail("dxm_adopt(%p, %zu pages): %s", p, np,
				strerror(-err));
			munmap(p, len);
			return err;
		}
		r->view[0] = p;
		r->kind = ST_ANON;
	} else {
		void *p;
		if (st.huge && !st_pool_wait(w, np))
			return -ENOMEM;
		st_op_step(w, "dxm_alloc");
		err = dxm_alloc(st.ctx, len, st.huge ? DXM_ALLOC_HUGE : 0, &p);
		if (err) {
			st_fail("dxm_alloc(%zu %spages): %s", np,
				st.huge ? "huge " : "", strerror(-err));
			return err;
		}
		r->view[0] = p;
		r->kind = ST_MEMFD;
		unsigned na = st_rnd(w, ST_MAX_VIEWS);
		for (unsigned i = 1; i <= na; i++) {
			st_op_step(w, "dxm_alias");
			void *src = r->view[st_rnd(w, i)], *a;
			err = dxm_alias(st.ctx, src, &a);
			if (err) {
				st_fail("dxm_alias(%p): %s", src,
					strerror(-err));
				break;
			}
			r->view[i] = a;
		}
	}
	r->npages = np;
	r->gen = atomic_fetch_add(&st.gen, 1) + 1;
	for (int v = 0; v < ST_MAX_VIEWS; v++)
		if (r->view[v])
			memset(r->prot[v], PROT_READ | PROT_WRITE, np);
	for (size_t a = 0; a < st.nactors; a++)
		for (size_t i = 0; i < ST_MAX_PAGES * ST_NCNT; i++)
			atomic_store_explicit(&r->cnt[a * ST_MAX_PAGES * ST_NCNT + i],
					      0, memory_order_relaxed);

	/* Fresh memory reads zero (no data of an earlier region at the same
	 * address shows through), then gets its data pattern. */
	st_op_step(w, "initialise");
	uint64_t *buf = malloc(ps);
	if (!buf) {
		st_fail("out of memory");
		return -ENOMEM;
	}
	for (size_t p = 0; p < np; p++) {
		const uint64_t *c = (const uint64_t *)(r->view[0] + p * ps);
		for (size_t k = 0; k < ps / 8; k++)
			if (c[k]) {
				st_fail("new %s region %d (gen %u) at %p: page "
					"%zu word %zu is %#llx, not 0",
					kind_name(r), r->idx, r->gen,
					(void *)r->view[0], p, k,
					(unsigned long long)c[k]);
				break;
			}
		pthread_mutex_lock(&r->dlock[p]);
		r->dver[p] = 0;
		st_data_fill(r, p, 0, buf);
		memcpy(r->view[0] + p * ps + ST_NCNT * 8, buf,
		       ps - ST_NCNT * 8);
		pthread_mutex_unlock(&r->dlock[p]);
	}
	free(buf);
	/* The device-side addresses, for dxm_check_exclusive in the dump. */
	st_op_step(w, "dxm_range_fault");
	long got = dxm_range_fault(st.ctx, r->view[0], len, 0, r->dev);
	if (got != (long)np)
		st_fail("dxm_range_fault of new region %d: %ld (%s)", r->idx,
			got, got < 0 ? strerror((int)-got) : "wrong count");
	r->live = true;
	return 0;
}

/* ------------------------------------------------------ exact checking */

/* Every counter of a quiesced region (locked for writing) is exactly what
 * its users counted, and every data area is intact. */
bool st_region_verify(struct st_worker *w, struct st_region *r,
		      const char *when)
{
	size_t ps = st.ps;
	uint64_t *buf = malloc(ps);
	bool ok = true;
	if (!buf) {
		st_fail("out of memory");
		return false;
	}
	st_op_step(w, "verify");
	for (size_t p = 0; p < r->npages && ok; p++) {
		int v = st_pick_view(w, r, p, 1, PROT_READ);
		if (v < 0) {
			st_fail("%s: region %d page %zu has no readable view",
				when, r->idx, p);
			ok = false;
			break;
		}
		uint64_t exp[ST_NCNT];
		st_expect_sum(r, p, exp);
		pthread_mutex_lock(&r->dlock[p]);
		memcpy(buf, r->view[v] + p * ps, ps);
		for (size_t k = 0; k < ST_NCNT && ok; k++) {
			if (buf[k] == exp[k])
				continue;
			char who[512];
			size_t o = 0;
			for (size_t a = 0; a < st.nactors && o < sizeof(who) - 40;
			     a++)
				o += (size_t)snprintf(
					who + o, sizeof(who) - o, " %s%zu:%llu",
					st.w[a].device ? "dev" : "cpu",
					st.w[a].device ? (size_t)st.w[a].dev : a,
					(unsigned long long)atomic_load(
						&r->cnt[st_cidx(a, p, k)]));
			st_fail("%s: region %d (gen %u, %s, %zu pages, view %d "
				"at %p) page %zu counter %zu is %llu, expected "
				"%llu (%s %lld); counted by:%s",
				when, r->idx, r->gen, kind_name(r), r->npages,
				v, (void *)r->view[v], p, k,
				(unsigned long long)buf[k],
				(unsigned long long)exp[k],
				buf[k] < exp[k] ? "lost" : "extra",
				buf[k] < exp[k] ? (long long)(exp[k] - buf[k])
						: (long long)(buf[k] - exp[k]),
				who);
			ok = false;
		}
		if (ok)
			ok = st_data_check(w, when, r, p, buf + ST_NCNT);
		pthread_mutex_unlock(&r->dlock[p]);
	}
	free(buf);
	if (ok)
		st_count(w, OP_VERIFY, 1);
	return ok;
}

/* -------------------------------------------------------------- unmaps */

/*
 * munmap(2) of a view is seen by dxm asynchronously: the notifiers are
 * told (DXM_EVENT_UNMAP) from a handler thread, possibly after munmap
 * returned.  Before the address range may be reused, wait until the
 * notification pass covering it is over, so that no device keeps a
 * translation for an address that a new region may get.  A notifier over
 * the whole address space records UNMAP events; dxm_notifier_read_begin()
 * then waits for the pass that delivered the last one to end.
 */
struct st_listener {
	struct dxm_notifier *n;
	pthread_mutex_t mtx;
	uintptr_t s, e; /* the range being waited for */
	size_t need, got;
	unsigned char seen[ST_MAX_PAGES];
};

static struct st_listener listener;

static bool listen_cb(struct dxm_notifier *n, const struct dxm_range *r,
		      unsigned long seq)
{
	if (r->event != DXM_EVENT_UNMAP)
		return true;
	struct st_listener *l = dxm_notifier_priv(n);
	pthread_mutex_lock(&l->mtx);
	dxm_notifier_set_seq(n, seq);
	uintptr_t a = (uintptr_t)r->start > l->s ? (uintptr_t)r->start : l->s;
	uintptr_t b = (uintptr_t)r->end < l->e ? (uintptr_t)r->end : l->e;
	for (; a < b; a += st.ps) {
		size_t i = (a - l->s) / st.ps;
		if (i < ST_MAX_PAGES && !l->seen[i]) {
			l->seen[i] = 1;
			l->got++;
		}
	}
	pthread_mutex_unlock(&l->mtx);
	return true;
}

static const struct dxm_notifier_ops listen_ops = { .invalidate = listen_cb };

int st_listener_init(void)
{
	pthread_mutex_init(&listener.mtx, NULL);
	st.listener = &listener;
	return dxm_notifier_insert(st.ctx, (void *)st.ps,
				   ((size_t)1 << 47) - st.ps, &listen_ops,
				   &listener, &listener.n);
}

void st_listener_fini(void)
{
	if (listener.n)
		dxm_notifier_remove(listener.n);
	listener.n = NULL;
	pthread_mutex_destroy(&listener.mtx);
}

/* munmap a view (callers hold st.churn_mtx); dxm must have dropped it when
 * munmap returns.  Half the time, also wait until every page was notified
 * (DXM_EVENT_UNMAP); else reuse the addresses at once. */
bool st_munmap_wait(struct st_worker *w, void *addr, size_t len)
{
	struct st_listener *l = &listener;
	pthread_mutex_lock(&l->mtx);
	l->s = (uintptr_t)addr;
	l->e = (uintptr_t)addr + len;
	l->need = len / st.ps;
	l->got = 0;
	memset(l->seen, 0, sizeof(l->seen));
	pthread_mutex_unlock(&l->mtx);
	st_op_step(w, "munmap");
	if (munmap(addr, len)) {
		st_fail("munmap(%p, %zu): %s", addr, len, strerror(errno));
		return false;
	}
	/* Once munmap returned, dxm no longer knows the view. */
	int err = dxm_free(st.ctx, addr);
	if (err != -ENOENT) {
		st_fail("dxm_free(%p) right after munmap: %d (%s), expected "
			"-ENOENT",
			addr, err, strerror(-err));
		return false;
	}
	if (st_rnd(w, 2)) {
		/* Reuse the addresses at once, as a program may: dxm must
		 * not hand them out again before the devices were told. */
		pthread_mutex_lock(&l->mtx);
		l->s = l->e = 0;
		pthread_mutex_unlock(&l->mtx);
		return true;
	}
	st_op_step(w, "wait for DXM_EVENT_UNMAP");
	uint64_t t0 = st_now();
	for (;;) {
		pthread_mutex_lock(&l->mtx);
		bool done = l->got >= l->need;
		size_t got = l->got;
		pthread_mutex_unlock(&l->mtx);
		if (done)
			break;
		if (st_now() - t0 > 2ull * ST_HANG_MS * 1000000) {
			st_fail("munmap(%p, %zu pages): DXM_EVENT_UNMAP covered "
				"only %zu pages after %d ms",
				addr, len / st.ps, got, 2 * ST_HANG_MS);
			return false;
		}
		st_sleep_us(50);
	}
	st_op_step(w, "dxm_notifier_read_begin (unmap pass)");
	dxm_notifier_read_begin(l->n);
	pthread_mutex_lock(&l->mtx);
	l->s = l->e = 0;
	pthread_mutex_unlock(&l->mtx);
	return true;
}

/* ------------------------------------------------------------- teardown */

/* Verify a quiesced live region (locked for writing) and free it, one of
 * several ways. */
void st_region_teardown(struct st_worker *w, struct st_region *r)
{
	size_t len = r->npages * st.ps;
	unsigned how = st_rnd(w, 3);
	int err;

	st_region_verify(w, r, "teardown");
	/* Sometimes a device holds the pages when they go. */
	if (how && st.ndevices && st_rnd(w, 2)) {
		struct dxm_mirror *m = st.mirror[st_rnd(w, st.ndevices)];
		int v = st_pick_view(w, r, 0, r->npages,
				     PROT_READ | PROT_WRITE);
		if (v >= 0) {
			st_op_step(w, "dxm_mirror_exclusive before free");
			err = dxm_mirror_exclusive(m, r->view[v], len);
			if (err && err != -EBUSY)
				st_fail("dxm_mirror_exclusive of region %d "
					"before teardown: %s",
					r->idx, strerror(-err));
		}
	}
	if (r->kind == ST_ANON) {
		if (how == 0 && st_enabled(F_ANON_MUNMAP)) {
			st_munmap_wait(w, r->view[0], len);
			st_count(w, OP_MUNMAP, 1);
		} else {
			/* For the report if data goes missing: each page's
			 * state as the kernel, the stress and dxm see it. */
			char states[ST_MAX_PAGES * 176];
			st_page_states(r, true, "; ", states, sizeof(states));
			st_op_step(w, "dxm_free");
			err = dxm_free(st.ctx, r->view[0]);
			if (err)
				st_fail("dxm_free(adopted %p): %s",
					(void *)r->view[0], strerror(-err));
			/* The memory is the program's again, every page in
			 * place, exclusive ones included. */
			if (!st_region_verify(w, r,
					      "after dxm_free of adopted memory"))
				fprintf(stderr, "stress: adopted region %d (gen "
						"%u, %zu pages) at %p before dxm_free, "
						"per page (%s): %s\n",
					r->idx, r->gen, r->npages,
					(void *)r->view[0], st_page_legend,
					states);
			if (munmap(r->view[0], len))
				st_fail("munmap(%p): %s", (void *)r->view[0],
					strerror(errno));
			st_count(w, OP_FREE, 1);
		}
	} else if (how == 1) {
		st_op_step(w, "dxm_free");
		err = dxm_free(st.ctx, r->view[0]);
		if (err)
			st_fail("dxm_free(%p): %s", (void *)r->view[0],
				strerror(-err));
		st_count(w, OP_FREE, 1);
	} else {
		/* Views one by one, in random order: aliases through
		 * dxm_free or munmap, the last one by munmap. */
		int order[ST_MAX_VIEWS], n = 0;
		for (int v = 0; v < ST_MAX_VIEWS; v++)
			if (r->view[v])
				order[n++] = v;
		for (int i = n - 1; i > 0; i--) {
			int j = (int)st_rnd(w, (unsigned)i + 1), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
		for (int i = 0; i < n; i++) {
			char *a = r->view[order[i]];
			if (i < n - 1 && order[i] != 0 && how == 2 &&
			    st_rnd(w, 2)) {
				st_op_step(w, "dxm_free(alias)");
				err = dxm_free(st.ctx, a);
				if (err)
					st_fail("dxm_free(alias %p): %s",
						(void *)a, strerror(-err));
			} else {
				st_munmap_wait(w, a, len);
			}
			r->view[order[i]] = NULL;
		}
		st_count(w, OP_MUNMAP, 1);
	}
	memset(r->view, 0, sizeof(r->view));
	r->live = false;
}

/* ----------------------------------------------------------- operations */

/* Tear a region down and allocate a new one in its slot. */
void st_op_realloc(struct st_worker *w)
{
	uint64_t now = st_now(), last = atomic_load(&st.last_realloc);
	if (now - last < REALLOC_EVERY_NS / st.churn ||
	    !atomic_compare_exchange_strong(&st.last_realloc, &last, now))
		return;
	atomic_fetch_add(&st.in_realloc, 1);
	st_op_begin(w, "realloc");
	st_op_step(w, "churn lock");
	pthread_mutex_lock(&st.churn_mtx);
	struct st_region *r = &st.reg[st_rnd(w, st.nregions)];
	st_op_where(w, r->idx, -1);
	st_op_step(w, "region wrlock");
	pthread_rwlock_wrlock(&r->lock);
	if (r->live)
		st_region_teardown(w, r);
	if (!st_stopping() && st_region_create(w, r) == 0)
		st_count(w, OP_REALLOC, 1);
	pthread_rwlock_unlock(&r->lock);
	pthread_mutex_unlock(&st.churn_mtx);
	st_op_end(w);
	atomic_fetch_sub(&st.in_realloc, 1);
}

/* Add an alias to a memfd region, or remove one. */
void st_op_alias(struct st_worker *w)
{
	st_op_begin(w, "alias");
	st_op_step(w, "churn lock");
	pthread_mutex_lock(&st.churn_mtx);
	struct st_region *r = st_grab(w, ST_MEMFD, true);
	if (!r)
		goto out;
	size_t len = r->npages * st.ps;
	int freev = -1, aliases[ST_MAX_VIEWS], na = 0;
	for (int v = 0; v < ST_MAX_VIEWS; v++) {
		if (r->view[v]) {
			if (v)
				aliases[na++] = v;
		} else if (freev < 0) {
			freev = v;
		}
	}
	if (freev > 0 && (na == 0 || st_rnd(w, 2))) {
		int src = 0;
		do
			src = (int)st_rnd(w, ST_MAX_VIEWS);
		while (!r->view[src]);
		void *a;
		st_op_step(w, "dxm_alias");
		int err = dxm_alias(st.ctx, r->view[src], &a);
		if (err) {
			st_fail("dxm_alias(%p): %s", (void *)r->view[src],
				strerror(-err));
			goto unlock;
		}
		r->view[freev] = a;
		memset(r->prot[freev], PROT_READ | PROT_WRITE, r->npages);
		/* Quiesced: no user changes page states.  A page a device
		 * holds must not be mapped in the new alias.  A page the CPU
		 * owns is mapped at once, unless a fault handler is still
		 * finishing the restore of a page whose faulting thread it
		 * already woke: dxm_alias skips it (dxm_alias(3)), counted,
		 * not a failure. */
		st_op_step(w, "check new alias");
		for (size_t p = 0; p < r->npages; p++) {
			void *d = r->dev[p];
			bool excl = dxm_check_exclusive(st.ctx, r->view[0] +
								p * st.ps,
							st.ps, &d);
			bool pres = st_present((char *)a + p * st.ps);
			if (excl && pres)
				st_fail("new alias %p of region %d: page %zu is "
					"exclusive to a device but mapped in the "
					"alias",
					a, r->idx, p);
			else if (!excl && !pres)
				atomic_fetch_add(&st.alias_lazy, 1);
		}
		st_count(w, OP_ALIAS_ADD, 1);
	} else if (na) {
		int v = aliases[st_rnd(w, (unsigned)na)];
		if (st_rnd(w, 2)) {
			st_op_step(w, "dxm_free(alias)");
			int err = dxm_free(st.ctx, r->view[v]);
			if (err)
				st_fail("dxm_free(alias %p): %s",
					(void *)r->view[v], strerror(-err));
		} else {
			st_munmap_wait(w, r->view[v], len);
		}
		r->view[v] = NULL;
		st_count(w, OP_ALIAS_DEL, 1);
	}
unlock:
	st_release(r);
out:
	pthread_mutex_unlock(&st.churn_mtx);
	st_op_end(w);
}

/* dxm_mprotect part of a view: read-only (or no access, for an alias), or
 * back to read-write; while a view is not writable, a device's atomic
 * through it must be refused. */
void st_op_mprotect(struct st_worker *w)
{
	st_op_begin(w, "mprotect");
	struct st_region *r = st_grab(w, st_enabled(F_ANON_MPROTECT) ? -1
								    : ST_MEMFD,
				      true);
	if (!r) {
		st_op_end(w);
		return;
	}
	size_t ps = st.ps;
	int v;
	do
		v = (int)st_rnd(w, ST_MAX_VIEWS);
	while (!r->view[v]);
	size_t a = st_rnd(w, (unsigned)r->npages);
	size_t n = 1 + st_rnd(w, (unsigned)(r->npages - a < 4 ? r->npages - a
							      : 4));
	st_op_where(w, r->idx, (int)a);
	bool all_rw = true;
	for (size_t p = a; p < a + n; p++)
		all_rw &= r->prot[v][p] == (PROT_READ | PROT_WRITE);
	int prot = PROT_READ | PROT_WRITE;
	if (all_rw)
		prot = v && st_rnd(w, 4) == 0 ? PROT_NONE : PROT_READ;
	char *addr = r->view[v] + a * ps;
	st_op_step(w, "dxm_mprotect");
	int err = dxm_mprotect(st.ctx, addr, n * ps, prot);
	if (err) {
		st_fail("dxm_mprotect(%p, %zu pages, %d) of region %d view %d: "
			"%s",
			(void *)addr, n, prot, r->idx, v, strerror(-err));
		goto out;
	}
	for (size_t p = a; p < a + n; p++)
		r->prot[v][p] = (unsigned char)prot;
	st_count(w, OP_MPROTECT, 1);
	if (prot == (PROT_READ | PROT_WRITE) || !st.ndevices)
		goto out;
	/* The devices were told (DXM_EVENT_PROTECTION) and must go through
	 * dxm again, which refuses a view that is not writable. */
	struct dxm_mirror *m = st.mirror[st_rnd(w, st.ndevices)];
	uint64_t *word = (uint64_t *)(addr + 8 * st_rnd(w, ST_NCNT));
	st_op_step(w, "device atomic on a read-only view");
	err = dxm_mirror_atomic_add(m, word, 1, NULL);
	if (err != -EPERM) {
		st_fail("dxm_mirror_atomic_add through %s view %p (region %d "
			"view %d): %d (%s), expected -EPERM",
			prot ? "a read-only" : "a PROT_NONE", (void *)word,
			r->idx, v, err, strerror(-err));
		goto out;
	}
	if (prot == PROT_NONE) {
		void *buf = malloc(ps);
		st_op_step(w, "device read of a PROT_NONE view");
		err = buf ? dxm_mirror_read(m, addr, buf, ps) : -EPERM;
		free(buf);
		if (err != -EPERM) {
			st_fail("dxm_mirror_read of a PROT_NONE view %p: %d "
				"(%s), expected -EPERM",
				(void *)addr, err, strerror(-err));
			goto out;
		}
	}
	st_count(w, OP_EPERM, 1);
out:
	st_release(r);
	st_op_end(w);
}
