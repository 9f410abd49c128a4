"""The CuPy-like stand-in (device 'strict') refuses host/device mixing, and the GPU bugs it was built to catch stay fixed.

Each regression test runs on the stand-in explicitly, whatever NN_EOS_DEVICE says,
so that CI exercises the device path of the code on every run.
"""

import numpy as np
import pytest
import scipy.linalg

import nn_eos as ne
from nn_eos import alignment, eos
from nn_eos.backend import device_of, to_numpy
from nn_eos.strict import StrictArray, counting, strict


def test_the_stand_in_refuses_what_cupy_refuses():
    a = strict.ones((3, 3))
    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="NumPy function sum"):
        np.sum(a)
    with pytest.raises(TypeError, match="NumPy array"):
        a + np.ones((3, 3))
    with pytest.raises(TypeError, match="NumPy array"):
        np.ones((3, 3)) @ a
    with pytest.raises(TypeError, match="NumPy array"):
        strict.matmul(a, np.ones((3, 3)))
    with pytest.raises(TypeError):
        scipy.linalg.eigh(a)
    with pytest.raises(TypeError, match="missing required argument 'axis'"):
        strict.take_along_axis(a, strict.zeros((3, 1), dtype=int))     # NumPy ≥ 2.3 defaults axis to -1
    # what a device array may do
    assert isinstance(a @ a + 2.0 * a - np.float64(1), StrictArray)
    assert isinstance(strict.asarray(np.ones(3)), StrictArray)          # host → device
    np.testing.assert_array_equal(a.get(), np.ones((3, 3)))            # device → host
    assert float(strict.linalg.norm(a)) == pytest.approx(3.0)


def small_problem():
    rng = np.random.default_rng(0)
    net = ne.mlp([4, 6, 3], activation="tanh", seed=0, device="strict")
    X, y = rng.standard_normal((9, 4)), np.arange(9) % 3
    return net, ne.TrainingLoss(net, "cross_entropy", X, y), X, y


@pytest.mark.parametrize("method", ["krylov", "power", "lanczos", "lobpcg"])
def test_eigensolvers_take_the_module_of_a_device_linear_operator(method):
    """Was: the module came from V0 or operator.__self__.net, so a device LinearOperator got NumPy (TypeError)."""
    net, loss, X, y = small_problem()
    result = ne.top_eigenpairs(loss.linear_operator("ggn"), 2, method=method, tol=1e-8)
    assert device_of(result.vectors) == "strict"
    host = ne.mlp([4, 6, 3], activation="tanh", seed=0, device="cpu")
    reference = ne.top_eigenpairs(ne.TrainingLoss(host, "cross_entropy", X, y).linear_operator("ggn"), 2,
                                  method="lanczos", tol=1e-10)
    np.testing.assert_allclose(to_numpy(result.values), reference.values, rtol=1e-6)


def test_a_host_start_moves_to_the_operators_device():
    net, loss, X, y = small_problem()
    V0 = np.random.default_rng(1).standard_normal((net.num_params, 2))
    result = ne.top_eigenpairs(loss.hvp, 2, method="krylov", V0=V0, tol=1e-8)
    assert device_of(result.vectors) == "strict"


def test_an_operator_answering_on_the_wrong_device_is_a_clear_error():
    net, loss, X, y = small_problem()
    with pytest.raises(TypeError, match="the operator returned a numpy.ndarray"):
        ne.top_eigenpairs(ne.eigen.BlockOperator(lambda V: to_numpy(loss.hvp(V)), like=net.theta), 1)


def test_analyze_runs_on_the_device():
    """Was: every alignment.analyze with sharpness failed on the GPU (the bug above)."""
    net, loss, X, y = small_problem()
    report = alignment.analyze(net, "cross_entropy", X, y)
    host = ne.mlp([4, 6, 3], activation="tanh", seed=0, device="cpu")
    expected = alignment.analyze(host, "cross_entropy", X, y)
    assert report.sharpness["hessian"] == pytest.approx(expected.sharpness["hessian"], rel=1e-6)
    assert report.overlap_ratio == pytest.approx(expected.overlap_ratio, rel=1e-6)


def test_loss_along_takes_a_host_direction():
    """Was: eos.loss_along added a host direction to a device θ."""
    net, loss, X, y = small_problem()
    u = np.random.default_rng(2).standard_normal(net.num_params)
    values = eos.loss_along(loss, u, [-0.1, 0.0, 0.1])
    assert values[1] == pytest.approx(loss.value())


