"""The training loss L̃(θ) over a dataset, its gradient, and exact curvature products.

    L̃(θ) = (1/N) Σ_n l(f(x_n, θ), y_n)                       (2024 paper, section 2.1)
    ∇²L̃ = G + H                                               (2024 paper, eq. 2)
    G v  = E[(∂f/∂θ)ᵀ H_z l (∂f/∂θ)] v        the Gauss-Newton product      ``ggn``
    H v  = E[Σ_q ∂l/∂z_q ∂²f_q/∂θ²] v          the residual ∇²L̃ v − G v     ``residual``
    ∇²L̃ v                                     the Hessian-vector product    ``hvp``
    ∇³L̃[u, v, ·]                              the third derivative          ``third`` (docs/third.md)

All three come out of one forward pass, (for ``hvp`` and ``residual``) one
backward pass that records δ at every layer, one R-forward pass and one
R-backward pass, shared by a whole block of k directions: the function
:func:`nn_eos.product.curvature_product`, which every product here runs
(docs/curvature.md). The R-backward pass is linear in its sources, which are

    R{δ^L} = (1/N) H_z l · R{z}         at the output (the Gauss-Newton source)
    δᵀ R{x}, δ V_A, g ⊙ σ'' ⊙ R{x̂}      inside the layers (second-order sources)

so ``ggn`` keeps only the first, ``residual`` only the second, and ``hvp``
both. ``residual`` is therefore computed directly, not as a difference.

Examples are processed in chunks of ``chunk_size`` (all at once by default),
each chunk contributing its share of the mean; the results do not depend on
the chunking beyond rounding.

With one chunk, the forward and backward passes are shared between calls at
the same θ: an eigensolver's products all run at one θ (and an integrator's
eigensolve at the θ of its gradient), so every call after the first starts
from the R-forward pass. The loss owns the record of those passes (the layers'
caches, which it never hands out), and reuses it only at the same θ (equal
value for value), device, dtype and layers: nothing outside the loss can make
it stale.
"""

from dataclasses import dataclass

import numpy as np

from . import backend, memory, product, third_order
from .criteria import criterion as make_criterion
from .eigen import BlockOperator
from .product import KINDS
from .validation import check_directions, check_integer, check_labels


@dataclass
class _Kept:
    """The forward (and backward) :class:`~nn_eos.product.Passes` over the whole dataset at one θ, kept for the
    products after it, with what tells whether a later call is at the same point."""

    passes: product.Passes
    theta: object        # a copy of the θ they ran at, or an operator's frozen θ (TrainingLoss.operator)
    frozen: bool         # θ is an operator's private copy, recognised by identity
    placement: tuple     # (device, dtype, layers) of the network they ran through


class Loss:
    """What a training loss offers through its network and its ``curvature_product`` alone: the array module, dtype
    and size of θ, and the three products by name. :class:`TrainingLoss` and
    :class:`~nn_eos.sharded.ShardedLoss` are both this."""

    @property
    def xp(self):
        """The array module (numpy, cupy) of every array this loss returns: its network's."""
        return self.net.xp

    @property
    def dtype(self):
        return self.net.dtype

    @property
    def num_params(self):
        return self.net.num_params

    def hvp(self, V, theta=None):
        """Hessian-vector products ``∇²L̃ v`` (2024 paper, eq. 2, left side) for V (P,) or (P, k)."""
        return self.curvature_product(V, "hessian", theta)

    def ggn(self, V, theta=None):
        """Gauss-Newton products ``G v = E[Jᵀ H_z l J] v`` (2024 paper, eq. 2) for V (P,) or (P, k)."""
        return self.curvature_product(V, "ggn", theta)

    def residual(self, V, theta=None):
        """Residual products ``H v = ∇²L̃ v − G v`` (2024 paper, eq. 2) for V (P,) or (P, k)."""
        return self.curvature_product(V, "residual", theta)


