"""Self-stabilisation along a run (Damian, Nichani & Lee, ICLR 2023; docs/self_stabilization.md).

    S = λ₁(∇²L̃), u its unit eigenvector       ∇S = ∇³L̃[u, u, ·]       α = −∇L̃ · ∇S       β = ‖∇S‖²
    M = {θ : S(θ) ≤ 2/η, ∇L̃(θ) · u(θ) = 0}     θ†_{t+1} = proj_M(θ†_t − η ∇L̃(θ†_t))
    x_t = u · (θ_t − θ†_t)      y_t = S(θ†_t) − 2/η + ∇S · (θ_t − θ†_t)
    x_{t+1} = −(1 + η y_t) x_t       y_{t+1} = y_t + η (α_t − β_t x_t² / 2)        (the predicted dynamics)

:func:`sharpness_terms` measures S, u, ∇S, α, β at one θ; :func:`project` is proj_M; :func:`predicted_step`
is the model; :class:`SelfStabilizationTelemetry` runs all three beside gradient descent in ``nn_eos.train``;
:func:`central_flow` integrates Cohen et al.'s central flow, dθ/dt = −(∇L̃ + (σ²/2)∇S), and its loss prediction.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .backend import to_module, to_numpy
from .eigen import NonConvergenceWarning, top_eigenpairs
from .integrators import check_step


@dataclass
class SharpnessTerms:
    """S, u, ∇L̃, ∇S, α and β at one θ (docs/self_stabilization.md); arrays on the loss's device."""

    sharpness: float            # S = λ₁(∇²L̃)
    vector: object              # u, its unit eigenvector (P,)
    gradient: object            # ∇L̃ (P,)
    sharpness_gradient: object  # ∇S = ∇³L̃[u, u, ·] (P,)
    alpha: float                # −∇L̃ · ∇S
    beta: float                 # ‖∇S‖²
    converged: bool             # whether the eigensolver reached its tolerance


def sharpness_terms(loss, theta, gradient=None, previous=None, tol=1e-8, maxiter=1000):
    """S, u, ∇S, α = −∇L̃ · ∇S and β = ‖∇S‖² at θ, as a :class:`SharpnessTerms`.

    u is the top eigenvector by value (block Krylov to relative residual ``tol``, warm-started from
    ``previous``, whose sign it takes); ∇S = ∇³L̃[u, u, ·] (loss.eigenvalue_gradient, docs/third.md);
    ``gradient``: ∇L̃(θ) when the caller has it.
    """
    xp = loss.xp
    theta = loss.net.check_theta(theta)
    V0 = None if previous is None else to_module(previous, xp).reshape(-1, 1)
    top = top_eigenpairs(loss.operator("hessian", theta), 1, method="krylov", which="LA", V0=V0, tol=tol,
                         maxiter=maxiter, warn=False)
    u = top.vectors[:, 0]
    if previous is not None and float(u @ V0[:, 0]) < 0:
        u = -u                                      # the sign of the eigenvector before it
    gradient = loss.gradient(theta) if gradient is None else to_module(gradient, xp)
    grad_S = loss.eigenvalue_gradient(u, theta=theta)
    return SharpnessTerms(sharpness=float(to_numpy(top.values)[0]), vector=u, gradient=gradient,
                          sharpness_gradient=grad_S, alpha=-float(gradient @ grad_S), beta=float(grad_S @ grad_S),
                          converged=bool(top.converged))


RESTART_BELOW = 1 / 8      # project: a step halved this far starts the search again from the best point


