/*
 * The running ISA tier (see isa.h): what the CPU supports, and the one switch.
 */
#include "isa.h"

int cyconv_isa_ = CYCONV_ISA_GENERIC; /* the Python layer picks the best at import */

int cyconv_get_isa(void) { return cyconv_isa_now(); }

int cyconv_isa_supported(int isa)
{
    switch (isa) {
    case CYCONV_ISA_GENERIC:
        return 1;
#if CYCONV_X86
    /* The compiler's CPU model checks the OS saves the wider registers too
     * (XGETBV), so a kernel that hides AVX-512 from its guests reports avx2. */
    case CYCONV_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CYCONV_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

int cyconv_set_isa(int isa)
{
    if (!cyconv_isa_supported(isa)) return -1;
#if defined(__GNUC__) || defined(__clang__)
    __atomic_store_n(&cyconv_isa_, isa, __ATOMIC_RELAXED);
#else
    *(volatile int *)&cyconv_isa_ = isa;
#endif
    return 0;
}

#define CYCONV_STR_(x) #x
#define CYCONV_STR(x) CYCONV_STR_(x)

const char *cyconv_compiler(void)
{
#if defined(__clang__)
    return "clang " CYCONV_STR(__clang_major__) "." CYCONV_STR(__clang_minor__) "." CYCONV_STR(__clang_patchlevel__);
#elif defined(__GNUC__)
    return "gcc " CYCONV_STR(__GNUC__) "." CYCONV_STR(__GNUC_MINOR__) "." CYCONV_STR(__GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
    return "msvc " CYCONV_STR(_MSC_VER);
#else
    return "unknown";
#endif
}
