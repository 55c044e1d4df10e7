# batchnorm.pxi, included by _kernels.pyx. Batch normalisation (csrc/batchnorm.c). Twin: reference.batch_norm.
# Tests: tests/test_batch_norm.py.

# ---------------------------------------------------------------------------
# Batch normalisation on (N, C, L): statistics and sums parallel over channels (each channel's
# sums by one thread, in a fixed order: the thread count does not change them), the per-channel
# affine maps parallel over images. With L == 1 (BatchNorm1d) a channel is a column, so the
# statistics take blocks of BN_COLUMN_BLOCK channels and run along the rows.

cdef enum:
    BN_COLUMN_BLOCK = 64


cdef inline Py_ssize_t bn_channel_block(Py_ssize_t L) noexcept nogil:
    return BN_COLUMN_BLOCK if L == 1 else 1


def batchnorm_stats(double[::1] mean, double[::1] var, const floating[::1] x, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t L, int num_threads):
    # OUT mean, var (C,): biased; IN x (N, C, L)
    cdef Py_ssize_t cb = bn_channel_block(L), b, c0
    check_scratch("batchnorm_stats", "mean", mean.shape[0], C)
    check_scratch("batchnorm_stats", "var", var.shape[0], C)
    check_scratch("batchnorm_stats", "x", x.shape[0], N * C * L)
    with nogil:
        for b in prange((C + cb - 1) // cb, schedule='dynamic', num_threads=num_threads):
            c0 = b * cb
            if floating is float:
                batchnorm_stats_f32(&mean[0], &var[0], &x[0], N, C, L, c0, min(C, c0 + cb))
            else:
                batchnorm_stats_f64(&mean[0], &var[0], &x[0], N, C, L, c0, min(C, c0 + cb))


def batchnorm_backward_sums(double[::1] sum_dy, double[::1] sum_dy_xmu, const floating[::1] grad_y,
                            const floating[::1] x, const floating[::1] mean, Py_ssize_t N, Py_ssize_t C,
                            Py_ssize_t L, int num_threads):
    # OUT sum_dy, sum_dy_xmu (C,); IN grad_y, x (N, C, L), mean (C,)
    cdef Py_ssize_t cb = bn_channel_block(L), b, c0
    check_scratch("batchnorm_backward_sums", "sum_dy", sum_dy.shape[0], C)
    check_scratch("batchnorm_backward_sums", "sum_dy_xmu", sum_dy_xmu.shape[0], C)
    check_scratch("batchnorm_backward_sums", "mean", mean.shape[0], C)
    check_scratch("batchnorm_backward_sums", "grad_y", grad_y.shape[0], N * C * L)
    check_scratch("batchnorm_backward_sums", "x", x.shape[0], N * C * L)
    with nogil:
        for b in prange((C + cb - 1) // cb, schedule='dynamic', num_threads=num_threads):
            c0 = b * cb
            if floating is float:
                batchnorm_backward_sums_f32(&sum_dy[0], &sum_dy_xmu[0], &grad_y[0], &x[0], &mean[0], N, C, L, c0,
                                            min(C, c0 + cb))
            else:
                batchnorm_backward_sums_f64(&sum_dy[0], &sum_dy_xmu[0], &grad_y[0], &x[0], &mean[0], N, C, L, c0,
                                            min(C, c0 + cb))


def channel_affine(floating[::1] y, const floating[::1] x, const floating[::1] a, const floating[::1] b,
                   Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, int num_threads):
    # OUT y (N, C, L) = x * a[c] + b[c]; IN x (N, C, L), a, b (C,)
    cdef Py_ssize_t n
    check_scratch("channel_affine", "y", y.shape[0], N * C * L)
    check_scratch("channel_affine", "x", x.shape[0], N * C * L)
    check_scratch("channel_affine", "a", a.shape[0], C)
    check_scratch("channel_affine", "b", b.shape[0], C)
    if N * C * L == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            if floating is float:
                channel_affine_f32(&y[0], &x[0], &a[0], &b[0], C, L, n, n + 1)
            else:
                channel_affine_f64(&y[0], &x[0], &a[0], &b[0], C, L, n, n + 1)


def channel_affine_grad(floating[::1] grad_x, const floating[::1] grad_y, const floating[::1] x,
                        const floating[::1] a, const floating[::1] b, const floating[::1] d, Py_ssize_t N,
                        Py_ssize_t C, Py_ssize_t L, int num_threads):
    # OUT grad_x (N, C, L) = grad_y * a[c] + (x * b[c] + d[c]); IN grad_y, x (N, C, L), a, b, d (C,)
    cdef Py_ssize_t n
    check_scratch("channel_affine_grad", "grad_x", grad_x.shape[0], N * C * L)
    check_scratch("channel_affine_grad", "grad_y", grad_y.shape[0], N * C * L)
    check_scratch("channel_affine_grad", "x", x.shape[0], N * C * L)
    check_scratch("channel_affine_grad", "a", a.shape[0], C)
    check_scratch("channel_affine_grad", "b", b.shape[0], C)
    check_scratch("channel_affine_grad", "d", d.shape[0], C)
    if N * C * L == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            if floating is float:
                channel_affine_grad_f32(&grad_x[0], &grad_y[0], &x[0], &a[0], &b[0], &d[0], C, L, n, n + 1)
            else:
                channel_affine_grad_f64(&grad_x[0], &grad_y[0], &x[0], &a[0], &b[0], &d[0], C, L, n, n + 1)
