"""Checks of a criterion and of a whole TrainingLoss: derivatives against central differences, products against
dense matrices and the identities that must hold."""

import numpy as np

from .. import backend
from ..criteria import Criterion
from .differences import TOL, assert_close, central_difference
from .third_order import check_third_product


def check_criterion(criterion, n_outputs, seed=0, n=4, scale=1.0, device=None, positions=()):
    """Check a criterion's ``gradient`` against central differences of ``value``, ``hessian_product`` against
    those of ``gradient``, ``hessian`` against ``hessian_product``, and ``sqrt_hessian``: symmetric, PSD,
    squaring to ``hessian``. Outputs z (n, *positions, n_outputs) of ``scale`` (``positions=(T,)``: a sequence's
    tokens), labels drawn in range."""
    xp = backend.module_for(backend.check_device(device or backend.default_device()))
    name = type(criterion).__name__
    rng = np.random.default_rng(seed)
    shape = (n, *positions, n_outputs)
    z, y = scale * rng.standard_normal(shape), rng.integers(0, n_outputs, size=shape[:-1])
    yd = xp.asarray(y)
    u = rng.standard_normal((3, *shape))
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
    flat = u.reshape(3, n, -1)
    assert_close(np.einsum("nor,knr->kno", H, flat), Hu.reshape(flat.shape), TOL["exact"],
                 f"{name}.hessian against hessian_product")
    sqrt_H = backend.to_numpy(criterion.sqrt_hessian(xp.asarray(z), yd))
    assert_close(sqrt_H, sqrt_H.transpose(0, 2, 1), TOL["exact"], f"{name}.sqrt_hessian symmetric")
    assert_close(sqrt_H @ sqrt_H, H, TOL["exact"], f"{name}.sqrt_hessian squared against hessian")
    smallest = float(np.linalg.eigvalsh(sqrt_H).min())
    if smallest < -TOL["exact"] * max(1.0, float(np.abs(sqrt_H).max())):
        raise AssertionError(f"{name}.sqrt_hessian is not PSD: eigenvalue {smallest:.3e}")
    if type(criterion).third_product is not Criterion.third_product:
        check_third_product(criterion, z, y, xp, seed=seed)


def _unit_directions(rng, P, k=None):
    V = rng.standard_normal((P,) if k is None else (P, k))
    return V / np.linalg.norm(V, axis=0)


def dense_hessian(loss, theta):
    """∇²L̃ column by column from central differences of the gradient (host arrays)."""
    P = len(theta)
    return np.stack([central_difference(loss.gradient, theta, np.eye(P)[j]) for j in range(P)], axis=1)


def dense_ggn(loss, theta):
    """``G = (1/N) Σ_n J_nᵀ H_z l J_n`` with J = ∂f/∂θ built column by column from central differences (an
    example's outputs flattened, as ``criterion.hessian`` orders them)."""
    net, P = loss.net, len(theta)
    X = loss.X_host

    def outputs(t):
        with net.using(t):
            return backend.to_numpy(net(X)).reshape(len(X), -1)

    J = np.stack([central_difference(outputs, theta, np.eye(P)[j]) for j in range(P)], axis=2)  # (n, O, P)
    z = net.xp.asarray(backend.to_numpy(net(X)))
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
