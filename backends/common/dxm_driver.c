// SPDX-License-Identifier: MIT
/*
 * The driver loop of the GPU backends (backends/cuda, backends/vulkan),
 * on dxm's public API only; what is device-specific comes through
 * struct dxm_drv_ops (dxm_driver.h).
 *
 * Locking: d->lock, the driver lock, is the driver's lock of the
 * notifier protocol.  It protects everything below it in struct dxm_drv
 * (the imports, the work in flight, the counter and completed, the
 * stats, lost) and whatever the backend's locked ops touch (its stream
 * or queue, its pools, its fences).  The notifier callbacks take it to
 * call dxm_notifier_set_seq() and to find the work in flight on their
 * range, and wait for that work after dropping it; a dispatch takes it
 * between dxm_make_exclusive() and dxm_exclusive_unlock() to check
 * dxm_notifier_read_retry() and launch.  Those two dxm calls are the
 * only ones made under it (the protocol wants them there); every other
 * dxm call (device_view, make_exclusive, exclusive_unlock, notifier
 * insert and remove) and every wait for the device (ops->wait, polling,
 * ops->idle) is made without it, as nouveau does.
 *
 * Work in flight: every launch goes to the backend's one queue, in order,
 * with a fence after it; it gets the next value of a counter and
 * remembers the CPU range it holds.  retire() asks the fences oldest
 * first and advances d->completed; a wait (ops->wait, or polling retire()
 * with no lock held in between) lasts until completed reaches the value
 * it waits for.  Fences are freed under the lock only, so no thread asks
 * a freed one.  Once the device is lost nothing is freed before
 * dxm_drv_fini(): work that did not finish in time may still run on the
 * registered memory.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "dxm_driver.h"

#define DEFAULT_TIMEOUT_MS 10000
#define BUSY_TIMEOUT_NS	   (10ull * 1000000000ull)
#define POLL_MAX_US	   100

void dxm_drv_why(char *buf, size_t len, const char *fmt, ...)
{
	if (!buf || !len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void use(struct dxm_drv *d)
{
	if (d->ops->use)
		d->ops->use(d);
}

/* ------------------------------------------------------ work in flight */

static void release_import(struct dxm_drv *d, struct dxm_drv_import *im)
{
	for (struct dxm_drv_import **pp = &d->imports; *pp; pp = &(*pp)->next)
		if (*pp == im) {
			*pp = im->next;
			break;
		}
	d->ops->unimport(d, im);
	free(im);
}

static void free_work(struct dxm_drv *d, struct dxm_drv_work *w)
{
	d->ops->work_fini(d, w);
	if (w->own && !--w->own->users)
		release_import(d, w->own);
	free(w);
}

/* Free the work the device has finished (d->lock held).  Once the device
 * is lost nothing is freed here (dxm_drv_fini frees it). */
static void retire(struct dxm_drv *d)
{
	while (d->inflight && !d->st.lost) {
		struct dxm_drv_work *w = d->inflight;
		int done = d->ops->done(d, w);
		if (done < 0)
			d->st.lost = true;
		if (done <= 0)
			break;
		d->inflight = w->next;
		d->completed = w->value;
		free_work(d, w);
	}
}

/* Poll retire() (no lock held in between) until the work up to value is
 * done: 0, -ETIMEDOUT, -ENODEV (lost). */
static int poll_value(struct dxm_drv *d, uint64_t value, uint64_t timeout_ns)
{
	uint64_t t0 = now_ns();
	unsigned us = 1;
	for (;;) {
		pthread_mutex_lock(&d->lock);
		retire(d);
		bool done = d->completed >= value, lost = d->st.lost;
		pthread_mutex_unlock(&d->lock);
		if (lost)
			return -ENODEV;
		if (done)
			return 0;
		if (now_ns() - t0 >= timeout_ns)
			return -ETIMEDOUT;
		usleep(us);
		us = us < POLL_MAX_US ? us * 2 : POLL_MAX_US;
	}
}

/* Wait (no lock held) until the work up to value is done; a device that
 * reports itself lost, or does not get there in time if lose, is lost. */
