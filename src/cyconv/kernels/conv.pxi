# conv.pxi, included by _kernels.pyx. Convolution: im2col + GEMM (csrc/im2col.c, csrc/gemm.c), conv2d + ReLU +
# max_pool2d fused, direct convolution (csrc/direct.c), and im2col/col2im as ops. Twins: reference.conv2d,
# reference.conv2d_relu_max_pool2d, reference.im2col/col2im. Tests: tests/test_conv2d.py,
# test_conv2d_relu_max_pool2d.py, test_im2col.py.

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
