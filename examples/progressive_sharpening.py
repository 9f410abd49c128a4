"""Where does progressive sharpening happen at laptop scale? A documented scan along the gradient flow.

    python examples/progressive_sharpening.py [--sizes 1000 4000] [--nets 64x64 256x256x256]
        [--activations relu tanh elu] [--criteria cross_entropy mse] [--gains 1.0] [--max-time 10]

The 2022 paper's first claim needs its premise: the sharpness λ_1 must climb along the flow until it meets
2/η. Each configuration of the grid (dice subset size, hidden widths, activation, criterion, initialisation
gain) is trained by exponential Euler (2024 paper, section 7.2), which follows the gradient flow dθ/dt = −∇L̃
without entering the edge of stability, until t = max-time, recording λ_1(t) at every step. The strength of
progressive sharpening is the ratio λ_1(T)/λ_1(0) and its rate ln(λ_1(T)/λ_1(0))/T; the table ranks the
configurations by it. The criterion of "strong" is fixed before the runs: λ_1 at least doubles by t = T
(rate ≥ ln 2 / T). Results are cached per configuration in OUT/<name>.json, so a second call only runs what
is new. Writes OUT/sharpening.png (λ_1(t)/λ_1(0) for every configuration) and OUT/table.md.
"""

import itertools
import json
import os

import numpy as np

import nn_eos as ne
from nn_eos.experiments.arguments import add_device, parse, script_parser

STRONG = 2.0        # pre-set: "strong" progressive sharpening doubles λ_1 by t = T


def run_one(n, hidden, activation, criterion, gain, max_time, seed, device):
    """λ_1(t) along the flow for one configuration: (t, λ_1) lists."""
    X, y = ne.datasets.dice("train", n=n, seed=seed)
    widths = [X.shape[1], *hidden, 6]
    base = {"relu": 2 ** 0.5, "elu": 2 ** 0.5, "tanh": 5 / 3}[activation]
    net = ne.mlp(widths, activation=activation, init="kaiming", gain=gain * base, seed=seed, device=device)
    loss = ne.TrainingLoss(net, criterion, X, y)
    run = ne.train(loss, ne.ExponentialEuler(k=6, lr_max=0.5), until_loss=0.0, max_time=max_time, progress=False)
    t = np.asarray(run.metrics["t"], dtype=float).tolist()
    lam = np.asarray(run.metrics["lambda_1"], dtype=float).tolist()
    return {"t": t + [run.t], "lambda_1": lam + [lam[-1]], "loss": float(run.loss), "steps": run.steps}


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--nets", nargs="+", default=["64x64", "256x256x256"], help="hidden widths, 'x'-separated")
    parser.add_argument("--activations", nargs="+", default=["relu", "tanh", "elu"], choices=["relu", "tanh", "elu"])
    parser.add_argument("--criteria", nargs="+", default=["cross_entropy", "mse"], choices=["cross_entropy", "mse"])
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0], help="initialisation scale (× the "
                        "activation's gain)")
    parser.add_argument("--max-time", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    add_device(parser)
    parser.add_argument("--out", default="out/progressive_sharpening")
    args = parse(parser)
    os.makedirs(args.out, exist_ok=True)

    results = {}
    grid = list(itertools.product(args.sizes, args.nets, args.activations, args.criteria, args.gains))
    for i, (n, net, activation, criterion, gain) in enumerate(grid, 1):
        name = f"n{n}_{net}_{activation}_{criterion}_gain{gain:g}_T{args.max_time:g}"
        path = os.path.join(args.out, f"{name}.json")
        if not os.path.exists(path):
            print(f"[{i}/{len(grid)}] {name}", flush=True)
            hidden = [int(w) for w in net.split("x")]
            with open(path, "w") as f:
                json.dump(run_one(n, hidden, activation, criterion, gain, args.max_time, args.seed, args.device), f)
        with open(path) as f:
            results[name] = json.load(f)

    rows = []
    for name, r in results.items():
        lam = np.asarray(r["lambda_1"])
        ratio, peak = lam[-1] / lam[0], lam.max() / lam[0]
        rows.append((np.log(ratio) / r["t"][-1], name, lam[0], lam[-1], ratio, peak, r["loss"], r["steps"]))
    rows.sort(reverse=True)
    lines = ["| configuration | λ_1(0) | λ_1(T) | λ_1(T)/λ_1(0) | max λ_1/λ_1(0) | rate ln(ratio)/T | loss at T "
             "| steps |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {l0:.3g} | {lT:.3g} | {ratio:.2f} | {peak:.2f} | {rate:.3f} | {loss:.3g} | {steps} |"
              for rate, name, l0, lT, ratio, peak, loss, steps in rows]
    strong = [row for row in rows if row[4] >= STRONG]
    verdict = (f"{len(strong)} of {len(rows)} configurations sharpen strongly (λ_1 at least ×{STRONG:g} by "
               f"t = {args.max_time:g}); the strongest: {rows[0][1]} (×{rows[0][4]:.2f})")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n" + verdict + "\n")
    print("\n".join(lines) + "\n\n" + verdict)

    from nn_eos.experiments import plots

    fig, ax = plots.subplots(figsize=(7.5, 4.6))
    colours = plots.colours(len(rows))
    for rank, ((_, name, *_), colour, style) in enumerate(zip(rows, colours, plots.STYLES * len(rows))):
        r = results[name]
        lam = np.asarray(r["lambda_1"])
        ax.semilogy(r["t"], lam / lam[0], linestyle=style, color=colour, lw=1.1, label=name if rank < 8 else None)
    ax.axhline(STRONG, color="0.5", lw=0.8, ls=":", label=rf"$\times{STRONG:g}$: strong (pre-set)")
    ax.set_xlabel(r"$t$ along the gradient flow (exponential Euler)")
    ax.set_ylabel(r"$\lambda_1(t) / \lambda_1(0)$")
    ax.legend(fontsize=6, title="the 8 strongest", title_fontsize=7)
    plots.finish(fig, ax, os.path.join(args.out, "sharpening.png"), "Progressive sharpening along the flow, by "
                 "configuration")
    print(f"\nwritten to {os.path.abspath(args.out)}/ (sharpening.png, table.md)")


if __name__ == "__main__":
    main()
