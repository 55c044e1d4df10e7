/*
 * Instantiate a kernel file's template body for float (_f32) and double (_f64),
 * once per ISA tier (isa.h), and its public wrappers that run the tier's copy.
 *
 * Each kernel is written once, for a generic `real`, with its names wrapped in
 * FN(). A kernel file includes this header on its first pass (when `real` is
 * not yet defined), after defining CYCONV_TEMPLATE as its own file name; this
 * header then includes that file again with `real` defined:
 *
 *   - once per (type, tier): TIER is the tier (CYCONV_ISA_*), TIER_FN declares
 *     one of its functions (static, with the tier's target attribute, so the
 *     compiler vectorises the same C for SSE2/NEON, AVX2 or AVX-512), and
 *     FN(relu_forward) is that copy's name, relu_forward_f32_avx2;
 *   - then once per type with CYCONV_DISPATCH_PASS defined: FN(relu_forward) is
 *     the public relu_forward_f32 and TIERED(relu_forward) the running tier's copy.
 *
 * (instantiate_tiers.h does one type's passes.) REAL_IS_FLOAT lets a body add
 * float-only fast paths; `#if TIER == ...` picks a tier's hand-written ones at
 * compile time, so no kernel tests the CPU itself.
 */
#include "isa.h"

#define CYCONV_CAT_(a, b) a##b
#define CYCONV_CAT(a, b) CYCONV_CAT_(a, b)
#define CYCONV_DISPATCH_(name) DISPATCH(name)
#define TIERED(name) CYCONV_DISPATCH_(CYCONV_CAT(name, REAL_SUFFIX))
#define FN(name) CYCONV_CAT(CYCONV_CAT(name, REAL_SUFFIX), TIER_SUFFIX)

/* ---- float ---- */
#define real float
#define REAL_SUFFIX _f32
#define REAL_IS_FLOAT 1
#include "instantiate_tiers.h"
#undef REAL_IS_FLOAT
#undef REAL_SUFFIX
#undef real

/* ---- double ---- */
#define real double
#define REAL_SUFFIX _f64
#include "instantiate_tiers.h"
#undef REAL_SUFFIX
#undef real
