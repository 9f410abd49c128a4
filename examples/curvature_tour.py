"""A short tour of the curvature engine on a small network.

    python examples/curvature_tour.py [--device gpu]

1. the training loss L̃(θ) of a small ELU MLP on random data, and its gradient;
2. the Hessian-vector product ∇²L̃ v three ways: Pearlmutter's R-operator
   (one R-forward and one R-backward pass), central finite differences of the
   gradient, and the dense Hessian built column by column;
3. the split ∇²L̃ = G + H (2024 paper, eq. 2): the Gauss-Newton product G v,
   the residual H v, and how much each contributes to the top eigenvalue;
4. a block of k directions through one pass, against k single products.

Every printed error should be at rounding level (≲1e-8 for finite
differences, ≲1e-12 for identities).
"""

import time

import numpy as np

import nn_eos as ne
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos.backend import to_numpy


def main():
    parser = script_parser(__doc__)
    add_device(parser)
    args = parse(parser)

    rng = np.random.default_rng(0)
    widths = [20, 16, 16, 4]
    net = ne.mlp(widths, activation="elu", seed=0, device=args.device)
    X = rng.standard_normal((64, widths[0]))
    y = rng.integers(0, widths[-1], size=64)
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
    P = net.num_params
    print(f"network {widths}, ELU, P = {P} parameters, N = {len(y)} examples, device {args.device}")

    # 1. value and gradient
    theta = to_numpy(net.theta).copy()
    print(f"\n1. L̃(θ) = {loss.value():.6f},  ‖∇L̃(θ)‖ = {np.linalg.norm(to_numpy(loss.gradient())):.6f}")

    # 2. ∇²L̃ v three ways
    v = rng.standard_normal(P)
    v /= np.linalg.norm(v)
    hv = to_numpy(loss.hvp(v))
    eps = 1e-5
    hv_fd = (to_numpy(loss.gradient(theta + eps * v)) - to_numpy(loss.gradient(theta - eps * v))) / (2 * eps)
    hessian = np.stack([(to_numpy(loss.gradient(theta + eps * e)) - to_numpy(loss.gradient(theta - eps * e)))
                        / (2 * eps) for e in np.eye(P)], axis=1)
    print("\n2. ∇²L̃ v three ways, relative differences from the R-operator:")
    print(f"   central differences of the gradient   {np.abs(hv - hv_fd).max() / np.abs(hv).max():.2e}")
    print(f"   dense Hessian (P = {P} columns) · v     {np.abs(hv - hessian @ v).max() / np.abs(hv).max():.2e}")

    # 3. ∇²L̃ = G + H
    identity = np.eye(P)
    full, ggn, residual = (to_numpy(loss.curvature_product(identity, kind)) for kind in ("hessian", "ggn", "residual"))
    print("\n3. ∇²L̃ = G + H (2024 paper, eq. 2):")
    print(f"   max |∇²L̃ − (G + H)| = {np.abs(full - ggn - residual).max():.2e}")
    top = [np.linalg.eigvalsh((M + M.T) / 2)[-1] for M in (full, ggn, residual)]
    print(f"   top eigenvalues: ∇²L̃ {top[0]:.4f},  G {top[1]:.4f},  H {top[2]:.4f}")
    print(f"   smallest eigenvalue of G: {np.linalg.eigvalsh((ggn + ggn.T) / 2)[0]:.2e} (G is PSD)")

    # 4. a block of k directions in one pass
    k = 11
    V = rng.standard_normal((P, k))
    start = time.perf_counter()
    block = to_numpy(loss.hvp(V))
    t_block = time.perf_counter() - start
    start = time.perf_counter()
    singles = np.stack([to_numpy(loss.hvp(V[:, j])) for j in range(k)], axis=1)
    t_singles = time.perf_counter() - start
    print(f"\n4. a block of k = {k} directions: max difference from {k} single products "
          f"{np.abs(block - singles).max():.2e}; time {t_block * 1e3:.2f} ms against {t_singles * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
