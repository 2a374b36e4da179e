/* One-read CPU statistics for rangewatch.stats_native (built at first use, loaded through ctypes).
 *
 * Every function reads float32 rows: R rows of B contiguous values, row r at x + r * B, and the
 * channel of row r is r % C (RangeStats' (A, C, B) view). Each row is reduced in L independent
 * float32 lanes (plain elementwise loops the compiler vectorises) over slices of at most SLICE
 * values, and each slice's lane sums are added into double accumulators: float32 sums of at most
 * SLICE / L values, counts of at most SLICE / L zeros and ones (exact). Extremes and counts are
 * exact; NaN is propagated into min/max as torch.amin/amax do.
 *
 * Build flags (see stats_native.py): -O3 -ffp-contract=off (no fused multiply-add: the histogram's
 * slot arithmetic is the eager path's float32 operations, bit for bit), -fno-trapping-math (lets the
 * compiler turn the comparisons into vector selects; no result changes), -fopenmp-simd (the inner
 * loops are vectorised as written: `omp simd`), -fopenmp where available
 * (rows are shared among `nthreads` threads; torch's own OpenMP runtime where it bundles one).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define L 16
#define SLICE 1024

int rw_version(void) { return 1; }

/* Per-row min and max. */
void rw_minmax(const float *x, int64_t R, int64_t B, int nthreads, float *out /* R x 2 */) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t r = 0; r < R; r++) {
    const float *p = x + r * B;
    float a[L], b[L], n[L];
    for (int j = 0; j < L; j++) { a[j] = INFINITY; b[j] = -INFINITY; n[j] = 0.0f; }
    int64_t nb = B / L;
    for (int64_t k = 0; k < nb; k++) {
      const float *q = p + k * L;
#pragma omp simd
      for (int j = 0; j < L; j++) {
        float v = q[j];
        a[j] = v < a[j] ? v : a[j];
        b[j] = v > b[j] ? v : b[j];
        n[j] = v != v ? 1.0f : n[j];
      }
    }
    float A = a[0], M = b[0], N = n[0];
    for (int j = 1; j < L; j++) { A = a[j] < A ? a[j] : A; M = b[j] > M ? b[j] : M; N += n[j]; }
    for (int64_t i = nb * L; i < B; i++) {
      float v = p[i];
      A = v < A ? v : A; M = v > M ? v : M; N += v != v;
    }
    if (N > 0.0f) { A = NAN; M = NAN; }
    out[2 * r] = A; out[2 * r + 1] = M;
  }
}

/* Per-row min, max (out_f: R x 2), sum and sum of squares (out_d: R x 2). */
void rw_moments(const float *x, int64_t R, int64_t B, int nthreads, float *out_f, double *out_d) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t r = 0; r < R; r++) {
    const float *p = x + r * B;
    float a[L], b[L], t[L], s[L];
    for (int j = 0; j < L; j++) { a[j] = INFINITY; b[j] = -INFINITY; }
    double S = 0.0, Q = 0.0;
    int64_t nb = B / L;
    for (int64_t k0 = 0; k0 < nb; k0 += SLICE / L) {
      int64_t k1 = k0 + SLICE / L < nb ? k0 + SLICE / L : nb;
      for (int j = 0; j < L; j++) { t[j] = 0.0f; s[j] = 0.0f; }
      for (int64_t k = k0; k < k1; k++) {
        const float *q = p + k * L;
#pragma omp simd
        for (int j = 0; j < L; j++) {
          float v = q[j];
          a[j] = v < a[j] ? v : a[j];
          b[j] = v > b[j] ? v : b[j];
          t[j] += v;
          s[j] += v * v;
        }
      }
      for (int j = 0; j < L; j++) { S += t[j]; Q += s[j]; }
    }
    float A = a[0], M = b[0];
    for (int j = 1; j < L; j++) { A = a[j] < A ? a[j] : A; M = b[j] > M ? b[j] : M; }
    for (int64_t i = nb * L; i < B; i++) {
      float v = p[i];
      A = v < A ? v : A; M = v > M ? v : M; S += v; Q += (double)(v * v);
    }
    if (Q != Q) { A = NAN; M = NAN; } /* a square is NaN only where the value is: NaN is present */
    out_f[2 * r] = A; out_f[2 * r + 1] = M;
    out_d[2 * r] = S; out_d[2 * r + 1] = Q;
  }
}

/* Per-row min, max, finite min, finite max (out_f: R x 4); sum, sum of squares, non-finite count,
 * NaN count, count below lo[c], count above hi[c] (out_d: R x 6). lo/hi may be NULL (no bounds:
 * the counts are 0). */
