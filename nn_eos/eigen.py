"""Top eigenpairs of a symmetric operator given only its block products ``V ↦ A V``.

Three methods share one interface and one result type:

- ``"power"``: block power (subspace) iteration as in the 2024 paper,
  section 7.1 — ``V ← QR(A V)`` — with Rayleigh–Ritz on the block (eigenvalues
  from ``Vᵀ A V``, signed and sorted rather than read off the diagonal of the
  QR factor), convergence judged on residual norms, an optional guard block of
  extra vectors, and warm starts. Like all power iterations it finds the
  eigenvalues of largest *magnitude*; a negative one among them keeps its
  sign (the 2022 paper treats those as NaN; ``EigenResult.negative`` lets the
  caller decide).
- ``"krylov"``: block Krylov with Rayleigh–Ritz over the whole basis and
  thick restarts — each block product adds the residuals ``A x − θ x`` of the
  unconverged Ritz pairs to the basis, so span(V, A V, A² V, …) is searched
  rather than only its last block; same ranking by |λ| as ``"power"``, far
  fewer products than power iteration, and, cold, fewer than eigsh
  (bench/eigen.py).
- ``"lobpcg"``: ``scipy.sparse.linalg.lobpcg`` (``cupyx`` on the GPU), largest
  algebraic eigenvalues, the whole block in one operator call.
- ``"lanczos"``: ``scipy.sparse.linalg.eigsh`` (``which='LA'``), the reference.

Residual norms are ``‖A v − λ v‖ / max(|λ|, tiny)``, computed by us for every
method from one extra block product when the method does not give ``A V``.
``matvecs`` counts single-vector products (a block of b counts b).
"""

import warnings
from dataclasses import dataclass

import numpy as np

from . import backend

METHODS = ("power", "krylov", "lobpcg", "lanczos")
TINY = 1e-30


class NonConvergenceWarning(RuntimeWarning):
    """An eigensolver stopped at maxiter before every residual reached tol."""


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


class Breakdown(ArithmeticError):
    """An eigensolver handed the operator non-finite directions (cupyx's Lanczos after a zero β)."""


class CountingOperator:
    """Wraps a block operator: checks every answer's shape and values, counts matvecs."""

    def __init__(self, operator, size, xp, dtype):
        self.apply = operator.matmat if hasattr(operator, "matmat") else operator
        self.size, self.xp, self.dtype = size, xp, dtype
        self.matvecs = 0
        self.calls = 0

    def __call__(self, V):
        V = self.xp.asarray(V, dtype=self.dtype)
        if V.ndim == 1:
            V = V[:, None]
        out = self.apply(V)
        if out is not None and backend.array_module(out) is not self.xp:
            raise TypeError(f"the operator returned a {type(out).__module__}.{type(out).__name__} where the solve "
                            f"runs on {self.xp.__name__} arrays: give the operator an `xp` attribute naming its "
                            f"array module, or pass V0 on the operator's device")
        if out is None or getattr(out, "shape", None) != V.shape:
            raise ValueError(f"the operator returned shape {getattr(out, 'shape', None)} for a block of shape "
                             f"{V.shape}; it must map (P, b) to (P, b)")
        if not bool(self.xp.isfinite(out).all()):
            raise ValueError("the operator returned NaN or infinite values")
        self.matvecs += V.shape[1]
        self.calls += 1
        return self.xp.asarray(out, dtype=self.dtype)

    def linear_operator(self):
        """The operator for eigsh/lobpcg, whose directions are checked first: cupyx's Lanczos hands it
        NaN after a zero β (our own solvers never do, so their products skip this check)."""
        def checked(V):
            if not bool(self.xp.isfinite(V).all()):
                raise Breakdown("the eigensolver asked for a product with NaN or infinite directions")
            return self(V)

        linalg = backend.scipy_linalg_module(self.xp)
        return linalg.LinearOperator((self.size, self.size), matvec=checked, matmat=checked, rmatvec=checked,
                                     dtype=self.dtype)


class BlockOperator:
    """A block function ``V (P, b) ↦ A V`` with its size, dtype and array module, for top_eigenpairs."""

    def __init__(self, matmat, like):
        self.matmat = matmat
        self.shape = (like.shape[0], like.shape[0])
        self.dtype = like.dtype
        self.xp = backend.array_module(like)


