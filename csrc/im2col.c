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
 * once for a generic `real` and compiled per type and ISA tier by instantiate.h;
 * for float, each x86 tier has row kernels for the common unit-stride case:
 * one (masked) vector load and store per row segment instead of thousands of
 * short memcpy calls (4-5x faster on LeNet's conv2).
 *
 * Masked-off lanes are never read, so a masked load may start left of a row or
 * end past it; its address is computed in integers (offset_ptr), since such a
 * pointer would be undefined in C.
 */
#ifndef real

#include <string.h>

#include "cyconv.h"

#if CYCONV_X86
#include <immintrin.h>

static inline const float *offset_ptr(const float *p, ptrdiff_t n)
{
    return (const float *)((uintptr_t)p + (uintptr_t)(n * (ptrdiff_t)sizeof(float)));
}

/* ---- AVX-512: 16 lanes, masked loads and stores ---- */

/* Lanes [lo, hi) of a 16-lane vector, clipped to [0, 16). */
static inline __mmask16 lanes16(ptrdiff_t lo, ptrdiff_t hi)
{
    if (lo < 0) lo = 0;
    if (hi > 16) hi = 16;
    if (hi <= lo) return 0;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* im2col, stride 1 along the width: each output row segment (up to 16 pixels)
 * is one masked load and one masked store, the mask supplying the padding zeros. */
CYCONV_TARGET_AVX512 static void im2col_w1_avx512(float *cols, ptrdiff_t col_ld, const float *img,
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
                    for (ptrdiff_t ow = 0; ow < Wo; ow += 16) {
                        __mmask16 store = lanes16(0, Wo - ow);
                        __mmask16 load = inside ? store & lanes16(-shift - ow, W - shift - ow) : 0;
                        __m512 v = _mm512_maskz_loadu_ps(load, offset_ptr(src, ow + shift));
                        _mm512_mask_storeu_ps(row + oh * Wo + ow, store, v);
                    }
                }
            }
        }
    }
}

/* col2im, stride 1, written as a gather: each input row segment sums its
 * kh*kw contributions in a register and is stored once (the scatter form
 * re-reads and re-writes every pixel kh*kw times). */
CYCONV_TARGET_AVX512 static void col2im_s1_avx512(float *img, const float *cols, ptrdiff_t col_ld,
                                                  ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                                  ptrdiff_t kw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                                                  ptrdiff_t Wo)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        for (ptrdiff_t ih = 0; ih < H; ih++) {
            for (ptrdiff_t iw = 0; iw < W; iw += 16) {
                __m512 acc = _mm512_setzero_ps();
                for (ptrdiff_t ki = 0; ki < kh; ki++) {
                    ptrdiff_t oh = ih + ph - ki;
                    if (oh < 0 || oh >= Ho) continue;
                    for (ptrdiff_t kj = 0; kj < kw; kj++) {
                        const float *row = cols + ((c * kh + ki) * kw + kj) * col_ld + oh * Wo;
                        ptrdiff_t shift = pw - kj; /* output column of input column iw is iw + shift */
                        __mmask16 m = lanes16(0, W - iw) & lanes16(-shift - iw, Wo - shift - iw);
                        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, offset_ptr(row, iw + shift)));
                    }
                }
                _mm512_mask_storeu_ps(img + (c * H + ih) * W + iw, lanes16(0, W - iw), acc);
            }
        }
    }
}

/* im2row for kernels up to 16 wide: each (output pixel, channel, kernel row)
 * is one masked load and store of kw floats. */
CYCONV_TARGET_AVX512 static void im2row_avx512(float *rows, const float *img, ptrdiff_t C, ptrdiff_t H,
                                               ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                               ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                                               ptrdiff_t Wo)
{
    ptrdiff_t K = C * kh * kw;
    __mmask16 store = lanes16(0, kw);
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            float *row = rows + (oh * Wo + ow) * K;
            ptrdiff_t iw0 = ow * sw - pw;
            __mmask16 load = store & lanes16(-iw0, W - iw0);
            for (ptrdiff_t ki = 0; ki < kh; ki++) {
                ptrdiff_t ih = oh * sh - ph + ki;
                int inside = ih >= 0 && ih < H;
                for (ptrdiff_t c = 0; c < C; c++) {
                    const float *src = img + (c * H + (inside ? ih : 0)) * W;
                    __m512 v = _mm512_maskz_loadu_ps(inside ? load : 0, offset_ptr(src, iw0));
                    _mm512_mask_storeu_ps(row + (c * kh + ki) * kw, store, v);
                }
            }
        }
    }
}

/* ---- AVX2: 8 lanes. Masked loads are cheap, masked stores are not (microcoded
 * on AMD), so rows are stored whole: a row's last vector overlaps the one before
 * it (the same values written twice), and a store that runs past a segment is
 * overwritten by the next segment's (stores go in address order). ---- */

/* The maskload mask of lanes [lo, hi) of an 8-lane vector. */
CYCONV_TARGET_AVX2 static inline __m256i lanes8(ptrdiff_t lo, ptrdiff_t hi)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    lo = lo < 0 ? 0 : lo > 8 ? 8 : lo;
    hi = hi < 0 ? 0 : hi > 8 ? 8 : hi;
    return _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)lo - 1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), lane));
}

/* The start of the step-of-8 vector s of a row of n >= 8: the last one is
 * moved left to end at n, overlapping its neighbour, so no store is partial. */
