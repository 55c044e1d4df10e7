/*
 * The one place that talks to the OpenMP runtime, with serial fallbacks, so a
 * build without OpenMP (CYCONV_OPENMP=0, or a compiler without it) still works.
 */
#ifndef CYCONV_OPENMP_SHIM_H
#define CYCONV_OPENMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
static inline int cyconv_openmp_enabled(void) { return 1; }
static inline int cyconv_omp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int cyconv_openmp_enabled(void) { return 0; }
static inline int cyconv_omp_max_threads(void) { return 1; }
#endif

#endif /* CYCONV_OPENMP_SHIM_H */