def _operator_size(operator, V0):
    if hasattr(operator, "shape"):
        return int(operator.shape[0])
    if V0 is not None:
        return int(V0.shape[0])
    owner = getattr(operator, "__self__", None)  # a bound method such as loss.hvp
    if hasattr(owner, "num_params"):
        return int(owner.num_params)
    raise ValueError("cannot tell the operator's size P: pass a LinearOperator, a bound TrainingLoss method, "
                     "or V0 of shape (P, k)")


def _array_module(operator, V0):
    """The array module the solve runs in: the operator's own ``xp`` (TrainingLoss.linear_operator,
    BlockOperator), its owner's (a bound method such as ``loss.hvp``), else V0's, else NumPy."""
    for source in (operator, getattr(operator, "__self__", None)):
        xp = getattr(source, "xp", None)
        if xp is not None:
            return xp
    return backend.array_module(V0) if V0 is not None else np


def _dtype(operator, V0):
    owner = getattr(operator, "__self__", None)
    for source in (operator, owner, V0):
        dtype = getattr(source, "dtype", None)
        if dtype is not None and np.dtype(dtype).kind == "f":
            return np.dtype(dtype)
    return np.dtype("float64")


def rayleigh_ritz(V, AV, xp):
    """Ritz pairs of the operator on span(V), V orthonormal: eigh of ``T = Vᵀ A V``.

    Returns (θ, X, AX) with ``X = V S`` and ``AX = (A V) S`` for the eigenvectors S of
    T, ordered by decreasing |θ| (the order in which power iteration finds them).
    """
    T = V.T @ AV
    theta, S = xp.linalg.eigh((T + T.T) / 2)
    order = xp.argsort(-xp.abs(theta))
    theta, S = theta[order], S[:, order]
    return theta, V @ S, AV @ S


def column_norms(M, xp):
    """‖M[:, j]‖ for each column of a tall (P, b) array (einsum: no strided reduction over a C-ordered array)."""
    return xp.sqrt(xp.einsum("ij,ij->j", M, M))


def residual_norms(values, vectors, A_vectors, xp):
    """``‖A v_j − λ_j v_j‖ / max(|λ_j|, tiny)`` for each column j, as a host array."""
    R = A_vectors - vectors * values[None, :]
    return backend.to_numpy(column_norms(R, xp) / xp.maximum(xp.abs(values), TINY))


def _sorted_result(values, vectors, A_vectors, xp, **fields):
    """Sort pairs by decreasing signed value and attach residual norms."""
    order = xp.argsort(-values)
    values, vectors, A_vectors = values[order], vectors[:, order], A_vectors[:, order]
    return EigenResult(values=values, vectors=vectors, residual_norms=residual_norms(values, vectors, A_vectors, xp),
                       **fields)


def _start_block(P, b, V0, seed, xp, dtype):
    """Orthonormal (P, b) start: V0's columns first, then seeded random ones."""
    rng = np.random.default_rng(seed)
    columns = [] if V0 is None else [xp.asarray(V0, dtype=dtype).reshape(P, -1)]
    have = 0 if V0 is None else columns[0].shape[1]
    if have < b:
        columns.append(xp.asarray(rng.standard_normal((P, b - have)), dtype=dtype))
    Q, _ = xp.linalg.qr(xp.concatenate(columns, axis=1)[:, :b])
    return Q


