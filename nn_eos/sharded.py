"""One training loss over a Dask cluster: its examples cut into S shards, each shard's share of every quantity
computed where the shard lives, the shares summed in shard order (docs/sharded.md).

    L̃(θ) = (1/N) Σ_n l(f(x_n, θ), y_n) = Σ_s [(1/N) Σ_{n ∈ shard s} l(f(x_n, θ), y_n)]

and so for ∇L̃, ∇²L̃ v, G v, H v and ∇³L̃[u, v, ·]: each is a sum over examples, so a shard's share is the
:class:`~nn_eos.curvature.TrainingLoss` of its examples with ``mean_over = N``, exactly as a chunk's is in one
process. The S shards are fixed by N and S (contiguous, as ``numpy.array_split`` cuts them), not by the workers;
the shares come back to the client and are added there in shard order, so a result does not depend on how many
workers there are or which finishes first: with one BLAS thread per worker (Dask's default), a sharded loss and
a TrainingLoss chunked at the shard boundaries give the same numbers.

The core does not import Dask: a ShardedLoss is handed a ``distributed.Client``.
"""

import uuid

import numpy as np

from . import backend
from .criteria import criterion as make_criterion
from .curvature import Loss, TrainingLoss
from .eigen import BlockOperator
from .product import KINDS
from .validation import check_directions, check_integer, check_labels

_SHARDS = {}        # on a worker: (loss key, shard) → the shard's TrainingLoss, kept for warm products at one θ