static int wait_value(struct dxm_drv *d, uint64_t value, uint64_t timeout_ns,
		      bool lose)
{
	int err = d->ops->wait ? d->ops->wait(d, value, timeout_ns)
			       : poll_value(d, value, timeout_ns);
	if (!err || (err == -ETIMEDOUT && !lose))
		return err;
	pthread_mutex_lock(&d->lock);
	if (!d->st.lost)
		fprintf(stderr,
			"%s: %s %s; the device is declared lost, its pages "
			"given back to the CPU\n",
			d->ops->prefix, d->name,
			err == -ETIMEDOUT ? "did not finish its work in time"
					  : "was lost");
	d->st.lost = true;
	pthread_mutex_unlock(&d->lock);
	return -ENODEV;
}

/* ------------------------------------------------------------ notifiers */

static bool own_conversion(struct dxm_drv *d, const struct dxm_range *r)
{
	/* Ignore our own conversions, or the retry loop livelocks (B3). */
	return r->event == DXM_EVENT_EXCLUSIVE && r->owner == d;
}

/*
 * Every invalidation: set the sequence under the lock, note the newest
 * work in flight on the range, and wait for it outside the lock.  Only
 * then may the CPU have the pages back.  An UNMAP also marks the imports
 * used for the range dead (the device view goes with the region).
 */
static bool invalidate_all(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq)
{
	struct dxm_drv *d = dxm_notifier_priv(n);
	if (own_conversion(d, r))
		return true;
	uintptr_t s = (uintptr_t)r->start, e = (uintptr_t)r->end;
	uint64_t value = 0;
	use(d);
	pthread_mutex_lock(&d->lock);
	dxm_notifier_set_seq(n, cur_seq);
	retire(d);
	for (struct dxm_drv_work *w = d->inflight; w; w = w->next)
		if (w->start < e && s < w->end && w->value > value)
			value = w->value;
	bool lost = d->st.lost;
	pthread_mutex_unlock(&d->lock);
	if (value && !lost) {
		uint64_t t0 = now_ns();
		wait_value(d, value, d->timeout_ns, true);
		pthread_mutex_lock(&d->lock);
		d->st.invalidations++;
		d->st.invalidate_wait_ns += now_ns() - t0;
		pthread_mutex_unlock(&d->lock);
	}
	if (r->event == DXM_EVENT_UNMAP || r->event == DXM_EVENT_REMAP) {
		pthread_mutex_lock(&d->lock);
		for (struct dxm_drv_import *im = d->imports; im; im = im->next)
			if (!im->unmanaged && im->cpu_lo < e && s < im->cpu_hi)
				im->dead = true;
		pthread_mutex_unlock(&d->lock);
	}
	return true;
}

/* The per-dispatch notifier of the sequence protocol. */
static bool invalidate_op(struct dxm_notifier *n, const struct dxm_range *r,
			  unsigned long cur_seq)
{
	struct dxm_drv *d = dxm_notifier_priv(n);
	if (own_conversion(d, r))
		return true;
	pthread_mutex_lock(&d->lock);
	dxm_notifier_set_seq(n, cur_seq);
	pthread_mutex_unlock(&d->lock);
	return true;
}

static const struct dxm_notifier_ops all_ops = { .invalidate = invalidate_all };
static const struct dxm_notifier_ops op_ops = { .invalidate = invalidate_op };

/* -------------------------------------------------------- init, fini */

void dxm_drv_init(struct dxm_drv *d, const struct dxm_drv_ops *ops,
		  struct dxm_ctx *ctx, unsigned timeout_ms)
{
	d->ops = ops;
	d->ctx = ctx;
	d->psize = (size_t)sysconf(_SC_PAGESIZE);
	d->timeout_ns =
		(uint64_t)(timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS) *
		1000000ull;
	pthread_mutex_init(&d->lock, NULL);
}

int dxm_drv_start(struct dxm_drv *d)
{
	/* The whole user address space: every invalidation reaches us. */
	return dxm_notifier_insert(d->ctx, (void *)d->psize,
				   ((size_t)1 << 47) - d->psize, &all_ops, d,
				   &d->all);
}

void dxm_drv_fini(struct dxm_drv *d)
{
	/* All work done before the notifier goes: a CPU access to a page
	 * still held must find nothing in flight.  A lost device's work may
	 * still run on registered memory: wait for it too before
	 * unregistering anything.  ops->idle selects the device where it
	 * must (what follows runs on this thread). */
	d->ops->idle(d);
	if (d->all)
		dxm_notifier_remove(d->all);
	pthread_mutex_lock(&d->lock);
	while (d->inflight) {
		struct dxm_drv_work *w = d->inflight;
		d->inflight = w->next;
		free_work(d, w);
	}
	while (d->imports)
		release_import(d, d->imports);
	pthread_mutex_unlock(&d->lock);
	pthread_mutex_destroy(&d->lock);
}

