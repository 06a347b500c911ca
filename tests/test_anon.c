// SPDX-License-Identifier: MIT
/*
 * Adopted private anonymous memory (dxm_adopt): the behaviours of B1-B12 on
 * memory the program already had.  A conversion moves each page (no copy:
 * UFFDIO_MOVE) to a staging area whose address is the device-side address;
 * a CPU fault moves it back after the notifiers ran; a page the CPU never
 * had reads as zeros; the program's MADV_DONTNEED and munmap discard what
 * is staged (DXM_EVENT_UNMAP); dxm_free hands every page back; dxm_mprotect
 * makes device writes fail and CPU writes fault; a device that touches a
 * staging page after its invalidation returned is detected.
 *
 * Revocation is checked from the kernel's side (/proc/self/pagemap), and
 * "no copy" by the page frame number, which only root can read.
 */
#include <errno.h>
#include <inttypes.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "dxm_mirror.h"

#define NPG 8
#define LEN (NPG * PS)
#define WAIT_MS 5000
#define MAGIC 0x5eed0fade0a11ce5ull

static struct recorder rec;

/* A test on anon_setup(len) memory (common.h). */
#define ANON_TEST(name, len, ...) ANON_TEST_OF(anon, name, len, __VA_ARGS__)

/* ---------------------------------------------------------------- helpers */

/* The page frame number of a present page; 0 where the kernel hides it
 * (no CAP_SYS_ADMIN). */
static uint64_t pfn(const void *addr)
{
	uint64_t e = pagemap_entry(addr);
	cr_assert((e >> 63) & 1, "pfn: %p is not present", addr);
	return e & ((1ull << 55) - 1);
}

/*
 * Whether addr still lies in a staging area: a mapping registered with a
 * userfaultfd (VmFlags "um", /proc/self/smaps).  Not whether anything is
 * mapped there: once dxm unmapped its staging area, the program (or a
 * sanitizer's allocator) may map something else at the address at once.
 */
static bool staging_mapped(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	cr_assert_not_null(f);
	char line[512];
	bool in = false, hit = false;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2) { /* a new VMA */
			in = s <= a && a < e;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			hit = strstr(line, " um") != NULL;
			break;
		}
	}
	fclose(f);
	return hit;
}

static bool all_zero(const void *p, size_t len)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* The page at `page` (CPU address) when the CLEAR or UNMAP callback for it
 * ran: whether the CPU already had it mapped; and the callback's last
 * device write. */
struct at_clear {
	uintptr_t page;
	volatile uint64_t *dev;
	uint64_t val;
	volatile int hits; /* written by the handler thread */
	volatile bool present_at_callback;
};

static int clear_hook(struct recorder *r, const struct dxm_range *range)
{
	struct at_clear *c = r->hook_arg;
	if (range->event == DXM_EVENT_CLEAR &&
	    (uintptr_t)range->start <= c->page &&
	    (uintptr_t)range->end > c->page && !c->hits++) {
		c->present_at_callback = page_present((void *)c->page);
		*c->dev = c->val;
	}
	return 0;
}

/* len bytes of private anonymous memory, filled with fill_index(0) and
 * adopted. */
static char *adopt_filled(struct dxm_ctx *ctx, size_t len)
{
	char *p = anon_map(len);
	fill_index(p, len, 0);
	adopt_or_skip(ctx, p, len);
	return p;
}

/* ------------------------------------------------------------- adoption */

/* Adoption changes nothing the program sees: the data stays where it is,
 * nothing is faulted or moved, and the range is accounted. */
Test(anon, adopt_keeps_data_and_accounts, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct dxm_stats st0 = stats(ctx);
	char *p = anon_map(LEN);
	fill_index(p, LEN, 7);
	uint64_t pf = pfn(p + 3 * PS);
	adopt_or_skip(ctx, p, LEN);
	struct dxm_stats st1 = stats(ctx);
	cr_assert_eq(st1.regions, st0.regions + 1);
	cr_assert_eq(st1.managed_pages, st0.managed_pages + NPG);
	cr_assert_neq(st1.uffd_anon_features, 0);
	cr_assert_eq(pages_present(p, LEN), NPG, "adoption unmapped pages");
	cr_assert_eq(pfn(p + 3 * PS), pf, "adoption moved a page");
	cr_assert(check_index(p, LEN, 7));
	/* Ordinary CPU accesses need no handler. */
	wr(p + 5 * PS, 55);
	cr_assert_eq(rd(p + 5 * PS), 55);
	cr_assert_eq(stats(ctx).cpu_faults, st1.cpu_faults);
	/* The range is managed: a conversion works, a second free does not. */
	void *dev[NPG];
	take(ctx, p, PS, &rec, dev);
	cr_assert_eq(rd(p + 8), 1000);
	cr_assert_eq(dxm_free(ctx, p + PS), -EINVAL);
	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert_eq(dxm_free(ctx, p), -ENOENT);
	/* A handler thread may still hold the region for a moment. */
	cr_assert(WAIT_FOR(stats(ctx).regions == st0.regions &&
				   stats(ctx).managed_pages ==
					   st0.managed_pages,
			   WAIT_MS));
	cr_assert_eq(munmap(p, LEN), 0);
	dxm_ctx_destroy(ctx);
}

/* Bad ranges are refused with a clear errno and leave the memory as it
 * was, unmanaged. */
