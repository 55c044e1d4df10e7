/*
 * cyconv's own single-precision GEMM for the convolution.
 *
 *     C (M,N) = A (M,K) @ B (K,N)   [+ C if accumulate]   [+ bias[m] on row m]
 *
 * A is packed once into panels of GEMM_MR rows (gemm_pack_a_f32); B is read
 * where it lies, row-major with leading dimension ldb (the im2col columns, the
 * output gradient or the im2row rows of im2col.c), so nothing large is copied per call.
 * Why our own: at LeNet's per-image shapes (50x196x500, 500x196x50, 50x500x196)
 * OpenBLAS packs both operands on every call; with the weights packed once per
 * layer call and nothing else copied, LeNet's conv2 forward + backward runs
 * 1.15-1.35x faster than on OpenBLAS (benchmarks/RESULTS.md, "cyconv-blas").
 *
 * The micro-kernel keeps a GEMM_MR x 32 block of C in 20 zmm registers and
 * streams one row of B (two vectors, the second masked at the right edge) and
 * GEMM_MR broadcasts of A per step of k. Without AVX-512 the same functions
 * run a plain loop (correct, slow): the Cython layer calls BLAS instead there
 * (gemm_own_supported() is 0).
 */
#include <string.h>

#include "cyconv.h"

#if CYCONV_X86_DISPATCH
#include <immintrin.h>
#endif

ptrdiff_t gemm_packed_size(ptrdiff_t M, ptrdiff_t K)
{
    return (M + GEMM_MR - 1) / GEMM_MR * GEMM_MR * K;
}

void gemm_pack_a_f32(float *packed, const float *a, ptrdiff_t M, ptrdiff_t K,
                     ptrdiff_t row_stride, ptrdiff_t col_stride)
{
    // element (m, k) of A is a[m*row_stride + k*col_stride]; packed is
    // (ceil(M/MR), K, MR), rows past M zero so the kernel never branches on them
    for (ptrdiff_t m0 = 0; m0 < M; m0 += GEMM_MR) {
        float *panel = packed + m0 * K;
        ptrdiff_t mr = M - m0 < GEMM_MR ? M - m0 : GEMM_MR;
        for (ptrdiff_t k = 0; k < K; k++) {
            for (ptrdiff_t i = 0; i < mr; i++) panel[k * GEMM_MR + i] = a[(m0 + i) * row_stride + k * col_stride];
            for (ptrdiff_t i = mr; i < GEMM_MR; i++) panel[k * GEMM_MR + i] = 0.0f;
        }
    }
}

#if CYCONV_X86_DISPATCH

int gemm_own_supported(void)
{
    return __builtin_cpu_supports("avx512f");
}

/* The accumulators are named variables, not an array: GCC spills an array of
 * vectors to the stack on every step of k (measured: 2.5x slower). */
#define GEMM_REP(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
#define GEMM_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define GEMM_FMA(i)                                                 \
    {                                                               \
        __m512 a = _mm512_set1_ps(ap[i]);                           \
        c##i##0 = _mm512_fmadd_ps(a, b0, c##i##0);                  \
        if (wide) c##i##1 = _mm512_fmadd_ps(a, b1, c##i##1);        \
    }
#define GEMM_STORE(i)                                                               \
    if (i < mr) {                                                                   \
        float *row = c + i * ldc;                                                   \
        __m512 v0 = c##i##0, v1 = c##i##1;                                          \
        if (bias) {                                                                 \
            v0 = _mm512_add_ps(v0, _mm512_set1_ps(bias[i]));                        \
            v1 = _mm512_add_ps(v1, _mm512_set1_ps(bias[i]));                        \
        }                                                                           \
        if (accumulate) {                                                           \
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));                 \
            if (wide) v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row + 16));  \
        }                                                                           \
        _mm512_mask_storeu_ps(row, m0, v0);                                         \
        if (wide) _mm512_mask_storeu_ps(row + 16, m1, v1);                          \
    }

/* One MR x nr block of C, nr <= 32; `wide` (nr > 16) is a compile-time
 * constant in each of the two inlined copies below. */
