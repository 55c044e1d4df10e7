/*
 * Per-plane time of csrc/depthwise.c's three kernels at MobileNetV2's plane sizes (3x3, padding 1),
 * float32, one thread, best of 30 runs over 64 planes: how RESULTS.md compares a depthwise kernel
 * with the previous one (the Python benchmarks' noise on a shared machine hides a per-plane change).
 *
 *     gcc -std=c11 -O3 -ffp-contract=off -Icsrc benchmarks/depthwise_planes.c csrc/[a-z]*.c -lm -o /tmp/dp
 *     /tmp/dp 2        # tier: 2 avx512, 1 avx2, 0 generic
 *
 * For the previous kernel, build the same with a copy of csrc/ whose depthwise.c is
 * `git show <commit>:csrc/depthwise.c`.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cyconv.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2 || cyconv_set_isa(atoi(argv[1])) != 0) return 2;
    static const ptrdiff_t shapes[][2] = {{7, 1}, {14, 1}, {14, 2}, {28, 1}, {56, 1}, {56, 2}, {112, 1}, {112, 2}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        ptrdiff_t H = shapes[si][0], s = shapes[si][1], Ho = (H + 2 - 3) / s + 1, P = 64, HW = H * H, L = Ho * Ho;
        float *x = malloc(sizeof(float) * (size_t)(HW * P)), *y = malloc(sizeof(float) * (size_t)(L * P));
        float *dx = calloc((size_t)(HW * P), sizeof(float)), w[9], b = 0.1f, dw[9] = {0}, db = 0;
        for (ptrdiff_t i = 0; i < HW * P; i++) x[i] = (float)(i % 7) * 0.1f;
        for (int i = 0; i < 9; i++) w[i] = 0.1f * (float)i;
        double best[3] = {1e9, 1e9, 1e9};
        for (int rep = 0; rep < 30; rep++) {
            double t0 = now();
            for (ptrdiff_t p = 0; p < P; p++)
                depthwise_conv2d_forward_f32(y + p * L, x + p * HW, w, &b, H, H, 3, 3, s, s, 1, 1, 1, 1, Ho, Ho);
            double t1 = now();
            for (ptrdiff_t p = 0; p < P; p++)
                depthwise_conv2d_backward_input_f32(dx + p * HW, y + p * L, w, H, H, 3, 3, s, s, 1, 1, 1, 1, Ho, Ho);
            double t2 = now();
            for (ptrdiff_t p = 0; p < P; p++)
                depthwise_conv2d_backward_weight_f32(dw, &db, y + p * L, x + p * HW, H, H, 3, 3, s, s, 1, 1, 1, 1, Ho,
                                                     Ho);
            double t3 = now(), t[3] = {t1 - t0, t2 - t1, t3 - t2};
            for (int k = 0; k < 3; k++) best[k] = t[k] < best[k] ? t[k] : best[k];
        }
        printf("%3td s%td: fwd %7.1f ns/plane  bwd_in %7.1f  bwd_w %7.1f\n", H, s, best[0] / P * 1e9,
               best[1] / P * 1e9, best[2] / P * 1e9);
        free(x), free(y), free(dx);
    }
    return 0;
}
