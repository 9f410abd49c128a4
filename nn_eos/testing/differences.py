"""What every check compares by: central differences in float64, and the tolerance they are held to."""

import numpy as np

from .. import backend

TOL = {
    "fd": 1e-6,        # float64 central differences, step FD_STEP (error ~ step² + 1e-16/step)
    "exact": 1e-10,    # two float64 routes to the same number (rounding only)
    "float32": 1e-3,   # float32 against float64
}
FD_STEP = 1e-5
KINK_MARGIN = 1e-3    # inputs of an activation stay this far from a kink at 0


def assert_close(actual, expected, tol, what=""):
    """``max |actual − expected| ≤ tol · max(max |expected|, 1e-3)``, else AssertionError naming ``what``, the
    worst entry (its index and both values) and the tolerance."""
    actual, expected = backend.to_numpy(actual), backend.to_numpy(expected)
    if np.shape(actual) != np.shape(expected):
        raise AssertionError(f"{what}: shape {np.shape(actual)} != {np.shape(expected)}")
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-3)
    error = np.abs(actual - expected)
    if error.size and not np.all(np.isfinite(actual)):
        raise AssertionError(f"{what}: not finite at {np.unravel_index(np.argmin(np.isfinite(actual)), error.shape)}")
    worst = float(error.max(initial=0.0))
    if not worst <= tol * scale:
        at = np.unravel_index(np.argmax(error), error.shape)
        raise AssertionError(f"{what}: max error {worst:.3e} > {tol:.0e} × scale {scale:.3e}, at index "
                             f"{tuple(int(i) for i in at)}: {actual[at]:.10g} against {expected[at]:.10g}")


def central_difference(f, x, v, step=FD_STEP):
    """``(f(x + step·v) − f(x − step·v)) / (2 step)`` on the host, for array- or float-valued f."""
    return (backend.to_numpy(f(x + step * v)) - backend.to_numpy(f(x - step * v))) / (2 * step)


def away_from_kinks(x, margin=10 * KINK_MARGIN):
    """x with every entry closer than ``margin`` to 0 moved to 0.5 (Chainer's trick): σ' of ReLU and σ'' of ELU
    jump at 0, where no finite difference can check them."""
    x = np.array(x, dtype=np.float64)
    x[np.abs(x) < margin] = 0.5
    return x