__attribute__((target("avx512f"), always_inline))
static inline void gemm_block(int wide, ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                              float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                              const float *bias, int accumulate)
{
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
    GEMM_REP(GEMM_DECL)
    for (ptrdiff_t k = 0; k < K; k++, ap += GEMM_MR, b += ldb) {
        __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_setzero_ps();
        if (wide) b1 = _mm512_maskz_loadu_ps(m1, b + 16);
        GEMM_REP(GEMM_FMA)
    }
    GEMM_REP(GEMM_STORE)
}

__attribute__((target("avx512f")))
static void gemm_block_32(ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb, float *c,
                          ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, const float *bias, int accumulate)
{
    gemm_block(1, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
}

__attribute__((target("avx512f")))
static void gemm_block_16(ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb, float *c,
                          ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, const float *bias, int accumulate)
{
    gemm_block(0, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
}

void gemm_packed_f32(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *packed_a,
                     const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                     const float *bias, int accumulate)
{
    // Column blocks outside, row panels inside: the 32 columns of B being read
    // (K x 128 bytes) stay in L1/L2 while every panel of A passes over them.
    for (ptrdiff_t n0 = 0; n0 < N; n0 += 32) {
        ptrdiff_t nr = N - n0 < 32 ? N - n0 : 32;
        for (ptrdiff_t m0 = 0; m0 < M; m0 += GEMM_MR) {
            ptrdiff_t mr = M - m0 < GEMM_MR ? M - m0 : GEMM_MR;
            const float *bias_block = bias ? bias + m0 : NULL;
            if (nr > 16)
                gemm_block_32(K, packed_a + m0 * K, b + n0, ldb, c + m0 * ldc + n0, ldc, mr, nr,
                              bias_block, accumulate);
            else
                gemm_block_16(K, packed_a + m0 * K, b + n0, ldb, c + m0 * ldc + n0, ldc, mr, nr,
                              bias_block, accumulate);
        }
    }
}

/* The weight gradient of a stride-1 convolution on one image, computed directly:
 *     dw[o, c, ki, kj] += sum_{oh, ow} dy[o, oh, ow] * xp[c, oh + ki, ow + kj]
 * with xp the image zero-padded to (C, Hp, Wp). No im2row and no packing: for
 * 4 output channels and one (c, ki) it keeps 4 x kw (<= 6) accumulators over the
 * whole plane, vectorised along ow, and reduces them once. Worth it where the
 * plane is large and the channels few (LeNet's conv1: 3x faster than im2row +
 * packing + GEMM, which spend most of their time moving 25 x 784 values around);
 * conv_weight_grad_direct_fits() says where. */
#define DW_REP4(X, j) X(0, j) X(1, j) X(2, j) X(3, j)
#define DW_DECL(i, j) __m512 a##i##j = _mm512_setzero_ps();
#define DW_FMA(i, j) a##i##j = _mm512_fmadd_ps(d##i, xv, a##i##j);
#define DW_TAP(j)                                                   \
    if (j < kw) {                                                   \
        __m512 xv = _mm512_maskz_loadu_ps(m, xrow + ow + j);        \
        DW_REP4(DW_FMA, j)                                          \
    }
#define DW_STORE(i, j) \
    if (i < ob && j < kw) dw[((o0 + i) * C + c) * kh * kw + ki * kw + j] += _mm512_reduce_add_ps(a##i##j);

__attribute__((target("avx512f")))
void conv_weight_grad_direct_f32(float *dw, const float *dy, const float *xp, ptrdiff_t O,
                                 ptrdiff_t C, ptrdiff_t Hp, ptrdiff_t Wp, ptrdiff_t kh,
                                 ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    ptrdiff_t plane = Ho * Wo;
    for (ptrdiff_t o0 = 0; o0 < O; o0 += 4) {
        ptrdiff_t ob = O - o0 < 4 ? O - o0 : 4;
        /* rows past O read nothing (mask 0) from a valid address */
        const float *dy0 = dy + o0 * plane;
        const float *dy1 = ob > 1 ? dy0 + plane : dy0, *dy2 = ob > 2 ? dy0 + 2 * plane : dy0;
        const float *dy3 = ob > 3 ? dy0 + 3 * plane : dy0;
        for (ptrdiff_t c = 0; c < C; c++) {
            for (ptrdiff_t ki = 0; ki < kh; ki++) {
                DW_REP4(DW_DECL, 0) DW_REP4(DW_DECL, 1) DW_REP4(DW_DECL, 2)
                DW_REP4(DW_DECL, 3) DW_REP4(DW_DECL, 4) DW_REP4(DW_DECL, 5)
                for (ptrdiff_t oh = 0; oh < Ho; oh++) {
                    const float *xrow = xp + (c * Hp + oh + ki) * Wp;
                    ptrdiff_t r = oh * Wo;
                    for (ptrdiff_t ow = 0; ow < Wo; ow += 16) {
                        __mmask16 m = (__mmask16)(Wo - ow >= 16 ? 0xFFFF : (1u << (Wo - ow)) - 1);
                        __m512 d0 = _mm512_maskz_loadu_ps(m, dy0 + r + ow);
                        __m512 d1 = _mm512_maskz_loadu_ps(ob > 1 ? m : 0, dy1 + r + ow);
                        __m512 d2 = _mm512_maskz_loadu_ps(ob > 2 ? m : 0, dy2 + r + ow);
                        __m512 d3 = _mm512_maskz_loadu_ps(ob > 3 ? m : 0, dy3 + r + ow);
                        DW_TAP(0) DW_TAP(1) DW_TAP(2) DW_TAP(3) DW_TAP(4) DW_TAP(5)
                    }
                }
                DW_REP4(DW_STORE, 0) DW_REP4(DW_STORE, 1) DW_REP4(DW_STORE, 2)
                DW_REP4(DW_STORE, 3) DW_REP4(DW_STORE, 4) DW_REP4(DW_STORE, 5)
            }
        }
    }
}

int conv_weight_grad_direct_fits(ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // stride 1, at most 6 taps per row (24 accumulators), at least 32 vectors per
    // plane (the reduction at the end stays small) and at least 3/4 of the lanes used
    ptrdiff_t vectors = Ho * ((Wo + 15) / 16);
    return gemm_own_supported() && sh == 1 && sw == 1 && kw <= 6 && vectors >= 32 && 4 * Ho * Wo >= 3 * 16 * vectors;
}

#else /* no AVX-512 dispatch on this compiler/platform: BLAS is used instead */

int gemm_own_supported(void)
{
    return 0;
}

int conv_weight_grad_direct_fits(ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    (void)sh, (void)sw, (void)kw, (void)Ho, (void)Wo;
    return 0;
}

void conv_weight_grad_direct_f32(float *dw, const float *dy, const float *xp, ptrdiff_t O,
                                 ptrdiff_t C, ptrdiff_t Hp, ptrdiff_t Wp, ptrdiff_t kh,
                                 ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    for (ptrdiff_t o = 0; o < O; o++)
        for (ptrdiff_t c = 0; c < C; c++)
            for (ptrdiff_t ki = 0; ki < kh; ki++)
                for (ptrdiff_t kj = 0; kj < kw; kj++) {
                    float s = 0.0f;
                    for (ptrdiff_t oh = 0; oh < Ho; oh++)
                        for (ptrdiff_t ow = 0; ow < Wo; ow++)
                            s += dy[(o * Ho + oh) * Wo + ow] * xp[(c * Hp + oh + ki) * Wp + ow + kj];
                    dw[((o * C + c) * kh + ki) * kw + kj] += s;
                }
}

void gemm_packed_f32(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *packed_a,
                     const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                     const float *bias, int accumulate)
{
    for (ptrdiff_t m = 0; m < M; m++) {
        const float *panel = packed_a + m / GEMM_MR * GEMM_MR * K;
        for (ptrdiff_t n = 0; n < N; n++) {
            float s = 0.0f;
            for (ptrdiff_t k = 0; k < K; k++) s += panel[k * GEMM_MR + m % GEMM_MR] * b[k * ldb + n];
            if (bias) s += bias[m];
            c[m * ldc + n] = accumulate ? c[m * ldc + n] + s : s;
        }
    }
}

#endif
