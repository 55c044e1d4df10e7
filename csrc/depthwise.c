/*
 * Depthwise convolution on one (H,W) plane: forward, input gradient and
 * weight (+ bias) gradient, with stride, zero padding and dilation.
 *
 * A depthwise layer (groups == in_channels, MobileNet's 3x3) has one kh x kw
 * filter per plane: im2col would copy each input pixel kh*kw times for a GEMM
 * of one row, so it is computed directly instead. The kernel is memory- and
 * load-bound, not FMA-bound: what matters is touching each output once and
 * keeping the per-plane overhead small (MobileNetV2's last layers are 960
 * planes of 7x7).
 *
 * How (XNNPACK's dwconv2d-chw, in its simplest form): the input rows a block of
 * outputs needs are copied once into a small row cache on the stack, zero-padded
 * and split into `stride` phases (phase f holds padded columns f, f + s, ...), so
 * every tap (ki, kj) of an output row is one contiguous, in-bounds vector of the
 * cache whatever the stride, padding or dilation. One small micro-kernel per ISA
 * tier then computes a row of outputs from its taps' pointers:
 *
 *     dw_row   y[i] = b + sum_t w[t] * p[t][i]   (or y[i] += ..., for the input gradient)
 *     dw_dot   acc[t] += sum_i dy[i] * p[t][i]    (the weight gradient, in the tier's lanes; every
 *                                                 few rows the lanes are summed into double)
 *
 *     generic  2 vectors of 16 bytes (GCC/clang vector extensions; also every tier's double)
 *     avx2     8 floats, masked store at the row's end (dw_dot: FMA)
 *     avx512   16 floats, masked store at the row's end (dw_dot: FMA)
 *
 * The loops around them (the row cache, the taps of each row) are written once. A plane small
 * enough (up to 28x28 for 3x3; MobileNetV2's 14x14 and 7x7 layers) is instead copied whole, padded
 * and split into phase planes, so that one dw_row over the flattened plane computes every output
 * of the forward at once (dw_plane_forward): the row cache's per-row setup cost more than the
 * arithmetic of a 7- or 14-wide row.
 * The input gradient is the transposed convolution: per input row and column
 * phase r (iw = q*sw + r), the taps that reach it read the cached output-gradient
 * row at q + a fixed shift, so it is dw_row again. Each output element sums its
 * taps in the plain loops' order starting from the bias (or the value it is added
 * into), without FMA: the forward and (one output plane per input plane) the
 * input gradient are the plain loops' bits on every tier, for any thread count.
 *
 * Output (oh, ow), tap (ki, kj) reads x[oh*sh - ph + ki*dh, ow*sw - pw + kj*dw].
 * The Cython layer owns the loops over planes and images (and their order, so
 * the weight gradient does not depend on the thread count). Planes too wide for
 * the row cache (and kernels of more than DW_MAX_TAPS taps) take the plain loops
 * (*_loops), which also state what the fast path computes.
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include <string.h>

#include "cyconv.h"

#if CYCONV_X86
#include <immintrin.h>
#endif

/* The fast path's limits: taps per filter, and elements of row cache (plus scratch) on the stack. */
#define DW_MAX_TAPS 25
#define DW_CACHE 6144
/* Every row the micro-kernels read is readable (and finite) up to this many elements past its end. */
#define DW_SLACK 32

/* 3x3: the nine taps' sums in registers (named: GCC spills an array of vectors), dy loaded once:
 * dw_dot's 3x3 case on the x86 tiers */
#define DW_TAPS9(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)
#define DW512_LOAD(t) __m512 s##t = _mm512_loadu_ps(lanes + 16 * t); const float *p##t = p[t];
#define DW512_FMA(t) s##t = _mm512_fmadd_ps(d, _mm512_loadu_ps(p##t + i), s##t);
#define DW512_STORE(t) _mm512_storeu_ps(lanes + 16 * t, s##t);

