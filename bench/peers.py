"""The contenders of bench/curvature.py, cold and warm, ours and our peers' (PyTorch, JAX), on equal terms.

A *cold* call starts at a θ the previous call did not use (two θ alternate), so every contender runs its whole
forward and backward pass: ours because its kept passes belong to the other θ, PyTorch because it rebuilds
its graph, JAX because a jitted function keeps nothing between calls. A *warm* call repeats the same θ, and
each contender keeps what it is able to keep: ours its forward and backward passes (an operator of
``TrainingLoss``, as the eigensolvers use it); PyTorch its graph (the gradient with ``create_graph=True``
once, then ``autograd.grad(g, θ, v, retain_graph=True)``); JAX its linearisation (``jax.linearize`` of the
gradient, or of the network for G, once, then the linear map, jitted). A gradient is always cold.

Every peer's result is checked against ours before it is timed; a row that cannot run, or disagrees, stays in
the table as "failed: reason".
"""

import os
from dataclasses import dataclass

import numpy as np

import nn_eos as ne
from nn_eos.backend import to_numpy

K_BLOCK = 11
QUANTITIES = ("gradient", "hvp", "ggn", f"block of {K_BLOCK} hvp")


@dataclass
class Row:
    """One contender: what it computes (``quantity``), ``cold`` or ``warm``, who, and the zero-argument call
    that is timed, or why there is none (``failed``)."""
    quantity: str
    mode: str
    who: str
    call: object = None
    failed: str = ""


@dataclass
class Problem:
    """One network, its data, two θ (a cold call alternates between them) and the directions (P, k)."""
    net: object
    X: np.ndarray
    y: np.ndarray
    thetas: tuple
    V: np.ndarray

    @property
    def v(self):
        """The first direction, contiguous (a column view would be strided, and slower for every contender)."""
        return np.ascontiguousarray(self.V[:, 0])


def alternating(call):
    """A zero-argument callable that runs ``call(0)``, ``call(1)``, ``call(0)``, … : each call at the θ the
    previous one did not use."""
    state = {"at": 1}

    def cold():
        state["at"] ^= 1
        return call(state["at"])
    return cold


def ours(problem):
    """Our rows: a gradient, and hvp, ggn and a block of hvp, each cold (θ alternating) and warm (an operator at
    θ_0, as the eigensolvers use it). Every row has a loss of its own, so that no row finds the passes another
    row left: a loss keeps the passes of its last evaluation, and a cold row must never meet its θ there."""
    net = problem.net
    xp = net.xp
    thetas = [xp.asarray(t) for t in problem.thetas]
    v, V = xp.asarray(problem.v), xp.asarray(problem.V)

    def loss():
        return ne.TrainingLoss(net, ne.CrossEntropy(), problem.X, problem.y)

    def cold(product, directions):
        own = loss()
        return alternating(lambda i: getattr(own, product)(directions, thetas[i]))

    hessian, ggn = loss().operator("hessian", thetas[0]), loss().operator("ggn", thetas[0])
    gradient = loss()
    block = QUANTITIES[3]
    return [
        Row("gradient", "cold", "ours", alternating(lambda i: gradient.value_and_gradient(thetas[i])[1])),
        Row("hvp", "cold", "ours", cold("hvp", v)),
        Row("hvp", "warm", "ours", lambda: hessian.matmat(v)),
        Row("ggn", "cold", "ours", cold("ggn", v)),
        Row("ggn", "warm", "ours", lambda: ggn.matmat(v)),
        Row(block, "cold", "ours", cold("hvp", V)),
        Row(block, "warm", "ours", lambda: hessian.matmat(V)),
    ]


def references(problem):
    """Our results at θ_0, host arrays: what every peer must reproduce."""
    loss = ne.TrainingLoss(problem.net, ne.CrossEntropy(), problem.X, problem.y)
    xp = problem.net.xp
    theta = xp.asarray(problem.thetas[0])
    return {"gradient": to_numpy(loss.gradient(theta)), "hvp": to_numpy(loss.hvp(xp.asarray(problem.v), theta)),
            "ggn": to_numpy(loss.ggn(xp.asarray(problem.v), theta)),
            QUANTITIES[3]: to_numpy(loss.hvp(xp.asarray(problem.V), theta))}


