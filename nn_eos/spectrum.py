"""Spectra of ∇²L̃, G or H by their products: trace, diagonal and spectral density (docs/spectrum.md).

    Hutchinson      tr A ≈ (1/m) Σ_i z_iᵀ A z_i                   z_i Rademacher
    Hutch++         tr A = tr(Qᵀ A Q) + tr((I − QQᵀ) A (I − QQᵀ))  Q an orthonormal basis of A S, S random;
                    the first term exact, the second by Hutchinson (Meyer, Musco, Musco & Woodruff 2021)
    diagonal        diag A ≈ (1/m) Σ_i z_i ⊙ A z_i                 (Bekas, Kokiopoulou & Saad 2007)
    density         φ(λ) ≈ (1/p) Σ_probes Σ_j τ_j δ(λ − θ_j)        stochastic Lanczos quadrature: θ_j, τ_j the
                    Gauss nodes and weights of m Lanczos steps from each probe (Golub & Meurant; Ghorbani,
                    Krishnan & Xiao 2019)

Every function takes a block operator ``V (P, b) ↦ A V`` (``loss.operator(kind, θ)``, or any
:class:`~nn_eos.eigen.BlockOperator`) and applies it to blocks of directions: the probes of one estimate share
each product. Randomness comes from ``numpy.random.default_rng(seed)`` on the host, so an estimate is the same
on every device.
"""

import math
from dataclasses import dataclass

import numpy as np

from . import backend
from .validation import check_integer


@dataclass
class Estimate:
    """A stochastic estimate: ``value``, its ``std_error`` (the sample standard deviation over √samples of the
    stochastic part; 0 where the estimate is exact), and the operator ``products`` it took."""

    value: object
    std_error: object
    products: int


def _size(operator):
    if not hasattr(operator, "matmat") or not hasattr(operator, "shape"):
        raise TypeError(f"a spectrum takes a block operator (loss.operator(kind) or eigen.BlockOperator), got "
                        f"{type(operator).__name__}")
    return int(operator.shape[0])


def _rademacher(rng, P, k, operator):
    """(P, k) random ±1 on the operator's device and in its dtype."""
    Z = rng.choice(np.array([-1.0, 1.0]), size=(P, k))
    return backend.to_module(Z, operator.xp).astype(operator.dtype, copy=False)


def _blocks(total, block):
    for start in range(0, total, block):
        yield min(block, total - start)


def hutchinson_trace(operator, samples=100, seed=0, block=10):
    """``tr A`` by Hutchinson's estimator over ``samples`` Rademacher probes, ``block`` of them a product."""
    P = _size(operator)
    samples, block = check_integer(samples, "samples"), check_integer(block, "block")
    rng = np.random.default_rng(seed)
    quadratic = []
    for k in _blocks(samples, block):
        Z = _rademacher(rng, P, k, operator)
        quadratic.append(backend.to_numpy((Z * operator.matmat(Z)).sum(axis=0)))
    q = np.concatenate(quadratic)
    return Estimate(float(q.mean()), float(q.std(ddof=1) / np.sqrt(samples)) if samples > 1 else np.inf, samples)


def hutchpp_trace(operator, products=99, seed=0, block=None):
    """``tr A`` by Hutch++ with about ``products`` products: a third sketch the top of the spectrum (Q from
    A S), exactly traced; the rest goes to Hutchinson on the complement of Q. With products ≥ 3P the sketch
    spans everything and the trace is exact."""
    P = _size(operator)
    products = check_integer(products, "products")
    if products < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {products}")
    xp = operator.xp
    rng = np.random.default_rng(seed)
    k = products // 3
    Q, _ = xp.linalg.qr(operator.matmat(_rademacher(rng, P, min(k, P), operator)))
    exact = float(xp.trace(Q.T @ operator.matmat(Q)))
    G = _rademacher(rng, P, k, operator)
    G = G - Q @ (Q.T @ G)                                  # (I − QQᵀ) g
    rest = backend.to_numpy((G * operator.matmat(G)).sum(axis=0))        # k ≥ 1 as products ≥ 3
    if Q.shape[1] >= P:                                     # the sketch spans R^P: the complement is empty
        return Estimate(exact, 0.0, 2 * Q.shape[1] + k)
    return Estimate(exact + float(rest.mean()), float(rest.std(ddof=1) / np.sqrt(k)) if k > 1 else np.inf,
                    2 * Q.shape[1] + k)