def power_iteration(A, k, V0, tol, maxiter, seed, guard, xp, dtype, stop="residual"):
    """Block power iteration with Rayleigh–Ritz (2024 paper, section 7.1, improved).

    Each iteration: ``W = A V`` (one block product), Ritz pairs of the block,
    then a stopping test, else ``V = QR(A X)``. ``stop='residual'``: every top-k
    relative residual below tol. ``stop='eigenvalues'``: the paper's own test,
    every top-k Ritz value changed by less than tol (relative) since the last
    iteration — much looser, since Ritz values converge like the square of
    the vectors' error. A guard of g extra vectors makes the k-th pair
    converge like ``|λ_{k+g+1} / λ_k|`` per iteration instead of ``|λ_{k+1} / λ_k|``.
    """
    P = A.size
    b = min(k + guard, P)
    V = _start_block(P, b, V0, seed, xp, dtype)
    previous, converged = None, False
    for iteration in range(1, maxiter + 1):
        AV = A(V)
        theta, X, AX = rayleigh_ritz(V, AV, xp)
        top = backend.to_numpy(theta[:k])
        if stop == "residual":
            converged = residual_norms(theta[:k], X[:, :k], AX[:, :k], xp).max() < tol
        elif previous is not None:
            converged = np.max(np.abs(top - previous) / np.maximum(np.abs(top), TINY)) < tol
        if converged or iteration == maxiter:
            break
        previous = top
        V, _ = xp.linalg.qr(AX)
    return _sorted_result(theta[:k], X[:, :k], AX[:, :k], xp, matvecs=A.matvecs, iterations=iteration,
                          converged=bool(converged), method="power")


def _new_directions(W, Q, xp, drop=1e-10):
    """An orthonormal basis of the part of span(W) orthogonal to span(Q), Q orthonormal.

    Columns are scaled to unit norm, projected out of Q and orthonormalised
    by SVQB (Stathopoulos & Wu 2002): with ``WᵀW = U Λ Uᵀ``, ``W U Λ^{-1/2}``
    is orthonormal — one small eigh and tall-skinny products, much cheaper
    than a Householder QR of a (P, c) block. Directions with ``λ < drop²``
    lie (numerically) in span(Q) and are dropped. Projection and SVQB repeat
    until ``WᵀW = I`` to 1e-12: a second pass ("twice is enough") only when
    the first removed more than 1e-6 of a column or SVQB divides by a λ
    below 1e-4, since either magnifies what rounding left of Q. Residuals of
    Ritz pairs are orthogonal to Q up to rounding and usually need one pass
    — each pass reads the whole (P, m) basis twice, the main cost of an
    iteration besides the product.
    """
    W = W / xp.maximum(column_norms(W, xp), TINY)[None, :]
    for _ in range(5):
        W = W - Q @ (Q.T @ W)                                # columns were unit: 1 − diag(WᵀW) is what left
        gram = W.T @ W
        if W.shape[1] == 0 or float(xp.abs(gram - xp.eye(W.shape[1], dtype=W.dtype)).max()) < 1e-12:
            break                                            # orthonormal and orthogonal to Q
        removed = 1 - float(xp.diag(gram).min())
        lam, U = xp.linalg.eigh((gram + gram.T) / 2)
        lam, U = lam[::-1], U[:, ::-1]                       # strongest directions first
        lam_host = backend.to_numpy(lam)
        keep = np.flatnonzero(lam_host > drop ** 2)
        W = (W @ U[:, xp.asarray(keep)]) / xp.sqrt(lam[xp.asarray(keep)])[None, :]
        if removed < 1e-12 and len(keep) and lam_host[keep].min() > 1e-4:
            break                                            # Q's rounding remnant magnified 100× at most
    return W


