"""Pieces of your own: two activations and a parameter layer from outside the package, checked, then trained.

    python examples/custom_layer.py [--n 300] [--steps 40] [--device cpu|gpu|strict]

Softplus and GELU are activations (σ, σ', σ''; GELU's Φ goes through the
backend's erf, so the same lines run on CuPy; the package ships the same GELU
as ``ne.GELU``, written here as the example of an activation built on a special
function, and registered under its own name), and Scale is a layer with
parameters, ``y = x ⊙ s + c`` per feature (docs/layers.md). Each is checked by
``nn_eos.testing`` against central finite differences: every pass, with and
without the second-order terms. Then two bugs are planted — a wrong σ'' and a
dropped R-term — to show the checker naming them. Finally a net built from the
three pieces trains on dice images by gradient descent, and its top Hessian
eigenpairs are printed before and after, with ``check_loss`` run on the whole
loss of a small copy of it.

Nothing inside nn_eos changes: the pieces are registered or passed in.
"""

import math

import numpy as np

import nn_eos as ne
from nn_eos import testing
from nn_eos.backend import array_module, special_module
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos.network import init_layer


@ne.register_activation
class Softplus(ne.Activation):
    """``σ(x) = log(1 + eˣ)``, ``σ'(x) = s(x)`` the logistic sigmoid, ``σ''(x) = s(x)(1 − s(x))``.

    ``max(x, 0) + log1p(e^{−|x|})`` never overflows; ``s(x) = (1 + tanh(x/2))/2`` neither."""

    name = "softplus"
    gain = 1.0

    @staticmethod
    def sigma(x):
        xp = array_module(x)
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    @staticmethod
    def slope(x):
        return 0.5 * (1 + array_module(x).tanh(x / 2))

    @staticmethod
    def curvature(x):
        s = 0.5 * (1 + array_module(x).tanh(x / 2))
        return s * (1 - s)


@ne.register_activation
class GELU(ne.Activation):
    """``σ(x) = x Φ(x)``, ``σ'(x) = Φ(x) + x φ(x)``, ``σ''(x) = (2 − x²) φ(x)``, with Φ the normal CDF
    ``(1 + erf(x/√2))/2`` and φ its density ``e^{−x²/2}/√(2π)``."""

    name = "my_gelu"

    @staticmethod
    def Phi(x):
        return 0.5 * (1 + special_module(array_module(x)).erf(x / math.sqrt(2)))

    @staticmethod
    def phi(x):
        return array_module(x).exp(-x * x / 2) / math.sqrt(2 * math.pi)

    @classmethod
    def sigma(cls, x):
        return x * cls.Phi(x)

    @classmethod
    def slope(cls, x):
        return cls.Phi(x) + x * cls.phi(x)

    @classmethod
    def curvature(cls, x):
        return (2 - x * x) * cls.phi(x)


class Scale(ne.Layer):
    """``y = x ⊙ s + c``: a learned scale s and shift c per feature, (s | c) in θ (docs/layers.md).

    backward:    ∂L̃/∂s = Σ_n δ ⊙ x,  ∂L̃/∂c = Σ_n δ,  ∂L̃/∂x = δ ⊙ s
    r_forward:   R{y} = R{x} ⊙ s + x ⊙ V_s + V_c
    r_backward:  R{∂L̃/∂s} = Σ_n (R{δ} ⊙ x + δ ⊙ R{x}),  R{∂L̃/∂c} = Σ_n R{δ},  R{∂L̃/∂x} = R{δ} ⊙ s + δ ⊙ V_s
    """

    def __init__(self, width, drop_a_term=False):
        self.width, self.num_params = int(width), 2 * int(width)
        self.drop_a_term = drop_a_term          # the planted bug: R{∂L̃/∂x} without δ ⊙ V_s

    def __repr__(self):
        return f"Scale({self.width})"

    def initial_parameters(self, rng, init, gain):
        """s = 1, c = 0: the identity, as normalisation layers start."""
        return np.concatenate([np.ones(self.width), np.zeros(self.width)])

    def bind(self, params):
        self.s, self.c = params[:self.width], params[self.width:]

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.width,):
            raise ValueError(f"{self!r} expects inputs of shape (n, {self.width}), got (n, *{tuple(input_shape)})")
        return input_shape

    def forward(self, x, cache):
        cache.x = x
        return x * self.s + self.c

    def backward(self, delta, cache, grad=None, need_input=True):
        cache.delta = delta
        if grad is not None:
            grad[:self.width] = (delta * cache.x).sum(axis=0)
            grad[self.width:] = delta.sum(axis=0)
        return delta * self.s if need_input else None

    def r_forward(self, r_x, v, cache):
        cache.r_x = r_x
        V_s, V_c = v[:, None, :self.width], v[:, None, self.width:]
        r_y = cache.x * V_s + V_c
        return r_y if r_x is None else r_x * self.s + r_y

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        r_grad[:, :self.width] = (r_delta * cache.x).sum(axis=1)
        r_grad[:, self.width:] = r_delta.sum(axis=1)
        if second_order and cache.r_x is not None:
            r_grad[:, :self.width] += (cache.delta * cache.r_x).sum(axis=1)
        if not need_input:
            return None
        if not second_order or self.drop_a_term:
            return r_delta * self.s
        return r_delta * self.s + cache.delta * v[:, None, :self.width]


