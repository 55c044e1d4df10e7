# grouped.pxi, included by _kernels.pyx. Grouped, depthwise and dilated convolution (csrc/depthwise.c,
# csrc/im2col.c). Twin: reference.conv2d with groups and dilation. Tests: tests/test_conv2d_groups.py.

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


cdef int check_grouped_arrays(str kernel, str y_name, Py_ssize_t y_len, Py_ssize_t x_len, Py_ssize_t weight_len,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t O, Py_ssize_t K,
                              Py_ssize_t L) except -1:
    # The arrays that the four kernels below, forward and backward, read or write whole: y_name, y or
    # grad_y (N,O,L); x (N,C,HW); weight (O,K), K being one output channel's weights.
    check_scratch(kernel, y_name, y_len, N * O * L)
    check_scratch(kernel, "x", x_len, N * C * HW)
    check_scratch(kernel, "weight", weight_len, O * K)
    return 0


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
    check_grouped_arrays("depthwise_conv2d_forward", "y", y.shape[0], x.shape[0], weight.shape[0], N, C, H * W, O, K, L)
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
    check_grouped_arrays("depthwise_conv2d_backward", "grad_y", grad_y.shape[0], x.shape[0], weight.shape[0],
                         N, C, HW, O, K, L)
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
    check_grouped_arrays("grouped_conv2d_forward", "y", y.shape[0], x.shape[0], weight.shape[0], N, C, H * W, O, K, L)
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
    check_grouped_arrays("grouped_conv2d_backward", "grad_y", grad_y.shape[0], x.shape[0], weight.shape[0],
                         N, C, H * W, O, K, L)
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
