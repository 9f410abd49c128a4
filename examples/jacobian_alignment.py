"""2024 paper: training on the edge of stability is caused by layerwise Jacobian alignment.

    python examples/jacobian_alignment.py [--sizes 117 234 468 937] [--hidden 32 32 32 32 32] [--seeds 0]
                                          [--until-loss 0.01] [--max-time 300] [--out out/jacobian_alignment]

Exponential-Euler runs (which follow the gradient flow instead of riding the
edge) on dice subsets of doubling size, θ snapshots every few steps, and at
each snapshot the paper's decomposition: the sharpness of ∇²L̃, G and H;
ρ(K) and E‖K‖² (eq. 3); E‖K^i‖² for layers 1, 3, 5 (eq. 4); and the five
factors of E‖Δ^1‖² (eq. 7). Writes analogues of Figures 1–4, fits Table 2's
power law of peak P^1_{Δ,J} against dataset size, and prints section 5's
headline numbers beside the paper's, saying which claims hold in this run.
The paper's scale is ``--hidden 512 512 512 512 512 --sizes 468 937 1875 3750 7500
--until-loss 0.01 --device gpu``.
"""

import os

import numpy as np

import nn_eos as ne
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos import alignment
from nn_eos.experiments import analysis, plots

PAPER = {"sharpness growth": 5.45, "H share": 0.099, "rho growth": 1.90, "delta_L": 2.12, "Pi_chi": 1.33,
         "P_chi": 1.27, "Pi_J": 3.93, "P_J": 28.97, "table2_dice": (0.0017, 0.23, 0.84)}


