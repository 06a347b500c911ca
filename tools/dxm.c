// SPDX-License-Identifier: MIT
/*
 * dxm - the command-line tool (its manual: man/dxm.1).
 *
 *   dxm demo [--device D] [--cpu-threads T] [--ops N] [--pages P] ...
 *       CPU threads do atomic increments on counters while a device (a
 *       CUDA or Vulkan GPU through its backend, tools/demo_gpu.c, or the
 *       software reference device) does non-atomic increments on the same
 *       counters: once through ordinary device access (updates are lost,
 *       and it says how many), once with exclusive access (none lost);
 *       then the latency of a CPU access to a page the device holds,
 *       measured touch by touch.
 *   dxm info [--json]
 *       What this kernel and this user give dxm: userfaultfd mode, what
 *       works, the userfaultfd features by name.
 *   dxm bench [--quick] [--out DIR] [--only GROUP]
 *       Every measurement side by side with its baseline (bench/README.md).
 *   dxm stress [--seconds N] [--threads T] [--devices D] [--seed S] ...
 *       Random work on shared regions with invariants checked throughout.
 *
 * Exit status, every command: 0 success, 1 failure, 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "bench.h"
#include "demo_gpu.h"
#include "dxm.h"
#include "dxm_mirror.h"
#include "stress.h"

enum { EXIT_USAGE = 2 };

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A whole decimal number in [min, max], or false. */
static bool parse_ul(const char *s, unsigned long min, unsigned long max,
		     unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || !*s || *end || *s == '-' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* A usage error: what was wrong, and where the help is. */
static int usage_error(const char *cmd, const char *fmt, const char *arg)
{
	fprintf(stderr, "dxm %s: ", cmd);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'dxm %s --help'.\n", cmd);
	return EXIT_USAGE;
}

/* getopt_long's errors (opterr = 0, optstring starting with ':'). */
static int bad_option(const char *cmd, int c, char **argv)
{
	char opt[3] = { '-', (char)optopt, 0 };
	if (c == ':')
		return usage_error(cmd, "option '%s' needs a value",
				   argv[optind - 1]);
	/* An unknown short option (optopt) may sit inside a cluster. */
	return usage_error(cmd, "unknown option '%s'",
			   optopt ? opt : argv[optind - 1]);
}

/* ------------------------------------------------------------------ demo */

#define DEMO_THREADS 2
#define DEMO_OPS 20000
#define DEMO_PAGES 4
#define DEMO_SAMPLES 1000

static void demo_usage(FILE *f)
{
	fprintf(f,
		"usage: dxm demo [--device D] [--cpu-threads T] [--ops N] "
		"[--pages P]\n"
		"                [--samples S]\n"
		"\n"
		"CPU threads do atomic increments on counters (one per page) "
		"while a device\n"
		"does non-atomic read-modify-write increments (a load, then a "
		"store) on the\n"
		"same counters: first through ordinary device access (updates "
		"are lost), then\n"
		"with exclusive access (none may be lost). Then S single CPU "
		"stores to a\n"
		"counter the device has just taken exclusive are timed, each "
		"from the store to\n"
		"its completion (fault, invalidate callback, mapping "
		"restored).\n"
		"\n"
		"  --device D       cuda (a CUDA GPU: a load/add/store kernel, "
		"and\n"
		"                   atomicAdd_system), vulkan (a compute shader "
		"on a Vulkan\n"
		"                   device; Mesa's lavapipe runs it on the CPU), "
		"or mirror\n"
		"                   (dxm's software reference device); auto, "
		"the default: the\n"
		"                   first of these present, named on the first "
		"line\n"
		"  --cpu-threads T  CPU threads, 1 to 64 (default %d)\n"
		"  --ops N          device increments per round, at least 1 "
		"(default %d; on a\n"
		"                   GPU %d: the same number of each counter, "
		"in dispatches\n"
		"                   of at most %d of each)\n"
		"  --pages P        counters, one per page, 1 to 4096 (default "
		"%d)\n"
		"  --samples S      timed CPU stores, 0 (none) to 1000000 "
		"(default %d)\n"
		"  -h, --help       this text\n"
		"\n"
		"Exit status: 0 no update lost with exclusive access, 1 "
		"updates lost, dxm\n"
		"failed, or the device asked for is not here (or not built), 2 "
		"usage error.\n",
		DEMO_THREADS, DEMO_OPS, DEMO_GPU_OPS, DEMO_GPU_ITERS_MAX,
		DEMO_PAGES, DEMO_SAMPLES);
}

struct demo {
	struct dxm_ctx *ctx;
	struct dxm_mirror *mirror;
	uint64_t **counter; /* one per page, at the start of the page */
	unsigned ncounters;
	unsigned long ops;
	bool exclusive;
	atomic_int go, device_done;
	atomic_ulong cpu_incs;
	int err;
};

static void *cpu_thread(void *arg)
{
	struct demo *d = arg;
	unsigned long i = 0;
	while (!atomic_load(&d->go))
		;
	/* Keep going while the device works, so that the two overlap. */
	for (; i < d->ops || !atomic_load(&d->device_done); i++)
		__atomic_fetch_add(d->counter[i % d->ncounters], 1,
				   __ATOMIC_SEQ_CST);
	atomic_fetch_add(&d->cpu_incs, i);
	return NULL;
}

static void *device_thread(void *arg)
{
	struct demo *d = arg;
	while (!atomic_load(&d->go))
		;
	for (unsigned long i = 0; i < d->ops && !d->err; i++) {
		uint64_t *c = d->counter[i % d->ncounters];
		d->err = d->exclusive ? dxm_mirror_atomic_add(d->mirror, c, 1,
							      NULL)
				      : dxm_mirror_racy_add(d->mirror, c, 1);
	}
	atomic_store(&d->device_done, 1);
	return NULL;
}

static int run_round(struct demo *d, unsigned threads, bool exclusive)
{
	struct dxm_stats before, after;
	d->exclusive = exclusive;
	d->err = 0;
	atomic_store(&d->go, 0);
	atomic_store(&d->device_done, 0);
	atomic_store(&d->cpu_incs, 0);
	for (unsigned i = 0; i < d->ncounters; i++)
		*d->counter[i] = 0;
	dxm_mirror_flush(d->mirror);
	dxm_stats(d->ctx, &before, sizeof(before));

	pthread_t tid[65];
	for (unsigned i = 0; i < threads; i++)
		pthread_create(&tid[i], NULL, cpu_thread, d);
	pthread_create(&tid[threads], NULL, device_thread, d);
	double t0 = now_s();
	atomic_store(&d->go, 1);
	for (unsigned i = 0; i <= threads; i++)
		pthread_join(tid[i], NULL);
	double dt = now_s() - t0;
	if (d->err) {
		fprintf(stderr, "dxm demo: device error: %s\n",
			strerror(-d->err));
		return 1;
	}
	dxm_stats(d->ctx, &after, sizeof(after));

	uint64_t sum = 0;
	for (unsigned i = 0; i < d->ncounters; i++)
		sum += *d->counter[i];
	uint64_t expect = atomic_load(&d->cpu_incs) + d->ops;
	uint64_t lost = expect - sum;
	uint64_t nfy = after.notifier_ns - before.notifier_ns;

	printf("%s device access:\n",
	       exclusive ? "with exclusive" : "without exclusive (ordinary)");
	printf("  increments expected %llu, counted %llu: %llu lost\n%s",
	       (unsigned long long)expect, (unsigned long long)sum,
	       (unsigned long long)lost,
	       lost ? "  (the device's read-modify-writes raced the CPU's "
		      "atomics)\n"
		    : "");
	printf("  %.3f s; revocations %llu (%llu pages), CPU faults resolved "
	       "%llu (%llu deferred),\n"
	       "  pages given back %llu, invalidate callbacks %llu "
	       "(%.3f ms in them)\n",
	       dt,
	       (unsigned long long)(after.conversions - before.conversions),
	       (unsigned long long)(after.pages_converted -
				    before.pages_converted),
	       (unsigned long long)(after.cpu_faults - before.cpu_faults),
	       (unsigned long long)(after.deferred_faults -
				    before.deferred_faults),
	       (unsigned long long)(after.restores - before.restores),
	       (unsigned long long)(after.notifier_calls -
				    before.notifier_calls),
	       (double)nfy / 1e6);
	return exclusive && lost ? 1 : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * The latency of one CPU access to a page the device holds: the device
 * takes the counter's page exclusive (an atomic through the mirror,
 * untimed), then one CPU store is timed from its start to its completion.
 * Nothing else runs, so each timed store is exactly one fault: the
 * handler runs the mirror's invalidate callback, then maps the page.
 */
static int fault_latency(struct demo *d, unsigned long samples)
{
	uint64_t *lat = calloc(samples, sizeof(*lat));
	uint64_t *c = d->counter[0];
	struct dxm_stats before, after;
	int err = 0;
	if (!lat)
		return -ENOMEM;
	dxm_stats(d->ctx, &before, sizeof(before));
	for (unsigned long i = 0; i < samples && !err; i++) {
		err = dxm_mirror_atomic_add(d->mirror, c, 1, NULL);
		uint64_t t0 = now_ns();
		__atomic_fetch_add(c, 1, __ATOMIC_SEQ_CST);
		lat[i] = now_ns() - t0;
	}
	dxm_stats(d->ctx, &after, sizeof(after));
	if (err) {
		fprintf(stderr, "dxm demo: device error: %s\n", strerror(-err));
		free(lat);
		return err;
	}
	qsort(lat, samples, sizeof(*lat), cmp_u64);
	uint64_t faults = after.cpu_faults - before.cpu_faults;
	printf("a CPU store to a page the device holds exclusive, %lu times "
	       "(%llu faults):\n"
	       "  median %.1f us, p99 %.1f us from the store to its "
	       "completion (the fault,\n"
	       "  the invalidate callback, the mapping restored), wherever "
	       "the scheduler put\n"
	       "  the threads; 'dxm bench --only restore' compares it with "
	       "a bare userfaultfd\n",
	       samples, (unsigned long long)faults,
	       (double)lat[(samples - 1) / 2] / 1e3,
	       (double)lat[(samples * 99 + 99) / 100 - 1] / 1e3);
	free(lat);
	return 0;
}

/* The mirror's demo on d->ctx: the output it always had. */
static int demo_mirror(struct demo *d, unsigned long threads,
		       unsigned long pages, unsigned long samples)
{
	long psize = sysconf(_SC_PAGESIZE);
	char *mem = NULL;
	int err = dxm_alloc(d->ctx, (size_t)pages * (size_t)psize, 0,
			    (void **)&mem);
	if (!err)
		err = dxm_mirror_create(d->ctx, &d->mirror);
	d->counter = calloc(pages, sizeof(*d->counter));
	if (!err && !d->counter)
		err = -ENOMEM;
	if (err) {
		fprintf(stderr, "dxm demo: %s\n", strerror(-err));
		if (d->mirror)
			dxm_mirror_destroy(d->mirror);
		if (mem)
			dxm_free(d->ctx, mem);
		free(d->counter);
		return 1;
	}
	for (unsigned i = 0; i < pages; i++)
		d->counter[i] = (uint64_t *)(mem + (size_t)i * (size_t)psize);

	struct dxm_stats st;
	dxm_stats(d->ctx, &st, sizeof(st));
	printf("dxm demo: %lu CPU threads (atomic increments) and 1 device "
	       "(%lu non-atomic\nincrements) on %lu counters, one per page\n",
	       threads, d->ops, pages);
	printf("userfaultfd: %s; %u handler thread(s)\n\n",
	       dxm_uffd_mode_str(st.uffd_mode), st.handler_threads);

	int rc = run_round(d, (unsigned)threads, false);
	printf("\n");
	if (!rc)
		rc = run_round(d, (unsigned)threads, true);
	if (!rc && samples) {
		printf("\n");
		if (fault_latency(d, samples))
			rc = 1;
	}

	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(d->mirror, &ms);
	if (ms.stale_accesses) {
		fprintf(stderr, "dxm demo: %llu device accesses to pages dxm "
				"no longer held exclusive!\n",
			(unsigned long long)ms.stale_accesses);
		rc = 1;
	}
	printf("\n%s\n", rc == 0 ? "no update lost with exclusive access"
				  : "FAILED (see above)");
	dxm_mirror_destroy(d->mirror);
	dxm_free(d->ctx, mem);
	free(d->counter);
	return rc ? 1 : 0;
}

/* Words of s after column col, lines of at most 80 columns, the next
 * ones indented by indent. */
static void print_wrapped(const char *s, int col, int indent)
{
	while (*s) {
		int len = (int)strcspn(s, " ");
		if (col + 1 + len > 80 && col > indent) {
			printf("\n%*s", indent, "");
			col = indent;
		} else {
			putchar(' ');
			col++;
		}
		printf("%.*s", len, s);
		col += len;
		s += len;
		s += strspn(s, " ");
	}
	putchar('\n');
}

/* --device: the GPU backends, best first, then the mirror. */
enum demo_device { DEMO_CUDA, DEMO_VULKAN, DEMO_MIRROR, DEMO_AUTO };
static const char *const demo_device_name[] = { "cuda", "vulkan", "mirror",
						"auto" };

/*
 * The GPU the demo runs on, or NULL for the mirror: the device asked for,
 * or (DEMO_AUTO) the best one present, falling back to the mirror.  The
 * first line it prints names the device, then (DEMO_AUTO) why each
 * better one is not used; nothing for --device mirror.  *fail: the
 * device asked for is not here, or not built (said on stderr).
 */
static struct demo_gpu *demo_pick(enum demo_device want, struct dxm_ctx *ctx,
				  bool *fail)
{
	static const enum demo_gpu_kind kind[] = {
		[DEMO_CUDA] = DEMO_GPU_CUDA,
		[DEMO_VULKAN] = DEMO_GPU_VULKAN,
	};
	char why[DEMO_MIRROR][512];
	struct demo_gpu *g = NULL;
	enum demo_device dev;

	*fail = false;
	for (dev = 0; dev < DEMO_MIRROR && !g; dev++) {
		if (want != DEMO_AUTO && want != dev)
			continue;
		if (!demo_gpu_open(kind[dev], ctx, &g, why[dev],
				   sizeof(why[dev])))
			break;
		if (want != DEMO_AUTO) {
			fprintf(stderr, "dxm demo: --device %s: %s\n",
				demo_device_name[dev], why[dev]);
			*fail = true;
			return NULL;
		}
	}
	if (want == DEMO_MIRROR)
		return NULL;
	if (g)
		printf("device: %s, %s%s\n", demo_device_name[dev],
		       demo_gpu_name(g),
		       want == DEMO_AUTO ? ", the best one here" : "");
	else
		printf("device: mirror, dxm's software reference device: no GPU "
		       "backend runs here\n");
	for (enum demo_device i = 0; want == DEMO_AUTO && i < dev; i++) {
		printf("  not %s:", demo_device_name[i]);
		print_wrapped(why[i], 6 + (int)strlen(demo_device_name[i]),
			      4);
	}
	return g;
}

static int cmd_demo(int argc, char **argv)
{
	unsigned long threads = DEMO_THREADS, pages = DEMO_PAGES;
	unsigned long ops = 0, samples = DEMO_SAMPLES;
	enum demo_device want = DEMO_AUTO;
	static const struct option lo[] = {
		{ "device", required_argument, NULL, 'd' },
		{ "cpu-threads", required_argument, NULL, 't' },
		{ "ops", required_argument, NULL, 'n' },
		{ "pages", required_argument, NULL, 'p' },
		{ "samples", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":d:t:n:p:s:h", lo, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case 'd':
			for (want = 0; want <= DEMO_AUTO; want++)
				if (!strcmp(optarg, demo_device_name[want]))
					break;
			if (want > DEMO_AUTO)
				return usage_error("demo",
						   "unknown device '%s' (cuda, "
						   "vulkan, mirror or auto)",
						   optarg);
			break;
		case 't':
			ok = parse_ul(optarg, 1, 64, &threads);
			break;
		case 'n':
			ok = parse_ul(optarg, 1, ~0ul, &ops);
			break;
		case 'p':
			ok = parse_ul(optarg, 1, 4096, &pages);
			break;
		case 's':
			ok = parse_ul(optarg, 0, 1000000, &samples);
			break;
		case 'h':
			demo_usage(stdout);
			return 0;
		default:
			return bad_option("demo", c, argv);
		}
		if (!ok)
			return usage_error("demo", "bad value '%s'", optarg);
	}
	if (optind < argc)
		return usage_error("demo", "unexpected argument '%s'",
				   argv[optind]);

	struct demo d = { .ops = ops ? ops : DEMO_OPS,
			  .ncounters = (unsigned)pages };
	int err = dxm_ctx_create(&d.ctx, NULL);
	if (err) {
		fprintf(stderr, "dxm demo: cannot create a context: %s\n",
			strerror(-err));
		return 1;
	}
	bool fail;
	struct demo_gpu *g = demo_pick(want, d.ctx, &fail);
	int rc = 1;
	if (g) {
		struct demo_params p = { threads, ops ? ops : DEMO_GPU_OPS,
					 pages, samples };
		rc = demo_gpu_run(g, &p);
		demo_gpu_close(g);
	} else if (!fail) {
		rc = demo_mirror(&d, threads, pages, samples);
	}
	dxm_ctx_destroy(d.ctx);
	return rc;
}

/* ------------------------------------------------------------------ info */

static void info_usage(FILE *f)
{
	fprintf(f,
		"usage: dxm info [--json]\n"
		"\n"
		"What this kernel and this user give dxm: the userfaultfd mode "
		"a context gets,\n"
		"whether system calls work on exclusive pages, which parts of "
		"dxm work here\n"
		"(each with the kernel feature it needs), and the userfaultfd "
		"features enabled,\n"
		"by name. It creates no context: dxm_probe(3) opens and closes "
		"the\n"
		"userfaultfds a context would.\n"
		"\n"
		"  --json      one JSON object instead of text (keys in "
		"dxm(1))\n"
		"  -h, --help  this text\n"
		"\n"
		"Exit status: 0 dxm works here, 1 it does not (the reason is "
		"printed), 2 usage\n"
		"error.\n");
}

/*
 * The names of the bits set in v, in bit order: as a JSON array, or as
 * text lines of at most 80 columns indented by indent (the first line
 * continues the current one, at that column).
 */
static void print_features(uint64_t v, bool json, int indent)
{
	int col = indent;
	bool first = true;
	if (json)
		putchar('[');
	for (int b = 0; b < 64; b++) {
		uint64_t bit = 1ull << b;
		if (!(v & bit))
			continue;
		char name[40];
		const char *known = dxm_uffd_feature_str(bit);
		if (strcmp(known, "unknown"))
			snprintf(name, sizeof(name), "%s", known);
		else
			snprintf(name, sizeof(name), "%#llx",
				 (unsigned long long)bit);
		int len = (int)strlen(name);
		if (json) {
			printf("%s\"%s\"", first ? "" : ", ", name);
		} else if (!first && col + 1 + len > 80) {
			printf("\n%*s%s", indent, "", name);
			col = indent + len;
		} else {
			printf("%s%s", first ? "" : " ", name);
			col += len + !first;
		}
		first = false;
	}
	if (json)
		putchar(']');
	else if (first)
		printf("none");
}

/* A JSON string: the few characters strerror or uname could hold. */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

/* One line of "what works": name, yes/no, and why. */
static void info_line(const char *what, bool yes, const char *why_yes,
		      const char *why_no)
{
	const char *why = yes ? why_yes : why_no;
	printf("  %-38s %s", what, yes ? "yes" : "no");
	if (why && *why)
		printf(" (%s)", why);
	printf("\n");
}

static int cmd_info(int argc, char **argv)
{
	bool json = false;
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":jh", lo, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			info_usage(stdout);
			return 0;
		default:
			return bad_option("info", c, argv);
		}
	}
	if (optind < argc)
		return usage_error("info", "unexpected argument '%s'",
				   argv[optind]);

	struct utsname u;
	uname(&u);
	long psize = sysconf(_SC_PAGESIZE);

	/* The library says why it cannot run (on stderr), unless --json. */
	dxm_print_fn prev = NULL;
	if (json)
		prev = dxm_set_print(NULL);
	struct dxm_features f = DXM_OPTS(dxm_features);
	int err = dxm_probe(&f, sizeof(f));
	if (json)
		dxm_set_print(prev);
	if (err) {
		if (json) {
			printf("{\"version\": \"%s\", \"kernel\": ",
			       dxm_version());
			json_str(u.release);
			printf(", \"machine\": ");
			json_str(u.machine);
			printf(", \"uid\": %d, \"usable\": false, \"error\": ",
			       (int)getuid());
			json_str(strerror(-err));
			printf("}\n");
		} else {
			printf("dxm %s, Linux %s %s, uid %d\n", dxm_version(),
			       u.release, u.machine, (int)getuid());
			printf("dxm cannot run here: %s\n", strerror(-err));
		}
		return 1;
	}
	bool kernel_faults = f.flags & DXM_FEAT_KERNEL_FAULTS;
	bool adopt = f.flags & DXM_FEAT_ADOPT;
	bool sigbus = f.flags & DXM_FEAT_SIGBUS;
	bool fork_events = f.flags & DXM_FEAT_FORK_EVENTS;
	bool huge = f.uffd_features & UFFD_FEATURE_MINOR_HUGETLBFS;
	long huge_free = -1;
	FILE *mi = fopen("/proc/meminfo", "r");
	char line[128];
	while (mi && fgets(line, sizeof(line), mi))
		if (sscanf(line, "HugePages_Free: %ld", &huge_free) == 1)
			break;
	if (mi)
		fclose(mi);

	if (json) {
		printf("{\n  \"version\": \"%s\",\n  \"kernel\": ",
		       dxm_version());
		json_str(u.release);
		printf(",\n  \"machine\": ");
		json_str(u.machine);
		printf(",\n  \"uid\": %d,\n  \"page_size\": %ld,\n"
		       "  \"usable\": true,\n"
		       "  \"uffd_mode\": \"%s\",\n"
		       "  \"kernel_faults\": %s,\n"
		       "  \"handler_threads\": %u,\n"
		       "  \"adopt\": %s,\n"
		       "  \"sigbus_mode\": %s,\n"
		       "  \"fork_events\": %s,\n"
		       "  \"huge_pages\": %s,\n"
		       "  \"huge_pages_free\": %ld,\n"
		       "  \"uffd_features\": ",
		       (int)getuid(), psize, dxm_uffd_mode_str(f.uffd_mode),
		       kernel_faults ? "true" : "false", f.handler_threads,
		       adopt ? "true" : "false", sigbus ? "true" : "false",
		       fork_events ? "true" : "false", huge ? "true" : "false",
		       huge_free);
		print_features(f.uffd_features, true, 0);
		printf(",\n  \"uffd_anon_features\": ");
		print_features(f.uffd_anon_features, true, 0);
		printf("\n}\n");
		return 0;
	}

	printf("dxm %s, Linux %s %s, uid %d, page size %ld\n", dxm_version(),
	       u.release, u.machine, (int)getuid(), psize);
	printf("userfaultfd: %s\n", dxm_uffd_mode_str(f.uffd_mode));
	printf("system calls on exclusive pages: %s\n",
	       kernel_faults ? "resolved (they wait like a CPU access)"
			     : "fail with EFAULT (call "
			       "dxm_range_fault first)");
	printf("fault-handler threads per context: %u\n\n",
	       f.handler_threads);
	printf("what works here:\n");
	info_line("memfd regions (dxm_alloc, dxm_alias)", true,
		  "UFFD_FEATURE_MINOR_SHMEM", NULL);
	info_line("adopted memory (dxm_adopt)", adopt, "UFFD_FEATURE_MOVE",
		  "needs UFFD_FEATURE_MOVE, Linux 6.8");
	char huge_why[96];
	snprintf(huge_why, sizeof(huge_why),
		 "UFFD_FEATURE_MINOR_HUGETLBFS; %ld free in the pool",
		 huge_free);
	info_line("huge pages (DXM_ALLOC_HUGE)", huge, huge_why,
		  "needs UFFD_FEATURE_MINOR_HUGETLBFS, Linux 5.13");
	info_line("system calls on exclusive pages", kernel_faults,
		  NULL,
		  "see USERFAULTFD MODES in dxm(7)");
	info_line("DXM_CTX_HANDLER_SPIN", true, NULL, NULL);
	info_line("DXM_CTX_HANDLER_ADAPTIVE", true, NULL, NULL);
	info_line("DXM_CTX_SIGBUS", sigbus, "UFFD_FEATURE_SIGBUS",
		  "needs UFFD_FEATURE_SIGBUS");
	info_line("raw clone of adopted memory repaired", fork_events,
		  "UFFD_FEATURE_EVENT_FORK",
		  adopt ? "needs CAP_SYS_PTRACE" : "needs dxm_adopt");
	printf("\nuserfaultfd features enabled:\n  memfd regions:  ");
	print_features(f.uffd_features, false, 18);
	printf("\n  adopted memory: ");
	print_features(f.uffd_anon_features, false, 18);
	printf("\n");
	return 0;
}

