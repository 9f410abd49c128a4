"""Minibatch SGD as an integrator, and batch sharpness (Andreyev & Beneventano, *Edge of Stochastic Stability*,
2024; docs/stochastic.md).

    θ ← θ − η ∇L̃_B(θ)               B the step's minibatch, Δt = η
    batch sharpness = E_B[ g_Bᵀ ∇²L̃_B g_B / ‖g_B‖² ]       g_B = ∇L̃_B(θ), the expectation over minibatches

Batches are drawn without replacement within an epoch: epoch e is the permutation
``numpy.random.default_rng([seed, e]).permutation(N)`` cut into ⌈N / b⌉ batches, the last one shorter. The batch
of step s depends on (seed, s) alone, so a resumed run draws the same batches and a run can be replayed.
"""

import numpy as np

from .backend import to_module, to_numpy
from .curvature import TrainingLoss
from .eigen import top_eigenpairs
from .integrators import Integrator, check_same_shape, check_step
from .validation import check_integer


def batch_indices(step, num_examples, batch_size, seed):
    """The example indices of step ``step``'s minibatch (module docstring)."""
    per_epoch = -(-num_examples // batch_size)
    epoch, position = divmod(int(step), per_epoch)
    order = np.random.default_rng([int(seed), epoch]).permutation(num_examples)
    return order[position * batch_size:(position + 1) * batch_size]


def batch_loss(loss, indices):
    """The TrainingLoss of the same network and criterion over the examples ``indices`` of ``loss``."""
    return TrainingLoss(loss.net, loss.criterion, loss.X_host[indices], loss.y_host[indices],
                        chunk_size=loss.chunk_size)


def batch_sharpness(loss, theta, batch_size, batches=16, seed=0, eig_tol=1e-4):
    """``E_B[g_Bᵀ ∇²L̃_B g_B / ‖g_B‖²]`` over ``batches`` random minibatches of ``batch_size`` at θ, with the mean of
    λ₁(∇²L̃_B) over the same batches and λ₁(∇²L̃) of the full loss: a dict (docs/stochastic.md)."""
    batch_size, batches = check_integer(batch_size, "batch_size"), check_integer(batches, "batches")
    theta = loss.net.check_theta(theta)
    rng = np.random.default_rng(seed)
    ratios, tops = [], []
    for _ in range(batches):
        part = batch_loss(loss, rng.choice(loss.num_examples, size=min(batch_size, loss.num_examples),
                                           replace=False))
        g = part.gradient(theta)
        norm2 = float(g @ g)
        ratios.append(float(g @ part.hvp(g, theta=theta)) / norm2 if norm2 > 0 else np.nan)
        tops.append(_top(part, theta, eig_tol))
    return {"batch_sharpness": float(np.nanmean(ratios)), "batch_lambda_1": float(np.mean(tops)),
            "lambda_1": _top(loss, theta, eig_tol)}


def _top(loss, theta, tol):
    result = top_eigenpairs(loss.operator("hessian", theta), 1, method="krylov", which="LA", tol=tol)
    return float(to_numpy(result.values)[0])


class SGD(Integrator):
    """Minibatch gradient descent, ``θ ← θ − η ∇L̃_B(θ)`` (module docstring); ``Δt = η``. With
    ``sharpness_every = k`` > 0 it records :func:`batch_sharpness` (``batches`` batches of its own size) every k
    steps into the run's metrics. ``batch_size ≥ N`` is gradient descent."""

    name = "sgd"

    def __init__(self, lr, batch_size, seed=0, sharpness_every=0, batches=16, tol=1e-4):
        self.lr = check_step(lr, "lr")
        self.batch_size, self.seed = check_integer(batch_size, "batch_size"), check_integer(seed, "seed", low=0)
        self.sharpness_every = check_integer(sharpness_every, "sharpness_every", low=0)
        self.batches, self.tol = check_integer(batches, "batches"), float(tol)
        self.steps = 0

    def __repr__(self):
        return f"SGD(lr={self.lr:g}, batch_size={self.batch_size}, seed={self.seed})"

    def config(self):
        return {"name": self.name, "lr": self.lr, "batch_size": self.batch_size, "seed": self.seed,
                "sharpness_every": self.sharpness_every, "batches": self.batches, "tol": self.tol}

    def step(self, loss, theta, gradient):
        """One minibatch step from θ (the full-batch ``gradient`` the loop passes is not used)."""
        check_same_shape(theta, gradient)
        info = {}
        if self.sharpness_every and self.steps % self.sharpness_every == 0:
            info = batch_sharpness(loss, theta, self.batch_size, self.batches, seed=self.seed + self.steps,
                                   eig_tol=self.tol)
        indices = batch_indices(self.steps, loss.num_examples, self.batch_size, self.seed)
        g = to_module(batch_loss(loss, indices).gradient(theta), loss.xp)
        self.steps += 1
        return theta - self.lr * g, self.lr, info

    def state(self):
        return {"steps": np.array(self.steps)}

    def load_state(self, state):
        self.steps = int(state.get("steps", 0))