class WrongCurvatureGELU(GELU):
    """GELU with the planted bug: σ'' missing its factor 2."""

    name = "gelu_wrong"

    @classmethod
    def curvature(cls, x):
        return (1 - x * x) * cls.phi(x)


def caught(check, *args, **kwargs):
    """Run a check that must fail; returns its message."""
    try:
        check(*args, **kwargs)
    except AssertionError as error:
        return str(error)
    raise SystemExit(f"the checker missed a planted bug: {check.__name__}{args}")


def build(widths, device, seed=0):
    """Dense → Softplus → Scale → Dense → GELU → Dense, θ from each layer's own initialisation."""
    n_in, h1, h2, n_out = widths
    layers = [ne.Dense(n_in, h1), Softplus(), Scale(h1), ne.Dense(h1, h2), GELU(), ne.Dense(h2, n_out)]
    rng = np.random.default_rng(seed)
    theta = np.concatenate([init_layer(rng, layer, "xavier", 1.0) for layer in layers if layer.num_params])
    return ne.Sequential(layers, (n_in,), device=device, theta=theta)


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=300, help="dice images to train on")
    parser.add_argument("--steps", type=int, default=40, help="gradient-descent steps")
    parser.add_argument("--lr", type=float, default=0.5)
    add_device(parser)
    args = parse(parser)

    print("1. the pieces, checked against central differences in float64 (nn_eos.testing)")
    for piece, check in ((Softplus(), testing.check_activation), (GELU(), testing.check_activation),
                         (Scale(4), lambda layer, **k: testing.check_layer(layer, (4,), **k))):
        for seed in range(3):
            check(piece, seed=seed, device=args.device)
        print(f"   {type(piece).__name__}: every pass agrees (3 seeds)")

    print("\n2. planted bugs, caught")
    message = caught(testing.check_activation, WrongCurvatureGELU(), device=args.device)
    print(f"   GELU with σ'' = (1 − x²) φ:  {message}")
    message = caught(testing.check_layer, Scale(4, drop_a_term=True), (4,), device=args.device)
    print(f"   Scale without δ ⊙ V_s:      {message}")

    print("\n3. a small copy of the net, the whole loss checked (gradient, ∇²L̃ v, G v, H v, dense matrices)")
    small = build([5, 4, 4, 3], args.device, seed=1)
    rng = np.random.default_rng(1)
    testing.check_loss(ne.TrainingLoss(small, "cross_entropy", rng.standard_normal((6, 5)), np.arange(6) % 3))
    print(f"   P = {small.num_params}: all checks hold")

    print(f"\n4. trained on {args.n} dice images: Dense(1024, 32) → Softplus → Scale → Dense(32, 16) → GELU → "
          f"Dense(16, 6), GD η = {args.lr}")
    X, y = ne.datasets.dice("train", n=args.n)
    net = build([1024, 32, 16, 6], args.device)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    before = ne.top_eigenpairs(loss.hvp, k=3, method="krylov", which="LA", tol=1e-6)
    run = ne.train(loss, ne.GradientDescent(args.lr), max_steps=args.steps, progress=False)
    net.set_theta(run.theta)
    after = ne.top_eigenpairs(loss.hvp, k=3, method="krylov", which="LA", tol=1e-6)
    first, last = run.metrics["loss"][0], run.metrics["loss"][-1]
    print(f"   loss {first:.4f} → {last:.4f} in {args.steps} steps; 2/η = {2 / args.lr:.2f}")
    print(f"   top eigenvalues of ∇²L̃ before: {np.round(ne.backend.to_numpy(before.values), 4)}")
    print(f"   top eigenvalues of ∇²L̃ after:  {np.round(ne.backend.to_numpy(after.values), 4)}")


if __name__ == "__main__":
    main()
