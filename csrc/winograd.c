/*
 * Winograd convolution F(m x m, r x r) (Lavin and Gray 2016) for stride-1,
 * undilated, ungrouped layers: 3x3 kernels with output tiles m = 2, 4, 6 and
 * 5x5 kernels with m = 2, 4. NCHW, one image at a time.
 *
 * Each m x m output tile is computed from an n x n input tile (n = m + r - 1):
 *
 *     Y = AT [ sum_c (G w[o,c] G^T) .* (BT d[c] B) ] A
 *
 * so the n*n transform points each become one GEMM over channels:
 *
 *     filter transform  u (n*n, O, C)  = G w G^T           once per call (per step)
 *     input transform   v (n*n, C, T)  = BT d B            per image, T = tiles
 *     batched GEMM      mm (n*n, O, T) = u[p] @ v[p]       cyconv's packed GEMM (float)
 *     output transform  y (O, Ho, Wo)  = AT mm A + bias    per image
 *
 * The GEMMs do r*r*m*m / (n*n) times fewer multiplies than im2col's: 2.25x
 * for F(2,3), 4x for F(4,3), 5.06x for F(6,3), 2.78x for F(2,5), 6.25x for F(4,5).
 * The price is accuracy: the transforms' coefficients (up to 21/4 and 32/45 in
 * F(6,3)) amplify rounding, the more the larger the tile (tests/test_winograd.py
 * has the measured error table). The matrices are the Cook-Toom ones for the
 * points 0, +-1, +-2 (+-1/2) and infinity, generated exactly and checked there.
 *
 * The transforms are written once, as "out[lane] = sum_i coef[i] * in[i][lane]"
 * over up to WINOGRAD_LANES tiles at a time (lincomb), and compiled per ISA tier
 * by instantiate.h: the lanes are what the compiler vectorises (16 tiles per
 * AVX-512 vector), zero coefficients are skipped and +-1 are adds, so no tier
 * needs hand-written transforms. The input tiles are gathered from a
 * zero-padded copy of one channel, so no bounds test sits in the inner loops;
 * the padding may be negative (the input gradient of a layer padded by more
 * than r - 1 crops dy). What is left out on purpose: stride 2, dilation and
 * groups (im2col takes them), and the weight gradient (im2row + GEMM in
 * conv2d_backward: the Winograd weight gradient would need its own transforms
 * of dy, and LeNet's and ResNet's are GEMM-bound already).
 *
 * float32 multiplies through gemm_packed_f32 (u packed once per call, per
 * point, by winograd_pack_filters_f32); float64 through a plain loop over u
 * as the filter transform leaves it (tests and gradient checks, not speed).
 */
#ifndef real

#include <string.h>

#include "cyconv.h"

/* The transforms: BT (n,n), G (n,r), AT (m,n); rows 0 .. n-2 are the points
 * 0, 1, -1, 2, -2, 1/2, -1/2 in order, the last one infinity. */
