"""Checks of user input that turn bad data into clear errors before any compute."""

import numpy as np

from .backend import array_module, to_numpy


def check_integer(value, name, low=1, high=None, optional=False):
    """``value`` must be an integer (not a bool) in ``low..high`` (None allowed when ``optional``); returns an int.

    The message names the range: "a positive integer", "a non-negative integer" or "an integer in a..b".
    """
    if value is None and optional:
        return None
    if low == 1 and high is None:
        wanted = "a positive integer"
    elif low == 0 and high is None:
        wanted = "a non-negative integer"
    else:
        wanted = f"an integer in {low}..{'' if high is None else high}"
    is_integer = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not is_integer or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {wanted}{' or None' if optional else ''}, got {value!r}")
    return int(value)


def check_inputs(X, input_shape, name="X"):
    """X must be a real array of shape (n, *input_shape) with n ≥ 1 and finite values."""
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.ndim != 1 + len(input_shape) or tuple(X.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{name} must have shape (n, {', '.join(map(str, input_shape))}), got {tuple(X.shape)}")
    if X.shape[0] < 1:
        raise ValueError(f"{name} holds no examples")
    xp = array_module(X)
    if not bool(xp.isfinite(X).all()):
        bad = int((~xp.isfinite(X)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return X


def check_labels(y, n, num_classes, name="y"):
    """y must be integer labels in 0..num_classes−1, one per example, shape (n,), or one per position, shape
    ``n`` given as a tuple (n, T, …) (a sequence's tokens)."""
    shape = (n,) if isinstance(n, (int, np.integer)) else tuple(n)
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if tuple(y.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} to match the {shape[0]} examples"
                         f"{'' if len(shape) == 1 else ' and the outputs per example'}, got {tuple(y.shape)}")
    check_range(y, num_classes, f"{name} has labels", f"the network has {num_classes} outputs (labels")
    return y


def check_token_ids(X, vocab, name="X"):
    """X must hold integer token ids in 0..vocab−1 (an embedding's inputs)."""
    if X.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids for the network's embedding, got dtype {X.dtype}")
    check_range(X, vocab, f"{name} has token ids", f"the embedding has a vocabulary of {vocab} (ids")
    return X


def check_range(values, count, what, limit):
    """Integers in 0..count−1, or ValueError "{what} in [low, high], but {limit} must lie in 0..count−1)"."""
    host = to_numpy(values)
    low, high = int(host.min()), int(host.max())
    if low < 0 or high >= count:
        raise ValueError(f"{what} in [{low}, {high}], but {limit} must lie in 0..{count - 1})")


def check_directions(V, num_params, name="V", scan=True):
    """V must be (P,) or (P, k) with finite values; returns (V, was_vector). ``scan=False`` checks the shape
    only (an eigensolver's own directions: a full scan would cost a pass over V and, on a GPU, a sync)."""
    if not hasattr(V, "shape") or not hasattr(V, "dtype"):
        V = np.asarray(V)
    if V.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {V.dtype}")
    if V.ndim not in (1, 2) or V.shape[0] != num_params or (V.ndim == 2 and V.shape[1] < 1):
        raise ValueError(f"{name} must have shape ({num_params},) or ({num_params}, k), got {tuple(V.shape)}")
    if scan and not bool(array_module(V).isfinite(V).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return V, V.ndim == 1