def test_the_stand_in_counts_device_operations_host_reads_and_uploads():
    a = strict.ones((3, 3))
    with counting() as counts:
        b = a @ a + 1                      # two operations
        total = float(b.sum())             # a reduction (a 0-d device array, as in CuPy), then a host read
        strict.asarray(np.ones(3))         # an upload
    assert isinstance(b.sum(), StrictArray) and total == 36.0
    assert counts == {"operations": 4, "host_reads": 1, "uploads": 1, "promotions": 0}


def test_a_warm_product_reads_nothing_back_and_block_krylov_a_few_numbers_per_iteration():
    """On a GPU every host read waits for the device: a warm operator product needs none, and block Krylov keeps
    its small algebra on the host with a few reads per iteration (the basis borders, SVQB's Gram, the product's
    finiteness), not one per direction or per Ritz pair."""
    net = ne.mlp([12, 16, 16, 3], activation="elu", seed=0, device="strict")
    rng = np.random.default_rng(0)
    loss = ne.TrainingLoss(net, "cross_entropy", rng.standard_normal((40, 12)), np.arange(40) % 3)
    A = loss.operator("hessian")
    V = net.xp.asarray(rng.standard_normal((net.num_params, 4)))
    A.matmat(V)
    with counting() as counts:
        A.matmat(V)
    assert counts["host_reads"] == 0 and counts["uploads"] == 0
    for k, block in ((3, 1), (6, 4)):
        with counting() as counts:
            result = ne.top_eigenpairs(loss.operator("hessian"), k, method="krylov", which="LA", tol=1e-8,
                                       block=block)
        assert result.converged
        assert counts["host_reads"] <= 4 * result.iterations + 10, (k, block, dict(counts), result.iterations)
        assert counts["uploads"] <= 4 * result.iterations + 10, (k, block, dict(counts), result.iterations)


@pytest.mark.parametrize("rows", [1, 255, 256, 1000, 4099])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("columns", [0, 1, 8])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_column_norms_on_a_device_sum_in_pieces_and_match_the_host(rows, order, columns, dtype):
    from nn_eos.eigen.ritz import column_norms
    M = np.asarray(np.random.default_rng(rows).standard_normal((rows, columns)), order=order, dtype=dtype)
    rtol = 1e-13 if dtype == "float64" else 1e-5
    device = column_norms(strict.asarray(M), strict)
    assert isinstance(device, StrictArray) and device.shape == (columns,) and device.dtype == M.dtype
    np.testing.assert_allclose(to_numpy(device), np.linalg.norm(M, axis=0), rtol=rtol)
    np.testing.assert_allclose(column_norms(M, np), np.linalg.norm(M, axis=0), rtol=rtol)


def test_a_batched_lanczos_step_costs_at_most_17_device_operations_with_a_product_of_3():
    """Each step of the layerwise norms' batched Lanczos is a handful of kernel launches on a GPU (launch-bound
    there): the per-example rows are taken again only when examples leave, and both Gram–Schmidt passes are two
    batched products each. Counted between d = 32 and d = 64 steps with no convergence test in between."""
    from nn_eos.eigen import batched_lanczos

    rng = np.random.default_rng(0)
    operations = {}
    original = batched_lanczos._is_check_step
    batched_lanczos._is_check_step = lambda m, d: False
    try:
        for d in (32, 64):
            C = strict.asarray(rng.standard_normal((d, d)))
            s = strict.asarray(rng.random((50, d)))
            with counting() as counts:
                batched_lanczos.batched_top_eigenvalue(lambda v, s_rows: ((v * s_rows) @ C) * s_rows, 50, d,
                                                       strict, np.float64, per_example=(s,))
            operations[d] = counts["operations"]
    finally:
        batched_lanczos._is_check_step = original
    assert (operations[64] - operations[32]) / 32 <= 17                 # 23 when each step gathered its rows


def test_a_network_moved_to_the_stand_in_and_cast_keeps_its_theta_and_its_layers_bound():
    net = ne.mlp([3, 4, 2], activation="tanh", seed=1, device="cpu")
    X = np.random.default_rng(0).standard_normal((5, 3))
    z, theta = net(X), net.theta.copy()
    assert repr(net) == "Sequential([Dense(3, 4), Tanh(), Dense(4, 2)], P=26, float64, cpu)"
    assert net.to("strict") is net and net.device == "strict" and device_of(net.theta) == "strict"
    np.testing.assert_array_equal(to_numpy(net.theta), theta)
    np.testing.assert_array_equal(to_numpy(net(X)), z)                 # the layers read the moved θ
    assert net.astype("float32") is net and net.theta.dtype == np.float32 and net.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(net.theta), theta.astype(np.float32))
    assert net(X).dtype == np.float32 and np.allclose(to_numpy(net(X)), z, rtol=1e-5)
    net.theta[:] = 0.0                                                 # the layers are views of θ
    assert not np.any(to_numpy(net(X)))
    net.to("cpu")
    assert net.device == "cpu" and isinstance(net.theta, np.ndarray) and net.theta.dtype == np.float32


