"""Central finite differences, for checking backward functions in float64.

A backward function computes a vector-Jacobian product g^T (dy/dx). It is checked
as the gradient of the random projection L(x) = sum(f(x) * g), whose exact
gradient is that product, against central differences of L one element at a
time. Keep shapes small: the cost is two forward calls per input element.
"""

import numpy as np

STEP = 1e-6
# Central differences of smooth or piecewise-linear float64 functions are good to
# ~STEP**2 (truncation) + 1e-16 * |L| / STEP (rounding): about 1e-9 here.
RTOL = 1e-6
ATOL = 1e-7


def numerical_grad(loss, x, step=STEP):
    """d loss / d x by central differences; ``loss`` maps an array shaped like x to a float."""
    grad = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (loss(plus) - loss(minus)) / (2 * step)
    return grad


def projection(forward, g):
    """L(x) = sum(forward(x) * g): its gradient is the vector-Jacobian product of forward with g."""
    return lambda x: float(np.sum(forward(x) * g))


def assert_grad(analytic, loss, x):
    """``analytic`` is the gradient of ``loss`` at ``x``."""
    assert analytic.shape == x.shape
    np.testing.assert_allclose(analytic, numerical_grad(loss, x), rtol=RTOL, atol=ATOL)
