"""Conv2d, AvgPool2d and MaxPool2d: the four passes against central differences, and conv nets end to end."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nn_eos as ne
from checks import TOL, assert_close, central_difference
from nn_eos.conv import AvgPool2d, Conv2d, MaxPool2d
from nn_eos.layers import Cache
from nn_eos.backend import to_numpy
from checks import check_layer


@st.composite
def conv_cases(draw):
    C, F = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    H, W = draw(st.integers(kh, 6)), draw(st.integers(kw, 6))
    n = draw(st.integers(1, 3))
    return Conv2d(C, F, (kh, kw), (sh, sw), (ph, pw)), (n, C, H, W), draw(st.integers(0, 2**32 - 1))


@given(case=conv_cases())
def test_conv2d_passes(case):
    layer, shape, seed = case
    check_layer(layer, shape[1:], seed=seed, n=shape[0], k=2)


@given(kernel=st.integers(1, 3), stride=st.integers(1, 3), n=st.integers(1, 2), C=st.integers(1, 2),
       H=st.integers(3, 6), seed=st.integers(0, 2**32 - 1))
def test_avgpool_passes(kernel, stride, n, C, H, seed):
    check_layer(AvgPool2d(kernel, stride), (C, H, H), seed=seed, n=n, k=2)


@given(kernel=st.integers(2, 3), stride=st.integers(1, 3), padding=st.integers(0, 1), n=st.integers(1, 2),
       C=st.integers(1, 2), H=st.integers(3, 6), seed=st.integers(0, 2**32 - 1))
def test_maxpool_passes(kernel, stride, padding, n, C, H, seed):
    """Inputs drawn without near-ties, so the finite-difference steps never move an argmax, and of both signs,
    so that what the padding is filled with matters."""
    rng = np.random.default_rng(seed)
    size = n * C * H * H
    x = (rng.permutation(size) - size / 2).reshape(n, C, H, H) * 0.1     # distinct values 0.1 apart
    check_layer(MaxPool2d(kernel, stride, padding), inputs=x, seed=seed, k=2)


def direct_pool(x, kernel, stride, padding, reduce):
    """Each window's ``reduce`` over the entries of x it covers (padding covers none), by loops."""
    n, C, H, W = x.shape
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    Ho, Wo = (H + 2 * ph - kernel) // stride + 1, (W + 2 * pw - kernel) // stride + 1
    y = np.empty((n, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            r0, c0 = i * stride - ph, j * stride - pw
            window = x[:, :, max(r0, 0):r0 + kernel, max(c0, 0):c0 + kernel]
            y[:, :, i, j] = reduce(window, axis=(-2, -1))
    return y


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 1, 1), (2, 1, 1), (3, 2, 1), (2, 1, (1, 0)),
                                                     (2, 1, (0, 1))])
def test_maxpool_forward_is_the_maximum_of_the_entries_each_window_covers(kernel, stride, padding, sign):
    """Against loops, on inputs of one sign: with all entries negative, a padded window's maximum must still be
    an entry of x, whatever the padding is filled with."""
    x = sign * (np.random.default_rng(kernel).random((2, 3, 5, 6)) + 0.5)
    y = MaxPool2d(kernel, stride, padding).forward(x, Cache())
    np.testing.assert_array_equal(y, direct_pool(x, kernel, stride, padding, np.max))


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1), (2, 1)])
def test_avgpool_forward_is_the_mean_of_each_window(kernel, stride):
    x = np.random.default_rng(kernel).standard_normal((2, 3, 5, 6))
    y = AvgPool2d(kernel, stride).forward(x, Cache())
    np.testing.assert_allclose(y, direct_pool(x, kernel, stride, 0, np.mean), rtol=1e-14, atol=0)


