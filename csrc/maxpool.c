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
 * Instantiated for float and double, and per ISA tier, by instantiate.h; the
 * float 2x2/2 case (LeNet's) has a row kernel per x86 tier.
 */
#ifndef real

#include "cyconv.h"

#include <string.h>

/* The generic tier's float row: the same four-tap compare as the scalar loop of
 * the template body, 4 outputs per step with GCC/clang vector extensions (a
 * compiler turns the scalar loop's selects into branches, which random data
 * mispredicts: 6x slower). */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
#if defined(__clang__) || __GNUC__ >= 12
#define EVENS4(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6)
#define ODDS4(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7)
#else
#define EVENS4(a, b) __builtin_shuffle(a, b, (v4i){0, 2, 4, 6})
#define ODDS4(a, b) __builtin_shuffle(a, b, (v4i){1, 3, 5, 7})
#endif

static inline v4f load4(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* mask ? a : b, lane by lane (mask lanes are -1 or 0) */
static inline v4f select4(v4i mask, v4f a, v4f b)
{
    return (v4f)(((v4i)a & mask) | ((v4i)b & ~mask));
}

static void maxpool2x2_row_generic(float *y, int64_t *ind, const float *r0, const float *r1, ptrdiff_t W,
                                   ptrdiff_t Wo, ptrdiff_t base, int relu)
{
    const v4i one = {1, 1, 1, 1}, w = {(int32_t)W, (int32_t)W, (int32_t)W, (int32_t)W};
    const v4f zero = {0, 0, 0, 0};
    for (ptrdiff_t c = 0; c < Wo; c += 4) {
        if (c + 4 > Wo) { /* the last 1-3 outputs: overlap the step before, or one at a time */
            if (Wo < 4) {
                for (; c < Wo; c++) {
                    const float *t = r0 + 2 * c, *b = r1 + 2 * c;
                    float m = t[0];
                    ptrdiff_t off = 0;
                    if ((t[1] > m) | (t[1] != t[1])) m = t[1], off = 1;
                    float bm = b[0];
                    ptrdiff_t boff = W;
                    if ((b[1] > bm) | (b[1] != b[1])) bm = b[1], boff = W + 1;
                    if ((bm > m) | (bm != bm)) m = bm, off = boff;
                    y[c] = relu && m <= 0 ? 0 : m;
                    if (ind) ind[c] = (int64_t)(base + 2 * c + off);
                }
                return;
            }
            c = Wo - 4;
        }
        v4f t0 = load4(r0 + 2 * c), t1 = load4(r0 + 2 * c + 4), b0 = load4(r1 + 2 * c), b1 = load4(r1 + 2 * c + 4);
        v4f tl = EVENS4(t0, t1), tr = ODDS4(t0, t1), bl = EVENS4(b0, b1), br = ODDS4(b0, b1);
        v4i take_tr = (tr > tl) | (tr != tr), take_br = (br > bl) | (br != br);
        v4f top = select4(take_tr, tr, tl), bot = select4(take_br, br, bl);
        v4i take_bot = (bot > top) | (bot != bot);
        v4f m = select4(take_bot, bot, top);
        if (relu) /* ReLU's rule: 0 where m <= 0, NaN stays */
            m = select4(~(m <= zero), m, zero);
        memcpy(y + c, &m, sizeof m);
        if (!ind) continue;
        v4i off = (take_bot & (w + (take_br & one))) | (~take_bot & take_tr & one);
        for (int l = 0; l < 4; l++) ind[c + l] = (int64_t)(base + 2 * (c + l) + off[l]);
    }
}

#if CYCONV_X86
#include <immintrin.h>

/* One output row of the float 2x2/2 pooling with AVX-512: 16 outputs per step
 * (ind may be NULL). The scalar loop cannot be vectorised by the compiler (stride-2 taps, two rows,
 * an index per output) and runs ~5x slower. Taps are de-interleaved with one
 * permute per row; the compare order and NaN rule are the scalar loop's:
 * left vs right in each row, then bottom vs top, strictly greater or NaN wins,
 * which picks the same element as the row-major scan. */
CYCONV_TARGET_AVX512 static void maxpool2x2_row_avx512(float *y, int64_t *ind, const float *r0, const float *r1,
                                                       ptrdiff_t W, ptrdiff_t Wo, ptrdiff_t base, int relu,
                                                       ptrdiff_t room)
{
    (void)room; /* masked stores cost nothing extra here */
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
/* The same row with AVX2: 8 outputs per step, from two 8-float loads per input
 * row de-interleaved by a shuffle and a lane permute. A row of at least 8
 * outputs ends with a step that overlaps the one before (the same values
 * written twice); a shorter row is one step with masked loads, and whole
 * stores if `room` (the outputs writable from y on: this and the later rows
 * of the plane, written after it) has 8, masked stores (slow on AMD) if not. */
CYCONV_TARGET_AVX2 static void maxpool2x2_row_avx2(float *y, int64_t *ind, const float *r0, const float *r1,
                                                   ptrdiff_t W, ptrdiff_t Wo, ptrdiff_t base, int relu,
                                                   ptrdiff_t room)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i lane2 = _mm256_slli_epi32(lane, 1), one = _mm256_set1_epi32(1), w = _mm256_set1_epi32((int)W);
    for (ptrdiff_t s = 0; s < Wo; s += 8) {
        ptrdiff_t c = Wo < 8 ? 0 : s + 8 <= Wo ? s : Wo - 8;
        ptrdiff_t n = Wo < 8 ? Wo : 8;  /* outputs this step; inputs 2n */
        __m256 t0, t1, b0, b1;
        if (n == 8) {
            t0 = _mm256_loadu_ps(r0 + 2 * c), t1 = _mm256_loadu_ps(r0 + 2 * c + 8);
            b0 = _mm256_loadu_ps(r1 + 2 * c), b1 = _mm256_loadu_ps(r1 + 2 * c + 8);
        } else {
            __m256i in_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(2 * n)), lane);
            __m256i in_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(2 * n - 8)), lane);
            t0 = _mm256_maskload_ps(r0, in_lo), t1 = _mm256_maskload_ps(r0 + 8, in_hi);
            b0 = _mm256_maskload_ps(r1, in_lo), b1 = _mm256_maskload_ps(r1 + 8, in_hi);
        }
        /* shuffle_ps interleaves the two loads per 128-bit half; permute4x64
         * (0, 2, 1, 3) puts the halves back in order: even and odd taps */
        __m256 tl = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(t0, t1, 0x88)), 0xD8));
        __m256 tr = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(t0, t1, 0xDD)), 0xD8));
        __m256 bl = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(b0, b1, 0x88)), 0xD8));
        __m256 br = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(b0, b1, 0xDD)), 0xD8));
        __m256 take_tr = _mm256_or_ps(_mm256_cmp_ps(tr, tl, _CMP_GT_OQ), _mm256_cmp_ps(tr, tr, _CMP_UNORD_Q));
        __m256 take_br = _mm256_or_ps(_mm256_cmp_ps(br, bl, _CMP_GT_OQ), _mm256_cmp_ps(br, br, _CMP_UNORD_Q));
        __m256 top = _mm256_blendv_ps(tl, tr, take_tr), bot = _mm256_blendv_ps(bl, br, take_br);
        __m256 take_bot = _mm256_or_ps(_mm256_cmp_ps(bot, top, _CMP_GT_OQ), _mm256_cmp_ps(bot, bot, _CMP_UNORD_Q));
        __m256 m = _mm256_blendv_ps(top, bot, take_bot);
        if (relu) /* ReLU's rule: 0 where m <= 0, NaN stays */
            m = _mm256_and_ps(m, _mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_NLE_UQ));
        __m256i top_i = _mm256_and_si256(_mm256_castps_si256(take_tr), one);
        __m256i bot_i = _mm256_add_epi32(w, _mm256_and_si256(_mm256_castps_si256(take_br), one));
        __m256i off = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(top_i), _mm256_castsi256_ps(bot_i), take_bot));
        /* position in the plane = base + 2*(c + lane) + offset; fits int32 (plane < 2^31, checked by the caller) */
        __m256i pos = _mm256_add_epi32(_mm256_add_epi32(_mm256_set1_epi32((int)(base + 2 * c)), lane2), off);
        __m256i pos_lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(pos));
        __m256i pos_hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(pos, 1));
        if (n == 8 || room >= 8) {
            _mm256_storeu_ps(y + c, m);
            if (!ind) continue;
            _mm256_storeu_si256((__m256i *)(ind + c), pos_lo);
            _mm256_storeu_si256((__m256i *)(ind + c + 4), pos_hi);
        } else {
            __m256i out = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane);
            _mm256_maskstore_ps(y + c, out, m);
            if (!ind) continue;
            /* the int64 mask of index i is lane i of `out`, sign-extended */
            _mm256_maskstore_epi64((long long *)(ind + c), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(out)), pos_lo);
            _mm256_maskstore_epi64((long long *)(ind + c + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(out, 1)), pos_hi);
        }
    }
}
#endif

