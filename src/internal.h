/* SPDX-License-Identifier: MIT */
/*
 * Internal structures shared by the library's files.
 *
 * THE LOCK ORDER (the only list: a lock is taken only while holding locks
 * above it; each file's header says which locks it owns and why):
 *
 *   1. registry_mtx          registry.c  live contexts; held across fork()
 *   2. ctx->fork_lock        fork.c      conversions and dxm_free vs fork
 *   3. inside a region       region.c    r->users, the teardown rule (not a
 *                                        lock, but waited for like one)
 *   4. ctx->gate             base.c      event reads vs new mappings
 *   5. ctx->zap_lock         base.c      event reads vs zaps
 *   6. ctx->vt_lock          region.c    view and region tables
 *   7. leaves: held while taking no other lock
 *        ctx->um_mtx         region.c    UNMAP passes in flight
 *        ctx->trash_mtx      anon.c      the trash area
 *        ctx->defer_mtx      pstate.c    deferred and ready faults
 *        ctx->n_mtx          notifier.c  notifiers, sequence protocol
 *        ctx->wd_mtx         watchdog.c  the watchdog's sleep (it takes
 *                                        n_mtx and defer_mtx after it)
 *        probe_mtx           uffd.c      the kernel probe, once
 *   Lock-free: the page state byte (pstate.h, CAS), the counters.
 *
 * Rules that go with it: no library lock is held while a notifier
 * callback runs.  No thread waits for a handler thread (an unread event,
 * a fault to be resolved) while it holds a library lock: the handler may
 * need that lock before it can read the event.  A handler thread never
 * waits for anything but such short critical sections.
 *
 * Names: the public API is dxm_*; every other global function or object
 * of the library is dxmi_* (libdxm.a shows them to a static link, where a
 * bare name could clash with the program's own; .ci/check-symbols checks
 * both libraries).
 */
#ifndef DXM_INTERNAL_H
#define DXM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/userfaultfd.h>

#include "dxm.h"
#include "pstate.h"

#define DXM_API __attribute__((visibility("default")))

/* ------------------------------------------------------------------ log.c */
void dxm_log(enum dxm_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define pr_err(...) dxm_log(DXM_LOG_ERROR, __VA_ARGS__)
#define pr_warn(...) dxm_log(DXM_LOG_WARN, __VA_ARGS__)
#define pr_info(...) dxm_log(DXM_LOG_INFO, __VA_ARGS__)
#define pr_debug(...) dxm_log(DXM_LOG_DEBUG, __VA_ARGS__)

/* ----------------------------------------------------------------- uffd.c */
struct dxm_uffd_info {
	int mode;	   /* enum dxm_uffd_mode */
	uint64_t features; /* enabled on the fd */
	uint64_t offered;  /* what the kernel reported */
};
int dxmi_uffd_open(struct dxm_uffd_info *info, uint64_t required, uint64_t optional,
	      bool quiet);
int dxmi_uffd_register(int uffd, uintptr_t start, size_t len, uint64_t mode);
int dxmi_uffd_unregister(int uffd, uintptr_t start, size_t len);
long dxmi_uffd_continue(int uffd, uintptr_t start, size_t len, bool wake);
int dxmi_uffd_wake(int uffd, uintptr_t start, size_t len);
long dxmi_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len,
	       uint64_t mode);
long dxmi_uffd_copy(int uffd, uintptr_t dst, uintptr_t src, size_t len);
long dxmi_uffd_copy_mode(int uffd, uintptr_t dst, uintptr_t src, size_t len,
		    uint64_t mode);
long dxmi_uffd_zeropage(int uffd, uintptr_t dst, size_t len);
int dxmi_sys_madvise(void *addr, size_t len, int advice);
const char *dxmi_uffd_feature_name(uint64_t bit, const char **since);

/* --------------------------------------------------------------- region.c */
struct dxm_region;

