/*
 * One SGD step on one parameter array, in place, in a single pass over memory
 * (PyTorch's torch.optim.SGD without dampening or Nesterov):
 *
 *     g   = grad + weight_decay * p
 *     buf = g (first step) or momentum * buf + g      (only when buf != NULL)
 *     p  -= lr * (buf or g)
 *
 * The same operations in the same order as cyconv.reference.sgd_update, so the
 * results are equal to the last bit (setup.py builds with -ffp-contract=off:
 * a fused multiply-add would round once where NumPy rounds twice).
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include "cyconv.h"

#define CYCONV_TEMPLATE "sgd.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(sgd_update)(real *p, real *buf, const real *grad, ptrdiff_t n, real lr, real momentum,
                    real weight_decay, int first_step)
{
    TIERED(sgd_update)(p, buf, grad, n, lr, momentum, weight_decay, first_step);
}

#else /* template body, per tier */

TIER_FN void FN(sgd_update)(real *restrict p, real *restrict buf, const real *restrict grad,
                                     ptrdiff_t n, real lr, real momentum, real weight_decay,
                                     int first_step)
{
    // p, grad and buf (may be NULL: no momentum) are (n,)
    for (ptrdiff_t i = 0; i < n; i++) {
        real g = weight_decay != 0 ? p[i] * weight_decay + grad[i] : grad[i];
        if (buf) {
            g = first_step ? g : buf[i] * momentum + g;
            buf[i] = g;
        }
        p[i] -= g * lr;
    }
}

#endif
