"""2022 paper, section 4.1: gradient descent at several learning rates on the edge of stability.

    python examples/edge_of_stability.py [--lrs 0.5 0.25 0.1] [--n 1000] [--hidden 64 64] [--max-time 40]
                                         [--classes 2 3 5] [--out out/edge_of_stability]

For each η: the top eigenvalues of ∇²L̃ every ``--every`` units of t, ρ_i = ηλ_i/2,
the gradient's top (n_c − 1 eigenvectors) and bulk projections, and the loss
change of a step along each. Writes Figure 1 (ρ_{n_c−1}, ρ_{n_c} over t), Figure 3
(‖P_top g‖, ‖P_bulk g‖), and prints Table 1 (mean and std of the loss changes
while ρ_{n_c−1} > 0.7) beside the paper's numbers, saying plainly whether each
claim holds in this run. ``--classes 2 3 5`` repeats the largest η on dice
subsets with that many classes (Figure 2). Laptop scale on dice by default;
``--arch alexnet`` (or vgg11/vgg16, scaled by ``--width``) runs the 2022 paper's
conv nets on dice; the paper's scale is CIFAR-10 with ``--width 1`` on a GPU.
"""

import os

import nn_eos as ne
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos.experiments import plots
from nn_eos.experiments.demo import EDGE, bulk_claim, edge_claim, run_with_telemetry

PAPER_TABLE_1 = "AlexNet-ReLU on CIFAR-10: η = 0.001 top +0.0064 (0.0133) bulk −0.0014 (0.0007); " \
                "η = 0.0001 top −0.0012 (0.0043) bulk −0.0001 (0.000)"


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="MLP hidden widths")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "alexnet", "vgg11", "vgg16"],
                        help="the 2022 paper's AlexNet / non-normalised VGG on 1×32×32 dice images")
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier of the conv nets")
    parser.add_argument("--activation", default="elu", choices=["elu", "relu", "tanh"])
    parser.add_argument("--max-time", type=float, default=40.0)
    parser.add_argument("--init", default=None, choices=["xavier", "kaiming"],
                        help="None: xavier for the MLP, kaiming for the conv nets (the scan of "
                             "progressive_sharpening.py uses kaiming)")
    parser.add_argument("--until-loss", type=float, default=None,
                        help="stop at this loss (None: the criterion's, 0.01 for cross-entropy; "
                             "the 2022 protocol: 0.1)")
    parser.add_argument("--every", type=float, default=2.0, help="telemetry every this many units of t")
    parser.add_argument("--classes", type=int, nargs="*", default=[], help="also run on 2, 3, 5 … classes")
    parser.add_argument("--seed", type=int, default=0)
    add_device(parser, "; gpu: the paper's scale on CuPy")
    parser.add_argument("--out", default="out/edge_of_stability")
    args = parse(parser)

    # with --classes, a pool six times larger leaves at least n images of any two classes
    X_all, y_all = ne.datasets.dice("train", n=6 * args.n if args.classes else args.n, seed=args.seed)
    settings = {"hidden": args.hidden, "arch": args.arch, "width": args.width, "activation": args.activation,
                "seed": args.seed, "device": args.device, "max_time": args.max_time,
                "telemetry_every": args.every, "telemetry_k": 8, "until_loss": args.until_loss, "init": args.init}
    X, y = X_all[:args.n], y_all[:args.n]
    runs = {lr: run_with_telemetry(f"gd_lr{lr:g}", ne.GradientDescent(lr), settings, X, y, args.out)
            for lr in args.lrs}

    print("\n== Figure 1: is the edge of stability spanned by n_c − 1 = 5 eigenvectors? ==")
    print("paper (CIFAR-10, n_c = 10): ρ_9 always reaches ≥ 0.693; at η = 0.0001, ρ_10 never exceeds 0.246")
    for lr, (_, rows, _) in runs.items():
        edge = edge_claim(rows)
        print(f"  η = {lr:g}: max ρ_5 = {edge['max_rho_top']:.3f}, max ρ_6 = {edge['max_rho_next']:.3f}; "
              f"{edge['at_edge']} eigenvalue(s) reach ρ ≥ {EDGE} → the claim "
              f"{'holds' if edge['holds'] else 'does NOT hold'} in this run")
    print("\n== Table 1: loss change of a step along P_top g and along P_bulk g, while at the edge ==")
    print(f"paper: {PAPER_TABLE_1}")
    for lr, (_, rows, _) in runs.items():
        bulk = bulk_claim(rows, 6)
        if bulk["holds"] is None:
            print(f"  η = {lr:g}: fewer than 3 measurements at the edge (the paper omits such rows)")
        else:
            print(f"  η = {lr:g}: {bulk['rows']} rows with ρ_{bulk['edge_index']} > {EDGE}: top {bulk['top_mean']:+.4f} "
                  f"({bulk['top_std']:.4f}), bulk {bulk['bulk_mean']:+.4f} ({bulk['bulk_std']:.4f}) → learning in the "
                  f"bulk {'holds' if bulk['holds'] else 'does NOT hold'}")

    labels = [f"η = {lr:g}" for lr in runs]
    plots.rho_over_time(list(zip(labels, [r[1] for r in runs.values()])), 6, os.path.join(args.out, "figure1.png"))
    plots.projections_over_time(list(zip(labels, [r[1] for r in runs.values()])),
                                   os.path.join(args.out, "figure3.png"))

    if args.classes:
        lr = max(args.lrs)
        print(f"\n== Figure 2: ρ_{{n_c−1}} and ρ_{{n_c}} with fewer classes (η = {lr:g}) ==")
        for n_classes in args.classes:
            Xc, yc = ne.datasets.subset(X_all, y_all, size=args.n, classes=list(range(n_classes)), seed=args.seed)
            _, rows, _ = run_with_telemetry(f"classes{n_classes}_lr{lr:g}", ne.GradientDescent(lr), settings, Xc, yc,
                                            args.out, n_classes=n_classes)
            edge = edge_claim(rows, n_classes)
            print(f"  n_c = {n_classes}: max ρ_{n_classes - 1} = {edge['max_rho_top']:.3f}, max ρ_{n_classes} = "
                  f"{edge['max_rho_next']:.3f} → {'holds' if edge['holds'] else 'does NOT hold'}")
            plots.rho_over_time([(f"n_c = {n_classes}", rows)], n_classes,
                                   os.path.join(args.out, f"figure2_classes{n_classes}.png"))
    print(f"\nfigures and runs in {os.path.abspath(args.out)}/")


if __name__ == "__main__":
    main()
