/*
 * im2col, col2im and im2row for one image, plus the small per-output-block
 * helpers of the convolution (bias add, bias-gradient row sums).
 *
 * im2col turns a (C,H,W) image into (C*kh*kw, Ho*Wo) columns so a convolution
 * becomes one GEMM: y (O, Ho*Wo) = weight (O, C*kh*kw) @ cols. Row r = (c, ki, kj)
 * holds x[c, oh*sh - ph + ki, ow*sw - pw + kj] for every output (oh, ow), 0 outside
 * the image: the layout of torch.nn.functional.unfold. col2im is its adjoint;
 * im2row is its transpose (the weight gradient's operand, see im2row below).
 *
 * The template body at the end is the statement of what they compute, written
 * once for a generic `real` and compiled per type and ISA tier by instantiate.h.
 * For float on the x86 tiers, the common unit-stride cases also have vector
 * loops (*_vec): one (masked) vector load and store per row segment instead of
 * thousands of short memcpy calls (4-5x faster on LeNet's conv2). They are
 * written once over simd.h's float vector, so what differs per tier is only
 * that vector's few operations (16 lanes and masked stores on avx512, 8 lanes
 * and whole stores on avx2), and the rows they take (avx2: >= 8 pixels).
 *
 * Masked-off lanes are never read, so a masked load may start left of a row or
 * end past it; its address is computed in integers (simd.h's offset_ptr),
 * since such a pointer would be undefined in C. No other pointer is formed past
 * a buffer either.
 */
#ifndef real

#include <string.h>

#include "cyconv.h"

void pad_image_f32(float *padded, const float *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                   ptrdiff_t ph, ptrdiff_t pw)
{
    // padded is (C, H + 2*ph, W + 2*pw): img in the middle, zeros around it
    ptrdiff_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    for (ptrdiff_t c = 0; c < C; c++) {
        float *plane = padded + c * Hp * Wp;
        memset(plane, 0, (size_t)(ph * Wp) * sizeof(float));
        for (ptrdiff_t h = 0; h < H; h++) {
            float *row = plane + (ph + h) * Wp;
            memset(row, 0, (size_t)pw * sizeof(float));
            memcpy(row + pw, img + (c * H + h) * W, (size_t)W * sizeof(float));
            memset(row + pw + W, 0, (size_t)pw * sizeof(float));
        }
        memset(plane + (ph + H) * Wp, 0, (size_t)(ph * Wp) * sizeof(float));
    }
}

/* The outputs o in [0, n_out) whose input position o*stride - pad + k lies in
 * [0, n_in): [*lo, *hi). Lets the copy loops run without a bounds test per pixel. */
static inline void valid_output_range(ptrdiff_t n_in, ptrdiff_t n_out, ptrdiff_t stride,
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

#define CYCONV_TEMPLATE "im2col.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(im2col)(real *cols, ptrdiff_t col_ld, const real *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(im2col)(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);
}

void FN(col2im)(real *img, const real *cols, ptrdiff_t col_ld, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(col2im)(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);
}

void FN(im2col_dilated)(real *cols, ptrdiff_t col_ld, const real *img, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(im2col_dilated)(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo);
}

void FN(col2im_dilated)(real *img, const real *cols, ptrdiff_t col_ld, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    TIERED(col2im_dilated)(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo);
}

void FN(add_bias)(real *y, ptrdiff_t ldy, const real *bias, ptrdiff_t O, ptrdiff_t L)
{
    TIERED(add_bias)(y, ldy, bias, O, L);
}

void FN(accumulate_row_sums)(real *acc, const real *dy, ptrdiff_t O, ptrdiff_t L)
{
    TIERED(accumulate_row_sums)(acc, dy, O, L);
}

#ifdef REAL_IS_FLOAT
void FN(im2row)(float *rows, const float *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                ptrdiff_t Wo)
{
    TIERED(im2row)(rows, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);
}
#endif

#else /* template body, per tier */

#include "simd.h"

#if VF_TIER
/* The row loops stay out of line (noinline): inlined into im2col and col2im
 * beside the plain loops, GCC's avx512 copies ran ~15-20% slower. */

/* im2col, stride 1 along the width: each output row segment is one masked load
 * and one store, the mask supplying the padding zeros. Rows of >= VF_MIN_ROW. */
TIER_FN __attribute__((noinline)) void FN(im2col_w1_vec)(float *cols, ptrdiff_t col_ld, const float *img,
                                                         ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                                         ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t ph, ptrdiff_t pw,
                                                         ptrdiff_t Ho, ptrdiff_t Wo)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                float *row = cols + ((c * kh + ki) * kw + kj) * col_ld;
                ptrdiff_t shift = kj - pw; /* input column of output column ow is ow + shift */
                for (ptrdiff_t oh = 0; oh < Ho; oh++) {
                    ptrdiff_t ih = oh * sh - ph + ki;
                    int inside = ih >= 0 && ih < H;
                    const float *src = img + (c * H + (inside ? ih : 0)) * W;
                    for (ptrdiff_t s = 0; s < Wo; s += VL) {
                        ptrdiff_t ow = VF_STEP(s, Wo);
                        vmask store = VF_ROW_MASK(Wo - ow);
                        vmask load = VF_AND(store, VF_LANES(-shift - ow, W - shift - ow));
                        VF_STORE_ROW(row + oh * Wo + ow, store, VF_LOAD_IF(inside, src, ow + shift, load));
                    }
                }
            }
        }
    }
}