/* -------------------------------------------------------------- imports */

/* A new import of [base, base+len), first in d->imports (d->lock held). */
static int new_import(struct dxm_drv *d, void *base, size_t len,
		      struct dxm_drv_import **imp)
{
	struct dxm_drv_import *im = calloc(1, d->ops->import_size);
	if (!im)
		return -ENOMEM;
	im->base = base;
	im->len = len;
	int err = d->ops->import(d, im);
	if (err) {
		free(im);
		return err;
	}
	im->cpu_lo = UINTPTR_MAX;
	im->next = d->imports;
	d->imports = im;
	*imp = im;
	return 0;
}

/* The import of the device view based at base (d->lock held): made once
 * per region, dropped once the region's CPU view is unmapped and nothing
 * in flight uses it. */
static int get_import(struct dxm_drv *d, void *base, size_t len,
		      struct dxm_drv_import **imp)
{
	for (struct dxm_drv_import **pp = &d->imports; *pp;) {
		struct dxm_drv_import *im = *pp;
		if (im->dead) {
			bool used = false;
			for (struct dxm_drv_work *w = d->inflight; w && !used;
			     w = w->next)
				used = w->start < im->cpu_hi &&
				       im->cpu_lo < w->end;
			if (!used) {
				release_import(d, im);
				continue;
			}
		} else if (!im->unmanaged && im->base == base &&
			   im->len == len) {
			*imp = im;
			return 0;
		}
		pp = &im->next;
	}
	int err = new_import(d, base, len, imp);
	if (!err)
		d->st.imports++;
	return err;
}

/* ------------------------------------------------------------- dispatch */

/* Launch kernel over [off, off+len) of im (d->lock held); w in flight. */
static int launch(struct dxm_drv *d, void *kernel, struct dxm_drv_import *im,
		  size_t off, size_t len, const void *push,
		  const uint32_t groups[3], struct dxm_drv_work *w)
{
	w->value = d->next_value + 1;
	int err = d->ops->launch(d, kernel, im, off, len, push, groups, w);
	if (err)
		return d->st.lost ? -ENODEV : err;
	d->next_value = w->value;
	d->st.dispatches++;
	/* In launch order: the oldest first. */
	struct dxm_drv_work **pp = &d->inflight;
	while (*pp)
		pp = &(*pp)->next;
	w->next = NULL;
	*pp = w;
	return 0;
}

/* Ordinary host memory, no dxm: the device races with the CPU.  The
 * program's buffer is registered once while work is in flight on it. */
static int dispatch_unmanaged(struct dxm_drv *d, void *kernel, void *addr,
			      size_t len, const void *push,
			      const uint32_t groups[3], uint64_t *ticket)
{
	struct dxm_drv_work *w = calloc(1, d->ops->work_size);
	if (!w)
		return -ENOMEM;
	pthread_mutex_lock(&d->lock);
	int err = d->st.lost ? -ENODEV : 0;
	struct dxm_drv_import *im = NULL;
	for (struct dxm_drv_import *i = d->imports; i && !err && !im;
	     i = i->next)
		if (i->unmanaged && i->base == addr && i->len == len)
			im = i;
	if (!err && !im) {
		err = new_import(d, addr, len, &im);
		if (!err)
			im->unmanaged = true;
	}
	if (!err) {
		im->users++;
		w->own = im;
		w->start = (uintptr_t)addr;
		w->end = (uintptr_t)addr + len;
		err = launch(d, kernel, im, 0, len, push, groups, w);
		if (err && !--im->users)
			release_import(d, im);
	}
	if (!err && ticket)
		*ticket = w->value;
	pthread_mutex_unlock(&d->lock);
	if (err)
		free(w);
	return err;
}

