/* memwrite.c: test=memwrite [mb=N] [batch=K]: a guest that keeps rewriting
 * N MiB of its RAM (default 32) while it is snapshotted or live-migrated,
 * and on a key from the serial port checks every page it wrote.
 *
 * Each page p holds, in one word per 64-byte line, mix(p, gen[p], i), and
 * gen[] (one counter per page) lives in RAM too. A page that went missing
 * or stale in transit disagrees with its counter, so after a migration the
 * guest itself can tell whether every page arrived. The writing runs at
 * CPL3 (native speed on this project's KVM); between batches of K pages it
 * asks CPL0 whether a key arrived.
 */
#include "tg.h"

#define MW_PAGE 4096ul
#define MW_BASE (16ul << 20) /* the region; gen[] sits just below it */

static u64 mw_pages, mw_batch;
static volatile u32 *mw_gen;

static inline u64 mw_mix(u64 page, u64 g, u64 i)
{
	u64 x = (page << 32) ^ (g * 0x9E3779B97F4A7C15ull) ^ ((i + 1) * 0xBF58476D1CE4E5B9ull);
	x ^= x >> 31;
	x *= 0x94D049BB133111EBull;
	x ^= x >> 29;
	return x;
}

/* mw_write runs at CPL3 until a key arrives; returns the pages written. */
static u64 mw_write(u64 unused)
{
	(void)unused;
	u64 written = 0, p = 0;
	for (;;) {
		for (u64 k = 0; k < mw_batch; k++) {
			u64 pg = (p * 7919) % mw_pages;
			u32 g = mw_gen[pg] + 1;
			volatile u64 *w = (volatile u64 *)(MW_BASE + pg * MW_PAGE);
			for (u64 i = 0; i < MW_PAGE / 8; i += 8)
				w[i] = mw_mix(pg, g, i);
			mw_gen[pg] = g;
			p++;
			written++;
		}
		if ((int64_t)sys_call(SYS_GETC, 0, 0, 0) >= 0)
			return written;
	}
}

/* mw_verify runs at CPL3: the number of pages whose contents disagree
 * with their generation counter. */
static u64 mw_verify(u64 unused)
{
	(void)unused;
	u64 bad = 0;
	for (u64 pg = 0; pg < mw_pages; pg++) {
		u32 g = mw_gen[pg];
		volatile u64 *w = (volatile u64 *)(MW_BASE + pg * MW_PAGE);
		for (u64 i = 0; i < MW_PAGE / 8; i += 8) {
			u64 want = g ? mw_mix(pg, g, i) : 0;
			if (w[i] != want) {
				bad++;
				break;
			}
		}
	}
	return bad;
}

static u64 mw_touched(u64 unused)
{
	(void)unused;
	u64 n = 0;
	for (u64 pg = 0; pg < mw_pages; pg++)
		n += mw_gen[pg] != 0;
	return n;
}

int t_memwrite(void)
{
	u64 mb = cmdline_u64("mb", 32);
	mw_batch = cmdline_u64("batch", 8);
	mw_pages = mb * (1ul << 20) / MW_PAGE;
	u64 gen_bytes = (mw_pages * 4 + MW_PAGE - 1) & ~(MW_PAGE - 1);
	if (mb == 0 || mw_batch == 0 || MW_BASE + mb * (1ul << 20) > boot_mem_bytes()) {
		printf("memwrite: %lu MiB at %#lx does not fit in %lu MiB of RAM\n", (unsigned long)mb,
		       (unsigned long)MW_BASE, (unsigned long)(boot_mem_bytes() >> 20));
		return TG_FAIL;
	}
	mw_gen = (volatile u32 *)(MW_BASE - gen_bytes);
	for (u64 i = 0; i < mw_pages; i++)
		mw_gen[i] = 0;
	printf("memwrite: running (%lu MiB at %#lx, %lu pages per batch)\n", (unsigned long)mb,
	       (unsigned long)MW_BASE, (unsigned long)mw_batch);
	u64 written = user_call(mw_write, 0);
	u64 bad = user_call(mw_verify, 0);
	u64 touched = user_call(mw_touched, 0);
	printf("memwrite: wrote %lu pages, %lu distinct, verified %lu pages, bad=%lu\n", (unsigned long)written,
	       (unsigned long)touched, (unsigned long)mw_pages, (unsigned long)bad);
	return bad ? TG_FAIL : TG_OK;
}
