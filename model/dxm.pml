/*
 * dxm.pml - Promela model of dxm's page protocol: one page, one CPU view.
 *
 * Names follow the C code (src/pstate.h, src/fault.c, src/exclusive.c,
 * src/notifier.c, mirror/mirror.c); model/README.md maps each name to its
 * file:function and lists what is abstracted.
 *
 * Actors:
 *   Handler  x NH    userfaultfd handler threads (ctx.c handler_main,
 *                    handle_batch; fault.c resolve, dxmi_fault_drain_ready)
 *   Cpu      x 2     program threads: K_CPU atomic increments (lock add) of
 *                    a counter in the page; an access to an absent PTE is a
 *                    userfaultfd fault: a message, then sleep until woken
 *   Device   x 2     one dxm_mirror each (owner = its index): K_DEV calls
 *                    of dxm_mirror_atomic_add(): the retry loop read_begin
 *                    -> make_exclusive -> m->lock -> read_retry -> install
 *                    ATOMIC entry -> unlock -> exclusive_unlock, and the
 *                    non-atomic engine (load, pause, store under m->lock)
 *
 * Switches (spin -DNAME[=value] ...):
 *   NH=n         handler threads (default 1)
 *   K_CPU, K_DEV increments per CPU thread / per device (default 1)
 *   DEV_TRIES=n  a device stops (its caller takes the -EBUSY) after n
 *                make_exclusive attempts without an increment; 0 = retry
 *                for ever, as dxm_mirror_atomic_add() does (default 0)
 *   NCPU_RUN, NDEV_RUN  CPU threads / devices started (default 2, 2)
 *   REC_CAP=n    saturate the fault-record counters (see below)
 *   LIST_ORDER   a notifier pass calls the callbacks in the C list's
 *                order: op notifiers, then "all" notifiers (default: any
 *                order that keeps each op notifier before its mirror's
 *                "all" notifier, a superset)
 *   BUG_*        deliberately broken variants (README.md, check.sh --mutants)
 *   EARLY_UNLOCK, ZAP_BEFORE_NOTIFY, FIX_RMW_LOCKED, NO_READ_RETRY,
 *   NO_READ_BEGIN_WAIT: other orders or omissions of the driver's or
 *                make_exclusive's steps; STRICT_CPU_STATE, STRICT_DEV_STATE:
 *                docs/design.md's life-cycle sentence as assertions (README.md)
 */

#ifndef NH
#define NH 1
#endif
#ifndef K_CPU
#define K_CPU 1
#endif
#ifndef K_DEV
#define K_DEV 1
#endif
#ifndef DEV_TRIES
#define DEV_TRIES 0
#endif
#ifndef NCPU_RUN
#define NCPU_RUN 2      /* CPU threads started (1 or 2)                    */
#endif
#ifndef NDEV_RUN
#define NDEV_RUN 2      /* devices started (1 or 2)                        */
#endif
#define NCPU 2
#define NDEV 2
#define TOTAL (NCPU_RUN * K_CPU + NDEV_RUN * K_DEV)

/* ------------------------------------------------------- src/pstate.h */
#define PS_CPU          0
#define PS_LOCKED       1
#define PS_EXCLUSIVE    2
#define PS_INVALIDATING 3
#define PS_STATE_MASK   3
#define PS_MAPPING      4
#define PS_WAITERS      8
#define ps_state(s)     ((s) & PS_STATE_MASK)

byte st = PS_CPU;       /* r->st[pg]: the page-state byte                  */
bit  pte;               /* the CPU view's PTE is present (kernel)          */
byte data;              /* the counter every actor increments              */

/* -------------------------------------------------------- userfaultfd */
bit pending[NCPU];      /* fault message queued, not yet read              */
bit waiting[NCPU];      /* the thread sleeps in handle_userfault()         */
bit faulted[NCPU];      /* ghost: an access faulted and has not completed  */

/* ------------------------------------ fault.c deferral (for this page)
 * ctx->defer_mtx: each of its critical sections (dxmi_ps_defer: CAS + queue;
 * dxmi_ps_release_waiters: move; dxmi_fault_drain_ready: take) is one atomic step
 * here, which is what the mutex gives them. */
