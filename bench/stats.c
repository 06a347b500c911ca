// SPDX-License-Identifier: MIT
/*
 * Samples: every measurement is kept (nanoseconds), medians and p99s are
 * nearest-rank quantiles of the sorted samples, and each group's samples are
 * written to one CSV file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static struct bn_series **all;
static size_t nall, capall;

struct bn_series *bn_series_new(const char *group, const char *figure,
				const char *method, long param)
{
	struct bn_series *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	snprintf(s->group, sizeof(s->group), "%s", group);
	snprintf(s->figure, sizeof(s->figure), "%s", figure);
	snprintf(s->method, sizeof(s->method), "%s", method);
	s->param = param;
	if (nall == capall) {
		size_t cap = capall ? 2 * capall : 64;
		struct bn_series **n = realloc(all, cap * sizeof(*n));
		if (!n) {
			free(s);
			return NULL;
		}
		all = n;
		capall = cap;
	}
	all[nall++] = s;
	return s;
}

void bn_add(struct bn_series *s, double ns)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		double *v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return; /* keep what we have */
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = ns;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void sort_series(struct bn_series *s)
{
	if (s->sorted && s->nsorted == s->n)
		return;
	free(s->sorted);
	s->sorted = malloc((s->n ? s->n : 1) * sizeof(double));
	if (!s->sorted) {
		s->nsorted = 0;
		return;
	}
	memcpy(s->sorted, s->v, s->n * sizeof(double));
	qsort(s->sorted, s->n, sizeof(double), cmp_double);
	s->nsorted = s->n;
}

double bn_quantile(struct bn_series *s, double q)
{
	sort_series(s);
	if (!s->nsorted)
		return NAN;
	size_t k = (size_t)ceil(q * (double)s->nsorted);
	if (k < 1)
		k = 1;
	if (k > s->nsorted)
		k = s->nsorted;
	return s->sorted[k - 1];
}

int bn_write_samples(const char *group, const char *path)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	fprintf(f, "group,figure,method,param,sample,ns\n");
	for (size_t i = 0; i < nall; i++) {
		struct bn_series *s = all[i];
		if (strcmp(s->group, group))
			continue;
		for (size_t k = 0; k < s->n; k++)
			fprintf(f, "%s,\"%s\",\"%s\",%ld,%zu,%.0f\n", s->group,
				s->figure, s->method, s->param, k, s->v[k]);
	}
	return fclose(f) ? -errno : 0;
}

void bn_write_cdf(FILE *f, struct bn_series *s, size_t points)
{
	sort_series(s);
	size_t n = s->nsorted;
	if (!n)
		return;
	size_t step = n > points ? n / points : 1;
	for (size_t k = 0; k < n; k += step)
		fprintf(f, "%.3f %.5f\n", s->sorted[k] / 1000.0,
			(double)(k + 1) / (double)n);
	fprintf(f, "%.3f 1.0\n", s->sorted[n - 1] / 1000.0);
}

void bn_series_free_all(void)
{
	for (size_t i = 0; i < nall; i++) {
		free(all[i]->v);
		free(all[i]->sorted);
		free(all[i]);
	}
	free(all);
	all = NULL;
	nall = capall = 0;
}