def checked_rows(calls, flat, reference, tol):
    """A :class:`Row` for each of ``calls`` [(quantity, mode, who, call)], the call run once first and its result
    (``flat(result, blocked)``, a host array) compared with ``reference[quantity]`` relative to its largest
    entry: a call that raises, or differs by more than ``tol``, keeps its row as "failed: reason"."""
    rows = []
    for quantity, mode, who, call in calls:
        row = Row(quantity, mode, who, call)
        try:
            result = flat(call(), quantity == QUANTITIES[3])
        except Exception as error:          # noqa: BLE001  (any failure is reported as the row's reason)
            row.call, row.failed = None, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        else:
            mine = reference[quantity]
            err = float(np.abs(result - mine).max() / np.abs(mine).max())
            if not err < tol:
                row.call, row.failed = None, f"differs from ours by {err:.1e} (relative)"
        rows.append(row)
    return rows


# ----- PyTorch -------------------------------------------------------------------------------------------

def torch_settings(torch):
    return (f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads, float32 matmul precision "
            f"'{torch.get_float32_matmul_precision()}', TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}")


def torch_parameters(net, theta, torch, device, dtype):
    """θ as PyTorch's list of (W, b) tensors, layer by layer, in our order and shapes."""
    out = []
    for layer, part in zip(net.layers, net.layer_parts(np.asarray(theta))):
        if layer.num_params:
            W, b = layer.split(part)
            out += [torch.tensor(np.array(W), dtype=dtype, device=device),
                    torch.tensor(np.array(b), dtype=dtype, device=device)]
    return out


