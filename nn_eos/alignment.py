"""Layerwise Jacobian alignment (the 2024 paper, sections 2.2 and 7.1), for MLPs.

Per example, with ``√H = sqrt(H_z l)`` (the paper's R) and the pre-activation Jacobians
``∂f/∂x̂^i`` (O × n_i), the 2024 paper writes

    K^i (K^i)ᵀ = Δ^i (Δ^i)ᵀ,   Δ^i = sqrt(1 + ‖x^{i−1}‖²) √H ∂f/∂x̂^i              (section 2.2)
    K Kᵀ = Σ_i K^i (K^i)ᵀ                                                        (eq. 4)
    ρ(K) = λ_1(G) / E‖K‖²                                                         (eq. 3)
    Δ^i = χ^i Δ^{i+1} ∂x̂^{i+1}/∂x̂^i,   χ^i = sqrt((1 + ‖x^{i−1}‖²) / (1 + ‖x^i‖²))   (eq. 5)
    ∂x̂^{i+1}/∂x̂^i = A^{i+1} diag(σ'(x̂^i))                                        (layerwise Jacobian)
    r(M_1, M_2) = E‖M_1 M_2‖² / (E‖M_1‖² E‖M_2‖²)                                 (alignment ratio)

and splits ``E‖Δ^k‖²`` into five factors (eq. 7). Nothing here forms the full
parameter Jacobian: the O × n_i pre-activation Jacobians come from
back-propagating O unit vectors for all examples at once, the norms of K^i and
K from O × O Gram matrices, and the layerwise Jacobians' operator norms from a
batched Lanczos iteration over all examples at once, using only the products
``v ↦ A^{i+1}(s ⊙ v)`` and their transposes.

Norms are operator norms, ‖M‖ = largest singular value; ``E`` is the mean over
the training set. Layers are numbered i = 1..L as in the paper; arrays below
hold layer i at index i − 1.

Index letters: n example, o and r outputs, a and b features of a layer.
"""

from dataclasses import dataclass

import numpy as np

from .activations import Activation
from .backend import to_device, to_numpy
from .eigen.batched_lanczos import batched_top_eigenvalue
from .conv import Conv2d
from .criteria import criterion as make_criterion
from .curvature import TrainingLoss
from .eigen import top_eigenpairs
from .layers import Dense


def dense_layers(net):
    """The network's dense layers and, for each but the last, the activation after it (MLPs only)."""
    dense = [layer for layer in net.layers if isinstance(layer, Dense)]
    acts = [layer for layer in net.layers if isinstance(layer, Activation)]
    expected = []
    for i, d in enumerate(dense):
        expected.append(d)
        if i < len(dense) - 1:
            expected.append(acts[i] if i < len(acts) else None)
    if expected != net.layers:
        raise ValueError("alignment needs an MLP: Dense and activation layers alternating, ending in Dense")
    return dense, acts


def output_jacobians(net, X, caches=None):
    """``∂f/∂y`` at the output y of every layer with parameters, each (n, O, *y.shape[1:]), for any Sequential.

    The O unit vectors of the output are back-propagated, as a block of O
    "directions", through the layers' first-order R-backward pass (the plain
    backward pass with a leading axis), one pass for all examples. ``caches``
    (from ``net.new_caches()``) receives the forward pass's record, for the
    layers' inputs and slopes that :func:`layer_grams` and
    :func:`per_example_quantities` read.
    """
    if net.positions:
        raise ValueError(f"the 2024 alignment decomposition is defined for one output vector per example (n, O); "
                         f"this network outputs (n, {', '.join(map(str, net.output_shape))}) — docs/blocks.md "
                         f"('Alignment beyond the MLP') says what would extend it")
    xp = net.xp
    caches = net.new_caches() if caches is None else caches
    z = net.forward(net.inputs(X), caches)
    n, O = z.shape
    cotangent = xp.broadcast_to(xp.eye(O, dtype=z.dtype)[:, None, :], (O, n, O)).copy()   # (o, n, O)
    jacobians = {}
    first = min(i for i, layer in enumerate(net.layers) if layer.num_params)
    for i in reversed(range(first, len(net.layers))):
        layer = net.layers[i]
        if layer.num_params:
            jacobians[i] = xp.moveaxis(cotangent, 0, 1).copy()    # (n, O, …)
        if i > first:
            unused = xp.empty((O, layer.num_params), dtype=z.dtype)     # Σ_n of the parameter part
            cotangent = layer.r_backward(cotangent, None, caches[i], unused, second_order=False)
    return z, [jacobians[i] for i in sorted(jacobians)]


