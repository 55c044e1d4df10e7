/*
 * cyconv's own single-precision GEMM for the convolution, one micro-kernel per
 * ISA tier and one blocking loop for all of them.
 *
 *     C (M,N) = A (M,K) @ B (K,N)   [+ C if accumulate]   [+ bias[m] on row m]
 *
 * A is packed once into panels of mr rows (gemm_pack_a_f32, mr from the tier's
 * kernel); B is read where it lies, row-major with leading dimension ldb (the
 * im2col columns, the output gradient or the im2row rows of im2col.c), so
 * nothing large is copied per call. Why our own: at LeNet's per-image shapes
 * (50x196x500, 500x196x50, 50x500x196) OpenBLAS packs both operands on every
 * call; with the weights packed once per layer call and nothing else copied,
 * LeNet's conv2 forward + backward runs faster than on OpenBLAS
 * (benchmarks/RESULTS.md, the "cyconv-blas" rows).
 *
 * A micro-kernel keeps an mr x nr block of C in registers and, per step of k,
 * loads one row of B (nr floats) and broadcasts mr elements of A's panel:
 *
 *     generic  6 x 8:  12 accumulators of 4 floats (GCC/clang vector
 *              extensions: SSE2's 16 or NEON's 32 registers)
 *     avx2     6 x 16: 12 ymm accumulators + 2 for B + 1 broadcast = 15 of
 *              16 registers (the block BLIS and OpenBLAS use on Haswell)
 *     avx512   10 x 32: 20 zmm accumulators of 32 registers
 *
 * gemm_block_ref is the statement of what each computes (and the generic
 * kernel's edge). Each tier's row kernel (gemm_rows_f32: A read in place) is
 * its block kernel's body with one row, so a row alone is computed exactly as
 * inside a block. Also here: the direct weight gradient of stride-1
 * convolutions over large planes, written once over simd.h's float vector and
 * compiled per tier by instantiate.h (the template body at the end).
 */
#ifndef real

#include <string.h>

#include "cyconv.h"

#if CYCONV_X86
#include <immintrin.h>
#endif

/* One mr x nr block of C from a packed panel ap (K, MR) and B: what every
 * micro-kernel computes. */
static void gemm_block_ref(ptrdiff_t MR, ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                           float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, const float *bias,
                           int accumulate)
{
    for (ptrdiff_t i = 0; i < mr; i++) {
        for (ptrdiff_t j = 0; j < nr; j++) {
            float s = 0.0f;
            for (ptrdiff_t k = 0; k < K; k++) s += ap[k * MR + i] * b[k * ldb + j];
            if (bias) s += bias[i];
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + s : s;
        }
    }
}

/* ---- generic: 6 x 8 with vector extensions ---- */

#define GEMM_GENERIC_MR 6

/* Contract a*b + c into one fused multiply-add where the target has it (NEON):
 * twice the throughput. The rest of cyconv builds with -ffp-contract=off. */
#if defined(__clang__)
#define GEMM_CONTRACT_ATTR
#define GEMM_CONTRACT_BODY _Pragma("clang fp contract(fast)")
#else
#define GEMM_CONTRACT_ATTR __attribute__((optimize("fp-contract=fast")))
#define GEMM_CONTRACT_BODY
#endif

typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v); /* an unaligned vector load */
    return v;
}

#define GEN_REP(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define GEN_DECL(i) v4f c##i##0 = {0, 0, 0, 0}, c##i##1 = {0, 0, 0, 0};
#define GEN_FMA(i)                   \
    if (i < rows) {                  \
        float a = ap[i];             \
        c##i##0 += a * b0;           \
        c##i##1 += a * b1;           \
    }
