// SPDX-License-Identifier: MIT
/*
 * dxm bench: the driver.  Runs the groups (revoke, restore, pingpong,
 * steady, scale, memory) in one process, then prints one table of medians
 * and p99s with each figure's ratio to its baseline, writes one CSV file
 * of raw samples per group plus summary.csv and targets.csv, draws the
 * plots with gnuplot when it is installed, and ends with one line per
 * target: "target NAME: MEASURED (goal GOAL) ok" or "... MISSED".
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "harness.h"

extern char **environ;

struct bn_opts bn_opt;

static const struct group {
	const char *name;
	const char *what;
	int (*run)(void);
} groups[] = {
	{ "revoke", "dxm_make_exclusive vs raw zap vs mprotect(PROT_NONE)",
	  bn_run_revoke },
	{ "restore", "CPU touch of a revoked page: dxm vs bare uffd, minor "
		     "fault, mprotect+SIGSEGV",
	  bn_run_restore },
	{ "pingpong", "device atomic then CPU touch, 1 page and 512-page "
		      "bursts, vs mprotect+SIGSEGV",
	  bn_run_pingpong },
	{ "steady", "CPU loop and device atomics without changes of hands, "
		    "vs plain memory",
	  bn_run_steady },
	{ "scale", "1-8 CPU threads faulting at once, 1 and 2 handler "
		   "threads",
	  bn_run_scale },
	{ "memory", "metadata per page; dxm_alloc/dxm_free vs plain memfd",
	  bn_run_memory },
	{ "huge", "1 GiB as 4 KiB vs 2 MiB pages: revoke, read-back, restore",
	  bn_run_huge },
	{ "sweep", "the CPU reading results back: in order, reversed, random, "
		   "vs kernel minor faults",
	  bn_run_sweep },
	{ "device", "a real device's round trip through its backend (CUDA, "
		    "Vulkan), vs the same work with no dxm",
	  bn_run_device },
};
#define NGROUPS (sizeof(groups) / sizeof(groups[0]))

/* ------------------------------------------------------------------ rows */

struct row {
	char group[16], figure[40], method[40];
	struct bn_series *s;
	enum bn_kind kind;
	double work, value;
	char unit[24];
	int base;
};
static struct row *rows;
static size_t nrows, caprows;

static int add_row(struct row *r)
{
	if (nrows == caprows) {
		size_t cap = caprows ? 2 * caprows : 64;
		struct row *n = realloc(rows, cap * sizeof(*n));
		if (!n)
			return -1;
		rows = n;
		caprows = cap;
	}
	rows[nrows] = *r;
	return (int)nrows++;
}

int bn_row(struct bn_series *s, enum bn_kind kind, double work,
	   const char *unit, int base)
{
	struct row r = { .s = s, .kind = kind, .work = work, .base = base };
	snprintf(r.group, sizeof(r.group), "%s", s->group);
	snprintf(r.figure, sizeof(r.figure), "%s", s->figure);
	snprintf(r.method, sizeof(r.method), "%s", s->method);
	snprintf(r.unit, sizeof(r.unit), "%s", unit);
	return add_row(&r);
}

int bn_row_value(const char *group, const char *figure, const char *method,
		 double value, const char *unit)
{
	struct row r = { .kind = BN_VALUE, .value = value, .base = -1 };
	snprintf(r.group, sizeof(r.group), "%s", group);
	snprintf(r.figure, sizeof(r.figure), "%s", figure);
	snprintf(r.method, sizeof(r.method), "%s", method);
	snprintf(r.unit, sizeof(r.unit), "%s", unit);
	return add_row(&r);
}

struct bn_series *bn_row_series(int row)
{
	return row >= 0 && (size_t)row < nrows ? rows[row].s : NULL;
}

double bn_row_at(int row, double q)
{
	if (row < 0 || (size_t)row >= nrows)
		return NAN;
	struct row *r = &rows[row];
	switch (r->kind) {
	case BN_LAT:
		return bn_quantile(r->s, q);
	case BN_RATE:
		return r->work * 1e9 / bn_quantile(r->s, q);
	default:
		return r->value;
	}
}

double bn_row_ratio(int row, double q)
{
	if (row < 0 || (size_t)row >= nrows || rows[row].base < 0)
		return NAN;
	return bn_row_at(row, q) / bn_row_at(rows[row].base, q);
}

/* --------------------------------------------------- targets and notes */

struct target {
	char line[256];
	bool ok;
};
static struct target *targets;
static size_t ntargets;
static char **notes;
static size_t nnotes;

