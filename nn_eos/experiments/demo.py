"""The main job: a laptop-scale reproduction of the 2022 paper's edge-of-stability claims on dice.

Gradient descent at two learning rates with the paper's telemetry (ρ_i over t,
top/bulk projections and loss changes), and exponential Euler (2024 paper)
beside it, on a dice subset with a small ELU MLP. It writes the runs, four
figures and a summary that states, from this run's numbers, whether each
claim holds here:

1. the edge of stability spans n_c − 1 eigenvectors: ρ_{n_c−1} reaches the
   edge while ρ_{n_c} stays below it (2022 paper, section 5.1);
2. learning occurs in the bulk: while ρ_{n_c−1} > 0.7, a step along the top
   component of the gradient does not lower the loss, a bulk step does
   (2022 paper, section 5.3 and Table 1);
3. exponential Euler follows the gradient flow without entering the edge:
   its loss never rises (2024 paper, section 7.2).

Claims 1 and 2 are then tested again where their premise, progressive
sharpening, is strong at this scale (``SHARPENING``: a ReLU net with Kaiming
init), by the 2022 protocol at four learning rates below 2/λ_1(θ_0).

The scale (1000 images, two hidden layers of 64) is chosen so that the whole
job takes a few minutes on two CPU cores; the learning rates straddle the
edge at initialisation (2/λ_1(θ_0) ≈ 0.5). Runs are resumable directories:
running the demo again reuses finished runs.
"""

import json
import os
import warnings

import numpy as np

from .. import datasets, eos
from ..backend import resolve_device, to_numpy

from . import plots
from ..eos import EDGE, bulk_claim
from ..curvature import TrainingLoss
from ..eigen import NonConvergenceWarning, top_eigenpairs
from ..integrators import ExponentialEuler, GradientDescent
from .config import build_net
from .threads import DEFAULT_THREADS, blas_threads
from ..loop import train
from ..rundir import load_run

N_CLASSES = 6
DEFAULTS = {"n": 1000, "hidden": [64, 64], "activation": "elu", "lrs": [0.25, 0.5], "ee_lr_max": 0.5,
            "max_time": 40.0, "telemetry_every": 2.0, "telemetry_k": N_CLASSES + 2, "seed": 0}
QUICK = {**DEFAULTS, "n": 120, "hidden": [16], "max_time": 4.0, "telemetry_every": 1.0}

BELOW = 0.5         # "clearly below the edge"
# Where the premise of claim 1 holds at this scale (examples/progressive_sharpening.py: ReLU with Kaiming init
# sharpens ×4.8 along the flow, ELU ×1.5): the 2022 protocol, GD at 2/λ_1(0) divided by these, until loss 0.1
# or t = max_time, telemetry every 1/η steps.
SHARPENING = {"activation": "relu", "init": "kaiming", "divisors": [2, 4, 8, 16], "until_loss": 0.1,
              "telemetry_every": 1.0}


def run_with_telemetry(name, integrator, settings, X, y, out, progress=True, n_classes=N_CLASSES):
    """One resumable run in ``out/runs/name`` on (X, y) with the 2022 paper's telemetry.

    ``settings`` holds hidden, activation, seed, max_time, telemetry_every,
    telemetry_k and optionally until_loss, init, device ('cpu' or 'gpu'; default
    NN_EOS_DEVICE, else cpu), threads (BLAS threads, default 1), arch and width
    (see ``config.build_net``); returns (metrics, telemetry rows, result).
    """
    net_cfg = {"arch": settings.get("arch", "mlp"), "hidden": settings["hidden"], "width": settings.get("width", 0.25),
               "activation": settings["activation"], "seed": settings["seed"],
               **({"init": settings["init"]} if settings.get("init") else {})}
    net, X = build_net(net_cfg, X, n_classes, settings.get("device"))
    loss = TrainingLoss(net, "cross_entropy", X, y)
    telemetry = eos.Telemetry(k=settings["telemetry_k"], every_time=settings["telemetry_every"], tol=1e-3,
                              maxiter=300, method="lanczos", n_classes=n_classes)
    run_dir = os.path.join(out, "runs", name)
    if progress:
        print(f"\n{name}: {integrator!r}, until t = {settings['max_time']:g} or the target loss")
    data = {"dataset": settings.get("dataset", "dice"), "n": int(len(y)), "seed": settings["seed"]}
    with warnings.catch_warnings(), blas_threads(settings.get("threads") or DEFAULT_THREADS):
        warnings.simplefilter("ignore", NonConvergenceWarning)
        train(loss, integrator, until_loss=settings.get("until_loss"), max_time=settings["max_time"],
              telemetry=telemetry, run_dir=run_dir, resume=True, snapshot_every=50, progress=progress, data=data)
    _, metrics, rows, result = load_run(run_dir)
    return metrics, rows, result


