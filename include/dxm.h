/* SPDX-License-Identifier: MIT */
/*
 * dxm - device-exclusive memory access for Linux user space.
 *
 * A device that cannot do atomics coherently with the CPU asks for exclusive
 * access to a range of a process's memory; dxm revokes every CPU mapping of
 * those pages; a later CPU access faults, dxm runs the device's invalidation
 * callbacks and only then restores the mapping.  This is the user-space
 * counterpart of the kernel's make_device_exclusive_range().
 *
 * Conventions: every function that returns int or long returns 0 or a
 * non-negative count on success and a negative errno on failure (errno is
 * not used to report errors).  The others cannot fail:
 *   - void: dxm_ctx_destroy ignores NULL, a dead context and a fork()ed
 *     child's call, and refuses (logged) a call from a callback;
 *     dxm_notifier_remove ignores NULL; dxm_exclusive_unlock logs bad
 *     arguments (a dead context too) and pages that were not locked;
 *   - dxm_check_exclusive returns a bool, false for bad arguments too;
 *   - dxm_notifier_read_begin, _read_retry and _set_seq take a live
 *     notifier (not checked) and return a sequence number, a bool, nothing;
 *   - dxm_notifier_priv returns the priv given to dxm_notifier_insert (NULL
 *     for NULL), dxm_set_print the previous print function;
 *   - dxm_version*() and the *_str() functions return constants, never NULL.
 * Handles are opaque; structures that cross the API carry their size.  See
 * dxm(7).
 */
#ifndef DXM_H
#define DXM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header; dxm_version() and friends give the library's. */
#define DXM_VERSION_MAJOR 0
#define DXM_VERSION_MINOR 1
#define DXM_VERSION_PATCH 0
#define DXM_VERSION "0.1.0" /* meson.build's project version */

/* The library's version at run time: "0.1.0", 0, 1.  See dxm_version(3). */
const char *dxm_version(void);
unsigned dxm_version_major(void);
unsigned dxm_version_minor(void);

/*
 * A structure that carries its size, zeroed, with sz set and the fields
 * given (libbpf's LIBBPF_OPTS):
 *	struct dxm_ctx_opts o = DXM_OPTS(dxm_ctx_opts, .flags = DXM_CTX_SIGBUS);
 *	dxm_ctx_create(&ctx, &DXM_OPTS(dxm_ctx_opts, .handler_threads = 2));
 * A compound literal: the fields not named are 0 (padding is not
 * guaranteed to be).
 */
#define DXM_OPTS(...) DXM_OPTS_(__VA_ARGS__, ) /* fields may be none */
#define DXM_OPTS_(type, ...)                                                   \
	((struct type){ .sz = sizeof(struct type), __VA_ARGS__ })

struct dxm_ctx;
struct dxm_notifier;

/* ---------------------------------------------------------------- context */

/* dxm_ctx_opts.flags */
#define DXM_CTX_REQUIRE_KERNEL_FAULTS (1u << 0) /* fail with -EPERM unless system
						   calls touching exclusive pages
						   are resolved (not user-mode-only) */
#define DXM_CTX_HANDLER_SPIN (1u << 1) /* handler threads busy-poll for spin_us
					  after each batch before sleeping:
					  lower latency, a CPU kept busy */
#define DXM_CTX_SIGBUS (1u << 2) /* resolve CPU faults in the faulting thread
				    (UFFD_FEATURE_SIGBUS): lowest latency, but
				    notifiers run in that thread's SIGBUS
				    handler and a system call whose buffer is
				    an exclusive page fails with EFAULT */
#define DXM_CTX_HANDLER_ADAPTIVE (1u << 3) /* a handler thread that served
					      a fault within spin_us of the
					      one before, with no conversion
					      between, keeps reading for
					      spin_us before it sleeps */

struct dxm_ctx_opts {
	size_t sz;		  /* sizeof(struct dxm_ctx_opts) */
	unsigned flags;		  /* DXM_CTX_* */
	unsigned handler_threads; /* 0: default (1, or $DXM_HANDLER_THREADS) */
	unsigned spin_us;	  /* how long a handler keeps reading after a
				     batch: DXM_CTX_HANDLER_SPIN: always (0
				     means 100); DXM_CTX_HANDLER_ADAPTIVE:
				     after a batch that came within spin_us
				     of the one before (0 means 50) */
	unsigned restore_around;  /* the most pages a CPU fault gives back
				     at once (its neighbours, exclusive for
				     the same owner, while faults are
				     sequential): 0 means 2048; 1: one page,
				     the kernel's exact semantics */
};