#define CYCONV_TEMPLATE "maxpool.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(maxpool2d_forward)(real *y, int64_t *ind, const real *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                           ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                           ptrdiff_t Ho, ptrdiff_t Wo, int relu)
{
    TIERED(maxpool2d_forward)(y, ind, x, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, relu);
}

ptrdiff_t FN(maxpool2d_backward)(real *dx, const real *dy, const int64_t *ind, const real *y,
                                 ptrdiff_t HW, ptrdiff_t L)
{
    return TIERED(maxpool2d_backward)(dx, dy, ind, y, HW, L);
}

#else /* template body, per tier */

#include <math.h>

#ifndef MAXPOOL_TAKE
/* The running maximum (m, at position best) takes v at position i if v is
 * larger or NaN: the first maximum wins ties, a NaN always ends up in m.
 * Bitwise |, not ||: no branch, which random data would mispredict (6x slower). */
#define MAXPOOL_TAKE(m, best, v, i)             \
    do {                                        \
        int take_ = ((v) > (m)) | ((v) != (v)); \
        (m) = take_ ? (v) : (m);                \
        (best) = take_ ? (i) : (best);          \
    } while (0)
#endif

/* The 2x2, stride 2, unpadded case (LeNet's pooling): four fixed taps per
 * output and no bounds tests; float runs the tier's row kernel (5-9x faster
 * than this loop on LeNet's pooling). */
