"""The one-shot GPU check: the suite on the device, the demo on both devices, and the GPU timings.

    python bench/gpu_check.py [REPORT_DIR] [--device gpu|cpu] [--small] [--budget SECONDS]

Meant for one call on a lent GPU machine (bench/gpu_check.sh installs the
package and runs this), and dry-run on the CPU with ``--device cpu --small``.
In order, each part on its own so that one failure does not hide the rest:

1. versions of Python, NumPy, SciPy, CuPy, PyTorch, JAX and the device;
2. ``nn-eos demo --quick`` on the device and on the CPU, their numbers compared;
3. on the 2024 paper's MLP (1024-512×5-6 ELU) at n = 4096, float32 and float64:
   gradient, hvp, ggn and a block of 11 hvp, cold and warm, ours beside PyTorch's
   (same device) and JAX's (bench/curvature.py, bench/peers.py);
4. one warm exponential-Euler step (k = 5), in gradients and in seconds; then the
   authors' stable-solvers beside ours on the same card (bench/authors.py: one
   exponential-Euler step cold and warm, the layerwise Jacobian norms), where it
   is installed (``pip install --no-deps`` its wheel, carried in the tree:
   bench/gpu_check.sh installs any ``bench/wheels/*.whl``);
5. ``alignment.analyze`` at n = 1000, in gradients, and its parts: the per-example
   quantities, and each λ_1 solve with blocks of 1 and of 8;
6. where the time goes (bench/gpu_parts.py, at most 150 s): every pass of a
   product per layer, the warm step with blocks of 1, 4, 6 and 8, analyze's
   parts, the eigensolver function by function, and its small dense algebra;
7. the test suite with ``NN_EOS_DEVICE`` set to the device (CI profile), in the
   time left of ``--budget``.

Everything goes into REPORT_DIR (default ``$OUT``, else ``gpu_check_report``):
``report.md``, ``report.json``, ``parts.txt``/``parts.json`` and the suite's log. Aims on the GPU (issue 13):
warm exponential-Euler step ≤ 5 gradients and ≤ 0.1 s in float32, hvp ≤
PyTorch's double-backward HVP on the same card, analyze < 30 gradients.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must not take the card from CuPy

import nn_eos as ne  # noqa: E402
import authors as authors_bench  # noqa: E402
import curvature as curvature_bench  # noqa: E402
import dynamics as dynamics_bench  # noqa: E402
from timing import median_times, timed  # noqa: E402

EE_PAPER_SECONDS = 0.284   # the authors' warm exponential-Euler step: A100, float32, 4096 samples, 5 eigenpairs
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Report:
    """Sections of Markdown and one JSON dict, written to disk after every section."""

    def __init__(self, folder):
        self.folder, self.md, self.data = folder, ["# nn_eos GPU check", ""], {}
        os.makedirs(folder, exist_ok=True)

    def section(self, name, fn):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            lines, data = fn()
            status = "ok"
        except Exception:
            lines, data, status = ["```", traceback.format_exc().rstrip(), "```"], {}, "FAILED"
            print(traceback.format_exc(), flush=True)
        seconds = time.perf_counter() - start
        self.md += [f"## {name} ({status}, {seconds:.0f} s)", "", *lines, ""]
        self.data[name] = {"status": status, "seconds": seconds, **data}
        self.write()
        print("\n".join(lines), flush=True)

    def write(self):
        with open(os.path.join(self.folder, "report.md"), "w") as f:
            f.write("\n".join(self.md) + "\n")
        with open(os.path.join(self.folder, "report.json"), "w") as f:
            json.dump(self.data, f, indent=2, default=str)


def versions(device):
    data = {"python": platform.python_version(), "nn_eos": ne.__version__, "numpy": np.__version__}
    import scipy
    data["scipy"] = scipy.__version__
    for name in ("cupy", "torch", "jax"):
        try:
            data[name] = __import__(name).__version__
        except Exception as error:  # not installed, or a CUDA library that fails to load
            data[name] = f"unavailable ({type(error).__name__})"
    if device == "gpu":
        cupy = ne.backend.require_cupy()
        props = cupy.cuda.runtime.getDeviceProperties(0)
        data["device"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        data["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        data["memory_GiB"] = round(props["totalGlobalMem"] / 2**30, 1)
    else:
        data["device"] = f"CPU ({os.cpu_count()} cores)"
    return [f"- {k}: {v}" for k, v in data.items()], data


def _leaves(tree, prefix=""):
    """{path: number} of every number in a nested dict/list."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}[{i}]").items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def demo_on_both(device):
    try:
        from nn_eos.experiments.demo import run_demo
    except ImportError:  # before the experiments floor existed
        from nn_eos.experiments.demo import run_demo
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dev in dict.fromkeys([device, "cpu"]):
            start = time.perf_counter()
            results[dev] = run_demo(os.path.join(tmp, dev), quick=True, progress=False, device=dev)
            seconds[dev] = time.perf_counter() - start
    data = {"seconds": seconds}
    lines = [f"- demo --quick on {dev}: {s:.1f} s" for dev, s in seconds.items()]
    if device != "cpu":
        a, b = _leaves(results[device]), _leaves(results["cpu"])
        shared = sorted(set(a) & set(b))
        rel = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in shared if np.isfinite(a[k]) and np.isfinite(b[k])}
        worst = max(rel, key=rel.get) if rel else None
        data.update(compared=len(rel), max_relative_difference=rel[worst] if worst else None, worst=worst)
        lines.append(f"- {len(rel)} numbers of summary.json compared; largest relative difference "
                     f"{rel[worst]:.1e} ({worst})" if worst else "- no numbers to compare")
    return lines, data


