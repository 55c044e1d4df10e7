# optim.pxi, included by _kernels.pyx. Optimiser updates: SGD and Adam(W) (csrc/optim.c). Twins:
# reference.sgd_update, adam_update. Tests: tests/test_sgd_update.py, test_adam_update.py.

# ---------------------------------------------------------------------------
# SGD update: parallel over fixed-size blocks of the parameter, like ReLU.

def sgd_update(floating[::1] param, floating[::1] momentum_buffer, const floating[::1] grad,
               double lr, double momentum, double weight_decay, bint first_step, int num_threads):
    # INOUT param (n,), momentum_buffer (n,) or empty for plain SGD; IN grad (n,)
    cdef Py_ssize_t n = param.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo
    cdef bint has_buf = momentum_buffer.shape[0] > 0
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            if floating is float:
                sgd_update_f32(&param[lo], &momentum_buffer[lo] if has_buf else NULL, &grad[lo],
                               min(ELEMENTWISE_BLOCK, n - lo), <float>lr, <float>momentum,
                               <float>weight_decay, first_step)
            else:
                sgd_update_f64(&param[lo], &momentum_buffer[lo] if has_buf else NULL, &grad[lo],
                               min(ELEMENTWISE_BLOCK, n - lo), lr, momentum, weight_decay, first_step)



def adam_update(floating[::1] param, floating[::1] exp_avg, floating[::1] exp_avg_sq, const floating[::1] grad,
                double lr, double beta1, double beta2, double eps, double weight_decay, bint decoupled,
                double step_size, double sqrt_bc2, int num_threads):
    # INOUT param, exp_avg, exp_avg_sq (n,); IN grad (n,)
    cdef Py_ssize_t n = param.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo, m
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            m = min(ELEMENTWISE_BLOCK, n - lo)
            if floating is float:
                adam_update_f32(&param[lo], &exp_avg[lo], &exp_avg_sq[lo], &grad[lo], m, <float>lr, <float>beta1,
                                <float>beta2, <float>eps, <float>weight_decay, decoupled, <float>step_size,
                                <float>sqrt_bc2)
            else:
                adam_update_f64(&param[lo], &exp_avg[lo], &exp_avg_sq[lo], &grad[lo], m, lr, beta1, beta2, eps,
                                weight_decay, decoupled, step_size, sqrt_bc2)
