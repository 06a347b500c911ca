// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for dxm's public API (fuzz/README.md).
 *
 * The input is a little bytecode: 8 bytes per operation, an opcode byte and
 * 7 argument bytes.  The operations act on a pool of state (regions made by
 * dxm_alloc, dxm_alias and dxm_adopt, plain anonymous memory, freed
 * addresses, NULL and other bad pointers, notifiers, the device-side
 * addresses dxm_make_exclusive returned) and on the CPU (loads, stores and
 * system calls on mapped memory), and the harness keeps a model of what
 * each call must do:
 *   - every return value is checked against the model: success where the
 *     model says the call must succeed, else one of the documented errors;
 *   - one word per page is shadowed: what the CPU or the "device" wrote is
 *     read back, through any view, after any conversion, restore, mremap or
 *     dxm_free of adopted memory;
 *   - notifier callbacks check their arguments, count events, and the
 *     events each operation must send are checked (and the EXCLUSIVE events
 *     it must not send); the read_begin/read_retry protocol is checked;
 *   - the model's idea of which pages are held by a device is compared with
 *     dxm_check_exclusive();
 *   - after each input everything is freed and dxm_stats() must show no
 *     region left; every 1000 inputs the open descriptors and dxm mappings
 *     are counted and must not grow.
 * The harness never does what would crash or hang by design: it touches
 * only pages it knows are mapped with the protection the access needs, and
 * unlocks a page it holds LOCKED before anything that would wait for it
 * (a CPU touch, dxm_range_fault, fork).
 *
 * Environment: FUZZ_TRACE=1 prints each operation; FUZZ_VERBOSE=1 prints
 * dxm's log messages (they are counted and dropped otherwise).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dxm.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* A huge dxm_alloc makes dxm ask calloc() for more than ASan's maximum:
 * return NULL as the C library would, rather than report it. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "allocator_may_return_null=1";
}

/* Context flags this version of dxm.h knows. */
#ifndef DXM_CTX_HANDLER_SPIN
#define DXM_CTX_HANDLER_SPIN 0
#endif
#ifndef DXM_CTX_SIGBUS
#define DXM_CTX_SIGBUS 0
#endif
#ifndef DXM_CTX_HANDLER_ADAPTIVE
#define DXM_CTX_HANDLER_ADAPTIVE 0
#endif
#define CTX_KNOWN_FLAGS                                                        \
	(DXM_CTX_REQUIRE_KERNEL_FAULTS | DXM_CTX_HANDLER_SPIN |                \
	 DXM_CTX_SIGBUS | DXM_CTX_HANDLER_ADAPTIVE)

/* ------------------------------------------------------------- limits */

#define MAXPG 2048	/* pages the model tracks */
#define MAXR 8		/* live regions */
#define MAXRP 32	/* pages per region */
#define MAXREC 8	/* lock records (make_exclusive results) */
#define MAXN 6		/* notifiers */
#define NFREED 16	/* freed addresses kept */
#define SLOT_PAGES 64	/* arena slot */
#define NSLOTS 256
#define MAXOPS 64	/* operations per input */
#define DEVN 72		/* dev[] arrays: MAXRP entries at most + canaries */

static size_t ps;
static struct dxm_ctx *g_ctx;
static unsigned g_mode;	      /* enum dxm_uffd_mode */
static bool g_anon_ok;	      /* dxm_adopt available */
static char *g_arena;	      /* NSLOTS * SLOT_PAGES pages, PROT_NONE */
static unsigned g_next_slot;
static volatile uint64_t *g_sentinel; /* barrier page (a dxm region) */
static int g_pipe[2];
static void *g_dead_ctx;       /* a destroyed context's address */
static char g_bogus_ctx[512];  /* never a context */
static char g_owner[4];	       /* owner tokens */
static bool g_trace;
static bool g_verbose;
static int g_opi;
static const char *g_opname = "init";
static uint64_t g_runs;
static unsigned long g_seed_ctr;
static unsigned g_forks, g_ctx2s; /* this input's: they are slow */

/*
 * Library bugs the fuzzer found that are not fixed yet (fuzz/README.md):
 * the harness steers around them unless FUZZ_HIT_KNOWN names them
 * ("all", or a comma-separated list), so that a run finds something new.
 * Each has its input in fuzz/regressions/pending/.
 */
enum {
	KB_NONE = 0, /* none at present (anon-held-window: fixed) */
};
static const char *const kb_names[] = { "none" };
static unsigned g_hit_known;

static __attribute__((unused)) bool avoid(unsigned kb)
{
	return !(g_hit_known & kb);
}

static void parse_known(void)
{
	const char *e = getenv("FUZZ_HIT_KNOWN");
	if (!e)
		return;
	for (unsigned i = 0; i < sizeof(kb_names) / sizeof(kb_names[0]); i++)
		if (!strcmp(e, "all") || strstr(e, kb_names[i]))
			g_hit_known |= 1u << i;
}

#define FAIL(...)                                                              \
	do {                                                                   \
		fprintf(stderr, "\nINVARIANT VIOLATED (op #%d %s): ", g_opi,   \
			g_opname);                                             \
		fprintf(stderr, __VA_ARGS__);                                  \
		fprintf(stderr, "\n");                                         \
		abort();                                                       \
	} while (0)

#define TRACE(...)                                                             \
	do {                                                                   \
		if (g_trace) {                                                 \
			fprintf(stderr, "  [%d] ", g_opi);                     \
			fprintf(stderr, __VA_ARGS__);                          \
			fprintf(stderr, "\n");                                 \
		}                                                              \
	} while (0)

/* -------------------------------------------------------- log capture */

static atomic_ulong g_log_count[4];
static bool g_allow_err;     /* ERROR messages expected (context creation) */
static char g_err_msg[256];
static atomic_int g_err_seen;

/*
 * The harness's print function: counts, prints with FUZZ_VERBOSE, and
 * records the first ERROR message, which fails the input: dxm logs at
 * that level what a return value cannot show (a revocation or a
 * fault-handler call that failed).  Clobbers errno: dxm must restore it.
 */
static int print_strict(enum dxm_log_level level, const char *fmt, va_list ap)
{
	if ((unsigned)level < 4)
		atomic_fetch_add(&g_log_count[level], 1);
	if (g_verbose || (level == DXM_LOG_ERROR && !g_allow_err)) {
		char buf[256];
		vsnprintf(buf, sizeof(buf), fmt, ap);
		if (g_verbose)
			fprintf(stderr, "    dxm log %d: %s\n", (int)level, buf);
		if (level == DXM_LOG_ERROR && !g_allow_err &&
		    !atomic_exchange(&g_err_seen, 1))
			memcpy(g_err_msg, buf, sizeof(buf));
	}
	errno = 12345;
	return 0;
}

static int print_other(enum dxm_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	(void)fmt;
	(void)ap;
	errno = 54321;
	return 0;
}

static dxm_print_fn g_print_now; /* what the harness believes is set */
static dxm_print_fn g_print_orig;

/* ------------------------------------------------------------ errors */

typedef unsigned __int128 errset;
#define E(x) (((errset)1) << (x))

static const char *ename(long e)
{
	static char buf[32];
	switch (e) {
	case EINVAL: return "EINVAL";
	case EFAULT: return "EFAULT";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EBADF: return "EBADF";
	case ECHILD: return "ECHILD";
	case ENOMEM: return "ENOMEM";
	case EEXIST: return "EEXIST";
	case ENOSYS: return "ENOSYS";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case E2BIG: return "E2BIG";
	case EMFILE: return "EMFILE";
	case EDEADLK: return "EDEADLK";
	case EBUSY: return "EBUSY";
	case EAGAIN: return "EAGAIN";
	case EACCES: return "EACCES";
	}
	snprintf(buf, sizeof(buf), "errno %ld", e);
	return buf;
}

/*
 * The outcome must be success (a value >= 0) if ok, else one of errs.
 */
static void expect(const char *what, long ret, bool ok, errset errs)
{
	if (ret >= 0) {
		if (!ok)
			FAIL("%s returned %ld, the model expected an error",
			     what, ret);
		return;
	}
	long e = -ret;
	if (e >= 128 || !(errs & E(e))) {
		if (ok)
			FAIL("%s failed with -%s, the model expected success",
			     what, ename(e));
		FAIL("%s failed with -%s, not an error the model allows", what,
		     ename(e));
	}
}

/* ------------------------------------------------------------- model */

enum { PK_PLAIN = 1, PK_MANAGED = 2 };
enum { ST_CPU, ST_LOCKED, ST_EXCL };
enum { RK_SHM = 1, RK_ANON = 2 };

struct page {
	uintptr_t addr;
	uint8_t kind;
	uint8_t prot;  /* the real protection of the mapping */
	uint8_t lprot; /* what dxm recorded (managed pages) */
	int8_t reg;
	uint16_t group, pgoff;
	/* plain pages: the shadowed word */
	uint16_t woff;
	bool known;
	uint64_t shadow;
};

struct region {
	bool live;
	int kind;
	unsigned gen;
	size_t npages;
	uintptr_t devbase; /* 0 until learnt */
	unsigned next_group;
	uint8_t st[MAXRP];
	uint16_t woff[MAXRP];
	bool known[MAXRP];
	uint64_t shadow[MAXRP];
	bool split; /* dxm may hold its view in several pieces */
};

struct rec {
	bool used;
	int reg;
	unsigned gen;
	size_t pg0, n;
	uintptr_t start;
	void *dev[MAXRP];
};

struct fnot {
	bool used;
	struct dxm_notifier *n;
	uintptr_t s, e; /* whole pages, as dxm rounds the interval */
	atomic_uint mode;
	atomic_ulong ev[8];
	atomic_ulong ss_started, ss_done;
	/* read_begin state */
	bool have_seq;
	unsigned long seq, done_before, started_after;
};

static struct page g_pg[MAXPG];
static size_t g_npg;
static struct region g_reg[MAXR];
static unsigned g_gen;
static struct rec g_rec[MAXREC];
static struct fnot g_not[MAXN];
static uintptr_t g_freed[NFREED];
static unsigned g_nfreed;

static inline uintptr_t pdown(uintptr_t a)
{
	return a & ~(uintptr_t)(ps - 1);
}

static bool range_ok(uintptr_t s, size_t len)
{
	return s && len && !(s & (ps - 1)) && !(len & (ps - 1)) && s + len > s;
}

