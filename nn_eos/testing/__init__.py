"""Derivative checks anyone can call: every pass against central finite differences in float64.

    from nn_eos import testing
    testing.check_activation(MyActivation())              # σ', σ'' and the four passes
    testing.check_layer(MyLayer(3, 4), input_shape=(3,))  # the four passes, with and without second order
    testing.check_criterion(MyCriterion(), n_outputs=4)   # ∂l/∂z, H_z l u, H_z l, sqrt(H_z l)
    testing.check_loss(loss)                              # ∇L̃, ∇²L̃ v, G v, H v; dense matrices when P is small
    testing.check_third(loss)                             # ∇³L̃[u, v, ·] (docs/third.md)

Each check draws its inputs from ``seed`` and raises AssertionError naming the
quantity, its worst entry and the tolerance. A layer's passes are checked as
maps of their inputs (docs/layers.md, "Checking a layer"): with ``y = F(x, p)``
and t a scalar,

    backward:    ⟨backward(δ), u⟩ + ⟨grad, w⟩ = d/dt ⟨δ, F(x + t u, p + t w)⟩
    r_forward:   R{y} = d/dt F(x + t R{x}, p + t v)
    r_backward:  (R{∂/∂x}, R{∂/∂p}) = d/dt backward(δ + t R{δ}) at (x + t R{x}, p + t v)

and, without second-order terms, r_backward is the plain backward pass of R{δ}. A layer with third-order
passes (docs/third.md) has them checked as derivatives of its R-passes (:mod:`nn_eos.testing.third_order`).
A loss is checked against central differences of its value and gradient and,
when P is at most ``dense_below``, against dense matrices built column by
column (∇²L̃ from the gradient, G = (1/N) Σ_n J_nᵀ H_z l J_n from finite-difference
Jacobians), with the identities that must hold: symmetry, G positive
semi-definite, ∇²L̃ = G + H, a block equals its single products.

The passes run on ``device`` (default: ``NN_EOS_DEVICE``, else the CPU); the
comparisons on the host. The hypothesis strategies behind the project's own
tests are in :mod:`nn_eos.testing.strategies` (needs the ``[test]`` extra).
"""

from .differences import FD_STEP, KINK_MARGIN, TOL, assert_close, away_from_kinks, central_difference
from .layers import check_activation, check_layer
from .losses import check_criterion, check_loss, dense_ggn, dense_hessian
from .third_order import (check_third, check_third_derivative, check_third_order_passes, check_third_product,
                          has_third_order)

__all__ = ["TOL", "FD_STEP", "KINK_MARGIN", "assert_close", "central_difference", "check_activation",
           "check_layer", "check_criterion", "check_loss", "check_third"]
