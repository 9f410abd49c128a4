"""Integrators and the training loop: analytic flows, stability, a stiff reference, telemetry, resumable runs."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import nn_eos as ne
from nn_eos.rundir import snapshot_steps
from checks import TOL, build_problem
from nn_eos.backend import to_numpy
from nn_eos.eigen import BlockOperator
from nn_eos.eos import Telemetry, loss_along
from nn_eos.integrators import exponential_coefficient, from_config


class Quadratic:
    """L̃(θ) = ½ (θ − θ*)ᵀ A (θ − θ*): a test double with TrainingLoss's interface and a known flow."""

    def __init__(self, eigenvalues, seed=0):
        rng = np.random.default_rng(seed)
        P = len(eigenvalues)
        Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
        self.A = (Q * np.asarray(eigenvalues, dtype=float)) @ Q.T
        self.theta_star = rng.standard_normal(P)
        self.num_params, self.num_examples = P, 1
        self.criterion = SimpleNamespace(name="quadratic", default_target_loss=0.0)
        theta0 = self.theta_star + rng.standard_normal(P)
        self.net = SimpleNamespace(theta=theta0, num_outputs=1, xp=np, dtype=np.dtype("float64"), device="cpu",
                                   check_theta=np.asarray, set_theta=lambda th: None, spec={"kind": "quadratic"})

    def flow(self, theta0, t):
        """θ(t) = θ* + e^{−A t} (θ0 − θ*), the exact gradient flow."""
        return self.theta_star + expm(-self.A * t) @ (theta0 - self.theta_star)

    def value(self, theta=None):
        r = (self.net.theta if theta is None else theta) - self.theta_star
        return 0.5 * float(r @ self.A @ r)

    def value_and_gradient(self, theta=None):
        theta = self.net.theta if theta is None else theta
        return self.value(theta), self.A @ (theta - self.theta_star)

    def hvp(self, V, theta=None):
        return self.A @ V

    def operator(self, kind="hessian", theta=None):
        assert kind == "hessian"
        return BlockOperator(self.hvp, like=self.net.theta)


def test_exponential_coefficient():
    dt = 0.1
    assert exponential_coefficient(5.0, dt) == pytest.approx((1 - np.exp(-0.5)) / 5.0, rel=1e-15)
    assert exponential_coefficient(0.0, dt) == dt
    assert exponential_coefficient(1e-12, dt) == pytest.approx(dt, rel=1e-12)
    assert exponential_coefficient(-50.0, dt) == dt          # clamped: negative curvature moves like GD
    assert np.all(exponential_coefficient(np.array([1e3, 10.0, 1.0]), dt) <= dt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # λ = 0, e^{huge}: no RuntimeWarning either
        values = exponential_coefficient(np.array([0.0, -1e6, 1e6, 5.0, 1.0]), dt)
    np.testing.assert_allclose(values, [dt, dt, 1e-6, (1 - np.exp(-0.5)) / 5.0, 1 - np.exp(-0.1)], rtol=1e-15)


def test_exponential_euler_with_all_pairs_is_the_exact_flow_of_a_quadratic():
    quad = Quadratic(np.geomspace(0.1, 1000.0, 12))
    theta0 = quad.net.theta.copy()
    integrator = ne.ExponentialEuler(k=12, lr_max=0.05, tol=1e-13, maxiter=5000)
    run = ne.train(quad, integrator, until_loss=0.0, max_time=1.0, progress=False)
    assert run.status == "max_time" and run.steps == 20
    np.testing.assert_allclose(run.theta, quad.flow(theta0, run.t), rtol=0, atol=1e-10)


@pytest.mark.parametrize("lr,monotone", [(0.19, True), (0.199, True), (0.201, False), (0.25, False)])
def test_gradient_descent_is_monotone_iff_the_step_is_below_two_over_lambda_max(lr, monotone):
    quad = Quadratic(np.linspace(0.5, 10.0, 8), seed=1)
    run = ne.train(quad, ne.GradientDescent(lr), until_loss=1e-16, max_steps=400, progress=False)  # above rounding
    losses = run.metrics["loss"]
    assert bool(np.all(np.diff(losses) <= 0)) == monotone
    if not monotone:
        assert run.status == "diverged" and "diverged" in run.message


def dense_hessian(loss, theta):
    return to_numpy(loss.hvp(np.eye(loss.num_params), theta=theta))


def test_exponential_euler_follows_the_gradient_flow_better_than_gd():
    """Against a reference solution of dθ/dt = −∇L̃(θ) (LSODA, which turns stiff where it must: it agrees with
    Radau to 1e-10 here at a tenth of the cost), after the same number of gradient evaluations.

    Each method is compared with the reference at the time t it claims to have
    reached (GD: t = nη; exponential Euler: t = Σ Δt).
    """
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=12, seed=7)
    loss = p.loss
    theta0 = p.theta
    lam_1 = np.linalg.eigvalsh(dense_hessian(loss, theta0))[-1]
    steps, lr = 20, 2.0 / lam_1                       # GD starts on the edge of stability
    gd = ne.train(loss, ne.GradientDescent(lr), until_loss=0.0, max_steps=steps, progress=False, theta=theta0)
    ee = ne.train(loss, ne.ExponentialEuler(k=3, lr_max=lr, tol=1e-10, maxiter=2000), until_loss=0.0,
                  max_steps=steps, progress=False, theta=theta0)
    T = max(gd.t, ee.t)
    reference = solve_ivp(lambda t, th: -to_numpy(loss.gradient(th)), (0, T), theta0, method="LSODA",
                          jac=lambda t, th: -dense_hessian(loss, th), rtol=1e-10, atol=1e-12, dense_output=True)
    error_gd = np.linalg.norm(to_numpy(gd.theta) - reference.sol(gd.t))
    error_ee = np.linalg.norm(to_numpy(ee.theta) - reference.sol(ee.t))
    print(f"\nafter {steps} gradients: gradient descent at t = {gd.t:.3g} is {error_gd:.3e} from the flow, "
          f"exponential Euler at t = {ee.t:.3g} is {error_ee:.3e} from it")
    assert ee.t > gd.t / 4, "exponential Euler covers a comparable stretch of time"
    assert error_ee < error_gd


