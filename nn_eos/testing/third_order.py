"""Checks of the third-order passes (docs/third.md) against central differences of the second-order ones.

A layer's R_uR_v passes are the derivatives of its R_v passes along u. With t a scalar, moving along u means

    x → x + t R_u{x},  p → p + t u,  δ → δ + t R_u{δ},  R_v{x} → R_v{x} + t R_uR_v{x},  R_v{δ} → R_v{δ} + t R_uR_v{δ}

so that

    rr_forward:   R_uR_v{y} = d/dt r_forward(R_v{x}, v) at the moved point
    rr_backward:  (R_uR_v{∂/∂x}, R_uR_v{∂/∂p}) = d/dt r_backward(R_v{δ}, v) at the moved point

``check_layer`` and ``check_activation`` run these for every layer that has third-order passes; a loss's
``∇³L̃[u, v, ·]`` is checked by :func:`check_third` against central differences of ``∇²L̃ v`` along u.
"""

import numpy as np

from .. import backend
from ..layers import Cache, Tangents
from .differences import TOL, assert_close, central_difference


def has_third_order(layer):
    """Whether the layer has third-order passes (docs/third.md)."""
    try:
        layer.check_third_order()
    except NotImplementedError:
        return False
    return True


def _second_order_passes(layer, xp, params, x, delta, r_x, v, r_delta):
    """One direction's (R{y}, R{∂/∂x}, R{∂/∂p}) from the four passes, as host arrays (R{x} None: zero; for token
    ids, R{∂/∂x} zero)."""
    cache = Cache()
    ids = np.asarray(x).dtype.kind in "iu"
    layer.bind(xp.asarray(params))
    layer.forward(xp.asarray(x), cache)
    layer.backward(xp.asarray(delta), cache, None, need_input=not ids)
    v = xp.asarray(v[None])
    r_y = layer.r_forward(None if r_x is None else xp.asarray(r_x[None]), v, cache)
    r_grad = xp.zeros((1, layer.num_params))
    r_dx = layer.r_backward(xp.asarray(r_delta[None]), v, cache, r_grad, True, need_input=not ids)
    r_dx = xp.zeros((1,) + np.shape(x)) if ids else r_dx
    return tuple(None if a is None else backend.to_numpy(a)[0] for a in (r_y, r_dx, r_grad))


def check_third_order_passes(layer, x, params, seed=0, k=2, device=None):
    """Check ``rr_forward`` and ``rr_backward`` of a layer at inputs x (n, …) and parameters params (p,) against
    central differences of its R-passes (module docstring), with R_u{x} given, and, for a layer with parameters,
    with R_uR_v{x} = 0 and with R_u{x} = R_v{x} = 0 (the network's first layer with parameters); for token ids
    (integer x), only the last, with no input derivative."""
    xp = backend.module_for(backend.check_device(device or backend.default_device()))
    rng = np.random.default_rng(seed)
    name, p = type(layer).__name__, layer.num_params
    cache = Cache()
    layer.bind(xp.asarray(params))
    y = backend.to_numpy(layer.forward(xp.asarray(x), cache))
    delta = rng.standard_normal(y.shape)
    layer.backward(xp.asarray(delta), cache, None)
    U, V = rng.standard_normal((k, p)), rng.standard_normal((k, p))
    ru_delta, rv_delta, ruv_delta = (rng.standard_normal((k,) + y.shape) for _ in range(3))
    given = [rng.standard_normal((k,) + x.shape) for _ in range(3)]            # R_u{x}, R_v{x}, R_uR_v{x}
    ids = np.asarray(x).dtype.kind in "iu"
    cases = [] if ids else [("R{x} given", *given)]
    if p:
        cases += [] if ids else [("R_uR_v{x} = 0", given[0], given[1], None)]
        cases += [("R{x} = 0", None, None, None)]
    for case, ru_x, rv_x, ruv_x in cases:
        t = Tangents(x=xp.asarray(x), delta=xp.asarray(delta), ru_delta=xp.asarray(ru_delta),
                     rv_delta=xp.asarray(rv_delta),
                     **{key: None if a is None else xp.asarray(a)
                        for key, a in (("ru_x", ru_x), ("rv_x", rv_x), ("ruv_x", ruv_x))})
        layer.bind(xp.asarray(params))
        ruv_y = layer.rr_forward(t.ruv_x, t, xp.asarray(U), xp.asarray(V), cache)
        ruv_y = np.zeros((k,) + y.shape) if ruv_y is None else backend.to_numpy(ruv_y)
        rr_grad = xp.zeros((k, p))
        ruv_dx = layer.rr_backward(xp.asarray(ruv_delta), t, xp.asarray(U), xp.asarray(V), cache, rr_grad,
                                   need_input=not ids)
        ruv_dx = np.zeros((k,) + x.shape) if ids else backend.to_numpy(ruv_dx)
        rr_grad = backend.to_numpy(rr_grad)
        for j in range(k):
            def moved(s, part):
                return _second_order_passes(
                    layer, xp, params + s * U[j], x + (0 if ru_x is None else s * ru_x[j]), delta + s * ru_delta[j],
                    None if rv_x is None else rv_x[j] + (0 if ruv_x is None else s * ruv_x[j]), V[j],
                    rv_delta[j] + s * ruv_delta[j])[part]
            r_y = moved(0.0, 0)
            expect_y = np.zeros_like(y) if r_y is None else central_difference(lambda s: moved(s, 0), 0.0, 1.0)
            assert_close(ruv_y[j], expect_y, TOL["fd"], f"{name}.rr_forward ({case}), direction {j}")
            assert_close(ruv_dx[j], central_difference(lambda s: moved(s, 1), 0.0, 1.0), TOL["fd"],
                         f"{name}.rr_backward input ({case}), direction {j}")
            assert_close(rr_grad[j], central_difference(lambda s: moved(s, 2), 0.0, 1.0), TOL["fd"],
                         f"{name}.rr_backward parameters ({case}), direction {j}")
    layer.bind(xp.asarray(params))


