"""The main job (nn-eos demo) end to end at a tiny scale, its claim checks, and the README's promises."""

import json
import os
import re

import numpy as np

from nn_eos.experiments import cli
from nn_eos.experiments.demo import bulk_claim, edge_claim, monotone_claim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_writes_runs_figures_and_summary(tmp_path):
    out = tmp_path / "demo"
    cli.main(["demo", "--quick", "--out", str(out), "--no-progress"])
    for name in ("rho.png", "projections.png", "sharpness.png", "loss.png", "summary.md", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["gd"]) == {"0.25", "0.5"}
    text = (out / "summary.md").read_text()
    verdict = {True: "holds", False: "does NOT hold", None: "not testable"}
    for lr, result in summary["gd"].items():
        edge = result["edge"]
        # the verdict follows from the numbers by the pre-set criteria, and the summary prints that verdict
        assert edge["holds"] == (edge["max_rho_top"] >= 0.7 and edge["max_rho_next"] <= 0.5)
        assert result["end"]["status"] == "max_time"
        line = next(l for l in text.splitlines() if l.startswith(f"| 1. GD η = {float(lr):g}:"))
        assert line.endswith(f"| {verdict[edge['holds']]} |") and f"{edge['max_rho_top']:.3f}" in line
        line = next(l for l in text.splitlines() if l.startswith(f"| 2. GD η = {float(lr):g}:"))
        assert line.endswith(f"| {verdict[result['bulk']['holds']]} |")
        # claim 2 says which rows it used, in the words `nn-eos analyze` prints for the same run
        from nn_eos import eos
        assert eos.describe_bulk_claim(result["bulk"], 6).rsplit(";", 1)[0] in line
    # the same claims where progressive sharpening is strong: GD at 2/λ_1(θ_0) ÷ 2, 4, 8, 16 on a ReLU net
    relu = summary["relu"]
    lam0 = relu.pop("lambda_1_0")
    assert [float(lr) for lr in relu] == [float(f"{2 / lam0 / d:.3g}") for d in (2, 4, 8, 16)]
    for lr, result in relu.items():
        edge = result["edge"]
        assert edge["holds"] == (edge["max_rho_top"] >= 0.7 and edge["max_rho_next"] <= 0.5)
        line = next(l for l in text.splitlines() if l.startswith(f"| 1. ReLU, GD η = {float(lr):g}:"))
        assert line.endswith(f"| {verdict[edge['holds']]} |") and f"{edge['max_rho_top']:.3f}" in line
        line = next(l for l in text.splitlines() if l.startswith(f"| 2. ReLU, GD η = {float(lr):g}:"))
        assert line.endswith(f"| {verdict[result['bulk']['holds']]} |")
    assert (out / "rho_relu.png").stat().st_size > 0
    mono = summary["ee"]["monotone"]
    assert mono["holds"] == (mono["rises"] == 0)
    assert text.count("| 1. GD") == 2 and "| 3. exponential Euler" in text
    # the demo's folder is a folder of runs for analyze and plot
    assert cli.main(["analyze", str(out)]) == 0
    assert cli.main(["plot", str(out), "--figure", "rho", "loss"]) == 0
    assert (out / "figures" / "rho.png").exists()
    # a second run reuses the finished runs
    before = (out / "runs" / "gd_lr0.5" / "metrics.jsonl").read_bytes()
    cli.main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert (out / "runs" / "gd_lr0.5" / "metrics.jsonl").read_bytes() == before


def test_data_command_writes_dice(tmp_path):
    cli.main(["data", "dice", "--out", str(tmp_path), "--n", "60"])
    with np.load(tmp_path / "dice_train.npz") as f:
        assert f["X"].shape == (60, 1024) and f["y"].shape == (60,)
    assert (tmp_path / "dice_examples.png").exists()


def row(rho, top=0.0, bulk=-0.01):
    return {"rho": rho, "delta_loss_top": top, "delta_loss_bulk": bulk}


def test_claim_checks_can_hold_and_fail():
    at_edge = [row([1.0, 0.9, 0.9, 0.8, 0.75, 0.3, 0.2])] * 4
    assert edge_claim(at_edge)["holds"] and edge_claim(at_edge)["at_edge"] == 5
    below = [row([1.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])] * 4
    assert not edge_claim(below)["holds"]
    too_many = [row([1.0, 0.9, 0.9, 0.8, 0.75, 0.72, 0.2])] * 4
    assert not edge_claim(too_many)["holds"]
    assert bulk_claim(at_edge, 6)["holds"] and bulk_claim(at_edge, 6)["edge_index"] == 5
    lowering_top = [row([1.0, 0.9, 0.9, 0.8, 0.75, 0.3], top=-0.02, bulk=-0.01)] * 4
    assert not bulk_claim(lowering_top, 6)["holds"]
    assert bulk_claim(below, 6)["edge_index"] == 1   # falls back to ρ_1 when ρ_{n_c−1} never reaches 0.7
    assert bulk_claim([row([0.1] * 7)], 6)["holds"] is None
    assert monotone_claim({"loss": [3.0, 2.0, 1.0]})["holds"]
    assert not monotone_claim({"loss": [3.0, 2.0, 2.5]})["holds"]


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    main_command, test_command = readme_commands()[:2]
    assert "nn-eos demo" in main_command and "pip install" in main_command
    assert "pytest" in test_command and 'pip install -e ".[test]"' in test_command
    assert test_command in open(os.path.join(ROOT, ".ci", "run")).read()
