"""Layers with four hand-written passes: forward, backward, r_forward, r_backward.

Notation (DESIGN.md §1-2). A dense layer maps ``x`` to the pre-activation
``x̂ = x Aᵀ + b``; an activation layer maps ``x̂`` to ``x⁺ = σ(x̂)``. ``δ`` is the
derivative of the training loss L̃ with respect to a layer's *output* (it already
carries the 1/N of the mean), ``R{q} = d/dε q(θ + εv)`` is Pearlmutter's operator
along a direction ``v`` of parameter space.

Index letters used in the shapes below:

    k  direction (R-quantities carry a leading axis of k directions)
    n  example
    i  input feature of a layer
    o  output feature of a layer

The passes of one network evaluation run in this order and share caches:

    forward(x)                      caches the input x
    backward(δ, grad)               caches δ; writes ∂L̃/∂θ_layer into ``grad``
    r_forward(R{x}, v)              caches R{x}
    r_backward(R{δ}, v, r_grad)     writes R{∂L̃/∂θ_layer} into ``r_grad``

``r_backward(..., second_order=False)`` drops every term that carries δ (the
terms a layer adds because its own Jacobian moves with θ): what is left is the
plain backward pass applied to R{δ}, which is how the Gauss-Newton product
``G v = Jᵀ H_z J v`` is computed (DESIGN.md §2).
"""

from dataclasses import dataclass

import numpy as np

from .backend import ScratchPool, Workspace, array_module


def weight_and_bias(flat, rows, cols):
    """Views (…, rows, cols) of a weight matrix stored row-major and (…, rows) of the bias after it, in a (…, p)
    array (p = rows·cols + rows): how a layer's parameters, and any direction or gradient of them, are laid out."""
    cut = rows * cols
    return flat[..., :cut].reshape(*flat.shape[:-1], rows, cols), flat[..., cut:]


@dataclass(frozen=True)
class RValues:
    """Numbers per example and direction held by a layer's R-passes (Layer.r_values_per_example)."""

    kept: int = 0       # kept from its R-forward to its R-backward pass: its R-output (read by the layer above)
                        # and R-quantities of its own
    step: int = 0       # allocated by one of its steps for itself, outside the ScratchPool
    scratch: int = 0    # the widest R-quantity it asks the network's ScratchPool for
    single: int = 0     # kept besides when the block has a single direction (a convolution's cols(R{x}))


class Layer:
    """A layer without parameters that passes everything through unchanged."""

    num_params = 0

    def buffer(self, name, shape, like):
        """An array this layer reuses across calls (backend.Workspace), for the R-quantities it keeps between
        its R-forward and R-backward passes."""
        if "_workspace" not in self.__dict__:
            self._workspace = Workspace()
        return self._workspace.get(name, shape, like.dtype, array_module(like))

    def scratch(self, shape, like, avoid=()):
        """A temporary for one step of a pass, shared with the other layers of the network
        (backend.ScratchPool): it overlaps none of ``avoid``, and the next request that does not name it in
        its own ``avoid`` may overwrite it."""
        if "_scratch" not in self.__dict__:
            self._scratch = ScratchPool()
        return self._scratch.get(shape, like.dtype, array_module(like), avoid)

    def held_buffers(self):
        """The arrays this layer keeps for its R-passes (Workspace buffers), for memory accounting and tests."""
        return self._workspace.held() if "_workspace" in self.__dict__ else []

    def share_scratch(self, pool):
        """Take temporaries from ``pool``, the ScratchPool of the network this layer is in."""
        self._scratch = pool

    def bind(self, params):
        """Point the layer's parameters at ``params``, a flat view into θ."""

    def output_shape(self, input_shape):
        return input_shape

    def values_per_example(self, input_shape):
        """Numbers per example at the layer's input and output, by which nn_eos.memory sizes a product."""
        return int(np.prod(input_shape)) + int(np.prod(self.output_shape(input_shape)))

    def r_values_per_example(self, input_shape, first=False):
        """Numbers per example and direction the R-passes hold for this layer (an :class:`RValues`), by which
        nn_eos.memory sizes a product. ``first``: the network's first layer with parameters, which gets
        R{x} = 0 and sends no R{∂L̃/∂x} down."""
        return RValues()

    def forward(self, x):
        return x

    def backward(self, delta, grad=None, need_input=True):
        return delta

    def r_forward(self, r_x, v):
        return r_x

    def r_backward(self, r_delta, v, r_grad, second_order=True, need_input=True):
        return r_delta