def torch_rows(problem, forward, reference, tol, device="cpu", parameters=None):
    """PyTorch's rows for ``forward(params, X)`` (a PyTorch function of the parameter list, computing our net's
    outputs as (rows, O): a sequence model's tokens flattened, the labels then flattened the same way), with the
    criterion cross-entropy: or ``([], reason)`` when PyTorch cannot run here. ``parameters(net, θ, torch,
    device, dtype)`` gives θ as that list (default :func:`torch_parameters`: (W, b) per layer)."""
    try:
        import torch
        from torch.func import grad as fgrad, jvp, linearize, vjp, vmap
    except ImportError:
        return [], "PyTorch not installed"
    if device == "gpu" and not torch.cuda.is_available():
        return [], "PyTorch has no CUDA device"
    tdev = "cuda" if device == "gpu" else "cpu"
    tdtype = getattr(torch, np.dtype(problem.net.dtype).name)
    torch.set_num_threads(os.cpu_count() or 1)
    net = problem.net
    split = parameters or torch_parameters
    thetas = [split(net, t, torch, tdev, tdtype) for t in problem.thetas]
    vs = split(net, problem.v, torch, tdev, tdtype)
    per_direction = [split(net, problem.V[:, j], torch, tdev, tdtype) for j in range(K_BLOCK)]
    Vs = [torch.stack(parts) for parts in zip(*per_direction)]
    Xt = torch.tensor(problem.X, dtype=tdtype, device=tdev)
    yt = torch.tensor(problem.y.reshape(-1), dtype=torch.int64, device=tdev)

    def loss_fn(p):
        return torch.nn.functional.cross_entropy(forward(p, Xt), yt)

    def leaves(i):
        return [q.detach().requires_grad_() for q in thetas[i]]

    def gradient(i):
        p = leaves(i)
        return torch.autograd.grad(loss_fn(p), p)

    def double_backward(i, v=vs, batched=False):
        p = leaves(i)
        g = torch.autograd.grad(loss_fn(p), p, create_graph=True)
        return torch.autograd.grad(g, p, grad_outputs=v, is_grads_batched=batched)

    def fwd_over_rev(i, v=vs):
        return jvp(fgrad(loss_fn), (thetas[i],), (v,))[1]

    vmapped = vmap(lambda i, v: fwd_over_rev(i, list(v)), in_dims=(None, 0))

    def output_hessian(z, u):                   # H_z l u for the mean cross-entropy
        p = torch.softmax(z, dim=-1)
        return p * (u - (p * u).sum(-1, keepdim=True)) / z.shape[0]

    def ggn(i, v=vs):
        z, Ju = jvp(lambda p: forward(p, Xt), (thetas[i],), (v,))
        return vjp(lambda p: forward(p, Xt), thetas[i])[1](output_hessian(z, Ju))[0]

    kept = {}

    def keep():                                 # the warm state at θ_0, built once, outside the timing
        p = leaves(0)
        kept["p"], kept["g"] = p, torch.autograd.grad(loss_fn(p), p, create_graph=True)
        kept["z"], kept["jvp"] = linearize(lambda q: forward(q, Xt), thetas[0])
        kept["vjp"] = vjp(lambda q: forward(q, Xt), thetas[0])[1]

    def warm_hvp(v=vs, batched=False):
        if not kept:
            keep()
        return torch.autograd.grad(kept["g"], kept["p"], grad_outputs=v, retain_graph=True,
                                   is_grads_batched=batched)

    def warm_ggn():
        if not kept:
            keep()
        return kept["vjp"](output_hessian(kept["z"], kept["jvp"](vs)))[0]

    block = QUANTITIES[3]
    calls = [
        ("gradient", "cold", "PyTorch", alternating(gradient)),
        ("hvp", "cold", "PyTorch double backward", alternating(double_backward)),
        ("hvp", "cold", "PyTorch forward-over-reverse", alternating(fwd_over_rev)),
        ("hvp", "warm", "PyTorch, graph kept", warm_hvp),
        ("ggn", "cold", "PyTorch jvp + vjp", alternating(ggn)),
        ("ggn", "warm", "PyTorch linearize + vjp kept", warm_ggn),
        (block, "cold", "PyTorch vmap of forward-over-reverse", alternating(lambda i: vmapped(i, tuple(Vs)))),
        (block, "cold", "PyTorch double backward, batched", alternating(lambda i: double_backward(i, Vs, True))),
        (block, "warm", "PyTorch, graph kept, batched", lambda: warm_hvp(Vs, True)),
    ]

    def flat(result, blocked):
        tensors = [t.detach().cpu() for t in result]
        if blocked:
            return torch.cat([t.reshape(K_BLOCK, -1) for t in tensors], dim=1).T.numpy()
        return torch.cat([t.reshape(-1) for t in tensors]).numpy()

    return checked_rows(calls, flat, reference, tol), torch_settings(torch)


# ----- JAX -----------------------------------------------------------------------------------------------

def jax_settings(jax):
    return (f"JAX {jax.__version__} on {jax.default_backend()}: x64 {jax.config.jax_enable_x64}, matmul "
            f"precision '{jax.config.jax_default_matmul_precision}', jit")


def jax_mlp(net, jax):
    """Our MLP (dense layers, ELU between them) in JAX: ``pairs(flat)`` turns a (P,) array of ours into the list of
    (A, b) per dense layer; ``forward(p, X)`` the outputs; ``loss(p, X, y)`` the mean cross-entropy."""
    import jax.numpy as jnp

    def pairs(flat):
        return [tuple(jnp.asarray(np.array(a)) for a in layer.split(part))
                for layer, part in zip(net.layers, net.layer_parts(np.asarray(flat))) if layer.num_params]

    def forward(p, X):
        h = X
        for j, (A, b) in enumerate(p):
            h = h @ A.T + b
            if j + 1 < len(p):
                h = jax.nn.elu(h)
        return h

    def loss(p, X, y):
        z = forward(p, X)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0])

    return pairs, forward, loss


def jax_mlp_rows(problem, reference, tol):
    """JAX's rows for our MLP (dense layers and ELU), jitted, on JAX's default device: or ``([], reason)``."""
    if not all(type(layer).__name__ in ("Dense", "ELU") for layer in problem.net.layers):
        return [], "JAX peer is written for dense layers and ELU only"
    return jax_rows(problem, reference, tol, jax_mlp)