#define DW256_LOAD(t) __m256 s##t = _mm256_loadu_ps(lanes + 16 * t); const float *p##t = p[t];
#define DW256_FMA(t) s##t = _mm256_fmadd_ps(d, _mm256_loadu_ps(p##t + i), s##t);
#define DW256_STORE(t) _mm256_storeu_ps(lanes + 16 * t, s##t);

static inline ptrdiff_t dw_round_up(ptrdiff_t n, ptrdiff_t m) { return (n + m - 1) / m * m; }

/* n / s for n >= 0, without a division at strides 1 and 2 (a division costs as much as a 7x7
 * plane's row) */
static inline ptrdiff_t dw_div(ptrdiff_t n, ptrdiff_t s) { return s == 1 ? n : s == 2 ? n >> 1 : n / s; }

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

/* ---- the plain loops: the statement of what the fast path computes, and its fallback ---- */

TIER_FN void FN(depthwise_conv2d_forward_loops)(real *restrict y, const real *restrict x, const real *restrict w,
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

TIER_FN void FN(depthwise_conv2d_backward_input_loops)(real *restrict dx, const real *restrict dy,
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

TIER_FN void FN(depthwise_conv2d_backward_weight_loops)(real *restrict dweight, real *dbias, const real *restrict dy,
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

/* ---- the micro-kernels, one per tier ----
 * dw_row: y[i] = (add ? y[i] : b) + w[0]*p[0][i] + w[1]*p[1][i] + ... (in that order), i < n,
 *         each product rounded before it is added (no FMA): the plain loops' bits, which a
 *         training run's BatchNorm over tiny maps turns into visible differences otherwise.
 * dw_dot: lanes[16*t + l] += the products dy[i] * p[t][i] of lane l (i < n, the tier's lanes; the
 *         caller sums the 16 lanes of each tap into double every few rows: dw_flush).
 * Both read p[t] (and dy) up to the next multiple of 16 past n; the callers' rows have that
 * slack, zero-filled. A compile-time ntaps (9: every 3x3 layer) unrolls the taps with the
 * weights in registers: the _body functions are always inlined with it. */

typedef real FN(dwvec) __attribute__((vector_size(16)));
#define DWG_HALF ((ptrdiff_t)(16 / sizeof(real))) /* lanes of one generic vector */

/* dst[i] = src[i], i < n, for short rows: 16-byte moves the compiler inlines (a call to libc's
 * memcpy costs as much as copying a 7-wide row) */
TIER_FN inline void FN(dw_copy)(real *restrict dst, const real *restrict src, ptrdiff_t n)
{
    /* the empty asm hides i's progression from the compiler, which would otherwise turn each loop
     * back into that call */
    if (n < DWG_HALF) {
        for (ptrdiff_t i = 0; i < n; i++) {
            __asm__("" : "+r"(i));
            dst[i] = src[i];
        }
        return;
    }
    for (ptrdiff_t i = 0; i < n - DWG_HALF; i += DWG_HALF) {
        __asm__("" : "+r"(i));
        memcpy(dst + i, src + i, 16);
    }
    memcpy(dst + n - DWG_HALF, src + n - DWG_HALF, 16); /* the last 16 bytes, overlapping the loop's */
}

TIER_FN inline __attribute__((always_inline)) void
FN(dw_row_generic_body)(real *restrict y, const real *const *p, const real *w, ptrdiff_t ntaps, real b,
                        ptrdiff_t n, int add)
{
    for (ptrdiff_t i = 0; i < n; i += 2 * DWG_HALF) {
        real out[2 * DWG_HALF];
        ptrdiff_t m = n - i < 2 * DWG_HALF ? n - i : 2 * DWG_HALF;
        FN(dwvec) a0, a1, x0, x1;
        for (ptrdiff_t l = 0; l < 2 * DWG_HALF; l++) out[l] = add && l < m ? y[i + l] : b;
        memcpy(&a0, out, sizeof a0);
        memcpy(&a1, out + DWG_HALF, sizeof a1);
        for (ptrdiff_t t = 0; t < ntaps; t++) {
            memcpy(&x0, p[t] + i, sizeof x0);
            memcpy(&x1, p[t] + i + DWG_HALF, sizeof x1);
            a0 += w[t] * x0;
            a1 += w[t] * x1;
        }
        memcpy(out, &a0, sizeof a0);
        memcpy(out + DWG_HALF, &a1, sizeof a1);
        memcpy(y + i, out, (size_t)m * sizeof(real));
    }
}

#if defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX512

TIER_FN inline __attribute__((always_inline)) void
FN(dw_row_tier_body)(float *restrict y, const float *const *p, const float *w, ptrdiff_t ntaps, float b,
                     ptrdiff_t n, int add)
{
    for (ptrdiff_t i = 0; i < n; i += 16) {
        __mmask16 m = (__mmask16)(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
        __m512 a = add ? _mm512_maskz_loadu_ps(m, y + i) : _mm512_set1_ps(b);
        for (ptrdiff_t t = 0; t < ntaps; t++)
            a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(w[t]), _mm512_loadu_ps(p[t] + i)));
        _mm512_mask_storeu_ps(y + i, m, a);
    }
}

TIER_FN void FN(dw_dot)(float *lanes, const float *dy, const float *const *p, ptrdiff_t ntaps, ptrdiff_t n)
{
    if (ntaps == 9) {
        DW_TAPS9(DW512_LOAD)
        for (ptrdiff_t i = 0; i < n; i += 16) {
            __m512 d = _mm512_loadu_ps(dy + i);
            DW_TAPS9(DW512_FMA)
        }
        DW_TAPS9(DW512_STORE)
        return;
    }
    for (ptrdiff_t t = 0; t < ntaps; t++) {
        __m512 s = _mm512_loadu_ps(lanes + 16 * t);
        for (ptrdiff_t i = 0; i < n; i += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(p[t] + i), s);
        _mm512_storeu_ps(lanes + 16 * t, s);
    }
}

#elif defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX2

TIER_FN inline __attribute__((always_inline)) void
FN(dw_row_tier_body)(float *restrict y, const float *const *p, const float *w, ptrdiff_t ntaps, float b,
                     ptrdiff_t n, int add)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (ptrdiff_t i = 0; i < n; i += 8) {
        int full = n - i >= 8;
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(full ? 8 : (int)(n - i)), lane);
        __m256 a = !add ? _mm256_set1_ps(b) : full ? _mm256_loadu_ps(y + i) : _mm256_maskload_ps(y + i, m);
        for (ptrdiff_t t = 0; t < ntaps; t++)
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(w[t]), _mm256_loadu_ps(p[t] + i)));
        if (full)
            _mm256_storeu_ps(y + i, a);
        else
            _mm256_maskstore_ps(y + i, m, a);
    }
}

