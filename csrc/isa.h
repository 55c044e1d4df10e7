/*
 * ISA tiers: which instruction set cyconv's kernels run with.
 *
 *     generic  portable C (plain loops and GCC/clang vector extensions, no
 *              intrinsics) that the compiler vectorises for SSE2 or NEON
 *     avx2     AVX2 + FMA (Haswell and later, AMD Zen 1-3): x86-64 only
 *     avx512   AVX-512F (Skylake-X and later servers, Ice Lake+, AMD Zen 4): x86-64 only
 *
 * Every kernel is compiled once per tier the platform has (the same source,
 * with the tier's target attribute, plus a few hand-written micro-kernels), and
 * one global, cyconv_isa_, says which copy runs. It is set in one place,
 * cyconv_set_isa(), which refuses a tier the CPU cannot run; the Python layer
 * sets the best tier at import (or CYCONV_ISA's) and cyconv.set_isa() forces
 * another, which is how one machine tests every tier it can run.
 */
#ifndef CYCONV_ISA_H
#define CYCONV_ISA_H

/* Macros, not an enum: the kernels pick a tier's code with `#if TIER == ...`. */
#define CYCONV_ISA_GENERIC 0
#define CYCONV_ISA_AVX2 1
#define CYCONV_ISA_AVX512 2
#define CYCONV_ISA_COUNT 3

/* x86-64 with GCC or clang: the avx2 and avx512 tiers are compiled in, each
 * function of a tier carrying its target attribute (no global -mavx2: the
 * generic copy must run on any x86-64). Elsewhere only generic exists. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CYCONV_X86 1
#define CYCONV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define CYCONV_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define CYCONV_X86 0
#endif

/* The tier the kernels run with now; read by the dispatching wrappers, which
 * may run in OpenMP threads while another thread calls cyconv_set_isa(): so it
 * is only read and written atomically (relaxed: any tier read is a valid one,
 * and nothing else is published through it). A kernel that needs one tier for
 * several steps (packing, then the GEMM) reads it once: gemm_kernel(). */
extern int cyconv_isa_;
#if defined(__GNUC__) || defined(__clang__)
static inline int cyconv_isa_now(void) { return __atomic_load_n(&cyconv_isa_, __ATOMIC_RELAXED); }
#else
static inline int cyconv_isa_now(void) { return *(volatile int *)&cyconv_isa_; }
#endif
/* The running tier, for the Python layer. */
int cyconv_get_isa(void);

/* 1 if this build has `isa` and this CPU (and OS) can run it. */
int cyconv_isa_supported(int isa);
/* Make `isa` the running tier: 0, or -1 (nothing changed) if it is not supported. */
int cyconv_set_isa(int isa);
/* The compiler that built the kernels, e.g. "gcc 12.2.0" or "clang 14.0.6". */
const char *cyconv_compiler(void);

/* The copy of a tiered kernel for the running tier: DISPATCH(relu_forward_f32)
 * is relu_forward_f32_avx512, _avx2 or _generic. */
#if CYCONV_X86
#define DISPATCH(name)                                                \
    (cyconv_isa_now() == CYCONV_ISA_AVX512 ? name##_avx512            \
     : cyconv_isa_now() == CYCONV_ISA_AVX2 ? name##_avx2 : name##_generic)
#else
#define DISPATCH(name) name##_generic
#endif

#endif /* CYCONV_ISA_H */
