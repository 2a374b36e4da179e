/* One-read CPU statistics for rangewatch.stats.native (built at first use, loaded through ctypes).
 *
 * Every function reads float32 values laid out as segments of positions, each position `cin`
 * interleaved channels (see struct layout):
 *   - RangeStats' contiguous (A, C, B) view: one segment per row (or `split` segments per row), one
 *     channel per position (cin = 1); the channel of row r is r % crow;
 *   - a channels-last-like (A, C, 1) view: A positions of cin = C interleaved channels, cut into
 *     segments of `seglen` positions.
 * A segment is reduced in W = 16 * cin independent float32 lanes (lane j holds channel j % cin),
 * plain elementwise loops the compiler vectorises (`omp simd`), over slices of at most STEPS lane
 * steps; each slice's lane sums and counts are added into double accumulators (float32 sums of at
 * most STEPS values; counts of at most STEPS zeros and ones: exact). Extremes and counts are exact;
 * NaN is propagated into min/max as torch.amin/amax do. Results are per (segment, channel).
 *
 * Build flags (see native.py): -O3 -ffp-contract=off (no fused multiply-add: the histogram's
 * slot arithmetic is the eager path's float32 operations, bit for bit), -fno-trapping-math (lets the
 * compiler turn the comparisons into vector selects; no result changes), -fopenmp-simd, and -fopenmp
 * where available (segments are shared among `nthreads` threads; torch's own OpenMP runtime where
 * torch bundles one: the same soname is loaded once).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LANES 16
#define MAXC 16
#define MAXW (LANES * MAXC)
#define STEPS 64

int rw_version(void) { return 3; }

typedef struct {
  int64_t nseg;   /* segments */
  int64_t split;  /* segments per row (cin = 1), else 1 */
  int64_t rowlen; /* positions per row (cin = 1) or in all (cin > 1) */
  int64_t seglen; /* positions per segment (the last of a row may be shorter) */
  int64_t cin;    /* channels interleaved in a position (1 for the (A, C, B) view) */
  int64_t crow;   /* channels of the rows (cin = 1): row r has channel r % crow */
  int64_t total;  /* values in x: a layout that reaches past them is declined */
} layout;

/* the values of segment s: *n of them, from the returned pointer */
static inline const float *seg(const float *x, const layout *g, int64_t s, int64_t *n) {
  int64_t row = s / g->split, part = s % g->split;
  int64_t first = part * g->seglen;
  int64_t end = first + g->seglen < g->rowlen ? first + g->seglen : g->rowlen;
  *n = (end > first ? end - first : 0) * g->cin;
  return x + (row * g->rowlen + first) * g->cin;
}

static inline int64_t chan0(const layout *g, int64_t s) { return g->cin > 1 ? 0 : (s / g->split) % g->crow; }

/* whether the layout stays inside x: whole rows of `split` segments, each row inside `total` */
static int check(const layout *g) {
  if (g->cin < 1 || g->cin > MAXC || g->seglen < 1 || g->split < 1 || g->nseg < 0 || g->rowlen < 0 || g->crow < 1)
    return 0;
  if (g->nseg % g->split != 0 || g->seglen * g->split < g->rowlen) return 0;
  int64_t rows = g->nseg / g->split;
  return rows == 0 || (g->rowlen <= g->total / g->cin / rows && rows * g->rowlen * g->cin <= g->total);
}

/* The per-segment bodies are inlined twice: with W = 16 and C = 1 as constants (the (A, C, B)
 * view: fixed-length loops the compiler keeps in registers, about twice as fast) and for any C. */
#define INLINE static inline __attribute__((always_inline))

INLINE void minmax_seg(const float *p, int64_t m, const int64_t W, const int64_t C, int64_t s, int64_t ns, float *out) {
    float a[MAXW], b[MAXW], n[MAXW];
    for (int64_t j = 0; j < W; j++) { a[j] = INFINITY; b[j] = -INFINITY; n[j] = 0.0f; }
    int64_t nb = m / W;
    for (int64_t k = 0; k < nb; k++) {
      const float *q = p + k * W;
#pragma omp simd
      for (int64_t j = 0; j < W; j++) {
        float v = q[j];
        a[j] = v < a[j] ? v : a[j];
        b[j] = v > b[j] ? v : b[j];
        n[j] = v != v ? 1.0f : n[j];
      }
    }
    for (int64_t i = nb * W; i < m; i++) { /* tail: lane i % W holds channel i % C */
      int64_t j = i % W;
      float v = p[i];
      a[j] = v < a[j] ? v : a[j]; b[j] = v > b[j] ? v : b[j]; n[j] = v != v ? 1.0f : n[j];
    }
    for (int64_t c = 0; c < C; c++) {
      float A = INFINITY, M = -INFINITY, N = 0.0f;
      for (int64_t j = c; j < W; j += C) { A = a[j] < A ? a[j] : A; M = b[j] > M ? b[j] : M; N += n[j]; }
      if (N > 0.0f) { A = NAN; M = NAN; }
      out[s * C + c] = A; out[ns + s * C + c] = M;
    }
}