TIER_FN void FN(dw_dot)(float *lanes, const float *dy, const float *const *p, ptrdiff_t ntaps, ptrdiff_t n)
{
    if (ntaps == 9) {
        DW_TAPS9(DW256_LOAD)
        for (ptrdiff_t i = 0; i < n; i += 8) {
            __m256 d = _mm256_loadu_ps(dy + i);
            DW_TAPS9(DW256_FMA)
        }
        DW_TAPS9(DW256_STORE)
        return;
    }
    for (ptrdiff_t t = 0; t < ntaps; t++) {
        __m256 s = _mm256_loadu_ps(lanes + 16 * t);
        for (ptrdiff_t i = 0; i < n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(p[t] + i), s);
        _mm256_storeu_ps(lanes + 16 * t, s);
    }
}

#else /* generic tier, and double on every tier */

TIER_FN void FN(dw_dot)(real *lanes, const real *dy, const real *const *p, ptrdiff_t ntaps, ptrdiff_t n)
{
    for (ptrdiff_t t = 0; t < ntaps; t++) {
        FN(dwvec) s0, s1, d0, d1, x0, x1;
        memcpy(&s0, lanes + 16 * t, sizeof s0);
        memcpy(&s1, lanes + 16 * t + DWG_HALF, sizeof s1);
        for (ptrdiff_t i = 0; i < n; i += 2 * DWG_HALF) {
            memcpy(&d0, dy + i, sizeof d0);
            memcpy(&d1, dy + i + DWG_HALF, sizeof d1);
            memcpy(&x0, p[t] + i, sizeof x0);
            memcpy(&x1, p[t] + i + DWG_HALF, sizeof x1);
            s0 += d0 * x0;
            s1 += d1 * x1;
        }
        memcpy(lanes + 16 * t, &s0, sizeof s0);
        memcpy(lanes + 16 * t + DWG_HALF, &s1, sizeof s1);
    }
}