/* A piece of a CPU view: contiguous CPU addresses, one protection. */
struct dxm_view {
	uintptr_t start;
	size_t npages;
	size_t pgoff;		/* first page of the region it shows */
	unsigned pshift;	/* its region's page size (r->pshift) */
	struct dxm_region *r;
	unsigned group;		/* 0: the dxm_alloc view, k: the k-th alias */
	int prot;
	uint64_t epoch;		/* ctx->epoch when it was mapped (fault.c) */
	struct dxm_view *rnext; /* next piece of the same region (vt_lock) */
};

/*
 * A kind of memory: what differs between them, behind one table (the
 * kernel's vm_operations_struct is the model).  memfd.c: dxm_alloc's
 * memfd pages, restored by UFFDIO_CONTINUE; anon.c: dxm_adopt's private
 * anonymous pages, moved out to a staging area and back by UFFDIO_MOVE.
 * Nothing outside a kind's file tests which kind a region is: the rest
 * of the library calls these, or tests a KIND_* property.  Each is called
 * inside the region (dxmi_region_enter, the teardown rule) unless it says
 * otherwise, and on pages the caller owns (pstate.h).  NULL: nothing to do.
 */
#define KIND_MOVES (1u << 0) /* pages move out to staging: a fork gives them
				back first and conversions hold fork off
				(fork.c); a read-only view cannot take one
				back (dxm_mprotect); a page the CPU owns is
				reached through the CPU view (dxm_range_fault) */
#define KIND_ALIAS (1u << 1) /* dxm_alias may map the pages again */
#define KIND_FILE (1u << 2)  /* the device view has a file (dxm_device_view) */

struct dxm_kind {
	const char *name;
	unsigned flags;	  /* KIND_* */
	unsigned pshift;  /* its page size (0: the base page) */
	int devview_kind; /* DXM_DEVVIEW_*, and its flags */
	unsigned devview_flags;
	/* dxm_alloc: the region's pages and its device view (r->dev, r->fd),
	 * not yet in any table. */
	int (*create)(struct dxm_region *r);
	/* Before a conversion (write) or after dxm_range_fault: the pages of
	 * [pg, pg+n) the CPU owns exist in the CPU view at start.  -EPERM:
	 * the view does not allow the access. */
	int (*populate)(struct dxm_region *r, uintptr_t start, size_t pg,
			size_t n, bool write);
	/* Pages [pg, pg+n) whose dev[i] is set are LOCKED by the caller and
	 * the notifiers ran: no CPU view may map them any more.  need[i]:
	 * the page was the CPU's (scratch: the kind may change it).  A page
	 * that cannot be taken goes back to the CPU, its dev[i] cleared.
	 * Returns the pages refused so. */
	size_t (*revoke)(struct dxm_region *r, size_t pg, size_t n, void **dev,
			 uint8_t *need);
	/* A CPU fault at addr on page pg, the CPU's, PS_MAPPING ours: map it
	 * (write: the access was a write).  -EAGAIN: refused for now (an
	 * event is unread), the faulting thread not woken. */
	int (*fill)(struct dxm_region *r, size_t pg, uintptr_t addr,
		    bool write);
	/* A CPU fault at addr on page pg, INVALIDATING and ours, its
	 * notifiers done: the page becomes the CPU's again (CPU|PS_MAPPING,
	 * before its mapping returns: no access completes while it still
	 * reads as held), mapped at addr, and the faulting thread is woken.
	 * -EAGAIN: refused for now; the page is either INVALIDATING (its
	 * data not back yet: the caller re-queues it) or the CPU's but not
	 * mapped (the thread must fault again). */
	int (*restore)(struct dxm_region *r, size_t pg, uintptr_t addr);
	/* Pages [a, b) ours, each INVALIDATING (notified, restores counted)
	 * or CPU|PS_MAPPING: map them in every CPU view and drop them; PTC_*
	 * flags (fault.c).  A page whose data cannot come back now stays
	 * INVALIDATING, re-queued as a fault's restore. */
	void (*restore_run)(struct dxm_region *r, size_t a, size_t b,
			    unsigned flags);
	/* Optional: a fault at addr on page pg of the run [a, b) (more than
	 * one page, each INVALIDATING, ours, notified): restore and wake
	 * like restore() does for pg, the whole run at once. */
	int (*restore_span)(struct dxm_region *r, size_t a, size_t b,
			    size_t pg, uintptr_t addr);
	/* A CPU view piece [start, +n pages), region page pgoff, detached and
	 * the devices told.  unmap: dxm_free (the piece is dxm's to undo);
	 * else the program unmapped it.  last: r has no view left.  Nobody is
	 * inside r when it is dxm_free. */
	void (*gone)(struct dxm_region *r, uintptr_t start, size_t pgoff,
		     size_t n, bool unmap, bool last);
	/* A fault on device-side address addr (page pg) by thread tid (0:
	 * the faulting thread itself, SIGBUS mode).  NULL: the device view
	 * never faults. */
	void (*staging_fault)(struct dxm_region *r, size_t pg, uintptr_t addr,
			      pid_t tid);
	/* dxm_mprotect changed the CPU view of [pg, pg+n) to prot. */
	void (*protect)(struct dxm_region *r, size_t pg, size_t n, int prot);
	/* The last reference is gone (not inside): undo what the kind set
	 * up beyond r->dev's mapping and r->fd, which the caller closes. */
	void (*release)(struct dxm_region *r);
};
extern const struct dxm_kind dxmi_memfd_kind; /* memfd.c */
extern const struct dxm_kind dxmi_hugetlb_kind; /* hugetlb.c */
extern const struct dxm_kind dxmi_anon_kind;	 /* anon.c */
/* memfd.c's operations, which every kind whose pages are a memfd's shares
 * (the memfd kind, hugetlb.c): they work in the region's page size. */
