"""The pieces every eigensolver shares: its result, Rayleigh–Ritz on a subspace, residual norms, a start block.

Residual norms are ``‖A v − λ v‖ / max(|λ|, tiny)``; every method reports
them for its answer, computed from the answer's own products. A pair has
converged when that is below tol, or when its residual is at the operator's
rounding level (:func:`within_tol`): an eigenvalue at rounding level, such as
an exact zero, has no relative accuracy to reach.
"""

from dataclasses import dataclass

import numpy as np

from .. import backend

TINY = 1e-30


@dataclass
class EigenResult:
    values: object            # (k,) eigenvalues, decreasing, with their signs
    vectors: object           # (P, k) orthonormal eigenvectors, column j for values[j]
    residual_norms: object    # (k,) ‖A v − λ v‖ / max(|λ|, tiny), host array
    matvecs: int              # single-vector products spent
    iterations: int           # block products (power), LOBPCG iterations, operator calls (lanczos)
    converged: bool
    method: str

    @property
    def negative(self):
        """Boolean mask of the eigenvalues that are negative (power iteration ranks by |λ|)."""
        return backend.to_numpy(self.values) < 0


def rayleigh_ritz(V, AV, xp):
    """Ritz pairs of the operator on span(V), V orthonormal: eigh of ``T = Vᵀ A V``.

    Returns (λ, X, AX) with ``X = V S`` and ``AX = (A V) S`` for the eigenvectors S of
    T, ordered by decreasing |λ| (the order in which power iteration finds them).
    """
    T = V.T @ AV
    lam, S = xp.linalg.eigh((T + T.T) / 2)
    order = xp.argsort(-xp.abs(lam))
    lam, S = lam[order], S[:, order]
    return lam, V @ S, AV @ S


def column_norms(M, xp):
    """‖M[:, j]‖ for each column of a tall (P, b) array.

    On NumPy one einsum. On a device, the sum of squares in ``REDUCTION_PIECES``
    pieces of rows first, then over the pieces: CuPy gives each column of a
    plain sum over the long axis to one thread block, which took longer than
    a whole product of the network (docs/gpu.md, "Made faster with the card's
    numbers").
    """
    if xp is np:
        return np.sqrt(np.einsum("ij,ij->j", M, M))
    squares = M * M
    if squares.shape[1] == 0:
        return xp.zeros(0, dtype=M.dtype)
    pieces = min(REDUCTION_PIECES, len(squares))
    head = pieces * (len(squares) // pieces)
    sums = squares[:head].reshape(pieces, -1, squares.shape[1]).sum(axis=1).sum(axis=0)
    return xp.sqrt(sums + squares[head:].sum(axis=0))


REDUCTION_PIECES = 256

NOT_FINITE = "the operator returned NaN or infinite values"


def residual_norms(values, vectors, A_vectors, xp):
    """``‖A v_j − λ_j v_j‖ / max(|λ_j|, tiny)`` for each column j, as a host array."""
    R = A_vectors - vectors * values[None, :]
    return backend.to_numpy(column_norms(R, xp) / xp.maximum(xp.abs(values), TINY))


ROUNDING = 100      # an eigenpair whose residual is below ROUNDING · √P · eps · max|λ| is exact to rounding


def rounding_floor(values, dtype, P):
    """``ROUNDING √P eps max_i |λ_i|``: the residual norm below which an eigenpair is exact to rounding."""
    return ROUNDING * np.sqrt(P) * np.finfo(dtype).eps * float(np.abs(backend.to_numpy(values)).max())


def within_tol(norms, values, tol, dtype, P):
    """Whether every pair has converged: ``‖A v_j − λ_j v_j‖ ≤ max(tol |λ_j|, ROUNDING √P eps max_i |λ_i|)``,
    from the relative residual norms of :func:`residual_norms` and the eigenvalues (host or device)."""
    norms, values = np.asarray(norms), np.abs(backend.to_numpy(values))
    if not len(norms):
        return False
    rounding = rounding_floor(values, dtype, P) / np.maximum(values, TINY)
    return bool((norms < np.maximum(tol, rounding)).all())


def sorted_result(values, vectors, A_vectors, xp, **fields):
    """Sort pairs by decreasing signed value and attach residual norms."""
    order = xp.argsort(-values)
    values, vectors, A_vectors = values[order], vectors[:, order], A_vectors[:, order]
    return EigenResult(values=values, vectors=vectors, residual_norms=residual_norms(values, vectors, A_vectors, xp),
                       **fields)


def start_block(P, b, V0, seed, xp, dtype):
    """Orthonormal (P, b) start: V0's columns first, then seeded random ones."""
    rng = np.random.default_rng(seed)
    columns = [] if V0 is None else [xp.asarray(V0, dtype=dtype).reshape(P, -1)]
    have = 0 if V0 is None else columns[0].shape[1]
    if have < b:
        columns.append(xp.asarray(rng.standard_normal((P, b - have)), dtype=dtype))
    Q, _ = xp.linalg.qr(xp.concatenate(columns, axis=1)[:, :b])
    return Q