/* ----------------------------------------------------------------- bench */

/*
 * A progress line for dxm bench on a terminal.  bench prints "running
 * GROUP ..." and the rest of that line when the group is done, up to a
 * minute later; meanwhile this shows the seconds elapsed at the end of the
 * unfinished line.  bench's standard output goes through a pipe to a
 * thread that copies it to the terminal and, after a second without
 * output in the middle of a line, writes " [N s]" there (cursor saved
 * before and restored after, so the next output erases it and goes on
 * where the line was).  Nothing changes when the output is not a terminal.
 */
struct relay {
	int in, out;
	pthread_t tid;
};

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	char buf[4096];
	bool partial = false, shown = false;
	double since = now_s();
	for (;;) {
		struct pollfd p = { .fd = r->in, .events = POLLIN };
		int n = poll(&p, 1, 1000);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0) {
			if (partial && now_s() - since >= 1.0) {
				char m[64];
				int len = snprintf(m, sizeof(m),
						   "\0337\033[K [%.0f s]\0338",
						   now_s() - since);
				write_all(r->out, m, (size_t)len);
				shown = true;
			}
			continue;
		}
		ssize_t got = read(r->in, buf, sizeof(buf));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		if (shown)
			write_all(r->out, "\033[K", 3);
		shown = false;
		write_all(r->out, buf, (size_t)got);
		bool ends_line = buf[got - 1] == '\n';
		if (!ends_line && (!partial || memchr(buf, '\n', (size_t)got)))
			since = now_s();
		partial = !ends_line;
	}
	if (shown)
		write_all(r->out, "\033[K", 3);
	return NULL;
}