def run_protocol(settings, X, y, out, progress=True):
    """The 2022 protocol in the configuration that sharpens (SHARPENING): returns (λ_1(θ_0), {η: run})."""
    relu = {**settings, **{key: value for key, value in SHARPENING.items() if key != "divisors"}}
    net, X_net = build_net({"arch": "mlp", "hidden": relu["hidden"], "activation": relu["activation"],
                            "init": relu["init"], "seed": relu["seed"]}, X, N_CLASSES, relu.get("device"))
    lam0 = float(to_numpy(top_eigenpairs(TrainingLoss(net, "cross_entropy", X_net, y).operator(), 1,
                                         method="krylov", which="LA", tol=1e-8).values)[0])
    lrs = [float(f"{2 / lam0 / d:.3g}") for d in SHARPENING["divisors"]]
    return lam0, {lr: run_with_telemetry(f"relu_gd_lr{lr:g}", GradientDescent(lr), relu, X, y, out, progress)
                  for lr in lrs}


def edge_claim(rows, n_classes=N_CLASSES):
    """max over t of ρ_{n_c−1} and ρ_{n_c}, and how many ρ_i ever reach the edge."""
    rho = np.array([r["rho"] for r in rows])
    top, nxt = rho[:, n_classes - 2].max(), rho[:, n_classes - 1].max()
    return {"max_rho_top": float(top), "max_rho_next": float(nxt),
            "at_edge": int(np.sum(rho.max(axis=0) >= EDGE)), "holds": bool(top >= EDGE and nxt <= BELOW)}


def monotone_claim(metrics):
    loss = np.asarray(metrics["loss"])
    rises = int(np.sum(np.diff(loss) > 1e-12 * np.abs(loss[:-1])))
    return {"steps": int(len(loss)), "rises": rises, "holds": rises == 0}


def _verdict(holds):
    return {True: "holds", False: "does NOT hold", None: "not testable"}[holds]


def summarise_protocol(lam0, runs, max_time):
    """Claims 1 and 2 in the sharpening configuration, as markdown lines and a dict."""
    lines = ["", f"Where progressive sharpening is strong (ReLU, Kaiming init; λ_1(θ_0) = {lam0:.3g}, 2/λ_1(θ_0) = "
             f"{2 / lam0:.3g}): GD at 2/λ_1(θ_0) ÷ {', '.join(map(str, SHARPENING['divisors']))}, telemetry every "
             f"1/η steps, until loss {SHARPENING['until_loss']:g} or t = {max_time:g}.", "",
             "| claim | paper (CIFAR-10, n_c = 10) | this run | verdict |", "|---|---|---|---|"]
    result = {"lambda_1_0": lam0}
    for lr, (metrics, rows, end) in runs.items():
        edge, bulk = edge_claim(rows), bulk_claim(rows, N_CLASSES)
        result[lr] = {"edge": edge, "bulk": bulk, "end": end}
        lines.append(f"| 1. ReLU, GD η = {lr:g}: ρ_{N_CLASSES - 1} reaches the edge (≥ {EDGE}) while ρ_{N_CLASSES} "
                     f"stays ≤ {BELOW} | ρ_9 ≥ 0.693 at every η | max ρ_{N_CLASSES - 1} = {edge['max_rho_top']:.3f}, "
                     f"max ρ_{N_CLASSES} = {edge['max_rho_next']:.3f}; {edge['at_edge']} eigenvalue(s) reach "
                     f"ρ ≥ {EDGE} | {_verdict(edge['holds'])} |")
        lines.append(f"| 2. ReLU, GD η = {lr:g}: at the edge a top step does not lower L̃, bulk steps do | "
                     f"AlexNet-ReLU η = 0.001: top +0.0064 (0.0133), bulk −0.0014 (0.0007) | "
                     f"{eos.describe_bulk_claim(bulk, N_CLASSES).rsplit(';', 1)[0]} | {_verdict(bulk['holds'])} |")
    return lines, result