def products(device, n, rounds, small):
    """bench/curvature.py's rows, cold and warm, ours and PyTorch's and JAX's, float32 and float64."""
    widths = [1024, 32, 32, 6] if small else curvature_bench.WIDTHS
    curvature_bench.WIDTHS[:] = widths
    lines, data = [], {}
    for dtype in ("float32", "float64"):
        result = curvature_bench.run(dtype, n, rounds, device, peers=True)
        rows = result["rows"]
        ours = {(r["quantity"], r["mode"]): r["seconds"] for r in rows if r["who"] == "ours"}
        g = ours[("gradient", "cold")]
        lines += [f"### {dtype}, n = {n}, MLP {widths}", ""] + [f"- {s}" for s in result["settings"]] + [""]
        lines += ["| quantity | mode | contender | median s | / our gradient | ours / this |", "|---|---|---|---|---|---|"]
        for r in rows:
            if "failed" in r:
                lines.append(f"| {r['quantity']} | {r['mode']} | {r['who']} | failed: {r['failed']} | | |")
                continue
            ratio = "" if r["who"] == "ours" else f"{ours[(r['quantity'], r['mode'])] / r['seconds']:.2f}"
            lines.append(f"| {r['quantity']} | {r['mode']} | {r['who']} | {r['seconds']:.5f} | "
                         f"{r['seconds'] / g:.2f} | {ratio} |")
        lines.append("")
        data[dtype] = result
    return lines, data


def exponential_euler(device, n, small):
    widths = [1024, 32, 32, 6] if small else [1024, 512, 512, 512, 512, 512, 6]
    lines, data = [], {}
    X, y = ne.datasets.dice("train", n=n)
    for dtype in ("float32", "float64"):
        net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
        loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
        gradient = median_times({"g": loss.value_and_gradient}, rounds=5)["g"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ne.NonConvergenceWarning)
            seconds, matvecs, dt = dynamics_bench.time_steps(loss, ne.ExponentialEuler(k=5, lr_max=0.01), steps=3)
        data[dtype] = {"step_s": seconds, "gradient_s": gradient, "step/gradient": seconds / gradient,
                       "eig_matvecs": matvecs, "dt": dt}
        lines.append(f"- {dtype}: warm step {seconds:.4f} s = {seconds / gradient:.1f} gradients "
                     f"({matvecs:.0f} products, Δt = {dt:.3g}); paper 0.284 s (A100, float32) "
                     f"= {seconds / EE_PAPER_SECONDS:.2f}× the paper's")
    return lines, data