static bool relay_start(struct relay *r)
{
	const char *term = getenv("TERM");
	if (!isatty(STDOUT_FILENO) || (term && !strcmp(term, "dumb")))
		return false;
	int p[2];
	if (pipe(p))
		return false;
	fflush(stdout);
	r->in = p[0];
	r->out = dup(STDOUT_FILENO);
	if (r->out < 0 || dup2(p[1], STDOUT_FILENO) < 0) {
		if (r->out >= 0)
			close(r->out);
		close(p[0]);
		close(p[1]);
		return false;
	}
	close(p[1]);
	if (pthread_create(&r->tid, NULL, relay_main, r)) {
		dup2(r->out, STDOUT_FILENO);
		close(r->out);
		close(p[0]);
		return false;
	}
	return true;
}

static void relay_stop(struct relay *r)
{
	fflush(stdout);
	dup2(r->out, STDOUT_FILENO); /* closes the pipe's last writer */
	pthread_join(r->tid, NULL);
	close(r->out);
	close(r->in);
}

static int cmd_bench(int argc, char **argv)
{
	struct relay r;
	bool relayed = relay_start(&r);
	int rc = bench_main(argc, argv);
	if (relayed)
		relay_stop(&r);
	return rc;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dxm [--help] [--version] COMMAND [OPTIONS]\n"
		"\n"
		"dxm gives user-space drivers device-exclusive access to "
		"memory (libdxm);\n"
		"this tool shows it working, says what this machine offers, "
		"and tests it.\n"
		"\n"
		"commands:\n"
		"  demo    updates lost without exclusive access, none with "
		"it; the latency of\n"
		"          a CPU access to a page a device holds (the best "
		"device here: a CUDA\n"
		"          or Vulkan GPU, or the software device; a few "
		"seconds)\n"
		"  info    what this kernel and this user give dxm (--json for "
		"scripts)\n"
		"  bench   every measurement beside its baseline (about a "
		"minute; --quick:\n"
		"          seconds)\n"
		"  stress  random concurrent work, invariants checked "
		"throughout (10 s by\n"
		"          default)\n"
		"  help [COMMAND]\n"
		"          this text, or a command's\n"
		"\n"
		"'dxm COMMAND --help' describes a command's options and their "
		"defaults.\n"
		"Exit status: 0 success, 1 failure, 2 usage error (dxm(1)).\n");
}

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
} commands[] = {
	{ "demo", cmd_demo },
	{ "info", cmd_info },
	{ "bench", cmd_bench },
	{ "stress", stress_main },
};

static int run_command(const char *name, int argc, char **argv)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(name, commands[i].name))
			return commands[i].fn(argc, argv);
	fprintf(stderr, "dxm: unknown command '%s'\nTry 'dxm --help'.\n",
		name);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
		printf("dxm %s\n", dxm_version());
		return 0;
	}
	if (!strcmp(cmd, "help")) {
		if (argc < 3) {
			usage(stdout);
			return 0;
		}
		char *args[] = { argv[2], "--help", NULL };
		return run_command(argv[2], 2, args);
	}
	if (cmd[0] == '-') {
		fprintf(stderr, "dxm: unknown option '%s'\nTry 'dxm --help'.\n",
			cmd);
		return EXIT_USAGE;
	}
	return run_command(cmd, argc - 1, argv + 1);
}
