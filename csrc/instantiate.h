/*
 * Instantiate a kernel file's template body for float (_f32) and double (_f64).
 *
 * Each kernel is written once, for a generic `real`, with its names wrapped in
 * FN(). A kernel file includes this header on its first pass (when `real` is
 * not yet defined), after defining CYCONV_TEMPLATE as its own file name; this
 * header then includes that file twice more with `real` defined, which compiles
 * the body between #else and #endif once per type. REAL_IS_FLOAT lets a body
 * add a float-only fast path.
 */
#define real float
#define FN(name) name##_f32
#define REAL_IS_FLOAT 1
#include CYCONV_TEMPLATE
#undef REAL_IS_FLOAT
#undef real
#undef FN

#define real double
#define FN(name) name##_f64
#include CYCONV_TEMPLATE
#undef real
#undef FN
