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
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
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


HARD_SEED = 0          # of the family below: M is not reached from it in 40 points


def test_the_projection_on_a_family_of_random_problems():
    """8 random nets with 2/η at 0.5–0.8 S (several with λ₂ above 2/η too): where project says it reached M the
    constraints hold when measured again; where it warns, it returns a point no worse than its start; and it
    reaches M on at least 5 of the 8 within 40 points (docs/self_stabilization.md: why not on all), in at most 80
    points over those it reaches (measured: 5 reached, on seeds 1, 2, 3, 4, 6, in 70 points; seed 0 is not reached
    even in 40, so HARD_SEED stops at the default 20 with a warning)."""
    from nn_eos.eigen import NonConvergenceWarning

    reached = points = 0
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
            point, _, steps = project(loss, theta, eta, tol=1e-3, max_steps=40)
        again = sharpness_terms(loss, point)
        if any(issubclass(w.category, NonConvergenceWarning) for w in caught):
            assert violation(again) <= violation(start)
        else:
            reached, points = reached + 1, points + steps
            assert violation(again) <= 1.01e-3
    assert reached >= 5 and points <= 80, (reached, points)


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


def spy(monkeypatch, name):
    """Record the keyword arguments and results of nn_eos.self_stabilization.<name> as the module calls it."""
    import nn_eos.self_stabilization as module

    calls, original = [], getattr(module, name)

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((kwargs, result))
        return result
    monkeypatch.setattr(module, name, recording)
    return calls


def test_sharpness_terms_passes_its_settings_to_the_solver_and_uses_the_callers_gradient():
    """One Krylov iteration from a random start does not converge, from the top eigenvector (``previous``) it
    does — and neither warns: the terms carry ``converged``; a loose tol stops sooner; α is made of the
    gradient the caller gives."""
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=6, seed=0)
    loss, theta = problem.loss, problem.theta
    exact = sharpness_terms(loss, theta, tol=1e-12)
    assert exact.converged is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cold = sharpness_terms(loss, theta, maxiter=1)
        warm = sharpness_terms(loss, theta, previous=exact.vector, maxiter=1)
    assert cold.converged is False and warm.converged is True
    assert sharpness_terms(loss, theta, tol=0.3).sharpness != exact.sharpness
    doubled = sharpness_terms(loss, theta, gradient=2 * to_numpy(loss.gradient(theta)))
    assert doubled.alpha == pytest.approx(2 * exact.alpha, rel=1e-8)


def test_project_counts_the_points_it_evaluates_and_passes_its_settings(monkeypatch):
    """The third result is the number of points evaluated (each one measurement of S, u, ∇S), whether M is
    reached or not; every measurement is at eig_tol; the first starts from ``previous``, so θ†'s u keeps its
    sign; the default is 20 points."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta = problem.loss, problem.theta
    start = sharpness_terms(loss, theta)
    calls = spy(monkeypatch, "sharpness_terms")
    previous = -to_numpy(start.vector)
    _, terms, steps = project(loss, theta, 2 / (0.7 * start.sharpness), eig_tol=1e-9, previous=previous)
    assert steps == len(calls) > 1
    assert all(kwargs["tol"] == 1e-9 for kwargs, _ in calls)
    assert calls[0][0]["previous"] is previous and float(to_numpy(terms.vector) @ previous) > 0
    calls.clear()
    with pytest.warns(ne.NonConvergenceWarning, match=r"M not reached in 2 points"):
        _, _, steps = project(loss, theta, 2 / (0.7 * start.sharpness), max_steps=2)
    assert steps == len(calls) == 2
    hard = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=HARD_SEED)
    hard_eta = 2 / (0.5 + 0.1 * (HARD_SEED % 4)) / sharpness_terms(hard.loss, hard.theta).sharpness
    with pytest.warns(ne.NonConvergenceWarning, match=r"M not reached in 20 points"):
        project(hard.loss, hard.theta, hard_eta)


def test_the_central_flow_settings(monkeypatch):
    """Defaults: one Euler step per unit of η, eig_tol 1e-8 (every measurement), edge_tol 1e-3; steps = 0 is the
    start alone; bad settings are named."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta0 = problem.loss, problem.theta
    eta = 2 / sharpness_terms(loss, theta0).sharpness
    calls = spy(monkeypatch, "sharpness_terms")
    by_default = central_flow(loss, theta0, eta, 2)
    assert calls and all(kwargs["tol"] == 1e-8 for kwargs, _ in calls)
    given_ = central_flow(loss, theta0, eta, 2, substeps=1, eig_tol=1e-8, edge_tol=1e-3)
    for a, b in zip(by_default, given_, strict=True):
        np.testing.assert_array_equal(to_numpy(a.theta), to_numpy(b.theta))
        assert (a.t, a.sigma2, a.sharpness) == (b.t, b.sigma2, b.sharpness)
    calls.clear()
    central_flow(loss, theta0, eta, 1, eig_tol=1e-10)
    assert all(kwargs["tol"] == 1e-10 for kwargs, _ in calls)
    assert [p.t for p in central_flow(loss, theta0, eta, 0)] == [0.0]
    with pytest.raises(ValueError, match=r"substeps ≥ 1"):
        central_flow(loss, theta0, eta, 1, substeps=0)
    with pytest.raises(ValueError, match=r"^eta must be a finite positive number"):
        central_flow(loss, theta0, -1.0, 1)


