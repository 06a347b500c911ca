// SPDX-License-Identifier: MIT
/*
 * Logging (libbpf's model): one process-wide print callback, set with
 * dxm_set_print().  The default prints to stderr, filtered by the
 * environment variable DXM_LOG_LEVEL (error, warn, info, debug; default
 * warn).  errno is preserved across every log call.
 *
 * Locking: none (the print function pointer is atomic).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

static int default_level(void)
{
	static atomic_int level = -1;
	int l = atomic_load(&level);
	if (l >= 0)
		return l;
	const char *e = getenv("DXM_LOG_LEVEL");
	l = DXM_LOG_WARN;
	if (e) {
		static const char *names[] = { "error", "warn", "info",
					       "debug" };
		for (int i = 0; i < 4; i++)
			if (!strcasecmp(e, names[i]))
				l = i;
		if (e[0] >= '0' && e[0] <= '3')
			l = e[0] - '0';
	}
	atomic_store(&level, l);
	return l;
}

static int default_print(enum dxm_log_level level, const char *fmt, va_list ap)
{
	static const char *tag[] = { "error", "warning", "info", "debug" };
	if ((int)level > default_level())
		return 0;
	char buf[512];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	return fprintf(stderr, "dxm %s: %s\n", tag[level], buf);
}

static _Atomic(dxm_print_fn) print_fn = default_print;

DXM_API dxm_print_fn dxm_set_print(dxm_print_fn fn)
{
	return atomic_exchange(&print_fn, fn);
}

void dxm_log(enum dxm_log_level level, const char *fmt, ...)
{
	dxm_print_fn fn = atomic_load(&print_fn);
	if (!fn)
		return;
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	fn(level, fmt, ap);
	va_end(ap);
	errno = saved;
}
