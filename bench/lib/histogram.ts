// A small HDR-style latency histogram: log-linear buckets (like HdrHistogram), so recording is O(1),
// memory is fixed whatever the number of samples, and every reported percentile is within
// 1 / SUB_BUCKETS (< 0.8 %) of the true sample value. Values are recorded in microseconds.

const SUB_BUCKET_BITS = 7; // 128 sub-buckets per power of two -> relative error < 2^-7
const SUB_BUCKETS = 1 << SUB_BUCKET_BITS;
const MAX_EXPONENT = 40; // up to 2^40 us (~12 days); anything larger is clamped

export class Histogram {
  readonly counts = new Float64Array((MAX_EXPONENT + 2) * SUB_BUCKETS);
  count = 0;
  min = Infinity;
  max = -Infinity;
  sum = 0;

  /** Records one value in microseconds (negative values are recorded as 0). */
  record(us: number): void {
    const v = Math.max(0, us);
    this.counts[bucketOf(v)]++;
    this.count++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** Records a duration given in milliseconds. */
  recordMs(ms: number): void {
    this.record(ms * 1000);
  }

  merge(other: Histogram): this {
    for (let i = 0; i < this.counts.length; i++) this.counts[i] += other.counts[i];
    this.count += other.count;
    this.sum += other.sum;
    this.min = Math.min(this.min, other.min);
    this.max = Math.max(this.max, other.max);
    return this;
  }

  /** The value (us) at percentile p (0..100): the upper edge of its bucket, capped at max. */
  percentile(p: number): number {
    if (this.count === 0) return NaN;
    if (p <= 0) return this.min;
    const rank = Math.ceil((p / 100) * this.count);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(Math.max(bucketUpper(i), this.min), this.max);
    }
    return this.max;
  }

  mean(): number {
    return this.count === 0 ? NaN : this.sum / this.count;
  }

  /** p50/p95/p99/max/mean in milliseconds, rounded to microseconds. */
  summaryMs(): { count: number; p50: number; p95: number; p99: number; max: number; mean: number } {
    const ms = (us: number) => Math.round(us) / 1000;
    return {
      count: this.count,
      p50: ms(this.percentile(50)),
      p95: ms(this.percentile(95)),
      p99: ms(this.percentile(99)),
      max: ms(this.max),
      mean: ms(this.mean()),
    };
  }
}

// Index 0 .. 2*SUB_BUCKETS-1: exact integer microseconds. Above that, for each power of two 2^e
// (e >= 1) the range [SUB_BUCKETS * 2^e, SUB_BUCKETS * 2^(e+1)) is split into SUB_BUCKETS buckets.
function bucketOf(v: number): number {
  const n = Math.floor(v);
  if (n < 2 * SUB_BUCKETS) return n;
  const e = Math.min(Math.floor(Math.log2(n)) - SUB_BUCKET_BITS, MAX_EXPONENT);
  const m = Math.min(Math.floor(n / 2 ** e), 2 * SUB_BUCKETS - 1); // in [SUB_BUCKETS, 2*SUB_BUCKETS)
  return 2 * SUB_BUCKETS + (e - 1) * SUB_BUCKETS + (m - SUB_BUCKETS);
}

function bucketUpper(i: number): number {
  if (i < 2 * SUB_BUCKETS) return i;
  const j = i - 2 * SUB_BUCKETS;
  const e = Math.floor(j / SUB_BUCKETS) + 1;
  const m = SUB_BUCKETS + (j % SUB_BUCKETS);
  return (m + 1) * 2 ** e - 1;
}