def test_adaptive_flow_keeps_the_step_below_the_edge():
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=12, seed=8)
    run = ne.train(p.loss, ne.AdaptiveGradientFlow(lr_max=10.0, safety=0.5), until_loss=0.0, max_steps=15,
                   progress=False)
    rho = run.metrics["dt"] * np.abs(run.metrics["lambda_1"]) / 2
    assert np.all(rho <= 0.25 + 1e-12)   # η λ_1 / 2 ≤ safety / 2


@pytest.mark.parametrize("method", ["krylov", "lanczos", "lobpcg", "power"])
def test_adaptive_flow_steps_by_safety_over_lambda_1_capped_by_lr_max(method):
    """η = min(lr_max, safety / λ_1), λ_1 the largest eigenvalue by value (by |λ| for power, as documented), on a
    quadratic whose largest |λ| is negative; a non-positive λ_1 gives lr_max."""
    q = Quadratic([4.0, 1.0, 0.5, -10.0, 0.1, 2.0])
    theta = q.net.theta
    g = q.value_and_gradient(theta)[1]
    lam = -10.0 if method == "power" else 4.0
    new, lr, info = ne.AdaptiveGradientFlow(lr_max=1.0, safety=0.5, tol=1e-10, maxiter=2000,
                                            method=method).step(q, theta, g)
    assert set(info) == {"lambda_1", "eig_matvecs", "eig_converged"}
    assert info["lambda_1"] == pytest.approx(lam, rel=1e-8) and info["eig_converged"] and info["eig_matvecs"] > 0
    assert lr == pytest.approx(0.5 / abs(lam), rel=1e-8)
    np.testing.assert_allclose(new, theta - lr * g, rtol=1e-15)
    _, capped, _ = ne.AdaptiveGradientFlow(lr_max=0.01, safety=0.5, tol=1e-10, method=method).step(q, theta, g)
    assert capped == 0.01
    concave = Quadratic([-1.0, -2.0, -3.0])
    _, lr, info = ne.AdaptiveGradientFlow(lr_max=1.0, safety=0.5, tol=1e-10, maxiter=2000,
                                          method=method).step(concave, concave.net.theta, concave.net.theta)
    assert lr == (pytest.approx(0.5 / 3.0, rel=1e-8) if method == "power" else 1.0)
    flat = Quadratic([0.5, 0.2, 0.1])                              # 0 < λ_1 < 1: safety / λ_1 = 1
    _, lr, _ = ne.AdaptiveGradientFlow(lr_max=10.0, safety=0.5, tol=1e-10, maxiter=2000,
                                       method=method).step(flat, flat.net.theta, flat.net.theta)
    assert lr == pytest.approx(1.0, rel=1e-8)


