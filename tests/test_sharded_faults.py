"""A ShardedLoss (nn_eos/sharded.py) when workers die in the middle of a product: the product comes back with the
same numbers — from a second copy of the shard, from the client's arrays, or from the shard loaded again — or
stops with one line naming the worker; never a sum of some of the shards. Each test kills worker processes
(SIGKILL) of its own LocalCluster while the shares are running."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import nn_eos as ne
from nn_eos.backend import to_numpy
from nn_eos.sharded import ShardedLoss, shard_bounds

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


def cluster(workers=2, allowed_failures=3):
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", worker_dashboard_address=":0")


def problem():
    """A net and data whose hvp of 8 directions takes about a second a shard on one thread: long enough to kill a
    worker while its share runs."""
    net = ne.mlp([20, 384, 384, 4], activation="tanh", seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((3000, 20)), rng.integers(0, 4, 3000)
    return net, X, y, rng.standard_normal((net.num_params, 8))


def the_sum_of_the_shards(net, X, y, V, shards):
    """Σ_s shard s's share of hvp in shard order, in this process on one BLAS thread (as each share runs)."""
    bounds = shard_bounds(len(X), shards)
    total = None
    with threadpool_limits(1, user_api="blas"):
        for a, b in zip(bounds[:-1], bounds[1:]):
            share = to_numpy(ne.TrainingLoss(net, "cross_entropy", X[a:b], y[a:b], mean_over=len(X)).hvp(V))
            total = share if total is None else total + share
    return total


def kill_while_running(client, product, which="one"):
    """Run ``product()`` in a thread; as soon as the scheduler shows a share processing, SIGKILL the worker running
    it (``which="one"``) or every worker (``"all"``). Returns (the product's result or exception, the killed
    workers' addresses)."""
    pids = client.run(os.getpid)
    outcome = {}

    def run():
        try:
            outcome["result"] = product()
        except Exception as error:          # raised in the thread, asserted on in the test
            outcome["result"] = error
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("nn-eos-curvature_product") for k in keys)]
        if busy:
            break
        time.sleep(0.005)
    assert busy, "no share was seen running"
    killed = busy[:1] if which == "one" else sorted(pids)
    for worker in killed:
        os.kill(pids[worker], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive(), "the product never came back"
    return outcome["result"], killed


def test_a_worker_killed_mid_product_costs_time_not_numbers():
    """Two shards on two workers, each shard on both: the killed worker's share runs again on the other."""
    net, X, y, V = problem()
    with cluster() as local, distributed.Client(local) as client:
        loss = ShardedLoss(net, "cross_entropy", X, y, client, shards=2)
        loss.hvp(V[:, :1])                                        # the shards placed and warm
        result, killed = kill_while_running(client, lambda: loss.hvp(V))
        assert killed[0] not in client.run(os.getpid)              # it is gone (its nanny starts a new one)
        np.testing.assert_array_equal(to_numpy(result), the_sum_of_the_shards(net, X, y, V, 2))


def test_a_shard_lost_with_every_copy_is_sent_again_from_the_client():
    net, X, y, V = problem()
    with cluster() as local, distributed.Client(local) as client:
        loss = ShardedLoss(net, "cross_entropy", X, y, client, shards=3)
        loss.hvp(V[:, :1])
        with pytest.warns(RuntimeWarning, match=r"shard \d of 3 was lost with tcp://.*: sent again from the client"):
            result, _ = kill_while_running(client, lambda: loss.hvp(V), which="all")
        np.testing.assert_array_equal(to_numpy(result), the_sum_of_the_shards(net, X, y, V, 3))


def test_shards_the_workers_load_are_loaded_again(tmp_path):
    """From a config: the shards are tasks that load the data on the workers, so Dask loads a lost one again."""
    from nn_eos.experiments import config as configs

    net, X, y, V = problem()
    np.savez(tmp_path / "data.npz", X=X, y=y)
    run = {"data": {"dataset": "arrays", "path": str(tmp_path / "data.npz")},
           "net": {"hidden": [384, 384], "activation": "tanh", "init": "xavier", "seed": 0},
           "integrator": {"name": "gd", "lr": 0.1}}
    assert np.array_equal(to_numpy(configs.build_net(run["net"], X, 4)[0].theta), to_numpy(net.theta))
    with cluster() as local, distributed.Client(local) as client:
        loss = configs.sharded_loss(run, client, shards=2)
        loss.hvp(V[:, :1])
        result, _ = kill_while_running(client, lambda: loss.hvp(V), which="all")
        np.testing.assert_array_equal(to_numpy(result), the_sum_of_the_shards(net, X, y, V, 2))


def test_a_share_that_kills_its_workers_stops_in_one_line():
    """With Dask allowing no failures, the first worker to die running a share is the last: one line naming the
    shard and the worker (a share that runs out of memory on every worker ends the same way)."""
    net, X, y, V = problem()
    with cluster(allowed_failures=0) as local, distributed.Client(local) as client:
        loss = ShardedLoss(net, "cross_entropy", X, y, client, shards=2)
        loss.hvp(V[:, :1])
        error, killed = kill_while_running(client, lambda: loss.hvp(V))
        assert isinstance(error, RuntimeError), error
        message = str(error)
        assert "\n" not in message and message.startswith("curvature_product on shard ")
        assert f"1 worker(s) died running it, the last {killed[0]}" in message
