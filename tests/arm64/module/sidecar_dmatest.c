// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * sidecar_dmatest: the vfio-sidecar arm64 harness's DMA client (tests/arm64).
 *
 * Requests up to `channels` DMA_MEMCPY channels through the dmaengine API and,
 * on every channel at once (one kthread each), runs `count` memcpy transfers of
 * sizes from 1 byte to `max_size` with odd source and destination alignments on
 * coherent buffers (dma_alloc_coherent). Small transfers are queued back to back
 * (several descriptors submitted before one issue_pending). Every byte of every
 * destination is verified, and so are guard bytes on either side of it. Each
 * transfer has a timeout, so a faulting controller cannot hang the module.
 *
 * It prints ONE result line (the harness parses it):
 *   sidecar_dmatest: V/T transfers verified, E errors, F faults, S not run (...)
 * V verified, T planned; E = wrong data or a failed prep/submit; F = a callback
 * result other than DMA_TRANS_NOERROR, a timeout, or a status other than
 * DMA_COMPLETE from dma_async_is_tx_complete(); S = transfers a channel did not
 * run after `max_faults` faults. With bench=1, one channel first times transfers
 * of a few sizes one at a time and prints
 *   sidecar_dmatest: bench size=S n=N ns=T ok=K
 *
 * This is the project's own code (not dmatest); it never touches the controller
 * directly: Linux's own driver (pl330.ko) does.
 */
#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/dmaengine.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

static unsigned int count = 64;
module_param(count, uint, 0444);
MODULE_PARM_DESC(count, "transfers per channel (default 64)");
static unsigned int max_size = 1048576;
module_param(max_size, uint, 0444);
MODULE_PARM_DESC(max_size, "largest transfer in bytes (default 1 MiB)");
static unsigned int channels = 4;
module_param(channels, uint, 0444);
MODULE_PARM_DESC(channels, "channels to run at once (default 4)");
static unsigned int timeout_ms = 30000;
module_param(timeout_ms, uint, 0444);
MODULE_PARM_DESC(timeout_ms, "timeout per transfer in ms (default 30000)");
static unsigned int max_faults = 2;
module_param(max_faults, uint, 0444);
MODULE_PARM_DESC(max_faults, "a channel stops after this many faults (default 2)");
static unsigned int bench;
module_param(bench, uint, 0444);
MODULE_PARM_DESC(bench, "1: time transfers of 64 B, 4 KiB, 64 KiB, 1 MiB first (default 0)");

#define GUARD 16	/* poisoned bytes checked on either side of a destination */
#define SLACK 8		/* room for the odd offsets */
#define MAX_BATCH 8	/* descriptors queued before one issue_pending */
#define MAX_CHANNELS 8
#define POISON 0xa5

/* sizes cycle through this table (clamped to max_size); max_size itself is always included */
static const unsigned int sizes[] = {
	1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
	255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 2047, 4095, 4096, 4097,
	8191, 16384, 65535, 65536, 65537, 131072, 262143, 524288, 1048575, 1048576,
};

struct xfer {
	struct completion done;
	enum dmaengine_tx_result result;
	dma_cookie_t cookie;
	size_t len, soff, doff;
	u64 seed;
};

struct chan_test {
	struct dma_chan *chan;
	struct device *dev;
	int index;
	size_t buf_len;
	u8 *src, *dst;
	dma_addr_t src_dma, dst_dma;
	unsigned int verified, errors, faults, not_run;
	u64 bytes;
	struct completion finished;
};

static void xfer_callback(void *arg, const struct dmaengine_result *res)
{
	struct xfer *x = arg;

	x->result = res ? res->result : DMA_TRANS_NOERROR;
	complete(&x->done);
}

static u64 next_rand(u64 *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return *s;
}

static void fill(u8 *p, size_t len, u64 seed)
{
	u64 s = seed;
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		u64 v = next_rand(&s);

		memcpy(p + i, &v, 8);
	}
	for (; i < len; i++)
		p[i] = next_rand(&s) >> 56;
}

static size_t size_of(unsigned int i, int ch)
{
	size_t n = ARRAY_SIZE(sizes);
	size_t s = sizes[(i + 3 * ch) % n];

	/* every channel runs max_size at least once: its last transfer */
	if (i + 1 == count)
		s = max_size;
	return min_t(size_t, s, max_size);
}

static bool guard_ok(const u8 *p, size_t len)
{
	return !memchr_inv(p, POISON, len);
}

/* Verifies one finished transfer; returns true when every byte is right. */
static bool verify(struct chan_test *t, struct xfer *x, size_t base)
{
	const u8 *d = t->dst + base + x->doff;

	if (memcmp(d, t->src + base + x->soff, x->len))
		return false;
	return guard_ok(d - GUARD, GUARD) && guard_ok(d + x->len, GUARD);
}

