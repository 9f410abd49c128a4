"""Top eigenpairs of a symmetric operator given only its block products ``V ↦ A V``.

Four methods share one interface (:func:`top_eigenpairs`) and one result type
(:class:`~nn_eos.eigen.ritz.EigenResult`):

- ``"power"``: block power (subspace) iteration as in the 2024 paper,
  section 7.1 — ``V ← QR(A V)`` — with Rayleigh–Ritz on the block (eigenvalues
  from ``Vᵀ A V``, signed and sorted rather than read off the diagonal of the
  QR factor), convergence judged on residual norms, an optional guard block of
  extra vectors, and warm starts. Like all power iterations it finds the
  eigenvalues of largest *magnitude*; a negative one among them keeps its
  sign (the 2022 paper treats those as NaN; ``EigenResult.negative`` lets the
  caller decide).
- ``"krylov"``: block Krylov with Rayleigh–Ritz over the whole basis and
  thick restarts (:mod:`nn_eos.eigen.krylov`); ranks by |λ| like ``"power"`` or by
  λ (``which="LA"``).
- ``"lobpcg"``: ``scipy.sparse.linalg.lobpcg`` (``cupyx`` on the GPU), largest
  algebraic eigenvalues, the whole block in one operator call.
- ``"lanczos"``: ``scipy.sparse.linalg.eigsh`` (``which='LA'``), the reference.

Residual norms are ``‖A v − λ v‖ / max(|λ|, tiny)``, computed by us for every
method from one extra block product when the method does not give ``A V``; a
pair has converged when that is below tol or its residual is at the operator's
rounding level (ritz.within_tol, docs/integrators.md).
``matvecs`` counts single-vector products (a block of b counts b).
"""

import warnings

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence

from .. import backend
from .krylov import block_krylov
from .ritz import (NOT_FINITE, TINY, EigenResult, rayleigh_ritz, residual_norms, rounding_floor,  # noqa: F401
                   sorted_result, start_block, within_tol)
from ..validation import check_integer

METHODS = ("power", "krylov", "lobpcg", "lanczos")
STOPS = ("residual", "eigenvalues")


def top_eigenpairs(operator, k, method="power", V0=None, tol=1e-6, maxiter=None, seed=0, guard=0,
                   stop="residual", block=None, which=None, warn=True):
    """The top k eigenpairs of a symmetric operator (2022 paper, section 3.3; 2024 paper, section 7.1).

    ``operator`` is a block function ``V (P, b) ↦ A V`` (e.g. ``loss.hvp``,
    ``loss.ggn``, ``loss.residual``) or a ``LinearOperator``. ``V0`` (P, m)
    warm-starts from earlier eigenvectors; ``tol`` bounds the relative residual
    norms; ``maxiter`` (block products for power and krylov) defaults to 1000
    (power, krylov), 200 (lobpcg) or ARPACK's default (lanczos); ``guard`` adds
    that many extra vectors to the block of power and krylov; ``block``
    (krylov only) is the number of directions each product adds (default 1
    on NumPy and on a device: :func:`nn_eos.eigen.krylov.default_block`); ``stop='eigenvalues'``
    (power only) stops on the change of the Ritz values, as the 2024 paper
    did; ``which`` is 'LM' (largest |λ|: power, and krylov by default) or
    'LA' (largest λ: lobpcg, lanczos, and krylov when asked). Returns an
    :class:`EigenResult`;
    if tol is not reached within maxiter it returns ``converged=False`` with
    the residuals, and warns (NonConvergenceWarning) unless ``warn=False``
    (callers that record ``converged`` themselves, like the telemetry).
    """
    P = _operator_size(operator, V0)
    k, guard, block = _check_arguments(method, k, P, V0, tol, stop, guard, block, which)
    xp, dtype = _array_module(operator, V0), _dtype(operator, V0)
    if V0 is not None:
        V0 = backend.to_module(V0, xp)          # a host V0 goes to the operator's device, and back
    A = CountingOperator(operator, P, xp, dtype, check_finite=(method != "krylov"))   # krylov: its T and G
    if method == "power":
        result = power_iteration(A, k, V0, tol, maxiter or 1000, seed, guard, xp, dtype, stop)
    elif method == "krylov":
        result = block_krylov(A, k, V0, tol, maxiter or 1000, seed, guard, xp, dtype, which or "LM", block=block)
    elif method == "lobpcg":
        result = lobpcg(A, k, V0, tol, maxiter or 200, seed, xp, dtype)
    else:
        result = lanczos(A, k, V0, tol, maxiter, seed, xp, dtype)
    if warn and not result.converged:
        warnings.warn(f"{method} did not reach tol={tol:g} ({stop}) for all {k} eigenpairs "
                      f"(largest relative residual {result.residual_norms.max():.2e} after {result.matvecs} "
                      f"matvecs); returning converged=False", NonConvergenceWarning, stacklevel=2)
    return result


