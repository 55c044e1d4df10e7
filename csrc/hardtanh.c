/*
 * Hardtanh forward and backward on a contiguous run of elements:
 * y = min(max(x, lo), hi), ReLU6 being lo = 0, hi = 6 (MobileNetV2).
 *
 * Forward keeps a NaN input NaN (both comparisons are false for NaN, so x
 * passes), as PyTorch does. Backward passes the gradient strictly inside
 * (lo, hi) and gives 0 at and beyond the bounds, as PyTorch's
 * hardtanh_backward; written as its "x <= lo || x >= hi ? 0 : dy", so a NaN x
 * passes the gradient, as there.
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h: the
 * compiler vectorises these loops for each tier.
 */
#ifndef real

#include "cyconv.h"

#define CYCONV_TEMPLATE "hardtanh.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(hardtanh_forward)(real *y, const real *x, ptrdiff_t n, real lo, real hi)
{
    TIERED(hardtanh_forward)(y, x, n, lo, hi);
}

void FN(hardtanh_backward)(real *dx, const real *dy, const real *x, ptrdiff_t n, real lo, real hi)
{
    TIERED(hardtanh_backward)(dx, dy, x, n, lo, hi);
}

#else /* template body, per tier */

TIER_FN void FN(hardtanh_forward)(real *restrict y, const real *restrict x, ptrdiff_t n, real lo, real hi)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        real v = x[i];
        v = v < lo ? lo : v;
        y[i] = v > hi ? hi : v;
    }
}

TIER_FN void FN(hardtanh_backward)(real *restrict dx, const real *restrict dy, const real *restrict x,
                                   ptrdiff_t n, real lo, real hi)
{
    /* dy loaded unconditionally, so the select becomes a vector blend (see relu.c) */
    for (ptrdiff_t i = 0; i < n; i++) {
        real g = dy[i];
        dx[i] = ((x[i] <= lo) | (x[i] >= hi)) ? 0 : g;
    }
}

#endif
