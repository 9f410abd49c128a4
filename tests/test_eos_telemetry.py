"""The 2022 paper's telemetry (nn_eos.eos): the row a measurement writes, its warm starts and its schedule, and
the summaries read from the rows (Table 1's test of learning in the bulk, Figure 6's cusp scan)."""

import warnings

import numpy as np
import pytest

from checks import build_problem, dense_hessian
from nn_eos.backend import to_numpy
from nn_eos.eos import EDGE, Telemetry, bulk_claim, cusp_scan, describe_bulk_claim, loss_along, top_bulk_table

ROW_FIELDS = {"step", "t", "eta", "loss", "eigenvalues", "rho", "d", "n_top", "grad_norm", "top_norm", "bulk_norm",
              "delta_loss_top", "delta_loss_bulk", "theta_norm", "eig_converged", "eig_matvecs"}
LAMBDA_MIN_FIELDS = {"lambda_min", "lambda_min_converged", "lambda_min_matvecs"}


def problem(seed=3):
    return build_problem([4, 6, 3], "tanh", "cross_entropy", n=10, seed=seed)


def measure(telemetry, p, theta, eta=0.1, step=0, t=0.0):
    theta = p.net.xp.asarray(theta)
    return telemetry.measure(p.loss, theta, p.loss.gradient(theta), eta=eta, step=step, t=t)


# ----- one measurement -----

def test_a_row_has_the_documented_fields_and_agrees_with_dense_matrices():
    p = problem()
    theta = p.theta
    p.net.set_theta(theta + 1.0)                    # the row is of the θ it is given, not the network's
    row = measure(Telemetry(k=3, tol=1e-10, maxiter=2000), p, theta, eta=0.2, step=7, t=1.4)
    assert set(row) == ROW_FIELDS | LAMBDA_MIN_FIELDS
    w = np.linalg.eigvalsh(dense_hessian(p.loss, theta))
    np.testing.assert_allclose(row["eigenvalues"], w[::-1][:3], rtol=1e-8)
    assert row["lambda_min"] == pytest.approx(w[0], rel=1e-8, abs=1e-8 * w[-1])
    assert row["loss"] == pytest.approx(p.loss.value(theta=theta), rel=1e-14)
    assert row["theta_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-14)
    assert row["grad_norm"] == pytest.approx(np.linalg.norm(to_numpy(p.loss.gradient(theta))), rel=1e-14)
    assert (row["step"], row["t"], row["eta"]) == (7, 1.4, 0.2)
    assert row["eig_converged"] is True and row["lambda_min_converged"] is True
    assert row["eig_matvecs"] > 0 and row["lambda_min_matvecs"] > 0
    without = measure(Telemetry(k=3, lambda_min=False), p, theta)
    assert set(without) == ROW_FIELDS


def test_one_class_leaves_the_whole_gradient_in_the_bulk():
    p = problem()
    row = measure(Telemetry(k=2, n_classes=1, tol=1e-8), p, p.theta)
    assert row["n_top"] == 0 and row["top_norm"] == 0.0
    assert row["bulk_norm"] == pytest.approx(row["grad_norm"], rel=1e-14)
    assert row["delta_loss_top"] == 0.0


def test_documented_defaults_are_the_papers_protocol():
    """k = 20 eigenpairs by value, every 1/η steps (every unit of t), block Krylov to 1e-4, lambda_min on."""
    assert Telemetry().config() == {"k": 20, "every_time": 1.0, "n_classes": None, "tol": 1e-4, "maxiter": 500,
                                    "method": "krylov", "lambda_min": True}


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"every_time": 0.0}, {"every_time": -1.0}, {"every_time": np.nan}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="k ≥ 1 and every_time > 0"):
        Telemetry(**kwargs)


def test_one_eigenpair_is_enough():
    p = problem()
    row = measure(Telemetry(k=1, tol=1e-10, maxiter=2000), p, p.theta)
    assert row["eigenvalues"] == pytest.approx([np.linalg.eigvalsh(dense_hessian(p.loss, p.theta))[-1]], rel=1e-8)


