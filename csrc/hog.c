/*
 * Histogram of oriented gradients (Dalal & Triggs) of one image, exactly as
 * scikit-image computes it (skimage.feature.hog with block_norm='L2-Hys').
 *
 * Layout: the image is (H,W,C), channels last, C-contiguous (C = 1 for
 * grayscale). The output is (n_blocks_row, n_blocks_col, cells_per_block_row,
 * cells_per_block_col, orientations), flattened: skimage's order.
 *
 * Steps, each matching skimage (feature/_hog.py, feature/_hoghistogram.pyx):
 *   1. gradients by centred differences [-1, 0, 1] along rows and columns, in
 *      the image's precision, 0 on the first and last row (column);
 *   2. colour: per pixel, the channel whose gradient magnitude (in the image's
 *      precision) is largest, the first one on ties;
 *   3. magnitude hypot(g_col, g_row) and unsigned orientation
 *      atan2(g_row, g_col) in degrees, mod 180 (Python's mod), in double;
 *   4. per cell, each orientation bin i sums the magnitudes of the pixels with
 *      180/n*i <= orientation < 180/n*(i+1), then divides by the cell area.
 *      skimage's accumulator is a C float, even for double images; we keep it,
 *      so float64 results agree to ~1e-15 rather than ~1e-7. Pixels beyond the
 *      last whole cell are ignored;
 *   5. each block of cells: L2 normalise, clip at 0.2, L2 normalise again,
 *      with eps^2 = 1e-10 under each square root (in double).
 * Left out on purpose: skimage's other block norms, transform_sqrt and the
 * visualisation.
 *
 * Prior validation assumed: at least one block fits in the image.
 * Instantiated for float and double, and per ISA tier, by instantiate.h.
 */
#ifndef real

#include <math.h>

#include "cyconv.h"

#define CYCONV_TEMPLATE "hog.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(hog)(real *out, float *hist, const real *img, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
             ptrdiff_t n_orient, ptrdiff_t cr, ptrdiff_t cc, ptrdiff_t br, ptrdiff_t bc)
{
    TIERED(hog)(out, hist, img, H, W, C, n_orient, cr, cc, br, bc);
}

#else /* template body, per tier */

#ifdef REAL_IS_FLOAT
#define HYPOT_REAL hypotf
#else
#define HYPOT_REAL hypot
#endif

/* The gradient of the pixel (r, c) along rows and columns, from the channel
 * with the largest magnitude. img is (H,W,C). */
TIER_FN inline void FN(hog_gradient)(double *g_row, double *g_col, const real *img,
                                    ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t r, ptrdiff_t c)
{
    int row_inside = r > 0 && r < H - 1, col_inside = c > 0 && c < W - 1;
    real best_row = 0, best_col = 0, best_mag = 0;
    for (ptrdiff_t ch = 0; ch < C; ch++) {
        real gr = row_inside ? img[((r + 1) * W + c) * C + ch] - img[((r - 1) * W + c) * C + ch] : 0;
        real gc = col_inside ? img[(r * W + c + 1) * C + ch] - img[(r * W + c - 1) * C + ch] : 0;
        if (C == 1) {
            best_row = gr, best_col = gc;
            break;
        }
        /* skimage picks the channel by np.argmax over magnitudes computed in
         * the image's dtype: the first strict maximum. */
        real mag = HYPOT_REAL(gr, gc);
        if (ch == 0 || mag > best_mag) best_row = gr, best_col = gc, best_mag = mag;
    }
    *g_row = best_row;
    *g_col = best_col;
}

/* hist (n_orient) = the cell's orientation histogram; the cell's top-left
 * pixel is (r0, c0) and it is cr x cc pixels. */