byte ndeferred;         /* fault records on ctx->deferred                  */
byte nready;            /* fault records on ctx->ready                     */
/*
 * Records are all alike (one page, one address) and resolved from scratch,
 * so two counters hold the lists.  A device that retries for ever makes
 * CPU threads fault for ever, and stale records (of threads woken by
 * another thread's mapping) can pile up without bound.  REC_CAP=n (safety
 * runs with DEV_TRIES=0) saturates the counters: n stands for "n or more",
 * and taking a record from n leaves n or n-1 -- an over-approximation of
 * the unbounded lists, sound for safety.  REC_CAP=0: exact counts.
 */
#ifndef REC_CAP
#define REC_CAP 0
#endif
#if REC_CAP > 0
#define REC_SAT(v) if :: v > REC_CAP -> v = REC_CAP :: else fi
#else
#define REC_SAT(v) assert(v < 200)
#endif

/* -------------------------------------------------------- notifier.c */
/*
 * ctx->n_seq, each notifier's n->seq and a driver's saved seq are only
 * compared for equality (read_retry; read_begin: n->seq == n_seq), and
 * n_seq is odd exactly while n_active > 0; every n->seq is odd, and a
 * pass's cur_seq is the current odd n_seq, which does not change while any
 * pass is active.  The model keeps, for device d's op notifier (mirror.c
 * struct op), those equalities instead of the unbounded numbers:
 *   seq_is_cur[d]    op->n->seq == the current (last) odd n_seq
 *   saved_is_cur[d]  the seq read_begin returned == that value
 *   seq_same[d]      op->n->seq == the seq read_begin returned
 *                    (read_retry() is !seq_same[d])
 * When the last pass ends, n_seq moves past every value anybody holds:
 * seq_is_cur and saved_is_cur become false.  The mirrors' "all" notifiers
 * get set_seq too, but their seq is never read: not kept.
 */
byte n_active;          /* ctx->n_active                                   */
bit  op_present[NDEV];  /* op->n is on ctx->notifiers                      */
byte op_busy[NDEV];     /* op->n->busy                                     */
bit  seq_is_cur[NDEV];
bit  saved_is_cur[NDEV];
bit  seq_same[NDEV];

/* --------------------------------------------------------- mirror.c */
bit dlock[NDEV];        /* m->lock                                         */
bit entry[NDEV];        /* m's entry for the page (TAG_ATOMIC)             */
bit in_rmw[NDEV];       /* ghost: between the engine's load and store      */
bit revoked[NDEV];      /* ghost: m's invalidate callback returned since m */
                        /*        last converted the page (CAS to LOCKED)  */

byte finished;          /* actors done with their increments               */
byte incs;              /* ghost: increments completed                     */

#define EV_CLEAR     0  /* DXM_EVENT_CLEAR                                 */
#define EV_EXCLUSIVE 1  /* DXM_EVENT_EXCLUSIVE                             */
#define NOOWN        9  /* owner NULL                                      */

/*
 * Safety invariant, asserted after every step that changes st, pte, entry
 * or in_rmw (so it holds in every reachable state):
 *  - the CPU mapping exists only in PS_CPU, or in PS_LOCKED before
 *    make_exclusive's zap, and never while a device holds an entry or is
 *    inside its read-modify-write;
 *  - a device holds an entry only while the page is LOCKED, EXCLUSIVE or
 *    INVALIDATING (before its callback returned: the callback erases it)
 *    and the CPU mapping is absent;
 *  - at most one device holds the page.
 */
#define INV_MAP_STATE   (!pte || ps_state(st) == PS_CPU || ps_state(st) == PS_LOCKED)
#define INV_MAP_NODEV   (!pte || !(entry[0] || entry[1] || in_rmw[0] || in_rmw[1]))
#define INV_DEV_UNMAPPED ((!entry[0] || (ps_state(st) != PS_CPU && !pte)) \
                       && (!entry[1] || (ps_state(st) != PS_CPU && !pte)))
#define INV_ONE_DEV     (!(entry[0] && entry[1]))
#define INV (INV_MAP_STATE && INV_MAP_NODEV && INV_DEV_UNMAPPED && INV_ONE_DEV)
#define CHECK_INV assert(INV_MAP_STATE); assert(INV_MAP_NODEV); \
                  assert(INV_DEV_UNMAPPED); assert(INV_ONE_DEV)

