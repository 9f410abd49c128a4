"""Datasets of both papers: dice (built in), CIFAR-10, UCR/UEA time series and arrays from local files; token
sequences for transformers (built in: tokens.py).

Nothing is downloaded: loaders read local files and say where to get them when
they are missing. Every loader returns ``(X, y)`` with X float64 and y int64
class labels 0..c−1, checked at load time. Two steps are explicit and left to
the caller, as in the 2024 paper's pipeline: ``standardize`` (statistics from
the training split only) and ``flatten`` (the MLPs take vectors).
"""

import os
import pickle

import numpy as np

from .dice import CLASS_NAMES as DICE_CLASSES, dice  # noqa: F401  (re-exported)
from .tokens import characters, modular_addition  # noqa: F401  (re-exported: token sequences, built in)
from .validation import check_integer

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
UCR_URL = "https://www.timeseriesclassification.com (the .ts files of the UEA/UCR archive)"


def check_dataset(X, y, source="dataset"):
    """X real and finite with one row per label; y integer labels ≥ 0. Returns (float64 X, int64 y)."""
    X, y = np.asarray(X), np.asarray(y)
    if X.size == 0 or y.size == 0:
        raise ValueError(f"{source}: holds no examples (X {X.shape}, y {y.shape})")
    if X.dtype.kind not in "fiu":
        raise TypeError(f"{source}: X must hold real numbers, got dtype {X.dtype}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)  # integral floats (e.g. labels saved by another tool) are accepted
        else:
            raise TypeError(f"{source}: y must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1 or X.ndim < 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{source}: X must be (n, …) and y (n,), got X {X.shape} and y {y.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{source}: X contains {int(np.sum(~np.isfinite(X)))} NaN or infinite value(s)")
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be ≥ 0, got {int(y.min())}")
    return X.astype(np.float64, copy=False), y.astype(np.int64, copy=False)


def _existing(path, what, hint):
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found at {path!r}: {hint}")
    return path


# ----- CIFAR-10 -------------------------------------------------------------

def load_cifar10(path, split="train"):
    """CIFAR-10 from the python-pickle batches in ``path`` (``cifar-10-batches-py``).

    Returns X (n, 3, 32, 32) float64 in [0, 1] and y (n,) in 0..9; 'train' is
    ``data_batch_1..5`` (50,000 images), 'test' is ``test_batch`` (10,000).
    """
    hint = f"expected the folder cifar-10-batches-py of the 'CIFAR-10 python version' from {CIFAR10_URL}"
    folder = _existing(path, "CIFAR-10 folder", hint)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    images, labels = [], []
    for name in names[split]:
        file = _existing(os.path.join(folder, name), f"CIFAR-10 batch {name!r}", hint)
        try:
            with open(file, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data, batch_labels = batch[b"data"], batch[b"labels"]
        except Exception as error:
            raise ValueError(f"{file!r} is not a CIFAR-10 python batch ({error}); {hint}") from None
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels))
    return check_dataset(np.concatenate(images) / 255.0, np.concatenate(labels), f"CIFAR-10 {split}")


# ----- UCR / UEA time series ------------------------------------------------

def read_ts(file):
    """Read a UEA/UCR ``.ts`` file: (series (n, dims, length), labels as strings, declared class labels)."""
    class_labels, series, labels, in_data = None, [], [], False
    with open(file) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                lower = line.lower()
                if lower.startswith("@classlabel"):
                    words = line.split()
                    class_labels = words[2:] if len(words) > 1 and words[1].lower() == "true" else None
                elif lower.startswith("@data"):
                    in_data = True
                continue
            *dims, label = line.split(":")
            try:
                values = [np.array(d.split(","), dtype=np.float64) for d in dims]
            except ValueError:
                raise ValueError(f"{file}:{number}: values must be comma-separated numbers") from None
            if not values or len({len(v) for v in values}) != 1:
                raise ValueError(f"{file}:{number}: every dimension of a series must have the same length")
            series.append(np.stack(values))
            labels.append(label.strip())
    if not in_data or not series:
        raise ValueError(f"{file} is not a .ts file with an @data section and series")
    if len({s.shape for s in series}) != 1:
        raise ValueError(f"{file}: series of unequal length are not supported")
    return np.stack(series), labels, class_labels


def load_ucr(path, split="train", segment=None, stride=None):
    """A UEA/UCR classification set from its ``.ts`` files, optionally cut into segments.

    ``path`` is the dataset's folder (holding ``NAME_TRAIN.ts`` and ``NAME_TEST.ts``)
    or a ``.ts`` file. Returns X (n, dims, length) and y (n,), labels numbered
    in the order of the file's ``@classLabel`` line. With ``segment`` each series
    is cut into windows of that length every ``stride`` steps (default: stride
    = segment, non-overlapping), each window keeping its series' label: the
    2024 paper splits AtrialFibrillation into sequences of length 128.
    """
    hint = f"expected a folder with NAME_TRAIN.ts / NAME_TEST.ts or a .ts file, from {UCR_URL}"
    path = _existing(path, "UCR/UEA dataset", hint)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if os.path.isdir(path):
        wanted = f"_{split.upper()}.ts"
        files = [f for f in sorted(os.listdir(path)) if f.upper().endswith(wanted.upper())]
        if not files:
            raise FileNotFoundError(f"no *{wanted} file in {path!r}: {hint}")
        path = os.path.join(path, files[0])
    series, labels, declared = read_ts(path)
    names = declared or sorted(set(labels))
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not declared in @classLabel {names}")
    y = np.array([names.index(label) for label in labels])
    if segment is not None:
        length = series.shape[-1]
        stride = segment if stride is None else stride
        if not (isinstance(segment, int) and 1 <= segment <= length) or not (isinstance(stride, int) and stride >= 1):
            raise ValueError(f"segment must be in 1..{length} and stride ≥ 1, got segment={segment}, stride={stride}")
        starts = np.arange(0, length - segment + 1, stride)
        windows = np.stack([series[:, :, s:s + segment] for s in starts], axis=1)   # (n, windows, dims, segment)
        series = windows.reshape(-1, series.shape[1], segment)
        y = np.repeat(y, len(starts))
    return check_dataset(series, y, f"{os.path.basename(path)}")


