/*
 * cyconv's C kernels: the per-image / per-plane building blocks of a CNN.
 *
 * Layout: NCHW, C-contiguous. Every kernel works on one image or one plane and
 * is called by the Cython layer (src/cyconv/kernels/_kernels.pyx and its .pxi files), which owns the
 * OpenMP parallel loop, the BLAS calls and all validation. Prior validation is
 * assumed here: shapes are consistent and sizes fit in memory. Kernels never
 * print, assert or exit; where user data can be wrong (pooling indices) they
 * return a status code instead.
 *
 * Each kernel exists for float (_f32) and double (_f64); the bodies are
 * written once and instantiated for both types and for each ISA tier (see
 * instantiate.h and isa.h); the functions below run the current tier's copy.
 * Sizes and indices are ptrdiff_t: a batch of large images overflows int.
 */
#ifndef CYCONV_H
#define CYCONV_H

#include <stddef.h>
#include <stdint.h>

#include "isa.h"

/* im2col / col2im: one image (C,H,W) <-> its columns (C*kh*kw, Ho*Wo),
 * rows ordered (channel, kernel row, kernel column), row stride col_ld.
 * Padding is implicit: out-of-image taps read as 0 (no padded copy). */
void im2col_f32(float *cols, ptrdiff_t col_ld, const float *img,
                ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo);
void im2col_f64(double *cols, ptrdiff_t col_ld, const double *img,
                ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo);
/* col2im overwrites img with the sum of every column entry that maps to it. */
void col2im_f32(float *img, const float *cols, ptrdiff_t col_ld,
                ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo);
void col2im_f64(double *img, const double *cols, ptrdiff_t col_ld,
                ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                ptrdiff_t Ho, ptrdiff_t Wo);

/* im2col / col2im with dilation (dh, dw): tap (ki, kj) of output (oh, ow) is
 * input (oh*sh - ph + ki*dh, ow*sw - pw + kj*dw). Used only when dilation > 1. */
void im2col_dilated_f32(float *cols, ptrdiff_t col_ld, const float *img, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo);
void im2col_dilated_f64(double *cols, ptrdiff_t col_ld, const double *img, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo);
void col2im_dilated_f32(float *img, const float *cols, ptrdiff_t col_ld, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo);
void col2im_dilated_f64(double *img, const double *cols, ptrdiff_t col_ld, ptrdiff_t C, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                        ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Ho, ptrdiff_t Wo);

/* Depthwise convolution on one plane (depthwise.c): x (H,W) with one (kh,kw) filter w
 * -> y (Ho,Wo), overwritten; bias points at one value or is NULL. Stride, zero padding
 * and dilation as in conv2d. The input gradient ADDS dy's share into dx (H,W); the
 * weight gradient ADDS this plane's sums into dweight (kh,kw) and *dbias (unless NULL). */
void depthwise_conv2d_forward_f32(float *y, const float *x, const float *w, const float *bias,
                                  ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                  ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                  ptrdiff_t Ho, ptrdiff_t Wo);
void depthwise_conv2d_forward_f64(double *y, const double *x, const double *w, const double *bias,
                                  ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                  ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                  ptrdiff_t Ho, ptrdiff_t Wo);
void depthwise_conv2d_backward_input_f32(float *dx, const float *dy, const float *w, ptrdiff_t H,
                                         ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                         ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                         ptrdiff_t Ho, ptrdiff_t Wo);
void depthwise_conv2d_backward_input_f64(double *dx, const double *dy, const double *w, ptrdiff_t H,
                                         ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                         ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                         ptrdiff_t Ho, ptrdiff_t Wo);
void depthwise_conv2d_backward_weight_f32(float *dweight, float *dbias, const float *dy, const float *x,
                                          ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                          ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                          ptrdiff_t Ho, ptrdiff_t Wo);
void depthwise_conv2d_backward_weight_f64(double *dweight, double *dbias, const double *dy, const double *x,
                                          ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                          ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw,
                                          ptrdiff_t Ho, ptrdiff_t Wo);

/* Adaptive average pooling on one plane (adaptive_avgpool.c): x (H,W) -> y (Ho,Wo) with
 * PyTorch's bins [floor(i*H/Ho), ceil((i+1)*H/Ho)); sums in double. Backward overwrites dx (H,W).
 * Ho = Wo = 1 is a global average pool (its own loop). */
void adaptive_avg_pool2d_forward_f32(float *y, const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho,
                                     ptrdiff_t Wo);
