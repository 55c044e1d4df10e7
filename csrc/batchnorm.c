/*
 * Batch normalisation's passes over an (N, C, L) batch (L = H*W for
 * BatchNorm2d, 1 for BatchNorm1d on (N, C)); channel c is N planes of L
 * contiguous values, C*L apart. Each function takes the channels [c0, c1) or
 * the images [n0, n1) its thread owns; the per-channel arithmetic between the
 * passes (C numbers) is Python's (cyconv.functional.batch_norm).
 *
 *   batchnorm_stats          each channel's mean and biased variance, in double.
 *                            Per plane: its mean, then its squared deviations
 *                            from it (a second pass over the plane, in cache);
 *                            planes are combined with Chan et al.'s pairwise
 *                            update. The variance never comes from
 *                            E[x^2] - E[x]^2, which cancels when the mean
 *                            dwarfs the spread.
 *   batchnorm_backward_sums  each channel's sum(dy) and sum(dy * (x - mean)).
 *   channel_affine           y = x * a[c] + b[c]          (forward; eval backward)
 *   channel_affine_grad      dx = dy * a[c] + (x * b[c] + d[c])   (training backward)
 *
 * Sums over a plane run on LANES independent accumulators, added in a fixed
 * order, so results do not depend on the thread count, and the compiler turns
 * the lanes into vector registers (a single running sum would not vectorise
 * without -ffast-math, which the build never uses). With L == 1 the loops run
 * along the channels of each row instead, which is where the contiguous values
 * are.
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include "cyconv.h"

#define LANES 16

#define CYCONV_TEMPLATE "batchnorm.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(batchnorm_stats)(double *mean, double *var, const real *x, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L,
                         ptrdiff_t c0, ptrdiff_t c1)
{
    TIERED(batchnorm_stats)(mean, var, x, N, C, L, c0, c1);
}

void FN(batchnorm_backward_sums)(double *sum_dy, double *sum_dy_xmu, const real *dy, const real *x,
                                 const real *mean, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, ptrdiff_t c0,
                                 ptrdiff_t c1)
{
    TIERED(batchnorm_backward_sums)(sum_dy, sum_dy_xmu, dy, x, mean, N, C, L, c0, c1);
}

void FN(channel_affine)(real *y, const real *x, const real *a, const real *b, ptrdiff_t C, ptrdiff_t L,
                        ptrdiff_t n0, ptrdiff_t n1)
{
    TIERED(channel_affine)(y, x, a, b, C, L, n0, n1);
}

void FN(channel_affine_grad)(real *dx, const real *dy, const real *x, const real *a, const real *b,
                             const real *d, ptrdiff_t C, ptrdiff_t L, ptrdiff_t n0, ptrdiff_t n1)
{
    TIERED(channel_affine_grad)(dx, dy, x, a, b, d, C, L, n0, n1);
}

#else /* template body, per tier */

/* sum(p[0..L)) and sum((p - m)^2) over LANES accumulators */
TIER_FN inline real FN(lane_sum)(const real *restrict p, ptrdiff_t L)
{
    real acc[LANES] = {0};
    ptrdiff_t i = 0;
    for (; i + LANES <= L; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += p[i + j];
    real s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < L; i++) s += p[i];
    return s;
}

/* sum(g[0..L) * (p[0..L) - m)) over LANES accumulators */
TIER_FN inline real FN(lane_dot_deviations)(const real *restrict g, const real *restrict p, ptrdiff_t L, real m)
{
    real acc[LANES] = {0};
    ptrdiff_t i = 0;
    for (; i + LANES <= L; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += g[i + j] * (p[i + j] - m);
    real s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < L; i++) s += g[i] * (p[i] - m);
    return s;
}

TIER_FN inline real FN(lane_squared_deviations)(const real *restrict p, ptrdiff_t L, real m)
{
    real acc[LANES] = {0};
    ptrdiff_t i = 0;
    for (; i + LANES <= L; i += LANES)
        for (int j = 0; j < LANES; j++) {
            real d = p[i + j] - m;
            acc[j] += d * d;
        }
    real s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < L; i++) s += (p[i] - m) * (p[i] - m);
    return s;
}

