"""ShardedLoss (nn_eos/sharded.py) on a LocalCluster of two worker processes: every quantity against a
TrainingLoss chunked at the shard boundaries (the same sums in the same order: equal), runs through nn_eos.train
the same, and what it refuses."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import nn_eos as ne
from nn_eos.backend import to_numpy
from nn_eos.sharded import ShardedLoss, shard_bounds

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  worker_dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
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
    density = [ne.spectrum.spectral_density(loss.operator("ggn"), steps=8, probes=2) for loss in (sharded, whole)]
    assert_close(density[0].moment(1), density[1].moment(1), rtol=1e-12)
    assert_close(density[0].nodes, density[1].nodes, rtol=1e-8, atol=1e-10)
    sharded.close()


@pytest.mark.parametrize("integrator", ["gd", "exponential_euler", "adam"])
def test_a_sharded_run_is_the_run_of_the_same_sums(client, integrator):
    """nn_eos.train with the 2022 telemetry on a ShardedLoss and on one process chunked at the shard boundaries
    (two shards of 16 and chunks of 16): the same θ after four steps, bit for bit, the same losses, step sizes
    and sharpness (Adam's preconditioned sharpness too), and the same telemetry (top eigenvalues, the gradient's
    projections, the losses' changes)."""
    net, X, y = problem()
    X, y = np.concatenate([X, X[:1]]), np.concatenate([y, y[:1]])                     # 32 examples
    theta0 = to_numpy(net.theta).copy()          # set_theta writes into the network's own array

    def run(loss):
        chosen = {"gd": ne.GradientDescent(0.5), "exponential_euler": ne.ExponentialEuler(k=2),
                  "adam": ne.Adam(0.01, sharpness_every=2)}[integrator]
        telemetry = ne.eos.Telemetry(k=2, every_time=0.5 if integrator == "gd" else 0.01, method="krylov")
        return ne.train(loss, chosen, max_steps=4, theta=theta0, telemetry=telemetry, progress=False)
    with threadpool_limits(1, user_api="blas"):
        local = run(ne.TrainingLoss(net, "cross_entropy", X, y, chunk_size=16))
    sharded = run(ShardedLoss(net, "cross_entropy", X, y, client, shards=2))
    np.testing.assert_array_equal(to_numpy(sharded.theta), to_numpy(local.theta))
    assert sharded.metrics.keys() == local.metrics.keys()
    for column in set(local.metrics) - {"wall"}:
        np.testing.assert_array_equal(sharded.metrics[column], local.metrics[column], column)
    assert len(local.telemetry) >= 2
    assert [row.keys() for row in sharded.telemetry] == [row.keys() for row in local.telemetry]
    for ours, theirs in zip(sharded.telemetry, local.telemetry):
        for column in theirs:
            np.testing.assert_array_equal(np.asarray(ours[column], dtype=float),
                                          np.asarray(theirs[column], dtype=float), column)


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


def test_a_config_s_sharded_loss_loads_each_shard_on_a_worker(client, tmp_path):
    """nn_eos.experiments.config.sharded_loss: the network the config builds, and every shard's share that of
    the config's data (nn_eos.experiments.config.training_data) at the shard's examples; token ids and a
    transformer too."""
    from nn_eos.experiments import config as configs

    rng = np.random.default_rng(2)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((23, 3, 2)), y=rng.integers(0, 3, 23))
    runs = [{"data": {"dataset": "arrays", "path": str(tmp_path / "data.npz"), "standardize": True},
             "net": {"hidden": [7], "activation": "tanh", "seed": 3}, "integrator": {"name": "gd", "lr": 0.1}},
            {"data": {"dataset": "modular_addition", "modulus": 5}, "criterion": {"name": "mse"},
             "net": {"arch": "transformer", "d": 4, "heads": 1, "seed": 1}, "integrator": {"name": "gd", "lr": 0.1}}]
    for run in runs:
        X, y = configs.training_data(run)
        net, X = configs.build_net(run["net"], X, configs.count_classes(y))
        loss = configs.sharded_loss(run, client, shards=3)
        assert loss.net.num_params == net.num_params and loss.num_examples == len(X)
        np.testing.assert_array_equal(to_numpy(loss.net.theta), to_numpy(net.theta))
        assert all(f.key.startswith("nn-eos-shard-") for f in loss._data)          # tasks on the workers
        bounds = shard_bounds(len(X), 3)
        V = rng.standard_normal((net.num_params, 2))
        criterion = run.get("criterion", {}).get("name", "cross_entropy")
        with threadpool_limits(1, user_api="blas"):
            expected = sum(to_numpy(ne.TrainingLoss(net, criterion, X[a:b], y[a:b], mean_over=len(X)).ggn(V))
                           for a, b in zip(bounds[:-1], bounds[1:]))
        np.testing.assert_array_equal(to_numpy(loss.ggn(V)), expected)
        loss.close()


def test_a_product_that_does_not_fit_a_worker_is_refused_with_its_size(client):
    net, X, y = problem()
    sharded = ShardedLoss(net, "cross_entropy", X, y, client, shards=2, max_memory=2000)
    with pytest.raises(MemoryError, match=r"the 4 direction\(s\) and their results alone need about .* MiB, more "
                                          r"than max_memory"):
        sharded.hvp(np.ones((net.num_params, 4)))


SHARDED_RUN = """
[data]
dataset = "dice"
n = 40

[net]
hidden = [6]
activation = "tanh"

[integrator]
name = "exponential_euler"
k = 2

[train]
until_loss = 0.0
max_steps = {steps}

[telemetry]
k = 2
every_time = 0.01
method = "krylov"
"""