static const double F2x3_BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, -1, 0, 1}};
static const double F2x3_G[4][3] = {{1, 0, 0}, {1.0 / 2, 1.0 / 2, 1.0 / 2}, {1.0 / 2, -1.0 / 2, 1.0 / 2}, {0, 0, 1}};
static const double F2x3_AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, 1}};
static const double F4x3_BT[6][6] = {{4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double F4x3_G[6][3] = {{1.0 / 4, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
static const double F4x3_AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
static const double F6x3_BT[8][8] = {{1, 0, -21.0 / 4, 0, 21.0 / 4, 0, -1, 0}, {0, 1, 1, -17.0 / 4, -17.0 / 4, 1, 1, 0}, {0, -1, 1, 17.0 / 4, -17.0 / 4, -1, 1, 0}, {0, 1.0 / 2, 1.0 / 4, -5.0 / 2, -5.0 / 4, 2, 1, 0}, {0, -1.0 / 2, 1.0 / 4, 5.0 / 2, -5.0 / 4, -2, 1, 0}, {0, 2, 4, -5.0 / 2, -5, 1.0 / 2, 1, 0}, {0, -2, 4, 5.0 / 2, -5, -1.0 / 2, 1, 0}, {0, -1, 0, 21.0 / 4, 0, -21.0 / 4, 0, 1}};
static const double F6x3_G[8][3] = {{1, 0, 0}, {-2.0 / 9, -2.0 / 9, -2.0 / 9}, {-2.0 / 9, 2.0 / 9, -2.0 / 9}, {1.0 / 90, 1.0 / 45, 2.0 / 45}, {1.0 / 90, -1.0 / 45, 2.0 / 45}, {32.0 / 45, 16.0 / 45, 8.0 / 45}, {32.0 / 45, -16.0 / 45, 8.0 / 45}, {0, 0, 1}};
static const double F6x3_AT[6][8] = {{1, 1, 1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1.0 / 2, -1.0 / 2, 0}, {0, 1, 1, 4, 4, 1.0 / 4, 1.0 / 4, 0}, {0, 1, -1, 8, -8, 1.0 / 8, -1.0 / 8, 0}, {0, 1, 1, 16, 16, 1.0 / 16, 1.0 / 16, 0}, {0, 1, -1, 32, -32, 1.0 / 32, -1.0 / 32, 1}};
static const double F2x5_BT[6][6] = {{4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double F2x5_G[6][5] = {{1.0 / 4, 0, 0, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6, 1.0 / 3, 2.0 / 3}, {1.0 / 24, -1.0 / 12, 1.0 / 6, -1.0 / 3, 2.0 / 3}, {0, 0, 0, 0, 1}};
static const double F2x5_AT[2][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1}};
static const double F4x5_BT[8][8] = {{1, 0, -21.0 / 4, 0, 21.0 / 4, 0, -1, 0}, {0, 1, 1, -17.0 / 4, -17.0 / 4, 1, 1, 0}, {0, -1, 1, 17.0 / 4, -17.0 / 4, -1, 1, 0}, {0, 1.0 / 2, 1.0 / 4, -5.0 / 2, -5.0 / 4, 2, 1, 0}, {0, -1.0 / 2, 1.0 / 4, 5.0 / 2, -5.0 / 4, -2, 1, 0}, {0, 2, 4, -5.0 / 2, -5, 1.0 / 2, 1, 0}, {0, -2, 4, 5.0 / 2, -5, -1.0 / 2, 1, 0}, {0, -1, 0, 21.0 / 4, 0, -21.0 / 4, 0, 1}};
static const double F4x5_G[8][5] = {{1, 0, 0, 0, 0}, {-2.0 / 9, -2.0 / 9, -2.0 / 9, -2.0 / 9, -2.0 / 9}, {-2.0 / 9, 2.0 / 9, -2.0 / 9, 2.0 / 9, -2.0 / 9}, {1.0 / 90, 1.0 / 45, 2.0 / 45, 4.0 / 45, 8.0 / 45}, {1.0 / 90, -1.0 / 45, 2.0 / 45, -4.0 / 45, 8.0 / 45}, {32.0 / 45, 16.0 / 45, 8.0 / 45, 4.0 / 45, 2.0 / 45}, {32.0 / 45, -16.0 / 45, 8.0 / 45, -4.0 / 45, 2.0 / 45}, {0, 0, 0, 0, 1}};
static const double F4x5_AT[4][8] = {{1, 1, 1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1.0 / 2, -1.0 / 2, 0}, {0, 1, 1, 4, 4, 1.0 / 4, 1.0 / 4, 0}, {0, 1, -1, 8, -8, 1.0 / 8, -1.0 / 8, 1}};

typedef struct winograd_tile {
    ptrdiff_t m, r, n;
    const double *BT, *G, *AT;
} winograd_tile;

static const winograd_tile winograd_tiles[] = {
    {2, 3, 4, &F2x3_BT[0][0], &F2x3_G[0][0], &F2x3_AT[0][0]},
    {4, 3, 6, &F4x3_BT[0][0], &F4x3_G[0][0], &F4x3_AT[0][0]},
    {6, 3, 8, &F6x3_BT[0][0], &F6x3_G[0][0], &F6x3_AT[0][0]},
    {2, 5, 6, &F2x5_BT[0][0], &F2x5_G[0][0], &F2x5_AT[0][0]},
    {4, 5, 8, &F4x5_BT[0][0], &F4x5_G[0][0], &F4x5_AT[0][0]},
};

/* Tiles transformed together: the vector lanes of every transform. */
#define WINOGRAD_LANES 64

static const winograd_tile *winograd_find(ptrdiff_t m, ptrdiff_t r)
{
    for (size_t i = 0; i < sizeof winograd_tiles / sizeof winograd_tiles[0]; i++)
        if (winograd_tiles[i].m == m && winograd_tiles[i].r == r) return &winograd_tiles[i];
    return NULL;
}

int winograd_supported(ptrdiff_t m, ptrdiff_t r)
{
    return winograd_find(m, r) != NULL;
}

ptrdiff_t winograd_image_size(ptrdiff_t C, ptrdiff_t O, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r)
{
    // v (n*n, C, T) and mm (n*n, O, T) of one image
    ptrdiff_t n = m + r - 1, T = ((Ho + m - 1) / m) * ((Wo + m - 1) / m);
    return n * n * (C + O) * T;
}

ptrdiff_t winograd_tmp_size(ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r)
{
    // the larger of the input transform's (padded plane, d, e) and the output's (plane, two stages)
    ptrdiff_t n = m + r - 1, Ht = (Ho + m - 1) / m * m, Wt = (Wo + m - 1) / m * m;
    ptrdiff_t in = (Ht + r - 1) * (Wt + r - 1) + 2 * n * n * WINOGRAD_LANES;
    ptrdiff_t out = Ht * Wt + (m * n + m * m) * WINOGRAD_LANES;
    return in > out ? in : out;
}

ptrdiff_t winograd_packed_size(const cyconv_gemm *g, ptrdiff_t O, ptrdiff_t C, ptrdiff_t m, ptrdiff_t r)
{
    ptrdiff_t n = m + r - 1;
    return n * n * gemm_packed_size(g, O, C);
}

void winograd_pack_filters_f32(const cyconv_gemm *g, float *packed, const float *u, ptrdiff_t O, ptrdiff_t C,
                               ptrdiff_t p0, ptrdiff_t p1)
{
    // points [p0, p1) of u (n*n, O, C), each packed as the GEMM's A operand
    ptrdiff_t size = gemm_packed_size(g, O, C);
    for (ptrdiff_t p = p0; p < p1; p++) gemm_pack_a_f32(g, packed + p * size, u + p * O * C, O, C, C, 1);
}

#define CYCONV_TEMPLATE "winograd.c"
#include "instantiate.h"

#elif defined(CYCONV_DISPATCH_PASS)

void FN(winograd_filter_transform)(real *u, const real *w, ptrdiff_t O, ptrdiff_t C, ptrdiff_t m, ptrdiff_t r,
                                   ptrdiff_t o0, ptrdiff_t o1)
{
    TIERED(winograd_filter_transform)(u, w, O, C, m, r, o0, o1);
}

void FN(winograd_input_transform)(real *v, real *tmp, const real *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                                  ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m,
                                  ptrdiff_t r, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t ldt)
{
    TIERED(winograd_input_transform)(v, tmp, x, C, H, W, ph, pw, Ho, Wo, m, r, c0, c1, ldt);
}

void FN(winograd_multiply)(const cyconv_gemm *g, real *mm, const real *u, const real *v, ptrdiff_t O,
                           ptrdiff_t C, ptrdiff_t T, ptrdiff_t p0, ptrdiff_t p1)
{
    TIERED(winograd_multiply)(g, mm, u, v, O, C, T, p0, p1);
}

void FN(winograd_output_transform)(real *y, real *tmp, const real *mm, const real *bias, ptrdiff_t O,
                                   ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r, ptrdiff_t o0,
                                   ptrdiff_t o1, ptrdiff_t ldt)
{
    TIERED(winograd_output_transform)(y, tmp, mm, bias, O, Ho, Wo, m, r, o0, o1, ldt);
}

void FN(winograd_conv2d_images)(const cyconv_gemm *g, real *y, real *scratch, real *tmp, const real *x,
                                const real *u, const real *bias, ptrdiff_t nb, ptrdiff_t C, ptrdiff_t H,
                                ptrdiff_t W, ptrdiff_t O, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                                ptrdiff_t m, ptrdiff_t r)
{
    // y (nb,O,Ho,Wo) of nb images x (nb,C,H,W), their tiles side by side in each GEMM (a 7x7
    // plane has 16 tiles of 2x2: one image alone would leave most of a GEMM block empty).
    // scratch: nb * winograd_image_size(), tmp: winograd_tmp_size()
    ptrdiff_t n = m + r - 1, T = ((Ho + m - 1) / m) * ((Wo + m - 1) / m), ldt = nb * T;
    real *v = scratch, *mm = scratch + n * n * C * ldt;
    for (ptrdiff_t i = 0; i < nb; i++)
        TIERED(winograd_input_transform)(v + i * T, tmp, x + i * C * H * W, C, H, W, ph, pw, Ho, Wo, m, r, 0, C,
                                         ldt);
    TIERED(winograd_multiply)(g, mm, u, v, O, C, ldt, 0, n * n);
    for (ptrdiff_t i = 0; i < nb; i++)
        TIERED(winograd_output_transform)(y + i * O * Ho * Wo, tmp, mm + i * T, bias, O, Ho, Wo, m, r, 0, O, ldt);
}

#else /* template body, per tier */

TIER_FN void FN(lincomb)(real *restrict out, const double *coef, ptrdiff_t terms, const real *restrict in,
                         ptrdiff_t istride, ptrdiff_t len)
{
    // out[l] = sum_i coef[i] * in[i*istride + l] for l < len: one row of a transform over
    // len tiles. Zero coefficients are skipped and +-1 are adds (most of BT's and AT's).
    int first = 1;
    for (ptrdiff_t i = 0; i < terms; i++) {
        double c = coef[i];
        if (c == 0) continue;
        const real *src = in + i * istride;
        real k = (real)c;
        if (first) {
            if (c == 1)
                for (ptrdiff_t l = 0; l < len; l++) out[l] = src[l];
            else
                for (ptrdiff_t l = 0; l < len; l++) out[l] = k * src[l];
            first = 0;
        } else if (c == 1) {
            for (ptrdiff_t l = 0; l < len; l++) out[l] += src[l];
        } else if (c == -1) {
            for (ptrdiff_t l = 0; l < len; l++) out[l] -= src[l];
        } else {
            for (ptrdiff_t l = 0; l < len; l++) out[l] += k * src[l];
        }
    }
    if (first)
        for (ptrdiff_t l = 0; l < len; l++) out[l] = 0;
}

TIER_FN void FN(dlincomb)(double *restrict out, const double *coef, ptrdiff_t cstride, ptrdiff_t terms,
                          const double *restrict in, ptrdiff_t istride, ptrdiff_t len)
{
    // out[l] = sum_i coef[i*cstride] * in[i*istride + l]: lincomb for the filter transform, in double
    for (ptrdiff_t l = 0; l < len; l++) out[l] = 0;
    for (ptrdiff_t i = 0; i < terms; i++) {
        double c = coef[i * cstride];
        if (c == 0) continue;
        const double *src = in + i * istride;
        for (ptrdiff_t l = 0; l < len; l++) out[l] += c * src[l];
    }
}

TIER_FN void FN(winograd_filter_transform)(real *u, const real *w, ptrdiff_t O, ptrdiff_t C, ptrdiff_t m,
                                           ptrdiff_t r, ptrdiff_t o0, ptrdiff_t o1)
{
    // w is (O,C,r,r); u (n*n, O, C) = G w[o,c] G^T for output channels [o0, o1), in double and
    // rounded once, over lanes of B filters (index o*C + c)
    const winograd_tile *tl = winograd_find(m, r);
    enum { B = 32 }; /* 33 KB of stack */
    const ptrdiff_t n = tl->n;
    double k[5 * 5 * B], gk[8 * 5 * B], uu[8 * 8 * B];
    for (ptrdiff_t f0 = o0 * C; f0 < o1 * C; f0 += B) {
        ptrdiff_t len = o1 * C - f0 < B ? o1 * C - f0 : B;
        for (ptrdiff_t l = 0; l < len; l++)
            for (ptrdiff_t q = 0; q < r * r; q++) k[q * B + l] = (double)w[(f0 + l) * r * r + q];
        for (ptrdiff_t i = 0; i < n; i++) /* gk (n, r) = G k */
            for (ptrdiff_t j = 0; j < r; j++) FN(dlincomb)(gk + (i * r + j) * B, tl->G + i * r, 1, r, k + j * B, r * B, len);
        for (ptrdiff_t i = 0; i < n; i++) /* u = gk G^T */
            for (ptrdiff_t j = 0; j < n; j++) FN(dlincomb)(uu + (i * n + j) * B, tl->G + j * r, 1, r, gk + i * r * B, B, len);
        for (ptrdiff_t p = 0; p < n * n; p++)
            for (ptrdiff_t l = 0; l < len; l++) u[p * O * C + f0 + l] = (real)uu[p * B + l];
    }
}

TIER_FN void FN(pad_plane)(real *restrict plane, const real *restrict x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t ph,
                           ptrdiff_t pw, ptrdiff_t Hp, ptrdiff_t Wp)
{
    // plane (Hp, Wp) [i, j] = x (H, W) [i - ph, j - pw], 0 outside x; ph, pw may be negative (a crop)
    ptrdiff_t jlo = pw > 0 ? pw : 0, jhi = pw + W < Wp ? pw + W : Wp;
    for (ptrdiff_t i = 0; i < Hp; i++) {
        real *row = plane + i * Wp;
        ptrdiff_t src = i - ph;
        if (src < 0 || src >= H || jhi <= jlo) {
            memset(row, 0, (size_t)Wp * sizeof(real));
            continue;
        }
        memset(row, 0, (size_t)jlo * sizeof(real));
        memcpy(row + jlo, x + src * W + (jlo - pw), (size_t)(jhi - jlo) * sizeof(real));
        memset(row + jhi, 0, (size_t)(Wp - jhi) * sizeof(real));
    }
}

TIER_FN void FN(winograd_input_transform)(real *v, real *tmp, const real *x, ptrdiff_t C, ptrdiff_t H,
                                          ptrdiff_t W, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t Ho, ptrdiff_t Wo,
                                          ptrdiff_t m, ptrdiff_t r, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t ldt)
{
    // x is (C,H,W), the output (Ho,Wo); v (n*n, C, ldt) [.., .., :T] = BT d B of every tile, for
    // channels [c0, c1). tmp: winograd_tmp_size() elements, this thread's
    const winograd_tile *tl = winograd_find(m, r);
    const ptrdiff_t n = tl->n, B = WINOGRAD_LANES;
    ptrdiff_t th = (Ho + m - 1) / m, tw = (Wo + m - 1) / m, T = th * tw;
    ptrdiff_t Hp = th * m + r - 1, Wp = tw * m + r - 1;
    real *plane = tmp, *d = tmp + Hp * Wp, *e = d + n * n * B;
    ptrdiff_t off[WINOGRAD_LANES];
    for (ptrdiff_t c = c0; c < c1; c++) {
        FN(pad_plane)(plane, x + c * H * W, H, W, ph, pw, Hp, Wp);
        for (ptrdiff_t t0 = 0; t0 < T; t0 += B) {
            ptrdiff_t len = T - t0 < B ? T - t0 : B;
            for (ptrdiff_t l = 0; l < len; l++) off[l] = (t0 + l) / tw * m * Wp + (t0 + l) % tw * m;
            for (ptrdiff_t i = 0; i < n; i++) /* d[i][j][l]: the tiles, lanes last */
                for (ptrdiff_t j = 0; j < n; j++) {
                    const real *src = plane + i * Wp + j;
                    real *dst = d + (i * n + j) * B;
                    for (ptrdiff_t l = 0; l < len; l++) dst[l] = src[off[l]];
                }
            for (ptrdiff_t k = 0; k < n; k++) /* e = BT d (over rows i) */
                for (ptrdiff_t j = 0; j < n; j++)
                    FN(lincomb)(e + (k * n + j) * B, tl->BT + k * n, n, d + j * B, n * B, len);
            for (ptrdiff_t k = 0; k < n; k++) /* v = e B (over columns j) */
                for (ptrdiff_t q = 0; q < n; q++)
                    FN(lincomb)(v + ((k * n + q) * C + c) * ldt + t0, tl->BT + q * n, n, e + k * n * B, B, len);
        }
    }
}

TIER_FN void FN(winograd_multiply)(const cyconv_gemm *g, real *mm, const real *u, const real *v, ptrdiff_t O,
                                   ptrdiff_t C, ptrdiff_t T, ptrdiff_t p0, ptrdiff_t p1)
{
    // mm[p] (O,T) = u[p] (O,C) @ v[p] (C,T) for points [p0, p1). float: u packed by
    // winograd_pack_filters_f32 for g; double: u as the filter transform left it (g unused)
#if defined(REAL_IS_FLOAT)
    ptrdiff_t size = gemm_packed_size(g, O, C);
    for (ptrdiff_t p = p0; p < p1; p++)
        gemm_packed_f32(g, O, T, C, u + p * size, v + p * C * T, T, mm + p * O * T, T, NULL, 0);
#else
    (void)g;
    for (ptrdiff_t p = p0; p < p1; p++)
        for (ptrdiff_t o = 0; o < O; o++) {
            real *restrict row = mm + (p * O + o) * T;
            for (ptrdiff_t t = 0; t < T; t++) row[t] = 0;
            for (ptrdiff_t c = 0; c < C; c++) {
                real a = u[(p * O + o) * C + c];
                const real *restrict vr = v + (p * C + c) * T;
                for (ptrdiff_t t = 0; t < T; t++) row[t] += a * vr[t];
            }
        }
#endif
}

TIER_FN void FN(winograd_output_transform)(real *y, real *tmp, const real *mm, const real *bias, ptrdiff_t O,
                                           ptrdiff_t Ho, ptrdiff_t Wo, ptrdiff_t m, ptrdiff_t r, ptrdiff_t o0,
                                           ptrdiff_t o1, ptrdiff_t ldt)
{
    // mm is (n*n, O, ldt) [.., .., :T]; y (O,Ho,Wo) = AT mm A (+ bias[o] unless NULL) for channels [o0, o1).
    // tmp: winograd_tmp_size() elements, this thread's
    const winograd_tile *tl = winograd_find(m, r);
    const ptrdiff_t n = tl->n, B = WINOGRAD_LANES;
    ptrdiff_t th = (Ho + m - 1) / m, tw = (Wo + m - 1) / m, T = th * tw, Wt = tw * m;
    real *plane = tmp, *s1 = tmp + th * m * Wt, *s2 = s1 + m * n * B;
    for (ptrdiff_t o = o0; o < o1; o++) {
        for (ptrdiff_t t0 = 0; t0 < T; t0 += B) {
            ptrdiff_t len = T - t0 < B ? T - t0 : B;
            for (ptrdiff_t a = 0; a < m; a++) /* s1 = AT mm (over rows) */
                for (ptrdiff_t q = 0; q < n; q++)
                    FN(lincomb)(s1 + (a * n + q) * B, tl->AT + a * n, n, mm + (q * O + o) * ldt + t0, n * O * ldt,
                                len);
            for (ptrdiff_t a = 0; a < m; a++) /* s2 = s1 A (over columns) */
                for (ptrdiff_t b = 0; b < m; b++)
                    FN(lincomb)(s2 + (a * m + b) * B, tl->AT + b * n, n, s1 + a * n * B, B, len);
            for (ptrdiff_t l = 0; l < len; l++) { /* each tile into the whole-tile plane */
                real *dst = plane + (t0 + l) / tw * m * Wt + (t0 + l) % tw * m;
                for (ptrdiff_t a = 0; a < m; a++)
                    for (ptrdiff_t b = 0; b < m; b++) dst[a * Wt + b] = s2[(a * m + b) * B + l];
            }
        }
        real bv = bias ? bias[o] : 0;
        for (ptrdiff_t i = 0; i < Ho; i++) { /* the plane cut to (Ho, Wo), plus the bias */
            real *yr = y + (o * Ho + i) * Wo;
            const real *pr = plane + i * Wt;
            if (bias)
                for (ptrdiff_t j = 0; j < Wo; j++) yr[j] = pr[j] + bv;
            else
                memcpy(yr, pr, (size_t)Wo * sizeof(real));
        }
    }
}

#endif
