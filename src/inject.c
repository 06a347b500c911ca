// SPDX-License-Identifier: MIT
/*
 * Fault injection (see inject.h).  Test builds only: the spec is parsed
 * once from $DXM_INJECT; counters are atomic, so sites may fire from any
 * thread.
 *
 * Locking: none (its table is read once, under pthread_once).
 */
#ifdef DXM_FAULT_INJECTION
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "inject.h"
#include "internal.h"

static const char *const names[INJ_NSITES] = {
	"continue", "move", "copy", "zeropage", "mmap",
	"mremap",   "read", "poll", "notify",   "resolve", "forkfix",
	"detach",   "moved",    "restored",
};

static const struct {
	const char *name;
	int err;
} errnames[] = {
	{ "EAGAIN", EAGAIN }, { "EEXIST", EEXIST }, { "ENOMEM", ENOMEM },
	{ "EINTR", EINTR },   { "EFAULT", EFAULT }, { "ENOENT", ENOENT },
	{ "EBUSY", EBUSY },   { "EINVAL", EINVAL }, { "0", 0 },
};

static struct {
	int err;
	unsigned every;
	atomic_uint calls;
} site[INJ_NSITES];

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void parse(void)
{
	const char *spec = getenv("DXM_INJECT");
	if (!spec)
		return;
	char *copy = strdup(spec), *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '='), *sl = eq ? strchr(eq, '/') : NULL;
		if (!eq || !sl) {
			pr_warn("DXM_INJECT: cannot parse '%s'", tok);
			continue;
		}
		*eq = *sl = 0;
		int s = -1, e = -1;
		for (int i = 0; i < INJ_NSITES; i++)
			if (!strcmp(tok, names[i]))
				s = i;
		for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]);
		     i++)
			if (!strcmp(eq + 1, errnames[i].name))
				e = errnames[i].err;
		unsigned every = (unsigned)strtoul(sl + 1, NULL, 10);
		if (s < 0 || e < 0 || !every) {
			pr_warn("DXM_INJECT: unknown site, errno or period in "
				"'%s'",
				tok);
			continue;
		}
		site[s].err = e;
		site[s].every = every;
		pr_info("DXM_INJECT: %s fails with %s every %u calls", names[s],
			eq + 1, every);
	}
	free(copy);
}

int inject(enum inject_site s)
{
	pthread_once(&once, parse);
	if (!site[s].every)
		return 0;
	if (!site[s].err) {
		/* A slow callback, fault or ioctl: "notify=0/MS" delays
		 * each. */
		struct timespec ts = { site[s].every / 1000,
				       (long)(site[s].every % 1000) * 1000000 };
		nanosleep(&ts, NULL);
		return 0;
	}
	unsigned n = atomic_fetch_add(&site[s].calls, 1) + 1;
	return n % site[s].every == 0 ? site[s].err : 0;
}
#endif
