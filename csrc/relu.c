/*
 * ReLU forward and backward on a contiguous run of elements, and the sum of two
 * runs with an optional ReLU (a residual block's Add -> ReLU in one pass).
 *
 * Forward is written as "x <= 0 ? 0 : x" rather than "x > 0 ? x : 0" so that a
 * NaN input stays NaN, as in PyTorch. Backward passes the gradient where x > 0
 * and gives 0 at the kink x == 0 (the subgradient PyTorch uses).
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h: the
 * compiler vectorises these loops for each tier.
 */
#ifndef real

#include "cyconv.h"

#define CYCONV_TEMPLATE "relu.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(relu_forward)(real *y, const real *x, ptrdiff_t n) { TIERED(relu_forward)(y, x, n); }
void FN(relu_backward)(real *dx, const real *dy, const real *x, ptrdiff_t n) { TIERED(relu_backward)(dx, dy, x, n); }
void FN(add_forward)(real *y, const real *a, const real *b, ptrdiff_t n, int relu)
{
    TIERED(add_forward)(y, a, b, n, relu);
}

#else /* template body, per tier */

TIER_FN void FN(relu_forward)(real *restrict y, const real *restrict x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] <= 0 ? 0 : x[i];
}

TIER_FN void FN(relu_backward)(real *restrict dx, const real *restrict dy, const real *restrict x,
                               ptrdiff_t n)
{
    /* dy is loaded unconditionally so the compiler can turn the select into a
     * vector blend (a conditional load would stop it vectorising: 30x slower). */
    for (ptrdiff_t i = 0; i < n; i++) {
        real g = dy[i];
        dx[i] = x[i] <= 0 ? 0 : g;
    }
}

/* y may be a or b (an in-place sum), so no restrict here. */
TIER_FN void FN(add_forward)(real *y, const real *a, const real *b, ptrdiff_t n, int relu)
{
    if (relu) {
        for (ptrdiff_t i = 0; i < n; i++) {
            real s = a[i] + b[i];
            y[i] = s <= 0 ? 0 : s;
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    }
}

#endif