def test_adaptive_flow_defaults_are_the_papers_and_its_settings_reach_the_solver():
    assert ne.AdaptiveGradientFlow().config() == {"name": "adaptive_flow", "lr_max": 1e-3, "safety": 0.5,
                                                  "tol": 1e-4, "maxiter": 200, "method": "krylov",
                                                  "stop": "residual"}
    for name in ("lr_max", "safety"):
        with pytest.raises(ValueError, match=f"^{name} must be a finite positive number"):
            ne.AdaptiveGradientFlow(**{name: -1.0})
    q = Quadratic(np.linspace(1.0, 9.0, 12))
    theta, g = q.net.theta, q.value_and_gradient(q.net.theta)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # an unconverged solve is reported in info, not warned
        _, _, info = ne.AdaptiveGradientFlow(tol=1e-14, maxiter=1).step(q, theta, g)
    assert not info["eig_converged"]
    loose = ne.AdaptiveGradientFlow(tol=1e-2).step(q, theta, g)[2]["eig_matvecs"]
    tight = ne.AdaptiveGradientFlow(tol=1e-12, maxiter=2000).step(q, theta, g)[2]["eig_matvecs"]
    assert loose < tight


def test_telemetry_projections_and_loss_changes():
    p = build_problem([5, 6, 4], "tanh", "cross_entropy", n=15, seed=9)
    tele = Telemetry(k=6, every_time=0.5, tol=1e-10, maxiter=5000)
    theta = p.theta
    run = ne.train(p.loss, ne.GradientDescent(0.25), until_loss=0.0, max_steps=6, telemetry=tele, progress=False)
    assert [row["step"] for row in run.telemetry] == [0, 2, 4, 6]       # t = 0, 0.5, 1, and the final θ at 1.5
    assert run.telemetry[-1]["t"] == run.t and run.telemetry[-1]["eta"] == 0.25
    row = run.telemetry[0]
    assert row["n_top"] == 3 and len(row["eigenvalues"]) == 6
    assert row["top_norm"] ** 2 + row["bulk_norm"] ** 2 == pytest.approx(row["grad_norm"] ** 2, rel=TOL["exact"])
    np.testing.assert_allclose(row["rho"], 0.25 * np.array(row["eigenvalues"]) / 2, rtol=1e-15)
    # the loss changes are re-evaluated losses, not Taylor estimates
    g = to_numpy(p.loss.gradient(theta))
    w, U = np.linalg.eigh(dense_hessian(p.loss, theta))
    largest = np.argsort(-np.abs(w))[:6]                   # the 6 pairs power iteration finds (largest |λ|)
    top = U[:, largest[np.argsort(-w[largest])][:3]]      # the top subspace: the 3 largest λ among them
    top_step = top @ (top.T @ g)
    assert row["delta_loss_top"] == pytest.approx(p.loss.value(theta - 0.25 * top_step) - p.loss.value(theta),
                                                  rel=1e-8)
    assert row["delta_loss_bulk"] == pytest.approx(
        p.loss.value(theta - 0.25 * (g - top_step)) - p.loss.value(theta), rel=1e-8)


def test_telemetry_ranks_by_value_where_negative_eigenvalues_dominate():
    """At this initialisation four of the six largest |λ| are negative: ρ_i and P_top are defined on the largest
    eigenvalues by value (2022 paper, section 3.2), and lambda_min is the most negative — all against a dense
    Hessian."""
    p = build_problem([6, 8, 8, 4], "tanh", "cross_entropy", n=20, seed=0)
    theta = p.theta
    w, U = np.linalg.eigh(dense_hessian(p.loss, theta))
    by_magnitude = w[np.argsort(-np.abs(w))[:6]]
    assert (by_magnitude < 0).sum() == 4                      # the premise: ranking by |λ| would be wrong here
    telemetry = Telemetry(k=6, every_time=1.0, tol=1e-10, maxiter=2000)
    g = to_numpy(p.loss.gradient(theta))
    theta = p.net.xp.asarray(theta)                           # on the suite's device
    row = telemetry.measure(p.loss, theta, p.loss.gradient(theta), eta=0.1, step=0, t=0.0)
    np.testing.assert_allclose(row["eigenvalues"], w[::-1][:6], rtol=1e-8)
    assert row["lambda_min"] == pytest.approx(w[0], rel=1e-8) and row["lambda_min_converged"]
    top = U[:, ::-1][:, :3]                                   # n_c − 1 = 3 largest eigenvalues' eigenvectors
    assert row["top_norm"] == pytest.approx(np.linalg.norm(top.T @ g), rel=1e-8)
    np.testing.assert_allclose(np.abs(row["d"]), np.abs(U[:, ::-1][:, :6].T @ g), rtol=1e-6, atol=1e-12)
    # the integrators rank the same way: the adaptive step's λ_1 and exponential Euler's λ_{k+1} are by value
    _, dt, info = ne.AdaptiveGradientFlow(lr_max=10.0, safety=0.5, tol=1e-10).step(p.loss, theta, p.loss.gradient(theta))
    assert info["lambda_1"] == pytest.approx(w[-1], rel=1e-8) and dt == pytest.approx(0.5 / w[-1], rel=1e-8)
    _, dt, info = ne.ExponentialEuler(k=3, lr_max=10.0, tol=1e-10).step(p.loss, theta, p.loss.gradient(theta))
    assert dt == pytest.approx(1 / w[-4], rel=1e-6)          # 1/λ_4, the 4th largest by value


