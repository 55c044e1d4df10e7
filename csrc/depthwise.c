/*
 * Depthwise convolution on one (H,W) plane: forward, input gradient and
 * weight (+ bias) gradient, with stride, zero padding and dilation.
 *
 * A depthwise layer (groups == in_channels, MobileNet's 3x3) has one kh x kw
 * filter per plane: im2col would copy each input pixel kh*kw times for a GEMM
 * of one row, so it is computed directly instead. Each kernel tap (ki, kj)
 * touches a row segment of the output, [ow_lo, ow_hi), that reads inside the
 * image; over it the work is one "y_row += w * x_row" (stride 1: contiguous,
 * which the compiler vectorises per ISA tier), so there are no bounds tests in
 * the inner loop. Memory-bound, so no hand-written tier kernels.
 *
 * Output (oh, ow), tap (ki, kj) reads x[oh*sh - ph + ki*dh, ow*sw - pw + kj*dw].
 * The Cython layer owns the loops over planes and images (and their order, so
 * the weight gradient does not depend on the thread count).
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include "cyconv.h"

/* Outputs [*lo, *hi) of an axis of n_out outputs whose tap at offset `off`
 * (input index = out*stride + off) falls inside [0, n_in). */
static inline void tap_range(ptrdiff_t n_in, ptrdiff_t n_out, ptrdiff_t stride, ptrdiff_t off,
                             ptrdiff_t *lo, ptrdiff_t *hi)
{
    /* first: smallest out with out*stride + off >= 0; last: largest with out*stride + off <= n_in - 1 */
    ptrdiff_t first = off >= 0 ? 0 : (-off + stride - 1) / stride;
    ptrdiff_t top = n_in - 1 - off;
    ptrdiff_t end = top < 0 ? 0 : top / stride + 1;
    *lo = first < n_out ? first : n_out;
    *hi = end < n_out ? end : n_out;
    if (*hi < *lo) *hi = *lo;
}

#define CYCONV_TEMPLATE "depthwise.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(depthwise_conv2d_forward)(real *y, const real *x, const real *w, const real *bias, ptrdiff_t H,
                                  ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                  ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho,
                                  ptrdiff_t Wo)
{
    TIERED(depthwise_conv2d_forward)(y, x, w, bias, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo);
}

void FN(depthwise_conv2d_backward_input)(real *dx, const real *dy, const real *w, ptrdiff_t H, ptrdiff_t W,
                                         ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                                         ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(depthwise_conv2d_backward_input)(dx, dy, w, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo);
}

void FN(depthwise_conv2d_backward_weight)(real *dweight, real *dbias, const real *dy, const real *x,
                                          ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                          ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                          ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(depthwise_conv2d_backward_weight)(dweight, dbias, dy, x, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho,
                                             Wo);
}

#else /* template body, per tier */

TIER_FN void FN(depthwise_conv2d_forward)(real *restrict y, const real *restrict x, const real *restrict w,
                                          const real *bias, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                          ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                                          ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // x is (H,W), w is (kh,kw), bias is one value or NULL; y (Ho,Wo) is overwritten
    real b = bias ? *bias : 0;
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        real *yr = y + oh * Wo;
        for (ptrdiff_t ow = 0; ow < Wo; ow++) yr[ow] = b;
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            ptrdiff_t ih = oh * sh - ph + ki * dh;
            if (ih < 0 || ih >= H) continue;
            const real *xr = x + ih * W;
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                ptrdiff_t off = kj * dw - pw, lo, hi;
                tap_range(W, Wo, sw, off, &lo, &hi);
                real wv = w[ki * kw + kj];
                if (sw == 1 && lo < hi) {
                    /* from lo on: xr + off alone may point left of the image */
                    const real *xs = xr + (lo + off);
                    real *ys = yr + lo;
                    for (ptrdiff_t i = 0; i < hi - lo; i++) ys[i] += wv * xs[i];
                } else {
                    for (ptrdiff_t ow = lo; ow < hi; ow++) yr[ow] += wv * xr[ow * sw + off];
                }
            }
        }
    }
}

