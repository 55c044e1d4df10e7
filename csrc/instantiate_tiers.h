/*
 * One type's share of instantiate.h: CYCONV_TEMPLATE compiled once per ISA tier
 * this platform has, then its dispatching wrappers. `real` and REAL_SUFFIX are
 * set by instantiate.h.
 */
#define TIER CYCONV_ISA_GENERIC
#define TIER_SUFFIX _generic
#define TIER_FN static
#include CYCONV_TEMPLATE
#undef TIER
#undef TIER_SUFFIX
#undef TIER_FN

#if CYCONV_X86
#define TIER CYCONV_ISA_AVX2
#define TIER_SUFFIX _avx2
#define TIER_FN static CYCONV_TARGET_AVX2
#include CYCONV_TEMPLATE
#undef TIER
#undef TIER_SUFFIX
#undef TIER_FN

#define TIER CYCONV_ISA_AVX512
#define TIER_SUFFIX _avx512
#define TIER_FN static CYCONV_TARGET_AVX512
#include CYCONV_TEMPLATE
#undef TIER
#undef TIER_SUFFIX
#undef TIER_FN
#endif

#define CYCONV_DISPATCH_PASS
#define TIER_SUFFIX
#include CYCONV_TEMPLATE
#undef TIER_SUFFIX
#undef CYCONV_DISPATCH_PASS
