"""Layerwise Jacobian alignment (the 2024 paper, sections 2.2 and 7.1), for MLPs.

Per example, with ``R = sqrt(H_z l)`` and the pre-activation Jacobians
``∂f/∂x̂^i`` (O × n_i), the 2024 paper writes

    K^i (K^i)ᵀ = Δ^i (Δ^i)ᵀ,   Δ^i = sqrt(1 + ‖x^{i−1}‖²) R ∂f/∂x̂^i               (section 2.2)
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
from .backend import to_numpy
from .criteria import criterion as make_criterion
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


def preactivation_jacobians(net, X):
    """``∂f/∂x̂^i`` for i = 1..L, each (n, O, n_i), and the activations x^{i−1} (n, n_{i−1}) feeding layer i.

    Back-propagates the O unit vectors of the output (``∂f/∂x̂^L = I``) through
    ``∂f/∂x^{i−1} = (∂f/∂x̂^i) A^i`` and ``∂f/∂x̂^{i−1} = ∂f/∂x^{i−1} ⊙ σ'(x̂^{i−1})``.
    """
    dense, acts = dense_layers(net)
    xp = net.xp
    z = net.forward(X)
    n, O = z.shape
    jac = [None] * len(dense)
    jac[-1] = xp.broadcast_to(xp.eye(O, dtype=z.dtype), (n, O, O))
    for i in range(len(dense) - 1, 0, -1):
        jac[i - 1] = (jac[i] @ dense[i].A) * acts[i - 1].s[:, None, :]
    inputs = [d.x for d in dense]
    return z, jac, inputs


def batched_top_eigenvalue(matvec, n, d, xp, dtype, tol=1e-10, steps=24, seed=0):
    """Largest eigenvalue of n symmetric PSD d×d operators at once, by Lanczos with full reorthogonalisation.

    ``matvec`` maps (n, d) to (n, d), example by example. Each of ``steps``
    Lanczos steps is one batched product; the tridiagonal (n, m, m) matrices are
    diagonalised together. The Ritz value's error bound ``|β_m s_m|`` must fall
    below ``tol`` times the value for every example, else the iteration is run
    again with twice the steps (at m = d the Krylov space is the whole space and
    the answer exact).
    """
    m = min(steps, d)
    rng = np.random.default_rng(seed)
    start = xp.asarray(rng.standard_normal((n, d)), dtype=dtype)
    while True:
        basis = xp.zeros((m, n, d), dtype=dtype)
        alpha = xp.zeros((n, m), dtype=dtype)
        beta = xp.zeros((n, m), dtype=dtype)
        q = start / xp.linalg.norm(start, axis=1, keepdims=True)
        for j in range(m):
            basis[j] = q
            w = matvec(q)
            alpha[:, j] = (w * q).sum(axis=1)
            # full reorthogonalisation against every basis vector so far (twice is enough)
            for _ in range(2):
                w -= xp.einsum("jn,jnd->nd", xp.einsum("jnd,nd->jn", basis[:j + 1], w), basis[:j + 1])
            b = xp.linalg.norm(w, axis=1)
            beta[:, j] = b
            q = w / xp.where(b > 0, b, 1)[:, None]          # b = 0: an invariant subspace, T is exact
        T = xp.zeros((n, m, m), dtype=dtype)
        idx = xp.arange(m)
        T[:, idx, idx] = alpha
        T[:, idx[:-1], idx[1:]] = beta[:, :-1]
        T[:, idx[1:], idx[:-1]] = beta[:, :-1]
        theta, S = xp.linalg.eigh(T)
        top = theta[:, -1]
        bound = xp.abs(beta[:, -1] * S[:, -1, -1])
        if m == d or bool((bound <= tol * xp.maximum(xp.abs(top), 1e-300)).all()):
            return top
        m = min(2 * m, d)


def layerwise_jacobian_norm2(A, s, xp, tol=1e-10):
    """``‖A diag(s_n)‖²`` for every example n (s: (n, a), A: (b, a)): the layerwise Jacobians' squared norms.

    The smaller side is used: ``λ_max(A diag(s²) Aᵀ)`` (b × b) or
    ``λ_max(diag(s) Aᵀ A diag(s))`` (a × a). Small sides (≤ 32) are formed per
    example and diagonalised; larger ones go through batched Lanczos with the
    matrix-free products ``A (s ⊙ v)`` and ``s ⊙ (Aᵀ u)``.
    """
    b, a = A.shape
    n = s.shape[0]
    if min(a, b) <= 32:
        if b <= a:
            gram = (A[None] * (s * s)[:, None, :]) @ A.T                  # (n, b, b)
        else:
            gram = s[:, :, None] * (A.T @ A)[None] * s[:, None, :]         # (n, a, a)
        return xp.linalg.eigvalsh(gram)[:, -1]
    if b <= a:
        return batched_top_eigenvalue(lambda u: ((u @ A) * s * s) @ A.T, n, b, xp, A.dtype, tol)
    return batched_top_eigenvalue(lambda v: ((v * s) @ A.T @ A) * s, n, a, xp, A.dtype, tol)


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
    """Per-example squared norms for one batch: ‖K‖², ‖Δ^i‖², (χ^i)², ‖J^i‖², ‖Δ^i/χ^i‖² (host arrays)."""
    xp = net.xp
    dense, acts = dense_layers(net)
    z, jac, inputs = preactivation_jacobians(net, X)
    R = criterion.sqrt_hessian(z, y)                                        # (n, O, O)
    one_plus = [1 + (x * x).sum(axis=1) for x in inputs]                    # i = 1..L
    grams = []
    for i in range(len(dense)):
        RJ = R @ jac[i]                                                     # R ∂f/∂x̂^i, (n, O, n_i)
        grams.append(one_plus[i][:, None, None] * (RJ @ RJ.transpose(0, 2, 1)))   # Δ^i (Δ^i)ᵀ
    delta2 = [_top_eigenvalue_small(g, xp) for g in grams]                  # ‖Δ^i‖² = ‖K^i‖²
    K2 = _top_eigenvalue_small(sum(grams), xp)                              # ‖K‖², eq. 4
    chi2 = [one_plus[i] / one_plus[i + 1] for i in range(len(dense) - 1)]   # (χ^i)²
    J2 = [layerwise_jacobian_norm2(dense[i + 1].A, acts[i].s, xp) for i in range(len(dense) - 1)]
    return {"K2": to_numpy(K2), "delta2": [to_numpy(d) for d in delta2], "chi2": [to_numpy(c) for c in chi2],
            "J2": [to_numpy(j) for j in J2]}


def analyze(net, criterion, X, y, theta=None, sharpness=True, chunk_size=None, tol=1e-8):
    """The 2024 paper's decomposition at θ (default: the network's own) over the dataset (X, y).

    Expectations are means over all examples, accumulated in chunks of
    ``chunk_size``. With ``sharpness=True`` the top eigenvalues of ∇²L̃, G and
    H = ∇²L̃ − G are computed by Lanczos (relative residual ``tol``) and
    ``overlap_ratio`` = ρ(K) = λ_1(G)/E‖K‖² (eq. 3).
    """
    from .curvature import TrainingLoss
    from .eigen import top_eigenpairs

    criterion = make_criterion(criterion)
    loss = TrainingLoss(net, criterion, X, y, chunk_size=chunk_size)
    parts = []
    with net.using(theta):
        for Xc, yc in loss.chunks():
            parts.append(per_example_quantities(net, criterion, Xc, yc))
    K2 = np.concatenate([p["K2"] for p in parts])

    def per_layer(key):
        """(layers, N) array of a per-layer, per-example quantity over all chunks."""
        rows = [np.concatenate([p[key][i] for p in parts]) for i in range(len(parts[0][key]))]
        return np.stack(rows) if rows else np.zeros((0, len(K2)))

    delta2, chi2, J2 = per_layer("delta2"), per_layer("chi2"), per_layer("J2")
    L = delta2.shape[0]
    # ‖Δ^{i+1} ∂x̂^{i+1}/∂x̂^i‖² = ‖Δ^i / χ^i‖² = ‖Δ^i‖² / (χ^i)², per example (eq. 5)
    # (a layer whose Δ vanishes, e.g. behind dead ReLUs, gives 0/0 = NaN ratios: reported as such)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta_over_chi2 = delta2[:L - 1] / chi2
        r_delta_jacobian = delta_over_chi2.mean(axis=1) / (delta2[1:].mean(axis=1) * J2.mean(axis=1))
        r_chi = delta2[:L - 1].mean(axis=1) / (chi2.mean(axis=1) * delta_over_chi2.mean(axis=1))
    report = AlignmentReport(K_norm2=float(K2.mean()), K_layer_norm2=delta2.mean(axis=1), chi2=chi2.mean(axis=1),
                             jacobian_norm2=J2.mean(axis=1), r_delta_jacobian=r_delta_jacobian, r_chi=r_chi)
    if sharpness:
        theta = net.theta if theta is None else net.check_theta(theta)
        values = {}
        for kind in ("hessian", "ggn", "residual"):
            operator = loss.linear_operator(kind, theta=theta)
            values[kind] = float(to_numpy(top_eigenpairs(operator, 1, method="lanczos", tol=tol).values)[0])
        report.sharpness = values
        report.overlap_ratio = values["ggn"] / report.K_norm2
    return report
