/*
 * The machine's float32 arithmetic peak at one ISA tier: what the silicon
 * delivers, the ceiling every "% of peak" in benchmarks/RESULTS.md is read
 * against. benchmarks/machine.py compiles and runs it.
 *
 *     fma_peak TIER THREADS      TIER: avx512 | avx2 | generic
 *
 * Each thread runs 12 independent multiply-add chains on the tier's widest
 * vectors (enough to cover the latency of 2 pipes x 4 cycles) for ~0.3 s;
 * prints the total GFLOP/s (2 per multiply-add). generic is 4-lane vector
 * extensions compiled with contraction on: NEON's fused multiply-add on ARM,
 * SSE2's separate multiply and add on x86.
 */
#define _POSIX_C_SOURCE 199309L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define ITERS 20000000L
#define REP(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

typedef float v4f __attribute__((vector_size(16)));

static double run_generic(void)
{
#define G_DECL(i) v4f a##i = {1.0f + i * 1e-3f, 1.0f, 1.0f, 1.0f};
#define G_STEP(i) a##i = a##i * m + c;
#define G_SUM(i) s += a##i;
    REP(G_DECL)
    v4f m = {0.999999f, 0.999999f, 0.999999f, 0.999999f}, c = {1e-7f, 1e-7f, 1e-7f, 1e-7f};
    for (long i = 0; i < ITERS; i++) {
        REP(G_STEP)
        __asm__ volatile("" ::: "memory");
    }
    v4f s = {0, 0, 0, 0};
    REP(G_SUM)
    return s[0] + s[1] + s[2] + s[3] > 0 ? 12.0 * 4 * 2 * ITERS : 0;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static double run_avx2(void)
{
#define A2_DECL(i) __m256 a##i = _mm256_set1_ps(1.0f + i * 1e-3f);
#define A2_STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define A2_SUM(i) s = _mm256_add_ps(s, a##i);
    REP(A2_DECL)
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < ITERS; i++) {
        REP(A2_STEP)
        __asm__ volatile("" ::: "memory");
    }
    __m256 s = _mm256_setzero_ps();
    REP(A2_SUM)
    return _mm256_cvtss_f32(s) > 0 ? 12.0 * 8 * 2 * ITERS : 0;
}

__attribute__((target("avx512f"))) static double run_avx512(void)
{
#define A5_DECL(i) __m512 a##i = _mm512_set1_ps(1.0f + i * 1e-3f);
#define A5_STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define A5_SUM(i) s = _mm512_add_ps(s, a##i);
    REP(A5_DECL)
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < ITERS; i++) {
        REP(A5_STEP)
        __asm__ volatile("" ::: "memory");
    }
    __m512 s = _mm512_setzero_ps();
    REP(A5_SUM)
    return _mm512_reduce_add_ps(s) > 0 ? 12.0 * 16 * 2 * ITERS : 0;
}
#endif

static double (*kernel)(void);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *worker(void *flops)
{
    *(double *)flops = kernel();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fma_peak avx512|avx2|generic THREADS\n");
        return 2;
    }
    kernel = strcmp(argv[1], "generic") == 0 ? run_generic : NULL;
#if defined(__x86_64__)
    if (strcmp(argv[1], "avx2") == 0) kernel = run_avx2;
    if (strcmp(argv[1], "avx512") == 0) kernel = run_avx512;
#endif
    int threads = atoi(argv[2]);
    if (!kernel || threads < 1 || threads > 256) {
        fprintf(stderr, "fma_peak: unknown tier %s or bad thread count %s\n", argv[1], argv[2]);
        return 2;
    }
    pthread_t tid[256];
    double flops[256], total = 0;
    double t = now();
    for (int i = 0; i < threads; i++) pthread_create(&tid[i], NULL, worker, &flops[i]);
    for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
    t = now() - t;
    for (int i = 0; i < threads; i++) total += flops[i];
    printf("%.1f\n", total / t * 1e-9);
    return 0;
}
