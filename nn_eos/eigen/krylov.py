"""Block Krylov with Rayleigh–Ritz over the whole basis and thick restarts: ``top_eigenpairs(method="krylov")``.

Each block product adds the residuals ``A x − λ x`` of the unconverged Ritz
pairs to the basis, so span(V, A V, A² V, …) is searched rather than only its
last block (which is all power iteration keeps). bench/eigen.py compares it
with the other methods.
"""

import numpy as np

from .. import backend
from .ritz import NOT_FINITE, TINY, column_norms, sorted_result, start_block, within_tol


def _new_directions(W, Q, xp, drop=1e-10):
    """An orthonormal basis of the part of span(W) orthogonal to span(Q), Q orthonormal.

    Columns are scaled to unit norm, projected out of Q and orthonormalised
    by SVQB (Stathopoulos & Wu 2002): with ``WᵀW = U Λ Uᵀ``, ``W U Λ^{-1/2}``
    is orthonormal — one small eigh (on the host) and tall-skinny products,
    much cheaper than a Householder QR of a (P, c) block. Directions with
    λ below drop² or below what eigh resolves (10 c ε λ_max: a λ of rounding
    size may come out positive) lie (numerically) in span(Q) and are
    dropped. Projection and SVQB repeat until ``WᵀW = I`` to 1e-12 (50 ε in
    float32): a second pass ("twice is enough") only when the first removed
    more than 1e-6 of a column (√(50 ε) in float32) or SVQB divides by a λ
    below 1e-4, since either magnifies what rounding left of Q. Residuals of
    Ritz pairs are orthogonal to Q up to rounding and usually need one pass —
    each pass reads the whole (P, m) basis twice, the main cost of an
    iteration besides the product.
    """
    W = W / xp.maximum(column_norms(W, xp), TINY)[None, :]
    orthonormal = max(1e-12, 50 * np.finfo(W.dtype).eps)     # float32 rounding alone leaves ~1e-7 in WᵀW − I
    for _ in range(5):
        W = W - Q @ (Q.T @ W)                                # columns were unit: 1 − diag(WᵀW) is what left
        gram = backend.to_numpy(W.T @ W)
        if W.shape[1] == 0 or np.abs(gram - np.eye(W.shape[1])).max() < orthonormal:
            break                                            # orthonormal and orthogonal to Q
        removed = 1 - gram.diagonal().min()
        lam, U = np.linalg.eigh((gram + gram.T) / 2)
        resolved = 10 * len(lam) * np.finfo(gram.dtype).eps * max(lam.max(), 0)   # eigh's rounding in λ
        keep = np.flatnonzero(lam > max(drop ** 2, resolved))[::-1]   # strongest directions first
        W = W @ xp.asarray(U[:, keep] / np.sqrt(lam[keep]), dtype=W.dtype)
        if removed < orthonormal and len(keep) and lam[keep].min() > 1e-4:
            break                                            # Q's rounding remnant magnified 100× at most
    return W


