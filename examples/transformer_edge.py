"""Does a small transformer train at the edge of stability? GD's sharpness, Adam's preconditioned sharpness and the
Gauss-Newton share of λ₁, measured with exact curvature products on characters of text.

    python examples/transformer_edge.py [--gd-fractions 0.5 0.25] [--adam-lrs 0.001 0.003] [--steps 600] [--every 20]

The network is ``ne.transformer`` (pre-norm, causal, GELU; d = 16, 2 heads, depth 1 by default) on n windows of
the package's generated text (``datasets.characters``: next-character prediction), full batch, token-level
cross-entropy. GD runs at step sizes η that are fractions of 2/λ₁(θ₀), so that it starts below the edge and any
rise to 2/η is progressive sharpening. The claims and the criteria that decide them are fixed here, before any
run:

1. GD: progressive sharpening to the edge (Cohen et al. 2021) — after step ``--skip``, the largest measured
   λ₁(∇²L̃) is at least 0.9 × 2/η;
2. GD: it hovers there — over the measurements after λ₁ first reaches 0.9 × 2/η, the median of |ηλ₁/2 − 1| is at
   most 0.2 (not testable when claim 1 fails);
3. Adam: the preconditioned sharpness λ₁(P⁻¹∇²L̃) rises to 0.9 × 38/η (β₁ = 0.9) and hovers as in 2 (Cohen et al.
   2022, "adaptive edge of stability");
4. λ₁ is the Gauss-Newton's (the 2024 paper, on MLPs: λ₁(G) ≈ λ₁): along each GD run, the median of
   λ₁(G)/λ₁(∇²L̃) over the measurements after ``--skip`` lies in [0.9, 1.1].

Writes OUT/transformer_edge.png (ηλ₁/2 and λ₁(G)/λ₁ against the step for GD; Adam's ratio to 38/η) and
OUT/summary.md (the paper's claim beside ours and a verdict per claim and run).
"""

import os

import numpy as np

import nn_eos as ne
from nn_eos.alignment import top_curvature
from nn_eos.experiments.arguments import add_device, parse, script_parser

PAPERS = {"edge": "holds (Cohen et al. 2021: transformers on WikiText-2, full batch)",
          "adam": "holds (Cohen et al. 2022: a transformer on WikiText-2, full batch Adam)",
          "ggn": "λ₁(G) ≈ λ₁ (Lowell & Kastner 2024, MLPs; not measured there on transformers)"}


def problem(args):
    X, y = ne.datasets.characters(n=args.n, length=args.length, seed=args.seed)
    vocab = ne.tokens.vocabulary_size(X, y)
    net = ne.transformer(vocab, args.d, args.heads, args.depth, args.length, seed=args.seed, device=args.device)
    return ne.TrainingLoss(net, "cross_entropy", X, y)


def gd_run(args, lr):
    """Full-batch GD at step size lr; every ``every`` steps λ₁ of ∇²L̃, G and H (warm-started block Krylov)."""
    loss = problem(args)
    theta = loss.net.theta.copy()
    rows, start = [], None
    print(f"\nGD η = {lr:g}: 2/η = {2 / lr:.4g}, P = {loss.num_params}, n = {loss.num_examples} windows")
    for step in range(args.steps + 1):
        value, gradient = loss.value_and_gradient(theta)
        if step % args.every == 0:
            lam, start = top_curvature(loss, theta, start=start)
            rows.append((step, value, lam["hessian"], lam["ggn"]))
            print(f"  step {step:4d}  loss {value:.4f}  λ₁ {lam['hessian']:.4g}  ηλ₁/2 {lr * lam['hessian'] / 2:.3f}"
                  f"  λ₁(G)/λ₁ {lam['ggn'] / lam['hessian']:.3f}")
        if not np.isfinite(value):
            break
        theta = theta - lr * gradient
    return np.array(rows)


def adam_run(args, lr):
    loss = problem(args)
    integrator = ne.Adam(lr, sharpness_every=args.every)
    print(f"\n{integrator!r}: threshold {integrator.threshold:.4g}")
    result = ne.train(loss, integrator, until_loss=0.0, max_steps=args.steps, progress=False)
    measured = np.isfinite(result.metrics["preconditioned_sharpness"])
    steps = result.metrics["step"][measured]
    ratio = result.metrics["preconditioned_sharpness"][measured] / integrator.threshold
    for step, r in zip(steps, ratio):
        print(f"  step {int(step):4d}  λ₁(P⁻¹∇²L̃) / (38/η) {r:.3f}")
    return steps, ratio, float(result.loss)