int dxmi_memfd_create_file(struct dxm_region *r, unsigned mfd_flags);
size_t dxmi_memfd_revoke(struct dxm_region *r, size_t pg, size_t n, void **dev,
			 uint8_t *need);
int dxmi_memfd_fill(struct dxm_region *r, size_t pg, uintptr_t addr, bool write);
int dxmi_memfd_restore(struct dxm_region *r, size_t pg, uintptr_t addr);
int dxmi_memfd_restore_span(struct dxm_region *r, size_t a, size_t b,
			    size_t pg, uintptr_t addr);
void dxmi_memfd_restore_run(struct dxm_region *r, size_t a, size_t b,
			    unsigned flags);
void dxmi_memfd_gone(struct dxm_region *r, uintptr_t start, size_t pgoff,
		     size_t n, bool unmap, bool last);

struct dxm_region {
	struct dxm_ctx *ctx;
	const struct dxm_kind *kind;
	int uffd;	    /* the userfaultfd its views are registered with */
	int fd;		    /* memfd: the memfd, only while needed (-1) */
	bool keep_fd;	    /* views must be mmap()ed from fd (valgrind) */
	atomic_long refs;
	/* Operations inside the region (dxmi_region_enter), R_DYING once its
	 * teardown began: see "The teardown rule" in region.c. */
	atomic_uint users;
	/* munmap: the last one out hands the teardown's end to a handler
	 * (dxm_free waits for the region itself). */
	atomic_bool on_quiet;
	struct dxm_region *quiet_next; /* ctx->quiet (lock-free stack) */
	bool forgotten;	    /* deferred faults released for good (defer_mtx) */
	size_t npages;
	/* Its page size (a region page: what r->st has a byte for, dev[]
	 * an entry for, what is revoked and restored at once): the base
	 * page (ctx->psize), or a huge page (hugetlb.c). */
	size_t psize;
	unsigned pshift;
	char *dev;	    /* memfd: device view (MAP_SHARED, never
			       registered); adopted: staging area
			       (registered, same uffd) */
	dxm_pstate_t *st;   /* one byte per page */
	unsigned next_group; /* under vt_lock (write) */
	uint64_t epoch;	    /* ctx->epoch when its staging was inserted */
	struct dxm_view *views; /* under vt_lock */
	/* Restore-around (fault.c): the last run a fault gave back and the
	 * window that gave it; read and written without a lock (a guess:
	 * two handlers may race, the page states stay exact). */
	struct {
		atomic_size_t next, prev; /* the run's end, and its start */
		atomic_uint win;
		/* Given back ahead (fault.c, give_back_ahead): the marker
		 * page left exclusive before the run, and the run's end. */
		atomic_size_t mark, ahead;
	} ra;
	/* Adopted memory: moves back into the CPU view begun and done
	 * (anon_move_in), so that the raw-fork repair knows whether one
	 * overlapped its look at the page tables (anon.c, fix_run). */
	atomic_ulong in_begun, in_done;
};