void adaptive_avg_pool2d_forward_f64(double *y, const double *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho,
                                     ptrdiff_t Wo);
void adaptive_avg_pool2d_backward_f32(float *dx, const float *dy, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho,
                                      ptrdiff_t Wo);
void adaptive_avg_pool2d_backward_f64(double *dx, const double *dy, ptrdiff_t H, ptrdiff_t W, ptrdiff_t Ho,
                                      ptrdiff_t Wo);

/* Max pooling on one plane: x is (H,W), y and ind are (Ho,Wo).
 * ind (may be NULL) receives the flat position in x of each maximum; relu != 0
 * applies ReLU to y (max_pool2d(relu(x)) in one pass). */
void maxpool2d_forward_f32(float *y, int64_t *ind, const float *x,
                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                           ptrdiff_t Ho, ptrdiff_t Wo, int relu);
void maxpool2d_forward_f64(double *y, int64_t *ind, const double *x,
                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                           ptrdiff_t Ho, ptrdiff_t Wo, int relu);
/* dx (HW) = scatter-add of dy (L) through ind (L), skipping outputs whose
 * y (the ReLU-fused forward's output; NULL: none) is <= 0. Returns the number of
 * indices outside [0, HW) (they are skipped), so the caller can raise. */
ptrdiff_t maxpool2d_backward_f32(float *dx, const float *dy, const int64_t *ind, const float *y,
                                 ptrdiff_t HW, ptrdiff_t L);
ptrdiff_t maxpool2d_backward_f64(double *dx, const double *dy, const int64_t *ind, const double *y,
                                 ptrdiff_t HW, ptrdiff_t L);

/* ReLU on n contiguous elements. NaN propagates in forward, as in PyTorch. */
void relu_forward_f32(float *y, const float *x, ptrdiff_t n);
void relu_forward_f64(double *y, const double *x, ptrdiff_t n);
void relu_backward_f32(float *dx, const float *dy, const float *x, ptrdiff_t n);
void relu_backward_f64(double *dx, const double *dy, const double *x, ptrdiff_t n);
/* y = a + b on n elements, then ReLU when relu != 0; y may alias a or b. */
void add_forward_f32(float *y, const float *a, const float *b, ptrdiff_t n, int relu);
void add_forward_f64(double *y, const double *a, const double *b, ptrdiff_t n, int relu);

/* Hardtanh on n contiguous elements (hardtanh.c): y = min(max(x, lo), hi), NaN propagates;
 * backward passes dy strictly inside (lo, hi), 0 at and beyond the bounds (ReLU6: lo 0, hi 6). */
void hardtanh_forward_f32(float *y, const float *x, ptrdiff_t n, float lo, float hi);
void hardtanh_forward_f64(double *y, const double *x, ptrdiff_t n, double lo, double hi);
void hardtanh_backward_f32(float *dx, const float *dy, const float *x, ptrdiff_t n, float lo, float hi);
void hardtanh_backward_f64(double *dx, const double *dy, const double *x, ptrdiff_t n, double lo, double hi);

/* Sigmoid and tanh on n contiguous elements; backward from the forward's output y. */
void sigmoid_forward_f32(float *y, const float *x, ptrdiff_t n);
void sigmoid_forward_f64(double *y, const double *x, ptrdiff_t n);
void sigmoid_backward_f32(float *dx, const float *dy, const float *y, ptrdiff_t n);
void sigmoid_backward_f64(double *dx, const double *dy, const double *y, ptrdiff_t n);
void tanh_forward_f32(float *y, const float *x, ptrdiff_t n);
void tanh_forward_f64(double *y, const double *x, ptrdiff_t n);
void tanh_backward_f32(float *dx, const float *dy, const float *y, ptrdiff_t n);
void tanh_backward_f64(double *dx, const double *dy, const double *y, ptrdiff_t n);

/* Average pooling on one plane: x (H,W) -> y (Ho,Wo); backward overwrites dx (H,W). */
void avgpool2d_forward_f32(float *y, const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                           int count_include_pad);
void avgpool2d_forward_f64(double *y, const double *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                           int count_include_pad);
void avgpool2d_backward_f32(float *dx, const float *dy, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                            ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                            int count_include_pad);
void avgpool2d_backward_f64(double *dx, const double *dy, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                            ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                            int count_include_pad);