/* ------------------------------------------------------------ helpers */

/* UFFDIO_CONTINUE and UFFDIO_WAKE wake every thread waiting on the range;
 * a woken thread's unread message leaves the queue (handle_userfault). */
#define WAKE_ALL waiting[0] = 0; pending[0] = 0; waiting[1] = 0; pending[1] = 0

/* pstate.c dxmi_ps_release_waiters(): every record of the page from deferred
 * to ready under defer_mtx, then dxmi_ctx_kick() (the eventfd: modelled as
 * "ready is not empty" enabling a handler). */
inline release_waiters()
{
	atomic { nready = nready + ndeferred; REC_SAT(nready); ndeferred = 0 }
}

/* mirror.c invalidate_all(): not its own conversion, so under m->lock:
 * set_seq (not kept) and erase the page's entry. */
inline cb_all(d)
{
	if
	:: c_all[d] ->
		atomic {
#ifndef BUG_CB_NO_LOCK
			dlock[d] == 0 ->
#else
			/* BUG: the callback erases the entry without m->lock */
#endif
			entry[d] = 0; revoked[d] = 1; c_all[d] = 0; CHECK_INV
		}
	:: else
	fi
}

/* mirror.c invalidate_op(): under m->lock, dxm_notifier_set_seq(n, cur) */
inline cb_op(d)
{
	if
	:: c_op[d] ->
		atomic {
			dlock[d] == 0 ->
#ifndef BUG_NO_SET_SEQ
			seq_is_cur[d] = 1; seq_same[d] = saved_is_cur[d];
#endif
			c_op[d] = 0
		}
	:: else
	fi
}

/* notifier.c dxmi_notify_range(): one pass over the page.  Own conversions
 * (DXM_EVENT_EXCLUSIVE with owner == the mirror) return at once: not
 * called.  ctx->n_mtx sections are atomic.  The list is LIFO and both
 * "all" notifiers were inserted by dxm_mirror_create(), before any op
 * notifier: the C order is the op notifiers (newest first), then all[1],
 * then all[0] (mirror 0 created first).  Default: any order that keeps
 * each op notifier before its own mirror's "all" notifier (a superset of
 * the C orders); LIST_ORDER: the C order, op notifiers in either order. */
inline notify(ev, own)
{
	atomic {
		n_active++;     /* n_seq odd */
		h_op[0] = op_present[0]; h_op[1] = op_present[1];
		op_busy[0] = op_busy[0] + h_op[0];
		op_busy[1] = op_busy[1] + h_op[1];
		c_op[0] = h_op[0] && !(ev == EV_EXCLUSIVE && own == 0);
		c_op[1] = h_op[1] && !(ev == EV_EXCLUSIVE && own == 1);
		c_all[0] = !(ev == EV_EXCLUSIVE && own == 0);
		c_all[1] = !(ev == EV_EXCLUSIVE && own == 1)
	};
#ifndef LIST_ORDER
	do
	:: c_op[0] -> cb_op(0)
	:: c_op[1] -> cb_op(1)
	:: c_all[0] && !c_op[0] -> cb_all(0)
	:: c_all[1] && !c_op[1] -> cb_all(1)
	:: !c_op[0] && !c_op[1] && !c_all[0] && !c_all[1] -> break
	od;
#else
	do
	:: c_op[0] -> cb_op(0)
	:: c_op[1] -> cb_op(1)
	:: !c_op[0] && !c_op[1] -> break
	od;
	cb_all(1); cb_all(0);
#endif
	atomic {
		op_busy[0] = op_busy[0] - h_op[0];
		op_busy[1] = op_busy[1] - h_op[1];
		h_op[0] = 0; h_op[1] = 0;
		n_active--;     /* 0: n_seq even (and new values from now on) */
		if
		:: n_active == 0 -> seq_is_cur[0] = 0; seq_is_cur[1] = 0;
			saved_is_cur[0] = 0; saved_is_cur[1] = 0
		:: else
		fi
	}
}

/* fault.c r->kind->fill -> memfd.c memfd_continue(r, pg, 1, addr) ->
 * continue_run(): UFFDIO_CONTINUE maps the page, or fails with EEXIST and
 * dxmi_uffd_wake()s; every waiter wakes.  (Its second pass, over the other CPU
 * views, has none here.) */
