"""Where the time of a product, a warm exponential-Euler step and ``alignment.analyze`` goes, part by part.

    python bench/gpu_parts.py [--device gpu|cpu] [--small] [--json FILE]

The one-shot check (bench/gpu_check.py) says how long each whole job takes;
this says why, for the next change: every pass of the network (forward,
backward, R-forward, R-backward, per layer) timed with the device synchronised
around it, beside one bare matrix product of the same shape; the warm
exponential-Euler step with blocks of 1, 4, 6 and 8 directions per product;
and ``analyze``'s parts (Jacobians, Grams, layerwise Jacobian norms per layer
and how much of them their tests on the host take, each λ_1 solve with blocks of 1, 4 and 8) beside the cost of the bare products
those solves made, so that what the eigensolver adds is visible. Synchronising
around every pass costs a little; the sum of the parts is printed beside the
whole.
"""

import argparse
import collections
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import nn_eos as ne  # noqa: E402
from nn_eos import alignment  # noqa: E402
from nn_eos.eigen import batched_lanczos, krylov  # noqa: E402
import dynamics as dynamics_bench  # noqa: E402
from timing import median_times, sync, timed  # noqa: E402

MLP = [1024, 512, 512, 512, 512, 512, 6]
SMALL = [1024, 32, 32, 6]


def device_wait(xp):
    """A function that waits for the device's queued work (nothing to wait for on the CPU)."""
    return (lambda: xp.cuda.Device().synchronize()) if xp.__name__ == "cupy" else (lambda: None)


def synchronised(function, wait, record, depth=None):
    """``function``, timed with the device synchronised before and after each call; ``record(seconds, outermost)``
    gets each call's time, and whether it ran inside no other call sharing ``depth`` (a one-item list)."""
    depth = [0] if depth is None else depth

    def timed_call(*args, **kwargs):
        wait()
        start = time.perf_counter()
        depth[0] += 1
        try:
            result = function(*args, **kwargs)
        finally:
            depth[0] -= 1
        wait()
        record(time.perf_counter() - start, depth[0] == 0)
        return result
    return timed_call


class PassTimer:
    """Wraps the passes of a network's layers (and its criterion) so that each call is timed with the device
    synchronised before and after; ``totals`` maps ``(pass, layer)`` to seconds summed over calls."""

    PASSES = ("forward", "backward", "r_forward", "r_backward")

    def __init__(self, net, criterion):
        self.totals, self.calls = collections.defaultdict(float), collections.Counter()
        self.wait = device_wait(net.xp)
        for i, layer in enumerate(net.layers):
            for name in self.PASSES:
                self._wrap(layer, name, f"{i}:{type(layer).__name__}")
        for name in ("value", "gradient", "output_hessian"):
            self._wrap(criterion, name, "criterion")
        make_product = criterion.output_hessian                 # the products u ↦ H_z l u it hands out, timed too
        criterion.output_hessian = lambda *a, **k: self._timed(make_product(*a, **k), ("hessian_product",
                                                                                       "criterion"))

    def _timed(self, function, key):
        def record(seconds, outermost):
            self.totals[key] += seconds
            self.calls[key] += 1
        return synchronised(function, self.wait, record)

    def _wrap(self, owner, name, label):
        setattr(owner, name, self._timed(getattr(owner, name), (name, label)))

    def reset(self):
        self.totals.clear()
        self.calls.clear()


def bare_matmul(xp, n, a, b, dtype, rounds=5):
    """Seconds of one (n, a) @ (a, b) product on the device: the floor under a dense layer's pass."""
    X, W = xp.ones((n, a), dtype=dtype), xp.ones((a, b), dtype=dtype)
    return median_times({"mm": lambda: X @ W}, rounds=rounds)["mm"]


