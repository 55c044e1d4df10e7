# pool.pxi, included by _kernels.pyx. Pooling: max (csrc/maxpool.c), average (csrc/avgpool.c), adaptive
# average (csrc/adaptive_avgpool.c). Twins: reference.max_pool2d, avg_pool2d, adaptive_avg_pool2d. Tests:
# tests/test_max_pool2d.py, test_avg_pool2d.py, test_adaptive_avg_pool2d.py.

# ---------------------------------------------------------------------------
# Max pooling: parallel over planes.

def maxpool2d_forward(floating[::1] y, int64_t[::1] indices, const floating[::1] x,
                      Py_ssize_t P, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                      bint relu, int num_threads):
    # OUT y (P,Ho,Wo), indices (P,Ho,Wo) or empty when not wanted; IN x (P,H,W)
    # relu: y = max_pool2d(relu(x)), indices still the argmax positions in x
    cdef Py_ssize_t L = Ho * Wo, p
    cdef bint want_indices = indices.shape[0] > 0
    cdef int64_t *ind
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            ind = &indices[p * L] if want_indices else NULL
            if floating is float:
                maxpool2d_forward_f32(&y[p * L], ind, &x[p * H * W],
                                      H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, relu)
            else:
                maxpool2d_forward_f64(&y[p * L], ind, &x[p * H * W],
                                      H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, relu)


def maxpool2d_backward(floating[::1] grad_x, const floating[::1] grad_y,
                       const int64_t[::1] indices, const floating[::1] relu_output,
                       Py_ssize_t P, Py_ssize_t HW, Py_ssize_t L, int num_threads):
    """Returns the number of out-of-range indices (skipped); the caller raises."""
    # OUT grad_x (P,HW); IN grad_y (P,L), indices (P,L),
    # relu_output (P,L) of a ReLU-fused forward (gradient dropped where <= 0) or empty
    cdef Py_ssize_t p, bad = 0
    cdef bint relu = relu_output.shape[0] > 0
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            if floating is float:
                bad += maxpool2d_backward_f32(&grad_x[p * HW], &grad_y[p * L], &indices[p * L],
                                              &relu_output[p * L] if relu else NULL, HW, L)
            else:
                bad += maxpool2d_backward_f64(&grad_x[p * HW], &grad_y[p * L], &indices[p * L],
                                              &relu_output[p * L] if relu else NULL, HW, L)
    return bad


# ---------------------------------------------------------------------------
# Average pooling: parallel over planes.

def avgpool2d_forward(floating[::1] y, const floating[::1] x, Py_ssize_t P, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                      Py_ssize_t Ho, Py_ssize_t Wo, bint count_include_pad, int num_threads):
    # OUT y (P,Ho,Wo); IN x (P,H,W)
    cdef Py_ssize_t L = Ho * Wo, p
    check_scratch("avgpool2d_forward", "y", y.shape[0], P * L)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            if floating is float:
                avgpool2d_forward_f32(&y[p * L], &x[p * H * W], H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                                      count_include_pad)
            else:
                avgpool2d_forward_f64(&y[p * L], &x[p * H * W], H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                                      count_include_pad)


def avgpool2d_backward(floating[::1] grad_x, const floating[::1] grad_y, Py_ssize_t P, Py_ssize_t H,
                       Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                       Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, bint count_include_pad, int num_threads):
    # OUT grad_x (P,H,W); IN grad_y (P,Ho,Wo)
    cdef Py_ssize_t L = Ho * Wo, p
    check_scratch("avgpool2d_backward", "grad_x", grad_x.shape[0], P * H * W)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            if floating is float:
                avgpool2d_backward_f32(&grad_x[p * H * W], &grad_y[p * L], H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                                       count_include_pad)
            else:
                avgpool2d_backward_f64(&grad_x[p * H * W], &grad_y[p * L], H, W, kh, kw, sh, sw, ph, pw, Ho, Wo,
                                       count_include_pad)


# ---------------------------------------------------------------------------
# Adaptive average pooling: parallel over planes.

def adaptive_avgpool2d_forward(floating[::1] y, const floating[::1] x, Py_ssize_t P, Py_ssize_t H, Py_ssize_t W,
                               Py_ssize_t Ho, Py_ssize_t Wo, int num_threads):
    # OUT y (P,Ho,Wo); IN x (P,H,W)
    cdef Py_ssize_t L = Ho * Wo, p
    check_scratch("adaptive_avgpool2d_forward", "y", y.shape[0], P * L)
    check_scratch("adaptive_avgpool2d_forward", "x", x.shape[0], P * H * W)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            if floating is float:
                adaptive_avg_pool2d_forward_f32(&y[p * L], &x[p * H * W], H, W, Ho, Wo)
            else:
                adaptive_avg_pool2d_forward_f64(&y[p * L], &x[p * H * W], H, W, Ho, Wo)


def adaptive_avgpool2d_backward(floating[::1] grad_x, const floating[::1] grad_y, Py_ssize_t P, Py_ssize_t H,
                                Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, int num_threads):
    # OUT grad_x (P,H,W); IN grad_y (P,Ho,Wo)
    cdef Py_ssize_t L = Ho * Wo, p
    check_scratch("adaptive_avgpool2d_backward", "grad_x", grad_x.shape[0], P * H * W)
    check_scratch("adaptive_avgpool2d_backward", "grad_y", grad_y.shape[0], P * L)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            if floating is float:
                adaptive_avg_pool2d_backward_f32(&grad_x[p * H * W], &grad_y[p * L], H, W, Ho, Wo)
            else:
                adaptive_avg_pool2d_backward_f64(&grad_x[p * H * W], &grad_y[p * L], H, W, Ho, Wo)