Test(anon, adopt_bad_input, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *p = anon_map(LEN);
	fill_index(p, LEN, 0);
	/* Probe first: skip where adoption does not exist at all. */
	adopt_or_skip(ctx, p, PS);
	cr_assert_eq(dxm_free(ctx, p), 0);
	struct dxm_stats st0 = stats(ctx);

	/* Unaligned address or length, zero length, unknown flags. */
	cr_assert_eq(dxm_adopt(ctx, p + 8, PS, 0), -EINVAL);
	cr_assert_eq(dxm_adopt(ctx, p, PS + 8, 0), -EINVAL);
	cr_assert_eq(dxm_adopt(ctx, p, 0, 0), -EINVAL);
	cr_assert_eq(dxm_adopt(ctx, p, PS, 1u << 31), -EINVAL);
	cr_assert_eq(dxm_adopt(NULL, p, PS, 0), -EINVAL);

	/* Shared anonymous memory. */
	char *sh = mmap(NULL, 2 * PS, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(sh, MAP_FAILED);
	cr_assert_eq(dxm_adopt(ctx, sh, 2 * PS, 0), -EINVAL);

	/* A private mapping of a file. */
	char path[] = "/tmp/dxm-adopt-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
	unlink(path);
	cr_assert_eq(ftruncate(fd, 2 * PS), 0);
	char *file = mmap(NULL, 2 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE,
			  fd, 0);
	cr_assert_neq(file, MAP_FAILED);
	close(fd);
	cr_assert_eq(dxm_adopt(ctx, file, 2 * PS, 0), -EINVAL);

	/* Read-only private anonymous memory; and a range that is writable
	 * only in part. */
	char *ro = mmap(NULL, 2 * PS, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	cr_assert_neq(ro, MAP_FAILED);
	cr_assert_eq(dxm_adopt(ctx, ro, 2 * PS, 0), -EINVAL);
	cr_assert_eq(mprotect(p + 3 * PS, PS, PROT_READ), 0);
	cr_assert_eq(dxm_adopt(ctx, p, LEN, 0), -EINVAL);
	cr_assert_eq(mprotect(p + 3 * PS, PS, PROT_READ | PROT_WRITE), 0);

	/* A memfd region of dxm's own (shared, and managed already). */
	void *r;
	cr_assert_eq(dxm_alloc(ctx, 2 * PS, 0, &r), 0);
	int e = dxm_adopt(ctx, r, 2 * PS, 0);
	cr_assert(e == -EEXIST || e == -EINVAL, "dxm_adopt(memfd): %s",
		  strerror(-e));
	cr_assert_eq(dxm_free(ctx, r), 0);

	/* Holes: a range with an unmapped page in the middle, and one that
	 * is not mapped at all. */
	char *h = anon_map(3 * PS);
	cr_assert_eq(munmap(h + PS, PS), 0);
	cr_assert_eq(dxm_adopt(ctx, h, 3 * PS, 0), -EFAULT);
	cr_assert_eq(dxm_adopt(ctx, h + PS, PS, 0), -EFAULT);
	cr_assert_eq(dxm_adopt(ctx, h + PS, 2 * PS, 0), -EFAULT);

	/* Nothing of the above was adopted. */
	cr_assert(WAIT_FOR(stats(ctx).regions == st0.regions &&
				   stats(ctx).managed_pages ==
					   st0.managed_pages,
			   WAIT_MS));
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(ctx, p, PS, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_make_exclusive(ctx, h, PS, &rec, dev), -EFAULT);

	/* Overlapping an adopted range: -EEXIST, from either side. */
	cr_assert_eq(dxm_adopt(ctx, p + 2 * PS, 4 * PS, 0), 0);
	cr_assert_eq(dxm_adopt(ctx, p + 2 * PS, 4 * PS, 0), -EEXIST);
	cr_assert_eq(dxm_adopt(ctx, p, 3 * PS, 0), -EEXIST);
	cr_assert_eq(dxm_adopt(ctx, p + 5 * PS, 3 * PS, 0), -EEXIST);
	cr_assert_eq(dxm_adopt(ctx, p, LEN, 0), -EEXIST);
	cr_assert_eq(dxm_adopt(ctx, p + 3 * PS, PS, 0), -EEXIST);
	cr_assert_eq(stats(ctx).regions, st0.regions + 1);
	/* Its neighbours can be adopted on their own. */
	cr_assert_eq(dxm_adopt(ctx, p, 2 * PS, 0), 0);
	cr_assert_eq(dxm_adopt(ctx, p + 6 * PS, 2 * PS, 0), 0);

	/* No alias of private memory; no free but at the start. */
	void *a = NULL;
	cr_assert_eq(dxm_alias(ctx, p + 2 * PS, &a), -EINVAL);
	cr_assert_eq(dxm_alias(ctx, p + 3 * PS, &a), -EINVAL);
	cr_assert_null(a);
	cr_assert_eq(dxm_free(ctx, p + 3 * PS), -EINVAL);

	/* The data is intact and the ranges still work. */
	cr_assert(check_index(p, LEN, 0));
	cr_assert_eq(dxm_make_exclusive(ctx, p + PS, 2 * PS, &rec, dev),
		     -EFAULT); /* across two adopted ranges */
	take(ctx, p + PS, PS, &rec, dev);
	take(ctx, p + 2 * PS, 4 * PS, &rec, dev);
	take(ctx, p + 6 * PS, PS, &rec, dev);
	cr_assert_eq(rd(p + PS + 8), 1000);
	cr_assert_eq(rd(p + 3 * PS + 8), 1001);
	cr_assert_eq(rd(p + 6 * PS + 8), 1000);
	cr_assert(check_index(p + 6 * PS + 16, PS - 16, 6 * PS / 8 + 2));
	cr_assert(check_index(p, PS, 0));
	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert_eq(dxm_free(ctx, p + 2 * PS), 0);
	cr_assert_eq(dxm_free(ctx, p + 6 * PS), 0);
	cr_assert(WAIT_FOR(stats(ctx).regions == st0.regions, WAIT_MS));
	munmap(p, LEN);
	munmap(sh, 2 * PS);
	munmap(file, 2 * PS);
	munmap(ro, 2 * PS);
	munmap(h, 3 * PS);
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------------------ conversion */

/* A conversion revokes the CPU's mapping (pagemap: not present), dev[i]
 * shows the page's data at another address, and the page itself moved: the
 * same page frame before, on the device side and after the round trip
 * (root only: the kernel hides frame numbers from others). */
ANON_TEST(convert_moves_page_without_copy, LEN, .timeout = 30)
{
	recorder_insert(f.ctx, &rec, p, LEN);
	uint64_t pf[NPG];
	for (size_t i = 0; i < NPG; i++)
		pf[i] = pfn(p + i * PS);
	bool see_pfn = pf[0] != 0;
	if (!see_pfn)
		cr_log_info("page frame numbers are hidden (not root): the "
			    "no-copy check is skipped");

	void *dev[NPG];
	size_t moved_frames = 0; /* pages on a new frame (migrated) */
	struct dxm_stats st0 = stats(f.ctx);
	cr_assert_eq(dxm_make_exclusive(f.ctx, p, LEN, &rec, dev), NPG);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_not_null(dev[i], "page %zu refused", i);
		cr_assert(!page_present(p + i * PS),
			  "page %zu still mapped for the CPU", i);
		cr_assert(check_index(dev[i], PS, i * PS / 8),
			  "the device sees other data at page %zu", i);
		/* Memory compaction may migrate a page meanwhile (a new
		 * frame); a copy would give every page a new one. */
		moved_frames += see_pfn && pfn(dev[i]) != pf[i];
	}
	cr_assert_lt(moved_frames, NPG / 2,
		     "%zu of %d pages were copied, not moved", moved_frames,
		     NPG);
	cr_assert(rec_covers(&rec, DXM_EVENT_EXCLUSIVE, p, LEN));
	cr_assert_eq(stats(f.ctx).pages_converted, st0.pages_converted + NPG);
	cr_assert(dxm_check_exclusive(f.ctx, p, LEN, dev));
	/* The device writes. */
	for (size_t i = 0; i < NPG; i++)
		wr((uint64_t *)dev[i] + 1, 1000 + i);
	dxm_exclusive_unlock(f.ctx, p, LEN, dev);
	cr_assert_eq(pages_present(p, LEN), 0);

	/* CPU reads: each page comes back with the device's data, the same
	 * page frame, after a CLEAR. */
	moved_frames = 0;
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_eq(rd(p + i * PS + 8), 1000 + i);
		cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p + i * PS));
		cr_assert(page_present(p + i * PS));
		cr_assert(check_index(p + i * PS + 16, PS - 16,
				      i * PS / 8 + 2));
		moved_frames += see_pfn && pfn(p + i * PS) != pf[i];
	}
	cr_assert_lt(moved_frames, NPG / 2,
		     "%zu of %d pages came back as other pages", moved_frames,
		     NPG);
	cr_assert(!dxm_check_exclusive(f.ctx, p, PS, dev));
	cr_assert_geq(stats(f.ctx).restores, st0.restores + NPG);
	recorder_remove(&rec);
}

/* A CPU access to an exclusive page waits for the notifiers: when the
 * CLEAR callback runs the page is not mapped yet, and the callback's last
 * device write is what the CPU sees.  Reads and writes alike. */
