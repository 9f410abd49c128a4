"""Self-stabilisation (docs/self_stabilization.md): S, ∇S, α, β against dense references, the projection onto M,
the predicted dynamics, and the telemetry beside gradient descent (resumable, bit-identical)."""

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import nn_eos as ne
from checks import TOL, assert_close, build_problem, central_difference
from nn_eos.backend import to_numpy
from nn_eos.self_stabilization import (SelfStabilizationTelemetry, central_flow, predicted_step, project,
                                       sharpness_terms)


def dense_top(loss, theta):
    P = len(theta)
    H = to_numpy(loss.hvp(np.eye(P), theta=theta))
    return np.linalg.eigh((H + H.T) / 2)


@given(seed=st.integers(0, 2**32 - 1))
def test_sharpness_terms_against_dense_references(seed):
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=6, seed=seed)
    loss, theta = problem.loss, problem.theta
    values, vectors = dense_top(loss, theta)
    assume(values[-1] - values[-2] > 1e-2 * abs(values[-1]))          # a simple top eigenvalue
    terms = sharpness_terms(loss, theta)
    assert terms.sharpness == pytest.approx(values[-1], rel=1e-9)
    assert abs(float(to_numpy(terms.vector) @ vectors[:, -1])) == pytest.approx(1, abs=1e-8)
    w = np.random.default_rng(seed).standard_normal(len(theta))
    assert_close(to_numpy(terms.sharpness_gradient) @ w, central_difference(lambda t: dense_top(loss, t)[0][-1],
                                                                            theta, w), 1e-5, "⟨∇S, w⟩")
    gradient = to_numpy(loss.gradient())
    assert terms.alpha == pytest.approx(-gradient @ to_numpy(terms.sharpness_gradient), rel=1e-12, abs=1e-15)
    assert terms.beta == pytest.approx(np.sum(to_numpy(terms.sharpness_gradient) ** 2), rel=1e-12)
    flipped = sharpness_terms(loss, theta, previous=-to_numpy(terms.vector))
    assert_close(flipped.vector, -to_numpy(terms.vector), 1e-8, "u takes the sign of the vector before it")


