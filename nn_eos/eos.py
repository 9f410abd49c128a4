"""The 2022 paper's measurements: ρ_i, top/bulk projections of the gradient, and the loss along h_1.

With ``λ_i, h_i`` the top eigenpairs of ∇²L̃, ``g = ∇L̃`` and the step size η
(2022 paper, section 3.2)::

    ρ_i        = η / η*_i = η λ_i / 2           (edge of stability along h_i when ρ_i ≈ 1)
    d_i        = h_i · g
    P_top g    = Σ_{i < n_c} d_i h_i            (the top n_c − 1 eigenvectors)
    P_bulk g   = g − P_top g

and the change of the training loss after a step ``−η P_top g`` and after a
step ``−η P_bulk g``, computed by re-evaluating L̃ (not from the Taylor series;
section 4.1).
"""

import numpy as np

from .backend import array_module, to_module, to_numpy
from .eigen import BlockOperator, ranking, top_eigenpairs

EDGE = 0.7          # the 2022 paper's threshold for "indisputably on the edge of stability"


def projections(gradient, top_vectors):
    """``(P_top g, P_bulk g)`` for orthonormal top eigenvectors (columns), 2022 paper, section 3.2."""
    d = top_vectors.T @ gradient
    top = top_vectors @ d
    return top, gradient - top


class Telemetry:
    """The 2022 paper's telemetry, measured every ``every_time`` units of t (the paper: every 1/η steps).

    The ``k`` largest eigenpairs of ∇²L̃ by value (20 in the paper; its ρ_i and
    P_top are defined on the largest eigenvalues, section 3.2), warm-started from
    the previous measurement (``method='krylov'`` by default, 'lanczos' or
    'lobpcg'; 'power', the 2024 paper's method, can only rank by |λ|, so a
    negative eigenvalue of large magnitude can take a place among its k);
    ``n_classes`` (default: the network's outputs) sets the top subspace to the
    top ``n_classes − 1`` eigenvectors. ``lambda_min=True`` also records the
    most negative eigenvalue, ``lambda_min`` (one more warm-started solve, of
    λ_1 I − ∇²L̃, accurate to ``tol`` relative to λ_1 − λ_min).
    ``ρ_i = ηλ_i/2`` uses the η of the step taken from θ: for the flows, whose
    Δt changes every step, it compares λ_i with that step's Δt (the figures of
    ρ show gradient descent runs only).
    """

    def __init__(self, k=20, every_time=1.0, n_classes=None, tol=1e-4, maxiter=500, method="krylov",
                 lambda_min=True):
        if k < 1 or not every_time > 0:
            raise ValueError(f"Telemetry needs k ≥ 1 and every_time > 0, got k={k}, every_time={every_time}")
        self.k, self.every_time, self.n_classes = int(k), float(every_time), n_classes
        self.tol, self.maxiter, self.method, self.lambda_min = tol, maxiter, method, bool(lambda_min)
        self.next_time = 0.0
        self.vectors = None
        self.min_vector = None

    def config(self):
        return {"k": self.k, "every_time": self.every_time, "n_classes": self.n_classes, "tol": self.tol,
                "maxiter": self.maxiter, "method": self.method, "lambda_min": self.lambda_min}

    def due(self, t):
        return t >= self.next_time - 1e-12

    def measure(self, loss, theta, gradient, eta, step, t):
        """One row of telemetry at θ (before the step of size η taken from it)."""
        xp = array_module(theta)
        k = min(self.k, loss.num_params)
        n_classes = self.n_classes or loss.net.num_outputs
        n_top = max(min(n_classes - 1, k), 0)
        V0 = None if self.vectors is None else xp.ascontiguousarray(self.vectors)   # row-major: see integrators
        hessian = loss.operator("hessian", theta)
        result = top_eigenpairs(hessian, k, method=self.method, V0=V0, tol=self.tol, maxiter=self.maxiter,
                                which=ranking(self.method),
                                warn=False)      # the row records eig_converged
        self.vectors = result.vectors
        values = to_numpy(result.values)
        d = to_numpy(result.vectors.T @ gradient)
        top, bulk = projections(gradient, result.vectors[:, :n_top])
        loss_here = loss.value(theta=theta)
        row = {
            "step": int(step), "t": float(t), "eta": float(eta), "loss": loss_here,
            "eigenvalues": values.tolist(), "rho": (eta * values / 2).tolist(), "d": d.tolist(),
            "n_top": n_top, "grad_norm": float(xp.linalg.norm(gradient)),
            "top_norm": float(xp.linalg.norm(top)), "bulk_norm": float(xp.linalg.norm(bulk)),
            "delta_loss_top": loss.value(theta=theta - eta * top) - loss_here,
            "delta_loss_bulk": loss.value(theta=theta - eta * bulk) - loss_here,
            "theta_norm": float(xp.linalg.norm(theta)),
            "eig_converged": bool(result.converged), "eig_matvecs": int(result.matvecs),
        }
        if self.lambda_min:
            row.update(self._most_negative(hessian, theta, xp, shift=max(float(values[0]), 0.0)))
        self.next_time = (np.floor(t / self.every_time + 1e-9) + 1) * self.every_time
        return row

    def _most_negative(self, hessian, theta, xp, shift):
        """``lambda_min`` = s − λ_1(s I − ∇²L̃) with s = λ_1 (≥ 0), by block Krylov warm-started from the last
        measurement's vector.

        The shift leaves the Krylov spaces as they are and makes the answer's
        relative residual relative to λ_1 − λ_min, the width of the spectrum:
        a λ_min near 0 among a crowd of small eigenvalues is found to that
        accuracy in a few products, where a residual relative to |λ_min| would
        ask for many more.
        """
        V0 = None if self.min_vector is None else xp.asarray(self.min_vector)
        flipped = BlockOperator(lambda V: shift * V - hessian.matmat(V), like=theta)
        result = top_eigenpairs(flipped, 1, method="krylov", which="LA", V0=V0, tol=self.tol, maxiter=self.maxiter,
                                warn=False)
        self.min_vector = result.vectors
        return {"lambda_min": shift - float(to_numpy(result.values)[0]), "lambda_min_converged": bool(result.converged),
                "lambda_min_matvecs": int(result.matvecs)}

    def state(self):
        state = {"next_time": np.array(self.next_time)}
        if self.vectors is not None:
            state["eigenvectors"] = to_numpy(self.vectors)
        if self.min_vector is not None:
            state["min_eigenvector"] = to_numpy(self.min_vector)
        return state

    def load_state(self, state):
        self.next_time = float(state.get("next_time", 0.0))
        self.vectors = state.get("eigenvectors")
        self.min_vector = state.get("min_eigenvector")