#define GEN_STORE(i)                                                          \
    if (i < mr) {                                                             \
        float *row = c + i * ldc;                                             \
        v4f v0 = c##i##0, v1 = c##i##1;                                       \
        if (bias) v0 += bias[i], v1 += bias[i];                               \
        if (accumulate) v0 += load4(row), v1 += load4(row + 4);               \
        memcpy(row, &v0, sizeof v0);                                          \
        memcpy(row + 4, &v1, sizeof v1);                                      \
    }

/* The block, and (rows == 1, as == 1) a row of A read in place: a compile-time
 * `rows` and `as` (A's step per k) in each inlined copy, so a row alone is computed
 * with the very operations of that row inside a block (see gemm_rows_f32). */
GEMM_CONTRACT_ATTR static inline __attribute__((always_inline)) void
gemm_block_generic_body(int rows, ptrdiff_t as, ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                        float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, const float *bias, int accumulate)
{
    GEMM_CONTRACT_BODY
    if (nr < 8) { /* the right edge: at most 7 columns of N */
        gemm_block_ref(as, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
        return;
    }
    GEN_REP(GEN_DECL)
    for (ptrdiff_t k = 0; k < K; k++, ap += as, b += ldb) {
        v4f b0 = load4(b), b1 = load4(b + 4);
        GEN_REP(GEN_FMA)
    }
    GEN_REP(GEN_STORE)
}

GEMM_CONTRACT_ATTR static void gemm_block_generic(ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                                                  float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                                                  const float *bias, int accumulate)
{
    gemm_block_generic_body(GEMM_GENERIC_MR, GEMM_GENERIC_MR, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
}

/* One row of the block: c (nr) = a (K) @ b (K, nr) [+ c]. */
GEMM_CONTRACT_ATTR static void gemm_row_generic(ptrdiff_t K, const float *a, const float *b, ptrdiff_t ldb,
                                                float *c, ptrdiff_t nr, int accumulate)
{
    gemm_block_generic_body(1, 1, K, a, b, ldb, c, 0, 1, nr, NULL, accumulate);
}

#if CYCONV_X86

/* ---- avx2: 6 x 16 ----
 * The accumulators are named variables, not an array: GCC spills an array of
 * vectors to the stack on every step of k (measured: 2.5x slower). A block at
 * the right edge (nr < 16) loads B and stores C through masks; `masked` and
 * `wide` (nr > 8) are compile-time constants in each inlined copy. */

#define GEMM_AVX2_MR 6
#define AVX2_REP(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define AVX2_DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
#define AVX2_FMA(i)                                            \
    if (i < rows) {                                            \
        __m256 a = _mm256_broadcast_ss(ap + i);                \
        c##i##0 = _mm256_fmadd_ps(a, b0, c##i##0);             \
        if (wide) c##i##1 = _mm256_fmadd_ps(a, b1, c##i##1);   \
    }
#define AVX2_STORE(i)                                                                         \
    if (i < mr) {                                                                             \
        float *row = c + i * ldc;                                                             \
        __m256 v0 = c##i##0, v1 = c##i##1;                                                    \
        if (bias) {                                                                           \
            v0 = _mm256_add_ps(v0, _mm256_set1_ps(bias[i]));                                  \
            v1 = _mm256_add_ps(v1, _mm256_set1_ps(bias[i]));                                  \
        }                                                                                     \
        if (masked) {                                                                         \
            if (accumulate) {                                                                 \
                v0 = _mm256_add_ps(v0, _mm256_maskload_ps(row, m0));                          \
                if (wide) v1 = _mm256_add_ps(v1, _mm256_maskload_ps(row + 8, m1));            \
            }                                                                                 \
            _mm256_maskstore_ps(row, m0, v0);                                                 \
            if (wide) _mm256_maskstore_ps(row + 8, m1, v1);                                   \
        } else {                                                                              \
            if (accumulate) {                                                                 \
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));                                 \
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row + 8));                             \
            }                                                                                 \
            _mm256_storeu_ps(row, v0);                                                        \
            _mm256_storeu_ps(row + 8, v1);                                                    \
        }                                                                                     \
    }