@pytest.mark.parametrize("edge_share", [0.7, 1.5])
def test_projection_lands_on_the_stable_set(edge_share):
    """From a θ with S above 2/η (edge_share = 0.7: 2/η = 0.7 S) or below it (1.5), proj_M ends with
    S ≤ (1 + tol) 2/η and |∇L̃ · u| ≤ tol ‖∇L̃‖; below the edge, S is not pushed up to it."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta = problem.loss, problem.theta
    S = sharpness_terms(loss, theta).sharpness
    eta = 2 / (edge_share * S)
    tol = 1e-3
    point, terms, steps = project(loss, theta, eta, tol=tol)
    again = sharpness_terms(loss, point)
    assert again.sharpness <= (1 + tol) * 2 / eta
    assert abs(float(to_numpy(again.gradient) @ to_numpy(again.vector))) <= 1.01 * tol * np.linalg.norm(
        to_numpy(again.gradient))
    assert terms.sharpness == pytest.approx(again.sharpness, rel=1e-8)
    if edge_share > 1:
        assert again.sharpness < 2 / eta
    assert to_numpy(loss.net.theta) == pytest.approx(theta)             # the network is left alone
    on_M, _, evaluated = project(loss, point, eta, tol=2 * tol)
    assert evaluated == 1 and np.array_equal(to_numpy(on_M), to_numpy(point))   # a point of M stays put


def test_predicted_step_is_the_model_and_overflows_to_inf():
    x, y = predicted_step(0.1, 0.2, alpha=0.5, beta=4.0, eta=0.3)
    assert x == pytest.approx(-(1 + 0.3 * 0.2) * 0.1) and y == pytest.approx(0.2 + 0.3 * (0.5 - 4.0 * 0.01 / 2))
    x, y = predicted_step(1e200, -1e200, alpha=0.0, beta=1.0, eta=1.0)
    assert np.isinf(x) and np.isinf(y)


def gd_run(problem, eta, **kwargs):
    telemetry = SelfStabilizationTelemetry(eta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ne.NonConvergenceWarning)
        run = ne.train(problem.loss, ne.GradientDescent(eta), telemetry=telemetry, progress=False, **kwargs)
    return run


def test_the_telemetry_beside_gradient_descent(tmp_path):
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    theta0 = problem.theta
    S = sharpness_terms(problem.loss, theta0).sharpness
    eta = 1.5 / S                                            # 2/η = 1.33 S: the run starts below the edge
    rows = gd_run(problem, eta, max_steps=4).telemetry
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    first = rows[0]
    assert (first["x_predicted"], first["y_predicted"]) == (first["x"], first["y"])    # the model starts there
    assert first["sharpness"] == pytest.approx(S, rel=1e-8)
    dagger, _, _ = project(problem.loss, theta0, eta)
    assert first["deviation_norm"] == pytest.approx(np.linalg.norm(theta0 - to_numpy(dagger)), rel=1e-8)
    assert first["constrained_loss"] == pytest.approx(problem.loss.value(theta=dagger), rel=1e-12)
    for row in rows:
        assert row["beta"] == pytest.approx(row["sharpness_gradient_norm"] ** 2, rel=1e-12)
        assert row["constrained_sharpness"] <= (1 + 1e-3) * 2 / eta
    x, y = predicted_step(first["x"], first["y"], first["constrained_alpha"], first["constrained_beta"], eta)
    assert (rows[1]["x_predicted"], rows[1]["y_predicted"]) == pytest.approx((x, y), rel=1e-12)


def test_a_resumed_run_continues_bit_identically(tmp_path):
    # on NumPy whatever NN_EOS_DEVICE says, as test_dynamics' resume test: the strict stand-in's copies move a
    # restored θ in memory, and NumPy's SIMD sums round by alignment
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1, device="cpu")
    theta0 = problem.theta
    eta = 2.5 / sharpness_terms(problem.loss, theta0).sharpness
    whole = gd_run(problem, eta, max_steps=5).telemetry
    problem.net.set_theta(theta0)
    run_dir = str(tmp_path / "run")
    gd_run(problem, eta, max_steps=2, run_dir=run_dir, snapshot_every=1)
    problem.net.set_theta(theta0)
    resumed = gd_run(problem, eta, max_steps=5, run_dir=run_dir, resume=True).telemetry
    assert resumed == whole


def test_it_follows_gradient_descent_at_its_own_step_only():
    problem = build_problem([3, 4, 3], "tanh", "mse", n=4, seed=0)
    with pytest.raises(ValueError, match=r"follows gradient descent at η = 0.1"):
        ne.train(problem.loss, ne.GradientDescent(0.2), telemetry=SelfStabilizationTelemetry(0.1), max_steps=1,
                 progress=False)
    with pytest.raises(ValueError, match=r"every_steps must be a positive integer"):
        SelfStabilizationTelemetry(0.1, every_steps=0)
    with pytest.raises(ValueError, match=r"eta must be a finite positive number"):
        project(problem.loss, problem.theta, -1.0)


def test_the_central_flow_is_gradient_flow_below_the_edge_and_holds_the_edge_on_it():
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta0 = problem.loss, problem.theta
    S = sharpness_terms(loss, theta0).sharpness
    below = central_flow(loss, theta0, eta=1.0 / S, steps=2, substeps=2)      # 2/η = 2S: far below the edge
    assert [p.t for p in below] == pytest.approx([0.0, 1 / S, 2 / S]) and all(p.sigma2 == 0 for p in below)
    theta = theta0.copy()
    for _ in range(2):                                   # two Euler steps of gradient flow per unit of η
        theta = theta - (0.5 / S) * to_numpy(loss.gradient(theta))
    assert_close(below[1].theta, theta, TOL["exact"], "central flow below the edge = gradient flow")
    assert below[0].predicted_loss == below[0].loss == pytest.approx(loss.value(theta=theta0))
    terms = sharpness_terms(loss, theta0)
    assert terms.alpha > 0                              # this problem sharpens at θ₀ (α = 0.27)
    eta = 2 / S                                         # θ₀ on the edge: S = 2/η
    points = central_flow(loss, theta0, eta, steps=3)
    assert points[0].sigma2 == pytest.approx(2 * terms.alpha / terms.beta, rel=1e-6)
    assert points[0].predicted_loss == pytest.approx(points[0].loss + points[0].sigma2 * points[0].sharpness / 2)
    for p in points:                                     # the flow stays on S ≤ 2/η, and on it while α > 0
        assert p.sharpness <= (2 / eta) * (1 + 1e-6)
        assert p.sigma2 == 0 or p.sharpness >= (2 / eta) * (1 - 1e-3)     # on the edge, to edge_tol
    sigma2, dt = points[0].sigma2, 1e-5                 # σ² = 2α/β is what holds S still: dS/dt = α − βσ²/2 = 0
    moved = sharpness_terms(loss, theta0 - dt * to_numpy(terms.gradient + sigma2 / 2 * terms.sharpness_gradient))
    flowed = sharpness_terms(loss, theta0 - dt * to_numpy(terms.gradient))
    assert abs(moved.sharpness - S) / dt < 1e-3 * abs(flowed.sharpness - S) / dt


def test_the_projection_on_a_family_of_random_problems():
    """8 random nets with 2/η at 0.5–0.8 S (several with λ₂ above 2/η too): where project says it reached M the
    constraints hold when measured again; where it warns, it returns a point no worse than its start; and it
    reaches M on at least 5 of the 8 within 40 points (docs/self_stabilization.md: why not on all)."""
    from nn_eos.eigen import NonConvergenceWarning

    reached = 0
    for seed in range(8):
        problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=seed)
        loss, theta = problem.loss, problem.theta
        start = sharpness_terms(loss, theta)
        eta = 2 / ((0.5 + 0.1 * (seed % 4)) * start.sharpness)

        def violation(terms):
            return (abs(float(to_numpy(terms.gradient) @ to_numpy(terms.vector))) / np.linalg.norm(
                to_numpy(terms.gradient)) + max(terms.sharpness - 2 / eta, 0) * eta / 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            point, _, _ = project(loss, theta, eta, tol=1e-3, max_steps=40)
        again = sharpness_terms(loss, point)
        if any(issubclass(w.category, NonConvergenceWarning) for w in caught):
            assert violation(again) <= violation(start)
        else:
            reached += 1
            assert violation(again) <= 1.01e-3
    assert reached >= 5, reached


def test_the_central_flow_steps_back_onto_the_edge_when_an_euler_step_crosses_it(monkeypatch):
    """Just below the edge on a sharpening problem, one Euler step takes S past 2/η: the Newton step along ∇S
    runs (an extra measurement of S) and puts S back within edge_tol of 2/η."""
    import nn_eos.self_stabilization as module

    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta0 = problem.loss, problem.theta
    terms = sharpness_terms(loss, theta0)
    assert terms.alpha > 0
    eta = 2 / (terms.sharpness * 1.0005)                # 2/η just above S: the first Euler step crosses it
    measured = []
    original = module.sharpness_terms

    def counting(*args, **kwargs):
        result = original(*args, **kwargs)
        measured.append(result.sharpness)
        return result
    monkeypatch.setattr(module, "sharpness_terms", counting)
    points = central_flow(loss, theta0, eta, steps=1, substeps=10)
    assert len(measured) > 11                            # 1 at θ₀ + 1 per Euler step, and the Newton steps' own
    crossings, i = 0, 1                                  # measured[0]: θ₀; then each Euler step's, and after
    while i < len(measured) - 1:                         # one past the edge, its Newton step's
        if measured[i] > 2 / eta:
            crossings += 1
            assert abs(measured[i + 1] - 2 / eta) <= 1e-3 * (2 / eta)      # back onto the edge
            i += 2
        else:
            i += 1
    assert crossings >= 1
    assert points[-1].sharpness <= 2 / eta


def test_the_telemetry_fields_against_their_formulas_at_the_projected_points():
    """x, y, the deviation and both predicted losses of rows 0 and 1, from θ† computed here by project() alone:
    θ†_0 = proj_M(θ_0), θ†_1 = proj_M(θ†_0 − η ∇L̃(θ†_0)), θ_1 = θ_0 − η ∇L̃(θ_0), and with u, S, ∇S at θ†
    x = u · (θ − θ†), y = S − 2/η + ∇S · (θ − θ†), L̃(θ†) + S x²/2 (docs/self_stabilization.md)."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta0 = problem.loss, to_numpy(problem.theta)
    eta = 1.5 / sharpness_terms(loss, theta0).sharpness
    rows = gd_run(problem, eta, max_steps=1).telemetry
    dagger0, terms0, _ = project(loss, theta0, eta)
    dagger0 = to_numpy(dagger0)
    dagger1, terms1, _ = project(loss, dagger0 - eta * to_numpy(terms0.gradient), eta, previous=terms0.vector)
    theta1 = theta0 - eta * to_numpy(loss.gradient(theta0))
    for row, theta, dagger, terms in ((rows[0], theta0, dagger0, terms0), (rows[1], theta1, to_numpy(dagger1),
                                                                          terms1)):
        v = theta - dagger
        x = float(to_numpy(terms.vector) @ v)
        y = terms.sharpness - 2 / eta + float(to_numpy(terms.sharpness_gradient) @ v)
        assert abs(row["x"]) == pytest.approx(abs(x), rel=1e-6, abs=1e-12)
        assert row["y"] == pytest.approx(y, rel=1e-6, abs=1e-12)
        assert row["deviation_norm"] == pytest.approx(np.linalg.norm(v), rel=1e-8)
        constrained_loss = loss.value(theta=dagger)
        assert row["constrained_loss"] == pytest.approx(constrained_loss, rel=1e-10)
        assert row["loss_predicted"] == pytest.approx(constrained_loss + terms.sharpness * x * x / 2, rel=1e-8)
    x1, _ = predicted_step(rows[0]["x"], rows[0]["y"], terms0.alpha, terms0.beta, eta)
    assert rows[1]["loss_predicted_by_model"] == pytest.approx(loss.value(theta=to_numpy(dagger1))
                                                               + terms1.sharpness * x1 * x1 / 2, rel=1e-8)
