/*
 * kernel_check: every kernel of csrc/ against a plain C loop, over a grid of
 * shapes, for float and double and for every ISA tier this build and CPU run.
 *
 * The Python tests hold the kernels to NumPy; this holds them to C, without
 * Python, so that a platform with no Python of its own can run it: CI builds it
 * with aarch64-linux-gnu-gcc -static and runs it under qemu-aarch64, which is
 * how the generic tier is executed on ARM (NEON). It also runs natively, on
 * every x86 tier. The references are written for clarity, not speed, each the
 * definition in csrc/cyconv.h. Left out on purpose: HOG (its reference is
 * scikit-image's, in tests/test_features.py), where only float against double
 * of the same kernel is compared here.
 *
 * Build (from the checkout):
 *     cc -std=c11 -O2 -Icsrc tests/c/kernel_check.c csrc/\*.c -lm -o kernel_check
 * Prints one line per kernel and type; exits 1 on the first mismatch, naming
 * the kernel, tier, shape and element.
 */
#ifndef real

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cyconv.h"

static const char *tier_name[CYCONV_ISA_COUNT] = {"generic", "avx2", "avx512"};
static int tier;
static long checked;

/* Values in [-1, 1) from a fixed LCG: the same on every platform. */
static uint64_t lcg_state = 88172645463325252ull;
static double uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

static void *alloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "kernel_check: out of memory\n");
        exit(2);
    }
    return p;
}

static void fail(const char *what, const char *type, const char *shape, ptrdiff_t i, double got, double want)
{
    printf("MISMATCH %s (%s, tier %s) at %s, element %td: got %.9g, expected %.9g\n", what, type,
           tier_name[tier], shape, i, got, want);
    exit(1);
}

static uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* One instantiation per type: float, then double. */
#define real float
#define SFX(name) name##_f32
#define TYPE "float32"
#define RTOL 2e-5
#include "kernel_check.c"
#undef real
#undef SFX
#undef TYPE
#undef RTOL

static void check_f32_values(const char *what, const char *shape, const float *got, const double *want,
                             ptrdiff_t n)
{
    expect_f32(what, shape, got, want, n);
}

#define real double
#define SFX(name) name##_f64
#define TYPE "float64"
#define RTOL 1e-12
#include "kernel_check.c"
#undef real
#undef SFX
#undef TYPE
#undef RTOL

/* im2row and pad_image are float only. rows is exactly (Ho*Wo, C*kh*kw): a vector store past its end
 * would show under ASan (CI's sanitizer build runs this driver too). */
static void check_im2row(void)
{
    static const ptrdiff_t sizes[][2] = {{1, 1}, {5, 7}, {8, 8}, {13, 6}, {28, 28}};
    for (size_t s = 0; s < 5; s++)
        for (ptrdiff_t C = 1; C <= 3; C += 2)
            for (ptrdiff_t k = 1; k <= 9; k += 2)
                for (ptrdiff_t st = 1; st <= 2; st++)
                    for (ptrdiff_t pad = 0; pad <= 2; pad++) {
                        ptrdiff_t H = sizes[s][0], W = sizes[s][1], Hp = H + 2 * pad, Wp = W + 2 * pad;
                        if (Hp < k || Wp < k) continue;
                        ptrdiff_t Ho = (Hp - k) / st + 1, Wo = (Wp - k) / st + 1, K = C * k * k, L = Ho * Wo;
                        char shape[96];
                        snprintf(shape, sizeof shape, "C %td H %td W %td k %td stride %td pad %td", C, H, W, k, st,
                                 pad);
                        float *img = alloc((size_t)(C * H * W), sizeof *img), *rows = alloc((size_t)(L * K), 4);
                        float *padded = alloc((size_t)(C * Hp * Wp), sizeof *padded);
                        double *want = alloc((size_t)(L * K), sizeof *want);
                        double *wpad = alloc((size_t)(C * Hp * Wp), sizeof *wpad);
                        for (ptrdiff_t i = 0; i < C * H * W; i++) img[i] = (float)uniform();
                        for (ptrdiff_t l = 0; l < L; l++)
                            for (ptrdiff_t r = 0; r < K; r++) {
                                ptrdiff_t c = r / (k * k), ih = l / Wo * st - pad + r / k % k;
                                ptrdiff_t iw = l % Wo * st - pad + r % k;
                                int in = ih >= 0 && ih < H && iw >= 0 && iw < W;
                                want[l * K + r] = in ? img[(c * H + ih) * W + iw] : 0;
                            }
                        for (ptrdiff_t c = 0; c < C; c++)
                            for (ptrdiff_t h = 0; h < H; h++)
                                for (ptrdiff_t w = 0; w < W; w++)
                                    wpad[(c * Hp + h + pad) * Wp + w + pad] = img[(c * H + h) * W + w];
                        im2row_f32(rows, img, C, H, W, k, k, st, st, pad, pad, Ho, Wo);
                        check_f32_values("im2row", shape, rows, want, L * K);
                        pad_image_f32(padded, img, C, H, W, pad, pad);
                        check_f32_values("pad_image", shape, padded, wpad, C * Hp * Wp);
                        free(img), free(rows), free(padded), free(want), free(wpad);
                    }
}

/* The direct weight gradient (float only), on whatever tier runs: dw (O,C,k,k) += dy (O,Ho,Wo) correlated
 * with the padded image, stride 1, kernels up to 6 wide (what conv_weight_grad_direct_fits() admits), any
 * number of output channels against the tier's block of them, rows shorter and longer than a vector. */