/* Results: statistic k of (segment s, channel c) at out[k * S + s * cin + c], S = nseg * cin. */

/* Per (segment, channel) min and max. */
int rw_minmax(const float *x, const layout *gp, int nthreads, float *out) {
  const layout g = *gp;
  if (!check(&g)) return -2;
  const int64_t S = g.nseg * g.cin;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t s = 0; s < g.nseg; s++) {
    int64_t m;
    const float *p = seg(x, &g, s, &m);
    if (g.cin == 1) minmax_seg(p, m, LANES, 1, s, S, out);
    else minmax_seg(p, m, LANES * g.cin, g.cin, s, S, out);
  }
  return 0;
}

INLINE void moments_seg(const float *p, int64_t m, const int64_t W, const int64_t C, int64_t s, int64_t ns,
                        float *out_f, double *out_d) {
    float a[MAXW], b[MAXW], t[MAXW], q2[MAXW];
    double S[MAXW], Q[MAXW];
    for (int64_t j = 0; j < W; j++) { a[j] = INFINITY; b[j] = -INFINITY; S[j] = 0.0; Q[j] = 0.0; }
    int64_t nb = m / W;
    for (int64_t k0 = 0; k0 < nb; k0 += STEPS) {
      int64_t k1 = k0 + STEPS < nb ? k0 + STEPS : nb;
      for (int64_t j = 0; j < W; j++) { t[j] = 0.0f; q2[j] = 0.0f; }
      for (int64_t k = k0; k < k1; k++) {
        const float *q = p + k * W;
#pragma omp simd
        for (int64_t j = 0; j < W; j++) {
          float v = q[j];
          a[j] = v < a[j] ? v : a[j];
          b[j] = v > b[j] ? v : b[j];
          t[j] += v;
          q2[j] += v * v;
        }
      }
      for (int64_t j = 0; j < W; j++) { S[j] += t[j]; Q[j] += q2[j]; }
    }
    for (int64_t i = nb * W; i < m; i++) {
      int64_t j = i % W;
      float v = p[i];
      a[j] = v < a[j] ? v : a[j]; b[j] = v > b[j] ? v : b[j]; S[j] += v; Q[j] += (double)(v * v);
    }
    for (int64_t c = 0; c < C; c++) {
      float A = INFINITY, M = -INFINITY;
      double SS = 0.0, QQ = 0.0;
      for (int64_t j = c; j < W; j += C) { A = a[j] < A ? a[j] : A; M = b[j] > M ? b[j] : M; SS += S[j]; QQ += Q[j]; }
      if (QQ != QQ) { A = NAN; M = NAN; } /* a square is NaN only where the value is: NaN is present */
      int64_t o = s * C + c;
      out_f[o] = A; out_f[ns + o] = M;
      out_d[o] = SS; out_d[ns + o] = QQ;
    }
}

/* Per (segment, channel) min, max (out_f, 2 each), sum and sum of squares (out_d, 2 each). */
int rw_moments(const float *x, const layout *gp, int nthreads, float *out_f, double *out_d) {
  const layout g = *gp;
  if (!check(&g)) return -2;
  const int64_t S = g.nseg * g.cin;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t s = 0; s < g.nseg; s++) {
    int64_t m;
    const float *p = seg(x, &g, s, &m);
    if (g.cin == 1) moments_seg(p, m, LANES, 1, s, S, out_f, out_d);
    else moments_seg(p, m, LANES * g.cin, g.cin, s, S, out_f, out_d);
  }
  return 0;
}

/* Per (segment, channel): min, max, finite min, finite max (out_f, 4 each); sum, sum of squares,
 * non-finite count, NaN count, count below lo[c], count above hi[c] (out_d, 6 each). lo/hi may be
 * NULL (no bounds: those counts are 0). */
