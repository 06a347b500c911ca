/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the Criterion test suite.  Every test runs in its own
 * process (Criterion forks) with a timeout.  Kernel features are probed:
 * a test that cannot run here skips with the reason.
 */
#ifndef DXM_TEST_COMMON_H
#define DXM_TEST_COMMON_H

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dxm.h"

/*
 * The page size of the memory under test: the region's page, what one
 * dev[] entry, one revocation and one restoration cover.  BASE_PS (the
 * system's base page) for every kind but MEM_HUGE, HUGE_PS for it;
 * test_kind_begin() sets it in each test's process before anything else,
 * so that PS follows the memory (array sizes count pages, never bytes).
 */
#define BASE_PS ((size_t)4096)
#define HUGE_PS ((size_t)2 << 20)
extern size_t test_ps;
#define PS test_ps

/* Create a context, or skip the test with the reason (no userfaultfd, or
 * a missing feature).  Its restore_around is 1 (one page per fault, the
 * kernel's semantics that the behaviour tests check) unless opts sets it. */
struct dxm_ctx *ctx_or_skip(const struct dxm_ctx_opts *opts);
/* The same with opts as they are (NULL: the library's defaults). */
struct dxm_ctx *ctx_create_or_skip(const struct dxm_ctx_opts *opts);

/* A CPU load or store of a 64-bit word that the compiler must make. */
static inline uint64_t rd(const void *p)
{
	return *(const volatile uint64_t *)p;
}

static inline void wr(void *p, uint64_t v)
{
	*(volatile uint64_t *)p = v;
}

/* Kinds of memory each behaviour test runs over. */
enum mem_kind {
	MEM_MEMFD, /* dxm_alloc: the region's own view */
	MEM_ALIAS, /* the same memfd pages through a dxm_alias view */
	MEM_ANON,  /* private anonymous memory put under dxm with dxm_adopt */
	MEM_HUGE,  /* dxm_alloc(DXM_ALLOC_HUGE): 2 MiB hugetlbfs pages */
};
extern const char *const mem_kind_name[];
/* The kind of the test running in this process (test_kind_begin). */
extern enum mem_kind test_kind;
/*
 * First thing in a test on kind memory: sets test_kind and PS.  MEM_HUGE
 * takes pages from the system's pool, so its variants skip unless
 * DXM_TEST_HUGE=1 (the huge-behaviours test, which reserves the pages with
 * tests/hugepages.sh and runs them one program at a time).
 */
void test_kind_begin(enum mem_kind kind);
/* dxm_alloc of len bytes of the kind under test (DXM_ALLOC_HUGE for
 * MEM_HUGE, where a short pool or a kernel without huge-page minor faults
 * skips the test with the reason), asserting that it worked. */
void *test_alloc(struct dxm_ctx *ctx, size_t len);
/* The dxm_alloc flags of the kind under test. */
#define TEST_ALLOC_FLAGS (test_kind == MEM_HUGE ? DXM_ALLOC_HUGE : 0u)
/* PROT_NONE private anonymous address space of len bytes aligned to PS:
 * where a view can be moved to (mremap) or put next to. */
char *reserve_aligned(size_t len);
/* A software device (dxm_mirror) on ctx; on huge pages it works in the
 * region's pages (dxm_page_size). */
struct dxm_mirror *mirror_create(struct dxm_ctx *ctx);

#define MEM_KINDS_PARAMS                                                       \
	static enum mem_kind kinds[] = { MEM_MEMFD, MEM_ALIAS };               \
	return cr_make_param_array(enum mem_kind, kinds,                       \
				   sizeof(kinds) / sizeof(kinds[0]))
/* Every kind, adopted anonymous memory included. */
#define MEM_KINDS_ALL_PARAMS                                                   \
	static enum mem_kind kinds[] = { MEM_MEMFD, MEM_ALIAS, MEM_ANON };     \
	return cr_make_param_array(enum mem_kind, kinds,                       \
				   sizeof(kinds) / sizeof(kinds[0]))
