"""Bad input gets a clear error that names the problem, before any compute."""

import numpy as np
import pytest

import nn_eos as ne
from nn_eos import backend


@pytest.fixture
def net():
    return ne.mlp([4, 3, 3], activation="tanh", seed=0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((5, 4)), np.array([0, 1, 2, 0, 1])


def test_inputs_of_the_wrong_shape(net, data):
    X, y = data
    with pytest.raises(ValueError, match=r"X must have shape \(n, 4\), got \(5, 3\)"):
        ne.TrainingLoss(net, "cross_entropy", X[:, :3], y)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 4\), got \(4,\)"):
        ne.TrainingLoss(net, "cross_entropy", X[0], y)
    with pytest.raises(ValueError, match="no examples"):
        ne.TrainingLoss(net, "cross_entropy", X[:0], y[:0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(net, data, bad):
    X, y = data
    X = X.copy()
    X[2, 1] = bad
    with pytest.raises(ValueError, match=r"X contains 1 NaN or infinite"):
        ne.TrainingLoss(net, "cross_entropy", X, y)


def test_non_numeric_inputs(net):
    with pytest.raises(TypeError, match="X must hold real numbers"):
        ne.TrainingLoss(net, "cross_entropy", np.array([["a"] * 4]), np.array([0]))


def test_labels_out_of_range(net, data):
    X, _ = data
    with pytest.raises(ValueError, match=r"labels in \[0, 3\].*3 outputs"):
        ne.TrainingLoss(net, "mse", X, np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match=r"labels in \[-1, 2\]"):
        ne.TrainingLoss(net, "cross_entropy", X, np.array([0, 1, 2, -1, 0]))


def test_labels_not_integers_or_wrong_length(net, data):
    X, y = data
    with pytest.raises(TypeError, match="integer class labels, got dtype float64"):
        ne.TrainingLoss(net, "cross_entropy", X, y.astype(float))
    with pytest.raises(ValueError, match=r"y must have shape \(5,\)"):
        ne.TrainingLoss(net, "cross_entropy", X, y[:4])


def test_directions_of_the_wrong_shape_or_value(net, data):
    loss = ne.TrainingLoss(net, "cross_entropy", *data)
    P = net.num_params
    with pytest.raises(ValueError, match=rf"V must have shape \({P},\) or \({P}, k\), got \({P - 1},\)"):
        loss.hvp(np.ones(P - 1))
    with pytest.raises(ValueError, match="V must have shape"):
        loss.ggn(np.ones((P, 2, 1)))
    with pytest.raises(ValueError, match="V must have shape"):
        loss.ggn(np.ones((P, 0)))
    with pytest.raises(ValueError, match="V contains NaN"):
        loss.residual(np.full(P, np.nan))
    with pytest.raises(ValueError, match="unknown curvature kind 'hessain'"):
        loss.curvature_product(np.ones(P), "hessain")
    with pytest.raises(ValueError, match=rf"theta must have shape \({P},\)"):
        loss.value(theta=np.ones(P + 1))


def test_unknown_options():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        ne.mlp([2, 2], activation="swish")
    with pytest.raises(ValueError, match="unknown init 'orthogonal'"):
        ne.mlp([2, 2], init="orthogonal")
    with pytest.raises(ValueError, match="unsupported dtype"):
        ne.mlp([2, 2], dtype="float16")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ne.mlp([2, 2], device="tpu")
    with pytest.raises(ValueError, match="positive widths"):
        ne.mlp([2, 0, 2])
    with pytest.raises(ValueError, match="unknown criterion"):
        ne.TrainingLoss(ne.mlp([2, 2]), "hinge", np.zeros((1, 2)), np.array([0]))


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(net, data, chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ne.TrainingLoss(net, "cross_entropy", *data, chunk_size=chunk_size)


@pytest.mark.skipif(backend.gpu_available(), reason="CuPy is available here")
def test_gpu_without_cupy_says_how_to_install_it():
    with pytest.raises(RuntimeError, match=r"pip install -e \"\.\[gpu\]\""):
        ne.mlp([2, 2], device="gpu")
    with pytest.raises(RuntimeError, match="CuPy"):
        ne.mlp([2, 2], device="cpu").to("gpu")
