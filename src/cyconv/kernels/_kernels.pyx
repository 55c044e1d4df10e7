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


# The ops, one file per family; each file names its C sources, NumPy twins and tests. They are
# included (one extension module: one build, one OpenMP probe), in this order: common.pxi first, since
# the others use it, and predict.pxi last, since it runs the bodies of all the others.
include "common.pxi"
include "conv.pxi"
include "grouped.pxi"
include "winograd.pxi"
include "linear.pxi"
include "pool.pxi"
include "activations.pxi"
include "batchnorm.pxi"
include "optim.pxi"
include "features.pxi"
include "predict.pxi"