ANON_TEST(cpu_fault_moves_back_after_clear, LEN, .timeout = 30)
{
	void *dev[NPG];
	recorder_insert(f.ctx, &rec, p, LEN);
	take(f.ctx, p, LEN, &rec, dev);

	struct at_clear c = { (uintptr_t)(p + 2 * PS),
			      (volatile uint64_t *)dev[2] + 2, MAGIC, 0,
			      true };
	recorder_hook(&rec, clear_hook, &c);
	cr_assert_eq(rd(p + 2 * PS + 16), MAGIC,
		     "the CPU access completed before the invalidation");
	cr_assert_eq(c.hits, 1);
	cr_assert(!c.present_at_callback,
		  "the page was mapped before the CLEAR callback ran");
	cr_assert_eq(rd(p + 2 * PS + 8), 1002);
	cr_assert(check_index(p + 2 * PS + 24, PS - 24, 2 * PS / 8 + 3));

	/* A write to another exclusive page. */
	struct at_clear c2 = { (uintptr_t)(p + 5 * PS),
			       (volatile uint64_t *)dev[5] + 3, MAGIC + 1, 0,
			       true };
	recorder_hook(&rec, clear_hook, &c2);
	wr(p + 5 * PS + 32, 77);
	cr_assert_eq(c2.hits, 1);
	cr_assert(!c2.present_at_callback);
	cr_assert_eq(rd(p + 5 * PS + 24), MAGIC + 1);
	cr_assert_eq(rd(p + 5 * PS + 32), 77);
	cr_assert_eq(rd(p + 5 * PS + 8), 1005);
	/* An atomic on a third. */
	cr_assert_eq(__atomic_fetch_add((uint64_t *)(p + 7 * PS + 8), 1,
					__ATOMIC_SEQ_CST),
		     1007);
	cr_assert_eq(rd(p + 7 * PS + 8), 1008);
	/* Untouched pages are still exclusive. */
	cr_assert(!page_present(p));
	cr_assert(dxm_check_exclusive(f.ctx, p, PS, dev));
	cr_assert(!rec_overlaps(&rec, DXM_EVENT_CLEAR, p, p + 2 * PS));
	recorder_remove(&rec);
}

/* A page that was locked by the driver when the CPU touched it: the CPU
 * waits until the unlock, then sees the driver's writes. */
struct bg_read {
	const char *addr;
	volatile uint64_t got;
	atomic_bool done;
};

static void *bg_read_main(void *arg)
{
	struct bg_read *b = arg;
	b->got = rd(b->addr);
	atomic_store(&b->done, true);
	return NULL;
}

ANON_TEST(cpu_fault_on_locked_page_waits_for_unlock, LEN, .timeout = 30)
{
	void *dev[NPG];
	recorder_insert(f.ctx, &rec, p, LEN);
	take_locked(f.ctx, p, PS, &rec, dev);
	struct bg_read b = { .addr = p + 8 };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, bg_read_main, &b), 0);
	sleep_ms(100);
	cr_assert(!atomic_load(&b.done),
		  "a CPU access completed on a locked page");
	wr((uint64_t *)dev[0] + 1, 4321);
	dxm_exclusive_unlock(f.ctx, p, PS, dev);
	cr_assert(WAIT_FOR(atomic_load(&b.done), WAIT_MS),
		  "the CPU access still waits after the unlock");
	pthread_join(t, NULL);
	cr_assert_eq(b.got, 4321);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p));
	recorder_remove(&rec);
}

/* ---------------------------------------------------- never-populated pages */

/* Adopting untouched memory costs nothing (no page is faulted in), and
 * reading it gives zeros, as the kernel would.  With a user-mode-only
 * userfaultfd dxm must populate at adoption (a system call could not fault
 * a missing page in), so the "costs nothing" part is skipped there. */
Test(anon, never_populated_reads_zero_and_costs_nothing, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	size_t len = 64 * PS;
	char *p = anon_map(len);
	cr_assert_eq(pages_present(p, len), 0);
	adopt_or_skip(ctx, p, len);
	bool user_only = stats(ctx).uffd_mode == DXM_UFFD_USER_ONLY;
	if (!user_only)
		cr_assert_eq(pages_present(p, len), 0,
			     "adoption faulted in %zu untouched pages",
			     pages_present(p, len));
	else
		cr_log_info("user-mode-only userfaultfd: adoption populates");
	for (size_t off = 0; off < len; off += PS)
		cr_assert(all_zero(p + off, PS), "page %zu is not zero",
			  off / PS);
	/* Writes work, and read back. */
	wr(p + 3 * PS + 8, 33);
	cr_assert_eq(rd(p + 3 * PS + 8), 33);
	cr_assert(all_zero(p + 4 * PS, PS));
	/* A system call writing into an untouched page works. */
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	cr_assert_eq(write(fds[1], "dxm!", 4), 4);
	cr_assert_eq(read(fds[0], p + 9 * PS, 4), 4, "read(2): %s",
		     strerror(errno));
	cr_assert_eq(memcmp(p + 9 * PS, "dxm!", 4), 0);
	close(fds[0]);
	close(fds[1]);
	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert_eq(rd(p + 3 * PS + 8), 33);
	munmap(p, len);
	dxm_ctx_destroy(ctx);
}

/* Converting pages the CPU never touched works (they are faulted in
 * writable first): the device sees zeros and its writes come back; pages
 * with data in the same range keep it. */
Test(anon, never_populated_pages_convert, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *p = anon_map(LEN);
	fill_index(p, LEN / 2, 0); /* the upper half is never touched */
	adopt_or_skip(ctx, p, LEN);
	recorder_insert(ctx, &rec, p, LEN);
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(ctx, p, LEN, &rec, dev), NPG);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_not_null(dev[i], "page %zu refused", i);
		if (i < NPG / 2)
			cr_assert(check_index(dev[i], PS, i * PS / 8));
		else
			cr_assert(all_zero(dev[i], PS),
				  "untouched page %zu is not zero", i);
		wr((uint64_t *)dev[i] + 1, 1000 + i);
	}
	cr_assert_eq(pages_present(p, LEN), 0);
	dxm_exclusive_unlock(ctx, p, LEN, dev);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_eq(rd(p + i * PS + 8), 1000 + i, "page %zu", i);
		cr_assert_eq(rd(p + i * PS), i < NPG / 2 ? i * PS / 8 : 0);
		if (i >= NPG / 2)
			cr_assert(all_zero(p + i * PS + 16, PS - 16));
	}
	cr_assert_eq(stats(ctx).pages_refused, 0);
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(ctx, p), 0);
	munmap(p, LEN);
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------------- copy-on-write */

/* Pages shared copy-on-write with a child after fork() are unshared and
 * converted (not refused); the child keeps its own copy, unaffected by the
 * device, and the parent gets the device's writes. */
ANON_TEST(cow_shared_pages_are_unshared_and_converted, LEN, .timeout = 30)
{
	int go[2];
	cr_assert_eq(pipe(go), 0);
	pid_t self = getpid();
	pid_t pid = fork();
	cr_assert_neq(pid, -1);
	if (pid == 0) {
		char c;
		/* Die with the parent; EOF if it fails before the go. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != self)
			_exit(120);
		close(go[1]);
		/* Hold the pages shared until the parent converted them. */
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		for (size_t i = 0; i < NPG; i++)
			if (!check_index(p + i * PS, PS, i * PS / 8))
				_exit(10 + (int)i);
		_exit(0);
	}
	recorder_insert(f.ctx, &rec, p, LEN);
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(f.ctx, p, LEN, &rec, dev), NPG);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_not_null(dev[i],
				   "a page shared with a child was refused "
				   "(page %zu)",
				   i);
		cr_assert(check_index(dev[i], PS, i * PS / 8));
		wr(dev[i], 0xdead0000 + i);
	}
	cr_assert_eq(pages_present(p, LEN), 0);
	dxm_exclusive_unlock(f.ctx, p, LEN, dev);
	cr_assert_eq(write(go[1], "g", 1), 1);
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the child saw the device's writes or lost data (status "
		  "%#x)",
		  status);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_eq(rd(p + i * PS), 0xdead0000 + i);
		cr_assert(check_index(p + i * PS + 8, PS - 8, i * PS / 8 + 1));
	}
	cr_assert_eq(stats(f.ctx).pages_refused, 0);
	recorder_remove(&rec);
	close(go[0]);
	close(go[1]);
}