TIER_FN void FN(batchnorm_stats)(double *restrict mean, double *restrict var, const real *restrict x,
                                 ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, ptrdiff_t c0, ptrdiff_t c1)
{
    // x (N, C, L); writes mean[c], var[c] for c in [c0, c1)
    if (L == 1) {
        for (ptrdiff_t c = c0; c < c1; c++) mean[c] = var[c] = 0;
        for (ptrdiff_t n = 0; n < N; n++)
            for (ptrdiff_t c = c0; c < c1; c++) mean[c] += x[n * C + c];
        for (ptrdiff_t c = c0; c < c1; c++) mean[c] /= (double)N;
        for (ptrdiff_t n = 0; n < N; n++)
            for (ptrdiff_t c = c0; c < c1; c++) {
                double d = x[n * C + c] - mean[c];
                var[c] += d * d;
            }
        for (ptrdiff_t c = c0; c < c1; c++) var[c] /= (double)N;
        return;
    }
    for (ptrdiff_t c = c0; c < c1; c++) {
        double m = 0, m2 = 0, count = 0;
        for (ptrdiff_t n = 0; n < N; n++) {
            const real *p = x + (n * C + c) * L;
            real pm = FN(lane_sum)(p, L) / (real)L;
            double d2 = FN(lane_squared_deviations)(p, L, pm);
            double delta = (double)pm - m, total = count + (double)L;
            m += delta * ((double)L / total);
            m2 += d2 + delta * delta * (count * (double)L / total);
            count = total;
        }
        mean[c] = m;
        var[c] = m2 / count;
    }
}

TIER_FN void FN(batchnorm_backward_sums)(double *restrict sum_dy, double *restrict sum_dy_xmu,
                                         const real *restrict dy, const real *restrict x,
                                         const real *restrict mean, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L,
                                         ptrdiff_t c0, ptrdiff_t c1)
{
    // dy, x (N, C, L); writes sum_dy[c], sum_dy_xmu[c] for c in [c0, c1)
    if (L == 1) {
        for (ptrdiff_t c = c0; c < c1; c++) sum_dy[c] = sum_dy_xmu[c] = 0;
        for (ptrdiff_t n = 0; n < N; n++)
            for (ptrdiff_t c = c0; c < c1; c++) {
                sum_dy[c] += dy[n * C + c];
                sum_dy_xmu[c] += (double)(dy[n * C + c] * (x[n * C + c] - mean[c]));
            }
        return;
    }
    for (ptrdiff_t c = c0; c < c1; c++) {
        double s = 0, sx = 0;
        real m = mean[c];
        for (ptrdiff_t n = 0; n < N; n++) {
            const real *g = dy + (n * C + c) * L, *p = x + (n * C + c) * L;
            // Two passes over the plane (in L1 for the second), each a lane sum: GCC
            // vectorised the one-pass form with two accumulator arrays across lanes,
            // a shuffle per load, at a third of the speed.
            real ps = FN(lane_sum)(g, L), psx = FN(lane_dot_deviations)(g, p, L, m);
            s += ps;
            sx += psx;
        }
        sum_dy[c] = s;
        sum_dy_xmu[c] = sx;
    }
}

TIER_FN void FN(channel_affine)(real *restrict y, const real *restrict x, const real *restrict a,
                                const real *restrict b, ptrdiff_t C, ptrdiff_t L, ptrdiff_t n0, ptrdiff_t n1)
{
    // x, y (N, C, L): images [n0, n1)
    for (ptrdiff_t n = n0; n < n1; n++) {
        if (L == 1) {
            for (ptrdiff_t c = 0; c < C; c++) y[n * C + c] = x[n * C + c] * a[c] + b[c];
            continue;
        }
        for (ptrdiff_t c = 0; c < C; c++) {
            const real *p = x + (n * C + c) * L;
            real *q = y + (n * C + c) * L, ac = a[c], bc = b[c];
            for (ptrdiff_t i = 0; i < L; i++) q[i] = p[i] * ac + bc;
        }
    }
}

TIER_FN void FN(channel_affine_grad)(real *restrict dx, const real *restrict dy, const real *restrict x,
                                     const real *restrict a, const real *restrict b, const real *restrict d,
                                     ptrdiff_t C, ptrdiff_t L, ptrdiff_t n0, ptrdiff_t n1)
{
    // dy, x, dx (N, C, L): images [n0, n1)
    for (ptrdiff_t n = n0; n < n1; n++) {
        if (L == 1) {
            for (ptrdiff_t c = 0; c < C; c++)
                dx[n * C + c] = dy[n * C + c] * a[c] + (x[n * C + c] * b[c] + d[c]);
            continue;
        }
        for (ptrdiff_t c = 0; c < C; c++) {
            const real *g = dy + (n * C + c) * L, *p = x + (n * C + c) * L;
            real *q = dx + (n * C + c) * L, ac = a[c], bc = b[c], dc = d[c];
            for (ptrdiff_t i = 0; i < L; i++) q[i] = g[i] * ac + (p[i] * bc + dc);
        }
    }
}

#endif