def layer_grams(net, criterion, X, y, caches=None):
    """``K^i (K^i)ᵀ`` (n, O, O) for every layer with parameters (2024 paper, section 2.2).

    Dense layer: ``(1 + ‖x‖²) √H J Jᵀ √H`` with J = ∂f/∂x̂ (O × n_out). Conv layer
    (weight sharing breaks that shortcut): with J_f the (O × positions) Jacobian
    of filter f's output map and ``Γ_pq = cols(x)_p · cols(x)_q + 1`` the Gram of
    the input patches over positions (the 1 for the bias),
    ``K^i (K^i)ᵀ = √H (Σ_f J_f Γ J_fᵀ) √H``. Any other layer with parameters
    gives ``J (∂y/∂θ^i)(∂y/∂θ^i)ᵀ Jᵀ`` per example itself, as
    ``parameter_gram(J, cache)`` (docs/layers.md). ``caches`` receives the
    forward pass's record (:func:`output_jacobians`).
    """
    caches = net.new_caches() if caches is None else caches
    z, jacobians = output_jacobians(net, X, caches)
    sqrt_H = criterion.sqrt_hessian(z, to_device(y, net.device))
    grams = []
    with_params = [(layer, cache) for layer, cache in zip(net.layers, caches) if layer.num_params]
    for (layer, cache), J in zip(with_params, jacobians):
        if isinstance(layer, Dense):
            x = cache.x
            inner = (1 + (x * x).sum(axis=1))[:, None, None] * (J @ J.transpose(0, 2, 1))
        elif isinstance(layer, Conv2d):
            n, O = J.shape[:2]
            Jf = J.reshape(n, O, layer.F, -1).transpose(0, 2, 1, 3)                 # (n, f, O, p)
            gamma = cache.x_cols @ cache.x_cols.transpose(0, 2, 1) + 1             # (n, p, p)
            inner = (Jf @ gamma[:, None] @ Jf.transpose(0, 1, 3, 2)).sum(axis=1)    # (n, O, O)
        elif hasattr(layer, "parameter_gram"):
            inner = layer.parameter_gram(J, cache)
        else:
            raise ValueError(f"K^i = √H ∂f/∂θ^i (2024 paper, section 2.2) needs, per example, the layer's Jacobian "
                             f"∂y/∂θ^i, which alignment knows for Dense and Conv2d only: {layer!r} has parameters "
                             f"and no parameter_gram(J, cache) giving Σ (J ∂y/∂θ^i)(J ∂y/∂θ^i)ᵀ (n, O, O) "
                             f"(docs/layers.md)")
        grams.append(sqrt_H @ inner @ sqrt_H)
    return grams


def layerwise_jacobian_norm2(A, s, xp, tol=1e-9, dense_below=128):
    """``‖A diag(s_n)‖²`` for every example n (s: (n, a), A: (b, a)): the layerwise Jacobians' squared norms.

    Each is ``λ_max(diag(s) C diag(s))`` with ``C = Aᵀ A`` (a × a) formed once
    for all examples, or ``λ_max(A diag(s²) Aᵀ)`` (b × b), whichever costs less
    per product. Sides up to ``dense_below`` are formed per example and
    diagonalised (cheap at that size); larger ones go through batched Lanczos
    (:mod:`nn_eos.eigen.batched_lanczos`) with the products ``s ⊙ ((s ⊙ v) C)`` —
    one a × a product, where ``A (s ⊙ v)`` and ``s ⊙ (Aᵀ u)`` would be two a × b
    ones — or ``((u A) ⊙ s²) Aᵀ``, to a relative accuracy ``tol``,
    warm-started from the top singular vector of ``A diag(rms_n s_n)``.
    """
    b, a = A.shape
    n = s.shape[0]
    if min(a, b) <= dense_below:
        if b <= a:
            gram = (A[None] * (s * s)[:, None, :]) @ A.T                  # (n, b, b)
        else:
            gram = s[:, :, None] * (A.T @ A)[None] * s[:, None, :]         # (n, a, a)
        return xp.linalg.eigvalsh(gram)[:, -1]
    # warm start: the top singular vector of M = A diag(rms of s over the examples), one for all examples, as
    # the top eigenvector of MᵀM or M Mᵀ (an eigh of the side we iterate on, far cheaper than an SVD of M:
    # docs/gpu.md)
    M = A * xp.sqrt((s * s).mean(axis=0))
    if a <= 2 * b:                                   # a² ≤ 2ab multiply-adds per example and product
        C = A.T @ A
        return batched_top_eigenvalue(lambda v, s_rows: ((v * s_rows) @ C) * s_rows, n, a, xp, A.dtype, tol,
                                      start=xp.linalg.eigh(M.T @ M)[1][:, -1], per_example=(s,))
    return batched_top_eigenvalue(lambda u, s2_rows: ((u @ A) * s2_rows) @ A.T, n, b, xp, A.dtype, tol,
                                  start=xp.linalg.eigh(M @ M.T)[1][:, -1], per_example=(s * s,))