def test_tolerance_and_iteration_limit_reach_the_solvers_and_the_row_records_them_without_warnings():
    p = problem()
    loose = measure(Telemetry(k=3, tol=1e-2), p, p.theta)
    tight = measure(Telemetry(k=3, tol=1e-12, maxiter=5000), p, p.theta)
    assert loose["eig_matvecs"] < tight["eig_matvecs"]
    assert loose["lambda_min_matvecs"] < tight["lambda_min_matvecs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # an unconverged solve is recorded in the row, not warned
        capped = measure(Telemetry(k=3, tol=1e-14, maxiter=2), p, p.theta)
    assert capped["eig_converged"] is False and capped["lambda_min_converged"] is False
    assert capped["eig_matvecs"] <= 3 * 3 and capped["lambda_min_matvecs"] <= 3


def test_each_measurement_warm_starts_from_the_last_and_so_does_a_resumed_run():
    """At the same θ a warm start begins at the answer: far fewer products than cold; the state carries it."""
    p = problem()
    telemetry = Telemetry(k=3, tol=1e-10, maxiter=2000)
    cold = measure(telemetry, p, p.theta)
    warm = measure(telemetry, p, p.theta, t=1.0)
    assert warm["eig_matvecs"] < cold["eig_matvecs"] / 2
    assert warm["lambda_min_matvecs"] < cold["lambda_min_matvecs"] / 2
    resumed = Telemetry(k=3, tol=1e-10, maxiter=2000)
    resumed.load_state(telemetry.state())
    assert resumed.next_time == telemetry.next_time == 2.0
    again = measure(resumed, p, p.theta, t=2.0)
    assert again["eig_matvecs"] < cold["eig_matvecs"] / 2
    assert again["lambda_min_matvecs"] < cold["lambda_min_matvecs"] / 2
    fresh = Telemetry()
    fresh.load_state({})
    assert (fresh.next_time, fresh.vectors, fresh.min_vector) == (0.0, None, None)


def test_schedule_every_time_units_of_t():
    telemetry = Telemetry(k=1, every_time=0.5)
    assert telemetry.due(0.0)
    p = problem()
    measure(telemetry, p, p.theta, t=0.0)
    assert telemetry.next_time == 0.5
    assert not telemetry.due(0.49) and telemetry.due(0.5) and telemetry.due(0.5 - 1e-13)   # rounding in Σ Δt
    measure(telemetry, p, p.theta, t=1.2)            # a long step skips a slot: the next is the next multiple
    assert telemetry.next_time == 1.5


def test_loss_along_starts_from_the_theta_it_is_given():
    p = problem()
    theta, d = p.theta, p.direction()
    p.net.set_theta(theta + 1.0)
    values = loss_along(p.loss, 5 * d, [0.0, 0.3], theta=p.net.xp.asarray(theta))
    assert values[0] == pytest.approx(p.loss.value(theta=theta), rel=1e-14)
    assert values[1] == pytest.approx(p.loss.value(theta=theta + 0.3 * d), rel=1e-14)


# ----- Figure 6: the loss along h_1 -----

def test_cusp_scan_spans_the_quadratic_models_quarter_along_the_top_eigenvector():
    p = problem()
    theta = p.theta
    w, U = np.linalg.eigh(dense_hessian(p.loss, theta))
    p.net.set_theta(theta + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # λ_1 to its default tol, without a warning
        deltas, change, lam = cusp_scan(p.loss, p.net.xp.asarray(theta), points=11)
    assert lam == pytest.approx(w[-1], rel=1e-6)
    span = np.sqrt(0.5 / w[-1])
    np.testing.assert_allclose(deltas, np.linspace(-span, span, 11), rtol=1e-6)
    h = U[:, -1]
    forward = [p.loss.value(theta=theta + d * h) - p.loss.value(theta=theta) for d in deltas]
    backward = forward[::-1]                          # h_1 is found up to its sign
    assert change[5] == 0.0
    assert (np.allclose(change, forward, rtol=1e-5, atol=1e-12)
            or np.allclose(change, backward, rtol=1e-5, atol=1e-12))
    assert len(cusp_scan(p.loss, theta)[0]) == 41


# ----- Table 1: learning in the bulk -----

def rows_with(rho, top, bulk):
    return [{"rho": list(r), "delta_loss_top": t, "delta_loss_bulk": b} for r, t, b in zip(rho, top, bulk)]


def test_top_bulk_table_reads_the_rows_above_the_threshold_only():
    rows = rows_with([[0.9, 0.8], [0.9, 0.7], [0.9, 0.75], [0.2, 0.95], [0.99]],
                     top=[0.1, 5.0, 0.3, 0.2, 7.0], bulk=[-1.0, 9.0, -2.0, -4.0, 9.0])
    table = top_bulk_table(rows, edge_index=2, threshold=0.7)     # ρ_2 > 0.7: rows 0, 2, 3 (0.7 is not above)
    top, bulk = np.array([0.1, 0.3, 0.2]), np.array([-1.0, -2.0, -4.0])
    assert table == pytest.approx({"rows": 3, "top_mean": top.mean(), "top_std": top.std(),
                                   "bulk_mean": bulk.mean(), "bulk_std": bulk.std(), "bulk_all_negative": True})
    assert top_bulk_table(rows, edge_index=2, threshold=0.7, min_rows=4) is None
    assert top_bulk_table(rows[:1] + rows[2:3], edge_index=2) is None        # fewer than 3 rows: none
    zero = rows_with([[0.9]] * 3, top=[0.0] * 3, bulk=[-1.0, 0.0, -1.0])
    assert top_bulk_table(zero, edge_index=1)["bulk_all_negative"] is False  # a step that does not lower L̃


def test_bulk_claim_uses_rho_n_minus_one_falls_back_to_rho_one_and_judges_by_its_rule():
    bulk = [-1.0, -2.0, -3.0]
    on_edge = rows_with([[0.9, 0.9, 0.8]] * 3, top=[-1.0] * 3, bulk=bulk)       # top mean −1 = bulk mean / 2
    claim = bulk_claim(on_edge, n_classes=4)
    assert claim["edge_index"] == 3 and claim["rows"] == 3 and claim["holds"] is True
    worse = rows_with([[0.9, 0.9, 0.8]] * 3, top=[-1.01] * 3, bulk=bulk)         # the top step learns more
    assert bulk_claim(worse, n_classes=4)["holds"] is False
    rising = rows_with([[0.9, 0.9, 0.8]] * 3, top=[1.0] * 3, bulk=[-4.0, -4.0, 0.5])
    assert bulk_claim(rising, n_classes=4)["holds"] is False                     # mean < 0 but not every step
    fallback = rows_with([[0.9, 0.1, 0.1]] * 3, top=[0.0] * 3, bulk=bulk)
    claim = bulk_claim(fallback, n_classes=4)
    assert claim["edge_index"] == 1 and claim["holds"] is True
    assert bulk_claim(fallback[:2], n_classes=4) == {"rows": 0, "holds": None, "edge_index": None}
    assert bulk_claim(fallback, n_classes=2)["edge_index"] == 1                  # ρ_{n_c−1} is ρ_1
    second_only = rows_with([[0.9, 0.9, 0.1]] * 3, top=[0.0] * 3, bulk=bulk)     # ρ_2 above, ρ_3 not: ρ_1
    assert bulk_claim(second_only, n_classes=4)["edge_index"] == 1


def test_describe_bulk_claim_says_which_rows_and_the_verdict():
    bulk = [-1.0, -2.0, -3.0]
    line = describe_bulk_claim(bulk_claim(rows_with([[0.9, 0.9, 0.8]] * 3, [0.5] * 3, bulk), 4), 4)
    assert line == ("Table 1 on the 3 rows with ρ_3 > 0.7: ΔL̃ top +0.5000 (0.0000), bulk -2.0000 (0.8165); "
                    "learning in the bulk holds")
    line = describe_bulk_claim(bulk_claim(rows_with([[0.9, 0.1, 0.1]] * 3, [-3.0] * 3, bulk), 4), 4)
    assert line.startswith("Table 1 on the 3 rows with ρ_1 > 0.7, as too few rows have ρ_3 > 0.7: ")
    assert line.endswith("learning in the bulk does NOT hold")
    assert describe_bulk_claim(bulk_claim([], 4), 4) == (
        "Table 1: fewer than 3 measurements with ρ_3 or ρ_1 > 0.7: not testable")
    assert EDGE == 0.7                                   # the paper's threshold (section 5.3)