int dxm_ctx_create(struct dxm_ctx **ctxp, const struct dxm_ctx_opts *opts);
void dxm_ctx_destroy(struct dxm_ctx *ctx);

/* How the context's userfaultfd resolves faults (dxm_stats.uffd_mode). */
enum dxm_uffd_mode {
	DXM_UFFD_DEV = 1,	/* /dev/userfaultfd: user and kernel faults */
	DXM_UFFD_SYSCALL = 2,	/* userfaultfd(2): user and kernel faults */
	DXM_UFFD_USER_ONLY = 3, /* UFFD_USER_MODE_ONLY: a system call whose
				   buffer is an exclusive page fails with EFAULT */
};

/* ----------------------------------------------------------------- memory */

/* dxm_alloc flags */
#define DXM_ALLOC_INHERIT (1u << 0) /* reserved: let a fork()ed child inherit the
				       region (outside dxm's protection) */
#define DXM_ALLOC_HUGE (1u << 1) /* 2 MiB pages (hugetlbfs): revoked and
				    restored whole; ranges in whole huge
				    pages; dev[] has one entry per huge
				    page (dxm_page_size) */

int dxm_alloc(struct dxm_ctx *ctx, size_t len, unsigned flags, void **addrp);
int dxm_alias(struct dxm_ctx *ctx, void *addr, void **aliasp);
int dxm_adopt(struct dxm_ctx *ctx, void *addr, size_t len, unsigned flags);
int dxm_free(struct dxm_ctx *ctx, void *addr);
int dxm_mprotect(struct dxm_ctx *ctx, void *addr, size_t len, int prot);
/* The page size of the region at addr (a CPU view address, or a device
 * address from dev[]): what one dev[] entry, one state and one revocation
 * cover.  The base page, or 2 MiB for DXM_ALLOC_HUGE; -ENOENT. */
long dxm_page_size(struct dxm_ctx *ctx, const void *addr);

/* ------------------------------------------------------------- notifiers */

enum dxm_event {
	DXM_EVENT_CLEAR,      /* CPU access revokes exclusivity */
	DXM_EVENT_EXCLUSIVE,  /* conversion to exclusive by `owner` */
	DXM_EVENT_UNMAP,      /* munmap, dxm_free; MADV_DONTNEED/FREE of
				 adopted memory */
	DXM_EVENT_PROTECTION, /* dxm_mprotect */
	DXM_EVENT_FORK,	      /* fork of a private region */
	DXM_EVENT_REMAP,      /* mremap */
};

struct dxm_range {
	void *start, *end; /* page aligned, end exclusive */
	enum dxm_event event;
	const void *owner; /* set for DXM_EVENT_EXCLUSIVE, else NULL */
};

struct dxm_notifier_ops {
	/*
	 * Runs before the change takes effect; when it returns, the device
	 * must no longer access [start, end).  Call
	 * dxm_notifier_set_seq(n, cur_seq) under the driver's own lock.
	 * Return true (false is reserved).
	 */
	bool (*invalidate)(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq);
};

int dxm_notifier_insert(struct dxm_ctx *ctx, void *start, size_t len,
			const struct dxm_notifier_ops *ops, void *priv,
			struct dxm_notifier **np);
void dxm_notifier_remove(struct dxm_notifier *n);
void *dxm_notifier_priv(const struct dxm_notifier *n);
unsigned long dxm_notifier_read_begin(struct dxm_notifier *n);
bool dxm_notifier_read_retry(struct dxm_notifier *n, unsigned long seq);
void dxm_notifier_set_seq(struct dxm_notifier *n, unsigned long seq);

/* -------------------------------------------------------- exclusive access */

long dxm_make_exclusive(struct dxm_ctx *ctx, void *start, size_t len,
			const void *owner, void **dev);
void dxm_exclusive_unlock(struct dxm_ctx *ctx, void *start, size_t len,
			  void **dev);
bool dxm_check_exclusive(struct dxm_ctx *ctx, void *start, size_t len,
			 void **dev);

/* dxm_range_fault flags */
#define DXM_FAULT_WRITE (1u << 0) /* the caller will write: refuse (-EPERM) a
				     range the CPU view cannot write */

/*
 * Bring [start, start+len) back to the CPU (like hmm_range_fault()): every
 * exclusive page is invalidated (DXM_EVENT_CLEAR) and mapped again in every
 * CPU view.  If dev is not NULL, dev[i] receives the device-side address of
 * page i for an ordinary (non-exclusive) device access.  Returns the number
 * of pages or -errno.
 */
long dxm_range_fault(struct dxm_ctx *ctx, void *start, size_t len,
		     unsigned flags, void **dev);

/* ------------------------------------------------------------ device view */

/*
 * The device-side view of the whole region that holds addr: what a backend
 * imports once, before any conversion (VK_EXT_external_memory_host,
 * cudaHostRegister, an RDMA registration), and never revokes.  Every
 * address dxm_make_exclusive() returns for a page of that region lies in
 * [base, base+len); addr itself is base + offset there.  The view lives
 * until the region is gone (dxm_free, or the munmap of its last CPU view:
 * the devices are told DXM_EVENT_UNMAP first).  See dxm_device_view(3).
 */
enum dxm_device_view_kind {
	DXM_DEVVIEW_MEMFD = 1,	 /* dxm_alloc: a MAP_SHARED mapping of the
				    region's memfd, never registered with a
				    userfaultfd, never zapped */
	DXM_DEVVIEW_STAGING = 2, /* dxm_adopt: the staging area */
};

/* dxm_device_view.flags: what a backend must know about the view */
#define DXM_DEVVIEW_HOLES (1u << 0) /* a page is there only while a device
				       holds it (LOCKED, EXCLUSIVE or
				       INVALIDATING): touch nothing else */
#define DXM_DEVVIEW_REGISTERED (1u << 1) /* registered with dxm's userfaultfd:
					    a device access to a hole is a
					    fault that dxm's handler resolves
					    (reported as stale) */

/* dxm_device_view() flags */
#define DXM_DEVVIEW_FD (1u << 0) /* also a new descriptor of the memfd */

struct dxm_device_view {
	size_t sz;     /* filled: how much of this structure was written */
	void *base;    /* the view of the whole region */
	size_t len;    /* its length, the region's */
	size_t offset; /* addr's place in it (and in the memfd) */
	size_t psize;  /* the page size of the region */
	uint32_t kind; /* enum dxm_device_view_kind */
	uint32_t flags; /* DXM_DEVVIEW_HOLES, DXM_DEVVIEW_REGISTERED */
	int fd;	       /* DXM_DEVVIEW_FD: the memfd (O_CLOEXEC; the caller
			  closes it), base at offset 0; else -1 */
};

int dxm_device_view(struct dxm_ctx *ctx, const void *addr, unsigned flags,
		    struct dxm_device_view *dv, size_t size);

/* ------------------------------------------------------------- statistics */

#define DXM_STATS_HIST 24 /* buckets of the histograms below */

struct dxm_stats {
	uint64_t conversions;	  /* dxm_make_exclusive calls that converted >= 1 page */
	uint64_t pages_converted; /* pages made exclusive */
	uint64_t pages_refused;	  /* pages returned as dev[i] == NULL */
	uint64_t cpu_faults;	  /* CPU faults resolved by the handler */
	uint64_t restores;	  /* exclusive pages given back to the CPU */
	uint64_t deferred_faults; /* faults that waited for an unlock/invalidation */
	uint64_t notifier_calls;  /* invalidate callbacks run */
	uint64_t notifier_ns;	  /* time spent in them */
	uint64_t events_unmap;	  /* UNMAP events handled */
	uint64_t events_remap;	  /* REMAP events handled */
	uint64_t regions;	  /* live regions */
	uint64_t managed_pages;	  /* pages in live regions (a huge page
				     counts once) */
	uint64_t metadata_bytes;  /* page-state bytes for them */
	uint32_t uffd_mode;	  /* enum dxm_uffd_mode */
	uint32_t handler_threads;
	uint64_t uffd_features;	  /* UFFD_FEATURE_* enabled on the userfaultfd */
	uint64_t uffd_anon_features; /* ... on the one for adopted memory (0:
					no dxm_adopt on this kernel) */
	uint64_t events_remove;	  /* MADV_DONTNEED/FREE on adopted memory */
	uint64_t forks;		  /* fork()s that restored private pages */
	uint64_t stale_device_faults; /* a device touched a staging page after
					 its invalidation returned: a driver
					 bug, reported */
	uint64_t watchdog_reports; /* a callback running, or a fault waiting,
				      longer than $DXM_WATCHDOG_MS (5 s) */
	/* Histograms of the restores (pages given back to the CPU at once:
	 * a fault, dxm_range_fault, a fork...), in power-of-two buckets:
	 * [0] under 1, [i] from 2^(i-1) to under 2^i, the last one open.
	 * A restore enters them once its pages are mapped, which may be
	 * just after the access it resolved went on. */
	uint64_t restore_us[DXM_STATS_HIST]; /* by the time one took,
						notifiers included, in us */
	uint64_t restore_pages[DXM_STATS_HIST]; /* by its pages ([1]: one) */
	uint64_t pages_ahead; /* of restores, the pages given back ahead of a
				 sequential reader (restore-around) */
};

int dxm_stats(struct dxm_ctx *ctx, struct dxm_stats *st, size_t size);

/* ------------------------------------------------------------- the kernel */

/* dxm_features.flags: what works here, for this process */
#define DXM_FEAT_KERNEL_FAULTS (1u << 0) /* system calls on exclusive pages
					    are resolved: uffd_mode is not
					    DXM_UFFD_USER_ONLY */
#define DXM_FEAT_ADOPT (1u << 1) /* dxm_adopt works (UFFD_FEATURE_MOVE) */
#define DXM_FEAT_SIGBUS (1u << 2) /* DXM_CTX_SIGBUS (UFFD_FEATURE_SIGBUS) */
#define DXM_FEAT_FORK_EVENTS (1u << 3) /* UFFD_FEATURE_EVENT_FORK granted for
					  adopted memory: a raw clone is
					  repaired (needs CAP_SYS_PTRACE) */

/* What a context created now without options would get (dxm_probe(3)). */
struct dxm_features {
	size_t sz;		     /* filled: how much of this structure was
					written */
	uint32_t uffd_mode;	     /* enum dxm_uffd_mode, as in dxm_stats */
	uint32_t flags;		     /* DXM_FEAT_* */
	uint64_t uffd_features;	     /* as dxm_stats.uffd_features */
	uint64_t uffd_anon_features; /* as dxm_stats.uffd_anon_features (0: no
					dxm_adopt) */
	uint64_t uffd_offered;	     /* every UFFD_FEATURE_* the kernel offers
					in uffd_mode */
	uint32_t handler_threads;    /* as dxm_stats.handler_threads: 1 or
					$DXM_HANDLER_THREADS */
	uint32_t reserved;	     /* 0 */
};

/* Probe the kernel without a context (opens and closes userfaultfds). */
int dxm_probe(struct dxm_features *f, size_t size);

/* ------------------------------------------------------------------ names */

/*
 * Short fixed names, for messages and scripts; "unknown" for a value this
 * version does not know, never NULL.  See dxm_event_str(3).
 */
const char *dxm_event_str(enum dxm_event event); /* "clear", "exclusive",
						    "unmap", "protection",
						    "fork", "remap" */
const char *dxm_uffd_mode_str(enum dxm_uffd_mode mode); /* "dev", "syscall",
							   "user-only" */
/* The resolution mode that DXM_CTX_* flags choose: "thread", "spin",
 * "sigbus" (DXM_CTX_SIGBUS wins); "unknown" for flags dxm_ctx_create
 * refuses. */
const char *dxm_resolution_str(unsigned ctx_flags);
/* The kernel's name of one UFFD_FEATURE_* bit: "UFFD_FEATURE_MOVE". */
const char *dxm_uffd_feature_str(uint64_t feature);

/* ---------------------------------------------------------------- logging */

enum dxm_log_level {
	DXM_LOG_ERROR,
	DXM_LOG_WARN,
	DXM_LOG_INFO,
	DXM_LOG_DEBUG,
};

typedef int (*dxm_print_fn)(enum dxm_log_level level, const char *fmt,
			    va_list ap);

/* Returns the previous function; NULL silences the library. */
dxm_print_fn dxm_set_print(dxm_print_fn fn);

#ifdef __cplusplus
}
#endif

#endif /* DXM_H */
