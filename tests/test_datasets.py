"""Datasets: the dice generator's geometry and splits, the loaders on tiny files in each real format."""

import pickle

import numpy as np
import pytest

import nn_eos as ne
from nn_eos.experiments import plots
from nn_eos import datasets
from nn_eos.backend import to_numpy
from nn_eos.dice import PIXEL, coverage, disc_distance, segment_distance


# ----- dice ------------------------------------------------------------------

def test_dice_shapes_range_and_balance():
    X, y = datasets.dice("train", n=600)
    assert X.shape == (600, 1024) and X.dtype == np.float64 and y.dtype.kind == "i"
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert np.array_equal(np.bincount(y), [100] * 6)
    assert np.all(X.max(axis=1) > 0.05), "every image has some ink"


def test_dice_is_deterministic_and_prefix_stable():
    X1, y1 = datasets.dice("test", n=60)
    X2, y2 = datasets.dice("test", n=600)
    np.testing.assert_array_equal(X1, X2[:60])
    np.testing.assert_array_equal(y1, y2[:60])
    X3, _ = datasets.dice("test", n=60, seed=1)
    assert not np.array_equal(X1, X3)


def test_dice_train_and_test_are_disjoint():
    Xa, _ = datasets.dice("train", n=3000)
    Xb, _ = datasets.dice("test", n=3000)
    rows = {row.tobytes() for row in Xa}
    assert not any(row.tobytes() in rows for row in Xb)


def test_full_dice_splits_have_60000_images():
    X, y = datasets.dice("train")
    assert X.shape == (60000, 1024) and np.array_equal(np.bincount(y), [10000] * 6)


def test_dice_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        datasets.dice("val")
    with pytest.raises(ValueError, match=r"n must be an integer in 1..60000"):
        datasets.dice("train", n=60001)


def test_disc_ink_is_its_area():
    """Anti-aliasing by signed distance keeps the ink of a disc equal to its area (in pixels)."""
    for r in (0.1, 0.2, 0.3):
        ink = coverage(disc_distance(np.zeros(1), np.zeros(1), np.array([r]))).sum()
        assert ink == pytest.approx(np.pi * r ** 2 / PIXEL ** 2, rel=0.02)


def test_line_ends_add_the_expected_ink():
    """butt: length·width; square: + width²; round: + π h² (h the half-width)."""
    a, b, h = np.array([-0.5]), np.array([0.5]), np.array([0.06])
    zero = np.zeros(1)
    ink = {t: coverage(segment_distance(a, zero, b, zero, h, np.array([t]))).sum() * PIXEL ** 2 for t in (0, 1, 2)}
    assert ink[1] == pytest.approx(1.0 * 0.12, rel=0.03)
    assert ink[2] == pytest.approx(1.0 * 0.12 + 0.12 ** 2, rel=0.03)
    assert ink[0] == pytest.approx(1.0 * 0.12 + np.pi * 0.06 ** 2, rel=0.03)


def train_classifier(X, y, hidden, steps, lr=0.05, seed=0):
    net = ne.mlp([X.shape[1], hidden, 6], activation="relu", init="kaiming", seed=seed)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    momentum = net.xp.zeros(net.num_params)
    for _ in range(steps):
        momentum = 0.9 * momentum + loss.gradient()
        net.set_theta(net.theta - lr * momentum)
    return net


def accuracy(net, X, y):
    return float((np.argmax(to_numpy(net(X)), axis=1) == y).mean())


def test_dice_classes_are_learnable_from_shape_not_ink():
    """An MLP on the pixels beats, by far, a classifier that sees only the total ink."""
    X, y = datasets.dice("train", n=3000)
    Xt, yt = datasets.dice("test", n=1200)
    X, Xt, _ = datasets.standardize(X, Xt)
    pixels = accuracy(train_classifier(X, y, hidden=64, steps=150), Xt, yt)
    ink = lambda Z: np.hstack([Z.sum(1, keepdims=True), Z.sum(1, keepdims=True) ** 2])
    I, It, _ = datasets.standardize(ink(datasets.dice("train", n=3000)[0]), ink(datasets.dice("test", n=1200)[0]))
    ink_only = accuracy(train_classifier(I, y, hidden=32, steps=300), It, yt)
    assert pixels > 0.75 and ink_only < 0.5 and pixels - ink_only > 0.3, (pixels, ink_only)


def test_dice_figure(tmp_path):
    X, y = datasets.dice("train", n=36)
    path = tmp_path / "dice.png"
    plots.dice_examples(X, y, path=path)
    assert path.stat().st_size > 1000


# ----- CIFAR-10 ---------------------------------------------------------------

