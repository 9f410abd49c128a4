"""Three ways of moving θ: gradient descent, adaptive gradient flow and exponential Euler.

Each integrator's ``step(loss, theta, gradient)`` returns ``(new θ, Δt, info)``
where Δt is the time of the gradient flow ``dθ/dt = −∇L̃(θ)`` that the step
stands for, so that a training loop tracks continuous time ``t = Σ Δt`` (the
papers plot against ``t = nη``). ``info`` carries what the step measured
(e.g. ``lambda_1``). ``state()``/``load_state()`` hold what a step carries over
to the next (warm-start eigenvectors), so that a run can be resumed exactly.

What a step reads of the loss: ``num_params`` and ``operator("hessian", theta)``
(the block operator of ∇²L̃ at θ that the flows' eigensolves run on), and, for
ExponentialEuler without ``k``, ``net.num_outputs`` (its default k: the
classes, whose count sets the outliers of the spectrum; for a sequence model
(n, T, V) outputs, the vocabulary V, not T·V). A TrainingLoss has them all; a
test double needs the same.
"""


import numpy as np

from .backend import array_module, to_numpy
from .eigen import ranking, top_eigenpairs
from .validation import check_integer


def check_step(value, name):
    """A step size or factor: a finite positive number, else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def check_same_shape(theta, gradient):
    if theta.shape != gradient.shape:
        raise ValueError(f"theta and the gradient must have the same shape, got {tuple(theta.shape)} and "
                         f"{tuple(gradient.shape)}")


class Integrator:
    """What every integrator has: ``step``, its ``config()`` and the ``state()`` a resumed run needs.

    Each subclass that sets its own ``name`` is recorded in ``Integrator.known`` when it is defined (this
    module's three, adaptive.py's Adam and RMSProp, stochastic.py's SGD, and any a user writes), which is how
    :func:`from_config` rebuilds one from a saved config without importing the modules that build on this one.
    """

    name = None
    known = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls) and cls.name:
            Integrator.known[cls.name] = cls

    def step(self, loss, theta, gradient):
        raise NotImplementedError

    def config(self):
        """The settings that rebuild this integrator (saved in a run's config.json)."""
        return {"name": self.name}

    def state(self):
        """Arrays carried from one step to the next (host arrays), for checkpoints."""
        return {}

    def load_state(self, state):
        pass


class GradientDescent(Integrator):
    """``θ ← θ − η ∇L̃(θ)``, ``Δt = η`` (2022 paper, section 3.2)."""

    name = "gd"

    def __init__(self, lr):
        self.lr = check_step(lr, "lr")

    def __repr__(self):
        return f"GradientDescent(lr={self.lr:g})"

    def config(self):
        return {"name": self.name, "lr": self.lr}

    def step(self, loss, theta, gradient):
        check_same_shape(theta, gradient)
        return theta - self.lr * gradient, self.lr, {}


class _WarmEigen:
    """The largest eigenpairs of ∇²L̃ at each step (by value; by |λ| for power), warm-started from the previous
    step's vectors."""

    def __init__(self, k, tol, maxiter, method, stop):
        self.k, self.tol, self.maxiter, self.method, self.stop = k, tol, maxiter, method, stop
        self.vectors = None

    def __call__(self, loss, theta):
        k = min(self.k, loss.num_params)
        result = top_eigenpairs(loss.operator("hessian", theta), k, method=self.method, V0=self._v0(theta),
                                tol=self.tol, maxiter=self.maxiter, stop=self.stop,
                                which=ranking(self.method),
                                warn=False)                    # reported per step in info instead
        self.vectors = result.vectors
        return result

    def _v0(self, theta):
        """The last step's eigenvectors, row-major whether they come from that step or from a checkpoint (a
        device array's ``.get()`` writes them row-major): a product's rounding depends on its operands' layout,
        so this is what lets a resumed run step exactly as one never stopped."""
        if self.vectors is None:
            return None
        return array_module(theta).ascontiguousarray(self.vectors)

    def state(self):
        return {} if self.vectors is None else {"eigenvectors": to_numpy(self.vectors)}

    def load_state(self, state):
        self.vectors = state.get("eigenvectors")


class AdaptiveGradientFlow(Integrator):
    """Gradient descent with ``η_t = min(lr_max, safety / λ_1(θ_t))`` (2022 paper, section 4.2).

    ``λ_1`` is recomputed every step, warm-started from the previous step's
    eigenvector (``method``: 'krylov' by default, the cheapest in
    bench/dynamics.py, or the paper's 'power'); the paper's values are
    ``lr_max = 0.001`` and ``safety = 0.5``, which keeps η well below the edge
    of stability ``2/λ_1``. λ_1 is the largest eigenvalue by value (a
    non-positive one gives ``lr_max``); with 'power', which ranks by |λ|, the
    step uses ``safety / |λ_1|``.
    """

    name = "adaptive_flow"

    def __init__(self, lr_max=1e-3, safety=0.5, tol=1e-4, maxiter=200, method="krylov", stop="residual"):
        self.lr_max, self.safety = check_step(lr_max, "lr_max"), check_step(safety, "safety")
        self.eigen = _WarmEigen(1, tol, maxiter, method, stop)

    def __repr__(self):
        return f"AdaptiveGradientFlow(lr_max={self.lr_max:g}, safety={self.safety:g})"

    def config(self):
        return {"name": self.name, "lr_max": self.lr_max, "safety": self.safety, "tol": self.eigen.tol,
                "maxiter": self.eigen.maxiter, "method": self.eigen.method, "stop": self.eigen.stop}

    def step(self, loss, theta, gradient):
        check_same_shape(theta, gradient)
        result = self.eigen(loss, theta)
        lam = float(to_numpy(result.values)[0])
        scale = abs(lam) if ranking(self.eigen.method) == "LM" else max(lam, 0.0)
        lr = min(self.lr_max, self.safety / scale) if scale > 0 else self.lr_max
        info = {"lambda_1": lam, "eig_matvecs": result.matvecs, "eig_converged": result.converged}
        return theta - lr * gradient, lr, info

    def state(self):
        return self.eigen.state()

    def load_state(self, state):
        self.eigen.load_state(state)


def exponential_coefficient(lam, dt):
    """``(1 − e^{−λ Δt}) / λ``, clamped to at most Δt (2024 paper, section 7.2).

    This is the exact time-Δt solution of the linearised flow ``dr/dt = −c − λ r``
    along an eigenvector (``r(Δt) = −c (1 − e^{−λΔt})/λ``). For λ > 0 it is below Δt
    already; the clamp only acts for λ ≤ 0, where the exponential would grow
    without bound. The paper's text writes the clamp as ``min(·, η)`` on the
    coordinate; the authors' released code clamps the coefficient to Δt, which
    is what we do: a negative-curvature direction then moves exactly like a
    gradient-descent step of Δt. ``expm1`` keeps small λΔt accurate; λ = 0 gives Δt.
    """
    lam = np.asarray(lam, dtype=np.float64)
    x = lam * dt
    with np.errstate(over="ignore"):               # e^{−x} of a very negative x: the clamp below takes Δt
        coefficient = np.where(x != 0, -np.expm1(-x) / np.where(lam != 0, lam, 1.0), dt)
    return np.minimum(coefficient, dt)


class ExponentialEuler(Integrator):
    """Exponential Euler on the top k eigenvectors of ∇²L̃ (2024 paper, section 7.2).

    With ``(λ_m, v_m)`` the top k+1 eigenpairs at θ (warm-started from the last
    step), ``c_m = v_mᵀ ∇L̃`` and the rest of the gradient ``w = ∇L̃ − Σ_m c_m v_m``::

        Δt    = min(1 / λ_{k+1}, lr_max)
        θ_new = θ − Σ_{m≤k} ((1 − e^{−λ_m Δt}) / λ_m) c_m v_m − Δt w

    so the stiff top directions are integrated exactly for the linearised flow
    and the rest by an Euler step that ``1/λ_{k+1}`` keeps stable. When k + 1
    exceeds P, all P pairs are used and Δt = lr_max. Default k: the number of
    network outputs O (the paper's choice). ``method`` picks the warm-started
    eigensolver: 'krylov' (the default: the fewest products per warm step in
    bench/dynamics.py), 'power' as in the paper,
    'lanczos' or 'lobpcg'; ``stop='eigenvalues'`` uses the paper's looser
    stopping test (power only). The top k and λ_{k+1} are the largest by
    value, so every eigenvalue left to the Euler step is at most λ_{k+1}
    (power, the paper's method, ranks by |λ|: there a negative λ_{k+1} would
    leave positive eigenvalues up to |λ_{k+1}| under a step of ``lr_max``, so
    Δt is bounded by ``1/|λ_{k+1}|``).
    """

    name = "exponential_euler"

    def __init__(self, k=None, lr_max=0.01, tol=1e-3, maxiter=200, method="krylov", stop="residual"):
        self.k, self.lr_max = check_integer(k, "k", optional=True), check_step(lr_max, "lr_max")
        self.eigen = _WarmEigen(None, tol, maxiter, method, stop)

    def __repr__(self):
        return f"ExponentialEuler(k={self.k}, lr_max={self.lr_max:g})"

    def config(self):
        return {"name": self.name, "k": self.k, "lr_max": self.lr_max, "tol": self.eigen.tol,
                "maxiter": self.eigen.maxiter, "method": self.eigen.method, "stop": self.eigen.stop}

    def _k(self, loss):
        if self.k is not None:
            return int(self.k)
        return int(loss.net.num_outputs)

    def step(self, loss, theta, gradient):
        check_same_shape(theta, gradient)
        xp = array_module(theta)
        k = self._k(loss)
        self.eigen.k = min(k + 1, loss.num_params)
        result = self.eigen(loss, theta)
        values, vectors = to_numpy(result.values), result.vectors          # decreasing by value
        if ranking(self.eigen.method) == "LM":              # power: the k of largest |λ| are integrated exactly
            order = np.argsort(-np.abs(values), kind="stable")
            values, vectors = values[order], vectors[:, xp.asarray(order)]
        if len(values) > k:
            lam_next = abs(values[k]) if ranking(self.eigen.method) == "LM" else values[k]
            dt = min(1.0 / lam_next, self.lr_max) if lam_next > 0 else self.lr_max
        else:
            dt = self.lr_max
        V = vectors[:, :k]
        c = V.T @ gradient                                    # c_m = v_mᵀ ∇L̃
        w = gradient - V @ c                                  # the rest of ∇L̃, orthogonal to the top k
        coefficient = xp.asarray(exponential_coefficient(values[:k], dt), dtype=theta.dtype)
        new_theta = theta - V @ (coefficient * c) - dt * w
        info = {"lambda_1": float(to_numpy(result.values)[0]), "eig_matvecs": result.matvecs,
                "eig_converged": result.converged}
        return new_theta, dt, info

    def state(self):
        return self.eigen.state()

    def load_state(self, state):
        self.eigen.load_state(state)


def has_fixed_step(config):
    """Whether a run's integrator (its ``config()``) steps with a fixed η, for which the 2022 paper's
    ``ρ_i = ηλ_i/2`` is defined; the flows change Δt every step."""
    return (config or {}).get("name") == GradientDescent.name


def from_config(config):
    """Rebuild an integrator from ``Integrator.config()``: any in ``Integrator.known`` (these three, adaptive.py's
    Adam and RMSProp, stochastic.py's SGD — ``import nn_eos`` defines them all)."""
    known = Integrator.known
    settings = dict(config)
    name = settings.pop("name", None)
    if name not in known:
        raise ValueError(f"unknown integrator {name!r}; expected one of {sorted(known)}")
    return known[name](**settings)


__all__ = ["AdaptiveGradientFlow", "ExponentialEuler", "GradientDescent", "exponential_coefficient", "from_config"]
