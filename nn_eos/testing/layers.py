"""Checks of a layer's four passes, and of an activation, against central differences (docs/layers.md,
"Checking a layer")."""

import numpy as np

from .. import backend
from ..activations import Activation
from ..layers import Cache
from .differences import TOL, assert_close, away_from_kinks, central_difference
from .third_order import check_third_derivative, check_third_order_passes, has_third_order


def _run_forward(layer, xp, params, x, cache=None):
    layer.bind(xp.asarray(params))
    return layer.forward(xp.asarray(x), Cache() if cache is None else cache)


def _undefined(xp, shape):
    """A gradient buffer as the contract hands it in: contents undefined, here NaN, so that an entry a pass does
    not assign (or adds to) shows."""
    return xp.full(shape, np.nan)


def _written(buffer, what):
    """The buffer as a host array, or AssertionError naming the pass when an entry was left unassigned."""
    host = backend.to_numpy(buffer)
    if not np.all(np.isfinite(host)):
        at = tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])
        raise AssertionError(f"{what}: entry {at} not assigned (it holds the NaN the buffer came in with): a pass "
                             f"assigns every entry of its gradient buffer, whose contents on entry are undefined "
                             f"(docs/layers.md), and never adds to them")
    return host


def _shaped(array, shape, what):
    """The pass's result as a host array of the expected shape, or AssertionError naming the pass."""
    if array is None or tuple(array.shape) != tuple(shape):
        got = None if array is None else tuple(array.shape)
        raise AssertionError(f"{what}: shape {got}, expected {tuple(shape)}")
    return backend.to_numpy(array)


def _run_backward(layer, xp, params, x, delta, name="layer"):
    """(∂/∂x, ∂/∂p) of ⟨δ, F(x, p)⟩ as host arrays, the gradient written into a buffer of undefined contents;
    ∂/∂x is zero for token ids (asked for with need_input=False)."""
    cache = Cache()
    _run_forward(layer, xp, params, x, cache)
    grad = _undefined(xp, layer.num_params)
    ids = _token_ids(x)
    dx = layer.backward(xp.asarray(delta), cache, grad if layer.num_params else None, need_input=not ids)
    return (np.zeros(x.shape) if ids else _shaped(dx, x.shape, f"{name}.backward: ∂/∂x"),
            _written(grad, f"{name}.backward: ∂/∂p") if layer.num_params else np.zeros(0))


def _token_ids(x):
    """Whether the inputs are token ids (integers): data that no direction moves, with no gradient."""
    return np.asarray(x).dtype.kind in "iu"


