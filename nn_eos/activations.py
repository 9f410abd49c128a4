"""Elementwise activations ``x⁺ = σ(x̂)`` and their passes (docs/passes.md, "Activation").

Each activation states σ, σ' and σ''. Kinks are decided once, here, for every
activation: at ``x̂ = 0`` the left branch is used (``x̂ > 0`` selects the right
one), in σ' and σ'' alike.

Passes of an activation layer, with ``g = ∂L̃/∂x⁺`` the derivative arriving
from above::

    forward       x⁺ = σ(x̂)
    backward      ∂L̃/∂x̂ = g ⊙ σ'(x̂)
    r_forward     R{x⁺} = σ'(x̂) ⊙ R{x̂}
    r_backward    R{∂L̃/∂x̂} = R{g} ⊙ σ'(x̂) + g ⊙ σ''(x̂) ⊙ R{x̂}

The last term is the activation's second-order term, dropped for the
Gauss-Newton product. Third derivatives (docs/third.md) also need σ''', which an
activation states as ``third_derivative``.
"""

import math

from .backend import array_module, special_module
from .layers import Layer


class Activation(Layer):
    """Base class: subclasses give ``sigma`` (σ), ``slope`` (σ') and ``curvature`` (σ'')."""

    name = None
    gain = 1.0  # the Kaiming gain used by the initialisations (network.py)
    has_curvature = True  # False when σ'' = 0 wherever it is defined: the second-order term is skipped

    def __init_subclass__(cls, **kwargs):
        """A subclass states σ and σ', and σ'' unless ``has_curvature = False`` (docs/layers.md)."""
        super().__init_subclass__(**kwargs)
        needed = ("sigma", "slope") + (("curvature",) if cls.has_curvature else ())
        missing = [name for name in needed if getattr(cls, name) is getattr(Activation, name)]
        if missing:
            raise TypeError(f"{cls.__name__} must define {', '.join(missing)} (σ, σ', σ'' as functions of x; "
                            f"has_curvature = False where σ'' = 0): docs/layers.md")

    def __repr__(self):
        return f"{type(self).__name__}()"

    @staticmethod
    def sigma(x):
        raise NotImplementedError("an activation defines sigma(x), σ")

    @staticmethod
    def slope(x):
        raise NotImplementedError("an activation defines slope(x), σ'")

    @staticmethod
    def curvature(x):
        raise NotImplementedError("an activation defines curvature(x), σ''")

    @staticmethod
    def third_derivative(x):
        raise NotImplementedError("an activation defines third_derivative(x), σ''', for third derivatives")

    def check_third_order(self):
        """Raise NotImplementedError unless σ''' is stated (needed only where σ'' is not zero)."""
        super().check_third_order()
        if self.has_curvature and type(self).third_derivative is Activation.third_derivative:
            raise NotImplementedError(f"{type(self).__name__} states no third_derivative(x) (σ'''), which third "
                                      f"derivatives need: docs/third.md")

    def derivatives(self, x_hat, x_plus):
        """``(σ'(x̂), σ''(x̂))``, given ``x⁺ = σ(x̂)`` as well: an activation whose derivatives are cheaper in
        terms of x⁺ (tanh: σ' = 1 − x⁺²) writes them so (docs/passes.md, "Activation")."""
        curvature = self.curvature(x_hat) if self.has_curvature else None
        return self.slope(x_hat), curvature

    def forward(self, x_hat, cache):
        """``x⁺ = σ(x̂)``; keeps σ'(x̂) and σ''(x̂), which the three other passes read."""
        x_plus = self.sigma(x_hat)
        cache.slope, cache.curvature = self.derivatives(x_hat, x_plus)
        return x_plus

    def backward(self, g, cache, grad=None, need_input=True):
        """``∂L̃/∂x̂ = g ⊙ σ'(x̂)``."""
        cache.g = g
        return g * cache.slope

    def r_forward(self, r_x_hat, v, cache):
        """``R{x⁺} = σ'(x̂) ⊙ R{x̂}``."""
        cache.r_x_hat = r_x_hat
        return None if r_x_hat is None else cache.slope * r_x_hat

    def r_backward(self, r_g, v, cache, r_grad, second_order=True, need_input=True):
        """``R{∂L̃/∂x̂} = R{g} ⊙ σ'(x̂) + g ⊙ σ''(x̂) ⊙ R{x̂}``; the last term is second order."""
        if second_order and self.has_curvature and cache.r_x_hat is not None:
            return r_g * cache.slope + cache.g * cache.curvature * cache.r_x_hat
        return r_g * cache.slope

    def rr_forward(self, ruv_x_hat, t, u, v, cache):
        """``R_uR_v{x⁺} = σ' ⊙ R_uR_v{x̂} + σ'' ⊙ R_u{x̂} ⊙ R_v{x̂}`` (docs/third.md); t.ru_x is R_u{x̂}."""
        first = None if ruv_x_hat is None else cache.slope * ruv_x_hat
        if not self.has_curvature:
            return first
        second = cache.curvature * t.ru_x * t.rv_x
        return second if first is None else first + second

    def rr_backward(self, ruv_g, t, u, v, cache, rr_grad, need_input=True):
        """``R_uR_v{∂L̃/∂x̂} = R_uR_v{g} ⊙ σ' + (R_u{g} ⊙ R_v{x̂} + R_v{g} ⊙ R_u{x̂} + g ⊙ R_uR_v{x̂}) ⊙ σ''
        + g ⊙ σ''' ⊙ R_u{x̂} ⊙ R_v{x̂}`` (docs/third.md); g = t.delta, x̂ = t.x."""
        if not self.has_curvature:
            return ruv_g * cache.slope
        moved = t.ru_delta * t.rv_x + t.rv_delta * t.ru_x
        if t.ruv_x is not None:
            moved = moved + t.delta * t.ruv_x
        return (ruv_g * cache.slope + moved * cache.curvature
                + t.delta * self.third_derivative(t.x) * t.ru_x * t.rv_x)