/* The result of a lookup: a referenced region and the view piece's data. */
struct dxm_where {
	struct dxm_region *r;
	uintptr_t vstart;  /* piece start */
	size_t vnpages;
	size_t pgoff;	   /* region page of vstart */
	unsigned group;
	int prot;
	uint64_t epoch;	   /* the piece's (staging: the region's) */
};

int dxmi_region_lookup(struct dxm_ctx *ctx, uintptr_t addr, struct dxm_where *w);
int dxmi_region_adopt_insert(struct dxm_region *r, uintptr_t start, size_t len);
int dxmi_region_wait_unclaimed(struct dxm_ctx *ctx, uintptr_t start, size_t len,
			  bool keep_gate);
void *dxmi_region_map_fresh(struct dxm_ctx *ctx, size_t len,
		       void *(*map)(void *arg, size_t len), void *arg);
void dxmi_region_wait_unmaps(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end);
void dxmi_region_foreach(struct dxm_ctx *ctx, unsigned kind_flags,
		    void (*fn)(struct dxm_region *r, void *arg), void *arg);
int dxmi_region_lookup_range(struct dxm_ctx *ctx, uintptr_t start, size_t len,
			struct dxm_where *w);
int dxmi_region_lookup_dev(struct dxm_ctx *ctx, const void *dev,
		      struct dxm_region **rp, size_t *pg);
dxm_pstate_t *dxmi_st_alloc(size_t npages);
void dxmi_st_free(dxm_pstate_t *st, size_t npages);
void dxmi_region_get(struct dxm_region *r);
void dxmi_region_put(struct dxm_region *r);
#define R_DYING (1u << 31)
bool dxmi_region_enter(struct dxm_region *r);
void dxmi_region_exit(struct dxm_region *r);
void dxmi_region_hold(struct dxm_region *r);
void dxmi_region_run_quiet(struct dxm_ctx *ctx);
size_t dxmi_region_view_addrs(struct dxm_region *r, size_t pg, size_t n,
			 uintptr_t *out, size_t max);
/* A detached run of CPU addresses, to notify and unmap outside the locks. */
struct dxm_gone {
	struct dxm_region *r; /* referenced */
	uintptr_t start, end;
	size_t pgoff;
	bool last;	      /* the region has no piece left */
	bool owner;	      /* and this pass tears it down (dxmi_region_kill) */
	struct dxm_gone *next;
};

/* An UNMAP event read and detached, whose notifications may still run. */
struct dxm_unmap {
	uintptr_t start, end;
	struct dxm_gone *list;
	struct dxm_unmap *next; /* um_mtx */
};

struct dxm_unmap *dxmi_region_unmap_detach(struct dxm_ctx *ctx, uintptr_t start,
				      uintptr_t end);
void dxmi_region_unmap_done(struct dxm_ctx *ctx, struct dxm_unmap *u);
int dxmi_region_detach_range(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end,
			int group, struct dxm_gone **list);
/* The tables (vt_lock held as each says in region.c). */
struct dxm_view *dxmi_vt_find(struct dxm_ctx *ctx, uintptr_t addr);
size_t dxmi_vt_search(struct dxm_ctx *ctx, uintptr_t addr);
int dxmi_vt_split(struct dxm_ctx *ctx, uintptr_t addr);
int dxmi_rt_insert(struct dxm_ctx *ctx, struct dxm_region *r);
void dxmi_rt_remove(struct dxm_ctx *ctx, struct dxm_region *r);
int dxmi_region_add_piece(struct dxm_ctx *ctx, struct dxm_region *r, void *addr,
		     unsigned group);
