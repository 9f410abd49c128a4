"""The same numbers on CuPy as on NumPy (skipped without a working CuPy).

The rest of the suite runs on the GPU as a whole with NN_EOS_DEVICE=gpu; this
file compares the two devices side by side, against a reference built explicitly
on the CPU whatever NN_EOS_DEVICE says.
"""

import numpy as np
import pytest

import nn_eos as ne
from checks import TOL, assert_close, build_problem
from nn_eos import backend
from nn_eos.activations import ACTIVATIONS

pytestmark = pytest.mark.skipif(not backend.gpu_available(), reason="CuPy with a CUDA device is not available")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("criterion", ["cross_entropy", "mse"])
def test_gpu_matches_cpu(activation, criterion):
    p = build_problem([6, 5, 5, 3], activation, criterion, n=7, seed=4, device="cpu")
    assert backend.device_of(p.loss.gradient()) == "cpu"
    net_gpu = ne.mlp([6, 5, 5, 3], activation=activation, device="gpu")
    net_gpu.set_theta(p.theta)
    loss_gpu = ne.TrainingLoss(net_gpu, criterion, p.X, p.y, chunk_size=3)
    V = p.direction(3)
    assert backend.device_of(loss_gpu.gradient()) == "gpu"
    assert loss_gpu.value() == pytest.approx(p.loss.value(), rel=TOL["exact"])
    assert_close(loss_gpu.gradient(), p.loss.gradient(), TOL["exact"], "gradient")
    for kind in ("hessian", "ggn", "residual"):
        assert_close(loss_gpu.curvature_product(V, kind), p.loss.curvature_product(V, kind), TOL["exact"], kind)


def test_network_moves_between_devices():
    net = ne.mlp([3, 4, 2], seed=1, device="cpu")
    X = np.random.default_rng(0).standard_normal((5, 3))
    z_cpu = net(X)
    net.to("gpu")
    assert backend.device_of(net.theta) == "gpu"
    assert_close(net(X), z_cpu, TOL["exact"], "outputs after net.to('gpu')")
    net.to("cpu")
    assert backend.device_of(net.theta) == "cpu"
