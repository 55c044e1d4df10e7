/*
 * Max pooling on one (H,W) plane, forward and backward.
 *
 * Forward records, for each output, the flat position in the plane of the
 * maximum it took (PyTorch's convention), so backward is a scatter through it.
 * Window scan is row-major and only a strictly greater value (or a NaN) replaces
 * the current maximum: the first maximum wins ties and a NaN in the window
 * gives a NaN output, exactly as PyTorch does. Padding acts as -inf: padded
 * taps are simply skipped.
 *
 * Instantiated for float and double like im2col.c.
 */
#ifndef real

#include "cyconv.h"

#define real float
#define FN(name) name##_f32
#include "maxpool.c"
#undef real
#undef FN

#define real double
#define FN(name) name##_f64
#include "maxpool.c"
#undef real
#undef FN

#else /* template body */

#include <math.h>

/* The running maximum (m, at position best) takes v at position i if v is larger
 * or NaN. Written as selects, not branches: on random data the branch would
 * mispredict half the time. */
#define MAXPOOL_TAKE(m, best, v, i)         \
    do {                                    \
        int take_ = (v) > (m) || (v) != (v); \
        (m) = take_ ? (v) : (m);            \
        (best) = take_ ? (i) : (best);      \
    } while (0)

/* The 2x2, stride 2, unpadded case (LeNet's pooling): four fixed taps per
 * output, no bounds, so the compiler unrolls and vectorises the row. */
CYCONV_VECTORIZE static void FN(maxpool2x2)(real *restrict y, int64_t *restrict ind, const real *restrict x,
                           ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo)
{
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        const real *r0 = x + 2 * oh * W, *r1 = r0 + W;
        real *yr = y + oh * Wo;
        int64_t *ir = ind ? ind + oh * Wo : NULL;
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            ptrdiff_t i0 = 2 * oh * W + 2 * ow;
            real m = r0[2 * ow];
            ptrdiff_t best = i0;
            MAXPOOL_TAKE(m, best, r0[2 * ow + 1], i0 + 1);
            MAXPOOL_TAKE(m, best, r1[2 * ow], i0 + W);
            MAXPOOL_TAKE(m, best, r1[2 * ow + 1], i0 + W + 1);
            yr[ow] = m;
            if (ir) ir[ow] = (int64_t)best;
        }
    }
}

void FN(maxpool2d_forward)(real *y, int64_t *ind, const real *x,
                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                           ptrdiff_t Ho, ptrdiff_t Wo)
{
    // x is (H,W); y and ind are (Ho,Wo); ind may be NULL (inference)
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0) {
        FN(maxpool2x2)(y, ind, x, W, Ho, Wo);
        return;
    }
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        ptrdiff_t h0 = oh * sh - ph, h1 = h0 + kh;
        if (h0 < 0) h0 = 0;
        if (h1 > H) h1 = H;
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            ptrdiff_t w0 = ow * sw - pw, w1 = w0 + kw;
            if (w0 < 0) w0 = 0;
            if (w1 > W) w1 = W;
            /* padding <= kernel/2 (checked in Python) keeps every window non-empty */
            ptrdiff_t best = h0 * W + w0;
            real m = -INFINITY;
            for (ptrdiff_t h = h0; h < h1; h++)
                for (ptrdiff_t w = w0; w < w1; w++) MAXPOOL_TAKE(m, best, x[h * W + w], h * W + w);
            y[oh * Wo + ow] = m;
            if (ind) ind[oh * Wo + ow] = (int64_t)best;
        }
    }
}

ptrdiff_t FN(maxpool2d_backward)(real *dx, const real *dy, const int64_t *ind,
                                 ptrdiff_t HW, ptrdiff_t L)
{
    // dx is (HW,), overwritten; dy and ind are (L,)
    ptrdiff_t bad = 0;
    for (ptrdiff_t i = 0; i < HW; i++) dx[i] = 0;
    for (ptrdiff_t l = 0; l < L; l++) {
        /* one unsigned comparison rejects both negative and too-large indices */
        if ((uint64_t)ind[l] < (uint64_t)HW) {
            dx[ind[l]] += dy[l];
        } else {
            bad++;
        }
    }
    return bad;
}

#endif