static inline ptrdiff_t step8(ptrdiff_t s, ptrdiff_t n)
{
    return s + 8 <= n ? s : n - 8;
}

/* im2col, stride 1 along the width, output rows of at least 8 pixels. */
CYCONV_TARGET_AVX2 static void im2col_w1_avx2(float *cols, ptrdiff_t col_ld, const float *img,
                                              ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                              ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t ph, ptrdiff_t pw,
                                              ptrdiff_t Ho, ptrdiff_t Wo)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        for (ptrdiff_t ki = 0; ki < kh; ki++) {
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                float *row = cols + ((c * kh + ki) * kw + kj) * col_ld;
                ptrdiff_t shift = kj - pw;
                for (ptrdiff_t oh = 0; oh < Ho; oh++) {
                    ptrdiff_t ih = oh * sh - ph + ki;
                    int inside = ih >= 0 && ih < H;
                    const float *src = img + (c * H + (inside ? ih : 0)) * W;
                    for (ptrdiff_t s = 0; s < Wo; s += 8) {
                        ptrdiff_t ow = step8(s, Wo);
                        __m256 v = _mm256_setzero_ps();
                        if (inside) v = _mm256_maskload_ps(offset_ptr(src, ow + shift), lanes8(-shift - ow, W - shift - ow));
                        _mm256_storeu_ps(row + oh * Wo + ow, v);
                    }
                }
            }
        }
    }
}

/* col2im, stride 1, input rows of at least 8 pixels: the gather form of col2im_s1_avx512. */
CYCONV_TARGET_AVX2 static void col2im_s1_avx2(float *img, const float *cols, ptrdiff_t col_ld,
                                              ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                              ptrdiff_t kw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                                              ptrdiff_t Wo)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        for (ptrdiff_t ih = 0; ih < H; ih++) {
            for (ptrdiff_t s = 0; s < W; s += 8) {
                ptrdiff_t iw = step8(s, W);
                __m256 acc = _mm256_setzero_ps();
                for (ptrdiff_t ki = 0; ki < kh; ki++) {
                    ptrdiff_t oh = ih + ph - ki;
                    if (oh < 0 || oh >= Ho) continue;
                    for (ptrdiff_t kj = 0; kj < kw; kj++) {
                        const float *row = cols + ((c * kh + ki) * kw + kj) * col_ld + oh * Wo;
                        ptrdiff_t shift = pw - kj;
                        __m256 v = _mm256_maskload_ps(offset_ptr(row, iw + shift), lanes8(-shift - iw, Wo - shift - iw));
                        acc = _mm256_add_ps(acc, v);
                    }
                }
                _mm256_storeu_ps(img + (c * H + ih) * W + iw, acc);
            }
        }
    }
}

/* im2row for kernels up to 8 wide: one masked load of kw floats per (output
 * pixel, channel, kernel row), stored as a whole vector whose tail the next
 * segment overwrites; only stores that would pass the end of `rows` are masked. */
CYCONV_TARGET_AVX2 static void im2row_avx2(float *rows, const float *img, ptrdiff_t C, ptrdiff_t H,
                                           ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                           ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                                           ptrdiff_t Wo)
{
    ptrdiff_t K = C * kh * kw;
    const float *end = rows + Ho * Wo * K;
    __m256i store = lanes8(0, kw);
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            float *dst = rows + (oh * Wo + ow) * K;
            ptrdiff_t iw0 = ow * sw - pw;
            __m256i load = _mm256_and_si256(store, lanes8(-iw0, W - iw0));
            for (ptrdiff_t c = 0; c < C; c++) {
                for (ptrdiff_t ki = 0; ki < kh; ki++, dst += kw) {
                    ptrdiff_t ih = oh * sh - ph + ki;
                    __m256 v = _mm256_setzero_ps();
                    if (ih >= 0 && ih < H) v = _mm256_maskload_ps(offset_ptr(img + (c * H + ih) * W, iw0), load);
                    if (end - dst >= 8) /* not dst + 8 <= end: that pointer may lie past the buffer */
                        _mm256_storeu_ps(dst, v);
                    else
                        _mm256_maskstore_ps(dst, store, v);
                }
            }
        }
    }
}
#endif /* CYCONV_X86 */

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

TIER_FN void FN(im2col)(real *cols, ptrdiff_t col_ld, const real *img, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                        ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // img is (C,H,W); cols is (C*kh*kw, Ho*Wo) with row stride col_ld
#if defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX512
    if (sw == 1) {
        im2col_w1_avx512(cols, col_ld, img, C, H, W, kh, kw, sh, ph, pw, Ho, Wo);
        return;
    }
#elif defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX2
    if (sw == 1 && Wo >= 8) {
        im2col_w1_avx2(cols, col_ld, img, C, H, W, kh, kw, sh, ph, pw, Ho, Wo);
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
#if defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX512
    if (sh == 1 && sw == 1) {
        col2im_s1_avx512(img, cols, col_ld, C, H, W, kh, kw, ph, pw, Ho, Wo);
        return;
    }
#elif defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX2
    if (sh == 1 && sw == 1 && W >= 8) {
        col2im_s1_avx2(img, cols, col_ld, C, H, W, kh, kw, ph, pw, Ho, Wo);
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
#if TIER == CYCONV_ISA_AVX512
    if (kw <= 16) {
        im2row_avx512(rows, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);
        return;
    }
#elif TIER == CYCONV_ISA_AVX2
    if (kw <= 8) {
        im2row_avx2(rows, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);
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
