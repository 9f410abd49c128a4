"""Criteria ``l(z, y)``: value, ``∂l/∂z``, ``H_z l · u``, ``√H = sqrt(H_z l)`` (docs/passes.md, "Criteria") and the
third derivative ``∂³l[a, b, ·]`` (docs/third.md).

All functions work per example on a batch: ``z`` has shape (n, O), ``y`` holds
integer labels (n,). Directions ``u`` carry a leading axis: (k, n, O).

An example may have outputs at several positions — a sequence's tokens, ``z``
(n, T, O) with labels (n, T) — and then its criterion is the mean over its
positions, ``l(z, y) = (1/T) Σ_t l(z_t, y_t)``, so that L̃ is the mean over all
n·T tokens (PyTorch's ``cross_entropy`` on the flattened tokens). Every
derivative below is then the per-position one divided by T (:func:`positions`).
"""

import numpy as np

from .backend import array_module
from .validation import check_labels


def one_hot_mask(z, columns):
    """(n, …, O) booleans, True at entry ``columns[i, …]`` of the last axis (masks, not fancy indexing: on a device
    each indexed read or write is a gather or scatter of its own)."""
    return array_module(z).arange(z.shape[-1]) == columns[..., None]


def label_mask(z, y):
    """:func:`one_hot_mask` of the labels y. Labels given as a host array are checked to lie in 0..O−1 (an error
    naming them, not a wrong number); labels on a device were checked where they were moved there
    (TrainingLoss), since a check here would wait for the device."""
    if isinstance(y, np.ndarray):
        check_labels(y, z.shape[:-1], z.shape[-1])
    return one_hot_mask(z, y)


def positions(z):
    """T, the positions of one example's outputs z (n, …, O): 1 for (n, O), the tokens of a sequence (n, T, O)."""
    return int(np.prod(z.shape[1:-1]))


def per_example(l):
    """The mean over each example's positions of a per-position criterion (n, …): (n,)."""
    return l.reshape(l.shape[0], -1).mean(axis=1)


def block_diagonal(h):
    """Per-position O×O blocks h (n, …, O, O) as one (n, M, M) matrix per example, M = T·O the example's
    outputs in z.reshape(n, −1) order."""
    xp = array_module(h)
    n, T, O = h.shape[0], positions(h[..., 0]), h.shape[-1]
    blocks = h.reshape(n, T, O, O)
    return xp.einsum("ntab,ts->ntasb", blocks, xp.eye(T, dtype=h.dtype)).reshape(n, T * O, T * O)


class Criterion:
    name = None

    def __repr__(self):
        return f"{type(self).__name__}()"

    def value(self, z, y):
        """Per-example criterion l(z, y), shape (n,)."""
        raise NotImplementedError

    def gradient(self, z, y):
        """∂l/∂z per example, shape of z: (n, O) or (n, …, O)."""
        raise NotImplementedError

    def hessian_product(self, z, y, u):
        """``H_z l · u`` per example and direction, u of shape (k, *z.shape)."""
        raise NotImplementedError

    def output_hessian(self, z, y, scale=1.0):
        """``u ↦ scale · H_z l · u`` with what depends on z alone computed once, for the many products at one z
        (a curvature operator's: every product of an eigensolve)."""
        return lambda u: scale * self.hessian_product(z, y, u)

    def hessian(self, z, y):
        """``H_z l`` per example, shape (n, M, M) with M = T·O the example's outputs in z.reshape(n, −1) order
        (block diagonal over positions)."""
        raise NotImplementedError

    def third_product(self, z, y, a, b):
        """``∂³l[a, b, ·]`` per example and pair of directions, a and b of shape (k, n, O) (docs/third.md)."""
        raise NotImplementedError(f"{type(self).__name__} defines no third_product (∂³l[a, b, ·]), which third "
                                  f"derivatives need: docs/third.md")

    def sqrt_hessian(self, z, y):
        """``√H = sqrt(H_z l)`` at (z, y), the symmetric PSD square root of ``H_z l`` (the 2024 paper's R, section
        2.2).

        Computed from the eigendecomposition ``H_z l = Q diag(μ) Qᵀ`` of each O×O
        matrix as ``√H = Q diag(√μ) Qᵀ``; eigenvalues that round to tiny negatives
        are clipped to zero first (``H_z l`` is PSD since l is convex in z).
        """
        xp = array_module(z)
        mu, Q = xp.linalg.eigh(self.hessian(z, y))
        return (Q * xp.sqrt(xp.clip(mu, 0, None))[:, None, :]) @ Q.transpose(0, 2, 1)