def shard_bounds(num_examples, shards):
    """The S + 1 boundaries of the shards: contiguous, sizes differing by at most one (numpy.array_split's)."""
    sizes = np.full(shards, num_examples // shards) + (np.arange(shards) < num_examples % shards)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int)


def _shard_loss(key, shard, setup, data):
    """The shard's TrainingLoss on this worker: made from its data the first time, then kept."""
    loss = _SHARDS.get((key, shard))
    if loss is None:
        net, criterion, mean_over, chunk_size, max_memory = setup
        X, y = data
        loss = TrainingLoss(net, criterion, X, y, chunk_size=chunk_size, max_memory=max_memory, mean_over=mean_over)
        _SHARDS[(key, shard)] = loss
    return loss


def _share(key, shard, setup, data, theta, method, *args):
    """One shard's share of ``loss.method(*args, theta=θ)``, as host arrays (a float for the value)."""
    loss = _shard_loss(key, shard, setup, data)
    result = getattr(loss, method)(*args, theta=theta)
    if isinstance(result, tuple):
        return tuple(r if isinstance(r, float) else backend.to_numpy(r) for r in result)
    return result if isinstance(result, float) else backend.to_numpy(result)


def _forget(key):
    for entry in [k for k in _SHARDS if k[0] == key]:
        del _SHARDS[entry]


class ShardedLoss(Loss):
    """``L̃(θ)`` of a network and criterion over ``(X, y)``, its examples in ``shards`` pieces on the workers of
    ``client`` (a ``distributed.Client``): TrainingLoss's interface (value, gradient, hvp, ggn, residual, third,
    eigenvalue_gradient, operator, linear_operator), each result the sum of the shards' shares in shard order
    (module docstring). ``chunk_size`` and ``max_memory`` hold per worker. The data are sent once, each shard to
    one worker (two where there are two: a shard outlives the loss of one worker); θ once per θ; directions once
    per product.
    """

    def __init__(self, net, criterion, X, y, client, shards=2, chunk_size=None, max_memory=None):
        self.net, self.client = net, client
        self.criterion = make_criterion(criterion)
        X = net.check_inputs(X)
        y = np.asarray(backend.to_numpy(check_labels(y, (X.shape[0], *net.positions), net.num_outputs)),
                       dtype=np.int64)
        self.num_examples = X.shape[0]
        self.shards = check_integer(shards, "shards", high=self.num_examples)
        self.chunk_size = check_integer(chunk_size, "chunk_size", optional=True)
        self.max_memory = check_integer(max_memory, "max_memory (bytes)", optional=True)
        self.bounds = shard_bounds(self.num_examples, self.shards)
        self._key = uuid.uuid4().hex
        pieces = [(X[a:b], y[a:b]) for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        self._data = client.scatter(pieces, hash=False)
        workers = len(client.scheduler_info()["workers"])
        if workers > 1:
            client.replicate(self._data, n=2)
        self._setup = client.scatter((net, self.criterion, self.num_examples, self.chunk_size, self.max_memory),
                                     broadcast=True, hash=False)
        self._theta = None          # (θ on the host, its future): sent once per θ

    def __repr__(self):
        return (f"ShardedLoss({self.net!r}, {self.criterion!r}, N={self.num_examples}, shards={self.shards}, "
                f"workers={len(self.client.scheduler_info()['workers'])})")

    @property
    def X_host(self):
        """Not on the client: a ShardedLoss's examples live on the workers."""
        raise TypeError("a ShardedLoss keeps its examples on the workers: minibatch SGD, which draws its batches "
                        "from the data on the client, runs on a TrainingLoss")

    # ----- the shares and their sum ----------------------------------------------------------------------------

    def _theta_future(self, theta):
        """θ (the network's, or the one given) sent to the workers once: the same θ again reuses what was sent."""
        host = backend.to_numpy(self.net.theta if theta is None else self.net.check_theta(theta))
        if self._theta is None or not np.array_equal(self._theta[0], host):
            self._theta = (host.copy(), self.client.scatter(host, broadcast=True, hash=False))
        return self._theta[1]

    def _sum(self, method, theta, *args):
        """Σ_s (shard s's share of ``method``), added in shard order on the client."""
        theta_future = self._theta_future(theta)
        args = [self.client.scatter(a, broadcast=True, hash=False) if isinstance(a, np.ndarray) else a
                for a in args]
        futures = [self.client.submit(_share, self._key, s, self._setup, data, theta_future, method, *args,
                                      key=f"nn-eos-{method}-{self._key}-{s}-{uuid.uuid4().hex}", retries=2,
                                      pure=False)
                   for s, data in enumerate(self._data)]
        shares = self.client.gather(futures)
        total = shares[0]
        for share in shares[1:]:
            total = tuple(a + b for a, b in zip(total, share)) if isinstance(total, tuple) else total + share
        return total

    def _on_device(self, array):
        return backend.to_device(array, self.net.device)

    # ----- TrainingLoss's interface ----------------------------------------------------------------------------

    def value(self, theta=None):
        """``L̃(θ)``, a Python float."""
        return float(self._sum("value", theta))

    def value_and_gradient(self, theta=None):
        value, gradient = self._sum("value_and_gradient", theta)
        return float(value), self._on_device(gradient)

    def gradient(self, theta=None):
        return self.value_and_gradient(theta)[1]

    def curvature_product(self, V, kind, theta=None):
        """``M v`` for M = ∇²L̃, G or H (TrainingLoss.curvature_product), V (P,) or (P, k)."""
        if kind not in KINDS:
            raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
        V, _ = check_directions(V, self.net.num_params)
        return self._on_device(self._sum("curvature_product", theta, backend.to_numpy(V), kind))

    def third(self, U, V=None, theta=None):
        """``∇³L̃[u, v, ·]`` (TrainingLoss.third)."""
        U, _ = check_directions(U, self.net.num_params, name="u")
        if V is not None:
            V = backend.to_numpy(check_directions(V, self.net.num_params, name="v")[0])
        return self._on_device(self._sum("third", theta, backend.to_numpy(U), V))

    def eigenvalue_gradient(self, U, theta=None):
        U, _ = check_directions(U, self.net.num_params, name="u")
        return self._on_device(self._sum("eigenvalue_gradient", theta, backend.to_numpy(U)))

    def operator(self, kind="hessian", theta=None):
        """``V ↦ A V`` at θ (copied) as a BlockOperator, for the eigensolvers (TrainingLoss.operator)."""
        if kind not in KINDS:
            raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
        theta = (self.net.theta if theta is None else self.net.check_theta(theta)).copy()
        return BlockOperator(lambda V: self.curvature_product(V, kind, theta), like=theta)

    def linear_operator(self, kind="hessian", theta=None):
        """A ``scipy.sparse.linalg.LinearOperator`` (``cupyx`` on the GPU) of ∇²L̃, G or H at θ (copied)."""
        operator = self.operator(kind, theta)
        linalg = backend.scipy_linalg_module(self.net.xp)
        P = self.net.num_params
        linear = linalg.LinearOperator((P, P), matvec=operator.matmat, rmatvec=operator.matmat,
                                       matmat=operator.matmat, rmatmat=operator.matmat, dtype=self.net.dtype)
        linear.xp = self.net.xp
        return linear

    def close(self):
        """Drop the shards' losses the workers keep (their records of the passes at the last θ)."""
        self.client.run(_forget, self._key)