class TrainingLoss(Loss):
    """``L̃(θ)`` of a network and criterion over a dataset ``(X, y)``.

    Every method evaluates at the network's own θ, or at ``theta=`` when given
    (the network's θ is left untouched). ``mean_over``: the N of the mean (1/N) Σ_n, by default the number of
    examples given; a shard of a larger dataset (:class:`~nn_eos.sharded.ShardedLoss`) sets the whole dataset's
    N, so that its value, gradient and products are its share of the whole mean, as a chunk's are.
    """

    def __init__(self, net, criterion, X, y, chunk_size=None, max_memory=None, mean_over=None):
        self.net = net
        self.criterion = make_criterion(criterion)
        X = net.check_inputs(X)
        labels = check_labels(y, (X.shape[0], *net.positions), net.num_outputs)
        self.y_host = np.asarray(backend.to_numpy(labels), dtype=np.int64)
        self.X_host = X
        self.chunk_size = check_integer(chunk_size, "chunk_size", optional=True)
        self._max_memory = check_integer(max_memory, "max_memory (bytes)", optional=True)
        self.mean_over = check_integer(mean_over, "mean_over", optional=True) or self.num_examples
        self._default_budget = None
        self._placed = None
        self._kept = None

    def __repr__(self):
        return (f"TrainingLoss({self.net!r}, {self.criterion!r}, N={self.num_examples}, "
                f"chunk_size={self.chunk_size}, max_memory={self.max_memory / 2**30:.2f} GiB"
                f"{'' if self._max_memory is not None else ' (default)'})")

    @property
    def num_examples(self):
        return self.X_host.shape[0]

    # ----- data on the network's device and dtype ---------------------------

    def _data(self):
        """(X, y) on the network's device and in its dtype (moved once, again after net.to)."""
        key = (self.net.device, self.net.dtype)
        if self._placed is None or self._placed[0] != key:
            X = self.net.inputs(self.X_host)
            y = backend.to_device(self.y_host, self.net.device)
            self._placed = (key, X, y)
        return self._placed[1], self._placed[2]

    def chunks(self, size=None):
        """(X_c, y_c) pieces of at most ``size`` examples (default: as many as a gradient may hold within
        max_memory, or chunk_size)."""
        X, y = self._data()
        step = size or self.plan(0).examples
        for start in range(0, len(y), step):
            yield X[start:start + step], y[start:start + step]

    # ----- memory ---------------------------------------------------------------

    @property
    def max_memory(self):
        """Bytes a product may use: as given, else ``memory.DEFAULT_FRACTION`` of the memory free on the
        network's device when first asked (host memory on the CPU, GPU memory on CuPy)."""
        if self._max_memory is not None:
            return self._max_memory
        if self._default_budget is None or self._default_budget[0] != self.net.device:
            free = memory.available_memory(self.net.xp)
            self._default_budget = (self.net.device, int(memory.DEFAULT_FRACTION * free))
        return self._default_budget[1]

    def plan(self, k):
        """How a product of k directions is split to fit ``max_memory``: a :class:`~nn_eos.memory.Plan`
        (examples per chunk, directions per block); k = 0 for a gradient."""
        cost = memory.product_cost(self.net)
        return memory.plan(cost, self.num_examples, k, self.max_memory, examples=self.chunk_size)

    # ----- value and gradient -------------------------------------------------

    def value(self, theta=None):
        """``L̃(θ) = (1/N) Σ_n l(f(x_n, θ), y_n)``, a Python float."""
        total = 0.0
        with self.net.using(theta):
            for Xc, yc in self.chunks():
                total += float(self.criterion.value(self.net.forward(Xc), yc).sum())
        return total / self.mean_over

    def value_and_gradient(self, theta=None):
        """``(L̃(θ), ∇L̃(θ))``: one forward and one backward pass per chunk.

        The backward pass starts from ``δ^L = (1/N) ∂l/∂z`` (docs/curvature.md).
        """
        net, N, examples = self.net, self.mean_over, self.plan(0).examples
        whole = examples >= self.num_examples
        grad = net.xp.zeros(net.num_params, dtype=net.dtype)
        chunk_grad = grad if whole else net.xp.empty_like(grad)
        total = 0.0
        with net.using(theta):
            for Xc, yc in self.chunks(examples):
                passes = product.forward_pass(net, Xc)
                total += float(self.criterion.value(passes.z, yc).sum())
                product.backward_pass(net, self.criterion, passes, yc, N, grad=chunk_grad)
                if chunk_grad is not grad:
                    grad += chunk_grad
            self._keep(passes, theta, whole=whole)
        return total / N, grad

    def gradient(self, theta=None):
        """``∇L̃(θ)`` as a flat (P,) array."""
        return self.value_and_gradient(theta)[1]

    # ----- curvature products -------------------------------------------------

    def third(self, U, V=None, theta=None):
        """``∇³L̃[u, v, ·] = d/dε ∇²L̃(θ + εu) v`` (docs/third.md) for u, v (P,) or the column pairs of U, V (P, k);
        ``V=None`` takes v = u. Runs its own six passes (it shares none with the products)."""
        return third_order.third_derivative(self, U, V, theta)

    def eigenvalue_gradient(self, U, theta=None):
        """``∇λ = ∇³L̃[u, u, ·] / ‖u‖²`` for eigenvectors u of ∇²L̃ with simple eigenvalues λ (docs/third.md): the
        gradient of the sharpness λ₁ when u is the top eigenvector."""
        return third_order.eigenvalue_gradient(self, U, theta)

    def curvature_product(self, V, kind, theta=None):
        """``M v`` for M one of ∇²L̃ ('hessian'), G ('ggn') or H ('residual'), for V (P,) or (P, k).

        :func:`nn_eos.product.curvature_product` per chunk of examples and block of directions (the plan that
        fits ``max_memory``), starting from the forward and backward passes a call before it left at this θ.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
        V, was_vector = check_directions(V, self.net.num_params)
        return self._product(V, was_vector, kind, theta)

    def _product(self, V, was_vector, kind, theta, frozen=False):
        """curvature_product for checked directions. ``frozen``: θ is an operator's private copy, never
        changed, so the passes it left can be recognised by identity (no comparison of P numbers per call)."""
        net, N = self.net, self.mean_over
        V = backend.to_device(V, net.device).astype(net.dtype, copy=False)
        xp = net.xp
        Vk = V[None, :] if was_vector else xp.ascontiguousarray(V.T)  # (k, P): row j is direction j
        out = xp.empty_like(Vk)
        split = self.plan(len(Vk))
        whole = split.examples >= self.num_examples
        with net.using(theta, checked=frozen):
            for j in range(0, len(Vk), split.directions):            # blocks of directions, to fit max_memory
                block_out = out[j:j + split.directions]
                chunk_out = block_out if whole else xp.empty_like(block_out)
                if not whole:
                    block_out[...] = 0
                for Xc, yc in self.chunks(split.examples):
                    passes = self._passes(Xc, theta, frozen, whole)
                    product.curvature_product(net, self.criterion, Xc, yc, Vk[j:j + split.directions], kind, N=N,
                                              passes=passes, out=chunk_out)
                    if not whole:
                        block_out += chunk_out
        return out[0] if was_vector else out.T

    def _passes(self, Xc, theta, frozen, whole):
        """The forward (and backward) passes at θ over X_c: those kept from an earlier call over all examples when
        they ran at this θ, else a new forward pass (kept when it covers all examples)."""
        kept = self._kept if whole else None
        if kept is None or not self._still_valid(kept, theta, frozen):
            kept = self._keep(product.forward_pass(self.net, Xc), theta, frozen=frozen, whole=whole)
        return kept.passes

    def _placement(self):
        return (self.net.device, self.net.dtype, tuple(map(id, self.net.layers)))

    def _still_valid(self, kept, theta, frozen):
        """Whether kept passes ran at this θ (value for value; by identity for an operator's frozen θ),
        on this device and dtype, through these layers."""
        if kept.placement != self._placement():
            return False
        if frozen and kept.frozen and kept.theta is theta:
            return True
        same = bool(self.net.xp.array_equal(kept.theta, self._theta_in_effect(theta)))
        if same and frozen:
            kept.theta, kept.frozen = theta, True    # the operator's next products need no comparison
        return same

    def _theta_in_effect(self, theta):
        return self.net.theta if theta is None else self.net.check_theta(theta, scan=False)

    def _keep(self, passes, theta, whole, frozen=False):
        """Keep passes over the whole dataset (in one chunk) for the products after them at the same θ."""
        kept = _Kept(passes=passes, theta=theta if frozen else self._theta_in_effect(theta).copy(), frozen=frozen,
                     placement=self._placement())
        self._kept = kept if whole else None
        return kept

    def operator(self, kind="hessian", theta=None):
        """``V ↦ A V`` for A = ∇²L̃ ('hessian'), G ('ggn') or H ('residual') at θ, as an
        :class:`~nn_eos.eigen.BlockOperator` (size, dtype, array module) for :func:`~nn_eos.eigen.top_eigenpairs`.

        θ is copied, so the operator stays fixed if the network's parameters change later.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
        theta = (self.net.theta if theta is None else self.net.check_theta(theta)).copy()
        def matmat(V):
            V, was_vector = check_directions(V, self.net.num_params, scan=False)
            return self._product(V, was_vector, kind, theta, frozen=True)

        return BlockOperator(matmat, like=theta)

    def linear_operator(self, kind="hessian", theta=None):
        """A ``scipy.sparse.linalg.LinearOperator`` (``cupyx`` on the GPU) of ∇²L̃, G or H.

        ``matmat`` sends the whole block through one pass. θ is copied, so the
        operator stays fixed if the network's parameters change later.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
        theta = (self.net.theta if theta is None else self.net.check_theta(theta)).copy()
        linalg = backend.scipy_linalg_module(self.net.xp)
        P = self.net.num_params

        def matmat(V):
            return self.curvature_product(V, kind, theta)

        operator = linalg.LinearOperator((P, P), matvec=matmat, rmatvec=matmat, matmat=matmat,
                                         rmatmat=matmat, dtype=self.net.dtype)
        operator.xp = self.net.xp       # the array module of its answers, which eigen.top_eigenpairs works in
        return operator