/*
 * A test of suite run once per kind that params (MEM_KINDS_PARAMS or
 * MEM_KINDS_ALL_PARAMS) lists; its body sees enum mem_kind *kind.  Each
 * file defines its KIND_TEST with it.
 *
 * The _HUGE_OF variants of this and the macros below also define the test
 * name_huge: the same body once on MEM_HUGE (huge pages are a kind of
 * their own, not in params, so that a Criterion filter on the suffix
 * selects them: tests/huge-behaviours.sh).
 */
#define KIND_TEST_OF(suite, params, name, ...)                                 \
	KIND_TEST_P(suite, (params), name, __VA_ARGS__)
#define KIND_TEST_HUGE_OF(suite, params, name, ...)                            \
	KIND_TEST_PH(suite, (params), name, __VA_ARGS__)
/* A test of suite on MEM_MEMFD alone, and name_huge on MEM_HUGE: the body
 * sees enum mem_kind *kind (and allocates with test_alloc). */
#define MEMFD_TEST_HUGE_OF(suite, name, ...)                                   \
	MEMFD_TEST_PH(suite, (), name, __VA_ARGS__)
/*
 * The same on a fresh context and len bytes of *kind memory, freed after
 * the test: the body that follows the macro sees kind, ctx and m (a copy:
 * the memory is freed as it was set up).  len may use PS.
 */
#define MEM_TEST_OF(suite, params, name, len, ...)                             \
	MEM_TEST_P(KIND_TEST_P, suite, (params), name, len, mem_done(&m),      \
		   __VA_ARGS__)
#define MEM_TEST_HUGE_OF(suite, params, name, len, ...)                        \
	MEM_TEST_P(KIND_TEST_PH, suite, (params), name, len, mem_done(&m),     \
		   __VA_ARGS__)
/* The same, but the body frees the memory and the context itself. */
#define MEM_TEST_NOFREE_OF(suite, params, name, len, ...)                      \
	MEM_TEST_P(KIND_TEST_P, suite, (params), name, len, (void)0,           \
		   __VA_ARGS__)
#define MEM_TEST_NOFREE_HUGE_OF(suite, params, name, len, ...)                 \
	MEM_TEST_P(KIND_TEST_PH, suite, (params), name, len, (void)0,          \
		   __VA_ARGS__)

/* The same with a fixture: the body gets f, a copy of a fixture of type
 * type that the statement setup (which sees *kind and f) made; the body
 * tears it down. */
#define KIND_FIX_TEST_OF(suite, params, name, type, f, setup, ...)             \
	KIND_FIX_TEST_P(KIND_TEST_P, suite, (params), name, type, f, setup,    \
			__VA_ARGS__)
#define KIND_FIX_TEST_HUGE_OF(suite, params, name, type, f, setup, ...)        \
	KIND_FIX_TEST_P(KIND_TEST_PH, suite, (params), name, type, f, setup,   \
			__VA_ARGS__)
/* On MEM_MEMFD alone, and name_huge on MEM_HUGE. */
#define MEMFD_FIX_TEST_HUGE_OF(suite, name, type, f, setup, ...)               \
	KIND_FIX_TEST_P(MEMFD_TEST_PH, suite, (), name, type, f, setup,        \
			__VA_ARGS__)

/*
 * Their common part: params in parentheses (a macro argument that stands
 * for several lines with commas); kp, the macro that defines the tests
 * (KIND_TEST_P: one per kind of params; KIND_TEST_PH: and name_huge;
 * MEMFD_TEST_PH: MEM_MEMFD and name_huge), each calling name##_kbody,
 * which follows, after test_kind_begin.
 */
#define TEST_UNPAREN(...) __VA_ARGS__
#define KIND_TEST_P(suite, params, name, ...)                                  \
	static void name##_kbody(enum mem_kind *kind);                         \
	ParameterizedTestParameters(suite, name)                               \
	{                                                                      \
		TEST_UNPAREN params;                                           \
	}                                                                      \
	ParameterizedTest(enum mem_kind *kind, suite, name, __VA_ARGS__)       \
	{                                                                      \
		test_kind_begin(*kind);                                        \
		name##_kbody(kind);                                            \
	}                                                                      \
	static void name##_kbody(enum mem_kind *kind __attribute__((unused)))
