"""Minibatch SGD and batch sharpness (nn_eos/stochastic.py): reproducible batches, the step, the sharpness against
dense minibatch Hessians, resuming."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nn_eos as ne
from checks import TOL, assert_close, build_problem
from nn_eos.backend import to_numpy
from nn_eos.integrators import from_config
from nn_eos.stochastic import batch_indices, batch_loss, batch_sharpness


@given(N=st.integers(1, 40), b=st.integers(1, 45), seed=st.integers(0, 2**16), epoch=st.integers(0, 3))
def test_the_batches_of_an_epoch_partition_the_examples(N, b, seed, epoch):
    per_epoch = -(-N // b)
    batches = [batch_indices(epoch * per_epoch + j, N, b, seed) for j in range(per_epoch)]
    assert sorted(np.concatenate(batches).tolist()) == list(range(N))
    assert all(len(batch) == b for batch in batches[:-1]) and 1 <= len(batches[-1]) <= b
    assert np.array_equal(batch_indices(epoch * per_epoch, N, b, seed), batches[0])      # the same every time


def test_a_step_is_the_minibatch_gradient_step():
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=10, seed=0)
    sgd = ne.SGD(0.1, batch_size=4, seed=7)
    theta = problem.net.theta
    for step in range(4):                                  # across an epoch boundary (3 batches an epoch)
        indices = batch_indices(step, 10, 4, 7)
        sub = ne.TrainingLoss(problem.net, "cross_entropy", problem.X[indices], problem.y[indices])
        expected = to_numpy(theta) - 0.1 * to_numpy(sub.gradient(theta))
        theta, dt, _ = sgd.step(problem.loss, theta, problem.loss.gradient(theta))
        assert dt == 0.1
        assert_close(theta, expected, TOL["exact"], f"step {step}")


def test_a_batch_of_all_examples_is_gradient_descent():
    problem = build_problem([3, 4, 3], "tanh", "mse", n=6, seed=1)
    theta0 = problem.theta
    sgd = ne.train(problem.loss, ne.SGD(0.2, batch_size=6), max_steps=5, theta=theta0, progress=False)
    gd = ne.train(problem.loss, ne.GradientDescent(0.2), max_steps=5, theta=theta0, progress=False)
    assert_close(sgd.theta, gd.theta, TOL["exact"], "SGD with b = N against GD")


def test_batch_sharpness_against_dense_minibatch_hessians():
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=12, seed=2)
    loss, theta, P = problem.loss, problem.net.theta, problem.net.num_params
    got = batch_sharpness(loss, theta, batch_size=5, batches=4, seed=3, eig_tol=1e-10)
    rng = np.random.default_rng(3)
    ratios, tops = [], []
    for _ in range(4):
        part = batch_loss(loss, rng.choice(12, size=5, replace=False))
        H = to_numpy(part.hvp(np.eye(P)))
        g = to_numpy(part.gradient())
        ratios.append(g @ H @ g / (g @ g))
        tops.append(np.linalg.eigvalsh((H + H.T) / 2).max())
    H = to_numpy(loss.hvp(np.eye(P)))
    assert got["batch_sharpness"] == pytest.approx(np.mean(ratios), rel=1e-10)
    assert got["batch_lambda_1"] == pytest.approx(np.mean(tops), rel=1e-8)
    assert got["lambda_1"] == pytest.approx(np.linalg.eigvalsh((H + H.T) / 2).max(), rel=1e-8)


def test_a_resumed_run_draws_the_same_batches(tmp_path):
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=10, seed=0, device="cpu")   # on NumPy: see
    # test_self_stabilization's resume test
    theta0 = problem.theta

    def run(max_steps, **kwargs):
        return ne.train(problem.loss, ne.SGD(0.1, batch_size=3, seed=5, sharpness_every=2, batches=2),
                        max_steps=max_steps, theta=theta0, progress=False, **kwargs)

    whole = run(7)
    run(3, run_dir=tmp_path / "r", snapshot_every=1)
    resumed = run(7, run_dir=tmp_path / "r", resume=True)
    np.testing.assert_array_equal(to_numpy(resumed.theta), to_numpy(whole.theta))
    np.testing.assert_array_equal(resumed.metrics["batch_sharpness"], whole.metrics["batch_sharpness"])


def test_configs_and_bad_settings():
    sgd = from_config(ne.SGD(0.1, batch_size=8, seed=3, sharpness_every=4).config())
    assert isinstance(sgd, ne.SGD) and (sgd.batch_size, sgd.seed, sgd.sharpness_every) == (8, 3, 4)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        ne.SGD(0.1, batch_size=0)
    with pytest.raises(ValueError, match=r"lr must be a finite positive number"):
        ne.SGD(0, batch_size=4)


def test_the_batches_follow_the_documented_rule_and_every_epoch_is_reshuffled():
    """Epoch e is default_rng([seed, e]).permutation(N) cut into batches of b (the module docstring, written out
    here); a sampler that reused one permutation every epoch, or ignored the seed, fails."""
    N, b, seed = 20, 6, 11
    per_epoch = 4                                                     # ⌈20 / 6⌉
    for epoch in range(3):
        order = np.random.default_rng([seed, epoch]).permutation(N)
        for j in range(per_epoch):
            np.testing.assert_array_equal(batch_indices(epoch * per_epoch + j, N, b, seed), order[j * b:(j + 1) * b])
    firsts = {tuple(batch_indices(epoch * per_epoch, N, b, seed)) for epoch in range(5)}
    assert len(firsts) == 5                                            # each epoch its own order
    assert not np.array_equal(batch_indices(0, N, b, seed), batch_indices(0, N, b, seed + 1))


def test_each_batch_sharpness_measurement_draws_its_own_batches(monkeypatch):
    """SGD measures batch sharpness with the seed seed + step: two measurements never reuse one draw."""
    from nn_eos import stochastic

    drawn = []
    original = stochastic.batch_loss

    def recording(loss, indices):
        drawn.append(tuple(np.sort(indices)))
        return original(loss, indices)

    monkeypatch.setattr(stochastic, "batch_loss", recording)
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=12, seed=2)
    sgd = ne.SGD(0.1, batch_size=4, seed=5, sharpness_every=1, batches=3)
    theta = problem.net.theta
    measured = []
    for _ in range(3):
        drawn.clear()
        theta, _, _ = sgd.step(problem.loss, theta, problem.loss.gradient(theta))
        measured.append(drawn[:3])                                     # the three sharpness batches of this step
    assert measured[0] != measured[1] != measured[2] and measured[0] != measured[2]
