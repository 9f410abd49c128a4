"""How much memory a curvature product needs, and how a product is split to fit a budget.

A product ``∇²L̃ V`` (or G V, H V) of k directions over c examples holds, at
its peak, the forward and backward caches of the c examples (the inputs,
pre-activations, slopes and δ of every layer: ``F`` numbers per example) and
the R-quantities of the k directions (``R`` numbers per example and
direction), besides the (k, P) directions and results.

``F = FORWARD · W``, with ``W`` the numbers one example has at the layers'
inputs and outputs (and, for a convolution, its patches:
:func:`values_per_example`). ``R`` is counted layer by layer
(:func:`r_values_per_example`): each layer's R-output, which the layer above
keeps in its cache from the R-forward pass to its own R-backward step (the
second-order terms read it), and each step's temporaries (the arrays one line
of a pass has alive at once: its input, the terms of its sum and the sum);
``R`` is the largest over the layers of a step's temporaries plus the
R-outputs kept below it, and the criterion's O-wide quantities. The layers' passes are
plain array expressions (layers.py): this module is the one place that
knows what they allocate. tests/test_memory.py checks that the estimate
bounds what tracemalloc measures on MLPs and conv nets, and
bench/curvature.py --memory prints measured peaks beside it.

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
CRITERION = 6         # O-wide R-quantities of the criterion (R{z}, H_z l R{z}, R{δ^L}, temporaries)
PER_CALL = 2          # (P,)-long arrays per direction of the whole call: the (k, P) directions and results
PER_BLOCK = 2         # (P,)-long arrays per direction of a block: a chunk's partial sums, R-gradient temporaries
UNKNOWN_STEP = 4      # a layer this module does not know: its step holds this many copies of input and output


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


def values_per_example(layer, input_shape):
    """Numbers per example at a layer's input and output (and a convolution's patches cols(x), which its cache
    keeps too): the ``W`` of the module docstring. A layer whose record holds more (attention's scores, a
    chain's inner layers) says so itself, as ``values_per_example(input_shape)``."""
    from .conv import Conv2d

    if hasattr(layer, "values_per_example"):
        return layer.values_per_example(input_shape)
    output = layer.output_shape(input_shape)
    values = int(np.prod(input_shape)) + int(np.prod(output))
    if isinstance(layer, Conv2d):
        values += int(np.prod(output[1:])) * layer.K
    return values


def r_values_per_example(layer, input_shape, first=False):
    """(kept, step): numbers per example and direction of a layer's R-passes.

    ``kept``: its R-output, held from its R-forward pass until the layer above
    has run its R-backward step. ``step``: the most a line of its passes has
    alive at once besides what is kept (docs/layers.md says how to count it for
    a new layer; a layer may define ``r_values_per_example(input_shape, first)``
    itself). ``first``: the network's first layer with parameters, which gets
    R{x} = 0 and sends no R{∂L̃/∂x} down.
    """
    from .activations import Activation
    from .conv import Conv2d, _Pool
    from .layers import Dense, Flatten

    if hasattr(layer, "r_values_per_example"):
        return layer.r_values_per_example(input_shape, first)
    output_shape = layer.output_shape(input_shape)
    i, o = int(np.prod(input_shape)), int(np.prod(output_shape))
    if isinstance(layer, Flatten):
        return 0, 0                                                    # views only
    if isinstance(layer, Activation):
        return o, 4 * o                       # R{g}, R{g} ⊙ σ', g ⊙ σ'' ⊙ R{x̂} and the sum
    if isinstance(layer, Dense):
        # r_forward: x V_Aᵀ + V_b, R{x} Aᵀ and their sum; r_backward: R{δ}, R{δ} A, δ V_A and their sum
        return o, 3 * o if first else max(3 * o, o + 3 * i)
    if isinstance(layer, Conv2d):
        patches = int(np.prod(output_shape[1:])) * layer.K
        padded = input_shape[0] * (input_shape[1] + 2 * layer.win.ph) * (input_shape[2] + 2 * layer.win.pw)
        forward = 3 * o + (0 if first else patches + padded)             # cols(R{x}) from the padded R{x}
        backward = 2 * o + (patches if first else 3 * patches + padded)  # R{δ} W, δ V_W, the sum, folded
        return o, max(forward, backward)
    if isinstance(layer, _Pool):
        padded = input_shape[0] * (input_shape[1] + 2 * layer.win.ph) * (input_shape[2] + 2 * layer.win.pw)
        return o, o + o * layer.win.kh * layer.win.kw + padded            # R{δ} spread over each window, folded
    return o, UNKNOWN_STEP * (i + o)


def product_cost(net):
    """The :class:`ProductCost` of a network's products (module docstring).

    The R-passes' peak is taken over the layers: at layer i's step, the
    R-outputs of the layers below it are kept (those above were dropped by the
    R-backward pass, or are not formed yet by the R-forward pass), besides the
    step's own temporaries.
    """
    shape, values, kept_below, peak = net.input_shape, 0, 0, 0
    first = next((layer for layer in net.layers if layer.num_params), None)
    for i, layer in enumerate(net.layers):
        values += values_per_example(layer, shape) - (int(np.prod(shape)) if i == 0 else 0)   # X: the loss's
        kept, step = r_values_per_example(layer, shape, first=layer is first)
        peak = max(peak, kept_below + step)
        kept_below += kept
        shape = layer.output_shape(shape)
    r_values = peak + CRITERION * int(np.prod(net.output_shape))
    itemsize = np.dtype(net.dtype).itemsize
    return ProductCost(per_example=int(FORWARD * values * itemsize),
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