/* Bias add on a (O, L) output block with row stride ldy: y[o, :] += bias[o]. */
void add_bias_f32(float *y, ptrdiff_t ldy, const float *bias, ptrdiff_t O, ptrdiff_t L);
void add_bias_f64(double *y, ptrdiff_t ldy, const double *bias, ptrdiff_t O, ptrdiff_t L);
/* Row sums accumulated: acc[o] += sum(dy[o, :]) for a (O, L) block. */
void accumulate_row_sums_f32(float *acc, const float *dy, ptrdiff_t O, ptrdiff_t L);
void accumulate_row_sums_f64(double *acc, const double *dy, ptrdiff_t O, ptrdiff_t L);

/* cyconv's own float GEMM (gemm.c): C (M,N) = A @ B [+ C] [+ bias per row],
 * A packed by gemm_pack_a_f32 into gemm_packed_size(g, M, K) floats, B row-major
 * with leading dimension ldb. g is a tier's micro-kernel (gemm_kernel(): the
 * running tier's); take it once per operation, as packing depends on its mr. */
typedef struct cyconv_gemm {
    ptrdiff_t mr; /* rows of A per packed panel */
    ptrdiff_t nr; /* columns of B per block */
    ptrdiff_t kc; /* depth per pass: a kc x nr sliver of B fits L1 */
    void (*block)(ptrdiff_t K, const float *ap, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                  ptrdiff_t mr, ptrdiff_t nr, const float *bias, int accumulate);
    /* one row of a block, A's row read in place: each element as block computes it */
    void (*row)(ptrdiff_t K, const float *a, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t nr, int accumulate);
} cyconv_gemm;
const cyconv_gemm *gemm_kernel(void);
const cyconv_gemm *gemm_kernel_for(int isa); /* a given tier's (generic if unsupported) */
ptrdiff_t gemm_packed_size(const cyconv_gemm *g, ptrdiff_t M, ptrdiff_t K);
void gemm_pack_a_f32(const cyconv_gemm *g, float *packed, const float *a, ptrdiff_t M, ptrdiff_t K,
                     ptrdiff_t row_stride, ptrdiff_t col_stride);
void gemm_packed_f32(const cyconv_gemm *g, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *packed_a,
                     const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, const float *bias, int accumulate);
/* C (M,N) = A (M,K) @ B (K,N), A row-major (leading dimension lda) read in place, a row at a time:
 * every element equal, bit for bit, to what gemm_packed_f32 (no bias) computes for it, whatever M and
 * whichever rows it comes with. The predictor's linear layers use both: an image gets the same logits
 * in a batch of any size. */
void gemm_rows_f32(const cyconv_gemm *g, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float *a, ptrdiff_t lda,
                   const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc);
/* Weight gradient of a stride-1 convolution on one image without im2row (gemm.c):
 * dw (O,C,kh,kw) += dy (O,Ho,Wo) correlated with xp, the image padded to (C,Hp,Wp).
 * Used where conv_weight_grad_direct_fits() (kw <= 6, large planes, x86 tiers). */
int conv_weight_grad_direct_fits(ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo);
void conv_weight_grad_direct_f32(float *dw, const float *dy, const float *xp, ptrdiff_t O,
                                 ptrdiff_t C, ptrdiff_t Hp, ptrdiff_t Wp, ptrdiff_t kh,
                                 ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo);
/* The image (C,H,W) zero-padded to (C, H + 2*ph, W + 2*pw). */
void pad_image_f32(float *padded, const float *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                   ptrdiff_t ph, ptrdiff_t pw);
/* Direct convolution of one image (direct.c), float32, any stride and padding, no dilation:
 * y (O, Ho*Wo) = packed_w (O, C*kh*kw, packed by gemm_pack_a_f32 for g) applied to x (C,H,W)
 * gathered a band of conv2d_direct_band_rows() output rows at a time into scratch
 * (conv2d_direct_scratch_size() floats, per thread), + bias (O,) unless NULL. */
ptrdiff_t conv2d_direct_band_rows(ptrdiff_t C, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo);
ptrdiff_t conv2d_direct_scratch_size(ptrdiff_t C, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo);
void conv2d_direct_image_f32(const cyconv_gemm *g, float *y, float *scratch, const float *x,
                             const float *packed_w, const float *bias, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                             ptrdiff_t O, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                             ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo);
/* Output rows [oh0, oh1) only (at most conv2d_direct_band_rows()): bands of one image may run on
 * different threads. */