def project(loss, theta, eta, tol=1e-3, max_steps=20, previous=None, eig_tol=1e-8):
    """``proj_M(θ)``: (θ†, its :class:`SharpnessTerms`, points evaluated) (docs/self_stabilization.md).

    M's two constraints, ``c₂ = ∇L̃ · u = 0`` and ``c₁ = S − 2/η ≤ 0``, are solved for a move ``s u₀ + r ∇S₀``
    along the first point's u₀ and ∇S₀ by a safeguarded Broyden method: Newton steps with the Jacobian
    ``[[S, S u₀·∇S₀], [u₀·∇S₀, β]]`` to start (∇c₂ ≈ ∇²L̃ u = S u, ∇c₁ = ∇S), updated from each step's change of
    (c₂, c₁), which takes in how u turns and S bends as θ moves — where u turns fast (a small gap to the next
    eigenvalue), ∇c₂ along u can even have the sign opposite to S, and only a step tried teaches it. A step that
    does not lower the violation ``|c₂|/‖∇L̃‖ + max(c₁, 0)/(2/η)`` is not taken, and the next one is halved.
    c₁ joins while positive. A step halved below ``RESTART_BELOW`` means the plane of u₀ and ∇S₀ no longer lowers
    the violation — the top eigenvector has turned, or a second eigenvalue has risen past 2/η as S came down — and
    the search starts again from the best point, along its own u and ∇S: with k eigenvalues above 2/η, each
    restart brings the one on top down. Stops when ``c₁ ≤ tol · 2/η`` and ``|c₂| ≤ tol · ‖∇L̃‖``; after
    ``max_steps`` points without that, warns (NonConvergenceWarning) and returns the best point.
    """
    eta = check_step(eta, "eta")
    edge = 2.0 / eta
    xp = loss.xp
    start = loss.net.check_theta(theta).copy()

    def evaluate(move, previous):
        point = start if directions is None else start + move[0] * directions[0] + move[1] * directions[1]
        terms = sharpness_terms(loss, point, previous=previous, tol=eig_tol)
        if not terms.sharpness > 0:
            raise ValueError(f"the top eigenvalue of ∇²L̃ is {terms.sharpness:.3g} ≤ 0: there is no edge of "
                             f"stability to project onto")
        residual = np.array([float(terms.gradient @ terms.vector), terms.sharpness - edge])   # (c₂, c₁)
        scale = np.array([float(xp.linalg.norm(terms.gradient)), edge])
        return point, terms, residual, float(abs(residual[0]) / scale[0] + max(residual[1], 0) / scale[1])

    def fresh_jacobian(terms):
        cross = float(terms.vector @ terms.sharpness_gradient)
        return np.array([[terms.sharpness, terms.sharpness * cross], [cross, terms.beta]])

    directions = None
    move = np.zeros(2)
    point, terms, residual, violation = evaluate(move, previous)
    directions = (terms.vector, terms.sharpness_gradient)
    jacobian, shrink = fresh_jacobian(terms), 1.0
    for steps in range(1, max_steps + 1):                          # steps: the points evaluated so far
        if violation <= tol:
            return point, terms, steps
        if steps == max_steps:
            break
        active = residual[1] > 0                                   # c₁ is an inequality: solved while violated
        step = -np.linalg.solve(jacobian, residual) if active else np.array([-residual[0] / jacobian[0, 0], 0.0])
        trial = evaluate(move + shrink * step, terms.vector)
        taken, change = shrink * step, trial[2] - residual
        jacobian = jacobian + np.outer(change - jacobian @ taken, taken) / (taken @ taken)   # Broyden's update
        if trial[3] < violation:                                   # accepted
            move, (point, terms, residual, violation), shrink = move + taken, trial, 1.0
        elif shrink > RESTART_BELOW:                               # rejected: a shorter step, the Jacobian it taught
            shrink = shrink / 2
        else:                                                      # the plane of u₀, ∇S₀ no longer helps: again
            start, move = point, np.zeros(2)                       # from the best point, with its own u and ∇S
            directions, jacobian, shrink = (terms.vector, terms.sharpness_gradient), fresh_jacobian(terms), 1.0
    warnings.warn(f"project: M not reached in {max_steps} points (S − 2/η = {residual[1]:.3g}, ∇L̃·u = "
                  f"{residual[0]:.3g}); returning the best point", NonConvergenceWarning, stacklevel=2)
    return point, terms, max_steps


