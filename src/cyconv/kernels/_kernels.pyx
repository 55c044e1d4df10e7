# cython: language_level=3
"""Compiled kernels: the OpenMP loops around csrc/ and the BLAS calls.

Prior validation assumed: every function here trusts its arguments. The Python
layer (cyconv.functional) has checked shapes and dtypes, made every array
C-contiguous and flat (1-D views), allocated the outputs and per-thread
scratch, and resolved the thread count. Arrays are labelled OUT / IN / SCRATCH.

Parallel loops run over the axis that owns the writes (images, or planes), so
there are no atomics; the weight gradient uses one accumulator per thread,
summed in thread order at the end. Everything runs with the GIL released.

The GEMMs are SciPy's BLAS (scipy.linalg.cython_blas), called from inside our
OpenMP threads on one image (or one column block) at a time, with OpenBLAS
kept single-threaded (see blas_single_threaded), so only one thread pool, ours,
ever runs on the cores.
"""

import os

import numpy as np

from cython.parallel cimport parallel, prange, threadid
from libc.math cimport exp, log
from libc.stdint cimport int64_t, uint32_t
from libc.stdlib cimport malloc, free
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

ctypedef fused floating:
    float
    double

cdef extern from "openmp_shim.h" nogil:
    int cyconv_openmp_enabled()
    int cyconv_omp_max_threads()

