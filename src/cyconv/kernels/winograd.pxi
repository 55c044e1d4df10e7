# winograd.pxi, included by _kernels.pyx. Winograd convolution (csrc/winograd.c). Twin: reference.conv2d.
# Tests: tests/test_winograd.py.

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