/* ------------------------------------------------- the kernel's scenario */

/* hmm-tests "exclusive" on adopted memory: 4 MiB of i, the mirror takes it
 * exclusive and reads i; the CPU increments every word (each page faults
 * back); a second pass sees i + 1; the device no longer holds any page. */
ANON_TEST(kernel_exclusive_scenario, 4u << 20, .timeout = 60)
{
	size_t size = f.m.len, n = size / sizeof(uint64_t);
	uint64_t *ptr = (uint64_t *)f.p;
	struct dxm_mirror *mir = mirror_exclusive(f.ctx, ptr, size);
	/* What the device reads. */
	uint64_t *buf = malloc(size);
	cr_assert_not_null(buf);
	cr_assert_eq(dxm_mirror_read(mir, ptr, buf, size), 0);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(buf[i], i, "device read %zu", i);
	free(buf);
	/* Fault the pages back and check them. */
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(ptr[i]++, i, "CPU read %zu", i);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(ptr[i], i + 1, "second pass %zu", i);
	/* Atomic access revoked. */
	cr_assert_eq(dxm_mirror_check_exclusive(mir, ptr, size), 0);
	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(mir, &ms);
	cr_assert_eq(ms.stale_accesses, 0);
	cr_assert_eq(stats(f.ctx).stale_device_faults, 0);
	dxm_mirror_destroy(mir);
}

/* ------------------------------------------------------------------- THP */

#define HPS ((size_t)2 << 20)

/* kB of AnonHugePages in the mapping holding addr (/proc/self/smaps). */
static long anon_huge_kb(const void *addr)
{
	FILE *fp = fopen("/proc/self/smaps", "re");
	cr_assert_not_null(fp);
	char line[512];
	bool in = false;
	long kb = -1;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), fp)) {
		unsigned long s, e;
		char c;
		if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			in = s <= a && a < e;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(fp);
	return kb;
}

/* A transparent huge page inside the adopted range: made exclusive in
 * part and then whole (split as needed), it round-trips with every byte. */
Test(anon, thp_converts_and_round_trips, .timeout = 60)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *raw = anon_map(2 * HPS);
	char *p = (char *)(((uintptr_t)raw + HPS - 1) & ~(HPS - 1));
	if (madvise(p, HPS, MADV_HUGEPAGE))
		cr_skip_test("SKIP: MADV_HUGEPAGE: %s (no THP here)",
			     strerror(errno));
	fill_index(p, HPS, 0);
	if (anon_huge_kb(p) < 2048)
		madvise(p, HPS, 25 /* MADV_COLLAPSE, Linux 6.1 */);
	long kb = anon_huge_kb(p);
	if (kb < 2048)
		cr_skip_test("SKIP: no transparent huge page could be "
			     "allocated (AnonHugePages %ld kB)",
			     kb);
	cr_assert(check_index(p, HPS, 0));
	adopt_or_skip(ctx, p, HPS);
	recorder_insert(ctx, &rec, p, HPS);
	size_t n = HPS / PS;
	void **dev = calloc(n, sizeof(*dev));
	cr_assert_not_null(dev);

	/* A few pages from the middle of the huge page. */
	take(ctx, p + 100 * PS, 10 * PS, &rec, dev);
	cr_assert_eq(pages_present(p, HPS), n - 10);
	cr_assert(check_index(p, 100 * PS, 0));
	cr_assert_eq(rd(p + 105 * PS + 8), 1005);
	cr_assert(check_index(p + 105 * PS + 16, PS - 16, 105 * PS / 8 + 2));
	cr_assert(check_index(p + 110 * PS, HPS - 110 * PS, 110 * PS / 8));

	/* The whole huge page. */
	cr_assert_eq(dxm_make_exclusive(ctx, p, HPS, &rec, dev), (long)n);
	for (size_t i = 0; i < n; i++) {
		cr_assert_not_null(dev[i], "page %zu of the THP refused", i);
		uint64_t w1 = rd((uint64_t *)dev[i] + 1);
		if (i >= 100 && i < 110)
			cr_assert_eq(w1, 1000 + i - 100);
		else
			cr_assert_eq(w1, i * PS / 8 + 1, "page %zu", i);
		wr((uint64_t *)dev[i] + 2, 7000 + i);
	}
	cr_assert_eq(pages_present(p, HPS), 0);
	dxm_exclusive_unlock(ctx, p, HPS, dev);
	for (size_t i = 0; i < n; i++) {
		char *q = p + i * PS;
		cr_assert_eq(rd(q), i * PS / 8);
		cr_assert_eq(rd(q + 8),
			     i >= 100 && i < 110 ? 1000 + i - 100
						 : i * PS / 8 + 1);
		cr_assert_eq(rd(q + 16), 7000 + i, "page %zu", i);
		cr_assert(check_index(q + 24, PS - 24, i * PS / 8 + 3));
	}
	cr_assert_eq(stats(ctx).pages_refused, 0);
	recorder_remove(&rec);
	free(dev);
	cr_assert_eq(dxm_free(ctx, p), 0);
	munmap(raw, 2 * HPS);
	dxm_ctx_destroy(ctx);
}

/* ------------------------------------------------------- MADV_DONTNEED */

/* The program's MADV_DONTNEED on exclusive pages of adopted memory
 * discards the data, as it would without dxm: the devices are told
 * (DXM_EVENT_UNMAP), the staged page is freed, and the next read is zero,
 * not the old data.  A page the driver still held locked too. */
ANON_TEST(madv_dontneed_discards_exclusive_pages, LEN, .timeout = 30)
{
	void *dev[NPG], *dev2[NPG];
	recorder_insert(f.ctx, &rec, p, LEN);
	take(f.ctx, p + PS, 2 * PS, &rec, dev);
	take_locked(f.ctx, p + 4 * PS, PS, &rec, dev2); /* still locked */
	void *staged[3] = { dev[0], dev[1], dev2[0] };
	for (int i = 0; i < 3; i++)
		cr_assert(page_present(staged[i]));
	struct dxm_stats st0 = stats(f.ctx);

	cr_assert_eq(madvise(p, 6 * PS, MADV_DONTNEED), 0);
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, p + PS, 2 * PS) &&
				   recorder_saw(&rec, DXM_EVENT_UNMAP,
						p + 4 * PS),
			   WAIT_MS),
		  "no DXM_EVENT_UNMAP for the discarded exclusive pages");
	cr_assert_gt(stats(f.ctx).events_remove, st0.events_remove);
	/* The staged copies are gone (freed, not leaked), and then the
	 * pages are the CPU's (the handler discards first: a check between
	 * the two still finds the page exclusive). */
	cr_assert(WAIT_FOR(!page_present(staged[0]) &&
				   !page_present(staged[1]) &&
				   !page_present(staged[2]),
			   WAIT_MS),
		  "a discarded page is still held in staging");
	cr_assert(WAIT_FOR(!dxm_check_exclusive(f.ctx, p + PS, PS, dev),
			   WAIT_MS),
		  "a discarded page is still exclusive");

	/* Reads give zeros, exclusive pages and others alike. */
	for (size_t i = 0; i < 6; i++)
		cr_assert(all_zero(p + i * PS, PS),
			  "page %zu kept data after MADV_DONTNEED", i);
	cr_assert(check_index(p + 6 * PS, 2 * PS, 6 * PS / 8));
	/* The driver's late unlock is harmless. */
	dxm_exclusive_unlock(f.ctx, p + 4 * PS, PS, dev2);
	cr_assert(all_zero(p + 4 * PS, PS));

	/* The pages convert again, with their new contents. */
	wr(p + PS + 16, 11);
	take(f.ctx, p, 6 * PS, &rec, dev);
	cr_assert_eq(rd(p + PS + 16), 11);
	cr_assert_eq(rd(p + PS + 8), 1001);
	cr_assert_eq(rd(p + 2 * PS + 8), 1002);
	cr_assert(all_zero(p + 2 * PS + 16, PS - 16));
	cr_assert_eq(stats(f.ctx).pages_refused, 0);
	recorder_remove(&rec);
}