class ReLU(Activation):
    """``σ(x) = max(x, 0)``, ``σ'(x) = [x > 0]``, ``σ''(x) = σ'''(x) = 0`` (away from the kink)."""

    name = "relu"
    gain = math.sqrt(2.0)
    has_curvature = False  # σ'' is zero wherever it exists: no second-order term

    @staticmethod
    def sigma(x):
        return array_module(x).maximum(x, 0)

    @staticmethod
    def slope(x):
        return (x > 0).astype(x.dtype)

    @staticmethod
    def curvature(x):
        return array_module(x).zeros_like(x)


class ELU(Activation):
    """ELU with α = 1 (2024 paper, section 3)::

        σ(x) = x (x > 0),  eˣ − 1 (x ≤ 0)
        σ'(x) = 1,          eˣ
        σ''(x) = σ'''(x) = 0,   eˣ

    These are what ``sigma``, ``slope``, ``curvature`` and ``third_derivative``
    compute (the exponential taken of ``min(x, 0)`` only, so large positive
    inputs never overflow; ``expm1`` keeps σ accurate for small negative x).
    The passes of a network read the same σ' and σ'' another way: from the
    output x⁺ = σ(x̂), as ``σ' = 1 + min(x⁺, 0)`` (where x̂ ≤ 0, eˣ̂ = x⁺ + 1)
    and ``σ'' = σ' − [x̂ > 0]``, without a second exponential (:meth:`derivatives`).
    """

    name = "elu"
    gain = math.sqrt(2.0)  # the 2024 paper follows Clevert et al. in using √2 for ELU

    @staticmethod
    def sigma(x):
        # eˣ − 1 ≥ x for every x, so max(x, eˣ − 1 of min(x, 0)) picks the right branch
        xp = array_module(x)
        return xp.maximum(x, xp.expm1(xp.minimum(x, 0)))

    @staticmethod
    def slope(x):
        xp = array_module(x)
        return xp.exp(xp.minimum(x, 0))                 # e⁰ = 1 where x > 0

    @staticmethod
    def curvature(x):
        xp = array_module(x)
        return xp.exp(xp.minimum(x, 0)) * (x <= 0)

    @staticmethod
    def third_derivative(x):
        """σ''' = σ'': 0 where x > 0, eˣ where x ≤ 0."""
        return ELU.curvature(x)

    def derivatives(self, x_hat, x_plus):
        """``σ' = 1 + min(x⁺, 0)``, ``σ'' = σ' − [x̂ > 0]``: where x̂ ≤ 0, ``eˣ̂ = x⁺ + 1``, so no second
        exponential is taken (it would cost more than the layer's other elementwise work together). For very
        negative x̂ this keeps eˣ̂ to an absolute 1e-16 rather than a relative one, which is all a slope that
        multiplies δ needs."""
        slope = 1 + array_module(x_plus).minimum(x_plus, 0)
        return slope, slope - (x_hat > 0)