def passes(device, n, widths, dtype, rounds):
    """Each pass of a gradient, a warm hvp, a warm ggn and a warm block of 4 and of 11, pass by pass."""
    rng = np.random.default_rng(0)
    net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
    criterion = ne.CrossEntropy()
    loss = ne.TrainingLoss(net, criterion, rng.random((n, widths[0])), np.arange(n) % widths[-1])
    xp = net.xp
    V = {k: xp.asarray(rng.standard_normal((net.num_params, k)), dtype=dtype) for k in (1, 4, 11)}
    jobs = {"gradient": lambda: loss.value_and_gradient()[1],
            "hvp k=1": lambda: loss.hvp(V[1][:, 0]), "ggn k=1": lambda: loss.ggn(V[1][:, 0]),
            "hvp k=4": lambda: loss.hvp(V[4]), "hvp k=11": lambda: loss.hvp(V[11])}
    whole = median_times(jobs, rounds=rounds)
    timer = PassTimer(net, criterion)
    out = {"whole_s": whole, "parts": {}, "bare_matmul_s": bare_matmul(xp, n, widths[1], widths[2], dtype)}
    print(f"\n=== passes, {dtype}, {device}, MLP {widths}, n = {n}; bare ({n}, {widths[1]}) @ "
          f"({widths[1]}, {widths[2]}): {out['bare_matmul_s'] * 1e3:.3f} ms ===")
    for name, job in jobs.items():
        sync(job())                                          # the warm passes (forward and backward kept)
        timer.reset()
        for _ in range(rounds):
            sync(job())
        parts = {f"{p}/{label}": t / rounds for (p, label), t in timer.totals.items()}
        by_pass = collections.defaultdict(float)
        for (p, _), t in timer.totals.items():
            by_pass[p] += t / rounds
        out["parts"][name] = {"by_pass": dict(by_pass), "by_layer": parts}
        summed = sum(by_pass.values())
        print(f"{name}: whole {whole[name] * 1e3:.2f} ms (unsynchronised); parts synchronised "
              f"{summed * 1e3:.2f} ms = " + ", ".join(f"{p} {t * 1e3:.2f}" for p, t in by_pass.items()))
        widest = sorted(parts.items(), key=lambda kv: -kv[1])[:6]
        print("   largest: " + ", ".join(f"{k} {t * 1e3:.2f}" for k, t in widest))
    return out


def exponential_euler(device, n, widths, dtype, blocks, steps):
    """A warm exponential-Euler step (k = 5) with ``block`` directions per product, for each block."""
    X, y = ne.datasets.dice("train", n=n)
    net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
    loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
    gradient = median_times({"g": lambda: loss.value_and_gradient()[1]}, rounds=5)["g"]
    out = {"gradient_s": gradient}
    print(f"\n=== warm exponential-Euler step, k = 5, {dtype}, {device}, n = {n}: gradient "
          f"{gradient * 1e3:.2f} ms ===")
    saved = krylov.DEVICE_BLOCK if device == "gpu" else None
    for block in blocks:
        krylov.DEVICE_BLOCK = block
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ne.NonConvergenceWarning)
            if device != "gpu":       # the CPU default is 1: make it the block asked for
                original, krylov.default_block = krylov.default_block, lambda xp, b=block: b
            try:
                seconds, matvecs, dt = dynamics_bench.time_steps(loss, ne.ExponentialEuler(k=5, lr_max=0.01),
                                                                 steps)
            finally:
                if device != "gpu":
                    krylov.default_block = original
        out[f"block{block}"] = {"step_s": seconds, "matvecs": matvecs, "products": matvecs / block}
        print(f"blocks of {block}: {seconds * 1e3:.1f} ms = {seconds / gradient:.1f} gradients, {matvecs:.0f} "
              f"matvecs ({matvecs / block:.1f} products)")
    if saved is not None:
        krylov.DEVICE_BLOCK = saved
    return out


