"""How much memory a curvature product needs, and how a product is split to fit a budget.

A product ``∇²L̃ V`` (or G V, H V) of k directions over c examples holds, at
its peak, the forward and backward caches of the c examples (the inputs,
pre-activations, slopes and δ of every layer: ``F`` numbers per example) and
the R-quantities of the k directions (``R`` numbers per example and
direction), besides the (k, P) directions and results.

``F = FORWARD · W``, with ``W`` the numbers one example has at the layers'
inputs and outputs (and, for a convolution, its patches:
``Layer.values_per_example``). ``R`` is counted layer by layer
(``Layer.r_values_per_example``): what each layer keeps from its R-forward to
its R-backward pass (R{x̂} and R{x}: the second-order terms read them), the
largest step's own temporaries (a convolution's patches), the network's two
scratch buffers (backend.ScratchPool: the R{∂L̃/∂x} read and the one written)
and the criterion's O-wide quantities. What a layer keeps only for a single
direction (a convolution's patches of R{x}) is counted once, per example.
tests/test_memory.py checks that the estimate bounds what tracemalloc measures
on MLPs and conv nets, and bench/curvature.py --memory prints measured peaks
beside it.

A :class:`TrainingLoss` given ``max_memory`` (default: ``DEFAULT_FRACTION`` of
the memory free when it is built, on the host or on the GPU) runs each
product in chunks of examples and blocks of directions that fit it
(:func:`plan`); the results equal the unsplit product up to rounding.
"""

import os
from dataclasses import dataclass

import numpy as np

DEFAULT_FRACTION = 0.5
FORWARD = 1.6         # numbers per example held by the forward and backward passes, per number of W
SCRATCH_BUFFERS = 2   # the ScratchPool's buffers (backend.ScratchPool): one R{∂L̃/∂x} read, one written
CRITERION = 6         # O-wide R-quantities of the criterion (R{z}, its copy, H_z l R{z}, R{δ^L}, temporaries)
PER_CALL = 2          # (P,)-long arrays per direction of the whole call: the (k, P) directions and results
PER_BLOCK = 2         # (P,)-long arrays per direction of a block: a chunk's partial sums, R-gradient temporaries


def available_memory(xp):
    """Bytes that can be allocated now: the GPU's free memory plus what CuPy's pool holds unused, or the host's
    available memory (MemAvailable; the free pages where /proc/meminfo is missing)."""
    cuda = getattr(xp, "cuda", None)
    if cuda is not None:
        free, _ = cuda.runtime.memGetInfo()
        return int(free) + int(xp.get_default_memory_pool().free_bytes())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class ProductCost:
    """Bytes a product needs: per example, per example and direction, per direction of a block, and per
    direction of the whole call."""

    per_example: int
    per_example_direction: int
    per_direction: int
    per_call_direction: int = 0

    def bytes(self, examples, directions, total=None):
        """The estimated peak of a product of ``total`` directions (default: ``directions``) done in blocks of
        ``directions`` over chunks of ``examples`` examples."""
        return (examples * (self.per_example + directions * self.per_example_direction)
                + directions * self.per_direction + (total or directions) * self.per_call_direction)


def product_cost(net):
    """The :class:`ProductCost` of a network's products (module docstring)."""
    shape, values, kept, step, scratch, single = net.input_shape, 0, 0, 0, 0, 0
    first = next((layer for layer in net.layers if layer.num_params), None)
    for layer in net.layers:
        values += layer.values_per_example(shape)
        r = layer.r_values_per_example(shape, first=layer is first)
        kept, step, scratch, single = kept + r.kept, max(step, r.step), max(scratch, r.scratch), single + r.single
        shape = layer.output_shape(shape)
    O = net.num_outputs
    r_values = kept + step + SCRATCH_BUFFERS * scratch + CRITERION * O + O * O   # O²: cross-entropy's H_z l u
    itemsize = np.dtype(net.dtype).itemsize
    return ProductCost(per_example=int((FORWARD * values + single) * itemsize),   # + a single direction's patches
                       per_example_direction=int(r_values * itemsize),
                       per_direction=PER_BLOCK * net.num_params * itemsize,
                       per_call_direction=PER_CALL * net.num_params * itemsize)


@dataclass(frozen=True)
class Plan:
    """How one call is split: ``examples`` per chunk, ``directions`` per block."""

    examples: int
    directions: int


def plan(cost, n, k, budget, examples=None):
    """The split of a product of k directions over n examples that fits ``budget`` bytes.

    Whole when it fits. Else all n examples in one chunk with the directions in
    blocks (the forward and backward passes are then shared by the blocks), if
    one direction fits; else chunks of examples, as many directions per block
    as leave a chunk of at least one example. ``examples`` fixes the chunk
    (the loss's ``chunk_size``). Raises MemoryError when not even one example
    and one direction fit.
    """
    k = max(k, 1)
    chunk = n if examples is None else min(examples, n)
    budget -= k * cost.per_call_direction                    # the directions and results of the whole call
    if budget <= 0:
        raise MemoryError(f"the {k} direction(s) and their results alone need about "
                          f"{k * cost.per_call_direction / 2**20:.1f} MiB, more than max_memory")

    def most_directions(c):
        room = budget - c * cost.per_example
        return min(k, room // (c * cost.per_example_direction + cost.per_direction)) if room > 0 else 0

    if most_directions(chunk) >= 1:
        return Plan(chunk, int(most_directions(chunk)))
    if examples is None:
        for b in sorted({k, max(k // 2, 1), max(k // 4, 1), 1}, reverse=True):
            c = (budget - b * cost.per_direction) // (cost.per_example + b * cost.per_example_direction)
            if c >= 1:
                return Plan(int(min(c, n)), b)
    raise MemoryError(f"a product needs about {cost.bytes(1, 1, k) / 2**20:.1f} MiB for one example and one "
                      f"direction at a time{'' if examples is None else f' ({examples} examples per chunk)'}, more "
                      f"than max_memory = {(budget + k * cost.per_call_direction) / 2**20:.1f} MiB")
