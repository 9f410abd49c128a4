"""Does gradient descent at the edge of stability follow Damian et al.'s constrained trajectory? Measured on dice.

    python examples/self_stabilization.py [--n 1000] [--steps 80] [--configs relu6 relu2 elu2] [--out DIR]

Damian, Nichani & Lee (ICLR 2023) predict that GD at the edge of stability tracks projected gradient descent on
M = {S ≤ 2/η, ∇L̃ · u = 0} (the constrained trajectory θ†), with the deviation x = u · (θ − θ†) and the
sharpness excess y following a two-variable model driven by α = −∇L̃ · ∇S and β = ‖∇S‖²
(docs/self_stabilization.md). This script runs GD with ``SelfStabilizationTelemetry`` (S, ∇S = ∇³L̃[u, u, ·],
α, β at every step; θ† advanced beside it; the model run alongside) and tests four claims by criteria fixed
here, before the runs:

1. the sharpness hovers at 2/η once it gets there: after the first step with S ≥ 2/η, the median of
   |S / (2/η) − 1| is at most 0.1;
2. GD's loss is predicted by the constrained trajectory: after the edge, the median relative error of
   L̃(θ†) + S(θ†) x² / 2 against L̃(θ) is at most 0.1;
3. the deviation lies along the top eigenvector: after the edge, the median of x² / ‖θ − θ†‖² is at least 0.5;
4. the model predicts the next step: its one-step forecast (x, y measured at t, α and β along θ†) beats the
   naive forecasts x_{t+1} = −x_t and y_{t+1} = y_t in mean absolute error, for both x and y, after the edge;
5. (for the configurations in ``--central-flow``, default elu2) the central flow of Cohen et al. (ICLR 2025)
   predicts GD's time-averaged loss: after the edge, the median relative error of L̃(θ(t)) + σ²S/2 against GD's
   loss averaged over a centred window of 5 steps is at most 0.1.

A claim whose premise is missing (the run never reaches 2/η) is "not testable". Beside the claims the table
says at how many steps the projection onto M converged: where it did not, θ† is not on M there, and the rows
after it compare GD with something else than the constrained trajectory. Configurations: ``relu6`` is
the laptop one where the demo reaches the edge (dice, 6 classes, MLP 64×64, ReLU, Kaiming, GD at
η = 2/λ_1(θ_0) ÷ 2); ``relu2`` is the same on the first two classes only (one outlier eigenvalue instead of
n_c − 1 = 5, as the single-eigenvalue theory assumes); ``elu2`` the same with ELU. Runs are resumable folders in
OUT/runs; OUT/summary.md holds the table and OUT/self_stabilization_<config>.png the figures.
"""

import json
import os
import warnings

import numpy as np

import nn_eos as ne
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos.experiments import figures
from nn_eos.experiments.config import build_net
from nn_eos.self_stabilization import SelfStabilizationTelemetry, central_flow, predicted_step

CONFIGS = {"relu6": ("relu", 6), "relu2": ("relu", 2), "elu2": ("elu", 2)}
MAX_PROJECTION_STEPS = 20          # SelfStabilizationTelemetry's default: a row that took all of them did not converge
CENTRAL_FLOW_PAPER = "holds (Cohen et al., ICLR 2025: the loss of GD averaged over its oscillations)"
PAPER = "holds (Damian et al., Figs. 1 and 3: CIFAR-10 subsets, several nets)"


def dice_classes(n, classes, seed):
    """The first n dice images of classes 0..classes−1."""
    X, y = ne.datasets.dice("train", n=n * 6 // classes + 60, seed=seed)
    keep = y < classes
    return X[keep][:n], y[keep][:n]


def run(config, n, steps, divisor, seed, device, out):
    activation, classes = CONFIGS[config]
    X, y = dice_classes(n, classes, seed)
    net, X = build_net({"arch": "mlp", "hidden": [64, 64], "activation": activation, "init": "kaiming",
                        "seed": seed}, X, classes, device)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    lam0 = float(ne.top_eigenpairs(loss.operator(), 1, method="krylov", which="LA", tol=1e-8).values[0])
    eta = float(f"{2 / lam0 / divisor:.3g}")
    print(f"\n{config}: {activation}, {classes} classes, n = {len(y)}, λ_1(θ_0) = {lam0:.4g}, η = {eta:g} "
          f"(2/η = {2 / eta:.4g}), up to {steps} steps")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ne.NonConvergenceWarning)     # the rows record what did not converge
        ne.train(loss, ne.GradientDescent(eta), until_loss=0.01, max_steps=steps, progress=True,
                          telemetry=SelfStabilizationTelemetry(eta), run_dir=os.path.join(out, "runs", config),
                          resume=True, snapshot_every=10)
    return eta, os.path.join(out, "runs", config)


