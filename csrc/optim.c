/*
 * The optimisers' steps: each updates one parameter array (and its state) in
 * place, in a single pass over memory.
 *
 * SGD (PyTorch's torch.optim.SGD without dampening or Nesterov):
 *
 *     g   = grad + weight_decay * p
 *     buf = g (first step) or momentum * buf + g      (only when buf != NULL)
 *     p  -= lr * (buf or g)
 *
 * Adam and AdamW (torch.optim.Adam / AdamW, without amsgrad), at step t:
 *
 *     g  = grad + weight_decay * p        (Adam: L2 penalty in the gradient)
 *     p  = p * (1 - lr * weight_decay)    (AdamW: decoupled decay, before the step)
 *     m  = beta1 * m + (1 - beta1) * g
 *     v  = beta2 * v + (1 - beta2) * g^2
 *     p -= step_size * m / (sqrt(v) / sqrt_bc2 + eps)
 *
 * with step_size = lr / (1 - beta1^t) and sqrt_bc2 = sqrt(1 - beta2^t), which
 * the caller computes once per step. PyTorch runs these as a chain of
 * whole-array operations (its "foreach" path: about ten passes over memory);
 * here they are one.
 *
 * The same operations in the same order as cyconv.reference.sgd_update and
 * adam_update, so the results are equal to the last bit (setup.py builds with
 * -ffp-contract=off: a fused multiply-add would round once where NumPy rounds
 * twice). Instantiated for float and double, and per ISA tier, by
 * instantiate.h.
 */
#ifndef real

#include <math.h>

#include "cyconv.h"

#define CYCONV_TEMPLATE "optim.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(sgd_update)(real *p, real *buf, const real *grad, ptrdiff_t n, real lr, real momentum,
                    real weight_decay, int first_step)
{
    TIERED(sgd_update)(p, buf, grad, n, lr, momentum, weight_decay, first_step);
}

void FN(adam_update)(real *p, real *m, real *v, const real *grad, ptrdiff_t n, real lr, real beta1,
                     real beta2, real eps, real weight_decay, int decoupled, real step_size, real sqrt_bc2)
{
    TIERED(adam_update)(p, m, v, grad, n, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, sqrt_bc2);
}

#else /* template body, per tier */

#undef REAL_SQRT
#ifdef REAL_IS_FLOAT
#define REAL_SQRT sqrtf
#else
#define REAL_SQRT sqrt
#endif

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

TIER_FN void FN(adam_update)(real *restrict p, real *restrict m, real *restrict v, const real *restrict grad,
                             ptrdiff_t n, real lr, real beta1, real beta2, real eps, real weight_decay,
                             int decoupled, real step_size, real sqrt_bc2)
{
    // p, m, v, grad are (n,)
    real decay = 1 - lr * weight_decay, one_minus_beta1 = 1 - beta1, one_minus_beta2 = 1 - beta2;
    if (decoupled || weight_decay == 0) {
        for (ptrdiff_t i = 0; i < n; i++) {
            real g = grad[i], q = decoupled ? p[i] * decay : p[i];
            real mi = m[i] * beta1 + g * one_minus_beta1;
            real vi = v[i] * beta2 + (g * g) * one_minus_beta2;
            m[i] = mi;
            v[i] = vi;
            p[i] = q - step_size * mi / (REAL_SQRT(vi) / sqrt_bc2 + eps);
        }
        return;
    }
    for (ptrdiff_t i = 0; i < n; i++) {
        real g = p[i] * weight_decay + grad[i];
        real mi = m[i] * beta1 + g * one_minus_beta1;
        real vi = v[i] * beta2 + (g * g) * one_minus_beta2;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - step_size * mi / (REAL_SQRT(vi) / sqrt_bc2 + eps);
    }
}

#endif
