# common.pxi, included by _kernels.pyx. What every op family shares: the GEMM (cyconv's own, csrc/gemm.c, or
# BLAS), OpenBLAS held at one thread, im2col/col2im of one image (csrc/im2col.c), and the record of how a
# convolution's items were shared out among the threads (read by cyconv.kernels.threads).

# ---------------------------------------------------------------------------
# Float convolutions run their GEMMs on cyconv's own kernel (csrc/gemm.c, one
# micro-kernel per ISA tier: faster than OpenBLAS at LeNet's shapes);
# CYCONV_GEMM=blas, or set_own_gemm(False), keeps them on BLAS. The tests hold
# both paths to the reference. float64 always runs on BLAS.

cdef bint _own_gemm = os.environ.get("CYCONV_GEMM", "") != "blas"


def own_gemm_enabled():
    """True if float convolutions use cyconv's own GEMM rather than BLAS."""
    return _own_gemm


def set_own_gemm(bint enabled):
    """Use cyconv's own GEMM for float convolutions; returns the previous setting."""
    global _own_gemm
    previous = _own_gemm
    _own_gemm = enabled
    return previous


cdef float *packed_buffer(Py_ssize_t n) except NULL:
    cdef float *p = <float *>malloc(max(n, 1) * sizeof(float))
    if p == NULL:
        raise MemoryError(f"cannot allocate {n * sizeof(float)} bytes for packed GEMM operands")
    return p


cdef inline Py_ssize_t pack_panels(const cyconv_gemm *g, float *packed, const float *a, Py_ssize_t M,
                                   Py_ssize_t K, Py_ssize_t row_stride, Py_ssize_t col_stride,
                                   Py_ssize_t p) noexcept nogil:
    # Panel p of A (M,K), element (m,k) at a[m*row_stride + k*col_stride], packed
    # for the own GEMM g: the body of a prange over the panels, which the kernels
    # run inside their main parallel region (one wake-up of the threads, not two).
    cdef Py_ssize_t MR = g.mr
    gemm_pack_a_f32(g, packed + p * MR * K, a + p * MR * row_stride, min(MR, M - p * MR), K,
                    row_stride, col_stride)
    return 0


# ---------------------------------------------------------------------------
# BLAS threads. OpenBLAS (pthreads build) knows nothing of our OpenMP threads:
# called from two of them with a 2-thread pool of its own it would run 4 threads
# on 2 cores, and its idle workers spin for milliseconds after each call. So the
# OpenBLAS behind scipy.linalg.cython_blas is kept at one thread: every kernel
# checks, and sets it back to 1 if someone changed it. (Setting and restoring
# it around each call is worse: OpenBLAS starts and stops its workers each time.)
# The hook is a C pointer found once by cyconv.kernels.threads (via threadpoolctl), so
# the check costs nanoseconds.

ctypedef int (*blas_get_fn)() noexcept nogil
ctypedef void (*blas_set_fn)(int) noexcept nogil

cdef enum:
    MAX_BLAS_LIBS = 4
cdef blas_get_fn _blas_get[MAX_BLAS_LIBS]
cdef blas_set_fn _blas_set[MAX_BLAS_LIBS]
cdef int _n_blas = 0


def set_blas_thread_hooks(list hooks):
    """hooks: [(address of openblas_get_num_threads, address of ..._set_num_threads), ...]"""
    global _n_blas
    cdef size_t get_addr, set_addr
    _n_blas = 0
    for get_addr, set_addr in hooks[:MAX_BLAS_LIBS]:
        _blas_get[_n_blas] = <blas_get_fn>get_addr
        _blas_set[_n_blas] = <blas_set_fn>set_addr
        _n_blas += 1


cdef inline void blas_single_threaded() noexcept nogil:
    cdef int i
    for i in range(_n_blas):
        if _blas_get[i]() != 1:
            _blas_set[i](1)


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb,
                      floating beta, floating *C, int ldc) noexcept nogil:
    """Row-major C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C."""
    # Fortran BLAS is column-major. A row-major matrix is its column-major
    # transpose, so C^T = op(B)^T op(A)^T: swap the operands, keep the flags.
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if floating is float:
        sgemm(&ta, &tb, &N, &M, &K, &alpha, <float *>B, &ldb, <float *>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&ta, &tb, &N, &M, &K, &alpha, <double *>B, &ldb, <double *>A, &lda,
              &beta, C, &ldc)


cdef inline void gemv_t(int M, int N, const floating *A, int lda, const floating *x,
                        floating *y) noexcept nogil:
    """y (N,) = A^T x for a row-major A (N, M) with row stride lda (y = A @ x)."""
    # Row-major (N, M) is column-major (M, N): y = (col-major A)^T x.
    cdef char t = b'T'
    cdef int inc = 1
    cdef floating one = 1, zero = 0
    if floating is float:
        sgemv(&t, &M, &N, &one, <float *>A, &lda, <float *>x, &inc, &zero, y, &inc)
    else:
        dgemv(&t, &M, &N, &one, <double *>A, &lda, <double *>x, &inc, &zero, y, &inc)


cdef inline void im2col_image(floating *cols, Py_ssize_t col_ld, const floating *img,
                              Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw,
                              Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    if floating is float:
        im2col_f32(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
    else:
        im2col_f64(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)


cdef inline void col2im_image(floating *img, const floating *cols, Py_ssize_t col_ld,
                              Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw,
                              Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    if floating is float:
        col2im_f32(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
    else:
        col2im_f64(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)


# How many items each thread took in the last dynamically scheduled loop of a
# convolution (images forward, chunks of images backward): cyconv.kernels.threads reads
# it to notice threads that do not get their cores. Each thread writes its own
# entry; a call that overlapped another (two Python threads) reads a split that
# does not add up to its items, which cyconv.kernels.threads leaves out.
cdef enum:
    MAX_TRACKED_THREADS = 256
cdef Py_ssize_t _work_split[MAX_TRACKED_THREADS]


cdef inline void reset_work_split(int num_threads) noexcept nogil:
    cdef int t
    for t in range(min(num_threads, <int>MAX_TRACKED_THREADS)):
        _work_split[t] = 0


cdef inline void count_work(int t) noexcept nogil:
    if t < MAX_TRACKED_THREADS:
        _work_split[t] += 1


def last_work_split(int num_threads):
    """Items per thread in the last dynamically scheduled loop of a convolution."""
    return [_work_split[t] for t in range(min(num_threads, <int>MAX_TRACKED_THREADS))]


cdef inline Py_ssize_t block_start(Py_ssize_t n, int parts, int t) noexcept nogil:
    """Start of block t when n columns are split into `parts` blocks of a
    multiple of 16 (whole cache lines for float, and SIMD-sized)."""
    cdef Py_ssize_t size = ((n + parts - 1) // parts + 15) // 16 * 16
    return min(n, t * size)
