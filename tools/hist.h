/* SPDX-License-Identifier: MIT */
/*
 * Printing dxm_stats' power-of-two histograms (restore_us, restore_pages)
 * on one line, for `dxm stress` and `dxm bench`: every non-empty bucket as
 * "[lo,hi) count", with the median's bucket named.
 */
#ifndef DXM_TOOLS_HIST_H
#define DXM_TOOLS_HIST_H

#include <stdint.h>
#include <stdio.h>

#include "dxm.h"

static inline void dxm_tool_print_hist(FILE *f, const char *prefix,
				       const char *what, const uint64_t *h,
				       const char *unit)
{
	uint64_t total = 0, seen = 0;
	int median = -1;
	for (int i = 0; i < DXM_STATS_HIST; i++)
		total += h[i];
	fprintf(f, "%s%s (%llu):", prefix, what, (unsigned long long)total);
	for (int i = 0; i < DXM_STATS_HIST; i++) {
		if (!h[i])
			continue;
		unsigned long long lo = i ? 1ull << (i - 1) : 0;
		if (median < 0 && (seen += h[i]) * 2 >= total)
			median = i;
		if (i == DXM_STATS_HIST - 1)
			fprintf(f, " [%llu+) %llu", lo, (unsigned long long)h[i]);
		else
			fprintf(f, " [%llu,%llu) %llu", lo, 1ull << i,
				(unsigned long long)h[i]);
	}
	if (median >= 0)
		fprintf(f, "; median in [%llu,%llu) %s",
			median ? 1ull << (median - 1) : 0ull, 1ull << median,
			unit);
	fprintf(f, "\n");
}

#endif
