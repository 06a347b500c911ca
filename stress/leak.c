// SPDX-License-Identifier: MIT
/*
 * dxm stress: leak checks.  Snapshots of /proc/self/fd, /proc/self/maps
 * and the bytes malloc has handed out, taken before the context exists and
 * after it was destroyed, must match.
 *
 * What would differ for reasons other than a leak is kept out: the heap
 * and stack lines of maps (they grow), thread stacks (glibc caches them; a
 * warm-up starts as many threads of each kind first, so that the run
 * reuses them), malloc arenas (the stress runs with one arena).  Under a sanitizer, whose allocator maps memory at
 * will, only file and memfd mappings are compared, and the heap is left to
 * LeakSanitizer.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stress_int.h"

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int push(char ***v, size_t *n, size_t *cap, const char *s)
{
	if (*n == *cap) {
		size_t c = *cap ? 2 * *cap : 64;
		char **nv = realloc(*v, c * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		*v = nv;
		*cap = c;
	}
	if (!((*v)[*n] = strdup(s)))
		return -ENOMEM;
	(*n)++;
	return 0;
}

static bool keep_map(const char *line)
{
	unsigned long a, b, off, ino;
	char perm[8], dev[16];
	int pos = 0;
	if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &a, &b, perm, &off,
		   dev, &ino, &pos) < 6)
		return true;
	const char *path = line + pos;
	if (!strncmp(path, "[heap]", 6) || !strncmp(path, "[stack]", 7) ||
	    !strncmp(path, "[vvar", 5) || !strncmp(path, "[vdso]", 6) ||
	    !strncmp(path, "[vsyscall]", 10))
		return false;
	/* A sanitizer maps, loads and symbolizes at will: only the
	 * library's own mappings (memfd regions) are compared. */
	if (ST_SANITIZED && !strstr(path, "/memfd:"))
		return false;
	return true;
}

int st_snap_take(struct st_snap *s)
{
	size_t cap = 0;
	memset(s, 0, sizeof(*s));
#if ST_SANITIZED
	s->heap = -1;
#else
	/* Before this snapshot's own allocations; they are counted apart. */
	s->heap = (long long)mallinfo2().uordblks;
#endif
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -errno;
	int self = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == self)
			continue;
		char path[300], target[256], line[600];
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		target[n < 0 ? 0 : n] = 0;
		snprintf(line, sizeof(line), "fd %s -> %s", e->d_name, target);
		if (push(&s->fds, &s->nfds, &cap, line)) {
			closedir(d);
			return -ENOMEM;
		}
	}
	closedir(d);
	qsort(s->fds, s->nfds, sizeof(*s->fds), cmp);

	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return -errno;
	char line[512];
	cap = 0;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (keep_map(line) && push(&s->maps, &s->nmaps, &cap, line)) {
			fclose(f);
			return -ENOMEM;
		}
	}
	fclose(f);
	qsort(s->maps, s->nmaps, sizeof(*s->maps), cmp);
#if !ST_SANITIZED
	s->self = (long long)mallinfo2().uordblks - s->heap;
#endif
	return 0;
}

static size_t diff(char **a, size_t na, char **b, size_t nb, const char *what,
		   char *why, size_t whylen, size_t *used)
{
	size_t i = 0, j = 0, k = 0;
	while (i < na || j < nb) {
		int c = i == na ? 1 : j == nb ? -1 : strcmp(a[i], b[j]);
		if (c == 0) {
			i++, j++;
			continue;
		}
		const char *l = c < 0 ? a[i++] : b[j++];
		if (k++ < 12)
			fprintf(stderr, "stress: leak check: %s %s: %s\n", what,
				c < 0 ? "gone" : "new", l);
		if (*used < whylen && k == 1)
			*used += (size_t)snprintf(why + *used, whylen - *used,
						  "%s%s %s: %s",
						  *used ? "; " : "", what,
						  c < 0 ? "gone" : "new", l);
	}
	return k;
}

bool st_snap_compare(const struct st_snap *b, const struct st_snap *a,
		     char *why, size_t whylen)
{
	size_t used = 0;
	why[0] = 0;
	size_t d = diff(b->fds, b->nfds, a->fds, a->nfds, "file descriptor",
			why, whylen, &used);
	d += diff(b->maps, b->nmaps, a->maps, a->nmaps, "mapping", why, whylen,
		  &used);
	/* The earlier snapshot's own memory is still allocated. */
	long long after = a->heap - b->self;
	if (b->heap >= 0 && a->heap >= 0 && after != b->heap) {
		fprintf(stderr,
			"stress: leak check: malloc'd bytes in use: %lld before, "
			"%lld after\n",
			b->heap, after);
		if (after > b->heap) {
			d++;
			if (used < whylen)
				snprintf(why + used, whylen - used,
					 "%s%lld malloc'd bytes not freed",
					 used ? "; " : "", after - b->heap);
		}
	}
	return d == 0;
}

void st_snap_free(struct st_snap *s)
{
	for (size_t i = 0; i < s->nfds; i++)
		free(s->fds[i]);
	for (size_t i = 0; i < s->nmaps; i++)
		free(s->maps[i]);
	free(s->fds);
	free(s->maps);
	memset(s, 0, sizeof(*s));
}