def analyze_parts(device, n, widths, blocks):
    """``alignment.analyze``'s parts at n, float64, and the cost of the bare products of each λ_1 solve."""
    X, y = ne.datasets.dice("train", n=n)
    net = ne.mlp(widths, activation="elu", seed=0, device=device)
    criterion = ne.CrossEntropy()
    loss = ne.TrainingLoss(net, criterion, X, y)
    xp = net.xp
    gradient = median_times({"g": lambda: loss.value_and_gradient()[1]}, rounds=5)["g"]
    alignment.analyze(net, criterion, X[:64], y[:64])                       # compile the kernels once
    _, whole = timed(lambda: alignment.analyze(net, criterion, X, y))
    print(f"\n=== analyze, float64, {device}, n = {n}: {whole:.3f} s = {whole / gradient:.1f} gradients "
          f"(gradient {gradient * 1e3:.2f} ms) ===")
    out = {"gradient_s": gradient, "analyze_s": whole}
    Xd = ne.backend.to_device(X, net.device)
    parts = {"output Jacobians": lambda: alignment.output_jacobians(net, Xd)[1],
             "layer Grams (with the Jacobians)": lambda: alignment.layer_grams(net, criterion, Xd, y),
             "per-example quantities (all)": lambda: alignment.per_example_quantities(net, criterion, Xd, y)}
    dense, acts = alignment.dense_layers(net)
    caches = net.new_caches()
    net.forward(Xd, caches)
    slopes = [c.slope for layer, c in zip(net.layers, caches) if layer in acts]
    for i in range(len(dense) - 1):
        parts[f"‖∂x̂/∂x̂‖², layer {i + 1}"] = (lambda i=i: alignment.layerwise_jacobian_norm2(
            dense[i + 1].A, slopes[i], xp))
    for name, fn in parts.items():
        sync(fn())
        _, seconds = timed(fn)
        out[name] = seconds
        print(f"{name}: {seconds * 1e3:.1f} ms = {seconds / gradient:.1f} gradients")
    out["layerwise host tests"] = layerwise_host_tests(parts, len(dense) - 1)
    for kind in ("hessian", "ggn", "residual"):
        operator = loss.operator(kind)
        for block in blocks:
            result, seconds = timed(lambda: ne.top_eigenpairs(operator, 1, method="krylov", which="LA",
                                                              tol=alignment.SHARPNESS_TOL, guard=max(block - 1, 0),
                                                              block=block))
            Vb = xp.asarray(np.random.default_rng(0).standard_normal((net.num_params, block)), dtype=net.dtype)
            product = median_times({"p": lambda: operator.matmat(Vb)}, rounds=3)["p"]
            bare = result.iterations * product
            out[f"{kind} block{block}"] = {"seconds": seconds, "products": result.iterations, "product_s": product}
            print(f"λ_1 {kind}, blocks of {block}: {seconds * 1e3:.1f} ms, {result.iterations} products of "
                  f"{product * 1e3:.2f} ms = {bare * 1e3:.1f} ms bare; the solver adds "
                  f"{(seconds - bare) * 1e3:.1f} ms ({(seconds - bare) / result.iterations * 1e3:.2f} ms a product)")
    return out


def layerwise_host_tests(parts, layers):
    """How much of each layer's batched Lanczos goes to its convergence tests on the host (``top_ritz``: a batched
    eigvalsh of the examples' tridiagonal matrices), the rest being the device's steps and the reads that wait
    for them."""
    spent, top_ritz = [], batched_lanczos.top_ritz

    def timed_top_ritz(*args):
        start = time.perf_counter()
        result = top_ritz(*args)
        spent.append(time.perf_counter() - start)
        return result

    out = {}
    batched_lanczos.top_ritz = timed_top_ritz
    try:
        for i in range(layers):
            spent.clear()
            _, seconds = timed(parts[f"‖∂x̂/∂x̂‖², layer {i + 1}"])
            out[i + 1] = {"seconds": seconds, "host_tests_s": sum(spent), "tests": len(spent)}
            print(f"‖∂x̂/∂x̂‖², layer {i + 1}: {len(spent)} tests on the host took {sum(spent) * 1e3:.1f} ms "
                  f"of {seconds * 1e3:.1f} ms")
    finally:
        batched_lanczos.top_ritz = top_ritz
    return out


TOP_LEVEL = "(all timed parts, each counted once)"


