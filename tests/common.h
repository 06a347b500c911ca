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

#include "dxm.h"

#define PS ((size_t)4096)

/* Create a context, or skip the test with the reason (no userfaultfd, or
 * a missing feature). */
struct dxm_ctx *ctx_or_skip(const struct dxm_ctx_opts *opts);

/* Kinds of memory each behaviour test runs over. */
enum mem_kind {
	MEM_MEMFD, /* dxm_alloc: the region's own view */
	MEM_ALIAS, /* the same memfd pages through a dxm_alias view */
	MEM_ANON,  /* private anonymous memory put under dxm with dxm_adopt */
};
extern const char *const mem_kind_name[];
#define MEM_KINDS_PARAMS                                                       \
	static enum mem_kind kinds[] = { MEM_MEMFD, MEM_ALIAS };               \
	return cr_make_param_array(enum mem_kind, kinds,                       \
				   sizeof(kinds) / sizeof(kinds[0]))
/* Every kind, adopted anonymous memory included. */
#define MEM_KINDS_ALL_PARAMS                                                   \
	static enum mem_kind kinds[] = { MEM_MEMFD, MEM_ALIAS, MEM_ANON };     \
	return cr_make_param_array(enum mem_kind, kinds,                       \
				   sizeof(kinds) / sizeof(kinds[0]))

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
/* Private anonymous memory, read-write, not populated. */
char *anon_map(size_t len);
/* dxm_adopt, or skip the test where this kernel cannot. */
void adopt_or_skip(struct dxm_ctx *ctx, void *p, size_t len);

/* /proc/self/pagemap's present bit for the page holding addr: revocation
 * checked from the kernel's side, not from dxm's bookkeeping. */
bool page_present(const void *addr);
/* Number of pages of [addr, addr+len) present. */
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
void recorder_remove(struct recorder *r);
size_t recorder_count_event(struct recorder *r, enum dxm_event ev);
/* Whether some recorded event of type ev covers [addr, addr+PS). */
bool recorder_saw(struct recorder *r, enum dxm_event ev, const void *addr);

/* Sleep ms milliseconds (restarted on EINTR). */
void sleep_ms(unsigned ms);
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

#endif