#endif

TIER_FN void FN(dw_row)(real *restrict y, const real *const *p, const real *w, ptrdiff_t ntaps, real b,
                               ptrdiff_t n, int add)
{
#if defined(REAL_IS_FLOAT) && (TIER == CYCONV_ISA_AVX512 || TIER == CYCONV_ISA_AVX2)
    if (ntaps == 9)
        FN(dw_row_tier_body)(y, p, w, 9, b, n, add);
    else
        FN(dw_row_tier_body)(y, p, w, ntaps, b, n, add);
#else
    if (ntaps == 9)
        FN(dw_row_generic_body)(y, p, w, 9, b, n, add);
    else
        FN(dw_row_generic_body)(y, p, w, ntaps, b, n, add);
#endif
}

/* ---- the shared part: the row cache and the taps of each row ---- */

/* acc[t] += the 16 lanes of tap t (in a fixed order: the same for every tier), which are zeroed */
TIER_FN void FN(dw_flush)(double *acc, real *lanes, ptrdiff_t ntaps)
{
    for (ptrdiff_t t = 0; t < ntaps; t++) {
        real *l = lanes + 16 * t;
        double s = 0;
        for (int k = 0; k < 16; k++) s += (double)l[k];
        acc[t] += s;
        memset(l, 0, 16 * sizeof(real));
    }
}

/* A plane's rows, zero-padded by `pad` on the left and split into `phases` phases of plen
 * elements (element f*pstride + q is padded column q*phases + f, zero outside the row; pstride
 * is plen here, the phase plane's size in dw_plane below), in
 * `mask + 1` slots (a power of two at least the rows one output row reads, so consecutive
 * rows never share a slot and no division is needed); tag[slot]: the row it holds. */
typedef struct {
    real *buf;
    const real *plane;
    ptrdiff_t n_rows, n_cols, pad, phases, plen, pstride, mask;
    ptrdiff_t tag[32];
} FN(dw_cache);

/* 0 if `span` rows (and a row of zeros) of phases*plen elements, + `extra`, do not fit in DW_CACHE.
 * The slots are zeroed once: a fill writes only the image's columns, the padding's stay zero. */
TIER_FN inline int FN(dw_cache_init)(FN(dw_cache) *c, real *buf, const real *plane, ptrdiff_t n_rows,
                                            ptrdiff_t n_cols, ptrdiff_t pad, ptrdiff_t phases, ptrdiff_t plen,
                                            ptrdiff_t span, ptrdiff_t extra)
{
    ptrdiff_t slots = 1;
    while (slots < span) slots *= 2;
    if (slots > 32 || (slots + 1) * phases * plen + extra > DW_CACHE) return 0;
    *c = (FN(dw_cache)){buf, plane, n_rows, n_cols, pad, phases, plen, plen, slots - 1, {0}};
    for (ptrdiff_t s = 0; s < slots; s++) c->tag[s] = PTRDIFF_MIN;
    memset(buf, 0, (size_t)((slots + 1) * phases * plen) * sizeof(real));
    return 1;
}