@dataclass
class AlignmentReport:
    """The 2024 paper's decomposition at one θ. Per-layer arrays hold layer i at index i − 1."""

    K_norm2: float                 # E‖K‖²
    K_layer_norm2: np.ndarray      # E‖K^i‖² = E‖Δ^i‖², i = 1..L
    chi2: np.ndarray               # E(χ^i)², i = 1..L−1
    jacobian_norm2: np.ndarray     # E‖∂x̂^{i+1}/∂x̂^i‖², i = 1..L−1
    r_delta_jacobian: np.ndarray   # r(Δ^{i+1}, ∂x̂^{i+1}/∂x̂^i), i = 1..L−1
    r_chi: np.ndarray              # r(χ^i I, Δ^i/χ^i), i = 1..L−1
    sharpness: dict = None         # λ_1 of ∇²L̃, G and H when computed
    overlap_ratio: float = None    # ρ(K) = λ_1(G) / E‖K‖² (eq. 3)
    eigenvectors: dict = None      # the top eigenvector of each, when asked for

    @property
    def num_layers(self):
        return len(self.K_layer_norm2)

    def components(self, k):
        """The five factors of ``E‖Δ^k‖²`` (eq. 7), for k = 1..L.

        ``Π_χ^k = Π_{i=k}^{L−1} E(χ^i)²`` — the paper prints the upper limit as L,
        but χ^L is not defined (x^L is the output, not an activation) and the
        recursion of eq. 5 runs over i = k..L−1, so we use L − 1.
        """
        L = self.num_layers
        if not 1 <= k <= L:
            raise ValueError(f"k must lie in 1..{L}, got {k}")
        layers = slice(k - 1, L - 1)
        return {"Pi_chi": float(np.prod(self.chi2[layers])), "P_chi": float(np.prod(self.r_chi[layers])),
                "Pi_J": float(np.prod(self.jacobian_norm2[layers])),
                "P_J": float(np.prod(self.r_delta_jacobian[layers])), "delta_L": float(self.K_layer_norm2[-1])}


def _top_eigenvalue_small(M, xp):
    return xp.linalg.eigvalsh(M)[:, -1]


def per_example_quantities(net, criterion, X, y):
    """Per-example squared norms for one batch (host arrays): ‖K‖², ‖K^i‖² for every layer, and for MLPs
    ‖Δ^i‖² = ‖K^i‖², (χ^i)², ‖∂x̂^{i+1}/∂x̂^i‖² (eq. 5 needs the MLP structure)."""
    xp = net.xp
    caches = net.new_caches()
    grams = layer_grams(net, criterion, X, y, caches)                       # K^i (K^i)ᵀ, eq. 4
    delta2 = [_top_eigenvalue_small(g, xp) for g in grams]                  # ‖K^i‖² (= ‖Δ^i‖² for an MLP)
    K2 = _top_eigenvalue_small(sum(grams), xp)                              # ‖K‖²
    chi2, J2 = [], []
    if _is_mlp(net):
        dense, _ = dense_layers(net)
        inputs = [c.x for l, c in zip(net.layers, caches) if isinstance(l, Dense)]         # x^{i−1}, i = 1..L
        slopes = [c.slope for l, c in zip(net.layers, caches) if isinstance(l, Activation)]  # σ'(x̂^i)
        one_plus = [1 + (x * x).sum(axis=1) for x in inputs]                # 1 + ‖x^{i−1}‖², i = 1..L
        chi2 = [one_plus[i] / one_plus[i + 1] for i in range(len(dense) - 1)]
        J2 = [layerwise_jacobian_norm2(dense[i + 1].A, slopes[i], xp) for i in range(len(dense) - 1)]
    return {"K2": to_numpy(K2), "delta2": [to_numpy(d) for d in delta2], "chi2": [to_numpy(c) for c in chi2],
            "J2": [to_numpy(j) for j in J2]}