def block_krylov(A, k, V0, tol, maxiter, seed, guard, xp, dtype, max_basis=None, block=None, keep=None,
                 which="LM"):
    """Thick-restarted block Krylov iteration with Rayleigh–Ritz on the whole basis.

    The basis Q (orthonormal), A Q and T = Qᵀ A Q are kept. Each iteration
    takes the Ritz pairs (θ, x) of T (no product needed), stops when the top
    k relative residuals are below tol, else adds the residuals
    ``r = A x − θ x`` of the ``block`` = s worst unconverged top-(k + guard)
    pairs, orthogonalised against Q, and applies A to them: one product of
    s directions. Since span(Q, r) = span(Q, A x), the basis is a block
    Krylov space (power iteration keeps only its last block).

    Start. Cold, from s random vectors; warm with s < k + guard, from s
    random mixtures of V0's columns. From one block of s, the residuals of
    all Ritz pairs lie in the s-dim span of the next Krylov block, so this
    is block Lanczos of block size s, with full re-orthogonalisation, whose
    polynomial degree grows by one every s products. bench/eigen.py, top 20
    of ∇²L̃ at width 128: 65 products with s = 1, 82 with s = 2, 105 with
    s = 4, 272 from a random block of 20, 133 for eigsh; warm one GD step
    of 0.5/λ_1 later, 62 products, about 200 from V0's whole block. s = 1
    (the default) was also the fastest on the CPU, at widths 128 and 512;
    wider blocks make fewer, bigger products, which pays where a product's
    cost hardly grows with its width (a GPU). With s ≥ k + guard and V0,
    the start is V0's block (topped up to k + guard), expanded by the
    residuals of every unconverged pair: fewest block products from a very
    good start, power iteration with memory.

    A block of s sees at most s vectors of any one eigenspace until rounding
    spreads them: an eigenvalue repeated exactly more than s times among the
    top k (symmetric toy problems, not trained networks) needs ``block`` at
    least its multiplicity, as in any block method.

    Restart. When the basis would exceed ``max_basis`` columns (default
    5(k + guard), at least k + guard + 20) it restarts from the top ``keep``
    Ritz vectors (default 2(k + guard): keeping the next ones too saves a
    third of the products for top 7 on a slowly decaying spectrum) and their
    products: no product is repeated, and the residuals of the kept Ritz
    vectors still lie in the next block's span.

    Ranks Ritz values by |θ| (``which='LM'``), like power iteration, or by θ
    (``'LA'``): a Krylov space converges to both ends of the spectrum.
    """
    P = A.size
    b = min(k + guard, P)
    max_basis = min(P, max_basis or max(5 * b, b + 20))
    block = block or 1
    keep = max(b, min(keep or 2 * b, max_basis - block))
    basis = _KrylovBasis(P, max_basis, xp, dtype)
    if V0 is not None and block < b:                         # a warm start of `block` random mixtures of V0
        V0 = xp.asarray(V0, dtype=dtype).reshape(P, -1)
        mix = np.random.default_rng(seed).standard_normal((V0.shape[1], block))
        V0 = V0 @ xp.asarray(mix, dtype=dtype)
    start = _start_block(P, b if V0 is not None and block >= b else min(block, b), V0, seed, xp, dtype)
    basis.add(start, A(start))
    iteration, converged = 1, False
    while True:
        theta_all, S_all = xp.linalg.eigh(basis.T)
        order = xp.argsort(-xp.abs(theta_all) if which == "LM" else -theta_all)
        theta, S = theta_all[order[:b]], S_all[:, order[:b]]
        norms, floor = basis.residual_estimates(theta, S)
        final = iteration >= maxiter or basis.size >= P
        if final or (len(norms) >= k and bool((norms[:k] < np.maximum(tol, floor[:k])).all())):
            # the estimates say converged (or cannot see below their rounding floor): check for real
            X, AX = basis.Q @ S, basis.AQ @ S
            residual = AX - X * theta[None, :]
            norms = backend.to_numpy(column_norms(residual, xp) / xp.maximum(xp.abs(theta), TINY))
            converged = len(norms) >= k and bool(norms[:k].max() < tol)
            if converged or final:
                break
        open_ = np.flatnonzero(norms >= tol)
        open_ = open_[np.argsort(-norms[open_])][:block]     # the worst residuals only
        S_open = S[:, xp.asarray(open_)] if xp is not np else S[:, open_]
        W = basis.AQ @ S_open - (basis.Q @ S_open) * theta[xp.asarray(open_) if xp is not np else open_][None, :]
        W = _new_directions(W, basis.Q, xp)
        if W.shape[1] == 0 and len(theta) >= k:              # the basis is invariant: Ritz pairs are exact
            break
        if W.shape[1] == 0:                                  # invariant but too small (e.g. A = c I): go on
            rng = np.random.default_rng([seed, iteration])   # from random directions outside it
            W = _new_directions(xp.asarray(rng.standard_normal((P, block)), dtype=dtype), basis.Q, xp)
        if basis.size + W.shape[1] > max_basis:              # thick restart: keep the top Ritz vectors (a
            kept = S_all[:, order[:keep]]                    # subspace of span(Q), so W stays orthogonal)
            basis.restart(basis.Q @ kept, basis.AQ @ kept)
        W = W[:, :max_basis - basis.size]
        basis.add(W, A(W))
        iteration += 1
    if not converged:                                        # the loop left before its exact check
        X, AX = basis.Q @ S, basis.AQ @ S
    return _sorted_result(theta[:k], X[:, :k], AX[:, :k], xp, matvecs=A.matvecs, iterations=iteration,
                          converged=converged, method="krylov")