/* Prepares and submits one transfer at byte `base` of the channel's buffers. */
static int submit(struct chan_test *t, struct xfer *x, size_t base)
{
	struct dma_async_tx_descriptor *tx;

	fill(t->src + base + x->soff, x->len, x->seed);
	memset(t->dst + base + x->doff - GUARD, POISON, x->len + 2 * GUARD);
	init_completion(&x->done);
	x->result = DMA_TRANS_NOERROR;
	tx = dmaengine_prep_dma_memcpy(t->chan, t->dst_dma + base + x->doff,
				       t->src_dma + base + x->soff, x->len,
				       DMA_PREP_INTERRUPT | DMA_CTRL_ACK);
	if (!tx)
		return -ENOMEM;
	tx->callback_result = xfer_callback;
	tx->callback_param = x;
	x->cookie = dmaengine_submit(tx);
	return dma_submit_error(x->cookie) ? -EIO : 0;
}

/* Waits for one submitted transfer; 0 = done without error, else -ETIMEDOUT/-EIO. */
static int wait_one(struct chan_test *t, struct xfer *x)
{
	enum dma_status st;

	if (!wait_for_completion_timeout(&x->done, msecs_to_jiffies(timeout_ms)))
		return -ETIMEDOUT;
	if (x->result != DMA_TRANS_NOERROR)
		return -EIO;
	st = dma_async_is_tx_complete(t->chan, x->cookie, NULL, NULL);
	return st == DMA_COMPLETE ? 0 : -EIO;
}

/* Lays out transfers i.. at disjoint offsets of the buffers; returns how many fit. */
static unsigned int plan_batch(struct chan_test *t, struct xfer *xs, unsigned int i, size_t *bases)
{
	unsigned int k = 0;
	size_t at = 0;

	while (k < MAX_BATCH && i + k < count) {
		struct xfer *x = &xs[k];
		size_t need;

		x->len = size_of(i + k, t->index);
		x->soff = GUARD + ((i + k) * 3 + t->index) % SLACK;
		x->doff = GUARD + ((i + k) * 5 + 2 * t->index + 1) % SLACK;
		x->seed = ((u64)t->index << 40) ^ ((u64)(i + k) * 0x9e3779b97f4a7c15ULL);
		need = ALIGN(x->len + 2 * GUARD + SLACK, 64);
		if (at + need > t->buf_len)
			break;
		bases[k] = at;
		at += need;
		k++;
	}
	return k;
}

static void run_batch(struct chan_test *t, struct xfer *xs, size_t *bases, unsigned int k)
{
	unsigned int j, submitted = 0;
	bool timed_out = false;

	for (j = 0; j < k; j++) {
		if (submit(t, &xs[j], bases[j])) {
			t->errors++;
			break;
		}
		submitted++;
	}
	t->not_run += k - submitted - (submitted < k ? 1 : 0);
	dma_async_issue_pending(t->chan);
	for (j = 0; j < submitted; j++) {
		int r = timed_out ? -ETIMEDOUT : wait_one(t, &xs[j]);

		if (r == -ETIMEDOUT && !timed_out) {
			timed_out = true;
			pr_info("sidecar_dmatest: chan %d (%s): transfer of %zu bytes timed out after %u ms\n",
				t->index, dma_chan_name(t->chan), xs[j].len, timeout_ms);
			/* nothing of this batch completes any more: no callback after this */
			dmaengine_terminate_sync(t->chan);
		}
		if (r) {
			if (r != -ETIMEDOUT || j == 0 || !timed_out)
				pr_info("sidecar_dmatest: chan %d: %zu-byte transfer failed: %s (result %d)\n",
					t->index, xs[j].len, r == -ETIMEDOUT ? "timeout" : "error status",
					xs[j].result);
			t->faults++;
		} else if (verify(t, &xs[j], bases[j])) {
			t->verified++;
			t->bytes += xs[j].len;
		} else {
			pr_info("sidecar_dmatest: chan %d: %zu bytes (src +%zu, dst +%zu) WRONG DATA\n",
				t->index, xs[j].len, xs[j].soff, xs[j].doff);
			t->errors++;
		}
	}
}

static int chan_thread(void *arg)
{
	struct chan_test *t = arg;
	struct xfer *xs = kcalloc(MAX_BATCH, sizeof(*xs), GFP_KERNEL);
	size_t bases[MAX_BATCH];
	unsigned int i = 0;

	if (!xs) {
		t->not_run = count;
		goto out;
	}
	while (i < count) {
		unsigned int k;

		if (t->faults >= max_faults) {
			t->not_run += count - i;
			break;
		}
		k = plan_batch(t, xs, i, bases);
		if (!k) {	/* cannot happen: buf_len fits max_size */
			t->not_run += count - i;
			break;
		}
		run_batch(t, xs, bases, k);
		i += k;
	}
	kfree(xs);
out:
	/* the module's text must outlive the thread: init waits for this */
	kthread_complete_and_exit(&t->finished, 0);
}