CYCONV_TARGET_AVX2 static inline __attribute__((always_inline)) void
gemm_block_avx2_body(int masked, int wide, int rows, ptrdiff_t as, ptrdiff_t K, const float *ap, const float *b,
                     ptrdiff_t ldb, float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, const float *bias,
                     int accumulate)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), lane);
    __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), lane);
    AVX2_REP(AVX2_DECL)
    for (ptrdiff_t k = 0; k < K; k++, ap += as, b += ldb) {
        __m256 b0, b1 = _mm256_setzero_ps();
        if (masked) {
            b0 = _mm256_maskload_ps(b, m0);
            if (wide) b1 = _mm256_maskload_ps(b + 8, m1);
        } else {
            b0 = _mm256_loadu_ps(b);
            b1 = _mm256_loadu_ps(b + 8);
        }
        AVX2_REP(AVX2_FMA)
    }
    AVX2_REP(AVX2_STORE)
}

CYCONV_TARGET_AVX2 static void gemm_block_avx2(ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                                               float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                                               const float *bias, int accumulate)
{
    if (nr == 16)
        gemm_block_avx2_body(0, 1, GEMM_AVX2_MR, GEMM_AVX2_MR, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
    else if (nr > 8)
        gemm_block_avx2_body(1, 1, GEMM_AVX2_MR, GEMM_AVX2_MR, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
    else
        gemm_block_avx2_body(1, 0, GEMM_AVX2_MR, GEMM_AVX2_MR, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
}

/* One row of the block, A read in place (as gemm_row_generic). */
CYCONV_TARGET_AVX2 static void gemm_row_avx2(ptrdiff_t K, const float *a, const float *b, ptrdiff_t ldb, float *c,
                                             ptrdiff_t nr, int accumulate)
{
    if (nr == 16)
        gemm_block_avx2_body(0, 1, 1, 1, K, a, b, ldb, c, 0, 1, nr, NULL, accumulate);
    else if (nr > 8)
        gemm_block_avx2_body(1, 1, 1, 1, K, a, b, ldb, c, 0, 1, nr, NULL, accumulate);
    else
        gemm_block_avx2_body(1, 0, 1, 1, K, a, b, ldb, c, 0, 1, nr, NULL, accumulate);
}

/* ---- avx512: 10 x 32 ----
 * Masked loads and stores are as cheap as plain ones here, so every block uses
 * them; `wide` (nr > 16) is a compile-time constant in each inlined copy. */

#define GEMM_AVX512_MR 10
#define AVX512_REP(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
#define AVX512_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define AVX512_FMA(i)                                               \
    if (i < rows) {                                                 \
        __m512 a = _mm512_set1_ps(ap[i]);                           \
        c##i##0 = _mm512_fmadd_ps(a, b0, c##i##0);                  \
        if (wide) c##i##1 = _mm512_fmadd_ps(a, b1, c##i##1);        \
    }
#define AVX512_STORE(i)                                                             \
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

CYCONV_TARGET_AVX512 static inline __attribute__((always_inline)) void
gemm_block_avx512_body(int wide, int rows, ptrdiff_t as, ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                       float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, const float *bias, int accumulate)
{
    __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
    __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
    AVX512_REP(AVX512_DECL)
    for (ptrdiff_t k = 0; k < K; k++, ap += as, b += ldb) {
        __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_setzero_ps();
        if (wide) b1 = _mm512_maskz_loadu_ps(m1, b + 16);
        AVX512_REP(AVX512_FMA)
    }
    AVX512_REP(AVX512_STORE)
}

CYCONV_TARGET_AVX512 static void gemm_block_avx512(ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb,
                                                   float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                                                   const float *bias, int accumulate)
{
    if (nr > 16)
        gemm_block_avx512_body(1, GEMM_AVX512_MR, GEMM_AVX512_MR, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
    else
        gemm_block_avx512_body(0, GEMM_AVX512_MR, GEMM_AVX512_MR, K, ap, b, ldb, c, ldc, mr, nr, bias, accumulate);
}

/* One row of the block, A read in place (as gemm_row_generic). */
CYCONV_TARGET_AVX512 static void gemm_row_avx512(ptrdiff_t K, const float *a, const float *b, ptrdiff_t ldb,
                                                 float *c, ptrdiff_t nr, int accumulate)
{
    if (nr > 16)
        gemm_block_avx512_body(1, 1, 1, K, a, b, ldb, c, 0, 1, nr, NULL, accumulate);
    else
        gemm_block_avx512_body(0, 1, 1, K, a, b, ldb, c, 0, 1, nr, NULL, accumulate);
}

#endif /* CYCONV_X86 */

/* ---- the shared part: kernel choice, packing, blocking ---- */

static const cyconv_gemm gemm_kernels[CYCONV_ISA_COUNT] = {
    [CYCONV_ISA_GENERIC] = {GEMM_GENERIC_MR, 8, 512, gemm_block_generic, gemm_row_generic},
#if CYCONV_X86
    [CYCONV_ISA_AVX2] = {GEMM_AVX2_MR, 16, 256, gemm_block_avx2, gemm_row_avx2},
    [CYCONV_ISA_AVX512] = {GEMM_AVX512_MR, 32, 128, gemm_block_avx512, gemm_row_avx512},
#endif
};

const cyconv_gemm *gemm_kernel_for(int isa)
{
    return &gemm_kernels[cyconv_isa_supported(isa) ? isa : CYCONV_ISA_GENERIC];
}

const cyconv_gemm *gemm_kernel(void)
{
    return &gemm_kernels[cyconv_isa_now()];
}

ptrdiff_t gemm_packed_size(const cyconv_gemm *g, ptrdiff_t M, ptrdiff_t K)
{
    return (M + g->mr - 1) / g->mr * g->mr * K;
}

void gemm_pack_a_f32(const cyconv_gemm *g, float *packed, const float *a, ptrdiff_t M, ptrdiff_t K,
                     ptrdiff_t row_stride, ptrdiff_t col_stride)
{
    // element (m, k) of A is a[m*row_stride + k*col_stride]; packed is
    // (ceil(M/mr), K, mr), rows past M zero so the kernel never branches on them
    ptrdiff_t MR = g->mr;
    for (ptrdiff_t m0 = 0; m0 < M; m0 += MR) {
        float *panel = packed + m0 * K;
        ptrdiff_t mr = M - m0 < MR ? M - m0 : MR;
        for (ptrdiff_t k = 0; k < K; k++) {
            for (ptrdiff_t i = 0; i < mr; i++) panel[k * MR + i] = a[(m0 + i) * row_stride + k * col_stride];
            for (ptrdiff_t i = mr; i < MR; i++) panel[k * MR + i] = 0.0f;
        }
    }
}

void gemm_packed_f32(const cyconv_gemm *g, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *packed_a,
                     const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, const float *bias, int accumulate)
{
    // Depth chunks of kc outside, then column blocks, then row panels: the
    // kc x nr sliver of B being read stays in L1 while every panel of A passes
    // over it. Later chunks add into what the first one stored (bias included).
    if (K == 0) { // no chunk at all: C is still written, A @ B being zeros
        for (ptrdiff_t i = 0; i < M; i++)
            for (ptrdiff_t j = 0; j < N; j++)
                c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0.0f) + (bias ? bias[i] : 0.0f);
        return;
    }
    ptrdiff_t chunks = (K + g->kc - 1) / g->kc, kc = (K + chunks - 1) / chunks;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += kc) {
        ptrdiff_t kb = K - k0 < kc ? K - k0 : kc;
        for (ptrdiff_t n0 = 0; n0 < N; n0 += g->nr) {
            ptrdiff_t nr = N - n0 < g->nr ? N - n0 : g->nr;
            for (ptrdiff_t m0 = 0; m0 < M; m0 += g->mr) {
                ptrdiff_t mr = M - m0 < g->mr ? M - m0 : g->mr;
                g->block(kb, packed_a + m0 * K + k0 * g->mr, b + k0 * ldb + n0, ldb, c + m0 * ldc + n0, ldc,
                         mr, nr, bias && k0 == 0 ? bias + m0 : NULL, accumulate || k0 > 0);
            }
        }
    }
}

void gemm_rows_f32(const cyconv_gemm *g, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *a, ptrdiff_t lda,
                   const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc)
{
    // gemm_packed_f32's loops (no bias) with A read in place, a row at a time through the tier's row
    // kernel: every element is computed as gemm_packed_f32 computes it, whatever M.
    if (K == 0) { // as gemm_packed_f32: C is still written
        for (ptrdiff_t i = 0; i < M; i++)
            for (ptrdiff_t j = 0; j < N; j++) c[i * ldc + j] = 0.0f;
        return;
    }
    ptrdiff_t chunks = (K + g->kc - 1) / g->kc, kc = (K + chunks - 1) / chunks;
    for (ptrdiff_t k0 = 0; k0 < K; k0 += kc) {
        ptrdiff_t kb = K - k0 < kc ? K - k0 : kc;
        for (ptrdiff_t n0 = 0; n0 < N; n0 += g->nr) {
            ptrdiff_t nr = N - n0 < g->nr ? N - n0 : g->nr;
            for (ptrdiff_t m = 0; m < M; m++)
                g->row(kb, a + m * lda + k0, b + k0 * ldb + n0, ldb, c + m * ldc + n0, nr, k0 > 0);
        }
    }
}

/* ---- the direct weight gradient ----
 * The weight gradient of a stride-1 convolution on one image, computed directly:
 *     dw[o, c, ki, kj] += sum_{oh, ow} dy[o, oh, ow] * xp[c, oh + ki, ow + kj]
 * with xp the image zero-padded to (C, Hp, Wp). No im2row and no packing: for a
 * few output channels and one (c, ki) it keeps (channels x kw) accumulators
 * over the whole plane, vectorised along ow, and reduces them once. Worth it
 * where the plane is large and the channels few (LeNet's conv1: 3x faster than
 * im2row + packing + GEMM, which spend most of their time moving 25 x 784 values
 * around); conv_weight_grad_direct_fits() says where, per tier. Its loops are
 * written once (the template body below) over simd.h's float vector. */

int conv_weight_grad_direct_fits(ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // stride 1, at most 6 taps per row (the accumulators below), at least 32
    // vectors per plane (the reduction at the end stays small) and at least 3/4
    // of the lanes used. The generic tier keeps im2row + GEMM.
    int isa = cyconv_isa_now();
    ptrdiff_t lanes = isa == CYCONV_ISA_AVX512 ? 16 : isa == CYCONV_ISA_AVX2 ? 8 : 0;
    if (lanes == 0) return 0;
    ptrdiff_t vectors = Ho * ((Wo + lanes - 1) / lanes);
    return sh == 1 && sw == 1 && kw <= 6 && vectors >= 32 && 4 * Ho * Wo >= 3 * lanes * vectors;
}

#define CYCONV_TEMPLATE "gemm.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

#ifdef REAL_IS_FLOAT
void FN(conv_weight_grad_direct)(float *dw, const float *dy, const float *xp, ptrdiff_t O, ptrdiff_t C,
                                 ptrdiff_t Hp, ptrdiff_t Wp, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t Ho,
                                 ptrdiff_t Wo)
{
    TIERED(conv_weight_grad_direct)(dw, dy, xp, O, C, Hp, Wp, kh, kw, Ho, Wo);
}
#endif

#else /* template body, per tier: the direct weight gradient (float only) */
#ifdef REAL_IS_FLOAT

#include "simd.h"

#if VF_TIER
/* DWG_OB output channels x kw (<= 6) taps of accumulators, plus DWG_OB vectors of dy
 * and one of x: 4 x 6 + 5 of avx512's 32 registers, 2 x 6 + 3 of avx2's 16. The
 * accumulators are named variables (GCC spills an array of vectors); rows i >= DWG_OB
 * are compile-time dead. */
#define DWG_OB (VL == 16 ? 4 : 2)
#define DWG_REP(X, j) X(0, j) X(1, j) X(2, j) X(3, j)
#define DWG_DECL(i, j) vf a##i##j = VF_ZERO();
#define DWG_FMA(i, j) \
    if (i < DWG_OB) a##i##j = VF_FMA(d##i, xv, a##i##j);
#define DWG_TAP(j)                                  \
    if (j < kw) {                                   \
        vf xv = VF_LOAD(xrow, ow + j, m);           \
        DWG_REP(DWG_FMA, j)                         \
    }
#define DWG_PTR(i, j) const float *dy##i = dy + (o0 + (i < ob ? i : 0)) * plane; /* rows past O: read nothing */
#define DWG_DY(i, j) vf d##i = VF_LOAD_IF(i < DWG_OB && i < ob, dy##i, r + ow, m);
#define DWG_STORE(i, j) \
    if (i < DWG_OB && i < ob && j < kw) dw[((o0 + i) * C + c) * kh * kw + ki * kw + j] += VF_SUM(a##i##j);
#endif

TIER_FN void FN(conv_weight_grad_direct)(float *dw, const float *dy, const float *xp, ptrdiff_t O, ptrdiff_t C,
                                         ptrdiff_t Hp, ptrdiff_t Wp, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t Ho,
                                         ptrdiff_t Wo)
{
    // dy is (O, Ho, Wo), xp (C, Hp, Wp); dw (O, C, kh, kw) is added into
#if VF_TIER
    ptrdiff_t plane = Ho * Wo;
    for (ptrdiff_t o0 = 0; o0 < O; o0 += DWG_OB) {
        ptrdiff_t ob = O - o0 < DWG_OB ? O - o0 : DWG_OB;
        DWG_REP(DWG_PTR, 0)
        for (ptrdiff_t c = 0; c < C; c++) {
            for (ptrdiff_t ki = 0; ki < kh; ki++) {
                DWG_REP(DWG_DECL, 0) DWG_REP(DWG_DECL, 1) DWG_REP(DWG_DECL, 2)
                DWG_REP(DWG_DECL, 3) DWG_REP(DWG_DECL, 4) DWG_REP(DWG_DECL, 5)
                for (ptrdiff_t oh = 0; oh < Ho; oh++) {
                    const float *xrow = xp + (c * Hp + oh + ki) * Wp;
                    ptrdiff_t r = oh * Wo;
                    for (ptrdiff_t ow = 0; ow < Wo; ow += VL) {
                        /* the lanes past the row read 0 from both operands */
                        vmask m = VF_HEAD(Wo - ow);
                        DWG_REP(DWG_DY, 0)
                        DWG_TAP(0) DWG_TAP(1) DWG_TAP(2) DWG_TAP(3) DWG_TAP(4) DWG_TAP(5)
                    }
                }
                DWG_REP(DWG_STORE, 0) DWG_REP(DWG_STORE, 1) DWG_REP(DWG_STORE, 2)
                DWG_REP(DWG_STORE, 3) DWG_REP(DWG_STORE, 4) DWG_REP(DWG_STORE, 5)
            }
        }
    }
#else
    /* the statement of what the vector loops compute (fits() sends the generic tier to im2row + GEMM) */
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
#endif
}

#undef DWG_OB
#undef DWG_REP
#undef DWG_DECL
#undef DWG_FMA
#undef DWG_TAP
#undef DWG_PTR
#undef DWG_DY
#undef DWG_STORE

#endif /* REAL_IS_FLOAT */
#endif
