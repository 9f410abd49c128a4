"""Derivative checks anyone can call: every pass against central finite differences in float64.

    from nn_eos import testing
    testing.check_activation(MyActivation())              # σ', σ'' and the four passes
    testing.check_layer(MyLayer(3, 4), input_shape=(3,))  # the four passes, with and without second order
    testing.check_criterion(MyCriterion(), n_outputs=4)   # ∂l/∂z, H_z l u, H_z l, sqrt(H_z l)
    testing.check_loss(loss)                              # ∇L̃, ∇²L̃ v, G v, H v; dense matrices when P is small
    testing.check_third(loss)                             # ∇³L̃[u, v, ·] (docs/third.md)

Each check draws its inputs from ``seed`` and raises AssertionError naming the
quantity, its worst entry and the tolerance. A layer's passes are checked as
maps of their inputs (docs/layers.md, "Checking a layer"): with ``y = F(x, p)``
and t a scalar,

    backward:    ⟨backward(δ), u⟩ + ⟨grad, w⟩ = d/dt ⟨δ, F(x + t u, p + t w)⟩
    r_forward:   R{y} = d/dt F(x + t R{x}, p + t v)
    r_backward:  (R{∂/∂x}, R{∂/∂p}) = d/dt backward(δ + t R{δ}) at (x + t R{x}, p + t v)

and, without second-order terms, r_backward is the plain backward pass of R{δ}. A layer with third-order
passes (docs/third.md) has them checked as derivatives of its R-passes (:mod:`nn_eos.testing.third_order`).
A loss is checked against central differences of its value and gradient and,
when P is at most ``dense_below``, against dense matrices built column by
column (∇²L̃ from the gradient, G = (1/N) Σ_n J_nᵀ H_z l J_n from finite-difference
Jacobians), with the identities that must hold: symmetry, G positive
semi-definite, ∇²L̃ = G + H, a block equals its single products.

The passes run on ``device`` (default: ``NN_EOS_DEVICE``, else the CPU); the
comparisons on the host. The hypothesis strategies behind the project's own
tests are in :mod:`nn_eos.testing.strategies` (needs the ``[test]`` extra).
"""

import numpy as np

from .. import backend
from ..activations import Activation
from ..criteria import Criterion
from ..layers import Cache

TOL = {
    "fd": 1e-6,        # float64 central differences, step FD_STEP (error ~ step² + 1e-16/step)
    "exact": 1e-10,    # two float64 routes to the same number (rounding only)
    "float32": 1e-3,   # float32 against float64
}
FD_STEP = 1e-5
KINK_MARGIN = 1e-3    # inputs of an activation stay this far from a kink at 0

__all__ = ["TOL", "FD_STEP", "KINK_MARGIN", "assert_close", "central_difference", "check_activation",
           "check_layer", "check_criterion", "check_loss", "check_third"]


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


# ----- layers ---------------------------------------------------------------------------------------------

def _run_forward(layer, xp, params, x, cache=None):
    layer.bind(xp.asarray(params))
    return layer.forward(xp.asarray(x), Cache() if cache is None else cache)


def _run_backward(layer, xp, params, x, delta):
    """(∂/∂x, ∂/∂p) of ⟨δ, F(x, p)⟩ as host arrays."""
    cache = Cache()
    _run_forward(layer, xp, params, x, cache)
    grad = xp.zeros(layer.num_params)
    dx = layer.backward(xp.asarray(delta), cache, grad if layer.num_params else None)
    return backend.to_numpy(dx), backend.to_numpy(grad)


