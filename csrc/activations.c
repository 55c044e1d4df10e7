/*
 * Sigmoid and tanh on a contiguous run of elements, forward and backward.
 *
 *     sigmoid(x) = 1 / (1 + exp(-x))          d/dx = y * (1 - y)
 *     tanh(x)                                  d/dx = 1 - y * y
 *
 * Both backward passes take the forward's output y, not x (as PyTorch's do):
 * the layer keeps y and needs no second exp.
 *
 * float runs on exp_f32 below, a vectorisable exp (no libm call in the loop, so
 * the compiler vectorises it for each ISA tier): within 2 ulp of expf for
 * inputs in [-87.3, 88], clamped outside (so exp(-100) is 1.2e-38, not 0:
 * sigmoid(-100) comes out as 1e-38 where the exact value is 4e-44, and
 * sigmoid(100) as 1). tanh near 0 is an odd polynomial, where 1 - exp(-2|x|)
 * would cancel. double calls libm (exact to an ulp; it is not the speed path).
 * NaN propagates.
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cyconv.h"

/* exp(x): x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is exact,
 * Cody and Waite), exp(r) by Cephes' expf polynomial, 2^n written straight into
 * the exponent bits. n is rounded to nearest by adding and subtracting 1.5*2^23
 * (the build has -ffp-contract=off, so the two stay separate operations); the
 * sum's low mantissa bits are then n itself, so no float-to-int conversion is
 * needed. The clamps keep a NaN (a comparison with NaN is false), the polynomial
 * carries it to the result, and the garbage exponent bits of a NaN multiply a
 * NaN: no branch or select for it, which keeps the vectorised loop short. */
static inline float exp_f32(float x)
{
    float c = x < -87.3f ? -87.3f : x;
    c = c > 88.0f ? 88.0f : c;
    float t = c * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    uint32_t bits = (tb - 0x4B400000u + 127u) << 23; /* 0x4B400000: the bits of 1.5*2^23 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh: an odd polynomial below 0.625 (relative error < 1e-7, fitted on
 * Chebyshev nodes), (1 - t) / (1 + t) with t = exp(-2|x|) above. */
static inline float tanh_f32(float x)
{
    float a = x < 0 ? -x : x;
    float u = x * x;
    float p = -5.718891552e-03f;
    p = p * u + 2.065306394e-02f;
    p = p * u + -5.374464035e-02f;
    p = p * u + 1.333151247e-01f;
    p = p * u + -3.333328521e-01f;
    float small = x + x * (u * p);
    float t = exp_f32(-2.0f * a);
    float large = (1.0f - t) / (1.0f + t);
    large = x < 0 ? -large : large;
    return a < 0.625f ? small : x == x ? large : x;
}

#define CYCONV_TEMPLATE "activations.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(sigmoid_forward)(real *y, const real *x, ptrdiff_t n) { TIERED(sigmoid_forward)(y, x, n); }
void FN(sigmoid_backward)(real *dx, const real *dy, const real *y, ptrdiff_t n)
{
    TIERED(sigmoid_backward)(dx, dy, y, n);
}
void FN(tanh_forward)(real *y, const real *x, ptrdiff_t n) { TIERED(tanh_forward)(y, x, n); }
void FN(tanh_backward)(real *dx, const real *dy, const real *y, ptrdiff_t n)
{
    TIERED(tanh_backward)(dx, dy, y, n);
}

#else /* template body, per tier */

#ifdef REAL_IS_FLOAT
#define EXP_REAL exp_f32
#define TANH_REAL tanh_f32
#else
#define EXP_REAL exp
#define TANH_REAL tanh
#endif

TIER_FN void FN(sigmoid_forward)(real *restrict y, const real *restrict x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) y[i] = 1 / (1 + EXP_REAL(-x[i]));
}

TIER_FN void FN(sigmoid_backward)(real *restrict dx, const real *restrict dy, const real *restrict y, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) dx[i] = dy[i] * (y[i] * (1 - y[i]));
}

TIER_FN void FN(tanh_forward)(real *restrict y, const real *restrict x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) y[i] = TANH_REAL(x[i]);
}

TIER_FN void FN(tanh_backward)(real *restrict dx, const real *restrict dy, const real *restrict y, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) dx[i] = dy[i] * (1 - y[i] * y[i]);
}

#undef EXP_REAL
#undef TANH_REAL

#endif