/* The teardown rule's steps (region.c). */
bool dxmi_region_kill(struct dxm_region *r);
void dxmi_region_wait_quiet(struct dxm_region *r);
void dxmi_region_teardown_finish(struct dxm_region *r);
void dxmi_region_finish_when_quiet(struct dxm_region *r);
void dxmi_region_remap_move(struct dxm_ctx *ctx, uintptr_t from, uintptr_t to,
		       size_t len);
int dxmi_region_runs(struct dxm_region *r, size_t pg, size_t n,
		const uint8_t *mask, uintptr_t first,
		int (*fn)(struct dxm_region *r, uintptr_t cpu, size_t pg,
			  size_t n, void *arg),
		void *arg);
void dxmi_region_wake(struct dxm_region *r, size_t pg, size_t n,
		      uintptr_t addr);
bool dxmi_region_owns_addr(struct dxm_region *r, uintptr_t addr);

/* --------------------------------------------------------------- pstate.c */
/* A fault waiting for a page (deferred), or to be resolved again (ready). */
struct dxm_fault {
	struct dxm_region *r;	/* referenced when restore is set */
	size_t pg;
	uintptr_t addr;
	bool restore;	/* an adopted page invalidated, still to move back */
	uint64_t t0;	/* when it was deferred (watchdog.c) */
	uint64_t epoch; /* ctx->epoch when its message was read */
	bool reported;	/* by the watchdog (defer_mtx) */
	struct dxm_fault *next;
};
bool dxmi_ps_defer(struct dxm_region *r, size_t pg, uintptr_t addr, uint8_t s,
	      uint64_t epoch);
void dxmi_ps_defer_dying(struct dxm_region *r, size_t pg, uintptr_t addr,
		    uint64_t epoch);
void dxmi_ps_release_waiters(struct dxm_region *r, size_t pg, size_t n);
void dxmi_ps_forget_region(struct dxm_region *r);
struct dxm_fault *dxmi_ps_take_ready(struct dxm_ctx *ctx);
void dxmi_ps_requeue_restore(struct dxm_region *r, size_t pg, uintptr_t addr);
bool dxmi_ps_requeued(void);
void dxmi_ps_mapping_done(struct dxm_region *r, size_t pg);
void dxmi_ps_invalidated(struct dxm_region *r, size_t pg);
void dxmi_ps_invalidated_run(struct dxm_region *r, size_t a, size_t b);
void dxmi_ps_not_invalidated(struct dxm_region *r, size_t pg);
void dxmi_ps_set(struct dxm_region *r, size_t pg, uint8_t to);

/* ---------------------------------------------------------------- fault.c */
void dxmi_fault_resolve(struct dxm_ctx *ctx, uintptr_t addr, bool write,
		   pid_t tid, uint64_t epoch);
#define EPOCH_NOW UINT64_MAX /* a fault happening now, not a message */
bool dxmi_fault_resolve_here(struct dxm_ctx *ctx, uintptr_t addr);

/* --------------------------------------------------------------- sigbus.c */
int dxmi_sigbus_init(void);
void dxmi_fault_drain_ready(struct dxm_ctx *ctx);
#define PTC_INVALIDATE 1u /* invalidate exclusive pages (else skip them) */
#define PTC_WAIT 2u	  /* wait for locked/busy pages (else skip them) */
void dxmi_pages_to_cpu(struct dxm_region *r, size_t pg, size_t n, unsigned flags,
		  enum dxm_event ev);

/* ----------------------------------------------------------------- anon.c */
#define TRASH_PAGES 64
void dxmi_anon_trash_init_lock(struct dxm_ctx *ctx);
void dxmi_anon_trash_init(struct dxm_ctx *ctx);
void dxmi_anon_trash_fini(struct dxm_ctx *ctx);
struct dxm_anon_rm;
struct dxm_anon_rm *dxmi_anon_remove_begin(struct dxm_ctx *ctx, uintptr_t start,
				      uintptr_t end);
void dxmi_anon_remove_finish(struct dxm_ctx *ctx, struct dxm_anon_rm *rm);
void dxmi_anon_fork_event(struct dxm_ctx *ctx, int child_uffd);

/* ------------------------------------------------------------- watchdog.c */
int dxmi_watchdog_start(struct dxm_ctx *ctx);
void dxmi_watchdog_stop(struct dxm_ctx *ctx);