def check_layer(layer, input_shape=None, seed=0, n=3, k=3, inputs=None, params=None, device=None):
    """Check a layer's four passes against central differences (module docstring); returns None or raises
    AssertionError naming the pass and the part of it that is wrong.

    ``input_shape``: one example's shape (the batch of ``n`` is drawn from ``seed``), or ``inputs`` (n, …) to
    use instead (a max-pool's without ties, an activation's away from its kinks; integer token ids for an
    embedding, which are data: only R{x} = 0 and no input gradient are checked); ``params`` likewise for the
    layer's own parameters; ``k`` directions for the R-passes. Every gradient buffer is handed in full of NaN
    (its contents are undefined by the contract), and the Gauss-Newton pass ``second_order=False`` runs both as
    a product runs it and as the measurements do: after a forward pass alone, with ``v=None``.
    """
    xp = backend.module_for(backend.check_device(device or backend.default_device()))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *input_shape)) if inputs is None else np.asarray(inputs)
    ids = _token_ids(x)
    x = x if ids else x.astype(np.float64)
    p = layer.num_params
    params = rng.standard_normal(p) if params is None else np.asarray(params, dtype=np.float64)
    name = type(layer).__name__
    y = _shaped(_run_forward(layer, xp, params, x), (len(x), *layer.output_shape(x.shape[1:])), f"{name}.forward")
    delta = rng.standard_normal(y.shape)

    u, w = np.zeros(x.shape) if ids else rng.standard_normal(x.shape), rng.standard_normal(p)
    dx, grad = _run_backward(layer, xp, params, x, delta, name)

    def along(t, dx_, dp_):
        return np.sum(delta * backend.to_numpy(_run_forward(layer, xp, params + t * dp_, moved_input(t, dx_))))

    def moved_input(t, direction):
        return x if ids else x + t * direction
    if not ids:
        assert_close(np.sum(dx * u), central_difference(lambda t: along(t, u, 0), 0.0, 1.0), TOL["fd"],
                     f"{name}.backward: the input gradient, ⟨∂/∂x, u⟩ against d/dt ⟨δ, F(x + t u, p)⟩")
    if p:
        assert_close(grad @ w, central_difference(lambda t: along(t, 0, w), 0.0, 1.0), TOL["fd"],
                     f"{name}.backward: the parameter gradient, ⟨∂/∂p, w⟩ against d/dt ⟨δ, F(x, p + t w)⟩")

    r_x, V = np.zeros((k,) + x.shape) if ids else rng.standard_normal((k,) + x.shape), rng.standard_normal((k, p))
    for given_r_x in (None,) if ids else (r_x, None):
        which = "R{x} given" if given_r_x is not None else "R{x} = 0"
        cache = Cache()
        _run_forward(layer, xp, params, x, cache)
        r_y = layer.r_forward(None if given_r_x is None else xp.asarray(given_r_x), xp.asarray(V), cache)
        r_y = np.zeros((k,) + y.shape) if r_y is None else _shaped(r_y, (k,) + y.shape, f"{name}.r_forward ({which})")
        for j in range(k):
            rx_j = 0 if given_r_x is None else given_r_x[j]
            fd = central_difference(lambda t: _run_forward(layer, xp, params + t * V[j], moved_input(t, rx_j)), 0.0,
                                    1.0)
            assert_close(r_y[j], fd, TOL["fd"], f"{name}.r_forward ({which}), direction {j}")

    r_delta = rng.standard_normal((k,) + y.shape)
    for second_order, after in ((True, "a product"), (False, "a product"), (False, "a measurement")):
        how = f"second_order={second_order}, as {after} runs it"
        cache = Cache()
        _run_forward(layer, xp, params, x, cache)
        if after == "a product":
            layer.backward(xp.asarray(delta), cache, None, need_input=not ids)
            layer.r_forward(None if ids else xp.asarray(r_x), xp.asarray(V), cache)
        r_grad = _undefined(xp, (k, p))
        try:
            r_dx = layer.r_backward(xp.asarray(r_delta), None if after == "a measurement" else xp.asarray(V), cache,
                                    r_grad, second_order, need_input=not ids)
        except (AttributeError, TypeError, IndexError) as error:
            if after == "a product":
                raise
            raise AssertionError(f"{name}.r_backward ({how}: after a forward pass alone, v=None) failed with "
                                 f"{type(error).__name__}: {error}. The Gauss-Newton pass reads neither v nor "
                                 f"cache.delta nor cache.r_x (docs/layers.md)") from error
        r_dx = np.zeros((k,) + x.shape) if ids else _shaped(r_dx, (k,) + x.shape, f"{name}.r_backward input ({how})")
        r_grad = _written(r_grad, f"{name}.r_backward parameters ({how})") if p else np.zeros((k, 0))
        for j in range(k):
            if second_order:
                def moved(t, part):
                    return _run_backward(layer, xp, params + t * V[j], moved_input(t, r_x[j]),
                                         delta + t * r_delta[j], name)[part]
                expect_dx = central_difference(lambda t: moved(t, 0), 0.0, 1.0)
                expect_grad = central_difference(lambda t: moved(t, 1), 0.0, 1.0)
                tol, against = TOL["fd"], "against d/dt backward"
            else:
                expect_dx, expect_grad = _run_backward(layer, xp, params, x, r_delta[j], name)
                tol, against = TOL["exact"], "against the backward pass of R{δ}"
            assert_close(r_dx[j], expect_dx, tol, f"{name}.r_backward input ({how}, {against}), direction {j}")
            assert_close(r_grad[j], expect_grad, tol,
                         f"{name}.r_backward parameters ({how}, {against}), direction {j}")
    if has_third_order(layer):
        check_third_order_passes(layer, x, params, seed=seed, device=device)


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