def _is_mlp(net):
    try:
        dense_layers(net)
        return True
    except ValueError:
        return False


def alignment_ratio(product_norm2, first_norm2, second_norm2):
    """``r(M_1, M_2) = E‖M_1 M_2‖² / (E‖M_1‖² E‖M_2‖²)`` (2024 paper, section 2.2), per layer.

    Arguments are (layers, N) per-example squared norms of ``M_1 M_2``, ``M_1`` and
    ``M_2``; the means run over the N examples. A layer whose norms vanish (Δ
    behind dead ReLUs) gives 0/0 = NaN, reported as such.
    """
    with np.errstate(invalid="ignore"):        # ‖M_1 M_2‖ ≤ ‖M_1‖ ‖M_2‖: a zero below means 0/0, never x/0
        return product_norm2.mean(axis=1) / (first_norm2.mean(axis=1) * second_norm2.mean(axis=1))


def _over_all_examples(loss, criterion, theta):
    """Per-example quantities (:func:`per_example_quantities`) over every chunk of the loss's data, joined:
    ``K2`` (N,), and (layers, N) arrays ``delta2``, ``chi2``, ``J2`` (NaN where the net is not an MLP)."""
    net = loss.net
    with net.using(theta):
        parts = [per_example_quantities(net, criterion, Xc, yc) for Xc, yc in loss.chunks()]
    K2 = np.concatenate([p["K2"] for p in parts])

    def per_layer(key):
        rows = [np.concatenate([p[key][i] for p in parts]) for i in range(len(parts[0][key]))]
        return np.stack(rows) if rows else np.zeros((0, len(K2)))

    delta2, chi2, J2 = per_layer("delta2"), per_layer("chi2"), per_layer("J2")
    L = delta2.shape[0]
    if chi2.shape[0] != L - 1:   # not an MLP: the layerwise terms of eq. 5–7 are not defined
        chi2 = J2 = np.full((max(L - 1, 0), len(K2)), np.nan)
    return K2, delta2, chi2, J2


SHARPNESS_TOL = 1e-4
"""The relative residual to which :func:`analyze` solves for λ_1 by default. The eigenvalue's error goes
like the square of the residual (Kato–Temple), and is at most the residual itself (Weyl): on the paper's MLP
(1024-512×5-6 ELU, 1000 dice images, at initialisation and one step later) the three λ_1 at 1e-4 agree with
those at 1e-10 to 6e-8, at 1e-6 to 4e-12 — digits nobody plots, which cost 115 products cold (84 of them for
H) against 84 at 1e-4, and 80 warm against 56."""


def top_curvature(loss, theta, tol=SHARPNESS_TOL, start=None):
    """λ_1 and the top eigenvector of ∇²L̃, G and H = ∇²L̃ − G at θ: two dicts keyed 'hessian', 'ggn', 'residual'.

    λ_1 is the largest algebraic eigenvalue (H's spectrum has a negative side as
    large as its positive one), by block Krylov from one vector, which needs
    fewer products than eigsh warm or cold (bench/eigen.py), to a relative
    residual ``tol`` (:data:`SHARPNESS_TOL`); ``start`` (such a dict of
    vectors) warm-starts each solve.
    """
    values, vectors = {}, {}
    for kind in ("hessian", "ggn", "residual"):
        V0 = None if start is None else start.get(kind)
        result = top_eigenpairs(loss.operator(kind, theta), 1, method="krylov", which="LA", tol=tol, V0=V0)
        values[kind] = float(to_numpy(result.values)[0])
        vectors[kind] = result.vectors[:, 0]
    return values, vectors