/* col2im, stride 1, written as a gather: each input row segment sums its kh*kw
 * contributions in a register, in the scatter loops' order (ki, then kj, from 0),
 * and is stored once (the scatter form re-reads and re-writes every pixel kh*kw
 * times). Rows of >= VF_MIN_ROW. */
TIER_FN __attribute__((noinline)) void FN(col2im_s1_vec)(float *img, const float *cols, ptrdiff_t col_ld,
                                                         ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                                         ptrdiff_t kw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                                                         ptrdiff_t Wo)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        for (ptrdiff_t ih = 0; ih < H; ih++) {
            for (ptrdiff_t s = 0; s < W; s += VL) {
                ptrdiff_t iw = VF_STEP(s, W);
                vf acc = VF_ZERO();
                for (ptrdiff_t ki = 0; ki < kh; ki++) {
                    ptrdiff_t oh = ih + ph - ki;
                    if (oh < 0 || oh >= Ho) continue;
                    for (ptrdiff_t kj = 0; kj < kw; kj++) {
                        const float *row = cols + ((c * kh + ki) * kw + kj) * col_ld + oh * Wo;
                        ptrdiff_t shift = pw - kj; /* output column of input column iw is iw + shift */
                        acc = VF_ADD(acc, VF_LOAD(row, iw + shift, VF_LANES(-shift - iw, Wo - shift - iw)));
                    }
                }
                VF_STORE_ROW(img + (c * H + ih) * W + iw, VF_ROW_MASK(W - iw), acc);
            }
        }
    }
}

/* im2row for kernels up to VL wide: one masked load of kw floats per (output
 * pixel, channel, kernel row). A tier whose stores write past the kw floats
 * (VF_SEG_SPILLS: avx2) stores a pixel's segments in address order, channel by
 * channel, so the next segment overwrites the spill; avx512 stores exactly kw
 * floats and goes kernel row by kernel row (row ki of every channel: measured
 * 20-30% faster there than channel by channel). */
TIER_FN void FN(im2row_vec)(float *rows, const float *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                            ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                            ptrdiff_t Wo)
{
    ptrdiff_t K = C * kh * kw, size = Ho * Wo * K;
    ptrdiff_t n_outer = VF_SEG_SPILLS ? C : kh, n_inner = VF_SEG_SPILLS ? kh : C;
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            ptrdiff_t pixel = (oh * Wo + ow) * K; /* where the pixel's segments start in rows */
            ptrdiff_t iw0 = ow * sw - pw;
            vmask load = VF_LANES(-iw0, W - iw0 < kw ? W - iw0 : kw);
            for (ptrdiff_t i = 0; i < n_outer; i++) {
                for (ptrdiff_t j = 0; j < n_inner; j++) {
                    ptrdiff_t c = VF_SEG_SPILLS ? i : j, ki = VF_SEG_SPILLS ? j : i;
                    ptrdiff_t ih = oh * sh - ph + ki, at = pixel + (c * kh + ki) * kw;
                    int inside = ih >= 0 && ih < H;
                    vf v = VF_LOAD_IF(inside, img + (c * H + (inside ? ih : 0)) * W, iw0, load);
                    VF_STORE_SEG(rows + at, kw, size - at, v);
                }
            }
        }
    }
}
#endif /* VF_TIER */

TIER_FN void FN(im2col)(real *cols, ptrdiff_t col_ld, const real *img, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // img is (C,H,W); cols is (C*kh*kw, Ho*Wo) with row stride col_ld
#if VF_TIER
    if (sw == 1 && Wo >= VF_MIN_ROW) {
        FN(im2col_w1_vec)(cols, col_ld, img, C, H, W, kh, kw, sh, ph, pw, Ho, Wo);
        return;
    }
#endif
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

TIER_FN void FN(col2im)(real *img, const real *cols, ptrdiff_t col_ld, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // cols is (C*kh*kw, Ho*Wo) with row stride col_ld; img is (C,H,W), overwritten
#if VF_TIER
    if (sh == 1 && sw == 1 && W >= VF_MIN_ROW) {
        FN(col2im_s1_vec)(img, cols, col_ld, C, H, W, kh, kw, ph, pw, Ho, Wo);
        return;
    }
#endif
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

#ifdef REAL_IS_FLOAT
TIER_FN void FN(im2row)(float *rows, const float *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                        ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // rows is (Ho*Wo, C*kh*kw): the transpose of im2col's columns. Row (oh, ow)
    // is the receptive field of that output, so the weight gradient
    // dW (O, C*kh*kw) = dy (O, Ho*Wo) @ rows is a GEMM whose B is read in place.
#if VF_TIER
    if (kw <= VL) {
        FN(im2row_vec)(rows, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);
        return;
    }
#endif
    ptrdiff_t K = C * kh * kw;
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            float *row = rows + (oh * Wo + ow) * K;
            ptrdiff_t iw0 = ow * sw - pw;
            // taps kj in [kj_lo, kj_hi) fall inside the image columns
            ptrdiff_t kj_lo = iw0 < 0 ? -iw0 : 0;
            ptrdiff_t kj_hi = W - iw0 < kw ? W - iw0 : kw;
            if (kj_hi < kj_lo) kj_hi = kj_lo;
            for (ptrdiff_t c = 0; c < C; c++) {
                for (ptrdiff_t ki = 0; ki < kh; ki++) {
                    float *dst = row + (c * kh + ki) * kw;
                    ptrdiff_t ih = oh * sh - ph + ki;
                    if (ih < 0 || ih >= H) {
                        for (ptrdiff_t kj = 0; kj < kw; kj++) dst[kj] = 0.0f;
                        continue;
                    }
                    const float *src = img + (c * H + ih) * W + iw0;
                    for (ptrdiff_t kj = 0; kj < kj_lo; kj++) dst[kj] = 0.0f;
                    for (ptrdiff_t kj = kj_lo; kj < kj_hi; kj++) dst[kj] = src[kj];
                    for (ptrdiff_t kj = kj_hi; kj < kw; kj++) dst[kj] = 0.0f;
                }
            }
        }
    }
}
#endif

