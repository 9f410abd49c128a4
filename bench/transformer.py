"""Curvature products of a small transformer, cold and warm, beside PyTorch and JAX (issue 40's bench).

    python bench/transformer.py [--n 256] [--T 32] [--d 64] [--heads 4] [--depth 2] [--vocab 32] [--rounds 5]
                                [--dtype float64 float32] [--device cpu|gpu] [--no-peers] [--json FILE]

The network is ``ne.transformer(vocab, d, heads, depth, T)`` (pre-norm, causal, GELU, mlp_ratio 4) on n random
token sequences with random next-token labels, the loss the token-level cross-entropy (the mean over n·T
tokens). Every contender computes a gradient, ∇²L̃ v, G v and a block of 11 ∇²L̃ v, cold and warm, exactly as
bench/curvature.py does for the MLP (bench/peers.py says how). PyTorch runs the same network written with
plain-math attention (``softmax(masked_fill(q kᵀ/√e, −∞))``); its fused ``scaled_dot_product_attention`` is
tried too for the cold hvp rows (forward-over-reverse and double backward), and a row it cannot run is printed
as "failed: reason". Every peer's result is checked against ours first (relative 1e-9 in float64, 1e-3 in
float32), and the losses are printed side by side: the equality of loss, gradient, hvp and ggn with PyTorch's.
"""

import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.experiments.arguments import add_device, parse, script_parser  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
import peers as peers_module  # noqa: E402
from curvature import side_by_side  # noqa: E402
from peers import K_BLOCK, Problem  # noqa: E402


def parameter_shapes(layer):
    """The shapes of a layer's parameters, in θ's order (each row-major)."""
    from nn_eos.blocks import Affine, Chain
    from nn_eos.sequence import Embedding, PositionalEmbedding

    if isinstance(layer, ne.Sequential):
        return [shape for inner in layer.layers for shape in parameter_shapes(inner)]
    if isinstance(layer, Chain):
        return [shape for inner in layer.layers for shape in parameter_shapes(inner)]
    if isinstance(layer, ne.SelfAttention):
        return [shape for projection in layer.projections for shape in parameter_shapes(projection)]
    if isinstance(layer, ne.Dense):
        return [(layer.n_out, layer.n_in), (layer.n_out,)]
    if isinstance(layer, Affine):
        return [(layer.d,), (layer.d,)]
    if isinstance(layer, Embedding):
        return [(layer.vocab, layer.d)]
    if isinstance(layer, PositionalEmbedding):
        return [(layer.T, layer.d)]
    if layer.num_params:
        raise TypeError(f"no parameter layout for {layer!r}")
    return []


def arrays(net, flat):
    """θ (or a direction) as the list of its parameter arrays, in order (host views)."""
    out, start = [], 0
    for shape in parameter_shapes(net):
        size = int(np.prod(shape))
        out.append(np.asarray(flat[start:start + size]).reshape(shape))
        start += size
    return out


def setup(n, T, d, heads, depth, vocab, dtype, device="cpu"):
    rng = np.random.default_rng(0)
    net = ne.transformer(vocab, d, heads, depth, T, seed=0, dtype=dtype, device=device)
    X, y = rng.integers(0, vocab, size=(n, T)), rng.integers(0, vocab, size=(n, T))
    theta = to_numpy(net.theta).copy()
    theta += 0.05 * rng.standard_normal(theta.shape)          # γ, β and the biases away from 1 and 0
    V = rng.standard_normal((net.num_params, K_BLOCK)).astype(dtype)
    return Problem(net, X, y, (theta, theta * 1.001), V)


def torch_forward(net, sdpa=False):
    """Our transformer in PyTorch over the parameter list of :func:`arrays`: (n·T, vocab) logits."""
    import torch
    F = torch.nn.functional
    spec = net.spec
    d, h, depth, T = spec["d"], spec["heads"], spec["depth"], spec["seq_len"]
    e = d // h

    def norm(x, p):
        return F.layer_norm(x, (d,), next(p), next(p), eps=1e-5)

    def dense(x, p):
        A, b = next(p), next(p)
        return x @ A.T + b

    def attention(x, p):
        n = x.shape[0]
        q, k, v = (dense(x, p).reshape(n, T, h, e).transpose(1, 2) for _ in range(3))
        if sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            S = (q @ k.transpose(-1, -2)) / math.sqrt(e)
            seen = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            a = torch.softmax(S.masked_fill(~seen, float("-inf")), dim=-1) @ v
        return dense(a.transpose(1, 2).reshape(n, T, d), p)

    def forward(params, X):
        p = iter(params)
        x = F.embedding(X.long(), next(p)) + next(p)
        for _ in range(depth):
            x = x + attention(norm(x, p), p)
            x = x + dense(F.gelu(dense(norm(x, p), p)), p)
        return dense(norm(x, p), p).reshape(-1, spec["vocab"])
    return forward