class Tanh(Activation):
    """``σ = tanh``, ``σ' = 1 − σ²``, ``σ'' = −2 σ (1 − σ²)``, ``σ''' = −2 (1 − σ²)(1 − 3σ²)``."""

    name = "tanh"
    gain = 5.0 / 3.0

    @staticmethod
    def sigma(x):
        return array_module(x).tanh(x)

    @staticmethod
    def slope(x):
        t = array_module(x).tanh(x)
        return 1 - t * t

    @staticmethod
    def curvature(x):
        t = array_module(x).tanh(x)
        return -2 * t * (1 - t * t)

    @staticmethod
    def third_derivative(x):
        """σ''' = −2 (1 − tanh² x)(1 − 3 tanh² x)."""
        t = array_module(x).tanh(x)
        return -2 * (1 - t * t) * (1 - 3 * t * t)

    def derivatives(self, x_hat, x_plus):
        """``σ' = 1 − x⁺²``, ``σ'' = −2 x⁺ σ'``: no second tanh."""
        slope = 1 - x_plus * x_plus
        return slope, -2 * x_plus * slope


class GELU(Activation):
    """GELU, exact (Hendrycks & Gimpel 2016; PyTorch's ``gelu`` with ``approximate='none'``)::

        σ(x)    = x Φ(x)              Φ(x) = (1 + erf(x/√2)) / 2, the normal distribution function
        σ'(x)   = Φ(x) + x φ(x)       φ(x) = e^{−x²/2} / √(2π), its density (φ' = −x φ)
        σ''(x)  = (2 − x²) φ(x)
        σ'''(x) = x (x² − 4) φ(x)

    Φ is the backend's ``ndtr`` (scipy.special, cupyx.scipy.special on CuPy). It costs some twenty
    exponentials, so the forward pass computes Φ and φ once for σ, σ' and σ''.
    """

    name = "gelu"
    gain = 1.0

    @staticmethod
    def Phi(x):
        return special_module(array_module(x)).ndtr(x)

    @staticmethod
    def phi(x):
        return array_module(x).exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))

    @staticmethod
    def sigma(x):
        return x * GELU.Phi(x)

    @staticmethod
    def slope(x):
        return GELU.Phi(x) + x * GELU.phi(x)

    @staticmethod
    def curvature(x):
        return (2 - x * x) * GELU.phi(x)

    @staticmethod
    def third_derivative(x):
        return x * (x * x - 4) * GELU.phi(x)

    def forward(self, x_hat, cache):
        """``x⁺ = x̂ Φ(x̂)``, keeping ``σ' = Φ + x̂ φ`` and ``σ'' = (2 − x̂²) φ``: Φ and φ computed once."""
        Phi, phi = self.Phi(x_hat), self.phi(x_hat)
        cache.slope, cache.curvature = Phi + x_hat * phi, (2 - x_hat * x_hat) * phi
        return x_hat * Phi


ACTIVATIONS = {cls.name: cls for cls in (ReLU, ELU, Tanh, GELU)}


def register_activation(cls):
    """Add an Activation subclass to the registry under ``cls.name``, so that ``activation(name)``, ``mlp``,
    configs and the project's tests (which iterate over the registry) know it; returns the class (a class
    decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Activation)) or not isinstance(cls.name, str):
        raise TypeError(f"register_activation takes an Activation subclass with a name, got {cls!r}")
    ACTIVATIONS[cls.name.lower()] = cls
    return cls


def activation(name):
    """An activation layer from its name ('elu', 'relu' or 'tanh'), or the instance given, parameters and all."""
    if isinstance(name, Activation):
        return name
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name, one of {sorted(ACTIVATIONS)}, got {type(name).__name__}")
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