class _KrylovBasis:
    """Q (orthonormal), A Q, ``T = Qᵀ A Q`` and ``G = (A Q)ᵀ (A Q)``, grown in place in column-major buffers.

    Adding c columns costs the products ``Qᵀ (A W)``, ``(A Q)ᵀ (A W)`` and
    ``Wᵀ (A W)``, ``(A W)ᵀ (A W)`` for the new borders of T and G, not a
    recomputation, and no copy of the basis. With G, the residual norm of a
    Ritz pair (θ, x = Q s) needs no (P,)-long vector:
    ``‖A x − θ x‖² = sᵀ G s − θ²`` (as xᵀ A x = θ and ‖x‖ = 1).
    """

    def __init__(self, P, max_basis, xp, dtype):
        self.xp = xp
        self._Q = xp.empty((P, max_basis), dtype=dtype, order="F")
        self._AQ = xp.empty((P, max_basis), dtype=dtype, order="F")
        self.T = xp.zeros((0, 0), dtype=dtype)
        self.G = xp.zeros((0, 0), dtype=dtype)
        self.size = 0

    @property
    def Q(self):
        return self._Q[:, :self.size]

    @property
    def AQ(self):
        return self._AQ[:, :self.size]

    def add(self, W, AW):
        m = self.size
        self.T = self._bordered(self.T, self.Q.T @ AW, W.T @ AW)
        self.G = self._bordered(self.G, self.AQ.T @ AW, AW.T @ AW)
        self._Q[:, m:m + W.shape[1]], self._AQ[:, m:m + W.shape[1]] = W, AW
        self.size = m + W.shape[1]

    def _bordered(self, M, border, corner):
        m, c = border.shape
        out = self.xp.empty((m + c, m + c), dtype=M.dtype)
        out[:m, :m], out[:m, m:], out[m:, :m], out[m:, m:] = M, border, border.T, (corner + corner.T) / 2
        return out

    def residual_estimates(self, theta, S):
        """``‖A x − θ x‖ / |θ|`` for the Ritz pairs (θ_j, Q s_j) from ``sᵀ G s − θ²``, and the rounding floor
        below which that difference of two numbers of size ~θ_max² cannot see (host arrays)."""
        xp = self.xp
        r2 = (S * (self.G @ S)).sum(axis=0) - theta * theta
        scale = xp.maximum(xp.abs(theta), TINY)
        theta_max = float(xp.sqrt(xp.abs(xp.diag(self.G)).max())) if self.size else 0.0
        floor = 10 * (self.size * np.finfo(backend.to_numpy(theta).dtype).eps) ** 0.5 * theta_max / scale
        return backend.to_numpy(xp.sqrt(xp.maximum(r2, 0)) / scale), backend.to_numpy(floor)

    def restart(self, X, AX):
        """Keep only the Ritz vectors X (and A X), re-orthonormalised (X = Q R) so that rounding does not
        pile up over restarts."""
        inverse = self.xp.linalg.inv(self.xp.linalg.cholesky(X.T @ X).T)
        X, AX = X @ inverse, AX @ inverse
        self.size, self.T, self.G = 0, self.T[:0, :0], self.G[:0, :0]
        self.add(X, AX)