def analyze(net, criterion, X, y, theta=None, sharpness=True, chunk_size=None, tol=SHARPNESS_TOL,
            eigenvectors=False, start=None):
    """The 2024 paper's decomposition at θ (default: the network's own) over the dataset (X, y).

    Any Sequential of Dense/Conv2d/pooling/activation layers gets E‖K‖², E‖K^i‖² per
    layer with parameters, ρ(K) and the sharpness; the layerwise terms (χ^i,
    layerwise Jacobians, alignment ratios, eq. 7) need an MLP and are NaN otherwise.

    Expectations are means over all examples, accumulated in chunks of
    ``chunk_size``. The two ratios of eq. 7 use eq. 5 per example,
    ``‖Δ^{i+1} ∂x̂^{i+1}/∂x̂^i‖² = ‖Δ^i / χ^i‖² = ‖Δ^i‖² / (χ^i)²``:
    ``r_delta_jacobian = r(Δ^{i+1}, ∂x̂^{i+1}/∂x̂^i)`` and
    ``r_chi = r(χ^i I, Δ^i/χ^i)``. With ``sharpness=True`` the top eigenvalues
    of ∇²L̃, G and H are computed (:func:`top_curvature`, relative residual
    ``tol``, default :data:`SHARPNESS_TOL`) and ``overlap_ratio`` = ρ(K) =
    λ_1(G)/E‖K‖² (eq. 3);
    ``eigenvectors=True`` keeps their top eigenvectors in
    ``report.eigenvectors``, and ``start`` (such a dict, e.g. from the previous
    snapshot) warm-starts the solves.
    """
    if sharpness and not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    criterion = make_criterion(criterion)
    loss = TrainingLoss(net, criterion, X, y, chunk_size=chunk_size)
    theta = net.theta if theta is None else net.check_theta(theta)
    K2, delta2, chi2, J2 = _over_all_examples(loss, criterion, theta)
    L = delta2.shape[0]
    with np.errstate(invalid="ignore"):        # Δ^i carries the factor χ^i (eq. 5): χ^i = 0 means 0/0
        delta_over_chi2 = delta2[:L - 1] / chi2                               # ‖Δ^i / χ^i‖², eq. 5
    report = AlignmentReport(K_norm2=float(K2.mean()), K_layer_norm2=delta2.mean(axis=1), chi2=chi2.mean(axis=1),
                             jacobian_norm2=J2.mean(axis=1),
                             r_delta_jacobian=alignment_ratio(delta_over_chi2, delta2[1:], J2),
                             r_chi=alignment_ratio(delta2[:L - 1], chi2, delta_over_chi2))
    if sharpness:
        report.sharpness, vectors = top_curvature(loss, theta, tol, start)
        report.eigenvectors = vectors if eigenvectors else None
        report.overlap_ratio = report.sharpness["ggn"] / report.K_norm2
    return report


# ----- over a series of θ, and across runs ----------------------------------------------

def counterfactual_sharpness(series):
    """The bound ``ρ(K) Σ_i (P^i_{Δ,J}(0) / P^i_{Δ,J}(t)) E‖Δ^i‖²`` over a series (2024 paper, section 5).

    The sharpness the network would have if the alignment ``P^i_{Δ,J}`` had kept
    its value at the first analysed snapshot ("0"). The paper prints the ratio
    as P(t)/P(0); removing the growth of the alignment needs P(0)/P(t), which
    is what we compute. Returns (bound over t, the largest stable η = 2 / max bound).
    """
    delta2 = np.array([np.asarray(v) for v in series["K_layer_norm2"]])          # (T, L)
    r = np.array([np.asarray(v) for v in series["r_delta_jacobian"]])            # (T, L−1)
    P = np.stack([np.prod(r[:, i:], axis=1) for i in range(delta2.shape[1])], axis=1)   # P^i = Π_{j≥i} r_j
    bound = np.asarray(series["overlap_ratio"], dtype=float) * np.sum(P[:1] / P * delta2, axis=1)
    return bound, 2.0 / np.nanmax(bound)


def power_law(sizes, values):
    """Fit ``value ≈ c1 · D^{c2}`` (2024 paper, eq. 9) by least squares on logarithms; returns (c1, c2, R²).

    R² is the coefficient of determination of the fit in log–log space.
    """
    x, v = np.log(np.asarray(sizes, dtype=float)), np.log(np.asarray(values, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("power_law needs at least two distinct sizes")
    c2, log_c1 = np.polyfit(x, v, 1)
    residual = v - (log_c1 + c2 * x)
    total = np.sum((v - v.mean()) ** 2)
    r2 = 1 - residual @ residual / total if total > 0 else 1.0
    return float(np.exp(log_c1)), float(c2), float(r2)
