"""One curvature product, written out: the passes of docs/curvature.md, in order, on one screen.

    ∇²L̃ v = G v + H v                                           (2024 paper, eq. 2)
    G v   = (1/N) Σ_n Jᵀ H_z l J v           Gauss-Newton         kind 'ggn'
    H v   = ∇²L̃ v − G v                       residual             kind 'residual'

:func:`curvature_product` is the whole product for the rows of a block V (k, P):
a forward pass, a backward pass recording δ at every layer, an R-forward pass
giving R{z} = J v, the output source R{δ^L} = (1/N) H_z l R{z}, and an
R-backward pass that writes R{∇L̃} = M v. Every public product of the package
(``TrainingLoss.hvp``, ``ggn``, ``residual``, their operators) runs this
function; the loss only adds chunking over examples, blocks of directions that
fit a memory budget, and keeping the forward and backward :class:`Passes` for
the next product at the same θ.
"""

from dataclasses import dataclass

KINDS = ("hessian", "ggn", "residual")


def curvature_product(net, criterion, X, y, V, kind, N=None, passes=None, out=None):
    """``M vᵀ`` for each row v of V (k, P), M = ∇²L̃ ('hessian'), G ('ggn') or H ('residual') of the mean of
    criterion over (X, y) at the network's θ (docs/curvature.md, "One product"); (k, P).

    ``N``: the number of examples the mean divides by (default len(y); a chunk's share of a larger mean passes
    the whole count). ``passes``: the forward (and backward) :class:`Passes` of X at this θ, when a product
    before this one left them (a warm product starts at the R-forward pass). ``out``: a (k, P) array to write
    into.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
    N = len(y) if N is None else N
    passes = forward_pass(net, X) if passes is None else passes           # z = f(X, θ)
    if kind != "ggn":
        backward_pass(net, criterion, passes, y, N)                       # δ from δ^L = (1/N) ∂l/∂z
    r_z = net.r_forward(V, passes.caches)                                 # R{z} = J v
    if kind == "residual":
        r_delta = net.xp.zeros_like(r_z)                                  # H v has no Gauss-Newton source
    else:
        r_delta = output_hessian(criterion, passes, y, N)(r_z)            # R{δ^L} = (1/N) H_z l R{z}
    out = net.xp.empty_like(V) if out is None else out
    return net.r_backward(r_delta, V, passes.caches, out, second_order=(kind != "ggn"))   # R{∇L̃} = M v


@dataclass
class Passes:
    """The forward (and backward) pass of one batch at one θ: what every product at that θ starts from.

    ``caches``: each layer's record of the passes (:class:`~nn_eos.layers.Cache`); ``z``: the outputs f(X, θ);
    ``delta_recorded``: whether the backward pass has put δ into the caches; ``output_hessian``: u ↦ (1/N) H_z l u
    at z, once a product has asked for it (what depends on z alone, such as the softmax, is computed once).
    """

    caches: list
    z: object
    delta_recorded: bool = False
    output_hessian: object = None


def forward_pass(net, X):
    """``z = f(X, θ)``, with each layer's record of it (docs/passes.md, the forward pass)."""
    caches = net.new_caches()
    return Passes(caches=caches, z=net.forward(X, caches))


def backward_pass(net, criterion, passes, y, N, grad=None):
    """Back-propagate ``δ^L = (1/N) ∂l/∂z`` through the recorded forward pass, recording δ at every layer; writes
    ``∇L̃`` (this batch's share of the mean) into ``grad`` (P,) when given. Runs once per :class:`Passes` unless a
    gradient is asked for."""
    if passes.delta_recorded and grad is None:
        return
    net.backward(criterion.gradient(passes.z, y) / N, passes.caches, grad)
    passes.delta_recorded = True


def output_hessian(criterion, passes, y, N):
    """``u ↦ (1/N) H_z l u`` at the recorded outputs z (docs/curvature.md, the Gauss-Newton source), made once per
    :class:`Passes`."""
    if passes.output_hessian is None:
        passes.output_hessian = criterion.output_hessian(passes.z, y, scale=1 / N)
    return passes.output_hessian