inline map_page()
{
	atomic { pte = 1; WAKE_ALL; CHECK_INV }
}

/* fault.c mapping_done(): fetch_and ~(PS_MAPPING|PS_WAITERS), then
 * release the waiters if PS_WAITERS was set */
inline mapping_done()
{
	atomic { s = st; st = st & ~(PS_MAPPING | PS_WAITERS); CHECK_INV };
	if
	:: s & PS_WAITERS -> release_waiters()
	:: else
	fi
}

/*
 * fault.c resolve(): one fault record.  Each "load s; CAS" of the C code
 * is one atomic step here: a CAS that fails because the byte changed since
 * the load only makes the C code load again (see README).
 */
inline resolve()
{
	do
	:: atomic {
		if
		:: ps_state(st) == PS_CPU && !(st & PS_MAPPING) ->
			st = st | PS_MAPPING; s = 1
		:: ps_state(st) == PS_EXCLUSIVE ->
			st = PS_INVALIDATING | (st & PS_WAITERS); s = 2
		:: else ->      /* LOCKED, INVALIDATING, CPU|MAPPING */
#if defined(BUG_DEFER_BLIND)
			/* BUG: dxmi_ps_defer() stores s|PS_WAITERS without
			 * checking that the byte still holds s */
			s = st | 16
#elif !defined(BUG_DEFER_PUSH_LATE)
			/* dxmi_ps_defer(): under defer_mtx, CAS s -> s|PS_WAITERS
			 * and queue the record before unlocking */
			st = st | PS_WAITERS; ndeferred++; REC_SAT(ndeferred); s = 3
#else
			/* BUG: the record is queued after defer_mtx is
			 * dropped (and after the CAS) */
			st = st | PS_WAITERS; s = 4
#endif
		fi;
		CHECK_INV
	   };
		if
		:: s == 1 ->    /* PS_CPU: map it */
			map_page(); mapping_done(); break
		:: s == 2 ->    /* PS_EXCLUSIVE -> PS_INVALIDATING */
#ifdef BUG_MAP_BEFORE_NOTIFY
			/* BUG: the mapping is restored before the notifiers */
			atomic { pte = 1; WAKE_ALL; CHECK_INV };
#endif
			notify(EV_CLEAR, NOOWN);
			/* invalidated(): -> CPU|MAPPING, keeping PS_WAITERS */
			atomic {
#ifndef BUG_INVALIDATED_DROPS_WAITERS
				st = PS_CPU | PS_MAPPING | (st & PS_WAITERS);
#else
				st = PS_CPU | PS_MAPPING;       /* BUG: waiters lost */
#endif
				CHECK_INV
			};
			map_page(); mapping_done(); break
		:: s == 3 -> break
		:: s == 4 -> atomic { ndeferred++; REC_SAT(ndeferred) }; break
		:: s >= 16 ->   /* BUG_DEFER_BLIND */
			atomic { st = (s - 16) | PS_WAITERS; ndeferred++; REC_SAT(ndeferred) };
			break
		fi
	od;
	s = 0
}

/* ------------------------------------------------------------- actors */

proctype Handler()
{
	byte s, n;
	bit h_op[NDEV], c_op[NDEV], c_all[NDEV];
end_idle:
	do
	:: atomic {     /* handle_batch(): read() takes every queued message */
		(pending[0] || pending[1]) ->
		n = pending[0] + pending[1]; pending[0] = 0; pending[1] = 0
	   };
		do
		:: n > 0 -> resolve(); n--
		:: else -> break
		od
#if NH > 1
	:: atomic {     /* handlers reading at once split a batch: this one
			 * gets one message, another handler the other */
		(pending[0] && pending[1]) ->
		if
		:: pending[0] = 0
		:: pending[1] = 0
		fi
	   };
		resolve()
#endif
	:: atomic {     /* dxmi_fault_drain_ready(): take the ready list */
		nready > 0 -> n = nready; nready = 0
	   };
		do
		:: n > 0 -> resolve();
			if
#if REC_CAP > 0
			:: n == REC_CAP -> skip /* "n or more": maybe more */
#endif
			:: n--
			fi
		:: else -> break
		od
	od
}