def _sync_wrap(owner, name, totals, calls, wait, depth):
    """Replace ``owner.name`` by a version timed with the device synchronised around it; returns the original.
    Calls made inside another timed part (``depth``, shared) are summed under ``TOP_LEVEL`` only once."""
    original = getattr(owner, name)

    def record(seconds, outermost):
        totals[name] += seconds
        calls[name] += 1
        if outermost:
            totals[TOP_LEVEL] += seconds
    setattr(owner, name, synchronised(original, wait, record, depth))
    return original


def solver(device, n_align, n_big, widths):
    """Where block Krylov's time goes, function by function (device synchronised around each), for the residual
    λ_1 at n_align with blocks of 1 and 8, and a warm exponential-Euler step (float32, n_big, blocks of 8)."""
    out = {}
    for label, n, dtype, block, job in (("residual λ_1, blocks of 1", n_align, "float64", 1, "lambda"),
                                        ("residual λ_1, blocks of 8", n_align, "float64", 8, "lambda"),
                                        ("warm EE step, blocks of 8", n_big, "float32", 8, "ee")):
        X, y = ne.datasets.dice("train", n=n)
        net = ne.mlp(widths, activation="elu", seed=0, dtype=dtype, device=device)
        loss = ne.TrainingLoss(net, ne.CrossEntropy(), X, y)
        xp = net.xp
        wait = device_wait(xp)
        totals, calls = collections.defaultdict(float), collections.Counter()
        saved = krylov.DEVICE_BLOCK, krylov.default_block
        krylov.default_block = lambda xp, b=block: b
        integrator = ne.ExponentialEuler(k=5, lr_max=0.01)
        theta = net.theta.copy()
        if job == "ee":                                      # the cold step fills the warm start
            theta = integrator.step(loss, theta, loss.value_and_gradient(theta)[1])[0]
            gradient = loss.value_and_gradient(theta)[1]          # the timed step starts where it ended
        operator = loss.operator("residual")
        if job != "ee":
            operator.matmat(xp.asarray(np.ones((net.num_params, block)), dtype=net.dtype))   # its passes, once
        depth = [0]
        originals = [(krylov, name, _sync_wrap(krylov, name, totals, calls, wait, depth))
                     for name in ("_new_directions", "_expansion")]
        for name in ("add", "ritz_pairs", "ritz_vectors", "check_residuals", "restart"):
            originals.append((krylov._KrylovBasis, name,
                              _sync_wrap(krylov._KrylovBasis, name, totals, calls, wait, depth)))
        originals.append((loss, "_product", _sync_wrap(loss, "_product", totals, calls, wait, depth)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ne.NonConvergenceWarning)
                wait()
                start = time.perf_counter()
                if job == "ee":
                    sync(integrator.step(loss, theta, gradient))
                else:
                    ne.top_eigenpairs(operator, 1, method="krylov", which="LA", tol=alignment.SHARPNESS_TOL,
                                      guard=block - 1, block=block)
                wait()
                whole = time.perf_counter() - start
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
            krylov.DEVICE_BLOCK, krylov.default_block = saved
            del loss._product
        out[label] = {"whole_s": whole, "parts_s": dict(totals), "calls": dict(calls)}
        print(f"\n=== {label}, {dtype}, n = {n}: {whole * 1e3:.1f} ms (synchronised around each part) ===")
        print("  " + ", ".join(f"{name} {t * 1e3:.1f} ms / {calls[name]}" for name, t in totals.items()
                               if name != TOP_LEVEL) + " (some run inside others)")
        print(f"  outside all of these: {(whole - totals[TOP_LEVEL]) * 1e3:.1f} ms")
    return out


def small_ops(device, widths):
    """The small dense algebra of the solvers, alone on the device at the paper's P: inner products over P
    (``Qᵀ W``), column norms, a host round trip, and the warm start of the layerwise Jacobian norms (SVD of a
    512 × 512 matrix) beside an eigh of its Gram matrix."""
    net = ne.mlp(widths, activation="elu", seed=0, device=device)
    xp, P = net.xp, net.num_params
    rng = np.random.default_rng(0)
    out = {}
    print(f"\n=== the solvers' small algebra, {device}, P = {P} ===")
    for dtype in ("float64", "float32"):
        Q = xp.asfortranarray(xp.asarray(rng.standard_normal((P, 40)), dtype=dtype))
        W = xp.asarray(rng.standard_normal((P, 8)), dtype=dtype)
        w = xp.asarray(rng.standard_normal((P, 1)), dtype=dtype)
        S = xp.asarray(rng.standard_normal((40, 8)), dtype=dtype)
        A = xp.asarray(rng.standard_normal((512, 512)), dtype=dtype)
        from nn_eos.eigen.ritz import column_norms
        def split_inner(A, B, c):
            """Aᵀ B with the sum over P cut into c pieces: one batched product and a sum."""
            L = A.shape[0] // c
            At = A.T
            main = xp.matmul(At[:, :c * L].reshape(A.shape[1], c, L).transpose(1, 0, 2),
                             B[:c * L].reshape(c, L, B.shape[1])).sum(axis=0)
            return main + At[:, c * L:] @ B[c * L:]

        def split_norms(W, c):
            L = W.shape[0] // c
            head = (W[:c * L] * W[:c * L]).reshape(c, L, W.shape[1]).sum(axis=1).sum(axis=0)
            return xp.sqrt(head + (W[c * L:] * W[c * L:]).sum(axis=0))

        def power_steps(M, steps):
            C, v = M.T @ M, xp.ones(M.shape[1], dtype=M.dtype)
            for _ in range(steps):
                v = C @ v
                v /= xp.linalg.norm(v)
            return v

        for c in (32, 256):
            assert float(abs(split_inner(Q, W, c) - Q.T @ W).max()) < 1e-3 * float(abs(Q.T @ W).max())
        jobs = {"Qᵀ W (40 × 8)": lambda: Q.T @ W, "Qᵀ W split 32": lambda: split_inner(Q, W, 32),
                "Qᵀ W split 256": lambda: split_inner(Q, W, 256), "Wᵀ W split 256": lambda: split_inner(W, W, 256),
                "column norms split 256": lambda: split_norms(W, 256), "Qᵀ w (40 × 1)": lambda: Q.T @ w, "Wᵀ W (8 × 8)": lambda: W.T @ W,
                "Q S (P × 8)": lambda: Q @ S, "column norms of W": lambda: column_norms(W, xp),
                "(W * W).sum(axis=0)": lambda: (W * W).sum(axis=0),
                "host round trip of 8 numbers": lambda: ne.backend.to_numpy(W[:8, 0]),
                "svd 512 × 512": lambda: xp.linalg.svd(A, full_matrices=False),
                "eigh of AᵀA 512 × 512": lambda: xp.linalg.eigh(A.T @ A),
                "30 power steps on AᵀA": lambda: power_steps(A, 30)}
        times = median_times(jobs, rounds=5)
        out[dtype] = times
        print(f"{dtype}: " + "; ".join(f"{k} {t * 1e3:.3f} ms" for k, t in times.items()))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="gpu", choices=["cpu", "gpu"])
    parser.add_argument("--small", action="store_true", help="seconds-scale sizes (a dry run on the CPU)")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--parts", nargs="+", default=["passes", "ee", "analyze", "solver", "ops"],
                        choices=["passes", "ee", "analyze", "solver", "ops"])
    args = parser.parse_args()
    widths = SMALL if args.small else MLP
    n_big, n_align, rounds = (256, 128, 2) if args.small else (4096, 1000, 5)
    out = {}
    if "passes" in args.parts:
        for dtype in ("float32", "float64"):
            out[f"passes {dtype}"] = passes(args.device, n_big, widths, dtype, rounds)
    if "ee" in args.parts:
        for dtype in ("float32", "float64"):
            out[f"ee {dtype}"] = exponential_euler(args.device, n_big, widths, dtype, (1, 4, 6, 8), 3)
    if "analyze" in args.parts:
        out["analyze"] = analyze_parts(args.device, n_align, widths, (1, 4, 8))
    if "solver" in args.parts:
        out["solver"] = solver(args.device, n_align, n_big, widths)
    if "ops" in args.parts:
        out["ops"] = small_ops(args.device, widths)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