def power_iteration(A, k, V0, tol, maxiter, seed, guard, xp, dtype, stop):
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
    V = start_block(P, b, V0, seed, xp, dtype)
    previous, converged = None, False
    for iteration in range(1, maxiter + 1):
        AV = A(V)
        lam, X, AX = rayleigh_ritz(V, AV, xp)
        top = backend.to_numpy(lam[:k])
        if stop == "residual":
            converged = within_tol(residual_norms(lam[:k], X[:, :k], AX[:, :k], xp), lam[:k], tol, dtype, P)
        elif previous is not None:
            converged = np.max(np.abs(top - previous) / np.maximum(np.abs(top), TINY)) < tol
        if converged or iteration == maxiter:
            break
        previous = top
        V, _ = xp.linalg.qr(AX)
    return sorted_result(lam[:k], X[:, :k], AX[:, :k], xp, matvecs=A.matvecs, iterations=iteration,
                          converged=bool(converged), method="power")


def lobpcg(A, k, V0, tol, maxiter, seed, xp, dtype):
    """LOBPCG (scipy, or cupyx on the GPU) for the k largest algebraic eigenvalues.

    scipy's ``tol`` is absolute; ours is relative to |λ|, so the solver is called
    with ``tol · |λ_k|`` from the Rayleigh–Ritz estimate of the start block (but
    not below the rounding floor of :func:`nn_eos.eigen.ritz.within_tol`: in float32 a
    tol of 1e-12 ran all maxiter iterations three times, 9018 products where 38
    reach rounding) and called again, warm, in the rare case that the relative
    residuals still miss.
    """
    linalg = backend.scipy_linalg_module(xp)
    P = A.size
    X = start_block(P, k, V0, seed, xp, dtype)
    AX = A(X)
    lam, X, AX = rayleigh_ritz(X, AX, xp)
    iterations = 0
    for _ in range(3):
        # scipy's absolute tol: ours times |λ_k|, but not below rounding (ritz.within_tol), which it cannot reach
        scale = float(xp.min(xp.abs(lam[:k])))
        floor = rounding_floor(lam, dtype, P)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scipy's own non-convergence note: we judge below
            out = linalg.lobpcg(A.linear_operator(), X, tol=max(tol * max(scale, TINY), floor) / 4,
                                maxiter=maxiter, largest=True, retResidualNormsHistory=True)
        X = out[1]
        # for tiny problems scipy solves densely and returns no history: count that as one iteration
        iterations += max(len(out[2]), 1) if len(out) > 2 else 1
        X, _ = xp.linalg.qr(xp.asarray(X, dtype=dtype))
        lam, X, AX = rayleigh_ritz(X, A(X), xp)
        lam, X, AX = _largest_algebraic(lam, X, AX, k, xp)
        if within_tol(residual_norms(lam, X, AX, xp), lam, tol, dtype, P):
            break
    res = sorted_result(lam, X, AX, xp, matvecs=A.matvecs, iterations=iterations, converged=False,
                         method="lobpcg")
    res.converged = within_tol(res.residual_norms, res.values, tol, dtype, P)
    return res