void rw_detail(const float *x, int64_t R, int64_t C, int64_t B, const float *lo, const float *hi, int nthreads,
               float *out_f, double *out_d) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t r = 0; r < R; r++) {
    const float *p = x + r * B;
    int64_t c = r % C;
    float l = lo ? lo[c] : -INFINITY, h = hi ? hi[c] : INFINITY;
    float a[L], b[L], t[L], s[L], nf[L], nn[L], cl[L], ch[L];
    for (int j = 0; j < L; j++) { a[j] = INFINITY; b[j] = -INFINITY; }
    double S = 0.0, Q = 0.0, NF = 0.0, NN = 0.0, CL = 0.0, CH = 0.0;
    int64_t nb = B / L;
    for (int64_t k0 = 0; k0 < nb; k0 += SLICE / L) {
      int64_t k1 = k0 + SLICE / L < nb ? k0 + SLICE / L : nb;
      for (int j = 0; j < L; j++) { t[j] = 0.0f; s[j] = 0.0f; nf[j] = 0.0f; nn[j] = 0.0f; cl[j] = 0.0f; ch[j] = 0.0f; }
      for (int64_t k = k0; k < k1; k++) {
        const float *q = p + k * L;
#pragma omp simd
        for (int j = 0; j < L; j++) {
          float v = q[j];
          a[j] = v < a[j] ? v : a[j];
          b[j] = v > b[j] ? v : b[j];
          t[j] += v;
          s[j] += v * v;
          nf[j] += (float)((v - v) != 0.0f); /* v - v is 0 for finite v, NaN for NaN and +-inf */
          nn[j] += (float)(v != v);
          cl[j] += (float)(v < l);
          ch[j] += (float)(v > h);
        }
      }
      for (int j = 0; j < L; j++) { S += t[j]; Q += s[j]; NF += nf[j]; NN += nn[j]; CL += cl[j]; CH += ch[j]; }
    }
    float A = a[0], M = b[0];
    for (int j = 1; j < L; j++) { A = a[j] < A ? a[j] : A; M = b[j] > M ? b[j] : M; }
    for (int64_t i = nb * L; i < B; i++) {
      float v = p[i];
      A = v < A ? v : A; M = v > M ? v : M; S += v; Q += (double)(v * v);
      NF += (v - v) != 0.0f; NN += v != v; CL += v < l; CH += v > h;
    }
    float FA = A, FM = M;
    if (NF > 0.0) { /* a row with NaN or +-inf: its finite extremes need a second look */
      FA = INFINITY; FM = -INFINITY;
      for (int64_t i = 0; i < B; i++) {
        float v = p[i];
        if ((v - v) == 0.0f) { FA = v < FA ? v : FA; FM = v > FM ? v : FM; }
      }
    }
    if (NN > 0.0) { A = NAN; M = NAN; }
    out_f[4 * r] = A; out_f[4 * r + 1] = M; out_f[4 * r + 2] = FA; out_f[4 * r + 3] = FM;
    double *o = out_d + 6 * r;
    o[0] = S; o[1] = Q; o[2] = NF; o[3] = NN; o[4] = CL; o[5] = CH;
  }
}

/* Histogram slot counts, the slot arithmetic of RangeStats._histogram in float32:
 * slot = clamp(floor((v - origin[c]) * scale[c]), low, high) + offset[c], NaN -> nan_slot + offset[c];
 * counts (int64, `size` of them) are added to. Returns 0; -1 if memory ran out, -2 if a slot would fall
 * outside `counts` (nothing added either way). */
int rw_histogram(const float *x, int64_t R, int64_t C, int64_t B, const float *origin, const float *scale,
                 const float *offset, float low, float high, float nan_slot, int64_t size, int nthreads,
                 int64_t *counts) {
  int failed = 0;
  for (int64_t c = 0; c < C; c++) /* every slot inside counts, or nothing is counted */
    if (!(offset[c] + low >= 0.0f && offset[c] + high < (float)size && nan_slot + offset[c] >= 0.0f &&
          nan_slot + offset[c] < (float)size))
      return -2;
#pragma omp parallel num_threads(nthreads)
  {
    int64_t *loc = (int64_t *)calloc((size_t)size, sizeof(int64_t));
    int32_t idx[SLICE];
    if (!loc) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    int give_up;
#pragma omp atomic read
    give_up = failed;
    if (!give_up) { /* the same decision on every thread (after the barrier) */
#pragma omp for schedule(static)
      for (int64_t r = 0; r < R; r++) {
        const float *p = x + r * B;
        int64_t c = r % C;
        float o = origin[c], sc = scale[c], off = offset[c], ns = nan_slot + off;
        for (int64_t i0 = 0; i0 < B; i0 += SLICE) {
          int64_t n = B - i0 < SLICE ? B - i0 : SLICE;
          const float *q = p + i0;
#pragma omp simd
          for (int64_t i = 0; i < n; i++) {
            float v = q[i];
            float hh = floorf((v - o) * sc);
            hh = hh < low ? low : hh;
            hh = hh > high ? high : hh;
            hh = v != v ? ns : hh + off;
            idx[i] = (int32_t)hh;
          }
          for (int64_t i = 0; i < n; i++) loc[idx[i]]++;
        }
      }
#pragma omp critical
      for (int64_t i = 0; i < size; i++) counts[i] += loc[i];
    }
    free(loc);
  }
  return failed ? -1 : 0;
}