def lobpcg(A, k, V0, tol, maxiter, seed, xp, dtype):
    """LOBPCG (scipy, or cupyx on the GPU) for the k largest algebraic eigenvalues.

    scipy's ``tol`` is absolute; ours is relative to |λ|, so the solver is called
    with ``tol · |λ_k|`` from the Rayleigh–Ritz estimate of the start block and
    called again, warm, in the rare case that the relative residuals still miss.
    """
    linalg = backend.scipy_linalg_module(xp)
    P = A.size
    X = _start_block(P, k, V0, seed, xp, dtype)
    AX = A(X)
    theta, X, AX = rayleigh_ritz(X, AX, xp)
    iterations = 0
    for _ in range(3):
        scale = float(xp.min(xp.abs(theta[:k])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scipy's own non-convergence note: we judge below
            out = linalg.lobpcg(A.linear_operator(), X, tol=tol * max(scale, TINY) / 4, maxiter=maxiter,
                                largest=True, retResidualNormsHistory=True)
        X = out[1]
        # for tiny problems scipy solves densely and returns no history: count that as one iteration
        iterations += max(len(out[2]), 1) if len(out) > 2 else 1
        X, _ = xp.linalg.qr(xp.asarray(X, dtype=dtype))
        theta, X, AX = rayleigh_ritz(X, A(X), xp)
        theta, X, AX = _largest_algebraic(theta, X, AX, k, xp)
        if residual_norms(theta, X, AX, xp).max() < tol:
            break
    res = _sorted_result(theta, X, AX, xp, matvecs=A.matvecs, iterations=iterations, converged=False,
                         method="lobpcg")
    res.converged = bool(res.residual_norms.max() < tol)
    return res


def _largest_algebraic(theta, X, AX, k, xp):
    order = xp.argsort(-theta)[:k]
    return theta[order], X[:, order], AX[:, order]


def _eigsh_limits(linalg, A, v0, k, tol, maxiter):
    """eigsh's ``tol`` and ``maxiter`` with one meaning on both backends.

    Ours: ``tol`` bounds the relative residual ‖Av − λv‖/|λ|, ``maxiter`` counts
    restarts. scipy (ARPACK) takes a relative tol and counts restarts; cupyx's
    eigsh takes an absolute tol and counts Lanczos steps, so there ``tol`` is
    scaled by ‖A v0‖/‖v0‖ (≤ |λ_1|, one product) and ``maxiter`` by the steps
    per restart (ncv, cupyx's default).
    """
    if getattr(linalg, "RELATIVE_TOL", linalg.__name__.startswith("scipy")):
        return {"tol": tol / 10, "maxiter": maxiter}
    xp = A.xp
    scale = float(xp.linalg.norm(A(v0[:, None])) / xp.linalg.norm(v0))
    ncv = min(max(2 * k, k + 32), A.size - 1)
    return {"tol": tol / 10 * max(scale, TINY), "maxiter": None if maxiter is None else maxiter * ncv}


def lanczos(A, k, V0, tol, maxiter, seed, xp, dtype):
    """``eigsh(which='LA')`` (implicitly restarted Lanczos), the reference method.

    When k ≥ P − 1, where ARPACK cannot run, the dense matrix ``A I`` is built
    from one block product and diagonalised.
    """
    P = A.size
    if k >= P - 1:
        dense = A(xp.eye(P, dtype=dtype))
        theta, S = xp.linalg.eigh((dense + dense.T) / 2)
        theta, X, AX = _largest_algebraic(theta, S, dense @ S, k, xp)
        iterations = 1
    else:
        linalg = backend.scipy_linalg_module(xp)
        v0 = None
        if V0 is not None:
            v0 = xp.asarray(V0, dtype=dtype).reshape(P, -1).sum(axis=1)
        else:
            v0 = xp.asarray(np.random.default_rng(seed).standard_normal(P), dtype=dtype)
        theta = X = None
        try:
            theta, X = linalg.eigsh(A.linear_operator(), k=k, which="LA", v0=v0,
                                    **_eigsh_limits(linalg, A, v0, k, tol, maxiter))
        except Breakdown:
            pass            # cupyx divides by a zero β and hands the operator NaN: see below
        except Exception as error:
            if "Starting vector is zero" not in str(error):
                raise
        if theta is None or not bool(xp.isfinite(theta).all()):
            # The Krylov space closed on an invariant subspace that Lanczos cannot restart from (the
            # zero operator, H of a linear model): ARPACK says so, cupyx's eigsh returns NaN. Block power
            # iteration has no such failure, so it answers instead, on both backends.
            result = power_iteration(A, k, V0, tol, maxiter or 1000, seed, 0, xp, dtype)
            result.method = "lanczos"
            return result
        X, _ = xp.linalg.qr(X)
        theta, X, AX = rayleigh_ritz(X, A(X), xp)
        theta, X, AX = _largest_algebraic(theta, X, AX, k, xp)
        iterations = A.calls  # ARPACK does not report its restarts; count operator calls
    res = _sorted_result(theta, X, AX, xp, matvecs=A.matvecs, iterations=iterations, converged=False,
                         method="lanczos")
    res.converged = bool(res.residual_norms.max() < tol)
    return res


STOPS = ("residual", "eigenvalues")


def top_eigenpairs(operator, k, method="power", V0=None, tol=1e-6, maxiter=None, seed=0, guard=0,
                   stop="residual", block=None, which=None):
    """The top k eigenpairs of a symmetric operator (2022 paper, section 3.3; 2024 paper, section 7.1).

    ``operator`` is a block function ``V (P, b) ↦ A V`` (e.g. ``loss.hvp``,
    ``loss.ggn``, ``loss.residual``) or a ``LinearOperator``. ``V0`` (P, m)
    warm-starts from earlier eigenvectors; ``tol`` bounds the relative residual
    norms; ``maxiter`` (block products for power and krylov) defaults to 1000
    (power, krylov), 200 (lobpcg) or ARPACK's default (lanczos); ``guard`` adds
    that many extra vectors to the block of power and krylov; ``block``
    (krylov only) is the number of directions each product adds (default 1;
    see :func:`block_krylov`); ``stop='eigenvalues'``
    (power only) stops on the change of the Ritz values, as the 2024 paper
    did; ``which`` is 'LM' (largest |λ|: power, and krylov by default) or
    'LA' (largest λ: lobpcg, lanczos, and krylov when asked). Returns an
    :class:`EigenResult`;
    if tol is not reached within maxiter it warns and returns
    ``converged=False`` with the residuals.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if V0 is not None and (getattr(V0, "ndim", 0) not in (1, 2)):
        raise ValueError(f"V0 must have shape (P,) or (P, m), got {getattr(V0, 'shape', None)}")
    P = _operator_size(operator, V0)
    if not 1 <= k <= P:
        raise ValueError(f"k must lie in 1..P = 1..{P}, got {k}")
    if V0 is not None and V0.shape[0] != P:
        raise ValueError(f"V0 must have {P} rows (the operator's size), got shape {V0.shape}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if stop not in STOPS or (stop != "residual" and method != "power"):
        raise ValueError(f"stop must be one of {STOPS} ('eigenvalues' with method='power' only), got {stop!r}")
    if isinstance(guard, bool) or not isinstance(guard, (int, np.integer)) or guard < 0:
        raise ValueError(f"guard must be a non-negative integer, got {guard!r}")
    if block is not None and (method != "krylov" or isinstance(block, bool)
                              or not isinstance(block, (int, np.integer)) or block < 1):
        raise ValueError(f"block must be a positive integer, for method='krylov' only; got {block!r} "
                         f"with method={method!r}")
    natural = "LM" if method in ("power", "krylov") else "LA"
    if which not in (None, natural) and not (method == "krylov" and which in ("LM", "LA")):
        raise ValueError(f"which must be 'LM' or 'LA' for method='krylov', {natural!r} for method={method!r}; "
                         f"got {which!r}")
    xp, dtype = _array_module(operator, V0), _dtype(operator, V0)
    if V0 is not None:
        V0 = backend.to_module(V0, xp)          # a host V0 goes to the operator's device, and back
    A = CountingOperator(operator, P, xp, dtype)
    if method == "power":
        result = power_iteration(A, k, V0, tol, maxiter or 1000, seed, int(guard), xp, dtype, stop)
    elif method == "krylov":
        result = block_krylov(A, k, V0, tol, maxiter or 1000, seed, int(guard), xp, dtype,
                              block=None if block is None else int(block), which=which or "LM")
    elif method == "lobpcg":
        result = lobpcg(A, k, V0, tol, maxiter or 200, seed, xp, dtype)
    else:
        result = lanczos(A, k, V0, tol, maxiter, seed, xp, dtype)
    if not result.converged:
        warnings.warn(f"{method} did not reach tol={tol:g} ({stop}) for all {k} eigenpairs "
                      f"(largest relative residual {result.residual_norms.max():.2e} after {result.matvecs} "
                      f"matvecs); returning converged=False", NonConvergenceWarning, stacklevel=2)
    return result
