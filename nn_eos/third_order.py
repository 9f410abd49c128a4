"""Third derivatives of the training loss by a second R-operator (docs/third.md).

    ∇³L̃[u, v, ·] = R_u{R_v{∇L̃}} = d/dε ∇²L̃(θ + εu) v       symmetric in u and v
    ∇λ = ∇³L̃[u, u, ·]                                     a simple eigenpair ∇²L̃ u = λ u, ‖u‖ = 1

Per chunk of examples, six passes over the layers: forward (x), backward (δ),
R-forward along u and v together (R_u{x}, R_v{x}), R-backward with its
second-order terms (R_u{δ}, R_v{δ}), then the layers' R_uR_v-forward and
R_uR_v-backward passes, which read the first four from a
:class:`~nn_eos.layers.Tangents` record per layer and write ∇³L̃[u, v, ·]. The
output source of the last pass is

    R_uR_v{δ^L} = (1/N) (H_z l · R_uR_v{z} + ∂³l[R_u{z}, R_v{z}, ·])

A block of k pairs shares every pass; with v = u the R-passes run on k
directions, else on 2k.
"""

from . import backend
from .criteria import Criterion
from .layers import Tangents
from .validation import check_directions


def third_derivative(loss, U, V=None, theta=None):
    """``∇³L̃[u, v, ·]`` at θ (default: the network's) for a pair (P,), (P,) or a block of k pairs, the columns of
    U and V (P, k); ``V=None`` takes v = u. Returns (P,) or (P, k), like U."""
    net = loss.net
    check_third_order(loss)
    U, was_vector = check_directions(U, net.num_params, name="u")
    if V is not None:
        V, v_was_vector = check_directions(V, net.num_params, name="v")
        if V.shape != U.shape or v_was_vector != was_vector:
            raise ValueError(f"u and v must have the same shape, got {U.shape} and {V.shape}")
    xp = net.xp

    def rows(W):                                            # (k, P) on the network's device and dtype
        W = backend.to_device(W, net.device).astype(net.dtype, copy=False)
        return W[None, :] if was_vector else xp.ascontiguousarray(W.T)

    Uk = rows(U)
    Vk = Uk if V is None else rows(V)
    out = xp.zeros_like(Uk)
    split = loss.plan(3 * len(Uk))      # the records hold about three times what a product of k directions does
    pairs = max(1, split.directions // 3)
    with net.using(theta):
        for j in range(0, len(Uk), pairs):
            block = slice(j, j + pairs)
            U_block = Uk[block]
            V_block = U_block if V is None else Vk[block]      # the same object: _passes runs k directions, not 2k
            for Xc, yc in loss.chunks(split.examples):
                out[block] += _passes(loss, Xc, yc, U_block, V_block)
    return out[0] if was_vector else out.T


def eigenvalue_gradient(loss, U, theta=None):
    """``∇λ = ∇³L̃[u, u, ·] / ‖u‖²`` for an eigenvector u of ∇²L̃ at θ with a simple eigenvalue λ (first-order
    perturbation: dλ = uᵀ d(∇²L̃) u / uᵀu), for u (P,) or each column of U (P, k). For a repeated eigenvalue
    λ is not differentiable and this is the derivative of the Rayleigh quotient along u only."""
    xp = loss.net.xp
    U, _ = check_directions(U, loss.net.num_params, name="u")
    U = backend.to_device(U, loss.net.device).astype(loss.net.dtype, copy=False)
    norms = xp.linalg.norm(U, axis=0)
    if not bool((norms > 0).all()):
        raise ValueError("an eigenvector must not be zero")
    return third_derivative(loss, U / norms, theta=theta)


def check_third_order(loss):
    """NotImplementedError naming the layer or criterion that has no third-order passes (docs/third.md)."""
    for layer in loss.net.layers:
        layer.check_third_order()
    if type(loss.criterion).third_product is Criterion.third_product:
        raise NotImplementedError(f"{type(loss.criterion).__name__} defines no third_product (∂³l[a, b, ·]), which "
                                  f"third derivatives need: docs/third.md")


def _pair(r, k, same):
    """(R_u{q}, R_v{q}) from the R-quantity of the stacked directions [u; v] (or [u] when v = u)."""
    if r is None:
        return None, None
    return (r, r) if same else (r[:k], r[k:])


def _passes(loss, X, y, U, V):
    """``∇³L̃[u, v, ·]``'s share from the examples X, y: the six passes of the module docstring, (k, P)."""
    net, criterion, N, xp = loss.net, loss.criterion, loss.mean_over, loss.net.xp
    layers, first, k, same = net.layers, net.first_with_params, len(U), V is U
    caches, records = net.new_caches(), [Tangents() for _ in layers]
    below = range(first, len(layers))               # the layers whose passes depend on θ

    x = X                                                               # forward: x
    for layer, cache, t in zip(layers, caches, records):
        t.x = x
        x = layer.forward(x, cache)
    z = x
    delta = criterion.gradient(z, y) / N                                # backward: δ
    for i in reversed(below):
        records[i].delta = delta
        delta = layers[i].backward(delta, caches[i], None, need_input=i > first)

    W = U if same else xp.concatenate([U, V])
    ws = net.layer_parts(W)
    r_x = None                                                          # R-forward: R_u{x}, R_v{x}
    for layer, w, cache, t in zip(layers, ws, caches, records):
        t.ru_x, t.rv_x = _pair(r_x, k, same)
        r_x = layer.r_forward(r_x, w, cache)
    r_z = r_x
    output_hessian = criterion.output_hessian(z, y, scale=1 / N)
    r_delta = output_hessian(r_z)                                       # R-backward: R_u{δ}, R_v{δ}
    r_grads = net.layer_parts(xp.empty_like(W))                             # R{∂L̃/∂θ}, not needed here
    for i in reversed(below):
        records[i].ru_delta, records[i].rv_delta = _pair(r_delta, k, same)
        r_delta = layers[i].r_backward(r_delta, ws[i], caches[i], r_grads[i], need_input=i > first)
        caches[i].drop_r_values()

    us, vs = net.layer_parts(U), net.layer_parts(V)
    ruv_x = None                                                        # R_uR_v-forward: R_uR_v{x}
    for i in below:
        records[i].ruv_x = ruv_x
        ruv_x = layers[i].rr_forward(ruv_x, records[i], us[i], vs[i], caches[i])
    ru_z, rv_z = _pair(r_z, k, same)
    ruv_delta = criterion.third_product(z, y, ru_z, rv_z) / N          # R_uR_v{δ^L}
    if ruv_x is not None:
        ruv_delta = ruv_delta + output_hessian(ruv_x)
    out = xp.empty_like(U)                                              # R_uR_v-backward: ∇³L̃[u, v, ·]
    outs = net.layer_parts(out)
    for i in reversed(below):
        ruv_delta = layers[i].rr_backward(ruv_delta, records[i], us[i], vs[i], caches[i], outs[i],
                                          need_input=i > first)
    return out
