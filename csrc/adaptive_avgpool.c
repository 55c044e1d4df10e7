/*
 * Adaptive average pooling on one (H,W) plane, forward and backward, with
 * PyTorch's bins: output row i averages input rows [floor(i*H/Ho),
 * ceil((i+1)*H/Ho)), and the same along the width. Bins may overlap (H not a
 * multiple of Ho) and always hold at least one element.
 *
 * Sums are kept in double and rounded once, so a float32 plane of 10^4-10^5
 * elements (a global average pool, Ho = Wo = 1, the head of ResNet and
 * MobileNet) keeps its digits. That case has its own loop: a row at a time in
 * independent lanes the compiler vectorises (without -ffast-math it may not
 * reorder one running sum).
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include "cyconv.h"

/* The bin of output (i, j): input rows [h0, h1) and columns [w0, w1), n elements. */
typedef struct adaptive_bin {
    ptrdiff_t h0, h1, w0, w1, n;
} adaptive_bin;

static inline adaptive_bin adaptive_bin_of(ptrdiff_t i, ptrdiff_t j, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho,
                                           ptrdiff_t Wo)
{
    adaptive_bin b = {i * H / Ho, ((i + 1) * H + Ho - 1) / Ho, j * W / Wo, ((j + 1) * W + Wo - 1) / Wo, 0};
    b.n = (b.h1 - b.h0) * (b.w1 - b.w0);
    return b;
}

#define CYCONV_TEMPLATE "adaptive_avgpool.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(adaptive_avg_pool2d_forward)(real *y, const real *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(adaptive_avg_pool2d_forward)(y, x, H, W, Ho, Wo);
}

void FN(adaptive_avg_pool2d_backward)(real *dx, const real *dy, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho,
                                      ptrdiff_t Wo)
{
    TIERED(adaptive_avg_pool2d_backward)(dx, dy, H, W, Ho, Wo);
}

#else /* template body, per tier */

#ifndef ADAPTIVE_LANES
#define ADAPTIVE_LANES 16
#endif

/* The sum of the n elements at x, in double. */
TIER_FN inline double FN(row_sum)(const real *restrict x, ptrdiff_t n)
{
    real acc[ADAPTIVE_LANES] = {0};
    ptrdiff_t i = 0;
    double s = 0;
    /* each lane sums at most 64 values in `real` before they join the double total */
    while (i + ADAPTIVE_LANES <= n) {
        ptrdiff_t end = n - (n - i) % ADAPTIVE_LANES, stop = i + 64 * ADAPTIVE_LANES;
        if (stop > end) stop = end;
        for (; i < stop; i += ADAPTIVE_LANES)
            for (int l = 0; l < ADAPTIVE_LANES; l++) acc[l] += x[i + l];
        for (int l = 0; l < ADAPTIVE_LANES; l++) {
            s += (double)acc[l];
            acc[l] = 0;
        }
    }
    for (; i < n; i++) s += (double)x[i];
    return s;
}

TIER_FN void FN(adaptive_avg_pool2d_forward)(real *restrict y, const real *restrict x, ptrdiff_t H, ptrdiff_t W,
                                             ptrdiff_t Ho, ptrdiff_t Wo)
{
    // x is (H,W), y is (Ho,Wo)
    if (Ho == 1 && Wo == 1) {
        /* a plane is contiguous: one sum over H*W */
        y[0] = (real)(FN(row_sum)(x, H * W) / (double)(H * W));
        return;
    }
    for (ptrdiff_t i = 0; i < Ho; i++)
        for (ptrdiff_t j = 0; j < Wo; j++) {
            adaptive_bin b = adaptive_bin_of(i, j, H, W, Ho, Wo);
            double s = 0;
            for (ptrdiff_t h = b.h0; h < b.h1; h++) s += FN(row_sum)(x + h * W + b.w0, b.w1 - b.w0);
            y[i * Wo + j] = (real)(s / (double)b.n);
        }
}

TIER_FN void FN(adaptive_avg_pool2d_backward)(real *restrict dx, const real *restrict dy, ptrdiff_t H,
                                              ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // dy is (Ho,Wo); dx (H,W) is overwritten: each output's gradient / its bin's size, over its bin
    if (Ho == 1 && Wo == 1) {
        real g = (real)((double)dy[0] / (double)(H * W));
        for (ptrdiff_t k = 0; k < H * W; k++) dx[k] = g;
        return;
    }
    for (ptrdiff_t k = 0; k < H * W; k++) dx[k] = 0;
    for (ptrdiff_t i = 0; i < Ho; i++)
        for (ptrdiff_t j = 0; j < Wo; j++) {
            adaptive_bin b = adaptive_bin_of(i, j, H, W, Ho, Wo);
            real g = (real)((double)dy[i * Wo + j] / (double)b.n);
            for (ptrdiff_t h = b.h0; h < b.h1; h++)
                for (ptrdiff_t w = b.w0; w < b.w1; w++) dx[h * W + w] += g;
        }
}

#endif