void bn_target(const char *name, const char *measured, const char *goal,
	       bool ok)
{
	struct target *t = realloc(targets, (ntargets + 1) * sizeof(*t));
	if (!t)
		return;
	targets = t;
	t = &targets[ntargets++];
	snprintf(t->line, sizeof(t->line), "target %s: %s (goal %s) %s", name,
		 measured, goal, ok ? "ok" : "MISSED");
	t->ok = ok;
}

void bn_note(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	char **n = realloc(notes, (nnotes + 1) * sizeof(*n));
	if (!n)
		return;
	notes = n;
	notes[nnotes] = strdup(buf);
	if (notes[nnotes])
		nnotes++;
}

/* ----------------------------------------------------------------- plots */

struct plot {
	char name[32];
	char *body;
};
static struct plot *plots;
static size_t nplots;

const char *bn_path(char *buf, size_t size, const char *file)
{
	snprintf(buf, size, "%s/%s", bn_opt.out, file);
	return buf;
}

void bn_plot(const char *name, const char *body)
{
	struct plot *p = realloc(plots, (nplots + 1) * sizeof(*p));
	if (!p)
		return;
	plots = p;
	p = &plots[nplots];
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->body = strdup(body);
	if (p->body)
		nplots++;
}

static bool in_path(const char *prog)
{
	const char *path = getenv("PATH");
	if (!path)
		path = "/usr/bin:/bin";
	char dir[4096];
	while (*path) {
		size_t n = strcspn(path, ":");
		snprintf(dir, sizeof(dir), "%.*s/%s", (int)n, path, prog);
		if (n && access(dir, X_OK) == 0)
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

static void draw_plots(void)
{
	if (!nplots)
		return;
	if (!in_path("gnuplot")) {
		printf("note: gnuplot is not installed: PNG plots skipped (the "
		       "CSV and .dat files are in %s; apt-get install "
		       "gnuplot-nox to get the plots)\n",
		       bn_opt.out);
		return;
	}
	char script[512];
	FILE *f = fopen(bn_path(script, sizeof(script), "plots.gp"), "w");
	if (!f) {
		printf("note: cannot write %s: %s: plots skipped\n", script,
		       strerror(errno));
		return;
	}
	for (size_t i = 0; i < nplots; i++) {
		char png[512], file[64];
		snprintf(file, sizeof(file), "%s.png", plots[i].name);
		fprintf(f,
			"reset\n"
			"if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) "
			"{ set terminal pngcairo noenhanced size 1000,650 } "
			"else { set terminal png noenhanced size 1000,650 }\n"
			"set output '%s'\n%s"
			"unset output\n",
			bn_path(png, sizeof(png), file), plots[i].body);
	}
	fclose(f);
	fflush(stdout);
	fflush(stderr);
	pid_t pid;
	char *argv[] = { "gnuplot", script, NULL };
	int err = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
	int status = 0;
	if (!err && waitpid(pid, &status, 0) < 0)
		err = errno;
	if (err || !WIFEXITED(status) || WEXITSTATUS(status)) {
		printf("note: gnuplot failed (%s): PNG plots may be missing; "
		       "the data is in %s\n",
		       err ? strerror(err) : "see its messages above",
		       bn_opt.out);
		return;
	}
	for (size_t i = 0; i < nplots; i++)
		printf("plot: %s/%s.png\n", bn_opt.out, plots[i].name);
}

/* ----------------------------------------------------------------- table */

static void fmt_time(char *buf, size_t n, double ns)
{
	if (isnan(ns))
		snprintf(buf, n, "-");
	else if (ns < 1e3)
		snprintf(buf, n, "%.0f ns", ns);
	else if (ns < 1e6)
		snprintf(buf, n, "%.3g us", ns / 1e3);
	else if (ns < 1e9)
		snprintf(buf, n, "%.3g ms", ns / 1e6);
	else
		snprintf(buf, n, "%.3g s", ns / 1e9);
}

static void fmt_num(char *buf, size_t n, double v)
{
	if (isnan(v))
		snprintf(buf, n, "-");
	else if (v >= 1e9)
		snprintf(buf, n, "%.3gG", v / 1e9);
	else if (v >= 1e6)
		snprintf(buf, n, "%.3gM", v / 1e6);
	else if (v >= 1e3)
		snprintf(buf, n, "%.3gk", v / 1e3);
	else
		snprintf(buf, n, "%.3g", v);
}

static void fmt_cell(char *buf, size_t n, struct row *r, double q)
{
	double v = bn_row_at((int)(r - rows), q);
	if (r->kind == BN_LAT) {
		fmt_time(buf, n, v);
	} else {
		char x[32];
		fmt_num(x, sizeof(x), v);
		snprintf(buf, n, "%s %s", x, r->unit);
	}
}

static void fmt_ratio(char *buf, size_t n, double v)
{
	if (isnan(v))
		snprintf(buf, n, "-");
	else
		snprintf(buf, n, "%.2fx", v);
}

static void print_table(void)
{
	printf("\n%-8s %-32s %-30s %6s %20s %20s %7s %7s  %s\n", "group",
	       "figure", "method", "n", "median", "p99", "ratio", "r.p99",
	       "baseline");
	const char *last = "";
	for (size_t i = 0; i < nrows; i++) {
		struct row *r = &rows[i];
		char med[64], p99[64], rat[16], rat99[16];
		fmt_cell(med, sizeof(med), r, 0.5);
		if (r->kind == BN_VALUE)
			snprintf(p99, sizeof(p99), "-");
		else
			fmt_cell(p99, sizeof(p99), r, 0.99);
		fmt_ratio(rat, sizeof(rat), bn_row_ratio((int)i, 0.5));
		fmt_ratio(rat99, sizeof(rat99), bn_row_ratio((int)i, 0.99));
		if (strcmp(last, r->group))
			printf("\n");
		last = r->group;
		char n[16];
		if (r->s)
			snprintf(n, sizeof(n), "%zu", r->s->n);
		else
			snprintf(n, sizeof(n), "-");
		printf("%-8s %-32s %-30s %6s %20s %20s %7s %7s  %s\n", r->group,
		       r->figure, r->method, n, med, p99, rat, rat99,
		       r->base >= 0 ? rows[r->base].method : "(baseline)");
	}
	printf("\nmedian/p99: per sample; for a rate (x/s) the p99 column is "
	       "the rate of the slowest 1%% of samples.\nratio: this row's "
	       "figure / its baseline's at the same quantile (rates: > 1 is "
	       "faster; times: < 1 is faster).\n");
}

static int write_summary(void)
{
	char path[512];
	FILE *f = fopen(bn_path(path, sizeof(path), "summary.csv"), "w");
	if (!f)
		return -errno;
	fprintf(f, "group,figure,method,param,kind,unit,n,median,p99,"
		   "ratio_p50,ratio_p99,baseline\n");
	for (size_t i = 0; i < nrows; i++) {
		struct row *r = &rows[i];
		static const char *kinds[] = { "ns", "rate", "value" };
		fprintf(f, "%s,\"%s\",\"%s\",%ld,%s,%s,%zu,%.6g,%.6g,%.4f,%.4f,"
			   "\"%s\"\n",
			r->group, r->figure, r->method, r->s ? r->s->param : 0,
			kinds[r->kind], r->kind == BN_LAT ? "ns" : r->unit,
			r->s ? r->s->n : 0, bn_row_at((int)i, 0.5),
			r->kind == BN_VALUE ? NAN : bn_row_at((int)i, 0.99),
			bn_row_ratio((int)i, 0.5), bn_row_ratio((int)i, 0.99),
			r->base >= 0 ? rows[r->base].method : "");
	}
	if (fclose(f))
		return -errno;
	f = fopen(bn_path(path, sizeof(path), "targets.csv"), "w");
	if (!f)
		return -errno;
	fprintf(f, "line,ok\n");
	for (size_t i = 0; i < ntargets; i++)
		fprintf(f, "\"%s\",%d\n", targets[i].line, targets[i].ok);
	return fclose(f) ? -errno : 0;
}

/* ---------------------------------------------------------------- driver */

static int mkdirs(const char *dir)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", dir);
	for (char *p = buf + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			if (mkdir(buf, 0777) && errno != EEXIST)
				return -errno;
			*p = '/';
		}
	if (mkdir(buf, 0777) && errno != EEXIST)
		return -errno;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dxm bench [--quick] [--out DIR] [--only GROUP]\n"
		"\n"
		"Every measurement side by side with its baseline, in one "
		"run: a table of\n"
		"medians and p99s with their ratios, CSV files and plots "
		"(with gnuplot), and\n"
		"one line per target. A full run takes about a minute; on a "
		"terminal the\n"
		"group that is running shows the seconds elapsed.\n"
		"\n"
		"  --quick      fewer samples and sizes: seconds instead of a "
		"minute; checks\n"
		"               that the benchmark works (default: the full "
		"run)\n"
		"  --out DIR    where the CSV files and plots go (default "
		"bench/results,\n"
		"               under the current directory; created)\n"
		"  --only GROUP run one group (default: every group), one "
		"of:\n              ");
	for (size_t i = 0; i < NGROUPS; i++)
		fprintf(f, " %s", groups[i].name);
	fprintf(f, "\n  -h, --help   this text\n\ngroups:\n");
	for (size_t i = 0; i < NGROUPS; i++)
		fprintf(f, "  %-9s %s\n", groups[i].name, groups[i].what);
	fprintf(f, "\nEnds with one line per target: \"target NAME: MEASURED "
		   "(goal GOAL) ok\" or\n\"... MISSED\".\n"
		   "Exit status: 0 every group ran (a missed target is a "
		   "result, not an error),\n"
		   "1 a group could not run (the reason is on stderr), 2 "
		   "usage error.\n");
}