def check_layer(layer, input_shape=None, seed=0, n=3, k=3, inputs=None, params=None, device=None):
    """Check a layer's four passes against central differences (module docstring); returns None or raises.

    ``input_shape``: one example's shape (the batch of ``n`` is drawn from ``seed``), or ``inputs`` (n, …) to
    use instead (a max-pool's without ties, an activation's away from its kinks); ``params`` likewise for the
    layer's own parameters; ``k`` directions for the R-passes.
    """
    xp = backend.module_for(backend.check_device(device or backend.default_device()))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *input_shape)) if inputs is None else np.asarray(inputs, dtype=np.float64)
    p = layer.num_params
    params = rng.standard_normal(p) if params is None else np.asarray(params, dtype=np.float64)
    name = type(layer).__name__
    y = backend.to_numpy(_run_forward(layer, xp, params, x))
    delta = rng.standard_normal(y.shape)

    u, w = rng.standard_normal(x.shape), rng.standard_normal(p)
    dx, grad = _run_backward(layer, xp, params, x, delta)
    fd = central_difference(lambda t: np.sum(delta * backend.to_numpy(_run_forward(layer, xp, params + t * w,
                                                                                    x + t * u))), 0.0, 1.0)
    assert_close(np.sum(dx * u) + grad @ w, fd, TOL["fd"], f"{name}.backward: ⟨∂/∂x, u⟩ + ⟨∂/∂p, w⟩")

    r_x, V = rng.standard_normal((k,) + x.shape), rng.standard_normal((k, p))
    for given_r_x in (r_x, None):
        cache = Cache()
        _run_forward(layer, xp, params, x, cache)
        r_y = layer.r_forward(None if given_r_x is None else xp.asarray(given_r_x), xp.asarray(V), cache)
        r_y = backend.to_numpy(r_y) if r_y is not None else np.zeros((k,) + y.shape)
        for j in range(k):
            rx_j = 0 if given_r_x is None else given_r_x[j]
            fd = central_difference(lambda t: _run_forward(layer, xp, params + t * V[j], x + t * rx_j), 0.0, 1.0)
            which = "R{x} given" if given_r_x is not None else "R{x} = 0"
            assert_close(r_y[j], fd, TOL["fd"], f"{name}.r_forward ({which}), direction {j}")

    r_delta = rng.standard_normal((k,) + y.shape)
    for second_order in (True, False):
        cache = Cache()
        _run_forward(layer, xp, params, x, cache)
        layer.backward(xp.asarray(delta), cache, None)
        layer.r_forward(xp.asarray(r_x), xp.asarray(V), cache)
        r_grad = xp.zeros((k, p))
        r_dx = backend.to_numpy(layer.r_backward(xp.asarray(r_delta), xp.asarray(V), cache, r_grad, second_order))
        r_grad = backend.to_numpy(r_grad)
        for j in range(k):
            if second_order:
                def moved(t, part):
                    return _run_backward(layer, xp, params + t * V[j], x + t * r_x[j], delta + t * r_delta[j])[part]
                expect_dx = central_difference(lambda t: moved(t, 0), 0.0, 1.0)
                expect_grad = central_difference(lambda t: moved(t, 1), 0.0, 1.0)
                tol, how = TOL["fd"], "against d/dt backward"
            else:
                expect_dx, expect_grad = _run_backward(layer, xp, params, x, r_delta[j])
                tol, how = TOL["exact"], "against the backward pass of R{δ}"
            assert_close(r_dx[j], expect_dx, tol,
                         f"{name}.r_backward input, second_order={second_order} ({how}), direction {j}")
            assert_close(r_grad[j], expect_grad, tol,
                         f"{name}.r_backward parameters, second_order={second_order} ({how}), direction {j}")
    if has_third_order(layer):
        check_third_order_passes(layer, x, params, seed=seed, device=device)


def away_from_kinks(x, margin=10 * KINK_MARGIN):
    """x with every entry closer than ``margin`` to 0 moved to 0.5 (Chainer's trick): σ' of ReLU and σ'' of ELU
    jump at 0, where no finite difference can check them."""
    x = np.array(x, dtype=np.float64)
    x[np.abs(x) < margin] = 0.5
    return x


