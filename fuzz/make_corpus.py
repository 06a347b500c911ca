#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the seed corpus of fuzz_api (fuzz/corpus/).

An input is a sequence of 8-byte operations: an opcode byte and 7 argument
bytes (fuzz_api.c reads them in the order given here; missing bytes read as
0).  Each seed is a small scenario; together they reach every operation.

    fuzz/make_corpus.py [DIR]     (default: fuzz/corpus next to this file)
"""
import os
import sys

(ALLOC, ALIAS, ADOPT, FREE, MPROTECT, MAKE_EXCL, UNLOCK, CHECK, RANGE_FAULT,
 N_INSERT, N_REMOVE, N_SEQ, TOUCH, DEVICE, MUNMAP, MREMAP, MADVISE, STATS,
 SET_PRINT, CTX2, FORK, SYSCALL, BADCTX, MMAP_PLAIN, RAW_MPROTECT,
 BARRIER) = range(26)

# Address classes of pick_range (cls, idx, len code); len code 0xe0: the
# rest of the region, c < 0xc0: c % 9 pages.
MANAGED, VSTART, PLAIN, FREED, NULL, UNALIGNED, HOLE, WEIRD = 0, 6, 7, 8, 9, 10, 11, 12
WHOLE = 0xe0


def op(code, *args):
    assert len(args) <= 7, args
    return bytes([code, *args]) + bytes(7 - len(args))


def rng(cls, idx=0, lc=WHOLE):
    return (cls, idx, lc)


# touch "how": 0 load, 1 store, 2 atomic add, 3 cmpxchg; 0x80: managed only
LOAD, STORE, ATOMIC, CAS, MANAGED_ONLY = 0, 1, 2, 3, 0x80
SET_SEQ = 0x10  # notifier mode: the callback calls set_seq

SEEDS = {
    # B1/B2: convert, let the device write, unlock, the CPU takes it back
    "exclusive_restore": [
        op(ALLOC, 3),
        op(TOUCH, 0, STORE | MANAGED_ONLY, 2),
        op(MAKE_EXCL, *rng(VSTART), 1),
        op(CHECK, 0, 0),
        op(DEVICE, 0, 1),
        op(DEVICE, 1, 0),
        op(UNLOCK, 0, 0),
        op(TOUCH, 0, LOAD | MANAGED_ONLY, 2),
        op(TOUCH, 1, ATOMIC | MANAGED_ONLY),
        op(FREE, *rng(VSTART)),
    ],
    # B3/B4: a notifier, the owner filter, the sequence protocol
    "notifier_seq": [
        op(N_INSERT, 0, SET_SEQ),
        op(N_SEQ, 0, 0),
        op(ALLOC, 1),
        op(MAKE_EXCL, *rng(VSTART), 3),  # owner: the notifier itself
        op(N_SEQ, 1, 0),
        op(UNLOCK, 0, 0),
        op(N_SEQ, 0, 0),
        op(TOUCH, 0, STORE | MANAGED_ONLY),
        op(N_SEQ, 1, 0),
        op(N_SEQ, 2, 0),
        op(N_SEQ, 0x13, 0),
        op(N_SEQ, 4, 0),
        op(N_REMOVE, 0),
        op(N_REMOVE, 0xff),
    ],
    # B9: aliases
    "alias": [
        op(ALLOC, 2),
        op(N_INSERT, 4, VSTART, 0, WHOLE, SET_SEQ),
        op(ALIAS, *rng(VSTART, 0)),
        op(TOUCH, 5, STORE | MANAGED_ONLY),
        op(MAKE_EXCL, *rng(VSTART, 0), 1),
        op(UNLOCK, 0, 0),
        op(TOUCH, 3, LOAD | MANAGED_ONLY),
        op(ALIAS, *rng(UNALIGNED, 0)),
        op(FREE, *rng(VSTART, 1)),
        op(FREE, *rng(VSTART, 0)),
    ],
    # adopted anonymous memory
    "adopt": [
        op(ADOPT, 0, 3, 0x0b, 0),
        op(TOUCH, 0, STORE | MANAGED_ONLY, 2),
        op(MAKE_EXCL, *rng(VSTART), 2),
        op(DEVICE, 0, 0),
        op(DEVICE, 2, 1),
        op(UNLOCK, 0, 0),
        op(TOUCH, 2, LOAD | MANAGED_ONLY, 2),
        op(ADOPT, 2, 0, 1),
        op(FREE, *rng(VSTART)),
        op(TOUCH, 1, LOAD, 2),
    ],
    "adopt_bad": [
        op(ADOPT, 1, 2, 0xff, 1),
        op(ADOPT, 0, 2, 0, 3),
        op(ADOPT, 1, 2, 0, 4),
        op(ADOPT, 0, 2, 0, 6),
        op(ADOPT, 1, 2, 0, 7),
        op(ADOPT, 3, VSTART, 0, WHOLE),
        op(ADOPT, 3, NULL, 0, 1),
        op(ADOPT, 3, HOLE, 0, 1),
    ],
    # B8: what the program does to a view
    "unmap_remap": [
        op(ALLOC, 5),
        op(N_INSERT, 0, SET_SEQ),
        op(TOUCH, 0, STORE | MANAGED_ONLY, 2),
        op(MAKE_EXCL, *rng(VSTART), 1),
        op(UNLOCK, 0, 0),
        op(MREMAP, 1, 2, 1),
        op(TOUCH, 3, LOAD | MANAGED_ONLY, 2),
        op(MADVISE, 0, 2, 1),
        op(TOUCH, 0, LOAD | MANAGED_ONLY),
        op(MUNMAP, 4, 0, 1),
        op(MREMAP, 0, 3, 7),
        op(FREE, *rng(VSTART)),
    ],
    "adopt_madvise": [
        op(ADOPT, 0, 4, 0xff, 0),
        op(N_INSERT, 0, SET_SEQ),
        op(MAKE_EXCL, *rng(VSTART), 1),
        op(MADVISE, 0, 1, 1),
        op(MAKE_EXCL, *rng(MANAGED, 2, 1), 2),
        op(UNLOCK, 0, 0),
        op(MADVISE, 2, 1, 7),
        op(MREMAP, 1, 1, 1),
        op(MUNMAP, 0, 0, 1),
        op(TOUCH, 0, LOAD | MANAGED_ONLY, 2),
    ],
    # B6: protection
    "mprotect": [
        op(ALLOC, 3),
        op(N_INSERT, 0, SET_SEQ),
        op(TOUCH, 0, STORE | MANAGED_ONLY, 2),
        op(MPROTECT, *rng(MANAGED, 1, 1), 1),
        op(MAKE_EXCL, *rng(VSTART), 1),
        op(RANGE_FAULT, *rng(VSTART), 1),
        op(RANGE_FAULT, *rng(VSTART), 0),
        op(MPROTECT, *rng(VSTART), 2),
        op(MPROTECT, *rng(VSTART), 7),
        op(MPROTECT, *rng(VSTART), 0),
        op(SYSCALL, 0, 0x81),
        op(FREE, *rng(VSTART)),
    ],
    "range_fault": [
        op(ALLOC, 4),
        op(ALIAS, *rng(VSTART)),
        op(MAKE_EXCL, *rng(VSTART), 1),
        op(RANGE_FAULT, *rng(VSTART), 0, 0),
        op(MAKE_EXCL, *rng(MANAGED, 1, 2), 1),
        op(UNLOCK, 0, 0),
        op(RANGE_FAULT, *rng(MANAGED, 1, 2), 3, 1),
        op(RANGE_FAULT, *rng(MANAGED, 1, 0xe2), 1, 0),
        op(RANGE_FAULT, *rng(UNALIGNED, 0, 1), 0, 0),
        op(RANGE_FAULT, *rng(MANAGED, 0, 0xe8), 0, 0),
        op(TOUCH, 0, LOAD | MANAGED_ONLY, 2),
    ],
    "check_unlock": [
        op(ALLOC, 3),
        op(MAKE_EXCL, *rng(VSTART), 1),
        op(CHECK, 0, 0),
        op(CHECK, 1, *rng(VSTART), 0),
        op(CHECK, 1, *rng(VSTART), 0x83),
        op(CHECK, 2, *rng(VSTART), 0xff),
        op(UNLOCK, 4, 0, 1, 0),
        op(UNLOCK, 5, 0, 3, 7),
        op(UNLOCK, 6, 0, 2, 0xff),
        op(UNLOCK, 8, 0, 0),
        op(CHECK, 4, 0),
        op(MAKE_EXCL, *rng(VSTART), 2),
        op(DEVICE, 0, 1),
        op(TOUCH, 0, LOAD | MANAGED_ONLY, 2),
    ],
    # B12: system calls on managed memory
    "syscall": [
        op(ALLOC, 2),
        op(ADOPT, 0, 1, 1, 0),
        op(MAKE_EXCL, *rng(MANAGED, 0, 1), 1),
        op(MAKE_EXCL, *rng(MANAGED, 2, 1), 1),
        op(UNLOCK, 0, 0),
        op(UNLOCK, 0, 1),
        op(SYSCALL, 0, 0x80),
        op(SYSCALL, 2, 0x81),
        op(MADVISE, 2, 0, 1),
        op(SYSCALL, 2, 0x81),
        op(SYSCALL, 3, 0),
    ],
    # B7: fork
    "fork": [
        op(ADOPT, 0, 2, 3, 0),
        op(ALLOC, 1),
        op(N_INSERT, 0, SET_SEQ),
        op(MAKE_EXCL, *rng(MANAGED, 0, 1), 1),
        op(MAKE_EXCL, *rng(MANAGED, 2, 1), 1),
        op(FORK),
        op(TOUCH, 0, LOAD, 3),
    ],
    # B11: bad contexts, bad arguments
    "bad_ctx": [op(BADCTX, w, f, 0) for w in range(3) for f in (0, 1, 2, 3, 4, 5, 6)]
    + [op(ALLOC, 1)]
    + [op(BADCTX, w, f, 0) for w in range(3) for f in (7, 8, 9, 10, 11, 12)],
    "bad_args": [
        op(ALLOC, 0xf0),
        op(ALLOC, 0xf1),
        op(ALLOC, 0xf2),
        op(ALLOC, 0xf3),
        op(ALLOC, 2, 0, 5),
        op(ALLOC, 2, 0, 7, 3),
        op(ALLOC, 2, 0, 0, 0xff),
        op(ALLOC, 1, 3),
        op(FREE, *rng(NULL)),
        op(FREE, *rng(WEIRD, 1)),
        op(FREE, *rng(MANAGED, 1)),
        op(FREE, *rng(VSTART)),
        op(FREE, *rng(FREED)),
        op(MAKE_EXCL, *rng(FREED), 1),
        op(MAKE_EXCL, *rng(WEIRD, 2, 1), 1),
        op(MPROTECT, *rng(PLAIN, 0, 1), 1),
        op(ALIAS, *rng(PLAIN, 0, 1), 0xff),
    ],
    "overflow": [
        op(ALLOC, 4),
        op(MAKE_EXCL, *rng(MANAGED, 0, 0xe4), 1),
        op(MAKE_EXCL, *rng(MANAGED, 0, 0xe5), 1),
        op(MAKE_EXCL, *rng(MANAGED, 0, 0xe8), 1),
        op(MPROTECT, *rng(MANAGED, 0, 0xe9), 1),
        op(RANGE_FAULT, *rng(MANAGED, 0, 0xe6), 0),
        op(CHECK, 1, *rng(MANAGED, 0, 0xe8), 0),
        op(MAKE_EXCL, *rng(MANAGED, 0, 0xea), 1),
        op(MAKE_EXCL, *rng(MANAGED, 1, 0xe1), 1),
        op(N_INSERT, 2, MANAGED, 0, 1, 1),
        op(N_INSERT, 3, 0x10),
        op(N_INSERT, 1, 0),
        op(N_INSERT, 5, MANAGED, 0, 1, 14),
        op(N_INSERT, 5, MANAGED, 0, 1, 15),
        op(N_INSERT, 0x14, MANAGED, 0, 1, 0x10),
    ],
    "stats_print": [op(STATS, v) for v in range(8)] + [op(STATS, 0xff)]
    + [op(SET_PRINT, v) for v in (1, 2, 0x83, 0, 3)],
    "ctx2": [
        op(ALLOC, 1),
        op(MMAP_PLAIN, 1, 1),
        op(CTX2, 1, 0, 0, 0x0f, 0),
        op(CTX2, 0, 1, 0, 0x1a, 0),
        op(CTX2, 3, 2, 0, 2, 0),
        op(CTX2, 5, 0, 0, 0, 0),
        op(CTX2, 6, 0, 0, 0, 0),
        op(CTX2, 2, 0, 0, 0, 0),
        op(CTX2, 4, 0, 0, 0, 0),
        op(CTX2, 7, 0, 0, 0, 0),
        op(CTX2, 1, 7, 0, 0, 0),
        op(CTX2, 1, 0, 3, 0, 0),
        op(CTX2, 1, 0, 1, 0, 0),
        op(CTX2, 1, 0, 0, 0xff, 0),
        op(BADCTX, 2, 8, 0),
    ],
    "raw_mprotect": [
        op(ALLOC, 2),
        op(ADOPT, 0, 2, 3, 0),
        op(MAKE_EXCL, *rng(VSTART, 0), 1),
        op(MAKE_EXCL, *rng(VSTART, 1), 1),
        op(UNLOCK, 0, 0),
        op(UNLOCK, 0, 1),
        op(RAW_MPROTECT, 0, 1, 1),
        op(RAW_MPROTECT, 2, 1, 1),
        op(TOUCH, 0, LOAD | MANAGED_ONLY, 3),
        op(RAW_MPROTECT, 0, 3, 3),
        op(TOUCH, 0, STORE, 3),
        op(MMAP_PLAIN, 3, 0x55),
        op(RAW_MPROTECT, 10, 1, 0),
        op(BARRIER),
    ],
    "populate": [
        op(ALLOC, 3),
        op(ADOPT, 0, 2, 0, 0),
        op(MAKE_EXCL, *rng(VSTART, 0), 1),
        op(MAKE_EXCL, *rng(VSTART, 1), 1),
        op(MADVISE, 0, 2, 9),
        op(MADVISE, 3, 1, 11),
        op(MADVISE, 0, 2, 5),
        op(MADVISE, 0, 2, 7),
        op(MADVISE, 1, 1, 4),
        op(TOUCH, 0, LOAD | MANAGED_ONLY, 3),
    ],
    # read-only adopted memory, a discarded page, system calls
    "adopt_readonly": [
        op(ADOPT, 0, 2, 7, 0),
        op(MADVISE, 0, 0, 1),
        op(MPROTECT, VSTART, 0, WHOLE, 1),
        op(RANGE_FAULT, VSTART, 0, WHOLE, 0, 0),
        op(SYSCALL, 0, 0x80),
        op(MAKE_EXCL, VSTART, 0, WHOLE, 1),
        op(MPROTECT, VSTART, 0, WHOLE, 0),
        op(MAKE_EXCL, VSTART, 0, WHOLE, 1),
        op(FORK),
        op(RANGE_FAULT, VSTART, 0, WHOLE, 1, 0),
    ],
    # a mixed workload
    "mixed": [
        op(N_INSERT, 0, SET_SEQ),
        op(ALLOC, 7),
        op(ALIAS, *rng(VSTART)),
        op(ADOPT, 0, 5, 0x2d, 0),
        op(N_SEQ, 0, 0),
        op(MAKE_EXCL, *rng(MANAGED, 3, 3), 1),
        op(MAKE_EXCL, *rng(MANAGED, 9, 2), 4),
        op(TOUCH, 4, STORE, 2),
        op(DEVICE, 1, 1),
        op(MREMAP, 5, 2, 1),
        op(UNLOCK, 0, 0),
        op(N_SEQ, 1, 0),
        op(TOUCH, 3, LOAD, 2),
        op(MUNMAP, 7, 1, 1),
        op(SYSCALL, 6, 0x81),
        op(RANGE_FAULT, *rng(VSTART), 0),
        op(FREE, *rng(VSTART, 1)),
        op(BARRIER),
    ],
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    os.makedirs(out, exist_ok=True)
    for name, ops in SEEDS.items():
        data = b"".join(ops)
        assert len(data) <= 512, name
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
