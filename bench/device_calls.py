"""What the GPU path asks of the device beyond arithmetic, counted on the CPU stand-in (NN_EOS_DEVICE=strict).

    python bench/device_calls.py [--n 256] [--widths 1024 512 512 512 512 512 6]

On a GPU, time that is not arithmetic goes to launching operations (several
microseconds each on CuPy, whatever their size) and to host reads, which wait
for the device to finish (``float(...)``, ``bool(...)``, ``.get()``). Neither
depends on the number of examples, so the stand-in counts them exactly on the
CPU (:func:`nn_eos.strict.counting`), for the 2024 paper's MLP: one gradient,
one warm product of 1 and of 4 directions, a cold and a warm block-Krylov
solve (top 6 by value, tol 1e-3, blocks of krylov.DEVICE_BLOCK as on a device), one warm
exponential-Euler step (k = 5, as the gpu_check times it) and one
``alignment.analyze``. Compare with a GPU report (bench/gpu_check.sh) to tell
launch overhead from arithmetic.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.experiments.arguments import parse, script_parser  # noqa: E402
from nn_eos.strict import counting  # noqa: E402
from nn_eos.eigen import krylov  # noqa: E402
from timing import table  # noqa: E402


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 512, 512, 512, 512, 512, 6])
    args = parse(parser)
    net = ne.mlp(args.widths, activation="elu", seed=0, device="strict")
    X = ne.datasets.dice("train", n=args.n)[0]
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, np.arange(args.n) % args.widths[-1])
    rng = np.random.default_rng(0)
    rows = []

    def count(name, fn, per=None):
        with counting() as counts:
            out = fn()
        label = per(out) if per else ""
        rows.append([name, counts["operations"], counts["host_reads"], counts["uploads"], label])
        return out

    count("value and gradient", loss.value_and_gradient)
    A = loss.operator("hessian")
    for k in (1, 4):
        V = net.xp.asarray(rng.standard_normal((net.num_params, k)))
        A.matmat(V)
        count(f"warm product, {k} direction(s)", lambda: A.matmat(V))
    solve = dict(k=6, method="krylov", which="LA", tol=1e-3, block=krylov.DEVICE_BLOCK)
    cold = count("block Krylov, top 6, cold", lambda: ne.top_eigenpairs(A, **solve),
                 per=lambda r: f"{r.iterations} iterations, {r.matvecs} matvecs")
    count("block Krylov, top 6, warm", lambda: ne.top_eigenpairs(A, V0=cold.vectors, **solve),
          per=lambda r: f"{r.iterations} iterations, {r.matvecs} matvecs")
    integrator = ne.ExponentialEuler(k=5, lr_max=0.01)
    theta = net.theta.copy()
    for step in ("cold", "warm"):
        _, g = loss.value_and_gradient(theta)
        theta, _, info = count(f"exponential-Euler step (k = 5), {step}", lambda: integrator.step(loss, theta, g),
                               per=lambda out: f"{out[2]['eig_matvecs']} matvecs")
    count("alignment.analyze", lambda: ne.alignment.analyze(net, "cross_entropy", X,
                                                           np.arange(args.n) % args.widths[-1]))
    print(f"MLP {args.widths}, ELU, n = {args.n}, device 'strict' (counts do not depend on n)\n")
    print(table(rows, ["call", "device operations", "host reads", "uploads", ""]))


if __name__ == "__main__":
    main()