def summarise(settings, gd, ee):
    """The claims, our numbers beside the papers', as markdown lines and a dict."""
    lines = ["# nn-eos demo: the edge of stability on dice", "",
             f"Dice train subset n = {settings['n']}, MLP [1024, {', '.join(map(str, settings['hidden']))}, 6] "
             f"{settings['activation'].upper()}, cross-entropy, float64; n_c = {N_CLASSES}. Telemetry every "
             f"{settings['telemetry_every']:g} units of t: top {settings['telemetry_k']} eigenpairs of ∇²L̃.", "",
             "| claim | paper (CIFAR-10, n_c = 10) | this run | verdict |", "|---|---|---|---|"]
    result = {"settings": settings, "gd": {}, "ee": {}}
    for lr, (metrics, rows, end) in gd.items():
        edge = edge_claim(rows)
        bulk = bulk_claim(rows, N_CLASSES)
        result["gd"][lr] = {"edge": edge, "bulk": bulk, "end": end}
        lines.append(f"| 1. GD η = {lr:g}: ρ_{N_CLASSES - 1} reaches the edge (≥ {EDGE}) while ρ_{N_CLASSES} stays "
                     f"≤ {BELOW} | ρ_9 ≥ 0.693 at every η; ρ_10 ≤ 0.246 at η = 0.0001 | max ρ_{N_CLASSES - 1} = "
                     f"{edge['max_rho_top']:.3f}, max ρ_{N_CLASSES} = {edge['max_rho_next']:.3f}; "
                     f"{edge['at_edge']} eigenvalue(s) reach ρ ≥ {EDGE} (n_c − 1 = {N_CLASSES - 1}) | "
                     f"{_verdict(edge['holds'])} |")
        measured = eos.describe_bulk_claim(bulk, N_CLASSES).rsplit(";", 1)[0]    # the verdict has its own column
        lines.append(f"| 2. GD η = {lr:g}: while at the edge, a top step does not lower L̃ (mean ΔL̃_top ≥ ½ mean "
                     f"ΔL̃_bulk), bulk steps always do | AlexNet-ReLU η = 0.001: top +0.0064 (0.0133), "
                     f"bulk −0.0014 (0.0007) | {measured} | {_verdict(bulk['holds'])} |")
    metrics, rows, end = ee
    mono = monotone_claim(metrics)
    gd_rises = {lr: monotone_claim(m)["rises"] for lr, (m, _, _) in gd.items()}
    result["ee"] = {"monotone": mono, "end": end, "gd_rises": gd_rises}
    lines.append(f"| 3. exponential Euler never enters the edge: its loss never rises | 2024 paper: training follows the "
                 f"gradient flow without entering the edge | loss rose at {mono['rises']} of {mono['steps']} EE steps "
                 f"(GD: " + ", ".join(f"η = {lr:g}: {r}" for lr, r in gd_rises.items()) + f") | "
                 f"{_verdict(mono['holds'])} |")
    lam_ee = max(r["eigenvalues"][0] for r in rows)
    lines += ["", "Sharpness: " + "; ".join(
        f"GD η = {lr:g}: 2/η = {2 / lr:.3g}, λ_1 over the last half of the run "
        f"{np.median([r['eigenvalues'][0] for r in g[1][len(g[1]) // 2:]]):.3g} (median)" for lr, g in gd.items())
        + f"; exponential Euler (the flow): max λ_1 = {lam_ee:.3g}."]
    lines += ["", "Final losses: " + "; ".join(f"GD η = {lr:g}: {g[2]['loss']:.4f} at t = {g[2]['t']:.3g}"
                                                for lr, g in gd.items())
              + f"; exponential Euler: {end['loss']:.4f} at t = {end['t']:.3g} ({end['steps']} steps).", "",
              "Figures: rho.png (ρ_{n_c−1} solid, ρ_{n_c} dotted), rho_relu.png (the same for the ReLU runs), "
              "projections.png (‖P_top g‖, ‖P_bulk g‖), sharpness.png (λ_1 and 2/η), loss.png."]
    return lines, result


def run_demo(out="nn_eos_demo", quick=False, progress=True, device=None, threads=None, **overrides):
    """Run the demo into the folder ``out``; returns the summary dict (also written as summary.json).

    ``device``: where to compute (default NN_EOS_DEVICE, else cpu); ``threads``: BLAS threads (default 1).
    """
    settings = {**(QUICK if quick else DEFAULTS), **overrides, "device": resolve_device(device),
                "threads": threads or DEFAULT_THREADS}
    os.makedirs(out, exist_ok=True)
    X, y = datasets.dice("train", n=settings["n"], seed=settings["seed"])
    gd = {lr: run_with_telemetry(f"gd_lr{lr:g}", GradientDescent(lr), settings, X, y, out, progress)
          for lr in settings["lrs"]}
    ee = run_with_telemetry("exponential_euler", ExponentialEuler(k=N_CLASSES, lr_max=settings["ee_lr_max"]),
                            settings, X, y, out, progress)
    lam0, protocol = run_protocol(settings, X, y, out, progress)
    labels = [f"GD η = {lr:g}" for lr in gd] + ["exp. Euler"]
    telemetry = [g[1] for g in gd.values()] + [ee[1]]
    plots.rho_over_time(list(zip(labels[:-1], telemetry[:-1])), N_CLASSES, os.path.join(out, "rho.png"))
    plots.projections_over_time(list(zip(labels, telemetry)), os.path.join(out, "projections.png"))
    plots.sharpness_over_time([(lab, rows, lr) for lab, rows, lr in zip(labels, telemetry, [*gd, None])],
                              os.path.join(out, "sharpness.png"))
    plots.loss_over_time(list(zip(labels, [g[0] for g in gd.values()] + [ee[0]])), os.path.join(out, "loss.png"))
    plots.rho_over_time([(f"ReLU, GD η = {lr:g}", run[1]) for lr, run in protocol.items()], N_CLASSES,
                        os.path.join(out, "rho_relu.png"))
    lines, result = summarise(settings, gd, ee)
    protocol_lines, result["relu"] = summarise_protocol(lam0, protocol, settings["max_time"])
    lines[-1:-1] = protocol_lines + [""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    print("\n" + "\n".join(lines))
    print(f"\nwritten to {os.path.abspath(out)}/")
    return result
