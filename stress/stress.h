/* SPDX-License-Identifier: MIT */
/*
 * dxm stress: CPU threads and several reference devices (dxm_mirror) doing
 * random work on shared regions while invariants are checked all the time.
 *
 *   dxm stress [--seconds N] [--threads T] [--devices D] [--seed S]
 *              [--regions R] [--handlers H] [--mode thread|spin|sigbus]
 *              [--churn N] [--huge] [--disable OP,...] [--verbose]
 *
 * Prints a progress line every few seconds, a summary with the count of each
 * operation, and ends with "stress: PASS" or "stress: FAIL (reason)".
 * Returns 0 (pass), 1 (fail) or 2 (usage error).
 */
#ifndef DXM_STRESS_H
#define DXM_STRESS_H

#ifdef __cplusplus
extern "C" {
#endif

/* argv[0] is "stress"; the options follow. */
int stress_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* DXM_STRESS_H */