/* name_huge: name's body on MEM_HUGE. */
#define KIND_TEST_HUGE_TWIN(suite, name, ...)                                  \
	static void name##_kbody(enum mem_kind *kind);                         \
	Test(suite, name##_huge, __VA_ARGS__)                                  \
	{                                                                      \
		enum mem_kind k_ = MEM_HUGE;                                   \
		test_kind_begin(k_);                                           \
		name##_kbody(&k_);                                             \
	}
#define KIND_TEST_PH(suite, params, name, ...)                                 \
	KIND_TEST_HUGE_TWIN(suite, name, __VA_ARGS__)                          \
	KIND_TEST_P(suite, params, name, __VA_ARGS__)
#define MEMFD_TEST_PH(suite, params, name, ...)                                \
	KIND_TEST_HUGE_TWIN(suite, name, __VA_ARGS__)                          \
	Test(suite, name, __VA_ARGS__)                                         \
	{                                                                      \
		enum mem_kind k_ = MEM_MEMFD;                                  \
		test_kind_begin(k_);                                           \
		name##_kbody(&k_);                                             \
	}                                                                      \
	static void name##_kbody(enum mem_kind *kind __attribute__((unused)))
#define MEM_TEST_P(kp, suite, params, name, len, then, ...)                    \
	static void name##_body(enum mem_kind *kind, struct dxm_ctx *ctx,      \
				struct mem m);                                 \
	kp(suite, params, name, __VA_ARGS__)                                   \
	{                                                                      \
		struct mem m;                                                  \
		struct dxm_ctx *ctx = ctx_mem(*kind, len, &m);                 \
		name##_body(kind, ctx, m);                                     \
		then;                                                          \
	}                                                                      \
	static void name##_body(enum mem_kind *kind __attribute__((unused)),   \
				struct dxm_ctx *ctx __attribute__((unused)),   \
				struct mem m __attribute__((unused)))
#define KIND_FIX_TEST_P(kp, suite, params, name, type, f, setup, ...)          \
	static void name##_body(enum mem_kind *kind, type f);                  \
	kp(suite, params, name, __VA_ARGS__)                                   \
	{                                                                      \
		type f;                                                        \
		setup;                                                         \
		name##_body(kind, f);                                          \
	}                                                                      \
	static void name##_body(enum mem_kind *kind __attribute__((unused)),   \
				type f)

struct mem {
	enum mem_kind kind;
	struct dxm_ctx *ctx;
	void *region; /* what dxm_alloc returned (MEM_ANON: the adopted
			 range) */
	void *base;   /* where the test accesses the memory */
	size_t len;
};
/* MEM_ANON: mmap(MAP_PRIVATE | MAP_ANONYMOUS) and dxm_adopt (skips the
 * test where dxm_adopt is -ENOSYS); mem_teardown: dxm_free, then munmap. */
void mem_setup(struct dxm_ctx *ctx, enum mem_kind kind, size_t len,
	       struct mem *m);
void mem_teardown(struct mem *m);
/* ctx_or_skip(NULL), then mem_setup(kind, len) on it: the context. */
struct dxm_ctx *ctx_mem(enum mem_kind kind, size_t len, struct mem *m);
/* mem_teardown, then dxm_ctx_destroy of m's context. */
void mem_done(struct mem *m);
/* A context and len bytes of adopted memory (MEM_ANON) filled with
 * fill_index(0). */
struct anon_fix {
	struct dxm_ctx *ctx;
	struct mem m;
	char *p;
};
void anon_setup(struct anon_fix *f, size_t len);
void anon_teardown(struct anon_fix *f);
/* A test of suite whose body, which follows the macro, gets f: a copy of
 * a fixture of type type that the statement setup (which sees f) made;
 * the body tears it down. */