static void run_bench(struct chan_test *t)
{
	static const unsigned int bsizes[] = { 64, 4096, 65536, 1048576 };
	struct xfer x;
	unsigned int s, n, ok;

	for (s = 0; s < ARRAY_SIZE(bsizes); s++) {
		u64 t0, ns;
		unsigned int reps = bsizes[s] >= 1048576 ? 4 : 8;

		if (bsizes[s] > max_size)
			break;
		ok = 0;
		t0 = ktime_get_ns();
		for (n = 0; n < reps; n++) {
			x.len = bsizes[s];
			x.soff = GUARD;
			x.doff = GUARD;
			x.seed = n;
			if (submit(t, &x, 0))
				break;
			dma_async_issue_pending(t->chan);
			if (wait_one(t, &x)) {
				dmaengine_terminate_sync(t->chan);
				break;
			}
			ok += verify(t, &x, 0);
		}
		ns = ktime_get_ns() - t0;
		pr_info("sidecar_dmatest: bench size=%u n=%u ns=%llu ok=%u\n", bsizes[s], n, ns, ok);
	}
}

static int alloc_bufs(struct chan_test *t)
{
	t->dev = t->chan->device->dev;
	t->buf_len = ALIGN((size_t)max_size + 2 * GUARD + SLACK, 64);
	t->src = dma_alloc_coherent(t->dev, t->buf_len, &t->src_dma, GFP_KERNEL);
	t->dst = dma_alloc_coherent(t->dev, t->buf_len, &t->dst_dma, GFP_KERNEL);
	return t->src && t->dst ? 0 : -ENOMEM;
}

static void free_bufs(struct chan_test *t)
{
	if (t->src)
		dma_free_coherent(t->dev, t->buf_len, t->src, t->src_dma);
	if (t->dst)
		dma_free_coherent(t->dev, t->buf_len, t->dst, t->dst_dma);
}

static int __init sidecar_dmatest_init(void)
{
	struct chan_test *ts;
	dma_cap_mask_t mask;
	unsigned int want = clamp(channels, 1U, (unsigned int)MAX_CHANNELS);
	unsigned int n = 0, i, verified = 0, errors = 0, faults = 0, not_run = 0;
	u64 bytes = 0, t0;
	int ret = 0;

	if (!count || !max_size || max_size > 64U << 20) {
		pr_err("sidecar_dmatest: count must be > 0 and max_size 1..64 MiB\n");
		return -EINVAL;
	}
	ts = kcalloc(want, sizeof(*ts), GFP_KERNEL);
	if (!ts)
		return -ENOMEM;
	dma_cap_zero(mask);
	dma_cap_set(DMA_MEMCPY, mask);
	for (n = 0; n < want; n++) {
		struct dma_chan *c = dma_request_chan_by_mask(&mask);

		if (IS_ERR(c))
			break;
		ts[n].chan = c;
		ts[n].index = n;
		init_completion(&ts[n].finished);
		if (alloc_bufs(&ts[n])) {
			pr_err("sidecar_dmatest: cannot allocate 2 x %zu coherent bytes\n", ts[n].buf_len);
			free_bufs(&ts[n]);
			dma_release_channel(c);
			break;
		}
		pr_info("sidecar_dmatest: chan %u: %s on %s\n", n, dma_chan_name(c), dev_name(ts[n].dev));
	}
	if (!n) {
		pr_info("sidecar_dmatest: 0/0 transfers verified, 0 errors, 0 faults, 0 not run (no DMA_MEMCPY channel)\n");
		kfree(ts);
		return -ENODEV;
	}
	if (bench)
		run_bench(&ts[0]);
	t0 = ktime_get_ns();
	for (i = 0; i < n; i++) {
		struct task_struct *k = kthread_run(chan_thread, &ts[i], "sidecar_dmatest/%u", i);

		if (IS_ERR(k)) {
			ts[i].not_run = count;
			complete(&ts[i].finished);
		}
	}
	for (i = 0; i < n; i++) {
		wait_for_completion(&ts[i].finished);
		verified += ts[i].verified;
		errors += ts[i].errors;
		faults += ts[i].faults;
		not_run += ts[i].not_run;
		bytes += ts[i].bytes;
		free_bufs(&ts[i]);
		dma_release_channel(ts[i].chan);
	}
	pr_info("sidecar_dmatest: %u/%u transfers verified, %u errors, %u faults, %u not run (%u channels, %llu bytes, 1..%u B, %llu us)\n",
		verified, n * count, errors, faults, not_run, n, bytes, max_size,
		(ktime_get_ns() - t0) / 1000);
	kfree(ts);
	return ret;
}

static void __exit sidecar_dmatest_exit(void)
{
}

module_init(sidecar_dmatest_init);
module_exit(sidecar_dmatest_exit);
MODULE_DESCRIPTION("vfio-sidecar arm64 harness: dmaengine memcpy client that verifies every byte");
MODULE_LICENSE("Dual BSD/GPL");