def predicted_step(x, y, alpha, beta, eta):
    """The predicted dynamics: ``x' = −(1 + η y) x``, ``y' = y + η (α − β x² / 2)`` (docs/self_stabilization.md).
    Numbers or arrays (every step of a run at once); a model that has blown up gives inf or nan, not an error."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return -(1 + eta * y) * x, y + eta * (alpha - beta * x * x / 2)


def _finite(value):
    """A float for a telemetry row, None where the model has blown up (JSON has no inf)."""
    value = float(value)
    return value if math.isfinite(value) else None


class SelfStabilizationTelemetry:
    """Telemetry for ``nn_eos.train`` with gradient descent at step ``eta``: every ``every_steps`` steps, S, ∇S, α
    and β at θ_t; the constrained trajectory θ† advanced to the same step; x, y and the loss against the
    predicted dynamics, run from the first row's measured (x, y) (docs/self_stabilization.md).

    ``tol`` is the projection's, ``eig_tol`` the eigensolver's (relative residual). θ†, the model's (x*, y*)
    and the eigenvectors are carried in the run's checkpoint, so a resumed run continues them.
    """

    def __init__(self, eta, every_steps=1, tol=1e-3, eig_tol=1e-8, max_projection_steps=20):
        self.eta = check_step(eta, "eta")
        if int(every_steps) != every_steps or every_steps < 1:
            raise ValueError(f"every_steps must be a positive integer, got {every_steps!r}")
        self.every_steps, self.tol, self.eig_tol = int(every_steps), float(tol), float(eig_tol)
        self.max_projection_steps = int(max_projection_steps)
        self.every_time = self.every_steps * self.eta
        self.next_time = 0.0
        self.vector = None              # u at θ_t, last measured
        self.constrained = None         # θ†
        self.constrained_step = None    # the step θ† belongs to
        self.constrained_terms = None   # its SharpnessTerms
        self.model = None               # (x*, y*) at constrained_step

    def config(self):
        return {"kind": "self_stabilization", "eta": self.eta, "every_steps": self.every_steps, "tol": self.tol,
                "eig_tol": self.eig_tol, "max_projection_steps": self.max_projection_steps}

    def due(self, t):
        return t >= self.next_time - 1e-12

    def _project(self, loss, theta):
        previous = None if self.constrained_terms is None else self.constrained_terms.vector
        theta, self.constrained_terms, steps = project(loss, theta, self.eta, tol=self.tol,
                                                       max_steps=self.max_projection_steps, previous=previous,
                                                       eig_tol=self.eig_tol)
        self.constrained = theta
        return steps

    def _advance(self, loss, step):
        """θ† and the model (x*, y*) forward to ``step``, one GD step of θ† and one model step at a time."""
        steps = 0
        while self.constrained_step < step:
            here = self.constrained_terms
            self.model = tuple(float(v) for v in predicted_step(*self.model, here.alpha, here.beta, self.eta))
            steps += self._project(loss, self.constrained - self.eta * here.gradient)
            self.constrained_step += 1
        return steps

    def measure(self, loss, theta, gradient, eta, step, t):
        """One row at θ_t (before the step from it); raises ValueError unless the step is GD's η."""
        if not abs(eta - self.eta) <= 1e-12 * self.eta:
            raise ValueError(f"SelfStabilizationTelemetry follows gradient descent at η = {self.eta:g}; this step "
                             f"has Δt = {eta:g} (another integrator or step size)")
        here = sharpness_terms(loss, theta, gradient=gradient, previous=self.vector, tol=self.eig_tol)
        self.vector = here.vector
        if self.constrained is not None:                 # host arrays after a resume
            self.constrained = to_module(self.constrained, loss.xp)
            terms = self.constrained_terms
            terms.vector, terms.gradient, terms.sharpness_gradient = (
                to_module(a, loss.xp) for a in (terms.vector, terms.gradient, terms.sharpness_gradient))
        if self.constrained is None:
            projection_steps = self._project(loss, theta)
            self.constrained_step = step
        else:
            projection_steps = self._advance(loss, step)
        dagger = self.constrained_terms
        v = theta - self.constrained
        x = float(dagger.vector @ v)
        y = dagger.sharpness - 2 / self.eta + float(dagger.sharpness_gradient @ v)
        if self.model is None:
            self.model = (x, y)
        constrained_loss = loss.value(theta=self.constrained)
        with np.errstate(over="ignore", invalid="ignore"):             # a model that has blown up: inf, then None
            loss_by_model = constrained_loss + dagger.sharpness * np.float64(self.model[0]) ** 2 / 2
        row = {"step": int(step), "t": float(t), "eta": float(eta), "loss": loss.value(theta=theta),
               "sharpness": here.sharpness, "sharpness_gradient_norm": float(np.sqrt(here.beta)),
               "alpha": here.alpha, "beta": here.beta, "eig_converged": here.converged,
               "x": x, "y": y, "deviation_norm": float(loss.xp.linalg.norm(v)),
               "constrained_loss": constrained_loss, "constrained_sharpness": dagger.sharpness,
               "constrained_alpha": dagger.alpha, "constrained_beta": dagger.beta,
               "projection_steps": int(projection_steps),
               "x_predicted": _finite(self.model[0]), "y_predicted": _finite(self.model[1]),
               "loss_predicted": constrained_loss + dagger.sharpness * x * x / 2,
               "loss_predicted_by_model": _finite(loss_by_model)}
        self.next_time = (np.floor(t / self.every_time + 1e-9) + 1) * self.every_time
        return row

    def state(self):
        state = {"next_time": np.array(self.next_time)}
        if self.constrained is not None:
            terms = self.constrained_terms
            state.update({"constrained": to_numpy(self.constrained),
                          "constrained_step": np.array(self.constrained_step),
                          "model": np.array(self.model, dtype=np.float64),
                          "constrained_vector": to_numpy(terms.vector),
                          "constrained_gradient": to_numpy(terms.gradient),
                          "constrained_sharpness_gradient": to_numpy(terms.sharpness_gradient),
                          "constrained_numbers": np.array([terms.sharpness, terms.alpha, terms.beta,
                                                           float(terms.converged)])})
        if self.vector is not None:
            state["vector"] = to_numpy(self.vector)
        return state

    def load_state(self, state):
        """The state a checkpoint kept (host arrays; moved to the loss's device when next measured)."""
        self.next_time = float(state.get("next_time", 0.0))
        self.vector = state.get("vector")
        self.constrained = state.get("constrained")
        self.constrained_step = self.model = self.constrained_terms = None
        if self.constrained is not None:
            self.constrained_step = int(state["constrained_step"])
            self.model = tuple(float(a) for a in state["model"])
            sharpness, alpha, beta, converged = (float(a) for a in state["constrained_numbers"])
            self.constrained_terms = SharpnessTerms(
                sharpness=sharpness, vector=state["constrained_vector"], gradient=state["constrained_gradient"],
                sharpness_gradient=state["constrained_sharpness_gradient"], alpha=alpha, beta=beta,
                converged=bool(converged))


