/*
 * Direct convolution of one image for the layers Winograd does not take: strided
 * and padded 1x1 kernels (ResNet's downsample shortcuts), the 7x7 stride-2 stem,
 * 3x3 stride-2 layers (float32; the own GEMM).
 *
 *     y (O, Ho*Wo) = weight (O, C*kh*kw) @ B (C*kh*kw, Ho*Wo)   [+ bias per row]
 *
 * im2col + GEMM materialises all of B per image (the stem: 147 x 12544 floats,
 * 7 MB, written then read back from memory). Here B is never whole: it is
 * gathered from the input where it lies a band of output rows at a time, into a
 * per-thread buffer sized to stay in L2 (an implicit GEMM: the band is B's
 * packing), and each band's columns of y are the GEMM of the weights, packed
 * once per layer (gemm_pack_a_f32), with it. A 1x1 band is the strided or padded
 * view of the input's rows (C x band, no taps); a kh x kw band is C*kh*kw rows.
 *
 * Every output element is the dot product im2col's GEMM computes (same K, same
 * order of k), in a band of any width, so an image's outputs do not depend on the
 * band split or the thread count. The input and weight gradients stay on im2col
 * (functional.py says so).
 */
#include <string.h>

#include "cyconv.h"

/* About 256 KB of band: K x columns in L2 beside the packed weights' panel. */
#define DIRECT_BAND_FLOATS (64 * 1024)

ptrdiff_t conv2d_direct_band_rows(ptrdiff_t C, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    ptrdiff_t per_row = C * kh * kw * Wo, rows = per_row > 0 ? DIRECT_BAND_FLOATS / per_row : Ho;
    rows = rows < 1 ? 1 : rows;
    return rows < Ho ? rows : Ho;
}

ptrdiff_t conv2d_direct_scratch_size(ptrdiff_t C, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    return C * kh * kw * conv2d_direct_band_rows(C, kh, kw, Ho, Wo) * Wo;
}

/* band (C*kh*kw, (oh1 - oh0)*Wo): rows ordered (channel, kernel row, kernel column) as
 * im2col's, the output rows [oh0, oh1), zero where a tap falls in the padding */
static void direct_gather_band(float *restrict band, const float *restrict img, ptrdiff_t C, ptrdiff_t H,
                               ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                               ptrdiff_t pw, ptrdiff_t oh0, ptrdiff_t oh1, ptrdiff_t Wo)
{
    ptrdiff_t nb = (oh1 - oh0) * Wo;
    for (ptrdiff_t c = 0; c < C; c++)
        for (ptrdiff_t ki = 0; ki < kh; ki++)
            for (ptrdiff_t kj = 0; kj < kw; kj++) {
                float *out = band + ((c * kh + ki) * kw + kj) * nb;
                /* the output columns whose tap reads inside the row: [lo, hi) */
                ptrdiff_t off = kj - pw;
                ptrdiff_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
                ptrdiff_t top = W - 1 - off, hi = top < 0 ? 0 : top / sw + 1;
                hi = hi < Wo ? hi : Wo;
                lo = lo < hi ? lo : hi;
                for (ptrdiff_t oh = oh0; oh < oh1; oh++, out += Wo) {
                    ptrdiff_t ih = oh * sh - ph + ki;
                    if (ih < 0 || ih >= H) {
                        memset(out, 0, (size_t)Wo * sizeof(float));
                        continue;
                    }
                    const float *row = img + (c * H + ih) * W;
                    for (ptrdiff_t ow = 0; ow < lo; ow++) out[ow] = 0.0f;
                    if (sw == 1) {
                        memcpy(out + lo, row + lo + off, (size_t)(hi - lo) * sizeof(float));
                    } else if (sw == 2) {
                        const float *r = row + 2 * lo + off;
                        for (ptrdiff_t i = 0; i < hi - lo; i++) out[lo + i] = r[2 * i];
                    } else {
                        for (ptrdiff_t ow = lo; ow < hi; ow++) out[ow] = row[ow * sw + off];
                    }
                    for (ptrdiff_t ow = hi; ow < Wo; ow++) out[ow] = 0.0f;
                }
            }
}

void conv2d_direct_band_f32(const cyconv_gemm *g, float *y, float *scratch, const float *x, const float *packed_w,
                            const float *bias, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t O, ptrdiff_t kh,
                            ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho,
                            ptrdiff_t Wo, ptrdiff_t oh0, ptrdiff_t oh1)
{
    // output rows [oh0, oh1) of y (O, Ho*Wo): at most conv2d_direct_band_rows() of them
    ptrdiff_t nb = (oh1 - oh0) * Wo;
    direct_gather_band(scratch, x, C, H, W, kh, kw, sh, sw, ph, pw, oh0, oh1, Wo);
    gemm_packed_f32(g, O, nb, C * kh * kw, packed_w, scratch, nb, y + oh0 * Wo, Ho * Wo, bias, 0);
}

void conv2d_direct_image_f32(const cyconv_gemm *g, float *y, float *scratch, const float *x,
                             const float *packed_w, const float *bias, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                             ptrdiff_t O, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                             ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo)
{
    // x is (C,H,W); packed_w the weights (O, C*kh*kw) packed for g; bias (O,) or NULL;
    // y (O, Ho*Wo) is overwritten; scratch: conv2d_direct_scratch_size() floats
    ptrdiff_t rows = conv2d_direct_band_rows(C, kh, kw, Ho, Wo);
    for (ptrdiff_t oh0 = 0; oh0 < Ho; oh0 += rows)
        conv2d_direct_band_f32(g, y, scratch, x, packed_w, bias, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo, oh0,
                               oh0 + rows < Ho ? oh0 + rows : Ho);
}