proctype Cpu(byte i)
{
	byte k;
	do
	:: k == K_CPU -> break
	:: else ->
		if
		:: atomic {     /* the access completes (lock add) */
			pte ->
			assert(ps_state(st) == PS_CPU || ps_state(st) == PS_LOCKED);
#ifdef STRICT_CPU_STATE
			assert(ps_state(st) == PS_CPU); /* docs/design.md, literally */
#endif
			assert(!entry[0] && !entry[1] && !in_rmw[0] && !in_rmw[1]);
			data++; incs++; k++; faulted[i] = 0
		   }
		:: atomic {     /* PTE absent: a userfaultfd fault */
			!pte ->
			faulted[i] = 1; pending[i] = 1; waiting[i] = 1
		   };
			!waiting[i]     /* woken: retry the access */
		fi
	od;
	finished++
}

/* exclusive.c dxm_exclusive_unlock(): LOCKED -> EXCLUSIVE, release the
 * deferred faults if PS_WAITERS was set */
inline excl_unlock()
{
	if
	:: got ->
		atomic {
			assert(ps_state(st) == PS_LOCKED);
			s = st; st = PS_EXCLUSIVE;
			CHECK_INV
		};
#ifndef BUG_UNLOCK_NO_RELEASE
		if
		:: s & PS_WAITERS -> release_waiters()
		:: else
		fi;
#endif
		s = 0
	:: else
	fi
}

/* mirror.c rmw(), with m->lock held and the entry looked up: load, pause,
 * store, then unlock m->lock */
inline rmw()
{
	atomic {
		assert(!revoked[d]);    /* (a) */
#ifdef STRICT_DEV_STATE
		/* docs/design.md, literally: only in LOCKED or EXCLUSIVE */
		assert(ps_state(st) == PS_LOCKED || ps_state(st) == PS_EXCLUSIVE);
#endif
		assert(entry[d] && !in_rmw[1 - d]);
		assert(ps_state(st) != PS_CPU && !pte);
		in_rmw[d] = 1; tmp = data; CHECK_INV
	};
	atomic {
		assert(!revoked[d]);    /* (a): not revoked meanwhile */
#ifdef STRICT_DEV_STATE
		assert(ps_state(st) == PS_LOCKED || ps_state(st) == PS_EXCLUSIVE);
#endif
		assert(entry[d]);
		assert(ps_state(st) != PS_CPU && !pte);
		data = tmp + 1; incs++; in_rmw[d] = 0; tmp = 0;
		CHECK_INV;
		k++; ok = 0;
#if DEV_TRIES > 0
		tries = 0;
#endif
		dlock[d] = 0
	}
}

