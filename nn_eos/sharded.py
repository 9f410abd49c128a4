"""One training loss over a Dask cluster: its examples cut into S shards, each shard's share of every quantity
computed where the shard lives, the shares summed in shard order (docs/sharded.md).

    L̃(θ) = (1/N) Σ_n l(f(x_n, θ), y_n) = Σ_s [(1/N) Σ_{n ∈ shard s} l(f(x_n, θ), y_n)]

and so for ∇L̃, ∇²L̃ v, G v, H v and ∇³L̃[u, v, ·]: each is a sum over examples, so a shard's share is the
:class:`~nn_eos.curvature.TrainingLoss` of its examples with ``mean_over = N``, exactly as a chunk's is in one
process. The S shards are fixed by N and S (contiguous, as ``numpy.array_split`` cuts them), not by the workers;
the shares come back to the client and are added there in shard order, so a result does not depend on how many
workers there are or which finishes first: each share runs on one BLAS thread (threadpoolctl, whatever the
worker's environment), so a sharded loss and a TrainingLoss chunked at the shard boundaries in one process on one
BLAS thread give the same numbers.

A worker lost in the middle of a product costs the product, never its sum: Dask runs the lost shard's share
again on a worker that has its examples (a second copy, or — for shards loaded by the workers — the shard loaded
again), a shard whose every copy is gone is sent again from the client, and the sum is taken only of all S
shares. A share that kills every worker it runs on stops the product with one line naming the shard and the last
worker (docs/sharded.md, "Faults").

The core does not import Dask at module level: a ShardedLoss is handed a ``distributed.Client``, and a product
imports Dask's ``KilledWorker`` to recognise a share that killed its workers.
"""

import uuid
import warnings
from concurrent.futures import CancelledError

import numpy as np

from . import backend
from .criteria import criterion as make_criterion
from .curvature import Loss, TrainingLoss
from .eigen import BlockOperator
from .product import KINDS
from .validation import check_directions, check_integer, check_labels

_SHARDS = {}        # on a worker: (loss key, shard) → the shard's TrainingLoss, kept for warm products at one θ
_BLAS = None        # on a worker: its threadpoolctl controller