void conv2d_direct_band_f32(const cyconv_gemm *g, float *y, float *scratch, const float *x, const float *packed_w,
                            const float *bias, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t O, ptrdiff_t kh,
                            ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                            ptrdiff_t Wo, ptrdiff_t oh0, ptrdiff_t oh1);

/* im2row: one image (C,H,W) -> (Ho*Wo, C*kh*kw), the transpose of im2col. */
void im2row_f32(float *rows, const float *img, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo);

/* Winograd convolution F(m x m, r x r) for stride-1, undilated, ungrouped layers (winograd.c):
 * r = 3 with m = 2, 4, 6; r = 5 with m = 2, 4; n = m + r - 1 transform points per axis, T =
 * ceil(Ho/m) * ceil(Wo/m) tiles per image. v and mm hold tiles with a leading dimension ldt >= T
 * (several images side by side: image i's tiles start at column i*T). Output channels, points or
 * input channels [o0, o1) / [p0, p1) / [c0, c1) let several threads share one image.
 *   filter transform: u (n*n, O, C) from w (O, C, r, r), output channels [o0, o1)
 *   pack (float):     packed (winograd_packed_size()) from u, points [p0, p1), for g
 *   input transform:  v (n*n, C, ldt) from x (C, H, W), padding (ph, pw) (negative: cropped), channels [c0, c1)
 *   multiply:         mm (n*n, O, T) = u[p] @ v[p] (T columns, ldt = T): float u packed, double u plain
 *   output transform: y (O, Ho, Wo) from mm (n*n, O, ldt), + bias (NULL: none), output channels [o0, o1)
 *   conv2d_images:    the last three for nb images y (nb,O,Ho,Wo) from x (nb,C,H,W); scratch
 *                     nb * winograd_image_size() (v then mm), tmp winograd_tmp_size() (per thread,
 *                     which is also what each transform alone needs). */
int winograd_supported(ptrdiff_t m, ptrdiff_t r);
ptrdiff_t winograd_image_size(ptrdiff_t C, ptrdiff_t O, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r);
ptrdiff_t winograd_tmp_size(ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r);
ptrdiff_t winograd_packed_size(const cyconv_gemm *g, ptrdiff_t O, ptrdiff_t C, ptrdiff_t m, ptrdiff_t r);
void winograd_pack_filters_f32(const cyconv_gemm *g, float *packed, const float *u, ptrdiff_t O, ptrdiff_t C,
                               ptrdiff_t p0, ptrdiff_t p1);
void winograd_filter_transform_f32(float *u, const float *w, ptrdiff_t O, ptrdiff_t C, ptrdiff_t m,
                                   ptrdiff_t r, ptrdiff_t o0, ptrdiff_t o1);
void winograd_input_transform_f32(float *v, float *tmp, const float *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                                  ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m,
                                  ptrdiff_t r, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t ldt);
void winograd_multiply_f32(const cyconv_gemm *g, float *mm, const float *u, const float *v, ptrdiff_t O,
                           ptrdiff_t C, ptrdiff_t T, ptrdiff_t p0, ptrdiff_t p1);
void winograd_output_transform_f32(float *y, float *tmp, const float *mm, const float *bias, ptrdiff_t O,
                                   ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r, ptrdiff_t o0,
                                   ptrdiff_t o1, ptrdiff_t ldt);
void winograd_conv2d_images_f32(const cyconv_gemm *g, float *y, float *scratch, float *tmp, const float *x,
                                const float *u, const float *bias, ptrdiff_t nb, ptrdiff_t C, ptrdiff_t H,
                                ptrdiff_t W, ptrdiff_t O, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                                ptrdiff_t m, ptrdiff_t r);
void winograd_filter_transform_f64(double *u, const double *w, ptrdiff_t O, ptrdiff_t C, ptrdiff_t m,
                                   ptrdiff_t r, ptrdiff_t o0, ptrdiff_t o1);
void winograd_input_transform_f64(double *v, double *tmp, const double *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                                  ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m,
                                  ptrdiff_t r, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t ldt);
void winograd_multiply_f64(const cyconv_gemm *g, double *mm, const double *u, const double *v, ptrdiff_t O,
                           ptrdiff_t C, ptrdiff_t T, ptrdiff_t p0, ptrdiff_t p1);
void winograd_output_transform_f64(double *y, double *tmp, const double *mm, const double *bias, ptrdiff_t O,
                                   ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r, ptrdiff_t o0,
                                   ptrdiff_t o1, ptrdiff_t ldt);
