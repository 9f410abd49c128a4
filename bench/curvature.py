"""Cost of the curvature products as multiples of one gradient, cold and warm, beside PyTorch and JAX.

    python bench/curvature.py [--n 1000] [--rounds 7] [--dtype float64 float32] [--device cpu|gpu] [--no-peers]
                              [--conv alexnet vgg11] [--conv-n 200] [--json FILE]

The network is the 2024 paper's MLP (1024 inputs, five hidden layers of 512,
ELU, 6 outputs) on n examples. Every contender computes a gradient, ∇²L̃ v,
G v and a block of 11 ∇²L̃ v, each *cold* (a new θ every call: everyone runs
the whole forward and backward pass) and *warm* (the same θ again: ours
reuses its passes, PyTorch keeps its graph, JAX its linearisation); how each
peer does it is in bench/peers.py. PyTorch runs on the device ours runs on,
JAX on its default device; every peer's result is checked against ours before
it is timed, and a row that cannot run or disagrees is printed as "failed:
reason". The precision settings of each framework are printed above its
table (TF32 flags, JAX's matmul precision, threads).

Then the conv nets of the 2022 paper at laptop width (``--conv alexnet vgg11``,
dice as 1×32×32 images, ``--conv-n`` examples), the same rows against PyTorch.

All contenders run once per round (bench/timing.py), so the ratios are
measured side by side; ``--json`` writes every row for a committed report.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.experiments.arguments import add_device, parse, script_parser  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
from timing import SETTLE_SECONDS, median_times, table  # noqa: E402
import peers as peers_module  # noqa: E402
from peers import K_BLOCK, Problem  # noqa: E402

WIDTHS = [1024, 512, 512, 512, 512, 512, 6]


def setup(n, dtype, device, widths=WIDTHS):
    """The MLP on n dice-like examples, two θ (the second 1.001 times the first) and K_BLOCK directions."""
    rng = np.random.default_rng(0)
    net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
    X = rng.random((n, widths[0]))          # dice-like pixels in [0, 1]
    y = np.arange(n) % widths[-1]
    theta = to_numpy(net.theta).copy()
    V = rng.standard_normal((net.num_params, K_BLOCK)).astype(dtype)
    return Problem(net, X, y, (theta, theta * 1.001), V)


def torch_mlp_forward(torch):
    def forward(p, X):
        h = X
        for j in range(0, len(p), 2):
            h = h @ p[j].T + p[j + 1]
            if j + 2 < len(p):
                h = torch.nn.functional.elu(h)
        return h
    return forward


def torch_forward_for(make):
    """``make(torch)``, or None where PyTorch is not installed (its rows then say so)."""
    try:
        import torch
    except ImportError:
        return None
    return make(torch)


def side_by_side(problem, rounds, device, peers, torch_forward, jax=True, extra=None):
    """Every row of peers.py for ``problem``, timed side by side; prints the table and the ratios, and returns
    {"settings": [...], "rows": [{quantity, mode, who, seconds | failed}, ...]}. ``extra()``: the peers' (rows,
    settings lines) for another network (bench/transformer.py), instead of the MLP's."""
    tol = 1e-8 if problem.net.dtype == np.float64 else 1e-3
    rows, settings = peers_module.ours(problem), [threads_line()]
    if peers and extra is not None:
        more, lines = extra()
        rows, settings = rows + more, settings + lines
    elif peers:
        reference = peers_module.references(problem)
        makers = [lambda: peers_module.torch_rows(problem, torch_forward, reference, tol, device)
                  if torch_forward else ([], "PyTorch not installed")]
        if jax:
            makers.append(lambda: peers_module.jax_mlp_rows(problem, reference, tol))
        for make in makers:
            extra, setting = make()
            rows += extra
            settings.append(setting)
    for line in settings:
        print("  " + line)
    timed_rows = [r for r in rows if r.call is not None]
    times = median_times({key(r): r.call for r in timed_rows}, rounds=rounds,
                         settle=0 if device == "gpu" else SETTLE_SECONDS)
    ours = {(r.quantity, r.mode): times[key(r)] for r in timed_rows if r.who == "ours"}
    g = ours[("gradient", "cold")]
    out = []
    for r in sorted(rows, key=lambda r: (peers_module.QUANTITIES.index(r.quantity), r.mode, r.who != "ours")):
        if r.call is None:
            out.append([r.quantity, r.mode, r.who, f"failed: {r.failed}", "", ""])
            continue
        t = times[key(r)]
        mine = ours.get((r.quantity, r.mode))
        out.append([r.quantity, r.mode, r.who, f"{t:.4f}", f"{t / g:.2f}",
                    "" if r.who == "ours" else f"{mine / t:.2f}"])
    print(table(out, ["quantity", "mode", "contender", "median s", "/ our gradient", "ours / this"]))
    h, G, B = ours[("hvp", "warm")], ours[("ggn", "warm")], ours[(peers_module.QUANTITIES[3], "warm")]
    print(f"\nwarm: hvp/gradient = {h / g:.2f} (bar 2.8)   ggn/gradient = {G / g:.2f} (bar 2.0)   "
          f"per direction in the block = {B / K_BLOCK / g:.2f} gradients (bar 2.0)")
    hc = ours[("hvp", "cold")]
    print(f"cold: hvp/gradient = {hc / g:.2f}   ggn/gradient = {ours[('ggn', 'cold')] / g:.2f}   per direction in "
          f"the block = {ours[(peers_module.QUANTITIES[3], 'cold')] / K_BLOCK / g:.2f} gradients")
    return {"settings": settings,
            "rows": [{"quantity": r.quantity, "mode": r.mode, "who": r.who,
                      **({"seconds": times[key(r)]} if r.call is not None else {"failed": r.failed})}
                     for r in rows]}