/* ----------------------------------------------------------------- fork.c */
/* ctx->fork_gate: who holds the gate while a fork parks the handlers. */
#define FG_NONE 0    /* no fork */
#define FG_HELD 1    /* the forking thread holds the gate and zap_lock for
			handler 0, which reads events into its backlog */
#define FG_APPLIED 2 /* handler 0 applied the backlog's events */
#define FG_NOGATE 3  /* not every handler parked: handler 0 reads anyway
			and applies its backlog under the gate later */
void dxmi_fork_init(void);
bool dxmi_fork_enter(struct dxm_ctx *ctx);
void dxmi_fork_exit(struct dxm_ctx *ctx);

/* ------------------------------------------------------------- notifier.c */
struct dxm_notifier {
	struct dxm_ctx *ctx;
	uintptr_t start, end;
	const struct dxm_notifier_ops *ops;
	void *priv;
	atomic_ulong seq;
	unsigned busy;	/* callbacks in flight (n_mtx) */
	bool removed;	/* (n_mtx) */
	atomic_ulong cb_start;	 /* dxmi_now_ns() while its callback runs, else 0 */
	atomic_int cb_event;	 /* what it is being told (watchdog.c) */
	uint64_t cb_reported;	 /* cb_start the watchdog reported (n_mtx) */
	struct dxm_notifier *next;
};
void dxmi_notify_range(struct dxm_ctx *ctx, uintptr_t start, uintptr_t end,
		  enum dxm_event ev, const void *owner);
void dxmi_notify_region_pages(struct dxm_region *r, size_t pg, size_t n,
			 enum dxm_event ev, const void *owner);
void dxmi_notifier_destroy_all(struct dxm_ctx *ctx);

/* ------------------------------------------------------------------ ctx.c */
#define FORK_BACKLOG 1024 /* messages read while a fork is in progress */
#define MAX_HANDLERS 64

/* Whether dxm_ctx_create takes these DXM_CTX_* flags (dxm_resolution_str
 * names no others). */
bool dxmi_ctx_flags_ok(unsigned flags);

/*
 * The userfaultfd features a context asks for (dxm_probe asks the same).
 * Memfd regions: not UFFD_FEATURE_EVENT_REMOVE, which makes every zap on
 * this fd, dxm's own revokes included, wait for a handler to read an event
 * (docs/kernel-facts.md); a program's MADV_DONTNEED of a memfd region
 * loses nothing and the next CPU access faults to the handler anyway
 * (dxm_alloc(3)).  MOVE is for the trash area (anon.c); EVENT_FORK is not
 * enabled: shared regions are not inherited (MADV_DONTFORK).
 * Adopted memory gets its own userfaultfd: there a program's MADV_DONTNEED
 * must discard data, so EVENT_REMOVE is on (dxm's own conversions are
 * UFFDIO_MOVEs, which raise no REMOVE).  EVENT_FORK, where granted,
 * repairs a raw clone (anon.c).  DXM_CTX_SIGBUS adds UFFD_FEATURE_SIGBUS
 * to both.
 */
#define CTX_UFFD_REQUIRED                                                      \
	(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MISSING_SHMEM |               \
	 UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP |                 \
	 UFFD_FEATURE_THREAD_ID)
#define CTX_UFFD_OPTIONAL (UFFD_FEATURE_MOVE | UFFD_FEATURE_MINOR_HUGETLBFS)
#define ANON_UFFD_REQUIRED                                                     \
	(UFFD_FEATURE_MOVE | UFFD_FEATURE_EVENT_UNMAP |                        \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |                \
	 UFFD_FEATURE_THREAD_ID)
#define ANON_UFFD_OPTIONAL UFFD_FEATURE_EVENT_FORK
unsigned dxmi_ctx_default_threads(void);

struct dxm_handler {
	struct dxm_ctx *ctx;
	struct uffd_msg *backlog; /* handler 0: FORK_BACKLOG messages */
	pthread_t tid;
	atomic_int ktid; /* its kernel thread id, once it runs */
	unsigned idx;
	bool started;
	atomic_bool exited;
	bool reported; /* watchdog.c */
};