def check_activation(activation, seed=0, n=4, width=5, scale=2.0, device=None):
    """Check an activation: σ' against central differences of σ, σ'' against those of σ', σ''' (when stated)
    against those of σ'', the σ' and σ'' its forward pass keeps against both, and its passes
    (:func:`check_layer`), on inputs away from 0."""
    if not isinstance(activation, Activation):
        raise TypeError(f"check_activation takes an Activation, got {type(activation).__name__}")
    name = type(activation).__name__
    rng = np.random.default_rng(seed)
    x = away_from_kinks(scale * rng.standard_normal((n, width)))
    step = np.ones_like(x)
    assert_close(activation.slope(x), central_difference(activation.sigma, x, step), TOL["fd"],
                 f"{name}.slope (σ') against differences of σ")
    if activation.has_curvature:
        assert_close(activation.curvature(x), central_difference(activation.slope, x, step), TOL["fd"],
                     f"{name}.curvature (σ'') against differences of σ'")
        if has_third_order(activation):
            check_third_derivative(activation, x)
    else:
        assert_close(activation.slope(x + 1e-3) - activation.slope(x - 1e-3), np.zeros_like(x), TOL["exact"],
                     f"{name}: has_curvature = False, but σ' changes away from the kink")
    slope, curvature = activation.derivatives(x, activation.sigma(x))
    assert_close(slope, activation.slope(x), TOL["exact"], f"{name}.derivatives: σ' given σ(x) against σ'(x)")
    if activation.has_curvature:
        assert_close(curvature, activation.curvature(x), TOL["exact"],
                     f"{name}.derivatives: σ'' given σ(x) against σ''(x)")
    check_layer(activation, inputs=x, seed=seed, device=device)


# ----- criteria ---------------------------------------------------------------------------------------------

def check_criterion(criterion, n_outputs, seed=0, n=4, scale=1.0, device=None):
    """Check a criterion's ``gradient`` against central differences of ``value``, ``hessian_product`` against
    those of ``gradient``, ``hessian`` against ``hessian_product``, and ``sqrt_hessian``: symmetric, PSD,
    squaring to ``hessian``. Outputs z of ``scale``, labels drawn in range."""
    xp = backend.module_for(backend.check_device(device or backend.default_device()))
    name = type(criterion).__name__
    rng = np.random.default_rng(seed)
    z, y = scale * rng.standard_normal((n, n_outputs)), rng.integers(0, n_outputs, size=n)
    yd = xp.asarray(y)
    u = rng.standard_normal((3, n, n_outputs))
    grad = backend.to_numpy(criterion.gradient(xp.asarray(z), yd))
    for j in range(3):
        fd = central_difference(lambda t: backend.to_numpy(criterion.value(xp.asarray(z + t * u[j]), yd)).sum(),
                                0.0, 1.0)
        assert_close(np.sum(grad * u[j]), fd, TOL["fd"], f"{name}.gradient (∂l/∂z) against differences of l")
    Hu = backend.to_numpy(criterion.hessian_product(xp.asarray(z), yd, xp.asarray(u)))
    for j in range(3):
        fd = central_difference(lambda t: criterion.gradient(xp.asarray(z + t * u[j]), yd), 0.0, 1.0)
        assert_close(Hu[j], fd, TOL["fd"], f"{name}.hessian_product (H_z l u) against differences of ∂l/∂z")
    H = backend.to_numpy(criterion.hessian(xp.asarray(z), yd))
    assert_close(np.einsum("nor,knr->kno", H, u), Hu, TOL["exact"], f"{name}.hessian against hessian_product")
    R = backend.to_numpy(criterion.sqrt_hessian(xp.asarray(z), yd))
    assert_close(R, R.transpose(0, 2, 1), TOL["exact"], f"{name}.sqrt_hessian symmetric")
    assert_close(R @ R, H, TOL["exact"], f"{name}.sqrt_hessian squared against hessian")
    smallest = float(np.linalg.eigvalsh(R).min())
    if smallest < -TOL["exact"] * max(1.0, float(np.abs(R).max())):
        raise AssertionError(f"{name}.sqrt_hessian is not PSD: eigenvalue {smallest:.3e}")
    if type(criterion).third_product is not Criterion.third_product:
        check_third_product(criterion, z, y, xp, seed=seed)


# ----- a whole loss -------------------------------------------------------------------------------------------

