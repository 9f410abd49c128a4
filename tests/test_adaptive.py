"""Full-batch Adam and RMSProp (nn_eos/adaptive.py): the steps, the preconditioned operator against a dense matrix,
the preconditioned sharpness, the thresholds, resuming, configs."""

import numpy as np
import pytest

import nn_eos as ne
from checks import TOL, assert_close, build_problem
from nn_eos.adaptive import preconditioned_operator, threshold
from nn_eos.backend import to_numpy
from nn_eos.integrators import from_config


@pytest.fixture
def problem():
    return build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)


def test_the_first_step_moves_every_parameter_by_eta(problem):
    """Bias-corrected, the first step is θ − η g / (|g| + ε): every parameter moves by η (ε = 0), against its
    gradient, for Adam and RMSProp alike."""
    g = to_numpy(problem.loss.gradient())
    for integrator in (ne.Adam(0.01, eps=0.0), ne.RMSProp(0.01, eps=0.0)):
        new, dt, _ = integrator.step(problem.loss, problem.net.theta, problem.loss.gradient())
        assert dt == 0.01
        assert_close(new, problem.theta - 0.01 * np.sign(g), TOL["exact"], f"{integrator!r}: first step")


def test_steps_follow_the_recurrence(problem):
    beta1, beta2, eps, lr = 0.8, 0.95, 1e-3, 0.02
    adam = ne.Adam(lr, beta1=beta1, beta2=beta2, eps=eps)
    theta, m, v = problem.theta, 0.0, 0.0
    ours = problem.net.theta
    for t in range(1, 6):
        g = to_numpy(problem.loss.gradient(theta))
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g ** 2
        theta = theta - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
        ours = adam.step(problem.loss, ours, problem.loss.gradient(ours))[0]
        assert_close(ours, theta, TOL["exact"], f"step {t}")


def test_the_preconditioned_operator_against_a_dense_matrix(problem):
    P = problem.net.num_params
    preconditioner = np.random.default_rng(0).uniform(0.1, 3.0, P)
    H = to_numpy(problem.loss.hvp(np.eye(P)))
    D = np.diag(preconditioner ** -0.5)
    operator = preconditioned_operator(problem.loss, problem.net.theta, problem.net.xp.asarray(preconditioner))
    assert_close(operator.matmat(problem.net.xp.asarray(np.eye(P))), D @ H @ D, TOL["exact"], "P^-1/2 H P^-1/2")
    top = np.max(np.linalg.eigvals(np.diag(1 / preconditioner) @ H).real)
    found = ne.top_eigenpairs(operator, 1, method="krylov", which="LA", tol=1e-10).values
    assert float(to_numpy(found)[0]) == pytest.approx(top, rel=1e-8)


def test_the_preconditioned_sharpness_is_measured_with_the_step_preconditioner(problem):
    adam = ne.Adam(0.01, beta1=0.9, beta2=0.99, sharpness_every=1, tol=1e-10)
    g = to_numpy(problem.loss.gradient())
    _, _, info = adam.step(problem.loss, problem.net.theta, problem.loss.gradient())
    P = (1 - 0.9) * (np.sqrt(0.01 * g ** 2 / (1 - 0.99)) + 1e-8)
    H = to_numpy(problem.loss.hvp(np.eye(problem.net.num_params)))
    assert info["preconditioned_sharpness"] == pytest.approx(np.max(np.linalg.eigvals(H / P[:, None]).real),
                                                             rel=1e-8)
    assert info["threshold"] == pytest.approx(38 / 0.01)


def test_thresholds():
    assert threshold(0.01, 0.9) == pytest.approx(3800) and ne.RMSProp(0.5).threshold == pytest.approx(4.0)


def test_a_resumed_run_is_bit_identical(tmp_path):
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1, device="cpu")   # on NumPy: see
    theta0 = problem.theta                                          # test_self_stabilization's resume test

    def run(max_steps, **kwargs):
        return ne.train(problem.loss, ne.Adam(0.01, sharpness_every=2), max_steps=max_steps, theta=theta0,
                        progress=False, **kwargs)

    whole = run(6)
    run(3, run_dir=tmp_path / "r", snapshot_every=1)
    resumed = run(6, run_dir=tmp_path / "r", resume=True)
    np.testing.assert_array_equal(to_numpy(resumed.theta), to_numpy(whole.theta))
    np.testing.assert_array_equal(resumed.metrics["preconditioned_sharpness"], whole.metrics["preconditioned_sharpness"])


def test_configs_and_bad_settings():
    adam = from_config(ne.Adam(0.01, beta1=0.8, sharpness_every=5).config())
    assert isinstance(adam, ne.Adam) and adam.beta1 == 0.8 and adam.sharpness_every == 5
    assert isinstance(from_config(ne.RMSProp(0.1).config()), ne.RMSProp)
    with pytest.raises(ValueError, match=r"beta1 must be in \[0, 1\)"):
        ne.Adam(0.01, beta1=1.0)
    with pytest.raises(ValueError, match=r"lr must be a finite positive number"):
        ne.RMSProp(-1)
    with pytest.raises(ValueError, match=r"eps must be a number ≥ 0"):
        ne.Adam(0.01, eps=-1)