TIER_FN void FN(depthwise_conv2d_backward_input)(real *restrict dx, const real *restrict dy,
                                                 const real *restrict w, ptrdiff_t H, ptrdiff_t W,
                                                 ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                                 ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                                 ptrdiff_t Ho, ptrdiff_t Wo)
{
    // dy is (Ho,Wo), w (kh,kw); dx (H,W) is ADDED into (a plane with a channel multiplier
    // gets the sum of its output planes' gradients): the transpose of the forward's taps
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        const real *dyr = dy + oh * Wo;
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            ptrdiff_t ih = oh * sh - ph + ki * dh;
            if (ih < 0 || ih >= H) continue;
            real *dxr = dx + ih * W;
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                ptrdiff_t off = kj * dw - pw, lo, hi;
                tap_range(W, Wo, sw, off, &lo, &hi);
                real wv = w[ki * kw + kj];
                if (sw == 1 && lo < hi) {
                    real *xs = dxr + (lo + off);
                    const real *ds = dyr + lo;
                    for (ptrdiff_t i = 0; i < hi - lo; i++) xs[i] += wv * ds[i];
                } else {
                    for (ptrdiff_t ow = lo; ow < hi; ow++) dxr[ow * sw + off] += wv * dyr[ow];
                }
            }
        }
    }
}

/* sum of a[i] * b[i*stride] over i in [0, n), in LANES independent partial sums
 * so the compiler can vectorise it without reassociating (-ffast-math is off) */
#ifndef DEPTHWISE_LANES
#define DEPTHWISE_LANES 8
#endif
TIER_FN inline real FN(strided_dot)(const real *restrict a, const real *restrict b, ptrdiff_t stride,
                                    ptrdiff_t n)
{
    real acc[DEPTHWISE_LANES] = {0};
    ptrdiff_t i = 0;
    if (stride == 1) {
        for (; i + DEPTHWISE_LANES <= n; i += DEPTHWISE_LANES)
            for (int l = 0; l < DEPTHWISE_LANES; l++) acc[l] += a[i + l] * b[i + l];
    }
    for (; i < n; i++) acc[0] += a[i] * b[i * stride];
    real s = 0;
    for (int l = 0; l < DEPTHWISE_LANES; l++) s += acc[l];
    return s;
}

TIER_FN void FN(depthwise_conv2d_backward_weight)(real *restrict dweight, real *dbias, const real *restrict dy,
                                                  const real *restrict x, ptrdiff_t H, ptrdiff_t W,
                                                  ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                                  ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                                  ptrdiff_t Ho, ptrdiff_t Wo)
{
    // dy is (Ho,Wo), x (H,W); dweight (kh,kw) and *dbias (unless NULL) are ADDED into,
    // each as this plane's sum (in double, then rounded once: float32 planes of 10^4
    // outputs keep their digits)
    for (ptrdiff_t ki = 0; ki < kh; ki++) {
        for (ptrdiff_t kj = 0; kj < kw; kj++) {
            ptrdiff_t off = kj * dw - pw, lo, hi;
            tap_range(W, Wo, sw, off, &lo, &hi);
            double s = 0;
            for (ptrdiff_t oh = 0; oh < Ho; oh++) {
                ptrdiff_t ih = oh * sh - ph + ki * dh;
                if (ih < 0 || ih >= H || lo >= hi) continue;
                s += (double)FN(strided_dot)(dy + oh * Wo + lo, x + ih * W + lo * sw + off, sw, hi - lo);
            }
            dweight[ki * kw + kj] += (real)s;
        }
    }
    if (dbias) {
        double s = 0;
        for (ptrdiff_t oh = 0; oh < Ho; oh++) {
            const real *dyr = dy + oh * Wo;
            real acc[DEPTHWISE_LANES] = {0};
            ptrdiff_t ow = 0;
            for (; ow + DEPTHWISE_LANES <= Wo; ow += DEPTHWISE_LANES)
                for (int l = 0; l < DEPTHWISE_LANES; l++) acc[l] += dyr[ow + l];
            for (; ow < Wo; ow++) acc[0] += dyr[ow];
            for (int l = 0; l < DEPTHWISE_LANES; l++) s += (double)acc[l];
        }
        *dbias += (real)s;
    }
}

#endif