struct dxm_counters {
	atomic_ulong conversions, pages_converted, pages_refused;
	atomic_ulong cpu_faults, restores, deferred_faults, pages_ahead;
	atomic_ulong notifier_calls, notifier_ns;
	atomic_ulong events_unmap, events_remap, events_remove, forks;
	atomic_ulong stale_device_faults, watchdog_reports;
	atomic_ulong restore_us[DXM_STATS_HIST], restore_pages[DXM_STATS_HIST];
	atomic_ulong regions, managed_pages;
};

/* Each module's part of a context, with the module's init and fini. */
struct dxm_tables { /* region.c */
	pthread_rwlock_t lock; /* vt_lock: the two tables, pieces, groups */
	struct dxm_view **vt;  /* CPU view pieces, sorted by address */
	size_t vt_n, vt_cap;
	struct dxm_region **rt; /* live regions, sorted by device view */
	size_t rt_n, rt_cap;
	pthread_mutex_t um_mtx; /* UNMAP passes in flight */
	pthread_cond_t um_cond;
	struct dxm_unmap *um_passes;
	struct dxm_region *_Atomic quiet; /* munmapped regions whose last
					     user left: a handler finishes
					     them */
};
int dxmi_tables_init(struct dxm_ctx *ctx);
void dxmi_tables_fini(struct dxm_ctx *ctx);

struct dxm_waiters { /* pstate.c */
	pthread_mutex_t mtx; /* defer_mtx */
	struct dxm_fault *deferred;
	struct dxm_fault *ready;
};
void dxmi_waiters_init(struct dxm_ctx *ctx);
void dxmi_waiters_fini(struct dxm_ctx *ctx);

struct dxm_notifiers { /* notifier.c */
	pthread_mutex_t mtx; /* n_mtx */
	pthread_cond_t cond;
	struct dxm_notifier *list;
	size_t count;
	atomic_ulong seq;
	unsigned active;
};
void dxmi_notifiers_init(struct dxm_ctx *ctx);
void dxmi_notifiers_fini(struct dxm_ctx *ctx);

struct dxm_fork_state { /* fork.c, handler.c */
	pthread_rwlock_t lock; /* fork_lock */
	atomic_int forking;    /* handlers parked for a fork (handler.c) */
	atomic_uint acks;      /* handlers parked so far */
	atomic_int gate;       /* FG_* */
	bool locked;	       /* by the thread forking (registry lock) */
	int fd; /* written while a fork parks the handlers: every handler
		   polls it, none reads it */
};
int dxmi_fork_state_init(struct dxm_ctx *ctx);
void dxmi_fork_state_fini(struct dxm_ctx *ctx);

struct dxm_trash { /* anon.c */
	char *area; /* TRASH_PAGES registered with ctx->uffd */
	pthread_mutex_t mtx;
};

struct dxm_watchdog { /* watchdog.c */
	unsigned ms;
	pthread_t tid;
	bool started, stop;
	pthread_mutex_t mtx;
	pthread_cond_t cond;
};

struct dxm_ctx {
	int uffd; /* memfd regions: no EVENT_REMOVE (it slows every zap) */
	struct dxm_uffd_info uinfo;
	int uffd_anon; /* adopted memory: EVENT_REMOVE, MOVE; -1 if no MOVE */
	struct dxm_uffd_info uinfo_anon;
	size_t psize;	/* the base page */
	unsigned pshift;
	/* The largest region page shift this context has made (only ever
	 * rises): pshift until a huge-page region is made. */
	atomic_uint max_pshift;
	unsigned flags; /* DXM_CTX_* */
	pid_t pid;	/* creator: calls from a fork()ed child are refused */

	pthread_mutex_t gate;	   /* base.c */
	_Atomic uint64_t epoch;	   /* mappings inserted (changed under gate) */
	pthread_rwlock_t zap_lock; /* base.c: events being read vs zaps */