TIER_FN inline void FN(dw_fill)(const FN(dw_cache) *c, real *restrict dst, ptrdiff_t r)
{
    // the image columns of row r into their phases, the first plen columns of each (the padding
    // around them is zero already)
    ptrdiff_t P = c->phases, plen = c->plen, ps = c->pstride, pad = c->pad, n = c->n_cols;
    const real *src = c->plane + r * n;
    if (P == 1) { /* stride 1: columns [0, n) at pad on, those before plen */
        FN(dw_copy)(dst + pad, src, (n + pad < plen ? n + pad : plen) - pad);
        return;
    }
    if (P == 2) {
        /* stride 2, one loop over column pairs (a de-interleave the compiler vectorises): column
         * 2q is element q + pad/2 of phase pad % 2, column 2q + 1 element q + (pad+1)/2 of the other */
        real *de = dst + (pad % 2) * ps + pad / 2, *dd = dst + (1 - pad % 2) * ps + (pad + 1) / 2;
        ptrdiff_t pairs = n / 2, room = plen - (pad + 1) / 2;
        pairs = pairs < room ? pairs : room;
        for (ptrdiff_t q = 0; q < pairs; q++) de[q] = src[2 * q], dd[q] = src[2 * q + 1];
        if (pairs < (n + 1) / 2 && pairs + pad / 2 < plen) de[pairs] = src[2 * pairs]; /* n odd, or clipped */
        return;
    }
    for (ptrdiff_t f = 0; f < P; f++) {
        /* q in [lo, hi): padded column q*P + f is image column q*P + f - pad in [0, n) */
        ptrdiff_t lo = pad - f <= 0 ? 0 : (pad - f + P - 1) / P, hi = (n + pad - f + P - 1) / P;
        hi = hi < plen ? hi : plen;
        real *d = dst + f * ps;
        const real *s = src + lo * P + f - pad;
        for (ptrdiff_t q = 0; q < hi - lo; q++) d[lo + q] = s[q * P];
    }
}

/* The cached copy of row r (zeros outside [0, n_rows)) */
TIER_FN inline const real *FN(dw_row_of)(FN(dw_cache) *c, ptrdiff_t r)
{
    if (r < 0 || r >= c->n_rows) return c->buf + (c->mask + 1) * c->phases * c->plen; /* the zero row */
    ptrdiff_t slot = (ptrdiff_t)((size_t)r & (size_t)c->mask);
    real *dst = c->buf + slot * c->phases * c->plen;
    if (c->tag[slot] != r) {
        FN(dw_fill)(c, dst, r);
        c->tag[slot] = r;
    }
    return dst;
}

/* The forward's (and the weight gradient's) cache: input rows padded by pw, split into sw phases;
 * output (oh, ow)'s tap (ki, kj) is element ow + off[kj] of cached row oh*sh - ph + ki*dh,
 * off[kj] = (kj*dw % sw) * plen + kj*dw / sw. 0 if it does not fit (then the plain loops run). */
TIER_FN inline int FN(dw_input_cache)(FN(dw_cache) *c, ptrdiff_t *off, real *buf, const real *x,
                                             ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sw,
                                             ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Wo,
                                             ptrdiff_t extra)
{
    ptrdiff_t plen = dw_round_up(Wo + (kw - 1) * dw / sw + DW_SLACK, 16);
    if (kh * kw > DW_MAX_TAPS || !FN(dw_cache_init)(c, buf, x, H, W, pw, sw, plen, (kh - 1) * dh + 1, extra))
        return 0;
    for (ptrdiff_t kj = 0; kj < kw; kj++) off[kj] = (kj * dw % sw) * plen + kj * dw / sw;
    return 1;
}

TIER_FN inline void FN(dw_input_taps)(const real **p, FN(dw_cache) *c, const ptrdiff_t *off, ptrdiff_t ih0,
                                             ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t dh)
{
    // p[ki*kw + kj]: the taps of the output row whose first tap row is ih0
    for (ptrdiff_t ki = 0; ki < kh; ki++) {
        const real *row = FN(dw_row_of)(c, ih0 + ki * dh);
        for (ptrdiff_t kj = 0; kj < kw; kj++) p[ki * kw + kj] = row + off[kj];
    }
}