def loss_along(loss, direction, deltas, theta=None):
    """``L̃(θ + δ · u)`` for each δ, with u the unit vector along ``direction`` (2022 paper, Figure 6)."""
    theta = loss.net.theta if theta is None else theta
    u = to_module(direction, loss.xp)                   # a host direction goes to the loss's device
    u = u / loss.xp.linalg.norm(u)
    return np.array([loss.value(theta=theta + float(delta) * u) for delta in deltas])


def cusp_scan(loss, theta, points=41, tol=1e-6):
    """The 2022 paper's Figure 6 at θ*: ``(Δ, L̃(θ* + Δ h_1) − L̃(θ*), λ_1)``.

    ``h_1`` is the top eigenvector of ∇²L̃(θ*) (Lanczos). Δ spans ±sqrt(0.5/|λ_1|),
    where the quadratic model ``λ_1 Δ²/2`` changes L̃ by ¼: a smooth minimum
    along h_1 looks like a parabola there, a cusp like a V.
    """
    theta = loss.net.check_theta(theta)
    top = top_eigenpairs(loss.operator("hessian", theta), 1, method="lanczos", tol=tol, warn=False)
    lam = float(top.values[0])
    span = np.sqrt(0.5 / abs(lam))
    deltas = np.linspace(-span, span, points)
    return deltas, loss_along(loss, top.vectors[:, 0], deltas, theta=theta) - loss.value(theta=theta), lam


# ----- summaries of a run's telemetry (the 2022 paper's Figure 1 and Table 1) ----------

def top_bulk_table(rows, edge_index, threshold=0.7, min_rows=3):
    """Mean and std of the loss change of a top step and of a bulk step while ``ρ_edge_index > threshold``.

    The 2022 paper, Table 1, with ``edge_index = n_c − 1`` and threshold 0.7; like
    the paper, returns None when fewer than ``min_rows`` measurements qualify.
    """
    chosen = [r for r in rows if len(r["rho"]) >= edge_index and r["rho"][edge_index - 1] > threshold]
    if len(chosen) < min_rows:
        return None
    top = np.array([r["delta_loss_top"] for r in chosen])
    bulk = np.array([r["delta_loss_bulk"] for r in chosen])
    return {"rows": len(chosen), "top_mean": float(top.mean()), "top_std": float(top.std()),
            "bulk_mean": float(bulk.mean()), "bulk_std": float(bulk.std()), "bulk_all_negative": bool(np.all(bulk < 0))}


def bulk_claim(rows, n_classes):
    """Does learning occur in the bulk (2022 paper, section 5.3, Table 1)? Our pre-set test of the claim.

    Table 1 while ρ_{n_c−1} > 0.7; if too few such rows, while ρ_1 > 0.7 (said
    in ``edge_index``). The claim holds when the mean bulk step lowers the loss,
    every bulk step does, and the mean top step lowers it by less than half as
    much (the paper: "either positive or very close to 0").
    """
    table, index = top_bulk_table(rows, n_classes - 1, EDGE), n_classes - 1
    if table is None:
        table, index = top_bulk_table(rows, 1, EDGE), 1
    if table is None:
        return {"rows": 0, "holds": None, "edge_index": None}
    holds = table["bulk_mean"] < 0 and table["bulk_all_negative"] and table["top_mean"] >= table["bulk_mean"] / 2
    return {**table, "edge_index": index, "holds": bool(holds)}


def describe_bulk_claim(claim, n_classes):
    """One line for a :func:`bulk_claim` result: which rows were used (ρ_{n_c−1} or the ρ_1 fallback) and the table."""
    if claim["edge_index"] is None:
        return f"Table 1: fewer than 3 measurements with ρ_{n_classes - 1} or ρ_1 > {EDGE}: not testable"
    used = "" if claim["edge_index"] == n_classes - 1 else f", as too few rows have ρ_{n_classes - 1} > {EDGE}"
    verdict = "holds" if claim["holds"] else "does NOT hold"
    return (f"Table 1 on the {claim['rows']} rows with ρ_{claim['edge_index']} > {EDGE}{used}: "
            f"ΔL̃ top {claim['top_mean']:+.4f} ({claim['top_std']:.4f}), bulk {claim['bulk_mean']:+.4f} "
            f"({claim['bulk_std']:.4f}); learning in the bulk {verdict}")