#define FIX_TEST_OF(suite, name, type, f, setup, ...)                          \
	static void name##_body(type f);                                       \
	Test(suite, name, __VA_ARGS__)                                         \
	{                                                                      \
		type f;                                                        \
		setup;                                                         \
		name##_body(f);                                                \
	}                                                                      \
	static void name##_body(type f)
/* A test of suite on anon_setup(len) memory, anon_teardown after it: the
 * body that follows the macro sees f (a copy) and p (f.p). */
#define ANON_TEST_OF(suite, name, len, ...)                                    \
	static void name##_body(struct anon_fix f, char *p);                   \
	Test(suite, name, __VA_ARGS__)                                         \
	{                                                                      \
		struct anon_fix f;                                             \
		anon_setup(&f, len);                                           \
		name##_body(f, f.p);                                           \
		anon_teardown(&f);                                             \
	}                                                                      \
	static void name##_body(struct anon_fix f __attribute__((unused)),     \
				char *p __attribute__((unused)))
/* Private anonymous memory, read-write, not populated. */
char *anon_map(size_t len);
/* dxm_adopt, or skip the test where this kernel cannot. */
void adopt_or_skip(struct dxm_ctx *ctx, void *p, size_t len);

/* /proc/self/pagemap's entry for the base page holding addr (bit 63:
 * present; bits 0-54: the page frame number, 0 where the kernel hides
 * it).  The pagemap has one entry per base page, huge pages included. */
uint64_t pagemap_entry(const void *addr);
/* This process's threads whose name (comm) starts with prefix: how many,
 * and the ids of the first max of them in tids (NULL if max is 0). */
size_t threads_named(const char *prefix, pid_t *tids, size_t max);
/* Its present bit: revocation checked from the kernel's side, not from
 * dxm's bookkeeping. */
bool page_present(const void *addr);
/* Number of pages (of PS bytes) of [addr, addr+len) present.  With huge
 * pages, every base page's entry of each is read: a huge page whose entries
 * disagree (mapped in part: split) fails the test. */
size_t pages_present(const void *addr, size_t len);

/* A notifier that records what it was told. */
#define REC_MAX 4096
struct rec_event {
	uintptr_t start, end;
	enum dxm_event event;
	const void *owner;
};
struct recorder {
	struct dxm_notifier *n;
	pthread_mutex_t lock;
	const void *ignore_owner; /* EXCLUSIVE events by it are not recorded */
	size_t count;		  /* calls (recorded or not) */
	size_t nrec;
	struct rec_event rec[REC_MAX];
	int (*hook)(struct recorder *r, const struct dxm_range *range);
	void *hook_arg;
};
void recorder_insert(struct dxm_ctx *ctx, struct recorder *r, void *start,
		     size_t len);
/* The same for a recorder that ignores EXCLUSIVE events by owner. */
void recorder_insert_ignoring(struct dxm_ctx *ctx, struct recorder *r,
			      void *start, size_t len, const void *owner);
void recorder_remove(struct recorder *r);
size_t recorder_count_event(struct recorder *r, enum dxm_event ev);
/* Whether some recorded event of type ev covers [addr, addr+PS). */
bool recorder_saw(struct recorder *r, enum dxm_event ev, const void *addr);
/* Whether every page of [start, start+len) saw ev. */
bool rec_covers(struct recorder *r, enum dxm_event ev, const void *start,
		size_t len);
/* Whether an event ev overlapping [start, end) was recorded. */
bool rec_overlaps(struct recorder *r, enum dxm_event ev, const void *start,
		  const void *end);
/* Set r's hook and its argument (under r's lock: the recorder may be
 * called meanwhile). */
void recorder_hook(struct recorder *r,
		   int (*hook)(struct recorder *r,
			       const struct dxm_range *range),
		   void *arg);

/* Make [p, p+len) exclusive for owner: every page must convert, to a
 * device address that is not its CPU address, and no CPU view may map it
 * then; the device writes word 1 of page i as 1000 + i.  take_locked
 * leaves the pages locked, take unlocks them. */
