/*
 * vtlock.pml - waiting for an unread userfaultfd event while holding
 * ctx->vt_lock (src/anon.c anon_move_in, move_in_page; src/region.c;
 * src/ctx.c handle_batch, dispatch).  The deadlock that dxm stress
 * reproduced at 898 s with the old anon_move_in:
 *
 *   1. cpu1 munmaps an adopted view: the kernel queues an UNMAP event on
 *      uffd_anon, and until a handler reads it every UFFDIO_MOVE on
 *      uffd_anon fails with EAGAIN; the munmap sleeps until it is read.
 *   2. a device thread in dxm_range_fault -> dxmi_pages_to_cpu -> anon_move_in
 *      holds vt_lock for reading across move_in_page(); on EAGAIN it napped
 *      and tried again, still holding it.
 *   3. cpu2 in dxm_mprotect asks vt_lock for writing and waits for the
 *      reader; vt_lock prefers writers (ctx.c:
 *      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP), so every new reader
 *      now waits behind cpu2.
 *   4. the handler, before it can read the event, needs vt_lock: for
 *      reading (dxmi_region_lookup of a CPU fault in the batch before) or for
 *      writing (dxmi_region_unmap_detach of an event in the batch before).
 *   5. nobody reads the event: EAGAIN for ever.
 * Now anon_move_in drops vt_lock before it naps, and a handler never
 * waits (anon_move_in returns -EAGAIN, the restore is re-queued).
 *
 * Actors:
 *   Munmap   cpu1: munmap(): UNMAP queued, sleep until it is read
 *   Mover    a thread that is not a handler: anon_move_in() of one page:
 *            vt_lock (read), move_in_page() (EAGAIN after its 8 tries,
 *            under the lock), unlock; EAGAIN: nap, again
 *   Writer   cpu2: dxm_mprotect's vt_lock (write) section
 *   Handler  the handler thread: the rest of the batch it is in (a CPU
 *            fault's dxmi_region_lookup: read; an earlier UNMAP or REMAP
 *            event: write; a restore of an adopted page: anon_move_in on
 *            the handler; or nothing), then read() of the UNMAP event
 *            (handle_batch) and dxmi_region_unmap_detach() (write)
 *
 * Property: no invalid end state (no deadlock).
 *
 * Switches:
 *   BUG_NAP_HOLDING_LOCK  mutant: anon_move_in naps and retries with
 *                         vt_lock still held for reading (the old code)
 *   BUG_HANDLER_WAITS     mutant: on the handler, anon_move_in waits on
 *                         EAGAIN like any other thread instead of
 *                         returning it (the restore re-queued)
 *   HANDLER_READS         the handler's batch before needs vt_lock for
 *                         reading only (the stack seen at 898 s): with the
 *                         mutant, only the writer preference (cpu2 waiting)
 *                         makes it wait; a write (dxmi_region_unmap_detach)
 *                         deadlocks with the mover alone
 */

/* ctx->vt_lock, a glibc rwlock of kind
 * PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP: a reader waits while a
 * writer holds the lock or waits for it. */
byte vt_readers;        /* readers holding vt_lock                         */
bit  vt_writer;         /* a writer holds it                               */
byte vt_wwait;          /* writers waiting for it                          */

inline rdlock()
{
	atomic { !vt_writer && vt_wwait == 0 -> vt_readers++ }
}

inline rdunlock()
{
	vt_readers--
}

inline wrlock()
{
	vt_wwait++;
	atomic { !vt_writer && vt_readers == 0 -> vt_wwait--; vt_writer = 1 }
}

inline wrunlock()
{
	vt_writer = 0
}

bit unmap_unread;       /* cpu1's UNMAP event is queued, not read yet      */

proctype Munmap()
{
	unmap_unread = 1;       /* the kernel unmaps, queues the event */
	!unmap_unread           /* userfaultfd_unmap_complete(): sleeps */
}

proctype Mover()
{
	do
	:: rdlock();
		if
		:: !unmap_unread -> rdunlock(); break   /* moved */
		:: else ->      /* EAGAIN */
#ifndef BUG_NAP_HOLDING_LOCK
			rdunlock()      /* dxmi_nap_us(), with no lock held */
#else
			/* BUG: nap and try again, vt_lock still held */
			!unmap_unread -> rdunlock(); break
#endif
		fi
	od
}

proctype Writer()
{
	wrlock();               /* dxm_mprotect: dxmi_vt_split, mprotect */
	wrunlock()
}

proctype Handler()
{
	byte b;
	/* the rest of the batch it is in (chosen first: a thread does not
	 * pick its work by which lock is free) */
	if
	:: b = 1
#ifndef HANDLER_READS
	:: b = 2
#endif
	:: b = 3
	:: b = 0
	fi;
	if
	:: b == 1 -> rdlock(); rdunlock()       /* dxmi_fault_resolve: dxmi_region_lookup */
	:: b == 2 -> wrlock(); wrunlock()       /* dxmi_region_unmap_detach, dxmi_region_remap_move */
	:: b == 3 -> rdlock();                  /* resolve: anon_move_in on the handler */
		if
		:: !unmap_unread -> rdunlock()
		:: else ->
#ifndef BUG_HANDLER_WAITS
			rdunlock()      /* -EAGAIN: requeue_restore() */
#else
			rdunlock();     /* BUG: waits like any other thread */
			!unmap_unread
#endif
		fi
	:: b == 0
	fi;
	/* handle_batch(): read() the UNMAP event; the munmap returns */
	atomic { unmap_unread -> unmap_unread = 0 };
	/* dispatch(): dxmi_region_unmap_detach() */
	wrlock();
	wrunlock()
}

init
{
	atomic {
		run Munmap();
		run Mover();
		run Writer();
		run Handler()
	}
}