static void check_weight_grad_direct(void)
{
    static const ptrdiff_t sizes[][2] = {{1, 1}, {5, 7}, {8, 8}, {13, 17}, {28, 28}, {9, 40}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (ptrdiff_t O = 1; O <= 5; O += 2)
            for (ptrdiff_t C = 1; C <= 3; C += 2)
                for (ptrdiff_t k = 1; k <= 6; k++)
                    for (ptrdiff_t pad = 0; pad <= 2; pad++) {
                        ptrdiff_t H = sizes[s][0], W = sizes[s][1], Hp = H + 2 * pad, Wp = W + 2 * pad;
                        if (Hp < k || Wp < k) continue;
                        ptrdiff_t Ho = Hp - k + 1, Wo = Wp - k + 1, n = O * C * k * k;
                        char shape[96];
                        snprintf(shape, sizeof shape, "O %td C %td H %td W %td k %td pad %td", O, C, H, W, k, pad);
                        float *img = alloc((size_t)(C * H * W), sizeof *img), *xp = alloc((size_t)(C * Hp * Wp), 4);
                        float *dy = alloc((size_t)(O * Ho * Wo), sizeof *dy), *dw = alloc((size_t)n, sizeof *dw);
                        double *want = alloc((size_t)n, sizeof *want);
                        for (ptrdiff_t i = 0; i < C * H * W; i++) img[i] = (float)uniform();
                        for (ptrdiff_t i = 0; i < O * Ho * Wo; i++) dy[i] = (float)uniform();
                        for (ptrdiff_t i = 0; i < n; i++) want[i] = dw[i] = (float)uniform();
                        pad_image_f32(xp, img, C, H, W, pad, pad);
                        for (ptrdiff_t o = 0; o < O; o++)
                            for (ptrdiff_t c = 0; c < C; c++)
                                for (ptrdiff_t i = 0; i < k * k; i++)
                                    for (ptrdiff_t oh = 0; oh < Ho; oh++)
                                        for (ptrdiff_t ow = 0; ow < Wo; ow++)
                                            want[(o * C + c) * k * k + i] +=
                                                (double)dy[(o * Ho + oh) * Wo + ow] *
                                                xp[(c * Hp + oh + i / k) * Wp + ow + i % k];
                        conv_weight_grad_direct_f32(dw, dy, xp, O, C, Hp, Wp, k, k, Ho, Wo);
                        for (ptrdiff_t i = 0; i < n; i++)
                            if (fabs(dw[i] - want[i]) > 1e-6 * (double)(Ho * Wo + 1))
                                fail("conv_weight_grad_direct", "float32", shape, i, dw[i], want[i]);
                        checked += n;
                        free(img), free(xp), free(dy), free(dw), free(want);
                    }
}

/* gemm is float only: every tier's micro-kernel, whatever tier runs. */
static void check_gemm(void)
{
    static const ptrdiff_t Ms[] = {1, 3, 7, 17, 33}, Ns[] = {1, 5, 16, 31, 70}, Ks[] = {0, 1, 4, 9, 300};
    for (int isa = 0; isa < CYCONV_ISA_COUNT; isa++) {
        if (!cyconv_isa_supported(isa)) continue;
        const cyconv_gemm *g = gemm_kernel_for(isa);
        for (size_t a = 0; a < 5; a++)
            for (size_t b = 0; b < 5; b++)
                for (size_t k = 0; k < 5; k++)
                    for (int variant = 0; variant < 4; variant++) {
                        ptrdiff_t M = Ms[a], N = Ns[b], K = Ks[k], ldb = N + 3, ldc = N + 2;
                        int with_bias = variant & 1, accumulate = variant >> 1;
                        float *A = alloc((size_t)(M * K), sizeof *A), *B = alloc((size_t)(K * ldb), sizeof *B);
                        float *P = alloc((size_t)gemm_packed_size(g, M, K), sizeof *P);
                        float *C = alloc((size_t)(M * ldc), sizeof *C), *bias = alloc((size_t)M, sizeof *bias);
                        double *want = alloc((size_t)(M * ldc), sizeof *want);
                        for (ptrdiff_t i = 0; i < M * K; i++) A[i] = (float)uniform();
                        for (ptrdiff_t i = 0; i < K * ldb; i++) B[i] = (float)uniform();
                        for (ptrdiff_t i = 0; i < M; i++) bias[i] = (float)uniform();
                        for (ptrdiff_t i = 0; i < M * ldc; i++) want[i] = C[i] = (float)uniform();
                        for (ptrdiff_t i = 0; i < M; i++)
                            for (ptrdiff_t j = 0; j < N; j++) {
                                double s = accumulate ? want[i * ldc + j] : 0;
                                if (with_bias) s += bias[i];
                                for (ptrdiff_t q = 0; q < K; q++) s += (double)A[i * K + q] * B[q * ldb + j];
                                want[i * ldc + j] = s;
                            }
                        gemm_pack_a_f32(g, P, A, M, K, K, 1);
                        gemm_packed_f32(g, M, N, K, P, B, ldb, C, ldc, with_bias ? bias : NULL, accumulate);
                        char shape[96];
                        snprintf(shape, sizeof shape, "M %td N %td K %td bias %d accumulate %d, kernel %s", M, N,
                                 K, with_bias, accumulate, tier_name[isa]);
                        for (ptrdiff_t i = 0; i < M * ldc; i++) {
                            double w = want[i], tol = 1e-5 * (double)(K + 2);
                            if (fabs(C[i] - w) > tol) fail("gemm_packed", "float32", shape, i, C[i], w);
                        }
                        checked += M * ldc;
                        if (!with_bias && !accumulate) { // a row at a time: the same bits as in the panels
                            float *R = alloc((size_t)(M * ldc), sizeof *R);
                            for (ptrdiff_t i = 0; i < M * ldc; i++) R[i] = C[i];
                            gemm_rows_f32(g, M, N, K, A, K, B, ldb, R, ldc);
                            for (ptrdiff_t i = 0; i < M * ldc; i++)
                                if (memcmp(&R[i], &C[i], sizeof R[i]) != 0)
                                    fail("gemm_rows", "float32", shape, i, R[i], C[i]);
                            checked += M * ldc;
                            free(R);
                        }
                        free(A), free(B), free(P), free(C), free(bias), free(want);
                    }
    }
}

/* direct.c: one image's convolution in bands of output rows (1x1 strided and padded, 3x3 and 7x7
 * strided) against plain loops in double; images tall enough for several bands, and a band
 * split that must give the image's bits. Per tier, through that tier's GEMM. */
static void check_direct(void)
{
    static const ptrdiff_t geo[][8] = { /* C, O, H, W, k, stride, pad */
        {3, 5, 9, 7, 1, 2, 0, 0}, {4, 6, 8, 8, 1, 1, 1, 0}, {3, 8, 23, 21, 7, 2, 3, 0},
        {5, 7, 11, 12, 3, 2, 1, 0}, {2, 5, 17, 15, 7, 3, 2, 0}, {64, 9, 40, 40, 3, 2, 1, 0},
    };
    const cyconv_gemm *g = gemm_kernel_for(cyconv_get_isa());
    for (size_t gi = 0; gi < sizeof geo / sizeof geo[0]; gi++) {
        ptrdiff_t C = geo[gi][0], O = geo[gi][1], H = geo[gi][2], W = geo[gi][3], k = geo[gi][4], st = geo[gi][5];
        ptrdiff_t pad = geo[gi][6], Ho = (H + 2 * pad - k) / st + 1, Wo = (W + 2 * pad - k) / st + 1, K = C * k * k;
        float *x = alloc((size_t)(C * H * W), sizeof *x), *w = alloc((size_t)(O * K), sizeof *w);
        float *bias = alloc((size_t)O, sizeof *bias), *y = alloc((size_t)(O * Ho * Wo), sizeof *y);
        float *y2 = alloc((size_t)(O * Ho * Wo), sizeof *y2);
        float *P = alloc((size_t)gemm_packed_size(g, O, K), sizeof *P);
        float *scratch = alloc((size_t)conv2d_direct_scratch_size(C, k, k, Ho, Wo), sizeof *scratch);
        for (ptrdiff_t i = 0; i < C * H * W; i++) x[i] = (float)uniform();
        for (ptrdiff_t i = 0; i < O * K; i++) w[i] = (float)uniform();
        for (ptrdiff_t i = 0; i < O; i++) bias[i] = (float)uniform();
        gemm_pack_a_f32(g, P, w, O, K, K, 1);
        conv2d_direct_image_f32(g, y, scratch, x, P, bias, C, H, W, O, k, k, st, st, pad, pad, Ho, Wo);
        /* one output row per band: the same bits */
        for (ptrdiff_t oh = 0; oh < Ho; oh++)
            conv2d_direct_band_f32(g, y2, scratch, x, P, bias, C, H, W, O, k, k, st, st, pad, pad, Ho, Wo, oh, oh + 1);
        char shape[96];
        snprintf(shape, sizeof shape, "C %td O %td %tdx%td k %td s %td p %td, %s", C, O, H, W, k, st, pad,
                 tier_name[cyconv_get_isa()]);
        for (ptrdiff_t o = 0; o < O; o++)
            for (ptrdiff_t i = 0; i < Ho * Wo; i++) {
                double s = bias[o];
                for (ptrdiff_t c = 0; c < C; c++)
                    for (ptrdiff_t a = 0; a < k; a++)
                        for (ptrdiff_t b = 0; b < k; b++) {
                            ptrdiff_t h = i / Wo * st - pad + a, v = i % Wo * st - pad + b;
                            if (h >= 0 && h < H && v >= 0 && v < W)
                                s += (double)w[(o * C + c) * k * k + a * k + b] * x[(c * H + h) * W + v];
                        }
                float got = y[o * Ho * Wo + i];
                if (fabs(got - s) > 1e-5 * (double)(K + 2)) fail("conv2d_direct_image", "float32", shape, i, got, s);
                if (memcmp(&got, &y2[o * Ho * Wo + i], sizeof got) != 0)
                    fail("conv2d_direct_band", "float32", shape, i, y2[o * Ho * Wo + i], got);
            }
        checked += 2 * O * Ho * Wo;
        free(x), free(w), free(bias), free(y), free(y2), free(P), free(scratch);
    }
}

int main(void)
{
    int tiers = 0;
    for (tier = 0; tier < CYCONV_ISA_COUNT; tier++) {
        if (cyconv_set_isa(tier) != 0) continue;
        tiers++;
        check_all_f32();
        check_all_f64();
        check_im2row();
        check_weight_grad_direct();
        check_direct();
    }
    tier = CYCONV_ISA_GENERIC;
    check_gemm();
    printf("kernel_check: %ld values agree on %d tier(s) (%s), built by %s\n", checked, tiers,
           CYCONV_X86 ? "x86-64" : "generic only", cyconv_compiler());
    return 0;
}

#else /* per type */

/* Compare got (n values) with want; tolerance RTOL x the largest |want| (and 1). */
static void SFX(expect)(const char *what, const char *shape, const real *got, const double *want, ptrdiff_t n)
{
    double scale = 1;
    for (ptrdiff_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (ptrdiff_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= RTOL * 64 * scale)) fail(what, TYPE, shape, i, got[i], want[i]);
    checked += n;
}

static real *SFX(random)(ptrdiff_t n)
{
    real *p = alloc((size_t)n, sizeof *p);
    for (ptrdiff_t i = 0; i < n; i++) p[i] = (real)uniform();
    return p;
}

/* im2col, col2im (plain and dilated), im2row, pad_image, add_bias, row sums. */
static void SFX(check_columns)(void)
{
    static const ptrdiff_t sizes[][2] = {{1, 1}, {5, 7}, {8, 8}, {13, 6}};
    for (size_t s = 0; s < 4; s++)
        for (ptrdiff_t C = 1; C <= 3; C += 2)
            for (ptrdiff_t k = 1; k <= 5; k++)
                for (ptrdiff_t st = 1; st <= 2; st++)
                    for (ptrdiff_t pad = 0; pad <= 2; pad++)
                        for (ptrdiff_t dil = 1; dil <= 2; dil++) {
                            ptrdiff_t H = sizes[s][0], W = sizes[s][1], kh = k, kw = k == 5 ? 3 : k;
                            ptrdiff_t Ho = (H + 2 * pad - dil * (kh - 1) - 1) / st + 1;
                            ptrdiff_t Wo = (W + 2 * pad - dil * (kw - 1) - 1) / st + 1;
                            if (H + 2 * pad < dil * (kh - 1) + 1 || W + 2 * pad < dil * (kw - 1) + 1) continue;
                            ptrdiff_t K = C * kh * kw, L = Ho * Wo, ld = L + 1;
                            char shape[128];
                            snprintf(shape, sizeof shape, "C %td H %td W %td k %tdx%td stride %td pad %td dil %td",
                                     C, H, W, kh, kw, st, pad, dil);
                            real *img = SFX(random)(C * H * W), *cols = SFX(random)(K * ld);
                            real *back = SFX(random)(C * H * W);
                            double *want = alloc((size_t)(K * ld), sizeof *want);
                            double *wimg = alloc((size_t)(C * H * W), sizeof *wimg);
                            for (ptrdiff_t r = 0; r < K; r++) {
                                ptrdiff_t c = r / (kh * kw), ki = r / kw % kh, kj = r % kw;
                                for (ptrdiff_t l = 0; l < L; l++) {
                                    ptrdiff_t ih = l / Wo * st - pad + ki * dil, iw = l % Wo * st - pad + kj * dil;
                                    int in = ih >= 0 && ih < H && iw >= 0 && iw < W;
                                    want[r * ld + l] = in ? img[(c * H + ih) * W + iw] : 0;
                                    if (in) wimg[(c * H + ih) * W + iw] += cols[r * ld + l];
                                }
                                want[r * ld + L] = cols[r * ld + L]; /* the padding column is left alone */
                            }
                            if (dil == 1) {
                                SFX(col2im)(back, cols, ld, C, H, W, kh, kw, st, st, pad, pad, Ho, Wo);
                                SFX(expect)("col2im", shape, back, wimg, C * H * W);
                                SFX(im2col)(cols, ld, img, C, H, W, kh, kw, st, st, pad, pad, Ho, Wo);
                                SFX(expect)("im2col", shape, cols, want, K * ld);
                            } else {
                                SFX(col2im_dilated)(back, cols, ld, C, H, W, kh, kw, st, st, pad, pad, dil, dil, Ho,
                                                    Wo);
                                SFX(expect)("col2im_dilated", shape, back, wimg, C * H * W);
                                SFX(im2col_dilated)(cols, ld, img, C, H, W, kh, kw, st, st, pad, pad, dil, dil, Ho,
                                                    Wo);
                                SFX(expect)("im2col_dilated", shape, cols, want, K * ld);
                            }
                            /* add_bias on the (K, L) block of cols, row stride ld */
                            real *bias = SFX(random)(K);
                            for (ptrdiff_t r = 0; r < K; r++) {
                                for (ptrdiff_t l = 0; l < L; l++) want[r * ld + l] = (double)cols[r * ld + l] + bias[r];
                                want[r * ld + L] = cols[r * ld + L];
                            }
                            SFX(add_bias)(cols, ld, bias, K, L);
                            SFX(expect)("add_bias", shape, cols, want, K * ld);
                            free(img), free(cols), free(back), free(want), free(wimg), free(bias);
                        }
    /* accumulate_row_sums on dense (O, L) blocks */
    for (ptrdiff_t O = 1; O <= 9; O += 4)
        for (ptrdiff_t L = 1; L <= 70; L += 23) {
            real *dy = SFX(random)(O * L), *acc = SFX(random)(O);
            double *want = alloc((size_t)O, sizeof *want);
            for (ptrdiff_t o = 0; o < O; o++) {
                want[o] = acc[o];
                for (ptrdiff_t l = 0; l < L; l++) want[o] += dy[o * L + l];
            }
            SFX(accumulate_row_sums)(acc, dy, O, L);
            char shape[48];
            snprintf(shape, sizeof shape, "O %td L %td", O, L);
            SFX(expect)("accumulate_row_sums", shape, acc, want, O);
            free(dy), free(acc), free(want);
        }
}

/* Elementwise: relu, add, hardtanh, sigmoid, tanh, sgd, adam, dropout. */
static void SFX(check_elementwise)(void)
{
    static const ptrdiff_t ns[] = {0, 1, 7, 16, 33, 1000};
    for (size_t s = 0; s < 6; s++) {
        ptrdiff_t n = ns[s];
        char shape[32];
        snprintf(shape, sizeof shape, "n %td", n);
        real *x = SFX(random)(n), *dy = SFX(random)(n), *b = SFX(random)(n), *y = SFX(random)(n);
        double *want = alloc((size_t)n, sizeof *want);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = x[i] > 0 ? x[i] : 0;
        SFX(relu_forward)(y, x, n);
        SFX(expect)("relu_forward", shape, y, want, n);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = x[i] > 0 ? dy[i] : 0;
        SFX(relu_backward)(y, dy, x, n);
        SFX(expect)("relu_backward", shape, y, want, n);
        for (int relu = 0; relu <= 1; relu++) {
            for (ptrdiff_t i = 0; i < n; i++) {
                real v = x[i] + b[i];
                want[i] = relu && v < 0 ? 0 : v;
            }
            SFX(add_forward)(y, x, b, n, relu);
            SFX(expect)(relu ? "add_forward (relu)" : "add_forward", shape, y, want, n);
        }
        real lo = (real)-0.5, hi = (real)0.25;
        for (ptrdiff_t i = 0; i < n; i++) want[i] = x[i] < lo ? lo : x[i] > hi ? hi : x[i];
        SFX(hardtanh_forward)(y, x, n, lo, hi);
        SFX(expect)("hardtanh_forward", shape, y, want, n);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = x[i] > lo && x[i] < hi ? dy[i] : 0;
        SFX(hardtanh_backward)(y, dy, x, n, lo, hi);
        SFX(expect)("hardtanh_backward", shape, y, want, n);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = 1 / (1 + exp(-4.0 * x[i]));
        for (ptrdiff_t i = 0; i < n; i++) b[i] = 4 * x[i];
        SFX(sigmoid_forward)(y, b, n);
        SFX(expect)("sigmoid_forward", shape, y, want, n);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = (double)dy[i] * x[i] * (1 - (double)x[i]);
        SFX(sigmoid_backward)(y, dy, x, n);
        SFX(expect)("sigmoid_backward", shape, y, want, n);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = tanh((double)b[i]);
        SFX(tanh_forward)(y, b, n);
        SFX(expect)("tanh_forward", shape, y, want, n);
        for (ptrdiff_t i = 0; i < n; i++) want[i] = (double)dy[i] * (1 - (double)x[i] * x[i]);
        SFX(tanh_backward)(y, dy, x, n);
        SFX(expect)("tanh_backward", shape, y, want, n);

        /* SGD, with and without momentum, first step and later */
        for (int variant = 0; variant < 3; variant++) {
            real *p = SFX(random)(n), *buf = variant ? SFX(random)(n) : NULL;
            double *wbuf = alloc((size_t)n, sizeof *wbuf);
            real lr = (real)0.1, mom = (real)0.9, wd = (real)0.01;
            int first = variant == 1;
            for (ptrdiff_t i = 0; i < n; i++) {
                real g = p[i] * wd + x[i];
                if (buf) g = first ? g : buf[i] * mom + g;
                wbuf[i] = g;
                want[i] = p[i] - g * lr;
            }
            SFX(sgd_update)(p, buf, x, n, lr, mom, wd, first);
            SFX(expect)("sgd_update", shape, p, want, n);
            if (buf) SFX(expect)("sgd_update (momentum buffer)", shape, buf, wbuf, n);
            free(p), free(buf), free(wbuf);
        }
        /* Adam and AdamW */
        for (int decoupled = 0; decoupled <= 1; decoupled++) {
            real *p = SFX(random)(n), *m = SFX(random)(n), *v = SFX(random)(n);
            for (ptrdiff_t i = 0; i < n; i++) v[i] = v[i] * v[i];
            double *wm = alloc((size_t)n, sizeof *wm), *wv = alloc((size_t)n, sizeof *wv);
            real lr = (real)1e-3, b1 = (real)0.9, b2 = (real)0.999, eps = (real)1e-8, wd = (real)0.01;
            real step = (real)(1e-3 / 0.19), sbc2 = (real)sqrt(1 - 0.999 * 0.999);
            for (ptrdiff_t i = 0; i < n; i++) {
                double g = decoupled ? x[i] : (double)p[i] * wd + x[i];
                double q = decoupled ? p[i] * (1 - (double)lr * wd) : p[i];
                wm[i] = m[i] * (double)b1 + g * (1 - (double)b1);
                wv[i] = v[i] * (double)b2 + g * g * (1 - (double)b2);
                want[i] = q - step * wm[i] / (sqrt(wv[i]) / sbc2 + eps);
            }
            SFX(adam_update)(p, m, v, x, n, lr, b1, b2, eps, wd, decoupled, step, sbc2);
            SFX(expect)("adam_update", shape, p, want, n);
            SFX(expect)("adam_update (m)", shape, m, wm, n);
            SFX(expect)("adam_update (v)", shape, v, wv, n);
            free(p), free(m), free(v), free(wm), free(wv);
        }
        /* Dropout: the hash of csrc/dropout.c, elements start .. start + n - 1 */
        uint32_t k0, k1, start = 12345, threshold = (uint32_t)(0.3 * (1 << 24));
        dropout_keys(42, &k0, &k1);
        for (ptrdiff_t i = 0; i < n; i++) {
            uint32_t h = mix32(mix32((start + (uint32_t)i) ^ k0) + k1);
            want[i] = (h >> 8) >= threshold ? x[i] * (real)(1 / 0.7) : 0;
        }
        SFX(dropout_apply)(y, x, n, start, k0, k1, threshold, (real)(1 / 0.7));
        SFX(expect)("dropout_apply", shape, y, want, n);
        free(x), free(dy), free(b), free(y), free(want);
    }
}

/* Pooling (max, average, adaptive average) and depthwise convolution, on one plane. */
static void SFX(check_planes)(void)
{
    /* 90x70: a plane the depthwise forward computes row by row (the smaller ones: whole) */
    static const ptrdiff_t sizes[][2] = {{1, 1}, {4, 4}, {7, 5}, {12, 17}, {90, 70}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (ptrdiff_t k = 1; k <= 4; k++)
            for (ptrdiff_t st = 1; st <= 3; st++)
                for (ptrdiff_t pad = 0; pad <= k / 2; pad++) {
                    ptrdiff_t H = sizes[s][0], W = sizes[s][1];
                    if (H + 2 * pad < k || W + 2 * pad < k) continue;
                    ptrdiff_t Ho = (H + 2 * pad - k) / st + 1, Wo = (W + 2 * pad - k) / st + 1, L = Ho * Wo;
                    char shape[96];
                    snprintf(shape, sizeof shape, "H %td W %td k %td stride %td pad %td", H, W, k, st, pad);
                    real *x = SFX(random)(H * W), *y = SFX(random)(L), *dy = SFX(random)(L);
                    real *dx = SFX(random)(H * W);
                    double *want = alloc((size_t)(H * W + L), sizeof *want);
                    int64_t *ind = alloc((size_t)L, sizeof *ind), *wind = alloc((size_t)L, sizeof *wind);
                    /* max pooling: padding is -inf, the first maximum wins (random values: no ties) */
                    for (int relu = 0; relu <= 1; relu++) {
                        for (ptrdiff_t o = 0; o < L; o++) {
                            double m = -INFINITY;
                            for (ptrdiff_t i = 0; i < k; i++)
                                for (ptrdiff_t j = 0; j < k; j++) {
                                    ptrdiff_t h = o / Wo * st - pad + i, w = o % Wo * st - pad + j;
                                    if (h >= 0 && h < H && w >= 0 && w < W && x[h * W + w] > m)
                                        m = x[h * W + w], wind[o] = h * W + w;
                                }
                            want[o] = relu && m < 0 ? 0 : m;
                        }
                        SFX(maxpool2d_forward)(y, ind, x, H, W, k, k, st, st, pad, pad, Ho, Wo, relu);
                        SFX(expect)(relu ? "maxpool2d_forward (relu)" : "maxpool2d_forward", shape, y, want, L);
                        for (ptrdiff_t o = 0; o < L; o++)
                            if (ind[o] != wind[o])
                                fail("maxpool2d_forward (indices)", TYPE, shape, o, (double)ind[o], (double)wind[o]);
                        memset(want, 0, (size_t)(H * W) * sizeof *want);
                        for (ptrdiff_t o = 0; o < L; o++)
                            if (!(relu && y[o] <= 0)) want[wind[o]] += dy[o];
                        ptrdiff_t bad = SFX(maxpool2d_backward)(dx, dy, ind, relu ? y : NULL, H * W, L);
                        if (bad) fail("maxpool2d_backward (bad indices)", TYPE, shape, 0, (double)bad, 0);
                        SFX(expect)("maxpool2d_backward", shape, dx, want, H * W);
                    }
                    /* average pooling, the divisor with or without the padding */
                    for (int incl = 0; incl <= 1; incl++) {
                        double *wdx = want + L;
                        memset(want, 0, (size_t)(H * W + L) * sizeof *want);
                        for (ptrdiff_t o = 0; o < L; o++) {
                            double sum = 0, count = 0;
                            for (ptrdiff_t i = 0; i < k; i++)
                                for (ptrdiff_t j = 0; j < k; j++) {
                                    ptrdiff_t h = o / Wo * st - pad + i, w = o % Wo * st - pad + j;
                                    if (h >= 0 && h < H && w >= 0 && w < W) sum += x[h * W + w], count++;
                                }
                            double div = incl ? (double)(k * k) : count;
                            want[o] = sum / div;
                            for (ptrdiff_t i = 0; i < k; i++)
                                for (ptrdiff_t j = 0; j < k; j++) {
                                    ptrdiff_t h = o / Wo * st - pad + i, w = o % Wo * st - pad + j;
                                    if (h >= 0 && h < H && w >= 0 && w < W) wdx[h * W + w] += dy[o] / div;
                                }
                        }
                        SFX(avgpool2d_forward)(y, x, H, W, k, k, st, st, pad, pad, Ho, Wo, incl);
                        SFX(expect)("avgpool2d_forward", shape, y, want, L);
                        SFX(avgpool2d_backward)(dx, dy, H, W, k, k, st, st, pad, pad, Ho, Wo, incl);
                        SFX(expect)("avgpool2d_backward", shape, dx, wdx, H * W);
                    }
                    /* depthwise convolution, dilation 1 and 2 */
                    for (ptrdiff_t dil = 1; dil <= 2; dil++) {
                        ptrdiff_t span = dil * (k - 1) + 1;
                        if (H + 2 * pad < span || W + 2 * pad < span) continue;
                        ptrdiff_t dHo = (H + 2 * pad - span) / st + 1, dWo = (W + 2 * pad - span) / st + 1;
                        ptrdiff_t dL = dHo * dWo;
                        real *w = SFX(random)(k * k), bias = (real)0.25, *dw = SFX(random)(k * k);
                        real db = (real)0.5, *ddx = SFX(random)(H * W), *dy2 = SFX(random)(dL);
                        real *y2 = SFX(random)(dL);
                        double *wy = alloc((size_t)dL, sizeof *wy), *wdx = alloc((size_t)(H * W), sizeof *wdx);
                        double *wdw = alloc((size_t)(k * k), sizeof *wdw), wdb = db;
                        for (ptrdiff_t i = 0; i < H * W; i++) wdx[i] = ddx[i];
                        for (ptrdiff_t i = 0; i < k * k; i++) wdw[i] = dw[i];
                        for (ptrdiff_t o = 0; o < dL; o++) {
                            double sum = bias;
                            wdb += dy2[o];
                            for (ptrdiff_t i = 0; i < k; i++)
                                for (ptrdiff_t j = 0; j < k; j++) {
                                    ptrdiff_t h = o / dWo * st - pad + i * dil, c = o % dWo * st - pad + j * dil;
                                    if (h < 0 || h >= H || c < 0 || c >= W) continue;
                                    sum += (double)w[i * k + j] * x[h * W + c];
                                    wdx[h * W + c] += (double)dy2[o] * w[i * k + j];
                                    wdw[i * k + j] += (double)dy2[o] * x[h * W + c];
                                }
                            wy[o] = sum;
                        }
                        char dshape[128];
                        snprintf(dshape, sizeof dshape, "%s dil %td", shape, dil);
                        SFX(depthwise_conv2d_forward)(y2, x, w, &bias, H, W, k, k, st, st, pad, pad, dil, dil, dHo,
                                                      dWo);
                        SFX(expect)("depthwise_conv2d_forward", dshape, y2, wy, dL);
                        SFX(depthwise_conv2d_backward_input)(ddx, dy2, w, H, W, k, k, st, st, pad, pad, dil, dil,
                                                             dHo, dWo);
                        SFX(expect)("depthwise_conv2d_backward_input", dshape, ddx, wdx, H * W);
                        SFX(depthwise_conv2d_backward_weight)(dw, &db, dy2, x, H, W, k, k, st, st, pad, pad, dil,
                                                              dil, dHo, dWo);
                        SFX(expect)("depthwise_conv2d_backward_weight", dshape, dw, wdw, k * k);
                        SFX(expect)("depthwise_conv2d_backward_weight (bias)", dshape, &db, &wdb, 1);
                        free(w), free(dw), free(ddx), free(dy2), free(y2), free(wy), free(wdx), free(wdw);
                    }
                    free(x), free(y), free(dy), free(dx), free(want), free(ind), free(wind);
                }
    /* adaptive average pooling: PyTorch's bins [floor(i*H/Ho), ceil((i+1)*H/Ho)) */
    for (ptrdiff_t H = 1; H <= 13; H += 4)
        for (ptrdiff_t W = 1; W <= 11; W += 5)
            for (ptrdiff_t Ho = 1; Ho <= H + 1; Ho += 2)
                for (ptrdiff_t Wo = 1; Wo <= W + 1; Wo += 3) {
                    real *x = SFX(random)(H * W), *y = SFX(random)(Ho * Wo), *dy = SFX(random)(Ho * Wo);
                    real *dx = SFX(random)(H * W);
                    double *wy = alloc((size_t)(Ho * Wo), sizeof *wy), *wdx = alloc((size_t)(H * W), sizeof *wdx);
                    for (ptrdiff_t a = 0; a < Ho; a++)
                        for (ptrdiff_t b = 0; b < Wo; b++) {
                            ptrdiff_t h0 = a * H / Ho, h1 = ((a + 1) * H + Ho - 1) / Ho;
                            ptrdiff_t w0 = b * W / Wo, w1 = ((b + 1) * W + Wo - 1) / Wo;
                            double sum = 0, count = (double)((h1 - h0) * (w1 - w0));
                            for (ptrdiff_t h = h0; h < h1; h++)
                                for (ptrdiff_t w = w0; w < w1; w++) {
                                    sum += x[h * W + w];
                                    wdx[h * W + w] += dy[a * Wo + b] / count;
                                }
                            wy[a * Wo + b] = sum / count;
                        }
                    char shape[64];
                    snprintf(shape, sizeof shape, "H %td W %td -> %tdx%td", H, W, Ho, Wo);
                    SFX(adaptive_avg_pool2d_forward)(y, x, H, W, Ho, Wo);
                    SFX(expect)("adaptive_avg_pool2d_forward", shape, y, wy, Ho * Wo);
                    SFX(adaptive_avg_pool2d_backward)(dx, dy, H, W, Ho, Wo);
                    SFX(expect)("adaptive_avg_pool2d_backward", shape, dx, wdx, H * W);
                    free(x), free(y), free(dy), free(dx), free(wy), free(wdx);
                }
}

/* Batch normalisation's passes on (N, C, L), over a sub-range of channels or images. */
static void SFX(check_batchnorm)(void)
{
    static const ptrdiff_t Ls[] = {1, 5, 16, 37};
    for (ptrdiff_t N = 1; N <= 5; N += 2)
        for (ptrdiff_t C = 1; C <= 4; C += 3)
            for (size_t l = 0; l < 4; l++) {
                ptrdiff_t L = Ls[l], n = N * C * L, c0 = C > 1, c1 = C, n0 = N > 1, n1 = N;
                char shape[64];
                snprintf(shape, sizeof shape, "N %td C %td L %td", N, C, L);
                real *x = SFX(random)(n), *dy = SFX(random)(n), *y = SFX(random)(n), *a = SFX(random)(C);
                real *b = SFX(random)(C), *d = SFX(random)(C), *meanr = alloc((size_t)C, sizeof *meanr);
                double *mean = alloc((size_t)C, sizeof *mean), *var = alloc((size_t)C, sizeof *var);
                double *wmean = alloc((size_t)C, sizeof *wmean), *wvar = alloc((size_t)C, sizeof *wvar);
                double *want = alloc((size_t)n, sizeof *want), *ws = alloc((size_t)C, sizeof *ws);
                double *wsx = alloc((size_t)C, sizeof *wsx);
                for (ptrdiff_t c = c0; c < c1; c++) {
                    for (ptrdiff_t i = 0; i < N * L; i++) wmean[c] += x[(i / L * C + c) * L + i % L];
                    wmean[c] /= (double)(N * L);
                    meanr[c] = (real)wmean[c];
                    for (ptrdiff_t i = 0; i < N * L; i++) {
                        double v = x[(i / L * C + c) * L + i % L], g = dy[(i / L * C + c) * L + i % L];
                        wvar[c] += (v - wmean[c]) * (v - wmean[c]);
                        ws[c] += g;
                        wsx[c] += g * (v - meanr[c]);
                    }
                    wvar[c] /= (double)(N * L);
                }
                SFX(batchnorm_stats)(mean, var, x, N, C, L, c0, c1);
                for (ptrdiff_t c = c0; c < c1; c++) {
                    if (fabs(mean[c] - wmean[c]) > RTOL * 64) fail("batchnorm_stats (mean)", TYPE, shape, c, mean[c], wmean[c]);
                    if (fabs(var[c] - wvar[c]) > RTOL * 64) fail("batchnorm_stats (var)", TYPE, shape, c, var[c], wvar[c]);
                }
                SFX(batchnorm_backward_sums)(mean, var, dy, x, meanr, N, C, L, c0, c1);
                for (ptrdiff_t c = c0; c < c1; c++) {
                    double tol = RTOL * 64 * (double)(N * L);
                    if (fabs(mean[c] - ws[c]) > tol) fail("batchnorm_backward_sums (dy)", TYPE, shape, c, mean[c], ws[c]);
                    if (fabs(var[c] - wsx[c]) > tol)
                        fail("batchnorm_backward_sums (dy * (x - mean))", TYPE, shape, c, var[c], wsx[c]);
                }
                checked += 4 * (c1 - c0);
                for (ptrdiff_t i = 0; i < n; i++) want[i] = y[i];
                for (ptrdiff_t i = n0 * C * L; i < n1 * C * L; i++)
                    want[i] = (double)x[i] * a[i / L % C] + b[i / L % C];
                SFX(channel_affine)(y, x, a, b, C, L, n0, n1);
                SFX(expect)("channel_affine", shape, y, want, n);
                for (ptrdiff_t i = n0 * C * L; i < n1 * C * L; i++)
                    want[i] = (double)dy[i] * a[i / L % C] + ((double)x[i] * b[i / L % C] + d[i / L % C]);
                SFX(channel_affine_grad)(y, dy, x, a, b, d, C, L, n0, n1);
                SFX(expect)("channel_affine_grad", shape, y, want, n);
                free(x), free(dy), free(y), free(a), free(b), free(d), free(meanr), free(mean), free(var);
                free(wmean), free(wvar), free(want), free(ws), free(wsx);
            }
}

/* HOG: no plain reference here (see the file's comment); the float and double kernels must agree. */
static void SFX(check_hog)(void)
{
    ptrdiff_t H = 16, W = 24, C = 3, n_orient = 9, cr = 8, cc = 8, br = 2, bc = 2;
    ptrdiff_t n_out = (H / cr - br + 1) * (W / cc - bc + 1) * br * bc * n_orient;
    real *img = SFX(random)(H * W * C), *out = alloc((size_t)n_out, sizeof *out);
    double *img64 = alloc((size_t)(H * W * C), sizeof *img64), *out64 = alloc((size_t)n_out, sizeof *out64);
    float *hist = alloc((size_t)((H / cr) * (W / cc) * n_orient), sizeof *hist);
    for (ptrdiff_t i = 0; i < H * W * C; i++) img64[i] = img[i];
    SFX(hog)(out, hist, img, H, W, C, n_orient, cr, cc, br, bc);
    hog_f64(out64, hist, img64, H, W, C, n_orient, cr, cc, br, bc);
    for (ptrdiff_t i = 0; i < n_out; i++)
        if (fabs(out[i] - out64[i]) > 1e-4) fail("hog (against hog_f64)", TYPE, "16x24x3", i, out[i], out64[i]);
    checked += n_out;
    free(img), free(out), free(img64), free(out64), free(hist);
}

static void SFX(check_all)(void)
{
    long before = checked;
    SFX(check_columns)();
    SFX(check_elementwise)();
    SFX(check_planes)();
    SFX(check_batchnorm)();
    SFX(check_hog)();
    printf("  %-8s %-7s %ld values\n", tier_name[tier], TYPE, checked - before);
}

#endif
