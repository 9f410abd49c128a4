"""ShardedLoss (nn_eos/sharded.py) on a LocalCluster of two worker processes: every quantity against a
TrainingLoss chunked at the shard boundaries (the same sums in the same order: equal), runs through nn_eos.train
the same, and what it refuses."""

import numpy as np
import pytest

import nn_eos as ne
from nn_eos.backend import to_numpy
from nn_eos.sharded import ShardedLoss, shard_bounds

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


def problem(device=None):
    net = ne.mlp([5, 8, 3], activation="tanh", seed=0, device=device)
    rng = np.random.default_rng(0)
    return net, rng.standard_normal((31, 5)), rng.integers(0, 3, 31)


def test_the_shards_are_fixed_by_n_and_s():
    assert shard_bounds(31, 3).tolist() == [0, 11, 21, 31]
    assert shard_bounds(4, 4).tolist() == [0, 1, 2, 3, 4]
    cuts = [len(a) for a in np.array_split(np.arange(31), 3)]
    assert np.diff(shard_bounds(31, 3)).tolist() == cuts


def test_every_quantity_is_the_sum_of_the_shards_shares(client):
    """Three shards on two workers against one process cut at the same boundaries (chunks of 11: 11, 11, 9 is
    not the shards' 11, 10, 10, so the local loss is built from the same pieces): products, gradient and third
    derivatives equal, the value to rounding; the eigenvalues the same."""
    net, X, y = problem()
    sharded = ShardedLoss(net, "cross_entropy", X, y, client, shards=3)
    bounds = shard_bounds(31, 3)
    pieces = [ne.TrainingLoss(net, "cross_entropy", X[a:b], y[a:b], mean_over=31)
              for a, b in zip(bounds[:-1], bounds[1:])]
    V = np.random.default_rng(1).standard_normal((net.num_params, 4))

    def local(method, *args):
        shares = [to_numpy(getattr(piece, method)(*args)) for piece in pieces]
        total = shares[0]
        for share in shares[1:]:
            total = total + share
        return total
    for kind in ("hessian", "ggn", "residual"):
        np.testing.assert_array_equal(to_numpy(sharded.curvature_product(V, kind)), local("curvature_product", V,
                                                                                          kind), kind)
    np.testing.assert_array_equal(to_numpy(sharded.gradient()), local("gradient"))
    np.testing.assert_array_equal(to_numpy(sharded.third(V[:, :2], V[:, 2:])), local("third", V[:, :2], V[:, 2:]))
    np.testing.assert_array_equal(to_numpy(sharded.eigenvalue_gradient(V[:, 0])), local("eigenvalue_gradient",
                                                                                          V[:, 0]))
    whole = ne.TrainingLoss(net, "cross_entropy", X, y)
    assert sharded.value() == pytest.approx(whole.value(), rel=1e-14)
    assert_close = np.testing.assert_allclose
    assert_close(to_numpy(sharded.hvp(V)), to_numpy(whole.hvp(V)), rtol=1e-13, atol=1e-15)
    found = ne.top_eigenpairs(sharded.operator(), 2, method="krylov", tol=1e-10).values
    assert_close(to_numpy(found), to_numpy(ne.top_eigenpairs(whole.operator(), 2, method="krylov",
                                                             tol=1e-10).values), rtol=1e-9)
    lanczos = ne.top_eigenpairs(sharded.linear_operator(), 1, method="lanczos", tol=1e-10).values
    assert_close(to_numpy(lanczos), to_numpy(found[:1]), rtol=1e-8)
    sharded.close()


@pytest.mark.parametrize("integrator", ["gd", "exponential_euler"])
def test_a_sharded_run_is_the_run_of_the_same_sums(client, integrator):
    """nn_eos.train on a ShardedLoss and on one process chunked at the shard boundaries (two shards of 16 and
    chunks of 16): the same θ after three steps, bit for bit, and the same losses."""
    net, X, y = problem()
    X, y = np.concatenate([X, X[:1]]), np.concatenate([y, y[:1]])                     # 32 examples
    theta0 = to_numpy(net.theta).copy()          # set_theta writes into the network's own array

    def run(loss):
        chosen = ne.GradientDescent(0.5) if integrator == "gd" else ne.ExponentialEuler(k=2)
        return ne.train(loss, chosen, max_steps=3, theta=theta0, progress=False)
    sharded = run(ShardedLoss(net, "cross_entropy", X, y, client, shards=2))
    local = run(ne.TrainingLoss(net, "cross_entropy", X, y, chunk_size=16))
    np.testing.assert_array_equal(to_numpy(sharded.theta), to_numpy(local.theta))
    np.testing.assert_allclose(sharded.metrics["loss"], local.metrics["loss"], rtol=1e-14)


def test_what_a_sharded_loss_refuses(client):
    net, X, y = problem()
    with pytest.raises(ValueError, match=r"shards must be an integer in 1\.\.31"):
        ShardedLoss(net, "cross_entropy", X, y, client, shards=32)
    sharded = ShardedLoss(net, "cross_entropy", X, y, client, shards=2)
    with pytest.raises(TypeError, match="minibatch SGD"):
        ne.train(sharded, ne.SGD(0.1, batch_size=4), max_steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown curvature kind"):
        sharded.curvature_product(np.ones(net.num_params), "hessain")
    with pytest.raises(ValueError, match=r"V must have shape \(75,\)"):
        sharded.hvp(np.ones(3))