cdef extern from "cyconv.h" nogil:
    void im2col_f32(float *cols, Py_ssize_t col_ld, const float *img,
                    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void im2col_f64(double *cols, Py_ssize_t col_ld, const double *img,
                    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void col2im_f32(float *img, const float *cols, Py_ssize_t col_ld,
                    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void col2im_f64(double *img, const double *cols, Py_ssize_t col_ld,
                    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void maxpool2d_forward_f32(float *y, int64_t *ind, const float *x,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                               Py_ssize_t Ho, Py_ssize_t Wo, int relu) noexcept
    void maxpool2d_forward_f64(double *y, int64_t *ind, const double *x,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                               Py_ssize_t Ho, Py_ssize_t Wo, int relu) noexcept
    Py_ssize_t maxpool2d_backward_f32(float *dx, const float *dy, const int64_t *ind,
                                      const float *y, Py_ssize_t HW, Py_ssize_t L) noexcept
    Py_ssize_t maxpool2d_backward_f64(double *dx, const double *dy, const int64_t *ind,
                                      const double *y, Py_ssize_t HW, Py_ssize_t L) noexcept
    void relu_forward_f32(float *y, const float *x, Py_ssize_t n) noexcept
    void relu_forward_f64(double *y, const double *x, Py_ssize_t n) noexcept
    void relu_backward_f32(float *dx, const float *dy, const float *x, Py_ssize_t n) noexcept
    void relu_backward_f64(double *dx, const double *dy, const double *x, Py_ssize_t n) noexcept
    void add_forward_f32(float *y, const float *a, const float *b, Py_ssize_t n, int relu) noexcept
    void add_forward_f64(double *y, const double *a, const double *b, Py_ssize_t n, int relu) noexcept
    void sgd_update_f32(float *p, float *buf, const float *grad, Py_ssize_t n,
                        float lr, float momentum, float weight_decay, int first_step) noexcept
    void sgd_update_f64(double *p, double *buf, const double *grad, Py_ssize_t n,
                        double lr, double momentum, double weight_decay, int first_step) noexcept
    void sigmoid_forward_f32(float *y, const float *x, Py_ssize_t n) noexcept
    void sigmoid_forward_f64(double *y, const double *x, Py_ssize_t n) noexcept
    void sigmoid_backward_f32(float *dx, const float *dy, const float *y, Py_ssize_t n) noexcept
    void sigmoid_backward_f64(double *dx, const double *dy, const double *y, Py_ssize_t n) noexcept
    void tanh_forward_f32(float *y, const float *x, Py_ssize_t n) noexcept
    void tanh_forward_f64(double *y, const double *x, Py_ssize_t n) noexcept
    void tanh_backward_f32(float *dx, const float *dy, const float *y, Py_ssize_t n) noexcept
    void tanh_backward_f64(double *dx, const double *dy, const double *y, Py_ssize_t n) noexcept
    void avgpool2d_forward_f32(float *y, const float *x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                               Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                               Py_ssize_t Ho, Py_ssize_t Wo, int count_include_pad) noexcept
    void avgpool2d_forward_f64(double *y, const double *x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                               Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                               Py_ssize_t Ho, Py_ssize_t Wo, int count_include_pad) noexcept
    void avgpool2d_backward_f32(float *dx, const float *dy, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                                Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                Py_ssize_t Ho, Py_ssize_t Wo, int count_include_pad) noexcept
    void avgpool2d_backward_f64(double *dx, const double *dy, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                                Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                Py_ssize_t Ho, Py_ssize_t Wo, int count_include_pad) noexcept
    void add_bias_f32(float *y, Py_ssize_t ldy, const float *bias, Py_ssize_t O, Py_ssize_t L) noexcept
    void add_bias_f64(double *y, Py_ssize_t ldy, const double *bias, Py_ssize_t O, Py_ssize_t L) noexcept
    void accumulate_row_sums_f32(float *acc, const float *dy, Py_ssize_t O, Py_ssize_t L) noexcept
    void accumulate_row_sums_f64(double *acc, const double *dy, Py_ssize_t O, Py_ssize_t L) noexcept
    ctypedef struct cyconv_gemm:
        Py_ssize_t mr
    const cyconv_gemm *gemm_kernel() noexcept
    const cyconv_gemm *gemm_kernel_for(int isa) noexcept
    Py_ssize_t gemm_packed_size(const cyconv_gemm *g, Py_ssize_t M, Py_ssize_t K) noexcept
    void gemm_pack_a_f32(const cyconv_gemm *g, float *packed, const float *a, Py_ssize_t M, Py_ssize_t K,
                         Py_ssize_t row_stride, Py_ssize_t col_stride) noexcept
    void gemm_packed_f32(const cyconv_gemm *g, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                         const float *packed_a, const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc,
                         const float *bias, int accumulate) noexcept
    void gemm_rows_f32(const cyconv_gemm *g, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float *a,
                       Py_ssize_t lda, const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc) noexcept
    int conv_weight_grad_direct_fits(Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t kw, Py_ssize_t Ho,
                                     Py_ssize_t Wo) noexcept
    void conv_weight_grad_direct_f32(float *dw, const float *dy, const float *xp, Py_ssize_t O,
                                     Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t kh,
                                     Py_ssize_t kw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void pad_image_f32(float *padded, const float *img, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t ph, Py_ssize_t pw) noexcept
    void im2row_f32(float *rows, const float *img, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                    Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void adam_update_f32(float *p, float *m, float *v, const float *grad, Py_ssize_t n, float lr, float beta1,
                         float beta2, float eps, float weight_decay, int decoupled, float step_size,
                         float sqrt_bc2) noexcept
    void adam_update_f64(double *p, double *m, double *v, const double *grad, Py_ssize_t n, double lr,
                         double beta1, double beta2, double eps, double weight_decay, int decoupled,
                         double step_size, double sqrt_bc2) noexcept
    void dropout_keys(unsigned long long seed, uint32_t *k0, uint32_t *k1) noexcept
    void dropout_apply_f32(float *y, const float *x, Py_ssize_t n, uint32_t start, uint32_t k0, uint32_t k1,
                           uint32_t threshold, float scale) noexcept
    void dropout_apply_f64(double *y, const double *x, Py_ssize_t n, uint32_t start, uint32_t k0, uint32_t k1,
                           uint32_t threshold, double scale) noexcept
    void batchnorm_stats_f32(double *mean, double *var, const float *x, Py_ssize_t N, Py_ssize_t C,
                             Py_ssize_t L, Py_ssize_t c0, Py_ssize_t c1) noexcept
    void batchnorm_stats_f64(double *mean, double *var, const double *x, Py_ssize_t N, Py_ssize_t C,
                             Py_ssize_t L, Py_ssize_t c0, Py_ssize_t c1) noexcept
    void batchnorm_backward_sums_f32(double *sum_dy, double *sum_dy_xmu, const float *dy, const float *x,
                                     const float *mean, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c0,
                                     Py_ssize_t c1) noexcept
    void batchnorm_backward_sums_f64(double *sum_dy, double *sum_dy_xmu, const double *dy, const double *x,
                                     const double *mean, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept
    void channel_affine_f32(float *y, const float *x, const float *a, const float *b, Py_ssize_t C,
                            Py_ssize_t L, Py_ssize_t n0, Py_ssize_t n1) noexcept
    void channel_affine_f64(double *y, const double *x, const double *a, const double *b, Py_ssize_t C,
                            Py_ssize_t L, Py_ssize_t n0, Py_ssize_t n1) noexcept
    void channel_affine_grad_f32(float *dx, const float *dy, const float *x, const float *a, const float *b,
                                 const float *d, Py_ssize_t C, Py_ssize_t L, Py_ssize_t n0, Py_ssize_t n1) noexcept
    void channel_affine_grad_f64(double *dx, const double *dy, const double *x, const double *a,
                                 const double *b, const double *d, Py_ssize_t C, Py_ssize_t L, Py_ssize_t n0,
                                 Py_ssize_t n1) noexcept


cdef extern from "isa.h" nogil:
    int cyconv_get_isa() noexcept
    int cyconv_isa_supported(int isa) noexcept
    int cyconv_set_isa(int isa) noexcept
    const char *cyconv_compiler() noexcept


def isa_supported(int isa):
    """True if this build has ISA tier `isa` (0 generic, 1 avx2, 2 avx512) and the CPU runs it."""
    return bool(cyconv_isa_supported(isa))


def get_isa():
    """The ISA tier the kernels run with (0 generic, 1 avx2, 2 avx512)."""
    return cyconv_get_isa()


def set_isa(int isa):
    """Run the kernels with tier `isa`; returns False (nothing changed) if it is not supported."""
    return cyconv_set_isa(isa) == 0


def compiler():
    """The C compiler that built the kernels, e.g. 'gcc 12.2.0'."""
    return cyconv_compiler().decode()


def openmp_enabled():
    """True if this build runs its kernels with OpenMP."""
    return bool(cyconv_openmp_enabled())


def team_size(int num_threads):
    """How many threads a parallel region asking for num_threads (>= 1) really runs on."""
    cdef int[::1] ran = np.zeros(max(num_threads, 1), np.intc)
    with nogil, parallel(num_threads=num_threads):
        ran[threadid()] = 1
    return int(np.sum(ran))


def omp_max_threads():
    """The OpenMP runtime's default team size (1 in a serial build)."""
    return cyconv_omp_max_threads()


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
# The hook is a C pointer found once by cyconv._threads (via threadpoolctl), so
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
# convolution (images forward, chunks of images backward): cyconv._threads reads
# it to notice threads that do not get their cores. Each thread writes its own
# entry; a call that overlapped another (two Python threads) reads a split that
# does not add up to its items, which cyconv._threads leaves out.
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


# ---------------------------------------------------------------------------
# Convolution: per image, im2col into this thread's scratch (it stays in
# cache), then the GEMM. A 1x1 kernel with stride 1 and no padding is already
# its own im2col, so the image is used directly. conv2d_forward and
# conv2d_relu_max_pool2d_forward (the fused op) share the per-image body,
# conv_image; their backward passes share conv_image_backward and one driver.
# Each checks the sizes of the scratch it is handed: a caller that sized it
# wrong gets an exception, not a heap overwrite.

cdef const int64_t[::1] _NO_INDICES = np.empty(0, np.int64)  # conv2d_backward has no pooling


cdef inline bint direct_conv(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                             Py_ssize_t pw) noexcept nogil:
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0


cdef int check_scratch(str kernel, str name, Py_ssize_t given, Py_ssize_t needed) except -1:
    if given < needed:
        raise ValueError(f"{kernel}: {name} has {given} elements, needs {needed} (a sizing bug in the caller)")
    return 0


cdef inline void conv_image(const cyconv_gemm *g, const float *packed_w, floating *out, floating *cols_buf,
                            const floating *img, const floating *weight, const floating *bias,
                            Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    # out (O, Ho*Wo) = the convolution of one image img (C,H,W) (+ bias, or NULL);
    # cols_buf: this thread's im2col scratch (C*kh*kw, Ho*Wo), unused by a direct 1x1 kernel
    cdef Py_ssize_t K = C * kh * kw, L = Ho * Wo
    cdef const floating *cols = img
    if not direct_conv(kh, kw, sh, sw, ph, pw):
        im2col_image(cols_buf, L, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
        cols = cols_buf
    conv_output_gemm(g, packed_w, O, L, K, weight, cols, L, out, L, bias)


cdef float *packed_weights(const cyconv_gemm *g, Py_ssize_t M, Py_ssize_t K, Py_ssize_t *panels) except? NULL:
    # A buffer for the float weights packed for the own GEMM (free() it), or NULL on the
    # BLAS path; *panels: how many panels a prange must pack into it.
    panels[0] = 0
    if not _own_gemm:
        return NULL
    panels[0] = (M + g.mr - 1) // g.mr
    return packed_buffer(gemm_packed_size(g, M, K))


def conv2d_forward(floating[::1] y, const floating[::1] x, const floating[::1] weight,
                   const floating[::1] bias, floating[::1] scratch,
                   Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                   Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                   int num_threads):
    # OUT y (N,O,Ho,Wo); IN x (N,C,H,W), weight (O,C*kh*kw), bias (O,) or empty;
    # SCRATCH (min(num_threads, N), C*kh*kw*Ho*Wo), empty for a direct 1x1 kernel.
    # Fewer images than threads (inference on one image): each image's GEMM is
    # split into column blocks across the threads instead, so all cores work.
    cdef Py_ssize_t K = C * kh * kw, L = Ho * Wo, n, l0, l1, c0, c1, panels = 0, p
    cdef bint direct = direct_conv(kh, kw, sh, sw, ph, pw)
    cdef const floating *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef const floating *cols
    cdef int t
    check_scratch("conv2d_forward", "scratch", scratch.shape[0],
                  0 if direct or N == 0 else min(num_threads, N) * K * L)
    check_scratch("conv2d_forward", "y", y.shape[0], N * O * L)
    cdef const cyconv_gemm *g = gemm_kernel()  # once per call: the packing depends on its tier
    cdef float *packed_w = NULL  # own GEMM: the weights packed once for every image
    if floating is float:
        if N > 0:
            packed_w = packed_weights(g, O, K, &panels)
    try:
        with nogil:
            blas_single_threaded()
            if N < num_threads:
                for p in prange(panels, schedule='static', num_threads=num_threads):
                    pack_panels(g, packed_w, <const float *>&weight[0], O, K, K, 1, p)
                for n in range(N):
                    cols = &x[n * C * H * W]
                    if not direct:
                        for t in prange(num_threads, schedule='static', num_threads=num_threads):
                            conv_im2col_part(&scratch[0], &x[n * C * H * W], C, H, W, kh, kw, sh, sw, ph, pw,
                                             Ho, Wo, t, num_threads)
                        cols = &scratch[0]
                    for t in prange(num_threads, schedule='static', num_threads=num_threads):
                        conv_gemm_part(g, packed_w, O, L, K, &weight[0], cols, &y[n * O * L], bias_ptr, t,
                                       num_threads)
            else:
                # One parallel region: pack the weights, then the images one at a time
                # to whichever thread is free (each image's output is its own).
                reset_work_split(num_threads)
                with parallel(num_threads=num_threads):
                    for p in prange(panels, schedule='static'):
                        pack_panels(g, packed_w, <const float *>&weight[0], O, K, K, 1, p)
                    for n in prange(N, schedule='dynamic'):
                        count_work(threadid())
                        conv_image(g, packed_w, &y[n * O * L], &scratch[0] + threadid() * K * L if not direct
                                   else NULL, &x[n * C * H * W], &weight[0], bias_ptr,
                                   C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo)
    finally:
        free(packed_w)


def conv2d_relu_max_pool2d_forward(floating[::1] y, int64_t[::1] pool_indices, const floating[::1] x,
                                   const floating[::1] weight, const floating[::1] bias,
                                   floating[::1] scratch, const Py_ssize_t[::1] pool,
                                   Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                                   Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                                   int num_threads):
    # OUT y = max_pool2d(relu(conv2d(x))) (N,O,pool Ho,pool Wo), pool_indices (same shape, or
    # empty) its argmax positions in the conv output planes; IN as conv2d_forward and
    # pool = (kh, kw, sh, sw, ph, pw, Ho, Wo) of the pooling. Each image's conv output stays in
    # this thread's scratch and never reaches memory:
    # SCRATCH (num_threads, C*kh*kw*Ho*Wo (0 for a direct 1x1 kernel) + O*Ho*Wo).
    # Needs N >= num_threads (one image per thread at a time).
    cdef Py_ssize_t K = C * kh * kw, L = Ho * Wo, n, panels = 0, p, PL
    cdef bint direct = direct_conv(kh, kw, sh, sw, ph, pw)
    cdef bint want_indices = pool_indices.shape[0] > 0
    cdef const floating *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t per_thread = (0 if direct else K * L) + O * L
    cdef floating *buf
    if pool.shape[0] != 8 or N < num_threads:
        raise ValueError(f"conv2d_relu_max_pool2d_forward: needs the 8 pooling sizes and N >= num_threads, "
                         f"got {pool.shape[0]} and N {N} < {num_threads}")
    PL = pool[6] * pool[7]
    check_scratch("conv2d_relu_max_pool2d_forward", "scratch", scratch.shape[0], num_threads * per_thread)
    check_scratch("conv2d_relu_max_pool2d_forward", "y", y.shape[0], N * O * PL)
    if want_indices:
        check_scratch("conv2d_relu_max_pool2d_forward", "pool_indices", pool_indices.shape[0], N * O * PL)
    cdef const cyconv_gemm *g = gemm_kernel()
    cdef float *packed_w = NULL
    if floating is float:
        if N > 0:
            packed_w = packed_weights(g, O, K, &panels)
    try:
        with nogil:
            blas_single_threaded()
            reset_work_split(num_threads)
            with parallel(num_threads=num_threads):
                for p in prange(panels, schedule='static'):
                    pack_panels(g, packed_w, <const float *>&weight[0], O, K, K, 1, p)
                for n in prange(N, schedule='dynamic'):
                    count_work(threadid())
                    buf = &scratch[threadid() * per_thread]
                    conv_image(g, packed_w, buf + per_thread - O * L, buf, &x[n * C * H * W], &weight[0],
                               bias_ptr, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo)
                    pool_planes(&y[n * O * PL], &pool_indices[n * O * PL] if want_indices else NULL,
                                buf + per_thread - O * L, O, Ho, Wo, &pool[0])
    finally:
        free(packed_w)


cdef inline void pool_planes(floating *y, int64_t *indices, const floating *conv_out, Py_ssize_t O,
                             Py_ssize_t Ho, Py_ssize_t Wo, const Py_ssize_t *pool) noexcept nogil:
    # y (O, pool Ho*Wo) = max_pool2d(relu(conv_out (O, Ho, Wo))), indices too unless NULL
    cdef Py_ssize_t o, L = Ho * Wo, PL = pool[6] * pool[7]
    for o in range(O):
        if floating is float:
            maxpool2d_forward_f32(y + o * PL, indices + o * PL if indices != NULL else NULL, conv_out + o * L,
                                  Ho, Wo, pool[0], pool[1], pool[2], pool[3], pool[4], pool[5], pool[6],
                                  pool[7], 1)
        else:
            maxpool2d_forward_f64(y + o * PL, indices + o * PL if indices != NULL else NULL, conv_out + o * L,
                                  Ho, Wo, pool[0], pool[1], pool[2], pool[3], pool[4], pool[5], pool[6],
                                  pool[7], 1)


cdef inline void conv_im2col_part(floating *cols, const floating *img, Py_ssize_t C, Py_ssize_t H,
                                  Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t t,
                                  Py_ssize_t parts) noexcept nogil:
    # Part t of `parts` of one image's im2col (into cols (C*kh*kw, Ho*Wo)), split by input channels:
    # how one image's convolution is shared by threads that have no other image to take.
    cdef Py_ssize_t c0 = C * t // parts, c1 = C * (t + 1) // parts, L = Ho * Wo
    if c0 < c1:
        im2col_image(cols + c0 * kh * kw * L, L, img + c0 * H * W, c1 - c0, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)


cdef inline void conv_gemm_part(const cyconv_gemm *g, const float *packed_w, Py_ssize_t O, Py_ssize_t L,
                                Py_ssize_t K, const floating *weight, const floating *cols, floating *y,
                                const floating *bias, Py_ssize_t t, Py_ssize_t parts) noexcept nogil:
    # Part t of `parts` of one image's GEMM y (O, L) = weight @ cols (K, L) + bias: a block of columns.
    cdef Py_ssize_t l0 = block_start(L, parts, t), l1 = block_start(L, parts, t + 1)
    if l0 < l1:
        conv_output_gemm(g, packed_w, O, l1 - l0, K, weight, cols + l0, L, y + l0, L, bias)


cdef inline void conv_output_gemm(const cyconv_gemm *g, const float *packed_w, Py_ssize_t O, Py_ssize_t L,
                                  Py_ssize_t K, const floating *weight, const floating *cols, Py_ssize_t ldb,
                                  floating *y, Py_ssize_t ldy, const floating *bias) noexcept nogil:
    # y (O, L) = weight (O, K) @ cols (K, L) + bias: our GEMM (bias fused into
    # its store) when the weights were packed for it, else BLAS and a bias pass.
    if floating is float:
        if packed_w != NULL:
            gemm_packed_f32(g, O, L, K, packed_w, cols, ldb, y, ldy, bias, 0)
            return
    gemm(False, False, <int>O, <int>L, <int>K, 1, weight, <int>K, cols, <int>ldb, 0, y, <int>ldy)
    if bias != NULL:
        if floating is float:
            add_bias_f32(y, ldy, bias, O, L)
        else:
            add_bias_f64(y, ldy, bias, O, L)


# The batch's weight and bias gradients are summed per chunk of images, then the
# chunks in order: the chunks are fixed by the batch size alone, so the gradients
# are the same bits whatever the thread count, and the threads can take chunks as
# they come free (a thread that the OS deschedules, as on a laptop with a busy
# core, no longer holds up the others). More chunks balance better; each costs an
# accumulator of the gradient's size.
cdef enum:
    MAX_GRAD_CHUNKS = 16


def weight_grad_chunks(Py_ssize_t N):
    """How many accumulators the convolutions' backward sums a batch of N images in."""
    return max(1, min(N, <Py_ssize_t>MAX_GRAD_CHUNKS))


def conv2d_backward(floating[::1] grad_x, floating[::1] grad_weight, floating[::1] grad_bias,
                    const floating[::1] grad_y, const floating[::1] x,
                    const floating[::1] weight, floating[::1] scratch, floating[::1] acc,
                    Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                    bint need_grad_x, bint accumulate, int num_threads):
    # OUT grad_x (N,C,H,W) (empty if not need_grad_x), grad_weight (O,C*kh*kw), grad_bias (O,):
    # overwritten, or added into if accumulate
    # IN grad_y (N,O,Ho,Wo), x (N,C,H,W), weight (O,C*kh*kw)
    # SCRATCH (num_threads, 2*C*kh*kw*Ho*Wo): columns (or rows) of x and of the input gradient
    # acc (weight_grad_chunks(N), O*C*kh*kw + O), zeroed: per-chunk weight and bias gradients
    conv_backward("conv2d_backward", grad_x, grad_weight, grad_bias, grad_y, grad_y, _NO_INDICES, x, weight,
                  scratch, acc, 0, N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo, need_grad_x, accumulate,
                  num_threads)


def conv2d_relu_max_pool2d_backward(floating[::1] grad_x, floating[::1] grad_weight, floating[::1] grad_bias,
                                    const floating[::1] grad_y, const floating[::1] pooled_y,
                                    const int64_t[::1] pool_indices, const floating[::1] x,
                                    const floating[::1] weight, floating[::1] scratch, floating[::1] acc,
                                    Py_ssize_t PL, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                                    bint need_grad_x, bint accumulate, int num_threads):
    """Returns the number of out-of-range pooling indices (skipped; the outputs are then left
    alone); the caller raises."""
    # As conv2d_backward, for conv2d_relu_max_pool2d_forward's output pooled_y (N,O,PL): grad_y is
    # its gradient and pool_indices its indices; each image's conv output gradient is scattered into
    # this thread's scratch, which grows by O*Ho*Wo.
    return conv_backward("conv2d_relu_max_pool2d_backward", grad_x, grad_weight, grad_bias, grad_y, pooled_y,
                         pool_indices, x, weight, scratch, acc, PL, N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho,
                         Wo, need_grad_x, accumulate, num_threads)


cdef Py_ssize_t conv_backward(str kernel, floating[::1] grad_x, floating[::1] grad_weight,
                              floating[::1] grad_bias, const floating[::1] grad_y,
                              const floating[::1] pooled_y, const int64_t[::1] pool_indices,
                              const floating[::1] x, const floating[::1] weight, floating[::1] scratch,
                              floating[::1] acc, Py_ssize_t PL,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                              bint need_grad_x, bint accumulate, int num_threads) except -1:
    # The driver of both backward passes; PL > 0: the fused one (see above).
    cdef Py_ssize_t K = C * kh * kw, L = Ho * Wo, n, i, j, t, o, ch, bad
    cdef Py_ssize_t per_acc = O * K + O, chunks = weight_grad_chunks(N)
    cdef bint pooled = PL > 0
    cdef Py_ssize_t per_thread = 2 * K * L + (O * L if pooled else 0)
    check_scratch(kernel, "scratch", scratch.shape[0], num_threads * per_thread if N > 0 else 0)
    check_scratch(kernel, "acc", acc.shape[0], chunks * per_acc)
    check_scratch(kernel, "grad_weight", grad_weight.shape[0] + grad_bias.shape[0], O * K + O)
    if need_grad_x:
        check_scratch(kernel, "grad_x", grad_x.shape[0], N * C * H * W)
    if pooled:
        check_scratch(kernel, "pool_indices", pool_indices.shape[0], N * O * PL)
        check_scratch(kernel, "pooled_y", pooled_y.shape[0], N * O * PL)
    cdef floating *buf
    cdef const floating *dy
    cdef floating s
    # Own GEMM: weight^T packed once; one packed copy of an image's output
    # gradient per thread; x laid out as rows (im2row) so that the weight
    # gradient's B operand is read in place.
    # A stride-1 kernel over large planes with few taps per row (LeNet's conv1)
    # skips even that: its weight gradient is computed directly from the padded image.
    cdef const cyconv_gemm *g = gemm_kernel()  # once per call: the packing depends on its tier
    cdef float *packed_wt = NULL
    cdef float *packed_dy = NULL
    cdef Py_ssize_t dy_size = gemm_packed_size(g, O, L), panels = 0, p
    cdef bint direct_dw = False
    cdef Py_ssize_t[::1] bad_per_thread = np.zeros(num_threads, np.intp)
    if floating is float:
        direct_dw = _own_gemm and conv_weight_grad_direct_fits(sh, sw, kw, Ho, Wo)
        if _own_gemm and N > 0:
            if not direct_dw:
                packed_dy = packed_buffer(num_threads * dy_size)
            if need_grad_x:
                try:
                    packed_wt = packed_weights(g, K, O, &panels)
                except MemoryError:
                    free(packed_dy)
                    raise
    try:
        reset_work_split(num_threads)
        with nogil, parallel(num_threads=num_threads):
            # One parallel region: pack weight^T, the chunks of images to whichever
            # thread is free, then the sum of the chunks (after the loops' barriers).
            blas_single_threaded()
            for p in prange(panels, schedule='static'):
                pack_panels(g, packed_wt, <const float *>&weight[0], K, O, 1, K, p)
            for ch in prange(chunks, schedule='dynamic'):
                t = threadid()
                count_work(t)
                buf = &scratch[t * per_thread]
                for n in range(ch * N // chunks, (ch + 1) * N // chunks):
                    if pooled:  # the conv output's gradient, from the pooled output's
                        for o in range(O):
                            if floating is float:
                                bad_per_thread[t] += maxpool2d_backward_f32(
                                    buf + 2 * K * L + o * L, &grad_y[(n * O + o) * PL],
                                    &pool_indices[(n * O + o) * PL], &pooled_y[(n * O + o) * PL], L, PL)
                            else:
                                bad_per_thread[t] += maxpool2d_backward_f64(
                                    buf + 2 * K * L + o * L, &grad_y[(n * O + o) * PL],
                                    &pool_indices[(n * O + o) * PL], &pooled_y[(n * O + o) * PL], L, PL)
                        dy = buf + 2 * K * L
                    else:
                        dy = &grad_y[n * O * L]
                    conv_image_backward(g, packed_wt, packed_dy + t * dy_size if packed_dy != NULL else NULL,
                                        direct_dw, &acc[ch * per_acc], &grad_x[n * C * H * W] if need_grad_x
                                        else NULL, buf, dy, &x[n * C * H * W], &weight[0],
                                        C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo)
            # Sum the chunks' accumulators in chunk order; on bad pooling indices
            # leave the outputs alone.
            bad = 0
            for j in range(num_threads):
                bad = bad + bad_per_thread[j]
            for i in prange(O * K + O if bad == 0 else 0, schedule='static'):
                s = 0
                for ch in range(chunks):
                    s = s + acc[ch * per_acc + i]
                if i < O * K:
                    grad_weight[i] = grad_weight[i] + s if accumulate else s
                else:
                    grad_bias[i - O * K] = grad_bias[i - O * K] + s if accumulate else s
    finally:
        free(packed_dy)
        free(packed_wt)
    return sum(bad_per_thread)


cdef inline void conv_image_backward(const cyconv_gemm *g, const float *packed_wt, float *packed_dy,
                                     bint direct_dw, floating *dw, floating *grad_x_img, floating *buf,
                                     const floating *dy, const floating *img, const floating *weight,
                                     Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                                     Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    # One image's share of the backward, from its output gradient dy (O, Ho*Wo):
    # dw (O*K + O) += its weight and bias gradients; grad_x_img (C,H,W) = its input gradient
    # (skipped when NULL). buf: this thread's scratch (2*K*L); packed_dy: this thread's
    # buffer for dy packed for the own GEMM (NULL on the BLAS path and for the direct one).
    cdef Py_ssize_t K = C * kh * kw, L = Ho * Wo
    cdef bint direct = direct_conv(kh, kw, sh, sw, ph, pw)
    cdef const floating *cols
    if floating is float:
        if direct_dw:
            pad_image_f32(buf, img, C, H, W, ph, pw)
            conv_weight_grad_direct_f32(dw, dy, buf, O, C, H + 2 * ph, W + 2 * pw, kh, kw, Ho, Wo)
        elif packed_dy != NULL:
            # dW (O,K) += dy (O,L) @ rows (L,K)
            im2row_f32(buf, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
            gemm_pack_a_f32(g, packed_dy, dy, O, L, L, 1)
            gemm_packed_f32(g, O, K, L, packed_dy, buf, K, dw, K, NULL, 1)
    if packed_dy == NULL and not direct_dw:
        cols = img
        if not direct:
            im2col_image(buf, L, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
            cols = buf
        # dW (O,K) += dy (O,L) @ cols^T (L,K)
        gemm(False, True, <int>O, <int>K, <int>L, 1, dy, <int>L, cols, <int>L, 1, dw, <int>K)
    if floating is float:
        accumulate_row_sums_f32(dw + O * K, dy, O, L)
    else:
        accumulate_row_sums_f64(dw + O * K, dy, O, L)
    if grad_x_img != NULL:
        # input gradient: dcols (K,L) = weight^T (K,O) @ dy (O,L), then col2im
        # (a direct 1x1 kernel's dcols are the input gradient itself)
        if direct:
            input_grad_gemm(g, packed_wt, K, L, O, weight, dy, grad_x_img)
        else:
            input_grad_gemm(g, packed_wt, K, L, O, weight, dy, buf + K * L)
            col2im_image(grad_x_img, buf + K * L, L, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)


cdef inline void input_grad_gemm(const cyconv_gemm *g, const float *packed_wt, Py_ssize_t K, Py_ssize_t L,
                                 Py_ssize_t O, const floating *weight, const floating *dy,
                                 floating *dcols) noexcept nogil:
    # dcols (K, L) = weight^T (K, O) @ dy (O, L): our GEMM when weight^T was packed for it, else BLAS.
    if floating is float:
        if packed_wt != NULL:
            gemm_packed_f32(g, K, L, O, packed_wt, dy, L, dcols, L, NULL, 0)
            return
    gemm(True, False, <int>K, <int>L, <int>O, 1, weight, <int>K, dy, <int>L, 0, dcols, <int>L)


# ---------------------------------------------------------------------------
# Direct convolution (csrc/direct.c): float32, any stride and padding, no im2col
# buffer: each image's output rows in bands, the band's columns gathered from the
# input into this thread's scratch and multiplied by the weights packed once per
# call. The items are (image, band): they own disjoint columns of y, so a batch of
# one image uses every thread and no result depends on the thread count.

cdef extern from "cyconv.h" nogil:
    Py_ssize_t conv2d_direct_band_rows(Py_ssize_t C, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t Ho,
                                       Py_ssize_t Wo) noexcept
    Py_ssize_t conv2d_direct_scratch_size(Py_ssize_t C, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t Ho,
                                          Py_ssize_t Wo) noexcept
    void conv2d_direct_band_f32(const cyconv_gemm *g, float *y, float *scratch, const float *x,
                                const float *packed_w, const float *bias, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t oh0,
                                Py_ssize_t oh1) noexcept
    void conv2d_direct_image_f32(const cyconv_gemm *g, float *y, float *scratch, const float *x,
                                 const float *packed_w, const float *bias, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                 Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept


def conv2d_direct_scratch(Py_ssize_t C, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t Ho, Py_ssize_t Wo):
    """Floats of one thread's scratch for a direct convolution (a band's gathered columns)."""
    return conv2d_direct_scratch_size(C, kh, kw, Ho, Wo)


def direct_scratch_size(Py_ssize_t C, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t Ho, Py_ssize_t Wo):
    """Floats of scratch one thread of direct_conv2d_forward needs."""
    return conv2d_direct_scratch_size(C, kh, kw, Ho, Wo)


def direct_conv2d_forward(float[::1] y, const float[::1] x, const float[::1] weight, const float[::1] bias,
                          float[::1] scratch, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, int num_threads):
    # OUT y (N,O,Ho,Wo); IN x (N,C,H,W), weight (O,C*kh*kw), bias (O,) or empty;
    # SCRATCH (num_threads, direct_scratch_size(C, kh, kw, Ho, Wo)).
    cdef Py_ssize_t K = C * kh * kw, L = Ho * Wo, S = conv2d_direct_scratch_size(C, kh, kw, Ho, Wo)
    cdef Py_ssize_t rows = conv2d_direct_band_rows(C, kh, kw, Ho, Wo), bands = (Ho + rows - 1) // rows
    cdef Py_ssize_t item, n, oh0, p, panels
    cdef const float *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    check_scratch("direct_conv2d_forward", "scratch", scratch.shape[0], 0 if N == 0 else num_threads * S)
    check_scratch("direct_conv2d_forward", "y", y.shape[0], N * O * L)
    check_scratch("direct_conv2d_forward", "x", x.shape[0], N * C * H * W)
    check_scratch("direct_conv2d_forward", "weight", weight.shape[0], O * K)
    if N == 0:
        return
    cdef const cyconv_gemm *g = gemm_kernel()  # once per call: the packing depends on its tier
    panels = (O + g.mr - 1) // g.mr
    cdef float *packed_w = packed_buffer(gemm_packed_size(g, O, K))
    try:
        with nogil, parallel(num_threads=num_threads):
            for p in prange(panels, schedule='static'):
                pack_panels(g, packed_w, &weight[0], O, K, K, 1, p)
            for item in prange(N * bands, schedule='static'):
                n = item // bands
                oh0 = item % bands * rows
                conv2d_direct_band_f32(g, &y[n * O * L], &scratch[0] + threadid() * S, &x[n * C * H * W],
                                       packed_w, bias_ptr, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo, oh0,
                                       oh0 + rows if oh0 + rows < Ho else Ho)
    finally:
        free(packed_w)


# ---------------------------------------------------------------------------
# Winograd convolution (csrc/winograd.c): stride-1, undilated, ungrouped r x r
# layers (r = 3 or 5), output tiles m x m. Per call the filters are transformed
# (and, for float, packed for the own GEMM) once, then per image: input
# transform, n*n GEMMs, output transform + bias, each image on one thread.
# With fewer images than threads each image's three stages are split instead:
# by input channels, by transform points, by output channels. Every output
# element is computed by one call whatever the split, so the results are the
# same bits for any thread count. The input gradient of such a layer is this
# forward on dy with the flipped, transposed weight (functional.py builds it).

cdef extern from "cyconv.h" nogil:
    int winograd_supported(Py_ssize_t m, Py_ssize_t r) noexcept
    Py_ssize_t winograd_image_size(Py_ssize_t C, Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m,
                                   Py_ssize_t r) noexcept
    Py_ssize_t winograd_tmp_size(Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m, Py_ssize_t r) noexcept
    Py_ssize_t winograd_packed_size(const cyconv_gemm *g, Py_ssize_t O, Py_ssize_t C, Py_ssize_t m,
                                    Py_ssize_t r) noexcept
    void winograd_pack_filters_f32(const cyconv_gemm *g, float *packed, const float *u, Py_ssize_t O,
                                   Py_ssize_t C, Py_ssize_t p0, Py_ssize_t p1) noexcept
    void winograd_filter_transform_f32(float *u, const float *w, Py_ssize_t O, Py_ssize_t C, Py_ssize_t m,
                                       Py_ssize_t r, Py_ssize_t o0, Py_ssize_t o1) noexcept
    void winograd_filter_transform_f64(double *u, const double *w, Py_ssize_t O, Py_ssize_t C, Py_ssize_t m,
                                       Py_ssize_t r, Py_ssize_t o0, Py_ssize_t o1) noexcept
    void winograd_input_transform_f32(float *v, float *tmp, const float *x, Py_ssize_t C, Py_ssize_t H,
                                      Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                                      Py_ssize_t m, Py_ssize_t r, Py_ssize_t c0, Py_ssize_t c1,
                                      Py_ssize_t ldt) noexcept
    void winograd_input_transform_f64(double *v, double *tmp, const double *x, Py_ssize_t C, Py_ssize_t H,
                                      Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo,
                                      Py_ssize_t m, Py_ssize_t r, Py_ssize_t c0, Py_ssize_t c1,
                                      Py_ssize_t ldt) noexcept
    void winograd_multiply_f32(const cyconv_gemm *g, float *mm, const float *u, const float *v, Py_ssize_t O,
                               Py_ssize_t C, Py_ssize_t T, Py_ssize_t p0, Py_ssize_t p1) noexcept
    void winograd_multiply_f64(const cyconv_gemm *g, double *mm, const double *u, const double *v, Py_ssize_t O,
                               Py_ssize_t C, Py_ssize_t T, Py_ssize_t p0, Py_ssize_t p1) noexcept
    void winograd_output_transform_f32(float *y, float *tmp, const float *mm, const float *bias, Py_ssize_t O,
                                       Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m, Py_ssize_t r, Py_ssize_t o0,
                                       Py_ssize_t o1, Py_ssize_t ldt) noexcept
    void winograd_output_transform_f64(double *y, double *tmp, const double *mm, const double *bias,
                                       Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m, Py_ssize_t r,
                                       Py_ssize_t o0, Py_ssize_t o1, Py_ssize_t ldt) noexcept
    void winograd_conv2d_images_f32(const cyconv_gemm *g, float *y, float *scratch, float *tmp, const float *x,
                                    const float *u, const float *bias, Py_ssize_t nb, Py_ssize_t C, Py_ssize_t H,
                                    Py_ssize_t W, Py_ssize_t O, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho,
                                    Py_ssize_t Wo, Py_ssize_t m, Py_ssize_t r) noexcept
    void winograd_conv2d_images_f64(const cyconv_gemm *g, double *y, double *scratch, double *tmp,
                                    const double *x, const double *u, const double *bias, Py_ssize_t nb,
                                    Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O, Py_ssize_t ph,
                                    Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m,
                                    Py_ssize_t r) noexcept


def winograd_tile_supported(Py_ssize_t m, Py_ssize_t r):
    """True if csrc/winograd.c has F(m x m, r x r)."""
    return bool(winograd_supported(m, r))


cdef inline Py_ssize_t part(Py_ssize_t n, Py_ssize_t t, Py_ssize_t parts) noexcept nogil:
    return n * t // parts


cdef inline void winograd_filters_part(floating *u, float *packed, const cyconv_gemm *g, const floating *w,
                                       Py_ssize_t O, Py_ssize_t C, Py_ssize_t m, Py_ssize_t r, Py_ssize_t t,
                                       Py_ssize_t parts) noexcept nogil:
    if floating is float:
        winograd_filter_transform_f32(u, w, O, C, m, r, part(O, t, parts), part(O, t + 1, parts))
    else:
        winograd_filter_transform_f64(u, w, O, C, m, r, part(O, t, parts), part(O, t + 1, parts))


cdef inline void winograd_images(const cyconv_gemm *g, floating *y, floating *scratch, floating *tmp,
                                 const floating *x, const void *u, const floating *bias, Py_ssize_t nb,
                                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O, Py_ssize_t ph,
                                 Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m,
                                 Py_ssize_t r) noexcept nogil:
    if floating is float:
        winograd_conv2d_images_f32(g, y, scratch, tmp, x, <const float *>u, bias, nb, C, H, W, O, ph, pw, Ho, Wo,
                                   m, r)
    else:
        winograd_conv2d_images_f64(g, y, scratch, tmp, x, <const double *>u, bias, nb, C, H, W, O, ph, pw, Ho,
                                   Wo, m, r)


cdef inline void winograd_stage_part(int stage, const cyconv_gemm *g, floating *y, floating *v, floating *mm,
                                     floating *tmp, const floating *x, const void *u, const floating *bias,
                                     Py_ssize_t nb, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m,
                                     Py_ssize_t r, Py_ssize_t t, Py_ssize_t parts) noexcept nogil:
    # Part t of `parts` of one stage of a group of nb images: 0 input transform (channels),
    # 1 the GEMMs (transform points), 2 output transform (output channels).
    cdef Py_ssize_t n = m + r - 1, T = ((Ho + m - 1) // m) * ((Wo + m - 1) // m), i
    for i in range(nb if stage != 1 else 1):
        if stage == 0:
            if floating is float:
                winograd_input_transform_f32(v + i * T, tmp, x + i * C * H * W, C, H, W, ph, pw, Ho, Wo, m, r,
                                             part(C, t, parts), part(C, t + 1, parts), nb * T)
            else:
                winograd_input_transform_f64(v + i * T, tmp, x + i * C * H * W, C, H, W, ph, pw, Ho, Wo, m, r,
                                             part(C, t, parts), part(C, t + 1, parts), nb * T)
        elif stage == 1:
            if floating is float:
                winograd_multiply_f32(g, mm, <const float *>u, v, O, C, nb * T, part(n * n, t, parts),
                                      part(n * n, t + 1, parts))
            else:
                winograd_multiply_f64(g, mm, <const double *>u, v, O, C, nb * T, part(n * n, t, parts),
                                      part(n * n, t + 1, parts))
        else:
            if floating is float:
                winograd_output_transform_f32(y + i * O * Ho * Wo, tmp, mm + i * T, bias, O, Ho, Wo, m, r,
                                              part(O, t, parts), part(O, t + 1, parts), nb * T)
            else:
                winograd_output_transform_f64(y + i * O * Ho * Wo, tmp, mm + i * T, bias, O, Ho, Wo, m, r,
                                              part(O, t, parts), part(O, t + 1, parts), nb * T)


def winograd_sizes(Py_ssize_t C, Py_ssize_t O, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m, Py_ssize_t r):
    """(v + mm elements of one image, a thread's temporary) for F(m x m, r x r)."""
    return winograd_image_size(C, O, Ho, Wo, m, r), winograd_tmp_size(Ho, Wo, m, r)


def winograd_filters_size(Py_ssize_t O, Py_ssize_t C, Py_ssize_t m, Py_ssize_t r, int isa, bint packed):
    """Elements of a layer's transformed filters: packed for tier isa's GEMM (float), or plain (double)."""
    cdef Py_ssize_t n = m + r - 1
    return winograd_packed_size(gemm_kernel_for(isa), O, C, m, r) if packed else n * n * O * C


def winograd_filters(floating[::1] out, const floating[::1] weight, Py_ssize_t O, Py_ssize_t C, Py_ssize_t m,
                     Py_ssize_t r, int isa):
    # OUT out: weight (O,C,r,r) transformed for F(m x m, r x r), (n*n, O, C); float: then packed for tier
    # isa's GEMM (winograd_filters_size(..., packed=True) elements), as the compiled predictor keeps it
    cdef Py_ssize_t n2 = (m + r - 1) * (m + r - 1)
    cdef const cyconv_gemm *g = gemm_kernel_for(isa)
    cdef floating[::1] u
    if not winograd_supported(m, r):
        raise ValueError(f"winograd_filters: no F({m}x{m}, {r}x{r}) tile")
    check_scratch("winograd_filters", "weight", weight.shape[0], O * C * r * r)
    if floating is float:
        check_scratch("winograd_filters", "out", out.shape[0], winograd_packed_size(g, O, C, m, r))
        u = np.empty(n2 * O * C, np.float32)
        winograd_filter_transform_f32(&u[0], &weight[0], O, C, m, r, 0, O)
        winograd_pack_filters_f32(g, &out[0], &u[0], O, C, 0, n2)
    else:
        check_scratch("winograd_filters", "out", out.shape[0], n2 * O * C)
        winograd_filter_transform_f64(&out[0], &weight[0], O, C, m, r, 0, O)


cdef enum:
    WINOGRAD_GEMM_COLUMNS = 192  # tiles per GEMM worth gathering images for


def winograd_group(Py_ssize_t N, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t m):
    """How many images share each GEMM: enough for ~WINOGRAD_GEMM_COLUMNS tiles (small planes
    have few), at most N. A function of the shape alone, not of the thread count."""
    cdef Py_ssize_t T = ((Ho + m - 1) // m) * ((Wo + m - 1) // m)
    return max(1, min(N, (<Py_ssize_t>WINOGRAD_GEMM_COLUMNS + T - 1) // T))


def winograd_conv2d_forward(floating[::1] y, const floating[::1] x, const floating[::1] weight,
                            const floating[::1] bias, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                            Py_ssize_t O, Py_ssize_t r, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho,
                            Py_ssize_t Wo, Py_ssize_t m, int num_threads):
    # OUT y (N,O,Ho,Wo); IN x (N,C,H,W), weight (O,C,r,r), bias (O,) or empty; stride 1, padding
    # (ph, pw) (negative crops: the input gradient's), Ho = H + 2*ph - r + 1. Scratch is allocated
    # here (its size follows the tile). Images go in groups of winograd_group(); a thread takes a
    # group at a time, or, with fewer groups than threads, the threads share each group's stages.
    cdef Py_ssize_t n2 = (m + r - 1) * (m + r - 1), i, t, stage, nb = winograd_group(N, Ho, Wo, m)
    cdef Py_ssize_t groups = (N + nb - 1) // nb if N > 0 else 0
    cdef Py_ssize_t group_size = nb * winograd_image_size(C, O, Ho, Wo, m, r)
    cdef Py_ssize_t tmp_size = winograd_tmp_size(Ho, Wo, m, r)
    cdef Py_ssize_t T = ((Ho + m - 1) // m) * ((Wo + m - 1) // m)
    cdef bint per_group = groups >= num_threads
    cdef Py_ssize_t per_thread = group_size + tmp_size if per_group else tmp_size
    cdef const floating *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef const cyconv_gemm *g = gemm_kernel()  # once per call: the packing depends on its tier
    if not winograd_supported(m, r):
        raise ValueError(f"winograd_conv2d_forward: no F({m}x{m}, {r}x{r}) tile")
    check_scratch("winograd_conv2d_forward", "y", y.shape[0], N * O * Ho * Wo)
    check_scratch("winograd_conv2d_forward", "x", x.shape[0], N * C * H * W)
    check_scratch("winograd_conv2d_forward", "weight", weight.shape[0], O * C * r * r)
    if N == 0:
        return
    cdef floating *u = <floating *>malloc(n2 * O * C * sizeof(floating))
    cdef float *packed = NULL
    cdef floating *work = <floating *>malloc((num_threads * per_thread + (0 if per_group else group_size))
                                             * sizeof(floating))
    cdef floating *shared = work + num_threads * per_thread  # v then mm of the group the threads share
    cdef const void *uu = u
    if floating is float:
        packed = <float *>malloc(max(winograd_packed_size(g, O, C, m, r), 1) * sizeof(float))
        uu = packed
    try:
        if u == NULL or work == NULL or (floating is float and packed == NULL):
            raise MemoryError("winograd_conv2d_forward: cannot allocate the transformed filters and scratch")
        with nogil:
            for t in prange(num_threads, schedule='static', num_threads=num_threads):
                winograd_filters_part(u, packed, g, &weight[0], O, C, m, r, t, num_threads)
            if floating is float:
                for i in prange(n2, schedule='static', num_threads=num_threads):
                    winograd_pack_filters_f32(g, packed, u, O, C, i, i + 1)
            if per_group:
                reset_work_split(num_threads)
                for i in prange(groups, schedule='dynamic', num_threads=num_threads):
                    t = threadid()
                    count_work(t)
                    winograd_images(g, &y[i * nb * O * Ho * Wo], work + t * per_thread,
                                    work + t * per_thread + group_size, &x[i * nb * C * H * W], uu, bias_ptr,
                                    min(nb, N - i * nb), C, H, W, O, ph, pw, Ho, Wo, m, r)
            else:
                for i in range(groups):
                    for stage in range(3):
                        for t in prange(num_threads, schedule='static', num_threads=num_threads):
                            winograd_stage_part(stage, g, &y[i * nb * O * Ho * Wo], shared,
                                                shared + n2 * C * min(nb, N - i * nb) * T, work + t * per_thread,
                                                &x[i * nb * C * H * W], uu, bias_ptr, min(nb, N - i * nb), C, H,
                                                W, O, ph, pw, Ho, Wo, m, r, t, num_threads)
    finally:
        free(u)
        free(packed)
        free(work)


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


# ---------------------------------------------------------------------------
# im2col / col2im as public ops: parallel over (image, channel) planes, so a
# single image with many channels still uses every thread.

def im2col(floating[::1] cols, const floating[::1] x,
           Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, int num_threads):
    # OUT cols (N, C*kh*kw, Ho*Wo); IN x (N,C,H,W)
    cdef Py_ssize_t L = Ho * Wo, p
    with nogil:
        for p in prange(N * C, schedule='static', num_threads=num_threads):
            im2col_image(&cols[p * kh * kw * L], L, &x[p * H * W], 1, H, W,
                         kh, kw, sh, sw, ph, pw, Ho, Wo)


def col2im(floating[::1] x, const floating[::1] cols,
           Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Ho, Py_ssize_t Wo, int num_threads):
    # OUT x (N,C,H,W); IN cols (N, C*kh*kw, Ho*Wo)
    cdef Py_ssize_t L = Ho * Wo, p
    with nogil:
        for p in prange(N * C, schedule='static', num_threads=num_threads):
            col2im_image(&x[p * H * W], &cols[p * kh * kw * L], L, 1, H, W,
                         kh, kw, sh, sw, ph, pw, Ho, Wo)


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

# ---------------------------------------------------------------------------
# Grouped, depthwise and dilated convolution (groups > 1 or dilation > 1; the
# plain convolution above is untouched). Weight (O, C/G, kh, kw); group gi maps
# input channels [gi*C/G, (gi+1)*C/G) to output channels [gi*O/G, (gi+1)*O/G).
#
# Depthwise (G == C, O = m*C): csrc/depthwise.c, one plane at a time. Forward
# and input gradient are parallel over (image, channel) planes; the weight and
# bias gradients over output channels, each summing the images in order, so
# no result depends on the thread count.
#
# Other groups (and dilation alone): per (image, group), im2col of the group's
# channels (im2col_dilated when dilated) and one GEMM, exactly as the plain
# convolution does per image. The items (image, group) own disjoint outputs;
# the backward takes (chunk of images, group) items with one weight-gradient
# accumulator per chunk, summed in chunk order as conv_backward does.

cdef extern from "cyconv.h" nogil:
    void im2col_dilated_f32(float *cols, Py_ssize_t col_ld, const float *img, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                            Py_ssize_t Wo) noexcept
    void im2col_dilated_f64(double *cols, Py_ssize_t col_ld, const double *img, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                            Py_ssize_t Wo) noexcept
    void col2im_dilated_f32(float *img, const float *cols, Py_ssize_t col_ld, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                            Py_ssize_t Wo) noexcept
    void col2im_dilated_f64(double *img, const double *cols, Py_ssize_t col_ld, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                            Py_ssize_t Wo) noexcept
    void depthwise_conv2d_forward_f32(float *y, const float *x, const float *w, const float *bias,
                                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                      Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                                      Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void depthwise_conv2d_forward_f64(double *y, const double *x, const double *w, const double *bias,
                                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                      Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                                      Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void depthwise_conv2d_backward_input_f32(float *dx, const float *dy, const float *w, Py_ssize_t H,
                                             Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                             Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                             Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void depthwise_conv2d_backward_input_f64(double *dx, const double *dy, const double *w, Py_ssize_t H,
                                             Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                             Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                             Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void depthwise_conv2d_backward_weight_f32(float *dweight, float *dbias, const float *dy, const float *x,
                                              Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                              Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void depthwise_conv2d_backward_weight_f64(double *dweight, double *dbias, const double *dy, const double *x,
                                              Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                              Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void adaptive_avg_pool2d_forward_f32(float *y, const float *x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                                         Py_ssize_t Wo) noexcept
    void adaptive_avg_pool2d_forward_f64(double *y, const double *x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                                         Py_ssize_t Wo) noexcept
    void adaptive_avg_pool2d_backward_f32(float *dx, const float *dy, Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                                          Py_ssize_t Wo) noexcept
    void adaptive_avg_pool2d_backward_f64(double *dx, const double *dy, Py_ssize_t H, Py_ssize_t W,
                                          Py_ssize_t Ho, Py_ssize_t Wo) noexcept
    void hardtanh_forward_f32(float *y, const float *x, Py_ssize_t n, float lo, float hi) noexcept
    void hardtanh_forward_f64(double *y, const double *x, Py_ssize_t n, double lo, double hi) noexcept
    void hardtanh_backward_f32(float *dx, const float *dy, const float *x, Py_ssize_t n, float lo,
                               float hi) noexcept
    void hardtanh_backward_f64(double *dx, const double *dy, const double *x, Py_ssize_t n, double lo,
                               double hi) noexcept


cdef inline void depthwise_plane_forward(floating *y, const floating *x, const floating *w, const floating *bias,
                                         Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                         Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                         Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    if floating is float:
        depthwise_conv2d_forward_f32(y, x, w, bias, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    else:
        depthwise_conv2d_forward_f64(y, x, w, bias, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


def depthwise_conv2d_forward(floating[::1] y, const floating[::1] x, const floating[::1] weight,
                             const floating[::1] bias, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                             Py_ssize_t Wo, int num_threads):
    # OUT y (N,O,Ho,Wo); IN x (N,C,H,W), weight (O,kh*kw) with O = m*C, bias (O,) or empty.
    # Output plane (n, o) reads input plane (n, o // m).
    cdef Py_ssize_t m = O // C, L = Ho * Wo, K = kh * kw, p, o
    cdef bint has_bias = bias.shape[0] > 0
    check_scratch("depthwise_conv2d_forward", "y", y.shape[0], N * O * L)
    check_scratch("depthwise_conv2d_forward", "x", x.shape[0], N * C * H * W)
    check_scratch("depthwise_conv2d_forward", "weight", weight.shape[0], O * K)
    if has_bias:
        check_scratch("depthwise_conv2d_forward", "bias", bias.shape[0], O)
    with nogil:
        for p in prange(N * O, schedule='static', num_threads=num_threads):
            o = p % O
            depthwise_plane_forward(&y[p * L], &x[(p // O * C + o // m) * H * W], &weight[o * K],
                                    &bias[o] if has_bias else NULL, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


def depthwise_conv2d_backward(floating[::1] grad_x, floating[::1] grad_weight, floating[::1] grad_bias,
                              const floating[::1] grad_y, const floating[::1] x, const floating[::1] weight,
                              floating[::1] acc, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                              Py_ssize_t Wo, bint need_grad_x, bint accumulate, int num_threads):
    # OUT grad_x (N,C,H,W) (empty if not need_grad_x); grad_weight (O,kh*kw), grad_bias (O,):
    # overwritten, or added into if accumulate. IN grad_y (N,O,Ho,Wo), x (N,C,H,W), weight (O,kh*kw).
    # SCRATCH acc (O*(kh*kw + 1)), zeroed: each channel's sums over the batch.
    cdef Py_ssize_t m = O // C, L = Ho * Wo, K = kh * kw, HW = H * W, p, o, n, c, j, i
    check_scratch("depthwise_conv2d_backward", "acc", acc.shape[0], O * (K + 1))
    check_scratch("depthwise_conv2d_backward", "grad_weight", grad_weight.shape[0], O * K)
    check_scratch("depthwise_conv2d_backward", "grad_bias", grad_bias.shape[0], O)
    check_scratch("depthwise_conv2d_backward", "grad_y", grad_y.shape[0], N * O * L)
    check_scratch("depthwise_conv2d_backward", "x", x.shape[0], N * C * HW)
    if need_grad_x:
        check_scratch("depthwise_conv2d_backward", "grad_x", grad_x.shape[0], N * C * HW)
    with nogil, parallel(num_threads=num_threads):
        for p in prange(N * C if need_grad_x else 0, schedule='static'):
            n = p // C
            c = p % C
            for i in range(HW):
                grad_x[p * HW + i] = 0
            for j in range(m):  # the plane's m output channels, in order
                o = c * m + j
                if floating is float:
                    depthwise_conv2d_backward_input_f32(&grad_x[p * HW], &grad_y[(n * O + o) * L], &weight[o * K],
                                                        H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
                else:
                    depthwise_conv2d_backward_input_f64(&grad_x[p * HW], &grad_y[(n * O + o) * L], &weight[o * K],
                                                        H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
        for o in prange(O, schedule='static'):
            for n in range(N):
                if floating is float:
                    depthwise_conv2d_backward_weight_f32(&acc[o * K], &acc[O * K + o], &grad_y[(n * O + o) * L],
                                                         &x[(n * C + o // m) * HW], H, W, kh, kw, sh, sw, ph, pw,
                                                         dh, dw, Ho, Wo)
                else:
                    depthwise_conv2d_backward_weight_f64(&acc[o * K], &acc[O * K + o], &grad_y[(n * O + o) * L],
                                                         &x[(n * C + o // m) * HW], H, W, kh, kw, sh, sw, ph, pw,
                                                         dh, dw, Ho, Wo)
            for i in range(K):
                grad_weight[o * K + i] = grad_weight[o * K + i] + acc[o * K + i] if accumulate else acc[o * K + i]
            grad_bias[o] = grad_bias[o] + acc[O * K + o] if accumulate else acc[O * K + o]


cdef inline void im2col_dilated_image(floating *cols, Py_ssize_t col_ld, const floating *img, Py_ssize_t C,
                                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                      Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                                      Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    # im2col_image, through the dilated kernel only when dilated (the plain one has the fast paths)
    if dh == 1 and dw == 1:
        im2col_image(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
    elif floating is float:
        im2col_dilated_f32(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    else:
        im2col_dilated_f64(cols, col_ld, img, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


cdef inline void col2im_dilated_image(floating *img, const floating *cols, Py_ssize_t col_ld, Py_ssize_t C,
                                      Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                      Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                                      Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    if dh == 1 and dw == 1:
        col2im_image(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo)
    elif floating is float:
        col2im_dilated_f32(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    else:
        col2im_dilated_f64(img, cols, col_ld, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


cdef inline void grouped_conv_group(const cyconv_gemm *g, const float *packed_wg, floating *out_g,
                                    floating *cols_buf, const floating *img_g, const floating *weight_g,
                                    const floating *bias_g, Py_ssize_t Cg, Py_ssize_t H, Py_ssize_t W,
                                    Py_ssize_t Og, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                                    Py_ssize_t Wo) noexcept nogil:
    # out_g (Og, Ho*Wo) = one group of one image: img_g (Cg,H,W) convolved with weight_g (Og, Cg*kh*kw)
    # (+ bias_g, or NULL); packed_wg: weight_g packed for the own GEMM g, or NULL (BLAS);
    # cols_buf: im2col scratch (Cg*kh*kw, Ho*Wo), unused by a direct 1x1 kernel
    cdef Py_ssize_t K = Cg * kh * kw, L = Ho * Wo
    cdef const floating *cols = img_g
    if not direct_conv(kh, kw, sh, sw, ph, pw):
        im2col_dilated_image(cols_buf, L, img_g, Cg, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
        cols = cols_buf
    conv_output_gemm(g, packed_wg, Og, L, K, weight_g, cols, L, out_g, L, bias_g)


cdef void grouped_conv_image(const cyconv_gemm *g, const float *packed_w, Py_ssize_t packed_stride,
                             floating *out, floating *cols_buf, const floating *img, const floating *weight,
                             const floating *bias, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t O,
                             Py_ssize_t G, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho,
                             Py_ssize_t Wo) noexcept nogil:
    # out (O, Ho*Wo) = the grouped, dilated convolution of one image img (C,H,W) with weight
    # (O, C/G*kh*kw) (+ bias (O,), or NULL), one group after the other; packed_w: NULL (BLAS), or
    # the G groups' weights packed for the own GEMM g, group gi at packed_w + gi*packed_stride;
    # cols_buf: im2col scratch of one group, (C/G*kh*kw, Ho*Wo). The compiled predictor's entry.
    cdef Py_ssize_t Cg = C // G, Og = O // G, K = Cg * kh * kw, L = Ho * Wo, gi
    for gi in range(G):
        grouped_conv_group(g, packed_w + gi * packed_stride if packed_w != NULL else NULL, out + gi * Og * L,
                           cols_buf, img + gi * Cg * H * W, weight + gi * Og * K,
                           bias + gi * Og if bias != NULL else NULL, Cg, H, W, Og, kh, kw, sh, sw, ph, pw,
                           dh, dw, Ho, Wo)


def grouped_conv2d_forward(floating[::1] y, const floating[::1] x, const floating[::1] weight,
                           const floating[::1] bias, floating[::1] scratch, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t H, Py_ssize_t W, Py_ssize_t O, Py_ssize_t G, Py_ssize_t kh, Py_ssize_t kw,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                           Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo, int num_threads):
    # OUT y (N,O,Ho,Wo); IN x (N,C,H,W), weight (O, C/G*kh*kw), bias (O,) or empty;
    # SCRATCH (num_threads, C/G*kh*kw*Ho*Wo), empty for a direct 1x1 kernel.
    # Items (image, group), so one image with several groups still uses every thread.
    cdef Py_ssize_t Cg = C // G, Og = O // G, K = Cg * kh * kw, L = Ho * Wo, item, n, gi, stride = 0
    cdef bint direct = direct_conv(kh, kw, sh, sw, ph, pw)
    cdef const floating *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    check_scratch("grouped_conv2d_forward", "scratch", scratch.shape[0], 0 if direct or N == 0 else num_threads * K * L)
    check_scratch("grouped_conv2d_forward", "y", y.shape[0], N * O * L)
    check_scratch("grouped_conv2d_forward", "x", x.shape[0], N * C * H * W)
    check_scratch("grouped_conv2d_forward", "weight", weight.shape[0], O * K)
    if bias_ptr != NULL:
        check_scratch("grouped_conv2d_forward", "bias", bias.shape[0], O)
    cdef const cyconv_gemm *g = gemm_kernel()
    cdef float *packed_w = NULL
    if floating is float:
        if _own_gemm and N > 0:
            stride = gemm_packed_size(g, Og, K)
            packed_w = packed_buffer(G * stride)
    try:
        with nogil, parallel(num_threads=num_threads):
            blas_single_threaded()
            for gi in prange(G if packed_w != NULL else 0, schedule='static'):
                gemm_pack_a_f32(g, packed_w + gi * stride, <const float *>&weight[gi * Og * K], Og, K, K, 1)
            for item in prange(N * G, schedule='dynamic'):
                n = item // G
                gi = item % G
                grouped_conv_group(g, packed_w + gi * stride if packed_w != NULL else NULL,
                                   &y[(n * O + gi * Og) * L], &scratch[threadid() * K * L] if not direct else NULL,
                                   &x[(n * C + gi * Cg) * H * W], &weight[gi * Og * K],
                                   bias_ptr + gi * Og if bias_ptr != NULL else NULL, Cg, H, W, Og, kh, kw,
                                   sh, sw, ph, pw, dh, dw, Ho, Wo)
    finally:
        free(packed_w)


def grouped_conv2d_backward(floating[::1] grad_x, floating[::1] grad_weight, floating[::1] grad_bias,
                            const floating[::1] grad_y, const floating[::1] x, const floating[::1] weight,
                            floating[::1] scratch, floating[::1] acc, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t O, Py_ssize_t G, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                            Py_ssize_t Ho, Py_ssize_t Wo, bint need_grad_x, bint accumulate, int num_threads):
    # OUT grad_x (N,C,H,W) (empty if not need_grad_x), grad_weight (O, C/G*kh*kw), grad_bias (O,):
    # overwritten, or added into if accumulate. IN grad_y (N,O,Ho,Wo), x (N,C,H,W), weight.
    # SCRATCH (num_threads, 2*C/G*kh*kw*Ho*Wo): a group's columns and their gradient;
    # acc (weight_grad_chunks(N), O*C/G*kh*kw + O), zeroed: per-chunk weight and bias gradients.
    # GEMMs on BLAS (single-threaded, inside our threads).
    cdef Py_ssize_t Cg = C // G, Og = O // G, K = Cg * kh * kw, L = Ho * Wo, item, ch, gi, n, i, t
    cdef Py_ssize_t chunks = weight_grad_chunks(N), per_acc = O * K + O
    cdef bint direct = direct_conv(kh, kw, sh, sw, ph, pw)
    cdef floating *buf
    cdef floating *dw_g
    cdef const floating *cols
    cdef const floating *dy
    cdef const floating *img
    cdef floating s
    check_scratch("grouped_conv2d_backward", "scratch", scratch.shape[0], num_threads * 2 * K * L if N > 0 else 0)
    check_scratch("grouped_conv2d_backward", "acc", acc.shape[0], chunks * per_acc)
    check_scratch("grouped_conv2d_backward", "grad_weight", grad_weight.shape[0] + grad_bias.shape[0], O * K + O)
    check_scratch("grouped_conv2d_backward", "grad_y", grad_y.shape[0], N * O * L)
    check_scratch("grouped_conv2d_backward", "x", x.shape[0], N * C * H * W)
    if need_grad_x:
        check_scratch("grouped_conv2d_backward", "grad_x", grad_x.shape[0], N * C * H * W)
    with nogil, parallel(num_threads=num_threads):
        blas_single_threaded()
        for item in prange(chunks * G, schedule='dynamic'):
            ch = item // G
            gi = item % G
            t = threadid()
            buf = &scratch[t * 2 * K * L]
            dw_g = &acc[ch * per_acc + gi * Og * K]
            for n in range(ch * N // chunks, (ch + 1) * N // chunks):
                dy = &grad_y[(n * O + gi * Og) * L]
                img = &x[(n * C + gi * Cg) * H * W]
                cols = img
                if not direct:
                    im2col_dilated_image(buf, L, img, Cg, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
                    cols = buf
                # dW_g (Og,K) += dy_g (Og,L) @ cols^T (L,K)
                gemm(False, True, <int>Og, <int>K, <int>L, 1, dy, <int>L, cols, <int>L, 1, dw_g, <int>K)
                if floating is float:
                    accumulate_row_sums_f32(&acc[ch * per_acc + O * K + gi * Og], dy, Og, L)
                else:
                    accumulate_row_sums_f64(&acc[ch * per_acc + O * K + gi * Og], dy, Og, L)
                if need_grad_x:
                    # dcols (K,L) = W_g^T (K,Og) @ dy_g (Og,L), then col2im into the group's channels
                    if direct:
                        gemm(True, False, <int>K, <int>L, <int>Og, 1, &weight[gi * Og * K], <int>K, dy, <int>L, 0,
                             &grad_x[(n * C + gi * Cg) * H * W], <int>L)
                    else:
                        gemm(True, False, <int>K, <int>L, <int>Og, 1, &weight[gi * Og * K], <int>K, dy, <int>L, 0,
                             buf + K * L, <int>L)
                        col2im_dilated_image(&grad_x[(n * C + gi * Cg) * H * W], buf + K * L, L, Cg, H, W, kh, kw,
                                             sh, sw, ph, pw, dh, dw, Ho, Wo)
        # the chunks' accumulators summed in chunk order
        for i in prange(O * K + O, schedule='static'):
            s = 0
            for ch in range(chunks):
                s = s + acc[ch * per_acc + i]
            if i < O * K:
                grad_weight[i] = grad_weight[i] + s if accumulate else s
            else:
                grad_bias[i - O * K] = grad_bias[i - O * K] + s if accumulate else s


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
# HOG features (cyconv.features.hog): parallel over images, each thread with
# its own cell-histogram scratch.

cdef extern from "cyconv.h" nogil:
    void hog_f32(float *out, float *hist, const float *img, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t C, Py_ssize_t n_orient, Py_ssize_t cr, Py_ssize_t cc,
                 Py_ssize_t br, Py_ssize_t bc) noexcept
    void hog_f64(double *out, float *hist, const double *img, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t C, Py_ssize_t n_orient, Py_ssize_t cr, Py_ssize_t cc,
                 Py_ssize_t br, Py_ssize_t bc) noexcept


def hog(floating[::1] out, const floating[::1] images, float[::1] scratch,
        Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t orientations,
        Py_ssize_t cr, Py_ssize_t cc, Py_ssize_t br, Py_ssize_t bc, int num_threads):
    # OUT out (N, D); IN images (N,H,W,C); SCRATCH (num_threads, (H/cr)*(W/cc)*orientations)
    cdef Py_ssize_t D = (H // cr - br + 1) * (W // cc - bc + 1) * br * bc * orientations
    cdef Py_ssize_t per_thread = (H // cr) * (W // cc) * orientations, n
    cdef float *hist
    check_scratch("hog", "scratch", scratch.shape[0], num_threads * per_thread if N > 0 else 0)
    check_scratch("hog", "out", out.shape[0], N * D)
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            hist = &scratch[threadid() * per_thread]
            if floating is float:
                hog_f32(&out[n * D], hist, &images[n * H * W * C], H, W, C, orientations,
                        cr, cc, br, bc)
            else:
                hog_f64(&out[n * D], hist, &images[n * H * W * C], H, W, C, orientations,
                        cr, cc, br, bc)


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
# The compiled forward (cyconv.compile): a model's whole inference pass in one
# call and one parallel region. cyconv.predictor plans it from the model's graph
# (cyconv.graph, fused and with BatchNorm folded): a table of ops (one row per
# op, the columns below), the parameters in one array, the float convolutions'
# weights packed once for the GEMM of the tier it was compiled on. Each op is a
# worksharing loop over what the batch makes worth splitting (images, or each
# image's columns and channels when there are fewer images than threads; output
# columns of the linear layers; planes; blocks), with a barrier between ops, so
# the threads wake once per forward. Each op's body is the one its functional
# op runs (conv_image, conv_im2col_part/conv_gemm_part, linear_block, the C
# pooling, activation, affine and add kernels, softmax_row): nothing is written
# twice. Values live in the input, the output, or one of the arena's slots
# (N times the largest value each), which the planner reuses once a value is dead.

cdef enum:
    OP_CONV = 0
    OP_LINEAR = 1
    OP_POOL = 2
    OP_ACT = 3
    OP_SOFTMAX = 4
    OP_AFFINE = 5  # y = x * weight[c] + bias[c] per channel (an eval-mode BatchNorm), then the activation
    OP_ADD = 6     # y = src + src2, then the activation
    OP_COPY = 7    # y[n, coff:coff+In] = src[n] (a Concat, one input at a time): rows of F_CTOT

    ACT_NONE = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3
    ACT_LOG = 4  # OP_SOFTMAX: log-softmax
    ACT_HARDTANH = 5  # clamp to [params[F_ACTP], params[F_ACTP + 1]] (ReLU6: [0, 6])

    POOL_NONE = 0
    POOL_MAX = 1
    POOL_AVG = 2
    POOL_ADAPTIVE = 3  # adaptive average pooling to (pHo, pWo); only as an op of its own

    LOC_X = -1    # where a value lives: the input, the output, or slot k >= 0 of the arena
    LOC_OUT = -2

    # columns of the op table
    F_KIND = 0
    F_ACT = 1
    F_POOL = 2
    F_C = 3     # conv/pool/affine: input channels; linear: in features
    F_H = 4     # affine: values per channel of one image
    F_W = 5
    F_O = 6     # conv: out channels; linear: out features
    F_KH = 7
    F_KW = 8
    F_SH = 9
    F_SW = 10
    F_PH = 11
    F_PW = 12
    F_HO = 13
    F_WO = 14
    F_PKH = 15  # the pooling (fused into a convolution, or alone: then F_C, F_H, F_W are its input)
    F_PKW = 16
    F_PSH = 17
    F_PSW = 18
    F_PPH = 19
    F_PPW = 20
    F_PHO = 21
    F_PWO = 22
    F_PINCL = 23  # average pooling's count_include_pad
    F_WEIGHT = 24  # offsets into params and packed; -1: none
    F_BIAS = 25
    F_PACKED = 26
    F_IN = 27    # elements per image of the op's input and output
    F_OUT = 28
    F_SRC = 29   # locations (LOC_X, LOC_OUT or a slot) of the input, the second input (OP_ADD), the output
    F_SRC2 = 30
    F_DST = 31
    F_COFF = 32  # OP_COPY: offset in the output row, and the row's length
    F_CTOT = 33
    F_ACTP = 34  # offset in params of the activation's parameters (ACT_HARDTANH's bounds)
    F_G = 35     # OP_CONV: groups (G == C: depthwise, one plane per output channel), dilation
    F_DH = 36
    F_DW = 37
    F_PSTRIDE = 38  # OP_CONV with groups: floats between the groups' packed weights
    F_WINO = 39  # OP_CONV by Winograd F(m x m, kh x kh): m (0: not), and the transformed filters' offset
    F_U = 40     # (in packed for float, in params for double)
    F_WT = 41    # OP_LINEAR, float on the own GEMM: F_WEIGHT holds weight.T (in, out), and the product runs
                 # batch-invariant (gemm_packed_f32 on whole panels of images, gemm_rows_f32 on the rest)
    F_DIRECT = 42  # OP_CONV (float): direct convolution (csrc/direct.c) from the weights at F_PACKED
    OP_FIELDS = 43


def op_fields():
    """The op table's layout, for cyconv.predictor: {name: column}."""
    return dict(kind=F_KIND, act=F_ACT, pool=F_POOL, C=F_C, H=F_H, W=F_W, O=F_O, kh=F_KH, kw=F_KW, sh=F_SH,
                sw=F_SW, ph=F_PH, pw=F_PW, Ho=F_HO, Wo=F_WO, pkh=F_PKH, pkw=F_PKW, psh=F_PSH, psw=F_PSW, pph=F_PPH,
                ppw=F_PPW, pHo=F_PHO, pWo=F_PWO, pincl=F_PINCL, weight=F_WEIGHT, bias=F_BIAS, packed=F_PACKED,
                In=F_IN, Out=F_OUT, src=F_SRC, src2=F_SRC2, dst=F_DST, coff=F_COFF, ctot=F_CTOT, actp=F_ACTP,
                G=F_G, dh=F_DH, dw=F_DW, pstride=F_PSTRIDE, wino=F_WINO, u=F_U, wt=F_WT, direct=F_DIRECT,
                count=OP_FIELDS,
                ACT_HARDTANH=ACT_HARDTANH,
                POOL_ADAPTIVE=POOL_ADAPTIVE,
                OP_CONV=OP_CONV, OP_LINEAR=OP_LINEAR, OP_POOL=OP_POOL, OP_ACT=OP_ACT, OP_SOFTMAX=OP_SOFTMAX,
                OP_AFFINE=OP_AFFINE, OP_ADD=OP_ADD, OP_COPY=OP_COPY,
                ACT_NONE=ACT_NONE, ACT_RELU=ACT_RELU, ACT_SIGMOID=ACT_SIGMOID, ACT_TANH=ACT_TANH,
                ACT_LOG=ACT_LOG, POOL_NONE=POOL_NONE, POOL_MAX=POOL_MAX, POOL_AVG=POOL_AVG,
                LOC_X=LOC_X, LOC_OUT=LOC_OUT)


def packed_size(Py_ssize_t M, Py_ssize_t K, int isa):
    """Floats of an (M, K) weight packed for tier isa's GEMM."""
    return gemm_packed_size(gemm_kernel_for(isa), M, K)


def pack_weights(float[::1] packed, const float[::1] weight, Py_ssize_t M, Py_ssize_t K, int isa):
    # OUT packed (packed_size(M, K, isa),); IN weight (M, K)
    cdef const cyconv_gemm *g = gemm_kernel_for(isa)
    check_scratch("pack_weights", "packed", packed.shape[0], gemm_packed_size(g, M, K))
    gemm_pack_a_f32(g, &packed[0], &weight[0], M, K, K, 1)


cdef inline void activate(const Py_ssize_t *op, const floating *params, floating *y, const floating *x,
                          Py_ssize_t n) noexcept nogil:
    # y (n,) = op's activation of x; y may be x
    cdef int act = op[F_ACT]
    if act == ACT_HARDTANH:
        if floating is float:
            hardtanh_forward_f32(y, x, n, params[op[F_ACTP]], params[op[F_ACTP] + 1])
        else:
            hardtanh_forward_f64(y, x, n, params[op[F_ACTP]], params[op[F_ACTP] + 1])
    elif act == ACT_RELU:
        if floating is float:
            relu_forward_f32(y, x, n)
        else:
            relu_forward_f64(y, x, n)
    elif act == ACT_SIGMOID:
        if floating is float:
            sigmoid_forward_f32(y, x, n)
        else:
            sigmoid_forward_f64(y, x, n)
    elif act == ACT_TANH:
        if floating is float:
            tanh_forward_f32(y, x, n)
        else:
            tanh_forward_f64(y, x, n)


cdef inline void pool_plane(const Py_ssize_t *op, floating *y, const floating *x, bint relu) noexcept nogil:
    # one plane of op's pooling: x (H', W') -> y (pHo, pWo); relu: max_pool2d(relu(x))
    cdef Py_ssize_t H = op[F_HO], W = op[F_WO]
    if op[F_KIND] == OP_POOL:
        H, W = op[F_H], op[F_W]
    if op[F_POOL] == POOL_ADAPTIVE:
        if floating is float:
            adaptive_avg_pool2d_forward_f32(y, x, H, W, op[F_PHO], op[F_PWO])
        else:
            adaptive_avg_pool2d_forward_f64(y, x, H, W, op[F_PHO], op[F_PWO])
    elif op[F_POOL] == POOL_MAX:
        if floating is float:
            maxpool2d_forward_f32(y, NULL, x, H, W, op[F_PKH], op[F_PKW], op[F_PSH], op[F_PSW], op[F_PPH],
                                  op[F_PPW], op[F_PHO], op[F_PWO], relu)
        else:
            maxpool2d_forward_f64(y, NULL, x, H, W, op[F_PKH], op[F_PKW], op[F_PSH], op[F_PSW], op[F_PPH],
                                  op[F_PPW], op[F_PHO], op[F_PWO], relu)
    else:
        if floating is float:
            avgpool2d_forward_f32(y, x, H, W, op[F_PKH], op[F_PKW], op[F_PSH], op[F_PSW], op[F_PPH], op[F_PPW],
                                  op[F_PHO], op[F_PWO], op[F_PINCL])
        else:
            avgpool2d_forward_f64(y, x, H, W, op[F_PKH], op[F_PKW], op[F_PSH], op[F_PSW], op[F_PPH], op[F_PPW],
                                  op[F_PHO], op[F_PWO], op[F_PINCL])


cdef inline void conv_epilogue_plane(const Py_ssize_t *op, const floating *params, floating *y,
                                     floating *conv_out) noexcept nogil:
    # one output plane of a convolution op: its activation, then its pooling into y (if any).
    # ReLU before a max pooling is the pooling's relu flag; any other activation is applied in place.
    cdef Py_ssize_t L = op[F_HO] * op[F_WO]
    cdef bint relu_in_pool = op[F_ACT] == ACT_RELU and op[F_POOL] == POOL_MAX
    if not relu_in_pool:
        activate(op, params, conv_out, conv_out, L)
    if op[F_POOL] != POOL_NONE:
        pool_plane(op, y, conv_out, relu_in_pool)


cdef inline floating *location(Py_ssize_t loc, const floating *x, floating *out, floating *arena,
                               Py_ssize_t slot) noexcept nogil:
    if loc == LOC_X:
        return <floating *>x  # only ever read: the planner never writes the input
    if loc == LOC_OUT:
        return out
    return arena + loc * slot


def predict(floating[::1] out, const floating[::1] x, const Py_ssize_t[:, ::1] ops, const floating[::1] params,
            const float[::1] packed, int gemm_isa, floating[::1] arena, Py_ssize_t slot,
            floating[::1] scratch, Py_ssize_t per_thread, floating[::1] xpack, Py_ssize_t N, int num_threads):
    # OUT out (N, the output's size); IN x (N, the input's size); ops (nops, OP_FIELDS); params: every
    # weight and bias; packed: the float convolutions' weights packed for tier gemm_isa's GEMM.
    # arena (slots * slot, slot >= N * the largest value); SCRATCH (num_threads, per_thread): per thread
    # one image's im2col columns and its convolution output (with fewer images than threads, the same
    # space holds every image's); xpack: the batch's inputs of an F_WT linear layer packed (N * in).
    cdef Py_ssize_t nops = ops.shape[0], l, n, o, p, it, b, i, K, L, PL, C, H, W, O, chunk, loc, nslots = 0
    cdef const cyconv_gemm *g = gemm_kernel_for(gemm_isa)
    cdef const Py_ssize_t *op
    cdef const floating *src
    cdef const floating *src2
    cdef floating *dst
    cdef floating *buf
    cdef floating *conv_out
    cdef const floating *cols
    cdef const floating *w
    cdef const floating *bias
    cdef const float *pw_
    cdef bint direct, pooled, plain, wt
    cdef const void *wu
    cdef Py_ssize_t wsize, wtmp
    cdef int t
    if nops == 0 or N == 0:
        return
    check_scratch("predict", "scratch", scratch.shape[0], num_threads * per_thread)
    for l in range(nops):
        for loc in (ops[l, F_SRC], ops[l, F_SRC2], ops[l, F_DST]):
            nslots = max(nslots, loc + 1)
        if ops[l, F_DST] == LOC_X:
            raise ValueError("predict: an op writes the input (a planning bug)")
        if ops[l, F_KIND] == OP_LINEAR and ops[l, F_WT]:
            if floating is not float:
                raise ValueError("predict: a transposed-weight linear op in a float64 plan (a planning bug)")
            check_scratch("predict", "xpack", xpack.shape[0], N * ops[l, F_C])
        check_scratch("predict", "x" if ops[l, F_SRC] == LOC_X else "a value", x.shape[0] if ops[l, F_SRC] == LOC_X
                      else slot, N * ops[l, F_IN])
        check_scratch("predict", "out" if ops[l, F_DST] == LOC_OUT else "a slot", out.shape[0]
                      if ops[l, F_DST] == LOC_OUT else slot, N * (ops[l, F_CTOT] if ops[l, F_KIND] == OP_COPY
                                                                  else ops[l, F_OUT]))
    check_scratch("predict", "arena", arena.shape[0], nslots * slot)
    with nogil:
        blas_single_threaded()
        with parallel(num_threads=num_threads):
            for l in range(nops):
                op = &ops[l, 0]
                src = location(op[F_SRC], &x[0], &out[0], &arena[0] if nslots else NULL, slot)
                src2 = location(op[F_SRC2], &x[0], &out[0], &arena[0] if nslots else NULL, slot) \
                    if op[F_KIND] == OP_ADD else NULL
                dst = location(op[F_DST], &x[0], &out[0], &arena[0] if nslots else NULL, slot)
                if op[F_KIND] == OP_CONV:
                    C, H, W, O = op[F_C], op[F_H], op[F_W], op[F_O]
                    K = C * op[F_KH] * op[F_KW]
                    L = op[F_HO] * op[F_WO]
                    PL = op[F_PHO] * op[F_PWO] if op[F_POOL] != POOL_NONE else L
                    pooled = op[F_POOL] != POOL_NONE
                    direct = direct_conv(op[F_KH], op[F_KW], op[F_SH], op[F_SW], op[F_PH], op[F_PW])
                    w = &params[op[F_WEIGHT]]
                    bias = &params[op[F_BIAS]] if op[F_BIAS] >= 0 else NULL
                    pw_ = &packed[op[F_PACKED]] if op[F_PACKED] >= 0 else NULL
                    plain = op[F_G] == 1 and op[F_DH] == 1 and op[F_DW] == 1
                    if op[F_WINO] > 0:  # Winograd: filters transformed at compile
                        wu = <const void *>&packed[op[F_U]] if floating is float else <const void *>&params[op[F_U]]
                        # one image's v (n*n, C, T) then mm (n*n, O, T): wsize = n*n*(C + O)*T
                        wsize = winograd_image_size(C, O, op[F_HO], op[F_WO], op[F_WINO], op[F_KH])
                        wtmp = winograd_tmp_size(op[F_HO], op[F_WO], op[F_WINO], op[F_KH])
                        if N >= num_threads:  # an image per thread at a time
                            for n in prange(N, schedule='dynamic'):
                                buf = &scratch[threadid() * per_thread]
                                conv_out = buf + wsize + wtmp if pooled else dst + n * O * L
                                winograd_images(g, conv_out, buf, buf + wsize, src + n * C * H * W, wu, bias, 1, C, H,
                                                W, O, op[F_PH], op[F_PW], op[F_HO], op[F_WO], op[F_WINO], op[F_KH])
                                for p in range(O):
                                    conv_epilogue_plane(op, &params[0], dst + (n * O + p) * PL, conv_out + p * L)
                        else:  # fewer images than threads: the threads share each stage of each image
                            # scratch: the images' v and mm (wsize each), each thread's temporary (wtmp), then
                            # the images' conv outputs if pooled
                            for it in prange(N * num_threads, schedule='static'):
                                winograd_stage_part(0, g, NULL, &scratch[0] + it // num_threads * wsize, NULL,
                                                    &scratch[0] + N * wsize + threadid() * wtmp,
                                                    src + it // num_threads * C * H * W, wu, bias, 1, C, H, W, O,
                                                    op[F_PH], op[F_PW], op[F_HO], op[F_WO], op[F_WINO], op[F_KH],
                                                    it % num_threads, num_threads)
                            for it in prange(N * num_threads, schedule='static'):
                                winograd_stage_part(1, g, NULL, &scratch[0] + it // num_threads * wsize,
                                                    &scratch[0] + it // num_threads * wsize + wsize // (C + O) * C,
                                                    NULL, NULL, wu, bias, 1, C, H, W, O, op[F_PH], op[F_PW],
                                                    op[F_HO], op[F_WO], op[F_WINO], op[F_KH], it % num_threads,
                                                    num_threads)
                            for it in prange(N * num_threads, schedule='static'):
                                n = it // num_threads
                                conv_out = (&scratch[0] + N * wsize + num_threads * wtmp + n * O * L if pooled
                                            else dst + n * O * L)
                                winograd_stage_part(2, g, conv_out, NULL, &scratch[0] + n * wsize + wsize // (C + O) * C,
                                                    &scratch[0] + N * wsize + threadid() * wtmp, NULL, wu, bias, 1, C,
                                                    H, W, O, op[F_PH], op[F_PW], op[F_HO], op[F_WO], op[F_WINO],
                                                    op[F_KH], it % num_threads, num_threads)
                            for p in prange(N * O, schedule='static'):
                                conv_out = (&scratch[0] + N * wsize + num_threads * wtmp if pooled else dst)
                                conv_epilogue_plane(op, &params[0], dst + p * PL, conv_out + p * L)
                    elif op[F_DIRECT]:  # direct: each image's output rows in bands, no im2col buffer
                        if floating is float:
                            wsize = conv2d_direct_scratch_size(C, op[F_KH], op[F_KW], op[F_HO], op[F_WO])
                            wtmp = conv2d_direct_band_rows(C, op[F_KH], op[F_KW], op[F_HO], op[F_WO])
                            if N >= num_threads:  # an image per thread at a time
                                for n in prange(N, schedule='dynamic'):
                                    buf = &scratch[threadid() * per_thread]
                                    conv_out = buf + wsize if pooled else dst + n * O * L
                                    conv2d_direct_image_f32(g, conv_out, buf, src + n * C * H * W, pw_, bias, C, H, W,
                                                            O, op[F_KH], op[F_KW], op[F_SH], op[F_SW], op[F_PH],
                                                            op[F_PW], op[F_HO], op[F_WO])
                                    for p in range(O):
                                        conv_epilogue_plane(op, &params[0], dst + (n * O + p) * PL, conv_out + p * L)
                            else:  # fewer images than threads: the bands of each image shared by the threads
                                # scratch: each thread's band buffer, then the images' conv outputs if pooled
                                for it in prange(N * ((op[F_HO] + wtmp - 1) // wtmp), schedule='dynamic'):
                                    n = it // ((op[F_HO] + wtmp - 1) // wtmp)
                                    b = it % ((op[F_HO] + wtmp - 1) // wtmp)
                                    conv_out = (&scratch[0] + num_threads * wsize + n * O * L if pooled
                                                else dst + n * O * L)
                                    conv2d_direct_band_f32(g, conv_out, &scratch[0] + threadid() * wsize,
                                                           src + n * C * H * W, pw_, bias, C, H, W, O, op[F_KH],
                                                           op[F_KW], op[F_SH], op[F_SW], op[F_PH], op[F_PW],
                                                           op[F_HO], op[F_WO], b * wtmp,
                                                           min(op[F_HO], (b + 1) * wtmp))
                                for p in prange(N * O, schedule='static'):
                                    conv_out = &scratch[0] + num_threads * wsize if pooled else dst
                                    conv_epilogue_plane(op, &params[0], dst + p * PL, conv_out + p * L)
                    elif not plain and op[F_G] == C:  # depthwise (as functional.conv2d): a plane per output channel,
                        # read from input plane o // (O/C)
                        for p in prange(N * O, schedule='dynamic'):
                            n, o = p // O, p % O
                            conv_out = &scratch[threadid() * per_thread] if pooled else dst + p * L
                            depthwise_plane_forward(conv_out, src + (n * C + o // (O // C)) * H * W,
                                                    w + o * op[F_KH] * op[F_KW], bias + o if bias != NULL else NULL,
                                                    H, W, op[F_KH], op[F_KW], op[F_SH], op[F_SW], op[F_PH],
                                                    op[F_PW], op[F_DH], op[F_DW], op[F_HO], op[F_WO])
                            conv_epilogue_plane(op, &params[0], dst + p * PL, conv_out)
                    elif not plain:  # grouped or dilated: per image, group by group
                        for n in prange(N, schedule='dynamic'):
                            buf = &scratch[threadid() * per_thread]
                            conv_out = buf + K * L // op[F_G] if pooled else dst + n * O * L
                            grouped_conv_image(g, pw_, op[F_PSTRIDE], conv_out, buf, src + n * C * H * W, w, bias,
                                               C, H, W, O, op[F_G], op[F_KH], op[F_KW], op[F_SH], op[F_SW],
                                               op[F_PH], op[F_PW], op[F_DH], op[F_DW], op[F_HO], op[F_WO])
                            for p in range(O):
                                conv_epilogue_plane(op, &params[0], dst + (n * O + p) * PL, conv_out + p * L)
                    elif N >= num_threads:  # one image at a time per thread, in its cache
                        for n in prange(N, schedule='dynamic'):
                            buf = &scratch[threadid() * per_thread]
                            conv_out = buf + K * L if pooled else dst + n * O * L
                            conv_image(g, pw_, conv_out, buf, src + n * C * H * W, w, bias, C, H, W, O,
                                       op[F_KH], op[F_KW], op[F_SH], op[F_SW], op[F_PH], op[F_PW], op[F_HO],
                                       op[F_WO])
                            for p in range(O):
                                conv_epilogue_plane(op, &params[0], dst + (n * O + p) * PL, conv_out + p * L)
                    else:  # fewer images than threads: split each image's columns, then its planes
                        # scratch holds every image's columns (N*K*L) then conv outputs (N*O*L)
                        if not direct:
                            for it in prange(N * num_threads, schedule='static'):
                                n, t = it // num_threads, it % num_threads
                                conv_im2col_part(&scratch[0] + n * K * L, src + n * C * H * W, C, H, W, op[F_KH],
                                                 op[F_KW], op[F_SH], op[F_SW], op[F_PH], op[F_PW], op[F_HO],
                                                 op[F_WO], t, num_threads)
                        for it in prange(N * num_threads, schedule='static'):
                            n, t = it // num_threads, it % num_threads
                            cols = src + n * C * H * W if direct else &scratch[0] + n * K * L
                            conv_out = (&scratch[0] + N * K * L + n * O * L) if pooled else dst + n * O * L
                            conv_gemm_part(g, pw_, O, L, K, w, cols, conv_out, bias, t, num_threads)
                        for p in prange(N * O, schedule='static'):
                            conv_out = (&scratch[0] + N * K * L) if pooled else dst
                            conv_epilogue_plane(op, &params[0], dst + p * PL, conv_out + p * L)
                elif op[F_KIND] == OP_LINEAR:
                    C, O = op[F_C], op[F_O]
                    w = &params[op[F_WEIGHT]]
                    bias = &params[op[F_BIAS]] if op[F_BIAS] >= 0 else NULL
                    wt = False
                    if floating is float:
                        if op[F_WT]:  # y = x @ weight.T on the own GEMM, each image's row as any batch gives it
                            wt = True
                            for p in prange(N // g.mr, schedule='static'):  # whole panels of images, packed
                                gemm_pack_a_f32(g, &xpack[0] + p * g.mr * C, src + p * g.mr * C, g.mr, C, C, 1)
                            for b in prange((O + LINEAR_BLOCK - 1) // LINEAR_BLOCK, schedule='dynamic'):
                                linear_block_wt(g, dst, src, &xpack[0], w, bias, N, C, O, b)
                                for n in range(N):
                                    activate(op, &params[0], dst + n * O + b * LINEAR_BLOCK,
                                             dst + n * O + b * LINEAR_BLOCK,
                                             min(O, (b + 1) * LINEAR_BLOCK) - b * LINEAR_BLOCK)
                    for b in prange((O + LINEAR_BLOCK - 1) // LINEAR_BLOCK if not wt else 0, schedule='dynamic'):
                        linear_block(dst, src, w, bias, N, C, O, b)
                        for n in range(N):
                            activate(op, &params[0], dst + n * O + b * LINEAR_BLOCK, dst + n * O + b * LINEAR_BLOCK,
                                     min(O, (b + 1) * LINEAR_BLOCK) - b * LINEAR_BLOCK)
                elif op[F_KIND] == OP_POOL:
                    for p in prange(N * op[F_C], schedule='static'):
                        pool_plane(op, dst + p * op[F_PHO] * op[F_PWO], src + p * op[F_H] * op[F_W],
                                   op[F_ACT] == ACT_RELU)
                elif op[F_KIND] == OP_AFFINE:
                    C, L = op[F_C], op[F_H]
                    for n in prange(N, schedule='static'):
                        if floating is float:
                            channel_affine_f32(dst, src, &params[op[F_WEIGHT]], &params[op[F_BIAS]], C, L, n, n + 1)
                        else:
                            channel_affine_f64(dst, src, &params[op[F_WEIGHT]], &params[op[F_BIAS]], C, L, n, n + 1)
                        activate(op, &params[0], dst + n * C * L, dst + n * C * L, C * L)
                elif op[F_KIND] == OP_ACT or op[F_KIND] == OP_ADD:
                    chunk = (N * op[F_IN] + num_threads - 1) // num_threads
                    for t in prange(num_threads, schedule='static'):
                        i = t * chunk
                        if i < N * op[F_IN]:
                            if op[F_KIND] == OP_ACT:
                                activate(op, &params[0], dst + i, src + i, min(chunk, N * op[F_IN] - i))
                            else:
                                if floating is float:
                                    add_forward_f32(dst + i, src + i, src2 + i, min(chunk, N * op[F_IN] - i),
                                                    op[F_ACT] == ACT_RELU)
                                else:
                                    add_forward_f64(dst + i, src + i, src2 + i, min(chunk, N * op[F_IN] - i),
                                                    op[F_ACT] == ACT_RELU)
                                if op[F_ACT] != ACT_RELU:
                                    activate(op, &params[0], dst + i, dst + i, min(chunk, N * op[F_IN] - i))
                elif op[F_KIND] == OP_COPY:
                    for n in prange(N, schedule='static'):
                        for i in range(op[F_IN]):
                            dst[n * op[F_CTOT] + op[F_COFF] + i] = src[n * op[F_IN] + i]
                else:  # OP_SOFTMAX
                    for n in prange(N, schedule='static'):
                        softmax_row(dst + n * op[F_IN], src + n * op[F_IN], op[F_IN], op[F_ACT] == ACT_LOG)