/* Small planes (MobileNetV2's 28x28 to 7x7), forward: there the row cache's work per row (a
 * fill, the taps' pointers, a dw_row of one or two vectors) costs more than the row's arithmetic.
 * Instead the plane is copied once, zero-padded and split into sh x sw phase planes of Hq x Wq
 * (phase (a, b) holds padded rows a, a + sh, ... and columns b, b + sw, ...), and flattened:
 * output (oh, ow)'s tap (ki, kj) is then element oh*Wq + ow + off[t] of the copy, one fixed shift
 * per tap, so ONE dw_row over the Ho*Wq flattened outputs computes the whole plane (7x7: 4 vectors
 * of 16 instead of 7 rows). Each output row's Wq - Wo last columns read across the row's end and
 * are dropped when the rows are copied out. The same taps in the same order: the same bits as the
 * row cache. 0 if the plane does not fit in DW_CACHE (then the row cache runs): up to 28x28, and
 * 56x56 at stride 2, for 3x3. */
TIER_FN int FN(dw_plane_forward)(real *restrict y, real *restrict buf, const real *restrict x,
                                 const real *restrict w, real b, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                 ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                                 ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // x is (H,W), w is (kh,kw); y (Ho,Wo) is overwritten; buf is DW_CACHE elements of scratch
    ptrdiff_t Hq = Ho + dw_div((kh - 1) * dh, sh), Wq = Wo + dw_div((kw - 1) * dw, sw);
    ptrdiff_t n = Ho * Wq, pl = Hq * Wq;
    /* dw_row reads each tap up to 16 past n: the last phase plane's last tap up to its end + that */
    ptrdiff_t size = dw_round_up(sh * sw * pl + Wq - Wo + 16, 16);
    if (kh * kw > DW_MAX_TAPS || size + n > DW_CACHE) return 0;
    real *yt = buf + size; /* the flattened outputs */
    for (ptrdiff_t i = 0; i < size; i += 16) { /* 64-byte stores inline (not libc's memset: 10 ns) */
        __asm__("" : "+r"(i));
        memset(buf + i, 0, 16 * sizeof(real));
    }
    /* dw_fill's columns, pw-padded, into phases pl apart, the first Wq of each */
    FN(dw_cache) c; /* dw_fill's fields (the tags, 256 bytes to clear, are not used) */
    c.plane = x, c.n_cols = W, c.pad = pw, c.phases = sw, c.plen = Wq, c.pstride = pl;
    /* padded row R = r + ph is row i = R / sh of row phase a = R % sh (no division per row: it
     * costs more than a 7-wide row's copy); likewise the taps' rows and columns below */
    for (ptrdiff_t r = 0, i = dw_div(ph, sh), a = ph - i * sh; r < H && i < Hq; r++) {
        FN(dw_fill)(&c, buf + a * sw * pl + i * Wq, r);
        if (++a == sh) a = 0, i++;
    }
    const real *p[DW_MAX_TAPS];
    ptrdiff_t col[DW_MAX_TAPS]; /* tap kj's column phase * pl + column */
    for (ptrdiff_t kj = 0, f = 0, q = 0; kj < kw; kj++) {
        col[kj] = f * pl + q;
        for (f += dw; f >= sw; f -= sw) q++;
    }
    for (ptrdiff_t ki = 0, a = 0, i = 0; ki < kh; ki++) {
        for (ptrdiff_t kj = 0; kj < kw; kj++) p[ki * kw + kj] = buf + a * sw * pl + i * Wq + col[kj];
        for (a += dh; a >= sh; a -= sh) i++;
    }
    FN(dw_row)(yt, p, w, kh * kw, b, n, 0);
    for (ptrdiff_t oh = 0; oh < Ho; oh++) FN(dw_copy)(y + oh * Wo, yt + oh * Wq, Wo);
    return 1;
}

