# predict.pxi, included by _kernels.pyx. The compiled forward of cyconv.compile (cyconv.deploy.predictor):
# every op above in one parallel region. Tests: tests/test_predictor.py.

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