def jax_rows(problem, reference, tol, model):
    """JAX's rows for ``model(net, jax) = (pairs, forward, loss)`` (as :func:`jax_mlp` gives; ``forward`` returns
    (rows, O): a sequence model's tokens flattened), jitted, on JAX's default device: or ``([], reason)``."""
    try:
        import jax
    except ImportError:
        return [], "JAX not installed"
    dtype = np.dtype(problem.net.dtype).name
    jax.config.update("jax_enable_x64", dtype == "float64")
    # on a GPU, JAX multiplies float32 matrices in TF32 by default (10-bit mantissa); we, CuPy and PyTorch do not
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp

    net = problem.net
    pairs, forward_on, loss_on = model(net, jax)
    thetas = [pairs(t) for t in problem.thetas]
    vs = pairs(problem.v)
    Vs = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[pairs(problem.V[:, j]) for j in range(K_BLOCK)])
    Xj, yj = jnp.asarray(problem.X), jnp.asarray(problem.y)

    def forward(p):
        return forward_on(p, Xj)

    def loss_fn(p):
        return loss_on(p, Xj, yj)

    def output_hessian(z, u):
        q = jax.nn.softmax(z, axis=-1)
        return q * (u - (q * u).sum(-1, keepdims=True)) / z.shape[0]

    # parameters and directions are arguments, never closed-over constants, so that XLA cannot fold the
    # computation away at compile time; the linearised maps are pytrees passed in the same way
    grad = jax.jit(jax.grad(loss_fn))
    hvp_fn = lambda p, v: jax.jvp(jax.grad(loss_fn), (p,), (v,))[1]
    hvp = jax.jit(hvp_fn)
    block_hvp = jax.jit(jax.vmap(hvp_fn, in_axes=(None, 0)))

    def ggn_fn(p, v):
        z, Ju = jax.jvp(forward, (p,), (v,))
        return jax.vjp(forward, p)[1](output_hessian(z, Ju))[0]

    ggn = jax.jit(ggn_fn)
    apply = jax.jit(lambda f, v: f(v))
    apply_block = jax.jit(lambda f, V: jax.vmap(f)(V))
    apply_ggn = jax.jit(lambda z, jvp_fn, vjp_fn, v: vjp_fn(output_hessian(z, jvp_fn(v)))[0])
    kept = {}

    def keep():
        kept["hvp"] = jax.linearize(jax.grad(loss_fn), thetas[0])[1]
        kept["z"], kept["jvp"] = jax.linearize(forward, thetas[0])
        kept["vjp"] = jax.vjp(forward, thetas[0])[1]

    def warm(name):
        if not kept:
            keep()
        return kept[name]

    block = QUANTITIES[3]
    calls = [
        ("gradient", "cold", "JAX", alternating(lambda i: grad(thetas[i]))),
        ("hvp", "cold", "JAX forward-over-reverse", alternating(lambda i: hvp(thetas[i], vs))),
        ("hvp", "warm", "JAX linearize", lambda: apply(warm("hvp"), vs)),
        ("ggn", "cold", "JAX jvp + vjp", alternating(lambda i: ggn(thetas[i], vs))),
        ("ggn", "warm", "JAX linearize + vjp kept", lambda: apply_ggn(warm("z"), warm("jvp"), warm("vjp"), vs)),
        (block, "cold", "JAX vmap of forward-over-reverse", alternating(lambda i: block_hvp(thetas[i], Vs))),
        (block, "warm", "JAX vmap of linearize", lambda: apply_block(warm("hvp"), Vs)),
    ]

    def flat(result, blocked):
        leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(result)]
        if blocked:
            return np.concatenate([a.reshape(K_BLOCK, -1) for a in leaves], axis=1).T
        return np.concatenate([a.ravel() for a in leaves])

    return checked_rows(calls, flat, reference, tol), jax_settings(jax)
