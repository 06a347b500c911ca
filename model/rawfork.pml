/*
 * rawfork.pml - the raw-fork repair (src/anon.c fix_child, fix_run,
 * fix_page) against the page's own life: a device that unlocks and takes
 * the page again, and CPU faults that another handler resolves.
 *
 * A fork that bypassed dxm's pthread_atfork handlers leaves the child a
 * hole where the parent's page was staged.  A handler thread reads the
 * UFFD_EVENT_FORK and copies the page into the child.  The stress tool
 * found (session 6, 620 s) the old repair copying a LOCKED page straight
 * from its staging slot (UFFDIO_COPY's source): the device unlocked, the
 * other handler gave the page back to the CPU, the slot was a hole, and
 * the copy's read of it was a fault on staging, from a handler thread,
 * which the other handler took for a driver's stale access (SIGBUS: the
 * process died).  A page given back before the repair looked at it was
 * left out, the child reading zero.
 *
 * Actors (one page; its data is 1, a hole reads 0):
 *   Device   holds the page LOCKED at the fork (staged); unlocks it; may
 *            take it again (CPU -> LOCKED, moved out) up to RETAKE times
 *            and unlock each time
 *   Cpu      CPU faults, resolved by the other handler: EXCLUSIVE ->
 *            INVALIDATING, callbacks, -> CPU with PS_MAPPING (given back:
 *            dxm_check_exclusive says no more), the page moved back (one
 *            step: UFFDIO_MOVE moves a page under the page-table locks),
 *            PS_MAPPING cleared
 *   Repair   the handler that read the fork event
 *
 * The repair now (fix_run, fix_page): a page the CPU's (no PS_MAPPING)
 * whose CPU-view page is not the parent's alone (pagemap) is left out:
 * the child shares it.  Else it reads the page without a fault, from
 * staging if the state says it is not the CPU's or being given back
 * (PS_MAPPING: still staged until its move), else (or if that read found
 * a hole) from the CPU view; each read is /proc/self/mem, which finds a hole
 * at once (EIO) and never waits for a handler: modelled as one atomic
 * look.  It tries TRIES times: a try fails only if the page moved between
 * its two reads, so a device and the CPU that pass the page back and
 * forth faster than the repair reads could starve it.  RETAKE + 1 tries
 * are enough here (--variants: RETAKE=3 with 2 tries is not); the C code
 * tries 8 times, each read a system call, each move a conversion with its
 * callbacks and a fault.
 *
 * Properties: the repair never reads a staging hole (the fault that a
 * handler would take for a driver's: assertion); once it is over, the
 * child has the page's data (assertion); no invalid end state.
 *
 * Switches:
 *   RETAKE=n           the device takes the page again n times (default 1)
 *   TRIES=n            the repair's tries (default RETAKE + 1)
 *   BUG_DIRECT_COPY    mutant: the old repair: a LOCKED page is copied
 *                      from staging without a hold (an EXCLUSIVE one is
 *                      held INVALIDATING meanwhile), a page the CPU has
 *                      again is left out
 *   BUG_STAGING_ONLY   mutant: the new reads, staging only (no fall back
 *                      to the CPU view)
 *   BUG_NO_MOVE_COUNT  mutant: the repair leaves out a hole the CPU's
 *                      without asking whether a move back came between
 *                      its pagemap read and its state read
 *   BUG_MAPPING_IS_CPU mutant: the repair takes a page given back but not
 *                      yet moved (CPU with PS_MAPPING) for the CPU's: its
 *                      CPU view is a hole, so it looks shared and is left
 *                      out
 */
#ifndef RETAKE
#define RETAKE 1
#endif
#ifndef TRIES
#define TRIES (RETAKE + 1)
#endif

mtype = { CPU, LOCKED, EXCLUSIVE, INVALIDATING };
mtype st = LOCKED;      /* the page state byte                             */
bit  mapping;           /* PS_MAPPING, with st == CPU                      */
byte moves;             /* r->in_begun, r->in_done (a move is one step)    */
bit  staged = 1;        /* where the data is: 1 staging, 0 the CPU view    */
bit  child_has;         /* the child's page is there (UFFDIO_COPY done)    */
bit  child_val;         /* what it reads                                   */
bit  repaired;          /* the repair is over                              */
byte retakes;
byte restores;

active proctype Device()
{
	st == LOCKED;
	st = EXCLUSIVE; /* dxm_exclusive_unlock */
end_dev:
	do
	:: atomic { retakes < RETAKE && st == CPU && !mapping -> st = LOCKED }
		/* dxm_make_exclusive */
		staged = 1;                           /* moved out */
		st = EXCLUSIVE;                       /* unlock */
		retakes++
	:: break
	od
}

active proctype Cpu()
{
end_cpu:
	do
	:: atomic { restores < RETAKE + 1 && st == EXCLUSIVE ->
			st = INVALIDATING }
		atomic { st = CPU; mapping = 1 };  /* invalidated() */
		atomic { staged = 0; moves++ }  /* moved back (anon_move_in) */
		mapping = 0; /* mapping_done() */
		restores++
	:: break
	od
}

active proctype Repair()
{
	bit got, v;
#ifdef BUG_DIRECT_COPY
	bit held;
	if
	:: atomic { st == EXCLUSIVE -> st = INVALIDATING; held = 1 }
	:: else
	fi;
	if
	:: held || st == LOCKED ->
		if
		:: staged ->             /* staged_page_exists */
			/* UFFDIO_COPY from the staging slot, a moment later */
			if
			:: staged -> v = 1; got = 1
			:: else ->
				/* a fault on staging from this handler: the
				 * other handler sees the page the CPU's */
				assert(st != CPU);
				v = 0; got = 1  /* a zero page */
			fi
		:: else
		fi
	:: else
	fi;
	if
	:: held -> st = EXCLUSIVE
	:: else
	fi;
#else
	byte tries, m0;
	bit from_stg, hole, still;
	/* fix_run: the count of moves back done, the pagemap, the state
	 * byte, the count of moves back begun.  A page present in the CPU
	 * view came back after the fork: the parent's alone, tried.  A hole
	 * the CPU's is taken for a page that is nowhere (never populated,
	 * or discarded) and left out, if no move back came in between. */
	m0 = moves;
	hole = staged;
	atomic {
#ifndef BUG_MAPPING_IS_CPU
		from_stg = (st != CPU || mapping)
#else
		from_stg = (st != CPU)
#endif
	};
#ifndef BUG_NO_MOVE_COUNT
	still = (moves == m0);
#else
	still = 1;
#endif
	if
	:: !from_stg && hole && still -> goto done      /* left out */
	:: else -> from_stg = from_stg || hole
	fi;
	do
	:: tries < TRIES ->
		if
		:: from_stg -> atomic { if :: staged -> v = 1; got = 1 :: else fi }
		:: else
		fi;
#ifndef BUG_STAGING_ONLY
		if
		:: !got -> atomic { if :: !staged -> v = 1; got = 1 :: else fi }
		:: else
		fi;
#endif
		if
		:: got -> break
		:: else -> from_stg = 1; tries++
		fi
	:: else -> break
	od;
#endif
	if
	:: got && !child_has -> child_has = 1; child_val = v
	:: else
	fi;
done:
	repaired = 1;
	/* The child's page is final: it has the page's data. */
	assert(child_has && child_val == 1)
}