def central_flow_claim(config, c, eta, seed, n, device, out, window=5):
    """Claim 5: the central flow from θ_0 (Euler, two substeps a step, cached in OUT/central_flow_<config>.json)
    against GD's loss averaged over a centred window; returns (claim, ours, verdict)."""
    path = os.path.join(out, f"central_flow_{config}.json")
    steps = int(c["step"][-1])
    if os.path.exists(path):
        with open(path) as f:
            flow = json.load(f)
    else:
        activation, classes = CONFIGS[config]
        X, y = dice_classes(n, classes, seed)
        net, X = build_net({"arch": "mlp", "hidden": [64, 64], "activation": activation, "init": "kaiming",
                            "seed": seed}, X, classes, device)
        points = central_flow(ne.TrainingLoss(net, "cross_entropy", X, y), net.theta, eta, steps, substeps=2)
        flow = {key: [getattr(p, key) for p in points] for key in ("t", "loss", "sharpness", "sigma2",
                                                                   "predicted_loss")}
        with open(path, "w") as f:
            json.dump(flow, f)
    reached = np.flatnonzero(c["sharpness"] >= 2 / eta)
    if not len(reached):
        return CLAIM_5, "not testable: S never reaches 2/η", "not testable", flow
    averaged = np.convolve(c["loss"], np.ones(window) / window, mode="same")
    after = slice(max(reached[0], window // 2), len(c["loss"]) - window // 2)    # where the window is whole
    error = float(np.median(np.abs(np.asarray(flow["predicted_loss"])[after] / averaged[after] - 1)))
    return (CLAIM_5, f"median relative error {error:.3f} over steps {reached[0]}–{len(c['loss']) - window // 2 - 1}",
            "holds" if error <= 0.1 else "does NOT hold", flow)


def columns(rows):
    names = ["step", "projection_steps", "loss", "sharpness", "x", "y", "deviation_norm", "constrained_loss", "constrained_sharpness",
             "constrained_alpha", "constrained_beta", "loss_predicted", "x_predicted", "y_predicted"]
    return {k: np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=float) for k in names}


def verdicts(c, eta):
    """The four claims of the module docstring: [(claim, our number, verdict)]."""
    edge = 2 / eta
    reached = np.flatnonzero(c["sharpness"] >= edge)
    if not len(reached):
        why = f"not testable: S never reaches 2/η (max S/(2/η) = {c['sharpness'].max() / edge:.2f})"
        return [(claim, why, "not testable") for claim in CLAIMS]
    after = slice(reached[0], None)
    hover = float(np.median(np.abs(c["sharpness"][after] / edge - 1)))
    loss_error = float(np.median(np.abs(c["loss_predicted"][after] / c["loss"][after] - 1)))
    along_u = float(np.median(c["x"][after] ** 2 / np.maximum(c["deviation_norm"][after] ** 2, 1e-300)))
    x_next, y_next = predicted_step(c["x"][:-1], c["y"][:-1], c["constrained_alpha"][:-1],
                                    c["constrained_beta"][:-1], eta)
    late = slice(reached[0], None)
    model_x = np.mean(np.abs(x_next[late] - c["x"][1:][late]))
    naive_x = np.mean(np.abs(-c["x"][:-1][late] - c["x"][1:][late]))
    model_y = np.mean(np.abs(y_next[late] - c["y"][1:][late]))
    naive_y = np.mean(np.abs(c["y"][:-1][late] - c["y"][1:][late]))
    return [
        (CLAIMS[0], f"median |S/(2/η) − 1| = {hover:.3f} over {len(c['step'][after])} steps from step "
                    f"{int(c['step'][reached[0]])}; max S/(2/η) = {c['sharpness'].max() / edge:.2f}",
         "holds" if hover <= 0.1 else "does NOT hold"),
        (CLAIMS[1], f"median relative error {loss_error:.3f} (L̃(θ†) alone: "
                    f"{float(np.median(np.abs(c['constrained_loss'][after] / c['loss'][after] - 1))):.3f})",
         "holds" if loss_error <= 0.1 else "does NOT hold"),
        (CLAIMS[2], f"median x²/‖θ − θ†‖² = {along_u:.3f} (median ‖θ − θ†‖ = "
                    f"{float(np.median(c['deviation_norm'][after])):.3g})",
         "holds" if along_u >= 0.5 else "does NOT hold"),
        (CLAIMS[3], f"mean |error| x: model {model_x:.3g} vs −x_t {naive_x:.3g}; y: model {model_y:.3g} vs y_t "
                    f"{naive_y:.3g}", "holds" if model_x < naive_x and model_y < naive_y else "does NOT hold"),
    ]


CLAIM_5 = "5. the central flow predicts GD's time-averaged loss"
CLAIMS = ["1. S hovers at 2/η after reaching it", "2. L̃(θ) ≈ L̃(θ†) + S(θ†) x²/2",
          "3. θ − θ† lies along u", "4. the model forecasts (x, y) one step ahead"]


def figure(run_dir, path):
    """The self-stabilisation figure of ``nn-eos plot`` (nn_eos.experiments.figures) for one run."""
    fig = figures.build(run_dir, ["self_stabilization"])["self_stabilization"]
    fig.savefig(path, dpi=120)


def flow_figure(config, c, flow, eta, path):
    """GD's loss, its moving average and the central flow's prediction, and the flow's S against 2/η."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(len(flow["loss"]))
    left.plot(c["step"], c["loss"], color="0.7", label="GD")
    left.plot(c["step"][2:-2], np.convolve(c["loss"], np.ones(5) / 5, mode="valid"), label="GD, 5-step average")
    left.plot(steps, flow["predicted_loss"], ls="--", label="central flow: L̃ + σ²S/2")
    left.plot(steps, flow["loss"], ls=":", label="central flow: L̃(θ(t))")
    left.set_yscale("log")
    left.set_xlabel("step (t / η)")
    left.legend(fontsize=8)
    right.plot(c["step"], c["sharpness"], color="0.7", label="GD")
    right.plot(steps, flow["sharpness"], label="central flow")
    right.axhline(2 / eta, color="k", ls="--", lw=0.8)
    right.set_xlabel("step (t / η)")
    right.set_ylabel("S")
    right.legend(fontsize=8)
    fig.suptitle(f"central flow beside GD, {config}, η = {eta:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000, help="dice examples")
    parser.add_argument("--steps", type=int, default=80, help="GD steps (the run also stops at loss 0.01)")
    parser.add_argument("--divisor", type=float, default=2.0, help="η = 2/λ_1(θ_0) ÷ divisor")
    parser.add_argument("--configs", nargs="+", default=["relu6", "relu2", "elu2"], choices=sorted(CONFIGS))
    parser.add_argument("--central-flow", nargs="*", default=["elu2"], choices=sorted(CONFIGS),
                        help="configurations whose central flow is integrated (claim 5; a minute or more each)")
    parser.add_argument("--seed", type=int, default=0)
    add_device(parser)
    parser.add_argument("--out", default="out/self_stabilization")
    args = parse(parser)
    os.makedirs(args.out, exist_ok=True)
    lines = ["| configuration | claim | paper | this run | verdict |", "|---|---|---|---|---|"]
    for config in args.configs:
        eta, run_dir = run(config, args.n, args.steps, args.divisor, args.seed, args.device, args.out)
        c = columns(ne.load_run(run_dir)[2])
        figure(run_dir, os.path.join(args.out, f"self_stabilization_{config}.png"))
        failed = int(np.sum(c["projection_steps"] >= MAX_PROJECTION_STEPS))
        lines.append(f"| {config} | 0. premise: θ† on M | – | the projection converged at {len(c['step']) - failed} "
                     f"of {len(c['step'])} steps | {'met' if not failed else 'NOT met at ' + str(failed) + ' steps'} |")
        print(f"  premise: the projection onto M converged at {len(c['step']) - failed} of {len(c['step'])} steps")
        results = verdicts(c, eta)
        if config in args.central_flow:
            *claim5, flow = central_flow_claim(config, c, eta, args.seed, args.n, args.device, args.out)
            results.append(tuple(claim5))
            flow_figure(config, c, flow, eta, os.path.join(args.out, f"central_flow_{config}.png"))
        for claim, ours, verdict in results:
            paper = CENTRAL_FLOW_PAPER if claim == CLAIM_5 else PAPER
            lines.append(f"| {config} | {claim} | {paper} | {ours.replace('|', chr(92) + '|')} | {verdict} |")
            print(f"  {claim}: {ours} → {verdict}")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
