"""Cost of the top eigenpairs of ∇²L̃ and G, cold and warm-started, by each method.

    python bench/eigen.py [--n 1000] [--widths 1024 512 512 512 512 512 6] [--tol 1e-6]
                          [--k-hessian 20] [--k-ggn 7] [--methods power krylov lobpcg lanczos] [--guard 0]

For each operator and method: wall time, matvecs (single-vector products),
iterations, whether it converged, and the time as a multiple of one gradient
measured in the same run. "warm" restarts from the cold eigenvectors after
one gradient-descent step of size 0.5/λ_1 (a stable step), as the papers'
training loops do.
"""

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.experiments.arguments import add_device, parse, script_parser  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
from timing import median_times, table, timed  # noqa: E402




def quietly(fn, *args, **kwargs):
    """Call fn with non-convergence warnings silenced: the table reports convergence itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ne.NonConvergenceWarning)
        return fn(*args, **kwargs)


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 512, 512, 512, 512, 512, 6])
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--k-hessian", type=int, default=20)
    parser.add_argument("--k-ggn", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=list(ne.eigen.METHODS), choices=ne.eigen.METHODS)
    parser.add_argument("--guard", type=int, default=0)
    parser.add_argument("--maxiter", type=int, default=None)
    add_device(parser)
    args = parse(parser)

    rng = np.random.default_rng(0)
    net = ne.mlp(args.widths, activation="elu", seed=0, device=args.device)
    X = rng.random((args.n, args.widths[0]))
    y = np.arange(args.n) % args.widths[-1]
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
    gradient_time = median_times({"gradient": loss.gradient}, rounds=5)["gradient"]
    print(f"MLP {args.widths}, ELU, P = {net.num_params}, n = {args.n}, float64, {args.device}; "
          f"one gradient = {gradient_time:.4f} s; tol = {args.tol:g} (relative residual)")

    rows = []
    theta0 = to_numpy(net.theta).copy()
    for kind, k in (("hessian", args.k_hessian), ("ggn", args.k_ggn)):
        operator = loss.hvp if kind == "hessian" else loss.ggn
        for method in args.methods:
            net.set_theta(theta0)
            kwargs = dict(method=method, tol=args.tol, maxiter=args.maxiter)
            if method in ("power", "krylov"):
                kwargs["guard"] = args.guard
            cold, t_cold = timed(lambda: quietly(ne.top_eigenpairs, operator, k, **kwargs))
            step = 0.5 / max(abs(float(to_numpy(cold.values)[0])), 1e-12)
            net.set_theta(theta0 - step * to_numpy(loss.gradient()))
            warm, t_warm = timed(lambda: quietly(ne.top_eigenpairs, operator, k, V0=cold.vectors, **kwargs))
            for label, res, t in (("cold", cold, t_cold), ("warm", warm, t_warm)):
                rows.append([kind, k, method, label, f"{t:.2f}", res.matvecs, res.iterations,
                             "yes" if res.converged else "NO", f"{res.residual_norms.max():.1e}",
                             f"{t / gradient_time:.1f}", f"{float(to_numpy(res.values)[0]):.4g}"])
            print(table(rows[-2:], HEADERS), flush=True)
    net.set_theta(theta0)
    print("\n" + table(rows, HEADERS))


HEADERS = ["operator", "k", "method", "start", "seconds", "matvecs", "iterations", "converged",
           "max residual", "/ gradient", "λ_1"]

if __name__ == "__main__":
    main()
