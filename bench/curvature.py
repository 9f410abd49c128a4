"""Cost of the curvature products as multiples of one gradient, and against PyTorch and JAX.

    python bench/curvature.py [--n 1000] [--rounds 7] [--dtype float64 float32] [--device cpu|gpu] [--no-peers]
                              [--conv alexnet vgg11] [--conv-n 200]

The network is the 2024 paper's MLP (1024 inputs, five hidden layers of 512,
ELU, 6 outputs) on n examples. Ours: value+gradient, ∇²L̃ v (k = 1), G v
(k = 1), and a block of k = 11 Hessian products in one pass. Peers, when
installed: PyTorch (on the device ours runs on) with its double-backward HVP, forward-over-reverse
HVP, ``vmap`` of 11 HVPs and a GGN product (jvp, then vjp); JAX's
forward-over-reverse HVP, ``vmap`` of 11 and a GGN product, all jitted, on
JAX's default device (the GPU where jax[cuda] is installed). Every
peer's result is checked against ours before it is timed.

Then the conv nets of the 2022 paper at laptop width (``--conv alexnet vgg11``,
dice as 1×32×32 images, ``--conv-n`` examples): hvp/gradient and ours against
PyTorch's double-backward HVP.

All contenders run once per round (bench/timing.py), so the ratios are
measured side by side.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.experiments.arguments import add_device, parse, script_parser  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
from timing import median_times, table  # noqa: E402

WIDTHS = [1024, 512, 512, 512, 512, 512, 6]
K_BLOCK = 11


def setup(n, dtype, device, widths=WIDTHS):
    rng = np.random.default_rng(0)
    net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
    X = rng.random((n, widths[0]))          # dice-like pixels in [0, 1]
    y = np.arange(n) % widths[-1]
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
    V = rng.standard_normal((net.num_params, K_BLOCK)).astype(dtype)
    return net, loss, X, y, V


def ours(loss, V):
    v = V[:, 0].copy()
    Vd = loss.net.xp.asarray(V)
    vd = loss.net.xp.asarray(v)
    return {
        "ours: value+gradient": lambda: loss.value_and_gradient()[1],
        "ours: hvp (k=1)": lambda: loss.hvp(vd),
        "ours: ggn (k=1)": lambda: loss.ggn(vd),
        f"ours: hvp block (k={K_BLOCK})": lambda: loss.hvp(Vd),
    }


def layer_params(net):
    """[(A, b), …] of the dense layers, as host arrays."""
    return [(to_numpy(l.A).copy(), to_numpy(l.b).copy()) for l in net.layers if isinstance(l, ne.Dense)]


def split_flat(flat, shapes):
    out, at = [], 0
    for (o, i) in shapes:
        out.append((flat[at:at + o * i].reshape(o, i, *flat.shape[1:]), flat[at + o * i:at + o * i + o]))
        at += o * i + o
    return out


def torch_contenders(net, X, y, V, dtype, reference, device="cpu"):
    try:
        import torch
        from torch.func import grad as fgrad, jvp, vjp, vmap
    except ImportError:
        return {}, "PyTorch not installed"
    if device == "gpu" and not torch.cuda.is_available():
        return {}, "PyTorch has no CUDA device"
    tdtype, tdev = getattr(torch, dtype), ("cuda" if device == "gpu" else "cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    tensor = lambda a, dtype=tdtype: torch.tensor(a, dtype=dtype, device=tdev)
    params = [tensor(a) for pair in layer_params(net) for a in pair]
    Xt, yt = tensor(X), tensor(y, dtype=torch.int64)
    shapes = [(l.n_out, l.n_in) for l in net.layers if isinstance(l, ne.Dense)]
    vs = [tensor(a) for pair in split_flat(V[:, 0], shapes) for a in pair]
    Vs = [tensor(np.moveaxis(a, -1, 0).copy()) for pair in split_flat(V, shapes) for a in pair]

    def forward(p):
        h = Xt
        for j in range(0, len(p), 2):
            h = h @ p[j].T + p[j + 1]
            if j + 2 < len(p):
                h = torch.nn.functional.elu(h)
        return h

    def loss_fn(p):
        return torch.nn.functional.cross_entropy(forward(p), yt)

    def gradient():
        p = [q.detach().requires_grad_() for q in params]
        return torch.autograd.grad(loss_fn(p), p)

    def double_backward(v=vs):
        p = [q.detach().requires_grad_() for q in params]
        g = torch.autograd.grad(loss_fn(p), p, create_graph=True)
        return torch.autograd.grad(g, p, grad_outputs=v)

    def fwd_over_rev(v=vs):
        return jvp(fgrad(loss_fn), (params,), (v,))[1]

    vmapped = vmap(lambda v: fwd_over_rev(list(v)), in_dims=(0,))

    def ggn(v=vs):
        z, Jv = jvp(forward, (params,), (v,))
        p = torch.softmax(z, dim=-1)
        HJv = (p * (Jv - (p * Jv).sum(-1, keepdim=True))) / z.shape[0]
        return vjp(forward, params)[1](HJv)[0]

    def flat(ts):
        return torch.cat([t.reshape(-1) for t in ts]).detach().cpu().numpy()

    checks = {
        "double-backward": (flat(double_backward()), reference["hvp"]),
        "forward-over-reverse": (flat(fwd_over_rev()), reference["hvp"]),
        "GGN": (flat(ggn()), reference["ggn"]),
    }
    block = vmapped(tuple(Vs))
    block_flat = np.concatenate([t.reshape(K_BLOCK, -1).cpu().numpy() for t in block], axis=1).T
    checks[f"vmap of {K_BLOCK}"] = (block_flat, reference["block"])
    contenders = {
        "PyTorch: gradient": gradient,
        "PyTorch: hvp double-backward": double_backward,
        "PyTorch: hvp forward-over-reverse": fwd_over_rev,
        "PyTorch: ggn (jvp + vjp)": ggn,
        f"PyTorch: vmap of {K_BLOCK} hvp": lambda: vmapped(tuple(Vs)),
    }
    return contenders, checks


def jax_contenders(net, X, y, V, dtype, reference):
    try:
        import jax
    except ImportError:
        return {}, "JAX not installed"
    jax.config.update("jax_enable_x64", dtype == "float64")
    # on a GPU, JAX multiplies float32 matrices in TF32 by default (10-bit mantissa); we, CuPy and PyTorch do not
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp

    shapes = [(l.n_out, l.n_in) for l in net.layers if isinstance(l, ne.Dense)]
    params = [(jnp.asarray(a), jnp.asarray(b)) for a, b in layer_params(net)]
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    vs = [(jnp.asarray(a), jnp.asarray(b)) for a, b in split_flat(V[:, 0], shapes)]
    Vs = [(jnp.asarray(np.moveaxis(a, -1, 0)), jnp.asarray(np.moveaxis(b, -1, 0))) for a, b in split_flat(V, shapes)]

    def forward(p):
        h = Xj
        for j, (A, b) in enumerate(p):
            h = h @ A.T + b
            if j + 1 < len(p):
                h = jax.nn.elu(h)
        return h

    def loss_fn(p):
        z = forward(p)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, yj[:, None], axis=-1)[:, 0])

    # parameters and directions are arguments, never closed-over constants, so
    # that XLA cannot fold the whole computation away at compile time
    grad = jax.jit(jax.grad(loss_fn))
    hvp_fn = lambda p, v: jax.jvp(jax.grad(loss_fn), (p,), (v,))[1]
    hvp = jax.jit(hvp_fn)
    block = jax.jit(jax.vmap(hvp_fn, in_axes=(None, 0)))

    def ggn_fn(p, v):
        z, Jv = jax.jvp(forward, (p,), (v,))
        q = jax.nn.softmax(z, axis=-1)
        HJv = q * (Jv - (q * Jv).sum(-1, keepdims=True)) / z.shape[0]
        return jax.vjp(forward, p)[1](HJv)[0]

    ggn = jax.jit(ggn_fn)
    flat = lambda ps: np.concatenate([np.concatenate([np.ravel(A), np.ravel(b)]) for A, b in ps])
    block_out = block(params, Vs)
    block_flat = np.concatenate([np.concatenate([np.asarray(A).reshape(K_BLOCK, -1), np.asarray(b)], axis=1)
                                 for A, b in block_out], axis=1).T
    checks = {
        "forward-over-reverse": (flat(hvp(params, vs)), reference["hvp"]),
        "GGN": (flat(ggn(params, vs)), reference["ggn"]),
        f"vmap of {K_BLOCK}": (block_flat, reference["block"]),
    }
    contenders = {
        "JAX: gradient": lambda: grad(params),
        "JAX: hvp forward-over-reverse": lambda: hvp(params, vs),
        "JAX: ggn (jvp + vjp)": lambda: ggn(params, vs),
        f"JAX: vmap of {K_BLOCK} hvp": lambda: block(params, Vs),
    }
    return contenders, checks


def report_checks(peer, checks, tol):
    if isinstance(checks, str):
        print(f"  {peer}: {checks}")
        return True
    ok = True
    for name, (theirs, mine) in checks.items():
        err = np.abs(theirs - mine).max() / np.abs(mine).max()
        agree = err < tol
        ok &= agree
        print(f"  {peer} {name}: relative difference from ours {err:.1e} ({'agrees' if agree else 'DISAGREES'})")
    return ok


def run(dtype, n, rounds, device, peers):
    net, loss, X, y, V = setup(n, dtype, device)
    print(f"\n=== {dtype}, {device}, MLP {WIDTHS}, ELU, P = {net.num_params}, n = {n} ===")
    reference = {"hvp": to_numpy(loss.hvp(V[:, 0])), "ggn": to_numpy(loss.ggn(V[:, 0])),
                 "block": to_numpy(loss.hvp(V))}
    contenders = ours(loss, V)
    tol = 1e-8 if dtype == "float64" else 1e-3
    if peers:
        # PyTorch runs on the device we run on; JAX on its default device (the GPU where jax[cuda] is installed)
        for peer, make in (("PyTorch", lambda *a: torch_contenders(*a, device=device)), ("JAX", jax_contenders)):
            extra, checks = make(net, X, y, V, dtype, reference)
            if report_checks(peer, checks, tol):
                contenders.update(extra)
    times = median_times(contenders, rounds=rounds)
    g = times["ours: value+gradient"]
    rows = [[name, f"{t:.4f}", f"{t / g:.2f}"] for name, t in times.items()]
    print(table(rows, ["contender", "median s", "/ our gradient"]))
    h, G, B = times["ours: hvp (k=1)"], times["ours: ggn (k=1)"], times[f"ours: hvp block (k={K_BLOCK})"]
    print(f"\nhvp/gradient = {h / g:.2f} (bar 2.8)   ggn/gradient = {G / g:.2f} (bar 2.0)   "
          f"block{K_BLOCK}/({K_BLOCK}·hvp) = {B / (K_BLOCK * h):.2f}   "
          f"per direction in the block = {B / K_BLOCK / g:.2f} gradients (bar 2.0)")
    for peer in ("PyTorch", "JAX"):
        for name, t in times.items():
            if name.startswith(peer + ":"):
                mine = {"gradient": g, "ggn": G, "vmap": B}.get(name.split(": ")[1].split(" ")[0], h)
                print(f"ours/{name} = {mine / t:.2f}")
    return times


def torch_conv_forward(net, torch):
    """A PyTorch function of the parameter list computing our conv net's outputs (same layers, same order)."""
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


