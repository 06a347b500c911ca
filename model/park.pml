/*
 * park.pml - parking every fault handler thread before a fork (src/fork.c
 * park_handlers, release; src/ctx.c handler_main, fork_park).
 *
 * With UFFD_FEATURE_EVENT_FORK the kernel holds a fork until a handler has
 * read its UFFD_EVENT_FORK, and glibc holds the malloc and stdio locks for
 * the whole fork: a handler that reads, allocates or logs meanwhile may
 * never finish.  So the forking thread parks every handler at a safe point
 * first.  NH handler threads, one thread that forks NFORK times in a row,
 * and faults and kicks from other threads.
 *
 * Actors:
 *   Handler(i) x NH  handler_main: the loop top checks ctx->forking (then
 *                    fork_park: fork_acks++, wait while forking,
 *                    fork_acks--); else poll() on stop_fd, wake_fd, the
 *                    userfaultfds and fork_fd (never read by a handler),
 *                    asleep until one is readable; then it reads wake_fd
 *                    if readable (which resets the eventfd to 0), reads
 *                    the userfaultfds, resolves faults: "busy", where it
 *                    may allocate and take locks
 *   Fork             NFORK forks: prepare_one (fork_lock, the restore:
 *                    not here), park_handlers: forking = 1, write(fork_fd),
 *                    wait until fork_acks == NH (no timeout); fork() in the
 *                    kernel; release(parent): read(fork_fd) (drained),
 *                    forking = 0, dxmi_ctx_kick
 *   init             at any time, once each: a fault message (a
 *                    userfaultfd readable), a dxmi_ctx_kick (wake_fd)
 *
 * Properties: no handler is asleep in poll() or busy while a fork is in
 * the kernel (assertion at the fork); every fork completes (no invalid end
 * state; LTL forks_done with weak fairness).
 *
 * Switches (spin -DNAME[=value]):
 *   NH=n, NFORK=n        handlers (default 2), forks (default 2)
 *   BUG_ONE_SHOT_KICK    mutant: the fork kicks the handlers once through
 *                        the shared eventfd (wake_fd), as the old code did:
 *                        the first handler to wake reads it and resets it
 *   BUG_TIMEOUT          mutant: the fork gives up waiting after 2 s (any
 *                        time, here) and forks anyway, as the old code did
 */

#ifndef NH
#define NH 2
#endif
#ifndef NFORK
#define NFORK 2
#endif

bit  forking;           /* ctx->forking                                    */
byte fork_acks;         /* ctx->fork_acks                                  */
bit  fork_fd;           /* ctx->fork_fd is readable (eventfd count > 0)    */
bit  wake_fd;           /* ctx->wake_fd is readable (dxmi_ctx_kick)             */
bit  msgs;              /* a userfaultfd has a message                     */

bit  in_fork;           /* ghost: fork() runs in the kernel                */
bit  unsafe[NH];        /* ghost: handler i left the loop top for poll():  */
                        /* asleep in it, or busy after it                  */
byte forks;             /* ghost: forks done                               */

#if NH == 1
#define NONE_UNSAFE (!unsafe[0])
#elif NH == 2
#define NONE_UNSAFE (!unsafe[0] && !unsafe[1])
#else
#define NONE_UNSAFE (!unsafe[0] && !unsafe[1] && !unsafe[2])
#endif

proctype Handler(byte i)
{
	do
	:: /* handler_main's loop top: atomic_load(&ctx->forking) */
		if
		:: forking ->
			/* fork_park() */
			fork_acks++;
			!forking;       /* while (forking) poll(NULL, 0, 1) */
			fork_acks--
		:: atomic { !forking -> unsafe[i] = 1 };
			/* poll(pfd, 5, -1) */
end_poll:		(wake_fd || msgs
#ifndef BUG_ONE_SHOT_KICK
			 || fork_fd
#endif
			);
			atomic {
				assert(!in_fork);
				/* read(wake_fd): the count goes to 0 */
				if
				:: wake_fd -> wake_fd = 0
				:: else
				fi
			};
			/* handle_batch(): read() the userfaultfds, resolve,
			 * dxmi_fault_drain_ready(), dxmi_region_run_quiet() */
			atomic { assert(!in_fork); msgs = 0 };
			unsafe[i] = 0
		fi
	od
}

proctype Fork()
{
	byte n;
	do
	:: n == NFORK -> break
	:: else ->
		/* park_handlers() */
		forking = 1;
#ifndef BUG_ONE_SHOT_KICK
		fork_fd = 1;    /* write(ctx->fork_fd, 1) */
#else
		wake_fd = 1;    /* BUG: dxmi_ctx_kick(): one reader resets it */
#endif
		/* while (fork_acks < want) poll(NULL, 0, 1) */
		if
		:: fork_acks >= NH
#ifdef BUG_TIMEOUT
		:: skip         /* BUG: 2 s passed, fork anyway */
#endif
		fi;
		/* (dxmi_gate_lock: not modelled) fork() */
		atomic { in_fork = 1; assert(NONE_UNSAFE) };
		in_fork = 0;
		/* release(ctx, parent) */
		fork_fd = 0;    /* read(ctx->fork_fd): drained */
		forking = 0;
		wake_fd = 1;    /* dxmi_ctx_kick() */
		n++;
		forks = n
	od
}

init
{
	byte i;
	atomic {
		do
		:: i < NH -> run Handler(i); i++
		:: else -> break
		od;
		run Fork()
	};
	/* other threads: a fault, a release of deferred faults */
	if
	:: msgs = 1
	:: skip
	fi;
	if
	:: wake_fd = 1
	:: skip
	fi
}

ltl forks_done { <> (forks == NFORK) }
