# activations.pxi, included by _kernels.pyx. Elementwise and row-wise ops: ReLU and add (csrc/relu.c), sigmoid
# and tanh (csrc/activations.c), hardtanh (csrc/hardtanh.c), softmax, dropout (csrc/dropout.c). Twins: the
# reference functions of the same names. Tests: tests/test_relu.py, test_sigmoid_tanh.py, test_hardtanh.py,
# test_softmax.py, test_dropout.py.

# ---------------------------------------------------------------------------
# ReLU: parallel over fixed-size blocks. Small arrays run on one thread, where
# waking the team would cost more than the work.

cdef enum:
    ELEMENTWISE_BLOCK = 16384  # elements per block of ReLU and sgd_update


def relu_forward(floating[::1] y, const floating[::1] x, int num_threads):
    # OUT y (n,); IN x (n,)
    cdef Py_ssize_t n = x.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            if floating is float:
                relu_forward_f32(&y[lo], &x[lo], min(ELEMENTWISE_BLOCK, n - lo))
            else:
                relu_forward_f64(&y[lo], &x[lo], min(ELEMENTWISE_BLOCK, n - lo))


def relu_backward(floating[::1] grad_x, const floating[::1] grad_y, const floating[::1] x,
                  int num_threads):
    # OUT grad_x (n,); IN grad_y (n,), x (n,)
    cdef Py_ssize_t n = x.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            if floating is float:
                relu_backward_f32(&grad_x[lo], &grad_y[lo], &x[lo], min(ELEMENTWISE_BLOCK, n - lo))
            else:
                relu_backward_f64(&grad_x[lo], &grad_y[lo], &x[lo], min(ELEMENTWISE_BLOCK, n - lo))


def add_forward(floating[::1] y, const floating[::1] a, const floating[::1] b, bint relu, int num_threads):
    # OUT y (n,) = a + b, then ReLU if relu; IN a (n,), b (n,)
    cdef Py_ssize_t n = a.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, blk, lo
    check_scratch("add_forward", "y", y.shape[0], n)
    check_scratch("add_forward", "b", b.shape[0], n)
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for blk in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = blk * ELEMENTWISE_BLOCK
            if floating is float:
                add_forward_f32(&y[lo], &a[lo], &b[lo], min(ELEMENTWISE_BLOCK, n - lo), relu)
            else:
                add_forward_f64(&y[lo], &a[lo], &b[lo], min(ELEMENTWISE_BLOCK, n - lo), relu)


# ---------------------------------------------------------------------------
# Sigmoid and tanh, like ReLU; backward from the forward's output y. `op`: 0 sigmoid, 1 tanh.

def saturating_forward(int op, floating[::1] y, const floating[::1] x, int num_threads):
    # OUT y (n,); IN x (n,)
    cdef Py_ssize_t n = x.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo, m
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            m = min(ELEMENTWISE_BLOCK, n - lo)
            if floating is float:
                if op == 0:
                    sigmoid_forward_f32(&y[lo], &x[lo], m)
                else:
                    tanh_forward_f32(&y[lo], &x[lo], m)
            else:
                if op == 0:
                    sigmoid_forward_f64(&y[lo], &x[lo], m)
                else:
                    tanh_forward_f64(&y[lo], &x[lo], m)


def saturating_backward(int op, floating[::1] grad_x, const floating[::1] grad_y, const floating[::1] y,
                        int num_threads):
    # OUT grad_x (n,); IN grad_y (n,), y (n,): the forward's output
    cdef Py_ssize_t n = y.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo, m
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            m = min(ELEMENTWISE_BLOCK, n - lo)
            if floating is float:
                if op == 0:
                    sigmoid_backward_f32(&grad_x[lo], &grad_y[lo], &y[lo], m)
                else:
                    tanh_backward_f32(&grad_x[lo], &grad_y[lo], &y[lo], m)
            else:
                if op == 0:
                    sigmoid_backward_f64(&grad_x[lo], &grad_y[lo], &y[lo], m)
                else:
                    tanh_backward_f64(&grad_x[lo], &grad_y[lo], &y[lo], m)