def write_cifar(folder, per_batch=4):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, size=per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_load_cifar10(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    X, y = datasets.load_cifar10(folder, "train")
    assert X.shape == (20, 3, 32, 32) and y.shape == (20,) and 0 <= X.min() and X.max() <= 1
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(X[:4].reshape(4, -1), first[b"data"] / 255.0)
    Xt, yt = datasets.load_cifar10(str(folder), "test")
    assert Xt.shape == (4, 3, 32, 32)


def test_cifar10_missing_or_broken(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*toronto"):
        datasets.load_cifar10(tmp_path / "nowhere")
    folder = write_cifar(tmp_path / "c")
    (folder / "data_batch_3").write_text("not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        datasets.load_cifar10(folder)


# ----- UCR / UEA ----------------------------------------------------------------

TS = """# a tiny two-dimensional set
@problemName Tiny
@timeStamps false
@univariate false
@dimensions 2
@equalLength true
@seriesLength 10
@classLabel true n s t
@data
{a}:{b}:s
{b}:{a}:n
{a}:{a}:t
"""


def write_ts(folder):
    folder.mkdir()
    a = ",".join(str(v) for v in range(10))
    b = ",".join(str(-v) for v in range(10))
    for split in ("TRAIN", "TEST"):
        (folder / f"Tiny_{split}.ts").write_text(TS.format(a=a, b=b))
    return folder


def test_load_ucr_and_segments(tmp_path):
    folder = write_ts(tmp_path / "Tiny")
    X, y = datasets.load_ucr(folder, "train")
    assert X.shape == (3, 2, 10) and list(y) == [1, 0, 2]   # labels numbered as @classLabel n s t
    np.testing.assert_array_equal(X[0, 0], np.arange(10.0))
    Xs, ys = datasets.load_ucr(folder / "Tiny_TEST.ts", "test", segment=5)
    assert Xs.shape == (6, 2, 5) and list(ys) == [1, 1, 0, 0, 2, 2]
    np.testing.assert_array_equal(Xs[1, 0], np.arange(5.0, 10.0))
    Xo, _ = datasets.load_ucr(folder, "train", segment=4, stride=2)
    assert Xo.shape == (3 * 4, 2, 4)


def test_ucr_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="NAME_TRAIN.ts"):
        datasets.load_ucr(tmp_path / "missing")
    folder = write_ts(tmp_path / "Tiny")
    (folder / "Tiny_TRAIN.ts").write_text(TS.format(a="1,2,x", b="1,2,3"))
    with pytest.raises(ValueError, match="comma-separated numbers"):
        datasets.load_ucr(folder)
    with pytest.raises(ValueError, match="segment must be in 1..10"):
        datasets.load_ucr(folder / "Tiny_TEST.ts", segment=11)


# ----- arrays -------------------------------------------------------------------

def test_load_arrays(tmp_path):
    X, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 0, 1, 2])
    np.savez(tmp_path / "f.npz", features=X, labels=y)
    X2, y2 = datasets.load_arrays(tmp_path / "f.npz")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y.astype(float))   # integral floats are accepted as labels
    X3, y3 = datasets.load_arrays(tmp_path / "X.npy", labels=tmp_path / "y.npy")
    assert y3.dtype == np.int64 and np.array_equal(y3, y)


def test_arrays_errors(tmp_path):
    X = np.ones((3, 2))
    np.savez(tmp_path / "nan.npz", X=np.array([[1.0, np.nan]] * 3), y=np.zeros(3, int))
    with pytest.raises(ValueError, match="1 NaN|3 NaN"):
        datasets.load_arrays(tmp_path / "nan.npz")
    np.savez(tmp_path / "frac.npz", X=X, y=np.array([0.5, 1.0, 0.0]))
    with pytest.raises(TypeError, match="integer class labels"):
        datasets.load_arrays(tmp_path / "frac.npz")
    np.savez(tmp_path / "keys.npz", a=X, b=np.zeros(3, int))
    with pytest.raises(ValueError, match="holds \\['a', 'b'\\]"):
        datasets.load_arrays(tmp_path / "keys.npz")
    np.savez(tmp_path / "len.npz", X=X, y=np.zeros(4, int))
    with pytest.raises(ValueError, match="X must be \\(n, …\\) and y \\(n,\\)"):
        datasets.load_arrays(tmp_path / "len.npz")
    with pytest.raises(FileNotFoundError, match="array file not found"):
        datasets.load_arrays(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="labels='labels.npy'"):
        np.save(tmp_path / "only.npy", X)
        datasets.load_arrays(tmp_path / "only.npy")


# ----- subsets and preprocessing -------------------------------------------------

def test_subset():
    X, y = datasets.dice("train", n=120)
    Xs, ys = datasets.subset(X, y, size=30, seed=3)
    assert Xs.shape == (30, 1024)
    Xs2, ys2 = datasets.subset(X, y, size=30, seed=3)
    np.testing.assert_array_equal(Xs, Xs2)
    assert not np.array_equal(Xs, datasets.subset(X, y, size=30, seed=4)[0])
    Xc, yc = datasets.subset(X, y, size=25, classes=[4, 1], seed=0)
    assert set(yc) <= {0, 1} and len(yc) == 25
    original = {row.tobytes(): label for row, label in zip(X, y)}
    assert all({4: 0, 1: 1}[original[row.tobytes()]] == label for row, label in zip(Xc, yc))
    with pytest.raises(ValueError, match="asked for 121 examples but only 120"):
        datasets.subset(X, y, size=121)
    with pytest.raises(ValueError, match=r"classes \[7\] do not occur"):
        datasets.subset(X, y, classes=[1, 7])


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    train, test = rng.normal(3, 2, size=(500, 4)), rng.normal(3, 2, size=(100, 4))
    train_s, test_s, (mean, std) = datasets.standardize(train, test)
    np.testing.assert_allclose(train_s.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(train_s.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(test_s, (test - mean) / std)
    images = rng.normal(1, 3, size=(50, 3, 4, 4))
    (images_s, (m, s)) = datasets.standardize(images, per="channel")
    assert m.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(images_s.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    assert datasets.flatten(images).shape == (50, 48)
    with pytest.raises(ValueError, match="per must be"):
        datasets.standardize(train, per="pixel")
