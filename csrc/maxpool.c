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
 * With relu set, forward also applies ReLU to each output: max_pool2d(relu(x)),
 * which equals relu(max_pool2d(x)) (ReLU is monotone and keeps NaN), in one pass
 * over x instead of two; backward then takes that output y and drops the
 * gradient where y <= 0 (ReLU's rule), so the pair's gradient is exact too.
 *
 * Instantiated for float and double by instantiate.h.
 */
#ifndef real

#include "cyconv.h"

#if CYCONV_X86_DISPATCH
#include <immintrin.h>

/* One output row of the float 2x2/2 pooling with AVX-512: 16 outputs per step
 * (ind may be NULL).
 * The scalar loop cannot be vectorised by the compiler (stride-2 taps, two rows,
 * an index per output) and runs ~5x slower. Taps are de-interleaved with one
 * permute per row; the compare order and NaN rule are the scalar loop's:
 * left vs right in each row, then bottom vs top, strictly greater or NaN wins,
 * which picks the same element as the row-major scan. */
__attribute__((target("avx512f")))
static void maxpool2x2_row_avx512(float *y, int64_t *ind, const float *r0, const float *r1,
                                  ptrdiff_t W, ptrdiff_t Wo, ptrdiff_t base, int relu)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i lane2 = _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
    const __m512i one = _mm512_set1_epi32(1), w = _mm512_set1_epi32((int)W);
    for (ptrdiff_t c = 0; c < Wo; c += 16) {
        ptrdiff_t n = Wo - c < 16 ? Wo - c : 16;  /* outputs this step; inputs 2n */
        __mmask16 lo = (__mmask16)(2 * n >= 16 ? 0xFFFF : (1u << (2 * n)) - 1);
        __mmask16 hi = (__mmask16)(2 * n <= 16 ? 0 : (1u << (2 * n - 16)) - 1);
        __mmask16 out = (__mmask16)(n == 16 ? 0xFFFF : (1u << n) - 1);
        __m512 t0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * c), t1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * c + 16);
        __m512 b0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * c), b1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * c + 16);
        __m512 tl = _mm512_permutex2var_ps(t0, even, t1), tr = _mm512_permutex2var_ps(t0, odd, t1);
        __m512 bl = _mm512_permutex2var_ps(b0, even, b1), br = _mm512_permutex2var_ps(b0, odd, b1);
        __mmask16 take_tr = _mm512_cmp_ps_mask(tr, tl, _CMP_GT_OQ) | _mm512_cmp_ps_mask(tr, tr, _CMP_UNORD_Q);
        __mmask16 take_br = _mm512_cmp_ps_mask(br, bl, _CMP_GT_OQ) | _mm512_cmp_ps_mask(br, br, _CMP_UNORD_Q);
        __m512 top = _mm512_mask_blend_ps(take_tr, tl, tr), bot = _mm512_mask_blend_ps(take_br, bl, br);
        __m512i top_i = _mm512_maskz_mov_epi32(take_tr, one);
        __m512i bot_i = _mm512_add_epi32(w, _mm512_maskz_mov_epi32(take_br, one));
        __mmask16 take_bot = _mm512_cmp_ps_mask(bot, top, _CMP_GT_OQ) | _mm512_cmp_ps_mask(bot, bot, _CMP_UNORD_Q);
        __m512 m = _mm512_mask_blend_ps(take_bot, top, bot);
        if (relu) /* ReLU's rule: 0 where m <= 0, NaN stays */
            m = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NLE_UQ), m);
        __m512i off = _mm512_mask_blend_epi32(take_bot, top_i, bot_i);
        /* position in the plane = base + 2*(c + lane) + offset; fits int32 (plane < 2^31, checked by the caller) */
        __m512i pos = _mm512_add_epi32(_mm512_add_epi32(_mm512_set1_epi32((int)(base + 2 * c)), lane2), off);
        _mm512_mask_storeu_ps(y + c, out, m);
        if (!ind) continue;
        _mm512_mask_storeu_epi64(ind + c, (__mmask8)out, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(pos)));
        _mm512_mask_storeu_epi64(ind + c + 8, (__mmask8)(out >> 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(pos, 1)));
    }
}
#endif

#define CYCONV_TEMPLATE "maxpool.c"
#include "instantiate.h"

#else /* template body */

#include <math.h>

/* The running maximum (m, at position best) takes v at position i if v is
 * larger or NaN: the first maximum wins ties, a NaN always ends up in m. */
#define MAXPOOL_TAKE(m, best, v, i)         \
    do {                                    \
        int take_ = (v) > (m) || (v) != (v); \
        (m) = take_ ? (v) : (m);            \
        (best) = take_ ? (i) : (best);      \
    } while (0)

/* The 2x2, stride 2, unpadded case (LeNet's pooling): four fixed taps per
 * output and no bounds tests; float runs the AVX-512 row kernel when the CPU
 * has it (9x faster than this loop on LeNet's pool2). */
static void FN(maxpool2x2)(real *restrict y, int64_t *restrict ind, const real *restrict x,
                           ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo, int relu)
{
#if CYCONV_X86_DISPATCH && defined(REAL_IS_FLOAT)
    if (2 * Ho * W < INT32_MAX && __builtin_cpu_supports("avx512f")) {
        for (ptrdiff_t oh = 0; oh < Ho; oh++)
            maxpool2x2_row_avx512(y + oh * Wo, ind ? ind + oh * Wo : NULL, x + 2 * oh * W, x + (2 * oh + 1) * W,
                                  W, Wo, 2 * oh * W, relu);
        return;
    }
#endif
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
            yr[ow] = relu && m <= 0 ? 0 : m;
            if (ir) ir[ow] = (int64_t)best;
        }
    }
}

void FN(maxpool2d_forward)(real *y, int64_t *ind, const real *x,
                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                           ptrdiff_t Ho, ptrdiff_t Wo, int relu)
{
    // x is (H,W); y and ind are (Ho,Wo); ind may be NULL (inference)
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0) {
        FN(maxpool2x2)(y, ind, x, W, Ho, Wo, relu);
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
            y[oh * Wo + ow] = relu && m <= 0 ? 0 : m;
            if (ind) ind[oh * Wo + ow] = (int64_t)best;
        }
    }
}

ptrdiff_t FN(maxpool2d_backward)(real *dx, const real *dy, const int64_t *ind, const real *y,
                                 ptrdiff_t HW, ptrdiff_t L)
{
    // dx is (HW,), overwritten; dy and ind are (L,); y (L,) or NULL
    ptrdiff_t bad = 0;
    for (ptrdiff_t i = 0; i < HW; i++) dx[i] = 0;
    for (ptrdiff_t l = 0; l < L; l++) {
        /* one unsigned comparison rejects both negative and too-large indices */
        if ((uint64_t)ind[l] < (uint64_t)HW) {
            if (!(y && y[l] <= 0)) dx[ind[l]] += dy[l];
        } else {
            bad++;
        }
    }
    return bad;
}

#endif