int dxm_drv_dispatch(struct dxm_drv *d, void *kernel, void *addr, size_t len,
		     const void *push, const uint32_t groups[3], bool unmanaged,
		     uint64_t *ticket)
{
	if (!addr || !len || !groups ||
	    ((uintptr_t)addr | len) & (d->psize - 1))
		return -EINVAL;
	use(d);
	if (unmanaged)
		return dispatch_unmanaged(d, kernel, addr, len, push, groups,
					  ticket);
	size_t n = len / d->psize;
	void **dev = malloc(n * sizeof(*dev));
	struct dxm_drv_work *w = calloc(1, d->ops->work_size);
	struct dxm_notifier *op = NULL;
	int err = dev && w ? 0 : -ENOMEM;
	if (!err)
		err = dxm_notifier_insert(d->ctx, addr, len, &op_ops, d, &op);
	uint64_t t0 = now_ns();
	unsigned us = 1;
	while (!err) {
		/* The device view, registered once, before any conversion. */
		struct dxm_device_view dv;
		err = dxm_device_view(d->ctx, addr, 0, &dv, sizeof(dv));
		if (err)
			break;
		if ((dv.flags & DXM_DEVVIEW_HOLES) && d->ops->refuse_holes) {
			err = -EOPNOTSUPP;
			break;
		}
		if (dv.psize && dv.psize != d->psize) {
			/* Huge pages: dev[] has one entry per huge page,
			 * and no driver here was tried on them. */
			err = -EOPNOTSUPP;
			break;
		}
		unsigned long seq = dxm_notifier_read_begin(op);
		long got = dxm_make_exclusive(d->ctx, addr, len, d, dev);
		if (got < 0) {
			err = (int)got;
			break;
		}
		bool all = true;
		for (size_t i = 0; i < n && all; i++)
			all = dev[i] ==
			      (char *)dv.base + dv.offset + i * d->psize;
		pthread_mutex_lock(&d->lock);
		if (d->st.lost) {
			err = -ENODEV;
		} else if (!all || dxm_notifier_read_retry(op, seq)) {
			/* A page busy (another device, the CPU taking it
			 * back), or an invalidation since read_begin. */
			if (all)
				d->st.retries++;
			else
				d->st.busy_retries++;
			pthread_mutex_unlock(&d->lock);
			dxm_exclusive_unlock(d->ctx, addr, len, dev);
			if (now_ns() - t0 > BUSY_TIMEOUT_NS) {
				err = -EBUSY;
				break;
			}
			usleep(us);
			us = us < 1000 ? us * 2 : us;
			continue;
		} else {
			retire(d);
			struct dxm_drv_import *im;
			err = get_import(d, dv.base, dv.len, &im);
			w->start = (uintptr_t)addr;
			w->end = (uintptr_t)addr + len;
			if (!err)
				err = launch(d, kernel, im, dv.offset, len,
					     push, groups, w);
			if (!err) {
				if (w->start < im->cpu_lo)
					im->cpu_lo = w->start;
				if (w->end > im->cpu_hi)
					im->cpu_hi = w->end;
				if (ticket)
					*ticket = w->value;
				w = NULL; /* in flight */
			}
		}
		pthread_mutex_unlock(&d->lock);
		/* The pages stay the device's until a CPU access: the
		 * invalidation then waits for this work. */
		dxm_exclusive_unlock(d->ctx, addr, len, dev);
		break;
	}
	if (op)
		dxm_notifier_remove(op);
	free(w);
	free(dev);
	return err;
}

/* -------------------------------------------------- wait, done, stats */

int dxm_drv_wait(struct dxm_drv *d, uint64_t ticket, uint64_t timeout_ns)
{
	use(d);
	pthread_mutex_lock(&d->lock);
	bool lost = d->st.lost;
	pthread_mutex_unlock(&d->lock);
	if (lost)
		return -ENODEV;
	int err = wait_value(d, ticket, timeout_ns, false);
	if (!err) {
		pthread_mutex_lock(&d->lock);
		retire(d);
		pthread_mutex_unlock(&d->lock);
	}
	return err;
}

int dxm_drv_done(struct dxm_drv *d, uint64_t ticket)
{
	use(d);
	pthread_mutex_lock(&d->lock);
	retire(d);
	int ret = d->st.lost ? -ENODEV : d->completed >= ticket;
	pthread_mutex_unlock(&d->lock);
	return ret;
}

void dxm_drv_get_stats(struct dxm_drv *d, struct dxm_drv_stats *st)
{
	pthread_mutex_lock(&d->lock);
	*st = d->st;
	pthread_mutex_unlock(&d->lock);
}
