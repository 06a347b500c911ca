/* SPDX-License-Identifier: MIT */
/*
 * Fault injection, for tests only: built with meson -Dfault_injection=true
 * (the macro DXM_FAULT_INJECTION); otherwise every site compiles to 0.
 *
 * DXM_INJECT="site=ERRNO/N,..." makes every N-th call at that site fail
 * with ERRNO instead of entering the kernel, e.g.
 *   DXM_INJECT="continue=EAGAIN/2,move=EAGAIN/3,read=EINTR/5"
 * Sites: continue, move, copy, zeropage, mmap, mremap, read, poll, and
 * two that delay by N milliseconds instead of failing: notify (each
 * callback: "notify=0/N"), resolve (each fault on a page the CPU owns,
 * between its lookup and its mapping: "resolve=0/N"), forkfix (a raw
 * fork's repair, before each region and before each page it copies) and
 * detach (a munmap's event, read, before its views leave the table) and
 * restored (a fault's restore, its data back in the CPU view, before the
 * page is done and its thread woken: "restored=0/N").
 * Any site delays so with errno 0: "continue=0/5" makes each
 * UFFDIO_CONTINUE wait 5 ms before it enters the kernel.
 * And moved ("moved=EEXIST/N"): every N-th UFFDIO_MOVE moves its first
 * page only and answers EEXIST, as Linux 6.18 does for a page under
 * migration (anon.c, moved_after_all).
 */
#ifndef DXM_INJECT_H
#define DXM_INJECT_H

enum inject_site {
	INJ_CONTINUE,
	INJ_MOVE,
	INJ_COPY,
	INJ_ZEROPAGE,
	INJ_MMAP,
	INJ_MREMAP,
	INJ_READ,
	INJ_POLL,
	INJ_NOTIFY,
	INJ_RESOLVE,
	INJ_FORKFIX,
	INJ_DETACH,
	INJ_MOVED,
	INJ_RESTORED,
	INJ_NSITES,
};

#ifdef DXM_FAULT_INJECTION
int inject(enum inject_site site);
#else
static inline int inject(enum inject_site site)
{
	(void)site;
	return 0;
}
#endif

#endif
