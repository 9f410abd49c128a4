"""Does minibatch SGD train at the edge of its batch sharpness, with the full Hessian's λ₁ below 2/η? Measured on dice.

    python examples/stochastic_edge.py [--n 1000] [--batch-sizes 50 200] [--lr 0.5] [--steps 400]

Andreyev & Beneventano (2024): under minibatch SGD the batch sharpness E_B[g_Bᵀ∇²L̃_B g_B / ‖g_B‖²] rises to 2/η
and hovers there, while λ₁(∇²L̃) of the full loss stays below 2/η, the more so the smaller the batch
(docs/stochastic.md). Each run trains an MLP 1024-64-64-6 (ReLU, Kaiming) on n dice images with SGD at step η and
batch size b, measuring both every ``--every`` steps. Three claims are tested, by criteria fixed here:

1. the batch sharpness reaches 2/η: its largest measured value is at least 0.9 × 2/η;
2. it hovers there: after it first reaches 0.9 × 2/η, the median of |batch sharpness / (2/η) − 1| is at most 0.2;
3. the full Hessian stays below: over the same measurements, the median λ₁(∇²L̃) is below 2/η, and lower for the
   smaller batch than for the larger (compared across the runs).

Writes OUT/stochastic_edge.png and OUT/summary.md.
"""

import os

import numpy as np

import nn_eos as ne
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos.experiments.config import build_net

PAPER = "holds (Andreyev & Beneventano 2024: CIFAR-10 MLPs and CNNs)"


def run(batch_size, lr, n, steps, every, batches, seed, device):
    X, y = ne.datasets.dice("train", n=n, seed=seed)
    net, X = build_net({"arch": "mlp", "hidden": [64, 64], "activation": "relu", "init": "kaiming", "seed": seed},
                       X, 6, device)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    sgd = ne.SGD(lr, batch_size=batch_size, seed=seed, sharpness_every=every, batches=batches)
    print(f"\n{sgd!r}: 2/η = {2 / lr:.4g}, {steps} steps, n = {len(y)}")
    result = ne.train(loss, sgd, until_loss=0.0, max_steps=steps, progress=True)
    m = result.metrics
    measured = np.isfinite(m["batch_sharpness"])
    return m["step"][measured], m["batch_sharpness"][measured], m["lambda_1"][measured], float(result.loss)


def verdicts(batch_sharpness, lambda_1, lr):
    edge = 2 / lr
    peak = float(batch_sharpness.max()) / edge
    out = [("holds" if peak >= 0.9 else "does NOT hold", f"max batch sharpness / (2/η) = {peak:.3f}")]
    reached = np.flatnonzero(batch_sharpness >= 0.9 * edge)
    if not len(reached):
        return out + [("not testable", "the batch sharpness never reaches 0.9 × 2/η")] * 2, np.nan
    after = slice(reached[0], None)
    spread = float(np.median(np.abs(batch_sharpness[after] / edge - 1)))
    below = float(np.median(lambda_1[after])) / edge
    out += [("holds" if spread <= 0.2 else "does NOT hold", f"median |BS/(2/η) − 1| = {spread:.3f}"),
            ("holds" if below < 1 else "does NOT hold", f"median λ₁/(2/η) = {below:.3f}")]
    return out, below


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=20, help="measure every this many steps")
    parser.add_argument("--batches", type=int, default=16, help="minibatches per batch-sharpness estimate")
    parser.add_argument("--seed", type=int, default=0)
    add_device(parser)
    parser.add_argument("--out", default="out/stochastic_edge")
    args = parse(parser)
    os.makedirs(args.out, exist_ok=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = ["| batch size | claim | paper | this run | verdict |", "|---|---|---|---|---|"]
    below = {}
    claims = ("1. batch sharpness reaches 2/η", "2. it hovers at 2/η", "3. λ₁(∇²L̃) stays below 2/η")
    for b in sorted(args.batch_sizes):
        steps, bs, lam, final = run(b, args.lr, args.n, args.steps, args.every, args.batches, args.seed, args.device)
        line = ax.plot(steps, bs * args.lr / 2, label=f"b = {b}: batch sharpness (final loss {final:.3g})")
        ax.plot(steps, lam * args.lr / 2, ls=":", color=line[0].get_color(), label=f"b = {b}: λ₁(∇²L̃)")
        results, below[b] = verdicts(bs, lam, args.lr)
        for claim, (verdict, ours) in zip(claims, results):
            lines.append(f"| {b} | {claim} | {PAPER} | {ours.replace('|', chr(92) + '|')} | {verdict} |")
            print(f"  {claim}: {ours} → {verdict}")
    finite = {b: v for b, v in below.items() if np.isfinite(v)}
    if len(finite) >= 2:
        small, large = min(finite), max(finite)
        verdict = "holds" if finite[small] < finite[large] else "does NOT hold"
        lines.append(f"| {small} vs {large} | 3. lower λ₁ for the smaller batch | {PAPER} | median λ₁/(2/η) "
                     f"{finite[small]:.3f} vs {finite[large]:.3f} | {verdict} |")
        print(f"  smaller batch, lower λ₁: {finite[small]:.3f} vs {finite[large]:.3f} → {verdict}")
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("× 2/η")
    ax.legend(fontsize=7)
    ax.set_title(f"SGD at η = {args.lr:g}: batch sharpness (solid) and λ₁ of the full Hessian (dotted)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "stochastic_edge.png"), dpi=120)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
