/*
 * teardown.pml - dxm_free of adopted memory against the operations inside
 * the region: the teardown rule (src/region.c, "The teardown rule").
 *
 * One page of an adopted (REGION_ANON) region with its one CPU view.  The
 * page's data is a counter: the program wrote 1 before the run, and every
 * increment adds one.  It lives either in the CPU view (cpu_present) or in
 * the staging slot (stg_present); UFFDIO_MOVE carries it from one to the
 * other.  At the end, dxm_free over, the counter must be in the CPU view
 * with every increment in it.
 *
 * Actors (names of the C functions they run):
 *   Device    dxm_make_exclusive (begin(): dxmi_region_enter; CAS -> PS_LOCKED;
 *             anon_move_out: the data to staging), one device access of
 *             staging, dxm_exclusive_unlock (-> PS_EXCLUSIVE)
 *   Restorer  dxmi_pages_to_cpu(PTC_INVALIDATE | PTC_WAIT) inside the region:
 *             the fork prepare handler's restore_for_fork, dxm_mprotect to
 *             a read-only protection, dxm_range_fault.  EXCLUSIVE ->
 *             INVALIDATING, notifiers, invalidated() -> CPU|MAPPING,
 *             anon_move_in (into every view of the table), mapping_done()
 *             (a refused move on a handler: not_invalidated(), re-queued)
 *   Freer     dxm_free -> free_region: dxmi_region_kill (R_DYING),
 *             dxmi_region_wait_quiet, detach_range, gone_piece (notifiers,
 *             anon_hand_back of every page that is not PS_CPU,
 *             dxmi_uffd_unregister), teardown_finish (-> PS_CPU,
 *             fault_forget_region)
 *   Cpu       a program thread: one increment of the counter (lock add);
 *             a hole in the registered view is a userfaultfd fault
 *   Handler   the fault handler thread: read() of the queued messages and
 *             events, dxmi_fault_resolve (dxmi_region_lookup, dxmi_region_enter or
 *             defer_dying, resolve), dxmi_fault_drain_ready (the ready list,
 *             finish_restore of a re-queued restore)
 *   Env       (EAGAIN=1) another mapping's munmap or MADV_DONTNEED queues
 *             an event on uffd_anon: until a handler reads it, every
 *             UFFDIO_MOVE/ZEROPAGE on uffd_anon fails with EAGAIN
 *
 * Switches (spin -DNAME[=value]):
 *   EAGAIN=0|1             the Env event (default 1)
 *   SIGS=n                 signals that may wake the Cpu thread early, so
 *                          that it retries its access (default 1)
 *   RESTORER=0|1           start the Restorer (default 1)
 *   BUG_DETACH_FIRST       mutant: dxm_free detaches the view before it
 *                          waits for the users (the old order)
 *   BUG_RESTORER_OUTSIDE   mutant: dxmi_pages_to_cpu's caller does not
 *                          dxmi_region_enter (the old fork prepare handler)
 *   BUG_REQUEUE_OUTSIDE    mutant: a restore the handler re-queues leaves
 *                          the region (fault.c keeps it inside with
 *                          dxmi_region_hold until finish_restore is done)
 *   FIX_WAIT_DYING         another fix of BUG_REQUEUE_OUTSIDE, not taken:
 *                          dxmi_pages_to_cpu(PTC_WAIT) stops waiting
 *                          for a page once the region is dying
 *   BUG_MOVE_FIRST         mutant: a handler's restore moves the page back
 *                          while it is still INVALIDATING (the order
 *                          before 2026-12-05, fuzz: anon-held-window): an
 *                          access completes while the page reads as held
 *   RESTORER_ON_HANDLER    the Restorer runs on a handler thread (a fork,
 *                          or dxm_mprotect, from a driver's callback):
 *                          anon_move_in returns -EAGAIN, which flush_run
 *                          ignores
 * README.md maps every name to the C code and lists the abstractions.
 */

#ifndef EAGAIN
#define EAGAIN 1
#endif
#ifndef RESTORER
#define RESTORER 1
#endif
#ifndef SIGS
#define SIGS 1
#endif

