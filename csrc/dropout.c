/*
 * Dropout's mask, from a counter-based hash rather than a random-number stream:
 * element i of a call is kept when hash(seed, i) says so. The mask is then a
 * function of (seed, i) alone, so it is the same whatever the thread count or
 * the tier, the backward pass recomputes it instead of storing it, and the NumPy
 * twin (cyconv.reference.dropout) reproduces it bit for bit.
 *
 *     h    = mix32(mix32(i ^ k0) + k1)          k0, k1: the seed's two halves, mixed
 *     keep = (h >> 8) >= threshold               threshold = round(p * 2^24)
 *     y    = x * (keep ? scale : 0)              scale = 1 / (1 - p)
 *
 * mix32 is the "lowbias32" integer hash (C. Wellons, hash-prospector): two
 * rounds of it make every output bit depend on every bit of i and of the seed,
 * and it is 32-bit multiplies and shifts only, which every tier vectorises.
 * The top 24 bits of h give P(keep) = 1 - threshold / 2^24, p to within 3e-8.
 * Multiplying (rather than selecting) keeps PyTorch's NaN semantics: a dropped
 * NaN stays NaN. The backward pass is the same function applied to dy.
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include <stdint.h>

#include "cyconv.h"

static inline uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

void dropout_keys(uint64_t seed, uint32_t *k0, uint32_t *k1)
{
    *k0 = mix32((uint32_t)seed ^ 0x9e3779b9U);
    *k1 = mix32((uint32_t)(seed >> 32) ^ 0x85ebca6bU);
}

#define CYCONV_TEMPLATE "dropout.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(dropout_apply)(real *y, const real *x, ptrdiff_t n, uint32_t start, uint32_t k0, uint32_t k1,
                       uint32_t threshold, real scale)
{
    TIERED(dropout_apply)(y, x, n, start, k0, k1, threshold, scale);
}

#else /* template body, per tier */

TIER_FN void FN(dropout_apply)(real *restrict y, const real *restrict x, ptrdiff_t n, uint32_t start,
                               uint32_t k0, uint32_t k1, uint32_t threshold, real scale)
{
    // x, y are elements start .. start + n - 1 of the call's array
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t h = mix32(mix32((start + (uint32_t)i) ^ k0) + k1);
        y[i] = x[i] * ((h >> 8) >= threshold ? scale : (real)0);
    }
}

#endif
