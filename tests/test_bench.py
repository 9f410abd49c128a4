"""The benchmark's own machinery (bench/peers.py): cold rows really are cold, and a peer that fails or disagrees
stays in the table as "failed: reason" instead of being dropped."""

import importlib.util
import os
import sys

import numpy as np
import pytest

import nn_eos as ne
from nn_eos.backend import to_numpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import peers  # noqa: E402


@pytest.fixture
def problem():
    net = ne.mlp([5, 4, 3], activation="elu", seed=0)
    rng = np.random.default_rng(1)
    theta = to_numpy(net.theta).copy()
    return peers.Problem(net, rng.random((7, 5)), np.arange(7) % 3, (theta, 1.5 * theta),
                         rng.standard_normal((net.num_params, peers.K_BLOCK)))


def test_alternating_calls_switch_theta_every_call():
    seen = []
    call = peers.alternating(lambda i: seen.append(i))
    for _ in range(5):
        call()
    assert seen == [0, 1, 0, 1, 0]


def test_our_rows_compute_at_the_theta_they_claim(problem):
    """Cold rows alternate θ_0, θ_1 (each call at the θ the previous one did not use, so it runs every pass);
    warm rows stay at θ_0; every result is the product at that θ."""
    loss = ne.TrainingLoss(problem.net, ne.CrossEntropy(), problem.X, problem.y)
    expected = {
        "gradient": lambda t: loss.gradient(t), "hvp": lambda t: loss.hvp(problem.v, t),
        "ggn": lambda t: loss.ggn(problem.v, t), peers.QUANTITIES[3]: lambda t: loss.hvp(problem.V, t)}
    rows = peers.ours(problem)
    assert {(r.quantity, r.mode) for r in rows} == {(q, m) for q in peers.QUANTITIES for m in ("cold", "warm")} - {
        ("gradient", "warm")}
    for row in rows:
        thetas = [0, 1, 0] if row.mode == "cold" else [0, 0, 0]
        for at in thetas:
            np.testing.assert_allclose(to_numpy(row.call()), to_numpy(expected[row.quantity](problem.thetas[at])),
                                       rtol=1e-12, atol=1e-14)


def test_cold_rows_do_not_find_passes_left_by_another_row(problem):
    """Each of our cold rows runs the forward pass on every call, whatever ran before it."""
    rows = [r for r in peers.ours(problem) if r.mode == "cold"]
    calls = []
    forward = problem.net.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)
    problem.net.forward = counted
    for _ in range(2):
        for row in rows:
            before = len(calls)
            row.call()
            assert len(calls) > before, f"{row.quantity} cold reused passes"


def test_a_row_that_raises_or_disagrees_is_kept_as_failed():
    reference = {"hvp": np.array([1.0, 2.0])}
    calls = [("hvp", "cold", "A", lambda: [1.0, 2.0 + 1e-12]), ("hvp", "cold", "B", lambda: [1.0, 2.5]),
             ("hvp", "cold", "C", lambda: 1 / 0)]
    rows = peers.checked_rows(calls, lambda result, blocked: np.asarray(result), reference, tol=1e-8)
    assert [row.who for row in rows] == ["A", "B", "C"]
    assert rows[0].call is not None and not rows[0].failed
    assert rows[1].call is None and rows[1].failed.startswith("differs from ours by 2.5e-01")
    assert rows[2].call is None and rows[2].failed.startswith("ZeroDivisionError")


def test_the_third_derivative_bench_runs_and_keeps_what_fails(capsys):
    """bench/third.py at a tiny width: our rows are timed; each peer is timed, or named with its reason (not
    installed, failed or disagreeing), never dropped."""
    import third

    result = third.run(n=8, dtype="float64", rounds=1, device="cpu", widths=[5, 4, 3])
    names = {row["who"] for row in result["rows"]}
    assert {"gradient: ours", "∇³L̃[u, v]: ours", "∇³L̃[u, u]: ours"} <= names
    for peer, label in (("torch", "PyTorch"), ("jax", "JAX")):
        if importlib.util.find_spec(peer) is None:
            assert f"{label} not installed" in result["settings"]
        else:
            assert any(label in name for name in names)
    assert "∇³L̃[u, v]: ours" in capsys.readouterr().out


def test_the_transformer_bench_runs_and_keeps_what_fails(capsys, monkeypatch):
    """bench/transformer.py at a tiny size: every row of ours is timed; PyTorch's and JAX's are timed, named
    failed with the reason, or the peer is named as not installed — never dropped."""
    import transformer

    monkeypatch.setattr(sys, "argv", ["transformer.py", "--n", "4", "--T", "3", "--d", "4", "--heads", "2",
                                      "--depth", "1", "--vocab", "5", "--rounds", "1", "--dtype", "float64",
                                      "--device", "cpu"])
    transformer.main()
    printed = capsys.readouterr().out
    for quantity in ("gradient", "hvp", "ggn", "block of 11 hvp"):
        assert quantity in printed
    for peer, label in (("torch", "PyTorch"), ("jax", "JAX")):
        assert (f"{label} not installed" in printed) == (importlib.util.find_spec(peer) is None)


def test_the_sharded_bench_runs_at_a_tiny_size(capsys):
    """bench/sharded.py --quick: every part prints (the aim's rows, the overhead's fit, the papers' model), and a
    sharded product equals the one process's to rounding."""
    pytest.importorskip("distributed")
    import sharded

    result = sharded.main(["--quick", "--rounds", "1"])
    printed = capsys.readouterr().out
    for part in ("1. A block of 11 hvp", "2. The cost of the cluster", "fit: overhead =", "pays from W ="):
        assert part in printed
    assert [row["who"] for row in result["aim"]["rows"]][2:] == [
        "ShardedLoss, 2 shards on 1 worker(s)", "ShardedLoss, 2 shards on 2 worker(s)",
        "ShardedLoss, 2 shards on 2 worker(s) via the scheduler"]
    assert all(row["rel_diff"] < 1e-13 for row in result["aim"]["rows"])