def test_conv2d_matches_a_direct_convolution():
    rng = np.random.default_rng(0)
    layer = Conv2d(2, 3, 3, stride=2, padding=1)
    params = rng.standard_normal(layer.num_params)
    layer.bind(params)
    x = rng.standard_normal((2, 2, 5, 5))
    y = layer.forward(x, Cache())
    W, b = params[:54].reshape(3, 2, 3, 3), params[54:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    direct = np.empty((2, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            direct[:, :, i, j] = np.einsum("ncij,fcij->nf", patch, W) + b
    np.testing.assert_allclose(y, direct, rtol=1e-12)


def conv_net(seed=0, activation="tanh", pool=AvgPool2d):
    layers = [Conv2d(2, 3, 3, padding=1), ne.Tanh() if activation == "tanh" else ne.ELU(), pool(2),
              ne.Flatten(), ne.Dense(3 * 3 * 3, 4)]
    net = ne.Sequential(layers, (2, 6, 6))
    net.set_theta(np.random.default_rng(seed).standard_normal(net.num_params) * 0.5)
    return net


@pytest.mark.parametrize("pool", [AvgPool2d, MaxPool2d])
def test_conv_net_curvature(pool):
    rng = np.random.default_rng(1)
    net = conv_net(pool=pool)
    X, y = rng.standard_normal((5, 2, 6, 6)), rng.integers(0, 4, 5)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    theta = to_numpy(net.theta).copy()
    v = rng.standard_normal(net.num_params)
    v /= np.linalg.norm(v)
    assert_close(to_numpy(loss.gradient()) @ v, central_difference(loss.value, theta, v), TOL["fd"], "gradient")
    assert_close(loss.hvp(v), central_difference(loss.gradient, theta, v), TOL["fd"], "hvp")
    V = rng.standard_normal((net.num_params, 3))
    assert_close(loss.hvp(V), np.stack([to_numpy(loss.hvp(V[:, j])) for j in range(3)], 1), TOL["exact"], "block")
    assert_close(to_numpy(loss.ggn(V)) + to_numpy(loss.residual(V)), loss.hvp(V), TOL["exact"], "G + H")
    chunked = ne.TrainingLoss(net, "cross_entropy", X, y, chunk_size=2)
    assert_close(chunked.hvp(V), loss.hvp(V), TOL["exact"], "chunked")


@pytest.mark.parametrize("pool", [AvgPool2d, MaxPool2d])
def test_a_float32_conv_net_stays_in_float32(pool):
    """Every pass of a float32 net returns float32 (a float64 intermediate, such as max-pooling's one-hot
    scatter, would promote the products and double their memory)."""
    rng = np.random.default_rng(2)
    net = conv_net(pool=pool).astype("float32")
    X, y = rng.standard_normal((3, 2, 6, 6)), rng.integers(0, 4, 3)
    V = net.xp.asarray(rng.standard_normal((net.num_params, 2)).astype(np.float32))
    for criterion in ("cross_entropy", "mse"):
        loss = ne.TrainingLoss(net, criterion, X, y)
        for name, result in [("gradient", loss.gradient()), ("hvp", loss.hvp(V)), ("ggn", loss.ggn(V)),
                             ("residual", loss.residual(V)), ("third", loss.third(V[:, 0]))]:
            assert result.dtype == np.float32, (criterion, name)


def test_conv_shape_errors():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(n, 3, H, W\)"):
        ne.Sequential([Conv2d(3, 2, 3)], (2, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        ne.Sequential([Conv2d(1, 2, 5), ne.Flatten()], (1, 3, 3))
    with pytest.raises(ValueError, match="kernel must be"):
        Conv2d(1, 1, -1)


@pytest.mark.parametrize("build", ["alexnet", "vgg11", "vgg16"])
def test_builders_give_trainable_nets_with_exact_curvature(build):
    rng = np.random.default_rng(3)
    if build == "alexnet":
        net = ne.alexnet_like(in_shape=(3, 8, 8), n_classes=4, width=1 / 16, activation="tanh", seed=1)
        X = rng.standard_normal((4, 3, 8, 8))
    else:
        net = ne.vgg_like(n_classes=4, depth=int(build[3:]), width=1 / 64, activation="tanh", seed=1)
        X = rng.standard_normal((3, 3, 32, 32))
    y = rng.integers(0, 4, len(X))
    assert net(X).shape == (len(X), 4) and net.spec["kind"] in ("alexnet", "vgg")
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    theta, v = to_numpy(net.theta).copy(), rng.standard_normal(net.num_params)
    v /= np.linalg.norm(v)
    assert_close(loss.hvp(v), central_difference(loss.gradient, theta, v), TOL["fd"], f"{build} hvp")


def test_builders_give_the_documented_architectures():
    """Against the published counts: CIFAR AlexNet 1,756,426 parameters (conv 5×5 64-64, dense 384-192-10);
    VGG-16 and VGG-11 without normalisation: their convolutional features (ImageNet VGG's 14,714,688 and
    9,220,480 parameters), then dense 512 → 10."""
    net = ne.alexnet_like()
    assert [repr(layer) for layer in net.layers] == [
        "Conv2d(3, 64, kernel=(5, 5), stride=(1, 1), padding=(2, 2))", "ReLU()",
        "MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0))",
        "Conv2d(64, 64, kernel=(5, 5), stride=(1, 1), padding=(2, 2))", "ReLU()",
        "MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0))", "Flatten()",
        "Dense(4096, 384)", "ReLU()", "Dense(384, 192)", "ReLU()", "Dense(192, 10)"]
    assert net.num_params == 1_756_426
    assert net.spec == {"kind": "alexnet", "in_shape": [3, 32, 32], "n_classes": 10, "width": 1.0,
                        "activation": "relu", "init": "kaiming", "gain": np.sqrt(2), "seed": 0}
    assert ne.vgg_like(dtype="float32").num_params == 14_714_688 + 512 * 512 + 512 + 512 * 10 + 10
    vgg11 = ne.vgg_like(depth=11, n_classes=4, dtype="float32")
    assert vgg11.num_params == 9_220_480 + 512 * 512 + 512 + 512 * 4 + 4
    convs = [repr(layer) for layer in vgg11.layers if isinstance(layer, Conv2d)]
    assert convs[0] == "Conv2d(3, 64, kernel=(3, 3), stride=(1, 1), padding=(1, 1))" and len(convs) == 8
    assert sum(isinstance(layer, MaxPool2d) for layer in vgg11.layers) == 5
    assert vgg11.spec == {"kind": "vgg", "depth": 11, "in_shape": [3, 32, 32], "n_classes": 4, "width": 1.0,
                          "activation": "relu", "init": "kaiming", "gain": np.sqrt(2), "seed": 0}


def test_builders_scale_width_and_take_other_image_sizes():
    net = ne.alexnet_like(in_shape=(1, 16, 24), n_classes=3, width=0.25)      # 16 channels, 96 and 48 units
    assert [repr(layer) for layer in net.layers if not isinstance(layer, (MaxPool2d, ne.Flatten))][::2] == [
        "Conv2d(1, 16, kernel=(5, 5), stride=(1, 1), padding=(2, 2))",
        "Conv2d(16, 16, kernel=(5, 5), stride=(1, 1), padding=(2, 2))",
        "Dense(384, 96)", "Dense(96, 48)", "Dense(48, 3)"]                    # 16 · (16/4) · (24/4) = 384
    tiny = ne.alexnet_like(in_shape=(2, 4, 4), n_classes=2, width=1e-3)       # every count at least 1
    assert tiny.num_params == (2 * 25 + 1) + (25 + 1) + (1 + 1) + (1 + 1) + (2 * 1 + 2)
    tiny_vgg = ne.vgg_like(n_classes=2, width=1e-3)
    assert repr(tiny_vgg.layers[-3]) == "Dense(1, 1)"                        # 512 · 1e-3 rounds to 0: at least 1
    for build in (ne.alexnet_like, ne.vgg_like):                              # the settings reach the network
        net = build(width=1 / 32, dtype="float32", gain=3.0, seed=4)
        assert net.dtype == np.float32 and net.spec["gain"] == 3.0 and net.spec["seed"] == 4
        assert net.device == ne.backend.default_device()
        on_cpu = build(width=1 / 32, device="cpu")
        assert on_cpu.device == "cpu" and isinstance(on_cpu.theta, np.ndarray)
    vgg = ne.vgg_like(n_classes=2, width=1 / 64, activation="tanh")
    assert [layer.F for layer in vgg.layers if isinstance(layer, Conv2d)] == [1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 8]
    assert repr(vgg.layers[-3]) == "Dense(8, 8)" and repr(vgg.layers[-2]) == "Tanh()"


def test_every_window_setting_and_channel_count_is_checked_by_name():
    for kernel in [(0, 3), (3, 0)]:
        with pytest.raises(ValueError, match="kernel and stride must be positive"):
            Conv2d(1, 1, kernel)
    for stride in [(0, 1), (1, 0)]:
        with pytest.raises(ValueError, match="kernel and stride must be positive"):
            MaxPool2d(2, stride)
    with pytest.raises(ValueError, match="^stride must be a non-negative integer"):
        Conv2d(1, 1, 3, stride=1.5)
    with pytest.raises(ValueError, match="^padding must be a non-negative integer"):
        Conv2d(1, 1, 3, padding=-1)
    for channels in [(0, 2), (2, 0)]:
        with pytest.raises(ValueError, match="Conv2d needs positive channel counts"):
            Conv2d(*channels, 3)
    for shape in [(1, 2, 5), (1, 5, 2)]:                        # the window fits one side only
        with pytest.raises(ValueError, match="does not fit"):
            ne.Sequential([Conv2d(1, 1, 3), ne.Flatten()], shape)


def test_builder_arguments():
    with pytest.raises(ValueError, match="depth must be one of"):
        ne.vgg_like(depth=13)
    with pytest.raises(ValueError, match="32×32"):
        ne.vgg_like(in_shape=(3, 28, 28))
    for shape in [(3, 30, 32), (3, 32, 30), (3, 30, 30), (32, 32), (1, 3, 32, 32)]:
        with pytest.raises(ValueError, match="^alexnet_like takes .* multiples of 4"):
            ne.alexnet_like(in_shape=shape)


def test_tiny_conv_net_products_match_dense_matrices():
    from test_curvature import dense_ggn, dense_hessian

    rng = np.random.default_rng(7)
    net = ne.Sequential([Conv2d(1, 2, 2), ne.Tanh(), AvgPool2d(2, 1), ne.Flatten(), ne.Dense(2 * 2 * 2, 3)], (1, 4, 4))
    net.set_theta(rng.standard_normal(net.num_params) * 0.5)
    X, y = rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    theta, identity = to_numpy(net.theta).copy(), np.eye(net.num_params)
    H_full, G = dense_hessian(loss, theta), dense_ggn(loss, theta)
    assert_close(loss.hvp(identity), H_full, TOL["fd"], "∇²L̃ against the dense Hessian")
    assert_close(loss.ggn(identity), G, TOL["fd"], "G against Jᵀ H_z J")
    assert np.linalg.eigvalsh((G + G.T) / 2).min() > -1e-10