/* Index of the first page entry whose address is >= a. */
static size_t pg_lower(uintptr_t a)
{
	size_t lo = 0, hi = g_npg;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (g_pg[mid].addr < a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct page *pg_find(uintptr_t a)
{
	a = pdown(a);
	size_t i = pg_lower(a);
	return i < g_npg && g_pg[i].addr == a ? &g_pg[i] : NULL;
}

static struct page *pg_insert(const struct page *p)
{
	if (g_npg == MAXPG)
		FAIL("harness: page table full");
	size_t i = pg_lower(p->addr);
	if (i < g_npg && g_pg[i].addr == p->addr)
		FAIL("harness: page %#lx already tracked (dxm mapped over "
		     "memory the program has?)",
		     (unsigned long)p->addr);
	memmove(&g_pg[i + 1], &g_pg[i], (g_npg - i) * sizeof(g_pg[0]));
	g_pg[i] = *p;
	g_npg++;
	return &g_pg[i];
}

static void pg_remove_at(size_t i)
{
	memmove(&g_pg[i], &g_pg[i + 1], (g_npg - i - 1) * sizeof(g_pg[0]));
	g_npg--;
}

static bool any_tracked(uintptr_t s, size_t len)
{
	size_t i = pg_lower(s);
	return i < g_npg && g_pg[i].addr < s + len && s + len > s;
}

static bool in_arena(uintptr_t s, size_t len)
{
	uintptr_t a = (uintptr_t)g_arena, b = a + (size_t)NSLOTS * SLOT_PAGES * ps;
	return s >= a && s < b && len <= b - s;
}

/*
 * Unmap pages the program has.  The arena never gets a hole (something
 * else, the sanitizers' allocator say, could be mapped there and then be
 * mapped over when the arena is reset): its pages are mapped over with
 * PROT_NONE, which unmaps them all the same (an UNMAP event for dxm).
 */
static void unmap_pages(uintptr_t s, size_t len)
{
	if (in_arena(s, len)) {
		if (mmap((void *)s, len, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
			 -1, 0) != (void *)s)
			FAIL("mmap over %#lx: %s", (unsigned long)s,
			     strerror(errno));
	} else if (munmap((void *)s, len)) {
		FAIL("munmap(%#lx, %#zx): %s", (unsigned long)s, len,
		     strerror(errno));
	}
}

/* After an mremap left a hole where [s, s+len) was. */
static void refill_hole(uintptr_t s, size_t len)
{
	if (in_arena(s, len))
		unmap_pages(s, len);
}

static void add_freed(uintptr_t a)
{
	g_freed[g_nfreed++ % NFREED] = a;
}

static void *slot_alloc(void)
{
	if (g_next_slot >= NSLOTS - 8) /* the last ones stay holes */
		return NULL;
	return g_arena + (size_t)(g_next_slot++) * SLOT_PAGES * ps;
}

/* Shadowed word of a page entry: where it lives and its state. */
static uint16_t *pe_woff(struct page *p)
{
	return p->kind == PK_MANAGED ? &g_reg[p->reg].woff[p->pgoff] : &p->woff;
}
static bool *pe_known(struct page *p)
{
	return p->kind == PK_MANAGED ? &g_reg[p->reg].known[p->pgoff]
				     : &p->known;
}
static uint64_t *pe_shadow(struct page *p)
{
	return p->kind == PK_MANAGED ? &g_reg[p->reg].shadow[p->pgoff]
				     : &p->shadow;
}

static uint64_t next_val(void)
{
	uint64_t x = ++g_seed_ctr * 0x9E3779B97F4A7C15ull;
	x ^= x >> 29;
	return x | 1; /* never 0: a value that survives is not a zero page */
}

/* The view of a region page with the lowest address, or NULL. */
static struct page *any_view(int reg, size_t pg)
{
	for (size_t i = 0; i < g_npg; i++)
		if (g_pg[i].kind == PK_MANAGED && g_pg[i].reg == reg &&
		    g_pg[i].pgoff == pg)
			return &g_pg[i];
	return NULL;
}

static bool region_has_pages(int reg)
{
	for (size_t i = 0; i < g_npg; i++)
		if (g_pg[i].kind == PK_MANAGED && g_pg[i].reg == reg)
			return true;
	return false;
}

static void drop_records(int reg)
{
	for (int i = 0; i < MAXREC; i++)
		if (g_rec[i].used && g_rec[i].reg == reg)
			g_rec[i].used = false;
}

/* A region page the device can no longer hold (its data was discarded or
 * its only view unmapped): forget it in the lock records. */
static void forget_dev(int reg, size_t pg)
{
	for (int i = 0; i < MAXREC; i++) {
		struct rec *r = &g_rec[i];
		if (r->used && r->reg == reg && pg >= r->pg0 &&
		    pg < r->pg0 + r->n)
			r->dev[pg - r->pg0] = NULL;
	}
}

static void region_dead(int reg)
{
	drop_records(reg);
	g_reg[reg].live = false;
}

/* After entries went away: a region with no view left is gone (dxm frees
 * it when its last view is unmapped). */
static void reap_regions(void)
{
	for (int r = 0; r < MAXR; r++)
		if (g_reg[r].live && !region_has_pages(r))
			region_dead(r);
}

/* ---------------------------------------------------- notifier model */

static bool cb_invalidate(struct dxm_notifier *n, const struct dxm_range *r,
			  unsigned long cur_seq)
{
	struct fnot *f = dxm_notifier_priv(n);
	if (f < g_not || f >= g_not + MAXN)
		FAIL("callback: dxm_notifier_priv gave %p, not ours", (void *)f);
	if (!r)
		FAIL("callback: range NULL");
	uintptr_t s = (uintptr_t)r->start, e = (uintptr_t)r->end;
	if (s >= e || (s & (ps - 1)) || (e & (ps - 1)))
		FAIL("callback: bad range [%#lx, %#lx)", (unsigned long)s,
		     (unsigned long)e);
	if (s < f->s || e > f->e)
		FAIL("callback: range [%#lx, %#lx) outside the interval "
		     "[%#lx, %#lx)",
		     (unsigned long)s, (unsigned long)e, (unsigned long)f->s,
		     (unsigned long)f->e);
	if ((unsigned)r->event > DXM_EVENT_REMAP)
		FAIL("callback: event %u", (unsigned)r->event);
	if (r->event != DXM_EVENT_EXCLUSIVE && r->owner)
		FAIL("callback: owner %p on event %u", r->owner,
		     (unsigned)r->event);
	if (!(cur_seq & 1))
		FAIL("callback: cur_seq %lu is even", cur_seq);
	atomic_fetch_add(&f->ev[r->event], 1);
	unsigned m = atomic_load(&f->mode);
	bool own = r->event == DXM_EVENT_EXCLUSIVE && r->owner == (void *)f;
	if ((m & 1) && !own) {
		atomic_fetch_add(&f->ss_started, 1);
		dxm_notifier_set_seq(n, cur_seq);
		atomic_fetch_add(&f->ss_done, 1);
	}
	return true;
}

static const struct dxm_notifier_ops g_ops = { .invalidate = cb_invalidate };

/* The second context's notifier: arguments checked, nothing counted. */
static bool cb_ctx2(struct dxm_notifier *n, const struct dxm_range *r,
		    unsigned long cur_seq)
{
	if (dxm_notifier_priv(n) != (void *)&g_owner[2] || !r ||
	    r->start >= r->end || (unsigned)r->event > DXM_EVENT_REMAP)
		FAIL("ctx2 callback: bad arguments");
	dxm_notifier_set_seq(n, cur_seq);
	return true;
}
static const struct dxm_notifier_ops g_ops2 = { .invalidate = cb_ctx2 };
static const struct dxm_notifier_ops g_ops_null = { .invalidate = NULL };

/* Event expectations for the current operation. */
static unsigned long g_snap[MAXN][8];
static bool g_want[MAXN][8];

static void snap_events(void)
{
	for (int i = 0; i < MAXN; i++)
		for (int e = 0; e < 8; e++) {
			g_snap[i][e] = atomic_load(&g_not[i].ev[e]);
			g_want[i][e] = false;
		}
}

/* Every notifier overlapping [s, e) must hear ev. */
static void want_event(uintptr_t s, uintptr_t e, int ev)
{
	for (int i = 0; i < MAXN; i++)
		if (g_not[i].used && g_not[i].s < e && g_not[i].e > s)
			g_want[i][ev] = true;
}

/* ... at every view of region pages [pg, pg+n). */
static void want_region_event(int reg, size_t pg, size_t n, int ev)
{
	for (size_t i = 0; i < g_npg; i++) {
		struct page *p = &g_pg[i];
		if (p->kind == PK_MANAGED && p->reg == reg && p->pgoff >= pg &&
		    p->pgoff < pg + n)
			want_event(p->addr, p->addr + ps, ev);
	}
}

static bool g_exclusive_ok; /* this operation may send EXCLUSIVE */

static void check_events(void)
{
	static const char *names[] = { "CLEAR", "EXCLUSIVE", "UNMAP",
				       "PROTECTION", "FORK", "REMAP" };
	for (int i = 0; i < MAXN; i++) {
		if (!g_not[i].used)
			continue;
		for (int e = 0; e < 6; e++) {
			unsigned long now = atomic_load(&g_not[i].ev[e]);
			if (g_want[i][e] && now == g_snap[i][e])
				FAIL("notifier %d [%#lx, %#lx) was not told "
				     "%s",
				     i, (unsigned long)g_not[i].s,
				     (unsigned long)g_not[i].e, names[e]);
			if (e == DXM_EVENT_EXCLUSIVE && !g_exclusive_ok &&
			    now != g_snap[i][e])
				FAIL("notifier %d got an EXCLUSIVE event from "
				     "an operation that converts nothing",
				     i);
		}
	}
}

/* ------------------------------------------------------------ barrier */

/*
 * dxm handles munmap, mremap and madvise events on its handler thread,
 * after the system call returned.  One handler thread reads the
 * userfaultfd in order, so a CPU fault raised now is handled after every
 * event read before it: touching a page of the sentinel region that was
 * just zapped waits for all of that.
 */
static void barrier(void)
{
	if (madvise((void *)g_sentinel, ps, MADV_DONTNEED))
		FAIL("barrier: madvise: %s", strerror(errno));
	(void)*g_sentinel;
}

/* ------------------------------------------------------------- reading */

struct args {
	const uint8_t *b;
	int i;
};

static uint8_t A(struct args *a)
{
	return a->i < 7 ? a->b[a->i++] : 0;
}

/* Pick the k-th entry among pages matching a filter. */
static struct page *pick_page(uint8_t sel, bool (*ok)(struct page *))
{
	size_t n = 0;
	for (size_t i = 0; i < g_npg; i++)
		n += ok(&g_pg[i]);
	if (!n)
		return NULL;
	size_t k = sel % n;
	for (size_t i = 0; i < g_npg; i++)
		if (ok(&g_pg[i]) && !k--)
			return &g_pg[i];
	return NULL;
}

static bool f_managed(struct page *p) { return p->kind == PK_MANAGED; }
static bool f_plain(struct page *p) { return p->kind == PK_PLAIN; }
static bool f_any(struct page *p) { (void)p; return true; }
static bool f_vstart(struct page *p)
{
	return p->kind == PK_MANAGED && p->pgoff == 0;
}

static size_t len_code(uint8_t c, uintptr_t addr, size_t whole)
{
	if (c < 0xc0)
		return (size_t)(c % 9) * ps;
	if (c < 0xe0)
		return (size_t)(c - 0xc0 + 9) * ps;
	switch (c & 15) {
	case 0: return whole;
	case 1: return whole + ps;
	case 2: return ps + 1;
	case 3: return ps / 2;
	case 4: return SIZE_MAX;
	case 5: return SIZE_MAX & ~(ps - 1);
	case 6: return (size_t)1 << 63;
	case 7: return (size_t)1 << 46;
	case 8: return -(size_t)addr; /* start + len wraps to 0 */
	case 9: return -(size_t)addr + ps; /* wraps past 0 */
	case 10: return 40 * ps;
	case 11: return 2 * ps;
	default: return (size_t)(c & 3) * ps + ps;
	}
}

struct range {
	uintptr_t addr;
	size_t len;
};

/* Three argument bytes choose an address and a length. */
static struct range pick_range(struct args *a)
{
	uint8_t cls = A(a), idx = A(a), lc = A(a);
	struct range r = { 0, 0 };
	struct page *p = NULL;
	size_t whole = ps;
	switch (cls & 15) {
	case 0: case 1: case 2: case 3: case 4: case 5:
		p = pick_page(idx, f_managed);
		break;
	case 6:
		p = pick_page(idx, f_vstart);
		break;
	case 7:
		p = pick_page(idx, f_plain);
		break;
	case 8:
		r.addr = g_nfreed ? g_freed[idx % (g_nfreed < NFREED ? g_nfreed
								       : NFREED)]
				  : 0;
		break;
	case 9:
		r.addr = 0;
		break;
	case 10:
		p = pick_page(idx, f_managed);
		if (p) {
			r.addr = p->addr + 1 + (idx * 16u) % (ps - 1);
			p = NULL;
		}
		break;
	case 11:
		r.addr = (uintptr_t)g_arena +
			 (size_t)(NSLOTS - 1 - idx % 4) * SLOT_PAGES * ps;
		break;
	case 12: {
		static const uintptr_t weird[] = {
			0xffffffff80000000ul, (uintptr_t)1 << 47,
			UINTPTR_MAX & ~(uintptr_t)4095, 0x10000, 0xdeadb000,
		};
		r.addr = weird[idx % 5];
		break;
	}
	case 13:
		p = pick_page(idx, f_managed);
		if (p) {
			r.addr = p->addr - ps * (1 + idx % 2);
			p = NULL;
		}
		break;
	case 14:
		p = pick_page(idx, f_managed);
		if (p) {
			r.addr = p->addr + ps * (1 + idx % 4);
			p = NULL;
		}
		break;
	default:
		p = pick_page(idx, f_any);
		break;
	}
	if (p) {
		r.addr = p->addr;
		if (p->kind == PK_MANAGED)
			whole = (g_reg[p->reg].npages - p->pgoff) * ps;
	}
	r.len = len_code(lc, r.addr, whole);
	return r;
}

/* --------------------------------------------------- range predictions */

struct where {
	int reg;
	unsigned group;
	size_t pg0, n;
	int lprot; /* AND of dxm's recorded protections */
	int prot;  /* AND of the real protections */
};

/* Whether [s, s+len) lies in one CPU view of one region (dxm's lookup). */
static bool lookup_range(uintptr_t s, size_t len, struct where *w)
{
	struct page *p = pg_find(s);
	if (!p || p->kind != PK_MANAGED || p->addr != s)
		return false;
	w->reg = p->reg;
	w->group = p->group;
	w->pg0 = p->pgoff;
	w->n = len / ps;
	w->lprot = 7;
	w->prot = 7;
	if (w->n > MAXRP)
		return false;
	for (size_t i = 0; i < w->n; i++) {
		struct page *q = pg_find(s + i * ps);
		if (!q || q->kind != PK_MANAGED || q->reg != w->reg ||
		    q->group != w->group || q->pgoff != w->pg0 + i)
			return false;
		w->lprot &= q->lprot;
		w->prot &= q->prot;
	}
	return true;
}

/* Find the lock record holding region page pg, unlock that page. */
static bool unlock_page(int reg, size_t pg)
{
	struct region *R = &g_reg[reg];
	if (R->st[pg] != ST_LOCKED)
		return true;
	for (int i = 0; i < MAXREC; i++) {
		struct rec *r = &g_rec[i];
		if (!r->used || r->reg != reg || pg < r->pg0 ||
		    pg >= r->pg0 + r->n || !r->dev[pg - r->pg0])
			continue;
		void *dev[1] = { r->dev[pg - r->pg0] };
		dxm_exclusive_unlock(g_ctx, (void *)(uintptr_t)g_arena, ps, dev);
		r->dev[pg - r->pg0] = NULL;
		R->st[pg] = ST_EXCL;
		return true;
	}
	FAIL("harness: page %zu of region %d is LOCKED with no record", pg, reg);
}

/* Check the model's held pages against dxm_check_exclusive (through any
 * view of each page). */
static void check_held(int reg)
{
	struct region *R = &g_reg[reg];
	if (!R->live || !R->devbase)
		return;
	for (size_t pg = 0; pg < R->npages; pg++) {
		struct page *v = any_view(reg, pg);
		if (!v)
			continue;
		void *dev[1] = { (void *)(R->devbase + pg * ps) };
		bool held = dxm_check_exclusive(g_ctx, (void *)v->addr, ps, dev);
		bool want = R->st[pg] != ST_CPU;
		if (held != want)
			FAIL("region %d page %zu (at %#lx): dxm_check_exclusive "
			     "says %s, the model says %s",
			     reg, pg, (unsigned long)v->addr,
			     held ? "held" : "not held",
			     want ? (R->st[pg] == ST_LOCKED ? "LOCKED"
							    : "EXCLUSIVE")
				  : "CPU");
	}
}

static void check_all_held(void)
{
	for (int r = 0; r < MAXR; r++)
		check_held(r);
}

static void learn_dev(int reg, size_t pg, void *dev, const char *what)
{
	struct region *R = &g_reg[reg];
	uintptr_t d = (uintptr_t)dev;
	if (!d)
		return;
	if (d & (ps - 1))
		FAIL("%s: device address %p is not page aligned", what, dev);
	if (!R->devbase)
		R->devbase = d - pg * ps;
	else if (R->devbase + pg * ps != d)
		FAIL("%s: device address of page %zu is %p, was %#lx before",
		     what, pg, dev, (unsigned long)(R->devbase + pg * ps));
}

/* ---------------------------------------------------- memory accesses */

static void check_word(struct page *p, uint64_t got, const char *how)
{
	if (*pe_known(p) && got != *pe_shadow(p))
		FAIL("%s of page %#lx (%s, region %d page %u): read %#" PRIx64
		     ", expected %#" PRIx64,
		     how, (unsigned long)p->addr,
		     p->kind == PK_MANAGED ? "managed" : "plain",
		     p->kind == PK_MANAGED ? p->reg : -1, p->pgoff, got,
		     *pe_shadow(p));
}

/* Can the CPU touch this page now (after unlocking it)? */
static bool touchable(struct page *p, bool write)
{
	if (!(p->prot & PROT_READ))
		return false;
	if (write && !(p->prot & PROT_WRITE))
		return false;
	if (p->kind == PK_MANAGED && g_reg[p->reg].st[p->pgoff] == ST_LOCKED)
		unlock_page(p->reg, p->pgoff);
	return true;
}

/* A CPU access took the page back: events and state. */
static void cpu_took(struct page *p)
{
	if (p->kind != PK_MANAGED)
		return;
	struct region *R = &g_reg[p->reg];
	if (R->st[p->pgoff] == ST_EXCL)
		want_region_event(p->reg, p->pgoff, 1, DXM_EVENT_CLEAR);
	R->st[p->pgoff] = ST_CPU;
}

static void do_touch(struct page *p, unsigned how)
{
	volatile uint64_t *w = (volatile uint64_t *)(p->addr + *pe_woff(p));
	bool write = how % 4 != 0;
	if (!touchable(p, write))
		return;
	TRACE("touch %s %#lx", write ? "write" : "read", (unsigned long)p->addr);
	cpu_took(p);
	switch (how % 4) {
	case 0:
		check_word(p, *w, "CPU load");
		break;
	case 1: {
		uint64_t v = next_val();
		*w = v;
		*pe_shadow(p) = v;
		*pe_known(p) = true;
		break;
	}
	case 2: {
		uint64_t old = __atomic_fetch_add(w, 2, __ATOMIC_SEQ_CST);
		check_word(p, old, "CPU atomic add");
		*pe_shadow(p) = old + 2;
		*pe_known(p) = true;
		break;
	}
	default: {
		uint64_t exp = *pe_shadow(p), v = next_val();
		bool known = *pe_known(p);
		bool ok = __atomic_compare_exchange_n(w, &exp, v, false,
						      __ATOMIC_SEQ_CST,
						      __ATOMIC_SEQ_CST);
		if (known && !ok)
			FAIL("CPU cmpxchg of %#lx: found %#" PRIx64
			     ", expected %#" PRIx64,
			     (unsigned long)p->addr, exp, *pe_shadow(p));
		*pe_shadow(p) = ok ? v : exp;
		*pe_known(p) = true;
		break;
	}
	}
}

/* ------------------------------------------------------- the operations */

enum {
	OP_ALLOC, OP_ALIAS, OP_ADOPT, OP_FREE, OP_MPROTECT, OP_MAKE_EXCL,
	OP_UNLOCK, OP_CHECK, OP_RANGE_FAULT, OP_N_INSERT, OP_N_REMOVE,
	OP_N_SEQ, OP_TOUCH, OP_DEVICE, OP_MUNMAP, OP_MREMAP, OP_MADVISE,
	OP_STATS, OP_SET_PRINT, OP_CTX2, OP_FORK, OP_SYSCALL, OP_BADCTX,
	OP_MMAP_PLAIN, OP_RAW_MPROTECT, OP_BARRIER, OP_NUM
};

static const char *const op_names[] = {
	"alloc", "alias", "adopt", "free", "mprotect", "make_exclusive",
	"unlock", "check_exclusive", "range_fault", "notifier_insert",
	"notifier_remove", "notifier_seq", "touch", "device", "munmap",
	"mremap", "madvise", "stats", "set_print", "ctx2", "fork", "syscall",
	"bad_ctx", "mmap_plain", "raw_mprotect", "barrier",
};

static int new_region(int kind, size_t npages)
{
	for (int r = 0; r < MAXR; r++)
		if (!g_reg[r].live) {
			struct region *R = &g_reg[r];
			memset(R, 0, sizeof(*R));
			R->live = true;
			R->kind = kind;
			R->gen = ++g_gen;
			R->npages = npages;
			R->next_group = 1;
			return r;
		}
	return -1;
}

static bool region_slot_free(void)
{
	for (int r = 0; r < MAXR; r++)
		if (!g_reg[r].live)
			return true;
	return false;
}

/*
 * A huge-page region the pool could give (fuzz/run.sh reserves a few as
 * root): its granularity and one round trip, checked on the spot (the
 * model tracks base pages only).  A range that is not whole 2 MiB pages
 * is -EINVAL for every call that takes one; the first huge page taken
 * exclusive, written by the device through dev[0] at a word chosen by
 * the input, given back by a CPU read that must see the device's value.
 */
static void huge_round(char *p, size_t len, uint8_t a, uint8_t b)
{
	const size_t hp = (size_t)2 << 20;
	size_t off = ((size_t)a * 4096 + (size_t)b * 8) % hp;
	size_t bad = 4096 * (1 + (size_t)(a ^ b) % 511); /* inside page 0 */
	void *dev[2] = { NULL, NULL };
	volatile uint64_t *w = (volatile uint64_t *)(p + off);
	(void)len;
	/* Notifiers over the whole address space see its conversion, and
	 * the CLEAR of its return (not the model's business). */
	g_exclusive_ok = true;
	TRACE("huge round: %p, word at +%#zx, bad offset %#zx", (void *)p,
	      off, bad);
	*w = 0x5eed;
	long r = dxm_make_exclusive(g_ctx, p + bad, hp - bad, NULL, dev);
	if (r != -EINVAL)
		FAIL("dxm_make_exclusive of a huge page from +%#zx: %ld, not "
		     "-EINVAL", bad, r);
	r = dxm_make_exclusive(g_ctx, p, bad, NULL, dev);
	if (r != -EINVAL)
		FAIL("dxm_make_exclusive of %#zx bytes of a huge page: %ld, "
		     "not -EINVAL", bad, r);
	r = dxm_range_fault(g_ctx, p + bad, 4096, 0, NULL);
	if (r != -EINVAL)
		FAIL("dxm_range_fault inside a huge page: %ld, not -EINVAL", r);
	r = dxm_mprotect(g_ctx, p, bad, PROT_READ);
	if (r != -EINVAL)
		FAIL("dxm_mprotect of part of a huge page: %ld, not -EINVAL",
		     r);
	r = dxm_make_exclusive(g_ctx, p, hp, NULL, dev);
	if (r != 1 || !dev[0] || dev[1])
		FAIL("dxm_make_exclusive of one huge page: %ld, dev %p %p", r,
		     dev[0], dev[1]);
	*(volatile uint64_t *)((char *)dev[0] + off) += 1;
	dxm_exclusive_unlock(g_ctx, p, hp, dev);
	if (*w != 0x5eee)
		FAIL("the CPU read %#lx at +%#zx of a huge page the device "
		     "wrote 0x5eee to", (unsigned long)*w, off);
}

static void op_alloc(struct args *a)
{
	uint8_t lc = A(a), sub = A(a), fl = A(a), misc = A(a);
	size_t len;
	if (lc < 0xf0) {
		len = (size_t)(lc % MAXRP + 1) * ps;
		if (sub & 1)
			len -= 1 + (sub >> 1) * 13 % (ps - 1);
	} else {
		static const size_t huge[] = {
			0, SIZE_MAX, SIZE_MAX / 2 + 1, SIZE_MAX / 2,
			(size_t)1 << 62, (size_t)1 << 55, SIZE_MAX - 4095,
			(size_t)1 << 63,
		};
		len = huge[lc & 7];
	}
	unsigned flags = 0;
	switch (fl % 8) {
	case 5: flags = DXM_ALLOC_INHERIT; break;
	case 6: flags = DXM_ALLOC_HUGE; break;
	case 7: flags = (unsigned)misc << 24 | 4; break;
	}
	bool nullp = misc == 0xff;
	void *addr = (void *)0x1234;
	bool room = region_slot_free();
	if (!room && len && len <= MAXRP * ps && !flags && !nullp)
		return; /* the model is full */
	long ret = dxm_alloc(g_ctx, len, flags, nullp ? NULL : &addr);
	TRACE("dxm_alloc(len %#zx, flags %#x%s) = %ld, %p", len, flags,
	      nullp ? ", NULL" : "", ret, addr);
	bool ok = len && len <= MAXRP * ps && !flags && !nullp;
	errset errs = E(ENOMEM) | E(EMFILE) | E(ENFILE);
	if (!len || nullp || (flags & ~(DXM_ALLOC_INHERIT | DXM_ALLOC_HUGE)))
		errs = E(EINVAL);
	else if (flags & DXM_ALLOC_INHERIT)
		errs = E(EOPNOTSUPP);
	else if (flags & DXM_ALLOC_HUGE) {
		/* Huge pages come from a pool that is usually empty (ENOMEM;
		 * ENOSYS without hugetlb minor faults).  The model does not
		 * track 2 MiB pages: a region it got is checked and freed. */
		if (ret == 0) {
			if (dxm_page_size(g_ctx, addr) != 2 << 20)
				FAIL("a DXM_ALLOC_HUGE region's page is %ld",
				     dxm_page_size(g_ctx, addr));
			huge_round(addr, len, sub, misc);
			if (dxm_free(g_ctx, addr))
				FAIL("dxm_free of a huge-page region failed");
			return;
		}
		expect("dxm_alloc(DXM_ALLOC_HUGE)", ret, false,
		       errs | E(ENOSYS));
		return;
	}
	expect("dxm_alloc", ret, ok, errs);
	if (ret < 0) {
		if (addr != (void *)0x1234)
			FAIL("dxm_alloc failed but changed *addrp");
		return;
	}
	uintptr_t s = (uintptr_t)addr;
	size_t n = (len + ps - 1) / ps;
	if (s & (ps - 1))
		FAIL("dxm_alloc gave an unaligned address %p", addr);
	if (any_tracked(s, n * ps))
		FAIL("dxm_alloc mapped %p over memory the program has", addr);
	int reg = new_region(RK_SHM, n);
	for (size_t i = 0; i < n; i++) {
		g_reg[reg].woff[i] = (uint16_t)(((i * 37 + sub) % (ps / 8)) * 8);
		g_reg[reg].known[i] = true; /* reads as zero */
		struct page p = { .addr = s + i * ps, .kind = PK_MANAGED,
				  .prot = PROT_READ | PROT_WRITE,
				  .lprot = PROT_READ | PROT_WRITE,
				  .reg = (int8_t)reg, .group = 0,
				  .pgoff = (uint16_t)i };
		pg_insert(&p);
	}
}

static void op_alias(struct args *a)
{
	struct range r = pick_range(a);
	uint8_t misc = A(a);
	bool nullp = misc == 0xff;
	void *alias = (void *)0x1234;
	long ret = dxm_alias(g_ctx, (void *)r.addr, nullp ? NULL : &alias);
	TRACE("dxm_alias(%#lx%s) = %ld, %p", (unsigned long)r.addr,
	      nullp ? ", NULL" : "", ret, alias);
	struct page *p = r.addr ? pg_find(r.addr) : NULL;
	bool managed = p && p->kind == PK_MANAGED;
	bool ok = false;
	errset errs;
	if (!r.addr || nullp)
		errs = E(EINVAL);
	else if (!managed)
		errs = E(ENOENT);
	else if (p->addr != r.addr || p->pgoff != 0 ||
		 g_reg[p->reg].kind != RK_SHM)
		errs = E(EINVAL);
	else {
		ok = true;
		errs = E(ENOMEM);
	}
	if (ok && (g_npg + g_reg[p->reg].npages > MAXPG - 64)) {
		/* the model cannot take more pages: undo */
		if (ret >= 0)
			dxm_free(g_ctx, alias);
		return;
	}
	expect("dxm_alias", ret, ok, errs);
	if (ret < 0)
		return;
	uintptr_t s = (uintptr_t)alias;
	int reg = p->reg;
	struct region *R = &g_reg[reg];
	if (s & (ps - 1) || any_tracked(s, R->npages * ps))
		FAIL("dxm_alias gave %p over memory the program has", alias);
	unsigned group = R->next_group++;
	for (size_t i = 0; i < R->npages; i++) {
		struct page q = { .addr = s + i * ps, .kind = PK_MANAGED,
				  .prot = PROT_READ | PROT_WRITE,
				  .lprot = PROT_READ | PROT_WRITE,
				  .reg = (int8_t)reg, .group = (uint16_t)group,
				  .pgoff = (uint16_t)i };
		pg_insert(&q);
	}
}

/* Map n plain pages in a new arena slot; some pages written. */
static uintptr_t map_plain(size_t n, uint8_t pattern)
{
	void *slot = slot_alloc();
	if (!slot || g_npg + n > MAXPG - 64)
		return 0;
	void *p = mmap(slot, n * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (p != slot)
		FAIL("mmap plain: %s", strerror(errno));
	for (size_t i = 0; i < n; i++) {
		struct page q = { .addr = (uintptr_t)p + i * ps,
				  .kind = PK_PLAIN,
				  .prot = PROT_READ | PROT_WRITE,
				  .woff = (uint16_t)(((i * 11 + pattern) %
						      (ps / 8)) * 8),
				  .known = true };
		if (pattern & (1u << (i % 8))) {
			q.shadow = next_val();
			*(volatile uint64_t *)(q.addr + q.woff) = q.shadow;
		}
		pg_insert(&q);
	}
	return (uintptr_t)p;
}

static void op_mmap_plain(struct args *a)
{
	uint8_t n = A(a), pat = A(a);
	uintptr_t p = map_plain(1 + n % 16, pat);
	TRACE("mmap plain %u pages at %#lx", 1 + n % 16, (unsigned long)p);
}

static void op_adopt(struct args *a)
{
	uint8_t mode = A(a);
	struct range r;
	unsigned flags = 0;
	if (mode % 4 < 2) {
		/* fresh memory, adopted whole or in part */
		uint8_t n = A(a), pat = A(a), var = A(a);
		size_t np = 1 + n % 16;
		uintptr_t base = map_plain(np, pat);
		if (!base)
			return;
		r.addr = base;
		r.len = np * ps;
		switch (var % 8) {
		case 1: r.addr += ps * (np > 1); r.len -= ps * (np > 1); break;
		case 2: r.len = ps; break;
		case 3: r.len += ps; break; /* over the slot's hole */
		case 4: r.addr += 1; break;
		case 5: r.len = (size_t)1 << (40 + var % 8); break;
		case 6: flags = 1u << (var % 32); break;
		case 7: r.len -= ps / 2; break;
		}
	} else if (mode % 4 == 2) {
		/* plain memory the program has */
		uint8_t idx = A(a), n = A(a);
		struct page *p = pick_page(idx, f_plain);
		if (!p)
			return;
		r.addr = p->addr;
		r.len = (size_t)(1 + n % 4) * ps;
	} else {
		r = pick_range(a);
	}
	/* Only where the model knows what is mapped: never adopt the
	 * fuzzer's own memory (a huge range cannot be all mapped) */
	if (r.addr && range_ok(r.addr, r.len) && r.len <= ((size_t)1 << 24) &&
	    r.addr < ((uintptr_t)1 << 47)) {
		for (size_t i = 0; i < r.len / ps; i++) {
			uintptr_t pa = r.addr + i * ps;
			if (!pg_find(pa) && !in_arena(pa, ps))
				return;
		}
	}
	if (range_ok(r.addr, r.len) && r.len / ps <= MAXRP &&
	    !region_slot_free())
		return;
	g_allow_err = !g_anon_ok; /* -ENOSYS is logged as an error */
	long ret = dxm_adopt(g_ctx, (void *)r.addr, r.len, flags);
	g_allow_err = false;
	TRACE("dxm_adopt(%#lx, %#zx, %#x) = %ld", (unsigned long)r.addr,
	      r.len, flags, ret);
	/* prediction */
	bool ok = false;
	errset errs;
	if (!range_ok(r.addr, r.len) || flags)
		errs = E(EINVAL);
	else if (!g_anon_ok)
		errs = E(ENOSYS);
	else {
		bool managed = false, all_plain = r.len / ps <= MAXRP;
		size_t i = pg_lower(r.addr);
		for (; i < g_npg && g_pg[i].addr - r.addr < r.len; i++)
			if (g_pg[i].kind == PK_MANAGED)
				managed = true;
		for (size_t k = 0; all_plain && k < r.len / ps; k++) {
			struct page *p = pg_find(r.addr + k * ps);
			all_plain = p && p->kind == PK_PLAIN &&
				    (p->prot & PROT_WRITE);
		}
		if (managed)
			errs = E(EEXIST);
		else if (all_plain) {
			ok = true;
			errs = E(ENOMEM);
		} else
			errs = E(EINVAL) | E(EFAULT);
	}
	expect("dxm_adopt", ret, ok, errs);
	if (ret < 0)
		return;
	size_t n = r.len / ps;
	int reg = new_region(RK_ANON, n);
	struct region *R = &g_reg[reg];
	for (size_t k = 0; k < n; k++) {
		struct page *p = pg_find(r.addr + k * ps);
		R->woff[k] = p->woff;
		R->known[k] = p->known;
		R->shadow[k] = p->shadow;
		p->kind = PK_MANAGED;
		p->reg = (int8_t)reg;
		p->group = 0;
		p->pgoff = (uint16_t)k;
		p->lprot = PROT_READ | PROT_WRITE;
	}
}

/* The model's part of dxm_free on a view start p (checked to be one). */
static void model_free(struct page *p)
{
	int reg = p->reg;
	unsigned group = p->group;
	struct region *R = &g_reg[reg];
	bool all = group == 0;
	for (size_t i = 0; i < g_npg;) {
		struct page *q = &g_pg[i];
		if (q->kind != PK_MANAGED || q->reg != reg ||
		    (!all && q->group != group)) {
			i++;
			continue;
		}
		want_event(q->addr, q->addr + ps, DXM_EVENT_UNMAP);
		if (R->kind == RK_ANON) {
			/* handed back to the program, every page in place */
			q->kind = PK_PLAIN;
			q->woff = R->woff[q->pgoff];
			q->known = R->known[q->pgoff];
			q->shadow = R->shadow[q->pgoff];
			q->reg = -1;
			i++;
		} else {
			if (q->pgoff == 0)
				add_freed(q->addr);
			pg_remove_at(i);
		}
	}
	if (all || !region_has_pages(reg))
		region_dead(reg);
}


static void op_free(struct args *a)
{
	struct range r = pick_range(a);
	long ret = dxm_free(g_ctx, (void *)r.addr);
	TRACE("dxm_free(%#lx) = %ld", (unsigned long)r.addr, ret);
	struct page *p = r.addr ? pg_find(r.addr) : NULL;
	bool managed = p && p->kind == PK_MANAGED;
	bool ok = false;
	errset errs;
	if (!r.addr)
		errs = E(EINVAL);
	else if (!managed)
		errs = E(ENOENT);
	else if (p->addr != r.addr || p->pgoff != 0)
		errs = E(EINVAL);
	else {
		ok = true;
		errs = E(ENOMEM);
	}
	expect("dxm_free", ret, ok, errs);
	if (ret == 0)
		model_free(p);
}

static int prot_code(uint8_t c)
{
	static const int prots[] = {
		PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE,
		PROT_READ | PROT_WRITE | PROT_EXEC, PROT_WRITE, PROT_EXEC,
		PROT_READ | PROT_EXEC, 8, PROT_READ | 0x10, PROT_GROWSDOWN,
		PROT_READ | PROT_WRITE, PROT_READ,
	};
	return prots[c % 12];
}

static void op_mprotect(struct args *a)
{
	struct range r = pick_range(a);
	int prot = prot_code(A(a));
	struct where w;
	bool inrange = range_ok(r.addr, r.len) &&
		       !(prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC));
	bool found = inrange && lookup_range(r.addr, r.len, &w);
	/* Adopted memory loses write access: dxm gives its pages back to
	 * the CPU first and waits for locked ones (see the report on
	 * dxm_mprotect): unlock them, as the program must. */
	if (found && g_reg[w.reg].kind == RK_ANON && !(prot & PROT_WRITE))
		for (size_t i = 0; i < w.n; i++)
			unlock_page(w.reg, w.pg0 + i);
	long ret = dxm_mprotect(g_ctx, (void *)r.addr, r.len, prot);
	TRACE("dxm_mprotect(%#lx, %#zx, %#x) = %ld", (unsigned long)r.addr,
	      r.len, prot, ret);
	bool ok = found;
	errset errs = !inrange ? E(EINVAL) : !found ? E(EFAULT) : E(ENOMEM);
	expect("dxm_mprotect", ret, ok, errs);
	if (!found)
		return;
	want_event(r.addr, r.addr + r.len, DXM_EVENT_PROTECTION);
	if (ret < 0)
		return;
	struct region *R = &g_reg[w.reg];
	if (R->kind == RK_ANON && !(prot & PROT_WRITE))
		for (size_t i = 0; i < w.n; i++) {
			if (R->st[w.pg0 + i] == ST_EXCL)
				want_region_event(w.reg, w.pg0 + i, 1,
						  DXM_EVENT_PROTECTION);
			R->st[w.pg0 + i] = ST_CPU;
		}
	for (size_t i = 0; i < w.n; i++) {
		struct page *q = pg_find(r.addr + i * ps);
		q->prot = q->lprot = (uint8_t)prot;
	}
	R->split = true;
}

static const void *owner_code(uint8_t c)
{
	switch (c % 6) {
	case 0: return NULL;
	case 1: return &g_owner[0];
	case 2: return &g_owner[1];
	default: return &g_not[c % MAXN]; /* a notifier's own conversions */
	}
}

static void fill_canary(void **dev, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dev[i] = (void *)(uintptr_t)(0xca5a0000u + i);
}

static void check_canary(void **dev, size_t from, const char *what)
{
	for (size_t i = from; i < DEVN; i++)
		if (dev[i] != (void *)(uintptr_t)(0xca5a0000u + i))
			FAIL("%s wrote dev[%zu] (%p), beyond what it may", what,
			     i, dev[i]);
}

static void op_make_excl(struct args *a)
{
	struct range r = pick_range(a);
	const void *owner = owner_code(A(a));
	uint8_t misc = A(a);
	bool nulldev = misc == 0xff;
	void *dev[DEVN];
	fill_canary(dev, DEVN);
	struct where w;
	bool rok = range_ok(r.addr, r.len);
	bool found = rok && lookup_range(r.addr, r.len, &w);
	g_exclusive_ok = true;
	long ret = dxm_make_exclusive(g_ctx, (void *)r.addr, r.len, owner,
				      nulldev ? NULL : dev);
	TRACE("dxm_make_exclusive(%#lx, %#zx, owner %p%s) = %ld",
	      (unsigned long)r.addr, r.len, owner, nulldev ? ", dev NULL" : "",
	      ret);
	bool ok = false;
	errset errs;
	if (nulldev || !rok)
		errs = E(EINVAL);
	else if (!found)
		errs = E(EFAULT);
	else if (!(w.lprot & PROT_WRITE))
		errs = E(EPERM);
	else {
		ok = true;
		errs = 0;
	}
	if (ok && g_reg[w.reg].kind == RK_ANON && !(w.prot & PROT_WRITE))
		errs |= E(EPERM); /* a raw mprotect(2) took write access */
	expect("dxm_make_exclusive", ret, ok, errs);
	if (ret < 0) {
		check_canary(dev, 0, "dxm_make_exclusive (failed)");
		return;
	}
	if ((size_t)ret != w.n)
		FAIL("dxm_make_exclusive returned %ld for %zu pages", ret, w.n);
	check_canary(dev, w.n, "dxm_make_exclusive");
	struct region *R = &g_reg[w.reg];
	size_t done = 0;
	for (size_t i = 0; i < w.n; i++) {
		size_t pg = w.pg0 + i;
		if (R->st[pg] == ST_LOCKED) {
			if (dev[i])
				FAIL("dxm_make_exclusive converted page %zu, "
				     "which is LOCKED",
				     pg);
			continue;
		}
		if (!dev[i]) {
			if (R->kind == RK_SHM || R->st[pg] == ST_EXCL)
				FAIL("dxm_make_exclusive refused page %zu "
				     "(%s) of %s region",
				     pg, R->st[pg] == ST_EXCL ? "EXCLUSIVE"
							      : "CPU",
				     R->kind == RK_SHM ? "a memfd" : "an adopted");
			continue; /* adopted memory may refuse a CPU page */
		}
		learn_dev(w.reg, pg, dev[i], "dxm_make_exclusive");
		R->st[pg] = ST_LOCKED;
		done++;
	}
	if (done)
		want_region_event(w.reg, w.pg0, w.n, DXM_EVENT_EXCLUSIVE);
	if (!done)
		return;
	/* keep a record, or unlock at once when there is no room */
	for (int k = 0; k < MAXREC; k++)
		if (!g_rec[k].used) {
			struct rec *c = &g_rec[k];
			c->used = true;
			c->reg = w.reg;
			c->gen = R->gen;
			c->pg0 = w.pg0;
			c->n = w.n;
			c->start = r.addr;
			memcpy(c->dev, dev, w.n * sizeof(void *));
			return;
		}
	dxm_exclusive_unlock(g_ctx, (void *)r.addr, r.len, dev);
	for (size_t i = 0; i < w.n; i++)
		if (dev[i])
			R->st[w.pg0 + i] = ST_EXCL;
}

static struct rec *pick_rec(uint8_t sel)
{
	int n = 0;
	for (int i = 0; i < MAXREC; i++)
		n += g_rec[i].used;
	if (!n)
		return NULL;
	int k = sel % n;
	for (int i = 0; i < MAXREC; i++)
		if (g_rec[i].used && !k--)
			return &g_rec[i];
	return NULL;
}

static void op_unlock(struct args *a)
{
	uint8_t v = A(a), sel = A(a), x = A(a), y = A(a);
	struct rec *c = pick_rec(sel);
	void *dev[DEVN];
	fill_canary(dev, DEVN);
	if (!c || v % 8 >= 5) {
		/* nothing valid: garbage that must change nothing */
		size_t n = 1 + x % 8;
		for (size_t i = 0; i < n; i++) {
			struct page *p = pick_page((uint8_t)(y + i), f_any);
			dev[i] = (i + y) % 3 == 0 ? NULL
				: p ? (void *)(p->addr + (i & 1))
				    : (void *)(uintptr_t)(0x1000 * (i + 1));
		}
		uintptr_t start = (uintptr_t)g_arena;
		switch (v % 4) {
		case 0: start += 1; break;
		case 1: start = 0; break;
		}
		bool nulldev = y == 0xff;
		TRACE("dxm_exclusive_unlock(garbage, %zu entries)", n);
		dxm_exclusive_unlock(g_ctx, (void *)start, n * ps,
				     nulldev ? NULL : dev);
		return;
	}
	size_t from = 0, n = c->n;
	if (v % 8 == 4 && c->n > 1) {
		from = x % c->n;
		n = 1 + y % (c->n - from);
	}
	memcpy(dev, c->dev + from, n * sizeof(void *));
	/* dxm goes by device address: any aligned CPU range will do */
	uintptr_t start = v & 8 ? c->start + from * ps : (uintptr_t)g_arena;
	TRACE("dxm_exclusive_unlock(record pages %zu+%zu of region %d)",
	      c->pg0 + from, n, c->reg);
	dxm_exclusive_unlock(g_ctx, (void *)start, n * ps, dev);
	check_canary(dev, n, "dxm_exclusive_unlock");
	struct region *R = &g_reg[c->reg];
	bool left = false;
	for (size_t i = 0; i < c->n; i++) {
		if (i >= from && i < from + n && c->dev[i]) {
			size_t pg = c->pg0 + i;
			if (R->st[pg] == ST_LOCKED)
				R->st[pg] = ST_EXCL;
			c->dev[i] = NULL;
		}
		left |= c->dev[i] != NULL;
	}
	if (!left)
		c->used = false;
}

static void op_check(struct args *a)
{
	uint8_t v = A(a);
	void *dev[DEVN];
	fill_canary(dev, DEVN);
	struct range r;
	bool nulldev = false;
	if (v % 4 == 0) {
		struct rec *c = pick_rec(A(a));
		if (!c)
			return;
		r.addr = c->start;
		r.len = c->n * ps;
		memcpy(dev, c->dev, c->n * sizeof(void *));
		/* pages already unlocked from the record: their address */
		struct region *R = &g_reg[c->reg];
		for (size_t i = 0; i < c->n; i++)
			if (!dev[i] && v & 4)
				dev[i] = (void *)(R->devbase + (c->pg0 + i) * ps);
	} else {
		r = pick_range(a);
		uint8_t how = A(a);
		nulldev = how == 0xff;
		struct where w;
		if (range_ok(r.addr, r.len) && lookup_range(r.addr, r.len, &w) &&
		    g_reg[w.reg].devbase)
			for (size_t i = 0; i < w.n; i++)
				dev[i] = (how >> (i % 8)) & 1 && how & 0x80
						 ? NULL
						 : (void *)(g_reg[w.reg].devbase +
							    (w.pg0 + i) * ps);
	}
	bool got = dxm_check_exclusive(g_ctx, (void *)r.addr, r.len,
				       nulldev ? NULL : dev);
	struct where w;
	bool want = !nulldev && range_ok(r.addr, r.len) &&
		    lookup_range(r.addr, r.len, &w);
	if (want) {
		struct region *R = &g_reg[w.reg];
		for (size_t i = 0; i < w.n && want; i++)
			want = R->devbase &&
			       dev[i] == (void *)(R->devbase + (w.pg0 + i) * ps) &&
			       R->st[w.pg0 + i] != ST_CPU;
	}
	TRACE("dxm_check_exclusive(%#lx, %#zx) = %d", (unsigned long)r.addr,
	      r.len, got);
	if (got != want)
		FAIL("dxm_check_exclusive(%#lx, %#zx) = %d, the model says %d",
		     (unsigned long)r.addr, r.len, got, want);
	check_canary(dev, MAXRP + 1, "dxm_check_exclusive");
}

static void op_range_fault(struct args *a)
{
	struct range r = pick_range(a);
	uint8_t f = A(a), misc = A(a);
	unsigned flags = f % 4 == 3 ? 1u << (f % 32) : f % 4 == 1 ? DXM_FAULT_WRITE : 0;
	bool nulldev = misc & 1;
	void *dev[DEVN];
	fill_canary(dev, DEVN);
	struct where w;
	bool rok = range_ok(r.addr, r.len);
	bool found = rok && lookup_range(r.addr, r.len, &w);
	bool badflags = flags & ~DXM_FAULT_WRITE;
	if (found) /* it would wait for them forever */
		for (size_t i = 0; i < w.n; i++)
			unlock_page(w.reg, w.pg0 + i);
	long ret = dxm_range_fault(g_ctx, (void *)r.addr, r.len, flags,
				   nulldev ? NULL : dev);
	TRACE("dxm_range_fault(%#lx, %#zx, %#x) = %ld", (unsigned long)r.addr,
	      r.len, flags, ret);
	bool ok = false;
	errset errs;
	if (!rok)
		errs = E(EINVAL);
	else if (!found)
		errs = badflags ? E(EINVAL) | E(EFAULT) : E(EFAULT);
	else if (badflags)
		errs = E(EINVAL);
	else if (!(w.lprot & PROT_READ) ||
		 ((flags & DXM_FAULT_WRITE) && !(w.lprot & PROT_WRITE)))
		errs = E(EPERM);
	else {
		ok = true;
		errs = 0;
	}
	/* Adopted memory whose real protection (a raw mprotect(2)) does
	 * not allow the access: the pages are given back, then faulting
	 * them in fails with -EPERM. */
	bool raw = ok && g_reg[w.reg].kind == RK_ANON &&
		   (!(w.prot & PROT_READ) ||
		    ((flags & DXM_FAULT_WRITE) && !(w.prot & PROT_WRITE)));
	if (raw && ret == -EPERM) {
		for (size_t i = 0; i < w.n; i++) {
			struct region *R = &g_reg[w.reg];
			if (R->st[w.pg0 + i] == ST_EXCL)
				want_region_event(w.reg, w.pg0 + i, 1,
						  DXM_EVENT_CLEAR);
			R->st[w.pg0 + i] = ST_CPU;
		}
		return;
	}
	expect("dxm_range_fault", ret, ok, errs);
	if (ret < 0) {
		check_canary(dev, 0, "dxm_range_fault (failed)");
		return;
	}
	if ((size_t)ret != w.n)
		FAIL("dxm_range_fault returned %ld for %zu pages", ret, w.n);
	check_canary(dev, nulldev ? 0 : w.n, "dxm_range_fault");
	struct region *R = &g_reg[w.reg];
	for (size_t i = 0; i < w.n; i++) {
		size_t pg = w.pg0 + i;
		if (!nulldev) {
			if (!dev[i])
				FAIL("dxm_range_fault: dev[%zu] NULL", i);
			if (R->kind == RK_SHM)
				learn_dev(w.reg, pg, dev[i], "dxm_range_fault");
			else if ((uintptr_t)dev[i] != r.addr + i * ps &&
				 (!R->devbase ||
				  (uintptr_t)dev[i] != R->devbase + pg * ps))
				/* adopted memory: the staging address
				 * (dxm_range_fault(3)) or, for an ordinary
				 * access, the CPU address itself */
				FAIL("dxm_range_fault: dev[%zu] = %p in "
				     "adopted memory",
				     i, dev[i]);
		}
		if (R->st[pg] == ST_EXCL)
			want_region_event(w.reg, pg, 1, DXM_EVENT_CLEAR);
		R->st[pg] = ST_CPU;
	}
}

static struct fnot *pick_not(uint8_t sel)
{
	int n = 0;
	for (int i = 0; i < MAXN; i++)
		n += g_not[i].used;
	if (!n)
		return NULL;
	int k = sel % n;
	for (int i = 0; i < MAXN; i++)
		if (g_not[i].used && !k--)
			return &g_not[i];
	return NULL;
}

static void op_n_insert(struct args *a)
{
	uint8_t v = A(a);
	struct range r;
	switch (v % 8) {
	case 0:
		r.addr = 0;
		r.len = SIZE_MAX; /* everything */
		break;
	case 1:
		r.addr = 0;
		r.len = 0;
		break;
	case 2: /* wraps */
		r = pick_range(a);
		r.len = -(size_t)r.addr + ps * (A(a) % 3);
		break;
	case 3: /* unaligned, near the top */
		r.addr = UINTPTR_MAX - 3 * ps + 17;
		r.len = 2 * ps;
		break;
	default:
		r = pick_range(a);
		if (v & 0x10)
			r.addr += 5, r.len += 3;
		break;
	}
	uint8_t kind = A(a);
	int slot = -1;
	for (int i = 0; i < MAXN; i++)
		if (!g_not[i].used) {
			slot = i;
			break;
		}
	if (slot < 0)
		return;
	struct fnot *f = &g_not[slot];
	const struct dxm_notifier_ops *ops = kind % 16 == 14 ? NULL
					     : kind % 16 == 15 ? &g_ops_null
							       : &g_ops;
	bool nullnp = kind == 0xff;
	struct dxm_notifier *n = (void *)0x1234;
	/* a fresh record: counters start at zero */
	for (int e = 0; e < 8; e++) {
		atomic_store(&f->ev[e], 0);
		g_snap[slot][e] = 0;
	}
	atomic_store(&f->ss_started, 0);
	atomic_store(&f->ss_done, 0);
	atomic_store(&f->mode, kind >> 4);
	f->have_seq = false;
	uintptr_t s = r.addr;
	f->s = s & ~(uintptr_t)(ps - 1);
	f->e = s + r.len > UINTPTR_MAX - ps
		       ? UINTPTR_MAX & ~(uintptr_t)(ps - 1)
		       : (s + r.len + ps - 1) & ~(uintptr_t)(ps - 1);
	long ret = dxm_notifier_insert(g_ctx, (void *)r.addr, r.len, ops, f,
				       nullnp ? NULL : &n);
	TRACE("dxm_notifier_insert(%#lx, %#zx, mode %u) = %ld",
	      (unsigned long)r.addr, r.len, kind >> 4, ret);
	bool bad = nullnp || !ops || !ops->invalidate || !r.len ||
		   r.addr + r.len < r.addr;
	expect("dxm_notifier_insert", ret, !bad,
	       bad ? E(EINVAL) : E(ENOMEM));
	if (ret < 0) {
		if (!nullnp && n != (void *)0x1234)
			FAIL("dxm_notifier_insert failed but set *np");
		return;
	}
	if (dxm_notifier_priv(n) != f)
		FAIL("dxm_notifier_priv gave %p, not %p", dxm_notifier_priv(n),
		     (void *)f);
	f->n = n;
	f->used = true;
}

static void remove_not(struct fnot *f)
{
	dxm_notifier_remove(f->n);
	f->used = false;
	f->n = NULL;
}

static void op_n_remove(struct args *a)
{
	uint8_t sel = A(a);
	if (sel == 0xff) {
		dxm_notifier_remove(NULL);
		return;
	}
	struct fnot *f = pick_not(sel);
	if (!f)
		return;
	TRACE("dxm_notifier_remove(%d)", (int)(f - g_not));
	remove_not(f);
}

static void op_n_seq(struct args *a)
{
	uint8_t v = A(a), sel = A(a);
	struct fnot *f = pick_not(sel);
	if (v % 5 == 4) {
		if (dxm_notifier_priv(NULL) != NULL)
			FAIL("dxm_notifier_priv(NULL) is not NULL");
		return;
	}
	if (!f)
		return;
	switch (v % 5) {
	case 0: {
		unsigned long done = atomic_load(&f->ss_done);
		f->seq = dxm_notifier_read_begin(f->n);
		f->done_before = done;
		f->started_after = atomic_load(&f->ss_started);
		f->have_seq = true;
		TRACE("read_begin(%d) = %lu", (int)(f - g_not), f->seq);
		break;
	}
	case 1: {
		if (!f->have_seq)
			return;
		unsigned long done = atomic_load(&f->ss_done);
		bool retry = dxm_notifier_read_retry(f->n, f->seq);
		unsigned long started = atomic_load(&f->ss_started);
		TRACE("read_retry(%d, %lu) = %d", (int)(f - g_not), f->seq,
		      retry);
		if (done > f->started_after && !retry)
			FAIL("read_retry is false after an invalidation that "
			     "began after read_begin called set_seq");
		if (started == f->done_before && retry)
			FAIL("read_retry is true with no set_seq since "
			     "read_begin");
		break;
	}
	case 2:
		if (dxm_notifier_priv(f->n) != f)
			FAIL("dxm_notifier_priv changed");
		break;
	case 3:
		atomic_store(&f->mode, v >> 4);
		break;
	}
}

static void op_touch(struct args *a)
{
	uint8_t sel = A(a), how = A(a), cnt = A(a);
	for (unsigned k = 0; k < 1u + cnt % 3; k++) {
		struct page *p = pick_page((uint8_t)(sel + k * 7),
					   how & 0x80 ? f_managed : f_any);
		if (!p)
			return;
		do_touch(p, how + k);
	}
}

/* The device: reads and writes held pages at their device address. */
static void op_device(struct args *a)
{
	uint8_t sel = A(a), how = A(a);
	int n = 0;
	for (int r = 0; r < MAXR; r++)
		if (g_reg[r].live && g_reg[r].devbase)
			for (size_t pg = 0; pg < g_reg[r].npages; pg++)
				n += g_reg[r].st[pg] != ST_CPU;
	if (!n)
		return;
	int k = sel % n;
	for (int r = 0; r < MAXR; r++) {
		struct region *R = &g_reg[r];
		if (!R->live || !R->devbase)
			continue;
		for (size_t pg = 0; pg < R->npages; pg++) {
			if (R->st[pg] == ST_CPU || k--)
				continue;
			volatile uint64_t *w =
				(volatile uint64_t *)(R->devbase + pg * ps +
						      R->woff[pg]);
			TRACE("device %s region %d page %zu",
			      how & 1 ? "write" : "read", r, pg);
			if (how & 1) {
				uint64_t v = next_val();
				*w = v;
				R->shadow[pg] = v;
				R->known[pg] = true;
			} else {
				uint64_t got = *w;
				if (R->known[pg] && got != R->shadow[pg])
					FAIL("device read of region %d page "
					     "%zu: %#" PRIx64
					     ", expected %#" PRIx64,
					     r, pg, got, R->shadow[pg]);
			}
			return;
		}
	}
}

/* A contiguous run of tracked pages from p, at most n. */
static size_t run_len(struct page *p, size_t n)
{
	size_t k = 0;
	while (k < n && pg_find(p->addr + k * ps))
		k++;
	return k;
}

/* The model's part of a munmap of [s, s+len) (tracked pages only). */
static void model_unmap(uintptr_t s, size_t len)
{
	for (size_t i = pg_lower(s); i < g_npg && g_pg[i].addr < s + len;) {
		struct page *q = &g_pg[i];
		if (q->kind == PK_MANAGED) {
			g_reg[q->reg].split = true;
			want_event(q->addr, q->addr + ps, DXM_EVENT_UNMAP);
			struct region *R = &g_reg[q->reg];
			if (R->kind == RK_ANON) {
				/* its only view: the data goes too */
				R->st[q->pgoff] = ST_CPU;
				forget_dev(q->reg, q->pgoff);
			}
		}
		pg_remove_at(i);
	}
	add_freed(s);
	reap_regions();
}

static void op_munmap(struct args *a)
{
	uint8_t sel = A(a), n = A(a), v = A(a);
	struct page *p = pick_page(sel, v & 1 ? f_managed : f_any);
	if (!p)
		return;
	uintptr_t s = p->addr;
	size_t len = run_len(p, 1 + n % 8) * ps;
	TRACE("munmap(%#lx, %#zx)", (unsigned long)s, len);
	unmap_pages(s, len);
	model_unmap(s, len);
	barrier();
}

static void op_mremap(struct args *a)
{
	uint8_t sel = A(a), n = A(a), v = A(a);
	struct page *p = pick_page(sel, v & 1 ? f_managed : f_any);
	if (!p)
		return;
	uintptr_t s = p->addr;
	size_t len = run_len(p, 1 + n % 8) * ps;
	int how = v / 2 % 4;
	if (how == 3) {
		/* shrink in place: the tail is unmapped */
		if (len < 2 * ps)
			return;
		size_t keep = ps * (1 + (v >> 3) % (len / ps - 1));
		void *q = mremap((void *)s, len, keep, 0);
		TRACE("mremap(%#lx, %#zx -> %#zx) = %p", (unsigned long)s, len,
		      keep, q);
		if (q == MAP_FAILED)
			return; /* over two mappings: nothing changed */
		refill_hole(s + keep, len - keep);
		model_unmap(s + keep, len - keep);
		barrier();
		return;
	}
	bool dontunmap = how == 2;
	if (dontunmap)
		return; /* see README: not modelled */
	/* to a fresh place outside the arena, which it replaces whole */
	void *slot = mmap(NULL, len, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (slot == MAP_FAILED)
		FAIL("mmap: %s", strerror(errno));
	void *q = mremap((void *)s, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
			 slot);
	TRACE("mremap(%#lx, %#zx) -> %p = %p", (unsigned long)s, len, slot, q);
	size_t from = 0, to = len; /* the part that moved */
	if (q == MAP_FAILED) {
		int err = errno;
		if (err != EFAULT && err != EINVAL)
			FAIL("mremap: %s", strerror(err));
		/* Since Linux 6.17 a move may take several mappings and stop
		 * at one it cannot move (a userfaultfd-registered one, say):
		 * the mappings before it have moved.  Find out which. */
		unsigned char vec;
		while (from < len && !mincore((void *)(s + from), ps, &vec))
			from += ps;
		to = from;
		while (to < len && mincore((void *)(s + to), ps, &vec) &&
		       errno == ENOMEM)
			to += ps;
		TRACE("mremap failed (%s): pages [%zu, %zu) moved", strerror(err),
		      from / ps, to / ps);
		if (from > 0)
			munmap(slot, from);
		if (to < len)
			munmap((char *)slot + to, len - to);
		if (from == to)
			return;
		q = slot;
	}
	if (q != slot)
		FAIL("mremap moved to %p, not %p", q, slot);
	refill_hole(s + from, to - from);
	/* move the entries */
	struct page moved[SLOT_PAGES];
	size_t k = 0;
	for (size_t i = pg_lower(s + from); i < g_npg && g_pg[i].addr < s + to;) {
		struct page *e = &g_pg[i];
		if (e->kind == PK_MANAGED) {
			g_reg[e->reg].split = true;
			want_event(e->addr, e->addr + ps, DXM_EVENT_REMAP);
		}
		moved[k] = *e;
		moved[k].addr = e->addr - s + (uintptr_t)q;
		k++;
		pg_remove_at(i);
	}
	for (size_t i = 0; i < k; i++)
		pg_insert(&moved[i]);
	add_freed(s + from);
	barrier();
}

static void op_madvise(struct args *a)
{
	uint8_t sel = A(a), n = A(a), v = A(a);
	struct page *p = pick_page(sel, v & 1 ? f_managed : f_any);
	if (!p)
		return;
	static const int advs[] = { MADV_DONTNEED, MADV_DONTNEED, MADV_REMOVE,
				    MADV_FREE, MADV_POPULATE_READ,
				    MADV_POPULATE_WRITE };
	int adv = advs[(v >> 1) % 6];
	/* a run of one kind and one protection: then the call does the
	 * same to every page and the model knows what happened */
	size_t want = 1 + n % 8, k = 1;
	while (k < want) {
		struct page *q = pg_find(p->addr + k * ps);
		if (!q || q->kind != p->kind || q->prot != p->prot ||
		    (q->kind == PK_MANAGED && q->reg != p->reg))
			break;
		k++;
	}
	uintptr_t s = p->addr;
	size_t len = k * ps;
	bool populate = adv == MADV_POPULATE_READ || adv == MADV_POPULATE_WRITE;
	if (populate) {
		/* a kernel fault on a locked page waits for the unlock */
		for (size_t i = 0; i < k; i++) {
			struct page *q = pg_find(s + i * ps);
			if (q->kind == PK_MANAGED)
				unlock_page(q->reg, q->pgoff);
		}
	}
	int ret = madvise((void *)s, len, adv);
	int err = ret ? errno : 0;
	TRACE("madvise(%#lx, %#zx, %d) = %d (%s)", (unsigned long)s, len, adv,
	      ret, ret ? strerror(err) : "ok");
	bool anon = p->kind == PK_PLAIN ||
		    g_reg[p->reg].kind == RK_ANON;
	for (size_t i = 0; i < k; i++) {
		struct page *q = pg_find(s + i * ps);
		struct region *R = q->kind == PK_MANAGED ? &g_reg[q->reg] : NULL;
		switch (adv) {
		case MADV_DONTNEED:
		case MADV_FREE:
			if (ret)
				break;
			if (anon) {
				/* private memory: the data is discarded */
				*pe_shadow(q) = 0;
				*pe_known(q) = adv == MADV_DONTNEED;
				if (R && R->st[q->pgoff] != ST_CPU) {
					want_region_event(q->reg, q->pgoff, 1,
							  DXM_EVENT_UNMAP);
					R->st[q->pgoff] = ST_CPU;
					forget_dev(q->reg, q->pgoff);
				}
			}
			break;
		case MADV_REMOVE:
			if (ret == 0 && !anon) {
				*pe_shadow(q) = 0;
				*pe_known(q) = true;
			} else if (ret && !anon && err != EACCES) {
				*pe_known(q) = false;
			}
			break;
		default:
			break;
		}
	}
	if (populate && p->kind == PK_MANAGED) {
		/* populating takes exclusive pages back where the kernel's
		 * own faults are resolved; ask dxm which ones */
		struct region *R = &g_reg[p->reg];
		for (size_t i = 0; i < k; i++) {
			struct page *q = pg_find(s + i * ps);
			size_t pg = q->pgoff;
			if (R->st[pg] != ST_EXCL || !R->devbase)
				continue;
			void *dev[1] = { (void *)(R->devbase + pg * ps) };
			if (!dxm_check_exclusive(g_ctx, (void *)q->addr, ps, dev))
				R->st[pg] = ST_CPU;
			else if (ret == 0 && g_mode != DXM_UFFD_USER_ONLY &&
				 (q->prot & (adv == MADV_POPULATE_WRITE
						     ? PROT_WRITE
						     : PROT_READ)))
				FAIL("madvise(MADV_POPULATE) succeeded but page "
				     "%zu is still exclusive",
				     pg);
		}
	}
	barrier();
}

static void op_stats(struct args *a)
{
	uint8_t v = A(a);
	const size_t full = sizeof(struct dxm_stats);
	const size_t sizes[] = { 0, 7, 8, 12, 16, full - 8, full, full + 24 };
	size_t size = sizes[v % 8];
	unsigned char buf[sizeof(struct dxm_stats) + 64];
	memset(buf, 0xa5, sizeof(buf));
	bool nullst = v == 0xff;
	long ret = dxm_stats(g_ctx, nullst ? NULL : (struct dxm_stats *)buf,
			     size);
	TRACE("dxm_stats(size %zu) = %ld", size, ret);
	bool bad = nullst || size < 8;
	expect("dxm_stats", ret, !bad, bad ? E(EINVAL) : 0);
	for (size_t i = ret < 0 ? 0 : size; i < sizeof(buf); i++)
		if (buf[i] != 0xa5)
			FAIL("dxm_stats(size %zu) wrote byte %zu", size, i);
	for (size_t i = full; ret >= 0 && i < size; i++)
		if (buf[i] != 0)
			FAIL("dxm_stats(size %zu) left byte %zu beyond its "
			     "structure non-zero",
			     size, i);
	if (ret >= 0 && size >= full) {
		struct dxm_stats st;
		memcpy(&st, buf, sizeof(st));
		if (st.uffd_mode != g_mode || st.handler_threads != 1)
			FAIL("dxm_stats: mode %u threads %u, expected %u, 1",
			     st.uffd_mode, st.handler_threads, g_mode);
	}
}

/* Every region freed (the sentinel left) and nothing pending. */
static void check_stats_idle(void)
{
	struct dxm_stats st;
	if (dxm_stats(g_ctx, &st, sizeof(st)))
		FAIL("dxm_stats failed");
	size_t live = 0, pages = 0;
	for (int r = 0; r < MAXR; r++)
		if (g_reg[r].live) {
			live++;
			pages += g_reg[r].npages;
		}
	if (st.regions != live + 1 || st.managed_pages != pages + 1)
		FAIL("dxm_stats: %" PRIu64 " regions of %" PRIu64
		     " pages, the model has %zu of %zu (+ the sentinel)",
		     st.regions, st.managed_pages, live, pages);
}

static void op_set_print(struct args *a)
{
	uint8_t v = A(a);
	dxm_print_fn fn = v % 4 == 0   ? print_strict
			  : v % 4 == 1 ? print_other
			  : v % 4 == 2 ? NULL
				       : g_print_orig;
	if (fn == g_print_orig && !(v & 0x80))
		fn = print_strict; /* mostly keep the output quiet */
	dxm_print_fn prev = dxm_set_print(fn);
	if (prev != g_print_now)
		FAIL("dxm_set_print returned %p, not the function set before",
		     (void *)prev);
	g_print_now = fn;
	/* a warning is logged: errno must come back as it was */
	errno = 777;
	dxm_exclusive_unlock(g_ctx, NULL, 0, NULL);
	if (errno != 777)
		FAIL("errno changed to %d across a logged warning", errno);
}

static void op_ctx2(struct args *a)
{
	if (g_ctx2s++ >= 2)
		return;
	uint8_t v = A(a), th = A(a), fl = A(a), act = A(a), sel = A(a);
	struct {
		struct dxm_ctx_opts o;
		char tail[64];
	} big;
	memset(&big, 0, sizeof(big));
	const size_t osz = sizeof(struct dxm_ctx_opts);
	const size_t minsz = offsetof(struct dxm_ctx_opts, flags) +
			     sizeof(unsigned);
	size_t sz = 0;
	bool nullopts = false;
	switch (v % 8) {
	case 0: nullopts = true; break;
	case 1: sz = osz; break;
	case 2: sz = 0; break;
	case 3: sz = minsz; break;
	case 4: sz = minsz - 1; break;
	case 5: sz = osz + 16; break;
	case 6: sz = osz + 16; big.tail[8 + v % 8] = 1; break;
	case 7: sz = 4097; break;
	}
	big.o.sz = sz;
	big.o.flags = fl % 4 == 3   ? fl
		      : fl % 4 == 1 ? DXM_CTX_REQUIRE_KERNEL_FAULTS
		      : fl % 4 == 2 ? (fl & 4 ? DXM_CTX_SIGBUS : 0) |
					      (fl & 8 ? DXM_CTX_HANDLER_SPIN : 0) |
					      (fl & 16 ? DXM_CTX_HANDLER_ADAPTIVE : 0)
				    : 0;
	big.o.handler_threads = th % 8 == 7 ? 65 : th % 3;
	bool nullp = act == 0xff;
	struct dxm_ctx *c2 = (void *)0x1234;
	g_allow_err = true;
	long ret = dxm_ctx_create(nullp ? NULL : &c2, nullopts ? NULL : &big.o);
	g_allow_err = false;
	TRACE("dxm_ctx_create(sz %zu flags %#x threads %u) = %ld", sz,
	      big.o.flags, big.o.handler_threads, ret);
	errset errs = E(ENOMEM) | E(EMFILE) | E(EAGAIN);
	bool ok = true;
	unsigned flags = big.o.flags, threads = big.o.handler_threads;
	if (!nullopts && sz >= minsz && sz < osz)
		threads = 0; /* not covered */
	if (nullp || (!nullopts && (sz < minsz || sz > 4096)))
		ok = false, errs = E(EINVAL);
	else if (!nullopts && sz > osz && big.tail[8 + v % 8])
		ok = false, errs = E(E2BIG);
	else if (!nullopts && ((flags & ~CTX_KNOWN_FLAGS) || threads > 64))
		ok = false, errs = E(EINVAL);
	else if (!nullopts && (flags & DXM_CTX_SIGBUS) &&
		 (flags & DXM_CTX_REQUIRE_KERNEL_FAULTS))
		ok = false, errs = E(EINVAL);
	else if (!nullopts && DXM_CTX_HANDLER_ADAPTIVE &&
		 (flags & DXM_CTX_HANDLER_SPIN) &&
		 (flags & DXM_CTX_HANDLER_ADAPTIVE))
		ok = false, errs = E(EINVAL);
	else if (!nullopts && (flags & DXM_CTX_REQUIRE_KERNEL_FAULTS) &&
		 g_mode == DXM_UFFD_USER_ONLY)
		ok = false, errs = E(EPERM);
	else if (!nullopts && (flags & DXM_CTX_SIGBUS))
		errs |= E(ENOSYS) | E(EPERM); /* UFFD_FEATURE_SIGBUS */
	expect("dxm_ctx_create", ret, ok, errs);
	if (ret < 0) {
		if (!nullp && c2 != (void *)0x1234)
			FAIL("dxm_ctx_create failed but set *ctxp");
		return;
	}
	/* a second context: it does not see the first one's memory, nor
	 * the first one its memory */
	void *x = NULL;
	void *dev[DEVN];
	long r = dxm_alloc(c2, 2 * ps, 0, &x);
	expect("dxm_alloc (ctx2)", r, true, E(ENOMEM));
	if (r == 0) {
		volatile uint64_t *w = x;
		w[1] = 0x1122334455667788ull;
		fill_canary(dev, DEVN);
		r = dxm_make_exclusive(g_ctx, x, ps, NULL, dev);
		expect("dxm_make_exclusive (ctx1 on ctx2 memory)", r, false,
		       E(EFAULT));
		r = dxm_free(g_ctx, x);
		expect("dxm_free (ctx1 on ctx2 memory)", r, false, E(ENOENT));
		r = dxm_make_exclusive(c2, x, 2 * ps, &g_owner[3], dev);
		expect("dxm_make_exclusive (ctx2)", r, true, 0);
		if (r == 2 && (!dev[0] || !dev[1]))
			FAIL("ctx2: a page was refused");
		if (act & 1) {
			dxm_exclusive_unlock(c2, x, 2 * ps, dev);
			if (w[1] != 0x1122334455667788ull)
				FAIL("ctx2: data lost over a conversion");
		} /* else: destroyed with the pages locked */
	}
	struct page *p = pick_page(sel, f_managed);
	if (p) {
		fill_canary(dev, DEVN);
		r = dxm_make_exclusive(c2, (void *)p->addr, ps, NULL, dev);
		expect("dxm_make_exclusive (ctx2 on ctx1 memory)", r, false,
		       E(EFAULT));
		r = dxm_free(c2, (void *)p->addr);
		expect("dxm_free (ctx2 on ctx1 memory)", r, false, E(ENOENT));
	}
	struct page *q = (act & 2) && g_anon_ok ? pick_page(sel, f_plain) : NULL;
	if (q && (q->prot & PROT_WRITE) && (q->prot & PROT_READ)) {
		/* adopted by ctx2, then ctx1 cannot have it */
		r = dxm_adopt(c2, (void *)q->addr, ps, 0);
		expect("dxm_adopt (ctx2)", r, true, E(ENOMEM) | E(ENOSYS));
		if (r == 0) {
			r = dxm_adopt(g_ctx, (void *)q->addr, ps, 0);
			expect("dxm_adopt (ctx1 on ctx2's)", r, false,
			       E(EBUSY) | E(EEXIST) | E(EINVAL));
			fill_canary(dev, DEVN);
			r = dxm_make_exclusive(c2, (void *)q->addr, ps, NULL,
					       dev);
			expect("dxm_make_exclusive (ctx2 adopted)", r, true, 0);
			if (act & 4)
				dxm_exclusive_unlock(c2, (void *)q->addr, ps,
						     dev);
		}
	}
	struct dxm_notifier *n2 = NULL;
	if (act & 8) {
		r = dxm_notifier_insert(c2, NULL, SIZE_MAX, &g_ops2,
					&g_owner[2], &n2);
		expect("dxm_notifier_insert (ctx2)", r, true, E(ENOMEM));
		if (act & 16)
			dxm_notifier_remove(n2); /* else destroy frees it */
	}
	g_allow_err = true; /* "notifier left at destroy" is a warning */
	dxm_ctx_destroy(c2);
	g_allow_err = false;
	g_dead_ctx = c2;
	if (x)
		add_freed((uintptr_t)x);
	if (q && (q->prot & PROT_READ)) /* q may be a PROT_NONE page */
		check_word(q, *(volatile uint64_t *)(q->addr + q->woff),
			   "read after ctx2 handed adopted memory back");
	r = dxm_stats(c2, (struct dxm_stats *)dev, sizeof(struct dxm_stats));
	expect("dxm_stats (destroyed ctx)", r, false, E(EBADF));
}

/* Read back every page whose value is known and that the CPU can read
 * without a fault changing the model (plain pages, managed pages the CPU
 * has). */
static void verify_all(const char *when)
{
	for (size_t i = 0; i < g_npg; i++) {
		struct page *p = &g_pg[i];
		if (!(p->prot & PROT_READ) || !*pe_known(p))
			continue;
		if (p->kind == PK_MANAGED && g_reg[p->reg].st[p->pgoff] != ST_CPU)
			continue;
		check_word(p, *(volatile uint64_t *)(p->addr + *pe_woff(p)),
			   when);
	}
}

static void op_fork(struct args *a)
{
	(void)A(a);
	if (g_forks++) /* one per input: forking this process is slow */
		return;
	/* the prepare handler gives adopted pages back and waits for
	 * locked ones: unlock them first */
	for (int r = 0; r < MAXR; r++) {
		struct region *R = &g_reg[r];
		if (!R->live || R->kind != RK_ANON)
			continue;
		for (size_t pg = 0; pg < R->npages; pg++) {
			unlock_page(r, pg);
			if (R->st[pg] == ST_EXCL && g_anon_ok)
				want_region_event(r, pg, 1, DXM_EVENT_FORK);
		}
	}
	verify_all("read before fork");
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		return;
	if (pid == 0) {
		/* the child: no malloc, no stdio */
		struct dxm_stats st;
		void *x;
		if (dxm_stats(g_ctx, &st, sizeof(st)) != -ECHILD)
			_exit(3);
		if (dxm_alloc(g_ctx, ps, 0, &x) != -ECHILD)
			_exit(4);
		for (size_t i = 0; i < g_npg; i++) {
			struct page *p = &g_pg[i];
			bool anon = p->kind == PK_PLAIN ||
				    g_reg[p->reg].kind == RK_ANON;
			if (!anon || !(p->prot & PROT_READ) || !*pe_known(p))
				continue;
			uint64_t got = *(volatile uint64_t *)(p->addr +
							      *pe_woff(p));
			if (got != *pe_shadow(p)) {
				char msg[128];
				int k = snprintf(msg, sizeof(msg),
						 "child: page %#lx read %#lx, "
						 "expected %#lx\n",
						 (unsigned long)p->addr,
						 (unsigned long)got,
						 (unsigned long)*pe_shadow(p));
				if (write(2, msg, (size_t)k) < 0)
					_exit(12);
				_exit(10 + (p->kind == PK_MANAGED));
			}
		}
		_exit(0);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			FAIL("waitpid: %s", strerror(errno));
	TRACE("fork: child status %#x", status);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		FAIL("fork: the child %s %d (3, 4: a call did not fail with "
		     "ECHILD; 10: plain data, 11: adopted data differs)",
		     WIFEXITED(status) ? "exited with" : "was killed by signal",
		     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	if (g_anon_ok)
		for (int r = 0; r < MAXR; r++)
			if (g_reg[r].live && g_reg[r].kind == RK_ANON)
				for (size_t pg = 0; pg < g_reg[r].npages; pg++)
					g_reg[r].st[pg] = ST_CPU;
	barrier();
}

static void drain_pipe(void)
{
	char buf[256];
	while (read(g_pipe[0], buf, sizeof(buf)) > 0)
		;
}

/* A system call reads or writes a page: resolved like a CPU access where
 * the kernel's own faults are (B2); with a user-mode-only userfaultfd it
 * may fail with EFAULT and change nothing, and then works after
 * dxm_range_fault (dxm_range_fault(3)). */
static void op_syscall(struct args *a)
{
	uint8_t sel = A(a), v = A(a);
	struct page *p = pick_page(sel, v & 0x80 ? f_managed : f_any);
	if (!p)
		return;
	bool into = v & 1; /* read(2) into the page: the kernel writes */
	if (!touchable(p, into))
		return;
	drain_pipe();
	void *w = (void *)(p->addr + *pe_woff(p));
	uint64_t val = next_val(), got = 0;
	bool managed = p->kind == PK_MANAGED;
	bool was_excl = managed && g_reg[p->reg].st[p->pgoff] == ST_EXCL;
	for (int attempt = 0; attempt < 2; attempt++) {
		ssize_t n;
		if (into) {
			if (write(g_pipe[1], &val, 8) != 8)
				FAIL("pipe write: %s", strerror(errno));
			n = read(g_pipe[0], w, 8);
		} else {
			n = write(g_pipe[1], w, 8);
		}
		int err = errno;
		TRACE("%s %#lx = %zd", into ? "read(2) into" : "write(2) from",
		      (unsigned long)p->addr, n);
		if (n == 8) {
			if (g_mode == DXM_UFFD_USER_ONLY && was_excl &&
			    attempt == 0)
				FAIL("a system call accessed page %#lx, which "
				     "the model says is EXCLUSIVE, without a "
				     "fault (user-mode-only userfaultfd: it is "
				     "still mapped)",
				     (unsigned long)p->addr);
			cpu_took(p);
			if (into) {
				*pe_shadow(p) = val;
				*pe_known(p) = true;
			} else {
				if (read(g_pipe[0], &got, 8) != 8)
					FAIL("pipe read: %s", strerror(errno));
				check_word(p, got, "write(2) from");
			}
			drain_pipe();
			return;
		}
		if (n >= 0)
			FAIL("%s: short transfer %zd", into ? "read" : "write", n);
		if (err != EFAULT || !managed || g_mode != DXM_UFFD_USER_ONLY ||
		    attempt)
			FAIL("%s %s page %#lx failed: %s%s",
			     into ? "read(2) into" : "write(2) from",
			     managed ? "managed" : "plain",
			     (unsigned long)p->addr, strerror(err),
			     attempt ? " (after dxm_range_fault)" : "");
		/* the documented way: bring the page back, then retry */
		drain_pipe();
		struct page *q = p;
		long r = dxm_range_fault(g_ctx, (void *)pdown((uintptr_t)w), ps,
					 into ? DXM_FAULT_WRITE : 0, NULL);
		if (r < 0) {
			if (r == -EPERM) /* raw mprotect: dxm thinks otherwise */
				return;

			FAIL("dxm_range_fault before the retry: %s",
			     ename(-r));
		}
		struct region *R = &g_reg[q->reg];
		if (R->st[q->pgoff] == ST_EXCL)
			want_region_event(q->reg, q->pgoff, 1, DXM_EVENT_CLEAR);
		R->st[q->pgoff] = ST_CPU;
		was_excl = false;
	}
}

static void op_badctx(struct args *a)
{
	uint8_t which = A(a), fn = A(a), sel = A(a);
	struct dxm_ctx *c = which % 3 == 0   ? NULL
			    : which % 3 == 1 ? (struct dxm_ctx *)g_bogus_ctx
			    : g_dead_ctx      ? (struct dxm_ctx *)g_dead_ctx
					      : (struct dxm_ctx *)g_bogus_ctx;
	errset errs = c ? E(EBADF) : E(EINVAL);
	struct page *p = pick_page(sel, f_any);
	void *addr = p ? (void *)p->addr : (void *)g_arena;
	void *out = (void *)0x1234, *dev[DEVN];
	fill_canary(dev, DEVN);
	struct dxm_notifier *n = NULL;
	struct dxm_stats st;
	long r = 0;
	const char *what = "?";
	switch (fn % 13) {
	case 0: what = "dxm_alloc"; r = dxm_alloc(c, ps, 0, &out); break;
	case 1: what = "dxm_alias"; r = dxm_alias(c, addr, &out); break;
	case 2: what = "dxm_adopt"; r = dxm_adopt(c, addr, ps, 0); break;
	case 3: what = "dxm_free"; r = dxm_free(c, addr); break;
	case 4: what = "dxm_mprotect"; r = dxm_mprotect(c, addr, ps, PROT_READ); break;
	case 5: what = "dxm_make_exclusive"; r = dxm_make_exclusive(c, addr, ps, NULL, dev); break;
	case 6: what = "dxm_range_fault"; r = dxm_range_fault(c, addr, ps, 0, dev);
		if (!c)
			errs |= E(EDEADLK); /* dxm_range_fault(3), BUGS */
		break;
	case 7: what = "dxm_notifier_insert"; r = dxm_notifier_insert(c, addr, ps, &g_ops, &g_not[0], &n); break;
	case 8: what = "dxm_stats"; r = dxm_stats(c, &st, sizeof(st)); break;
	case 9:
		if (dxm_check_exclusive(c, addr, ps, dev))
			FAIL("dxm_check_exclusive true on a bad context");
		return;
	case 10:
		dxm_exclusive_unlock(c, addr, ps, dev);
		return;
	case 11:
		dxm_ctx_destroy(c);
		return;
	default:
		what = "dxm_ctx_create";
		r = dxm_ctx_create(NULL, NULL);
		errs = E(EINVAL);
		break;
	}
	TRACE("%s(bad ctx %p) = %ld", what, (void *)c, r);
	expect(what, r, false, errs);
	if (out != (void *)0x1234 || n)
		FAIL("%s with a bad context set its out-parameter", what);
	check_canary(dev, 0, what);
}

static void op_raw_mprotect(struct args *a)
{
	uint8_t sel = A(a), n = A(a), v = A(a);
	struct page *p = pick_page(sel, v & 1 ? f_managed : f_any);
	if (!p)
		return;
	static const int prots[] = { PROT_READ, PROT_READ | PROT_WRITE,
				     PROT_NONE,
				     PROT_READ | PROT_WRITE | PROT_EXEC };
	int prot = prots[(v >> 1) % 4];
	size_t len = run_len(p, 1 + n % 4) * ps;
	int ret = mprotect((void *)p->addr, len, prot);
	TRACE("mprotect(2)(%#lx, %#zx, %d) = %d", (unsigned long)p->addr, len,
	      prot, ret);
	if (ret)
		FAIL("mprotect(2): %s", strerror(errno));
	for (size_t i = 0; i < len / ps; i++)
		pg_find(p->addr + i * ps)->prot = (uint8_t)prot;
}

/* ------------------------------------------------------------ driver */

static int g_pagemap = -1;

/* B1 from the kernel's side: a held page is mapped in no CPU view. */
static void check_revoked(void)
{
	for (size_t i = 0; i < g_npg; i++) {
		struct page *p = &g_pg[i];
		if (p->kind != PK_MANAGED || g_reg[p->reg].st[p->pgoff] == ST_CPU)
			continue;
		uint64_t e;
		if (pread(g_pagemap, &e, 8, (off_t)(p->addr / ps * 8)) != 8)
			FAIL("pagemap: %s", strerror(errno));
		if (e >> 63)
			FAIL("page %#lx (region %d page %u) is %s but mapped "
			     "for the CPU",
			     (unsigned long)p->addr, p->reg, p->pgoff,
			     g_reg[p->reg].st[p->pgoff] == ST_LOCKED
				     ? "LOCKED"
				     : "EXCLUSIVE");
	}
}

static void begin_input(void)
{
	memset(g_pg, 0, sizeof(g_pg));
	g_npg = 0;
	memset(g_reg, 0, sizeof(g_reg));
	memset(g_rec, 0, sizeof(g_rec));
	for (int i = 0; i < MAXN; i++)
		g_not[i].used = false;
	g_nfreed = 0;
	g_next_slot = 0;
	g_forks = g_ctx2s = 0;
	g_opi = -1;
	g_opname = "setup";
	map_plain(8, 0x5a); /* the plain unmanaged range */
}

static void end_input(void)
{
	g_opname = "cleanup";
	g_exclusive_ok = false;
	verify_all("read at cleanup");
	snap_events();
	/* free what is left: dxm_free where a view start is there, else
	 * unmap it as a program would */
	for (int r = 0; r < MAXR; r++) {
		struct region *R = &g_reg[r];
		if (!R->live)
			continue;
		for (int pass = 0; pass < 2 && R->live; pass++)
			for (size_t i = 0; i < g_npg && R->live; i++) {
				struct page *p = &g_pg[i];
				if (p->kind != PK_MANAGED || p->reg != r ||
				    p->pgoff != 0 || (pass == 0 && p->group))
					continue;
				long ret = dxm_free(g_ctx, (void *)p->addr);
				TRACE("cleanup: dxm_free(%#lx) = %ld",
				      (unsigned long)p->addr, ret);
				expect("dxm_free (cleanup)", ret, true, 0);
				model_free(p);
				i = (size_t)-1; /* the table changed */
			}
		if (!R->live)
			continue;
		for (size_t i = 0; i < g_npg;) {
			struct page *p = &g_pg[i];
			if (p->kind != PK_MANAGED || p->reg != r) {
				i++;
				continue;
			}
			unmap_pages(p->addr, ps);
			model_unmap(p->addr, ps);
		}
		barrier();
	}
	check_events();
	for (int i = 0; i < MAXN; i++)
		if (g_not[i].used)
			remove_not(&g_not[i]);
	/* plain pages: those moved out of the arena are unmapped, the
	 * arena is mapped over */
	for (size_t i = 0; i < g_npg; i++) {
		if (g_pg[i].kind != PK_PLAIN)
			FAIL("cleanup: managed page %#lx left",
			     (unsigned long)g_pg[i].addr);
		if (!in_arena(g_pg[i].addr, ps))
			unmap_pages(g_pg[i].addr, ps);
	}
	if (mmap(g_arena, (size_t)NSLOTS * SLOT_PAGES * ps, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
		 0) != g_arena)
		FAIL("arena: %s", strerror(errno));
	g_npg = 0;
	barrier();
	check_stats_idle();
	if (g_print_now != print_strict) {
		dxm_set_print(print_strict);
		g_print_now = print_strict;
	}
}

/* Descriptors dxm could leak: userfaultfds, eventfds, memfds, /proc files
 * (not the pipes and /dev/null of the sanitizers' symbolizer, started
 * lazily). */
static int count_fds(bool print)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;
	if (!d)
		FAIL("opendir /proc/self/fd: %s", strerror(errno));
	while ((de = readdir(d))) {
		char path[64], target[256] = "";
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		ssize_t k = readlink(path, target, sizeof(target) - 1);
		if (k <= 0)
			continue;
		if (print)
			fprintf(stderr, "  fd %s -> %s\n", de->d_name, target);
		n += !strncmp(target, "anon_inode:", 11) ||
		     !strncmp(target, "/memfd:", 7) ||
		     !strncmp(target, "/proc/", 6);
	}
	closedir(d);
	return n;
}

static int count_dxm_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	int n = 0;
	if (!f)
		FAIL("maps: %s", strerror(errno));
	while (fgets(line, sizeof(line), f))
		n += strstr(line, "memfd:dxm") != NULL;
	fclose(f);
	return n;
}

static int g_fds0 = -1, g_maps0 = -1;

static void leak_check(void)
{
	int fds = count_fds(false), maps = count_dxm_maps();
	if (g_fds0 < 0) {
		g_fds0 = fds;
		g_maps0 = maps;
		return;
	}
	if (fds > g_fds0) {
		count_fds(true);
		FAIL("file descriptors: %d open, %d after the first inputs", fds,
		     g_fds0);
	}
	if (maps != g_maps0)
		FAIL("dxm mappings: %d, %d after the first inputs", maps,
		     g_maps0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	ps = (size_t)sysconf(_SC_PAGESIZE);
	g_trace = getenv("FUZZ_TRACE") != NULL;
	g_verbose = getenv("FUZZ_VERBOSE") != NULL;
	parse_known();
	g_print_orig = dxm_set_print(print_strict);
	g_print_now = print_strict;
	/* The model gives back one page per fault: the kernel's semantics,
	 * restore-around off (test_around.c checks the window). */
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 1,
				  .restore_around = 1 };
	int err = dxm_ctx_create(&g_ctx, &o);
	if (err) {
		fprintf(stderr, "fuzz_api: dxm_ctx_create: %s\n", strerror(-err));
		exit(1);
	}
	struct dxm_stats st;
	if (dxm_stats(g_ctx, &st, sizeof(st)))
		abort();
	g_mode = st.uffd_mode;
	g_anon_ok = st.uffd_anon_features != 0;
	fprintf(stderr, "fuzz_api: userfaultfd mode %u, dxm_adopt %s\n", g_mode,
		g_anon_ok ? "available" : "unavailable");
	g_arena = mmap(NULL, (size_t)NSLOTS * SLOT_PAGES * ps, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (g_arena == MAP_FAILED)
		abort();
	/* the sentinel region, moved into the middle of a hole of its own
	 * so that no address the fuzzer makes up reaches it */
	void *s, *hole;
	if (dxm_alloc(g_ctx, ps, 0, &s))
		abort();
	hole = mmap(NULL, 64ul << 20, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (hole == MAP_FAILED)
		abort();
	g_sentinel = mremap(s, ps, ps, MREMAP_MAYMOVE | MREMAP_FIXED,
			    (char *)hole + (32ul << 20));
	if (g_sentinel == MAP_FAILED)
		abort();
	barrier();
	if (pipe2(g_pipe, O_NONBLOCK | O_CLOEXEC))
		abort();
	g_pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (g_pagemap < 0)
		abort();
	/* a destroyed context's address, for calls after destroy */
	struct dxm_ctx *c2;
	if (dxm_ctx_create(&c2, &o) == 0) {
		dxm_ctx_destroy(c2);
		g_dead_ctx = c2;
	}
	return 0;
}

static void after_op(void)
{
	check_events();
	if (atomic_load(&g_err_seen))
		FAIL("dxm logged an error: %s", g_err_msg);
	check_all_held();
	check_revoked();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	g_runs++;
	begin_input();
	size_t nops = size / 8;
	if (nops > MAXOPS)
		nops = MAXOPS;
	if (g_trace)
		fprintf(stderr, "input: %zu ops\n", nops);
	for (size_t i = 0; i < nops; i++) {
		const uint8_t *b = data + 8 * i;
		unsigned op = b[0] % 32;
		if (op >= OP_NUM)
			op = op < 28 ? OP_TOUCH : op < 30 ? OP_MAKE_EXCL
				   : op < 31 ? OP_UNLOCK : OP_DEVICE;
		struct args a = { b + 1, 0 };
		g_opi = (int)i;
		g_opname = op_names[op];
		if (g_trace)
			fprintf(stderr, "  [%zu] %s ...\n", i, g_opname);
		g_exclusive_ok = false;
		snap_events();
		switch (op) {
		case OP_ALLOC: op_alloc(&a); break;
		case OP_ALIAS: op_alias(&a); break;
		case OP_ADOPT: op_adopt(&a); break;
		case OP_FREE: op_free(&a); break;
		case OP_MPROTECT: op_mprotect(&a); break;
		case OP_MAKE_EXCL: op_make_excl(&a); break;
		case OP_UNLOCK: op_unlock(&a); break;
		case OP_CHECK: op_check(&a); break;
		case OP_RANGE_FAULT: op_range_fault(&a); break;
		case OP_N_INSERT: op_n_insert(&a); break;
		case OP_N_REMOVE: op_n_remove(&a); break;
		case OP_N_SEQ: op_n_seq(&a); break;
		case OP_TOUCH: op_touch(&a); break;
		case OP_DEVICE: op_device(&a); break;
		case OP_MUNMAP: op_munmap(&a); break;
		case OP_MREMAP: op_mremap(&a); break;
		case OP_MADVISE: op_madvise(&a); break;
		case OP_STATS: op_stats(&a); break;
		case OP_SET_PRINT: op_set_print(&a); break;
		case OP_CTX2: op_ctx2(&a); break;
		case OP_FORK: op_fork(&a); break;
		case OP_SYSCALL: op_syscall(&a); break;
		case OP_BADCTX: op_badctx(&a); break;
		case OP_MMAP_PLAIN: op_mmap_plain(&a); break;
		case OP_RAW_MPROTECT: op_raw_mprotect(&a); break;
		case OP_BARRIER: barrier(); check_stats_idle(); break;
		}
		after_op();
	}
	end_input();
	after_op();
	if (g_runs % 1000 == 0)
		leak_check();
	return 0;
}