@dataclass
class CentralFlowPoint:
    """One point of the central flow: θ(t) and what is measured there (docs/self_stabilization.md, "Central flow")."""

    t: float
    theta: object                # θ(t), on the loss's device
    loss: float                  # L̃(θ(t))
    sharpness: float             # S(θ(t))
    sigma2: float                # σ²(t), the variance of the oscillation along u the flow stands for
    predicted_loss: float        # L̃(θ(t)) + σ² S / 2: GD's time-averaged loss, as the flow predicts it


def central_flow(loss, theta, eta, steps, substeps=1, eig_tol=1e-8, edge_tol=1e-3):
    """The central flow of gradient descent at step η (Cohen, Damian, Talwalkar, Kolter & Lee, ICLR 2025) with one
    eigenvalue at the edge, by explicit Euler with Δt = η / substeps for ``steps`` units of η (docs/self_stabilization.md):

        dθ/dt = −(∇L̃ + (σ²/2) ∇S)     σ² = max(2α/β, 0) where S ≥ 2/η, else 0      (α = −∇L̃·∇S, β = ‖∇S‖²)

    σ² is what keeps S at 2/η (dS/dt = α − βσ²/2 = 0); after each Euler step, S is put back on 2/η by one Newton
    step along ∇S if it went above. "On the edge" is S ≥ (1 − edge_tol) 2/η: the Newton step lands within that of
    2/η, and a flow judged off the edge by its rounding would alternate between σ² = 0 and 2α/β. Returns the
    :class:`CentralFlowPoint` at t = 0, η, 2η, …, steps·η.
    """
    eta = check_step(eta, "eta")
    steps, substeps = int(steps), int(substeps)
    if steps < 0 or substeps < 1:
        raise ValueError(f"steps must be ≥ 0 and substeps ≥ 1, got {steps}, {substeps}")
    edge, dt = 2.0 / eta, eta / substeps
    theta = loss.net.check_theta(theta).copy()
    terms = sharpness_terms(loss, theta, tol=eig_tol)
    points = []
    for k in range(steps * substeps + 1):
        sigma2 = max(2 * terms.alpha / terms.beta, 0.0) if terms.sharpness >= edge * (1 - edge_tol) else 0.0
        if k % substeps == 0:
            value = loss.value(theta=theta)
            points.append(CentralFlowPoint(t=k * dt, theta=theta, loss=value, sharpness=terms.sharpness,
                                           sigma2=sigma2, predicted_loss=value + sigma2 * terms.sharpness / 2))
        if k == steps * substeps:
            break
        theta = theta - dt * (terms.gradient + (sigma2 / 2) * terms.sharpness_gradient)
        terms = sharpness_terms(loss, theta, previous=terms.vector, tol=eig_tol)
        if terms.sharpness > edge:                      # back onto S = 2/η: one Newton step along ∇S
            theta = theta - ((terms.sharpness - edge) / terms.beta) * terms.sharpness_gradient
            terms = sharpness_terms(loss, theta, previous=terms.vector, tol=eig_tol)
    return points