TIER_FN void FN(depthwise_conv2d_forward)(real *restrict y, const real *restrict x, const real *restrict w,
                                          const real *bias, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                          ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                                          ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // x is (H,W), w is (kh,kw), bias is one value or NULL; y (Ho,Wo) is overwritten
    real buf[DW_CACHE];
    FN(dw_cache) c;
    ptrdiff_t off[DW_MAX_TAPS];
    const real *p[DW_MAX_TAPS];
    real b = bias ? *bias : 0;
    if (FN(dw_plane_forward)(y, buf, x, w, b, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)) return;
    if (!FN(dw_input_cache)(&c, off, buf, x, H, W, kh, kw, sw, pw, dh, dw, Wo, 0)) {
        FN(depthwise_conv2d_forward_loops)(y, x, w, bias, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo);
        return;
    }
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        FN(dw_input_taps)(p, &c, off, oh * sh - ph, kh, kw, dh);
        FN(dw_row)(y + oh * Wo, p, w, kh * kw, b, Wo, 0);
    }
}

TIER_FN void FN(depthwise_conv2d_backward_input)(real *restrict dx, const real *restrict dy,
                                                 const real *restrict w, ptrdiff_t H, ptrdiff_t W,
                                                 ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                                 ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                                 ptrdiff_t Ho, ptrdiff_t Wo)
{
    // dy is (Ho,Wo), w (kh,kw); dx (H,W) is ADDED into. Input (ih, iw = q*sw + r) gets tap
    // (ki, kj) from dy[oh, q + s] when ih + ph - ki*dh = oh*sh and r + pw - kj*dw = s*sw: per
    // (ih, r), a dw_row over the cached dy rows (padded by lp on the left) with those taps.
    ptrdiff_t lp = ((kw - 1) * dw + sw - 1) / sw, nq_max = (W + sw - 1) / sw, s_max = (sw - 1 + pw) / sw;
    ptrdiff_t plen = dw_round_up(lp + (Wo > nq_max + s_max ? Wo : nq_max + s_max) + DW_SLACK, 16);
    ptrdiff_t tlen = dw_round_up(nq_max, 16);
    real buf[DW_CACHE];
    FN(dw_cache) c;
    /* strided planes narrower than 32: the two phases' rows and their interleave cost more than
     * the plain loops' scatter (14x14 stride 2: 600 ns against 360) */
    if (kh * kw > DW_MAX_TAPS || sw > DW_MAX_TAPS || (sw > 1 && W < 32) ||
        !FN(dw_cache_init)(&c, buf, dy, Ho, Wo, lp, 1, plen, (kh - 1) * dh / sh + 1, sw * tlen)) {
        FN(depthwise_conv2d_backward_input_loops)(dx, dy, w, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo);
        return;
    }
    real *tmp = buf + (c.mask + 2) * plen; /* when sw > 1: each column phase's row, tlen apart */
    /* per column phase r: its taps kj and where each reads in a cached row */
    ptrdiff_t nk[DW_MAX_TAPS] = {0}, kjs[DW_MAX_TAPS][DW_MAX_TAPS], at[DW_MAX_TAPS][DW_MAX_TAPS];
    for (ptrdiff_t r = 0; r < sw; r++)
        for (ptrdiff_t kj = 0; kj < kw; kj++) {
            ptrdiff_t u = r + pw - kj * dw + lp * sw; /* >= 0 */
            if (u % sw == 0) kjs[r][nk[r]] = kj, at[r][nk[r]++] = u / sw; /* dy column q + at - lp */
        }
    const real *p[DW_MAX_TAPS];
    real wt[DW_MAX_TAPS];
    for (ptrdiff_t ih = 0; ih < H; ih++) {
        for (ptrdiff_t r = 0; r < sw; r++) {
            ptrdiff_t n = 0, nq = (W - r + sw - 1) / sw;
            for (ptrdiff_t ki = kh - 1; ki >= 0; ki--) { /* oh ascending, as the plain loops add them */
                ptrdiff_t t = ih + ph - ki * dh, oh = sh == 1 ? t : t / sh;
                if (t < 0 || oh >= Ho || (sh > 1 && oh * sh != t)) continue;
                const real *row = FN(dw_row_of)(&c, oh);
                for (ptrdiff_t j = 0; j < nk[r]; j++) {
                    p[n] = row + at[r][j];
                    wt[n++] = w[ki * kw + kjs[r][j]];
                }
            }
            if (sw == 1) {
                if (n > 0) FN(dw_row)(dx + ih * W, p, wt, n, 0, W, 1);
            } else if (nq > 0) {
                FN(dw_row)(tmp + r * tlen, p, wt, n, 0, nq, 0); /* no taps: zeros */
            }
        }
        real *d = dx + ih * W;
        if (sw == 2) { /* interleave the two phases back: a loop the compiler vectorises */
            const real *t0 = tmp, *t1 = tmp + tlen;
            for (ptrdiff_t q = 0; q < W / 2; q++) d[2 * q] += t0[q], d[2 * q + 1] += t1[q];
            if (W % 2) d[W - 1] += t0[W / 2];
        } else if (sw > 2) {
            for (ptrdiff_t iw = 0; iw < W; iw++) d[iw] += tmp[iw % sw * tlen + iw / sw];
        }
    }
}

