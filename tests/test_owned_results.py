"""Every public result is an array the caller owns: a second call never changes the first call's result.

These tests call each public function twice with different inputs and check
that the first result is unchanged (they failed when the R-passes wrote into
reusable buffers and r_forward and output_jacobians returned views of them).
"""

import numpy as np

import nn_eos as ne
from nn_eos import alignment
from nn_eos.backend import to_numpy


def problem(seed=0, n=7):
    rng = np.random.default_rng(seed)
    net = ne.mlp([5, 8, 8, 3], activation="elu", seed=seed)
    X, y = rng.standard_normal((n, 5)), np.arange(n) % 3
    return net, ne.TrainingLoss(net, "cross_entropy", X, y), X, rng


def unchanged(first, compute_again):
    kept = to_numpy(first).copy()
    compute_again()
    np.testing.assert_array_equal(to_numpy(first), kept)


def test_r_forward_result_survives_the_next_call():
    net, loss, X, rng = problem()
    Xd = net.xp.asarray(X)
    caches = net.new_caches()
    net.forward(Xd, caches)
    V1, V2 = (net.xp.asarray(rng.standard_normal((2, net.num_params))) for _ in range(2))
    first = net.r_forward(V1, caches)
    unchanged(first, lambda: (net.forward(Xd, caches), net.r_forward(V2, caches)))


def test_output_jacobians_survive_the_next_call():
    net, loss, X, rng = problem()
    _, first = alignment.output_jacobians(net, net.xp.asarray(X))
    other = net.xp.asarray(rng.standard_normal(X.shape))
    for J in first:
        unchanged(J, lambda: alignment.output_jacobians(net, other))


def test_curvature_products_survive_the_next_call():
    net, loss, X, rng = problem()
    for kind in ("hessian", "ggn", "residual"):
        for shape in ((net.num_params,), (net.num_params, 3)):
            V1, V2 = (net.xp.asarray(rng.standard_normal(shape)) for _ in range(2))
            first = loss.curvature_product(V1, kind)
            unchanged(first, lambda: loss.curvature_product(V2, kind))


def test_gradient_survives_the_next_call():
    net, loss, X, rng = problem()
    first = loss.gradient()
    unchanged(first, lambda: loss.gradient(theta=net.theta + 0.1))
