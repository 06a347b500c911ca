/* SPDX-License-Identifier: MIT */
/*
 * dxm_driver - the device-independent half of the GPU backends
 * (backends/cuda, backends/vulkan): internal, linked into both, neither
 * installed nor a public API.  See dxm_driver.c for the locking rules.
 *
 * A backend embeds struct dxm_drv first in its own, fills a struct
 * dxm_drv_ops with what only it can do (register host memory with the
 * device, launch a kernel with a fence after it, query and free that
 * fence, wait for the device), and maps its public calls onto the
 * dxm_drv_* functions below.  Its imports and work in flight are its own
 * structs, each beginning with struct dxm_drv_import or struct
 * dxm_drv_work (ops.import_size, ops.work_size: the driver allocates
 * them, zeroed).
 */
#ifndef DXM_DRIVER_H
#define DXM_DRIVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dxm.h"

struct dxm_drv;

/* A registered device view (or, unmanaged, a program's buffer). */
struct dxm_drv_import {
	void *base;
	size_t len;
	uintptr_t cpu_lo, cpu_hi; /* CPU addresses dispatched through it */
	bool dead;		  /* its region is being unmapped */
	bool unmanaged;
	unsigned users; /* unmanaged: work in flight on it */
	struct dxm_drv_import *next;
};

/* A launch: done once its fence is, in launch order. */
struct dxm_drv_work {
	uint64_t value; /* d->completed reaches it once the work is done */
	uintptr_t start, end;	    /* the CPU range it holds */
	struct dxm_drv_import *own; /* unmanaged: released with the work */
	struct dxm_drv_work *next;
};

/* What the backends' public stats have in common: the fields of
 * dxm_vk_stats and dxm_cuda_stats, which say what each counts. */
struct dxm_drv_stats {
	uint64_t dispatches, retries, busy_retries, imports;
	uint64_t invalidations, invalidate_wait_ns;
	bool lost;
};

/* The common fields of *dst (a dxm_vk_stats, a dxm_cuda_stats) from
 * *src. */
#define DXM_DRV_STATS_COPY(dst, src)                                           \
	do {                                                                   \
		(dst)->dispatches = (src)->dispatches;                         \
		(dst)->retries = (src)->retries;                               \
		(dst)->busy_retries = (src)->busy_retries;                     \
		(dst)->imports = (src)->imports;                               \
		(dst)->invalidations = (src)->invalidations;                   \
		(dst)->invalidate_wait_ns = (src)->invalidate_wait_ns;         \
		(dst)->lost = (src)->lost;                                     \
	} while (0)

/*
 * What the backend does.  "Locked": called with d->lock held, and must
 * not call dxm or sleep on the device; the others without it.
 */
struct dxm_drv_ops {
	const char *prefix; /* of the messages on stderr: "dxm_vk" */
	size_t import_size; /* the backend's struct import */
	size_t work_size;   /* the backend's struct work */
	bool refuse_holes;  /* device views with DXM_DEVVIEW_HOLES are
			       -EOPNOTSUPP (the device pins a whole
			       registration) */
	/* Select the device for the calling thread (NULL: nothing to do):
	 * first in every entry point and in the invalidate callback. */
	void (*use)(struct dxm_drv *d);
	/* Locked.  Register [im->base, +im->len) with the device; on
	 * failure nothing is left registered. */
	int (*import)(struct dxm_drv *d, struct dxm_drv_import *im);
	/* Locked.  Undo import(); nothing in flight uses it. */
	void (*unimport)(struct dxm_drv *d, struct dxm_drv_import *im);
	/*
	 * Locked.  Launch kernel on [off, off+len) of im, with push and
	 * groups, and a fence after it that signals w->value (set; the
	 * next value of the driver's counter): in order after every
	 * earlier launch.  On failure nothing of w is left to free; a
	 * device found lost sets d->st.lost.
	 */
	int (*launch)(struct dxm_drv *d, void *kernel,
		      struct dxm_drv_import *im, size_t off, size_t len,
		      const void *push, const uint32_t groups[3],
		      struct dxm_drv_work *w);
	/* Locked.  Whether w's fence is done: 1, 0, or < 0: the device is
	 * lost (saying why on stderr if it should). */
	int (*done)(struct dxm_drv *d, struct dxm_drv_work *w);
	/* Locked.  Free what launch() made for w (its fence is done, or the
	 * device idle). */
	void (*work_fini)(struct dxm_drv *d, struct dxm_drv_work *w);
	/* Wait until the fence of value is done: 0, -ETIMEDOUT, or another
	 * error: the device is lost.  NULL: the driver polls done(). */
	int (*wait)(struct dxm_drv *d, uint64_t value, uint64_t timeout_ns);
	/* Wait for all the device's work, even after it was lost, selecting
	 * the device for the calling thread if it must (nothing to do if
	 * the device was never set up). */
	void (*idle)(struct dxm_drv *d);
};

struct dxm_drv {
	const struct dxm_drv_ops *ops;
	struct dxm_ctx *ctx;
	size_t psize;
	uint64_t timeout_ns;
	char name[256]; /* the device's */
	struct dxm_notifier *all;

	pthread_mutex_t lock;
	struct dxm_drv_import *imports;
	struct dxm_drv_work *inflight; /* oldest first */
	uint64_t next_value, completed;
	struct dxm_drv_stats st;
};

/* Set up d (zeroed by the caller); timeout_ms 0: 10 s. */
void dxm_drv_init(struct dxm_drv *d, const struct dxm_drv_ops *ops,
		  struct dxm_ctx *ctx, unsigned timeout_ms);
/* Once the device is set up: the notifier on the whole address space. */
int dxm_drv_start(struct dxm_drv *d);
/* Wait for the device (ops->idle), then free everything of d's. */
void dxm_drv_fini(struct dxm_drv *d);

/* The backends' public calls, without their own checks. */
int dxm_drv_dispatch(struct dxm_drv *d, void *kernel, void *addr, size_t len,
		     const void *push, const uint32_t groups[3], bool unmanaged,
		     uint64_t *ticket);
int dxm_drv_wait(struct dxm_drv *d, uint64_t ticket, uint64_t timeout_ns);
int dxm_drv_done(struct dxm_drv *d, uint64_t ticket);
void dxm_drv_get_stats(struct dxm_drv *d, struct dxm_drv_stats *st);

/* snprintf into buf (opts->why) if there is one. */
void dxm_drv_why(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif /* DXM_DRIVER_H */