/* ------------------------------------------------------------- munmap */

/* munmap of an adopted range with exclusive pages (one still locked):
 * DXM_EVENT_UNMAP, the range is no longer accounted, and nothing leaks:
 * the staging area is gone (/proc/self/maps). */
static char *adopt_take_munmap(struct dxm_ctx *ctx, void **staging)
{
	char *p = adopt_filled(ctx, LEN);
	memset(&rec, 0, sizeof(rec));
	recorder_insert(ctx, &rec, p, LEN);
	void *dev[NPG];
	take(ctx, p, LEN - PS, &rec, dev);
	cr_assert_eq(rd(p + 8), 1000);
	cr_assert_eq(dxm_make_exclusive(ctx, p + LEN - PS, PS, &rec,
					dev + NPG - 1),
		     1);
	for (size_t i = 0; i < NPG; i++)
		staging[i] = dev[i];
	cr_assert_eq(munmap(p, LEN), 0);
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, p, LEN), WAIT_MS),
		  "no DXM_EVENT_UNMAP for the unmapped adopted range");
	dxm_exclusive_unlock(ctx, p + LEN - PS, PS, dev + NPG - 1);
	recorder_remove(&rec);
	return p;
}

Test(anon, munmap_exclusive_notifies_and_leaks_nothing, .timeout = 30)
{
	struct dxm_ctx_opts o = { .sz = sizeof(o), .handler_threads = 1 };
	struct dxm_ctx *ctx = ctx_or_skip(&o);
	void *staging[NPG];
	struct dxm_stats st0 = stats(ctx);
	/* One cycle first: things created lazily (the handler thread's
	 * malloc arena) are not a leak. */
	adopt_take_munmap(ctx, staging);
	cr_assert(WAIT_FOR(stats(ctx).regions == st0.regions, WAIT_MS));

	struct dxm_stats st1 = stats(ctx);
	size_t maps1 = maps_lines(NULL);
	char *p = adopt_take_munmap(ctx, staging);
	/* First the UNMAP event's handling (the devices were told before
	 * munmap returned; the count follows the kind's part), then the
	 * teardown that the last one out finishes. */
	cr_assert(WAIT_FOR(stats(ctx).events_unmap == st1.events_unmap + 1,
			   WAIT_MS),
		  "the UNMAP event was not handled: events_unmap %" PRIu64
		  ", %" PRIu64 " before",
		  stats(ctx).events_unmap, st1.events_unmap);
	cr_assert(WAIT_FOR(stats(ctx).regions == st1.regions &&
				   stats(ctx).managed_pages ==
					   st1.managed_pages,
			   WAIT_MS),
		  "the adopted range is still accounted after munmap: "
		  "%" PRIu64 " regions and %" PRIu64 " pages, %" PRIu64
		  " and %" PRIu64 " before",
		  stats(ctx).regions, stats(ctx).managed_pages, st1.regions,
		  st1.managed_pages);
	cr_assert_eq(stats(ctx).events_unmap, st1.events_unmap + 1);
	cr_assert(WAIT_FOR(maps_lines(NULL) == maps1, WAIT_MS),
		  "/proc/self/maps: %zu lines, %zu before (staging leaked?)",
		  maps_lines(NULL), maps1);
	for (size_t i = 0; i < NPG; i++)
		cr_assert(!staging_mapped(staging[i]), "staging page %zu still mapped",
			  i);

	/* The address is not managed any more. */
	void *dev[NPG];
	cr_assert_eq(dxm_make_exclusive(ctx, p, PS, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_free(ctx, p), -ENOENT);
	/* New memory at the same address is the program's: no stale data,
	 * no handler. */
	char *q = mmap(p, LEN, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		       0);
	if (q == p) {
		uint64_t faults = stats(ctx).cpu_faults;
		cr_assert(all_zero(q, LEN));
		wr(q, 1);
		cr_assert_eq(stats(ctx).cpu_faults, faults);
		munmap(q, LEN);
	} else if (q != MAP_FAILED) {
		munmap(q, LEN);
	}
	dxm_ctx_destroy(ctx);
}

/* munmap of part of an adopted range: only that part is notified, its
 * staged pages are freed at once (not kept until the range goes), and the
 * rest stays exclusive and comes back with its data. */
Test(anon, munmap_part_frees_its_staged_pages, .timeout = 30)
{
	struct anon_fix f;
	anon_setup(&f, LEN);
	char *p = f.p;
	void *dev[NPG];
	recorder_insert(f.ctx, &rec, p, LEN);
	take(f.ctx, p, LEN, &rec, dev);
	struct dxm_stats st0 = stats(f.ctx);
	cr_assert_eq(munmap(p + 2 * PS, 3 * PS), 0);
	cr_assert(WAIT_FOR(rec_covers(&rec, DXM_EVENT_UNMAP, p + 2 * PS,
				      3 * PS),
			   WAIT_MS),
		  "no DXM_EVENT_UNMAP for the unmapped pages");
	cr_assert(!rec_overlaps(&rec, DXM_EVENT_UNMAP, p, p + 2 * PS));
	cr_assert(!rec_overlaps(&rec, DXM_EVENT_UNMAP, p + 5 * PS, p + LEN));
	for (size_t i = 2; i < 5; i++)
		cr_assert(WAIT_FOR(!page_present(dev[i]), WAIT_MS),
			  "the staged copy of unmapped page %zu is kept", i);
	cr_assert_eq(stats(f.ctx).regions, st0.regions);
	/* The rest: still exclusive, comes back, converts again. */
	cr_assert(dxm_check_exclusive(f.ctx, p, 2 * PS, dev));
	cr_assert(dxm_check_exclusive(f.ctx, p + 5 * PS, 3 * PS, dev + 5));
	cr_assert_eq(rd(p + PS + 8), 1001);
	cr_assert_eq(rd(p + 6 * PS + 8), 1006);
	cr_assert(check_index(p + 7 * PS + 16, PS - 16, 7 * PS / 8 + 2));
	cr_assert_eq(dxm_make_exclusive(f.ctx, p + 2 * PS, PS, &rec, dev),
		     -EFAULT);
	take(f.ctx, p + 5 * PS, 3 * PS, &rec, dev);
	cr_assert_eq(rd(p + 7 * PS + 8), 1002);
	recorder_remove(&rec);
	cr_assert_eq(dxm_free(f.ctx, p), 0);
	munmap(p, 2 * PS);
	munmap(p + 5 * PS, 3 * PS);
	dxm_ctx_destroy(f.ctx);
}

/* ------------------------------------------------------------- dxm_free */

/* dxm_free of an adopted range with exclusive pages (one still locked)
 * hands every page back in place with the device's data; afterwards the
 * range is ordinary memory: no handler involvement, readable, writable,
 * MADV_DONTNEED and munmap work as without dxm. */
Test(anon, free_hands_back_every_page, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	struct dxm_stats st0 = stats(ctx);
	char *p = adopt_filled(ctx, LEN);
	recorder_insert(ctx, &rec, p, LEN);
	uint64_t pf = pfn(p + 2 * PS);
	void *dev[NPG];
	take(ctx, p, LEN - PS, &rec, dev);
	cr_assert_eq(dxm_make_exclusive(ctx, p + LEN - PS, PS, &rec,
					dev + NPG - 1),
		     1);
	wr((uint64_t *)dev[NPG - 1] + 1, 1000 + NPG - 1);
	cr_assert_eq(pages_present(p, LEN), 0);
	cr_assert(staging_mapped(dev[0]), "the check below cannot see staging");

	cr_assert_eq(dxm_free(ctx, p), 0);
	cr_assert(rec_covers(&rec, DXM_EVENT_UNMAP, p, LEN),
		  "dxm_free did not tell the devices");
	/* Every page is back in place before any access. */
	cr_assert_eq(pages_present(p, LEN), NPG,
		     "dxm_free left exclusive pages out of the range");
	if (pf)
		cr_assert_eq(pfn(p + 2 * PS), pf, "a page came back copied");
	/* A handler thread may still hold the region for a moment; then
	 * it and its staging area are gone. */
	cr_assert(WAIT_FOR(stats(ctx).regions == st0.regions &&
				   stats(ctx).managed_pages ==
					   st0.managed_pages,
			   WAIT_MS));
	for (size_t i = 0; i < NPG; i++)
		cr_assert(WAIT_FOR(!staging_mapped(dev[i]), WAIT_MS),
			  "staging page %zu still mapped", i);
	struct dxm_stats st1 = stats(ctx);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_eq(rd(p + i * PS), i * PS / 8);
		cr_assert_eq(rd(p + i * PS + 8), 1000 + i, "page %zu", i);
		cr_assert(check_index(p + i * PS + 16, PS - 16,
				      i * PS / 8 + 2));
	}
	/* Ordinary memory now. */
	wr(p + 3 * PS, 3);
	cr_assert_eq(rd(p + 3 * PS), 3);
	cr_assert_eq(madvise(p, 2 * PS, MADV_DONTNEED), 0);
	cr_assert(all_zero(p, 2 * PS));
	wr(p + PS, 5);
	cr_assert_eq(rd(p + PS), 5);
	struct dxm_stats st2 = stats(ctx);
	cr_assert_eq(st2.cpu_faults, st1.cpu_faults,
		     "the handler still serves a freed range");
	cr_assert_eq(st2.events_remove, st1.events_remove);
	cr_assert_eq(dxm_make_exclusive(ctx, p, PS, &rec, dev), -EFAULT);
	cr_assert_eq(dxm_free(ctx, p), -ENOENT);
	/* It can be adopted again. */
	cr_assert_eq(dxm_adopt(ctx, p, LEN, 0), 0);
	take(ctx, p + 3 * PS, PS, &rec, dev);
	cr_assert_eq(rd(p + 3 * PS), 3);
	cr_assert_eq(rd(p + 3 * PS + 8), 1000);
	cr_assert_eq(dxm_free(ctx, p), 0);
	recorder_remove(&rec);
	cr_assert_eq(munmap(p, LEN), 0);
	sleep_ms(50);
	cr_assert_eq(stats(ctx).events_unmap, st2.events_unmap,
		     "munmap of a freed range reached dxm");
	dxm_ctx_destroy(ctx);
}

