# features.pxi, included by _kernels.pyx. HOG features (csrc/hog.c), for cyconv.features.hog. Tests:
# tests/test_features.py (against scikit-image's HOG).

# ---------------------------------------------------------------------------
# HOG features (cyconv.features.hog): parallel over images, each thread with
# its own cell-histogram scratch.

cdef extern from "cyconv.h" nogil:
    void hog_f32(float *out, float *hist, const float *img, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t C, Py_ssize_t n_orient, Py_ssize_t cr, Py_ssize_t cc,
                 Py_ssize_t br, Py_ssize_t bc) noexcept
    void hog_f64(double *out, float *hist, const double *img, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t C, Py_ssize_t n_orient, Py_ssize_t cr, Py_ssize_t cc,
                 Py_ssize_t br, Py_ssize_t bc) noexcept


def hog(floating[::1] out, const floating[::1] images, float[::1] scratch,
        Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t orientations,
        Py_ssize_t cr, Py_ssize_t cc, Py_ssize_t br, Py_ssize_t bc, int num_threads):
    # OUT out (N, D); IN images (N,H,W,C); SCRATCH (num_threads, (H/cr)*(W/cc)*orientations)
    cdef Py_ssize_t D = (H // cr - br + 1) * (W // cc - bc + 1) * br * bc * orientations
    cdef Py_ssize_t per_thread = (H // cr) * (W // cc) * orientations, n
    cdef float *hist
    check_scratch("hog", "scratch", scratch.shape[0], num_threads * per_thread if N > 0 else 0)
    check_scratch("hog", "out", out.shape[0], N * D)
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            hist = &scratch[threadid() * per_thread]
            if floating is float:
                hog_f32(&out[n * D], hist, &images[n * H * W * C], H, W, C, orientations,
                        cr, cc, br, bc)
            else:
                hog_f64(&out[n * D], hist, &images[n * H * W * C], H, W, C, orientations,
                        cr, cc, br, bc)