INLINE void detail_seg(const float *p, int64_t m, const int64_t W, const int64_t C, int64_t s, int64_t ns, int64_t c0,
                       const float *lo, const float *hi, float *out_f, double *out_d) {
    float l[MAXW], h[MAXW];
    float a[MAXW], b[MAXW], t[MAXW], q2[MAXW], nf[MAXW], nn[MAXW], cl[MAXW], ch[MAXW];
    double S[MAXW], Q[MAXW], NF[MAXW], NN[MAXW], CL[MAXW], CH[MAXW];
    for (int64_t j = 0; j < W; j++) {
      int64_t c = c0 + j % C;
      l[j] = lo ? lo[c] : -INFINITY; h[j] = hi ? hi[c] : INFINITY;
      a[j] = INFINITY; b[j] = -INFINITY;
      S[j] = 0.0; Q[j] = 0.0; NF[j] = 0.0; NN[j] = 0.0; CL[j] = 0.0; CH[j] = 0.0;
    }
    int64_t nb = m / W;
    for (int64_t k0 = 0; k0 < nb; k0 += STEPS) {
      int64_t k1 = k0 + STEPS < nb ? k0 + STEPS : nb;
      for (int64_t j = 0; j < W; j++) { t[j] = 0.0f; q2[j] = 0.0f; nf[j] = 0.0f; nn[j] = 0.0f; cl[j] = 0.0f; ch[j] = 0.0f; }
      for (int64_t k = k0; k < k1; k++) {
        const float *q = p + k * W;
#pragma omp simd
        for (int64_t j = 0; j < W; j++) {
          float v = q[j];
          a[j] = v < a[j] ? v : a[j];
          b[j] = v > b[j] ? v : b[j];
          t[j] += v;
          q2[j] += v * v;
          nf[j] += (float)((v - v) != 0.0f); /* v - v is 0 for finite v, NaN for NaN and +-inf */
          nn[j] += (float)(v != v);
          cl[j] += (float)(v < l[j]);
          ch[j] += (float)(v > h[j]);
        }
      }
      for (int64_t j = 0; j < W; j++) {
        S[j] += t[j]; Q[j] += q2[j]; NF[j] += nf[j]; NN[j] += nn[j]; CL[j] += cl[j]; CH[j] += ch[j];
      }
    }
    for (int64_t i = nb * W; i < m; i++) {
      int64_t j = i % W;
      float v = p[i];
      a[j] = v < a[j] ? v : a[j]; b[j] = v > b[j] ? v : b[j]; S[j] += v; Q[j] += (double)(v * v);
      NF[j] += (v - v) != 0.0f; NN[j] += v != v; CL[j] += v < l[j]; CH[j] += v > h[j];
    }
    for (int64_t c = 0; c < C; c++) {
      float A = INFINITY, M = -INFINITY;
      double o6[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
      for (int64_t j = c; j < W; j += C) {
        A = a[j] < A ? a[j] : A; M = b[j] > M ? b[j] : M;
        o6[0] += S[j]; o6[1] += Q[j]; o6[2] += NF[j]; o6[3] += NN[j]; o6[4] += CL[j]; o6[5] += CH[j];
      }
      float FA = A, FM = M;
      if (o6[2] > 0.0) { /* NaN or +-inf in this channel: its finite extremes need a second look */
        FA = INFINITY; FM = -INFINITY;
        for (int64_t i = c; i < m; i += C) {
          float v = p[i];
          if ((v - v) == 0.0f) { FA = v < FA ? v : FA; FM = v > FM ? v : FM; }
        }
      }
      if (o6[3] > 0.0) { A = NAN; M = NAN; }
      int64_t o = s * C + c;
      out_f[o] = A; out_f[ns + o] = M; out_f[2 * ns + o] = FA; out_f[3 * ns + o] = FM;
      for (int k = 0; k < 6; k++) out_d[k * ns + o] = o6[k];
    }
}

int rw_detail(const float *x, const layout *gp, const float *lo, const float *hi, int nthreads, float *out_f,
              double *out_d) {
  const layout g = *gp;
  if (!check(&g)) return -2;
  const int64_t S = g.nseg * g.cin;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t s = 0; s < g.nseg; s++) {
    int64_t m;
    const float *p = seg(x, &g, s, &m);
    int64_t c0 = chan0(&g, s);
    if (g.cin == 1) detail_seg(p, m, LANES, 1, s, S, c0, lo, hi, out_f, out_d);
    else detail_seg(p, m, LANES * g.cin, g.cin, s, S, c0, lo, hi, out_f, out_d);
  }
  return 0;
}