/* im2col and col2im with dilation (dh, dw): tap (ki, kj) reads input row
 * oh*sh - ph + ki*dh, column ow*sw - pw + kj*dw. Only dilated convolutions call
 * these, so the undilated pair above keeps its fast paths untouched; plain
 * loops, which the compiler vectorises per tier where the stride is 1. */
TIER_FN void FN(im2col_dilated)(real *cols, ptrdiff_t col_ld, const real *img, ptrdiff_t C, ptrdiff_t H,
                                ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho,
                                ptrdiff_t Wo)
{
    // img is (C,H,W); cols is (C*kh*kw, Ho*Wo) with row stride col_ld
    for (ptrdiff_t c = 0; c < C; c++) {
        const real *plane = img + c * H * W;
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            ptrdiff_t oh_lo, oh_hi;
            valid_output_range(H, Ho, sh, ph, ki * dh, &oh_lo, &oh_hi);
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                real *row = cols + ((c * kh + ki) * kw + kj) * col_ld;
                ptrdiff_t ow_lo, ow_hi;
                valid_output_range(W, Wo, sw, pw, kj * dw, &ow_lo, &ow_hi);
                for (ptrdiff_t oh = 0; oh < Ho; oh++) {
                    real *dst = row + oh * Wo;
                    if (oh < oh_lo || oh >= oh_hi) {
                        for (ptrdiff_t ow = 0; ow < Wo; ow++) dst[ow] = 0;
                        continue;
                    }
                    const real *src = plane + (oh * sh - ph + ki * dh) * W;
                    for (ptrdiff_t ow = 0; ow < ow_lo; ow++) dst[ow] = 0;
                    for (ptrdiff_t ow = ow_lo; ow < ow_hi; ow++) dst[ow] = src[ow * sw - pw + kj * dw];
                    for (ptrdiff_t ow = ow_hi; ow < Wo; ow++) dst[ow] = 0;
                }
            }
        }
    }
}

TIER_FN void FN(col2im_dilated)(real *img, const real *cols, ptrdiff_t col_ld, ptrdiff_t C, ptrdiff_t H,
                                ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho,
                                ptrdiff_t Wo)
{
    // cols is (C*kh*kw, Ho*Wo) with row stride col_ld; img is (C,H,W), overwritten
    memset(img, 0, (size_t)(C * H * W) * sizeof(real));
    for (ptrdiff_t c = 0; c < C; c++) {
        real *plane = img + c * H * W;
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            ptrdiff_t oh_lo, oh_hi;
            valid_output_range(H, Ho, sh, ph, ki * dh, &oh_lo, &oh_hi);
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                const real *row = cols + ((c * kh + ki) * kw + kj) * col_ld;
                ptrdiff_t ow_lo, ow_hi;
                valid_output_range(W, Wo, sw, pw, kj * dw, &ow_lo, &ow_hi);
                for (ptrdiff_t oh = oh_lo; oh < oh_hi; oh++) {
                    real *dst = plane + (oh * sh - ph + ki * dh) * W;
                    const real *src = row + oh * Wo;
                    for (ptrdiff_t ow = ow_lo; ow < ow_hi; ow++) dst[ow * sw - pw + kj * dw] += src[ow];
                }
            }
        }
    }
}

TIER_FN void FN(add_bias)(real *y, ptrdiff_t ldy, const real *bias, ptrdiff_t O, ptrdiff_t L)
{
    // y is (O,L) with row stride ldy, bias is (O,)
    for (ptrdiff_t o = 0; o < O; o++) {
        real b = bias[o];
        real *yo = y + o * ldy;
        for (ptrdiff_t l = 0; l < L; l++) yo[l] += b;
    }
}

TIER_FN void FN(accumulate_row_sums)(real *acc, const real *dy, ptrdiff_t O, ptrdiff_t L)
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
