"""Cost of the 2024 paper's decomposition at one θ, as multiples of one gradient, split by part.

    python bench/alignment.py [--n 1000] [--widths 1024 512 512 512 512 512 6] [--tol 1e-4]

Parts: the pre-activation Jacobians and the O×O Grams of Δ^i and K (all
examples at once); the layerwise Jacobians' squared operator norms (batched
Lanczos over examples); and the three sharpness eigensolves (λ_1 of ∇²L̃, G
and H by block Krylov, to the relative residual ``--tol``), which ρ(K) needs.
Aim: under 30 gradients in all, the layerwise Jacobian norms under 5.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.experiments.arguments import add_device, parse, script_parser  # noqa: E402
from nn_eos import alignment  # noqa: E402
from timing import median_times, table, timed  # noqa: E402




def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 512, 512, 512, 512, 512, 6])
    parser.add_argument("--tol", type=float, default=alignment.SHARPNESS_TOL, help="of the λ_1 solves")
    add_device(parser)
    args = parse(parser)
    X, y = ne.datasets.dice("train", n=args.n)
    net = ne.mlp(args.widths, activation="elu", seed=0, device=args.device)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    gradient = median_times({"g": loss.value_and_gradient}, rounds=5)["g"]
    print(f"MLP {args.widths}, P = {net.num_params}, n = {args.n}, {args.device}: one gradient = {gradient:.4f} s")
    xp, criterion = net.xp, loss.criterion
    Xd, yd = loss._data()
    dense, acts = alignment.dense_layers(net)
    caches = net.new_caches()
    _, t_jac = timed(lambda: alignment.output_jacobians(net, Xd, caches))
    slopes = [c.slope for layer, c in zip(net.layers, caches) if layer in acts]
    _, t_layerwise = timed(lambda: [alignment.layerwise_jacobian_norm2(dense[i + 1].A, slopes[i], xp)
                                    for i in range(len(dense) - 1)])
    _, t_all_per_example = timed(lambda: alignment.per_example_quantities(net, criterion, Xd, yd))
    cold, t_full = timed(lambda: alignment.analyze(net, criterion, X, y, tol=args.tol, eigenvectors=True))
    # the next snapshot of a run, warm-started from this one's eigenvectors (as analyze_run does)
    moved = net.theta - 0.01 * loss.gradient()
    _, t_warm = timed(lambda: alignment.analyze(net, criterion, X, y, theta=moved, tol=args.tol,
                                                 start=cold.eigenvectors))
    _, t_moved_cold = timed(lambda: alignment.analyze(net, criterion, X, y, theta=moved, tol=args.tol))
    rows = [["output-side Jacobians of every layer", f"{t_jac:.3f}", f"{t_jac / gradient:.1f}"],
            ["layerwise Jacobian norms (batched Lanczos)", f"{t_layerwise:.3f}", f"{t_layerwise / gradient:.1f}"],
            ["all per-example quantities (Jacobians, Grams, norms)", f"{t_all_per_example:.3f}",
             f"{t_all_per_example / gradient:.1f}"],
            [f"sharpness of ∇²L̃, G, H (block Krylov, tol {args.tol:g}) = rest of analyze",
             f"{t_full - t_all_per_example:.3f}", f"{(t_full - t_all_per_example) / gradient:.1f}"],
            ["full analyze", f"{t_full:.3f}", f"{t_full / gradient:.1f}"],
            ["full analyze one step (0.01 g) later, cold", f"{t_moved_cold:.3f}", f"{t_moved_cold / gradient:.1f}"],
            ["  … warm-started from the previous eigenvectors", f"{t_warm:.3f}", f"{t_warm / gradient:.1f}"]]
    print(table(rows, ["part", "seconds", "/ gradient"]))


if __name__ == "__main__":
    main()