def check_third_derivative(activation, x):
    """σ''' (``third_derivative``) against central differences of σ'' at x (away from kinks)."""
    assert_close(activation.third_derivative(x), central_difference(activation.curvature, x, np.ones_like(x)),
                 TOL["fd"], f"{type(activation).__name__}.third_derivative (σ''') against differences of σ''")


def check_third_product(criterion, z, y, xp, seed=0, k=3):
    """A criterion's ``third_product`` ∂³l[a, b, ·] against central differences of ``hessian_product`` along a."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((k,) + z.shape), rng.standard_normal((k,) + z.shape)
    yd = xp.asarray(y)
    got = backend.to_numpy(criterion.third_product(xp.asarray(z), yd, xp.asarray(a), xp.asarray(b)))
    for j in range(k):
        def hessian_product_along_a(s):
            return criterion.hessian_product(xp.asarray(z + s * a[j]), yd, xp.asarray(b[j:j + 1]))[0]
        fd = central_difference(hessian_product_along_a, 0.0, 1.0)
        assert_close(got[j], fd, TOL["fd"], f"{type(criterion).__name__}.third_product (∂³l[a, b, ·]) against "
                                            f"differences of H_z l b along a, direction {j}")
    swapped = backend.to_numpy(criterion.third_product(xp.asarray(z), yd, xp.asarray(b), xp.asarray(a)))
    assert_close(swapped, got, TOL["exact"], f"{type(criterion).__name__}.third_product symmetric in a and b")


def check_third(loss, seed=0, k=2):
    """Check ``loss.third``: ∇³L̃[u, v, ·] against central differences of ∇²L̃ v along u, symmetry in u and v, a
    block of k pairs against single pairs, and v = u against v given equal to u. Keep the network's
    pre-activations away from kinks (ReLU, ELU) for the differences to hold."""
    rng = np.random.default_rng(seed)
    theta = backend.to_numpy(loss.net.theta).copy()
    P = len(theta)
    U, V = rng.standard_normal((P, k)), rng.standard_normal((P, k))
    U, V = U / np.linalg.norm(U, axis=0), V / np.linalg.norm(V, axis=0)
    block = backend.to_numpy(loss.third(U, V))
    for j in range(k):
        fd = central_difference(lambda t: loss.hvp(V[:, j], theta=t), theta, U[:, j])
        assert_close(block[:, j], fd, TOL["fd"], f"third: ∇³L̃[u, v, ·] against differences of ∇²L̃ v along u ({j})")
        assert_close(loss.third(U[:, j], V[:, j]), block[:, j], TOL["exact"], f"third: pair {j} against the block")
    assert_close(loss.third(V, U), block, TOL["exact"], "third: ∇³L̃[u, v, ·] = ∇³L̃[v, u, ·]")
    assert_close(loss.third(U), loss.third(U, U.copy()), TOL["exact"], "third: V=None against v = u given")
