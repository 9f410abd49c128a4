"""Cost of a third derivative ∇³L̃[u, v, ·] in gradients, beside PyTorch's and JAX's nested autodiff.

    python bench/third.py [--n 1000] [--rounds 5] [--dtype float64] [--device cpu|gpu] [--widths 1024 512 … 6]
                          [--json FILE]

The network is the 2024 paper's MLP (1024 inputs, five hidden layers of 512, ELU, 6 outputs) on n examples,
cross-entropy. Every call is cold (two θ alternate, so every contender runs all of its passes):

- ours: ``loss.third(u, v)`` (docs/third.md: six passes, the R-passes on 2 directions) and ``loss.third(u)``
  (v = u, as for ∇λ: the R-passes on one direction), and the gradient they are measured in;
- PyTorch: triple backward (the gradient with ``create_graph``, ``autograd.grad(g, θ, v, create_graph=True)``,
  then ``autograd.grad(hv, θ, u)``) and forward-over-forward-over-reverse (``torch.func.jvp`` of
  ``jvp(grad(L̃))``);
- JAX: ``jax.jvp`` of the forward-over-reverse hvp, jitted.

Each peer's result is checked against ours first (relative difference below 1e-8 in float64); a peer that
cannot run or disagrees is printed as "failed: reason". All contenders run once per round (bench/timing.py).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
from curvature import WIDTHS, threads_line, torch_mlp_forward  # noqa: E402
from peers import alternating, jax_mlp, torch_parameters  # noqa: E402
from timing import SETTLE_SECONDS, median_times, table  # noqa: E402


def setup(n, dtype, device, widths):
    rng = np.random.default_rng(0)
    net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
    X = rng.random((n, widths[0]))
    y = np.arange(n) % widths[-1]
    theta = to_numpy(net.theta).copy()
    u, v = rng.standard_normal((2, net.num_params))
    return net, X, y, (theta, theta * 1.001), u / np.linalg.norm(u), v / np.linalg.norm(v)


def ours(net, X, y, thetas, u, v):
    xp = net.xp
    thetas, u, v = [xp.asarray(t) for t in thetas], xp.asarray(u), xp.asarray(v)
    losses = [ne.TrainingLoss(net, "cross_entropy", X, y) for _ in range(3)]      # a loss per row: all cold
    return {"gradient: ours": alternating(lambda i: losses[0].value_and_gradient(thetas[i])[1]),
            "∇³L̃[u, v]: ours": alternating(lambda i: losses[1].third(u, v, theta=thetas[i])),
            "∇³L̃[u, u]: ours": alternating(lambda i: losses[2].third(u, theta=thetas[i]))}


def torch_peers(net, X, y, thetas, u, v, device):
    """{name: call} and a line of settings, or ({}, reason)."""
    try:
        import torch
        from torch.func import grad as fgrad, jvp
    except ImportError:
        return {}, "PyTorch not installed"
    tdev = "cuda" if device == "gpu" else "cpu"
    tdtype = getattr(torch, np.dtype(net.dtype).name)
    torch.set_num_threads(os.cpu_count() or 1)
    forward = torch_mlp_forward(torch)
    ps = [torch_parameters(net, t, torch, tdev, tdtype) for t in thetas]
    us, vs = (torch_parameters(net, d, torch, tdev, tdtype) for d in (u, v))
    Xt, yt = torch.tensor(X, dtype=tdtype, device=tdev), torch.tensor(y, device=tdev)

    def loss_fn(p):
        return torch.nn.functional.cross_entropy(forward(p, Xt), yt)

    def triple_backward(i):
        p = [q.detach().requires_grad_() for q in ps[i]]
        g = torch.autograd.grad(loss_fn(p), p, create_graph=True)
        hv = torch.autograd.grad(g, p, grad_outputs=vs, create_graph=True)
        return torch.autograd.grad(hv, p, grad_outputs=us)

    def hvp(p):
        return jvp(fgrad(loss_fn), (p,), (vs,))[1]

    def forward_over(i):
        return jvp(hvp, (ps[i],), (us,))[1]

    def flat(result):
        return np.concatenate([t.detach().cpu().numpy().ravel() for t in result])

    calls = {"∇³L̃[u, v]: PyTorch triple backward": (alternating(triple_backward), flat),
             "∇³L̃[u, v]: PyTorch jvp of forward-over-reverse": (alternating(forward_over), flat)}
    return calls, f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads"


def jax_peer(net, X, y, thetas, u, v):
    try:
        import jax
    except ImportError:
        return {}, "JAX not installed"
    jax.config.update("jax_enable_x64", np.dtype(net.dtype) == np.float64)
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp

    pairs, _, loss_on = jax_mlp(net, jax)
    ps, us, vs = [pairs(t) for t in thetas], pairs(u), pairs(v)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss_fn(p):
        return loss_on(p, Xj, yj)

    def hvp(p, v):
        return jax.jvp(jax.grad(loss_fn), (p,), (v,))[1]

    third = jax.jit(lambda p, u, v: jax.jvp(lambda q: hvp(q, v), (p,), (u,))[1])

    def flat(result):
        return np.concatenate([np.asarray(a).ravel() for a in jax.tree_util.tree_leaves(result)])

    return ({"∇³L̃[u, v]: JAX jvp of forward-over-reverse (jit)": (alternating(lambda i: third(ps[i], us, vs)), flat)},
            f"JAX {jax.__version__} on {jax.default_backend()}: x64 {jax.config.jax_enable_x64}, jit")


def run(n, dtype, rounds, device, widths):
    net, X, y, thetas, u, v = setup(n, dtype, device, widths)
    print(f"\n=== {dtype}, {device}, MLP {widths}, ELU, P = {net.num_params}, n = {n} ===")
    calls = ours(net, X, y, thetas, u, v)
    reference = to_numpy(ne.TrainingLoss(net, "cross_entropy", X, y).third(net.xp.asarray(u), net.xp.asarray(v),
                                                                            theta=net.xp.asarray(thetas[0])))
    settings, failed = [threads_line()], {}
    for make in (lambda: torch_peers(net, X, y, thetas, u, v, device), lambda: jax_peer(net, X, y, thetas, u, v)):
        peers, setting = make()
        settings.append(setting)
        for name, (call, flat) in peers.items():
            try:
                got = flat(call())                      # an alternating call's first is at θ_0
            except Exception as error:                  # noqa: BLE001  (reported as the row's reason)
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
                continue
            err = float(np.abs(got - reference).max() / np.abs(reference).max())
            if err < (1e-8 if np.dtype(net.dtype) == np.float64 else 1e-3):
                calls[name] = call
            else:
                failed[name] = f"differs from ours by {err:.1e} (relative)"
    for line in settings:
        print("  " + line)
    times = median_times(calls, rounds=rounds, settle=0 if device == "gpu" else SETTLE_SECONDS)
    g, mine = times["gradient: ours"], times["∇³L̃[u, v]: ours"]
    rows = [[name, f"{t:.4f}", f"{t / g:.2f}", "" if name.endswith("ours") else f"{mine / t:.2f}"]
            for name, t in times.items()]
    rows += [[name, f"failed: {why}", "", ""] for name, why in failed.items()]
    print(table(rows, ["contender (all cold)", "median s", "/ our gradient", "ours[u, v] / this"]))
    return {"settings": settings, "n": n, "dtype": dtype, "widths": widths,
            "rows": [{"who": name, "seconds": t} for name, t in times.items()]
            + [{"who": name, "failed": why} for name, why in failed.items()]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", nargs="+", default=["float64"], choices=["float64", "float32"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    parser.add_argument("--json", help="write every row to this file")
    args = parser.parse_args(argv)
    results = [run(args.n, dtype, args.rounds, args.device, args.widths) for dtype in args.dtype]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