def growth(values):
    """max over t of value(t) / value(first snapshot)."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmax(values / values[0]))


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[117, 234, 468, 937])
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 32, 32, 32, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="init seeds (subset seed = init seed)")
    parser.add_argument("--until-loss", type=float, default=0.01)
    parser.add_argument("--max-time", type=float, default=300.0)
    parser.add_argument("--lr-max", type=float, default=1.0)
    parser.add_argument("--snapshot-every", type=int, default=2)
    add_device(parser)
    parser.add_argument("--out", default="out/jacobian_alignment")
    args = parse(parser)

    X_all, y_all = ne.datasets.dice("train", n=max(args.sizes) * 2)
    results = []
    for seed in args.seeds:
        for n in args.sizes:
            X, y = ne.datasets.subset(X_all, y_all, size=n, seed=seed)
            net = ne.mlp([1024, *args.hidden, 6], activation="elu", seed=seed, device=args.device)
            loss = ne.TrainingLoss(net, "cross_entropy", X, y)
            run_dir = os.path.join(args.out, "runs", f"n{n}_seed{seed}")
            print(f"\nn = {n}, seed {seed}: exponential Euler until loss {args.until_loss:g} or t = {args.max_time:g}")
            ne.train(loss, ne.ExponentialEuler(lr_max=args.lr_max, method="lanczos"), until_loss=args.until_loss,
                     max_time=args.max_time, snapshot_every=args.snapshot_every, run_dir=run_dir, resume=True,
                     data={"dataset": "dice subset", "n": n, "seed": seed})
            series = analysis.analyze_run(run_dir, X=X, y=y, skip=10)
            results.append((n, seed, series))
    if not results or any(len(s["step"]) < 2 for _, _, s in results):
        print("\nfewer than two analysed snapshots in a run: train longer or snapshot more often")
        return

    def plot(name, title, ylabel, values, logy=False):
        plots.curves([(f"n = {n}", s["t"], values(s)) for n, _, s in results], "t", ylabel, title,
                        os.path.join(args.out, f"{name}.png"), logy)

    sharp = lambda key: (lambda s: [row[key] for row in s["sharpness"]])
    plot("figure1_hessian", "Figure 1: sharpness of ∇²L̃", "λ_1(∇²L̃)", sharp("hessian"))
    plot("figure1_G", "Figure 1: sharpness of G", "λ_1(G)", sharp("ggn"))
    plot("figure1_H", "Figure 1: sharpness of H", "λ_1(H)", sharp("residual"))
    plot("figure2_rho", "Figure 2: overlap ratio ρ(K)", "ρ(K)", lambda s: s["overlap_ratio"])
    plot("figure2_K", "Figure 2: E‖K‖²", "E‖K‖²", lambda s: s["K_norm2"], logy=True)
    for layer in (1, 3, 5):
        if layer <= len(args.hidden) + 1:
            plot(f"figure3_K{layer}", f"Figure 3: E‖K^{layer}‖²", f"E‖K^{layer}‖²",
                 lambda s, i=layer - 1: [v[i] for v in s["K_layer_norm2"]], logy=True)
    for key, label in (("Pi_chi", "Π_χ^1"), ("P_chi", "P_{χ,Δ/χ}^1"), ("Pi_J", "Π_J^1"), ("P_J", "P_{Δ,J}^1"),
                       ("delta_L", "E‖Δ^L‖²")):
        plot(f"figure4_{key}", f"Figure 4: {label}", label, lambda s, k=key: [c[k] for c in s["components_1"]], True)

    print("\n== section 5: growth factors over training (max over t of value / value at the first snapshot) ==")
    rows = []
    for n, seed, s in results:
        comps = {k: [c[k] for c in s["components_1"]] for k in ("Pi_chi", "P_chi", "Pi_J", "P_J", "delta_L")}
        share = max(abs(r["residual"]) / abs(r["hessian"]) for r in s["sharpness"])
        gap = max(abs(r["ggn"] - r["hessian"]) / abs(r["hessian"]) for r in s["sharpness"])
        _, lr = alignment.counterfactual_sharpness(s)
        rows.append({"n": n, "sharpness": growth(sharp("hessian")(s)), "rho": growth(s["overlap_ratio"]),
                     "H share": share, "G gap": gap, "lr": lr, **{k: growth(v) for k, v in comps.items()},
                     "peak P_J": float(np.nanmax(comps["P_J"]))})
    for key, paper in (("sharpness", PAPER["sharpness growth"]), ("rho", PAPER["rho growth"]),
                       ("delta_L", PAPER["delta_L"]), ("Pi_chi", PAPER["Pi_chi"]), ("P_chi", PAPER["P_chi"]),
                       ("Pi_J", PAPER["Pi_J"]), ("P_J", PAPER["P_J"])):
        ours = max(r[key] for r in rows)
        print(f"  {key:10s} ours: max ×{ours:.2f} over runs    paper: ×{paper}")
    share = max(r["H share"] for r in rows)
    print(f"  λ_1(H) / λ_1(∇²L̃): ours at most {share:.1%}, paper at most 9.9% → "
          f"{'holds' if share <= 0.099 else 'does NOT hold'}")
    largest = max(("delta_L", "Pi_chi", "P_chi", "Pi_J", "P_J"), key=lambda k: max(r[k] for r in rows))
    print(f"  the factor that grows most is {largest} (paper: P_J) → "
          f"{'holds' if largest == 'P_J' else 'does NOT hold'} in this run")
    print(f"  counterfactual (P_J frozen at its first value): stable for η < {min(r['lr'] for r in rows):.4g}")
    if len(set(args.sizes)) >= 2:
        sizes = [r["n"] for r in rows]
        c1, c2, r2 = alignment.power_law(sizes, [r["peak P_J"] for r in rows])
        p1, p2, pr2 = PAPER["table2_dice"]
        print(f"\n== Table 2: max P^1_Δ,J ≈ c1 D^c2 ==\n  ours: c1 = {c1:.4g}, c2 = {c2:.3f}, R² = {r2:.2f}    "
              f"paper (dice, cross-entropy): c1 = {p1}, c2 = {p2}, R² = {pr2}\n  peak alignment grows with dataset "
              f"size (c2 > 0): {'holds' if c2 > 0 else 'does NOT hold'} in this run")
    print(f"\nfigures, runs and alignment.jsonl caches in {os.path.abspath(args.out)}/")


if __name__ == "__main__":
    main()
