"""Bad input gets a clear error that names the problem, before any compute."""

import os

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
    with pytest.raises(ValueError, match="mlp width 1 must be a positive integer, got 0"):
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


# ----- found on a tiny net (each failed before: accepted, wrong, or deep inside NumPy) -----------------------

def test_a_theta_with_nan_or_inf_is_refused_at_the_door(net, data):
    X, y = data
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    bad = backend.to_numpy(net.theta).copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="theta contains NaN or infinite values"):
        net.set_theta(bad)
    with pytest.raises(ValueError, match="theta contains NaN or infinite values"):
        loss.hvp(np.ones(net.num_params), theta=bad)
    with pytest.raises(ValueError, match="theta contains NaN or infinite values"):
        loss.value(theta=np.where(np.isnan(bad), np.inf, bad))
    with pytest.raises(ValueError, match="theta contains NaN or infinite values"):
        ne.Sequential(net.layers, (4,), theta=bad)
    assert np.isfinite(backend.to_numpy(net.theta)).all()


def test_a_run_whose_theta_stops_being_finite_ends_as_diverged_at_its_last_finite_theta(net, data):
    X, y = data
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)

    class Overflow(ne.GradientDescent):
        """Gradient descent whose third step overflows."""
        calls = 0

        def step(self, loss, theta, gradient):
            self.calls += 1
            new, dt, info = super().step(loss, theta, gradient)
            return (new * np.inf if self.calls == 3 else new), dt, info

    run = ne.train(loss, Overflow(0.1), max_steps=10, progress=False)
    assert run.status == "diverged" and "no longer finite" in run.message and run.steps == 2
    assert np.isfinite(backend.to_numpy(net.theta)).all()


def test_widths_must_be_whole_numbers():
    with pytest.raises(ValueError, match=r"mlp width 1 must be a positive integer, got 3.7"):
        ne.mlp([4, 3.7, 3])


def test_step_sizes_and_targets_must_be_finite_and_positive(net, data):
    for bad in (np.inf, np.nan, 0, -0.1, True):
        with pytest.raises(ValueError, match="lr must be a finite positive number"):
            ne.GradientDescent(bad)
    with pytest.raises(ValueError, match="lr_max must be a finite positive number"):
        ne.ExponentialEuler(lr_max=np.inf)
    with pytest.raises(ValueError, match="safety must be a finite positive number"):
        ne.AdaptiveGradientFlow(safety=-1)
    loss = ne.TrainingLoss(net, "cross_entropy", *data)
    with pytest.raises(ValueError, match=r"until_loss must be a finite loss ≥ 0, got -1"):
        ne.train(loss, ne.GradientDescent(0.1), until_loss=-1, max_steps=1, progress=False)


def test_a_step_refuses_a_theta_and_gradient_of_different_shapes(net):
    theta = backend.to_numpy(net.theta)
    with pytest.raises(ValueError, match=r"theta and the gradient must have the same shape, got \(28,\) and \(27,\)"):
        ne.GradientDescent(0.1).step(None, np.append(theta, 0.0), theta)


def test_a_network_called_on_one_example_without_its_batch_axis_says_so(net):
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\), got \(4,\)"):
        net(np.ones(4))
    assert net(np.ones((1, 4))).shape == (1, 3)


def test_empty_data_is_refused(tmp_path):
    np.savez(tmp_path / "empty.npz", X=np.zeros((0, 3)), y=np.zeros(0))
    with pytest.raises(ValueError, match=r"empty.npz: holds no examples"):
        ne.datasets.load_arrays(str(tmp_path / "empty.npz"))
    with pytest.raises(ValueError, match="standardize needs a training set of at least two examples"):
        ne.datasets.standardize(np.zeros((0, 3)))


def test_a_damaged_run_directory_names_the_file_and_what_to_do(net, data, tmp_path):
    X, y = data
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    run_dir = str(tmp_path / "run")
    ne.train(loss, ne.GradientDescent(0.1), max_steps=4, snapshot_every=2, run_dir=run_dir, progress=False)
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])                       # cut short
    with pytest.warns(RuntimeWarning, match=r"checkpoint.npz is damaged \(BadZipFile.*resuming from the θ snapshot "
                                            r"of step 4"):
        run = ne.train(loss, ne.GradientDescent(0.1), max_steps=6, run_dir=run_dir, resume=True, progress=False)
    assert run.steps == 6 and len(ne.load_run(run_dir)[1]["step"]) == 6
    for name in os.listdir(tmp_path / "run" / "snapshots"):
        os.remove(tmp_path / "run" / "snapshots" / name)
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint.npz is damaged.*no θ snapshot is left to resume from"):
        ne.train(loss, ne.GradientDescent(0.1), max_steps=8, run_dir=run_dir, resume=True, progress=False)
    (tmp_path / "run" / "config.json").write_text('{"integrator": ')           # edited into invalid JSON
    for read in (lambda: ne.load_run(run_dir),
                 lambda: ne.train(loss, ne.GradientDescent(0.1), max_steps=6, run_dir=run_dir, resume=True,
                                  progress=False)):
        with pytest.raises(ValueError, match=r"config.json is damaged"):
            read()


def test_a_criterion_called_directly_refuses_labels_out_of_range():
    z = np.zeros((2, 3))
    for criterion in (ne.CrossEntropy(), ne.MSE()):
        for method in (criterion.value, criterion.gradient):
            with pytest.raises(ValueError, match=r"labels in \[0, 3\], but the network has 3 outputs"):
                method(z, np.array([0, 3]))
            with pytest.raises(ValueError, match=r"labels in \[-1, 0\]"):
                method(z, np.array([-1, 0]))