def run_conv(arch, n, rounds, peers, device="cpu"):
    """hvp/gradient of a conv net (dice as 1×32×32 images), and ours/PyTorch's double-backward HVP (on the same
    device)."""
    rng = np.random.default_rng(0)
    X = ne.datasets.dice("train", n=n)[0].reshape(n, 1, 32, 32)
    y = np.arange(n) % 6
    build = {"alexnet": lambda: ne.alexnet_like((1, 32, 32), 6, width=0.25, activation="relu", device=device),
             "vgg11": lambda: ne.vgg_like((1, 32, 32), 6, depth=11, width=0.125, activation="relu",
                                          device=device)}[arch]
    net = build()
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
    v_host = rng.standard_normal(net.num_params)
    v, V = net.xp.asarray(v_host), net.xp.asarray(rng.standard_normal((net.num_params, K_BLOCK)))
    print(f"\n=== {arch} (width scaled), float64, {device}, P = {net.num_params}, n = {n} ===")
    contenders = {"ours: value+gradient": lambda: loss.value_and_gradient()[1], "ours: hvp (k=1)": lambda: loss.hvp(v),
                  "ours: ggn (k=1)": lambda: loss.ggn(v), f"ours: hvp block (k={K_BLOCK})": lambda: loss.hvp(V)}
    if peers:
        try:
            import torch
        except ImportError:
            print("  PyTorch not installed")
            peers = False
        else:
            if device == "gpu" and not torch.cuda.is_available():
                print("  PyTorch has no CUDA device")
                peers = False
    if peers:
        tdev = "cuda" if device == "gpu" else "cpu"
        torch.set_num_threads(os.cpu_count() or 1)
        forward = torch_conv_forward(net, torch)
        params = []
        for layer, part in zip(net.layers, net._slices(to_numpy(net.theta))):
            if layer.num_params:
                W, b = layer.split(part)
                params += [torch.tensor(W.copy(), device=tdev), torch.tensor(b.copy(), device=tdev)]
        Xt, yt = torch.tensor(X, device=tdev), torch.tensor(y, device=tdev)
        vs = []
        for layer, part in zip(net.layers, net._slices(v_host)):
            if layer.num_params:
                W, b = layer.split(part)
                vs += [torch.tensor(W.copy(), device=tdev), torch.tensor(b.copy(), device=tdev)]

        def double_backward():
            p = [q.detach().requires_grad_() for q in params]
            g = torch.autograd.grad(torch.nn.functional.cross_entropy(forward(p, Xt), yt), p, create_graph=True)
            return torch.autograd.grad(g, p, grad_outputs=vs)

        theirs = torch.cat([t.reshape(-1) for t in double_backward()]).cpu().numpy()
        mine = to_numpy(loss.hvp(v))
        err = np.abs(theirs - mine).max() / np.abs(mine).max()
        print(f"  PyTorch double-backward hvp: relative difference from ours {err:.1e}")
        if err < 1e-8:
            contenders["PyTorch: hvp double-backward"] = double_backward
    times = median_times(contenders, rounds=rounds)
    g = times["ours: value+gradient"]
    print(table([[k, f"{t:.4f}", f"{t / g:.2f}"] for k, t in times.items()], ["contender", "median s", "/ our gradient"]))
    h = times["ours: hvp (k=1)"]
    line = f"hvp/gradient = {h / g:.2f} (bar 3.5)"
    if "PyTorch: hvp double-backward" in times:
        line += f"   ours/PyTorch double-backward hvp = {h / times['PyTorch: hvp double-backward']:.2f}"
    print(line)


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
    print(f"threads: {os.cpu_count()} cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for dtype in args.dtype:
        run(dtype, args.n, args.rounds, args.device, args.peers)
    for arch in args.conv:
        run_conv(arch, args.conv_n, args.rounds, args.peers, args.device)


if __name__ == "__main__":
    main()
