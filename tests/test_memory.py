"""Curvature products within a memory budget: the estimate bounds what the passes allocate, and a product split
into chunks of examples or blocks of directions equals the whole product up to rounding."""

import tracemalloc

import numpy as np
import pytest

import nn_eos as ne
from checks import device_xp
from nn_eos import memory
from nn_eos.backend import to_numpy


def loss_of(net, n, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, *net.input_shape))
    return ne.TrainingLoss(net, "cross_entropy", X, np.arange(n) % net.num_outputs, **kwargs)


def host_only():
    if not isinstance(np.zeros(1), type(device_xp.zeros(1))):
        pytest.skip("tracemalloc sees host (NumPy) allocations only")


def measured_peak(loss, V):
    """Bytes allocated at the peak of ``loss.hvp(V)`` above what was there before (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loss.hvp(V)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


NETS = {
    "mlp": lambda: ne.mlp([64, 128, 128, 128, 4], activation="elu", seed=0),
    "mlp, wide input": lambda: ne.mlp([512, 32, 32, 6], activation="tanh", seed=0),
    "alexnet": lambda: ne.alexnet_like((1, 32, 32), 6, width=0.125, activation="relu", seed=0),
    "vgg11": lambda: ne.vgg_like((1, 32, 32), 6, depth=11, width=0.0625, activation="tanh", seed=0),
}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("k", [1, 6])
def test_the_estimate_bounds_what_a_product_allocates(name, k):
    host_only()
    net = NETS[name]()
    n = 24 if name in ("alexnet", "vgg11") else 800     # enough examples for the R-quantities to dominate
    loss = loss_of(net, n)
    V = np.random.default_rng(1).standard_normal((net.num_params, k))
    peak = measured_peak(loss, V)
    estimate = memory.product_cost(net).bytes(n, k)
    assert peak <= estimate, f"{name}: measured {peak / 2**20:.1f} MiB above the estimate {estimate / 2**20:.1f} MiB"
    assert estimate < (1.3 if name == "mlp" else 2.5) * peak     # and not so loose that it chunks for nothing


def test_a_plan_fits_its_budget_and_prefers_whole_examples():
    cost = memory.ProductCost(per_example=100, per_example_direction=50, per_direction=1000)   # no per-call part
    assert memory.plan(cost, 10, 4, budget=10 ** 6) == memory.Plan(10, 4)                 # fits whole
    split = memory.plan(cost, 10, 4, budget=cost.bytes(10, 2))                              # two directions fit
    assert split == memory.Plan(10, 2)
    assert cost.bytes(10, 1) > 2000
    split = memory.plan(cost, 10, 4, budget=2000)                # not even one direction over all examples
    assert split == memory.Plan(6, 1) and cost.bytes(6, 1) <= 2000 < cost.bytes(7, 1)
    with pytest.raises(MemoryError, match=r"more than max_memory"):
        memory.plan(cost, 10, 4, budget=cost.bytes(1, 1) - 1)
    with_call = memory.ProductCost(100, 50, 1000, per_call_direction=300)    # the whole call's (k, P) arrays
    assert memory.plan(with_call, 10, 4, budget=with_call.bytes(10, 2, total=4)) == memory.Plan(10, 2)
    with pytest.raises(MemoryError, match=r"the 4 direction\(s\) and their results alone need"):
        memory.plan(with_call, 10, 4, budget=1200)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
@pytest.mark.parametrize("split", ["directions", "examples"])
def test_a_split_product_equals_the_whole_one(kind, split):
    net = ne.mlp([10, 12, 12, 3], activation="tanh", seed=2)
    whole = loss_of(net, 40, seed=3)
    cost = memory.product_cost(net)
    budget = cost.bytes(40, 2, total=5) if split == "directions" else cost.bytes(7, 5)
    small = loss_of(net, 40, seed=3, max_memory=budget)
    plan = small.plan(5)
    assert (plan.directions < 5 and plan.examples == 40) if split == "directions" else plan.examples < 40
    V = device_xp.asarray(np.random.default_rng(4).standard_normal((net.num_params, 5)))
    np.testing.assert_allclose(to_numpy(small.curvature_product(V, kind)), to_numpy(whole.curvature_product(V, kind)),
                               rtol=1e-12, atol=1e-14)
    value, gradient = small.value_and_gradient()
    assert value == pytest.approx(whole.value(), rel=1e-13)
    np.testing.assert_allclose(to_numpy(gradient), to_numpy(whole.gradient()), rtol=1e-12, atol=1e-15)


def test_a_chunked_product_after_a_whole_gradient_does_not_reuse_its_passes():
    """A budget that holds a gradient over all examples but not a block of products: the gradient's passes cover
    all 40 examples and must not stand in for a chunk's (each chunk would add the whole product)."""
    net = ne.mlp([10, 12, 12, 3], activation="tanh", seed=2)
    whole = loss_of(net, 40, seed=3)
    small = loss_of(net, 40, seed=3, max_memory=memory.product_cost(net).bytes(40, 1))
    assert small.plan(0).examples == 40 and small.plan(5).examples < 40
    V = device_xp.asarray(np.random.default_rng(4).standard_normal((net.num_params, 5)))
    small.gradient()
    np.testing.assert_allclose(to_numpy(small.hvp(V)), to_numpy(whole.hvp(V)), rtol=1e-12, atol=1e-14)