def torch_parameters(net, theta, torch, device, dtype):
    return [torch.tensor(np.array(a), dtype=dtype, device=device) for a in arrays(net, theta)]


def jax_model(net, jax):
    """(pairs, forward, loss) of our transformer in JAX, as bench/peers.py's jax_rows takes them."""
    import jax.numpy as jnp
    spec = net.spec
    d, h, depth, T = spec["d"], spec["heads"], spec["depth"], spec["seq_len"]
    e = d // h
    seen = np.tril(np.ones((T, T), dtype=bool))

    def pairs(flat):
        return [jnp.asarray(np.array(a)) for a in arrays(net, flat)]

    def norm(x, p):
        g, b = next(p), next(p)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-5) * g + b

    def dense(x, p):
        A, b = next(p), next(p)
        return x @ A.T + b

    def attention(x, p):
        n = x.shape[0]
        q, k, v = (dense(x, p).reshape(n, T, h, e).transpose(0, 2, 1, 3) for _ in range(3))
        S = jnp.where(seen, q @ k.transpose(0, 1, 3, 2) / math.sqrt(e), -jnp.inf)
        a = jax.nn.softmax(S, axis=-1) @ v
        return dense(a.transpose(0, 2, 1, 3).reshape(n, T, d), p)

    def forward(params, X):
        p = iter(params)
        x = next(p)[X] + next(p)
        for _ in range(depth):
            x = x + attention(norm(x, p), p)
            x = x + dense(jax.nn.gelu(dense(norm(x, p), p), approximate=False), p)
        return dense(norm(x, p), p).reshape(-1, spec["vocab"])

    def loss(params, X, y):
        z = forward(params, X)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y.reshape(-1, 1), axis=-1)[:, 0])

    return pairs, forward, loss


def loss_line(problem, device):
    """Our loss at θ_0 beside PyTorch's (plain attention), with the relative difference."""
    import torch
    net = problem.net
    dtype, where = getattr(torch, np.dtype(net.dtype).name), "cuda" if device == "gpu" else "cpu"
    params = torch_parameters(net, problem.thetas[0], torch, where, dtype)
    z = torch_forward(net)(params, torch.tensor(problem.X, device=where))
    theirs = float(torch.nn.functional.cross_entropy(z, torch.tensor(problem.y.reshape(-1), device=where)))
    ours = ne.TrainingLoss(net, "cross_entropy", problem.X, problem.y).value(net.xp.asarray(problem.thetas[0]))
    return f"loss at θ_0: ours {ours:.17g}, PyTorch {theirs:.17g}, relative difference {abs(ours - theirs) / ours:.1e}"


def peer_rows(problem, device, tol):
    """PyTorch (plain attention: every row; fused SDPA: the cold hvp rows) and JAX, each checked against ours."""
    reference = peers_module.references(problem)
    rows, settings = [], []
    try:
        import torch  # noqa: F401
    except ImportError:
        settings.append("PyTorch not installed")
    else:
        settings.append(loss_line(problem, device))
        plain, setting = peers_module.torch_rows(problem, torch_forward(problem.net), reference, tol, device,
                                                 parameters=torch_parameters)
        fused, _ = peers_module.torch_rows(problem, torch_forward(problem.net, sdpa=True), reference, tol, device,
                                           parameters=torch_parameters)
        for row in fused:
            if row.quantity == "hvp" and row.mode == "cold":
                row.who += " [fused SDPA]"
                rows.append(row)
        rows += plain
        settings.append(setting)
    extra, setting = peers_module.jax_rows(problem, reference, tol, jax_model)
    return rows + extra, settings + [setting]


def main():
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", nargs="+", default=["float64", "float32"])
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", help="write every row to this file")
    add_device(parser)
    args = parse(parser)
    device = args.device
    report = {}
    for dtype in args.dtype:
        problem = setup(args.n, args.T, args.d, args.heads, args.depth, args.vocab, dtype, device)
        print(f"\n=== {dtype}, {device}, transformer vocab {args.vocab}, d {args.d}, {args.heads} heads, depth "
              f"{args.depth}, T = {args.T}, P = {problem.net.num_params}, n = {args.n} ===")
        tol = 1e-9 if dtype == "float64" else 1e-3
        report[dtype] = side_by_side(problem, args.rounds, device, not args.no_peers, None, jax=False,
                                     extra=None if args.no_peers else lambda: peer_rows(problem, device, tol))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