/* dxm_ctx_destroy with an adopted range still exclusive: the data comes
 * back too. */
Test(anon, ctx_destroy_hands_back_every_page, .timeout = 30)
{
	struct dxm_ctx *ctx = ctx_or_skip(NULL);
	char *p = adopt_filled(ctx, LEN);
	void *dev[NPG];
	take(ctx, p, LEN, &rec, dev);
	dxm_ctx_destroy(ctx);
	for (size_t i = 0; i < NPG; i++) {
		cr_assert_eq(rd(p + i * PS + 8), 1000 + i, "page %zu", i);
		cr_assert(check_index(p + i * PS + 16, PS - 16,
				      i * PS / 8 + 2));
	}
	wr(p, 9);
	cr_assert_eq(rd(p), 9);
	cr_assert_eq(munmap(p, LEN), 0);
}

/* ------------------------------------------------------------- mprotect */

/* The kernel's "exclusive_mprotect" on adopted memory: after
 * dxm_mprotect(PROT_READ) the devices were told (DXM_EVENT_PROTECTION),
 * device writes are refused, the CPU reads the device's data. */
struct mfix {
	struct anon_fix f;
	struct dxm_mirror *mir;
	uint64_t pfn[4]; /* before the conversion; 0: hidden (not root) */
};

static void mprotect_setup(struct mfix *m)
{
	anon_setup(&m->f, 4 * PS);
	for (size_t i = 0; i < 4; i++)
		m->pfn[i] = pfn(m->f.p + i * PS);
	cr_assert_eq(dxm_mirror_create(m->f.ctx, &m->mir), 0);
	recorder_insert(m->f.ctx, &rec, m->f.p, 4 * PS);
	cr_assert_eq(dxm_mirror_exclusive(m->mir, m->f.p, 4 * PS), 0);
	cr_assert_eq(pages_present(m->f.p, 4 * PS), 0);
	for (size_t i = 0; i < 4; i++)
		cr_assert_eq(dxm_mirror_atomic_add(m->mir,
						   (uint64_t *)(m->f.p + i * PS),
						   100, NULL),
			     0);
	cr_assert_eq(pages_present(m->f.p, 4 * PS), 0);
	cr_assert_eq(dxm_mprotect(m->f.ctx, m->f.p, 4 * PS, PROT_READ), 0);
	cr_assert(rec_covers(&rec, DXM_EVENT_PROTECTION, m->f.p, 4 * PS),
		  "no DXM_EVENT_PROTECTION");
	cr_assert_eq(dxm_mirror_check_exclusive(m->mir, m->f.p, 4 * PS), 0);
}

static uint64_t mprot_word(size_t off)
{
	return off / 8 + (off % PS == 0 ? 100 : 0);
}