def test_the_defaults_are_the_documented_ones():
    """PyTorch's Adam and RMSProp defaults (β₁ 0.9, β₂ 0.999 and 0.99, ε 1e-8), no sharpness unless asked, and
    the sharpness solver's tolerance 1e-4 and 300 iterations; RMSProp passes every setting on."""
    assert ne.Adam(0.1).config() == {"name": "adam", "lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                     "sharpness_every": 0, "tol": 1e-4, "maxiter": 300}
    assert ne.RMSProp(0.1).config() == {"name": "rmsprop", "lr": 0.1, "beta2": 0.99, "eps": 1e-8,
                                        "sharpness_every": 0, "tol": 1e-4, "maxiter": 300}
    assert ne.RMSProp(0.1, beta2=0.5, eps=0.25, sharpness_every=3, tol=1e-6, maxiter=7).config() == {
        "name": "rmsprop", "lr": 0.1, "beta2": 0.5, "eps": 0.25, "sharpness_every": 3, "tol": 1e-6, "maxiter": 7}
    assert repr(ne.RMSProp(0.5)) == "RMSProp(lr=0.5, beta1=0, beta2=0.99, eps=1e-08)"


@pytest.mark.parametrize("settings, message", [
    ({"beta2": 1.0}, r"^beta2 must be in \[0, 1\)"), ({"beta1": False}, r"^beta1 must be in \[0, 1\)"),
    ({"eps": True}, r"^eps must be a number ≥ 0"), ({"sharpness_every": -1}, r"^sharpness_every must be"),
    ({"maxiter": 0}, r"^maxiter must be a positive integer")])
def test_a_bad_setting_is_named(settings, message):
    with pytest.raises(ValueError, match=message):
        ne.Adam(0.01, **settings)


def test_the_sharpness_is_measured_on_the_documented_steps(problem):
    """With sharpness_every = 3: steps 1, 4, 7 (the first and every third after it)."""
    adam, theta = ne.Adam(0.001, sharpness_every=3), problem.net.theta
    measured = []
    for t in range(1, 8):
        theta, _, info = adam.step(problem.loss, theta, problem.loss.gradient(theta))
        if info:
            measured.append(t)
    assert measured == [1, 4, 7]


def test_the_preconditioned_sharpness_is_the_largest_eigenvalue_not_the_largest_in_size():
    """At this θ the eigenvalue of P⁻¹∇²L̃ largest in size is negative (−268 against 148): the measurement is the
    algebraically largest, the threshold's quantity."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=6)
    _, _, info = ne.Adam(0.01, beta2=0.99, sharpness_every=1, tol=1e-10).step(
        problem.loss, problem.net.theta, problem.loss.gradient())
    g = to_numpy(problem.loss.gradient())
    P = (1 - 0.9) * (np.sqrt(0.01 * g ** 2 / (1 - 0.99)) + 1e-8)
    eigenvalues = np.linalg.eigvals(to_numpy(problem.loss.hvp(np.eye(problem.net.num_params))) / P[:, None]).real
    assert -eigenvalues.min() > eigenvalues.max()
    assert info["preconditioned_sharpness"] == pytest.approx(eigenvalues.max(), rel=1e-8)


def test_the_measurement_reports_its_solver_and_is_warm_started(problem):
    """The record says whether the solver converged and how many products it took; ``tol`` and ``maxiter`` reach
    the solver (a looser tol takes fewer products; maxiter = 2 stops it unconverged, without a warning in the
    run); each measurement starts from the last eigenvector, kept in the state, so a second one at almost the
    same θ takes fewer products than the first."""
    import warnings

    def first_measurement(**settings):
        adam = ne.Adam(1e-9, sharpness_every=1, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, _, info = adam.step(problem.loss, problem.net.theta, problem.loss.gradient())
        return adam, info

    adam, tight = first_measurement(tol=1e-10)
    assert set(tight) == {"preconditioned_sharpness", "threshold", "eig_converged", "eig_matvecs"}
    assert tight["eig_converged"] is True and tight["eig_matvecs"] > 0
    assert first_measurement(tol=1e-2)[1]["eig_matvecs"] < tight["eig_matvecs"]
    _, stopped = first_measurement(tol=1e-14, maxiter=2)
    assert stopped["eig_converged"] is False and stopped["eig_matvecs"] <= 2 * 4
    vector = to_numpy(adam.state()["eigenvector"]).ravel()
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    theta = problem.net.theta
    _, _, second = adam.step(problem.loss, theta, problem.loss.gradient(theta))
    assert second["eig_matvecs"] < tight["eig_matvecs"]


def test_a_step_keeps_the_dtype_and_a_fresh_state_loads(problem):
    adam = ne.Adam(0.01)
    theta, _, _ = adam.step(problem.loss, problem.net.theta, problem.loss.gradient())
    assert to_numpy(theta).dtype == np.float64
    assert to_numpy(adam.state()["m"]).dtype == to_numpy(adam.state()["v"]).dtype == np.float64
    fresh = ne.Adam(0.01)
    fresh.load_state(ne.Adam(0.01).state())                       # a snapshot taken before the first step
    assert fresh.t == 0 and fresh.m is None