# ---------------------------------------------------------------------------
# Hardtanh (and ReLU6): parallel over fixed-size blocks, like ReLU.

def hardtanh_forward(floating[::1] y, const floating[::1] x, double lo, double hi, int num_threads):
    # OUT y (n,); IN x (n,); lo, hi rounded to x's dtype
    cdef Py_ssize_t n = x.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, start
    check_scratch("hardtanh_forward", "y", y.shape[0], n)
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            start = b * ELEMENTWISE_BLOCK
            if floating is float:
                hardtanh_forward_f32(&y[start], &x[start], min(ELEMENTWISE_BLOCK, n - start), <float>lo, <float>hi)
            else:
                hardtanh_forward_f64(&y[start], &x[start], min(ELEMENTWISE_BLOCK, n - start), lo, hi)


def hardtanh_backward(floating[::1] grad_x, const floating[::1] grad_y, const floating[::1] x, double lo,
                      double hi, int num_threads):
    # OUT grad_x (n,); IN grad_y (n,), x (n,)
    cdef Py_ssize_t n = x.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, start
    check_scratch("hardtanh_backward", "grad_x", grad_x.shape[0], n)
    check_scratch("hardtanh_backward", "grad_y", grad_y.shape[0], n)
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            start = b * ELEMENTWISE_BLOCK
            if floating is float:
                hardtanh_backward_f32(&grad_x[start], &grad_y[start], &x[start], min(ELEMENTWISE_BLOCK, n - start),
                                      <float>lo, <float>hi)
            else:
                hardtanh_backward_f64(&grad_x[start], &grad_y[start], &x[start], min(ELEMENTWISE_BLOCK, n - start),
                                      lo, hi)


# ---------------------------------------------------------------------------
# Softmax over the rows of (N, K) scores (functional.softmax / log_softmax, and the predictor's op).

cdef inline void softmax_row(floating *y, const floating *x, Py_ssize_t K, bint take_log) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating m = x[0], s = 0
    for k in range(1, K):
        if x[k] > m:
            m = x[k]
    for k in range(K):
        s = s + exp(x[k] - m)
    for k in range(K):
        y[k] = x[k] - m - log(s) if take_log else exp(x[k] - m) / s


def softmax_forward(floating[::1] y, const floating[::1] x, Py_ssize_t N, Py_ssize_t K, bint take_log,
                    int num_threads):
    # OUT y (N,K) = softmax (or log-softmax) of each row of x (N,K)
    cdef Py_ssize_t n
    check_scratch("softmax_forward", "x", x.shape[0], N * K)
    check_scratch("softmax_forward", "y", y.shape[0], N * K)
    if K == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            softmax_row(&y[n * K], &x[n * K], K, take_log)


# ---------------------------------------------------------------------------
# Dropout: parallel over fixed-size blocks, like ReLU; the mask is a hash of (seed, element index),
# so the blocks (and the thread count) do not change it. Forward and backward are this one map.

def dropout_apply(floating[::1] y, const floating[::1] x, unsigned long long seed, unsigned int threshold,
                  double scale, int num_threads):
    # OUT y (n,); IN x (n,); n < 2**32
    cdef Py_ssize_t n = x.shape[0], nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, b, lo, m
    cdef uint32_t k0, k1
    dropout_keys(seed, &k0, &k1)
    if nblocks < 2:
        num_threads = 1
    with nogil:
        for b in prange(nblocks, schedule='static', num_threads=num_threads):
            lo = b * ELEMENTWISE_BLOCK
            m = min(ELEMENTWISE_BLOCK, n - lo)
            if floating is float:
                dropout_apply_f32(&y[lo], &x[lo], m, <uint32_t>lo, k0, k1, threshold, <float>scale)
            else:
                dropout_apply_f64(&y[lo], &x[lo], m, <uint32_t>lo, k0, k1, threshold, scale)