/* ------------------------------------------------------- src/pstate.h */
#define PS_CPU          0
#define PS_LOCKED       1
#define PS_EXCLUSIVE    2
#define PS_INVALIDATING 3
#define PS_STATE_MASK   3
#define PS_MAPPING      4
#define PS_WAITERS      8
#define ps_state(s)     ((s) & PS_STATE_MASK)

/* ------------------------------------------------------- src/region.c */
#define R_DYING 128     /* R_DYING (1u << 31)                              */

byte st = PS_CPU;       /* r->st[pg]                                       */
byte users;             /* r->users: operations inside, | R_DYING          */
bit  view = 1;          /* r->views: the CPU view is in ctx->vt            */
bit  registered = 1;    /* the view is registered with uffd_anon (kernel)  */
bit  forgotten;         /* r->forgotten (fault_forget_region)              */

/* ---------------------------------------------------------- the data */
bit  cpu_present = 1;   /* the CPU view has a page (else a hole)           */
byte cpu_val = 1;       /* its counter                                     */
bit  stg_present;       /* the staging slot has a page                     */
byte stg_val;
byte incs;              /* ghost: increments completed                     */
bit  dev_ok;            /* ghost: the device may access its page (it holds */
                        /* it, no invalidate callback since)               */

/* -------------------------------------------------------- userfaultfd */
bit  ev_unread;         /* an event on uffd_anon not read yet: EAGAIN      */
bit  pending;           /* the Cpu thread's fault message, not read yet    */
bit  waiting;           /* the Cpu thread sleeps in handle_userfault()     */
byte sigs;              /* signals that woke it early (up to SIGS)         */

/* ---------------------------------------------------------- fault.c */
byte ndeferred;         /* ctx->deferred: fault records                    */
byte nready;            /* ctx->ready: fault records                       */
byte nrestore;          /* ctx->ready: re-queued restores (f->restore)     */

byte finished;          /* Device, Restorer, Freer, Cpu done               */

/* UFFDIO_MOVE (without DONTWAKE), UFFDIO_ZEROPAGE, dxmi_uffd_wake, unregister:
 * the waiting thread wakes; its unread message leaves the queue. */
#define WAKE waiting = 0; pending = 0

/*
 * Invariants, asserted after every step that changes st or the data:
 *  - the data is never in two places (a page in the CPU view and one in
 *    staging: one of them is a zero page the kernel or dxm made up);
 *  - a page whose data is in staging is not the CPU's: PS_CPU without
 *    PS_MAPPING (the one who maps it has moved it in); anon_hand_back
 *    skips PS_CPU pages, so such data would be lost.
 */
#define INV_ONE_COPY    (!(cpu_present && stg_present))
#define INV_STAGED      (!stg_present || ps_state(st) != PS_CPU || (st & PS_MAPPING))
#define CHECK_INV       assert(INV_ONE_COPY); assert(INV_STAGED)

/* region.c dxmi_region_enter(): fetch_add; if R_DYING was set, dxmi_region_exit()
 * (the transient count only delays dxmi_region_wait_quiet: one step here) */
inline dxmi_region_enter(ok)
{
	atomic {
		if
		:: users & R_DYING -> ok = 0
		:: else -> users++; ok = 1
		fi
	}
}

/* region.c dxmi_region_exit() (the last one out of a munmapped region hands
 * it to a handler: no munmap here) */
inline dxmi_region_exit()
{
	users--
}

/* fault.c fault_release_waiters() + dxmi_ctx_kick() */
inline release_waiters()
{
	atomic { nready = nready + ndeferred; ndeferred = 0; assert(nready < 8) }
}

/* fault.c mapping_done(): fetch_and ~(MAPPING|WAITERS), release */
inline mapping_done()
{
	atomic { s = st; st = st & ~(PS_MAPPING | PS_WAITERS); CHECK_INV };
	if
	:: s & PS_WAITERS -> release_waiters()
	:: else
	fi;
	s = 0
}

/* fault.c invalidated(): INVALIDATING -> CPU|MAPPING, keeping WAITERS.
 * Before the move (anon.c anon_restore, restore_one): no access completes
 * while the page still reads as held (the Cpu's assertion). */
inline invalidated()
{
	atomic { st = PS_CPU | PS_MAPPING | (st & PS_WAITERS); CHECK_INV }
}

/* pstate.c dxmi_ps_not_invalidated(): the move was refused for now (EAGAIN):
 * CPU|MAPPING -> INVALIDATING, keeping WAITERS, the data still staged */