# ----- arrays -----------------------------------------------------------------

X_KEYS, Y_KEYS = ("X", "x", "data", "features", "inputs"), ("y", "Y", "labels", "targets", "label")


def load_arrays(path, labels=None):
    """Arrays computed elsewhere (e.g. sentence embeddings): an ``.npz`` with X and y, or ``.npy`` files.

    An ``.npz`` must hold the inputs under one of X, x, data, features, inputs
    and the labels under one of y, Y, labels, targets, label. An ``.npy`` holds
    X alone; give its labels as a second ``.npy`` with ``labels=``.
    """
    hint = "expected an .npz with arrays X and y, or an .npy of X with labels='y.npy'"
    path = _existing(path, "array file", hint)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            x_key = next((k for k in X_KEYS if k in archive.files), None)
            y_key = next((k for k in Y_KEYS if k in archive.files), None)
            if x_key is None or y_key is None:
                raise ValueError(f"{path!r} holds {archive.files}; {hint}")
            X, y = archive[x_key], archive[y_key]
    elif path.endswith(".npy"):
        if labels is None:
            raise ValueError(f"{path!r} holds inputs only: pass labels='labels.npy'")
        X = np.load(path, allow_pickle=False)
        y = np.load(_existing(labels, "label file", hint), allow_pickle=False)
    else:
        raise ValueError(f"{path!r}: unknown format; {hint}")
    return check_dataset(X, y, os.path.basename(path))


# ----- subsets and explicit preprocessing -------------------------------------

def subset(X, y, size=None, classes=None, seed=0):
    """A random subset of ``size`` examples, optionally of the given classes relabelled 0..c−1.

    ``classes=[3, 5]`` keeps those classes and relabels them 0, 1 in that
    order (the 2022 paper's runs on 2, 3 and 5 classes of CIFAR-10). The draw
    is without replacement and deterministic for a seed; order is kept.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    if classes is not None:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct, got {classes}")
        missing = sorted(set(classes) - set(np.unique(y).tolist()))
        if missing:
            raise ValueError(f"classes {missing} do not occur in y")
        keep = np.isin(y, classes)
        relabel = np.full(int(y.max()) + 1, -1)
        relabel[classes] = np.arange(len(classes))
        X, y = X[keep], relabel[y[keep]]
    if size is None:
        return X, y
    size = check_integer(size, "size")
    if size > len(y):
        raise ValueError(f"asked for {size} examples but only {len(y)} are there")
    rows = np.sort(np.random.default_rng(seed).choice(len(y), size=size, replace=False))
    return X[rows], y[rows]


def standardize(X_train, *others, per="feature", eps=1e-12):
    """Subtract the training mean and divide by the training standard deviation.

    ``per='feature'``: one mean/std per input feature (column of a flat X);
    ``per='channel'``: one per channel of (n, C, …) images. The statistics come
    from X_train only and are applied to every other array given. Returns the
    standardised arrays followed by ``(mean, std)``.
    """
    X_train = np.asarray(X_train, dtype=np.float64)
    if X_train.ndim < 2 or X_train.shape[0] < 2:
        raise ValueError(f"standardize needs a training set of at least two examples (n, …), got shape "
                         f"{X_train.shape}")
    if per == "feature":
        axes = (0,)
    elif per == "channel":
        if X_train.ndim < 3:
            raise ValueError(f"per='channel' needs (n, C, …) arrays, got shape {X_train.shape}")
        axes = (0,) + tuple(range(2, X_train.ndim))
    else:
        raise ValueError(f"per must be 'feature' or 'channel', got {per!r}")
    mean = X_train.mean(axis=axes, keepdims=True)
    std = X_train.std(axis=axes, keepdims=True)
    std = np.where(std > eps, std, 1.0)  # constant features (e.g. always-blank pixels) are only centred
    for X in others:
        if np.shape(X)[1:] != X_train.shape[1:]:
            raise ValueError(f"arrays to standardise must match the training shape {X_train.shape[1:]}, "
                             f"got {np.shape(X)[1:]}")
    out = [(np.asarray(X, dtype=np.float64) - mean) / std for X in (X_train, *others)]
    return (*out, (mean, std))


def flatten(X):
    """(n, …) → (n, prod(…)): the MLPs of both papers take flat vectors."""
    X = np.asarray(X)
    return X.reshape(X.shape[0], -1)