Test(anon, mprotect_readonly_refuses_device_writes, .timeout = 30)
{
	struct mfix m;
	mprotect_setup(&m);
	char *p = m.f.p;
	uint64_t buf[BASE_PS / 8]; /* adopted memory: base pages */
	memset(buf, 0x5a, sizeof(buf));
	cr_assert_eq(dxm_mirror_write(m.mir, p, buf, PS), -EPERM);
	cr_assert_eq(dxm_mirror_write(m.mir, p + 3 * PS, buf, PS), -EPERM);
	cr_assert_eq(dxm_mirror_exclusive(m.mir, p, 4 * PS), -EPERM);
	cr_assert_eq(dxm_mirror_atomic_add(m.mir, (uint64_t *)p, 1, NULL),
		     -EPERM);
	void *dev[4];
	cr_assert_eq(dxm_make_exclusive(m.f.ctx, p, 4 * PS, &rec, dev),
		     -EPERM);
	cr_assert_eq(dxm_range_fault(m.f.ctx, p, 4 * PS, DXM_FAULT_WRITE, dev),
		     -EPERM);
	/* The CPU reads the device's data, in the same pages: given back
	 * (moved), not copied. */
	for (size_t off = 0; off < 4 * PS; off += 8)
		cr_assert_eq(rd(p + off), mprot_word(off), "CPU read %#zx",
			     off);
	for (size_t i = 0; i < 4; i++)
		if (m.pfn[i])
			cr_assert_eq(pfn(p + i * PS), m.pfn[i],
				     "page %zu was copied back, not moved", i);
	/* Read-write again: CPU writes and conversions work.  (Ordinary
	 * device reads and writes, which go through dxm_range_fault, are
	 * tested on their own: device_ordinary_access_sees_cpu_data.) */
	cr_assert_eq(dxm_mprotect(m.f.ctx, p, 4 * PS, PROT_READ | PROT_WRITE),
		     0);
	wr(p + 8, 0x5a5a5a5a5a5a5a5aull);
	cr_assert_eq(rd(p + 8), 0x5a5a5a5a5a5a5a5aull);
	wr(p + PS + 8, 7);
	cr_assert_eq(dxm_mirror_exclusive(m.mir, p, 4 * PS), 0);
	cr_assert_eq(pages_present(p, 4 * PS), 0);
	cr_assert_eq(dxm_mirror_atomic_add(m.mir, (uint64_t *)(p + PS + 8), 1,
					   NULL),
		     0);
	cr_assert_eq(dxm_mirror_atomic_add(m.mir, (uint64_t *)(p + 8), 1,
					   NULL),
		     0);
	cr_assert_eq(rd(p + PS + 8), 8);
	cr_assert_eq(rd(p + 8), 0x5a5a5a5a5a5a5a5bull);
	cr_assert_eq(rd(p + 2 * PS), 2 * PS / 8 + 100);
	struct dxm_mirror_stats ms;
	dxm_mirror_get_stats(m.mir, &ms);
	cr_assert_eq(ms.stale_accesses, 0);
	dxm_mirror_destroy(m.mir);
	recorder_remove(&rec);
	anon_teardown(&m.f);
}

/* After dxm_mprotect(PROT_READ) a CPU read gets the page (read-only) and
 * a CPU write raises SIGSEGV. */
Test(anon, mprotect_readonly_cpu_write_after_read_segfaults, .timeout = 30,
     .signal = SIGSEGV)
{
	struct mfix m;
	no_core();
	mprotect_setup(&m);
	cr_assert_eq(rd(m.f.p + PS), PS / 8 + 100);
	wr(m.f.p + PS, 1); /* SIGSEGV */
	cr_assert_fail("a CPU write to a read-only adopted page succeeded");
}

Test(anon, mprotect_readonly_cpu_write_segfaults, .timeout = 30,
     .signal = SIGSEGV)
{
	struct mfix m;
	no_core();
	mprotect_setup(&m);
	wr(m.f.p + 2 * PS, 1); /* SIGSEGV */
	cr_assert_fail("a CPU write to a read-only adopted page succeeded");
}

/* B5: an exclusive page whose view the program made read-only behind
 * dxm's back (a raw mprotect) comes back read-only, with the device's
 * data; a CPU write then raises SIGSEGV. */
ANON_TEST(raw_mprotect_exclusive_page_restores_readonly, LEN, .timeout = 30,
	  .signal = SIGSEGV)
{
	no_core();
	void *dev[NPG];
	recorder_insert(f.ctx, &rec, f.p, LEN);
	take(f.ctx, f.p, LEN, &rec, dev);
	cr_assert_eq(mprotect(f.p, LEN, PROT_READ), 0);
	cr_assert_eq(rd(f.p + PS + 8), 1001);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, f.p + PS));
	cr_assert(check_index(f.p + PS + 16, PS - 16, PS / 8 + 2));
	cr_assert(page_present(f.p + PS));
	wr(f.p + PS, 1); /* SIGSEGV */
	cr_assert_fail("a CPU write to a read-only adopted page succeeded");
}

/* ------------------------------------------- ordinary device access */

/* A device's ordinary (non-exclusive) access, through dxm_range_fault
 * (hmm_range_fault): dev[i] must be an address where the device finds the
 * page's current data, whether the page was exclusive before or not, and
 * may use it until its next invalidation.  The mirror's read and write use
 * exactly that. */
ANON_TEST(device_ordinary_access_sees_cpu_data, 4 * PS, .timeout = 30)
{
	struct dxm_mirror *mir;
	cr_assert_eq(dxm_mirror_create(f.ctx, &mir), 0);
	uint64_t buf[BASE_PS / 8]; /* adopted memory: base pages */
	/* A page that was never exclusive. */
	cr_assert_eq(dxm_mirror_read(mir, p, buf, PS), 0);
	cr_assert(check_index(buf, PS, 0));
	/* A page exclusive to someone else: revoked first. */
	void *dev[4];
	recorder_insert(f.ctx, &rec, p, 4 * PS);
	take(f.ctx, p + PS, PS, &rec, dev);
	cr_assert_eq(dxm_mirror_read(mir, p + PS, buf, PS), 0);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p + PS));
	cr_assert_eq(buf[1], 1000);
	cr_assert(check_index(buf + 2, PS - 16, PS / 8 + 2));
	/* Device writes land in the CPU's page. */
	memset(buf, 0x33, sizeof(buf));
	cr_assert_eq(dxm_mirror_write(mir, p + 2 * PS, buf, PS), 0);
	cr_assert_eq(rd(p + 2 * PS + 8), 0x3333333333333333ull);
	/* CPU writes reach the device. */
	wr(p + 3 * PS + 8, 99);
	cr_assert_eq(dxm_mirror_read(mir, p + 3 * PS, buf, PS), 0);
	cr_assert_eq(buf[1], 99);
	cr_assert_eq(stats(f.ctx).stale_device_faults, 0);
	dxm_mirror_destroy(mir);
	recorder_remove(&rec);
}

/* ------------------------------------------------- stale device access */

/* A "device" (test code) that keeps writing a staging page after its
 * invalidation returned: detected (stats, log) and the thread doing it gets
 * SIGBUS; the CPU's page is not changed by it. */
static __thread sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_hits;

static void on_sigbus(int sig)
{
	(void)sig;
	bus_hits++;
	siglongjmp(bus_jmp, 1);
}

struct stale {
	volatile uint64_t *dev;
	atomic_bool done, completed, got_bus;
};

static void *stale_main(void *arg)
{
	struct stale *s = arg;
	if (sigsetjmp(bus_jmp, 1) == 0) {
		*s->dev = 0xbadbadbad;
		atomic_store(&s->completed, true);
	} else {
		atomic_store(&s->got_bus, true);
	}
	atomic_store(&s->done, true);
	return NULL;
}