def key(row):
    return f"{row.mode} {row.quantity}: {row.who}"


def threads_line():
    return (f"ours: NumPy {np.__version__}, {os.cpu_count()} cores, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def run(dtype, n, rounds, device, peers):
    problem = setup(n, dtype, device)
    print(f"\n=== {dtype}, {device}, MLP {WIDTHS}, ELU, P = {problem.net.num_params}, n = {n} ===")
    return side_by_side(problem, rounds, device, peers, torch_forward_for(torch_mlp_forward))


def torch_conv_forward(net):
    """``make(torch)`` for :func:`torch_forward_for`: a PyTorch function of the parameter list computing our conv
    net's outputs (same layers, same order)."""
    def make(torch):
        import torch.nn.functional as F

        def forward(params, X):
            h, j = X, 0
            for layer in net.layers:
                name = type(layer).__name__
                if name == "Conv2d":
                    W = params[j].reshape(layer.F, layer.C, layer.win.kh, layer.win.kw)
                    h = F.conv2d(h, W, params[j + 1], stride=(layer.win.sh, layer.win.sw),
                                 padding=(layer.win.ph, layer.win.pw))
                    j += 2
                elif name == "Dense":
                    h = h @ params[j].T + params[j + 1]
                    j += 2
                elif name == "MaxPool2d":
                    h = F.max_pool2d(h, (layer.win.kh, layer.win.kw), (layer.win.sh, layer.win.sw))
                elif name == "Flatten":
                    h = h.reshape(h.shape[0], -1)
                else:
                    h = {"ReLU": torch.relu, "Tanh": torch.tanh, "ELU": F.elu}[name](h)
            return h
        return forward
    return make


def run_conv(arch, n, rounds, peers, device="cpu"):
    """The rows of :func:`side_by_side` for a conv net of the 2022 paper (dice as 1×32×32 images), float64,
    against PyTorch (JAX's peer is written for the MLP only)."""
    rng = np.random.default_rng(0)
    X = ne.datasets.dice("train", n=n)[0].reshape(n, 1, 32, 32)
    y = np.arange(n) % 6
    build = {"alexnet": lambda: ne.alexnet_like((1, 32, 32), 6, width=0.25, activation="relu", device=device),
             "vgg11": lambda: ne.vgg_like((1, 32, 32), 6, depth=11, width=0.125, activation="relu",
                                          device=device)}[arch]
    net = build()
    theta = to_numpy(net.theta).copy()
    problem = Problem(net, X, y, (theta, theta * 1.001), rng.standard_normal((net.num_params, K_BLOCK)))
    print(f"\n=== {arch} (width scaled), float64, {device}, P = {net.num_params}, n = {n} ===")
    return side_by_side(problem, rounds, device, peers, torch_forward_for(torch_conv_forward(net)), jax=False)


def peak_bytes(fn, xp):
    """(result, peak bytes allocated while fn runs): tracemalloc on the host, the memory pool on CuPy (emptied
    first, so what it holds after is what the call needed at once)."""
    import time
    import tracemalloc

    if xp is np:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        return out, peak, seconds
    pool = xp.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.used_bytes()
    start = time.perf_counter()
    out = fn()
    xp.cuda.Device().synchronize()
    return out, pool.total_bytes() - before, time.perf_counter() - start


def minimum_bytes(net, n, k, total=None):
    """The least a product of k directions (of ``total`` in the call) over n examples of an MLP can hold at its
    peak (the start of the R-backward pass), counting only what the equations of docs/passes.md read after they
    are computed: the (total, P) results; the forward caches (each dense layer's input x and δ, each
    activation's σ'(x̂) and, where σ'' is used, x̂); R{x̂} and R{x} of every layer (the second-order terms read
    them); and two R{δ}-wide quantities in flight (one step's input and output). Directions are the caller's."""
    from nn_eos.layers import Dense

    forward = r_kept = widest = width = 0
    for layer in net.layers:
        if isinstance(layer, Dense):
            width = layer.n_out
            forward += layer.n_in + layer.n_out
            r_kept, widest = r_kept + width, max(widest, width)
        else:                                               # the activation after a dense layer of width `width`
            forward += width * (2 if layer.has_curvature else 1)
            r_kept += width
    itemsize = np.dtype(net.dtype).itemsize
    return itemsize * ((total or k) * net.num_params + n * forward + k * n * (r_kept + 2 * widest))


def memory_table(sizes, blocks, large, device, budget_gib):
    """Peak memory of one block of hvp products on the 2024 paper's MLP, beside the least the passes could hold
    (:func:`minimum_bytes`) and our estimate, with the default budget and with a small one; then one large block
    (n, k) with the default budget."""
    from nn_eos import memory

    rows = []
    GiB = 2 ** 30
    cases = [(n, k, None) for n in sizes for k in blocks] + [(n, max(blocks), int(budget_gib * GiB)) for n in sizes]
    cases.append((*large, None))
    for n, k, budget in cases:
        net = ne.mlp(WIDTHS, activation="elu", seed=0, device=device)
        X = ne.datasets.dice("train", n=n)[0]
        loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, np.arange(n) % 6, max_memory=budget)
        gradient_seconds = median_times({"g": loss.value_and_gradient}, rounds=3)["g"]
        loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, np.arange(n) % 6, max_memory=budget)   # fresh: no shared passes
        V = net.xp.asarray(np.random.default_rng(0).standard_normal((net.num_params, k)))
        plan = loss.plan(k)
        _, peak, seconds = peak_bytes(lambda: loss.hvp(V), net.xp)
        estimate = memory.product_cost(net).bytes(n, k)
        least = minimum_bytes(net, plan.examples, plan.directions, total=k)
        rows.append([n, k, f"{loss.max_memory / GiB:.1f}" + ("" if budget else " (default)"),
                     f"{plan.examples} × {plan.directions}", f"{peak / GiB:.2f}", f"{least / GiB:.2f}",
                     f"{estimate / GiB:.2f}", f"{seconds / k / gradient_seconds:.2f}"])
        print(table(rows[-1:], MEMORY_HEADERS), flush=True)
    print("\n" + table(rows, MEMORY_HEADERS))
    for k in sorted({1, max(blocks)}):
        chunk_cost(max(sizes), k, 4, device)


