/*
 * The float vector of the x86 tiers, for the few kernels vectorised by hand
 * (im2col.c's row copies, gemm.c's direct weight gradient): a thin wrapper, so
 * such a kernel writes its loops once (simdjson's way) and only these
 * operations differ per tier:
 *
 *              lanes  mask        a row's last vector
 *     avx512   16     __mmask16   stored through a mask (as cheap as a plain store)
 *     avx2     8      __m256i     stored whole, moved left to end at the row's end
 *                                 (masked stores are microcoded on AMD): rows of >= 8
 *
 * A template body (instantiate.h) includes this header in each of its passes;
 * on float's avx512 and avx2 passes it names that tier's operations (vf, VF_*,
 * with VF_TIER 1), on every other pass VF_TIER is 0 and the body keeps its plain
 * loops, which are the statement of what the vector code computes.
 *
 *     VF_LANES(lo, hi)      mask of lanes [lo, hi), clipped to the vector
 *     VF_HEAD(n)            mask of the first n lanes (all of them if n >= VL)
 *     VF_LOAD(p, off, m)    lanes m of p[off .. off + VL), zero elsewhere
 *     VF_LOAD_IF(c, p, off, m)       VF_LOAD if c, else zeros (avx512: through the mask, no branch)
 *     VF_AND(a, b)          both masks
 *     VF_STEP(s, n)         where the vector at s of a row of n starts (avx2: n - 8
 *                           for the last one, overlapping its neighbour)
 *     VF_ROW_MASK(left)     the lanes of that vector inside the row, `left` elements
 *                           before its end (avx2: all of them, a constant)
 *     VF_STORE_ROW(p, m, v) the vector at p, through VF_ROW_MASK's m
 *     VF_STORE_SEG(p, n, room, v)    n lanes at p; lanes past n may be written too
 *                           where `room` elements follow p, for the next segment to overwrite
 *     VF_SEG_SPILLS         1 if VF_STORE_SEG may write past n (avx2): segments go in address order
 *
 * Masked-off lanes are never read, so a masked load may start left of a row or
 * end past it; its address is computed in integers (offset_ptr), since such a
 * pointer would be undefined in C.
 */
#ifndef CYCONV_SIMD_H
#define CYCONV_SIMD_H

#include <stddef.h>
#include <stdint.h>

#include "isa.h"

#if CYCONV_X86
#include <immintrin.h>

static inline const float *offset_ptr(const float *p, ptrdiff_t n)
{
    return (const float *)((uintptr_t)p + (uintptr_t)(n * (ptrdiff_t)sizeof(float)));
}

/* ---- avx512: 16 lanes ---- */

static inline __mmask16 v16_lanes(ptrdiff_t lo, ptrdiff_t hi)
{
    if (lo < 0) lo = 0;
    if (hi > 16) hi = 16;
    if (hi <= lo) return 0;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

static inline __mmask16 v16_head(ptrdiff_t n)
{
    return v16_lanes(0, n);
}

CYCONV_TARGET_AVX512 static inline __m512 v16_load(const float *p, ptrdiff_t off, __mmask16 m)
{
    return _mm512_maskz_loadu_ps(m, offset_ptr(p, off));
}

CYCONV_TARGET_AVX512 static inline void v16_store_seg(float *p, ptrdiff_t n, ptrdiff_t room, __m512 v)
{
    (void)room;
    _mm512_mask_storeu_ps(p, v16_head(n), v);
}

/* ---- avx2: 8 lanes ---- */

CYCONV_TARGET_AVX2 static inline __m256i v8_lanes(ptrdiff_t lo, ptrdiff_t hi)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    lo = lo < 0 ? 0 : lo > 8 ? 8 : lo;
    hi = hi < 0 ? 0 : hi > 8 ? 8 : hi;
    return _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)lo - 1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), lane));
}

CYCONV_TARGET_AVX2 static inline __m256i v8_head(ptrdiff_t n)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)), lane);
}

CYCONV_TARGET_AVX2 static inline __m256 v8_load(const float *p, ptrdiff_t off, __m256i m)
{
    return _mm256_maskload_ps(offset_ptr(p, off), m);
}

static inline ptrdiff_t v8_step(ptrdiff_t s, ptrdiff_t n)
{
    return s + 8 <= n ? s : n - 8;
}

CYCONV_TARGET_AVX2 static inline void v8_store_seg(float *p, ptrdiff_t n, ptrdiff_t room, __m256 v)
{
    if (room >= 8) /* not p + 8 <= end: that pointer may lie past the buffer */
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, v8_head(n), v);
}

CYCONV_TARGET_AVX2 static inline float v8_sum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#endif /* CYCONV_X86 */
#endif /* CYCONV_SIMD_H */

/* ---- the names for the pass being compiled (every include) ---- */
#undef VF_TIER
#undef VL
#undef vf
#undef vmask
#undef VF_ZERO
#undef VF_LANES
#undef VF_HEAD
#undef VF_LOAD
#undef VF_LOAD_IF
#undef VF_ADD
#undef VF_FMA
#undef VF_SUM
#undef VF_STEP
#undef VF_ROW_MASK
#undef VF_AND
#undef VF_MIN_ROW
#undef VF_STORE_ROW
#undef VF_STORE_SEG
#undef VF_SEG_SPILLS

#if CYCONV_X86 && defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX512
#define VF_TIER 1
#define VL 16
#define vf __m512
#define vmask __mmask16
#define VF_ZERO() _mm512_setzero_ps()
#define VF_LANES(lo, hi) v16_lanes(lo, hi)
#define VF_HEAD(n) v16_head(n)
#define VF_LOAD(p, off, m) v16_load(p, off, m)
#define VF_LOAD_IF(c, p, off, m) v16_load(p, off, (c) ? (m) : 0)
#define VF_ADD(a, b) _mm512_add_ps(a, b)
#define VF_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VF_SUM(v) _mm512_reduce_add_ps(v)
#define VF_AND(a, b) ((__mmask16)((a) & (b)))
#define VF_STEP(s, n) (s)
#define VF_MIN_ROW 1
#define VF_ROW_MASK(left) v16_head(left)
#define VF_STORE_ROW(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define VF_STORE_SEG(p, n, room, v) v16_store_seg(p, n, room, v)
#define VF_SEG_SPILLS 0
#elif CYCONV_X86 && defined(REAL_IS_FLOAT) && TIER == CYCONV_ISA_AVX2
#define VF_TIER 1
#define VL 8
#define vf __m256
#define vmask __m256i
#define VF_ZERO() _mm256_setzero_ps()
#define VF_LANES(lo, hi) v8_lanes(lo, hi)
#define VF_HEAD(n) v8_head(n)
#define VF_LOAD(p, off, m) v8_load(p, off, m)
#define VF_LOAD_IF(c, p, off, m) ((c) ? v8_load(p, off, m) : _mm256_setzero_ps())
#define VF_ADD(a, b) _mm256_add_ps(a, b)
#define VF_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VF_SUM(v) v8_sum(v)
#define VF_AND(a, b) _mm256_and_si256(a, b)
#define VF_STEP(s, n) v8_step(s, n)
#define VF_MIN_ROW 8
#define VF_ROW_MASK(left) ((void)(left), _mm256_set1_epi32(-1))
#define VF_STORE_ROW(p, m, v) ((void)(m), _mm256_storeu_ps(p, v))
#define VF_STORE_SEG(p, n, room, v) v8_store_seg(p, n, room, v)
#define VF_SEG_SPILLS 1
#else
#define VF_TIER 0
#endif