def test_an_euler_step_of_the_central_flow_on_the_edge_is_its_formula():
    """From θ₀ on the edge (S = 2/η, α > 0): θ' = θ₀ − η (∇L̃ + (σ²/2) ∇S) with σ² = 2α/β, then, S(θ') being
    above 2/η, θ'' = θ' − ((S(θ') − 2/η)/β(θ')) ∇S(θ')."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta0 = problem.loss, problem.theta
    terms = sharpness_terms(loss, theta0)
    eta = 2 / terms.sharpness
    sigma2 = 2 * terms.alpha / terms.beta
    moved = theta0 - eta * to_numpy(terms.gradient + (sigma2 / 2) * terms.sharpness_gradient)
    there = sharpness_terms(loss, moved)
    if there.sharpness > 2 / eta:
        moved = moved - ((there.sharpness - 2 / eta) / there.beta) * to_numpy(there.sharpness_gradient)
    assert_close(central_flow(loss, theta0, eta, 1)[1].theta, moved, 1e-7, "one step of the central flow")


def test_the_telemetry_settings_schedule_and_state(monkeypatch):
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta = problem.loss, problem.net.theta
    eta = 1.5 / sharpness_terms(loss, theta).sharpness
    assert SelfStabilizationTelemetry(eta).config() == {"kind": "self_stabilization", "eta": eta, "every_steps": 1,
                                                        "tol": 1e-3, "eig_tol": 1e-8, "max_projection_steps": 20}
    with pytest.raises(ValueError, match=r"^eta must be a finite positive number"):
        SelfStabilizationTelemetry(0.0)
    telemetry = SelfStabilizationTelemetry(eta, every_steps=3)
    assert telemetry.due(0.0)
    telemetry.measure(loss, theta, loss.gradient(theta), eta, 0, 0.0)
    assert not telemetry.due(1.5 * eta) and telemetry.due(3 * eta) and telemetry.next_time == pytest.approx(3 * eta)
    fresh = SelfStabilizationTelemetry(eta)
    fresh.load_state({})                                    # a checkpoint from before the first row
    assert fresh.due(0.0)
    row = fresh.measure(loss, theta, loss.gradient(theta), eta, 0, 0.0)
    assert (row["x_predicted"], row["y_predicted"]) == (row["x"], row["y"])
    near = eta * (1 + 1e-13)
    fresh.measure(loss, theta, loss.gradient(theta), near, 1, eta)      # Δt = η to a relative 1e-12
    with pytest.raises(ValueError, match=r"follows gradient descent"):
        fresh.measure(loss, theta, loss.gradient(theta), eta * (1 + 1e-11), 2, 2 * eta)


def test_each_row_advances_theta_dagger_step_by_step_with_the_telemetrys_settings(monkeypatch):
    """With every_steps = 2, a row after the first projects θ† twice (one GD step of θ† each), from the last
    θ†'s u, with the telemetry's tol, eig_tol and max_projection_steps; projection_steps is what those
    projections evaluated; the measurement at θ_t is at eig_tol; the row has the documented columns."""
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta = problem.loss, problem.net.theta
    eta = 1.5 / sharpness_terms(loss, theta).sharpness
    telemetry = SelfStabilizationTelemetry(eta, every_steps=2, tol=2e-3, eig_tol=1e-9, max_projection_steps=30)
    projections = spy(monkeypatch, "project")
    measurements = spy(monkeypatch, "sharpness_terms")
    telemetry.measure(loss, theta, loss.gradient(theta), eta, 0, 0.0)
    assert all(kwargs["tol"] == 1e-9 for kwargs, _ in measurements)
    first_vector = telemetry.constrained_terms.vector
    projections.clear()
    for _ in range(2):
        theta = theta - eta * loss.gradient(theta)
    row = telemetry.measure(loss, theta, loss.gradient(theta), eta, 2, 2 * eta)
    assert len(projections) == 2
    assert projections[0][0]["previous"] is not None
    np.testing.assert_array_equal(to_numpy(projections[0][0]["previous"]), to_numpy(first_vector))
    assert all((kw["tol"], kw["eig_tol"], kw["max_steps"]) == (2e-3, 1e-9, 30) for kw, _ in projections)
    assert row["projection_steps"] == sum(steps for _, (_, _, steps) in projections)
    assert row["loss"] == pytest.approx(loss.value(theta=theta), rel=1e-14)
    assert set(row) == {"step", "t", "eta", "loss", "sharpness", "sharpness_gradient_norm", "alpha", "beta",
                        "eig_converged", "x", "y", "deviation_norm", "constrained_loss", "constrained_sharpness",
                        "constrained_alpha", "constrained_beta", "projection_steps", "x_predicted", "y_predicted",
                        "loss_predicted", "loss_predicted_by_model"}
    assert row["eig_converged"] is True


def test_a_blown_up_model_gives_empty_predictions_without_a_warning():
    problem = build_problem([4, 6, 3], "tanh", "cross_entropy", n=8, seed=1)
    loss, theta = problem.loss, problem.net.theta
    eta = 1.5 / sharpness_terms(loss, theta).sharpness
    telemetry = SelfStabilizationTelemetry(eta)
    telemetry.measure(loss, theta, loss.gradient(theta), eta, 0, 0.0)
    telemetry.model = (1e300, 1e300)
    theta = theta - eta * loss.gradient(theta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = telemetry.measure(loss, theta, loss.gradient(theta), eta, 1, eta)
    assert row["x_predicted"] is row["y_predicted"] is row["loss_predicted_by_model"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = predicted_step(np.array([1e300]), np.array([1e300]), alpha=1.0, beta=1e300, eta=1.0)
    assert np.isinf(x).all() and not np.isfinite(y).all()