TIER_FN void FN(hog_cell)(float *hist, const real *img, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
                         ptrdiff_t r0, ptrdiff_t c0, ptrdiff_t cr, ptrdiff_t cc, ptrdiff_t n_orient)
{
    const double per_bin = 180.0 / (double)n_orient;
    for (ptrdiff_t o = 0; o < n_orient; o++) hist[o] = 0;
    for (ptrdiff_t r = r0; r < r0 + cr; r++) {
        for (ptrdiff_t c = c0; c < c0 + cc; c++) {
            double g_row, g_col;
            FN(hog_gradient)(&g_row, &g_col, img, H, W, C, r, c);
            /* A flat pixel votes 0 into bin 0, which changes nothing: skip its
             * atan2 (most of an MNIST digit's background; 2x faster there). */
            if (g_row == 0 && g_col == 0) continue;
            double mag = hypot(g_col, g_row);
            /* numpy's rad2deg and remainder (the result takes the divisor's sign). */
            double angle = fmod(atan2(g_row, g_col) * (180.0 / 3.14159265358979323846), 180.0);
            if (angle < 0) angle += 180.0;
            else if (angle == 0) angle = 0.0;
            /* Bin o holds per_bin*o <= angle < per_bin*(o+1), with the edges
             * computed as skimage does; the quotient is only a first guess. An
             * angle rounded up to 180 (or past the last edge) is in no bin. */
            ptrdiff_t o = (ptrdiff_t)(angle / per_bin);
            if (o > n_orient) o = n_orient;
            while (o > 0 && angle < per_bin * (double)o) o--;
            while (o < n_orient && angle >= per_bin * (double)(o + 1)) o++;
            if (o < n_orient) hist[o] = (float)((double)hist[o] + mag);
        }
    }
    for (ptrdiff_t o = 0; o < n_orient; o++) hist[o] = hist[o] / (float)(cr * cc);
}

/* out (nbr, nbc, br, bc, n_orient) = the L2-Hys normalised blocks of
 * hist (ncr, ncc, n_orient). */
TIER_FN void FN(hog_blocks)(real *out, const float *hist, ptrdiff_t ncc, ptrdiff_t n_orient,
                           ptrdiff_t nbr, ptrdiff_t nbc, ptrdiff_t br, ptrdiff_t bc)
{
    const double eps2 = 1e-5 * 1e-5;
    const ptrdiff_t row = bc * n_orient;  /* one row of cells of a block */
    for (ptrdiff_t i = 0; i < nbr; i++) {
        for (ptrdiff_t j = 0; j < nbc; j++) {
            real *blk = out + (i * nbc + j) * br * row;
            double ss = 0;
            for (ptrdiff_t a = 0; a < br; a++) {
                const float *h = hist + ((i + a) * ncc + j) * n_orient;
                for (ptrdiff_t k = 0; k < row; k++) ss += (double)h[k] * h[k];
            }
            double norm = sqrt(ss + eps2), ss2 = 0;
            for (ptrdiff_t a = 0; a < br; a++) {
                const float *h = hist + ((i + a) * ncc + j) * n_orient;
                for (ptrdiff_t k = 0; k < row; k++) {
                    double v = (double)h[k] / norm;
                    v = v < 0.2 ? v : 0.2;
                    ss2 += v * v;
                }
            }
            double norm2 = sqrt(ss2 + eps2);
            /* Recomputed rather than kept: out may be float, and the clipped
             * value must be divided in double as skimage does. */
            for (ptrdiff_t a = 0; a < br; a++) {
                const float *h = hist + ((i + a) * ncc + j) * n_orient;
                for (ptrdiff_t k = 0; k < row; k++) {
                    double v = (double)h[k] / norm;
                    v = v < 0.2 ? v : 0.2;
                    blk[a * row + k] = (real)(v / norm2);
                }
            }
        }
    }
}

TIER_FN void FN(hog)(real *out, float *hist, const real *img, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
             ptrdiff_t n_orient, ptrdiff_t cr, ptrdiff_t cc, ptrdiff_t br, ptrdiff_t bc)
{
    // out is (nbr*nbc*br*bc*n_orient), hist is scratch (ncr, ncc, n_orient), img is (H,W,C)
    ptrdiff_t ncr = H / cr, ncc = W / cc;
    for (ptrdiff_t i = 0; i < ncr; i++)
        for (ptrdiff_t j = 0; j < ncc; j++)
            FN(hog_cell)(hist + (i * ncc + j) * n_orient, img, H, W, C, i * cr, j * cc, cr, cc, n_orient);
    FN(hog_blocks)(out, hist, ncc, n_orient, ncr - br + 1, ncc - bc + 1, br, bc);
}

#undef HYPOT_REAL

#endif