def test_loss_along_a_direction():
    p = build_problem([3, 4, 2], "tanh", "mse", n=5, seed=1)
    d = p.direction()
    values = loss_along(p.loss, 3 * d, [-0.1, 0.0, 0.2])
    assert values[1] == pytest.approx(p.loss.value())
    assert values[2] == pytest.approx(p.loss.value(theta=p.theta + 0.2 * d))


def test_exponential_euler_defaults_are_the_papers_and_its_settings_reach_the_solver():
    """k defaults to the number of outputs (the paper's choice), named errors, warm starts from the last step,
    the paper's eigenvalue stop for power."""
    assert ne.ExponentialEuler().config() == {"name": "exponential_euler", "k": None, "lr_max": 0.01, "tol": 1e-3,
                                              "maxiter": 200, "method": "krylov", "stop": "residual"}
    with pytest.raises(ValueError, match="^k must be"):
        ne.ExponentialEuler(k=0)
    with pytest.raises(ValueError, match="^lr_max must be a finite positive number"):
        ne.ExponentialEuler(lr_max=0)
    p = build_problem([4, 6, 3], "tanh", "cross_entropy", n=10, seed=4)
    theta = p.net.xp.asarray(p.theta)
    g = p.loss.gradient(theta)
    integrator = ne.ExponentialEuler(lr_max=1.0, tol=1e-8, maxiter=2000)
    _, _, first = integrator.step(p.loss, theta, g)
    assert integrator.eigen.k == 3 + 1                        # k = O = 3, and λ_{k+1}
    _, _, again = integrator.step(p.loss, theta, g)           # warm: the last step's vectors are the answer
    assert again["eig_matvecs"] < first["eig_matvecs"] / 2
    products = {stop: ne.ExponentialEuler(k=2, tol=1e-6, maxiter=2000, method="power", stop=stop).step(
        p.loss, theta, g)[2]["eig_matvecs"] for stop in ("residual", "eigenvalues")}
    assert products["eigenvalues"] < products["residual"]


@pytest.mark.parametrize("integrator", [lambda: ne.GradientDescent(0.1), lambda: ne.AdaptiveGradientFlow(tol=1e-4),
                                        lambda: ne.ExponentialEuler(k=2, lr_max=0.1, tol=1e-4)])
def test_a_float32_step_computes_in_float32(integrator):
    """On the strict stand-in: no step of a float32 run meets a float64 array, and θ stays float32."""
    from nn_eos.strict import counting

    p = build_problem([4, 6, 3], "tanh", "cross_entropy", n=10, seed=4, dtype="float32", device="strict")
    theta = p.net.theta.copy()
    with counting() as counts:
        new_theta, _, _ = integrator().step(p.loss, theta, p.loss.gradient(theta))
    assert new_theta.dtype == np.float32 and counts["promotions"] == 0


def test_integrators_rebuild_from_their_config():
    for integrator in (ne.GradientDescent(0.1), ne.AdaptiveGradientFlow(), ne.ExponentialEuler(k=3)):
        assert from_config(integrator.config()).config() == integrator.config()
    with pytest.raises(ValueError, match="unknown integrator"):
        from_config({"name": "rk4"})
    with pytest.raises(ValueError, match="unknown integrator None"):
        from_config({"lr": 0.1})                                    # a config without a name
    with pytest.raises(ValueError, match="lr must be a finite positive number"):
        ne.GradientDescent(0)


# ----- run directories -------------------------------------------------------------