def test_the_default_budget_is_a_fraction_of_free_memory_and_repr_says_it(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda xp: 8 * 2 ** 30)
    loss = loss_of(ne.mlp([4, 5, 3], seed=0), 10)
    assert loss.max_memory == int(memory.DEFAULT_FRACTION * 8 * 2 ** 30)
    assert "max_memory=4.00 GiB (default)" in repr(loss)
    assert "max_memory=0.50 GiB)" in repr(loss_of(ne.mlp([4, 5, 3], seed=0), 10, max_memory=2 ** 29))
    assert memory.available_memory(np) > 0


def test_a_budget_too_small_for_one_example_is_a_clear_error():
    net = ne.mlp([10, 12, 3], seed=0)
    with pytest.raises(MemoryError, match=r"the 1 direction\(s\) and their results alone need"):
        loss_of(net, 20, max_memory=100).hvp(np.ones(net.num_params))
    with pytest.raises(MemoryError, match=r"MiB for one example and one direction at a time, more than max_memory"):
        loss_of(net, 20, max_memory=3000).hvp(np.ones(net.num_params))
    with pytest.raises(ValueError, match="max_memory"):
        loss_of(net, 20, max_memory=-5)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
def test_no_r_quantity_is_held_between_products(kind):
    """The R-quantities of a block live for one product: after it the loss keeps only the forward and backward
    record (nothing with the block's leading (k, n) axes), so an eigensolver's other arrays have the room."""
    widths, k, n = [16, 24, 24, 24, 5], 3, 50
    net = ne.mlp(widths, activation="elu", seed=0)
    loss = loss_of(net, n)
    loss.curvature_product(device_xp.asarray(np.random.default_rng(1).standard_normal((net.num_params, k))), kind)
    kept = [value for cache in loss._kept.passes.caches for value in vars(cache).values()]
    assert kept and not [a for a in kept if getattr(a, "shape", ())[:2] == (k, n)]


@pytest.mark.parametrize("k", [1, 6])
def test_the_estimate_bounds_what_a_transformer_product_allocates(k):
    """Attention's (n, heads, T, T) records and a residual block's inner R-outputs are counted: the estimate
    bounds the measured peak, within 1.5× of it (on NumPy and on the strict stand-in, whose arrays NumPy holds)."""
    if ne.backend.default_device() == "gpu":
        pytest.skip("tracemalloc sees host allocations only")
    net = ne.transformer(11, 16, 2, 2, 16, seed=0)
    rng = np.random.default_rng(0)
    n = 64
    loss = ne.TrainingLoss(net, "cross_entropy", rng.integers(0, 11, size=(n, 16)), rng.integers(0, 11, size=(n, 16)))
    V = rng.standard_normal((net.num_params, k))
    peak = measured_peak(loss, V)
    estimate = memory.product_cost(net).bytes(n, k)
    assert peak <= estimate < 1.5 * peak, f"measured {peak / 2**20:.1f} MiB, estimate {estimate / 2**20:.1f} MiB"


@pytest.mark.parametrize("shape", ["scores", "vocabulary"])
@pytest.mark.parametrize("k", [1, 6])
def test_the_estimate_bounds_a_transformer_where_attention_or_the_embedding_dominates(shape, k):
    """T = 64 with d = 8 (attention's T × T records dominate) and a vocabulary of 400 with T = 8 (the embedding's
    one-hot rows dominate): the estimate bounds the measured peak, within 2.5× of it (measured 1.29–2.28×)."""
    if ne.backend.default_device() == "gpu":
        pytest.skip("tracemalloc sees host allocations only")
    vocab, T, n = (11, 64, 32) if shape == "scores" else (400, 8, 64)
    net = ne.transformer(vocab, 8, 2, 1, T, seed=0)
    rng = np.random.default_rng(0)
    loss = ne.TrainingLoss(net, "cross_entropy", rng.integers(0, vocab, size=(n, T)),
                           rng.integers(0, vocab, size=(n, T)))
    peak = measured_peak(loss, rng.standard_normal((net.num_params, k)))
    estimate = memory.product_cost(net).bytes(n, k)
    assert peak <= estimate < 2.5 * peak, f"measured {peak / 2**20:.1f} MiB, estimate {estimate / 2**20:.1f} MiB"