inline not_invalidated()
{
	atomic { st = PS_INVALIDATING | (st & PS_WAITERS); CHECK_INV }
}

/* A restore on a handler thread (anon_restore, restore_one): given back,
 * then moved; refused: INVALIDATING again and re-queued.  BUG_MOVE_FIRST:
 * the old order, the move while still INVALIDATING. */
inline restore_handler()
{
#ifndef BUG_MOVE_FIRST
	invalidated();
	move_in_handler();
	if
	:: !moved -> not_invalidated(); requeue_restore()
	:: else -> mapping_done(); atomic { WAKE }
	fi
#else
	move_in_handler();
	if
	:: !moved -> requeue_restore()
	:: else -> invalidated(); mapping_done(); atomic { WAKE }
	fi
#endif
}

/* anon.c move_in_page(): UFFDIO_MOVE staging -> CPU view.  A hole in
 * staging moves nothing (ALLOW_SRC_HOLES); EEXIST (the view has a page):
 * the staged one is dropped; then anon_discard of staging. */
inline move_page_in(wake)
{
	if
	:: cpu_present -> skip
	:: !cpu_present && stg_present -> cpu_present = 1; cpu_val = stg_val
	:: else
	fi;
	stg_present = 0; stg_val = 0;
	if
	:: wake -> WAKE
	:: else
	fi
}

/* anon.c anon_move_in() on a thread that is not a handler: under vt_lock
 * (read), the move into every view of r->views (none: nothing moves, no
 * error); EAGAIN: drop vt_lock, nap, again (blocked until the event is
 * read). */
inline move_in_waiting()
{
	atomic {
		!ev_unread ->
		if
		:: view -> move_page_in(1)
		:: else
		fi;
		CHECK_INV
	}
}

/* anon.c anon_move_in() on a handler thread (DONTWAKE): EAGAIN is
 * returned (moved = 0), never waited for. */
inline move_in_handler()
{
	atomic {
		if
		:: ev_unread -> moved = 0
		:: else ->
			moved = 1;
			if
			:: view -> move_page_in(0)
			:: else
			fi;
			CHECK_INV
		fi
	}
}

/* fault.c defer_dying(): queued on ctx->deferred until the teardown
 * releases it; if it is over (forgotten), woken at once. */
inline defer_dying()
{
	atomic {
		if
		:: forgotten -> WAKE
		:: else -> ndeferred++
		fi
	}
}

/* fault.c requeue_restore(): the page is INVALIDATING, its data in
 * staging; a record on ctx->ready is tried again after the handler read
 * its events. */
inline requeue_restore()
{
	atomic {
#ifndef BUG_REQUEUE_OUTSIDE
		users++;        /* stays inside (cannot fail: we are inside) */
#endif
		nrestore++
	}
}

/*
 * fault.c resolve() on a handler thread (each load + CAS one step, as in
 * dxm.pml), for an adopted page.
 */
inline resolve()
{
	atomic {
		if
		:: ps_state(st) == PS_CPU && !(st & PS_MAPPING) ->
			st = st | PS_MAPPING; s = 1
		:: ps_state(st) == PS_EXCLUSIVE ->
			st = PS_INVALIDATING | (st & PS_WAITERS); s = 2
		:: else ->      /* LOCKED, INVALIDATING, CPU|MAPPING */
			/* try_defer(): under defer_mtx, r->forgotten, else
			 * CAS s -> s|PS_WAITERS and queue */
			if
			:: forgotten -> s = 4
			:: else -> st = st | PS_WAITERS; ndeferred++; s = 3
			fi
		fi;
		CHECK_INV
	};
	if
	:: s == 1 ->
		/* map_page(): a page the CPU never had: anon_zero_fill()
		 * (UFFDIO_ZEROPAGE/COPY; EEXIST, or EAGAIN 1000 times on
		 * this handler: dxmi_uffd_wake only, the thread faults again) */
		atomic {
			if
			:: !cpu_present && !ev_unread -> cpu_present = 1; cpu_val = 0
			:: else
			fi;
			WAKE; CHECK_INV
		};
		mapping_done()
	:: s == 2 ->
		dev_ok = 0;     /* dxmi_notify_region_pages(DXM_EVENT_CLEAR) */
		restore_handler()
	:: s == 3 -> skip
	:: s == 4 -> atomic { WAKE }
	fi;
	s = 0
}