class Dense(Layer):
    """Fully connected layer ``x̂ = x Aᵀ + b`` (2024 paper, section 2.1).

    ``A`` has shape (o, i) and is stored row-major in θ, followed by ``b`` (o,).
    A dense layer is linear in its input and in its parameters, so its own
    second derivatives vanish; the only second-order terms of its R-backward
    pass are the cross terms ``δᵀ R{x}`` and ``δ V_A`` (parameters times input).
    """

    def __init__(self, n_in, n_out):
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"Dense needs positive widths, got n_in={n_in}, n_out={n_out}")
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.num_params = self.n_out * self.n_in + self.n_out

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out})"

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.n_in,):
            raise ValueError(f"{self!r} expects inputs of shape (n, {self.n_in}), got (n, *{tuple(input_shape)})")
        return (self.n_out,)

    def split(self, flat):
        """Views (…, o, i) and (…, o) of the A and b parts of a (…, p) array."""
        return weight_and_bias(flat, self.n_out, self.n_in)

    def bind(self, params):
        self.A, self.b = self.split(params)

    def r_values_per_example(self, input_shape, first=False):
        """Keeps R{x̂} (o); its temporaries (R{x} Aᵀ, R{∂L̃/∂x}, δ V_A) come from the ScratchPool."""
        return RValues(kept=self.n_out, scratch=0 if first else max(self.n_in, self.n_out))

    def last_input(self):
        """The input ``x`` (n, i) of the last forward pass, for measurements (alignment): read-only, valid until
        the next forward pass."""
        return self.x

    def forward(self, x):
        """``x̂ = x Aᵀ + b``."""
        self.x, self.xp = x, array_module(x)
        x_hat = x @ self.A.T
        x_hat += self.b
        return x_hat

    def backward(self, delta, grad=None, need_input=True):
        """``∂L̃/∂A = δᵀ x``, ``∂L̃/∂b = Σ_n δ``, and returns ``∂L̃/∂x = δ A``."""
        self.delta = delta
        if grad is not None:
            grad_A, grad_b = self.split(grad)
            self.xp.matmul(delta.T, self.x, out=grad_A)
            delta.sum(axis=0, out=grad_b)
        return delta @ self.A if need_input else None

    def r_forward(self, r_x, v):
        """``R{x̂} = R{x} Aᵀ + x V_Aᵀ + V_b``; ``r_x=None`` stands for ``R{x} = 0``.

        ``x V_Aᵀ`` is k matrix products sharing x; ``R{x} Aᵀ`` is one product of
        the (k·n, i) stack of R{x} with Aᵀ.
        """
        self.r_x = r_x                                                # R{x}: read by r_backward (δᵀ R{x})
        V_A, V_b = self.split(v)
        k, n = V_A.shape[0], self.x.shape[0]
        r_out = self.buffer("r_out", (k, n, self.n_out), self.x)     # R{x̂}: the activation above keeps it
        self.xp.matmul(self.x, V_A.transpose(0, 2, 1), out=r_out)
        if r_x is not None:
            r_x_A = self.scratch((k, n, self.n_out), self.x)
            self.xp.matmul(r_x.reshape(k * n, self.n_in), self.A.T, out=r_x_A.reshape(k * n, self.n_out))
            r_out += r_x_A
        r_out += V_b[:, None, :]
        return r_out

    def r_backward(self, r_delta, v, r_grad, second_order=True, need_input=True):
        """R-operator of the backward pass (DESIGN.md §2)::

            R{∂L̃/∂A} = R{δ}ᵀ x + δᵀ R{x}      R{∂L̃/∂b} = Σ_n R{δ}
            R{∂L̃/∂x} = R{δ} A + δ V_A

        The δ terms are second order (dropped for the Gauss-Newton product).
        """
        r_grad_A, r_grad_b = self.split(r_grad)
        xp, k, n = self.xp, r_delta.shape[0], self.x.shape[0]
        xp.matmul(r_delta.transpose(0, 2, 1), self.x, out=r_grad_A)  # (k, o, i)
        if second_order and self.r_x is not None:
            delta_r_x = self.buffer("delta_r_x", r_grad_A.shape, r_delta)
            r_grad_A += xp.matmul(self.delta.T, self.r_x, out=delta_r_x)
        r_delta.sum(axis=1, out=r_grad_b)
        if not need_input:
            return None
        r_dx = self.scratch((k, n, self.n_in), r_delta, avoid=(r_delta,))
        xp.matmul(r_delta.reshape(k * n, self.n_out), self.A, out=r_dx.reshape(k * n, self.n_in))
        if second_order:
            V_A, _ = self.split(v)
            r_dx += xp.matmul(self.delta, V_A, out=self.scratch(r_dx.shape, r_delta, avoid=(r_dx,)))
        return r_dx


class Flatten(Layer):
    """Reshapes (n, *shape) to (n, prod(shape)); the R-passes reshape the same way."""

    def __repr__(self):
        return "Flatten()"

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x):
        self.input_shape = x.shape[1:]
        return x.reshape(x.shape[0], -1)

    def backward(self, delta, grad=None, need_input=True):
        return delta.reshape(delta.shape[0], *self.input_shape) if need_input else None

    def r_forward(self, r_x, v):
        return None if r_x is None else r_x.reshape(r_x.shape[0], r_x.shape[1], -1)

    def r_backward(self, r_delta, v, r_grad, second_order=True, need_input=True):
        if not need_input:
            return None
        return r_delta.reshape(r_delta.shape[0], r_delta.shape[1], *self.input_shape)
