/*
 * Average pooling on one (H,W) plane, forward and backward, with PyTorch's
 * semantics: padding counts as zeros; the divisor is the whole window
 * (kh*kw) with count_include_pad, else the window's taps inside the image.
 * (PyTorch's AvgPool2d default is count_include_pad=True; ONNX's
 * AveragePool default is 0.)
 *
 * The 2x2, stride 2, unpadded case (LeNet-5 as LeCun built it) runs a loop
 * without window bounds, which the compiler vectorises per ISA tier.
 *
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include "cyconv.h"

#define CYCONV_TEMPLATE "avgpool.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(avgpool2d_forward)(real *y, const real *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                           int count_include_pad)
{
    TIERED(avgpool2d_forward)(y, x, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, count_include_pad);
}

void FN(avgpool2d_backward)(real *dx, const real *dy, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,
                            ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                            int count_include_pad)
{
    TIERED(avgpool2d_backward)(dx, dy, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, count_include_pad);
}

#else /* template body, per tier */

/* The window of output (oh, ow): rows [*h0, *h1), columns [*w0, *w1) of the
 * image, and its divisor. */
TIER_FN inline real FN(avgpool_window)(ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                        ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                                        int count_include_pad, ptrdiff_t *h0, ptrdiff_t *h1, ptrdiff_t *w0,
                                        ptrdiff_t *w1)
{
    ptrdiff_t a = oh * sh - ph, b = ow * sw - pw;
    *h0 = a < 0 ? 0 : a;
    *h1 = a + kh > H ? H : a + kh;
    *w0 = b < 0 ? 0 : b;
    *w1 = b + kw > W ? W : b + kw;
    return count_include_pad ? (real)(kh * kw) : (real)((*h1 - *h0) * (*w1 - *w0));
}

TIER_FN void FN(avgpool2d_forward)(real *restrict y, const real *restrict x, ptrdiff_t H, ptrdiff_t W,
                                   ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                                   ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo, int count_include_pad)
{
    // x is (H,W), y is (Ho,Wo)
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0) {
        for (ptrdiff_t oh = 0; oh < Ho; oh++) {
            const real *r0 = x + 2 * oh * W, *r1 = r0 + W;
            for (ptrdiff_t ow = 0; ow < Wo; ow++)
                y[oh * Wo + ow] = ((r0[2 * ow] + r0[2 * ow + 1]) + (r1[2 * ow] + r1[2 * ow + 1])) / 4;
        }
        return;
    }
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            ptrdiff_t h0, h1, w0, w1;
            real div = FN(avgpool_window)(oh, ow, H, W, kh, kw, sh, sw, ph, pw, count_include_pad,
                                          &h0, &h1, &w0, &w1);
            real s = 0;
            for (ptrdiff_t h = h0; h < h1; h++)
                for (ptrdiff_t w = w0; w < w1; w++) s += x[h * W + w];
            y[oh * Wo + ow] = s / div;
        }
    }
}

TIER_FN void FN(avgpool2d_backward)(real *restrict dx, const real *restrict dy, ptrdiff_t H, ptrdiff_t W,
                                    ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                                    ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo, int count_include_pad)
{
    // dy is (Ho,Wo); dx (H,W) is overwritten: each output's gradient / divisor, spread over its window
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && H == 2 * Ho && W == 2 * Wo) {
        for (ptrdiff_t h = 0; h < H; h++)
            for (ptrdiff_t w = 0; w < W; w++) dx[h * W + w] = dy[(h / 2) * Wo + w / 2] / 4;
        return;
    }
    for (ptrdiff_t i = 0; i < H * W; i++) dx[i] = 0;
    for (ptrdiff_t oh = 0; oh < Ho; oh++) {
        for (ptrdiff_t ow = 0; ow < Wo; ow++) {
            ptrdiff_t h0, h1, w0, w1;
            real g = dy[oh * Wo + ow] / FN(avgpool_window)(oh, ow, H, W, kh, kw, sh, sw, ph, pw,
                                                          count_include_pad, &h0, &h1, &w0, &w1);
            for (ptrdiff_t h = h0; h < h1; h++)
                for (ptrdiff_t w = w0; w < w1; w++) dx[h * W + w] += g;
        }
    }
}

#endif