def _largest_algebraic(lam, X, AX, k, xp):
    order = xp.argsort(-lam)[:k]
    return lam[order], X[:, order], AX[:, order]


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
        lam, S = xp.linalg.eigh((dense + dense.T) / 2)
        lam, X, AX = _largest_algebraic(lam, S, dense @ S, k, xp)
        iterations = 1
    else:
        linalg = backend.scipy_linalg_module(xp)
        if V0 is not None:
            v0 = xp.asarray(V0, dtype=dtype).reshape(P, -1).sum(axis=1)
        else:
            v0 = xp.asarray(np.random.default_rng(seed).standard_normal(P), dtype=dtype)
        lam = X = None
        try:
            lam, X = linalg.eigsh(A.linear_operator(), k=k, which="LA", v0=v0,
                                    **_eigsh_limits(linalg, A, v0, k, tol, maxiter))
        except Breakdown:
            pass            # cupyx divides by a zero β and hands the operator NaN: see below
        except ArpackNoConvergence as error:
            # maxiter restarts were not enough: ARPACK raises, with the pairs it has (on the host); completed
            # to k at random, they are judged below like any answer (converged=False, with the residuals)
            have = error.eigenvectors if error.eigenvectors.size else None
            lam, X = xp.zeros(k, dtype=dtype), start_block(P, k, have, seed, xp, dtype)
        except Exception as error:
            if "Starting vector is zero" not in str(error):
                raise
        if lam is None or not bool(xp.isfinite(lam).all()):
            # The Krylov space closed on an invariant subspace that Lanczos cannot restart from (the
            # zero operator, H of a linear model): ARPACK says so, cupyx's eigsh returns NaN. Block power
            # iteration has no such failure, so it answers instead, on both backends.
            result = power_iteration(A, k, V0, tol, maxiter or 1000, seed, 0, xp, dtype, "residual")
            result.method = "lanczos"
            return result
        X, _ = xp.linalg.qr(X)
        lam, X, AX = rayleigh_ritz(X, A(X), xp)
        lam, X, AX = _largest_algebraic(lam, X, AX, k, xp)
        iterations = A.calls  # ARPACK does not report its restarts; count operator calls
    res = sorted_result(lam, X, AX, xp, matvecs=A.matvecs, iterations=iterations, converged=False,
                         method="lanczos")
    res.converged = within_tol(res.residual_norms, res.values, tol, dtype, A.size)
    return res


def ranking(method):
    """The ``which`` by which a method finds "the largest eigenvalues": by value ('LA', what both papers mean)
    for every method that can, by |λ| ('LM') for block power iteration (the 2024 paper's own method), which
    cannot."""
    return "LM" if method == "power" else "LA"


# ----- the operator and its checks ------------------------------------------


class NonConvergenceWarning(RuntimeWarning):
    """An eigensolver stopped at maxiter before every residual reached tol."""


class Breakdown(ArithmeticError):
    """An eigensolver handed the operator non-finite directions (cupyx's Lanczos after a zero β)."""


class BlockOperator:
    """A block function ``V (P, b) ↦ A V`` with its size, dtype and array module, for top_eigenpairs."""

    def __init__(self, matmat, like):
        self.matmat = matmat
        self.shape = (like.shape[0], like.shape[0])
        self.dtype = like.dtype
        self.xp = backend.array_module(like)


class CountingOperator:
    """Wraps a block operator: checks every answer's shape and values, counts matvecs."""

    def __init__(self, operator, size, xp, dtype, check_finite):
        self.apply = operator.matmat if hasattr(operator, "matmat") else operator
        self.size, self.xp, self.dtype = size, xp, dtype
        self.check_finite = check_finite     # False: the solver finds NaN in its own small matrices (no sync)
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
        if self.check_finite and not bool(self.xp.isfinite(out).all()):
            raise ValueError(NOT_FINITE)
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


def _check_arguments(method, k, P, V0, tol, stop, guard, block, which):
    """Every argument of top_eigenpairs that can be wrong, checked before any product; returns k, guard, block."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= k <= P:
        raise ValueError(f"k must lie in 1..P = 1..{P}, got {k}")
    if V0 is not None and (getattr(V0, "ndim", 0) not in (1, 2) or V0.shape[0] != P):
        raise ValueError(f"V0 must have shape ({P},) or ({P}, m) (P = the operator's size), "
                         f"got {getattr(V0, 'shape', None)}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if stop not in STOPS or (stop != "residual" and method != "power"):
        raise ValueError(f"stop must be one of {STOPS} ('eigenvalues' with method='power' only), got {stop!r}")
    if block is not None and method != "krylov":
        raise ValueError(f"block is for method='krylov' only; got block={block!r} with method={method!r}")
    natural = "LM" if method in ("power", "krylov") else "LA"
    if which not in (None, natural) and not (method == "krylov" and which == "LA"):     # krylov ranks both ways
        raise ValueError(f"which must be 'LM' or 'LA' for method='krylov', {natural!r} for method={method!r}; "
                         f"got {which!r}")
    return int(k), check_integer(guard, "guard", low=0), check_integer(block, "block", optional=True)


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
