"""Full-batch adaptive methods at the edge of stability: Adam and RMSProp, and the preconditioned sharpness
(Cohen et al., *Adaptive Gradient Methods at the Edge of Stability*, 2022; docs/adaptive.md).

    m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g ⊙ g           (g = ∇L̃(θ), t the step count from 1)
    P = (1 − β₁ᵗ) (sqrt(v / (1 − β₂ᵗ)) + ε)                             the preconditioner (diagonal)
    θ ← θ − η P⁻¹ m                                                     Δt = η

RMSProp is the case β₁ = 0 (``RMSProp``). The preconditioned sharpness is the top eigenvalue of ``P⁻¹ ∇²L̃``,
computed as that of the symmetric ``P^{-1/2} ∇²L̃ P^{-1/2}`` (same eigenvalues); Cohen et al.'s stability
threshold for it is ``(2 + 2β₁) / ((1 − β₁) η)`` (38/η at β₁ = 0.9, 2/η for RMSProp).
"""

import numpy as np

from .backend import to_module, to_numpy
from .eigen import BlockOperator, top_eigenpairs
from .integrators import Integrator, check_same_shape, check_step
from .validation import check_integer


def threshold(lr, beta1):
    """``(2 + 2β₁) / ((1 − β₁) η)``: the preconditioned sharpness at which full-batch Adam (EMA momentum β₁) becomes
    unstable on a quadratic (Cohen et al. 2022)."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def preconditioned_operator(loss, theta, preconditioner):
    """``V ↦ P^{-1/2} ∇²L̃(θ) P^{-1/2} V`` for a diagonal preconditioner P (P,), as a BlockOperator: its eigenvalues
    are those of ``P⁻¹ ∇²L̃``."""
    theta = loss.net.check_theta(theta)
    hessian = loss.operator("hessian", theta)
    scale = 1 / loss.xp.sqrt(to_module(preconditioner, loss.xp))
    return BlockOperator(lambda V: scale[:, None] * hessian.matmat(scale[:, None] * V), like=theta)


class Adam(Integrator):
    """Full-batch Adam with bias correction (module docstring). ``sharpness_every`` > 0 measures the preconditioned
    sharpness λ₁(P⁻¹∇²L̃) every that many steps (block Krylov to relative residual ``tol``, warm-started), into the
    step's metrics as ``preconditioned_sharpness`` beside ``threshold``."""

    name = "adam"

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, sharpness_every=0, tol=1e-4, maxiter=300):
        self.lr = check_step(lr, "lr")
        for value, what in ((beta1, "beta1"), (beta2, "beta2")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{what} must be in [0, 1), got {value!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number ≥ 0, got {eps!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.sharpness_every = check_integer(sharpness_every, "sharpness_every", low=0)
        self.tol, self.maxiter = float(tol), check_integer(maxiter, "maxiter")
        self.m = self.v = self.vector = None
        self.t = 0

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr:g}, beta1={self.beta1:g}, beta2={self.beta2:g}, eps={self.eps:g})"

    def config(self):
        return {"name": self.name, "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "sharpness_every": self.sharpness_every, "tol": self.tol, "maxiter": self.maxiter}

    @property
    def threshold(self):
        return threshold(self.lr, self.beta1)

    def step(self, loss, theta, gradient):
        """One step from θ; the moments advance with g = ∇L̃(θ) first, and P is the preconditioner of this step."""
        check_same_shape(theta, gradient)
        xp = loss.xp
        if self.m is None:
            self.m, self.v = xp.zeros_like(gradient), xp.zeros_like(gradient)
        self.m, self.v = to_module(self.m, xp), to_module(self.v, xp)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient * gradient
        P = (1 - self.beta1 ** self.t) * (xp.sqrt(self.v / (1 - self.beta2 ** self.t)) + self.eps)
        info = {}
        if self.sharpness_every and (self.t - 1) % self.sharpness_every == 0:
            info = self._sharpness(loss, theta, P)
        return theta - self.lr * self.m / P, self.lr, info

    def _sharpness(self, loss, theta, P):
        operator = preconditioned_operator(loss, theta, P)
        V0 = None if self.vector is None else to_module(self.vector, loss.xp)
        result = top_eigenpairs(operator, 1, method="krylov", which="LA", V0=V0, tol=self.tol,
                                maxiter=self.maxiter, warn=False)
        self.vector = result.vectors
        return {"preconditioned_sharpness": float(to_numpy(result.values)[0]), "threshold": self.threshold,
                "eig_converged": bool(result.converged), "eig_matvecs": int(result.matvecs)}

    def state(self):
        if self.m is None:
            return {}
        state = {"m": to_numpy(self.m), "v": to_numpy(self.v), "t": np.array(self.t)}
        if self.vector is not None:
            state["eigenvector"] = to_numpy(self.vector)
        return state

    def load_state(self, state):
        self.m, self.v = state.get("m"), state.get("v")
        self.t = int(state["t"]) if "t" in state else 0
        self.vector = state.get("eigenvector")


class RMSProp(Adam):
    """Full-batch RMSProp with bias correction: Adam with β₁ = 0, ``θ ← θ − η g / (sqrt(v / (1 − β₂ᵗ)) + ε)``;
    threshold 2/η."""

    name = "rmsprop"

    def __init__(self, lr, beta2=0.99, eps=1e-8, sharpness_every=0, tol=1e-4, maxiter=300):
        super().__init__(lr, beta1=0.0, beta2=beta2, eps=eps, sharpness_every=sharpness_every, tol=tol,
                         maxiter=maxiter)

    def config(self):
        config = super().config()
        del config["beta1"]
        return config