	int stop_fd, wake_fd; /* handler.c */
	atomic_bool stopping;
	uint64_t spin_ns; /* DXM_CTX_HANDLER_SPIN */
	uint64_t adaptive_ns; /* DXM_CTX_HANDLER_ADAPTIVE: spin after a batch
				 that came this soon after the last
				 (handler.c); 0: never */
	atomic_ulong conversions_begun; /* with adaptive_ns: the
					   dxm_make_exclusive calls; one ends
					   an adaptive spin */
	unsigned ra_max;  /* restore-around: most pages per fault (fault.c) */
	/* Owners' tags (exclusive.c, pstate.h): slot i is tag i + 1, taken
	 * by the first conversion of an owner and kept. */
	const void *_Atomic owner_tag[PS_NTAGS];
	unsigned nhandlers;
	struct dxm_handler *handlers;

	struct dxm_tables tab;
	struct dxm_waiters wait;
	struct dxm_notifiers ntf;
	struct dxm_fork_state fk;
	struct dxm_trash trash;
	struct dxm_watchdog wd;
	struct dxm_counters c;
};

static inline void stat_add(atomic_ulong *c, unsigned long v)
{
	atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

/* ----------------------------------------------------------- registry.c */
int dxmi_registry_add(struct dxm_ctx *ctx);
bool dxmi_registry_del(struct dxm_ctx *ctx);
bool dxmi_ctx_live(struct dxm_ctx *ctx);
struct dxm_ctx *dxmi_registry_find(bool (*fn)(struct dxm_ctx *ctx, uintptr_t arg),
			      uintptr_t arg);
void dxmi_ctx_foreach_begin(void (*fn)(struct dxm_ctx *ctx));
void dxmi_ctx_foreach_end(void (*fn)(struct dxm_ctx *ctx));
int dxmi_ctx_check(struct dxm_ctx *ctx);

/* ---------------------------------------------------------------- base.c */
uint64_t dxmi_now_ns(void);
void dxmi_nap_us(unsigned *us); /* sleep *us, then double it up to 1 ms */
#define EAGAIN_YIELDS 1000 /* dxmi_eagain_wait's tries that only yield */
void dxmi_eagain_wait(unsigned *tries); /* before retrying an EAGAIN */
pid_t dxmi_self_pid(void);
void dxmi_self_pid_forget(void);
void dxmi_ctx_set_handler(struct dxm_ctx *ctx);
bool dxmi_ctx_on_handler(struct dxm_ctx *ctx);
bool dxmi_ctx_is_handler_tid(struct dxm_ctx *ctx, pid_t tid);
void dxmi_ctx_kick(struct dxm_ctx *ctx);
void dxmi_gate_lock(struct dxm_ctx *ctx);   /* the gate, then zap_lock (write) */
void dxmi_gate_unlock(struct dxm_ctx *ctx);
void dxmi_gate_init(struct dxm_ctx *ctx);
void dxmi_gate_fini(struct dxm_ctx *ctx);

/* --------------------------------------------------------------- views.c */
void dxmi_views_unmap_finish(struct dxm_ctx *ctx, struct dxm_unmap *u);
void dxmi_views_destroy_all(struct dxm_ctx *ctx);

/* ------------------------------------------------------------- handler.c */
int dxmi_handlers_start(struct dxm_ctx *ctx);
void dxmi_handlers_stop(struct dxm_ctx *ctx);

/* Whether a kernel-mode access (a system call, MADV_POPULATE_*) to a
 * missing page is resolved by dxm, or fails with EFAULT. */
static inline bool kernel_faults_resolved(struct dxm_ctx *ctx)
{
	return ctx->uinfo.mode != DXM_UFFD_USER_ONLY &&
	       !(ctx->flags & DXM_CTX_SIGBUS);
}

static inline bool range_ok(struct dxm_ctx *ctx, const void *start, size_t len)
{
	uintptr_t s = (uintptr_t)start;
	return start && len && !(s & (ctx->psize - 1)) &&
	       !(len & (ctx->psize - 1)) && s + len > s;
}

/* Whole pages of r (range_ok checked the base page already). */
static inline bool region_range_ok(struct dxm_region *r, const void *start,
				   size_t len)
{
	return !((uintptr_t)start & (r->psize - 1)) && !(len & (r->psize - 1));
}

#endif /* DXM_INTERNAL_H */
