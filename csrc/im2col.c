/*
 * im2col and col2im for one image, plus the small per-output-block helpers of
 * the convolution (bias add, bias-gradient row sums).
 *
 * im2col turns a (C,H,W) image into (C*kh*kw, Ho*Wo) columns so a convolution
 * becomes one GEMM: y (O, Ho*Wo) = weight (O, C*kh*kw) @ cols. Row r = (c, ki, kj)
 * holds x[c, oh*sh - ph + ki, ow*sw - pw + kj] for every output (oh, ow), 0 outside
 * the image: the layout of torch.nn.functional.unfold. col2im is its adjoint.
 *
 * Written once for a generic `real`, instantiated for float and double by
 * instantiate.h.
 */
#ifndef real

#include "cyconv.h"

#define CYCONV_TEMPLATE "im2col.c"
#include "instantiate.h"

#else /* template body, instantiated for each `real` */

#include <string.h>

#ifndef CYCONV_IM2COL_RANGE
#define CYCONV_IM2COL_RANGE
/* The outputs o in [0, n_out) whose input position o*stride - pad + k lies in
 * [0, n_in): [*lo, *hi). Lets the copy loops run without a bounds test per pixel. */
static void valid_output_range(ptrdiff_t n_in, ptrdiff_t n_out, ptrdiff_t stride,
                               ptrdiff_t pad, ptrdiff_t k, ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t off = pad - k; /* input = o*stride - off */
    /* first o with o*stride >= off; ceil division valid for negative off too */
    ptrdiff_t first = off <= 0 ? 0 : (off + stride - 1) / stride;
    /* last o with o*stride - off <= n_in - 1 */
    ptrdiff_t top = n_in - 1 + off;
    ptrdiff_t last = top < 0 ? -1 : top / stride;
    *lo = first < n_out ? first : n_out;
    *hi = last + 1 < n_out ? last + 1 : n_out;
    if (*hi < *lo) *hi = *lo;
}
#endif

CYCONV_VECTORIZE void FN(im2col)(real *cols, ptrdiff_t col_ld, const real *img,
                ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo)
{
    // img is (C,H,W); cols is (C*kh*kw, Ho*Wo) with row stride col_ld
    for (ptrdiff_t c = 0; c < C; c++) {
        const real *plane = img + c * H * W;
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            ptrdiff_t oh_lo, oh_hi;
            valid_output_range(H, Ho, sh, ph, ki, &oh_lo, &oh_hi);
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                real *row = cols + ((c * kh + ki) * kw + kj) * col_ld;
                ptrdiff_t ow_lo, ow_hi;
                valid_output_range(W, Wo, sw, pw, kj, &ow_lo, &ow_hi);
                memset(row, 0, (size_t)(oh_lo * Wo) * sizeof(real));
                for (ptrdiff_t oh = oh_lo; oh < oh_hi; oh++) {
                    const real *src = plane + (oh * sh - ph + ki) * W + (ow_lo * sw - pw + kj);
                    real *dst = row + oh * Wo;
                    for (ptrdiff_t ow = 0; ow < ow_lo; ow++) dst[ow] = 0;
                    if (sw == 1) {
                        memcpy(dst + ow_lo, src, (size_t)(ow_hi - ow_lo) * sizeof(real));
                    } else {
                        for (ptrdiff_t ow = ow_lo; ow < ow_hi; ow++) dst[ow] = src[(ow - ow_lo) * sw];
                    }
                    for (ptrdiff_t ow = ow_hi; ow < Wo; ow++) dst[ow] = 0;
                }
                memset(row + oh_hi * Wo, 0, (size_t)((Ho - oh_hi) * Wo) * sizeof(real));
            }
        }
    }
}

CYCONV_VECTORIZE void FN(col2im)(real *img, const real *cols, ptrdiff_t col_ld,
                ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo)
{
    // cols is (C*kh*kw, Ho*Wo) with row stride col_ld; img is (C,H,W), overwritten
    memset(img, 0, (size_t)(C * H * W) * sizeof(real));
    for (ptrdiff_t c = 0; c < C; c++) {
        real *plane = img + c * H * W;
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            ptrdiff_t oh_lo, oh_hi;
            valid_output_range(H, Ho, sh, ph, ki, &oh_lo, &oh_hi);
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                const real *row = cols + ((c * kh + ki) * kw + kj) * col_ld;
                ptrdiff_t ow_lo, ow_hi;
                valid_output_range(W, Wo, sw, pw, kj, &ow_lo, &ow_hi);
                for (ptrdiff_t oh = oh_lo; oh < oh_hi; oh++) {
                    real *dst = plane + (oh * sh - ph + ki) * W + (ow_lo * sw - pw + kj);
                    const real *src = row + oh * Wo;
                    for (ptrdiff_t ow = ow_lo; ow < ow_hi; ow++) dst[(ow - ow_lo) * sw] += src[ow];
                }
            }
        }
    }
}

CYCONV_VECTORIZE void FN(add_bias)(real *y, const real *bias, ptrdiff_t O, ptrdiff_t L)
{
    // y is (O,L), bias is (O,)
    for (ptrdiff_t o = 0; o < O; o++) {
        real b = bias[o];
        real *yo = y + o * L;
        for (ptrdiff_t l = 0; l < L; l++) yo[l] += b;
    }
}

CYCONV_VECTORIZE void FN(accumulate_row_sums)(real *acc, const real *dy, ptrdiff_t O, ptrdiff_t L)
{
    // dy is (O,L), acc is (O,)
    for (ptrdiff_t o = 0; o < O; o++) {
        const real *d = dy + o * L;
        real s = 0;
        for (ptrdiff_t l = 0; l < L; l++) s += d[l];
        acc[o] += s;
    }
}

#endif