def diagonal(operator, samples=100, seed=0, block=10):
    """``diag A`` (P,) by Bekas et al.'s estimator (1/m) Σ z ⊙ A z over Rademacher probes; ``std_error`` per entry."""
    P = _size(operator)
    samples, block = check_integer(samples, "samples"), check_integer(block, "block")
    rng = np.random.default_rng(seed)
    xp = operator.xp
    total = xp.zeros(P, dtype=operator.dtype)
    square = xp.zeros(P, dtype=operator.dtype)
    for k in _blocks(samples, block):
        Z = _rademacher(rng, P, k, operator)
        terms = Z * operator.matmat(Z)
        total += terms.sum(axis=1)
        square += (terms * terms).sum(axis=1)
    mean = total / samples
    spread = xp.sqrt(xp.maximum(square / samples - mean * mean, 0) * samples / max(samples - 1, 1))
    return Estimate(mean, spread / np.sqrt(samples), samples)


@dataclass
class Density:
    """A spectral density by stochastic Lanczos quadrature: for each probe, the Gauss ``nodes`` (p, m) and
    ``weights`` (p, m) of its m Lanczos steps (weights of one probe sum to 1); host arrays.

    ``moment(k)`` is the estimate of tr(Aᵏ)/P; ``smoothed(grid, width)`` the density convolved with a Gaussian
    of standard deviation ``width``, normalised to integrate to 1.
    """

    nodes: np.ndarray
    weights: np.ndarray
    products: int

    def moment(self, k):
        """(1/p) Σ_probes Σ_j τ_j θ_jᵏ: the estimate of tr(Aᵏ)/P, exact per probe vᵀAᵏv for k < 2m."""
        return float(np.mean(np.sum(self.weights * self.nodes ** k, axis=1)))

    def smoothed(self, grid, width):
        """φ on ``grid``: each node a Gaussian of standard deviation ``width`` weighted by τ_j, averaged over probes."""
        grid = np.asarray(grid, dtype=np.float64)
        if not width > 0:
            raise ValueError(f"width must be positive, got {width!r}")
        gaps = (grid[:, None] - self.nodes.ravel()[None, :]) / width
        kernel = np.exp(-0.5 * gaps * gaps) / (width * np.sqrt(2 * np.pi))
        return kernel @ self.weights.ravel() / len(self.nodes)


def spectral_density(operator, steps=80, probes=10, seed=0):
    """The spectral density of A by stochastic Lanczos quadrature: ``probes`` Lanczos runs of ``steps`` steps from
    unit Rademacher vectors, all advanced together (one block product a step), each fully reorthogonalised
    against its own basis (which holds probes × steps × P numbers). Returns a :class:`Density`.
    """
    P = _size(operator)
    steps, probes = check_integer(steps, "steps"), check_integer(probes, "probes")
    steps = min(steps, P)
    xp = operator.xp
    rng = np.random.default_rng(seed)
    V = _rademacher(rng, P, probes, operator) / math.sqrt(P)          # (P, p): unit vectors (a NumPy scalar
    # would promote a float32 block to float64)
    basis = xp.zeros((steps, P, probes), dtype=operator.dtype)
    alpha = np.zeros((probes, steps))
    beta = np.zeros((probes, steps))
    length = np.full(probes, steps)                                    # a probe whose Krylov space closes stops
    for j in range(steps):
        basis[j] = V
        W = operator.matmat(V)
        a = (V * W).sum(axis=0)
        alpha[:, j] = backend.to_numpy(a)
        # W − Σ_{i ≤ j} q_i (q_iᵀ W), twice (classical Gram–Schmidt with reorthogonalisation), per probe
        for _ in range(2):
            W = W - xp.einsum("jpk,jk->pk", basis[:j + 1], xp.einsum("jpk,pk->jk", basis[:j + 1], W))
        b = xp.sqrt((W * W).sum(axis=0))
        beta[:, j] = backend.to_numpy(b)
        closed = (beta[:, j] <= 1e-12 * np.maximum(np.abs(alpha[:, :j + 1]).max(axis=1), 1e-300)) & (length == steps)
        length[closed] = j + 1
        V = W / xp.where(b > 0, b, 1)
    nodes, weights = np.zeros((probes, steps)), np.zeros((probes, steps))
    for p in range(probes):
        m = length[p]
        T = np.diag(alpha[p, :m]) + np.diag(beta[p, :m - 1], 1) + np.diag(beta[p, :m - 1], -1)
        theta, S = np.linalg.eigh(T)
        nodes[p, :m], weights[p, :m] = theta, S[0] ** 2            # unused slots keep weight 0
    return Density(nodes, weights, steps * probes)