ANON_TEST(stale_device_write_is_detected, LEN, .timeout = 30)
{
	void *dev[NPG];
	recorder_insert(f.ctx, &rec, p, LEN);
	take(f.ctx, p, 2 * PS, &rec, dev);
	/* While the device holds the page, it may use it. */
	wr((uint64_t *)dev[0] + 2, 2222);
	/* The CPU takes page 0 back: the device must stop now. */
	cr_assert_eq(rd(p + 8), 1000);
	cr_assert(recorder_saw(&rec, DXM_EVENT_CLEAR, p));
	cr_assert_eq(stats(f.ctx).stale_device_faults, 0);

	struct sigaction sa = { .sa_handler = on_sigbus }, old;
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGBUS, &sa, &old), 0);
	struct stale s = { .dev = (volatile uint64_t *)dev[0] + 3 };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, stale_main, &s), 0);
	cr_assert(WAIT_FOR(atomic_load(&s.done), WAIT_MS),
		  "a device write to a revoked staging page hangs");
	pthread_join(t, NULL);
	sigaction(SIGBUS, &old, NULL);
	cr_assert(atomic_load(&s.got_bus),
		  "the thread writing a revoked staging page got no SIGBUS%s",
		  atomic_load(&s.completed) ? " (the write completed)" : "");
	cr_assert_geq(stats(f.ctx).stale_device_faults, 1,
		      "the stale device access was not counted");
	/* The CPU's page has the data from before the revocation only. */
	cr_assert_eq(rd(p + 16), 2222);
	cr_assert_eq(rd(p + 24), 3, "a stale device write reached the CPU");
	/* The other page, still the device's, is not affected. */
	wr((uint64_t *)dev[1] + 3, 3333);
	cr_assert_eq(rd(p + PS + 24), 3333);
	/* And page 0 converts again. */
	take(f.ctx, p, PS, &rec, dev);
	cr_assert_eq(rd(p + 16), 2222);
	recorder_remove(&rec);
}

ANON_TEST(stale_device_write_raises_sigbus, LEN, .timeout = 30,
	  .signal = SIGBUS)
{
	no_core();
	void *dev[NPG];
	take(f.ctx, f.p, PS, &rec, dev);
	cr_assert_eq(rd(f.p + 8), 1000);
	wr(dev[0], 1); /* SIGBUS */
	cr_assert_fail("a device write after its invalidation went unnoticed");
}

/* ------------------------------------------------------- pinned pages */

/* A page pinned by the kernel (an io_uring fixed buffer, FOLL_LONGTERM)
 * cannot move: it alone is refused (dev[i] = NULL) and stays the CPU's;
 * the others convert.  Unpinned, it converts. */
ANON_TEST(pinned_page_is_refused_alone, 4 * PS, .timeout = 30)
{
	struct io_uring_params par;
	memset(&par, 0, sizeof(par));
	int ring = (int)syscall(__NR_io_uring_setup, 1, &par);
	if (ring < 0)
		cr_skip_test("SKIP: io_uring_setup: %s (needed to pin a page)",
			     strerror(errno));
	struct iovec iov = { p + PS, PS };
	if (syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS,
		    &iov, 1) < 0)
		cr_skip_test("SKIP: IORING_REGISTER_BUFFERS: %s",
			     strerror(errno));
	recorder_insert(f.ctx, &rec, p, 4 * PS);
	struct dxm_stats st0 = stats(f.ctx);
	void *dev[4];
	cr_assert_eq(dxm_make_exclusive(f.ctx, p, 4 * PS, &rec, dev), 4);
	cr_assert_null(dev[1], "a pinned page was made exclusive");
	cr_assert_not_null(dev[0]);
	cr_assert_not_null(dev[2]);
	cr_assert_not_null(dev[3]);
	cr_assert_eq(stats(f.ctx).pages_refused, st0.pages_refused + 1);
	cr_assert(page_present(p + PS));
	cr_assert(!page_present(p));
	cr_assert(!page_present(p + 2 * PS));
	wr((uint64_t *)dev[2] + 1, 42);
	dxm_exclusive_unlock(f.ctx, p, 4 * PS, dev);
	/* The refused page is the CPU's, with its data; no wait. */
	cr_assert(check_index(p + PS, PS, PS / 8));
	wr(p + PS, 5);
	cr_assert_eq(rd(p + 2 * PS + 8), 42);
	cr_assert(check_index(p + 3 * PS, PS, 3 * PS / 8));
	/* Unpinned, it moves. */
	cr_assert_eq(syscall(__NR_io_uring_register, ring,
			     IORING_UNREGISTER_BUFFERS, NULL, 0),
		     0);
	close(ring);
	take(f.ctx, p + PS, PS, &rec, dev);
	cr_assert_eq(rd(p + PS), 5);
	cr_assert_eq(rd(p + PS + 8), 1000);
	recorder_remove(&rec);
}

/* --------------------------------------------------------- contention */

/* contend() (common.c): CPU threads doing atomic increments while mirrors
 * do atomic adds on the same adopted pages. */
Test(anon, contention_cpu_and_one_device_exact_sums, .timeout = 60)
{
	contend(NULL, MEM_ANON, 2, 1, 20000);
}

Test(anon, contention_cpus_and_two_devices_exact_sums, .timeout = 60)
{
	contend(NULL, MEM_ANON, 3, 2, 5000);
}

struct discarder {
	char *p;
	atomic_bool stop;
	atomic_ulong n;
};

static void *discard_main(void *arg)
{
	struct discarder *d = arg;
	while (!atomic_load(&d->stop)) {
		madvise(d->p, PS, MADV_DONTNEED);
		atomic_fetch_add(&d->n, 1);
	}
	return NULL;
}

/*
 * A program's MADV_DONTNEED racing a conversion (between dxm's populate
 * and its move to staging) must not leave an exclusive page whose staging
 * slot is a hole: a device's access there would need a fault-handler
 * thread, which may be busy in that very device's invalidate callback
 * (waiting for the lock the device holds while it accesses the page).
 * Every exclusive page is present in staging when dxm_make_exclusive
 * returns, checked in /proc/self/pagemap.
 */
/* It also caught, before the move out stopped asking for
 * UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, the converting thread spinning inside
 * the kernel's UFFDIO_MOVE (Linux 6.18) with the discarder's madvise
 * waiting behind it: the test hung.  And a starved conversion: the
 * discarder's events keep every ioctl refused (EAGAIN) but for gaps of a
 * microsecond, which a retry after a back-off of a millisecond seldom
 * hit: on an idle machine the loop ran 40 to 430 s, 40 conversions a
 * second (dxmi_eagain_wait, base.c, now polls first: about 1.5 s).  Under
 * a heavy load it takes up to about 20 s. */
ANON_TEST(exclusive_page_is_never_a_staging_hole, PS, .timeout = 60)
{
	struct discarder d = { .p = f.p };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, discard_main, &d), 0);
	while (!atomic_load(&d.n))
		sched_yield();
	unsigned holes = 0, converted = 0;
	/* A conversion often loses the race (the page is discarded under
	 * it): count those that won. */
	for (int i = 0; converted < 1000 && i < 200000; i++) {
		void *dev;
		if (dxm_make_exclusive(f.ctx, f.p, PS, NULL, &dev) != 1 ||
		    !dev)
			continue;
		converted++;
		uint64_t e = pagemap_entry(dev);
		void *dev2;
		/* A hole is fine once the program's MADV_DONTNEED took the
		 * page back (its REMOVE event does, before the discard). */
		holes += !((e >> 63) & 1) && !((e >> 62) & 1) &&
			 dxm_check_exclusive(f.ctx, f.p, PS, &dev2);
		dxm_exclusive_unlock(f.ctx, f.p, PS, &dev);
		cr_assert_eq(dxm_range_fault(f.ctx, f.p, PS, 0, NULL), 1);
	}
	atomic_store(&d.stop, true);
	pthread_join(t, NULL);
	cr_log_info("%u conversions, %lu discards, %u staging holes",
		    converted, (unsigned long)atomic_load(&d.n), holes);
	cr_assert_gt(converted, 100);
	cr_assert_eq(holes, 0, "%u exclusive pages were staging holes", holes);
}