def authors(device, n, small):
    """bench/authors.py on the device: one exponential-Euler step cold and warm, and the layerwise Jacobian
    norms, ours beside stable-solvers (PyTorch) on the same card, float32 (the authors' setting) and float64."""
    import types
    widths = [1024, 32, 32, 6] if small else [1024, 512, 512, 512, 512, 512, 6]
    lines, data = [], {}
    for dtype in ("float32", "float64"):
        args = types.SimpleNamespace(n=n, widths=widths, k=5, lr_max=0.01, tol=1e-4, dtype=dtype,
                                     rounds=1 if small else 3, jacobian_n=min(n, 256), device=device)
        rows, checks, _ = authors_bench.compare(args)
        lines += [f"### {dtype}, n = {n}", "", "| " + " | ".join(authors_bench.HEADERS) + " |",
                  "|" + "---|" * len(authors_bench.HEADERS)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        lines += [""] + [f"- {c}" for c in checks if c] + [""]
        data[dtype] = {"rows": rows, "checks": checks}
    return lines, data


def alignment_analyze(device, n, small):
    widths = [1024, 32, 32, 6] if small else [1024, 512, 512, 512, 512, 512, 6]
    X, y = ne.datasets.dice("train", n=n)
    net = ne.mlp(widths, activation="elu", seed=0, device=device)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    gradient = median_times({"g": loss.value_and_gradient}, rounds=5)["g"]
    ne.alignment.analyze(net, "cross_entropy", X[:64], y[:64])          # compile the kernels once
    report, seconds = timed(lambda: ne.alignment.analyze(net, "cross_entropy", X, y))
    sharpness = {name: float(value) for name, value in report.sharpness.items()}
    data = {"seconds": seconds, "gradient_s": gradient, "analyze/gradient": seconds / gradient,
            "sharpness": sharpness, "overlap_ratio": float(report.overlap_ratio)}
    lines = [f"- analyze at n = {n}: {seconds:.3f} s = {seconds / gradient:.1f} gradients "
             f"(λ_1: {', '.join(f'{k} {v:.4g}' for k, v in sharpness.items())}; "
             f"ρ(K) = {report.overlap_ratio:.4g})"]
    # where the time goes: the per-example quantities, and each λ_1 solve with blocks of 1 (the default for one
    # eigenpair) and of 8 (guard 7), which needs fewer, wider products (the CPU's counts: README, the GPU)
    Xd, yd = next(loss.chunks())
    _, part = timed(lambda: ne.alignment.per_example_quantities(net, loss.criterion, Xd, yd))
    data["per_example_s"] = part
    lines.append(f"  - per-example quantities (Jacobians, Grams, layerwise norms): {part:.3f} s = "
                 f"{part / gradient:.1f} gradients")
    for kind in ("hessian", "ggn", "residual"):
        for guard, block in ((0, 1), (7, 8)):
            result, part = timed(lambda: ne.top_eigenpairs(loss.operator(kind), 1, method="krylov", which="LA",
                                                           tol=ne.alignment.SHARPNESS_TOL, guard=guard,
                                                           block=block))
            data[f"{kind}_block{block}"] = {"seconds": part, "products": result.iterations,
                                            "matvecs": result.matvecs}
            lines.append(f"  - λ_1 of {kind}, blocks of {block}: {part:.3f} s = {part / gradient:.1f} gradients, "
                         f"{result.iterations} products ({result.matvecs} matvecs)")
    return lines, data


def breakdown(device, folder, small, seconds):
    """bench/gpu_parts.py in a process of its own: where the time of a product, a warm step and analyze goes."""
    parts = ["passes", "analyze", "solver", "ops"] + ([] if small else ["ee"])
    command = [sys.executable, os.path.join(REPO, "bench", "gpu_parts.py"), "--device", device,
               "--json", os.path.join(folder, "parts.json"), "--parts", *parts] + (["--small"] if small else [])
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(seconds, 10))
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as stopped:          # what it printed so far is bytes, whatever text= says
        text, rc = (stopped.stdout or b"").decode(errors="replace"), "timed out"
    with open(os.path.join(folder, "parts.txt"), "w") as f:
        f.write(text)
    if rc != 0:
        raise RuntimeError(f"bench/gpu_parts.py: {rc}\n{text[-3000:]}")
    return ["```", text.strip(), "```"], {"parts": "parts.json"}


def suite(device, folder, seconds):
    env = {**os.environ, "NN_EOS_DEVICE": device, "HYPOTHESIS_PROFILE": "ci", "PYTHONUNBUFFERED": "1"}
    log = os.path.join(folder, "suite.log")
    command = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "tests"]
    try:
        import xdist  # noqa: F401  (pytest-xdist: spread the suite over the machine's cores, one GPU shared)
        command += ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    with open(log, "w") as f:
        try:
            rc = subprocess.run(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=max(seconds, 10)).returncode
        except subprocess.TimeoutExpired:
            rc = "timed out"
    text = open(log).read()
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M))
                    | set(re.findall(r"(\S+::\S+) (?:FAILED|ERROR)", text)))
    closing = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    data = {"returncode": rc, "closing": closing[-1] if closing else None, "failed": failed}
    lines = [f"- NN_EOS_DEVICE={device} pytest: {data['closing'] or rc} (full log: suite.log)"]
    lines += [f"  - {name}" for name in failed[:40]]
    return lines, data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", nargs="?", default=os.environ.get("OUT") or "gpu_check_report",
                        help="where report.md, report.json, parts.txt and suite.log go")
    parser.add_argument("--device", default="gpu", choices=["cpu", "gpu"])
    parser.add_argument("--small", action="store_true", help="seconds-scale sizes (a dry run on the CPU)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything; the suite gets the rest")
    parser.add_argument("--no-suite", dest="run_suite", action="store_false")
    args = parser.parse_args()
    start = time.perf_counter()
    report = Report(args.folder)
    n_big, n_align = (256, 128) if args.small else (4096, 1000)
    report.section("versions and device", lambda: versions(args.device))
    report.section("demo --quick on the device and the CPU", lambda: demo_on_both(args.device))
    report.section("curvature products, 2024 MLP", lambda: products(args.device, n_big, 3 if args.small else 5,
                                                                     args.small))
    report.section("exponential Euler, warm step, k = 5", lambda: exponential_euler(args.device, n_big, args.small))
    report.section("the authors' stable-solvers beside ours", lambda: authors(args.device, n_align, args.small))
    report.section("alignment.analyze", lambda: alignment_analyze(args.device, n_align, args.small))
    report.section("where the time goes (bench/gpu_parts.py)",
                   lambda: breakdown(args.device, args.folder, args.small, 150))
    if args.run_suite:
        left = args.budget - (time.perf_counter() - start) - 15
        report.section("test suite on the device", lambda: suite(args.device, args.folder, left))
    print(f"\nreport: {os.path.join(args.folder, 'report.md')} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