/* fault.c dxmi_fault_resolve(): dxmi_region_lookup (vt_lock read), then inside the
 * region resolve(), or defer_dying(); no view: wake_any() */
inline dxmi_fault_resolve()
{
	if
	:: view ->
		dxmi_region_enter(ok);
		if
		:: ok -> resolve(); dxmi_region_exit()
		:: else -> defer_dying()
		fi
	:: else -> atomic { WAKE }
	fi
}

/* fault.c finish_restore(): a re-queued restore */
inline finish_restore()
{
#ifdef BUG_REQUEUE_OUTSIDE
	dxmi_region_enter(ok);
#else
	ok = 1;         /* still inside since requeue_restore() */
#endif
	if
	:: !ok -> defer_dying()
	:: else ->
		restore_handler();
		dxmi_region_exit()
	fi
}

/* ------------------------------------------------------------- actors */

proctype Handler()
{
	byte s;
	bit ok, moved;
end_idle:
	do
	:: atomic {     /* handle_batch(): read() takes every message */
		(pending || ev_unread) ->
		s = pending; pending = 0; ev_unread = 0
	   };
		if
		:: s -> s = 0; dxmi_fault_resolve()
		:: else
		fi
	:: atomic { nready > 0 -> nready-- };   /* dxmi_fault_drain_ready() */
		dxmi_fault_resolve()
	:: atomic { nrestore > 0 -> nrestore-- };
		finish_restore()
	od
}

proctype Cpu()
{
	do
	/* An access completes on a mapped page: never one whose callbacks
	 * ran while dxm_check_exclusive still says "held" (INVALIDATING:
	 * dxm_check_exclusive(3); once dxm_free began, it says "not held"). */
	:: atomic { cpu_present ->
		    assert(ps_state(st) != PS_INVALIDATING || (users & R_DYING));
		    cpu_val++; incs++ }; break
	:: atomic {     /* a hole in a registered view: a fault */
		!cpu_present && registered -> pending = 1; waiting = 1
	   };
		if
		:: !waiting
		:: atomic { waiting && sigs < SIGS -> WAKE; sigs++ }
			/* a signal: the thread retries early */
		fi
	:: atomic {     /* unregistered: the kernel's own zero page */
		!cpu_present && !registered -> cpu_present = 1; cpu_val = 0; CHECK_INV
	   }
	od;
	finished++
}

proctype Device()
{
	bit ok, got, need;
	byte s;
	dxmi_region_enter(ok);       /* begin() (dxmi_fork_enter: not modelled) */
	if
	:: !ok -> goto out      /* -EFAULT */
	:: else
	fi;
	/* dxm_make_exclusive(), one page: wait while CPU|MAPPING, refuse
	 * LOCKED and INVALIDATING, CAS CPU/EXCLUSIVE -> LOCKED */
	atomic {
		!(ps_state(st) == PS_CPU && (st & PS_MAPPING)) ->
		if
		:: ps_state(st) == PS_CPU || ps_state(st) == PS_EXCLUSIVE ->
			need = (ps_state(st) == PS_CPU); st = PS_LOCKED; got = 1
		:: else -> got = 0
		fi
	};
	/* dxmi_notify_region_pages(DXM_EVENT_EXCLUSIVE, owner): its own */
	if
	:: got && need ->
		/* anon_move_out(): under vt_lock (read), every view */
		if
		:: atomic {
			!ev_unread ->
			if
			:: view ->
				if
				:: cpu_present -> stg_val = cpu_val
				:: else -> stg_val = 0  /* a hole: zero page */
				fi;
				stg_present = 1; cpu_present = 0; cpu_val = 0;
				dev_ok = 1
			:: else
			fi;
			CHECK_INV
		   }
		:: atomic {     /* EAGAIN 1000 times: refuse(), -> CPU */
			ev_unread ->
			s = st; st = PS_CPU; got = 0; CHECK_INV
		   };
			if
			:: s & PS_WAITERS -> release_waiters()
			:: else
			fi;
			s = 0
		fi
	:: got && !need -> dev_ok = 1       /* already in staging */
	:: else
	fi;
	dxmi_region_exit();          /* end() */
	/* the driver's access to staging, until its callback */
	if
	:: atomic { dev_ok -> assert(stg_present); stg_val++; incs++ }
	:: skip
	fi;
	/* dxm_exclusive_unlock() (outside the region): CAS LOCKED ->
	 * EXCLUSIVE, release if PS_WAITERS; any other state: "not locked" */
	if
	:: got ->
		atomic {
			s = st;
			if
			:: ps_state(st) == PS_LOCKED -> st = PS_EXCLUSIVE
			:: else -> s = 0
			fi;
			CHECK_INV
		};
		if
		:: s & PS_WAITERS -> release_waiters()
		:: else
		fi
	:: else
	fi;
out:
	finished++
}

