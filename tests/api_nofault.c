// SPDX-License-Identifier: MIT
/*
 * The public API end to end without a single CPU fault on managed memory:
 * pages go to the device and back only through dxm calls (make_exclusive,
 * range_fault, free), and the device touches them only at dev[i].  This is
 * what valgrind's memcheck can run: a thread blocked in a userfaultfd
 * fault would hold valgrind's lock and the handler could never resolve
 * it.  (The Criterion suite covers faults, under ASan too.)
 *
 * Exit status 0 when every check holds; the first failure is printed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dxm.h"
#include "dxm_mirror.h"

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			exit(1);                                               \
		}                                                              \
	} while (0)

#define NP 16
static size_t ps;

static unsigned calls;
static bool inv(struct dxm_notifier *n, const struct dxm_range *r,
		unsigned long seq)
{
	(void)r;
	calls++;
	dxm_notifier_set_seq(n, seq);
	return true;
}
static const struct dxm_notifier_ops ops = { .invalidate = inv };

/* Device round trips on [p, p+NP pages): exclusive, device writes at
 * dev[i], back to the CPU with dxm_range_fault, checked by the CPU (the
 * pages are mapped again, so no fault). */
static void round_trip(struct dxm_ctx *ctx, char *p, int round)
{
	void *dev[NP];
	unsigned long seq;
	struct dxm_notifier *n;
	CHECK(dxm_notifier_insert(ctx, p, NP * ps, &ops, NULL, &n) == 0);
	seq = dxm_notifier_read_begin(n);
	CHECK(dxm_make_exclusive(ctx, p, NP * ps, ctx, dev) == NP);
	CHECK(dxm_notifier_read_retry(n, seq)); /* our callback set_seq'd */
	for (int i = 0; i < NP; i++) {
		CHECK(dev[i]);
		*(long *)dev[i] += 1000 + round;
	}
	dxm_exclusive_unlock(ctx, p, NP * ps, dev);
	CHECK(dxm_check_exclusive(ctx, p, NP * ps, dev));
	CHECK(dxm_range_fault(ctx, p, NP * ps, DXM_FAULT_WRITE, NULL) == NP);
	CHECK(!dxm_check_exclusive(ctx, p, NP * ps, dev));
	for (int i = 0; i < NP; i++)
		CHECK(*(long *)(p + i * ps) == i + 1000 * (round + 1) +
						       round * (round + 1) / 2);
	dxm_notifier_remove(n);
}

int main(void)
{
	struct dxm_ctx *ctx;
	struct dxm_stats st;
	ps = (size_t)sysconf(_SC_PAGESIZE);
	int err = dxm_ctx_create(&ctx, NULL);
	if (err == -ENOSYS || err == -EPERM) {
		printf("SKIP: no usable userfaultfd (%s)\n", strerror(-err));
		return 77;
	}
	CHECK(err == 0);

	/* memfd region, an alias, the mirror */
	char *p, *a;
	CHECK(dxm_alloc(ctx, NP * ps, 0, (void **)&p) == 0);
	for (int i = 0; i < NP; i++)
		*(long *)(p + i * ps) = i;
	CHECK(dxm_alias(ctx, p, (void **)&a) == 0);
	CHECK(*(long *)(a + 3 * ps) == 3);
	for (int r = 0; r < 3; r++)
		round_trip(ctx, p, r);
	CHECK(calls > 0);

	struct dxm_mirror *m;
	CHECK(dxm_mirror_create(ctx, &m) == 0);
	long buf[512];
	CHECK(dxm_mirror_read(m, p, buf, ps) == 0);
	CHECK(buf[0] == *(long *)p);
	CHECK(dxm_mirror_exclusive(m, p, NP * ps) == 0);
	CHECK(dxm_mirror_check_exclusive(m, p, NP * ps) == NP);
	uint64_t old;
	CHECK(dxm_mirror_atomic_add(m, (uint64_t *)p, 5, &old) == 0);
	CHECK(dxm_range_fault(ctx, p, NP * ps, 0, NULL) == NP);
	CHECK(*(long *)p == (long)old + 5);
	CHECK(dxm_mirror_check_exclusive(m, p, NP * ps) == 0);
	dxm_mirror_destroy(m);

	CHECK(dxm_mprotect(ctx, a, NP * ps, PROT_READ) == 0);
	void *dev[NP];
	CHECK(dxm_make_exclusive(ctx, a, NP * ps, NULL, dev) == -EPERM);
	CHECK(dxm_free(ctx, a) == 0);

	/* adopted anonymous memory, populated so that nothing faults */
	char *q = mmap(NULL, NP * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	CHECK(q != MAP_FAILED);
	for (int i = 0; i < NP; i++)
		*(long *)(q + i * ps) = i;
	err = dxm_adopt(ctx, q, NP * ps, 0);
	CHECK(err == 0 || err == -ENOSYS);
	if (!err) {
		for (int r = 0; r < 3; r++)
			round_trip(ctx, q, r);
		CHECK(dxm_make_exclusive(ctx, q, NP * ps, NULL, dev) == NP);
		*(long *)dev[2] = 4242;
		dxm_exclusive_unlock(ctx, q, NP * ps, dev);
		CHECK(dxm_free(ctx, q) == 0); /* hands every page back */
		CHECK(*(long *)(q + 2 * ps) == 4242);
	}
	munmap(q, NP * ps);

	/* bad input */
	CHECK(dxm_make_exclusive(ctx, p + 1, ps, NULL, dev) == -EINVAL);
	CHECK(dxm_free(ctx, p + ps) == -EINVAL);
	CHECK(dxm_stats(ctx, &st, sizeof(st)) == 0);
	CHECK(st.regions == 1 && st.cpu_faults == 0);
	CHECK(dxm_free(ctx, p) == 0);
	CHECK(dxm_free(ctx, p) == -ENOENT);
	dxm_ctx_destroy(ctx);
	CHECK(dxm_free(ctx, p) == -EBADF);
	printf("api_nofault: ok\n");
	return 0;
}
