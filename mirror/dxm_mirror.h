/* SPDX-License-Identifier: MIT */
/*
 * dxm_mirror - a software reference device built on dxm's public API only,
 * the way an outside driver would be (the counterpart of the kernel's
 * lib/test_hmm.c "dmirror").
 *
 * It keeps its own page table (CPU page address -> device-side address,
 * with READ/WRITE/ATOMIC tags) that its notifier erases, and an atomic
 * engine whose read-modify-write is NOT atomic with respect to the CPU (a
 * load, a pause, a store): it is only correct while the device holds the
 * page exclusive, which is what dxm is for.
 *
 * Page sizes: every operation works in the page size of the memory it
 * touches, dxm_page_size() at the start of its range: the base page, or
 * 2 MiB for a DXM_ALLOC_HUGE region.  There a page (an entry, what is
 * taken exclusive, what a CPU access takes back) is the whole huge page:
 * ranges must be whole huge pages (2 MiB aligned, else -EINVAL), counts
 * are of huge pages, and a word's atomic takes its whole huge page.  A
 * range that runs from huge pages into memory of another page size is
 * -EINVAL (from base pages into another region, dxm's -EFAULT: a range
 * lies in one view).  Memory dxm does not manage is taken in base pages
 * (and dxm refuses it, as before).
 *
 * All functions return 0 (or a count) on success and a negative errno.
 */
#ifndef DXM_MIRROR_H
#define DXM_MIRROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dxm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dxm_mirror;

struct dxm_mirror_stats {
	uint64_t invalidations;	    /* notifier calls that erased entries */
	uint64_t entries_erased;
	uint64_t exclusive_calls;   /* dxm_make_exclusive calls */
	uint64_t exclusive_retries; /* read_retry said "again" */
	uint64_t faults;	    /* dxm_range_fault calls */
	uint64_t atomics;	    /* atomic_add operations done */
	uint64_t stale_accesses;    /* device accesses to a page dxm no longer
				       held exclusive: must stay 0 */
};

int dxm_mirror_create(struct dxm_ctx *ctx, struct dxm_mirror **mp);
void dxm_mirror_destroy(struct dxm_mirror *m);

/* Ordinary device access to [addr, addr+len) (whole pages of the memory's
 * page size). */
int dxm_mirror_read(struct dxm_mirror *m, void *addr, void *buf, size_t len);
int dxm_mirror_write(struct dxm_mirror *m, void *addr, const void *buf,
		     size_t len);

/*
 * Take [addr, addr+len) exclusive (nouveau's loop: read_begin ->
 * dxm_make_exclusive -> lock -> read_retry -> map ATOMIC -> unlock ->
 * dxm_exclusive_unlock).  0 if every page is now held exclusive, -EBUSY if
 * some could not be (the others are held), -EPERM if not writable, -EINVAL
 * if not whole pages (huge pages: 2 MiB aligned).
 */
int dxm_mirror_exclusive(struct dxm_mirror *m, void *addr, size_t len);

/* Pages of [addr, addr+len) the device still holds exclusive (0: none),
 * counted in the memory's page size (a huge page counts once). */
long dxm_mirror_check_exclusive(struct dxm_mirror *m, void *addr, size_t len);

/* Device atomic on a 64-bit word: takes the page exclusive if needed (the
 * whole huge page that holds it, on huge pages), then a non-atomic
 * load/pause/store.  *old (if not NULL) gets the value before. */
int dxm_mirror_atomic_add(struct dxm_mirror *m, uint64_t *addr, uint64_t delta,
			  uint64_t *old);

/* The same read-modify-write through an ordinary (non-exclusive) device
 * access: races with the CPU and loses updates.  For demonstrations. */
int dxm_mirror_racy_add(struct dxm_mirror *m, uint64_t *addr, uint64_t delta);

/* Instrumentation (on by default): before each atomic, ask dxm whether it
 * still holds the page (dxm_check_exclusive) and count stale_accesses.  A
 * benchmark of the steady state turns it off: it is the test's cost, not
 * the device's. */
void dxm_mirror_set_checks(struct dxm_mirror *m, bool on);

/* Drop every entry (like a device TLB flush). */
void dxm_mirror_flush(struct dxm_mirror *m);

void dxm_mirror_get_stats(struct dxm_mirror *m, struct dxm_mirror_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* DXM_MIRROR_H */