proctype Restorer()
{
	byte s;
	bit ok = 1, moved;
#ifndef BUG_RESTORER_OUTSIDE
	dxmi_region_enter(ok);
#endif
	if
	:: ok ->
		/* dxmi_pages_to_cpu(PTC_INVALIDATE | PTC_WAIT), one page */
		do
		:: atomic {
			ps_state(st) == PS_CPU && !(st & PS_MAPPING) ->
			st = st | PS_MAPPING; s = 1
		   }; break
		:: atomic {
			ps_state(st) == PS_EXCLUSIVE ->
			st = PS_INVALIDATING; s = 2
		   }; break
		/* LOCKED, INVALIDATING, CPU|MAPPING: nap, look again */
#ifdef FIX_WAIT_DYING
		:: atomic { (users & R_DYING) -> s = 0 }; break
#endif
		od;
		/* flush_run() */
		if
		:: s == 2 ->
			dev_ok = 0;     /* dxmi_notify_region_pages(ev) */
			/* given back (invalidated()), then moved back */
#ifndef RESTORER_ON_HANDLER
			invalidated();
			move_in_waiting()
#else
			/* on a handler thread anon_move_in returns -EAGAIN
			 * instead of waiting: the page is INVALIDATING again
			 * and its restore re-queued (no mapping_done) */
			invalidated();
			move_in_handler();
			if
			:: moved -> skip
			:: else -> not_invalidated(); requeue_restore(); s = 0
			fi
#endif
		:: else
		fi;
		if
		:: s != 0 -> mapping_done()
		:: else
		fi;
#ifndef BUG_RESTORER_OUTSIDE
		dxmi_region_exit()
#else
		skip
#endif
	:: else
	fi;
	finished++
}

proctype Freer()
{
	/* dxm_free: dxmi_fork_enter (not modelled); free_region(): */
	users = users | R_DYING;        /* dxmi_region_kill() */
#ifndef BUG_DETACH_FIRST
	users == R_DYING;               /* dxmi_region_wait_quiet() */
#endif
	view = 0;                       /* detach_range() (gate, vt_lock write) */
#ifdef BUG_DETACH_FIRST
	users == R_DYING;               /* BUG: waits only now */
#endif
	/* gone_piece(): dxmi_notify_range(DXM_EVENT_UNMAP), the device lets go */
	dev_ok = 0;
	/* anon_hand_back(): every page that is not PS_CPU, from staging into
	 * the (detached, still registered) view; EAGAIN: nap, again */
	if
	:: ps_state(st) != PS_CPU ->
		atomic { !ev_unread -> move_page_in(1) };
		atomic { st = PS_CPU; CHECK_INV }
	:: else
	fi;
	atomic { registered = 0; WAKE };        /* dxmi_uffd_unregister() */
	/* teardown_finish() */
	atomic { st = PS_CPU; CHECK_INV };
	atomic {        /* fault_forget_region() */
		forgotten = 1; nready = nready + ndeferred; ndeferred = 0
	};
	finished++
}

init
{
	atomic {
		run Handler();
		run Cpu();
		run Device();
#if RESTORER
		run Restorer();
#endif
		run Freer()
	};
#if EAGAIN
	/* Env: at any time, one event queued on uffd_anon */
	if
	:: ev_unread = 1
	:: skip
	fi;
#endif
	finished == 3 + RESTORER;
	/* dxm_free is over: the counter is in the CPU view, all of it */
	assert(cpu_present && cpu_val == 1 + incs)
}
