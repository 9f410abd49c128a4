"""Eigensolvers: the top eigenpairs of a symmetric operator known only by its block products ``V ↦ A V``.

    solvers           top_eigenpairs, its one interface to four methods: block power iteration, block
                      Krylov, LOBPCG and Lanczos (scipy / cupyx), and the operator types it takes
    krylov            block Krylov with Rayleigh–Ritz over the whole basis and thick restarts
    ritz              Rayleigh–Ritz, residual norms and the result type every method shares
    batched_lanczos   the top eigenvalue of n small operators at once (the layerwise Jacobian norms of
                      nn_eos.alignment)
"""

from .ritz import EigenResult
from .solvers import METHODS, STOPS, BlockOperator, NonConvergenceWarning, ranking, top_eigenpairs

__all__ = ["METHODS", "STOPS", "BlockOperator", "EigenResult", "NonConvergenceWarning", "ranking",
           "top_eigenpairs"]