RUN_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np, nn_eos as ne
    run_dir, resume, slow = sys.argv[1], sys.argv[2] == "resume", float(sys.argv[3])
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    net = ne.mlp([6, 8, 8, 3], activation="elu", seed=0)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    class Slow(ne.ExponentialEuler):
        def step(self, *args):
            time.sleep(slow)
            return super().step(*args)
    integrator = Slow(k=2, lr_max=0.5)
    integrator.name = "exponential_euler"
    ne.train(loss, integrator, until_loss=0.0, max_steps=30, snapshot_every=3, run_dir=run_dir, resume=resume,
             telemetry=ne.eos.Telemetry(k=4, every_time=1.0), progress=False)
""")


def run_script(tmp_path, run_dir, mode, slow):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    # on the device NN_EOS_DEVICE names: the strict stand-in's .get() writes the checkpoint's eigenvectors
    # row-major, as CuPy's does, and the warm starts take them row-major either way (integrators.py)
    return subprocess.Popen([sys.executable, str(script), str(run_dir), mode, str(slow)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    whole = run_script(tmp_path, tmp_path / "whole", "fresh", 0.0)
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()
    killed = run_script(tmp_path, tmp_path / "killed", "fresh", 0.05)
    deadline = time.time() + 120
    while time.time() < deadline and len(snapshot_steps(tmp_path / "killed")) < 4:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not os.path.exists(tmp_path / "killed" / "result.json"), "the run was killed before its end"
    resumed = run_script(tmp_path, tmp_path / "killed", "resume", 0.0)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    config_a, metrics_a, telemetry_a, result_a = ne.load_run(tmp_path / "whole")
    config_b, metrics_b, telemetry_b, result_b = ne.load_run(tmp_path / "killed")
    assert result_a["steps"] == result_b["steps"] == 30
    final = lambda d: np.load(d / "snapshots" / "theta_00000030.npy")
    np.testing.assert_array_equal(final(tmp_path / "whole"), final(tmp_path / "killed"))
    for key in ("step", "t", "loss", "dt", "lambda_1"):
        np.testing.assert_array_equal(metrics_a[key], metrics_b[key])
    assert [r["eigenvalues"] for r in telemetry_a] == [r["eigenvalues"] for r in telemetry_b]


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_identically(tmp_path):
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=10, seed=3)
    theta0 = p.theta

    class Interrupting(ne.GradientDescent):
        calls = 0

        def step(self, loss, theta, gradient):
            Interrupting.calls += 1
            if Interrupting.calls == 8:
                raise KeyboardInterrupt
            return super().step(loss, theta, gradient)

    with pytest.raises(KeyboardInterrupt) as caught:
        ne.train(p.loss, Interrupting(0.3), until_loss=0.0, max_steps=12, run_dir=tmp_path / "a", progress=False,
                 theta=theta0)
    assert isinstance(caught.value, ne.TrainingInterrupted) and caught.value.step == 7
    assert str(caught.value) == f"interrupted at step 7: checkpoint written to {tmp_path / 'a'}; " \
                                "train(..., resume=True) continues"
    resumed = ne.train(p.loss, ne.GradientDescent(0.3), until_loss=0.0, max_steps=12, run_dir=tmp_path / "a",
                       resume=True, progress=False)
    whole = ne.train(p.loss, ne.GradientDescent(0.3), until_loss=0.0, max_steps=12, progress=False, theta=theta0)
    np.testing.assert_array_equal(to_numpy(resumed.theta), to_numpy(whole.theta))
    np.testing.assert_array_equal(resumed.metrics["loss"], whole.metrics["loss"])


def test_extending_a_finished_run_keeps_its_last_telemetry_row(tmp_path):
    """A run that stops at max_steps measures its last θ, then checkpoints; extended with a larger max_steps, it
    keeps that row (not measured twice, not lost) and its telemetry equals an uninterrupted run's."""
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=10, seed=3)
    theta0 = p.theta

    def run(max_steps, **kwargs):
        return ne.train(p.loss, ne.GradientDescent(0.3), until_loss=0.0, max_steps=max_steps, progress=False,
                        theta=theta0, telemetry=ne.eos.Telemetry(k=2, every_time=0.3, lambda_min=False), **kwargs)

    whole = run(4).telemetry
    first = run(2, run_dir=tmp_path / "r").telemetry
    assert [r["step"] for r in first] == [0, 1, 2]
    extended = run(4, run_dir=tmp_path / "r", resume=True).telemetry
    assert [r["step"] for r in extended] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal([r["eigenvalues"] for r in extended], [r["eigenvalues"] for r in whole])