def shard_bounds(num_examples, shards):
    """The S + 1 boundaries of the shards: contiguous, sizes differing by at most one (numpy.array_split's)."""
    sizes = np.full(shards, num_examples // shards) + (np.arange(shards) < num_examples % shards)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int)


def _shard_loss(key, shard, setup, data):
    """The shard's TrainingLoss on this worker: made from its data the first time, then kept."""
    loss = _SHARDS.get((key, shard))
    if loss is None:
        net, criterion, mean_over, chunk_size, max_memory = setup
        X, y = map(_own, data)          # the loss's own copy (so a worker holds its shard twice: see _own)
        loss = TrainingLoss(net, criterion, X, y, chunk_size=chunk_size, max_memory=max_memory, mean_over=mean_over)
        _SHARDS[(key, shard)] = loss
    return loss


def _one_blas_thread():
    """One BLAS thread on this worker for the share (whatever its environment says), so that a share's bits do
    not depend on the machine it lands on; threadpoolctl's controller is made once per worker."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _own(array):
    """A fresh copy of an array that came over the network. Dask hands a worker its arrays as views of the
    message's buffer (read-only, wherever they landed), and the layers compute on views of θ and V; on those,
    a transformer's shares came out different in the last bits from the same shares in one process (measured;
    tests/test_sharded.py), and on copies the same. So a worker computes on arrays it allocated, as a process
    does."""
    return array.copy() if isinstance(array, np.ndarray) else array


def _share(key, shard, setup, data, theta, method, *args):
    """One shard's share of ``loss.method(*args, theta=θ)``, as host arrays (a float for the value)."""
    loss = _shard_loss(key, shard, setup, data)
    with _one_blas_thread():
        result = getattr(loss, method)(*map(_own, args), theta=_own(theta))
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
    per product. :meth:`from_loader` (and ``nn_eos.experiments.config.sharded_loss``, from a run's config) loads
    the shards on the workers instead. ``direct``: the client sends to and gathers from the workers itself; through
    the scheduler every byte crosses twice (measured on the aim case of docs/benchmarks.md: 965 MiB a block
    instead of 567, and 4–8 % more time); ``False`` where the client reaches only the scheduler.
    """

    def __init__(self, net, criterion, X, y, client, shards=2, chunk_size=None, max_memory=None, direct=True):
        X = net.check_inputs(X)
        y = np.asarray(backend.to_numpy(check_labels(y, (X.shape[0], *net.positions), net.num_outputs)),
                       dtype=np.int64)
        self._begin(net, criterion, X.shape[0], client, shards, chunk_size, max_memory, direct)
        self._pieces = [(X[a:b], y[a:b]) for a, b in self._ranges()]   # the caller's arrays, to send a lost shard
        self._load, self._holders = None, {}
        self._data = [self._send(s) for s in range(self.shards)]

    @classmethod
    def from_loader(cls, net, criterion, num_examples, load, client, shards=2, chunk_size=None, max_memory=None,
                    direct=True):
        """A sharded loss whose shards load their own examples on the workers: ``load(start, stop)`` (a function
        the workers can import, or a ``functools.partial`` of one) returns ``(X, y)`` of examples start..stop−1 of
        the N = ``num_examples``. The data never pass through the client, and a shard lost with its worker is
        loaded again on another by Dask."""
        loss = cls.__new__(cls)
        loss._begin(net, criterion, check_integer(num_examples, "num_examples"), client, shards, chunk_size,
                    max_memory, direct)
        loss._pieces, loss._load, loss._holders = None, load, {}
        loss._data = [loss._send(s) for s in range(loss.shards)]
        return loss

    def _begin(self, net, criterion, num_examples, client, shards, chunk_size, max_memory, direct):
        self.net, self.client, self.direct = net, client, bool(direct)
        self.criterion = make_criterion(criterion)
        self.num_examples = num_examples
        self.shards = check_integer(shards, "shards", high=self.num_examples)
        self.chunk_size = check_integer(chunk_size, "chunk_size", optional=True)
        self.max_memory = check_integer(max_memory, "max_memory (bytes)", optional=True)
        self.bounds = shard_bounds(self.num_examples, self.shards)
        self._key = uuid.uuid4().hex
        self._setup = None
        self._theta = None          # (θ on the host, its future): sent once per θ

    def __repr__(self):
        return (f"ShardedLoss({self.net!r}, {self.criterion!r}, N={self.num_examples}, shards={self.shards}, "
                f"workers={len(self.client.scheduler_info()['workers'])})")

    @property
    def X_host(self):
        """Not on the client: a ShardedLoss's examples live on the workers."""
        raise TypeError("a ShardedLoss keeps its examples on the workers: minibatch SGD, which draws its batches "
                        "from the data on the client, runs on a TrainingLoss")

    # ----- what the workers hold -------------------------------------------------------------------------------

    def _ranges(self):
        return list(zip(self.bounds[:-1].tolist(), self.bounds[1:].tolist()))

    def _send(self, shard):
        """Shard s's examples on the workers: scattered (to two workers where there are two) or loaded there."""
        if self._load is not None:
            return self.client.submit(self._load, *self._ranges()[shard], pure=False,
                                      key=f"nn-eos-shard-{self._key}-{shard}-{uuid.uuid4().hex}")
        [future] = self.client.scatter([self._pieces[shard]], hash=False, direct=self.direct)
        if len(self.client.scheduler_info()["workers"]) > 1:
            self.client.replicate([future], n=2)
        self._holders[shard] = self.client.who_has([future]).get(future.key, ())
        return future

    def _send_lost(self):
        """Send again what the cluster lost with its workers (Dask cancels a future whose every copy is gone):
        the shared setup, θ, and each lost shard — from the client's arrays, with a warning naming the workers
        that held it, or loaded again where the shards load themselves."""
        if self._setup is None or self._setup.status == "cancelled":
            [self._setup] = self.client.scatter([(self.net, self.criterion, self.num_examples, self.chunk_size,
                                                  self.max_memory)], broadcast=True, hash=False,
                                                direct=self.direct)
        if self._theta is not None and self._theta[1].status == "cancelled":
            self._theta = None
        for s, future in enumerate(self._data):
            if future.status == "cancelled":
                if self._pieces is not None:
                    lost = ", ".join(self._holders[s]) or "its workers"
                    warnings.warn(f"shard {s} of {self.shards} was lost with {lost}: sent again from the client",
                                  RuntimeWarning, stacklevel=4)
                self._data[s] = self._send(s)

    # ----- the shares and their sum ----------------------------------------------------------------------------

    def _theta_future(self, theta):
        """θ (the network's, or the one given) sent to the workers once: the same θ again reuses what was sent."""
        host = backend.to_numpy(self.net.theta if theta is None else self.net.check_theta(theta))
        if self._theta is None or not np.array_equal(self._theta[0], host):
            self._theta = (host.copy(), self.client.scatter(host, broadcast=True, hash=False,
                                                                direct=self.direct))
        return self._theta[1]

    def _sum(self, method, theta, *args, attempts=3):
        """Σ_s (shard s's share of ``method``), added in shard order on the client once all S shares are in.

        A share lost with its worker is run again by Dask where the shard still is (or is loaded again); a shard
        lost with every copy cancels the product, which then runs again from what :meth:`_send_lost` sends
        (``attempts`` times in all). A share that kills every worker it runs on raises one line naming them."""
        from distributed.scheduler import KilledWorker

        for _ in range(attempts):
            self._send_lost()
            theta_future = self._theta_future(theta)
            sent = [self.client.scatter(a, broadcast=True, hash=False, direct=self.direct)
                    if isinstance(a, np.ndarray) else a for a in args]
            futures = [self.client.submit(_share, self._key, s, self._setup, data, theta_future, method, *sent,
                                          key=f"nn-eos-{method}-{self._key}-{s}-{uuid.uuid4().hex}", pure=False)
                       for s, data in enumerate(self._data)]
            try:
                shares = self.client.gather(futures, direct=self.direct)
            except CancelledError:
                continue                               # a shard, θ or V lost with every copy: send it and run again
            except KilledWorker as error:
                shard = next(s for s, f in enumerate(futures) if f.key == error.task)
                raise RuntimeError(f"{method} on shard {shard} of {self.shards}: {error.allowed_failures + 1} "
                                   f"worker(s) died running it, the last {error.last_worker.address} (out of "
                                   f"memory? give the workers more, or set max_memory or chunk_size, or use more "
                                   f"shards)") from None
            total = shares[0]
            for share in shares[1:]:
                total = tuple(a + b for a, b in zip(total, share)) if isinstance(total, tuple) else total + share
            return total
        raise RuntimeError(f"{method}: the cluster lost the shards' data in each of {attempts} attempts; is it "
                           f"losing workers? ({len(self.client.scheduler_info()['workers'])} now)")

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
