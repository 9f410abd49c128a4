"""Side-by-side timing: every contender runs once per round, rounds repeat, medians are compared.

Interleaving the contenders inside each round means that a slow phase of the
machine (another process, a frequency change) hits all of them alike, so the
printed ratios are fair even when the absolute times drift.
"""

import statistics
import sys
import time


def _leaves(result):
    """The arrays in a result that may be a tuple, list or dict of them."""
    if isinstance(result, (tuple, list)):
        for item in result:
            yield from _leaves(item)
    elif isinstance(result, dict):
        for item in result.values():
            yield from _leaves(item)
    else:
        yield result


def sync(result):
    """Wait for the GPU work behind a result (CuPy, PyTorch, JAX; tuples of them too); a no-op on NumPy.

    Every framework here queues work and returns at once, so a timer stopped without waiting measures the
    launches only, and the work left in the queue is charged to whatever runs next.
    """
    if "jax" in sys.modules:  # JAX dispatches asynchronously; results may be pytrees
        sys.modules["jax"].block_until_ready(result)
    modules = {type(leaf).__module__.split(".")[0] for leaf in _leaves(result)}
    if "cupy" in modules:
        import cupy
        cupy.cuda.Device().synchronize()
    if "torch" in modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    return result


def timed(fn):
    """(fn(), seconds) for one call, waiting for any GPU work behind the result."""
    start = time.perf_counter()
    result = sync(fn())
    return result, time.perf_counter() - start


SETTLE_SECONDS = 0.2


def median_times(contenders, rounds=7, warmup=1, settle=SETTLE_SECONDS):
    """{name: median seconds} for a dict {name: zero-argument callable}.

    Where several contenders take turns, the process sleeps ``settle`` seconds (not timed) before each timed
    call, so that the worker threads of the contender before it have stopped spinning: OpenBLAS, OpenMP
    (PyTorch) and XLA's pools busy-wait for a while after each call, and on a machine with few cores the next
    contender would pay for it. A lone contender never waits (its own threads do not slow it); on a GPU
    machine, with cores to spare, callers pass ``settle=0``.
    """
    settle = settle if len(contenders) > 1 else 0
    for _ in range(warmup):
        for fn in contenders.values():
            sync(fn())
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            sync(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def table(rows, headers):
    """A plain-text table, columns padded to fit."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)