def block_krylov(A, k, V0, tol, maxiter, seed, guard, xp, dtype, which, block=None):
    """Thick-restarted block Krylov iteration with Rayleigh–Ritz on the whole basis.

    The basis Q (orthonormal), A Q and T = Qᵀ A Q are kept. Each iteration
    takes the Ritz pairs (λ, x) of T (no product needed), stops when the top
    k relative residuals are below tol, else adds the residuals
    ``r = A x − λ x`` of the ``block`` = s worst unconverged top-(k + guard)
    pairs, orthogonalised against Q, and applies A to them: one product of
    s directions. Since span(Q, r) = span(Q, A x), the basis is a block
    Krylov space (power iteration keeps only its last block).

    Start. Cold, from s random vectors; warm with s < k + guard, from s
    random mixtures of V0's columns. From one block of s, the residuals of
    all Ritz pairs lie in the s-dim span of the next Krylov block, so this
    is block Lanczos of block size s, with full re-orthogonalisation, whose
    polynomial degree grows by one every s products. A small s needs the
    fewest products in all (s = 1, the default, is also the fastest as
    measured: :func:`default_block`);
    wider blocks make fewer, bigger products, which pays only where a
    product's cost hardly grows with its width. A
    random block of k + guard needs several times more products, and so
    does a warm start from V0's whole block. With s ≥ k + guard and V0,
    the start is V0's block (topped up to k + guard), expanded by the
    residuals of every unconverged pair: fewest block products from a very
    good start, power iteration with memory.

    A block of s sees at most s vectors of any one eigenspace until rounding
    spreads them: an eigenvalue repeated exactly more than s times among the
    top k (symmetric toy problems, not trained networks) needs ``block`` at
    least its multiplicity, as in any block method.

    Restart. When the basis would exceed 5(k + guard) columns (at least
    k + guard + 20, at most P) it restarts from the top 2(k + guard) Ritz
    vectors (keeping the next ones too saves a third of the products for top
    7 on a slowly decaying spectrum) and their products: no product is
    repeated, and the residuals of the kept Ritz vectors still lie in the next
    block's span. A restart always leaves room for the next block
    (max(5b, b + 20) − 2b ≥ b ≥ block, b = k + guard), and a basis of all P
    columns never restarts (what is new to it has at most P − size columns).

    Ranks Ritz values by |λ| (``which='LM'``), like power iteration, or by λ
    (``'LA'``): a Krylov space converges to both ends of the spectrum.

    The small matrices (T, (AQ)ᵀ(AQ), the Ritz coefficients, SVQB's Gram matrix) live
    on the host: on a GPU each would otherwise be a handful of tiny kernel
    launches and syncs; only the (P, ·) products run on the device.
    """
    P = A.size
    b = min(k + guard, P)
    max_basis = min(P, max(5 * b, b + 20))
    block = min(block or default_block(xp), b)
    keep = 2 * b
    basis = _KrylovBasis(P, max_basis, xp, dtype)
    start = _first_block(P, b, block, V0, seed, xp, dtype)
    basis.add(start, A(start))
    iteration = 1
    while True:
        lam, S, order = basis.ritz_pairs(b, which)
        final = iteration >= maxiter or basis.size >= P
        norms, converged, vectors = basis.check_residuals(lam, S, k, tol, exact=final)
        if converged or final:
            break
        W = _expansion(basis, lam, S, norms, tol, block, xp)
        if W.shape[1] == 0 and len(lam) >= k:              # the basis is invariant: Ritz pairs are exact
            break
        if W.shape[1] == 0:                                  # invariant but too small (e.g. A = c I): go on
            rng = np.random.default_rng([seed, iteration])   # from random directions outside it
            W = _new_directions(xp.asarray(rng.standard_normal((P, block)), dtype=dtype), basis.Q, xp)
        if basis.size + W.shape[1] > max_basis:              # thick restart: keep the top Ritz vectors (a
            basis.restart(order[:keep])                      # subspace of span(Q), so W stays orthogonal)
        basis.add(W, A(W))
        iteration += 1
    X, AX = vectors if vectors is not None else basis.ritz_vectors(S)   # formed by the last check, or now
    return sorted_result(xp.asarray(lam[:k], dtype=dtype), X[:, :k], AX[:, :k], xp, matvecs=A.matvecs,
                         iterations=iteration, converged=converged, method="krylov")


DEVICE_BLOCK = 1


def default_block(xp):
    """Directions per product when the caller does not say: 1 on NumPy, ``DEVICE_BLOCK`` (also 1) on a device —
    the fewest products in all, and the fastest on both as measured (docs/benchmarks.md; docs/gpu.md, "Blocks
    of 1 on a device too"). A device where products are cheaper next to the solver's own costs may want a
    wider block."""
    return 1 if xp is np else DEVICE_BLOCK


def _first_block(P, b, block, V0, seed, xp, dtype):
    """The start, ``block`` (≤ b) columns: random ones cold; warm, random mixtures of V0's columns, or V0's own
    block (topped up to b) when ``block = b``."""
    if V0 is not None and block < b:
        V0 = xp.asarray(V0, dtype=dtype).reshape(P, -1)
        mix = np.random.default_rng(seed).standard_normal((V0.shape[1], block))
        V0 = V0 @ xp.asarray(mix, dtype=dtype)
    return start_block(P, block, V0, seed, xp, dtype)


def _expansion(basis, lam, S, norms, tol, block, xp):
    """The next block: residuals ``A x − λ x`` of the ``block`` worst unconverged Ritz pairs, made orthonormal
    and orthogonal to the basis."""
    open_ = np.flatnonzero(norms >= tol)
    open_ = open_[np.argsort(-norms[open_])][:block]
    X, AX = basis.ritz_vectors(S[:, open_])
    return _new_directions(AX - X * xp.asarray(lam[open_], dtype=X.dtype)[None, :], basis.Q, xp)


