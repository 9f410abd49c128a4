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


def test_the_defaults_are_the_documented_ones():
    """batch_sharpness: 16 batches, seed 0, eig_tol 1e-4; SGD: seed 0, no sharpness, 16 batches, tol 1e-4."""
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=12, seed=2)
    assert batch_sharpness(problem.loss, problem.net.theta, 5) == batch_sharpness(
        problem.loss, problem.net.theta, 5, batches=16, seed=0, eig_tol=1e-4)
    assert ne.SGD(0.1, batch_size=4).config() == {"name": "sgd", "lr": 0.1, "batch_size": 4, "seed": 0,
                                                  "sharpness_every": 0, "batches": 16, "tol": 1e-4}


@pytest.mark.parametrize("settings, message", [
    ({"seed": -1}, r"^seed must be a non-negative integer"),
    ({"sharpness_every": -1}, r"^sharpness_every must be a non-negative integer"),
    ({"batches": 0}, r"^batches must be a positive integer")])
def test_a_bad_setting_is_named(settings, message):
    with pytest.raises(ValueError, match=message):
        ne.SGD(0.1, batch_size=4, **settings)


@pytest.mark.parametrize("settings, message", [({"batch_size": 0}, r"^batch_size must be a positive integer"),
                                               ({"batch_size": 3, "batches": 0}, r"^batches must be a positive")])
def test_a_bad_batch_sharpness_setting_is_named(settings, message):
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=6, seed=2)
    with pytest.raises(ValueError, match=message):
        batch_sharpness(problem.loss, problem.net.theta, **settings)


def test_a_minibatch_loss_keeps_the_chunking():
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=12, seed=2, chunk_size=3)
    assert batch_loss(problem.loss, np.arange(5)).chunk_size == 3


def test_sgd_measures_batch_sharpness_on_the_documented_steps_with_its_own_settings():
    """sharpness_every = 2: steps 0, 2, 4, each the batch_sharpness of (b, batches, seed + step, tol)."""
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=12, seed=2)
    sgd = ne.SGD(0.1, batch_size=5, seed=3, sharpness_every=2, batches=3, tol=1e-9)
    theta = problem.net.theta
    for step in range(5):
        expected = batch_sharpness(problem.loss, theta, 5, 3, seed=3 + step, eig_tol=1e-9) if step % 2 == 0 else {}
        theta, _, info = sgd.step(problem.loss, theta, problem.loss.gradient(theta))
        assert info == expected, f"step {step}"


def test_batch_sharpness_is_measured_at_the_theta_given():
    """λ₁ of the full loss at θ₁, even when the loss last ran at another θ."""
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=12, seed=2)
    P = problem.net.num_params
    theta1 = problem.theta + 0.2 * np.random.default_rng(0).standard_normal(P)
    problem.loss.gradient(problem.net.theta)
    got = batch_sharpness(problem.loss, problem.net.xp.asarray(theta1), 4, batches=2, eig_tol=1e-10)
    H = to_numpy(problem.loss.hvp(np.eye(P), theta=problem.net.xp.asarray(theta1)))
    assert got["lambda_1"] == pytest.approx(np.linalg.eigvalsh((H + H.T) / 2).max(), rel=1e-8)


def test_batch_sharpness_near_a_minimum_and_at_one():
    """The ratio gᵀHg/‖g‖² at a small gradient (‖g‖² ≪ 1) is still measured; at a θ where every batch gradient is
    zero there is no direction and the result is NaN, without an error. θ: every weight 0 and the last bias
    (c, 0), so every output is (c, 0) and, with every label 0, the MSE residual is (c − 1, 0)."""
    import warnings

    net = ne.mlp([2, 3, 2], activation="tanh", seed=0)
    X = np.random.default_rng(0).standard_normal((6, 2))
    loss = ne.TrainingLoss(net, "mse", X, np.zeros(6, dtype=int))

    def theta(c):
        values = np.zeros(net.num_params)
        values[-2] = c                                             # the last layer's bias comes last
        return net.xp.asarray(values)

    net.set_theta(theta(0.5))
    assert_close(net.forward(net.xp.asarray(X)), np.tile([0.5, 0.0], (6, 1)), TOL["exact"], "the outputs")
    g = to_numpy(loss.gradient(theta(0.9)))
    assert 0 < g @ g < 1e-1
    assert np.isfinite(batch_sharpness(loss, theta(0.9), 6, batches=1)["batch_sharpness"])
    assert not np.any(to_numpy(loss.gradient(theta(1.0))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)           # NumPy's "mean of empty slice"
        assert np.isnan(batch_sharpness(loss, theta(1.0), 3, batches=2)["batch_sharpness"])


def test_the_eigenvalue_tolerance_reaches_the_solver():
    """A loose eig_tol stops the solver sooner: its λ₁ differs from a tight one's, which is exact to rounding."""
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=6, seed=2)
    loose, tight = (batch_sharpness(problem.loss, problem.net.theta, 3, batches=1, eig_tol=tol)["lambda_1"]
                    for tol in (0.3, 1e-12))
    H = to_numpy(problem.loss.hvp(np.eye(problem.net.num_params)))
    assert tight == pytest.approx(np.linalg.eigvalsh((H + H.T) / 2).max(), rel=1e-10) and loose != tight


def test_a_snapshot_without_a_step_count_starts_at_step_zero():
    sgd = ne.SGD(0.1, batch_size=4)
    sgd.steps = 5
    sgd.load_state({})
    assert sgd.steps == 0
