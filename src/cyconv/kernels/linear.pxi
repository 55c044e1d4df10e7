# linear.pxi, included by _kernels.pyx. The linear layer (BLAS or csrc/gemm.c). Twin: reference.linear. Tests:
# tests/test_linear.py.

# ---------------------------------------------------------------------------
# Linear layer: each GEMM split into fixed blocks of LINEAR_BLOCK output columns
# (input columns for grad_x), each a single-threaded BLAS call, handed to the
# threads as they come free. The blocks do not depend on the thread count, so
# neither do the results. Running these through our own team (rather than
# NumPy's multi-threaded BLAS) keeps one thread pool on the cores: OpenBLAS's
# idle workers spin for milliseconds after each call and would steal the core
# from the next OpenMP kernel.

cdef enum:
    LINEAR_GEMV_MAX_ROWS = 4
    LINEAR_BLOCK = 256  # columns per BLAS call: big enough that packing x per call costs ~nothing


def linear_forward(floating[::1] y, const floating[::1] x, const floating[::1] weight,
                   const floating[::1] bias, Py_ssize_t N, Py_ssize_t IN, Py_ssize_t OUT,
                   int num_threads):
    # OUT y (N,OUT); IN x (N,IN), weight (OUT,IN), bias (OUT,) or empty
    cdef bint has_bias = bias.shape[0] > 0
    cdef Py_ssize_t b, blocks = (OUT + LINEAR_BLOCK - 1) // LINEAR_BLOCK
    with nogil:
        blas_single_threaded()
        for b in prange(blocks, schedule='dynamic', num_threads=min(num_threads, blocks)):
            linear_block(&y[0], &x[0], &weight[0], &bias[0] if has_bias else NULL, N, IN, OUT, b)


cdef inline void linear_block(floating *y, const floating *x, const floating *weight, const floating *bias,
                              Py_ssize_t N, Py_ssize_t IN, Py_ssize_t OUT, Py_ssize_t b) noexcept nogil:
    # Block b of the linear layer: y[:, o0:o1] = x (N,IN) @ weight[o0:o1].T (+ bias[o0:o1]),
    # o0 = b * LINEAR_BLOCK; bias may be NULL.
    cdef Py_ssize_t n, o0 = b * LINEAR_BLOCK, o1 = min(OUT, b * LINEAR_BLOCK + LINEAR_BLOCK)
    if N <= LINEAR_GEMV_MAX_ROWS:
        # A few rows (inference on a few images): one matrix-vector product per row. GEMM
        # would first pack (copy) the whole weight, which costs more than the product (10x at N=1).
        for n in range(N):
            gemv_t(<int>IN, <int>(o1 - o0), weight + o0 * IN, <int>IN, x + n * IN, y + n * OUT + o0)
    else:
        gemm(False, True, <int>N, <int>(o1 - o0), <int>IN, 1, x, <int>IN, weight + o0 * IN, <int>IN, 0,
             y + o0, <int>OUT)
    if bias != NULL:
        for n in range(N):
            add_bias_row(y + n * OUT + o0, bias + o0, o1 - o0)


cdef inline void linear_block_wt(const cyconv_gemm *g, float *y, const float *x, const float *xpack,
                                 const float *weight_t, const float *bias, Py_ssize_t N, Py_ssize_t IN,
                                 Py_ssize_t OUT, Py_ssize_t b) noexcept nogil:
    # Block b of the compiled linear layer: y[:, o0:o1] = x (N,IN) @ weight_t[:, o0:o1] (+ bias), weight_t
    # (IN,OUT) the weight transposed at compile; the whole panels of images from xpack (packed), the rest
    # row by row: both compute each element alike, so an image's outputs do not depend on its batch.
    cdef Py_ssize_t o0 = b * LINEAR_BLOCK, o1 = min(OUT, b * LINEAR_BLOCK + LINEAR_BLOCK), n
    cdef Py_ssize_t whole = N // g.mr * g.mr
    if whole:
        gemm_packed_f32(g, whole, o1 - o0, IN, xpack, weight_t + o0, OUT, y + o0, OUT, NULL, 0)
    if N > whole:
        gemm_rows_f32(g, N - whole, o1 - o0, IN, x + whole * IN, IN, weight_t + o0, OUT, y + whole * OUT + o0, OUT)
    if bias != NULL:
        for n in range(N):
            add_bias_row(y + n * OUT + o0, bias + o0, o1 - o0)


cdef inline void add_bias_row(floating *y, const floating *bias, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] += bias[i]


def linear_backward(floating[::1] grad_x, floating[::1] grad_weight, floating[::1] grad_bias,
                    const floating[::1] grad_y, const floating[::1] x,
                    const floating[::1] weight, Py_ssize_t N, Py_ssize_t IN, Py_ssize_t OUT,
                    bint need_grad_x, bint accumulate, int num_threads):
    # OUT grad_x (N,IN) (empty if not need_grad_x), grad_weight (OUT,IN), grad_bias (OUT,):
    # overwritten, or added into if accumulate
    # IN grad_y (N,OUT), x (N,IN), weight (OUT,IN)
    cdef Py_ssize_t n, o, o0, o1, i0, i1, b
    cdef Py_ssize_t out_blocks = (OUT + LINEAR_BLOCK - 1) // LINEAR_BLOCK
    cdef Py_ssize_t in_blocks = (IN + LINEAR_BLOCK - 1) // LINEAR_BLOCK if need_grad_x else 0
    cdef floating s
    with nogil:
        blas_single_threaded()
        for b in prange(out_blocks + in_blocks, schedule='dynamic',
                        num_threads=min(num_threads, out_blocks + in_blocks)):
            if b < out_blocks:
                # weight-gradient GEMM: grad_weight[o0:o1] = grad_y[:, o0:o1].T @ x
                o0 = b * LINEAR_BLOCK
                o1 = min(OUT, o0 + LINEAR_BLOCK)
                gemm(True, False, <int>(o1 - o0), <int>IN, <int>N, 1, &grad_y[o0], <int>OUT,
                     &x[0], <int>IN, 1 if accumulate else 0, &grad_weight[o0 * IN], <int>IN)
                for o in range(o0, o1):
                    s = grad_bias[o] if accumulate else 0
                    for n in range(N):
                        s = s + grad_y[n * OUT + o]
                    grad_bias[o] = s
            else:
                # input-gradient GEMM: grad_x[:, i0:i1] = grad_y @ weight[:, i0:i1]
                i0 = (b - out_blocks) * LINEAR_BLOCK
                i1 = min(IN, i0 + LINEAR_BLOCK)
                gemm(False, False, <int>N, <int>(i1 - i0), <int>OUT, 1, &grad_y[0], <int>OUT,
                     &weight[i0], <int>IN, 0, &grad_x[i0], <int>IN)