proctype Device(byte d)
{
	byte k, s, tmp;
#if DEV_TRIES > 0
	byte tries;
#endif
	bit got, ok;
	bit h_op[NDEV], c_op[NDEV], c_all[NDEV];
	do
	:: k == K_DEV -> break
	:: else ->
		/* dxm_mirror_atomic_add(): m->lock, look the entry up */
		atomic {
			dlock[d] == 0 ->
			if
			:: entry[d] -> dlock[d] = 1; ok = 1
			:: else -> ok = 0
			fi
		};
		if
		:: ok -> rmw()
#if DEV_TRIES > 0
		:: !ok && tries >= DEV_TRIES -> break /* gives up: -EBUSY */
		:: !ok && tries < DEV_TRIES ->
#else
		:: else ->
#endif
			/* dxm_mirror_exclusive(): op_begin() inserts op->n,
			 * seq = n_active ? cur : cur - 1 */
			atomic {
				op_present[d] = 1; seq_is_cur[d] = (n_active > 0);
				seq_same[d] = 0; saved_is_cur[d] = 0
			};
			do
			:: /* dxm_notifier_read_begin(): load n->seq ... */
				atomic { seq_same[d] = 1; saved_is_cur[d] = seq_is_cur[d] };
#ifndef NO_READ_BEGIN_WAIT
				/* ... then n_seq: equal and odd: a pass that
				 * invalidated n runs: wait on n_cond, reload */
				if
				:: saved_is_cur[d] && n_active > 0 ->
					atomic {
						!(seq_is_cur[d] && n_active > 0) ->
						seq_same[d] = 1; saved_is_cur[d] = seq_is_cur[d]
					}
				:: else
				fi;
#endif
#if DEV_TRIES > 0
				tries++;
#endif
#ifdef BUG_ZAP_BEFORE_LOCK
				/* BUG: the CPU views are zapped before the page
				 * is locked (and not after) */
				atomic { pte = 0; CHECK_INV };
#endif
				/* dxm_make_exclusive(), one page: wait while
				 * PS_MAPPING (sched_yield loop), refuse LOCKED and
				 * INVALIDATING, CAS CPU/EXCLUSIVE -> LOCKED */
				atomic {
#ifndef BUG_NO_MAPPING_WAIT
					!(ps_state(st) == PS_CPU && (st & PS_MAPPING)) ->
#endif
					if
					:: ps_state(st) == PS_CPU || ps_state(st) == PS_EXCLUSIVE ->
						/* CPU and EXCLUSIVE never carry PS_WAITERS */
						assert(!(st & PS_WAITERS));
						st = PS_LOCKED; got = 1; revoked[d] = 0
					:: else -> got = 0
					fi;
					CHECK_INV
				};
				if
				:: got ->
#ifdef ZAP_BEFORE_NOTIFY
					/* memfd_revoke() first, then the devices */
					atomic { pte = 0; CHECK_INV };
#endif
					/* the devices first (DXM_EVENT_EXCLUSIVE,
					 * owner d), then memfd_revoke() */
					notify(EV_EXCLUSIVE, d);
#if !defined(ZAP_BEFORE_NOTIFY) && !defined(BUG_ZAP_BEFORE_LOCK)
					atomic { pte = 0; CHECK_INV }
#else
					skip
#endif
				:: else
				fi;
#ifdef EARLY_UNLOCK
				/* variant: dxm_exclusive_unlock() before m->lock:
				 * only the sequence protocol keeps it safe */
				excl_unlock();
#endif
				/* m->lock; read_retry(); install; unlock */
				atomic {
					dlock[d] == 0 ->
					if
#ifndef NO_READ_RETRY
					:: !seq_same[d] -> ok = 0
#endif
					:: else ->
						if
						:: got -> entry[d] = 1
						:: else
						fi;
						ok = 1
					fi;
					CHECK_INV;
#ifdef FIX_RMW_LOCKED
					if
					:: ok && got -> dlock[d] = 1    /* kept */
					:: else
					fi
#endif
				};
#ifdef FIX_RMW_LOCKED
				/* variant: the first atomic is done before
				 * dxm_exclusive_unlock(), m->lock still held */
				if
				:: ok && got -> rmw(); ok = 1
				:: else
				fi;
#endif
#ifndef EARLY_UNLOCK
				excl_unlock();
#endif
				got = 0;
				if
				:: ok -> break
#if DEV_TRIES > 0
				:: !ok && tries >= DEV_TRIES -> break
				:: !ok && tries < DEV_TRIES
#else
				:: else         /* read_retry: again */
#endif
				fi
			od;
			/* dxm_notifier_remove(op->n): unlink, wait until idle */
			atomic { op_present[d] = 0; ok = 0 };
			atomic {
				op_busy[d] == 0 ->
				seq_is_cur[d] = 0; seq_same[d] = 0; saved_is_cur[d] = 0
			}
			/* no entry: -EBUSY, sched_yield() and again */
		fi
	od;
	finished++
}

init
{
	byte i;
	atomic {
		do
		:: i < NH -> run Handler(); i++
		:: else -> break
		od;
		run Cpu(0);
		if :: NCPU_RUN > 1 -> run Cpu(1) :: else fi;
		run Device(0);
		if :: NDEV_RUN > 1 -> run Device(1) :: else fi
	};
	/* no lost update: every completed increment is in the counter */
	finished == NCPU_RUN + NDEV_RUN;
	assert(data == incs);
	assert(DEV_TRIES > 0 || incs == TOTAL)
}

/*
 * (d) progress.  resolved: every fault is eventually resolved (the handler
 * maps the page and wakes the thread).  completes: every faulting access
 * eventually completes.  Both need devices that stop retrying (DEV_TRIES):
 * see README.md, "Progress".
 */
ltl resolved { [] ((waiting[0] -> <> !waiting[0]) && (waiting[1] -> <> !waiting[1])) }
ltl completes { [] ((faulted[0] -> <> !faulted[0]) && (faulted[1] -> <> !faulted[1])) }