def test_run_directory_guards(tmp_path):
    p = build_problem([3, 4, 2], "tanh", "cross_entropy", n=6, seed=2)
    ne.train(p.loss, ne.GradientDescent(0.1), until_loss=0.0, max_steps=2, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        ne.train(p.loss, ne.GradientDescent(0.1), max_steps=2, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        ne.train(p.loss, ne.GradientDescent(0.2), max_steps=2, run_dir=tmp_path / "r", resume=True, progress=False)
    config, metrics, _, result = ne.load_run(tmp_path / "r")
    assert config["integrator"] == {"name": "gd", "lr": 0.1} and config["net"]["widths"] == [3, 4, 2]
    assert result["status"] == "max_steps" and list(metrics["step"]) == [0, 1]


@pytest.mark.parametrize("spectrum", ["negative_top", "negative_next"])
@pytest.mark.parametrize("method", ["power", "krylov", "lanczos", "lobpcg"])
def test_exponential_euler_step_picks_and_orders_eigenpairs_as_documented(method, spectrum):
    """One step on a quadratic whose largest |λ| is negative, against the rule written out from eigh: by value
    (λ_1..λ_k integrated exactly, Δt = min(1/λ_{k+1}, lr_max)) for every method but power, which ranks by |λ|
    (the k of largest |λ| integrated exactly, Δt = min(1/|λ_{k+1}|, lr_max))."""
    if spectrum == "negative_top":                         # the largest |λ| is negative
        quad = Quadratic(np.concatenate([[-40.0, 10.0, 6.0, 3.0], np.linspace(0.1, 1.0, 16)]), seed=3)
    else:                                                    # λ_{k+1} by value is negative: Δt = lr_max
        quad = Quadratic(np.concatenate([[10.0, 6.0, -2.5, -3.0], np.linspace(-5.0, -4.0, 16)]), seed=3)
    theta = quad.net.theta.copy()
    _, g = quad.value_and_gradient(theta)
    k, lr_max = 2, 1.0
    integrator = ne.ExponentialEuler(k=k, lr_max=lr_max, tol=1e-12, maxiter=5000, method=method)
    new_theta, dt, info = integrator.step(quad, theta, g)

    w, U = np.linalg.eigh(quad.A)
    order = np.argsort(-np.abs(w) if method == "power" else -w, kind="stable")[:k + 1]
    lam, V = w[order], U[:, order]
    expected_dt = min(1.0 / abs(lam[k]), lr_max) if method == "power" or lam[k] > 0 else lr_max
    assert set(info) == {"lambda_1", "eig_matvecs", "eig_converged"} and info["eig_converged"]
    assert info["lambda_1"] == pytest.approx(w.max() if method != "power" else lam[np.argmax(lam)], rel=1e-10)
    c = V[:, :k].T @ g
    residual = g - V[:, :k] @ c
    expected = theta - V[:, :k] @ (exponential_coefficient(lam[:k], expected_dt) * c) - expected_dt * residual
    assert dt == pytest.approx(expected_dt, rel=1e-10)
    np.testing.assert_allclose(new_theta, expected, rtol=0, atol=1e-9 * np.abs(theta).max())


@pytest.mark.parametrize("integrator", [lambda: ne.ExponentialEuler(k=2, lr_max=0.1, tol=1e-10, maxiter=500),
                                        lambda: ne.AdaptiveGradientFlow(lr_max=100.0, tol=1e-10, maxiter=500)])
def test_a_step_uses_the_theta_it_is_given_not_the_networks(integrator):
    """step(loss, θ, ∇L̃(θ)) at a θ the network does not hold equals the same step with the network at θ: the
    eigenpairs come from ∇²L̃(θ), never from the network's own parameters."""
    p = build_problem([3, 4, 3], "tanh", "cross_entropy", n=8, seed=4)
    xp = p.net.xp
    theta_net = p.net.theta.copy()
    theta = theta_net + 0.3 * xp.asarray(np.random.default_rng(0).standard_normal(p.net.num_params))
    g = p.loss.gradient(theta)
    stepped, dt, _ = integrator().step(p.loss, theta, g)
    assert np.array_equal(to_numpy(p.net.theta), to_numpy(theta_net))
    p.net.set_theta(theta)
    expected, expected_dt, _ = integrator().step(p.loss, theta, g)
    assert dt == pytest.approx(expected_dt, rel=1e-8)
    np.testing.assert_allclose(to_numpy(stepped), to_numpy(expected), rtol=1e-8, atol=1e-10)