void winograd_conv2d_images_f64(const cyconv_gemm *g, double *y, double *scratch, double *tmp, const double *x,
                                const double *u, const double *bias, ptrdiff_t nb, ptrdiff_t C, ptrdiff_t H,
                                ptrdiff_t W, ptrdiff_t O, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                                ptrdiff_t m, ptrdiff_t r);

/* One in-place SGD step (momentum, weight decay) on n elements; buf may be NULL. */
void sgd_update_f32(float *p, float *buf, const float *grad, ptrdiff_t n,
                    float lr, float momentum, float weight_decay, int first_step);
void sgd_update_f64(double *p, double *buf, const double *grad, ptrdiff_t n,
                    double lr, double momentum, double weight_decay, int first_step);
/* One in-place Adam (decoupled=0) or AdamW (decoupled=1) step on n elements; step_size and
 * sqrt_bc2 carry the step's bias corrections (optim.c). */
void adam_update_f32(float *p, float *m, float *v, const float *grad, ptrdiff_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, int decoupled, float step_size, float sqrt_bc2);
void adam_update_f64(double *p, double *m, double *v, const double *grad, ptrdiff_t n, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int decoupled, double step_size,
                     double sqrt_bc2);

/* Dropout (dropout.c): y = x * (keep ? scale : 0) for elements start .. start+n-1 of a call, keep from a
 * hash of (seed, index); dropout_keys turns the seed into the hash's keys. */
void dropout_keys(uint64_t seed, uint32_t *k0, uint32_t *k1);
void dropout_apply_f32(float *y, const float *x, ptrdiff_t n, uint32_t start, uint32_t k0, uint32_t k1,
                       uint32_t threshold, float scale);
void dropout_apply_f64(double *y, const double *x, ptrdiff_t n, uint32_t start, uint32_t k0, uint32_t k1,
                       uint32_t threshold, double scale);

/* Batch normalisation on (N, C, L) (batchnorm.c): per-channel statistics and sums over channels
 * [c0, c1), in double; per-channel affine maps over images [n0, n1). */
void batchnorm_stats_f32(double *mean, double *var, const float *x, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L,
                         ptrdiff_t c0, ptrdiff_t c1);
void batchnorm_stats_f64(double *mean, double *var, const double *x, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L,
                         ptrdiff_t c0, ptrdiff_t c1);
void batchnorm_backward_sums_f32(double *sum_dy, double *sum_dy_xmu, const float *dy, const float *x,
                                 const float *mean, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, ptrdiff_t c0,
                                 ptrdiff_t c1);
void batchnorm_backward_sums_f64(double *sum_dy, double *sum_dy_xmu, const double *dy, const double *x,
                                 const double *mean, ptrdiff_t N, ptrdiff_t C, ptrdiff_t L, ptrdiff_t c0,
                                 ptrdiff_t c1);
void channel_affine_f32(float *y, const float *x, const float *a, const float *b, ptrdiff_t C, ptrdiff_t L,
                        ptrdiff_t n0, ptrdiff_t n1);
void channel_affine_f64(double *y, const double *x, const double *a, const double *b, ptrdiff_t C, ptrdiff_t L,
                        ptrdiff_t n0, ptrdiff_t n1);
void channel_affine_grad_f32(float *dx, const float *dy, const float *x, const float *a, const float *b,
                             const float *d, ptrdiff_t C, ptrdiff_t L, ptrdiff_t n0, ptrdiff_t n1);
void channel_affine_grad_f64(double *dx, const double *dy, const double *x, const double *a, const double *b,
                             const double *d, ptrdiff_t C, ptrdiff_t L, ptrdiff_t n0, ptrdiff_t n1);

/* HOG of one image img (H,W,C), channels last, as skimage.feature.hog with
 * block_norm='L2-Hys': out is (H/cr - br + 1, W/cc - bc + 1, br, bc, n_orient),
 * cells cr x cc pixels, blocks br x bc cells. hist is scratch of
 * (H/cr)*(W/cc)*n_orient floats. Colour: per pixel, the channel with the
 * largest gradient (skimage's channel_axis=-1). */
void hog_f32(float *out, float *hist, const float *img, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
             ptrdiff_t n_orient, ptrdiff_t cr, ptrdiff_t cc, ptrdiff_t br, ptrdiff_t bc);
void hog_f64(double *out, float *hist, const double *img, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
             ptrdiff_t n_orient, ptrdiff_t cr, ptrdiff_t cc, ptrdiff_t br, ptrdiff_t bc);

#endif /* CYCONV_H */
