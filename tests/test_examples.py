"""Every example script runs end to end at a tiny scale (the defaults are laptop-scale and take minutes)."""

import json
import os
import re
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

NO_FIGURES = ("curvature_tour.py", "reading_the_passes.py", "custom_layer.py")   # scripts that only print
CASES = {
    "curvature_tour.py": [],
    "reading_the_passes.py": [],
    "custom_layer.py": ["--n", "60", "--steps", "3"],
    "edge_of_stability.py --arch alexnet": ["--arch", "alexnet", "--width", "0.0625", "--lrs", "0.1", "--n", "24",
                                            "--max-time", "0.2", "--every", "0.1"],
    "edge_of_stability.py": ["--lrs", "0.5", "--n", "60", "--hidden", "8", "--max-time", "2", "--every", "1",
                             "--classes", "2"],
    "gradient_flow.py": ["--sizes", "30", "60", "90", "--hidden", "8", "--max-time", "2"],
    "exponential_euler.py": ["--n", "60", "--hidden", "8", "--max-time", "2"],
    "jacobian_alignment.py": ["--sizes", "60", "120", "--hidden", "8", "8", "8", "--max-time", "12",
                              "--snapshot-every", "3"],
    "adaptive_edge.py": ["--n", "60", "--steps", "12", "--every", "4", "--skip", "4", "--adam-lrs", "0.001",
                         "--rmsprop-lrs", "0.0001"],
    "stochastic_edge.py": ["--n", "60", "--batch-sizes", "10", "30", "--steps", "6", "--every", "3", "--batches", "2"],
    "self_stabilization.py": ["--n", "60", "--steps", "4", "--configs", "relu2"],
    "transformer_edge.py": ["--n", "16", "--length", "6", "--d", "4", "--steps", "8", "--every", "4", "--skip", "4",
                            "--gd-fractions", "0.5", "--adam-lrs", "0.003"],
    "progressive_sharpening.py": ["--sizes", "60", "--nets", "8", "--activations", "tanh", "relu",
                                  "--criteria", "mse", "--max-time", "1"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_example_runs(case, tmp_path):
    script, args = case.split()[0], list(CASES[case])
    if script not in NO_FIGURES:
        args += ["--out", str(tmp_path)]
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-3000:]
    if script not in NO_FIGURES:
        assert any(name.endswith(".png") for name in os.listdir(tmp_path)), os.listdir(tmp_path)
    if script == "reading_the_passes.py":
        assert "every check passed" in done.stdout and "WRONG" not in done.stdout
    if script == "custom_layer.py":                                  # both planted bugs named by the checker
        assert "GELU.curvature (σ'') against differences of σ'" in done.stdout, done.stdout
        assert "Scale.r_backward input (second_order=True" in done.stdout, done.stdout
    if script not in (*NO_FIGURES, "exponential_euler.py", "progressive_sharpening.py"):
        assert re.search(r"(holds|does NOT hold|not testable)", done.stdout), done.stdout[-2000:]   # a verdict
    if script == "progressive_sharpening.py":                        # the scan's ranking, by its pre-set criterion
        table = (tmp_path / "table.md").read_text()
        assert table.count("| n60_8_") == 2
        assert re.search(r"\d+ of 2 configurations sharpen strongly \(λ_1 at least ×2 by t = 1\)", table), table


# the dry runs name their device (--device cpu), so the strict pass would repeat the NumPy pass's run exactly
same_in_every_pass = pytest.mark.skipif(os.environ.get("NN_EOS_DEVICE") == "strict",
                                        reason="runs with --device cpu: the NumPy pass of the suite covers it")


@same_in_every_pass
def test_the_gpu_check_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_check.py runs once per lent GPU, rarely: its CPU dry run (seconds-scale sizes) keeps it working."""
    bench = os.path.join(os.path.dirname(EXAMPLES), "bench", "gpu_check.py")
    done = subprocess.run([sys.executable, bench, str(tmp_path), "--device", "cpu", "--small", "--no-suite"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-3000:]
    sections = re.findall(r"^## (.*) \((\w+), \d+ s\)$", (tmp_path / "report.md").read_text(), flags=re.M)
    assert len(sections) == 7 and all(status == "ok" for _, status in sections), sections
    assert "λ_1 of residual, blocks of 8" in (tmp_path / "report.md").read_text()


@same_in_every_pass
def test_the_gpu_breakdown_dry_runs_on_the_cpu(tmp_path):
    """bench/gpu_parts.py, which says where a device's time goes, also runs only where a GPU is lent: its CPU dry
    run keeps every part working (the exponential-Euler blocks are left to gpu_check's dry run, for time)."""
    bench = os.path.join(os.path.dirname(EXAMPLES), "bench", "gpu_parts.py")
    out = tmp_path / "parts.json"
    done = subprocess.run([sys.executable, bench, "--device", "cpu", "--small", "--json", str(out),
                           "--parts", "passes", "analyze", "solver", "ops"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = json.loads(out.read_text())
    assert set(parts) == {"passes float32", "passes float64", "analyze", "solver", "ops"}
    hvp = parts["passes float64"]["parts"]["hvp k=1"]["by_pass"]
    assert set(hvp) == {"r_forward", "hessian_product", "r_backward"}          # warm: no forward, no backward
    assert parts["solver"]["residual λ_1, blocks of 8"]["calls"]["_product"] > 1