@pytest.mark.parametrize("name", sorted(ne.activations.ACTIVATIONS))
def test_every_stated_derivative_of_an_activation_runs_on_the_device(name):
    """σ, σ', σ'' and σ''' of a device array are device arrays equal to the host's (including the ones the passes
    skip, such as ReLU's σ'' = 0, which the checker and a user's own code call)."""
    activation = ne.activations.activation(name)
    x = np.linspace(-2.0, 2.0, 9) + 0.05                      # away from the kink at 0
    stated = ["sigma", "slope", "curvature"]
    if type(activation).third_derivative is not ne.activations.Activation.third_derivative:
        stated.append("third_derivative")
    for function in stated:
        on_device = getattr(activation, function)(strict.asarray(x))
        assert device_of(on_device) == "strict", function
        np.testing.assert_array_equal(to_numpy(on_device), getattr(activation, function)(x))


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("criterion", ["cross_entropy", "mse"])
def test_a_float32_network_computes_in_float32_throughout(pool, criterion):
    """No pass of a float32 net meets a float64 array on the device (the results, written into float32 buffers,
    would hide it): gradient, the three curvature products and third derivatives, on a conv net with pooling."""
    from nn_eos.conv import AvgPool2d, Conv2d, MaxPool2d
    layers = [Conv2d(2, 3, 3, padding=1), ne.ELU(), (MaxPool2d if pool == "max" else AvgPool2d)(2, padding=(1, 0)),
              ne.Flatten(), ne.Dense(3 * 4 * 3, 5), ne.Tanh(), ne.Dense(5, 3)]
    net = ne.Sequential(layers, (2, 6, 6), dtype="float32", device="strict")
    rng = np.random.default_rng(0)
    loss = ne.TrainingLoss(net, criterion, rng.standard_normal((4, 2, 6, 6)), rng.integers(0, 3, 4))
    V = strict.asarray(rng.standard_normal((net.num_params, 2)).astype(np.float32))
    with counting() as counts:
        results = [loss.gradient(), loss.hvp(V), loss.ggn(V), loss.residual(V), loss.third(V[:, 0], V[:, 1])]
    assert all(r.dtype == np.float32 for r in results)
    assert counts["promotions"] == 0


def test_an_operators_products_never_read_the_device_back():
    """An eigensolver's products at a fixed θ neither scan their directions for NaN (a sync per product) nor read
    anything else back: the operator of any kind (∇²L̃ by default) makes no host read once its θ's passes exist."""
    net = ne.mlp([3, 5, 2], activation="tanh", seed=0, device="strict")
    rng = np.random.default_rng(0)
    loss = ne.TrainingLoss(net, "cross_entropy", rng.standard_normal((6, 3)), rng.integers(0, 2, 6))
    V = strict.asarray(rng.standard_normal((net.num_params, 2)))
    for kind in ("hessian", "ggn", "residual"):
        op = loss.operator(kind)
        op.matmat(V)                                              # the passes at θ, once
        with counting() as counts:
            op.matmat(V)
        assert counts["host_reads"] == 0, kind
    np.testing.assert_array_equal(to_numpy(loss.operator().matmat(V)), to_numpy(loss.hvp(V)))


def test_the_stand_ins_linear_operator_is_as_strict_as_cupyxs():
    """As cupyx's LinearOperator: without matmat a block goes column by column through matvec (one call per
    column), and without rmatvec there is no adjoint — nothing assumes the operator symmetric."""
    from nn_eos.strict import sparse_linalg
    M = strict.asarray(np.arange(12.0).reshape(4, 3))
    calls = []
    op = sparse_linalg().LinearOperator((4, 3), matvec=lambda v: calls.append(v.shape) or M @ v, dtype=np.float64)
    V = strict.asarray(np.eye(3)[:, :2])
    np.testing.assert_array_equal(to_numpy(op.matmat(V)), np.arange(12.0).reshape(4, 3)[:, :2])
    assert calls == [(3, 1), (3, 1)]
    for adjoint in (op.rmatvec, op.rmatmat):
        with pytest.raises(NotImplementedError, match="is not defined"):
            adjoint(strict.asarray(np.ones((4, 1))))