def chunk_cost(n, k, chunks, device, rounds=3):
    """What chunking the examples costs a warm product: one operator's block of k products at one θ, over all n
    examples in one chunk (every call after the first reuses the forward and backward passes) against
    ``chunks`` chunks (each call runs them again for every chunk)."""
    net = ne.mlp(WIDTHS, activation="elu", seed=0, device=device)
    X = ne.datasets.dice("train", n=n)[0]
    V = net.xp.asarray(np.random.default_rng(0).standard_normal((net.num_params, k)))
    times = {}
    for name, chunk in (("one chunk", None), (f"{chunks} chunks", -(-n // chunks))):
        loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, np.arange(n) % 6, chunk_size=chunk)
        A = loss.operator("hessian")
        # one after the other: each operator keeps its own passes
        times.update(median_times({name: lambda: A.matmat(V)}, rounds=rounds))    # warm-up call runs the passes
    whole, split = times["one chunk"], times[f"{chunks} chunks"]
    print(f"\nwarm block of {k} hvp over n = {n}: one chunk {whole:.2f} s, {chunks} chunks {split:.2f} s "
          f"(×{split / whole:.2f}: the chunked path runs the forward and backward passes again on every call)")


MEMORY_HEADERS = ["n", "k", "budget GiB", "chunk × block", "peak GiB", "least possible GiB (that split)",
                  "unsplit estimate GiB", "s per direction / gradient"]


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", nargs="*", default=["float64", "float32"], choices=["float64", "float32"],
                        help="MLP runs (none: --dtype with no names)")
    add_device(parser)
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--conv", nargs="*", default=["alexnet", "vgg11"], choices=["alexnet", "vgg11"],
                        help="conv nets to time after the MLP (none: --conv with no names)")
    parser.add_argument("--conv-n", type=int, default=200)
    parser.add_argument("--json", help="write every row (seconds or the reason it failed) to this file")
    parser.add_argument("--memory", action="store_true",
                        help="instead: peak memory of hvp blocks on the paper's MLP, estimate and budget beside it")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--memory-blocks", type=int, nargs="+", default=[1, 11, 21])
    parser.add_argument("--memory-large", type=int, nargs=2, default=[7500, 21], metavar=("N", "K"))
    parser.add_argument("--memory-budget", type=float, default=2.0, help="the small budget, GiB")
    args = parse(parser)
    if args.memory:
        memory_table(args.memory_sizes, args.memory_blocks, args.memory_large, args.device, args.memory_budget)
        return
    report = {}
    for dtype in args.dtype:
        report[f"MLP {dtype}"] = run(dtype, args.n, args.rounds, args.device, args.peers)
    for arch in args.conv:
        report[f"{arch} float64"] = run_conv(arch, args.conv_n, args.rounds, args.peers, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["python", "bench/curvature.py", *sys.argv[1:]]), "n": args.n,
                       "rounds": args.rounds, "device": args.device, "results": report}, f, indent=1)


if __name__ == "__main__":
    main()