TIER_FN void FN(depthwise_conv2d_backward_weight)(real *restrict dweight, real *dbias, const real *restrict dy,
                                                  const real *restrict x, ptrdiff_t H, ptrdiff_t W,
                                                  ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                                  ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                                  ptrdiff_t Ho, ptrdiff_t Wo)
{
    // dy is (Ho,Wo), x (H,W); dweight (kh,kw) and *dbias (unless NULL) are ADDED into, each as
    // this plane's sum (each row's in the tier's lanes, the rows' in double, then rounded once)
    real buf[DW_CACHE];
    FN(dw_cache) c;
    ptrdiff_t off[DW_MAX_TAPS];
    const real *p[DW_MAX_TAPS];
    double acc[DW_MAX_TAPS] = {0};
    ptrdiff_t plen = dw_round_up(Wo + DW_SLACK, 16);
    if (!FN(dw_input_cache)(&c, off, buf, x, H, W, kh, kw, sw, pw, dh, dw, Wo, plen)) {
        FN(depthwise_conv2d_backward_weight_loops)(dweight, dbias, dy, x, H, W, kh, kw, sh, sw, ph, pw, dh, dw,
                                                   Ho, Wo);
        return;
    }
    real *dyr = buf + DW_CACHE - plen; /* dy's row, zeros past Wo */
    memset(dyr, 0, (size_t)plen * sizeof(real));
    /* float lanes hold the sums of at most 64 vectors' products before they go to double (the
     * flush costs as much as a row of 112 outputs: every row would double the time) */
    real lanes[16 * DW_MAX_TAPS] = {0};
    ptrdiff_t rows_per_flush = 64 / ((Wo + 15) / 16), rows = 0;
    rows_per_flush = rows_per_flush > 0 ? rows_per_flush : 1;
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        FN(dw_input_taps)(p, &c, off, oh * sh - ph, kh, kw, dh);
        memcpy(dyr, dy + oh * Wo, (size_t)Wo * sizeof(real));
        FN(dw_dot)(lanes, dyr, p, kh * kw, Wo);
        if (++rows == rows_per_flush || oh == Ho - 1) {
            FN(dw_flush)(acc, lanes, kh * kw);
            rows = 0;
        }
    }
    for (ptrdiff_t t = 0; t < kh * kw; t++) dweight[t] += (real)acc[t];
    if (dbias) {
        double s = 0;
        for (ptrdiff_t oh = 0; oh < Ho; oh++) {
            const real *d = dy + oh * Wo;
            real a[DEPTHWISE_LANES] = {0};
            ptrdiff_t ow = 0;
            for (; ow + DEPTHWISE_LANES <= Wo; ow += DEPTHWISE_LANES)
                for (int l = 0; l < DEPTHWISE_LANES; l++) a[l] += d[ow + l];
            for (; ow < Wo; ow++) a[0] += d[ow];
            for (int l = 0; l < DEPTHWISE_LANES; l++) s += (double)a[l];
        }
        *dbias += (real)s;
    }
}

#endif