static void header(void)
{
	struct utsname u;
	uname(&u);
	time_t now = time(NULL);
	char date[64];
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z",
		 localtime(&now));
	printf("dxm bench%s: %s, Linux %s %s, %ld CPUs, uid %d\n",
	       bn_opt.quick ? " --quick" : "", date, u.release, u.machine,
	       sysconf(_SC_NPROCESSORS_ONLN), (int)getuid());
	struct dxm_features f = DXM_OPTS(dxm_features);
	if (!dxm_probe(&f, sizeof(f))) {
		printf("dxm %s: userfaultfd %s, %u handler thread(s) by "
		       "default, modes measured:",
		       dxm_version(), dxm_uffd_mode_str(f.uffd_mode),
		       f.handler_threads);
		for (size_t i = 0; i < bn_n_dxm_modes; i++)
			printf(" %s", bn_dxm_modes[i].name);
		printf("\n");
	}
	/* What a timestamp costs: every sample pays two. */
	uint64_t best = UINT64_MAX;
	for (int i = 0; i < 1000; i++) {
		uint64_t a = bn_now(), b = bn_now();
		if (b - a < best)
			best = b - a;
	}
	printf("clock_gettime(CLOCK_MONOTONIC): %lu ns per call (min of "
	       "1000); not subtracted\n",
	       (unsigned long)best);
}

