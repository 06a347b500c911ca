// SPDX-License-Identifier: MIT
/*
 * The smallest dxm driver: allocate managed memory, take a page exclusive
 * for a "device", write through the device-side address, and watch the CPU
 * fault the page back (the invalidate callback runs first).
 *
 *   cc quickstart.c $(pkg-config --cflags --libs dxm) -o quickstart
 */
#include <stdio.h>
#include <string.h>

#include <dxm.h>

static bool invalidate(struct dxm_notifier *n, const struct dxm_range *r,
		       unsigned long cur_seq)
{
	/* A real driver takes its lock, stops the device from touching
	 * [r->start, r->end), records cur_seq, and unlocks. */
	dxm_notifier_set_seq(n, cur_seq);
	printf("invalidate [%p, %p) event %d\n", r->start, r->end, r->event);
	return true;
}

static const struct dxm_notifier_ops ops = { .invalidate = invalidate };

int main(void)
{
	struct dxm_ctx *ctx;
	struct dxm_notifier *n;
	long *buf;
	void *dev[1];
	int err;

	err = dxm_ctx_create(&ctx, NULL);
	if (err) {
		fprintf(stderr, "dxm_ctx_create: %s\n", strerror(-err));
		return 1;
	}
	err = dxm_alloc(ctx, 4096, 0, (void **)&buf);
	if (!err)
		err = dxm_notifier_insert(ctx, buf, 4096, &ops, NULL, &n);
	if (err) {
		fprintf(stderr, "dxm: %s\n", strerror(-err));
		return 1;
	}
	buf[0] = 41;

	/* The device takes the page: every CPU mapping is revoked. */
	if (dxm_make_exclusive(ctx, buf, 4096, ctx, dev) != 1 || !dev[0])
		return 1;
	((long *)dev[0])[0]++; /* the device's atomic, through dev[0] */
	dxm_exclusive_unlock(ctx, buf, 4096, dev);

	/* The CPU's access faults; the callback runs; then the load completes. */
	printf("CPU reads %ld\n", buf[0]);

	dxm_notifier_remove(n);
	dxm_free(ctx, buf);
	dxm_ctx_destroy(ctx);
	return 0;
}