INLINE void hist_seg(const float *p, int64_t m, const int64_t W, const int64_t C, int64_t c0, const float *origin,
                     const float *scale, const float *offset, float low, float high, float nan_slot, const int64_t BLOCKS,
                     int32_t *idx, int64_t *loc) {
    float o[MAXW], sc[MAXW], off[MAXW];
    for (int64_t j = 0; j < W; j++) {
      int64_t c = c0 + j % C;
      o[j] = origin[c]; sc[j] = scale[c]; off[j] = offset[c];
    }
    int64_t nb = m / W;
    for (int64_t k0 = 0; k0 < nb; k0 += BLOCKS) {
      int64_t k1 = k0 + BLOCKS < nb ? k0 + BLOCKS : nb;
      for (int64_t k = k0; k < k1; k++) {
        const float *q = p + k * W;
        int32_t *d = idx + (k - k0) * W;
#pragma omp simd
        for (int64_t j = 0; j < W; j++) {
          float v = q[j];
          float hh = floorf((v - o[j]) * sc[j]);
          hh = hh < low ? low : hh;
          hh = hh > high ? high : hh;
          hh = hh != hh ? nan_slot + off[j] : hh + off[j]; /* NaN slot: as the eager nan_to_num */
          d[j] = (int32_t)hh;
        }
      }
      int64_t n = (k1 - k0) * W;
      for (int64_t i = 0; i < n; i++) loc[idx[i]]++;
    }
    for (int64_t i = nb * W; i < m; i++) {
      int64_t j = i % W;
      float v = p[i];
      float hh = floorf((v - o[j]) * sc[j]);
      hh = hh < low ? low : hh;
      hh = hh > high ? high : hh;
      hh = hh != hh ? nan_slot + off[j] : hh + off[j]; /* NaN slot: as the eager nan_to_num */
      loc[(int32_t)hh]++;
    }
}

/* Histogram slot counts, the slot arithmetic of RangeStats._histogram in float32:
 * slot = clamp(floor((v - origin[c]) * scale[c]), low, high) + offset[c], a NaN slot value (NaN v) ->
 * nan_slot + offset[c];
 * counts (int64, `size` of them) are added to. Returns 0; -1 if memory ran out, -2 if a slot would
 * fall outside `counts` or the layout is odd (nothing added either way). `channels`: how many
 * entries origin/scale/offset have. */
int rw_histogram(const float *x, const layout *gp, int64_t channels, const float *origin, const float *scale, const float *offset,
                 float low, float high, float nan_slot, int64_t size, int nthreads, int64_t *counts) {
  const layout g = *gp;
  if (!check(&g)) return -2;
  for (int64_t c = 0; c < channels; c++) /* every slot inside counts, or nothing is counted */
    if (!(offset[c] + low >= 0.0f && offset[c] + high < (float)size && nan_slot + offset[c] >= 0.0f &&
          nan_slot + offset[c] < (float)size))
      return -2;
  const int64_t BLOCKS = (1024 + LANES * g.cin - 1) / (LANES * g.cin), BLOCKS1 = 1024 / LANES;
  int failed = 0;
#pragma omp parallel num_threads(nthreads)
  {
    int64_t *loc = (int64_t *)calloc((size_t)size, sizeof(int64_t));
    int32_t *idx = (int32_t *)malloc((size_t)(BLOCKS * LANES * g.cin + 1024) * sizeof(int32_t));
    if (!loc || !idx) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    int give_up;
#pragma omp atomic read
    give_up = failed;
    if (!give_up) { /* the same decision on every thread (after the barrier) */
#pragma omp for schedule(static)
      for (int64_t s = 0; s < g.nseg; s++) {
        int64_t m;
        const float *p = seg(x, &g, s, &m);
        int64_t c0 = chan0(&g, s);
        if (g.cin == 1) hist_seg(p, m, LANES, 1, c0, origin, scale, offset, low, high, nan_slot, BLOCKS1, idx, loc);
        else hist_seg(p, m, LANES * g.cin, g.cin, c0, origin, scale, offset, low, high, nan_slot, BLOCKS, idx, loc);
      }
#pragma omp critical
      for (int64_t i = 0; i < size; i++) counts[i] += loc[i];
    }
    free(loc);
    free(idx);
  }
  return failed ? -1 : 0;
}
