"""Ours beside the papers' own library, stable-solvers (PyTorch), side by side in one run on one machine.

    python bench/authors.py [--n 1000] [--widths 1024 512 512 512 512 512 6] [--k 5] [--dtype float64]
                            [--rounds 3] [--jacobian-n 256] [--device cpu|gpu] [--json FILE]

Two measurements, each on the same MLP (ELU, cross-entropy, dice images) at the same θ0:

1. One exponential-Euler step, *cold* (a new solver at θ0: gradient, the k + 1 top eigenpairs of ∇²L̃ from a
   random start, the update) and *warm* (the next step of a running solver, its eigenvectors from the step
   before), the gradient included as stable-solvers includes it. Both sides use power iteration stopping
   when every Ritz value changes by less than ``--tol`` (relative; theirs: ``loss_hessian_eigenvector``'s
   default 1e-4), k stiff directions and ``--lr-max``; ours is ``ExponentialEuler(method="power",
   stop="eigenvalues")``. The two θ after the cold step are compared.
2. The layerwise Jacobians' squared operator norms ‖∂x̂^{i+1}/∂x̂^i‖² of every example (the 2024 paper's
   eq. 5), at ``--jacobian-n`` examples: theirs ``make_layerwise_jacobian_function`` and
   ``torch.linalg.matrix_norm(·, 2)``; ours a forward pass and ``alignment.layerwise_jacobian_norm2``. The
   norms are compared before they are timed.

stable-solvers is an optional peer: ``pip install --no-deps stable-solvers`` (it needs only PyTorch). A row
that cannot run prints "failed: reason".
"""

import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos import alignment  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
from nn_eos.experiments.arguments import add_device, parse, script_parser  # noqa: E402
from timing import sync, table  # noqa: E402


def their_setup(net, X, y, device):
    """(torch, stable_solvers, their loss, θ0 as their flat tensor) for our net, or a reason string."""
    try:
        import torch
        import stable_solvers
    except ImportError as error:
        return f"{error.name} not installed (pip install --no-deps stable-solvers; it needs PyTorch)"
    if device == "gpu" and not torch.cuda.is_available():
        return "PyTorch has no CUDA device"
    tdev = "cuda" if device == "gpu" else "cpu"
    dtype = getattr(torch, np.dtype(net.dtype).name)
    torch.set_num_threads(os.cpu_count() or 1)
    modules = []
    for layer in net.layers:
        name = type(layer).__name__
        if name == "Dense":
            modules.append(torch.nn.Linear(layer.n_in, layer.n_out))
        elif name == "ELU":
            modules.append(torch.nn.ELU())
        else:
            return f"no stable-solvers twin for layer {name}"
    model = torch.nn.Sequential(*modules).to(dtype)
    data = torch.utils.data.TensorDataset(torch.tensor(X, dtype=dtype), torch.tensor(y, dtype=torch.int64))
    loss = stable_solvers.LossFunction(data, torch.nn.CrossEntropyLoss(), model, batch_size=len(y))
    # their flat θ is nn.Sequential's named_parameters in order (weight (out, in), bias), which is our layout
    theta = torch.tensor(to_numpy(net.theta), dtype=dtype, device=tdev)
    return torch, stable_solvers, loss, theta


def counting(operator_class, counter):
    """Count the directions stable-solvers multiplies by its Hessian (each column of a block is one)."""
    forward = operator_class.__dict__.get("uncounted_forward", operator_class.forward)   # wrap once, not again

    def counted(self, m):
        counter[0] += m.shape[-1] if m.dim() > 1 else 1
        return forward(self, m)
    operator_class.uncounted_forward, operator_class.forward = forward, counted


def exponential_euler(net, X, y, args, theirs):
    """Rows for one cold and one warm exponential-Euler step, ours and theirs, and the check after the cold
    step."""
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
    theta0 = net.theta.copy()

    def our_solver():
        return ne.ExponentialEuler(k=args.k, lr_max=args.lr_max, tol=args.tol, maxiter=1000, method="power",
                                   stop="eigenvalues")

    def our_step(integrator, theta):
        _, g = loss.value_and_gradient(theta)          # the gradient is part of their step, so of ours
        new, _, info = integrator.step(loss, theta, g)
        return new, info["eig_matvecs"]

    rows, check = [], ""
    if isinstance(theirs, str):
        their_steps = None
    else:
        torch, ss, their_loss, their_theta0 = theirs
        matvecs = [0]
        counting(ss.operators.LossHessian, matvecs)

        def their_solver():
            return ss.ExponentialEulerSolver(their_theta0.clone(), their_loss, max_step_size=args.lr_max,
                                             stiff_dim=args.k)

        def their_step(solver):
            matvecs[0] = 0
            solver.step()
            return matvecs[0]
        their_steps = their_solver, their_step
    samples = {"ours cold": [], "ours warm": [], "theirs cold": [], "theirs warm": []}
    counts = {key: 0 for key in samples}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # theirs warns when the loss rises; ours on slow solves
        for r in range(args.rounds):
            integrator = our_solver()
            start = time.perf_counter()
            theta1, counts["ours cold"] = sync(our_step(integrator, theta0))
            samples["ours cold"].append(time.perf_counter() - start)
            start = time.perf_counter()
            _, counts["ours warm"] = sync(our_step(integrator, theta1))
            samples["ours warm"].append(time.perf_counter() - start)
            if their_steps is None:
                continue
            solver = their_steps[0]()
            for mode in ("cold", "warm"):
                start = time.perf_counter()
                try:
                    counts[f"theirs {mode}"] = their_steps[1](solver)
                except Exception as error:             # noqa: BLE001  (their power iteration raises at max_iters)
                    theirs = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
                    their_steps = None
                    break
                sync(solver.params)
                samples[f"theirs {mode}"].append(time.perf_counter() - start)
                if mode == "cold" and r == 0:
                    ours1 = to_numpy(theta1)
                    diff = np.abs(solver.params.cpu().numpy() - ours1).max() / np.abs(ours1 - to_numpy(theta0)).max()
                    check = (f"θ after the cold step: ours and theirs differ by {diff:.1e} of the step's largest "
                             f"entry (both solvers stop at Ritz-value changes below {args.tol:g})")
            print(f"  round {r + 1}: " + ", ".join(f"{key} {times[-1]:.2f} s" for key, times in samples.items()
                                                    if len(times) > r), flush=True)
    for mode in ("cold", "warm"):
        mine = float(np.median(samples[f"ours {mode}"]))
        if their_steps is None:
            rows.append([f"exponential-Euler step, {mode}", f"{mine:.3f}", counts[f"ours {mode}"],
                         f"failed: {theirs}", "", ""])
            continue
        other = float(np.median(samples[f"theirs {mode}"]))
        rows.append([f"exponential-Euler step, {mode}", f"{mine:.3f}", counts[f"ours {mode}"], f"{other:.3f}",
                     counts[f"theirs {mode}"], f"{mine / other:.2f}"])
    return rows, check, samples