int bench_main(int argc, char **argv)
{
	const char *only = NULL;
	bn_opt.quick = false;
	bn_opt.out = "bench/results";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			bn_opt.quick = true;
		} else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
			bn_opt.out = argv[++i];
		} else if (!strncmp(argv[i], "--out=", 6)) {
			bn_opt.out = argv[i] + 6;
		} else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
			only = argv[++i];
		} else if (!strncmp(argv[i], "--only=", 7)) {
			only = argv[i] + 7;
		} else if (!strcmp(argv[i], "--help") ||
			   !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "dxm bench: unknown option '%s'\n",
				argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (only) {
		bool found = false;
		for (size_t i = 0; i < NGROUPS; i++)
			found |= !strcmp(only, groups[i].name);
		if (!found) {
			fprintf(stderr, "dxm bench: no group '%s'\n", only);
			usage(stderr);
			return 2;
		}
	}
	int err = mkdirs(bn_opt.out);
	if (err) {
		fprintf(stderr, "dxm bench: cannot create %s: %s\n", bn_opt.out,
			strerror(-err));
		return 1;
	}
	bn_psize = (size_t)sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);

	uint64_t start = bn_now();
	header();
	int failed = 0;
	for (size_t i = 0; i < NGROUPS; i++) {
		if (only && strcmp(only, groups[i].name))
			continue;
		uint64_t t0 = bn_now();
		printf("running %-9s %s ...", groups[i].name, groups[i].what);
		fflush(stdout);
		int rc = groups[i].run();
		printf(" %s, %.1f s\n", rc ? "FAILED" : "done",
		       (double)(bn_now() - t0) / 1e9);
		if (rc)
			failed++;
		char path[512], file[64];
		snprintf(file, sizeof(file), "%s.csv", groups[i].name);
		err = bn_write_samples(groups[i].name,
				       bn_path(path, sizeof(path), file));
		if (err)
			fprintf(stderr, "dxm bench: %s: %s\n", path,
				strerror(-err));
	}

	print_table();
	err = write_summary();
	if (err)
		fprintf(stderr, "dxm bench: summary.csv: %s\n", strerror(-err));
	for (size_t i = 0; i < nnotes; i++)
		printf("note: %s\n", notes[i]);
	draw_plots();
	printf("CSV: %s/{<group>,summary,targets}.csv\n", bn_opt.out);
	if (failed)
		printf("%d group(s) FAILED to run (see the messages above)\n",
		       failed);
	printf("wall time: %.1f s\n\n", (double)(bn_now() - start) / 1e9);
	for (size_t i = 0; i < ntargets; i++)
		printf("%s\n", targets[i].line);

	for (size_t i = 0; i < nnotes; i++)
		free(notes[i]);
	free(notes);
	notes = NULL;
	nnotes = 0;
	for (size_t i = 0; i < nplots; i++)
		free(plots[i].body);
	free(plots);
	plots = NULL;
	nplots = 0;
	free(targets);
	targets = NULL;
	ntargets = 0;
	free(rows);
	rows = NULL;
	nrows = caprows = 0;
	bn_series_free_all();
	return failed ? 1 : 0;
}
