/* SPDX-License-Identifier: MIT */
/*
 * dxm bench - the benchmark harness (bench/README.md).
 *
 * bench_main() is the whole of `dxm bench`: argv[0] is "bench", the options
 * are --quick, --out DIR (default bench/results), --only GROUP, --help.
 * Returns 0 when every measurement ran (a missed performance target is
 * reported, not an error), 1 when one could not run, 2 on a usage error.
 */
#ifndef DXM_BENCH_H
#define DXM_BENCH_H

#ifdef __cplusplus
extern "C" {
#endif

int bench_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* DXM_BENCH_H */