def test_nn_eos_train_with_a_scheduler_records_its_shards_and_resumes_only_sharded(client, tmp_path):
    """`nn-eos train --scheduler` shards the run and records the shard count (the cluster's 2 workers), not the
    address; a sharded run resumes only sharded, and a run made in one process only there (each is another order
    of the same sums). Resuming on a cluster of another size: the SIGKILL test below."""
    import json

    from nn_eos.experiments import cli, config as configs

    path = tmp_path / "run.toml"
    path.write_text(SHARDED_RUN.format(steps=2))
    address = client.scheduler.address
    cli.main(["train", str(path), "--out", str(tmp_path / "sharded"), "--scheduler", address, "--no-progress"])
    experiment = json.loads((tmp_path / "sharded" / "config.json").read_text())["experiment"]
    assert experiment["cluster"] == {"shards": 2}
    run = configs.load(str(path))
    with pytest.raises(configs.ConfigError, match="was sharded over 2 shards; .* give a scheduler"):
        configs.run(run, str(tmp_path / "sharded"), resume=True, progress=False)
    configs.run(run, str(tmp_path / "local"), progress=False)
    with pytest.raises(configs.ConfigError, match="was run in one process"):
        configs.run(run, str(tmp_path / "local"), resume=True, scheduler=address, progress=False)


def test_a_sweep_leaves_sharding_to_one_run(tmp_path):
    from nn_eos.experiments import config as configs, sweep

    path = tmp_path / "sweep.toml"
    path.write_text('[base.data]\ndataset = "dice"\n[base.integrator]\nname = "gd"\nlr = 0.1\n'
                    '[base.cluster]\nshards = 2\n[grid]\n"net.seed" = [0, 1]\n')
    with pytest.raises(configs.ConfigError, match=r"a sweep distributes whole runs .* \[cluster\] shards one run"):
        sweep.load(str(path))


def test_a_sharded_run_over_tls_is_the_same_run(client, tmp_path):
    """docs/sharded.md's recipe: a cluster that speaks only TLS, the client's certificates in Dask's configuration,
    `nn_eos.experiments.config.run` given the tls:// address — the θ of the same run over plain TCP; without the
    certificates the scheduler is not reached."""
    import shutil
    import subprocess

    import dask

    from nn_eos.experiments import config as configs

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificates to test TLS with")
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    security = distributed.Security(tls_ca_file=cert, tls_scheduler_cert=cert, tls_scheduler_key=key,
                                    tls_worker_cert=cert, tls_worker_key=key, tls_client_cert=cert,
                                    tls_client_key=key, require_encryption=True)
    path = tmp_path / "run.toml"
    path.write_text(SHARDED_RUN.format(steps=2))
    run = configs.load(str(path))
    over_tcp = configs.run(run, str(tmp_path / "tcp"), scheduler=client.scheduler.address, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, protocol="tls",
                                  security=security, dashboard_address=":0", worker_dashboard_address=":0") as tls:
        assert tls.scheduler_address.startswith("tls://")
        with pytest.raises((TypeError, OSError)):
            distributed.Client(tls.scheduler_address, timeout=5)
        with dask.config.set({"distributed.comm.require-encryption": True, "distributed.comm.tls.ca-file": cert,
                              "distributed.comm.tls.client.cert": cert, "distributed.comm.tls.client.key": key}):
            over_tls = configs.run(run, str(tmp_path / "tls"), scheduler=tls.scheduler_address, progress=False)
    np.testing.assert_array_equal(to_numpy(over_tls.theta), to_numpy(over_tcp.theta))


def test_a_sharded_run_killed_mid_run_resumes_on_another_cluster_bit_identically(client, tmp_path):
    """`nn-eos train --scheduler` SIGKILLed after its fourth snapshot (the client process: the workers live on),
    then `--resume` on a cluster of one worker: the θ, metrics and telemetry of the run never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "run.toml"
    path.write_text(SHARDED_RUN.format(steps=12).replace("[telemetry]", "snapshot_every = 1\n\n[telemetry]"))
    command = [sys.executable, "-c", "from nn_eos.experiments.cli import main; main()", "train", str(path),
               "--no-progress", "--out"]
    address = client.scheduler.address
    subprocess.run([*command, str(tmp_path / "whole"), "--scheduler", address], check=True, capture_output=True)
    killed = subprocess.Popen([*command, str(tmp_path / "killed"), "--scheduler", address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    snapshots = tmp_path / "killed" / "snapshots"
    deadline = time.time() + 120
    while time.time() < deadline and (not snapshots.exists() or len(os.listdir(snapshots)) < 4):
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "result.json").exists()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  worker_dashboard_address=":0") as one:
        subprocess.run([*command, str(tmp_path / "killed"), "--resume", "--scheduler", one.scheduler_address],
                       check=True, capture_output=True)
    whole, resumed = ne.load_run(tmp_path / "whole"), ne.load_run(tmp_path / "killed")
    assert whole[3]["steps"] == resumed[3]["steps"] == 12
    final = [np.load(tmp_path / run / "snapshots" / "theta_00000012.npy") for run in ("whole", "killed")]
    np.testing.assert_array_equal(*final)
    for key in ("step", "t", "loss", "dt", "lambda_1"):
        np.testing.assert_array_equal(whole[1][key], resumed[1][key])
    assert [r["eigenvalues"] for r in whole[2]] == [r["eigenvalues"] for r in resumed[2]]