def edge_verdicts(steps, ratio, skip):
    """Claims 1 and 2 (or 3) on a ratio to the threshold (ηλ₁/2, or λ₁(P⁻¹∇²L̃)/(38/η))."""
    steps, ratio = steps[steps >= skip], ratio[steps >= skip]
    if not len(ratio):
        return [("not testable", f"no measurement after step {skip}")] * 2
    peak = float(ratio.max())
    rises = ("holds" if peak >= 0.9 else "does NOT hold", f"max ratio {peak:.3f}")
    reached = np.flatnonzero(ratio >= 0.9)
    if not len(reached):
        return rises, ("not testable", "the ratio never reaches 0.9")
    after = ratio[reached[0]:]
    spread = float(np.median(np.abs(after - 1)))
    return rises, ("holds" if spread <= 0.2 else "does NOT hold",
                   f"median |ratio − 1| = {spread:.3f} over {len(after)} measurements")


def ggn_verdict(steps, share, skip):
    share = share[steps >= skip]
    if not len(share):
        return "not testable", f"no measurement after step {skip}"
    median = float(np.median(share))
    return ("holds" if 0.9 <= median <= 1.1 else "does NOT hold",
            f"median λ₁(G)/λ₁ = {median:.3f} (range {share.min():.3f}–{share.max():.3f})")


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=128, help="windows of text")
    parser.add_argument("--length", type=int, default=16, help="characters per window (T)")
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=20, help="measure the sharpness every this many steps")
    parser.add_argument("--skip", type=int, default=20, help="leave out measurements before this step")
    parser.add_argument("--gd-fractions", type=float, nargs="*", default=[0.5, 0.25],
                        help="GD step sizes as fractions of 2/λ₁(θ₀)")
    parser.add_argument("--adam-lrs", type=float, nargs="*", default=[0.001, 0.003])
    parser.add_argument("--seed", type=int, default=0)
    add_device(parser)
    parser.add_argument("--out", default="out/transformer_edge")
    args = parse(parser)
    os.makedirs(args.out, exist_ok=True)
    import matplotlib.pyplot as plt

    fig, (ax_edge, ax_ggn) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = ["| run | claim | paper | this run | verdict |", "|---|---|---|---|---|"]

    def record(name, claim, paper, verdict):
        lines.append(f"| {name} | {claim} | {paper} | {verdict[1].replace('|', chr(92) + '|')} | {verdict[0]} |")
        print(f"  {claim}: {verdict[1]} → {verdict[0]}")

    loss = problem(args)
    sharpness_0 = top_curvature(loss, loss.net.theta)[0]["hessian"]
    print(f"λ₁(θ₀) = {sharpness_0:.4g}: GD at η = fraction × 2/λ₁(θ₀) for fractions {args.gd_fractions}")
    for fraction in args.gd_fractions:
        lr = fraction * 2 / sharpness_0
        rows = gd_run(args, lr)
        steps, ratio, share = rows[:, 0], lr * rows[:, 2] / 2, rows[:, 3] / rows[:, 2]
        name = f"GD η = {lr:.3g} ({fraction:g} × 2/λ₁(θ₀))"
        ax_edge.plot(steps, ratio, label=f"{name}: ηλ₁/2 (final loss {rows[-1, 1]:.3g})")
        ax_ggn.plot(steps, share, label=name)
        for claim, verdict in zip(("1. sharpens to 2/η", "2. hovers at 2/η"), edge_verdicts(steps, ratio, args.skip)):
            record(name, claim, PAPERS["edge"], verdict)
        record(name, "4. λ₁ is G's", PAPERS["ggn"], ggn_verdict(steps, share, args.skip))
    for lr in args.adam_lrs:
        steps, ratio, final = adam_run(args, lr)
        name = f"Adam η = {lr:g}"
        ax_edge.plot(steps, ratio, ls="--", label=f"{name}: λ₁(P⁻¹∇²L̃)/(38/η) (final loss {final:.3g})")
        rises, hovers = edge_verdicts(steps, ratio, args.skip)
        record(name, "3. rises to 38/η", PAPERS["adam"], rises)
        record(name, "3. hovers at 38/η", PAPERS["adam"], hovers)
    ax_edge.axhline(1.0, color="k", ls="--", lw=0.8)
    ax_edge.set_xlabel("step")
    ax_edge.set_ylabel("sharpness / stability threshold")
    ax_edge.set_title("Edge of stability on a transformer (full batch)")
    ax_edge.legend(fontsize=7)
    ax_ggn.axhline(1.0, color="k", ls="--", lw=0.8)
    ax_ggn.set_xlabel("step")
    ax_ggn.set_ylabel(r"$\lambda_1(G) / \lambda_1(\nabla^2\tilde L)$")
    ax_ggn.set_title("Gauss-Newton share of the sharpness (GD)")
    ax_ggn.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "transformer_edge.png"), dpi=120)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
