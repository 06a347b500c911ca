/* SPDX-License-Identifier: MIT */
/*
 * Page state: one byte per page of a region, shared by every CPU view
 * (alias) of that page.  The life cycle (docs/design.md, model/ uses the same
 * names):
 *
 *   CPU --make_exclusive--> LOCKED --exclusive_unlock--> EXCLUSIVE
 *    ^                        | CPU fault: deferred          | CPU fault, range_fault,
 *    |                        v until unlock                 v unmap
 *    +---- mapping restored <-- INVALIDATING (notifiers run, then restore)
 *
 * Byte layout:
 *   bits 0-1  state (PS_CPU, PS_LOCKED, PS_EXCLUSIVE, PS_INVALIDATING)
 *   bit  2    PS_MAPPING: only with PS_CPU. A thread owns the right to map
 *             the page into CPU views (UFFDIO_CONTINUE, UFFDIO_MOVE) and is
 *             doing so.  An adopted page's data may still be in staging.
 *             make_exclusive does not convert a page with this bit set: it
 *             waits for the bit to clear, so its zap always comes after the
 *             mapping and no mapping can appear behind a conversion.
 *   bit  3    PS_WAITERS: a fault on this page was deferred (see pstate.c);
 *             whoever moves the page out of LOCKED/INVALIDATING/MAPPING
 *             must hand the deferred faults back to the handler.
 *   bits 4-7  the owner's tag while LOCKED or EXCLUSIVE (exclusive.c; 0:
 *             unknown): a fault may give back with its page the
 *             neighbours of the same owner (restore-around, fault.c).
 *
 * Every transition is a compare-and-swap on the byte, so each page has at
 * most one converter, one invalidator or one mapper at a time.  Who may do
 * which transition:
 *   CPU -> LOCKED                 make_exclusive (driver thread)
 *   EXCLUSIVE -> LOCKED           make_exclusive (a new owner takes it over)
 *   LOCKED -> EXCLUSIVE           exclusive_unlock
 *   EXCLUSIVE -> INVALIDATING     fault handler, range_fault, region teardown
 *   INVALIDATING -> CPU|MAPPING   the same thread, after the notifiers returned
 *                                 and before the mapping returns (so no CPU
 *                                 access completes while the page still
 *                                 reads as held: dxm_check_exclusive)
 *   CPU|MAPPING -> INVALIDATING   the same thread, when the kernel refused
 *                                 for now to move an adopted page back (its
 *                                 data is still staged; re-queued)
 *   CPU -> CPU|MAPPING -> CPU     whoever maps the page (handler, range_fault,
 *                                 alias creation)
 * PS_WAITERS is only set under ctx->defer_mtx (pstate.c).
 */
#ifndef DXM_PSTATE_H
#define DXM_PSTATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef _Atomic uint8_t dxm_pstate_t;

enum {
	PS_CPU = 0,
	PS_LOCKED = 1,
	PS_EXCLUSIVE = 2,
	PS_INVALIDATING = 3,
	PS_STATE_MASK = 3,
	PS_MAPPING = 1u << 2,
	PS_WAITERS = 1u << 3,
	PS_TAG_SHIFT = 4,
	PS_TAG_MASK = 0xf0,
	PS_NTAGS = 15, /* tags 1..15 */
};

static inline unsigned ps_tag(uint8_t s)
{
	return (s & PS_TAG_MASK) >> PS_TAG_SHIFT;
}

static inline unsigned ps_state(uint8_t s)
{
	return s & PS_STATE_MASK;
}

static inline uint8_t ps_load(dxm_pstate_t *p)
{
	return atomic_load_explicit(p, memory_order_acquire);
}

static inline bool ps_cas(dxm_pstate_t *p, uint8_t *old, uint8_t new)
{
	return atomic_compare_exchange_strong_explicit(
		p, old, new, memory_order_acq_rel, memory_order_acquire);
}

/*
 * True until the page is given back to the CPU: LOCKED, EXCLUSIVE, or
 * INVALIDATING (the notifiers are still running, so the device may still
 * be finishing an access; as in the kernel, whose exclusive entry stays in
 * place until the notifiers returned).
 */
static inline bool ps_is_exclusive(uint8_t s)
{
	return ps_state(s) != PS_CPU;
}

#endif /* DXM_PSTATE_H */