def jacobian_norms(net, X, args, theirs):
    """The row for the layerwise Jacobians' squared norms of every example, and the check of theirs against
    ours."""
    xp = net.xp
    Xd = xp.asarray(X[:args.jacobian_n])
    dense, _ = alignment.dense_layers(net)

    def ours():
        caches = net.new_caches()
        net.forward(Xd, caches)
        slopes = [c.slope for layer, c in zip(net.layers, caches) if isinstance(layer, ne.Activation)]
        return [alignment.layerwise_jacobian_norm2(dense[i + 1].A, slopes[i], xp) for i in range(len(dense) - 1)]

    mine = [to_numpy(a) for a in ours()]
    if isinstance(theirs, str):
        seconds = min(timed_once(ours) for _ in range(args.rounds))
        return [f"layerwise Jacobian norms, n = {args.jacobian_n}", f"{seconds:.3f}", "", f"failed: {theirs}",
                "", ""], ""
    torch, ss, _, theta = theirs
    model = theirs[2]._net           # meta parameters: theirs takes θ as a flat tensor, as its loss does
    Xt = torch.tensor(X[:args.jacobian_n], dtype=theta.dtype, device=theta.device)

    def their_norms():
        jacobians = ss.make_layerwise_jacobian_function(model, theta)(Xt)
        return [torch.linalg.matrix_norm(J, ord=2) ** 2 for J in jacobians[1:]]

    try:
        theirs_now = [t.cpu().numpy() for t in their_norms()]
    except Exception as error:                           # noqa: BLE001
        return [f"layerwise Jacobian norms, n = {args.jacobian_n}", "", "", f"failed: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:100]}", "", ""], ""
    err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(theirs_now, mine))
    check = f"layerwise Jacobian norms: theirs and ours differ by {err:.1e} (relative)"
    ours_s, theirs_s = [], []
    for _ in range(args.rounds):
        ours_s.append(timed_once(ours))
        theirs_s.append(timed_once(their_norms))
    mine_s, other_s = float(np.median(ours_s)), float(np.median(theirs_s))
    return [f"layerwise Jacobian norms, n = {args.jacobian_n}", f"{mine_s:.3f}", "", f"{other_s:.3f}", "",
            f"{mine_s / other_s:.2f}"], check


def timed_once(fn):
    start = time.perf_counter()
    sync(fn())
    return time.perf_counter() - start


def compare(args):
    """(rows, checks, the exponential-Euler step times of every round) for the options of :func:`main`."""
    X, y = ne.datasets.dice("train", n=args.n)
    net = ne.mlp(args.widths, activation="elu", seed=0, dtype=args.dtype, device=args.device)
    theirs = their_setup(net, X, y, args.device)
    print(f"MLP {args.widths}, ELU, P = {net.num_params}, n = {args.n}, {args.dtype}, {args.device}, "
          f"k = {args.k}, tol = {args.tol:g}, {args.rounds} rounds")
    if not isinstance(theirs, str):
        from importlib.metadata import version
        torch = theirs[0]
        print(f"stable-solvers {version('stable-solvers')}, PyTorch "
              f"{torch.__version__}, {torch.get_num_threads()} threads; ours: NumPy {np.__version__}")
    ee_rows, ee_check, samples = exponential_euler(net, X, y, args, theirs)
    jac_row, jac_check = jacobian_norms(net, X, args, theirs)
    return ee_rows + [jac_row], [ee_check, jac_check], samples


HEADERS = ["measurement", "ours s", "ours products", "stable-solvers s", "their products", "ours / theirs"]


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 512, 512, 512, 512, 512, 6])
    parser.add_argument("--k", type=int, default=5, help="stiff directions (k + 1 eigenpairs a step)")
    parser.add_argument("--lr-max", type=float, default=0.01)
    parser.add_argument("--tol", type=float, default=1e-4, help="Ritz-value change at which power iteration stops")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jacobian-n", type=int, default=256)
    parser.add_argument("--json", help="write the rows and checks to this file")
    add_device(parser)
    args = parse(parser)
    rows, checks, samples = compare(args)
    print(table(rows, HEADERS))
    for line in checks:
        if line:
            print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["python", "bench/authors.py", *sys.argv[1:]]), "headers": HEADERS,
                       "rows": rows, "checks": checks, "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