class _KrylovBasis:
    """Q (orthonormal), A Q in column-major device buffers grown in place; ``T = Qᵀ A Q`` and
    ``AQ_gram = (A Q)ᵀ (A Q)`` on the host.

    Adding c columns W costs two products, ``[Q W]ᵀ (A W)`` and
    ``[AQ AW]ᵀ (A W)``, for the new borders of T and (AQ)ᵀ(AQ), not a recomputation,
    and no copy of the basis. With (AQ)ᵀ(AQ), the residual norm of a
    Ritz pair (λ, x = Q s) needs no (P,)-long vector:
    ``‖A x − λ x‖² = sᵀ (AQ)ᵀ(AQ) s − λ²`` (as xᵀ A x = λ and ‖x‖ = 1).
    """

    def __init__(self, P, max_basis, xp, dtype):
        self.xp, self.dtype, self.P = xp, dtype, P
        self._Q = xp.empty((P, max_basis), dtype=dtype, order="F")
        self._AQ = xp.empty((P, max_basis), dtype=dtype, order="F")
        self.T = np.zeros((0, 0))
        self.AQ_gram = np.zeros((0, 0))
        self.size = 0
        self._all = None                                     # all Ritz pairs of T, from ritz_pairs

    @property
    def Q(self):
        return self._Q[:, :self.size]

    @property
    def AQ(self):
        return self._AQ[:, :self.size]

    def add(self, W, AW):
        m, c = self.size, W.shape[1]
        self._Q[:, m:m + c], self._AQ[:, m:m + c] = W, AW
        self.size = m + c
        AW = self._AQ[:, m:m + c]                            # [Q W]ᵀ (A W) and [AQ AW]ᵀ (A W): two products
        borders = backend.to_numpy(self.xp.concatenate([self.Q.T @ AW, self.AQ.T @ AW]))
        if not np.isfinite(borders).all():                   # a NaN or inf in A W reaches its borders
            raise ValueError(NOT_FINITE)
        self.T = self._bordered(self.T, borders[:m], borders[m:m + c])
        self.AQ_gram = self._bordered(self.AQ_gram, borders[m + c:2 * m + c], borders[2 * m + c:])

    @staticmethod
    def _bordered(M, border, corner):
        m, c = border.shape
        out = np.empty((m + c, m + c))
        out[:m, :m], out[:m, m:], out[m:, :m], out[m:, m:] = M, border, border.T, (corner + corner.T) / 2
        return out

    def ritz_pairs(self, b, which):
        """The top b Ritz pairs (λ, S) of T, ranked by |λ| ('LM') or λ ('LA'), and the ranking of all of them."""
        self._all = np.linalg.eigh(self.T)
        lam_all, S_all = self._all
        order = np.argsort(-np.abs(lam_all) if which == "LM" else -lam_all)
        return lam_all[order[:b]], S_all[:, order[:b]], order

    def ritz_vectors(self, S):
        """``X = Q S`` and ``A X = (A Q) S`` for host coefficients S."""
        S = self.xp.asarray(S, dtype=self.dtype)
        return self.Q @ S, self.AQ @ S

    def check_residuals(self, lam, S, k, tol, exact):
        """Relative residuals of the Ritz pairs, whether the top k are below tol, and the Ritz vectors
        ``(X, A X)`` when they were formed (else None).

        First from (AQ)ᵀ(AQ) (no product of length P); when those estimates say converged, or cannot see below their
        rounding floor, or ``exact``, from the Ritz vectors themselves.
        """
        norms, floor = self.residual_estimates(lam, S)
        if not exact and not (len(norms) >= k and (norms[:k] < np.maximum(tol, floor[:k])).all()):
            return norms, False, None
        X, AX = self.ritz_vectors(S)
        residual = AX - X * self.xp.asarray(lam, dtype=self.dtype)[None, :]
        norms = backend.to_numpy(column_norms(residual, self.xp)) / np.maximum(np.abs(lam), TINY)
        return norms, len(norms) >= k and within_tol(norms[:k], lam[:k], tol, self.dtype, self.P), (X, AX)

    def residual_estimates(self, lam, S):
        """``‖A x − λ x‖ / |λ|`` for the Ritz pairs (λ_j, Q s_j) from ``sᵀ (AQ)ᵀ(AQ) s − λ²``, and the rounding
        floor below which that difference of two numbers of size ~λ_max² cannot see."""
        r2 = (S * (self.AQ_gram @ S)).sum(axis=0) - lam * lam
        scale = np.maximum(np.abs(lam), TINY)
        lam_max = np.sqrt(np.abs(np.diag(self.AQ_gram)).max()) if self.size else 0.0
        floor = 10 * (self.size * np.finfo(self.dtype).eps) ** 0.5 * lam_max / scale
        return np.sqrt(np.maximum(r2, 0)) / scale, floor

    def restart(self, kept):
        """Keep only the Ritz vectors of T's pairs ``kept`` (and their products), re-orthonormalised
        (X = Q R) so that rounding does not pile up over restarts."""
        X, AX = self.ritz_vectors(self._all[1][:, kept])
        gram = backend.to_numpy(X.T @ X)
        inverse = self.xp.asarray(np.linalg.inv(np.linalg.cholesky(gram).T), dtype=self.dtype)
        X, AX = X @ inverse, AX @ inverse
        self.size, self.T, self.AQ_gram = 0, self.T[:0, :0], self.AQ_gram[:0, :0]
        self.add(X, AX)