class CrossEntropy(Criterion):
    """Softmax cross-entropy, with ``p = softmax(z)``::

        l = −log p_y      ∂l/∂z = p − e_y      H_z l = diag(p) − p pᵀ

    per position, each divided by T for a sequence of T positions (module docstring).
    """

    name = "cross_entropy"
    default_target_loss = 0.01  # the 2024 paper trains to this loss

    @staticmethod
    def softmax(z):
        # subtract the row maximum so that exp never overflows
        xp = array_module(z)
        e = xp.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def value(self, z, y):
        """``l = log Σ_q e^{z_q} − z_y = (m − z_y) + log1p(Σ_{q ≠ argmax} e^{z_q − m})``, m = max_q z_q.

        Taking the maximum out keeps exp from overflowing; log1p of the other
        terms (the argmax term is exactly 1) keeps l accurate when the softmax
        saturates and l is tiny.
        """
        xp = array_module(z)
        top = one_hot_mask(z, z.argmax(axis=-1))
        m = z.max(axis=-1)
        others = xp.where(top, 0, xp.exp(z - m[..., None])).sum(axis=-1)
        return per_example((m - xp.where(label_mask(z, y), z, 0).sum(axis=-1)) + xp.log1p(others))

    def gradient(self, z, y):
        """``p − e_y``; the entry y is computed as ``−Σ_{q≠y} p_q``, exact when p_y ≈ 1."""
        xp = array_module(z)
        label = label_mask(z, y)
        p = xp.where(label, 0, self.softmax(z))
        return xp.where(label, -p.sum(axis=-1, keepdims=True), p) / positions(z)

    def hessian_product(self, z, y, u):
        """``H_z l u = p ⊙ u − p (pᵀu)`` (:meth:`output_hessian`)."""
        return self.output_hessian(z, y)(u)

    def output_hessian(self, z, y, scale=1.0):
        """``u ↦ scale · (p ⊙ u − p (pᵀu))``, p = softmax(z) computed once for every u.

        ``H_z l 1 = 0``, so u is first shifted by its entry at the argmax of p:
        then pᵀu is a sum of small terms when the softmax saturates (p_max ≈ 1)
        rather than a number close to u_max that ``u − pᵀu`` cancels, which
        keeps float32 products accurate late in training.
        """
        p = self.softmax(z)
        top = one_hot_mask(z, z.argmax(axis=-1)).astype(z.dtype)
        scale = scale / positions(z)

        def product(u):
            u = u - (u * top).sum(axis=-1, keepdims=True)
            return scale * (p * u - p * (p * u).sum(axis=-1, keepdims=True))
        return product

    def hessian(self, z, y):
        xp = array_module(z)
        p = self.softmax(z)[..., None]                                                    # (n, …, O, 1)
        per_position = p * xp.eye(z.shape[-1], dtype=z.dtype) - p * p.swapaxes(-1, -2)
        return block_diagonal(per_position / positions(z))

    def third_product(self, z, y, a, b):
        """``∂³l[a, b, ·] = H_z l · ((a − pᵀa) ⊙ (b − pᵀb))``, the third cumulant of the softmax (docs/third.md).

        a and b are first shifted by their entry at the argmax of p, which changes nothing (the centring removes
        any constant) and, as in :meth:`output_hessian`, keeps pᵀa free of cancellation when p saturates.
        """
        p = self.softmax(z)
        top = one_hot_mask(z, z.argmax(axis=-1)).astype(z.dtype)

        def centred(u):
            u = u - (u * top).sum(axis=-1, keepdims=True)
            return u - (p * u).sum(axis=-1, keepdims=True)
        return self.output_hessian(z, y)(centred(a) * centred(b))


class MSE(Criterion):
    """Mean squared error against one-hot targets (PyTorch's ``mse_loss`` convention)::

        l = (1/O) Σ_q (z_q − e_{y,q})²      ∂l/∂z = (2/O)(z − e_y)      H_z l = (2/O) I

    with O the outputs of one example (M = T·O for a sequence: the mean over all of them).
    """

    name = "mse"
    default_target_loss = 0.02  # the 2024 paper trains to this loss

    @staticmethod
    def one_hot(z, y):
        """e_y as an (n, O) array of z's dtype."""
        return label_mask(z, y).astype(z.dtype)

    @staticmethod
    def outputs(z):
        """O: the outputs of one example (T·O for a sequence)."""
        return positions(z) * z.shape[-1]

    def value(self, z, y):
        r = z - self.one_hot(z, y)
        return per_example((r * r).mean(axis=-1))

    def gradient(self, z, y):
        return (2.0 / self.outputs(z)) * (z - self.one_hot(z, y))

    def hessian_product(self, z, y, u):
        return (2.0 / self.outputs(z)) * u

    def output_hessian(self, z, y, scale=1.0):
        """``u ↦ scale · (2/O) u``: one device operation a product."""
        factor = scale * 2.0 / self.outputs(z)
        return lambda u: factor * u

    def hessian(self, z, y):
        xp = array_module(z)
        M = self.outputs(z)
        return xp.broadcast_to((2.0 / M) * xp.eye(M, dtype=z.dtype), (z.shape[0], M, M)).copy()

    def third_product(self, z, y, a, b):
        """``∂³l = 0``: l is quadratic in z."""
        return array_module(z).zeros(a.shape, dtype=z.dtype)


CRITERIA = {cls.name: cls for cls in (CrossEntropy, MSE)}


def criterion(name):
    """A criterion from its name ('cross_entropy' or 'mse') or an instance."""
    if isinstance(name, Criterion):
        return name
    if not isinstance(name, str):
        raise TypeError(f"criterion must be a Criterion or one of {sorted(CRITERIA)}, got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    key = {"ce": "cross_entropy", "crossentropy": "cross_entropy"}.get(key, key)
    try:
        return CRITERIA[key]()
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; expected one of {sorted(CRITERIA)}") from None