def _unit_directions(rng, P, k=None):
    V = rng.standard_normal((P,) if k is None else (P, k))
    return V / np.linalg.norm(V, axis=0)


def dense_hessian(loss, theta):
    """∇²L̃ column by column from central differences of the gradient (host arrays)."""
    P = len(theta)
    return np.stack([central_difference(loss.gradient, theta, np.eye(P)[j]) for j in range(P)], axis=1)


def dense_ggn(loss, theta):
    """``G = (1/N) Σ_n J_nᵀ H_z l J_n`` with J = ∂f/∂θ built column by column from central differences."""
    net, P = loss.net, len(theta)
    X = loss.X_host

    def outputs(t):
        with net.using(t):
            return backend.to_numpy(net(X))

    J = np.stack([central_difference(outputs, theta, np.eye(P)[j]) for j in range(P)], axis=2)  # (n, O, P)
    z = net.xp.asarray(outputs(theta))
    Hz = backend.to_numpy(loss.criterion.hessian(z, net.xp.asarray(loss.y_host)))
    return np.einsum("nop,nor,nrq->pq", J, Hz, J) / len(X)


def check_loss(loss, seed=0, dense_below=120, k=3):
    """Check a TrainingLoss at its network's θ: ``gradient`` against differences of ``value``, ``hvp`` against
    differences of ``gradient``, ∇²L̃ = G + H, symmetry of all three, a block of k against k single products;
    and when P ≤ ``dense_below``, ∇²L̃, G and H against dense matrices (G from finite-difference Jacobians) and
    G positive semi-definite. Keep the network's pre-activations away from kinks (ReLU, ELU) for the
    differences to hold."""
    rng = np.random.default_rng(seed)
    theta = backend.to_numpy(loss.net.theta).copy()
    P = len(theta)
    v = _unit_directions(rng, P)
    assert_close(backend.to_numpy(loss.gradient()) @ v, central_difference(loss.value, theta, v), TOL["fd"],
                 "gradient: ⟨∇L̃, v⟩ against differences of L̃")
    assert_close(loss.hvp(v), central_difference(loss.gradient, theta, v), TOL["fd"],
                 "hvp: ∇²L̃ v against differences of ∇L̃")
    U, V = _unit_directions(rng, P, k), _unit_directions(rng, P, k)
    products = {kind: backend.to_numpy(loss.curvature_product(V, kind)) for kind in ("hessian", "ggn", "residual")}
    assert_close(products["ggn"] + products["residual"], products["hessian"], TOL["exact"], "∇²L̃ v = G v + H v")
    for kind, MV in products.items():
        MU = backend.to_numpy(loss.curvature_product(U, kind))
        assert_close(U.T @ MV, (V.T @ MU).T, TOL["exact"], f"{kind}: uᵀ M v = vᵀ M u")
        singles = np.stack([backend.to_numpy(loss.curvature_product(V[:, j], kind)) for j in range(k)], axis=1)
        assert_close(MV, singles, TOL["exact"], f"{kind}: a block of {k} against {k} single products")
    if P > dense_below:
        return
    identity = np.eye(P)
    H_full, G = dense_hessian(loss, theta), dense_ggn(loss, theta)
    assert_close(loss.hvp(identity), H_full, TOL["fd"], "hvp against the dense Hessian")
    assert_close(loss.ggn(identity), G, TOL["fd"], "ggn against Jᵀ H_z J from finite-difference Jacobians")
    assert_close(loss.residual(identity), H_full - G, TOL["fd"], "residual against ∇²L̃ − G")
    G_product = backend.to_numpy(loss.ggn(identity))
    eigenvalues = np.linalg.eigvalsh((G_product + G_product.T) / 2)
    if eigenvalues.min() < -TOL["exact"] * max(eigenvalues.max(), 1e-3):
        raise AssertionError(f"ggn: G is not positive semi-definite (eigenvalue {eigenvalues.min():.3e})")


# the third-order checks use the helpers above: imported last, once those exist
from .third_order import (check_third, check_third_derivative, check_third_order_passes,  # noqa: E402
                          check_third_product, has_third_order)