TIER_FN void FN(maxpool2x2)(real *restrict y, int64_t *restrict ind, const real *restrict x,
                            ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo, int relu)
{
#if defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_GENERIC
    if (2 * Ho * W < INT32_MAX) {
        for (ptrdiff_t oh = 0; oh < Ho; oh++)
            maxpool2x2_row_generic(y + oh * Wo, ind ? ind + oh * Wo : NULL, x + 2 * oh * W, x + (2 * oh + 1) * W,
                                   W, Wo, 2 * oh * W, relu);
        return;
    }
#elif defined(REAL_IS_FLOAT)
#define MAXPOOL2X2_ROW CYCONV_CAT(maxpool2x2_row, TIER_SUFFIX)
    if (2 * Ho * W < INT32_MAX) {
        for (ptrdiff_t oh = 0; oh < Ho; oh++)
            MAXPOOL2X2_ROW(y + oh * Wo, ind ? ind + oh * Wo : NULL, x + 2 * oh * W, x + (2 * oh + 1) * W, W, Wo,
                           2 * oh * W, relu, (Ho - oh) * Wo);
        return;
    }
#undef MAXPOOL2X2_ROW
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

/* Inference (no indices wanted), any window: the window's maximum does not depend on the order its
 * taps are visited in (but for which of +0 / -0, or of two NaNs, comes out), so each output row is
 * taken in two passes without a bounds test or an index: the tap-wise maximum of the window's input
 * rows (contiguous: the compiler vectorises it for the tier), written into a row padded with -inf,
 * then the maximum of each window's kw taps of that row. The row-major scan below costs a branch and
 * an index per tap: 9.8 ms against 0.7 ms for ResNet's 3x3 stride-2 stem pooling (64 planes of
 * 112x112, avx512, 1 thread). ROW_MAX bounds the padded row kept on the stack; wider planes scan. */
#define ROW_MAX 2048
TIER_FN void FN(maxpool_values)(real *restrict y, const real *restrict x, ptrdiff_t H, ptrdiff_t W,
                                ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                                ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo, int relu)
{
    // x is (H,W), y (Ho,Wo); W + 2*pw <= ROW_MAX (the caller checks)
    real row[ROW_MAX];
    real *inner = row + pw;
    for (ptrdiff_t j = 0; j < pw; j++) row[j] = inner[W + j] = -INFINITY;
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        ptrdiff_t h0 = oh * sh - ph, h1 = h0 + kh;
        if (h0 < 0) h0 = 0;
        if (h1 > H) h1 = H;
        /* padding <= kernel/2 (checked in Python) leaves every window at least one row */
        memcpy(inner, x + h0 * W, (size_t)W * sizeof(real));
        for (ptrdiff_t h = h0 + 1; h < h1; h++) {
            const real *xr = x + h * W;
            for (ptrdiff_t w = 0; w < W; w++) {
                real v = xr[w];
                inner[w] = ((v > inner[w]) | (v != v)) ? v : inner[w];
            }
        }
        /* tap by tap across the row, so each pass over the outputs vectorises (strided loads) */
        real *yr = y + oh * Wo;
        for (ptrdiff_t ow = 0; ow < Wo; ow++) yr[ow] = row[ow * sw];
        for (ptrdiff_t j = 1; j < kw; j++)
            for (ptrdiff_t ow = 0; ow < Wo; ow++) {
                real v = row[ow * sw + j];
                yr[ow] = ((v > yr[ow]) | (v != v)) ? v : yr[ow];
            }
        if (relu) /* ReLU's rule: 0 where m <= 0, NaN stays */
            for (ptrdiff_t ow = 0; ow < Wo; ow++) yr[ow] = yr[ow] <= 0 ? 0 : yr[ow];
    }
}

TIER_FN void FN(maxpool2d_forward)(real *y, int64_t *ind, const real *x,
                                   ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                                   ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                                   ptrdiff_t Ho, ptrdiff_t Wo, int relu)
{
    // x is (H,W); y and ind are (Ho,Wo); ind may be NULL (inference)
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0) {
        FN(maxpool2x2)(y, ind, x, W, Ho, Wo, relu);
        return;
    }
    if (!ind && W + 2 * pw <= ROW_MAX) {
        FN(maxpool_values)(y, x, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, relu);
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

TIER_FN ptrdiff_t FN(maxpool2d_backward)(real *dx, const real *dy, const int64_t *ind, const real *y,
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