void take_locked(struct dxm_ctx *ctx, char *p, size_t len, const void *owner,
		 void **dev);
void take(struct dxm_ctx *ctx, char *p, size_t len, const void *owner,
	  void **dev);

/* Sleep ms milliseconds (restarted on EINTR). */
void sleep_ms(unsigned ms);
/* CLOCK_MONOTONIC in milliseconds. */
uint64_t now_ms(void);
/* Join t, waiting at most ms milliseconds; true if it was joined. */
bool join_within(pthread_t t, unsigned ms);
/* pthread_join, failing the test after s seconds (a library livelock must
 * fail the test, not spin past its timeout). */
void join_or_fail(pthread_t t, unsigned s, const char *what);
/* No core file for the crash this process is about to have. */
void no_core(void);
/* waitpid(pid) (restarted on EINTR), asserting it worked: the status. */
int wait_child(pid_t pid);
/* First thing in a fork()ed child: die with the parent (a test that
 * failed must not leave a child behind, waiting), and drop the write end
 * of the pipe the child waits on (-1: none). */
void child_start(pid_t parent, int wfd);
/* In a function a fork()ed child runs to check things, with an int k = 0
 * in scope: count the check, and return its number if cond is false. */
#define CHILD_CHECK(cond)                                                      \
	do {                                                                   \
		k++;                                                           \
		if (!(cond))                                                   \
			return k;                                              \
	} while (0)
/* The child pid, which ran such a function, passed every check (exited
 * with status 0). */
void child_checks_passed(pid_t pid);
/* A fork()ed child's access to addr (a store if write, else a load) must
 * kill it with SIGSEGV (target i, for the message); check(arg), if given,
 * runs in the child first: a non-zero result is its exit status. */
void child_touch_segfaults(size_t i, char *addr, bool write,
			   int (*check)(void *arg), void *arg);
/* Whether a CPU store of v to addr raises SIGSEGV (caught: the test goes
 * on; a test that expects .signal cannot skip, which huge-page variants
 * do unless asked for). */
bool store_segfaults(void *addr, uint64_t v);
/* Lines of /proc/self/maps that contain needle (NULL: every line). */
size_t maps_lines(const char *needle);
/* The context's statistics (asserting that dxm_stats works). */
struct dxm_stats stats(struct dxm_ctx *ctx);
/* Whether addr is still mapped by a dxm memfd view (after an unmap,
 * anything else may be mapped there). */
bool memfd_view_mapped(const void *addr);
/* Poll cond for up to ms milliseconds (asynchronous event handling). */
#define WAIT_FOR(cond, ms)                                                     \
	({                                                                     \
		bool ok_ = (cond);                                             \
		for (unsigned i_ = 0; !ok_ && i_ < (ms); i_++) {               \
			sleep_ms(1);                                           \
			ok_ = (cond);                                          \
		}                                                              \
		ok_;                                                           \
	})

/* Fill [p, p+len) with 64-bit words i (index from 0) and check it. */
void fill_index(void *p, size_t len, uint64_t add);
bool check_index(const void *p, size_t len, uint64_t add);

/* A software device (dxm_mirror) on ctx that took [p, p+len) exclusive:
 * it holds every page, and no CPU view maps any. */
struct dxm_mirror *mirror_exclusive(struct dxm_ctx *ctx, void *p,
				    size_t len);

/*
 * Contention (B10): ncpu CPU threads do atomic increments of 8 counters
 * (word 0 of each page of 8 pages of kind memory) while ndev software
 * devices (dxm_mirror; on huge pages, where it does not go, a device that
 * takes the page, adds with a plain load and store and unlocks it) do
 * dev_ops atomic adds each on the same counters,
 * on a context made with opts (NULL: the defaults).  Checks that no update
 * is lost, no device touched a page dxm no longer held, both sides really
 * contended, and no thread hangs (device threads are given 45 s, CPU
 * threads 5 s more).
 */
void contend(const struct dxm_ctx_opts *opts, enum mem_kind kind,
	     unsigned ncpu, unsigned ndev, unsigned long dev_ops);

#endif
